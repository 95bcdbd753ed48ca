"""First-use self-check of the Triton kernels: never a silently wrong answer from an unproven variant.

The first time a kernel variant (op, mode, precision, layout, tile config) runs on a device in this
process, it is run once on a small problem of the same kind (a few output cells of the real call,
read through views of its own tensors so that strides and alignment, hence the compiled variant,
are the same) and compared with the float64 reference. A variant that disagrees (or raises) is
named in one warning and routed to the op's ATen backend from then on; a variant that agrees is
not checked again. Verdicts are kept per process, keyed by variant and device.

``I3D_FAST_SELFCHECK``: ``0`` turns the check off (benchmarks); ``1`` checks every Triton call,
interpreted CPU ones included (tests); unset or ``auto`` checks calls on CUDA devices only. No
check runs while a CUDA graph is being captured (warm up outside the capture, as graphs need anyway).

Other ops register their variants with one call at the point where they would launch a kernel:
``impl = selfcheck.choose(op, variant, device, check, impl, fallback)``, where ``check()`` runs
the variant on a small problem and returns :func:`disagreement` of its result (None: agrees).
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..padding import output_size

ENV = "I3D_FAST_SELFCHECK"
#: Largest max |ours - expected| accepted, as a fraction of max |expected| (the same number is the
#: absolute floor). Rounding of a fp32-accumulated result to the output dtype stays far below
#: these; a wrong tap, tile or mask is of the order of the result itself.
TOLERANCE = {"ieee": 1e-4, "tf32": 1 / 64, "fp16": 1 / 128, "bf16": 1 / 32}
#: Output cells per dimension of a conv self-check problem (and pooled cells of a pool one).
SMALL = 3

_verdicts: Dict[Tuple, Optional[str]] = {}
_lock = threading.Lock()


class SelfCheckWarning(RuntimeWarning):
    """A Triton kernel variant disagreed with the reference on its first use; ATen runs it instead."""


def setting() -> str:
    """``"off"``, ``"all"`` or ``"cuda"`` from :data:`ENV` (see the module docstring)."""
    value = os.environ.get(ENV, "auto").strip().lower()
    modes = {"0": "off", "1": "all", "auto": "cuda", "": "cuda"}
    if value not in modes:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected 0 (off), 1 (every Triton call) or auto "
                         "(CUDA devices only, the default)")
    return modes[value]


def enabled(device: torch.device) -> bool:
    """Whether calls on ``device`` are checked."""
    mode = setting()
    return mode == "all" or (mode == "cuda" and device.type == "cuda")


_labels: Dict[Tuple[str, Optional[int]], str] = {}


def _device_label(device: torch.device) -> str:
    index = torch.cuda.current_device() if device.type == "cuda" and device.index is None else device.index
    label = _labels.get((device.type, index))
    if label is None:
        label = (f"cuda:{index} ({torch.cuda.get_device_name(index)})" if device.type == "cuda"
                 else f"{device.type} (Triton interpreter)")
        _labels[(device.type, index)] = label
    return label


def verdicts() -> List[Tuple[str, str, Optional[str]]]:
    """(op and variant, device, None if it agreed else what differed) for every variant checked so far."""
    with _lock:
        return [(" ".join(map(str, key[:-1])), key[-1], why) for key, why in _verdicts.items()]


def reset() -> None:
    """Forgets every verdict (tests)."""
    with _lock:
        _verdicts.clear()


def verified(op: str, variant: str, device: torch.device, check: Callable[[], Optional[str]]) -> bool:
    """Whether ``variant`` of ``op`` may run on ``device``: True when checks are off for the device or
    the variant agreed; on its first use ``check()`` runs (None: agreed, else what differed; an
    exception counts as a disagreement) and a disagreement is warned about once."""
    if not enabled(device):
        return True
    key = (op, variant, _device_label(device))
    with _lock:
        if key in _verdicts:
            return _verdicts[key] is None
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return True  # a check cannot run inside CUDA graph capture; the next call outside one checks
    try:
        why = check()
    except Exception as exc:  # noqa: BLE001 - a variant that cannot run is a disagreement, reported below
        why = f"raised {type(exc).__name__}: {exc}"
    with _lock:
        first = key not in _verdicts
        _verdicts.setdefault(key, why)
    if why is not None and first:
        warnings.warn(f"i3d_fast: the Triton {op} variant {variant} on {key[2]} disagrees with the float64 "
                      f"reference on a small problem ({why}); this variant runs on ATen from now on in this "
                      f"process. Please report it with `i3d-fast doctor`'s output. ({ENV}=0 skips these checks.)",
                      SelfCheckWarning, stacklevel=3)
    return why is None


def choose(op: str, variant: str, device: torch.device, check: Callable[[], Optional[str]], impl, fallback):
    """``impl`` when ``variant`` is :func:`verified` on ``device``, else ``fallback``."""
    return impl if verified(op, variant, device, check) else fallback


def disagreement(ours: torch.Tensor, expected: torch.Tensor, precision: str) -> Optional[str]:
    """None when ``ours`` matches ``expected`` (the float64 reference) within :data:`TOLERANCE`
    [precision] of max |expected|, NaNs and infinities in the same places; else what differed."""
    if tuple(ours.shape) != tuple(expected.shape):
        return f"shape {tuple(ours.shape)} instead of {tuple(expected.shape)}"
    ours, expected = ours.double(), expected.double().to(ours.device)
    finite = torch.isfinite(expected)
    if not torch.equal(torch.isfinite(ours), finite):
        bad = int((torch.isfinite(ours) != finite).sum())
        return f"{bad} of {ours.numel()} values are finite in one result and not in the other"
    if not torch.equal(ours[~finite].nan_to_num(), expected[~finite].nan_to_num()):
        return "infinities or NaNs differ"
    if not finite.any():
        return None
    err = (ours[finite] - expected[finite]).abs().max().item()
    top = expected[finite].abs().max().item()
    allowed = TOLERANCE[precision] * max(top, 1.0)
    if err <= allowed:
        return None
    return f"max abs error {err:.4g}, allowed {allowed:.3g} at max |expected| {top:.4g}"


def _precision(dtype: torch.dtype, allow_tf32: bool = False) -> str:
    if dtype == torch.float32:
        return "tf32" if allow_tf32 else "ieee"
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


# -- conv3d -------------------------------------------------------------------------------------------
_conv_variants: Dict[Tuple, Tuple[str, object]] = {}
_MAX_REMEMBERED = 4096


def _layout(t: torch.Tensor) -> Tuple:
    return tuple(t.shape), t.stride(), t.data_ptr() % 16, t.dtype, t.device


def conv3d_variant(x, weight, stride, pads, destinations, pool, allow_tf32) -> Tuple[str, object]:
    """(name, :class:`~i3d_fast.kernels.triton.conv3d.Plan`) of the Triton conv variant (mode,
    precision, alignment, config) this call launches, remembered per call geometry (shapes,
    strides, 16-byte alignment), so repeated calls plan nothing."""
    key = (_layout(x), tuple(weight.shape), tuple(stride), tuple(map(tuple, pads)), pool, allow_tf32,
           None if destinations is None else tuple((_layout(o), off, cnt) for o, off, cnt in destinations))
    found = _conv_variants.get(key)
    if found is None:
        from ..kernels.triton import conv3d as triton_conv3d

        if destinations is None:
            out = torch.empty(_conv_out_shape(x.shape, weight.shape, stride, pads), dtype=x.dtype, device=x.device,
                              memory_format=torch.channels_last_3d)
            destinations = [(out, 0, weight.shape[0])]
        plan = triton_conv3d.plan_config(x, weight, stride, pads, destinations, pool, allow_tf32)
        name = (f"{triton_conv3d.MODE_NAMES[plan.mode]} {plan.precision} "
                f"{'aligned' if plan.aligned else 'unaligned'} {plan.config.name}")
        if len(_conv_variants) >= _MAX_REMEMBERED:
            _conv_variants.clear()
        found = _conv_variants[key] = (name, plan)
    return found


def _conv_out_shape(x_shape, w_shape, stride, pads) -> Tuple[int, ...]:
    sizes = (output_size(s, k, st, p) for s, k, st, p in zip(x_shape[2:], w_shape[2:], stride, pads))
    return (x_shape[0], w_shape[0], *sizes)


def _small_window(size: int, k: int, st: int, before: int, out: int) -> Tuple[int, Tuple[int, int]]:
    """(input cells, (pad before, pad after)) whose conv gives the first ``out`` of a dimension's
    outputs, read from the first input cells."""
    need = (out - 1) * st + k - before  # input cells the first ``out`` windows reach
    cells = max(1, min(size, need))
    return cells, (before, max(0, need - cells))


def conv3d_check(triton_impl, x, weight, scale, shift, stride, pads, relu, destinations, pool, allow_tf32,
                 plan) -> Callable[[], Optional[str]]:
    """A check for :func:`verified` of the variant ``plan`` (from :func:`conv3d_variant`): the real call
    cut to its first sample and :data:`SMALL` output cells per dimension, as views of its own input
    and destinations (channel offsets, strides and alignment unchanged), launched with the call's
    tile config, against the float64 reference. When the cut selects another mode or alignment
    (alignment of the batch stride, which a single sample drops), the whole call is checked instead."""

    def check() -> Optional[str]:
        from ..kernels.reference import conv3d as reference_conv3d

        full = _conv_out_shape(x.shape, weight.shape, stride, pads)
        kernel = weight.shape[2:]
        cells, small_pads = zip(*(_small_window(s, k, st, p[0], min(o, SMALL))
                                  for s, k, st, p, o in zip(x.shape[2:], kernel, stride, pads, full[2:])))
        if pool is not None:  # 1x1x1, stride 1, no padding: the pool window reads the view's own cells
            small_pads = ((0, 0),) * 3
        xs = x[:1, :, :cells[0], :cells[1], :cells[2]]
        outs = _conv_out_shape(xs.shape, weight.shape, stride, small_pads)[2:]
        dests = None if destinations is None else [
            (o[:1, :, :outs[0], :outs[1], :outs[2]], off, cnt) for o, off, cnt in destinations]
        cut = conv3d_variant(xs, weight, stride, small_pads, dests, pool, allow_tf32)[1]
        if cut[:3] != plan[:3]:  # (mode, precision, aligned)
            xs, small_pads, dests = x, pads, destinations
        y = triton_impl.conv3d(xs, weight, scale, shift, tuple(stride), small_pads, relu, dests, pool, allow_tf32,
                               plan.config)
        if dests is not None:
            y = torch.cat([o[:, off:off + cnt] for o, off, cnt in dests], dim=1)
        expected = reference_conv3d.conv3d(
            xs.double(), weight.double(), None if scale is None else scale.double(),
            None if shift is None else shift.double(), tuple(stride), small_pads, relu, None, pool)
        return disagreement(y, expected, _precision(x.dtype, allow_tf32))

    return check


# -- pool3d -------------------------------------------------------------------------------------------
def pool3d_variant(triton_impl, x: torch.Tensor, channels: int, mode: str, kernel, backward: bool) -> str:
    """The Triton pooling variant: direction, mode, dtype, tap index type (max backward) and block."""
    tile = triton_impl.TILE if x.is_cuda else triton_impl.INTERPRETER_TILE
    block_p, block_c = triton_impl.block_config(channels, tile)
    index = f" {str(triton_impl.index_dtype(kernel)).replace('torch.', '')} taps" if backward and mode == "max" else ""
    return (f"{'backward' if backward else 'forward'} {mode} {str(x.dtype).replace('torch.', '')}{index} "
            f"p{block_p}c{block_c}")


def _small_pool(shape, kernel, stride, pads) -> Tuple[Tuple[int, ...], Tuple[Tuple[int, int], ...]]:
    """(input cells, pads) of the first :data:`SMALL` outputs per dimension of a pooling."""
    cut = [_small_window(size, k, st, p[0], min(SMALL, output_size(size, k, st, p)))
           for size, k, st, p in zip(shape[2:], kernel, stride, pads)]
    return tuple(c for c, _ in cut), tuple(p for _, p in cut)


def pool3d_check(triton_impl, tensor: torch.Tensor, x: Optional[torch.Tensor], input_shape, mode: str, kernel,
                 stride, pads, backward: bool) -> Callable[[], Optional[str]]:
    """A check for :func:`verified` of the forward pooling of ``x`` or (``backward``) its gradient, on
    the first sample and :data:`SMALL` output cells per dimension of the call, against the float64
    reference. ``tensor`` (x or the output gradient) gives dtype and device; average pooling's
    backward has no ``x`` and checks on random input."""

    def check() -> Optional[str]:
        from ..kernels.reference import pool3d as reference_pool3d

        cells, small_pads = _small_pool(input_shape, kernel, stride, pads)
        kernel_, stride_ = tuple(kernel), tuple(stride)
        gen = torch.Generator().manual_seed(0)
        if x is not None:
            xs = x[:1, :, :cells[0], :cells[1], :cells[2]]
        else:
            xs = torch.randn((1, input_shape[1], *cells), generator=gen).to(tensor.device, tensor.dtype)
        expected_y = reference_pool3d.pool3d(xs.double(), mode, kernel_, stride_, small_pads)
        precision = _precision(tensor.dtype)
        if not backward:
            return disagreement(triton_impl.pool3d(xs, mode, kernel_, stride_, small_pads), expected_y, precision)
        g = torch.randn(expected_y.shape, generator=gen).to(tensor.device, tensor.dtype)
        g = g.contiguous(memory_format=torch.channels_last_3d)
        ours = triton_impl.pool3d_backward(g, xs, tuple(xs.shape), mode, kernel_, stride_, small_pads)
        expected = reference_pool3d.pool3d_backward(g.double(), xs.double(), tuple(xs.shape), mode, kernel_,
                                                    stride_, small_pads)
        return disagreement(ours, expected, precision)

    return check
