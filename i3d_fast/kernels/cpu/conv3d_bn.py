"""C++ Conv3d + training-mode BatchNorm + ReLU, channels-last, float32 or bfloat16 (autocast; the
BatchNorm passes compute in float32, the bf16 convolutions are oneDNN's).

Forward: the convolution on the C++ Winograd / GEMM kernels where they beat oneDNN for the shape,
gathering the batch statistics in their store loop (csrc/cpu/channel_stats.h), then normalise + affine
+ ReLU in one pass; a strided one with few input channels (the 7x7x7 stride-2 stem) as a
space-to-depth convolution where that measured faster (bf16; :mod:`.space_to_depth`), oneDNN
elsewhere, each followed by one C++ call for the statistics (one read of its output) and the
normalisation pass (csrc/cpu/batch_norm.cpp).
Backward: one C++ call for BatchNorm's two reductions (one pass, the ReLU mask recomputed from the
saved conv output) and its gradient (a second pass), then the convolution's data and weight
gradients (see :func:`.conv3d.conv3d_backward`: Winograd, one GEMM, space-to-depth or oneDNN, as
measured per layer).
Saved for backward: the input, the weight and the conv output (not the normalised activation).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ...padding import Pads, Triple
from ..aten import conv3d as aten_conv3d
from . import conv3d as cpu_conv3d
from . import space_to_depth
from . import dtype_name, extension, threads

CL = torch.channels_last_3d


def _conv(x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads,
          stats: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[torch.Tensor, bool]:
    """(z, whether ``stats`` = (mean, var) were filled by the convolution's store loop: the C++ kernels
    gather the batch statistics as they write z)."""
    if cpu_conv3d.unsupported(x, weight, stride, pads, None) is None and \
            cpu_conv3d.slower_than_onednn(x, weight, transformed_per_call=True) is None:
        z = torch.empty(_out_shape(x, weight), dtype=torch.float32, memory_format=CL)
        if not cpu_conv3d.conv3d_packed(x, cpu_conv3d.cached_weight(weight), None, False, [(z, 0, z.shape[1])],
                                        stats=stats):
            return z, True
        # an inf or NaN output: oneDNN's direct convolution (+-inf where the transforms give NaN)
    elif space_to_depth.rejected(x, weight, stride, pads) is None:
        return space_to_depth.conv3d(x, weight, stride, pads), False
    return aten_conv3d.conv3d(x, weight, None, None, stride, pads, False), False


def _out_shape(x: torch.Tensor, weight: torch.Tensor) -> Tuple[int, ...]:
    """Output shape of the stride-1 SAME / unpadded convolutions the C++ kernels run."""
    return (x.shape[0], weight.shape[0], *x.shape[2:])


def _float32(t: torch.Tensor) -> torch.Tensor:
    """t as contiguous float32 (itself when it already is: the kernels only read its data)."""
    if t.dtype == torch.float32 and t.is_contiguous():
        return t
    return t.detach().to(torch.float32).contiguous()


def forward_train(x, weight, bn_weight, bn_bias, eps: float, stride: Triple, pads: Pads, relu: bool):
    """(y, z, mean, var): see :func:`i3d_fast.kernels.reference.conv3d_bn.forward_train`."""
    c = weight.shape[0]
    mean, var = torch.empty(c), torch.empty(c)
    z, have_stats = _conv(x, weight, stride, pads, (mean, var))
    y = torch.empty_like(z)
    gamma, beta = _float32(bn_weight), _float32(bn_bias)
    if have_stats:  # normalise + affine + ReLU only: the statistics came with z
        extension().batch_norm_apply(dtype_name(z.dtype), z.data_ptr(), c, z.numel() // c, c, mean.data_ptr(),
                                     var.data_ptr(), gamma.data_ptr(), beta.data_ptr(), eps, relu, y.data_ptr(), c,
                                     threads())
    else:
        extension().batch_norm_forward(dtype_name(z.dtype), z.data_ptr(), c, z.numel() // c, c, gamma.data_ptr(),
                                       beta.data_ptr(), eps, relu, y.data_ptr(), c, mean.data_ptr(), var.data_ptr(),
                                       threads())
    return y, z, mean, var


def normalize(z, mean, var, bn_weight, bn_bias, eps: float, relu: bool) -> torch.Tensor:
    """:func:`forward_train`'s y recomputed from its z, mean and var, bit for bit."""
    z, ldz = cpu_conv3d.as_rows(z)
    c = z.shape[1]
    y = torch.empty(z.shape, dtype=z.dtype, memory_format=CL)
    gamma, beta = _float32(bn_weight), _float32(bn_bias)
    extension().batch_norm_apply(dtype_name(z.dtype), z.data_ptr(), ldz, z.numel() // c, c, _float32(mean).data_ptr(),
                                 _float32(var).data_ptr(), gamma.data_ptr(), beta.data_ptr(), eps, relu, y.data_ptr(),
                                 c, threads())
    return y


def backward_train(grad, x, weight, z, bn_weight, bn_bias, mean, var, eps: float, stride: Triple, pads: Pads,
                   relu: bool, mask: List[bool]) -> Tuple[Optional[torch.Tensor], ...]:
    """(grad_x, grad_weight, grad_bn_weight, grad_bn_bias), None where ``mask`` says not needed."""
    grad, ldg = cpu_conv3d.as_rows(grad.to(z.dtype))
    z, ldz = cpu_conv3d.as_rows(z)
    c = z.shape[1]
    need_conv = mask[0] or mask[1]
    grad_z = torch.empty(z.shape, dtype=z.dtype, memory_format=CL) if need_conv else None
    grad_gamma, grad_beta = torch.empty(c), torch.empty(c)
    gamma, beta = _float32(bn_weight), _float32(bn_bias)
    extension().batch_norm_backward(dtype_name(z.dtype), grad.data_ptr(), ldg, z.data_ptr(), ldz, z.numel() // c, c,
                                    _float32(mean).data_ptr(), _float32(var).data_ptr(), gamma.data_ptr(),
                                    beta.data_ptr(), eps, relu, grad_z.data_ptr() if need_conv else 0, c,
                                    grad_gamma.data_ptr(), grad_beta.data_ptr(), threads())
    grad_x = grad_w = None
    if need_conv:
        grad_x, grad_w = cpu_conv3d.conv3d_backward(grad_z, x, weight, stride, pads, mask[0], mask[1])
    return (grad_x, grad_w, grad_gamma.to(bn_weight.dtype) if mask[2] else None,
            grad_beta.to(bn_bias.dtype) if mask[3] else None)
