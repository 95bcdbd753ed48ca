"""Whole-model benchmarks: I3D RGB forward, reference model vs the fused inference model.

Run as ``python -m i3d_fast.bench.model PROVIDER FRAMES`` it prints one provider's peak memory
growth (MiB) in a fresh process; :func:`run` uses that for the table's "peak MiB" column.
"""
from __future__ import annotations

import sys
from typing import Callable, List

import torch

from ..models import InceptionI3d, fuse
from .report import Row
from .timing import measure_interleaved, peak_memory_in_subprocess, peak_rss_mb

CL = torch.channels_last_3d
PROVIDERS = ("reference model (channels_last_3d)", "i3d_fast.fuse(model)")


def workload(provider: str, frames: int, device: str = "cpu") -> Callable[[], torch.Tensor]:
    """A no-grad forward of ``provider`` on a [1, 3, frames, 224, 224] fp32 clip."""
    x = (torch.rand(1, 3, frames, 224, 224, device=device) * 2 - 1).contiguous(memory_format=CL)
    model = InceptionI3d().to(device).eval().to(memory_format=CL)
    if provider == PROVIDERS[1]:
        model = fuse(model)

    def forward():
        with torch.no_grad():
            return model(x)

    return forward


def run(quick: bool = False, device: str = "cpu") -> List[Row]:
    frames = 16 if quick else 64
    repeat = 3 if quick else 5
    case = f"I3D RGB forward [1, 3, {frames}, 224, 224] float32"
    rows = []
    # Interleaved, run by run: on a shared machine a slow spell then falls on both providers.
    timings = measure_interleaved([workload(p, frames, device) for p in PROVIDERS], repeat, device=device)
    for i, (provider, timing) in enumerate(zip(PROVIDERS, timings)):
        extra = {}
        if device == "cpu":
            peak = peak_memory_in_subprocess(__name__, str(i), str(frames))
            if peak is not None:
                extra["peak MiB"] = round(peak, 1)
        rows.append(Row("model", case, provider, timing, baseline=i == 0, extra=extra))
    return rows


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    fn = workload(PROVIDERS[int(sys.argv[1])], int(sys.argv[2]))
    print(peak_rss_mb(fn))
