"""Fused Conv3d (+ per-channel scale/shift, optional ReLU) as a Triton implicit GEMM on NDHWC input.

GEMM view: M = N*OT*OH*OW output sites (rows), N = Cout (columns), K = kT*kH*kW*Cin ordered taps
outer (kt, kh, kw) and input channels inner, so a K tile of one tap is a contiguous run of channels
in channels-last memory. Zero padding (TF SAME or explicit, asymmetric) is a load mask: the input is
never copied or padded. Accumulation is fp32 (tensor cores for fp16/bf16, tf32 on request for fp32,
FMA for exact fp32).

One kernel, three ways to load the A (input) tile, picked by the constexpr ``MODE``:

* ``DIRECT``: a K step is one tap and ``BLOCK_K`` consecutive input channels, loaded as 16-byte
  vectors; the loop runs flat over (tap, channel chunk) so Triton pipelines it even when Cin fits in
  one chunk. The tap and chunk advance as loop-carried scalars (no integer division), and a row's
  bounds check for a tap is one AND and one compare against its row bit mask (as in FOLD below).
  For inputs whose channel runs are 16-byte aligned and not much smaller than BLOCK_K.
* ``FOLD``: a K step is ``BLOCK_K`` consecutive (tap, channel) pairs, so a layer with few input
  channels (the RGB/flow stem: Cin = 3 or 2) fills the reduction tile with taps instead of zeros.
  A per-layer table gives each K index its input offset and a tap bit mask; each row keeps a bit
  mask of its in-bounds kt | kh | kw offsets, and an element is loaded iff all three bits of its tap
  are set (one AND and one compare per element). Also the path for unaligned tensors (odd channel
  counts) and for exact fp32.
* ``STEM``: for few input channels (the RGB/flow stem), the launcher copies the input once into
  Tensor[N, T, H, W + pads, STEM_CHANNELS] (channels and W zero-padded), whose (kt, kh) rows of
  kW taps are contiguous runs of kW * STEM_CHANNELS elements; DIRECT then runs on that buffer seen
  as a virtual input with those runs as channels (W stride STEM_CHANNELS, kernel (kT, kH, 1), no W
  padding) and a weight repacked to match: vector loads instead of FOLD's scalar gathers.
* ``POOL``: a 1x1x1 conv whose input is first max-pooled 3x3x3, stride 1, TF SAME (padded cells
  ignored, i.e. -inf): the pool is taken while loading the A tile (branch 3 of an Inception block),
  so the pooled tensor never exists in memory.

Epilogue: ``y = relu?(acc * scale[c] + shift[c])`` in fp32, cast to the output dtype, written to up to
two destinations, each a channel slice of a wider NDHWC tensor (an Inception block writes its
branches in place; the merged b0|b1a|b2a 1x1x1 GEMM writes b0 into the block output and b1a|b2a
into scratch).

Weights are packed once into ``[K, NP]`` (K as above, NP = Cout rounded up to 16, zero columns) by
:func:`pack_weight`; :func:`conv3d` takes a packed weight or packs a plain one on every call.
Launch configurations come from :func:`choose_config`, which only picks among the variants listed
by :func:`aot_specs` (compiled ahead of time for sm_80 / sm_90 by the tests). The checks and the
launch plan are remembered per call geometry (shapes, strides, dtypes, devices, 16-byte alignment,
destinations), so a repeated call only gathers its tensors and launches; after a warm-up call a
forward pass is capturable in a CUDA graph (no host synchronisation).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import triton
import triton.language as tl

from ...padding import Pads, Triple, output_size
from ..weight_cache import WeightCache
from .aot import AotSpec
from .common import (COMPILE_OPTIONS, DEFAULT_SMS, DOT_PRECISION, TRITON_DTYPE, Config, hint,
                     is_aligned, site_strides, vector_elements)

DIRECT, FOLD, POOL, STEM = 0, 1, 2, 3
MODE_NAMES = {DIRECT: "direct", FOLD: "fold", POOL: "pool", STEM: "stem"}
#: Window of the fused max pool (kT, kH, kW): stride 1, TF SAME, padded cells ignored.
POOL_WINDOW = (3, 3, 3)
#: DIRECT and FOLD keep one bit per kt, kh and kw offset in an int32; bit 30 marks FOLD's K-tail columns.
MAX_TAP_BITS = 30
#: STEM pads the input channels to this many (a copy, W zero-padded too), so that the kW taps of a
#: (kt, kh) row are kW * STEM_CHANNELS contiguous elements: the channel run of a virtual input.
STEM_CHANNELS = 4
#: STEM is used (instead of FOLD) when at least this fraction of its K steps is real data.
STEM_MIN_DENSITY = 0.4
#: Packed weights pad Cout to a multiple of this many (zero) columns.
WEIGHT_COLUMN_PAD = 16
#: The fold table is padded to a multiple of the largest BLOCK_K.
MAX_BLOCK_K = 64
_INT32_MAX = 2**31 - 1
NAME = "conv3d (triton)"

_INT_ARGS = (
    "T", "H", "W", "Cin", "OT", "OH", "OW", "M", "Cout", "NP", "K", "KP",
    "kT", "kH", "kW", "sT", "sH", "sW", "pT", "pH", "pW",
    "sxN", "sxT", "sxH", "sxW", "x_off",
    "so0N", "so0T", "so0H", "so0W", "off0", "cnt0",
    "so1N", "so1T", "so1H", "so1W", "off1",
)
_PTR_ARGS = ("x_ptr", "w_ptr", "scale_ptr", "shift_ptr", "o0_ptr", "o1_ptr", "taps_ptr")


@triton.jit
def _window_bits(base, size, k):
    """Bit j set iff ``0 <= base + j < size`` for j in [0, k) (k <= 30)."""
    lo = tl.minimum(tl.maximum(-base, 0), k)
    hi = tl.minimum(tl.maximum(size - base, 0), k)
    one = tl.full(base.shape, 1, tl.int32)
    return tl.where(hi > lo, ((one << hi) - 1) ^ ((one << lo) - 1), 0)


@triton.jit
def _site_offsets(nb, t, h, w, nb0, t0, h0, w0, sN, sT, sH, sW):
    """Offsets of sites (nb, t, h, w) as a 64-bit scalar at (nb0, t0, h0, w0) plus 32-bit offsets."""
    base = nb0.to(tl.int64) * sN + t0.to(tl.int64) * sT + h0.to(tl.int64) * sH + w0.to(tl.int64) * sW
    rel = (nb - nb0) * sN + (t - t0) * sT + (h - h0) * sH + (w - w0) * sW
    return base, rel


@triton.jit(do_not_specialize=_INT_ARGS)
def _conv3d_kernel(
    x_ptr, w_ptr, scale_ptr, shift_ptr, o0_ptr, o1_ptr, taps_ptr,
    T, H, W, Cin, OT, OH, OW, M, Cout, NP, K, KP,
    kT, kH, kW, sT, sH, sW, pT, pH, pW,
    sxN, sxT, sxH, sxW, x_off,
    so0N, so0T, so0H, so0W, off0, cnt0,
    so1N, so1T, so1H, so1W, off1,
    lo,
    MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    VEC: tl.constexpr, XVEC: tl.constexpr, PRECISION: tl.constexpr,
):
    # Alignment facts the launcher checked (they let loads and stores vectorize).
    NP = hint(NP, 16)
    KP = hint(KP, 16)
    if MODE != 1:
        Cin = hint(Cin, XVEC)
        sxN = hint(sxN, XVEC)
        sxT = hint(sxT, XVEC)
        sxH = hint(sxH, XVEC)
        sxW = hint(sxW, XVEC)
        x_off = hint(x_off, XVEC)
    Cout = hint(Cout, VEC)
    cnt0 = hint(cnt0, VEC)
    off0 = hint(off0, VEC)
    off1 = hint(off1, VEC)
    so0N = hint(so0N, VEC)
    so0T = hint(so0T, VEC)
    so0H = hint(so0H, VEC)
    so0W = hint(so0W, VEC)
    so1N = hint(so1N, VEC)
    so1T = hint(so1T, VEC)
    so1H = hint(so1H, VEC)
    so1W = hint(so1W, VEC)

    # Program -> (row tile, column tile); column tiles of one row tile are neighbours so they share
    # the input tile in L2.
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(Cout, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid - pid_m * num_pid_n

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    ow = offs_m % OW
    q = offs_m // OW
    oh = q % OH
    q = q // OH
    ot = q % OT
    nb = q // OT
    # 64-bit offset of the tile's first row, then 32-bit offsets relative to it (the launcher checks
    # that one sample's extent fits; per-element 64-bit offsets would cost registers).
    m0 = pid_m * BLOCK_M
    ow0 = m0 % OW
    q0 = m0 // OW
    oh0 = q0 % OH
    q0 = q0 // OH
    ot0 = q0 % OT
    nb0 = q0 // OT
    tb = ot * sT - pT  # first input cell of each row's window (may lie in the padding)
    hb = oh * sH - pH
    wb = ow * sW - pW
    x_base, x_row = _site_offsets(nb, tb, hb, wb, nb0, ot0 * sT - pT, oh0 * sH - pH, ow0 * sW - pW,
                                  sxN, sxT, sxH, sxW)
    x_tile = x_ptr + (x_base + x_off)

    offs_k = tl.arange(0, BLOCK_K)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok_w = offs_n < NP
    w_cols = w_ptr + offs_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    if MODE == 0 or MODE == 3:
        # DIRECT (and STEM, a DIRECT conv of a virtual input): K step = (tap, chunk of BLOCK_K
        # channels), one flat loop. The tap (kt, kh, kw), its input offset and bit mask, and the
        # chunk start advance as loop-carried scalars (no divisions); a row is in bounds for a tap
        # iff the tap's three bits are set in its row bits.
        row_bits = (_window_bits(tb, T, kT) | (_window_bits(hb, H, kH) << kT)
                    | (_window_bits(wb, W, kW) << (kT + kH)))
        row_bits = tl.where(m_ok, row_bits, 0)
        a_ptrs = x_tile + x_row[:, None] + offs_k[None, :]  # + tap offset + chunk start
        b_ptrs = w_cols + offs_k[:, None] * NP  # + K row of the chunk start, times NP
        kt = 0
        kh = 0
        kw = 0
        c0 = 0
        tap_k = 0  # first K row of the tap: tap * Cin
        tap_off = 0  # kt * sxT + kh * sxH + kw * sxW
        for _ in range(0, kT * kH * kW * tl.cdiv(Cin, BLOCK_K)):
            tap_bits = (1 << kt) | (1 << (kT + kh)) | (1 << (kT + kH + kw))
            row_ok = (row_bits & tap_bits) == tap_bits
            c_ok = offs_k < Cin - c0
            a = tl.load(a_ptrs + (tap_off + c0), mask=row_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(b_ptrs + (tap_k + c0) * NP, mask=c_ok[:, None] & n_ok_w[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            c0 += BLOCK_K
            next_tap = c0 >= Cin
            c0 = tl.where(next_tap, 0, c0)
            tap_k = tl.where(next_tap, tap_k + Cin, tap_k)
            kw = tl.where(next_tap, kw + 1, kw)
            tap_off = tl.where(next_tap, tap_off + sxW, tap_off)
            next_h = kw == kW
            kw = tl.where(next_h, 0, kw)
            kh = tl.where(next_h, kh + 1, kh)
            tap_off = tl.where(next_h, tap_off + (sxH - kW * sxW), tap_off)
            next_t = kh == kH
            kh = tl.where(next_t, 0, kh)
            kt = tl.where(next_t, kt + 1, kt)
            tap_off = tl.where(next_t, tap_off + (sxT - kH * sxH), tap_off)
    elif MODE == 1:
        # FOLD: K step = BLOCK_K consecutive (tap, channel) pairs. taps_ptr holds, per K index, the
        # tap's bit mask (bit 30 for the K tail) and its input offset (see _fold_table). The tile is
        # gathered transposed ([K, M], threads along M) so each thread keeps few rows' offsets.
        row_bits = (_window_bits(tb, T, kT) | (_window_bits(hb, H, kH) << kT)
                    | (_window_bits(wb, W, kW) << (kT + kH)))
        row_bits = tl.where(m_ok, row_bits, 0)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + offs_k
            tap_bits = tl.load(taps_ptr + k)  # in bounds: the table is padded to KP, a multiple of 64
            delta = tl.load(taps_ptr + KP + k)
            ok = (row_bits[None, :] & tap_bits[:, None]) == tap_bits[:, None]
            a_t = tl.load(x_tile + tl.where(ok, delta[:, None] + x_row[None, :], 0), mask=ok, other=0.0)
            b = tl.load(w_cols + k[:, None] * NP, mask=(k < K)[:, None] & n_ok_w[None, :], other=0.0)
            acc = tl.dot(tl.trans(a_t), b, acc, input_precision=PRECISION)
    else:
        # POOL: 1x1x1 conv (stride 1, no padding) of the 3x3x3 SAME max pool of x. The (dt, dh) part
        # of the window is a loop, not unrolled, so its row masks are never all live at once; the
        # three dw loads of each step are issued together.
        for c0 in range(0, Cin, BLOCK_K):
            c = c0 + offs_k
            c_ok = c < Cin
            a = tl.full((BLOCK_M, BLOCK_K), float("-inf"), x_ptr.dtype.element_ty)
            for tap in range(0, 9):
                dt = tap // 3 - 1
                dh = tap % 3 - 1
                ti = tb + dt
                hi = hb + dh
                th_ok = m_ok & (ti >= 0) & (ti < T) & (hi >= 0) & (hi < H)
                th_row = x_row + (dt * sxT + dh * sxH)
                for dw in tl.static_range(-1, 2):
                    wi = wb + dw
                    ok = th_ok & (wi >= 0) & (wi < W)
                    row = tl.multiple_of(tl.where(ok, th_row + dw * sxW, 0), [XVEC])
                    v = tl.load(x_tile + row[:, None] + c[None, :], mask=ok[:, None] & c_ok[None, :],
                                other=float("-inf"))
                    a = tl.maximum(a, v, propagate_nan=tl.PropagateNan.ALL)
            a = tl.where(m_ok[:, None] & c_ok[None, :], a, 0.0)
            b = tl.load(w_cols + c[:, None] * NP, mask=c_ok[:, None] & n_ok_w[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)

    # Epilogue: per-channel affine, ReLU (lo = 0) or none (lo = -inf), cast, one or two destinations.
    n_ok = offs_n < Cout
    scale = tl.load(scale_ptr + offs_n, mask=n_ok, other=0.0)
    shift = tl.load(shift_ptr + offs_n, mask=n_ok, other=0.0)
    y = acc * scale[None, :] + shift[None, :]
    y = tl.maximum(y, lo, propagate_nan=tl.PropagateNan.ALL)
    y = y.to(o0_ptr.dtype.element_ty)
    base0, rel0 = _site_offsets(nb, ot, oh, ow, nb0, ot0, oh0, ow0, so0N, so0T, so0H, so0W)
    tl.store(o0_ptr + (base0 + off0) + rel0[:, None] + offs_n[None, :], y,
             mask=m_ok[:, None] & (offs_n < cnt0)[None, :])
    base1, rel1 = _site_offsets(nb, ot, oh, ow, nb0, ot0, oh0, ow0, so1N, so1T, so1H, so1W)
    tl.store(o1_ptr + (base1 + off1) + rel1[:, None] + (offs_n - cnt0)[None, :], y,
             mask=m_ok[:, None] & ((offs_n >= cnt0) & n_ok)[None, :])


# -- launch configurations ------------------------------------------------------------------------

#: 16-bit DIRECT tiles: BLOCK_K 64, and 32 for channel counts that 64 would pad more (96, 144, 480...).
_H16 = (Config(128, 128, 64, 8, 3), Config(128, 64, 64, 4, 3), Config(64, 64, 64, 4, 3),
        Config(128, 128, 32, 8, 4), Config(128, 64, 32, 4, 4), Config(64, 64, 32, 4, 4))
#: Every variant we ship: (mode, precision, aligned) -> configs, per BLOCK_K largest tile first. "aligned" means
#: 16-byte aligned channel runs (inputs for DIRECT/POOL, outputs for all modes); the unaligned
#: variants take any strides and channel counts. ``choose_config`` picks only from this table, and
#: ``aot_specs`` compiles all of it.
SHIPPED: Dict[Tuple[int, str, bool], Tuple[Config, ...]] = {}
for _p in ("fp16", "bf16"):
    SHIPPED[(DIRECT, _p, True)] = _H16
    SHIPPED[(FOLD, _p, True)] = (Config(128, 64, 64, 4, 2), Config(64, 64, 64, 4, 2))
    SHIPPED[(FOLD, _p, False)] = (Config(64, 64, 64, 4, 2),)
    SHIPPED[(POOL, _p, True)] = (Config(128, 64, 64, 8, 1), Config(64, 64, 64, 4, 1))
    SHIPPED[(POOL, _p, False)] = (Config(64, 64, 32, 4, 1),)
    SHIPPED[(STEM, _p, True)] = (Config(128, 64, 32, 4, 4), Config(64, 64, 32, 4, 4))
SHIPPED[(STEM, "tf32", True)] = (Config(128, 64, 32, 4, 3), Config(64, 64, 32, 4, 3))
SHIPPED[(DIRECT, "tf32", True)] = (Config(128, 64, 32, 4, 3), Config(64, 64, 32, 4, 3))
SHIPPED[(FOLD, "tf32", True)] = (Config(64, 64, 32, 4, 2),)
SHIPPED[(FOLD, "tf32", False)] = (Config(64, 64, 32, 4, 2),)
SHIPPED[(POOL, "tf32", True)] = (Config(64, 64, 32, 4, 1),)
SHIPPED[(POOL, "tf32", False)] = (Config(64, 64, 32, 4, 1),)
SHIPPED[(FOLD, "ieee", False)] = (Config(64, 64, 16, 4, 2),)
SHIPPED[(POOL, "ieee", False)] = (Config(64, 64, 16, 4, 1),)
del _p
#: DIRECT is used when at most this fraction of its channel chunks is padding (else FOLD).
DIRECT_MAX_CHANNEL_WASTE = 0.25
_MAX_BLOCK_M = max(c.block_m for configs in SHIPPED.values() for c in configs)


def precision_of(dtype: torch.dtype, allow_tf32: bool) -> str:
    """The precision name for a tensor dtype ("fp16", "bf16", "tf32" or "ieee")."""
    if dtype == torch.float16:
        return "fp16"
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float32:
        return "tf32" if allow_tf32 else "ieee"
    raise TypeError(f"conv3d (triton): supports float32, float16 and bfloat16, got {dtype}")


def channel_waste(channels: int, block_k: int) -> float:
    """Fraction of the channel chunks of one tap that is padding."""
    return 1.0 - channels / (math.ceil(channels / block_k) * block_k)


def choose_mode(precision: str, kernel: Triple, cin: int, pool: bool, in_aligned: bool, out_aligned: bool
                ) -> Tuple[int, bool]:
    """(MODE, aligned) for a layer; raises ValueError when no shipped variant fits."""
    if pool:
        return POOL, (in_aligned and out_aligned and (POOL, precision, True) in SHIPPED)
    if sum(kernel) > MAX_TAP_BITS:
        raise ValueError(f"conv3d (triton): kernel {tuple(kernel)} needs kT + kH + kW <= {MAX_TAP_BITS} "
                         "(one bit per tap offset)")
    direct = (DIRECT, precision, True)
    if direct in SHIPPED and in_aligned and out_aligned and (
            math.prod(kernel) == 1
            or min(channel_waste(cin, c.block_k) for c in SHIPPED[direct]) <= DIRECT_MAX_CHANNEL_WASTE):
        return DIRECT, True
    stem = (STEM, precision, True)
    if stem in SHIPPED and out_aligned and stem_density(cin, kernel, SHIPPED[stem]) >= STEM_MIN_DENSITY:
        return STEM, True
    return FOLD, (out_aligned and (FOLD, precision, True) in SHIPPED)


def stem_density(cin: int, kernel: Triple, configs: Sequence[Config]) -> float:
    """Fraction of STEM's K (kT*kH rows of kW * STEM_CHANNELS, in chunks of BLOCK_K) that is real
    data; 0 when ``cin`` exceeds STEM_CHANNELS."""
    if cin > STEM_CHANNELS:
        return 0.0
    run = kernel[2] * STEM_CHANNELS
    return cin / STEM_CHANNELS * (1 - min(channel_waste(run, c.block_k) for c in configs))


def choose_config(mode: int, precision: str, aligned: bool, m: int, cout: int, sms: int = DEFAULT_SMS,
                  cin: Optional[int] = None) -> Config:
    """Deterministic tile choice among ``SHIPPED[(mode, precision, aligned)]``.

    DIRECT with ``cin`` given: only the BLOCK_K that pads the channel chunks least (the deeper one on
    a tie); otherwise the deepest BLOCK_K. Then column tiles at least twice as wide as needed are
    skipped. Among the tiles that still give at least two programs per SM, the one with the fewest
    padded output columns wins (then the larger tile); when none does (small layers), the smallest
    tile, for the most programs.
    """
    configs = SHIPPED[(mode, precision, aligned)]
    depths = sorted({c.block_k for c in configs}, reverse=True)
    depth = depths[0]
    if mode == DIRECT and cin is not None:
        depth = min(depths, key=lambda k: (channel_waste(cin, k), -k))
    configs = [c for c in configs if c.block_k == depth]

    def columns(c: Config) -> int:
        return math.ceil(cout / c.block_n) * c.block_n

    usable = [c for c in configs if columns(c) < 2 * cout] or list(configs)
    full = [c for c in usable if math.ceil(m / c.block_m) * math.ceil(cout / c.block_n) >= 2 * sms]
    if full:
        return min(full, key=lambda c: (columns(c), -c.block_m * c.block_n))
    return usable[-1]


# -- weights and tables ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PackedWeight:
    """A conv weight in the kernel's layout: ``data`` is Tensor[K, NP] with K = kT*kH*kW*Cin ordered
    (kt, kh, kw, cin) and NP = Cout rounded up to 16 (zero columns). Made by :func:`pack_weight`."""

    data: torch.Tensor
    cout: int
    cin: int
    kernel: Triple


def pack_weight(weight: torch.Tensor) -> PackedWeight:
    """Tensor[Cout, Cin, kT, kH, kW] (any memory layout) -> :class:`PackedWeight` (same dtype and
    device). Pack once per set of weights and pass the result to :func:`conv3d` to avoid repacking;
    concatenate weights on Cout before packing to run several convs of one input as one GEMM."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 5:
        raise ValueError(f"pack_weight: expected Tensor[Cout, Cin, kT, kH, kW], got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    cout, cin, kt, kh, kw = weight.shape
    k = kt * kh * kw * cin
    np_ = -(-cout // WEIGHT_COLUMN_PAD) * WEIGHT_COLUMN_PAD
    data = weight.new_zeros((k, np_))
    data[:, :cout] = weight.detach().permute(2, 3, 4, 1, 0).reshape(k, cout)
    return PackedWeight(data, cout, cin, (kt, kh, kw))


_PACKED = WeightCache(lambda weight: pack_weight(weight))


def packed_weight(weight: torch.Tensor) -> PackedWeight:
    """:func:`pack_weight`, cached per weight tensor while it lives unchanged (see
    :class:`i3d_fast.kernels.weight_cache.WeightCache`), so a model's weights are packed once."""
    return _PACKED.get(weight)


_FLOAT32 = WeightCache(lambda t: t.float())


def _float32(t: torch.Tensor) -> torch.Tensor:
    """``t.float()``; for another dtype, the copy is cached per tensor like packed weights (a fused
    model's float16 shifts are converted once, not on every call)."""
    return t if t.dtype == torch.float32 else _FLOAT32.get(t)


@functools.lru_cache(maxsize=64)
def _constant(count: int, value: float, device: torch.device) -> torch.Tensor:
    return torch.full((count,), value, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=256)
def _fold_table(kernel: Triple, cin: int, sxt: int, sxh: int, sxw: int, device: torch.device) -> torch.Tensor:
    """int32 Tensor[2, KP]: per K index (kt, kh, kw, c), its tap bits (1 << kt | 1 << (kT + kh) |
    1 << (kT + kH + kw); 1 << 30 past K) and its input offset kt*sxT + kh*sxH + kw*sxW + c (0 past K)."""
    kt_, kh_, kw_ = kernel
    k = kt_ * kh_ * kw_ * cin
    kp = -(-k // MAX_BLOCK_K) * MAX_BLOCK_K
    idx = torch.arange(k, dtype=torch.int64)
    c = idx % cin
    tap = idx // cin
    kw = tap % kw_
    kh = (tap // kw_) % kh_
    kt = tap // (kw_ * kh_)
    table = torch.zeros((2, kp), dtype=torch.int64)
    table[0] = 1 << MAX_TAP_BITS
    table[0, :k] = (1 << kt) | (1 << (kt_ + kh)) | (1 << (kt_ + kh_ + kw))
    table[1, :k] = kt * sxt + kh * sxh + kw * sxw + c
    return table.to(torch.int32).to(device)


@functools.lru_cache(maxsize=16)
def _no_table(device: torch.device) -> torch.Tensor:
    return torch.zeros(MAX_BLOCK_K, dtype=torch.int32, device=device)


def _stem_input(x: torch.Tensor, w_pads: Tuple[int, int]) -> torch.Tensor:
    """x (Tensor[N, Cin <= STEM_CHANNELS, T, H, W]) copied into a zeroed contiguous
    Tensor[N, T, H, w_pads[0] + W + w_pads[1], STEM_CHANNELS]."""
    n, cin, t, h, w = x.shape
    buf = x.new_zeros((n, t, h, w_pads[0] + w + w_pads[1], STEM_CHANNELS))
    buf[:, :, :, w_pads[0]:w_pads[0] + w, :cin] = x.permute(0, 2, 3, 4, 1)
    return buf


def _stem_rows(data: torch.Tensor, kernel: Triple, cin: int) -> torch.Tensor:
    """Packed weight data Tensor[kT*kH*kW*Cin, NP] -> Tensor[kT*kH*kW*STEM_CHANNELS, NP] (zero rows
    for the padded channels): the weight of the STEM virtual input, K ordered (kt, kh, kw, c)."""
    rows = data.new_zeros((kernel[0] * kernel[1], kernel[2], STEM_CHANNELS, data.shape[1]))
    rows[:, :, :cin] = data.view(kernel[0] * kernel[1], kernel[2], cin, data.shape[1])
    return rows.view(-1, data.shape[1])


_STEM_WEIGHTS: Dict[Tuple[Triple, int], WeightCache] = {}


def _stem_weight(packed: PackedWeight) -> torch.Tensor:
    """:func:`_stem_rows` of a packed weight, cached per packed data tensor while it lives unchanged."""
    key = (tuple(packed.kernel), packed.cin)
    if key not in _STEM_WEIGHTS:
        _STEM_WEIGHTS[key] = WeightCache(functools.partial(_stem_rows, kernel=key[0], cin=key[1]))
    return _STEM_WEIGHTS[key].get(packed.data)


def _alignment_shift(t: torch.Tensor) -> int:
    """Elements from the 16-byte aligned address at or before ``t``'s start to it, where its storage
    reaches back that far (else 0): the kernel gets a view starting there (:func:`_shifted`) and
    this offset, so that its pointer is aligned."""
    r = (t.data_ptr() % 16) // t.element_size()
    return r if r and t.storage_offset() >= r else 0


def _fits_int32(sites_per_sample: int, n: int, strides: Sequence[int], extents: Sequence[int], channels: int) -> bool:
    """Whether offsets relative to a tile's first row (which may reach into the samples after it)
    fit in 32 bits: ``strides`` are (N, T, H, W), ``extents`` the (T, H, W) cells a tile can reach."""
    samples = min(n, (_MAX_BLOCK_M - 1) // sites_per_sample + 2)
    span = samples * strides[0] + sum(s * e for s, e in zip(strides[1:], extents)) + channels
    return span <= _INT32_MAX


# -- launcher -------------------------------------------------------------------------------------
Destination = Tuple[torch.Tensor, int, int]


def conv3d(x: torch.Tensor, weight: Union[torch.Tensor, PackedWeight], scale: Optional[torch.Tensor],
           shift: Optional[torch.Tensor], stride: Triple, pads: Pads, relu: bool,
           destinations: Optional[Sequence[Destination]] = None, pool: Optional[Triple] = None,
           allow_tf32: bool = False, config: Optional[Config] = None) -> Optional[torch.Tensor]:
    """``relu?(conv3d(pool?(x), weight) * scale + shift)`` written into ``destinations``, or into a
    new channels_last_3d Tensor[N, Cout, OT, OH, OW] that is returned when ``destinations`` is None.

    Args:
        x: Tensor[N, Cin, T, H, W], channels-last memory (channel stride 1; other strides free, so a
            channel slice of a wider tensor works), float32/float16/bfloat16, CUDA (or CPU under
            TRITON_INTERPRET=1).
        weight: Tensor[Cout, Cin, kT, kH, kW] of x's dtype (packed on first use and cached while the
            tensor lives unmodified), or its :func:`pack_weight`.
        scale, shift: float32 Tensor[Cout] per output channel (folded BatchNorm, or 1 and the bias);
            None means 1 and 0.
        stride: (sT, sH, sW). pads: ((t0, t1), (h0, h1), (w0, w1)) zero padding before/after.
        relu: apply ReLU after the affine (NaN stays NaN).
        destinations: one or two (out, offset, count): channels [0, count0) go to
            ``out0[:, offset0:offset0 + count0]``, the next count1 to ``out1[:, offset1:...]``. Each
            out is Tensor[N, C_total, OT, OH, OW] of x's dtype with channel stride 1.
        pool: None, or (3, 3, 3): take a stride-1 TF-SAME max pool of x (padding ignored) on load;
            only with a 1x1x1 kernel, stride 1 and no padding.
        allow_tf32: float32 on tf32 tensor cores (else exact fp32 FMA).
        config: force this tile configuration instead of :func:`choose_config`'s (tests, tuning);
            it must be shipped for the variant the inputs select (see :func:`plan_config`).
    """
    packed = weight if isinstance(weight, PackedWeight) else packed_weight(weight)
    scale = _constant(packed.cout, 1.0, x.device) if scale is None else _float32(scale)
    shift = _constant(packed.cout, 0.0, x.device) if shift is None else _float32(shift)
    launch = _launch(x, packed, scale, shift, stride, pads, relu, destinations, pool, allow_tf32, config)
    result = None
    if destinations is None:
        if launch is None:  # nothing to compute: an empty output
            sizes = _output_sizes(x.shape[2:], packed.kernel, stride, pads, pool)
            return torch.empty((x.shape[0], packed.cout, *sizes), dtype=x.dtype, device=x.device,
                               memory_format=torch.channels_last_3d)
        result = torch.empty(launch.out_shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)
        destinations = [(result, 0, packed.cout)]
    if launch is None:
        return result
    args = launch.args(x, packed, scale, shift, destinations)
    config = launch.config
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages, **COMPILE_OPTIONS)
    if x.is_cuda:
        with torch.cuda.device(x.device):
            _conv3d_kernel[launch.grid](*args, **launch.meta, **options)
    else:
        _conv3d_kernel[launch.grid](*args, **launch.meta, **options)
    return result


def _output_sizes(size, kernel: Triple, stride: Triple, pads: Pads, pool) -> Tuple[int, int, int]:
    if pool is not None:
        if tuple(pool) != POOL_WINDOW:
            raise ValueError(f"{NAME}: pool must be None or {POOL_WINDOW}, got {pool}")
        if tuple(kernel) != (1, 1, 1) or tuple(stride) != (1, 1, 1) or any(p != 0 for pair in pads for p in pair):
            raise ValueError(f"{NAME}: the fused max pool needs a 1x1x1 kernel, stride 1 and no padding; got "
                             f"kernel {tuple(kernel)}, stride {tuple(stride)}, pads {pads}")
    out = tuple(output_size(s, k, st, p) for s, k, st, p in zip(size, kernel, stride, pads))
    if min(out) < 1:
        raise ValueError(f"{NAME}: no output for input {tuple(size)}, kernel {tuple(kernel)}, stride {tuple(stride)}, "
                         f"pads {pads}")
    return out  # type: ignore[return-value]


def _input_fits(shape, sx, kernel: Triple, pads: Pads, pool, sites: int, weight_shape) -> bool:
    """Whether row counts, weight offsets and input offsets within a tile fit in 32 bits."""
    n, cin, *size = shape
    window = POOL_WINDOW if pool is not None else kernel
    extents = [s + k + p[0] for s, k, p in zip(size, window, pads)]
    return (n * sites <= _INT32_MAX - _MAX_BLOCK_M
            and weight_shape[0] * weight_shape[1] + MAX_BLOCK_K * weight_shape[1] <= _INT32_MAX
            and _fits_int32(sites, n, sx, extents, cin))


_REASONS: Dict[tuple, Optional[str]] = {}


def why_unsupported(x: torch.Tensor, weight_shape: Sequence[int], stride: Triple, pads: Pads,
                    pool: Optional[Triple] = None, allow_tf32: bool = False,
                    destinations: Optional[Sequence[Destination]] = None) -> Optional[str]:
    """Why :func:`conv3d` cannot run these inputs into ``destinations`` (None: an output of its own,
    a channels_last_3d Tensor[N, Cout, OT, OH, OW]), or None when it can (for a backend's ``reject``).
    Remembered per call geometry, like the launch plans."""
    try:
        key = (_layout(x), tuple(weight_shape), tuple(stride), tuple(tuple(p) for p in pads),
               pool if pool is None else tuple(pool), allow_tf32,
               None if destinations is None else tuple((_layout(o), off, cnt) for o, off, cnt in destinations))
    except (AttributeError, TypeError):
        return _why_unsupported(x, weight_shape, stride, pads, pool, allow_tf32, destinations)
    if key not in _REASONS:
        if len(_REASONS) >= _MAX_LAUNCHES:
            _REASONS.clear()
        _REASONS[key] = _why_unsupported(x, weight_shape, stride, pads, pool, allow_tf32, destinations)
    return _REASONS[key]


def _why_unsupported(x, weight_shape, stride, pads, pool, allow_tf32, destinations) -> Optional[str]:
    try:
        precision = precision_of(x.dtype, allow_tf32)
        cout, cin, *kernel = weight_shape
        size = _output_sizes(x.shape[2:], tuple(kernel), stride, pads, pool)
        if x.shape[1] > 1 and x.stride(1) != 1:  # conv3d will make a channels-last copy
            n, c, t, h, w = x.shape
            sx, x_off = [0 if d == 1 else s for d, s in zip((n, t, h, w), (c * t * h * w, h * w * c, w * c, c))], 0
        else:
            sx, x_off = site_strides(x), _alignment_shift(x)
        np_ = -(-cout // WEIGHT_COLUMN_PAD) * WEIGHT_COLUMN_PAD
        sites = size[0] * size[1] * size[2]
        if not _input_fits(x.shape, sx, tuple(kernel), pads, pool, sites, (math.prod(kernel) * cin, np_)):
            return "tensors too large for 32-bit offsets within a tile"
        vec = vector_elements(precision)
        in_aligned = is_aligned(sx + [x_off, cin], vec)
        out_aligned = cout % vec == 0
        for i, (out, offset, count) in enumerate(destinations or ()):
            if out.shape[1] > 1 and out.stride(1) != 1:
                return f"destination {i} needs channel stride 1 (channels_last_3d)"
            so = site_strides(out)
            if not _fits_int32(sites, x.shape[0], so, size, out.shape[1]):
                return "tensors too large for 32-bit offsets within a tile"
            out_aligned = out_aligned and is_aligned(so + [_alignment_shift(out) + offset], vec)
        if destinations:
            out_aligned = out_aligned and destinations[0][2] % vec == 0
        choose_mode(precision, tuple(kernel), cin, pool is not None, in_aligned, out_aligned)
    except (TypeError, ValueError) as e:
        return str(e)
    return None


class _Launch(NamedTuple):
    """A planned launch, reusable for every call with the same geometry (see :func:`_launch`): the
    grid, the int/float arguments, the constexprs and config, and how to get the tensor arguments."""

    grid: Tuple[int]
    ints: tuple
    meta: Dict[str, object]
    config: Config
    precision: str
    convert: bool  # x is copied to channels-last first
    x_shift: int  # elements from the 16-byte aligned start passed for x (0 for a STEM copy)
    stem_pads: Optional[Tuple[int, int]]  # STEM: x is copied into the padded buffer (these W pads)
    taps: torch.Tensor
    dest_shifts: Tuple[int, ...]  # per destination, as x_shift
    out_shape: Tuple[int, ...]  # Tensor[N, Cout, OT, OH, OW]

    def args(self, x: torch.Tensor, packed: PackedWeight, scale: torch.Tensor, shift: torch.Tensor,
             destinations: Sequence[Destination]) -> tuple:
        """The kernel's arguments for this call's tensors (laid out as when planned)."""
        if self.convert:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if self.stem_pads is not None:
            x, weight = _stem_input(x, self.stem_pads), _stem_weight(packed)
        else:
            x, weight = _shifted(x, self.x_shift), packed.data
        outs = [_shifted(out, r) for (out, _, _), r in zip(destinations, self.dest_shifts)]
        return (x, weight, scale.contiguous(), shift.contiguous(), outs[0], outs[-1], self.taps) + self.ints


def _shifted(t: torch.Tensor, r: int) -> torch.Tensor:
    """``t``, or a view of its storage starting ``r`` elements before it (see :func:`_alignment_shift`)."""
    return t.as_strided((1,), (1,), t.storage_offset() - r) if r else t


#: Planned launches by call geometry (:func:`_geometry_key`), so that repeated calls only launch.
_LAUNCHES: Dict[tuple, Optional[_Launch]] = {}
_MAX_LAUNCHES = 4096


def _layout(t: torch.Tensor) -> tuple:
    """What a plan depends on of a tensor: shape, strides, dtype, device and 16-byte alignment."""
    return t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16, min(t.storage_offset(), 16)


def _geometry_key(x, packed: PackedWeight, scale, shift, stride, pads, relu, destinations, pool, allow_tf32,
                  config) -> tuple:
    data = packed.data
    return (_layout(x), packed.cout, packed.cin, tuple(packed.kernel), data.shape, data.stride(), data.dtype,
            data.device, scale.shape, scale.dtype, scale.device, shift.shape, shift.dtype, shift.device,
            tuple(stride), tuple(tuple(p) for p in pads), relu, pool if pool is None else tuple(pool), allow_tf32,
            config, None if destinations is None else tuple((_layout(o), off, cnt) for o, off, cnt in destinations))


def _launch(x, packed: PackedWeight, scale, shift, stride, pads, relu, destinations, pool, allow_tf32,
            config=None) -> Optional[_Launch]:
    """:func:`_make_launch`, remembered per call geometry (the checks and the plan depend on nothing
    else). ``destinations`` None plans for a new output tensor of the conv's own (16-byte aligned)."""
    try:
        key = _geometry_key(x, packed, scale, shift, stride, pads, relu, destinations, pool, allow_tf32, config)
    except (AttributeError, TypeError):  # malformed arguments: _make_launch names the problem
        key = None
    if key is not None and key in _LAUNCHES:
        return _LAUNCHES[key]
    if destinations is None:
        sizes = _output_sizes(x.shape[2:], packed.kernel, stride, pads, pool)
        destinations = [(torch.empty((x.shape[0], packed.cout, *sizes), dtype=x.dtype, device=x.device,
                                     memory_format=torch.channels_last_3d), 0, packed.cout)]
    launch = _make_launch(x, packed, scale, shift, stride, pads, relu, destinations, pool, allow_tf32, config)
    if key is not None:
        if len(_LAUNCHES) >= _MAX_LAUNCHES:
            _LAUNCHES.clear()
        _LAUNCHES[key] = launch
    return launch


def _make_launch(x, packed: PackedWeight, scale, shift, stride, pads, relu, destinations, pool, allow_tf32,
                 config=None) -> Optional[_Launch]:
    """Checks what the kernel relies on (an out-of-bounds store would corrupt memory) and plans the
    launch (see :class:`_Launch`), or None when there is nothing to compute."""
    name = NAME
    convert = False
    precision = precision_of(x.dtype, allow_tf32)
    if x.dim() != 5:
        raise ValueError(f"{name}: x must be Tensor[N, Cin, T, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] > 1 and x.stride(1) != 1:
        x, convert = x.contiguous(memory_format=torch.channels_last_3d), True
    n, cin, t, h, w = x.shape
    rows = math.prod(packed.kernel) * packed.cin
    columns = -(-packed.cout // WEIGHT_COLUMN_PAD) * WEIGHT_COLUMN_PAD
    if tuple(packed.data.shape) != (rows, columns) or not packed.data.is_contiguous():
        raise ValueError(f"{name}: packed weight data must be a contiguous Tensor[{rows}, {columns}] "
                         f"(use pack_weight), got {tuple(packed.data.shape)} with strides {packed.data.stride()}")
    if packed.cin != cin or packed.data.dtype != x.dtype or packed.data.device != x.device:
        raise ValueError(f"{name}: weight has Cin {packed.cin}, {packed.data.dtype} on {packed.data.device}; "
                         f"x has Cin {cin}, {x.dtype} on {x.device}")
    cout, kernel = packed.cout, packed.kernel
    for label, v in (("scale", scale), ("shift", shift)):
        if v.dtype != torch.float32 or tuple(v.shape) != (cout,) or v.device != x.device:
            raise ValueError(f"{name}: {label} must be float32 Tensor[{cout}] on {x.device}, got "
                             f"{v.dtype} {tuple(v.shape)} on {v.device}")
    out_sizes = _output_sizes((t, h, w), kernel, stride, pads, pool)
    ot, oh, ow = out_sizes
    m = n * ot * oh * ow

    if not 1 <= len(destinations) <= 2:
        raise ValueError(f"{name}: expected 1 or 2 destinations, got {len(destinations)}")
    if sum(d[2] for d in destinations) != cout:
        raise ValueError(f"{name}: destination counts {[d[2] for d in destinations]} must add up to Cout {cout}")
    dests = []
    for i, (out, offset, count) in enumerate(destinations):
        if (not isinstance(out, torch.Tensor) or out.dim() != 5 or out.shape[0] != n
                or tuple(out.shape[2:]) != out_sizes):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{name}: destination {i} must be Tensor[{n}, C, {ot}, {oh}, {ow}], got {got}")
        if out.dtype != x.dtype or out.device != x.device:
            raise ValueError(f"{name}: destination {i} is {out.dtype} on {out.device}; expected {x.dtype} on {x.device}")
        if count < 0 or offset < 0 or offset + count > out.shape[1]:
            raise ValueError(f"{name}: destination {i} channels [{offset}, {offset + count}) do not fit in "
                             f"its {out.shape[1]} channels")
        if out.shape[1] > 1 and out.stride(1) != 1:
            raise ValueError(f"{name}: destination {i} needs channel stride 1 (channels_last_3d), got strides "
                             f"{out.stride()}")
        r = _alignment_shift(out)
        dests.append((r, site_strides(out), offset + r, count, out.shape[1]))
    if m == 0 or cout == 0:
        return None

    x_off = _alignment_shift(x)
    sx = site_strides(x)
    sites = ot * oh * ow
    if (not _input_fits(x.shape, sx, kernel, pads, pool, sites, packed.data.shape)
            or not all(_fits_int32(sites, n, so, out_sizes, c) for _, so, _, _, c in dests)):
        raise ValueError(f"{NAME}: tensors too large for 32-bit offsets within a tile (x {tuple(x.shape)}, "
                         f"{m} output sites, weight {tuple(packed.data.shape)})")

    vec = vector_elements(precision)
    in_aligned = is_aligned(sx + [x_off, cin], vec)
    out_aligned = is_aligned([cout, destinations[0][2]] + [v for _, so, off, _, _ in dests for v in so + [off]], vec)
    mode, aligned = choose_mode(precision, kernel, cin, pool is not None, in_aligned, out_aligned)
    if config is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else DEFAULT_SMS
        config = choose_config(mode, precision, aligned, m, cout, sms, cin)
    elif config not in SHIPPED[(mode, precision, aligned)]:
        raise ValueError(f"{name}: config {config.name} is not shipped for the {MODE_NAMES[mode]} {precision} "
                         f"{'aligned' if aligned else 'unaligned'} variant; choose one of "
                         f"{[c.name for c in SHIPPED[(mode, precision, aligned)]]}")

    weight_shape, xvec, stem_pads = packed.data.shape, vec if aligned else 1, None
    if mode == STEM:  # DIRECT on the virtual input of a padded copy (see the module docstring)
        stem_pads = pads[2]
        wp = stem_pads[0] + w + stem_pads[1]  # the copy: contiguous Tensor[N, T, H, wp, STEM_CHANNELS]
        xvec, x_off, cin, kernel = min(vec, STEM_CHANNELS), 0, kernel[2] * STEM_CHANNELS, (kernel[0], kernel[1], 1)
        w = wp - kernel[2] + 1
        sx = [0 if d == 1 else s for d, s in zip((n, t, h, w), (t * h * wp * STEM_CHANNELS, h * wp * STEM_CHANNELS,
                                                                 wp * STEM_CHANNELS, STEM_CHANNELS))]
        pads = (pads[0], pads[1], (0, 0))
        weight_shape = (math.prod(kernel) * cin, weight_shape[1])
        if not _input_fits((n, cin, t, h, w), sx, kernel, pads, None, sites, weight_shape):
            raise ValueError(f"{NAME}: tensors too large for 32-bit offsets within a tile (padded stem input "
                             f"{(n, t, h, wp, STEM_CHANNELS)})")
    if mode == FOLD:
        taps = _fold_table(kernel, cin, sx[1], sx[2], sx[3], x.device)
    else:
        taps = _no_table(x.device)
    _, so0, off0, cnt0, _ = dests[0]
    _, so1, off1, _, _ = dests[-1]  # with one destination, its mask (channels >= cnt0 = Cout) is empty
    (pt, _), (ph, _), (pw, _) = pads
    ints = (t, h, w, cin, ot, oh, ow, m, cout, weight_shape[1], weight_shape[0], taps.shape[-1],
            *kernel, *stride, pt, ph, pw,
            *sx, x_off,
            *so0, off0, cnt0,
            *so1, off1,
            0.0 if relu else float("-inf"))
    meta = dict(MODE=mode, BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                VEC=vec if aligned else 1, XVEC=xvec, PRECISION=DOT_PRECISION[precision])
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(cout, config.block_n),)
    return _Launch(grid, ints, meta, config, precision, convert, x_off if mode != STEM else 0, stem_pads, taps,
                   tuple(d[0] for d in dests), (n, cout, ot, oh, ow))
class Plan(NamedTuple):
    mode: int  # DIRECT, FOLD or POOL
    precision: str
    aligned: bool
    config: Config


def plan_config(x: torch.Tensor, weight: Union[torch.Tensor, PackedWeight], stride: Triple, pads: Pads,
                destinations: Sequence[Destination], pool: Optional[Triple] = None, allow_tf32: bool = False
                ) -> Plan:
    """The variant (a key of :data:`SHIPPED`) and config :func:`conv3d` would launch for these arguments."""
    packed = weight if isinstance(weight, PackedWeight) else pack_weight(weight)
    ones = torch.ones(packed.cout, dtype=torch.float32, device=x.device)
    launch = _launch(x, packed, ones, ones, stride, pads, True, destinations, pool, allow_tf32)
    if launch is None:
        raise ValueError("conv3d (triton): nothing to launch (empty output)")
    return Plan(launch.meta["MODE"], launch.precision, launch.meta["VEC"] > 1, launch.config)


# -- ahead-of-time specs --------------------------------------------------------------------------
def _signature(precision: str) -> Dict[str, str]:
    dtype = TRITON_DTYPE[precision]
    sig: Dict[str, str] = {}
    for arg in _conv3d_kernel.arg_names:
        if arg in ("scale_ptr", "shift_ptr"):
            sig[arg] = "*fp32"
        elif arg == "taps_ptr":
            sig[arg] = "*i32"
        elif arg in _PTR_ARGS:
            sig[arg] = "*" + dtype
        elif arg == "lo":
            sig[arg] = "fp32"
        elif arg in _INT_ARGS:
            sig[arg] = "i32"
        else:
            sig[arg] = "constexpr"
    return sig


def aot_specs() -> List[AotSpec]:
    """Every (mode, precision, alignment, config) in :data:`SHIPPED`, as compiled at run time
    (16-byte aligned pointers, int args unspecialized)."""
    specs = []
    for (mode, precision, aligned), configs in SHIPPED.items():
        vec = vector_elements(precision) if aligned else 1
        xvec = min(vec, STEM_CHANNELS) if mode == STEM else vec
        for c in configs:
            specs.append(AotSpec(
                name=f"conv3d.{MODE_NAMES[mode]}.{precision}.{'vec' if aligned else 'any'}.{c.name}",
                fn=_conv3d_kernel, signature=_signature(precision),
                constexprs=dict(MODE=mode, BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, VEC=vec,
                                XVEC=xvec, PRECISION=DOT_PRECISION[precision]),
                num_warps=c.num_warps, num_stages=c.num_stages,
                tensor_cores={} if precision == "ieee" else {80: "mma", 90: "wgmma"},
                aligned=_PTR_ARGS, options=dict(COMPILE_OPTIONS), gemm_tile=(c.block_m, c.block_n, c.block_k)))
    return specs
