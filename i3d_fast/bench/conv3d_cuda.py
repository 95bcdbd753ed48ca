"""Conv3d benchmarks on CUDA: every I3D conv layer and every Mixed block, the Triton kernels
(:mod:`i3d_fast.kernels.triton.conv3d`) against cuDNN, channels_last_3d, bf16 and fp16.

Baselines per layer: cuDNN Conv3d + eval BatchNorm + ReLU (unfolded; F.pad first where TF SAME
padding is asymmetric, since cuDNN pads symmetrically; a -inf F.pad + max_pool3d before branch 3's
conv), cuDNN Conv3d with BatchNorm folded into its weight and bias + ReLU (what a deployed PyTorch
model runs), and the cuDNN convolution alone. Per block: the four branches unfolded, then
torch.cat. ``torch.backends.cudnn.benchmark`` is on, and the profiler confirms that a cuDNN kernel
ran for each baseline. Each provider is timed as a CUDA graph of back-to-back calls (no Python or
launch overhead between them; plain back-to-back launches where a provider cannot be captured):
CUDA-event medians with 20/80% quantiles, no cache flush (a network's activations are hot in L2).
TFLOP/s and, for GPUs in :data:`PEAK_TFLOPS`, the % of the dense tensor-core peak. Without a GPU
nothing is measured.
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..models.i3d import ARCHITECTURE
from ..padding import resolve_padding
from .report import Row
from .timing import Timing

SUITE = "conv3d"
BASELINE = "cuDNN conv+BN+ReLU"
CONV_ONLY = "cuDNN conv alone"
FOLDED = "cuDNN conv + folded bias + ReLU"
OURS = "i3d_fast triton"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Substrings of CUDA kernel names that come from cuDNN (or the CUTLASS/xmma kernels it dispatches to).
CUDNN_KERNEL_MARKS = ("cudnn", "xmma", "cutlass", "implicit_convolve", "fprop", "conv2d_", "conv3d_")
#: Names of ATen's own (non-cuDNN) convolution kernels.
ATEN_CONV_MARKS = ("vol2col", "slow_conv", "im2col")
#: Dense (no sparsity) bf16 / fp16 tensor-core peak TFLOP/s by GPU name pattern, from NVIDIA's data
#: sheets (half of the "with sparsity" figure); the first pattern that matches wins.
PEAK_TFLOPS = (
    (r"H100.*PCIe", 756.0), (r"H100.*NVL", 835.0), (r"H100", 989.4), (r"H200", 989.4), (r"A100", 312.0),
    (r"L40S", 362.1), (r"\bL4\b", 121.0), (r"\bA10\b", 125.0),
)


@dataclass
class Conv:
    """One conv unit: input Tensor[N, cin, T, H, W] -> cout channels."""

    name: str
    shape: Tuple[int, int, int, int, int]
    cout: int
    kernel: Tuple[int, int, int] = (1, 1, 1)
    stride: Tuple[int, int, int] = (1, 1, 1)
    pool: bool = False  # branch 3: 3x3x3 SAME max pool first
    relu: bool = True
    bn: bool = True  # else a bias (the Logits conv)

    @property
    def pads(self):
        return resolve_padding(self.shape[2:], self.kernel, self.stride, "same")

    def flops(self) -> float:
        n, cin, *size = self.shape
        out = [-(-s // st) for s, st in zip(size, self.stride)]
        return 2.0 * n * out[0] * out[1] * out[2] * self.cout * cin * self.kernel[0] * self.kernel[1] * self.kernel[2]


@dataclass
class Block:
    name: str
    shape: Tuple[int, int, int, int, int]
    widths: Tuple[int, int, int, int, int, int]  # b0, b1a, b1b, b2a, b2b, b3b
    convs: List[Conv] = field(default_factory=list)


def i3d_layers(batch: int = 1, frames: int = 64, size: int = 224) -> Tuple[List[Conv], List[Block]]:
    """Every conv of I3D (RGB stem, plus the flow stem) and every Mixed block for one input size."""
    n, c, t, h, w = batch, 3, frames, size, size
    convs: List[Conv] = []
    blocks: List[Block] = []
    for name, spec in ARCHITECTURE:
        if spec[0] == "unit":
            _, cout, kernel, stride = spec
            convs.append(Conv(name + (" rgb" if c == 3 else ""), (n, c, t, h, w), cout, kernel, stride))
            if c == 3:
                convs.append(Conv(name + " flow", (n, 2, t, h, w), cout, kernel, stride))
            t, h, w = (-(-s // st) for s, st in zip((t, h, w), stride))
            c = cout
        elif spec[0] == "max":
            t, h, w = (-(-s // st) for s, st in zip((t, h, w), spec[2]))
        else:
            b0, b1a, b1b, b2a, b2b, b3b = spec[1]
            shape = (n, c, t, h, w)
            block = Block(name, shape, spec[1], [
                Conv(f"{name}.b0", shape, b0), Conv(f"{name}.b1a", shape, b1a),
                Conv(f"{name}.b1b", (n, b1a, t, h, w), b1b, (3, 3, 3)), Conv(f"{name}.b2a", shape, b2a),
                Conv(f"{name}.b2b", (n, b2a, t, h, w), b2b, (3, 3, 3)),
                Conv(f"{name}.b3 pool+b3b", shape, b3b, pool=True)])
            convs += block.convs
            blocks.append(block)
            c = b0 + b1b + b2b + b3b
    # The head's VALID 2x7x7 average pool leaves [N, 1024, T' - 1, 1, 1] for the Logits conv.
    convs.append(Conv("Logits", (n, c, max(t - 1, 1), 1, 1), 400, relu=False, bn=False))
    return convs, blocks


# -- timing and the cuDNN check -----------------------------------------------------------------------
def cuda_time(fn: Callable[[], object], warmup: int = 10, repeat: int = 50) -> Timing:
    """Median and 20/80% quantiles of ``fn``'s GPU time, one CUDA event pair per launch."""
    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeat)]
    torch.cuda.synchronize()
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in events)
    q = statistics.quantiles(times, n=5, method="inclusive")
    return Timing(statistics.median(times), q[0], q[3], repeat)


def graph_time(fn: Callable[[], object], warmup: int = 5, repeat: int = 20, calls: int = 10) -> Tuple[Timing, str]:
    """(per-call time, "CUDA graph") of ``fn``: ``calls`` back-to-back calls captured in one CUDA graph,
    each replay timed by a CUDA event pair; (per-call time, "back-to-back") from ``calls`` plain
    back-to-back launches per event pair where capturing fails. Warm-up (and cuDNN's autotuning)
    runs before capture."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()

    def burst():
        for _ in range(calls):
            fn()

    method, run = "back-to-back", burst
    try:
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            burst()  # a warm pass on the capture stream
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            burst()
        graph.replay()
        torch.cuda.synchronize()
        method, run = "CUDA graph", graph.replay
    except RuntimeError:
        torch.cuda.synchronize()
    timing = cuda_time(run, warmup=2, repeat=repeat)
    per_call = Timing(timing.median_ms / calls, timing.q20_ms / calls, timing.q80_ms / calls, timing.runs * calls)
    return per_call, method


def peak_tflops(gpu_name: str) -> Optional[float]:
    """The dense bf16 tensor-core peak of a GPU named like ``torch.cuda.get_device_name()``, if known."""
    for pattern, peak in PEAK_TFLOPS:
        if re.search(pattern, gpu_name):
            return peak
    return None


def cuda_kernels(fn: Callable[[], object]) -> List[str]:
    """Names of the CUDA kernels one call of ``fn`` launches."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.key for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]


def cudnn_kernel(names: List[str]) -> Optional[str]:
    """The first cuDNN convolution kernel among ``names`` (None when ATen's own conv ran, or none)."""
    for name in names:
        low = name.lower()
        if any(m in low for m in CUDNN_KERNEL_MARKS) and not any(m in low for m in ATEN_CONV_MARKS):
            return name
    return None


# -- providers ----------------------------------------------------------------------------------------
class Unit:
    """Weights of one conv unit (random; BatchNorm statistics folded for ours), both providers."""

    def __init__(self, conv: Conv, dtype: torch.dtype, device: str, gen: torch.Generator):
        from ..kernels.triton import conv3d as triton_conv3d

        cin = conv.shape[1]
        fan_in = cin * conv.kernel[0] * conv.kernel[1] * conv.kernel[2]
        self.conv = conv
        self.weight = (torch.randn(conv.cout, cin, *conv.kernel, generator=gen) / fan_in ** 0.5).to(device, dtype)
        self.weight = self.weight.contiguous(memory_format=torch.channels_last_3d)
        self.beta = (0.1 * torch.randn(conv.cout, generator=gen)).to(device)
        self.mean = (0.1 * torch.randn(conv.cout, generator=gen)).to(device)
        self.var = (torch.rand(conv.cout, generator=gen) + 0.5).to(device)
        if conv.bn:
            self.scale = torch.rsqrt(self.var + 1e-3)
            self.shift = self.beta - self.mean * self.scale
        else:
            self.scale, self.shift = torch.ones_like(self.beta), self.beta
        self.packed = triton_conv3d.pack_weight(self.weight)
        self.beta_dtype = self.beta.to(dtype)
        self.folded = (self.weight * self.scale.to(dtype).view(-1, 1, 1, 1, 1)).contiguous(
            memory_format=torch.channels_last_3d)
        self.folded_bias = self.shift.to(dtype)

    def cudnn(self, x: torch.Tensor, bn_relu: bool = True) -> torch.Tensor:
        """cuDNN conv (+ unfolded eval BatchNorm, or the Logits bias, + ReLU when ``bn_relu``)."""
        c = self.conv
        y = self._conv(x, self.weight, None)
        if not bn_relu:
            return y
        if c.bn:
            y = F.batch_norm(y, self.mean, self.var, None, self.beta, False, 0.0, 1e-3)
        else:
            y = y + self.beta_dtype.view(1, -1, 1, 1, 1)
        return F.relu_(y) if c.relu else y

    def cudnn_folded(self, x: torch.Tensor) -> torch.Tensor:
        """cuDNN conv with BatchNorm folded into the weight and bias, then ReLU."""
        y = self._conv(x, self.folded, self.folded_bias)
        return F.relu_(y) if self.conv.relu else y

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        c = self.conv
        if c.pool:
            x = F.max_pool3d(F.pad(x, (1, 1) * 3, value=float("-inf")), 3, 1)
        (t0, t1), (h0, h1), (w0, w1) = c.pads
        if (t0, h0, w0) == (t1, h1, w1):
            return F.conv3d(x, weight, bias, stride=c.stride, padding=(t0, h0, w0))
        return F.conv3d(F.pad(x, (w0, w1, h0, h1, t0, t1)), weight, bias, stride=c.stride)

    def ours_into(self, x: torch.Tensor, destinations) -> None:
        from ..kernels.triton import conv3d as triton_conv3d

        c = self.conv
        triton_conv3d.conv3d(x, self.packed, self.scale, self.shift, c.stride, c.pads, c.relu, destinations,
                             pool=(3, 3, 3) if c.pool else None)

    def ours(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        n, _, *size = c.shape
        out = torch.empty((n, c.cout, *[-(-s // st) for s, st in zip(size, c.stride)]), dtype=x.dtype,
                          device=x.device, memory_format=torch.channels_last_3d)
        self.ours_into(x, [(out, 0, c.cout)])
        return out


class BlockProviders:
    """A Mixed block both ways: cuDNN units + torch.cat, and ours: the shipped
    :func:`i3d_fast.ops.conv3d.inception_block_op` on the Triton backend (one GEMM for b0|b1a|b2a
    writing b0 in place and b1a|b2a to scratch, b1b and b2b on scratch slices, pool fused into b3b)."""

    def __init__(self, block: Block, dtype: torch.dtype, device: str, gen: torch.Generator):
        self.block = block
        self.units = [Unit(c, dtype, device, gen) for c in block.convs]
        u0, u1a, u1b, u2a, u2b, u3 = self.units

        def folded(u: Unit) -> torch.Tensor:
            return (u.weight * u.scale.to(u.weight.dtype).view(-1, 1, 1, 1, 1)).contiguous(
                memory_format=torch.channels_last_3d)

        merged = torch.cat([folded(u0), folded(u1a), folded(u2a)]).contiguous(memory_format=torch.channels_last_3d)
        self.weights = [merged, folded(u1b), folded(u2b), folded(u3)]
        self.shifts = [torch.cat([u0.shift, u1a.shift, u2a.shift]), u1b.shift, u2b.shift, u3.shift]

    def cudnn(self, x: torch.Tensor) -> torch.Tensor:
        u0, u1a, u1b, u2a, u2b, u3 = self.units
        return torch.cat([u0.cudnn(x), u1b.cudnn(u1a.cudnn(x)), u2b.cudnn(u2a.cudnn(x)), u3.cudnn(x)], dim=1)

    def ours(self, x: torch.Tensor) -> torch.Tensor:
        from ..ops.conv3d import inception_block_op

        return inception_block_op(x, self.weights, self.shifts, list(self.block.widths), False, "triton")


def _input(shape, dtype, device, gen) -> torch.Tensor:
    return torch.randn(shape, generator=gen).to(device, dtype).contiguous(memory_format=torch.channels_last_3d)


def _check_close(ours: torch.Tensor, ref: torch.Tensor, label: str) -> None:
    """Ours against cuDNN in the same dtype (a sanity check of the benchmark, not the tests' oracle)."""
    err = (ours.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item() + 1e-6
    if not err <= 0.05 * scale:
        raise RuntimeError(f"{label}: triton result differs from cuDNN (max abs error {err:g}, max |y| {scale:g})")


def _rows(case: str, flops: float, providers, repeat: int, peak: Optional[float]) -> List[Row]:
    """Rows of one case: ``providers`` is [(name, fn, is_baseline)], the baseline first (its cuDNN
    kernel named from the profiler), each timed by :func:`graph_time`."""
    kernels = cuda_kernels(providers[0][1])
    found = cudnn_kernel(kernels)
    note = f"cuDNN kernel {found[:60]}" if found else "NO cuDNN KERNEL SEEN: " + ", ".join(k[:40] for k in kernels[:4])
    rows = []
    for provider, fn, base in providers:
        timing, method = graph_time(fn, repeat=repeat)
        tflops = flops / timing.median_ms / 1e9
        extra = {"TFLOP/s": round(tflops, 1)}
        if peak:
            extra["% of peak"] = round(100 * tflops / peak, 1)
        rows.append(Row(SUITE, case, provider, timing, baseline=base,
                        note="; ".join([note] * base + [method] * (method != "CUDA graph")), extra=extra))
    return rows


def layer_case(conv: Conv, dname: str) -> str:
    return f"{conv.name} {list(conv.shape)} k{conv.kernel} s{conv.stride} -> {conv.cout} {dname}"


def layer_rows(conv: Conv, dname: str, device: str, gen: torch.Generator, repeat: int = 20,
               timed: bool = True) -> List[Row]:
    """One conv layer: ours against cuDNN conv + BN + ReLU (the baseline), conv + folded bias + ReLU
    and conv alone, after checking ours against cuDNN. ``timed=False`` runs every provider once
    and returns unmeasured rows (a dry run of the wiring, e.g. on the CPU)."""
    dtype = DTYPES[dname]
    unit = Unit(conv, dtype, device, gen)
    x = _input(conv.shape, dtype, device, gen)
    with torch.no_grad():
        _check_close(unit.ours(x), unit.cudnn(x), conv.name)
        _check_close(unit.cudnn_folded(x), unit.cudnn(x), f"{conv.name} (folded cuDNN baseline)")
        providers = [(BASELINE, lambda: unit.cudnn(x), True), (FOLDED, lambda: unit.cudnn_folded(x), False),
                     (CONV_ONLY, lambda: unit.cudnn(x, bn_relu=False), False), (OURS, lambda: unit.ours(x), False)]
        case = layer_case(conv, dname)
        if not timed:
            for _, fn, _ in providers:
                fn()
            return [Row(SUITE, case, name, None, baseline=base, note="dry run: ran once, not timed")
                    for name, _, base in providers]
        return _rows(case, conv.flops(), providers, repeat, peak_tflops(torch.cuda.get_device_name(device)))


def block_rows(block: Block, dname: str, device: str, gen: torch.Generator, repeat: int = 20) -> List[Row]:
    """One Mixed block: ours (one op) against the four cuDNN branches and torch.cat."""
    dtype = DTYPES[dname]
    prov = BlockProviders(block, dtype, device, gen)
    x = _input(block.shape, dtype, device, gen)
    with torch.no_grad():
        _check_close(prov.ours(x), prov.cudnn(x), block.name)
        providers = [(BASELINE, lambda: prov.cudnn(x), True), (OURS, lambda: prov.ours(x), False)]
        return _rows(f"{block.name} block {list(block.shape)} {dname}", sum(c.flops() for c in block.convs),
                     providers, repeat, peak_tflops(torch.cuda.get_device_name(device)))


def run(quick: bool = False, device: str = "cpu", batch: int = 1, dtypes=("bf16", "fp16"),
        layers: bool = True, blocks: bool = True) -> List[Row]:
    """Rows for every I3D conv layer and Mixed block in each dtype (CUDA only; on other devices one
    row saying that nothing was measured)."""
    if device != "cuda" or not torch.cuda.is_available():
        return [Row(SUITE, "I3D conv layers and Mixed blocks, bf16/fp16", f"{OURS} vs {BASELINE}", None,
                    note="needs a CUDA GPU; not measured"),
                *(Row(SUITE, "I3D conv layers, bf16", name, None, note="not measured (no GPU)")
                  for name in (FOLDED, CONV_ONLY))]
    torch.backends.cudnn.benchmark = True
    frames = 16 if quick else 64
    repeat = 10 if quick else 20
    convs, block_list = i3d_layers(batch, frames)
    gen = torch.Generator().manual_seed(0)
    rows: List[Row] = []
    for dname in dtypes:
        if layers:
            for conv in convs:
                rows += layer_rows(conv, dname, device, gen, repeat)
        if blocks:
            for block in block_list:
                rows += block_rows(block, dname, device, gen, repeat)
    return rows


def geomean_speedups(rows: List[Row]) -> Dict[str, float]:
    """Geometric mean of (baseline median / ours median) per dtype and kind ("layers", "blocks")."""
    base = {r.case: r.timing.median_ms for r in rows if r.baseline and r.timing}
    groups: Dict[str, List[float]] = {}
    for r in rows:
        if r.provider == OURS and r.timing and r.case in base:
            kind = "blocks" if " block " in r.case else "layers"
            groups.setdefault(f"{r.case.rsplit(' ', 1)[-1]} {kind}", []).append(base[r.case] / r.timing.median_ms)
    return {k: statistics.geometric_mean(v) for k, v in groups.items()}
