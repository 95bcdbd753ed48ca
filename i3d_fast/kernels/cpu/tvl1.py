"""C++ TV-L1 solver (csrc/cpu/tvl1.cpp): batches of frame pairs, multi-threaded."""
from __future__ import annotations

from typing import List

import torch

from . import extension, threads


def tvl1(frames0: torch.Tensor, frames1: torch.Tensor, params, iterations: List[int] | None = None) -> torch.Tensor:
    """frames Tensor[N, H, W] (uint8, or float32 in [0, 1]) on the CPU -> flow Tensor[N, 2, H, W] float32,
    with ``torch.get_num_threads()`` threads.

    ``iterations``, when given, receives the number of inner iterations run per pair (all levels and
    warps; what OpenCV's stopping rule allowed).
    """
    frames0 = frames0.contiguous()
    frames1 = frames1.contiguous()
    n, h, w = frames0.shape
    out = torch.empty((n, 2, h, w), dtype=torch.float32)
    counts = extension().tvl1_solve(
        frames0.data_ptr(), frames1.data_ptr(), "uint8" if frames0.dtype == torch.uint8 else "float32", n, h, w,
        out.data_ptr(), params.tau, params.lambda_, params.theta, params.nscales, params.warps, params.epsilon,
        params.inner_iterations, params.outer_iterations, params.scale_step, params.median_filtering,
        threads())
    if iterations is not None:
        iterations[:] = counts
    return out
