"""Reference Conv3d + training-mode BatchNorm + ReLU: explicit padding, ``F.conv3d``,
``F.batch_norm``, ``F.relu``; the backward is autograd through those ops. Plain PyTorch, any device
and dtype (float64 for the oracle)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ...padding import Pads, Triple

CL = torch.channels_last_3d
DIMS = (0, 2, 3, 4)


def _conv(x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads) -> torch.Tensor:
    (t0, t1), (h0, h1), (w0, w1) = pads
    return F.conv3d(F.pad(x, (w0, w1, h0, h1, t0, t1)), weight, stride=stride)


def _normalise(z, bn_weight, bn_bias, eps: float, relu: bool) -> torch.Tensor:
    y = F.batch_norm(z, None, None, bn_weight.to(z.dtype), bn_bias.to(z.dtype), training=True, eps=eps)
    return F.relu(y) if relu else y


def forward_train(x, weight, bn_weight, bn_bias, eps: float, stride: Triple, pads: Pads,
                  relu: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, z, mean, var): z = conv(x), y = relu?(batch_norm(z)) with batch statistics; mean and
    biased var per channel (float32, float64 for float64 inputs)."""
    z = _conv(x, weight, stride, pads)
    stat = torch.float64 if x.dtype == torch.float64 else torch.float32
    var, mean = torch.var_mean(z.to(torch.float64), dim=DIMS, correction=0)
    y = _normalise(z, bn_weight, bn_bias, eps, relu)
    return (y.contiguous(memory_format=CL), z.contiguous(memory_format=CL), mean.to(stat), var.to(stat))


def backward_train(grad, x, weight, z, bn_weight, bn_bias, mean, var, eps: float, stride: Triple, pads: Pads,
                   relu: bool, mask: List[bool]) -> Tuple[Optional[torch.Tensor], ...]:
    """(grad_x, grad_weight, grad_bn_weight, grad_bn_bias), None where ``mask`` says not needed:
    autograd through the reference forward (recomputed)."""
    inputs = [t.detach().requires_grad_(m) for t, m in zip((x, weight, bn_weight, bn_bias), mask)]
    with torch.enable_grad():
        y = _normalise(_conv(inputs[0], inputs[1], stride, pads), inputs[2], inputs[3], eps, relu)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(y, wanted, grad)) if wanted else iter(())
    return tuple(next(grads) if m else None for m in mask)
