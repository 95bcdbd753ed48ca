"""Fused 3D convolution: Conv3d + per-channel scale/shift (folded BatchNorm or bias) + ReLU, with TF
"SAME" (asymmetric) or explicit zero padding, on channels-last tensors; optionally written into a
channel slice of a larger output so Inception blocks never concatenate.

Custom ops: ``i3d_fast::conv3d`` (functional, differentiable), ``i3d_fast::conv3d_into`` (writes
into ``out[:, offset:offset + Cout]``) and ``i3d_fast::inception_block`` (a whole Mixed block,
inference). Backends: ``triton`` (CUDA, or CPU under TRITON_INTERPRET=1 when asked for),
``cpu`` (C++, float32: 3D Winograd F(2x2x2, 3x3x3) for 3x3x3 stride-1 SAME convolutions, a GEMM
for 1x1x1 ones, with branch 3's max pool fused into the load),
``aten`` (oneDNN/BLAS: the CPU fast path and the fallback) and ``reference`` (the fp64 oracle).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from ..kernels import cpu as cpu_kernels
from ..kernels.aten import conv3d as aten_conv3d
from ..kernels.cpu import conv3d as cpu_conv3d
from ..kernels.reference import conv3d as reference_conv3d
from . import _library, dispatch, recompute, selfcheck
from .pool3d import max_pool3d
from ..padding import Pads, PaddingArg, Triple, flat_pads, nested_pads, output_size, resolve_padding, triple

CL = torch.channels_last_3d
FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# Every reject(x, weight, stride, pads, pool, allow_tf32, destinations, explicit=...) sees the
# convolution it would run and where its output goes (None: a tensor of its own).
def _reject_triton(x, weight, stride, pads, pool, allow_tf32, destinations, explicit: bool) -> Optional[str]:
    why = dispatch.reject_unless_triton_device(x, explicit) or dispatch.reject_dtype(x, TRITON_DTYPES)
    return why or _triton_impl().why_unsupported(x, weight.shape, stride, pads, pool, allow_tf32, destinations)


def _reject_cpu(x, weight, stride, pads, pool, allow_tf32, destinations, explicit: bool) -> Optional[str]:
    why = cpu_kernels.reject_unless_available(x) or cpu_conv3d.unsupported(x, weight, stride, pads, pool)
    return why or (None if explicit else cpu_conv3d.slower_than_onednn(x, weight, weight.requires_grad))


def _reject_any(x, weight, stride, pads, pool, allow_tf32, destinations, explicit: bool) -> Optional[str]:
    return dispatch.reject_dtype(x, FLOATS)


def _triton_impl():
    from ..kernels.triton import conv3d as triton_conv3d

    return triton_conv3d


BACKENDS = (
    dispatch.Backend("triton", _reject_triton, _triton_impl),
    dispatch.Backend("cpu", _reject_cpu, lambda: cpu_conv3d),
    dispatch.Backend("aten", _reject_any, lambda: aten_conv3d),
    dispatch.Backend("reference", _reject_any, lambda: reference_conv3d),
)


def _out_shape(x: torch.Tensor, weight: torch.Tensor, stride, pads) -> Tuple[int, ...]:
    spatial = (output_size(s, k, st, p) for s, k, st, p in zip(x.shape[2:], weight.shape[2:], stride, pads))
    return (x.shape[0], weight.shape[0], *spatial)


def _run(backend, x, weight, scale, shift, stride, pads, relu, destinations, pool, allow_tf32):
    """Calls the selected kernel: every backend's ``conv3d`` returns a new channels_last_3d tensor
    when ``destinations`` is None, else writes into them."""
    stride, pads = tuple(stride), nested_pads(pads)
    chosen = dispatch.select("i3d_fast.conv3d", backend, BACKENDS, x, weight, stride, pads, pool, allow_tf32,
                             destinations)
    impl = _checked(chosen, x, weight, scale, shift, stride, pads, relu, destinations, pool, allow_tf32)
    if pool is not None and impl is aten_conv3d:  # no pool-on-load there: pool first, on the fastest pool backend
        x, pool = max_pool3d(x, pool, 1, "same"), None
    return impl.conv3d(x, weight, scale, shift, stride, pads, relu, destinations, pool, allow_tf32)


def _checked(chosen: dispatch.Backend, x, weight, scale, shift, stride, pads, relu, destinations, pool, allow_tf32):
    """The kernel module of the ``chosen`` backend, or ATen's where that is Triton and this call's
    kernel variant failed its first-use check on x's device (see :mod:`.selfcheck`)."""
    impl = chosen.impl()
    if chosen.name != "triton" or not selfcheck.enabled(x.device):
        return impl
    variant, plan = selfcheck.conv3d_variant(x, weight, stride, pads, destinations, pool, allow_tf32)
    check = selfcheck.conv3d_check(impl, x, weight, scale, shift, stride, pads, relu, destinations, pool, allow_tf32,
                                   plan)
    return selfcheck.choose("conv3d", variant, x.device, check, impl, aten_conv3d)


# -- functional, differentiable ------------------------------------------------------------------
def _conv3d(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
            stride: List[int], pads: List[int], relu: bool, allow_tf32: bool, backend: str) -> torch.Tensor:
    return _run(backend, x, weight, scale, shift, stride, pads, relu, None, None, allow_tf32)


def _conv3d_fake(x, weight, scale, shift, stride, pads, relu, allow_tf32, backend):
    return x.new_empty(_out_shape(x, weight, stride, nested_pads(pads))).contiguous(memory_format=CL)


def _setup_context(ctx, inputs, output):
    x, weight, scale, shift, stride, pads, relu, allow_tf32, backend = inputs
    ctx.save_for_backward(recompute.save(ctx, x), weight, scale, shift, output if relu else None)
    ctx.stride, ctx.pads, ctx.relu, ctx.backend = stride, pads, relu, backend


def _backward_impl(backend: str, x: torch.Tensor):
    """The kernel module whose ``conv3d_backward`` serves a convolution run with ``backend``: the C++
    kernels' for float32 / bfloat16 CPU tensors (what "auto" and "cpu" run), the plain-PyTorch oracle
    for "reference", ATen (oneDNN / cuDNN) otherwise."""
    if backend == "reference":
        return reference_conv3d
    if backend in ("auto", "cpu") and x.dtype in (torch.float32, torch.bfloat16) and \
            cpu_kernels.reject_unless_available(x) is None:
        return cpu_conv3d
    return aten_conv3d


def _backward(ctx, grad):
    x, weight, scale, shift, y = ctx.saved_tensors
    x = recompute.load(ctx, x)
    pads = nested_pads(ctx.pads)
    if ctx.relu:
        grad = grad * (y > 0)
    grad_shift = grad.sum(dim=(0, 2, 3, 4)).to(shift.dtype) if shift is not None and ctx.needs_input_grad[3] else None
    grad_scale = None
    if scale is not None and ctx.needs_input_grad[2]:
        conv = aten_conv3d.conv3d(x, weight, None, None, tuple(ctx.stride), pads, False)
        grad_scale = (grad * conv).sum(dim=(0, 2, 3, 4)).to(scale.dtype)
    grad_conv = grad if scale is None else grad * scale.to(grad.dtype).view(1, -1, 1, 1, 1)
    grad_x, grad_w = None, None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        grad_x, grad_w = _backward_impl(ctx.backend, x).conv3d_backward(
            grad_conv, x, weight, tuple(ctx.stride), pads, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
    return grad_x, grad_w, grad_scale, grad_shift, None, None, None, None, None


#: ``conv3d_op(x, weight, scale, shift, stride, pads, relu, allow_tf32, backend)``: validated
#: arguments only (see :func:`conv3d`); pads = [t0, t1, h0, h1, w0, w1].
conv3d_op = _library.define(
    "conv3d(Tensor x, Tensor weight, Tensor? scale, Tensor? shift, int[] stride, int[] pads, bool relu, "
    "bool allow_tf32, str backend) -> Tensor", _conv3d, _conv3d_fake, _backward, _setup_context)


# -- into a channel slice of a larger output --------------------------------------------------------
def _conv3d_into(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor],
                 shift: Optional[torch.Tensor], out: torch.Tensor, channel_offset: int, stride: List[int],
                 pads: List[int], relu: bool, allow_tf32: bool, backend: str) -> None:
    _run(backend, x, weight, scale, shift, stride, pads, relu, [(out, channel_offset, weight.shape[0])], None,
         allow_tf32)


def _conv3d_into_fake(x, weight, scale, shift, out, channel_offset, stride, pads, relu, allow_tf32, backend):
    return None


#: Writes conv3d's result into ``out[:, channel_offset:channel_offset + Cout]`` (inference).
conv3d_into_op = _library.define(
    "conv3d_into(Tensor x, Tensor weight, Tensor? scale, Tensor? shift, Tensor(a!) out, int channel_offset, "
    "int[] stride, int[] pads, bool relu, bool allow_tf32, str backend) -> ()", _conv3d_into, _conv3d_into_fake)


# -- a whole Inception (Mixed) block ------------------------------------------------------------------
def _inception_block(x: torch.Tensor, weights: List[torch.Tensor], shifts: List[torch.Tensor],
                     widths: List[int], allow_tf32: bool, backend: str) -> torch.Tensor:
    """Inference Mixed block with BatchNorm folded: weights = [1x1 (b0|b1a|b2a), b1b, b2b, b3b],
    shifts alike, widths = (b0, b1a, b1b, b2a, b2b, b3b). One GEMM for the three 1x1 convs that read
    x; branch 3's 3x3x3 max pool fused into its 1x1 conv's load; every branch writes its slice of
    the output. Tensor[N, C, T, H, W] -> Tensor[N, b0 + b1b + b2b + b3b, T, H, W]."""
    b0, b1a, b1b, b2a, b2b, b3b = widths
    w1, w_b1b, w_b2b, w_b3b = weights
    s1, s_b1b, s_b2b, s_b3b = shifts
    n, _, t, h, w = x.shape
    out = torch.empty((n, b0 + b1b + b2b + b3b, t, h, w), dtype=x.dtype, device=x.device, memory_format=CL)
    mid = torch.empty((n, b1a + b2a, t, h, w), dtype=x.dtype, device=x.device, memory_format=CL)
    ones, none = [1, 1, 1], [0] * 6
    _run(backend, x, w1, None, s1, ones, none, True, [(out, 0, b0), (mid, 0, b1a + b2a)], None, allow_tf32)
    same = flat_pads(resolve_padding((t, h, w), (3, 3, 3), (1, 1, 1), "same"))
    _run(backend, mid[:, :b1a], w_b1b, None, s_b1b, ones, same, True, [(out, b0, b1b)], None, allow_tf32)
    _run(backend, mid[:, b1a:], w_b2b, None, s_b2b, ones, same, True, [(out, b0 + b1b, b2b)], None, allow_tf32)
    _run(backend, x, w_b3b, None, s_b3b, ones, none, True, [(out, b0 + b1b + b2b, b3b)], (3, 3, 3), allow_tf32)
    return out


def _inception_block_fake(x, weights, shifts, widths, allow_tf32, backend):
    b0, _, b1b, _, b2b, b3b = widths
    return x.new_empty((x.shape[0], b0 + b1b + b2b + b3b, *x.shape[2:])).contiguous(memory_format=CL)


#: ``inception_block_op(x, weights, shifts, widths, allow_tf32, backend)``: see :func:`_inception_block`.
inception_block_op = _library.define(
    "inception_block(Tensor x, Tensor[] weights, Tensor[] shifts, int[] widths, bool allow_tf32, str backend) "
    "-> Tensor", _inception_block, _inception_block_fake)


# -- public API ----------------------------------------------------------------------------------------
def check_tensor(op: str, name: str, t: torch.Tensor, x: torch.Tensor,
                 shape: Optional[Tuple[int, ...]] = None) -> None:
    """Raises a clear error unless ``t`` is a Tensor on x's device (of ``shape`` when given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if t.device != x.device:
        raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{op}: {name} must have shape {shape}, got {tuple(t.shape)}")


def check_conv_args(op: str, x: torch.Tensor, weight: torch.Tensor, stride, padding) -> Tuple[Triple, Pads]:
    """Validates a convolution's input, weight, stride and padding; returns (stride, pads)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        raise ValueError(f"{op}: x must be a 5-D Tensor[N, Cin, T, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be floating point, got {x.dtype}")
    check_tensor(op, "weight", weight, x)
    if weight.dim() != 5 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: weight must be Tensor[Cout, Cin={x.shape[1]}, kT, kH, kW], got {tuple(weight.shape)}")
    if weight.dtype != x.dtype:
        raise TypeError(f"{op}: weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    kernel = tuple(weight.shape[2:])
    stride = triple(stride, "stride")
    pads = resolve_padding(x.shape[2:], kernel, stride, padding)
    for dim, size, k, (before, after) in zip("THW", x.shape[2:], kernel, pads):
        if size + before + after < k:
            raise ValueError(f"{op}: kernel {k} is larger than the padded input along {dim} "
                             f"({size} + padding {before + after})")
    return stride, pads


def autocast_inputs(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """(x, weight, bias) cast to the autocast dtype when ``torch.autocast`` is on for x's device (as
    autocast does for ``F.conv3d``; float64 is left alone), else unchanged. Casts are differentiable,
    so float32 master weights get float32 gradients."""
    device = x.device.type if isinstance(x, torch.Tensor) else None
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device) or not x.is_floating_point() \
            or x.dtype == torch.float64 or not isinstance(weight, torch.Tensor):
        return x, weight, bias
    low = torch.get_autocast_dtype(device)
    return x.to(low), weight.to(low), None if bias is None else bias.to(low)


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory spans of a and b (first to last element, in bytes) intersect."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False

    def span(t):
        start = t.data_ptr()
        last = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
        return start, start + (last + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def planned_conv3d(x: torch.Tensor, weight: torch.Tensor, shift: Optional[torch.Tensor], stride, padding,
                   relu: bool, backend: str = "auto"):
    """For repeated inference calls of one layer: validates ``conv3d(x, weight, None, shift, stride,
    padding, relu)`` and selects its kernel once, then returns ``run(x, weight, shift)`` that calls
    that kernel directly (no per-call checks, op dispatch or backend selection) for inputs of the same
    shapes, dtypes and devices, in eager mode without autograd. Tensor -> channels_last_3d Tensor."""
    stride, pads = check_conv_args("conv3d", x, weight, stride, padding)
    if shift is not None:
        check_tensor("conv3d", "shift", shift, x, (weight.shape[0],))
    chosen = dispatch.select("i3d_fast.conv3d", backend, BACKENDS, x, weight, tuple(stride), pads, None, False,
                             None)
    impl = _checked(chosen, x, weight, None, shift, tuple(stride), pads, relu, None, None, False)

    def run(x: torch.Tensor, weight: torch.Tensor, shift: Optional[torch.Tensor]) -> torch.Tensor:
        return impl.conv3d(x, weight, None, shift, stride, pads, relu, None, None, False)

    return run


def conv3d(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor] = None,
           shift: Optional[torch.Tensor] = None, stride: Union[int, Sequence[int]] = 1, padding: PaddingArg = "same",
           relu: bool = False, out: Optional[torch.Tensor] = None, channel_offset: int = 0, backend: str = "auto",
           allow_tf32: bool = False) -> torch.Tensor:
    """``relu?(conv3d(x, weight) * scale + shift)`` with padding computed inside the kernel.

    Args:
        x: Tensor[N, Cin, T, H, W] (any memory format; channels_last_3d avoids a copy).
        weight: Tensor[Cout, Cin, kT, kH, kW], same dtype and device as x.
        scale, shift: optional Tensor[Cout] (e.g. folded eval BatchNorm: scale = gamma / sqrt(var + eps),
            shift = beta - mean * scale; or shift = conv bias).
        stride: int or (T, H, W).
        padding: "same" (TensorFlow: odd cell at the end), "valid", or explicit (see
            :func:`i3d_fast.padding.resolve_padding`); zeros.
        relu: apply ReLU after the shift.
        out: optional channels_last_3d Tensor[N, C_total, T', H', W']; the result goes to
            ``out[:, channel_offset:channel_offset + Cout]`` and ``out`` is returned (no autograd).
        backend: "auto", "triton", "cpu", "aten" or "reference".
        allow_tf32: let fp32 convolutions use TF32 tensor cores (Triton on CUDA).
    Returns:
        Tensor[N, Cout, T', H', W'] in channels_last_3d memory (or ``out``). Differentiable when
        ``out`` is None; then under ``torch.autocast`` it runs in the autocast dtype.
    """
    if out is None:
        x, weight, shift = autocast_inputs(x, weight, shift)
        scale = None if scale is None else scale.to(x.dtype)
    stride, pads = check_conv_args("conv3d", x, weight, stride, padding)
    cout = weight.shape[0]
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None:
            check_tensor("conv3d", name, t, x, (cout,))
    if out is None:
        if channel_offset:
            raise ValueError("conv3d: channel_offset needs an out tensor")
        return conv3d_op(x, weight, scale, shift, list(stride), flat_pads(pads), relu, allow_tf32, backend)
    expected = _out_shape(x, weight, stride, pads)
    if not isinstance(out, torch.Tensor) or out.dim() != 5 or out.shape[0] != expected[0] \
            or tuple(out.shape[2:]) != expected[2:]:
        raise ValueError(f"conv3d: out must be Tensor[{expected[0]}, C_total, {', '.join(map(str, expected[2:]))}], "
                         f"got {tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    check_tensor("conv3d", "out", out, x)
    if out.dtype != x.dtype or not out.is_contiguous(memory_format=CL):
        raise ValueError(f"conv3d: out must be a channels_last_3d tensor of dtype {x.dtype}")
    for name, t in (("x", x), ("weight", weight), ("scale", scale), ("shift", shift)):
        if t is not None and _overlap(t, out):
            raise ValueError(f"conv3d: {name} shares memory with out; the kernels would read what they already "
                             "overwrote. Pass a separate out tensor (or none)")
    if not 0 <= channel_offset <= out.shape[1] - cout:
        raise ValueError(f"conv3d: channels [{channel_offset}, {channel_offset + cout}) do not fit in out's "
                         f"{out.shape[1]} channels")
    conv3d_into_op(x, weight, scale, shift, out, channel_offset, list(stride), flat_pads(pads), relu, allow_tf32,
                   backend)
    return out
