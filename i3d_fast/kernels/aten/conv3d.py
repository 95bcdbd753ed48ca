"""Conv3d + scale/shift + ReLU from ATen ops: the CPU fast path (oneDNN convolutions, BLAS GEMMs)
and the fallback on devices without a hand-written kernel.

- 1x1x1 stride-1 convolutions are one GEMM on the channels-last view, written straight into the
  destination channel slices (``addmm(out=...)``): no copy, no concatenation.
- Symmetric padding goes to the convolution itself; only TF's odd extra cell (e.g. (2, 3)) costs a pad.
- Other convolutions call oneDNN directly (``mkldnn._convolution_pointwise``): ATen's own dispatch
  sends batch-1 3x3x3 convolutions with few channels to its slow im2col path (2-7x slower here). ReLU
  is a separate in-place pass: oneDNN's fused ReLU turns NaN into 0. Weights used again unchanged (e.g.
  folded eval weights) are reordered into oneDNN's blocked layout once per input shape and kept (eager
  PyTorch reorders them on every call: 8.1 -> 5.1 ms for a 512 -> 512 3x3x3 layer at 2x7x7).
- scale is folded into the weights, shift is the convolution bias.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ...padding import Pads, Triple, resolve_padding
from ..weight_cache import WeightCache
from . import pool3d as aten_pool3d

CL = torch.channels_last_3d


def _rows(t: torch.Tensor) -> torch.Tensor:
    """channels_last_3d Tensor[N, C, T, H, W] -> its [N*T*H*W, C] view (no copy)."""
    return t.permute(0, 2, 3, 4, 1).reshape(-1, t.shape[1])


def _fold(weight: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
    return weight if scale is None else weight * scale.to(weight.dtype).view(-1, 1, 1, 1, 1)


def conv3d(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
           stride: Triple, pads: Pads, relu: bool, destinations: Optional[Sequence] = None,
           pool: Optional[Triple] = None, allow_tf32: bool = False) -> Optional[torch.Tensor]:
    """See :func:`i3d_fast.ops.conv3d`. Returns a new channels_last_3d tensor when ``destinations``
    is None, else writes the output channels in order into the (tensor, offset, count) destinations."""
    if pool is not None:  # ATen's pooling (ops.conv3d pools on the fastest backend before calling this)
        x = aten_pool3d.pool3d(x, "max", pool, (1, 1, 1), resolve_padding(x.shape[2:], pool, (1, 1, 1), "same"))
    x = x.contiguous(memory_format=CL)
    weight = _fold(weight, scale)
    bias = None if shift is None else shift.to(weight.dtype)
    if weight.shape[2:] == (1, 1, 1) and stride == (1, 1, 1) and not any(p for pair in pads for p in pair):
        return _gemm(x, weight, bias, relu, destinations)
    symmetric = [min(before, after) for before, after in pads]
    extra = [(before - s, after - s) for (before, after), s in zip(pads, symmetric)]
    if any(a or b for a, b in extra):
        (t0, t1), (h0, h1), (w0, w1) = extra
        x = F.pad(x, (w0, w1, h0, h1, t0, t1))
    y = _conv(x, weight, bias, stride, symmetric, relu)
    if destinations is None:
        return y.contiguous(memory_format=CL)
    start = 0
    for out, offset, count in destinations:
        out[:, offset:offset + count].copy_(y[:, start:start + count])
        start += count
    return None


def _onednn_usable(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight"))


# weight -> {(input shape, stride, padding): the weight in oneDNN's layout for that convolution}
_PREPACKED = WeightCache(lambda weight: {})


def _prepacked(weight: torch.Tensor, x: torch.Tensor, stride, padding) -> torch.Tensor:
    """The weight reordered for oneDNN once, from its second use unchanged (keyed by the caller's tensor,
    whatever its layout); a trainable weight, or one that changes or is a fresh alias every call, is
    passed in channels_last_3d as it is."""
    packs = None if weight.requires_grad else _PREPACKED.get_if_seen(weight)
    if packs is None:
        return weight.contiguous(memory_format=CL)
    key = (tuple(x.shape), tuple(stride), tuple(padding))
    if key not in packs:
        packs[key] = torch.ops.mkldnn._reorder_convolution_weight(weight.detach(), list(padding), list(stride),
                                                                  [1, 1, 1], 1, list(x.shape))
    return packs[key]


def _conv(x, weight, bias, stride, padding, relu: bool) -> torch.Tensor:
    if _onednn_usable(x):
        # ReLU as its own pass: oneDNN's fused ReLU post-op turns NaN into 0, torch.relu keeps it.
        y = torch.ops.mkldnn._convolution_pointwise(x, _prepacked(weight, x, stride, padding), bias, list(padding),
                                                     list(stride), [1, 1, 1], 1, "none", [None], "")
        return y.relu_() if relu else y
    y = F.conv3d(x, weight.contiguous(memory_format=CL), bias, stride, padding)
    return y.relu_() if relu else y


def _gemm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], relu: bool,
          destinations: Optional[Sequence]) -> Optional[torch.Tensor]:
    rows = _rows(x)
    w = weight.reshape(weight.shape[0], -1).t()  # [Cin, Cout]
    new = destinations is None
    if new:
        out = torch.empty((x.shape[0], weight.shape[0], *x.shape[2:]), dtype=x.dtype, device=x.device,
                          memory_format=CL)
        destinations = [(out, 0, weight.shape[0])]
    start = 0
    for out, offset, count in destinations:
        target = _rows(out)[:, offset:offset + count]
        cols = slice(start, start + count)
        if bias is None:
            torch.mm(rows, w[:, cols], out=target)
        else:
            torch.addmm(bias[cols], rows, w[:, cols], out=target)
        if relu:
            target.relu_()
        start += count
    return destinations[0][0] if new else None


def conv3d_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads,
                    need_input: bool, need_weight: bool):
    """(grad_x or None, grad_weight or None) of ``conv3d(pad(x), weight, stride)`` for ``grad``
    Tensor[N, Cout, T', H', W']: ``convolution_backward`` (oneDNN on the CPU: for 1x1x1 layers it
    measured 1.2x faster than two BLAS GEMMs on the channels-last rows) with the symmetric part of
    the padding inside it (only TF's odd extra cell costs a padded copy of x, and all of it for an
    input smaller than the kernel)."""
    grad = grad.contiguous(memory_format=CL)
    symmetric = [min(before, after) for before, after in pads]
    if any(size < k for size, k in zip(x.shape[2:], weight.shape[2:])):
        # an input smaller than the kernel: all padding as a (small) copy. oneDNN's weight gradient with
        # the padding inside crashes on some such shapes (torch 2.13: 7x7x7 stride 2 padding 3 on depth 5)
        symmetric = [0, 0, 0]
    extra = [(before - s, after - s) for (before, after), s in zip(pads, symmetric)]
    padded = any(a or b for a, b in extra)
    if padded:
        (t0, t1), (h0, h1), (w0, w1) = extra
        x = F.pad(x, (w0, w1, h0, h1, t0, t1))
    grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
        grad, x.contiguous(memory_format=CL), weight, None, list(stride), symmetric, [1, 1, 1], False, [0, 0, 0], 1,
        [need_input, need_weight, False])
    if padded and grad_x is not None:
        (t0, _), (h0, _), (w0, _) = extra
        grad_x = grad_x[:, :, t0:t0 + x.shape[2] - sum(extra[0]), h0:h0 + x.shape[3] - sum(extra[1]),
                        w0:w0 + x.shape[4] - sum(extra[2])]
    return grad_x, grad_w
