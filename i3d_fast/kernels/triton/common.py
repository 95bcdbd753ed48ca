"""What the Triton kernels (:mod:`.conv3d`, :mod:`.conv3d_bn`, :mod:`.pool3d`) share: tile configurations,
precision names, the device default, launch options and small index helpers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch
import triton
import triton.language as tl

#: Streaming multiprocessors assumed when the device cannot be asked (CPU / interpreter): an H100.
DEFAULT_SMS = 132
#: Compiler options every launch passes (fused multiply-add in the epilogue, stated explicitly).
COMPILE_OPTIONS = {"enable_fp_fusion": True}
#: Precision names: fp16 / bf16 (tensor cores), tf32 (fp32 on tensor cores), ieee (exact fp32, FMA).
PRECISIONS = ("fp16", "bf16", "tf32", "ieee")
TRITON_DTYPE = {"fp16": "fp16", "bf16": "bf16", "tf32": "fp32", "ieee": "fp32"}
DOT_PRECISION = {"fp16": None, "bf16": None, "tf32": "tf32", "ieee": "ieee"}


@dataclass(frozen=True)
class Config:
    """Tile sizes and launch options of one compiled GEMM variant."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        return f"{self.block_m}x{self.block_n}x{self.block_k}-w{self.num_warps}-s{self.num_stages}"


@triton.jit
def hint(v, VEC: tl.constexpr):
    """``v`` unchanged (the launcher guarantees ``v % VEC == 0``), now known to be a multiple of VEC."""
    if VEC > 1:
        v = v // VEC * VEC
    return v


@triton.jit
def decode(m, D1, D2, D3):
    """Flat index over [D0, D1, D2, D3] -> (i0, i1, i2, i3) (m >= 0)."""
    i3 = m % D3
    q = m // D3
    i2 = q % D2
    q = q // D2
    return q // D1, q % D1, i2, i3


def vector_elements(precision: str) -> int:
    """Elements per 16-byte vector."""
    return 8 if precision in ("fp16", "bf16") else 4


def site_strides(t: torch.Tensor) -> List[int]:
    """(N, T, H, W) strides of a Tensor[N, C, T, H, W], those of size-1 dims set to 0 (their index is always 0)."""
    return [0 if t.shape[d] == 1 else t.stride(d) for d in (0, 2, 3, 4)]


def is_aligned(values: Sequence[int], vec: int) -> bool:
    """Whether every value is a multiple of ``vec``."""
    return all(v % vec == 0 for v in values)
