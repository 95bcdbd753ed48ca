"""C++ float32 convolutions on channels-last tensors, with the scale/shift epilogue and ReLU fused:

- 3x3x3 stride-1 convolutions with one cell of zero padding per side (what TF "SAME" gives for
  k = 3, s = 1): 3D Winograd F(2x2x2, 3x3x3) (csrc/cpu/winograd3d.cpp), 64 multiplies per 2x2x2
  outputs and input channel instead of 216; and the factorised convolutions of R(2+1)D, S3D and
  SlowFast: 1x3x3 padded (0, 1, 1) by F(1x2x2, 1x3x3), 16 multiplies per 1x2x2 outputs instead of 36,
  and 3x1x1 padded (1, 0, 0) by F(2x1x1, 3x1x1), 4 instead of 6 per 2 outputs.
- 1x1x1 stride-1 unpadded convolutions: one GEMM (csrc/cpu/pointwise_conv3d.cpp), optionally of a
  stride-1 SAME max pool of the input computed on load (Inception branch 3).
- Gradients (:func:`conv3d_backward`): a Winograd layer's data gradient on the same Winograd kernel
  (flipped, transposed weights); other data gradients and every weight gradient by the fastest method
  timed per layer (:func:`data_grad_method`, :func:`weight_grad_method`): oneDNN, the Winograd
  weight-gradient kernel (:func:`winograd_weight_grad`), one GEMM over im2col columns, per-tap GEMMs
  for kT x 1 x 1 layers, or space-to-depth.

The input may be a channel slice of a wider channels_last_3d tensor (e.g. ``mid[:, :b1a]`` in an
Inception block) and the output channels go straight into the destination channel slices: no copies.

Weights are transformed / packed by :func:`prepare_weight`; :func:`conv3d` caches that per weight
tensor (while the tensor lives and is not modified in place; not for inference-mode tensors, whose
changes cannot be told), so a model calling it with the same weights pays for it once. Where PyTorch
allows reduced-precision float32 convolutions, constant weights may run Winograd F(4, 3) tiles
(:func:`wide_tiles`).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import torch

from ...padding import Pads, Triple, resolve_padding
from ..aten import conv3d as aten_conv3d
from ..weight_cache import WeightCache
from . import autotune, empty_weight_grad, extension, threads
from . import pool3d as cpu_pool3d
from . import space_to_depth

CL = torch.channels_last_3d
PAD_1 = ((1, 1), (1, 1), (1, 1))
PAD_0 = ((0, 0), (0, 0), (0, 0))
#: Winograd kernel -> the zero padding it runs with (SAME, stride 1)
WINOGRAD = {(3, 3, 3): PAD_1, (1, 3, 3): ((0, 0), (1, 1), (1, 1)), (3, 1, 1): ((1, 1), (0, 0), (0, 0))}


def winograd_kernel(weight: torch.Tensor) -> Optional[Triple]:
    """The weight's kernel (kT, kH, kW) if the Winograd kernels run it (3x3x3, 1x3x3, 3x1x1), else None."""
    kernel = tuple(weight.shape[2:])
    return next((k for k in WINOGRAD if kernel == k), None)  # == (not hashing): symbolic shapes too


def unsupported(x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads,
                pool: Optional[Triple]) -> Optional[str]:
    """Why these kernels cannot run the convolution (None when they can). Device and extension are
    checked by the op."""
    if x.dtype != torch.float32:
        return f"supports float32 only, got {str(x.dtype).replace('torch.', '')}"
    if tuple(stride) != (1, 1, 1):
        return f"runs stride-1 convolutions only, got stride {tuple(stride)}"
    kernel, pads = tuple(weight.shape[2:]), tuple(map(tuple, pads))
    winograd = winograd_kernel(weight)
    if winograd:
        if pads != WINOGRAD[winograd]:
            return (f"runs {'x'.join(map(str, winograd))} kernels with zero padding {WINOGRAD[winograd]} only "
                    f"(SAME), got pads {pads}")
        if pool is not None:
            return "fuses a max pool into 1x1x1 convolutions only"
        return None
    if kernel == (1, 1, 1):
        return None if pads == PAD_0 else f"runs unpadded 1x1x1 kernels only, got pads {pads}"
    return f"runs 3x3x3, 1x3x3 and 3x1x1 (Winograd) and 1x1x1 (GEMM) kernels only, got {kernel}"


def slower_than_onednn(x: torch.Tensor, weight: torch.Tensor, transformed_per_call: bool = False) -> Optional[str]:
    """Why ``backend="auto"`` leaves a convolution these kernels can run to oneDNN.

    The micro-kernels keep 24 vectors of 16 floats in registers: without AVX-512 (a portable
    ``I3D_FAST_PORTABLE=1`` build, or an AVX2 machine) they spill and run several times slower than
    oneDNN. Otherwise both are timed on the first call with this configuration
    (:mod:`.autotune`); ``transformed_per_call``: the weight changes every call (training), so its
    transform is part of the C++ kernel's time.

    With ``I3D_FAST_AUTOTUNE=0``, fixed rules from crossovers measured on a 2-core AMD EPYC (Zen 4),
    1 thread: Winograd 3x3x3 ties oneDNN at Cin * Cout = 64-128 and loses on inputs that are planes
    (a size-1 dimension) of 100 positions or more (1x14x14: 0.77x, 1x56x56: 0.48x), and, when the
    weight is transformed per call, with under 48 tiles of 2x2x2 outputs per thread (0.45x)."""
    if not extension().conv3d_avx512:
        return "i3d_fast._C was built without AVX-512, which its GEMM micro-kernels need to be fast"
    if autotune.enabled(x, weight):
        return _measured_forward(x, weight, transformed_per_call)
    if tuple(weight.shape[2:]) in ((1, 3, 3), (3, 1, 1)):
        return "the fixed rules have no crossover for 1x3x3 / 3x1x1 kernels (enable autotuning to time them)"
    if tuple(weight.shape[2:]) != (3, 3, 3):
        return None
    cout, cin = weight.shape[:2]
    if cin * cout < 128:
        return f"oneDNN is as fast for few channels (Cin * Cout = {cin * cout} < 128)"
    spatial = tuple(x.shape[2:])
    if 1 in spatial and math.prod(spatial) >= 100:
        return f"oneDNN is faster on planar inputs ({spatial}: a size-1 dimension, 100+ positions)"
    tiles = _tiles(x)
    if transformed_per_call and tiles < 48 * threads():
        return f"oneDNN is faster with few tiles ({tiles} < 48 per thread) when the weight changes every call"
    return None


def _measured_forward(x: torch.Tensor, weight: torch.Tensor, transformed_per_call: bool) -> Optional[str]:
    """Times this kernel (bias + ReLU epilogue) against oneDNN's on x and weight (see :mod:`.autotune`)."""
    key = ("conv3d", tuple(x.shape), row_stride(x) is not None, tuple(weight.shape), transformed_per_call, threads(),
           reduced_precision_allowed())  # the switch may change oneDNN's own speed (bf16)

    def candidates():
        w = weight.detach()
        cout = w.shape[0]
        pads = WINOGRAD.get(winograd_kernel(w), PAD_0)
        shift = torch.zeros(cout)
        packed = None if transformed_per_call else prepare_weight(w)  # F(2, 3): F(4, 3) runs only where faster

        def ours():
            out = torch.empty((x.shape[0], cout, *x.shape[2:]), memory_format=CL)
            conv3d_packed(x, packed or prepare_weight(w), shift, True, [(out, 0, cout)])

        return ours, lambda: aten_conv3d.conv3d(x, w, None, shift, (1, 1, 1), pads, True)

    return autotune.slower(key, candidates)


def tile_outputs(kernel: Triple, wide: bool = False) -> Triple:
    """Outputs per Winograd tile along (T, H, W): 2 along each dimension of kernel size 3 (F(2, 3)), 1
    along the others; ``wide``: 4 (F(4, 3)) along H and W of 3x3x3 / 1x3x3 kernels, along T of 3x1x1."""
    if not wide:
        return tuple(2 if k == 3 else 1 for k in kernel)
    return (4, 1, 1) if tuple(kernel) == (3, 1, 1) else (2 if kernel[0] == 3 else 1, 4, 4)


def _tiles(x: torch.Tensor, kernel: Triple = (3, 3, 3), wide: bool = False) -> int:
    """Output tiles (see :func:`tile_outputs`) of a SAME stride-1 Winograd convolution of x."""
    return x.shape[0] * math.prod(-(-s // m) for s, m in zip(x.shape[2:], tile_outputs(kernel, wide)))


class PackedWeight(NamedTuple):
    """Weights in the layout of the C++ kernels (see :func:`prepare_weight`)."""
    data: torch.Tensor  # 1-D float32
    winograd: Optional[Triple]  # the Winograd kernel (3x3x3, 1x3x3, 3x1x1), or None: a 1x1x1 GEMM
    cin: int
    cout: int
    wide: bool = False  # Winograd F(4, 3) tiles (see :func:`tile_outputs`)


def prepare_weight(weight: torch.Tensor, scale: Optional[torch.Tensor] = None, flipped: bool = False,
                   wide: bool = False) -> PackedWeight:
    """Winograd-transformed (``U = G g G^T`` per transformed dimension) or packed (1x1x1) weights.

    Args:
        weight: Tensor[Cout, Cin, kT, 3, 3] (kT 3 or 1) or Tensor[Cout, Cin, 1, 1, 1] (any float dtype;
            CPU; a float32 Winograd weight is read in place with any strides).
        scale: optional Tensor[Cout] folded into the weights (in float64) first.
        flipped: transform the data-gradient weight instead, without materialising it: the input
            gradient of a stride-1 SAME kT x 3 x 3 convolution is the same convolution of the output
            gradient with the weight flipped in T, H, W and in/out channels swapped
            (Tensor[Cin, Cout, kT, 3, 3]).
        wide: F(4, 3) tiles instead of F(2, 3) (see :func:`tile_outputs`; Winograd kernels only).
    """
    w = weight.detach()
    if scale is not None:
        w = w.double() * scale.detach().double().view(-1, 1, 1, 1, 1)
    kernel = winograd_kernel(weight)
    if w.dtype != torch.float32 or (not kernel and not w.is_contiguous()):
        w = w.float().contiguous()
    cout, cin = (w.shape[1], w.shape[0]) if flipped else (w.shape[0], w.shape[1])
    ext = extension()
    if kernel:
        data = torch.empty(ext.winograd3d_packed_size(cout, cin, kernel[0], kernel[1], wide), dtype=torch.float32)
    else:
        data = torch.empty(ext.pointwise_conv3d_packed_size(cout, cin), dtype=torch.float32)
    if kernel:  # read in place with any strides (vector loads where the output channels are contiguous)
        s = w.stride()
        strides = (s[1], s[0], *s[2:]) if flipped else s
        ext.winograd3d_prepare_weight(w.data_ptr(), data.data_ptr(), cout, cin, threads(), strides, flipped,
                                      kernel[0], kernel[1], wide)
    else:
        ext.pointwise_conv3d_prepare_weight(w.data_ptr(), data.data_ptr(), cout, cin, threads())
    return PackedWeight(data, kernel, cin, cout, bool(kernel) and wide)


_PREPARED = {wide: WeightCache(functools.partial(prepare_weight, wide=wide)) for wide in (False, True)}


def cached_weight(weight: torch.Tensor, scale: Optional[torch.Tensor] = None, wide: bool = False) -> PackedWeight:
    """:func:`prepare_weight` of weight (times scale), kept per weight tensor while it is unchanged (without a
    scale)."""
    return prepare_weight(weight, scale, wide=wide) if scale is not None else _PREPARED[wide].get(weight)


#: Weights seen unchanged by two calls: constant (inference) weights, not training ones (see
#: :meth:`.WeightCache.get_if_seen`).
_CONSTANT = WeightCache(lambda weight: True)


def reduced_precision_allowed() -> bool:
    """Whether PyTorch is told to allow reduced-precision float32 convolutions on the CPU:
    ``torch.backends.mkldnn.conv.fp32_precision`` set to "tf32" or "bf16" (where it is "none", the
    mkldnn level ``torch.backends.mkldnn.fp32_precision``, then the generic ``torch.backends.fp32_precision``
    decide; torch before 2.9 has none of them: never)."""
    for level in (getattr(torch.backends.mkldnn, "conv", None), torch.backends.mkldnn, torch.backends):
        precision = getattr(level, "fp32_precision", "none")
        if precision != "none":
            return precision in ("tf32", "bf16")
    return False


def wide_tiles(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a Winograd convolution of x with a constant (inference) weight runs F(4, 3) tiles (see
    :func:`tile_outputs`): only where reduced-precision float32 convolutions are allowed
    (:func:`reduced_precision_allowed`, PyTorch's own switch), timed against F(2, 3) on the first call
    with this configuration and chosen when it took at most :data:`.autotune.MARGIN` of the time
    (1.2-1.4x faster on R(2+1)D's 1x3x3 / 3x1x1 layers, 0.8-1.3x on 3x3x3 ones, 2-core Xeon).

    F(4, 3)'s transforms multiply by up to 8 and 1/24: its float32 error grows with the input channels
    to 5-50x that of oneDNN's direct convolution (F(2, 3): 0.3-2.4x), about 1e-5 of the output's scale
    at 256 channels: far inside TF32's or bf16's error, but not float32's. Training weights (fresh
    aliases, seen once per call), inference-mode tensors (whose changes cannot be told), gradients and
    ``I3D_FAST_AUTOTUNE=0`` keep F(2, 3)."""
    if (not winograd_kernel(weight) or weight.requires_grad or not reduced_precision_allowed()
            or not autotune.enabled(x, weight) or _CONSTANT.get_if_seen(weight) is None):
        return False
    key = ("winograd_tiles", tuple(x.shape), row_stride(x) is not None, tuple(weight.shape), threads())

    def candidates():
        w = weight.detach()
        out = torch.empty((x.shape[0], w.shape[0], *x.shape[2:]), memory_format=CL)
        packs = [prepare_weight(w, wide=wide) for wide in (False, True)]
        return [(name, functools.partial(conv3d_packed, x, packed, None, True, [(out, 0, w.shape[0])]))
                for name, packed in zip(("F(2,3)", "F(4,3)"), packs)]

    return autotune.fastest(key, candidates) == "F(4,3)"


def row_stride(t: torch.Tensor) -> Optional[int]:
    """The row stride (floats) if ``t`` [N, C, T, H, W] is stored as NDHW rows with contiguous
    channels (a channels_last_3d tensor or a channel slice of one), else None."""
    c = t.shape[1]
    if c > 1 and t.stride(1) != 1:
        return None
    spatial = [dim for dim in (4, 3, 2, 0) if t.shape[dim] > 1]
    ld = t.stride(spatial[0]) if spatial else c
    expected = ld
    for dim in (4, 3, 2, 0):
        if t.shape[dim] > 1 and t.stride(dim) != expected:
            return None
        expected *= t.shape[dim]
    return ld if ld >= c else None


def as_rows(t: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """(t, row stride): ``t`` itself when it is stored in channels-last rows (see :func:`row_stride`),
    else a channels_last_3d copy."""
    ld = row_stride(t)
    if ld is None:
        t = t.contiguous(memory_format=CL)
        ld = t.shape[1]
    return t, ld


def conv3d_packed(x: torch.Tensor, weight: PackedWeight, shift: Optional[torch.Tensor], relu: bool,
                  destinations: Sequence[Tuple[torch.Tensor, int, int]], pool: Optional[Triple] = None,
                  stats: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> bool:
    """Writes relu?(conv3d(x, w) + shift) into ``destinations`` = [(out, channel offset, count), ...]
    (channels_last_3d float32 outs, counts summing to Cout). Winograd kernels: SAME zero padding;
    1x1x1: ``pool`` = (kT, kH, kW) convolves a stride-1 SAME max pool of x instead. x: float32 Tensor[N, Cin, T, H, W]
    in channels-last rows (a channel slice of a wider tensor is read in place; other layouts are
    copied first). ``stats`` = (mean, var), float32 Tensor[Cout] each: filled in the store loop with
    the outputs' per-channel batch mean and biased variance before ReLU (training-mode BatchNorm's
    statistics without another pass; csrc/cpu/channel_stats.h). Returns True when a Winograd output
    came out inf or NaN (stats then unset): its transforms turn an infinite input into NaN where a
    direct convolution gives +-inf, so the caller recomputes."""
    x, ld = as_rows(x)
    n, cin, t, h, w = x.shape
    dests = [(out.data_ptr() + offset * out.element_size(), out.shape[1], count)
             for out, offset, count in destinations]
    bias = None if shift is None else shift.to(torch.float32).contiguous()
    bias_ptr = 0 if bias is None else bias.data_ptr()
    mean_ptr, var_ptr = (0, 0) if stats is None else (stats[0].data_ptr(), stats[1].data_ptr())
    ext = extension()
    if weight.winograd:
        def run(chunk: int) -> bool:
            return ext.winograd3d_forward(x.data_ptr(), ld, (n, t, h, w), cin, weight.data.data_ptr(), weight.cout,
                                          bias_ptr, relu, dests, threads(), chunk, weight.winograd[0],
                                          weight.winograd[1], mean_ptr, var_ptr, weight.wide)

        return run(_winograd_chunk(x, ld, weight, run))
    ext.pointwise_conv3d_forward(x.data_ptr(), ld, (n, t, h, w), cin, weight.data.data_ptr(), weight.cout,
                                 bias_ptr, relu, tuple(pool) if pool is not None else (0, 0, 0), dests, threads(),
                                 mean_ptr, var_ptr)
    return False


#: Tiles per work chunk timed against the Winograd kernel's own rule (V + M sized to the L2 cache).
CHUNK_CANDIDATES = (12, 24, 48, 96)


def _winograd_chunk(x: torch.Tensor, ld: int, weight: PackedWeight, run: Callable[[int], object]) -> int:
    """Tiles per work chunk for this Winograd convolution: 0 (the kernel's rule) or the fastest of
    :data:`CHUNK_CANDIDATES` and, where the tiles are few, one chunk per thread, timed (``run(chunk)``) on the first call with this
    configuration. Larger chunks read the transformed weights fewer times, smaller ones keep the
    transformed input in cache and share the tiles evenly; the best size moves with the channels, the
    tile count and the cache (14-40% apart on I3D and R(2+1)D layers on a Xeon with 2 MiB of L2).
    The output does not depend on the chunk; the batch statistics of :func:`conv3d_packed` round
    differently. With ``I3D_FAST_AUTOTUNE=0``: the kernel's rule."""
    if not autotune.enabled(x):
        return 0

    def sizes():
        per_thread = -(-_tiles(x, weight.winograd, weight.wide) // threads())
        chosen = {c for c in CHUNK_CANDIDATES if c < per_thread}
        if per_thread <= 2 * CHUNK_CANDIDATES[-1]:  # few tiles: also one chunk per thread
            chosen.add(-(-per_thread // 6) * 6)
        return sorted(chosen)

    key = ("winograd_chunk", tuple(x.shape), ld, weight.winograd, weight.wide, weight.cin, weight.cout, threads())
    return _timed_chunk(key, run, sizes)


def _timed_chunk(key, run: Callable[[int], object], sizes: Callable[[], Sequence[int]]) -> int:
    """The fastest chunk size for ``key``: 0 (the kernel's own rule, the baseline) or one of ``sizes()``,
    each ``run(chunk)`` timed on the first call with this key (:func:`.autotune.fastest`)."""
    return int(autotune.fastest(key, lambda: [(str(c), functools.partial(run, c)) for c in (0, *sizes())]))


def conv3d(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
           stride: Triple, pads: Pads, relu: bool, destinations: Optional[Sequence] = None,
           pool: Optional[Triple] = None, allow_tf32: bool = False) -> Optional[torch.Tensor]:
    """See :func:`i3d_fast.ops.conv3d`; only what :func:`unsupported` accepts. Returns a new
    channels_last_3d tensor when ``destinations`` is None, else writes the output channels in order
    into the (tensor, offset, count) destinations. A Winograd result with inf or NaN is recomputed by
    oneDNN (an infinite input must give +-inf, as ``F.conv3d`` does, not the transforms' NaN)."""
    wide = scale is None and wide_tiles(x, weight)
    if wide:
        _PREPARED[False].forget(weight)  # its F(2, 3) pack from the first call
    packed = cached_weight(weight, scale, wide)
    new = destinations is None
    if new:
        out = torch.empty((x.shape[0], packed.cout, *x.shape[2:]), dtype=x.dtype, memory_format=CL)
        destinations = [(out, 0, packed.cout)]
    if conv3d_packed(x, packed, shift, relu, destinations, pool):
        if pool is not None:
            x, pool = cpu_pool3d.pool3d(x, "max", pool, (1, 1, 1), resolve_padding(x.shape[2:], pool, (1, 1, 1),
                                                                                 "same")), None
        return aten_conv3d.conv3d(x, weight, scale, shift, stride, pads, relu, None if new else destinations, pool)
    return destinations[0][0] if new else None


def _whole_layer(x: torch.Tensor, kernel: Triple = (3, 3, 3)) -> bool:
    """Whether the Winograd weight gradient transforms every tile at once (few tiles per thread) rather
    than accumulating per-thread copies of the transformed gradient over chunks of tiles."""
    return _tiles(x, kernel) < 256 * threads()


def _winograd_weight_grad_rejected(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, stride: Triple,
                                   pads: Pads) -> Optional[str]:
    """Why the Winograd weight-gradient kernel cannot take this convolution (None when it can)."""
    if not winograd_kernel(weight):
        return "not a 3x3x3, 1x3x3 or 3x1x1 kernel"
    why = unsupported(x, weight, stride, pads, None) or (None if grad.dtype == torch.float32 else "float32 only")
    if why or not extension().conv3d_avx512:
        return why or "needs an AVX-512 build"
    cin, coutp, kernel = weight.shape[1], -(-weight.shape[0] // 16) * 16, winograd_kernel(weight)
    positions = math.prod(4 if k == 3 else 1 for k in kernel)
    floats = positions * (_tiles(x, kernel) * (cin + coutp) if _whole_layer(x, kernel) else threads() * cin * coutp)
    if floats * 4 > 512 << 20:
        return f"would need {floats * 4 >> 20} MiB of scratch"
    return None


#: The GEMM weight gradient's largest im2col buffer (bytes).
GEMM_WEIGHT_GRAD_MAX_BYTES = 64 << 20
#: Fixed rule (``I3D_FAST_AUTOTUNE=0``): the GEMM gradients for at most this many output positions.
GEMM_GRAD_MAX_ROWS = 512


def _im2col_bytes(grad: torch.Tensor, weight: torch.Tensor) -> int:
    """Bytes of :func:`gemm_weight_grad`'s column buffer (0 for an unpadded stride-1 1x1x1 layer: none)."""
    rows = grad.shape[0] * math.prod(grad.shape[2:])
    return 0 if math.prod(weight.shape[2:]) == 1 else rows * math.prod(weight.shape[1:]) * grad.element_size()


def weight_grad_method(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, stride: Triple,
                       pads: Pads) -> str:
    """How :func:`conv3d_backward` computes this convolution's weight gradient: "winograd"
    (:func:`winograd_weight_grad`), "gemm" (:func:`gemm_weight_grad`), "space_to_depth"
    (:func:`.space_to_depth.weight_grad`, where its forward measured faster), "temporal"
    (:func:`temporal_weight_grad`, kT x 1 x 1 float32 layers) or "onednn" (ATen's
    ``convolution_backward``), the fastest measured on the first call with this configuration
    (:func:`.autotune.fastest`: oneDNN unless another took at most 0.95 of its time).

    oneDNN's weight gradient parallelises over output positions and is slow where a layer has few of
    them and many channels (2x4x4 / 2x7x7 late layers: 3-16x slower than one GEMM here); Winograd
    saves multiplies on 3x3x3 / 1x3x3 / 3x1x1 SAME layers. With ``I3D_FAST_AUTOTUNE=0`` the fixed
    rules: GEMM for at most :data:`GEMM_GRAD_MAX_ROWS` output positions, else Winograd where
    it applies, else oneDNN."""
    if not autotune.enabled(x, grad, weight):
        rows = grad.shape[0] * math.prod(grad.shape[2:])
        if rows <= GEMM_GRAD_MAX_ROWS and _im2col_bytes(grad, weight) <= GEMM_WEIGHT_GRAD_MAX_BYTES:
            return "gemm"
        return "winograd" if _winograd_weight_grad_rejected(x, grad, weight, stride, pads) is None else "onednn"
    key = ("conv3d_weight_grad", tuple(x.shape), tuple(grad.shape), tuple(weight.shape), tuple(stride),
           tuple(map(tuple, pads)), x.dtype, row_stride(x) is not None, threads())
    w = weight.detach()

    def candidates():  # judged only on the first call with this configuration
        runs = [("onednn", lambda: aten_conv3d.conv3d_backward(grad, x, w, stride, pads, False, True))]
        if _winograd_weight_grad_rejected(x, grad, w, stride, pads) is None:
            runs.append(("winograd", lambda: winograd_weight_grad(x, grad, w)))
        if _im2col_bytes(grad, w) <= GEMM_WEIGHT_GRAD_MAX_BYTES:
            runs.append(("gemm", lambda: gemm_weight_grad(x, grad, w, stride, pads)))
        if space_to_depth.rejected(x, w, stride, pads) is None:  # its forward measured faster
            runs.append(("space_to_depth", lambda: space_to_depth.weight_grad(x, grad, w, stride, pads)))
        if _temporal(x, weight, stride, pads):
            runs.append(("temporal", lambda: temporal_weight_grad(x, grad, w, stride, pads)))
        return runs

    return autotune.fastest(key, candidates)


def _pointwise(weight: torch.Tensor, stride: Triple, pads: Pads) -> bool:
    """An unpadded stride-1 1x1x1 convolution: one GEMM over channels-last rows."""
    return math.prod(weight.shape[2:]) == 1 and tuple(stride) == (1, 1, 1) and not any(p for pair in pads for p in pair)


def _temporal(x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads) -> bool:
    """A float32 kT x 1 x 1 convolution (kT > 1) strided and padded in T only: its taps are whole
    (T-strided) planes of channels-last rows, so each is a batch of GEMMs without im2col."""
    return (x.dtype == torch.float32 and weight.shape[2] > 1 and tuple(weight.shape[3:]) == (1, 1)
            and tuple(stride[1:]) == (1, 1) and not any(p for pair in pads[1:] for p in pair))


def data_grad_method(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads) -> str:
    """How :func:`conv3d_backward` computes a data gradient the Winograd kernel does not: "gemm"
    (:func:`gemm_data_grad`, unpadded stride-1 1x1x1 layers), "temporal" (:func:`temporal_data_grad`,
    float32 kT x 1 x 1 layers) or "onednn", the fastest measured on the first call with this
    configuration (oneDNN unless another took at most 0.95 of its time; the GEMM is 1.2-2.5x faster
    here on late 1x1x1 layers with few positions, a tie on the others). With ``I3D_FAST_AUTOTUNE=0``:
    the GEMM for at most :data:`GEMM_GRAD_MAX_ROWS` output positions, else oneDNN."""
    pointwise, temporal = _pointwise(weight, stride, pads), _temporal(x, weight, stride, pads)
    if not (pointwise or temporal):
        return "onednn"
    if not autotune.enabled(x, grad, weight):
        return "gemm" if pointwise and grad.shape[0] * math.prod(grad.shape[2:]) <= GEMM_GRAD_MAX_ROWS else "onednn"
    key = ("conv3d_data_grad", tuple(grad.shape), row_stride(grad) is not None, tuple(x.shape), tuple(weight.shape),
           tuple(stride), tuple(map(tuple, pads)), grad.dtype, threads())
    w = weight.detach()
    faster = ("gemm", lambda: gemm_data_grad(grad, w, x.shape)) if pointwise else \
        ("temporal", lambda: temporal_data_grad(grad, w, x.shape, stride, pads))
    return autotune.fastest(key, lambda: [
        ("onednn", lambda: aten_conv3d.conv3d_backward(grad, x, w, stride, pads, True, False)), faster])


def gemm_data_grad(grad: torch.Tensor, weight: torch.Tensor, input_shape) -> torch.Tensor:
    """Data gradient of an unpadded stride-1 1x1x1 convolution as one GEMM: grad rows
    Tensor[N*T*H*W, Cout] @ weight Tensor[Cout, Cin] -> Tensor[input_shape] (channels_last_3d, grad's dtype)."""
    cout, cin = weight.shape[:2]
    out = torch.empty(tuple(input_shape), dtype=grad.dtype, memory_format=CL)
    grad_rows = grad.permute(0, 2, 3, 4, 1).reshape(-1, cout)
    torch.mm(grad_rows, weight.reshape(cout, cin).to(grad.dtype), out=out.permute(0, 2, 3, 4, 1).view(-1, cin))
    return out


def gemm_weight_grad(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, stride: Triple,
                     pads: Pads) -> torch.Tensor:
    """Weight gradient of ``conv3d(pad(x), weight, stride)`` as one GEMM: grad rows^T @ the im2col
    columns of x (x's channels-last rows themselves for an unpadded stride-1 1x1x1 layer).

    Args:
        x: Tensor[N, Cin, T, H, W] (channels-last rows avoid a copy), float32 or bfloat16.
        grad: Tensor[N, Cout, T', H', W'], x's dtype.
        weight: Tensor[Cout, Cin, kT, kH, kW]: the shape and memory layout of the result.
    Returns:
        Tensor[Cout, Cin, kT, kH, kW] in x's dtype with weight's strides (contiguous or
        channels_last_3d; else contiguous), so autograd accumulates it without a copy."""
    cout, cin, *kernel = weight.shape
    rows = grad.shape[0] * math.prod(grad.shape[2:])
    grad_rows = grad.permute(0, 2, 3, 4, 1).reshape(rows, cout)
    out = empty_weight_grad(weight, x.dtype)
    channels_last = not out.is_contiguous()
    if _pointwise(weight, stride, pads):
        torch.mm(grad_rows.t(), x.permute(0, 2, 3, 4, 1).reshape(rows, cin), out=out.view(cout, cin))
        return out
    (t0, t1), (h0, h1), (w0, w1) = pads
    padded = torch.nn.functional.pad(x, (w0, w1, h0, h1, t0, t1)) if any(p for pair in pads for p in pair) else x
    windows = padded.permute(0, 2, 3, 4, 1)
    for dim, (k, s) in enumerate(zip(kernel, stride)):
        windows = windows.unfold(1 + dim, k, s)  # [N, T', H', W', Cin, kT, kH, kW]
    if channels_last:  # columns (kT, kH, kW, Cin): the weight's channels_last_3d order
        torch.mm(grad_rows.t(), windows.permute(0, 1, 2, 3, 5, 6, 7, 4).reshape(rows, -1),
                 out=out.permute(0, 2, 3, 4, 1).view(cout, -1))
    else:
        torch.mm(grad_rows.t(), windows.reshape(rows, -1), out=out.view(cout, -1))
    return out


def _taps(kt: int, stride: int, pads: Tuple[int, int], size: int, out: int):
    """Per tap k of a kT x 1 x 1 convolution along T: (k, first output t0, outputs, first input plane)
    for the outputs whose input plane ``stride * t - before + k`` lies inside x (taps reading only
    padding left out)."""
    before = pads[0]
    for k in range(kt):
        t0 = max(0, -(-(before - k) // stride))
        t1 = min(out, (size - 1 + before - k) // stride + 1)
        if t1 > t0:
            yield k, t0, t1 - t0, stride * t0 - before + k


def _planes(t: torch.Tensor) -> torch.Tensor:
    """Channels-last rows Tensor[N, C, T, H, W] -> their view Tensor[N, T, H*W, C] (no copy)."""
    n, c, tt, h, w = t.shape
    return t.permute(0, 2, 3, 4, 1).reshape(n, tt, h * w, c)


def temporal_weight_grad(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, stride: Triple,
                         pads: Pads) -> torch.Tensor:
    """Weight gradient of a float32 kT x 1 x 1 convolution strided and padded in T only (see
    :func:`_temporal`): per tap, the sum over samples and output planes of grad plane^T @ input plane,
    batched GEMMs on the channels-last rows (no im2col; x's channel slices read in place).

    Args:
        x: Tensor[N, Cin, T, H, W]; grad: Tensor[N, Cout, T', H, W]; weight: Tensor[Cout, Cin, kT, 1, 1]
            (the result's shape and memory layout).
    Returns:
        Tensor[Cout, Cin, kT, 1, 1] float32 with weight's strides where it is dense."""
    (x, _), (grad, _) = as_rows(x), as_rows(grad)
    cout, cin, kt = weight.shape[:3]
    xp, gp = _planes(x), _planes(grad)
    taps = torch.zeros(kt, cout, cin, dtype=torch.float32)
    s = stride[0]
    for k, t0, count, first in _taps(kt, s, pads[0], x.shape[2], grad.shape[2]):
        for n in range(x.shape[0]):
            g = gp[n, t0:t0 + count]  # [count, HW, Cout]
            planes = xp[n, first:first + s * (count - 1) + 1:s]  # [count, HW, Cin]
            if s == 1:  # consecutive planes of rows: one GEMM
                taps[k].addmm_(g.reshape(-1, cout).t(), planes.reshape(-1, cin))
            else:
                taps[k] += torch.bmm(g.transpose(1, 2), planes).sum(0)
    return empty_weight_grad(weight, torch.float32).copy_(taps.permute(1, 2, 0).reshape(cout, cin, kt, 1, 1))


def temporal_data_grad(grad: torch.Tensor, weight: torch.Tensor, input_shape, stride: Triple,
                       pads: Pads) -> torch.Tensor:
    """Data gradient of a float32 kT x 1 x 1 convolution strided and padded in T only: per tap, each
    output plane's gradient @ the tap's weight added into its input plane (batched GEMMs on the
    channels-last rows) -> Tensor[input_shape] (channels_last_3d float32)."""
    grad, _ = as_rows(grad)
    cout, cin, kt = weight.shape[:3]
    out = torch.empty(tuple(input_shape), dtype=torch.float32, memory_format=CL).zero_()
    op, gp = _planes(out), _planes(grad)
    w = weight.detach().to(torch.float32)
    s = stride[0]
    for k, t0, count, first in _taps(kt, s, pads[0], input_shape[2], grad.shape[2]):
        wk = w[:, :, k, 0, 0]  # [Cout, Cin]
        for n in range(grad.shape[0]):
            g = gp[n, t0:t0 + count]
            planes = op[n, first:first + s * (count - 1) + 1:s]
            if s == 1:
                planes.view(-1, cin).addmm_(g.reshape(-1, cout), wk)
            else:
                planes.baddbmm_(g, wk.expand(count, cout, cin))
    return out


#: Tiles per work chunk timed against the Winograd weight gradient's own rule (V + dM within 4 MiB).
GRAD_CHUNK_CANDIDATES = (24, 48, 96)


def winograd_weight_grad(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor) -> Tuple[torch.Tensor, bool]:
    """Weight gradient of a stride-1 SAME convolution with a Winograd kernel (3x3x3, 1x3x3, 3x1x1)
    of x Tensor[N, Cin, T, H, W] given its output gradient Tensor[N, Cout, T, H, W] (float32,
    channels-last rows, channel slices read in place) -> (Tensor[Cout, Cin, *kernel] float32 with
    ``weight``'s strides where it is dense (so autograd accumulates it without a copy), whether any
    element is inf or NaN). Layers with many tiles accumulate per-thread copies over chunks of tiles,
    the chunk size timed once per configuration among the kernel's rule and
    :data:`GRAD_CHUNK_CANDIDATES` (10-30% apart on I3D / R(2+1)D layers; the sums' order, so the
    last bits, depend on it)."""
    (x, ldx), (grad, ldg) = as_rows(x), as_rows(grad)
    n, cin, t, h, w = x.shape
    cout, kernel = grad.shape[1], winograd_kernel(weight)
    dw = empty_weight_grad(weight, torch.float32)
    whole = _whole_layer(x, kernel)

    def run(chunk: int) -> bool:
        return extension().winograd3d_weight_grad(x.data_ptr(), ldx, (n, t, h, w), cin, grad.data_ptr(), ldg, cout,
                                                  dw.data_ptr(), dw.stride(), threads(), whole, kernel[0], kernel[1],
                                                  chunk)

    chunk = 0
    if not whole and autotune.enabled(x, grad):
        key = ("winograd_weight_grad_chunk", tuple(x.shape), tuple(grad.shape), kernel, threads())
        chunk = _timed_chunk(key, run, lambda: GRAD_CHUNK_CANDIDATES)
    return dw, run(chunk)


def conv3d_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads,
                    need_input: bool, need_weight: bool):
    """(grad_x or None, grad_weight or None) of the convolution, float32 or bfloat16. For a
    Winograd-kernel (3x3x3, 1x3x3, 3x1x1) stride-1 SAME float32 convolution the data gradient is itself
    one (flipped, transposed weights) and runs on the Winograd kernel where ``backend="auto"`` would
    pick it for that shape; other data gradients as :func:`data_grad_method` chooses (one GEMM for an
    unpadded stride-1 1x1x1 layer, per-tap GEMMs for a kT x 1 x 1 one, or oneDNN); the weight gradient
    runs as :func:`weight_grad_method` chooses (Winograd, one GEMM, space-to-depth, per-tap GEMMs or
    oneDNN); everything else is :func:`i3d_fast.kernels.aten.conv3d.conv3d_backward`."""
    grad_x = grad_w = None
    kernel = winograd_kernel(weight)
    winograd_data = False
    if kernel and need_input:
        swapped = weight.transpose(0, 1)  # the data-gradient weight's shape, for the checks
        if unsupported(grad, swapped, stride, pads, None) is None and \
                slower_than_onednn(grad, swapped, transformed_per_call=True) is None:
            winograd_data = True
            grad_x = torch.empty(x.shape, dtype=torch.float32, memory_format=CL)
            # a non-finite result (inf in the gradient) is left to oneDNN below, like the forward
            need_input = conv3d_packed(grad, prepare_weight(weight, flipped=True), None, False,
                                       [(grad_x, 0, x.shape[1])])
    if need_input and not winograd_data:
        method = data_grad_method(grad, x, weight, stride, pads)
        if method == "gemm":
            grad_x, need_input = gemm_data_grad(grad, weight, x.shape), False
        elif method == "temporal":
            grad_x, need_input = temporal_data_grad(grad, weight, x.shape, stride, pads), False
    if need_weight:
        method = weight_grad_method(x, grad, weight, stride, pads)
        if method == "winograd":  # inf inputs: oneDNN's +-inf below, not the transforms' NaN
            grad_w, need_weight = winograd_weight_grad(x, grad, weight)
        elif method == "gemm":
            grad_w, need_weight = gemm_weight_grad(x, grad, weight, stride, pads), False
        elif method == "space_to_depth":
            grad_w, need_weight = space_to_depth.weight_grad(x, grad, weight, stride, pads), False
        elif method == "temporal":
            grad_w, need_weight = temporal_weight_grad(x, grad, weight, stride, pads), False
    if need_input or need_weight:
        aten_x, aten_w = aten_conv3d.conv3d_backward(grad, x, weight, stride, pads, need_input, need_weight)
        grad_x = aten_x if need_input else grad_x
        grad_w = aten_w if need_weight else grad_w
    return grad_x, grad_w
