"""C++ Conv3d + training-mode BatchNorm + ReLU, channels-last, float32 or bfloat16 (autocast; the
BatchNorm passes compute in float32, the bf16 convolutions are oneDNN's).

Forward: the convolution on the C++ Winograd / GEMM kernels where ``backend="auto"`` picks them
for the shape (oneDNN elsewhere, e.g. the 7x7x7 stride-2 stem), then the batch statistics in one
read of its output and normalise + affine + ReLU in one pass (csrc/cpu/batch_norm.cpp).
Backward: the ReLU mask recomputed from the saved conv output, BatchNorm's two reductions in one
pass and its gradient in a second, then the convolution's data gradient (Winograd for 3x3x3
stride-1 SAME, a GEMM for 1x1x1) and weight gradient (see :func:`.conv3d.conv3d_backward`).
Saved for backward: the input, the weight and the conv output (not the normalised activation).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ...ops.padding import Pads, Triple
from ..aten import conv3d as aten_conv3d
from ..aten.conv3d_bn import grad_coefficients, scale_invstd
from . import conv3d as cpu_conv3d
from . import dtype_name, extension, threads

CL = torch.channels_last_3d


def _rows(t: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """(t, row stride) with t in channels-last rows (a channel slice is kept in place)."""
    ld = cpu_conv3d.row_stride(t)
    if ld is None:
        t = t.contiguous(memory_format=CL)
        ld = t.shape[1]
    return t, ld


def _conv(x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads) -> torch.Tensor:
    if cpu_conv3d.unsupported(x, weight, stride, pads, None) is None and \
            cpu_conv3d.slower_than_onednn(x, weight, transformed_per_call=True) is None:
        return cpu_conv3d.conv3d(x, weight, None, None, stride, pads, False)
    return aten_conv3d.conv3d(x, weight, None, None, stride, pads, False)


def forward_train(x, weight, bn_weight, bn_bias, eps: float, stride: Triple, pads: Pads, relu: bool):
    """(y, z, mean, var): see :func:`i3d_fast.kernels.reference.conv3d_bn.forward_train`."""
    z = _conv(x, weight, stride, pads)
    c = z.shape[1]
    rows = z.numel() // c
    pilot = torch.empty(c, dtype=torch.float32)
    sums = torch.empty(2, c, dtype=torch.float64)
    ext = extension()
    ext.batch_norm_stats(dtype_name(z.dtype), z.data_ptr(), c, rows, c, pilot.data_ptr(), sums[0].data_ptr(),
                         sums[1].data_ptr(), threads())
    centred_mean = sums[0] / rows
    mean64 = pilot.double() + centred_mean
    var64 = (sums[1] / rows - centred_mean * centred_mean).clamp_min_(0)
    mean, var = mean64.float(), var64.float()
    scale = scale_invstd(bn_weight, var, eps)[0].float()  # as backward_train recomputes it: same ReLU mask
    beta = bn_bias.float().contiguous()
    y = torch.empty_like(z)
    ext.batch_norm_apply(dtype_name(z.dtype), z.data_ptr(), c, rows, c, mean.data_ptr(), scale.data_ptr(),
                         beta.data_ptr(), relu, y.data_ptr(), c, threads())
    return y, z, mean, var


def backward_train(grad, x, weight, z, bn_weight, bn_bias, mean, var, eps: float, stride: Triple, pads: Pads,
                   relu: bool, mask: List[bool]) -> Tuple[Optional[torch.Tensor], ...]:
    """(grad_x, grad_weight, grad_bn_weight, grad_bn_bias), None where ``mask`` says not needed."""
    grad, ldg = _rows(grad.to(z.dtype))
    z, ldz = _rows(z)
    c = z.shape[1]
    n = z.numel() // c
    scale64, invstd = scale_invstd(bn_weight, var, eps)
    scale, beta, mean32 = scale64.float(), bn_bias.float().contiguous(), mean.float().contiguous()
    params = (mean32.data_ptr(), scale.data_ptr(), beta.data_ptr(), relu)
    sums = torch.empty(2, c, dtype=torch.float64)
    ext = extension()
    ext.batch_norm_grad_stats(dtype_name(z.dtype), grad.data_ptr(), ldg, z.data_ptr(), ldz, n, c, *params,
                              sums[0].data_ptr(), sums[1].data_ptr(), threads())
    grad_gamma = (sums[1] * invstd).to(bn_weight.dtype) if mask[2] else None
    grad_beta = sums[0].to(bn_bias.dtype) if mask[3] else None
    if not (mask[0] or mask[1]):
        return None, None, grad_gamma, grad_beta
    a, b, k = (t.float() for t in grad_coefficients(scale64, invstd, sums[0], sums[1], n))
    grad_z = torch.empty(z.shape, dtype=z.dtype, memory_format=CL)
    ext.batch_norm_grad_apply(dtype_name(z.dtype), grad.data_ptr(), ldg, z.data_ptr(), ldz, n, c, *params,
                              a.data_ptr(), b.data_ptr(), k.data_ptr(), grad_z.data_ptr(), c, threads())
    grad_x, grad_w = cpu_conv3d.conv3d_backward(grad_z, x, weight, stride, pads, mask[0], mask[1])
    return grad_x, grad_w, grad_gamma, grad_beta
