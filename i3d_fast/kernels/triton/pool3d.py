"""Triton 3D max / average pooling on channels-last (NDHWC) tensors, forward and backward.

Same semantics as the C++ kernels (csrc/cpu/pool3d.cpp): windows are clipped to the real input
(padding never takes part; average divides by the real cells), a NaN in a window is its maximum,
and the first maximum in (t, h, w) order gets the gradient. fp16 / bf16 are upcast after every load
and accumulated in float32. Every load and store is masked.

Each program owns a tile of BLOCK_P positions x BLOCK_C channels (channels contiguous, so loads
coalesce), 2 elements per thread. Kernel sizes, strides, padding and sizes are run-time arguments
(tap loops are not unrolled: unrolling 27 taps spills). Positions and cells are int32 (the op
refuses inputs of 2**31 cells or more), element offsets int64 (cell * C + c), so tensors of more
than 2**31 elements are fine.

Backward is a gather, without atomics and without an int64 index tensor:
  1. ``_argmax_kernel`` recomputes, from the saved input, which tap of each output window holds its
     first maximum and stores it as one uint8 per output element (int32 for windows of more than
     256 taps): a transient tensor of 1/2 the bytes of a bf16 output, 1/8 of ATen's int64 indices.
  2. ``_max_grad_kernel`` / ``_avg_grad_kernel``: every input cell visits the few output windows
     that cover it (at most ceil(k/s) per dimension), in ascending order, and sums their gradients.
     Each input gradient is written exactly once, so the result is deterministic run to run.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import triton
import triton.language as tl

from ...padding import Pads, Triple, output_size
from .aot import AotSpec
from .common import decode

CL = torch.channels_last_3d
DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
NUM_WARPS = 8


@triton.jit
def _pool_kernel(x_ptr, y_ptr, N, T, H, W, C, OT, OH, OW, ST, SH, SW, PT, PH, PW,
                 KT, KH, KW, IS_MAX: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """y[n, ot, oh, ow, c] = max (NaN wins) or real-cell mean of x over the window (NDHWC)."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < N * OT * OH * OW
    c_ok = c < C
    n, ot, oh, ow = decode(p, OT, OH, OW)
    t0 = ot * ST - PT
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    if IS_MAX:
        acc = tl.full([BLOCK_P, BLOCK_C], float("-inf"), tl.float32)
    else:
        acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
        count = ((tl.minimum(t0 + KT, T) - tl.maximum(t0, 0)) * (tl.minimum(h0 + KH, H) - tl.maximum(h0, 0))
                 * (tl.minimum(w0 + KW, W) - tl.maximum(w0, 0))).to(tl.float32)
    for dt in range(KT):
        ti = t0 + dt
        t_ok = p_ok & (ti >= 0) & (ti < T)
        for dh in range(KH):
            hi = h0 + dh
            th_ok = t_ok & (hi >= 0) & (hi < H)
            for dw in range(KW):
                wi = w0 + dw
                ok = th_ok & (wi >= 0) & (wi < W)
                off = (((n * T + ti) * H + hi) * W + wi).to(tl.int64) * C
                mask = ok[:, None] & c_ok[None, :]
                if IS_MAX:
                    v = tl.load(x_ptr + off[:, None] + c[None, :], mask=mask, other=float("-inf")).to(tl.float32)
                    acc = tl.where((v > acc) | (v != v), v, acc)
                else:
                    v = tl.load(x_ptr + off[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float32)
                    acc += v
    if not IS_MAX:
        acc = acc / count[:, None]
    tl.store(y_ptr + (p.to(tl.int64) * C)[:, None] + c[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def _argmax_kernel(x_ptr, idx_ptr, N, T, H, W, C, OT, OH, OW, ST, SH, SW, PT, PH, PW,
                   KT, KH, KW, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """idx[n, ot, oh, ow, c] = tap (dt*KH + dh)*KW + dw of the window's first maximum (a NaN wins
    at once; a window of -inf only goes to its first real cell)."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < N * OT * OH * OW
    c_ok = c < C
    n, ot, oh, ow = decode(p, OT, OH, OW)
    t0 = ot * ST - PT
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    first = ((tl.maximum(t0, 0) - t0) * KH + (tl.maximum(h0, 0) - h0)) * KW + (tl.maximum(w0, 0) - w0)
    best = tl.full([BLOCK_P, BLOCK_C], float("-inf"), tl.float32)
    where = tl.zeros([BLOCK_P, BLOCK_C], tl.int32) + first.to(tl.int32)[:, None]
    for dt in range(KT):
        ti = t0 + dt
        t_ok = p_ok & (ti >= 0) & (ti < T)
        for dh in range(KH):
            hi = h0 + dh
            th_ok = t_ok & (hi >= 0) & (hi < H)
            for dw in range(KW):
                wi = w0 + dw
                ok = th_ok & (wi >= 0) & (wi < W)
                off = (((n * T + ti) * H + hi) * W + wi).to(tl.int64) * C
                v = tl.load(x_ptr + off[:, None] + c[None, :], mask=ok[:, None] & c_ok[None, :],
                            other=float("-inf")).to(tl.float32)
                take = (v > best) | ((v != v) & (best == best))
                best = tl.where(take, v, best)
                where = tl.where(take, (dt * KH + dh) * KW + dw, where)
    tl.store(idx_ptr + (p.to(tl.int64) * C)[:, None] + c[None, :], where.to(idx_ptr.dtype.element_ty),
             mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def _max_grad_kernel(g_ptr, idx_ptr, gx_ptr, N, T, H, W, C, OT, OH, OW, ST, SH, SW, PT, PH, PW, KT, KH, KW,
                     BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """gx[n, t, h, w, c] = sum of g over the windows covering (t, h, w) whose argmax is this cell."""
    q = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    q_ok = q < N * T * H * W
    c_ok = c < C
    n, t, h, w = decode(q, T, H, W)
    # Windows o with o*S - P <= i < o*S - P + K: the last is (i + P) // S, at most ceil(K / S) of them.
    jt = (KT + ST - 1) // ST
    jh = (KH + SH - 1) // SH
    jw = (KW + SW - 1) // SW
    acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for i in range(jt):
        ot = (t + PT) // ST - (jt - 1) + i
        dt = t + PT - ot * ST
        t_ok = q_ok & (ot >= 0) & (ot < OT) & (dt < KT)
        for j in range(jh):
            oh = (h + PH) // SH - (jh - 1) + j
            dh = h + PH - oh * SH
            th_ok = t_ok & (oh >= 0) & (oh < OH) & (dh < KH)
            for k in range(jw):
                ow = (w + PW) // SW - (jw - 1) + k
                dw = w + PW - ow * SW
                ok = th_ok & (ow >= 0) & (ow < OW) & (dw < KW)
                off = ((((n * OT + ot) * OH + oh) * OW + ow).to(tl.int64) * C)[:, None] + c[None, :]
                mask = ok[:, None] & c_ok[None, :]
                tap = tl.load(idx_ptr + off, mask=mask, other=0).to(tl.int32)
                g = tl.load(g_ptr + off, mask=mask, other=0.0).to(tl.float32)
                hit = mask & (tap == ((dt * KH + dh) * KW + dw).to(tl.int32)[:, None])
                acc += tl.where(hit, g, 0.0)
    tl.store(gx_ptr + (q.to(tl.int64) * C)[:, None] + c[None, :], acc.to(gx_ptr.dtype.element_ty),
             mask=q_ok[:, None] & c_ok[None, :])


@triton.jit
def _avg_grad_kernel(g_ptr, gx_ptr, N, T, H, W, C, OT, OH, OW, ST, SH, SW, PT, PH, PW, KT, KH, KW,
                     BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """gx[n, t, h, w, c] = sum of g / (real cells of the window) over the windows covering (t, h, w)."""
    q = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    q_ok = q < N * T * H * W
    c_ok = c < C
    n, t, h, w = decode(q, T, H, W)
    jt = (KT + ST - 1) // ST
    jh = (KH + SH - 1) // SH
    jw = (KW + SW - 1) // SW
    acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for i in range(jt):
        ot = (t + PT) // ST - (jt - 1) + i
        t0 = ot * ST - PT
        t_ok = q_ok & (ot >= 0) & (ot < OT) & (t - t0 < KT)
        ct = tl.minimum(t0 + KT, T) - tl.maximum(t0, 0)
        for j in range(jh):
            oh = (h + PH) // SH - (jh - 1) + j
            h0 = oh * SH - PH
            th_ok = t_ok & (oh >= 0) & (oh < OH) & (h - h0 < KH)
            cth = ct * (tl.minimum(h0 + KH, H) - tl.maximum(h0, 0))
            for k in range(jw):
                ow = (w + PW) // SW - (jw - 1) + k
                w0 = ow * SW - PW
                ok = th_ok & (ow >= 0) & (ow < OW) & (w - w0 < KW)
                count = cth * (tl.minimum(w0 + KW, W) - tl.maximum(w0, 0))
                count = tl.where(ok, count, 1).to(tl.float32)
                off = ((((n * OT + ot) * OH + oh) * OW + ow).to(tl.int64) * C)[:, None] + c[None, :]
                g = tl.load(g_ptr + off, mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
                acc += g / count[:, None]
    tl.store(gx_ptr + (q.to(tl.int64) * C)[:, None] + c[None, :], acc.to(gx_ptr.dtype.element_ty),
             mask=q_ok[:, None] & c_ok[None, :])


#: Elements (positions x channels) per program on a GPU, and in the interpreter (CPU tensors), where
#: each program instance costs about a millisecond whatever its size.
TILE = 512
INTERPRETER_TILE = 8192


def block_config(channels: int, tile: int = TILE):
    """(BLOCK_P, BLOCK_C) for a channel count: 64 channels x 8 positions per program when C >= 64,
    else the next power of two >= C (at least 16) x tile // BLOCK_C positions; with 8 warps, 2
    elements per thread. Every position held by a thread costs int32 index registers: 32 x 64 tiles
    spill, and 8 x 64 with 4 warps spills a word on sm_80."""
    block_c = min(64, max(16, triton.next_power_of_2(channels)))
    return tile // block_c, block_c


def _blocks(t: torch.Tensor, channels: int):
    return block_config(channels, TILE if t.is_cuda else INTERPRETER_TILE)


def index_dtype(kernel: Triple) -> torch.dtype:
    """Storage of the argmax tap: uint8 up to 256 taps per window, int32 beyond."""
    return torch.uint8 if kernel[0] * kernel[1] * kernel[2] <= 256 else torch.int32


def _geometry(shape, out, stride, pads):
    n, c, t, h, w = shape
    return (n, t, h, w, c, *out, *stride, *(p[0] for p in pads))


def _grid(positions: int, channels: int, block_p: int, block_c: int):
    return (triton.cdiv(positions, block_p), triton.cdiv(channels, block_c))


def pool3d(x: torch.Tensor, mode: str, kernel: Triple, stride: Triple, pads: Pads) -> torch.Tensor:
    """Tensor[N, C, T, H, W] -> Tensor[N, C, OT, OH, OW], both channels_last_3d."""
    x = x.contiguous(memory_format=CL)
    out = tuple(output_size(*a) for a in zip(x.shape[2:], kernel, stride, pads))
    y = torch.empty(x.shape[:2] + out, dtype=x.dtype, device=x.device, memory_format=CL)
    block_p, block_c = _blocks(x, x.shape[1])
    _pool_kernel[_grid(x.shape[0] * out[0] * out[1] * out[2], x.shape[1], block_p, block_c)](
        x, y, *_geometry(x.shape, out, stride, pads), KT=kernel[0], KH=kernel[1], KW=kernel[2],
        IS_MAX=mode == "max", BLOCK_P=block_p, BLOCK_C=block_c, num_warps=NUM_WARPS)
    return y


def pool3d_backward(grad_out: torch.Tensor, x: Optional[torch.Tensor], input_shape, mode: str, kernel: Triple,
                    stride: Triple, pads: Pads) -> torch.Tensor:
    """Gradient w.r.t. the input; ``x`` (the saved input) is needed for max only."""
    grad_out = grad_out.contiguous(memory_format=CL)
    n, c, t, h, w = input_shape
    out = tuple(grad_out.shape[2:])
    grad_in = torch.empty(input_shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=CL)
    block_p, block_c = _blocks(grad_out, c)
    geometry = _geometry(input_shape, out, stride, pads)
    grid = _grid(n * t * h * w, c, block_p, block_c)
    if mode == "max":
        x = x.contiguous(memory_format=CL)
        idx = torch.empty(grad_out.shape, dtype=index_dtype(kernel), device=x.device, memory_format=CL)
        _argmax_kernel[_grid(n * out[0] * out[1] * out[2], c, block_p, block_c)](
            x, idx, *geometry, KT=kernel[0], KH=kernel[1], KW=kernel[2], BLOCK_P=block_p, BLOCK_C=block_c,
            num_warps=NUM_WARPS)
        _max_grad_kernel[grid](grad_out, idx, grad_in, *geometry, *kernel, BLOCK_P=block_p, BLOCK_C=block_c,
                               num_warps=NUM_WARPS)
    else:
        _avg_grad_kernel[grid](grad_out, grad_in, *geometry, *kernel, BLOCK_P=block_p, BLOCK_C=block_c,
                               num_warps=NUM_WARPS)
    return grad_in


# ---------------------------------------------------------------------------------------------
# Ahead-of-time variants. Kernel sizes, strides and padding are run-time arguments, so one variant
# per (kernel, dtype, index type, block config) serves every pooling layer of I3D.

#: Channel counts of I3D's pooling inputs (every one selects the 64-channel block).
I3D_CHANNELS = (64, 192, 480, 832, 1024)

_GEOMETRY_ARGS = ("N", "T", "H", "W", "C", "OT", "OH", "OW", "ST", "SH", "SW", "PT", "PH", "PW", "KT", "KH", "KW")


def _signature(pointers, constexprs):
    return {**pointers, **{name: "i32" for name in _GEOMETRY_ARGS}, **{name: "constexpr" for name in constexprs}}


def aot_specs() -> List[AotSpec]:
    """Every shipped variant: forward (max, avg), argmax and gradient kernels, fp32 / fp16 / bf16,
    uint8 and int32 tap indices, in the block configs that I3D's channel counts select."""
    specs: List[AotSpec] = []
    for block_p, block_c in sorted({block_config(c) for c in I3D_CHANNELS}):
        blocks = {"BLOCK_P": block_p, "BLOCK_C": block_c}
        tag = f"p{block_p}c{block_c}"
        for dtype, name in DTYPES.items():
            ptr = f"*{name}"
            for mode in ("max", "avg"):
                fwd = {"IS_MAX": mode == "max", **blocks}
                specs.append(AotSpec(f"pool3d_{mode}_{name}_{tag}", _pool_kernel,
                                     _signature({"x_ptr": ptr, "y_ptr": ptr}, fwd), fwd, NUM_WARPS))
            for idx in ("u8", "i32"):
                specs.append(AotSpec(f"pool3d_argmax_{name}_{idx}_{tag}", _argmax_kernel,
                                     _signature({"x_ptr": ptr, "idx_ptr": f"*{idx}"}, blocks), blocks, NUM_WARPS))
                specs.append(AotSpec(f"pool3d_max_grad_{name}_{idx}_{tag}", _max_grad_kernel,
                                     _signature({"g_ptr": ptr, "idx_ptr": f"*{idx}", "gx_ptr": ptr}, blocks), blocks,
                                     NUM_WARPS))
            specs.append(AotSpec(f"pool3d_avg_grad_{name}_{tag}", _avg_grad_kernel,
                                 _signature({"g_ptr": ptr, "gx_ptr": ptr}, blocks), blocks, NUM_WARPS))
    return specs
