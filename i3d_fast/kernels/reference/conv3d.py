"""Reference Conv3d + per-channel scale/shift + ReLU: explicit zero padding, F.conv3d, epilogue.
Plain PyTorch, any device and dtype (float64 for the oracle)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ...padding import Pads, Triple, resolve_padding
from . import pool3d as reference_pool3d

Destination = Tuple[torch.Tensor, int, int]  # (out Tensor[N, C_total, T', H', W'], channel offset, count)


def conv3d_forward(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                   stride: Triple, pads: Pads, relu: bool, pool: Optional[Triple] = None) -> torch.Tensor:
    """relu?(conv3d(pad(x), weight) * scale + shift). ``pool``: SAME max pool of x first (stride 1).

    Tensor[N, Cin, T, H, W], Tensor[Cout, Cin, kT, kH, kW] -> Tensor[N, Cout, T', H', W'].
    """
    if pool is not None:
        x = reference_pool3d.pool3d(x, "max", pool, (1, 1, 1), resolve_padding(x.shape[2:], pool, (1, 1, 1), "same"))
    (t0, t1), (h0, h1), (w0, w1) = pads
    y = F.conv3d(F.pad(x, (w0, w1, h0, h1, t0, t1)), weight, stride=stride)
    view = (1, -1, 1, 1, 1)
    if scale is not None:
        y = y * scale.to(y.dtype).view(view)
    if shift is not None:
        y = y + shift.to(y.dtype).view(view)
    return F.relu(y) if relu else y


def conv3d(x, weight, scale, shift, stride: Triple, pads: Pads, relu: bool,
           destinations: Optional[Sequence[Destination]] = None, pool: Optional[Triple] = None,
           allow_tf32: bool = False) -> Optional[torch.Tensor]:
    """Returns the result (channels_last_3d) when ``destinations`` is None, else writes its channels,
    in order, into the destinations (see :mod:`i3d_fast.ops.conv3d`)."""
    y = conv3d_forward(x, weight, scale, shift, stride, pads, relu, pool)
    if destinations is None:
        return y.contiguous(memory_format=torch.channels_last_3d)
    start = 0
    for out, offset, count in destinations:
        out[:, offset:offset + count].copy_(y[:, start:start + count])
        start += count
    return None


def conv3d_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads,
                    need_input: bool, need_weight: bool):
    """(grad_x or None, grad_weight or None) of ``conv3d(pad(x), weight, stride)``: autograd through
    the plain ops."""
    x = x.detach().requires_grad_(need_input)
    weight = weight.detach().requires_grad_(need_weight)
    wanted = [t for t in (x, weight) if t.requires_grad]
    if not wanted:
        return None, None
    with torch.enable_grad():
        (t0, t1), (h0, h1), (w0, w1) = pads
        y = F.conv3d(F.pad(x, (w0, w1, h0, h1, t0, t1)), weight, stride=stride)
        grads = iter(torch.autograd.grad(y, wanted, grad))
    return (next(grads) if need_input else None), (next(grads) if need_weight else None)
