"""The ``conv3d`` suite: on a CUDA device the Triton kernels against cuDNN (:mod:`.conv3d_cuda`);
on the CPU the ``cpu`` backend against oneDNN / BLAS (:mod:`.conv3d_cpu`), plus the GPU rows
marked "not measured"."""
from __future__ import annotations

from typing import List

from . import conv3d_cpu, conv3d_cuda
from .report import Row


def run(quick: bool = False, device: str = "cpu") -> List[Row]:
    if device == "cuda":
        return conv3d_cuda.run(quick=quick, device=device)
    return conv3d_cpu.run(quick=quick, device=device) + conv3d_cuda.run(quick=quick, device=device)
