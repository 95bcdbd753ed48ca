"""Strided convolutions with few input channels (a video network's stem: I3D's 7x7x7 stride 2 over 3
channels) as stride-1 convolutions of a space-to-depth input, on oneDNN.

Each (sT, sH, sW) block of input cells becomes one cell of Cin * sT * sH * sW channels, and the kernel
becomes ceil(k / s) taps per dimension over those channels (zero taps where k is not a multiple of
s). The products are the same (plus the zero taps); what changes is the reduction depth per tap: 3
channels leave oneDNN's bf16 AMX / AVX-512 tiles mostly empty, 24 fill them. Measured on a Xeon with
AMX (2 threads, I3D's stem on 2 x 16 x 224 x 224): bf16 forward 52.7 -> 16.9 ms, weight gradient 66.7 ->
29.6 ms; float32 slower (91 -> 140 ms: the zero taps cost more than the wider reduction saves). So
every use is timed against the direct convolution first (:mod:`.autotune`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ...padding import Pads, Triple
from ..aten import conv3d as aten_conv3d
from . import autotune, empty_weight_grad, extension, threads

CL = torch.channels_last_3d
PAD_0 = ((0, 0), (0, 0), (0, 0))
#: Widest space-to-depth input (Cin * sT * sH * sW channels) tried.
MAX_CHANNELS = 64


def rejected(x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads) -> Optional[str]:
    """Why this convolution does not run as a space-to-depth one (None when it does): it must be
    strided, with at most :data:`MAX_CHANNELS` channels after the rearrangement, and measured faster
    than the direct convolution on the first call with this configuration (with
    ``I3D_FAST_AUTOTUNE=0``: never taken)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return "CPU float32 / bfloat16 only"
    if all(s == 1 for s in stride):
        return "not a strided convolution"
    channels = x.shape[1] * math.prod(stride)
    if channels > MAX_CHANNELS:
        return f"{channels} channels after space-to-depth > {MAX_CHANNELS}"
    if any(size + before + after < k for size, k, (before, after) in zip(x.shape[2:], weight.shape[2:], pads)):
        return "input smaller than the kernel"
    if not autotune.enabled(x, weight):
        return "taken only where timed faster (I3D_FAST_AUTOTUNE=0)"
    key = ("space_to_depth", tuple(x.shape), x.is_contiguous(memory_format=CL), tuple(weight.shape), tuple(stride),
           tuple(map(tuple, pads)), x.dtype, threads())
    w = weight.detach()
    return autotune.slower(key, lambda: (lambda: conv3d(x, w, stride, pads),
                                         lambda: aten_conv3d.conv3d(x, w, None, None, stride, pads, False)))


def _geometry(x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads):
    """Per dimension: (taps q = ceil(k / s), output size, padding after so the padded length is
    (out - 1 + q) * s; negative: cells that no output reads are cut)."""
    dims = []
    for size, k, s, (before, after) in zip(x.shape[2:], weight.shape[2:], stride, pads):
        q, out = -(-k // s), (size + before + after - k) // s + 1
        dims.append((q, out, (out - 1 + q) * s - before - size))
    return dims


def _input(x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads) -> torch.Tensor:
    """x padded and rearranged (C++, one pass): Tensor[N, sT * sH * sW * Cin, T'', H'', W'']
    (channels_last_3d), channel ((rt * sH + rh) * sW + rw) * Cin + c holding padded cell (s * i + r) of
    channel c."""
    x = x.contiguous(memory_format=CL)
    dims = _geometry(x, weight, stride, pads)
    n, cin = x.shape[:2]
    cells = tuple(out - 1 + q for q, out, _ in dims)
    out = torch.empty((n, cin * math.prod(stride), *cells), dtype=x.dtype, memory_format=CL)
    extension().space_to_depth(x.data_ptr(), out.data_ptr(), x.element_size(), (n, *x.shape[2:], cin), cells,
                               tuple(stride), tuple(before for before, _ in pads), threads())
    return out


def _weight(weight: torch.Tensor, stride: Triple) -> torch.Tensor:
    """Tensor[Cout, Cin, kT, kH, kW] -> Tensor[Cout, sT * sH * sW * Cin, qT, qH, qW] (channels_last_3d)
    matching :func:`_input`, zero where a tap falls past the kernel."""
    cout, cin, kt, kh, kw = weight.shape
    (st, sh, sw), (qt, qh, qw) = stride, (-(-k // s) for k, s in zip(weight.shape[2:], stride))
    padded = F.pad(weight, (0, qw * sw - kw, 0, qh * sh - kh, 0, qt * st - kt))
    blocks = padded.reshape(cout, cin, qt, st, qh, sh, qw, sw).permute(0, 3, 5, 7, 1, 2, 4, 6)
    return blocks.reshape(cout, st * sh * sw * cin, qt, qh, qw).contiguous(memory_format=CL)


def conv3d(x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads) -> torch.Tensor:
    """``conv3d(pad(x), weight, stride)`` as a stride-1 convolution of the space-to-depth input:
    Tensor[N, Cin, T, H, W] -> Tensor[N, Cout, T', H', W'] (channels_last_3d, x's dtype)."""
    return aten_conv3d.conv3d(_input(x, weight, stride, pads), _weight(weight, stride), None, None, (1, 1, 1), PAD_0,
                              False)


def weight_grad(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, stride: Triple,
                pads: Pads) -> torch.Tensor:
    """The weight gradient of :func:`conv3d` for its output gradient Tensor[N, Cout, T', H', W']:
    the stride-1 convolution's (oneDNN) folded back to Tensor[Cout, Cin, kT, kH, kW] (x's dtype, the
    weight's strides where it is dense)."""
    cout, cin, kt, kh, kw = weight.shape
    (st, sh, sw), (qt, qh, qw) = stride, (-(-k // s) for k, s in zip(weight.shape[2:], stride))
    folded = _weight(weight.detach(), stride)
    grad_folded = aten_conv3d.conv3d_backward(grad, _input(x, weight, stride, pads), folded, (1, 1, 1), PAD_0,
                                              False, True)[1]
    blocks = grad_folded.reshape(cout, st, sh, sw, cin, qt, qh, qw).permute(0, 4, 5, 1, 6, 2, 7, 3)
    grad = blocks.reshape(cout, cin, qt * st, qh * sh, qw * sw)[:, :, :kt, :kh, :kw]
    return empty_weight_grad(weight, x.dtype).copy_(grad)
