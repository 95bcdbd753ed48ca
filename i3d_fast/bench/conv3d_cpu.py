"""Convolution benchmarks: every 3x3x3 and 1x1x1 convolution of I3D on a 64x224x224 clip, fp32
channels_last_3d with fused bias + ReLU, the ``aten`` baseline vs the ``cpu`` backend, timed
interleaved.

- 3x3x3 (stride 1, SAME): oneDNN's direct convolution (``mkldnn._convolution_pointwise``) with its
  weight reordered into oneDNN's blocked layout once, outside the timed loop, as a deployed model
  (and the ``aten`` backend in eval) runs it: the baseline; the same with the plain weight, which
  oneDNN reorders on every call (what eager PyTorch does); Winograd F(2x2x2, 3x3x3); and Winograd
  F(2x4x4, 3x3x3), which runs only where reduced-precision float32 convolutions are allowed
  (``torch.backends.mkldnn.conv.fp32_precision = "tf32"``; 5-50x oneDNN's float32 error, see
  :func:`i3d_fast.kernels.cpu.conv3d.wide_tiles`). GFLOP/s "direct" counts a direct convolution's
  2 * 27 * Cin * Cout FLOPs per output (comparable across providers); "actual" counts the
  multiply-adds Winograd really does (64 per 2x2x2 tile, 144 per 2x4x4 tile, and channel pair,
  partial tiles included).
- 1x1x1: the ``aten`` backend (BLAS GEMM into the destination slice, then ReLU; branch 3 max-pools
  first) vs the ``cpu`` GEMM (pool computed on load). The output goes into a channel slice of a wider
  tensor, as in an Inception block.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch

from ..kernels.cpu import conv3d as cpu_conv3d
from ..ops import max_pool3d
from .report import Row
from .timing import measure_interleaved

CL = torch.channels_last_3d

# (layer, Cin, Cout, T, H, W): the 3x3x3 convolutions of I3D at 64x224x224 (Mixed: b1b and b2b).
I3D_3X3X3: Tuple[Tuple[str, int, int, int, int, int], ...] = (
    ("Conv3d_2c_3x3", 64, 192, 32, 56, 56),
    ("Mixed_3b.b1b", 96, 128, 32, 28, 28), ("Mixed_3b.b2b", 16, 32, 32, 28, 28),
    ("Mixed_3c.b1b", 128, 192, 32, 28, 28), ("Mixed_3c.b2b", 32, 96, 32, 28, 28),
    ("Mixed_4b.b1b", 96, 208, 16, 14, 14), ("Mixed_4b.b2b", 16, 48, 16, 14, 14),
    ("Mixed_4c.b1b", 112, 224, 16, 14, 14), ("Mixed_4c.b2b", 24, 64, 16, 14, 14),
    ("Mixed_4d.b1b", 128, 256, 16, 14, 14), ("Mixed_4d.b2b", 24, 64, 16, 14, 14),
    ("Mixed_4e.b1b", 144, 288, 16, 14, 14), ("Mixed_4e.b2b", 32, 64, 16, 14, 14),
    ("Mixed_4f.b1b", 160, 320, 16, 14, 14), ("Mixed_4f.b2b", 32, 128, 16, 14, 14),
    ("Mixed_5b.b1b", 160, 320, 8, 7, 7), ("Mixed_5b.b2b", 32, 128, 8, 7, 7),
    ("Mixed_5c.b1b", 192, 384, 8, 7, 7), ("Mixed_5c.b2b", 48, 128, 8, 7, 7),
)
PROVIDERS = ("oneDNN direct, weight prepacked once", "oneDNN direct, weight reordered per call (eager PyTorch)",
             "i3d_fast cpu (Winograd F(2x2x2,3x3x3))",
             "i3d_fast cpu (Winograd F(2x4x4,3x3x3), reduced precision)")

# (block, Cin, b0, b1a, b2a, b3b, T, H=W) of each Mixed block's 1x1x1 convolutions at 64x224x224.
I3D_BLOCKS_1X1 = (
    ("Mixed_3b", 192, 64, 96, 16, 32, 32, 28), ("Mixed_3c", 256, 128, 128, 32, 64, 32, 28),
    ("Mixed_4b", 480, 192, 96, 16, 64, 16, 14), ("Mixed_4c", 512, 160, 112, 24, 64, 16, 14),
    ("Mixed_4d", 512, 128, 128, 24, 64, 16, 14), ("Mixed_4e", 512, 112, 144, 32, 64, 16, 14),
    ("Mixed_4f", 528, 256, 160, 32, 128, 16, 14), ("Mixed_5b", 832, 256, 160, 32, 128, 8, 7),
    ("Mixed_5c", 832, 384, 192, 48, 128, 8, 7),
)
# (layer, Cin, Cout, T, H, W, pool before the convolution or None)
I3D_1X1X1 = (("Conv3d_2b_1x1", 64, 64, 32, 56, 56, None),) + tuple(
    layer for block, cin, b0, b1a, b2a, b3b, t, hw in I3D_BLOCKS_1X1
    for layer in ((f"{block}.b0|b1a|b2a", cin, b0 + b1a + b2a, t, hw, hw, None),
                  (f"{block}.b3 (pool 3x3x3 + 1x1x1)", cin, b3b, t, hw, hw, (3, 3, 3))))
PROVIDERS_1X1 = ("aten backend (BLAS GEMM)", "i3d_fast cpu (GEMM)")


def flops(cin: int, cout: int, t: int, h: int, w: int) -> Tuple[float, float, float]:
    """(direct, Winograd F(2x2x2), Winograd F(2x4x4)) FLOPs of one convolution: 2 per multiply-add."""
    def products(wide: bool) -> float:  # transform positions x tiles x channel pairs
        outputs = cpu_conv3d.tile_outputs((3, 3, 3), wide)
        tiles = math.prod(math.ceil(s / m) for s, m in zip((t, h, w), outputs))
        return 2.0 * math.prod(m + 2 for m in outputs) * tiles * cin * cout

    return 2.0 * 27 * cin * cout * t * h * w, products(False), products(True)


def workloads(cin: int, cout: int, t: int, h: int, w: int):
    """(oneDNN prepacked, oneDNN per-call reorder, Winograd F(2x2x2), Winograd F(2x4x4)) callables for
    one layer; each writes relu(conv + bias) to a new tensor."""
    x = torch.randn(1, cin, t, h, w).contiguous(memory_format=CL)
    weight = (torch.randn(cout, cin, 3, 3, 3) / (27 * cin) ** 0.5).contiguous(memory_format=CL)
    bias = torch.randn(cout)
    packed = cpu_conv3d.prepare_weight(weight)  # as the fused model: transformed once
    packed_wide = cpu_conv3d.prepare_weight(weight, wide=True)
    blocked = torch.ops.mkldnn._reorder_convolution_weight(weight, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1, list(x.shape))

    def onednn(w=weight):
        return torch.ops.mkldnn._convolution_pointwise(x, w, bias, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1,
                                                        "relu", [None], "")

    def winograd(p=packed):
        out = torch.empty(1, cout, t, h, w, memory_format=CL)
        cpu_conv3d.conv3d_packed(x, p, bias, True, [(out, 0, cout)])
        return out

    return lambda: onednn(blocked), onednn, winograd, lambda: winograd(packed_wide)


def workloads_1x1(cin: int, cout: int, t: int, h: int, w: int, pool):
    """(aten, cpu) callables writing relu(conv1x1(pool?(x)) + bias) into a channel slice."""
    from ..kernels.aten import conv3d as aten_conv3d

    x = torch.randn(1, cin, t, h, w).contiguous(memory_format=CL)
    weight = torch.randn(cout, cin, 1, 1, 1) / cin ** 0.5
    bias = torch.randn(cout)
    out = torch.empty(1, cout + 32, t, h, w, memory_format=CL)
    packed = cpu_conv3d.prepare_weight(weight)
    no_pad = ((0, 0),) * 3

    def aten():  # the pool (if any) on this library's pooling kernel, then BLAS
        pooled = x if pool is None else max_pool3d(x, pool, 1, "same")
        aten_conv3d.conv3d(pooled, weight, None, bias, (1, 1, 1), no_pad, True, [(out, 16, cout)])

    def cpu():
        cpu_conv3d.conv3d_packed(x, packed, bias, True, [(out, 16, cout)], pool)

    return aten, cpu


def run(quick: bool = False, device: str = "cpu") -> List[Row]:
    rows: List[Row] = []
    repeat = 3 if quick else 7
    for layer, cin, cout, t, h, w, pool in I3D_1X1X1:
        if quick:
            t = max(t // 4, 2)
        case = f"{layer} [1, {cin}, {t}, {h}, {w}] -> {cout} fp32 ReLU"
        with torch.no_grad():
            timings = measure_interleaved(workloads_1x1(cin, cout, t, h, w, pool), repeat)
        gflop = 2.0 * cin * cout * t * h * w / 1e9
        for i, (provider, timing) in enumerate(zip(PROVIDERS_1X1, timings)):
            rows.append(Row("conv3d", case, provider, timing, baseline=i == 0,
                            extra={"GFLOP/s": round(gflop / timing.median_ms * 1e3, 1)}))
    for layer, cin, cout, t, h, w in I3D_3X3X3:
        if quick:
            t = max(t // 4, 2)
        direct, *actual = flops(cin, cout, t, h, w)
        case = f"{layer} [1, {cin}, {t}, {h}, {w}] -> {cout} fp32 ReLU"
        with torch.no_grad():
            timings = measure_interleaved(workloads(cin, cout, t, h, w), repeat)
        for i, (provider, timing) in enumerate(zip(PROVIDERS, timings)):
            extra = {"direct GFLOP/s": round(direct / timing.median_ms / 1e6, 1)}
            if i >= 2:
                extra["actual GFLOP/s"] = round(actual[i - 2] / timing.median_ms / 1e6, 1)
            rows.append(Row("conv3d", case, provider, timing, baseline=i == 0, extra=extra))
    return rows
