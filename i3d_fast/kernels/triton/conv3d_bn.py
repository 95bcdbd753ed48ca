"""Trainable Conv3d + BatchNorm (batch statistics) + ReLU as Triton kernels on NDHWC tensors.

Forward (``forward_train``):
  1. ``_forward_kernel``: implicit GEMM z = conv3d(x, w) (M = N*OT*OH*OW output sites, N = Cout,
     K = kT*kH*kW*Cin, taps outer and channels inner) whose epilogue also reduces its own tile: per
     channel, the sum and the centred sum of squares of the z values it stored (rounded to z's
     dtype, so the statistics are those of the saved z). Partials go to a [2, M tiles, Cout] float32
     buffer; no atomics.
  2. The partials are combined in float64 in a fixed order (Chan's formula for the centred sums),
     giving mean and biased variance without a second pass over z.
  3. ``_bn_apply_kernel``: y = relu?((z - mean) * scale + beta), one elementwise pass.

Backward (``backward_train``):
  1. ``_bn_grad_reduce_kernel``: g = grad * (y > 0) (y recomputed from z) and per-channel partial
     sums of g and g * (z - mean) per row tile; combined in float64 (fixed order).
  2. ``_bn_grad_apply_kernel``: grad_z = a * g + b * (z - mean) + c with BatchNorm's coefficients
     (:func:`i3d_fast.kernels.aten.conv3d_bn.grad_coefficients`).
  3. ``_dgrad_kernel``: grad_x as an implicit GEMM over grad_z (M = input sites, N = Cin, K = taps x
     Cout). Strided layers are split by the phase of the input position (ti mod sT, ...): the inputs
     of one phase receive contributions from the taps kt = (ti + pT) mod sT + j * sT only, so every
     program multiplies only terms that exist (no dilated gradient, no masked-out taps). Each input
     gradient is written exactly once.
  4. ``_wgrad_kernel``: grad_w as a GEMM with M = Cout, N = taps x Cin, K = output sites, split over K
     into float32 partials that are summed in float64 in a fixed order (deterministic split-K).

Padding (TF SAME or explicit, asymmetric) is index arithmetic and load masks in every kernel.
The A/B loads of the GEMMs come in two kinds, picked by the constexpr ``MODE``:
``DIRECT`` (a K step is one tap and a chunk of channels, 16-byte vectors; for aligned channel
runs) and ``FOLD`` (a K step is BLOCK_K consecutive (tap, channel) pairs decoded arithmetically, so
the RGB stem's 3 channels fill the tile; any strides, and exact fp32). fp16 / bf16 use tensor cores
with float32 accumulation; fp32 uses tf32 tensor cores when ``torch.backends.cudnn.allow_tf32`` is
set (what cuDNN does for the same model), else exact fp32 ("ieee"). Statistics are float32 per tile,
float64 across tiles. Offsets are 32-bit: tensors of 2**31 elements or more are refused
(:func:`why_unsupported`), and the op falls back to ATen for them.

Launch configurations come from deterministic heuristics (:func:`choose_config`,
:func:`choose_splits`) that only pick variants listed in :data:`SHIPPED`; :func:`aot_specs` compiles
all of them ahead of time for sm_80 / sm_90 (tests/test_triton_aot.py).
"""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ...padding import Pads, Triple, output_size
from ..aten.conv3d_bn import grad_coefficients, scale_invstd
from .aot import AotSpec
from .common import (COMPILE_OPTIONS, DEFAULT_SMS, DOT_PRECISION, TRITON_DTYPE, Config, decode, hint, is_aligned,
                     site_strides, vector_elements)

CL = torch.channels_last_3d
DIRECT, FOLD = 0, 1
MODE_NAMES = {DIRECT: "direct", FOLD: "fold"}
NAME = "conv3d_bn (triton)"
#: Packed weights pad their column count to a multiple of this many (zero) columns.
COLUMN_PAD = 16
#: Split-K: at most this many splits, each at least this many K steps long, and at most this many
#: float32 partial sums in all (64 MiB).
MAX_SPLITS = 256
MIN_STEPS_PER_SPLIT = 8
MAX_PARTIALS = 2**24
#: Rows each program of the gradient reduction covers (a multiple of every BLOCK_R).
REDUCE_ROWS = 512
_INT32_LIMIT = 2**31 - 1


_FWD_INTS = ("T", "H", "W", "Cin", "OT", "OH", "OW", "M", "Cout", "NP", "K", "kT", "kH", "kW", "sT", "sH", "sW",
             "pT", "pH", "pW", "sxN", "sxT", "sxH", "sxW", "x_off", "num_tiles")


@triton.jit(do_not_specialize=_FWD_INTS)
def _forward_kernel(
    x_ptr, w_ptr, z_ptr, part_ptr,
    T, H, W, Cin, OT, OH, OW, M, Cout, NP, K, kT, kH, kW, sT, sH, sW, pT, pH, pW,
    sxN, sxT, sxH, sxW, x_off, num_tiles,
    MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    VEC: tl.constexpr, PRECISION: tl.constexpr,
):
    """z[M, Cout] = conv3d(x, w) (x NDHWC with strides sx*, w packed [K, NP]); part[0 / 1, tile, c]:
    sum and centred sum of squares of the tile's stored z."""
    NP = hint(NP, 16)
    Cout = hint(Cout, VEC)
    if MODE == 0:
        Cin = hint(Cin, VEC)
        sxN = hint(sxN, VEC)
        sxT = hint(sxT, VEC)
        sxH = hint(sxH, VEC)
        sxW = hint(sxW, VEC)
        x_off = hint(x_off, VEC)
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(Cout, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid - pid_m * num_pid_n

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    nb, ot, oh, ow = decode(tl.where(m_ok, offs_m, 0), OT, OH, OW)
    tb = ot * sT - pT
    hb = oh * sH - pH
    wb = ow * sW - pW
    x_row = nb * sxN + tb * sxT + hb * sxH + wb * sxW
    x_base = x_ptr + x_off
    offs_k = tl.arange(0, BLOCK_K)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    w_cols = w_ptr + offs_n[None, :]
    n_ok_w = offs_n < NP
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if MODE == 0:
        # DIRECT: K step = (tap, chunk of BLOCK_K channels).
        chunks = tl.cdiv(Cin, BLOCK_K)
        for it in range(0, kT * kH * kW * chunks):
            tap = it // chunks
            c = (it - tap * chunks) * BLOCK_K + offs_k
            kw = tap % kW
            kh = (tap // kW) % kH
            kt = tap // (kW * kH)
            ti = tb + kt
            hi = hb + kh
            wi = wb + kw
            ok = m_ok & (ti >= 0) & (ti < T) & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
            row = tl.multiple_of(tl.where(ok, x_row + (kt * sxT + kh * sxH + kw * sxW), 0), [VEC])
            c_ok = c < Cin
            a = tl.load(x_base + row[:, None] + c[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_cols + (tap * Cin + c)[:, None] * NP, mask=c_ok[:, None] & n_ok_w[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
    else:
        # FOLD: K step = BLOCK_K consecutive (tap, channel) pairs.
        for k0 in range(0, K, BLOCK_K):
            k = k0 + offs_k
            c = k % Cin
            tap = k // Cin
            kw = tap % kW
            kh = (tap // kW) % kH
            kt = tap // (kW * kH)
            ti = tb[:, None] + kt[None, :]
            hi = hb[:, None] + kh[None, :]
            wi = wb[:, None] + kw[None, :]
            ok = (m_ok[:, None] & (k < K)[None, :] & (ti >= 0) & (ti < T) & (hi >= 0) & (hi < H)
                  & (wi >= 0) & (wi < W))
            delta = kt * sxT + kh * sxH + kw * sxW + c
            a = tl.load(x_base + tl.where(ok, x_row[:, None] + delta[None, :], 0), mask=ok, other=0.0)
            b = tl.load(w_cols + k[:, None] * NP, mask=(k < K)[:, None] & n_ok_w[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)

    # Epilogue: store z, then the tile's statistics of the stored (rounded) values.
    n_ok = offs_n < Cout
    z = acc.to(z_ptr.dtype.element_ty)
    rows = tl.multiple_of(offs_m * Cout, [VEC])
    tl.store(z_ptr + rows[:, None] + offs_n[None, :], z, mask=m_ok[:, None] & n_ok[None, :])
    zf = tl.where(m_ok[:, None], z.to(tl.float32), 0.0)
    count = tl.minimum(M - pid_m * BLOCK_M, BLOCK_M).to(tl.float32)
    s = tl.sum(zf, axis=0)
    d = tl.where(m_ok[:, None], zf - (s / count)[None, :], 0.0)
    tl.store(part_ptr + pid_m * Cout + offs_n, s, mask=n_ok)
    tl.store(part_ptr + (num_tiles + pid_m) * Cout + offs_n, tl.sum(d * d, axis=0), mask=n_ok)


_APPLY_INTS = ("M", "C")
_REDUCE_INTS = ("M", "C", "rows_per_prog", "num_tiles", "relu")
_GRAD_APPLY_INTS = ("M", "C", "relu")


@triton.jit(do_not_specialize=_APPLY_INTS)
def _bn_apply_kernel(z_ptr, y_ptr, mean_ptr, scale_ptr, beta_ptr, M, C, lo,
                     BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, VEC: tl.constexpr):
    """y[M, C] = max((z - mean) * scale + beta, lo) in float32 (lo = 0: ReLU, -inf: none)."""
    C = hint(C, VEC)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    ok = (r < M)[:, None] & c_ok[None, :]
    offs = tl.multiple_of(r * C, [VEC])[:, None] + c[None, :]
    mean = tl.load(mean_ptr + c, mask=c_ok, other=0.0)
    scale = tl.load(scale_ptr + c, mask=c_ok, other=0.0)
    beta = tl.load(beta_ptr + c, mask=c_ok, other=0.0)
    z = tl.load(z_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    y = (z - mean[None, :]) * scale[None, :] + beta[None, :]
    y = tl.maximum(y, lo, propagate_nan=tl.PropagateNan.ALL)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _masked_grad(g_ptr, z_ptr, offs, ok, mean, scale, beta, relu):
    """(g * (y > 0) or g, z - mean) in float32 for one [rows, channels] tile."""
    z = tl.load(z_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    centred = z - mean[None, :]
    y = centred * scale[None, :] + beta[None, :]
    g = tl.where((y > 0) | (relu == 0), g, 0.0)
    return g, tl.where(ok, centred, 0.0)


@triton.jit(do_not_specialize=_REDUCE_INTS)
def _bn_grad_reduce_kernel(g_ptr, z_ptr, mean_ptr, scale_ptr, beta_ptr, part_ptr, M, C, rows_per_prog,
                           num_tiles, relu, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, VEC: tl.constexpr):
    """part[0 / 1, tile, c] = sums of g and g * (z - mean) over the tile's rows_per_prog rows of
    [M, C] (g = grad * (y > 0) when relu)."""
    C = hint(C, VEC)
    tile = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    mean = tl.load(mean_ptr + c, mask=c_ok, other=0.0)
    scale = tl.load(scale_ptr + c, mask=c_ok, other=0.0)
    beta = tl.load(beta_ptr + c, mask=c_ok, other=0.0)
    sum_g = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    sum_gz = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    start = tile * rows_per_prog
    for r0 in range(start, tl.minimum(start + rows_per_prog, M), BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        ok = (r < M)[:, None] & c_ok[None, :]
        offs = tl.multiple_of(r * C, [VEC])[:, None] + c[None, :]
        g, centred = _masked_grad(g_ptr, z_ptr, offs, ok, mean, scale, beta, relu)
        sum_g += g
        sum_gz += g * centred
    tl.store(part_ptr + tile * C + c, tl.sum(sum_g, axis=0), mask=c_ok)
    tl.store(part_ptr + (num_tiles + tile) * C + c, tl.sum(sum_gz, axis=0), mask=c_ok)


@triton.jit(do_not_specialize=_GRAD_APPLY_INTS)
def _bn_grad_apply_kernel(g_ptr, z_ptr, dz_ptr, mean_ptr, scale_ptr, beta_ptr, coef_ptr, M, C, relu,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, VEC: tl.constexpr):
    """dz[M, C] = a * g + b * (z - mean) + c with coef = [a | b | c] (float32 [3, C])."""
    C = hint(C, VEC)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    ok = (r < M)[:, None] & c_ok[None, :]
    offs = tl.multiple_of(r * C, [VEC])[:, None] + c[None, :]
    mean = tl.load(mean_ptr + c, mask=c_ok, other=0.0)
    scale = tl.load(scale_ptr + c, mask=c_ok, other=0.0)
    beta = tl.load(beta_ptr + c, mask=c_ok, other=0.0)
    ca = tl.load(coef_ptr + c, mask=c_ok, other=0.0)
    cb = tl.load(coef_ptr + C + c, mask=c_ok, other=0.0)
    cc = tl.load(coef_ptr + 2 * C + c, mask=c_ok, other=0.0)
    g, centred = _masked_grad(g_ptr, z_ptr, offs, ok, mean, scale, beta, relu)
    dz = g * ca[None, :] + centred * cb[None, :] + cc[None, :]
    tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=ok)


_DGRAD_INTS = ("T", "H", "W", "Cin", "CinP", "OT", "OH", "OW", "Cout", "N", "kT", "kH", "kW", "sT", "sH", "sW",
               "pT", "pH", "pW")


@triton.jit(do_not_specialize=_DGRAD_INTS)
def _dgrad_kernel(
    g_ptr, w_ptr, dx_ptr,
    T, H, W, Cin, CinP, OT, OH, OW, Cout, N, kT, kH, kW, sT, sH, sW, pT, pH, pW,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, VEC: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dx[N, T, H, W, Cin] = transposed conv of g[N, OT, OH, OW, Cout] with w packed as
    [kT, kH, kW, Cout, CinP]. Axis 1 of the grid is the phase (ti, hi, wi) mod (sT, sH, sW)."""
    Cin = hint(Cin, VEC)
    Cout = hint(Cout, VEC)
    CinP = hint(CinP, 16)
    phase = tl.program_id(1)
    fw = phase % sW
    fh = (phase // sW) % sH
    ft = phase // (sW * sH)
    # Inputs of this phase: ti = ft + it * sT, it < Tp; their windows start at taps rt (mod sT).
    Tp = (T - ft + sT - 1) // sT
    Hp = (H - fh + sH - 1) // sH
    Wp = (W - fw + sW - 1) // sW
    Mp = N * Tp * Hp * Wp
    rt = (ft + pT) % sT
    rh = (fh + pH) % sH
    rw = (fw + pW) % sW
    nT = (kT - rt + sT - 1) // sT
    nH = (kH - rh + sH - 1) // sH
    nW = (kW - rw + sW - 1) // sW

    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(Cin, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid - pid_m * num_pid_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < Mp
    nb, it, ih, iw = decode(tl.where(m_ok, offs_m, 0), tl.maximum(Tp, 1), tl.maximum(Hp, 1), tl.maximum(Wp, 1))
    # Output index of tap rt (j = 0); tap rt + j * sT reaches output ob - j.
    obt = it + (ft + pT - rt) // sT
    obh = ih + (fh + pH - rh) // sH
    obw = iw + (fw + pW - rw) // sW
    offs_k = tl.arange(0, BLOCK_K)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok_w = offs_n < CinP
    chunks = tl.cdiv(Cout, BLOCK_K)
    steps = tl.where(pid_m * BLOCK_M < Mp, nT * nH * nW * chunks, 0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(0, steps):
        j = i // chunks
        co = (i - j * chunks) * BLOCK_K + offs_k
        jw = j % nW
        jh = (j // nW) % nH
        jt = j // (nW * nH)
        ot = obt - jt
        oh = obh - jh
        ow = obw - jw
        ok = m_ok & (ot >= 0) & (ot < OT) & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW)
        row = tl.multiple_of(tl.where(ok, (((nb * OT + ot) * OH + oh) * OW + ow) * Cout, 0), [VEC])
        co_ok = co < Cout
        a = tl.load(g_ptr + row[:, None] + co[None, :], mask=ok[:, None] & co_ok[None, :], other=0.0)
        tap = ((rt + jt * sT) * kH + rh + jh * sH) * kW + rw + jw * sW
        b = tl.load(w_ptr + (tap * Cout + co)[:, None] * CinP + offs_n[None, :],
                    mask=co_ok[:, None] & n_ok_w[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    ti = ft + it * sT
    hi = fh + ih * sH
    wi = fw + iw * sW
    rows = tl.multiple_of((((nb * T + ti) * H + hi) * W + wi) * Cin, [VEC])
    tl.store(dx_ptr + rows[:, None] + offs_n[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=m_ok[:, None] & (offs_n < Cin)[None, :])


_WGRAD_INTS = ("T", "H", "W", "Cin", "OT", "OH", "OW", "M", "Cout", "NC", "kT", "kH", "kW", "sT", "sH", "sW",
               "pT", "pH", "pW", "sxN", "sxT", "sxH", "sxW", "x_off", "per_split")


@triton.jit(do_not_specialize=_WGRAD_INTS)
def _wgrad_kernel(
    g_ptr, x_ptr, part_ptr,
    T, H, W, Cin, OT, OH, OW, M, Cout, NC, kT, kH, kW, sT, sH, sW, pT, pH, pW,
    sxN, sxT, sxH, sxW, x_off, per_split,
    MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    VEC: tl.constexpr, PRECISION: tl.constexpr,
):
    """part[split, co, (tap, ci)] = sum over the split's output sites of g[site, co] * x[site's
    input at tap, ci] (g [M, Cout], x NDHWC with strides sx*; NC = taps * Cin)."""
    Cout = hint(Cout, VEC)
    if MODE == 0:
        Cin = hint(Cin, VEC)
        sxN = hint(sxN, VEC)
        sxT = hint(sxT, VEC)
        sxH = hint(sxH, VEC)
        sxW = hint(sxW, VEC)
        x_off = hint(x_off, VEC)
    pid = tl.program_id(0)
    split = tl.program_id(1)
    if MODE == 0:
        chunks = tl.cdiv(Cin, BLOCK_N)
        num_pid_n = kT * kH * kW * chunks
    else:
        num_pid_n = tl.cdiv(NC, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid - pid_m * num_pid_n
    offs_co = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    co_ok = offs_co < Cout
    if MODE == 0:
        # DIRECT: the column tile is one tap and a chunk of channels.
        tap = pid_n // chunks
        ci = (pid_n - tap * chunks) * BLOCK_N + tl.arange(0, BLOCK_N)
        col = tap * Cin + ci
        col_ok = ci < Cin
        kw = tap % kW
        kh = (tap // kW) % kH
        kt = tap // (kW * kH)
        delta = kt * sxT + kh * sxH + kw * sxW
    else:
        # FOLD: the column tile is BLOCK_N consecutive (tap, channel) pairs.
        col = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = col < NC
        ci = col % Cin
        tap = col // Cin
        kw = tap % kW
        kh = (tap // kW) % kH
        kt = tap // (kW * kH)
        delta = kt * sxT + kh * sxH + kw * sxW + ci
    x_base = x_ptr + x_off
    start = split * per_split
    stop = tl.minimum(start + per_split, M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(start, stop, BLOCK_K):
        s = k0 + tl.arange(0, BLOCK_K)
        s_ok = s < stop
        nb, ot, oh, ow = decode(tl.where(s_ok, s, 0), OT, OH, OW)
        tb = ot * sT - pT
        hb = oh * sH - pH
        wb = ow * sW - pW
        x_row = nb * sxN + tb * sxT + hb * sxH + wb * sxW
        g_rows = tl.multiple_of(s * Cout, [VEC])
        a_t = tl.load(g_ptr + g_rows[:, None] + offs_co[None, :], mask=s_ok[:, None] & co_ok[None, :], other=0.0)
        if MODE == 0:
            ti = tb + kt
            hi = hb + kh
            wi = wb + kw
            ok = s_ok & (ti >= 0) & (ti < T) & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
            row = tl.multiple_of(tl.where(ok, x_row + delta, 0), [VEC])
            b = tl.load(x_base + row[:, None] + ci[None, :], mask=ok[:, None] & col_ok[None, :], other=0.0)
        else:
            ti = tb[:, None] + kt[None, :]
            hi = hb[:, None] + kh[None, :]
            wi = wb[:, None] + kw[None, :]
            ok = (s_ok[:, None] & col_ok[None, :] & (ti >= 0) & (ti < T) & (hi >= 0) & (hi < H)
                  & (wi >= 0) & (wi < W))
            b = tl.load(x_base + tl.where(ok, x_row[:, None] + delta[None, :], 0), mask=ok, other=0.0)
        acc = tl.dot(tl.trans(a_t), b, acc, input_precision=PRECISION)
    out = part_ptr + (split * Cout + offs_co)[:, None] * NC + col[None, :]
    tl.store(out, acc, mask=co_ok[:, None] & col_ok[None, :])


# -- variants and launch configurations -------------------------------------------------------------
GEMMS = ("forward", "dgrad", "wgrad")

_BIG16, _SMALL16 = Config(128, 128, 64, 8, 3), Config(64, 64, 64, 4, 3)
_TF32 = Config(64, 64, 32, 4, 3)
# The gathered (FOLD / unaligned) loads and exact fp32 need 8 warps to stay far from 255 registers
# (4 warps spill in the ieee forward on sm_90).
_GATHER = Config(64, 64, 32, 8, 2)
_IEEE = Config(64, 64, 16, 8, 2)
#: Every GEMM variant we ship: (gemm, mode, precision, aligned) -> configs, largest first. "aligned"
#: means every channel run and row stride the kernel touches is a whole number of 16-byte vectors.
#: The data gradient has only the DIRECT form (its K is Cout, never the stem's 3 channels).
SHIPPED: Dict[Tuple[str, int, str, bool], Tuple[Config, ...]] = {}
for _g in GEMMS:
    for _p in ("fp16", "bf16"):
        SHIPPED[(_g, DIRECT, _p, True)] = (_BIG16, _SMALL16)
    SHIPPED[(_g, DIRECT, "tf32", True)] = (_TF32,)
    _any = FOLD if _g != "dgrad" else DIRECT
    for _p in ("fp16", "bf16", "tf32"):
        SHIPPED[(_g, _any, _p, False)] = (_GATHER,)
    SHIPPED[(_g, _any, "ieee", False)] = (_IEEE,)
del _g, _p, _any
#: DIRECT is used when at most this fraction of its channel chunks is padding (else FOLD).
DIRECT_MAX_CHANNEL_WASTE = 0.25


class Elementwise(NamedTuple):
    """Tile and warps of the BatchNorm kernels (rows x channels of the [M, C] activations)."""

    block_r: int
    block_c: int
    num_warps: int


ELEMENTWISE = Elementwise(32, 64, 4)
ELEMENTWISE_KERNELS = ("apply", "grad_reduce", "grad_apply")
_ELEMENTWISE_FN = {"apply": (_bn_apply_kernel, _APPLY_INTS), "grad_reduce": (_bn_grad_reduce_kernel, _REDUCE_INTS),
                   "grad_apply": (_bn_grad_apply_kernel, _GRAD_APPLY_INTS)}
_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def precision_of(dtype: torch.dtype) -> str:
    """The precision name for a tensor dtype; fp32 follows ``torch.backends.cudnn.allow_tf32``."""
    if dtype == torch.float16:
        return "fp16"
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float32:
        return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    raise TypeError(f"{NAME}: supports float32, float16 and bfloat16, got {dtype}")


def choose_mode(gemm: str, precision: str, channels: int, aligned: bool) -> Tuple[int, bool]:
    """(MODE, aligned) of ``gemm`` (a key part of :data:`SHIPPED`); ``channels`` is the DIRECT chunk's
    channel count (Cin for forward / wgrad)."""
    direct = (gemm, DIRECT, precision, True)
    if direct in SHIPPED and aligned:
        block = SHIPPED[direct][0].block_k
        waste = 1.0 - channels / (math.ceil(channels / block) * block)
        if gemm == "dgrad" or waste <= DIRECT_MAX_CHANNEL_WASTE:
            return DIRECT, True
    return (DIRECT if gemm == "dgrad" else FOLD), False


def choose_config(key: Tuple[str, int, str, bool], rows: int, cols: int, sms: int = DEFAULT_SMS) -> Config:
    """Deterministic tile choice among ``SHIPPED[key]`` for a GEMM of ``rows`` x ``cols`` outputs:
    column tiles at least twice as wide as needed are skipped; among tiles that still give two
    programs per SM, the fewest padded columns (then the larger tile) wins; else the smallest tile."""
    configs = SHIPPED[key]

    def padded(c: Config) -> int:
        return math.ceil(cols / c.block_n) * c.block_n

    usable = [c for c in configs if padded(c) < 2 * cols] or list(configs)
    full = [c for c in usable if math.ceil(rows / c.block_m) * math.ceil(cols / c.block_n) >= 2 * sms]
    if full:
        return min(full, key=lambda c: (padded(c), -c.block_m * c.block_n))
    return usable[-1]


def choose_splits(tiles: int, sites: int, block_k: int, weight_elements: int, sms: int = DEFAULT_SMS) -> int:
    """Split-K factor of the weight gradient: enough programs for two per SM, each split at least
    MIN_STEPS_PER_SPLIT K steps long, at most MAX_SPLITS and MAX_PARTIALS // weight_elements."""
    steps = math.ceil(sites / block_k)
    return max(1, min(math.ceil(2 * sms / tiles), steps // MIN_STEPS_PER_SPLIT, MAX_SPLITS,
                      MAX_PARTIALS // weight_elements))


# -- tensors ----------------------------------------------------------------------------------------
def _aligned_base(t: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """(a view of ``t``'s storage starting at a 16-byte aligned address, the element offset of ``t``
    from it); ``(t, 0)`` when no aligned start precedes ``t`` in its storage."""
    r = (t.data_ptr() % 16) // t.element_size()
    if r and t.storage_offset() >= r:
        return t.as_strided((1,), (1,), t.storage_offset() - r), r
    return t, 0


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` with channel stride 1 (a copy only when it is not)."""
    return t if t.shape[1] == 1 or t.stride(1) == 1 else t.contiguous(memory_format=CL)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a dense channels_last_3d tensor ([M, C] rows) at a 16-byte aligned address."""
    t = t.contiguous(memory_format=CL)
    return t if t.data_ptr() % 16 == 0 else t.clone(memory_format=CL)


def _vector(t: torch.Tensor) -> torch.Tensor:
    """A per-channel vector as contiguous float32 at a 16-byte aligned address."""
    t = t.detach().float().contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _extent(t: torch.Tensor) -> int:
    """One past the largest element offset ``t`` reaches."""
    return 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) if t.numel() else 0


def _out_sizes(size, kernel: Triple, stride: Triple, pads: Pads) -> Tuple[int, int, int]:
    out = tuple(output_size(s, k, st, p) for s, k, st, p in zip(size, kernel, stride, pads))
    if min(out) < 1:
        raise ValueError(f"{NAME}: no output for input {tuple(size)}, kernel {tuple(kernel)}, stride {tuple(stride)}, "
                         f"pads {pads}")
    return out  # type: ignore[return-value]


def why_unsupported(x: torch.Tensor, weight_shape: Sequence[int], stride: Triple, pads: Pads) -> Optional[str]:
    """Why :func:`forward_train` / :func:`backward_train` cannot run these inputs, or None (for the
    op's backend ``reject``)."""
    try:
        precision_of(x.dtype)
        cout, cin, *kernel = weight_shape
        if x.dim() != 5 or x.shape[1] != cin:
            return f"x must be Tensor[N, {cin}, T, H, W], got {tuple(x.shape)}"
        sizes = _out_sizes(x.shape[2:], tuple(kernel), stride, pads)
    except (TypeError, ValueError) as e:
        return str(e)
    taps = math.prod(kernel)
    rows = x.shape[0] * math.prod(sizes) + 2 * REDUCE_ROWS  # output rows and the tail tiles' masked ones
    # (weight-gradient partial sums: at most max(MAX_PARTIALS, Cout * taps * Cin), see choose_splits)
    biggest = max(_extent(x), x.numel(), rows * cout, taps * cin * (cout + COLUMN_PAD),
                  taps * cout * (cin + COLUMN_PAD), MAX_PARTIALS)
    if biggest > _INT32_LIMIT:
        return f"tensors of 2**31 elements or more need 64-bit offsets (largest here: {biggest})"
    return None


def _check(x, weight, stride: Triple, pads: Pads):
    why = why_unsupported(x, weight.shape, stride, pads)
    if why is not None:
        raise ValueError(f"{NAME}: {why}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"{NAME}: weight is {weight.dtype} on {weight.device}; x is {x.dtype} on {x.device}")


def _pack_forward(weight: torch.Tensor) -> torch.Tensor:
    """Tensor[Cout, Cin, kT, kH, kW] -> Tensor[kT*kH*kW*Cin, NP] (rows (kt, kh, kw, cin), NP = Cout
    rounded up to COLUMN_PAD, zero columns)."""
    cout = weight.shape[0]
    packed = weight.new_zeros((weight[0].numel(), -(-cout // COLUMN_PAD) * COLUMN_PAD))
    packed[:, :cout] = weight.detach().permute(2, 3, 4, 1, 0).reshape(-1, cout)
    return packed


def _pack_dgrad(weight: torch.Tensor) -> torch.Tensor:
    """Tensor[Cout, Cin, kT, kH, kW] -> Tensor[kT*kH*kW*Cout, CinP] (rows (kt, kh, kw, cout), CinP =
    Cin rounded up to COLUMN_PAD, zero columns)."""
    cout, cin = weight.shape[:2]
    packed = weight.new_zeros((weight[0].numel() // cin * cout, -(-cin // COLUMN_PAD) * COLUMN_PAD))
    packed[:, :cin] = weight.detach().permute(2, 3, 4, 0, 1).reshape(-1, cin)
    return packed


def _sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else DEFAULT_SMS


def _launch(kernel, grid, args, meta, num_warps: int, num_stages: int, device: torch.device) -> None:
    options = dict(num_warps=num_warps, num_stages=num_stages, **COMPILE_OPTIONS)
    if device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, **meta, **options)
    else:
        kernel[grid](*args, **meta, **options)


Configs = Optional[Dict[str, Config]]
Variant = Tuple[Tuple[str, int, str, bool], Config]


def _pick(gemm: str, precision: str, channels: int, aligned: bool, rows: int, cols: int, device: torch.device,
          configs: Configs) -> Variant:
    mode, aligned = choose_mode(gemm, precision, channels, aligned)
    key = (gemm, mode, precision, aligned)
    forced = (configs or {}).get(gemm)
    if forced is None:
        return key, choose_config(key, rows, cols, _sms(device))
    if forced not in SHIPPED[key]:
        raise ValueError(f"{NAME}: config {forced.name} is not shipped for {key}; choose one of "
                         f"{[c.name for c in SHIPPED[key]]}")
    return key, forced


def _gemm_meta(key, config: Config, precision: str) -> Dict[str, object]:
    _, mode, _, aligned = key
    meta = dict(BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                VEC=vector_elements(precision) if aligned else 1, PRECISION=DOT_PRECISION[precision])
    if key[0] != "dgrad":
        meta["MODE"] = mode
    return meta


def _elementwise_grid(m: int, c: int, rows: int):
    return (triton.cdiv(m, rows), triton.cdiv(c, ELEMENTWISE.block_c))


def _elementwise_meta(c: int, dtype: torch.dtype) -> Dict[str, int]:
    vec = 16 // torch.empty(0, dtype=dtype).element_size()
    return dict(BLOCK_R=ELEMENTWISE.block_r, BLOCK_C=ELEMENTWISE.block_c, VEC=vec if c % vec == 0 else 1)


# -- planning -------------------------------------------------------------------------------------
Variants = Dict[str, Variant]


def _forward_variant(x: torch.Tensor, weight_shape, stride: Triple, pads: Pads, configs: Configs) -> Variant:
    """x: channel stride 1."""
    precision = precision_of(x.dtype)
    n, cin, *size = x.shape
    cout, kernel = weight_shape[0], tuple(weight_shape[2:])
    m = n * math.prod(_out_sizes(size, kernel, stride, pads))
    aligned = is_aligned(site_strides(x) + [_aligned_base(x)[1], cin, cout], vector_elements(precision))
    return _pick("forward", precision, cin, aligned, m, cout, x.device, configs)


def _dgrad_variant(input_shape, cout: int, stride: Triple, dtype: torch.dtype, device: torch.device,
                   configs: Configs) -> Variant:
    precision = precision_of(dtype)
    n, cin, *size = input_shape
    rows = n * math.prod(-(-s // st) for s, st in zip(size, stride)) * math.prod(stride)
    return _pick("dgrad", precision, cout, is_aligned([cin, cout], vector_elements(precision)), rows, cin, device,
                 configs)


def _wgrad_variant(x: torch.Tensor, weight_shape, configs: Configs) -> Variant:
    """x: channel stride 1."""
    precision = precision_of(x.dtype)
    cout, cin, *kernel = weight_shape
    aligned = is_aligned(site_strides(x) + [_aligned_base(x)[1], cin, cout], vector_elements(precision))
    return _pick("wgrad", precision, cin, aligned, cout, math.prod(kernel) * cin, x.device, configs)


def plan(x: torch.Tensor, weight_shape: Sequence[int], stride: Triple, pads: Pads, configs: Configs = None
         ) -> Variants:
    """{"forward" | "dgrad" | "wgrad": (SHIPPED key, config)}: the GEMM variants a training step of
    these inputs launches (``configs`` forces tile configs as in :func:`forward_train`)."""
    x = _channels_last(x)
    return {"forward": _forward_variant(x, weight_shape, stride, pads, configs),
            "dgrad": _dgrad_variant(x.shape, weight_shape[0], stride, x.dtype, x.device, configs),
            "wgrad": _wgrad_variant(x, weight_shape, configs)}


def variant_name(variants: Variants, cout: int, dtype: torch.dtype) -> str:
    """One line naming the GEMM variants of :func:`plan` and the elementwise kernels' alignment."""
    gemms = ", ".join(f"{gemm} {MODE_NAMES[mode]} {precision} {'vec' if aligned else 'any'} {config.name}"
                      for gemm, ((_, mode, precision, aligned), config) in variants.items())
    return f"{gemms}, bn {'vec' if _elementwise_meta(cout, dtype)['VEC'] > 1 else 'any'}"


# -- forward --------------------------------------------------------------------------------------


def conv3d_stats(x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads,
                 configs: Optional[Dict[str, Config]] = None, variants: Optional[Variants] = None):
    """(z, mean, var): z = conv3d(x, weight) as a channels_last_3d Tensor[N, Cout, OT, OH, OW] of x's
    dtype, and its per-channel mean and biased variance (float32 Tensor[Cout]).

    ``configs`` forces the forward GEMM's tile config ({"forward": Config}, must be shipped);
    ``variants`` (a dict) receives {"forward": (SHIPPED key, config)}."""
    _check(x, weight, stride, pads)
    x = _channels_last(x)
    precision = precision_of(x.dtype)
    n, cin, t, h, w = x.shape
    cout, kernel = weight.shape[0], tuple(weight.shape[2:])
    ot, oh, ow = _out_sizes((t, h, w), kernel, stride, pads)
    m = n * ot * oh * ow
    z = torch.empty((n, cout, ot, oh, ow), dtype=x.dtype, device=x.device, memory_format=CL)
    x_base, x_off = _aligned_base(x)
    sx = site_strides(x)
    key, config = _forward_variant(x, weight.shape, stride, pads, configs)
    if variants is not None:
        variants["forward"] = (key, config)
    tiles = triton.cdiv(m, config.block_m)
    part = torch.empty((2, tiles, cout), dtype=torch.float32, device=x.device)
    packed = _pack_forward(weight)
    (pt, _), (ph, _), (pw, _) = pads
    args = (x_base, packed, z, part, t, h, w, cin, ot, oh, ow, m, cout, packed.shape[1], packed.shape[0], *kernel,
            *stride, pt, ph, pw, *sx, x_off, tiles)
    grid = (tiles * triton.cdiv(cout, config.block_n),)
    _launch(_forward_kernel, grid, args, _gemm_meta(key, config, precision), config.num_warps, config.num_stages,
            x.device)
    # Chan's combination of the per-tile (count, sum, centred sum of squares), float64, fixed order.
    sums, m2 = part.double()
    counts = torch.full((tiles, 1), float(config.block_m), dtype=torch.float64, device=x.device)
    counts[-1] = m - (tiles - 1) * config.block_m
    mean = sums.sum(0) / m
    var = (m2.sum(0) + (counts * (sums / counts - mean) ** 2).sum(0)) / m
    return z, mean.float(), var.float()


def forward_train(x, weight, bn_weight, bn_bias, eps: float, stride: Triple, pads: Pads, relu: bool,
                  configs: Configs = None):
    """(y, z, mean, var): see :func:`i3d_fast.kernels.reference.conv3d_bn.forward_train`. ``configs``
    forces GEMM tile configs ({"forward" | "dgrad" | "wgrad": Config}, each shipped for its variant)."""
    z, mean, var = conv3d_stats(x, weight, stride, pads, configs)
    return normalize(z, mean, var, bn_weight, bn_bias, eps, relu), z, mean, var


def normalize(z, mean, var, bn_weight, bn_bias, eps: float, relu: bool) -> torch.Tensor:
    """y = relu?((z - mean) * scale + beta) in one pass over z (dense channels-last): :func:`forward_train`'s
    y, also when recomputed from its z for backward."""
    z = _rows(z)
    scale, _ = scale_invstd(bn_weight, var, eps)
    y = torch.empty_like(z)
    m, c = z.numel() // z.shape[1], z.shape[1]
    args = (z, y, _vector(mean), _vector(scale), _vector(bn_bias), m, c, 0.0 if relu else float("-inf"))
    _launch(_bn_apply_kernel, _elementwise_grid(m, c, ELEMENTWISE.block_r), args, _elementwise_meta(c, z.dtype),
            ELEMENTWISE.num_warps, 1, z.device)
    return y


# -- backward -------------------------------------------------------------------------------------
def bn_relu_backward(grad, z, bn_weight, bn_bias, mean, var, eps: float, relu: bool):
    """(grad_z, grad_bn_weight, grad_bn_bias) of y = relu?(batch_norm(z)) with batch statistics:
    see :func:`i3d_fast.kernels.aten.conv3d_bn.bn_relu_backward`. grad_z is dense channels-last."""
    grad, z = _rows(grad.to(z.dtype)), _rows(z)
    m, c = z.numel() // z.shape[1], z.shape[1]
    scale, invstd = scale_invstd(bn_weight, var, eps)
    vectors = (_vector(mean), _vector(scale), _vector(bn_bias))
    meta = _elementwise_meta(c, z.dtype)
    tiles = triton.cdiv(m, REDUCE_ROWS)
    part = torch.empty((2, tiles, c), dtype=torch.float32, device=z.device)
    _launch(_bn_grad_reduce_kernel, _elementwise_grid(m, c, REDUCE_ROWS),
            (grad, z, *vectors, part, m, c, REDUCE_ROWS, tiles, int(relu)), meta, ELEMENTWISE.num_warps, 1, z.device)
    sum_g, sum_gz = part.double().sum(1)
    coef = _vector(torch.stack(grad_coefficients(scale, invstd, sum_g, sum_gz, m)))
    grad_z = torch.empty_like(z)
    _launch(_bn_grad_apply_kernel, _elementwise_grid(m, c, ELEMENTWISE.block_r),
            (grad, z, grad_z, *vectors, coef, m, c, int(relu)), meta, ELEMENTWISE.num_warps, 1, z.device)
    return grad_z, (sum_gz * invstd).to(bn_weight.dtype), sum_g.to(bn_bias.dtype)


def conv3d_input_grad(grad_z: torch.Tensor, weight: torch.Tensor, input_shape: Sequence[int], stride: Triple,
                      pads: Pads, configs: Optional[Dict[str, Config]] = None,
                      variants: Optional[Variants] = None) -> torch.Tensor:
    """grad_x (channels_last_3d Tensor[input_shape]) of z = conv3d(x, weight) given grad_z
    (Tensor[N, Cout, OT, OH, OW]). ``configs`` / ``variants`` as :func:`conv3d_stats` ("dgrad")."""
    grad_z = _rows(grad_z)
    precision = precision_of(grad_z.dtype)
    n, cin, t, h, w = input_shape
    cout, kernel = weight.shape[0], tuple(weight.shape[2:])
    _, _, ot, oh, ow = grad_z.shape
    grad_x = torch.empty(tuple(input_shape), dtype=grad_z.dtype, device=grad_z.device, memory_format=CL)
    phases = stride[0] * stride[1] * stride[2]
    rows = n * math.prod(-(-s // st) for s, st in zip((t, h, w), stride))  # the largest phase
    key, config = _dgrad_variant(input_shape, cout, stride, grad_z.dtype, grad_z.device, configs)
    if variants is not None:
        variants["dgrad"] = (key, config)
    packed = _pack_dgrad(weight)
    (pt, _), (ph, _), (pw, _) = pads
    args = (grad_z, packed, grad_x, t, h, w, cin, packed.shape[1], ot, oh, ow, cout, n, *kernel, *stride, pt, ph, pw)
    grid = (triton.cdiv(rows, config.block_m) * triton.cdiv(cin, config.block_n), phases)
    _launch(_dgrad_kernel, grid, args, _gemm_meta(key, config, precision), config.num_warps, config.num_stages,
            grad_z.device)
    return grad_x


def conv3d_weight_grad(grad_z: torch.Tensor, x: torch.Tensor, weight_shape: Sequence[int], stride: Triple,
                       pads: Pads, configs: Optional[Dict[str, Config]] = None, splits: Optional[int] = None,
                       variants: Optional[Variants] = None) -> torch.Tensor:
    """grad_weight (Tensor[weight_shape] of x's dtype, channels_last_3d strides) of z = conv3d(x, weight)
    given grad_z. ``splits`` forces the split-K factor (else :func:`choose_splits`); ``configs`` /
    ``variants`` as :func:`conv3d_stats` ("wgrad")."""
    grad_z, x = _rows(grad_z), _channels_last(x)
    precision = precision_of(x.dtype)
    cout, cin, *kernel = weight_shape
    n, _, t, h, w = x.shape
    _, _, ot, oh, ow = grad_z.shape
    m, nc = n * ot * oh * ow, math.prod(kernel) * cin
    x_base, x_off = _aligned_base(x)
    sx = site_strides(x)
    key, config = _wgrad_variant(x, weight_shape, configs)
    if variants is not None:
        variants["wgrad"] = (key, config)
    if key[1] == DIRECT:
        tiles_n = math.prod(kernel) * triton.cdiv(cin, config.block_n)
    else:
        tiles_n = triton.cdiv(nc, config.block_n)
    tiles = triton.cdiv(cout, config.block_m) * tiles_n
    if splits is None:
        splits = choose_splits(tiles, m, config.block_k, cout * nc, _sms(x.device))
    if not 1 <= splits <= MAX_SPLITS or (splits > 1 and splits * cout * nc > MAX_PARTIALS):
        raise ValueError(f"{NAME}: splits must be in [1, {MAX_SPLITS}] with at most {MAX_PARTIALS} partial sums "
                         f"({cout * nc} per split), got {splits}")
    per_split = triton.cdiv(triton.cdiv(m, splits), config.block_k) * config.block_k
    splits = triton.cdiv(m, per_split)
    part = torch.empty((splits, cout, nc), dtype=torch.float32, device=x.device)
    (pt, _), (ph, _), (pw, _) = pads
    args = (grad_z, x_base, part, t, h, w, cin, ot, oh, ow, m, cout, nc, *kernel, *stride, pt, ph, pw, *sx, x_off,
            per_split)
    _launch(_wgrad_kernel, (tiles, splits), args, _gemm_meta(key, config, precision), config.num_warps,
            config.num_stages, x.device)
    grad = part.sum(0, dtype=torch.float64) if splits > 1 else part[0]
    return grad.to(x.dtype).view(cout, *kernel, cin).permute(0, 4, 1, 2, 3)


def backward_train(grad, x, weight, z, bn_weight, bn_bias, mean, var, eps: float, stride: Triple, pads: Pads,
                   relu: bool, mask: List[bool], configs: Configs = None) -> Tuple[Optional[torch.Tensor], ...]:
    """(grad_x, grad_weight, grad_bn_weight, grad_bn_bias), None where ``mask`` says not needed;
    ``configs`` as :func:`forward_train`."""
    _check(x, weight, stride, pads)
    grad_z, grad_gamma, grad_beta = bn_relu_backward(grad, z, bn_weight, bn_bias, mean, var, eps, relu)
    grad_x = conv3d_input_grad(grad_z, weight, x.shape, stride, pads, configs) if mask[0] else None
    grad_w = conv3d_weight_grad(grad_z, x, weight.shape, stride, pads, configs) if mask[1] else None
    return grad_x, grad_w, grad_gamma if mask[2] else None, grad_beta if mask[3] else None


# -- ahead-of-time specs --------------------------------------------------------------------------
_GEMM_FN = {"forward": _forward_kernel, "dgrad": _dgrad_kernel, "wgrad": _wgrad_kernel}
_INTS = {"forward": _FWD_INTS, "dgrad": _DGRAD_INTS, "wgrad": _WGRAD_INTS}


def _signature(fn, ints: Sequence[str], dtype: str, floats: Sequence[str] = ()) -> Dict[str, str]:
    """Pointer args ending in ``part_ptr`` / vectors are float32; the others of ``dtype``."""
    sig: Dict[str, str] = {}
    fp32_ptrs = ("part_ptr", "mean_ptr", "scale_ptr", "beta_ptr", "coef_ptr")
    for arg in fn.arg_names:
        if arg.endswith("_ptr"):
            sig[arg] = "*fp32" if arg in fp32_ptrs else "*" + dtype
        elif arg in ints:
            sig[arg] = "i32"
        elif arg in floats:
            sig[arg] = "fp32"
        else:
            sig[arg] = "constexpr"
    return sig


def _ptrs(fn) -> Tuple[str, ...]:
    return tuple(a for a in fn.arg_names if a.endswith("_ptr"))


def aot_specs() -> List[AotSpec]:
    """Every GEMM variant of :data:`SHIPPED` and every elementwise kernel per dtype and alignment, as
    the launchers compile them (16-byte aligned pointers, int args unspecialized)."""
    specs = []
    for (gemm, mode, precision, aligned), configs in SHIPPED.items():
        fn = _GEMM_FN[gemm]
        for c in configs:
            meta = _gemm_meta((gemm, mode, precision, aligned), c, precision)
            specs.append(AotSpec(
                name=f"conv3d_bn.{gemm}.{MODE_NAMES[mode]}.{precision}.{'vec' if aligned else 'any'}.{c.name}",
                fn=fn, signature=_signature(fn, _INTS[gemm], TRITON_DTYPE[precision]), constexprs=meta,
                num_warps=c.num_warps, num_stages=c.num_stages,
                tensor_cores={} if precision == "ieee" else {80: "mma", 90: "wgmma"},
                aligned=_ptrs(fn), options=dict(COMPILE_OPTIONS)))
    for name in ELEMENTWISE_KERNELS:
        fn, ints = _ELEMENTWISE_FN[name]
        for dtype, dname in _DTYPE_NAMES.items():
            vec = 16 // torch.empty(0, dtype=dtype).element_size()
            for v in (vec, 1):
                specs.append(AotSpec(
                    name=f"conv3d_bn.{name}.{dname}.{'vec' if v > 1 else 'any'}",
                    fn=fn, signature=_signature(fn, ints, dname, floats=("lo",)),
                    constexprs=dict(BLOCK_R=ELEMENTWISE.block_r, BLOCK_C=ELEMENTWISE.block_c, VEC=v),
                    num_warps=ELEMENTWISE.num_warps, num_stages=1, aligned=_ptrs(fn), options=dict(COMPILE_OPTIONS)))
    return specs
