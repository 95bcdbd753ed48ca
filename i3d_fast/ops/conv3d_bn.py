"""Trainable fused Conv3d + BatchNorm3d + ReLU (the I3D unit) with TF "SAME" or explicit padding
inside the kernels.

Training mode (batch statistics) runs the custom op ``i3d_fast::conv3d_bn_train``: the convolution,
the per-channel batch mean and variance of its output, normalise + affine + ReLU, and an autograd
formula (``i3d_fast::conv3d_bn_train_backward``) that recomputes the ReLU mask and the normalised
activation from the saved conv output instead of storing them. The running statistics are updated
as ``nn.BatchNorm3d`` does (unbiased variance, ``momentum``). Eval mode folds BatchNorm into the
convolution (cached per weight version when no gradient is needed) and runs :func:`.conv3d`.

Backends, in "auto" order: ``triton`` (CUDA fp16 / bf16 / fp32; CPU tensors only through the
Triton interpreter and only when asked for by name: an implicit-GEMM convolution whose epilogue
reduces the batch statistics, one normalise + ReLU pass, a fused ReLU-mask + BatchNorm backward,
the data gradient as a phase-split transposed implicit GEMM and the weight gradient as a
deterministic split-K GEMM; see :mod:`i3d_fast.kernels.triton.conv3d_bn`), ``cpu`` (C++: float32
Winograd / GEMM convolutions and Winograd gradients, oneDNN for the rest and for bf16; the
statistics and BatchNorm passes in float32 / bf16), ``aten`` (any float dtype; CUDA tensors the
Triton kernels refuse, e.g. float64 or tensors of 2**31 elements) and ``reference`` (plain PyTorch,
float64-capable; its backward is autograd through the plain ops: the oracle). Every backend sees
the input, the weight shape, the stride and the padding; forward and backward pick the same one.
The first time a set of Triton training kernel variants runs on a device (on CUDA by default; see
:mod:`.selfcheck`), one training step of a cut of the call is checked against float64; a set that
disagrees warns once and runs on ATen from then on.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Union

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ..kernels import cpu as cpu_kernels
from ..kernels.aten import conv3d_bn as aten_conv3d_bn
from ..kernels.cpu import conv3d_bn as cpu_conv3d_bn
from ..kernels.reference import conv3d_bn as reference_conv3d_bn
from . import _library, dispatch, recompute, selfcheck
from .conv3d import FLOATS, _out_shape, autocast_inputs, check_conv_args, check_tensor, conv3d
from ..padding import PaddingArg, flat_pads, nested_pads

CL = torch.channels_last_3d


TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# Every reject(x, weight_shape, stride, pads, explicit=...) sees the op's inputs; without the
# geometry (``i3d-fast doctor`` asks with x alone) only the device and dtype are judged.
def _reject_triton(x: torch.Tensor, weight_shape=None, stride=None, pads=None, *, explicit: bool) -> Optional[str]:
    why = dispatch.reject_unless_triton_device(x, explicit) or dispatch.reject_dtype(x, TRITON_DTYPES)
    if why is None and weight_shape is not None:
        why = _triton_impl().why_unsupported(x, weight_shape, stride, pads)
    return why


def _reject_cpu(x: torch.Tensor, weight_shape=None, stride=None, pads=None, *, explicit: bool) -> Optional[str]:
    return cpu_kernels.reject_unless_available(x) or dispatch.reject_dtype(x, (torch.float32, torch.bfloat16))


def _reject_any(x: torch.Tensor, weight_shape=None, stride=None, pads=None, *, explicit: bool) -> Optional[str]:
    return dispatch.reject_dtype(x, FLOATS)


def _triton_impl():
    from ..kernels.triton import conv3d_bn as triton_conv3d_bn

    return triton_conv3d_bn


BACKENDS = (
    dispatch.Backend("triton", _reject_triton, _triton_impl),
    dispatch.Backend("cpu", _reject_cpu, lambda: cpu_conv3d_bn),
    dispatch.Backend("aten", _reject_any, lambda: aten_conv3d_bn),
    dispatch.Backend("reference", _reject_any, lambda: reference_conv3d_bn),
)


def _impl(backend: str, x: torch.Tensor, weight: torch.Tensor, stride, pads):
    """The kernel module of the selected backend; ATen's where that is Triton and this call's kernel
    variants failed their first-use check on x's device (see :mod:`.selfcheck`)."""
    chosen = dispatch.select("i3d_fast.conv3d_bn_relu", backend, BACKENDS, x, tuple(weight.shape), tuple(stride),
                             pads)
    impl = chosen.impl()
    if chosen.name != "triton" or not selfcheck.enabled(x.device):
        return impl
    variant = _train_variant(impl, x, weight, stride, pads)
    return selfcheck.choose("conv3d_bn_train", variant, x.device,
                            lambda: _train_check(impl, x, weight, stride, pads, variant), impl, aten_conv3d_bn)


_VARIANTS = {}
_MAX_REMEMBERED = 4096


def _train_variant(impl, x, weight, stride, pads) -> str:
    """:func:`i3d_fast.kernels.triton.conv3d_bn.variant_name` of a training step of these inputs,
    remembered per call geometry (shapes, strides, 16-byte alignment, tf32 flag)."""
    key = (tuple(x.shape), x.stride(), x.data_ptr() % 16, x.dtype, x.device, tuple(weight.shape), tuple(stride),
           tuple(map(tuple, pads)), torch.backends.cudnn.allow_tf32)
    name = _VARIANTS.get(key)
    if name is None:
        name = impl.variant_name(impl.plan(x, weight.shape, stride, pads), weight.shape[0], x.dtype)
        if len(_VARIANTS) >= _MAX_REMEMBERED:
            _VARIANTS.clear()
        _VARIANTS[key] = name
    return name


def _train_check(impl, x, weight, stride, pads, variant: str) -> Optional[str]:
    """A first-use check for :func:`selfcheck.verified`: a training step (forward and every gradient,
    ReLU on) of the call's first two samples cut to :data:`selfcheck.SMALL` output cells per dimension
    (views of its own x, so strides and alignment stay), with the call's tile configs, against float64.
    z against the float64 conv; the statistics, y and the gradients against float64 computed from our
    z and our ReLU mask (so a value that rounds across zero in the conv's dtype is not a disagreement).
    When the cut selects other variants, the whole call is checked."""
    configs = {gemm: config for gemm, (_, config) in impl.plan(x, weight.shape, stride, pads).items()}
    kernel = weight.shape[2:]
    full = _out_shape(x, weight, stride, pads)[2:]
    cut = []
    for size, k, st, (before, _), out in zip(x.shape[2:], kernel, stride, pads, full):
        need = (min(out, selfcheck.SMALL) - 1) * st + k - before  # input cells the first outputs reach
        cells = max(1, min(size, need))
        cut.append((cells, (before, max(0, need - cells))))
    xs = x[:2, :, :cut[0][0], :cut[1][0], :cut[2][0]].detach()
    small_pads = tuple(p for _, p in cut)
    per_channel = xs.shape[0] * torch.Size(_out_shape(xs, weight, stride, small_pads)[2:]).numel()
    if per_channel < 2 or _train_variant(impl, xs, weight, stride, small_pads) != variant:
        xs, small_pads = x.detach(), pads
    weight = weight.detach()
    gen = torch.Generator().manual_seed(0)
    cout, eps, precision = weight.shape[0], 1e-3, impl.precision_of(x.dtype)
    gamma = (torch.rand(cout, generator=gen) + 0.5).to(x.device)
    beta = (torch.randn(cout, generator=gen) * 0.5).to(x.device)
    with torch.autocast(x.device.type, enabled=False), torch.no_grad():
        y, z, mean, var = impl.forward_train(xs, weight, gamma, beta, eps, tuple(stride), small_pads, True, configs)
        grad = torch.randn(y.shape, generator=gen).to(x.device, x.dtype)
        grads = impl.backward_train(grad, xs, weight, z, gamma, beta, mean, var, eps, tuple(stride), small_pads, True,
                                    [True] * 4, configs)
        x64, w64, z64 = xs.double(), weight.double(), z.double()
        expected_z = reference_conv3d_bn.forward_train(x64, w64, gamma.double(), beta.double(), eps, tuple(stride),
                                                       small_pads, False)[1]
        var64, mean64 = torch.var_mean(z64, dim=aten_conv3d_bn.DIMS, correction=0)
        with torch.enable_grad():
            leaves = [t.requires_grad_() for t in (x64, w64, z64, gamma.double(), beta.double())]
            y64 = torch.nn.functional.batch_norm(leaves[2], None, None, leaves[3], leaves[4], training=True, eps=eps)
            g64 = grad.double() * (y > 0)
            grad_z, grad_gamma, grad_beta = torch.autograd.grad(y64, leaves[2:], g64)
            conv = reference_conv3d_bn.forward_train(leaves[0], leaves[1], gamma.double(), beta.double(), eps,
                                                     tuple(stride), small_pads, False)[1]
            grad_x, grad_w = torch.autograd.grad(conv, leaves[:2], grad_z)
    # (name, ours, expected, the scale errors are relative to: the result's, the mean's is z's)
    pairs = [("z", z, expected_z, z64), ("mean", mean, mean64, z64), ("var", var, var64, var64),
             ("y", y, y64.relu(), y64), ("grad x", grads[0], grad_x, grad_x), ("grad weight", grads[1], grad_w, grad_w),
             ("grad bn_weight", grads[2], grad_gamma, grad_gamma), ("grad bn_bias", grads[3], grad_beta, grad_beta)]
    for name, ours, expected, like in pairs:
        scale = max(like.detach().abs().max().item(), 1e-30)
        why = selfcheck.disagreement(ours.detach().double() / scale, expected.detach() / scale, precision)
        if why is not None:
            return f"{name}: {why}"
    return None


# -- training mode: the op and its backward -----------------------------------------------------------
def _train(x, weight, bias, bn_weight, bn_bias, eps: float, stride: List[int], pads: List[int], relu: bool,
           backend: str):
    pads = nested_pads(pads)
    impl = _impl(backend, x, weight, stride, pads)
    y, z, mean, var = impl.forward_train(x, weight, bn_weight, bn_bias, eps, tuple(stride), pads, relu)
    if hasattr(impl, "normalize") and any(t.requires_grad for t in (x, weight, bn_weight, bn_bias)):
        # the next op may save y as this recipe (see .recompute)
        recompute.remember(y, functools.partial(impl.normalize, eps=eps, relu=relu), (z, mean, var, bn_weight, bn_bias))
    return y, z, mean, var


def _train_fake(x, weight, bias, bn_weight, bn_bias, eps, stride, pads, relu, backend):
    shape = _out_shape(x, weight, stride, nested_pads(pads))
    y = x.new_empty(shape).contiguous(memory_format=CL)
    z = x.new_empty(shape).contiguous(memory_format=CL)
    c, stat = weight.shape[0], aten_conv3d_bn.stat_dtype(x.dtype)
    return y, z, x.new_empty(c, dtype=stat), x.new_empty(c, dtype=stat)


def _train_setup_context(ctx, inputs, output):
    x, weight, bias, bn_weight, bn_bias, eps, stride, pads, relu, backend = inputs
    _, z, mean, var = output
    ctx.save_for_backward(recompute.save(ctx, x), weight, z, bn_weight, bn_bias, mean, var)
    ctx.bias = None if bias is None else (bias.shape, bias.dtype, bias.device)
    ctx.eps, ctx.stride, ctx.pads, ctx.relu, ctx.backend = eps, stride, pads, relu, backend
    ctx.mark_non_differentiable(z, mean, var)
    ctx.set_materialize_grads(False)


def _train_backward(ctx, grad_y, grad_z, grad_mean, grad_var):
    if grad_y is None:
        return (None,) * 10
    x, weight, z, bn_weight, bn_bias, mean, var = ctx.saved_tensors
    x = recompute.load(ctx, x)
    needs = ctx.needs_input_grad
    mask = [needs[0], needs[1], needs[3], needs[4]]
    backward = _train_backward_impl if _library.plain_eager(grad_y) else conv3d_bn_train_backward_op
    grads = backward(grad_y, x, weight, z, bn_weight, bn_bias, mean, var, ctx.eps, ctx.stride,
                                        ctx.pads, ctx.relu, mask, ctx.backend)
    grad_x, grad_w, grad_gamma, grad_beta = (g if m else None for g, m in zip(grads, mask))
    # A conv bias before batch statistics cancels out of the output: its gradient is exactly zero.
    grad_bias = torch.zeros(ctx.bias[0], dtype=ctx.bias[1], device=ctx.bias[2]) if ctx.bias and needs[2] else None
    return grad_x, grad_w, grad_bias, grad_gamma, grad_beta, None, None, None, None, None


def _train_backward_impl(grad, x, weight, z, bn_weight, bn_bias, mean, var, eps: float, stride: List[int],
                         pads: List[int], relu: bool, mask: List[bool], backend: str):
    pads = nested_pads(pads)
    grads = _impl(backend, x, weight, stride, pads).backward_train(grad, x, weight, z, bn_weight, bn_bias, mean, var,
                                                                   eps, tuple(stride), pads, relu, mask)
    return tuple(g if m else x.new_empty(0) for g, m in zip(grads, mask))


def _train_backward_fake(grad, x, weight, z, bn_weight, bn_bias, mean, var, eps, stride, pads, relu, mask,
                         backend):
    like = (x, weight, bn_weight, bn_bias)
    return tuple(torch.empty_like(t) if m else x.new_empty(0) for t, m in zip(like, mask))


#: ``(grad_x, grad_weight, grad_bn_weight, grad_bn_bias)``, each an empty tensor where ``mask`` is False.
conv3d_bn_train_backward_op = _library.define(
    "conv3d_bn_train_backward(Tensor grad, Tensor x, Tensor weight, Tensor z, Tensor bn_weight, Tensor bn_bias, "
    "Tensor mean, Tensor var, float eps, int[] stride, int[] pads, bool relu, bool[] mask, str backend) "
    "-> (Tensor, Tensor, Tensor, Tensor)", _train_backward_impl, _train_backward_fake)

#: ``(y, z, mean, var)``: y = relu?(batch_norm(z)) with batch statistics, z = conv3d(x, weight) (saved
#: for backward; ``bias`` only receives its zero gradient), biased per-channel mean and variance of z
#: (float32; float64 for float64 inputs). pads = [t0, t1, h0, h1, w0, w1].
conv3d_bn_train_op = _library.define(
    "conv3d_bn_train(Tensor x, Tensor weight, Tensor? bias, Tensor bn_weight, Tensor bn_bias, float eps, "
    "int[] stride, int[] pads, bool relu, str backend) -> (Tensor, Tensor, Tensor, Tensor)",
    _train, _train_fake, _train_backward, _train_setup_context)
_conv3d_bn_train = _library.eager_autograd(conv3d_bn_train_op, _train, _train_backward, _train_setup_context)


# -- eval mode: BatchNorm folded into the convolution ----------------------------------------------------
_FOLDED = WeakIdKeyDictionary()


def _fold(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps: float):
    """(weight * scale, shift) with scale = gamma / sqrt(running_var + eps) and shift = beta +
    (bias - running_mean) * scale; differentiable (torch ops) when autograd needs it."""
    scale = bn_weight * torch.rsqrt(running_var + eps)
    centred = -running_mean if bias is None else bias - running_mean
    return weight * scale.to(weight.dtype).view(-1, 1, 1, 1, 1), bn_bias + centred * scale


def folded(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps: float):
    """:func:`_fold`, computed in float64 and cached per weight tensor while none of its inputs changes
    (version counters), so eval calls reuse the folded weight (and the kernels their transform of it)."""
    tensors = (weight, bias, bn_weight, bn_bias, running_mean, running_var)
    # inference-mode tensors (e.g. a model moved or cast under torch.inference_mode()) have no version
    # counter: folded again on every call
    cacheable = not any(t is not None and t.is_inference() for t in tensors)
    state = (eps,) + tuple(None if t is None else (t._version, t.data_ptr(), t.dtype) for t in tensors) \
        if cacheable else None
    if cacheable:
        hit = _FOLDED.get(weight)
        if hit is not None and hit[0] == state:
            return hit[1]
    with torch.no_grad():
        w, shift = _fold(*(None if t is None else t.double() for t in tensors), eps)
        folded = (w.to(weight.dtype).contiguous(memory_format=CL), shift.to(weight.dtype))
    if cacheable:
        _FOLDED[weight] = (state, folded)
    return folded


# -- public API ----------------------------------------------------------------------------------------
def conv3d_bn_relu(x: torch.Tensor, weight: torch.Tensor, bn_weight: Optional[torch.Tensor] = None,
                   bn_bias: Optional[torch.Tensor] = None, running_mean: Optional[torch.Tensor] = None,
                   running_var: Optional[torch.Tensor] = None, *, bias: Optional[torch.Tensor] = None,
                   training: bool = True, momentum: float = 0.1, eps: float = 1e-5,
                   stride: Union[int, Sequence[int]] = 1, padding: PaddingArg = "same", relu: bool = True,
                   backend: str = "auto") -> torch.Tensor:
    """``relu?(batch_norm(conv3d(x, weight) + bias))`` as ``F.batch_norm`` defines it, padding inside
    the kernels.

    Args:
        x: Tensor[N, Cin, T, H, W] (channels_last_3d avoids a copy).
        weight: Tensor[Cout, Cin, kT, kH, kW], same dtype and device as x.
        bn_weight, bn_bias: Tensor[Cout] BatchNorm affine parameters (None: 1 and 0).
        running_mean, running_var: Tensor[Cout] running statistics, updated in place in training mode
            (None in training mode: batch statistics only; needed in eval mode).
        bias: optional conv bias Tensor[Cout].
        training: normalise with the batch statistics (and update the running ones) rather than the
            running ones.
        momentum: running = (1 - momentum) * running + momentum * batch (variance unbiased).
        eps: added to the variance.
        stride, padding: as :func:`i3d_fast.ops.conv3d` ("same" is TensorFlow's, asymmetric).
        relu: apply ReLU last.
        backend: "auto", "triton", "cpu", "aten" or "reference" (training mode; eval mode runs
            :func:`.conv3d`'s backends). "auto" takes Triton for CUDA tensors it supports.
    Returns:
        Tensor[N, Cout, T', H', W'] in channels_last_3d memory, differentiable in x, weight, bias,
        bn_weight and bn_bias. Under ``torch.autocast`` the convolution runs in the autocast dtype with
        float32 statistics and BatchNorm parameters.
    """
    op = "conv3d_bn_relu"
    x, weight, bias = autocast_inputs(x, weight, bias)
    stride, pads = check_conv_args(op, x, weight, stride, padding)
    cout = weight.shape[0]
    for name, t in (("bias", bias), ("bn_weight", bn_weight), ("bn_bias", bn_bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None:
            check_tensor(op, name, t, x, (cout,))
            if not t.is_floating_point():
                raise TypeError(f"{op}: {name} must be floating point, got {t.dtype}")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: give both running_mean and running_var, or neither")
    stat = aten_conv3d_bn.stat_dtype(x.dtype)
    if bn_weight is None:
        bn_weight = torch.ones(cout, dtype=stat, device=x.device)
    if bn_bias is None:
        bn_bias = torch.zeros(cout, dtype=stat, device=x.device)
    if not training:
        if running_mean is None:
            raise ValueError(f"{op}: eval mode (training=False) needs running_mean and running_var")
        fold = _fold if torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (weight, bias, bn_weight, bn_bias)) else folded
        folded_weight, shift = fold(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps)
        return conv3d(x, folded_weight, None, shift.to(x.dtype), stride, pads, relu,
                      backend="auto" if backend == "cpu" else backend)
    out_shape = _out_shape(x, weight, stride, pads)
    per_channel = out_shape[0] * torch.Size(out_shape[2:]).numel()
    if per_channel < 2:
        raise ValueError(f"{op}: training mode needs more than 1 value per channel to compute batch statistics "
                         f"(output {out_shape})")
    y, _, mean, var = _conv3d_bn_train(x, weight, bias, bn_weight, bn_bias, float(eps), list(stride),
                                         flat_pads(pads), relu, backend)
    if running_mean is not None:
        with torch.no_grad():  # running += momentum * (batch - running)
            batch_mean = mean if bias is None else mean + bias.to(mean.dtype)
            running_mean.lerp_(batch_mean.to(running_mean.dtype), momentum)
            running_var.lerp_((var * (per_channel / (per_channel - 1))).to(running_var.dtype), momentum)
    return y
