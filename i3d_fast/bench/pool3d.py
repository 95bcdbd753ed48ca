"""Pooling benchmarks: every pooling shape of I3D at 64x224x224, ours vs ATen, channels_last_3d.

For every shape, forward and forward+backward, side by side in one run:
  - "ATen" (the baseline): the same result from stock ATen, the cheapest way a user can get it:
    SAME pads that ATen expresses itself (symmetric ones as ``padding=``, an extra cell at the end as
    ``ceil_mode=True``) go to ``max_pool3d`` directly; only the others need an explicit -inf pad
    first (what a TF port does). Forward+backward is plain autograd (ATen keeps an int64 index tensor
    for the backward).
  - "ATen kernel alone (VALID, less output)": ``max_pool3d`` / ``avg_pool3d`` without the pad: a
    smaller output and not the SAME result, shown so the pad's cost is visible.
  - "i3d_fast": ``max_pool3d`` / ``avg_pool3d`` with backend "auto" (C++ on the CPU, Triton on CUDA);
    its backward recomputes the argmax from the saved input. Its note gives the speedup over the
    kernel alone too.
CPU rows are fp32; GPU rows bf16 (ATen without cuDNN), "not measured" when there is no GPU.
"""
from __future__ import annotations

import time
from typing import Callable, List

import torch
import torch.nn.functional as F

from ..ops import avg_pool3d, max_pool3d
from ..padding import output_size, resolve_padding
from .report import Row
from .timing import measure

# (name, input [N, C, T, H, W], kernel, stride, padding) of I3D on a 64x224x224 clip.
I3D_POOLS = (
    ("MaxPool3d_2a_3x3", (1, 64, 32, 112, 112), (1, 3, 3), (1, 2, 2), "same"),
    ("MaxPool3d_3a_3x3", (1, 192, 32, 56, 56), (1, 3, 3), (1, 2, 2), "same"),
    ("Mixed_3b.b3a", (1, 192, 32, 28, 28), (3, 3, 3), (1, 1, 1), "same"),
    ("MaxPool3d_4a_3x3", (1, 480, 32, 28, 28), (3, 3, 3), (2, 2, 2), "same"),
    ("Mixed_4b.b3a", (1, 480, 16, 14, 14), (3, 3, 3), (1, 1, 1), "same"),
    ("MaxPool3d_5a_2x2", (1, 832, 16, 14, 14), (2, 2, 2), (2, 2, 2), "same"),
    ("Mixed_5b.b3a", (1, 832, 8, 7, 7), (3, 3, 3), (1, 1, 1), "same"),
    ("Logits.avg_pool", (1, 1024, 8, 7, 7), (2, 7, 7), (1, 1, 1), "valid"),
)

BASELINE = "ATen"
KERNEL_ALONE = "ATen kernel alone (VALID, less output)"
OURS = "i3d_fast"


def _aten_same(x: torch.Tensor, is_avg: bool, kernel, stride, padding) -> torch.Tensor:
    """Stock ATen giving our result: -inf pad + max_pool3d (SAME), or avg_pool3d (VALID)."""
    if is_avg:
        if padding != "valid":
            raise ValueError("the ATen baseline covers VALID average pooling only (I3D's head)")
        return F.avg_pool3d(x, kernel, stride)
    pads = resolve_padding(x.shape[2:], kernel, stride, padding)
    native = _native(x.shape[2:], kernel, stride, pads)
    if native is not None:
        return F.max_pool3d(x, kernel, stride, native[0], ceil_mode=native[1])
    (t0, t1), (h0, h1), (w0, w1) = pads
    return F.max_pool3d(F.pad(x, (w0, w1, h0, h1, t0, t1), value=float("-inf")), kernel, stride)


def _native(sizes, kernel, stride, pads):
    """(padding, ceil_mode) for which ATen's max_pool3d gives the SAME result without a padded copy
    (padding the smaller pad of each side, at most half the kernel; ceil_mode adding the extra cell at
    the end), or None."""
    padding = [before for before, _ in pads]
    if any(after < before or 2 * before > k for (before, after), k in zip(pads, kernel)):
        return None
    ceil = any(after > before for before, after in pads)
    for size, k, s, p, (before, after) in zip(sizes, kernel, stride, padding, pads):
        want = output_size(size, k, s, (before, after))
        got = -(-(size + 2 * p - k) // s) + 1 if ceil else (size + 2 * p - k) // s + 1
        if ceil and (got - 1) * s >= size + p:  # ATen drops a last window that starts in the right padding
            got -= 1
        if got != want:
            return None
    return padding, ceil


def _fwd_bwd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], object]:
    """forward + backward w.r.t. x with a fixed upstream gradient (torch.autograd.grad: no accumulation)."""
    leaf = x.detach().requires_grad_(True)
    with torch.no_grad():
        grad = torch.randn_like(forward(leaf))
    return lambda: torch.autograd.grad(forward(leaf), leaf, grad)


def _shape(shape, kernel, quick: bool):
    return shape[:2] + (max(shape[2] // 4, kernel[0]),) + shape[3:] if quick else shape


def _case_rows(case: str, timings, note_ours: str = "") -> List[Row]:
    """Rows for one case from {provider: Timing}; our row also gives the speedup over the kernel alone."""
    rows = [Row("pool3d", case, BASELINE, timings[BASELINE], baseline=True)]
    extra = {}
    if KERNEL_ALONE in timings:
        rows.append(Row("pool3d", case, KERNEL_ALONE, timings[KERNEL_ALONE]))
        extra["speedup vs kernel alone"] = round(timings[KERNEL_ALONE].median_ms / timings[OURS].median_ms, 2)
    rows.append(Row("pool3d", case, OURS, timings[OURS], note=note_ours, extra=extra))
    return rows


def _measure(fn: Callable[[], object], quick: bool, device: str):
    """Median of enough runs to survive a busy machine: at least 9 (3 with --quick), more for fast
    cases (up to 101, about 0.3 s of runs), since one preempted run of two threads can cost a
    scheduler tick (~4-8 ms), more than a whole fast case."""
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - start, 1e-6)
    floor = 3 if quick else 9
    repeat = max(floor, min(101, int((0.05 if quick else 0.3) / once)))
    return measure(fn, repeat, warmup=0, device=device)


def _measure_case(x, name, kernel, stride, padding, quick, device) -> List[Row]:
    is_avg = name.startswith("Logits")
    ours = avg_pool3d if is_avg else max_pool3d
    aten_kernel = F.avg_pool3d if is_avg else F.max_pool3d
    precision = str(x.dtype).replace("torch.", "").replace("float", "fp").replace("bfp16", "bf16")
    shape = f"{name} {list(x.shape)} k{kernel} s{stride} {padding.upper()}"
    rows: List[Row] = []
    providers = {
        BASELINE: lambda t: _aten_same(t, is_avg, kernel, stride, padding),
        OURS: lambda t: ours(t, kernel, stride, padding),
    }
    if padding == "same":
        providers[KERNEL_ALONE] = lambda t: aten_kernel(t, kernel, stride)
    order = [BASELINE, KERNEL_ALONE, OURS]
    with torch.no_grad():
        timings = {p: _measure(lambda f=providers[p]: f(x), quick, device) for p in order if p in providers}
    rows += _case_rows(f"{shape} fwd {precision}", timings)
    steps = {p: _fwd_bwd(providers[p], x) for p in order if p in providers}
    timings = {p: _measure(steps[p], quick, device) for p in order if p in steps}
    note = "backward recomputes the argmax (no int64 indices)" if not is_avg else ""
    rows += _case_rows(f"{shape} fwd+bwd {precision}", timings, note)
    return rows


def run(quick: bool = False, device: str = "cpu") -> List[Row]:
    """CPU: fp32 rows measured, GPU rows "not measured". CUDA: bf16 rows measured (ATen without cuDNN)."""
    rows: List[Row] = []
    for name, shape, kernel, stride, padding in I3D_POOLS:
        shape = _shape(shape, kernel, quick)
        if device == "cpu":
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d)
            rows += _measure_case(x, name, kernel, stride, padding, quick, device)
        else:
            x = torch.randn(shape, device=device, dtype=torch.bfloat16).contiguous(
                memory_format=torch.channels_last_3d)
            with torch.backends.cudnn.flags(enabled=False):
                rows += _measure_case(x, name, kernel, stride, padding, quick, device)
    if device == "cpu":
        why = "not measured (no GPU)" if not torch.cuda.is_available() else "not measured (--cpu)"
        for name, shape, kernel, stride, padding in I3D_POOLS:
            shape = _shape(shape, kernel, quick)
            for step in ("fwd", "fwd+bwd"):
                case = f"{name} {list(shape)} k{kernel} s{stride} {padding.upper()} {step} bf16 GPU"
                for provider in (BASELINE, OURS + " (Triton)"):
                    rows.append(Row("pool3d", case, provider, None, baseline=provider == BASELINE, note=why))
    return rows

