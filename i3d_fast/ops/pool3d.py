"""3D max and average pooling: TF "SAME", "VALID" or explicit padding, padded cells ignored.

One custom op ``i3d_fast::pool3d`` (and its backward) serves both modes on every backend. In eager
training the C++ max pool records each window's first-maximum tap (uint8 per output; int32 for
windows of more than 256 taps) and saves that for backward instead of its input; the other backends
save the input (or its recipe, see :mod:`.recompute`) and recompute the argmax from it. Backends:
``triton`` (CUDA; CPU tensors only through TRITON_INTERPRET=1 when asked for by name), ``cpu``
(C++), ``aten`` (stock ATen ops: the baseline and the fallback on other devices) and ``reference``
(plain PyTorch windows, float64-capable: the test oracle).
Inputs are ``Tensor[N, C, T, H, W]`` in any memory format; outputs are channels_last_3d.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ..kernels import cpu as cpu_kernels
from ..kernels.aten import pool3d as aten_pool3d
from ..kernels.cpu import autotune
from ..kernels.cpu import pool3d as cpu_pool3d
from ..kernels.reference import pool3d as reference_pool3d
from . import _library, dispatch, recompute, selfcheck
from ..padding import PaddingArg, flat_pads, nested_pads, output_size, resolve_padding, triple

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
TRITON_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _reject_triton(x: torch.Tensor, mode: str, explicit: bool) -> Optional[str]:
    why = dispatch.reject_unless_triton_device(x, explicit) or dispatch.reject_dtype(x, TRITON_FLOATS)
    if why is None and x.numel() // max(x.shape[1], 1) >= 2**31:
        why = f"indexes cells (N*T*H*W) in int32; got {x.numel() // x.shape[1]} cells"
    return why


def _reject_reference(x: torch.Tensor, mode: str, explicit: bool) -> Optional[str]:
    return dispatch.reject_dtype(x, FLOATS)


def _reject_aten(x: torch.Tensor, mode: str, explicit: bool) -> Optional[str]:
    if mode == "avg" and x.device.type == "cpu" and x.dtype == torch.float16:
        return "ATen has no float16 avg_pool3d on the CPU"
    return dispatch.reject_dtype(x, FLOATS)


def _reject_cpu(x: torch.Tensor, mode: str, explicit: bool) -> Optional[str]:
    return cpu_kernels.reject_unless_available(x) or dispatch.reject_dtype(x, FLOATS)


def _triton_impl():
    from ..kernels.triton import pool3d as triton_pool3d

    return triton_pool3d


BACKENDS = (
    dispatch.Backend("triton", _reject_triton, _triton_impl),
    dispatch.Backend("cpu", _reject_cpu, lambda: cpu_pool3d),
    dispatch.Backend("aten", _reject_aten, lambda: aten_pool3d),
    dispatch.Backend("reference", _reject_reference, lambda: reference_pool3d),
)


def _checked(requested: str, tensor: torch.Tensor, x: Optional[torch.Tensor], input_shape, mode: str, kernel,
             stride, pads, backward: bool):
    """The kernel module selected for ``tensor`` (x, or the output gradient), or ATen's where that is
    Triton and this call's kernel variant failed its first-use check (see :mod:`.selfcheck`)."""
    chosen = dispatch.select("i3d_fast.pool3d", requested, BACKENDS, tensor, mode)
    impl = chosen.impl()
    if chosen.name != "triton" or not selfcheck.enabled(tensor.device) or tensor.numel() == 0:
        return impl
    variant = selfcheck.pool3d_variant(impl, tensor, input_shape[1], mode, kernel, backward)
    check = selfcheck.pool3d_check(impl, tensor, x, input_shape, mode, kernel, stride, pads, backward)
    return selfcheck.choose("pool3d", variant, tensor.device, check, impl, aten_pool3d)


def _timed_choice(requested: str, impl, what: str, tensor: torch.Tensor, config: tuple, run):
    """``impl``, or ATen's kernels where ``backend="auto"`` picked the C++ ones but they measured slower
    for this configuration (``tensor``'s shape and layout, ``config``; see
    :mod:`i3d_fast.kernels.cpu.autotune`): small pools of few channels are faster in ATen's own
    kernels. ``run(kernels)`` runs the pooling with a kernel module."""
    if requested != "auto" or impl is not cpu_pool3d or not autotune.enabled(tensor):
        return impl
    key = (what, tuple(tensor.shape), tensor.stride(), tensor.dtype, *config, cpu_kernels.threads())
    slower = autotune.slower(key, lambda: (lambda: run(cpu_pool3d), lambda: run(aten_pool3d)))
    return impl if slower is None else aten_pool3d


def _pool3d(x: torch.Tensor, mode: str, kernel: List[int], stride: List[int], pads: List[int],
            backend: str) -> torch.Tensor:
    """Validated arguments only (see :func:`max_pool3d` / :func:`avg_pool3d`); pads = [t0, t1, h0, h1, w0, w1]."""
    impl = _checked(backend, x, x, x.shape, mode, kernel, stride, nested_pads(pads), False)
    if x.numel() == 0:  # N or C is 0
        return _empty_output(x, kernel, stride, pads)
    args = (x, mode, tuple(kernel), tuple(stride), nested_pads(pads))
    impl = _timed_choice(backend, impl, "pool3d", x, args[1:], lambda kernels: kernels.pool3d(*args))
    if mode != "max" or not x.requires_grad or not _library.plain_eager(x):
        return impl.pool3d(*args)
    if impl is cpu_pool3d:  # the backward takes the recorded taps instead of x
        out, _INDICES[out] = cpu_pool3d.max_pool3d_indexed(x, *args[2:])
    else:
        out = impl.pool3d(*args)
    # the next op may save out as this recipe (see .recompute)
    recompute.remember(out, lambda x, pool=impl.pool3d, config=args[1:]: pool(x, *config), (x,),
                       hold_plain=all(s == 1 for s in stride))
    return out


#: max pooling output -> its tap index (:func:`i3d_fast.kernels.cpu.pool3d.max_pool3d_indexed`), until the
#: op's autograd context takes it
_INDICES = WeakIdKeyDictionary()


def _empty_output(x, kernel, stride, pads):
    out = [output_size(s, k, st, p) for s, k, st, p in zip(x.shape[2:], kernel, stride, nested_pads(pads))]
    return x.new_empty((x.shape[0], x.shape[1], *out)).contiguous(memory_format=torch.channels_last_3d)


def _pool3d_fake(x, mode, kernel, stride, pads, backend):
    return _empty_output(x, kernel, stride, pads)


def _pool3d_backward(grad_out: torch.Tensor, x: Optional[torch.Tensor], index: Optional[torch.Tensor],
                     input_shape: List[int], mode: str, kernel: List[int], stride: List[int], pads: List[int],
                     backend: str) -> torch.Tensor:
    """Gradient of :func:`pool3d_op`; max pooling takes the taps the C++ forward recorded (``index``)
    or recomputes its argmax from ``x``."""
    if grad_out.numel() == 0:
        return grad_out.new_zeros(input_shape).contiguous(memory_format=torch.channels_last_3d)
    args = (grad_out, x, tuple(input_shape), mode, tuple(kernel), tuple(stride), nested_pads(pads))
    if index is not None:
        return cpu_pool3d.pool3d_backward(*args, index=index)
    impl = _checked(backend, grad_out, x, input_shape, mode, kernel, stride, nested_pads(pads), True)
    impl = _timed_choice(backend, impl, "pool3d_backward", grad_out, args[2:],
                         lambda kernels: kernels.pool3d_backward(*args))
    return impl.pool3d_backward(*args)


def _pool3d_backward_fake(grad_out, x, index, input_shape, mode, kernel, stride, pads, backend):
    return grad_out.new_empty(input_shape).contiguous(memory_format=torch.channels_last_3d)


pool3d_backward_op = _library.define(
    "pool3d_backward(Tensor grad_out, Tensor? x, Tensor? index, int[] input_shape, str mode, int[] kernel, "
    "int[] stride, int[] pads, str backend) -> Tensor", _pool3d_backward, _pool3d_backward_fake)


def _setup_context(ctx, inputs, output):
    x, mode, kernel, stride, pads, backend = inputs
    index = _INDICES.pop(output, None) if mode == "max" and _library.plain_eager(output) else None
    if index is not None:  # the recorded taps: x is not needed
        ctx.save_for_backward(None, index)
    else:
        ctx.save_for_backward(recompute.save(ctx, x) if mode == "max" else None, None)
    ctx.args = (list(x.shape), mode, kernel, stride, pads, backend)


def _backward(ctx, grad_out):
    x, index = ctx.saved_tensors
    return pool3d_backward_op(grad_out, recompute.load(ctx, x), index, *ctx.args), None, None, None, None, None


#: ``pool3d_op(x, mode, kernel, stride, pads, backend)``: validated arguments only (see
#: :func:`max_pool3d` / :func:`avg_pool3d`); pads = [t0, t1, h0, h1, w0, w1].
pool3d_op = _library.define(
    "pool3d(Tensor x, str mode, int[] kernel, int[] stride, int[] pads, str backend) -> Tensor",
    _pool3d, _pool3d_fake, _backward, _setup_context)


def _validate(x: torch.Tensor, kernel_size, stride, padding, name: str):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a Tensor[N, C, T, H, W], got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"{name}: expected a 5-D Tensor[N, C, T, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    kernel = triple(kernel_size, "kernel_size")
    stride = kernel if stride is None else triple(stride, "stride")
    pads = resolve_padding(x.shape[2:], kernel, stride, padding)
    for dim, size, k, (before, after) in zip("THW", x.shape[2:], kernel, pads):
        if size == 0:
            raise ValueError(f"{name}: input of shape {tuple(x.shape)} is empty along {dim}; pooling needs at least "
                             "one cell per window")
        if before >= k or after >= k:
            raise ValueError(f"{name}: padding {(before, after)} along {dim} must be smaller than the kernel ({k}), "
                             "or some windows would hold only padding")
        if size + before + after < k:
            raise ValueError(f"{name}: kernel {k} is larger than the padded input along {dim} "
                             f"({size} + padding {before + after})")
    return kernel, stride, pads


def _pool(x, mode, kernel_size, stride, padding, backend, name):
    kernel, stride, pads = _validate(x, kernel_size, stride, padding, name)
    return pool3d_op(x, mode, list(kernel), list(stride), flat_pads(pads), backend)


def max_pool3d(x: torch.Tensor, kernel_size: Union[int, Sequence[int]], stride: Union[int, Sequence[int], None] = None,
               padding: PaddingArg = "same", backend: str = "auto") -> torch.Tensor:
    """3D max pooling; padded cells are ignored (as if -inf). Differentiable.

    Args:
        x: Tensor[N, C, T, H, W], any memory format, float32/float64/float16/bfloat16.
        kernel_size, stride: int or (T, H, W); stride defaults to the kernel size.
        padding: "same" (TensorFlow: the odd cell at the end), "valid", or explicit (see
            :func:`i3d_fast.padding.resolve_padding`).
        backend: "auto", "triton", "cpu", "aten" or "reference".
    Returns:
        Tensor[N, C, T', H', W'] in channels_last_3d memory. Ties and NaNs: the gradient goes to the
        first maximum in (t, h, w) order among real cells (a window of -inf sends it to its first real
        cell); a NaN in a window is its maximum.
    """
    return _pool(x, "max", kernel_size, stride, padding, backend, "max_pool3d")


def avg_pool3d(x: torch.Tensor, kernel_size: Union[int, Sequence[int]], stride: Union[int, Sequence[int], None] = None,
               padding: PaddingArg = "valid", backend: str = "auto") -> torch.Tensor:
    """3D average pooling over the real cells of each window (TensorFlow SAME semantics). Differentiable.

    Same arguments and result layout as :func:`max_pool3d`; padding defaults to "valid".
    """
    return _pool(x, "avg", kernel_size, stride, padding, backend, "avg_pool3d")
