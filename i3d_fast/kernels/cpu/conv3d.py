"""C++ 3D Winograd convolution F(2x2x2, 3x3x3) (csrc/cpu/winograd3d.cpp) on channels-last tensors.

Runs 3x3x3 stride-1 convolutions with one cell of zero padding per side (what TF "SAME" gives for
k = 3, s = 1) in float32, with the scale/shift epilogue and ReLU fused into the output transform:
64 multiplies per 2x2x2 outputs and input channel instead of 216. The input may be a channel slice of
a wider channels_last_3d tensor (e.g. ``mid[:, :b1a]`` in an Inception block) and the output channels
go straight into the destination channel slices: no copies.

The weight transform ``U = G g G^T`` is done by :func:`prepare_weight`; :func:`conv3d` caches it per
weight tensor (while that tensor lives and is not modified in place), so a model calling it with
the same weights pays for it once.
"""
from __future__ import annotations

import weakref
from typing import Dict, Optional, Sequence, Tuple

import torch

from ...ops.padding import Pads, Triple
from . import extension, threads

CL = torch.channels_last_3d
SAME_3x3x3 = ((1, 1), (1, 1), (1, 1))


def unsupported(x: torch.Tensor, weight: torch.Tensor, stride: Triple, pads: Pads,
                pool: Optional[Triple]) -> Optional[str]:
    """Why this kernel cannot run the convolution (None when it can). Device and extension are
    checked by the op."""
    if x.dtype != torch.float32:
        return f"supports float32 only, got {str(x.dtype).replace('torch.', '')}"
    if tuple(weight.shape[2:]) != (3, 3, 3):
        return f"runs 3x3x3 kernels only, got {tuple(weight.shape[2:])}"
    if tuple(stride) != (1, 1, 1):
        return f"runs stride-1 convolutions only, got stride {tuple(stride)}"
    if tuple(map(tuple, pads)) != SAME_3x3x3:
        return f"needs zero padding 1 on every side (SAME for 3x3x3), got pads {tuple(map(tuple, pads))}"
    if pool is not None:
        return "does not fuse a max pool into its input load"
    return None


def prepare_weight(weight: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Transformed, packed weights for :func:`conv3d_packed`.

    Args:
        weight: Tensor[Cout, Cin, 3, 3, 3] (any float dtype; CPU).
        scale: optional Tensor[Cout] folded into the weights (in float64) first.
    Returns:
        1-D float32 Tensor of ``64 * Cin * roundup(Cout, 16)`` values (layout: csrc/cpu/winograd3d.cpp).
    """
    cout, cin = weight.shape[:2]
    w = weight.detach().double()
    if scale is not None:
        w = w * scale.detach().double().view(-1, 1, 1, 1, 1)
    w = w.float().contiguous()
    ext = extension()
    packed = torch.empty(ext.winograd3d_packed_size(cout, cin), dtype=torch.float32)
    ext.winograd3d_prepare_weight(w.data_ptr(), packed.data_ptr(), cout, cin, threads())
    return packed


# id(weight) -> (weak reference to it, its version and data pointer when packed, packed weights)
_CACHE: Dict[int, Tuple[weakref.ref, int, int, torch.Tensor]] = {}


def _cached_weight(weight: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
    if scale is not None or weight.requires_grad:
        return prepare_weight(weight, scale)
    key = id(weight)
    entry = _CACHE.get(key)
    if entry is not None and entry[0]() is weight and entry[1] == weight._version \
            and entry[2] == weight.data_ptr():
        return entry[3]
    packed = prepare_weight(weight)
    _CACHE[key] = (weakref.ref(weight, lambda _, k=key: _CACHE.pop(k, None)), weight._version,
                   weight.data_ptr(), packed)
    return packed


def _row_stride(t: torch.Tensor) -> Optional[int]:
    """The row stride (floats) if ``t`` [N, C, T, H, W] is stored as NDHW rows with contiguous
    channels (a channels_last_3d tensor or a channel slice of one), else None."""
    c = t.shape[1]
    if c > 1 and t.stride(1) != 1:
        return None
    spatial = [dim for dim in (4, 3, 2, 0) if t.shape[dim] > 1]
    ld = t.stride(spatial[0]) if spatial else c
    expected = ld
    for dim in (4, 3, 2, 0):
        if t.shape[dim] > 1 and t.stride(dim) != expected:
            return None
        expected *= t.shape[dim]
    return ld if ld >= c else None


def conv3d_packed(x: torch.Tensor, packed: torch.Tensor, cout: int, shift: Optional[torch.Tensor], relu: bool,
                  destinations: Sequence[Tuple[torch.Tensor, int, int]]) -> None:
    """Writes relu?(conv3d(x, w, padding 1) + shift) into ``destinations`` = [(out, channel offset,
    count), ...] (channels_last_3d outs, float32, counts summing to ``cout``), with ``packed`` from
    :func:`prepare_weight`. x: float32 Tensor[N, Cin, T, H, W], channels-last rows (a channel slice of
    a wider tensor is read in place; anything else is copied first)."""
    ld = _row_stride(x)
    if ld is None:
        x = x.contiguous(memory_format=CL)
        ld = x.shape[1]
    n, cin, t, h, w = x.shape
    dests = []
    for out, offset, count in destinations:
        dests.append((out.data_ptr() + offset * out.element_size(), out.shape[1], count))
    bias = None if shift is None else shift.to(torch.float32).contiguous()
    extension().winograd3d_forward(x.data_ptr(), ld, (n, t, h, w), cin, packed.data_ptr(), cout,
                                   0 if bias is None else bias.data_ptr(), relu, dests, threads())


def conv3d(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
           stride: Triple, pads: Pads, relu: bool, destinations: Optional[Sequence] = None,
           pool: Optional[Triple] = None, allow_tf32: bool = False) -> Optional[torch.Tensor]:
    """See :func:`i3d_fast.ops.conv3d`; only what :func:`unsupported` accepts. Returns a new
    channels_last_3d tensor when ``destinations`` is None, else writes the output channels in order
    into the (tensor, offset, count) destinations."""
    cout = weight.shape[0]
    packed = _cached_weight(weight, scale)
    if destinations is None:
        out = torch.empty((x.shape[0], cout, *x.shape[2:]), dtype=x.dtype, memory_format=CL)
        conv3d_packed(x, packed, cout, shift, relu, [(out, 0, cout)])
        return out
    conv3d_packed(x, packed, cout, shift, relu, destinations)
    return None
