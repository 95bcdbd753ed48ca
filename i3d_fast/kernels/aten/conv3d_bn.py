"""Conv3d + training-mode BatchNorm + ReLU from ATen ops: oneDNN / BLAS convolutions (see
:mod:`.conv3d`), statistics and the BatchNorm backward as float32 tensor expressions. Any float
dtype (bf16 / fp16 compute their statistics in float32); the fallback for devices without a
hand-written kernel (CUDA until the Triton training kernels exist)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ...padding import Pads, Triple
from . import conv3d as aten_conv3d

DIMS = (0, 2, 3, 4)
VIEW = (1, -1, 1, 1, 1)


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of BatchNorm statistics for activations of ``dtype``: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def scale_invstd(bn_weight, var, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, invstd) per channel in float64: y = (z - mean) * scale + beta, scale = gamma * invstd.
    Centring first keeps y's error near 0, where ReLU decides, that of z - mean (as F.batch_norm)."""
    invstd = torch.rsqrt(var.double() + eps)
    return bn_weight.double() * invstd, invstd


def _normalised(zf, mean, scale, bn_bias, stat) -> torch.Tensor:
    return torch.addcmul(bn_bias.to(stat).view(VIEW), zf - mean.to(stat).view(VIEW), scale.to(stat).view(VIEW))


def forward_train(x, weight, bn_weight, bn_bias, eps: float, stride: Triple, pads: Pads, relu: bool):
    """(y, z, mean, var): see :func:`i3d_fast.kernels.reference.conv3d_bn.forward_train`."""
    z = aten_conv3d.conv3d(x, weight, None, None, stride, pads, False)
    var, mean = torch.var_mean(z.to(stat_dtype(z.dtype)), dim=DIMS, correction=0)
    return normalize(z, mean, var, bn_weight, bn_bias, eps, relu), z, mean, var


def normalize(z, mean, var, bn_weight, bn_bias, eps: float, relu: bool) -> torch.Tensor:
    """y = relu?((z - mean) * gamma / sqrt(var + eps) + beta) in z's dtype (computed in float32 /
    float64): :func:`forward_train`'s y, also when recomputed from its z for backward."""
    stat = stat_dtype(z.dtype)
    scale, _ = scale_invstd(bn_weight, var, eps)
    y = _normalised(z.to(stat), mean, scale, bn_bias, stat)
    if relu:
        y = y.relu_()
    return y.to(z.dtype)


def bn_relu_backward(grad, z, bn_weight, bn_bias, mean, var, eps: float, relu: bool):
    """(grad_z, grad_bn_weight, grad_bn_bias) of y = relu?(batch_norm(z)) with batch statistics."""
    stat = stat_dtype(z.dtype)
    zf, g = z.to(stat), grad.to(stat)
    scale, invstd = scale_invstd(bn_weight, var, eps)
    if relu:
        g = g * (_normalised(zf, mean, scale, bn_bias, stat) > 0)
    centred = zf - mean.to(stat).view(VIEW)
    n = z.numel() // z.shape[1]
    sum_g = g.sum(DIMS, dtype=torch.float64)
    sum_gz = (g * centred).sum(DIMS, dtype=torch.float64)
    a, b, c = grad_coefficients(scale, invstd, sum_g, sum_gz, n)
    grad_z = g * a.to(stat).view(VIEW) + centred * b.to(stat).view(VIEW) + c.to(stat).view(VIEW)
    return grad_z.to(z.dtype), (sum_gz * invstd).to(bn_weight.dtype), sum_g.to(bn_bias.dtype)


def grad_coefficients(scale, invstd, sum_g, sum_gz, n: int):
    """(a, b, c) in float64 with grad_z = a * g + b * (z - mean) + c: BatchNorm's backward with batch
    statistics, g the (ReLU-masked) output gradient, sum_g = sum(g), sum_gz = sum(g * (z - mean))."""
    b = -scale * invstd * invstd * sum_gz / n
    return scale, b, -scale * sum_g / n


def backward_train(grad, x, weight, z, bn_weight, bn_bias, mean, var, eps: float, stride: Triple, pads: Pads,
                   relu: bool, mask: List[bool]) -> Tuple[Optional[torch.Tensor], ...]:
    """(grad_x, grad_weight, grad_bn_weight, grad_bn_bias), None where ``mask`` says not needed."""
    grad_z, grad_gamma, grad_beta = bn_relu_backward(grad, z, bn_weight, bn_bias, mean, var, eps, relu)
    grad_x, grad_w = (None, None)
    if mask[0] or mask[1]:
        grad_x, grad_w = aten_conv3d.conv3d_backward(grad_z, x, weight, stride, pads, mask[0], mask[1])
    return grad_x, grad_w, grad_gamma if mask[2] else None, grad_beta if mask[3] else None
