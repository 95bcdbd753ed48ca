"""Reference 3D pooling: gather every window through an index table, reduce. Plain PyTorch, any
device and dtype (float64 for the oracle); padded cells never count."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ...padding import Pads, Triple, output_size


def _window_index(sizes, kernel: Triple, stride: Triple, pads: Pads, device) -> torch.Tensor:
    """Tensor[OT, OH, OW, kT*kH*kW] of flat positions in the padded input, taps in (t, h, w) order."""
    padded = [s + p[0] + p[1] for s, p in zip(sizes, pads)]
    axes = []
    for size, k, s, p in zip(sizes, kernel, stride, pads):
        starts = torch.arange(output_size(size, k, s, p), device=device) * s
        axes.append(starts[:, None] + torch.arange(k, device=device)[None, :])  # [O, k]
    t, h, w = axes
    flat = (t[:, None, None, :, None, None] * padded[1] + h[None, :, None, None, :, None]) * padded[2] \
        + w[None, None, :, None, None, :]
    return flat.flatten(3)


def _padded(x: torch.Tensor, pads: Pads, fill: float) -> torch.Tensor:
    (t0, t1), (h0, h1), (w0, w1) = pads
    return F.pad(x, (w0, w1, h0, h1, t0, t1), value=fill)


def _real_cells(sizes, kernel, stride, pads, like: torch.Tensor) -> torch.Tensor:
    ones = torch.ones((1, 1, *sizes), dtype=like.dtype, device=like.device)
    idx = _window_index(sizes, kernel, stride, pads, like.device)
    return _padded(ones, pads, 0.0).flatten(2)[:, :, idx].sum(-1)  # [1, 1, OT, OH, OW]


def pool3d(x: torch.Tensor, mode: str, kernel: Triple, stride: Triple, pads: Pads) -> torch.Tensor:
    """Max (a NaN is the maximum) or real-cell average pooling.

    Tensor[N, C, T, H, W] -> Tensor[N, C, OT, OH, OW] (channels_last_3d memory).
    """
    idx = _window_index(x.shape[2:], kernel, stride, pads, x.device)
    fill = float("-inf") if mode == "max" else 0.0
    win = _padded(x, pads, fill).flatten(2)[:, :, idx]  # [N, C, OT, OH, OW, K]
    if mode == "max":
        y = win.gather(-1, win.argmax(-1, keepdim=True)).squeeze(-1)
    else:
        y = win.sum(-1) / _real_cells(x.shape[2:], kernel, stride, pads, x)
    return y.contiguous(memory_format=torch.channels_last_3d)


def pool3d_backward(grad_out: torch.Tensor, x: Optional[torch.Tensor], input_shape, mode: str, kernel: Triple,
                    stride: Triple, pads: Pads) -> torch.Tensor:
    """Gradient of :func:`pool3d`: max sends each output gradient to the first maximum of its window
    among real cells, in (t, h, w) order (``x`` needed), average spreads it over the window's real
    cells."""
    n, c, *sizes = input_shape
    idx = _window_index(sizes, kernel, stride, pads, grad_out.device)
    if mode == "max":
        win = _padded(x, pads, float("-inf")).flatten(2)[:, :, idx]
        real = _padded(torch.ones((1, 1, *sizes), dtype=torch.bool, device=x.device), pads, False).flatten(2)[:, :, idx]
        top = win.amax(-1, keepdim=True)  # NaN if the window holds one
        # first real cell equal to the maximum (the first NaN when it is NaN): a window of -inf
        # sends its gradient to its first real cell, never to padding
        hit = ((win == top) | (win.isnan() & top.isnan())) & real
        targets = idx.expand(n, c, *idx.shape).gather(-1, hit.to(torch.uint8).argmax(-1, keepdim=True)).squeeze(-1)
        values = grad_out
    else:
        targets = idx.expand(n, c, *idx.shape)
        share = grad_out / _real_cells(sizes, kernel, stride, pads, grad_out)
        values = share.unsqueeze(-1).expand(targets.shape)
    padded_sizes = [s + p[0] + p[1] for s, p in zip(sizes, pads)]
    grad = grad_out.new_zeros(n, c, padded_sizes[0] * padded_sizes[1] * padded_sizes[2])
    grad.scatter_add_(2, targets.reshape(n, c, -1), values.reshape(n, c, -1))
    (t0, _), (h0, _), (w0, _) = pads
    grad = grad.view(n, c, *padded_sizes)[:, :, t0:t0 + sizes[0], h0:h0 + sizes[1], w0:w0 + sizes[2]]
    return grad.contiguous(memory_format=torch.channels_last_3d)
