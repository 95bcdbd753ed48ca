"""C++ 3D pooling (csrc/cpu/pool3d.cpp) on channels-last tensors."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ...padding import Pads, Triple, output_size
from . import dtype_name, extension, threads

CL = torch.channels_last_3d


def _ndhwc(shape):
    n, c, t, h, w = shape
    return (n, t, h, w, c)


def pool3d(x: torch.Tensor, mode: str, kernel: Triple, stride: Triple, pads: Pads) -> torch.Tensor:
    """Tensor[N, C, T, H, W] -> Tensor[N, C, OT, OH, OW], both channels_last_3d."""
    x = x.contiguous(memory_format=CL)
    out_shape = x.shape[:2] + tuple(output_size(*a) for a in zip(x.shape[2:], kernel, stride, pads))
    y = torch.empty(out_shape, dtype=x.dtype, memory_format=CL)
    extension().pool3d_forward(mode, x.data_ptr(), y.data_ptr(), dtype_name(x.dtype), _ndhwc(x.shape),
                               tuple(out_shape[2:]), kernel, stride, tuple(p[0] for p in pads), threads())
    return y


def max_pool3d_indexed(x: torch.Tensor, kernel: Triple, stride: Triple, pads: Pads) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y, index): :func:`pool3d`'s max pooling and, per output element, the tap of its window holding
    the first maximum (uint8; int32 for windows of more than 256 taps), which :func:`pool3d_backward`
    takes instead of x."""
    x = x.contiguous(memory_format=CL)
    out_shape = x.shape[:2] + tuple(output_size(*a) for a in zip(x.shape[2:], kernel, stride, pads))
    y = torch.empty(out_shape, dtype=x.dtype, memory_format=CL)
    index = torch.empty(out_shape, dtype=torch.int32 if math.prod(kernel) > 256 else torch.uint8, memory_format=CL)
    extension().max_pool3d_forward_indexed(x.data_ptr(), y.data_ptr(), index.data_ptr(), dtype_name(x.dtype),
                                           _ndhwc(x.shape), tuple(out_shape[2:]), kernel, stride,
                                           tuple(p[0] for p in pads), threads())
    return y, index


def pool3d_backward(grad_out: torch.Tensor, x: Optional[torch.Tensor], input_shape, mode: str, kernel: Triple,
                    stride: Triple, pads: Pads, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gradient w.r.t. the input; max needs ``x`` (the saved input) or ``index`` (from
    :func:`max_pool3d_indexed`)."""
    grad_out = grad_out.contiguous(memory_format=CL)
    grad_in = torch.empty(input_shape, dtype=grad_out.dtype, memory_format=CL)
    x_ptr = index_ptr = 0
    if mode == "max" and index is not None:
        index = index.contiguous(memory_format=CL)
        index_ptr = index.data_ptr()
    elif mode == "max":
        x = x.contiguous(memory_format=CL)
        x_ptr = x.data_ptr()
    extension().pool3d_backward(mode, grad_out.data_ptr(), x_ptr, grad_in.data_ptr(), dtype_name(grad_out.dtype),
                                _ndhwc(input_shape), tuple(grad_out.shape[2:]), kernel, stride,
                                tuple(p[0] for p in pads), threads(), index_ptr)
    return grad_in
