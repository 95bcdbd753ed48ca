"""3D pooling from ATen ops: ATen's own ``padding=`` where it accepts the pads (symmetric, at most
half the kernel), else explicit -inf / zero padding, then ATen's max / average pooling. Backward
calls ATen's backward kernels (max pooling keeps ATen's int64 index tensor)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ...padding import Pads, Triple, output_size

aten = torch.ops.aten
CL = torch.channels_last_3d


def _pad(x: torch.Tensor, pads: Pads, fill: float) -> torch.Tensor:
    if not any(p for pair in pads for p in pair):
        return x
    (t0, t1), (h0, h1), (w0, w1) = pads
    return F.pad(x, (w0, w1, h0, h1, t0, t1), value=fill)


def _crop(grad: torch.Tensor, input_shape, pads: Pads) -> torch.Tensor:
    (t0, _), (h0, _), (w0, _) = pads
    t, h, w = input_shape[2:]
    return grad[:, :, t0:t0 + t, h0:h0 + h, w0:w0 + w].contiguous(memory_format=CL)


def _real_cells(sizes, kernel: Triple, stride: Triple, pads: Pads, like: torch.Tensor) -> torch.Tensor:
    """Tensor[OT, OH, OW]: real (unpadded) cells in each window, a product over dimensions."""
    counts = []
    for size, k, s, p in zip(sizes, kernel, stride, pads):
        starts = torch.arange(output_size(size, k, s, p), device=like.device) * s - p[0]
        counts.append((starts + k).clamp(max=size) - starts.clamp(min=0))
    ct, ch, cw = counts
    return (ct[:, None, None] * ch[None, :, None] * cw[None, None, :]).to(like.dtype)


def _native_padding(kernel: Triple, pads: Pads) -> Optional[list]:
    """The pads as ATen's own ``padding=`` (no padded copy; padded cells ignored by max pooling and, with
    ``count_include_pad=False``, by average pooling) when ATen accepts them: symmetric, at most half
    the kernel. None otherwise (e.g. TF SAME's odd cell at the end)."""
    if all(before == after and 2 * before <= k for (before, after), k in zip(pads, kernel)):
        return [before for before, _ in pads]
    return None


def pool3d(x: torch.Tensor, mode: str, kernel: Triple, stride: Triple, pads: Pads) -> torch.Tensor:
    """Tensor[N, C, T, H, W] -> Tensor[N, C, OT, OH, OW] (channels_last_3d)."""
    x = x.contiguous(memory_format=CL)
    native = _native_padding(kernel, pads)
    if native is not None:
        y = F.max_pool3d(x, kernel, stride, native) if mode == "max" else \
            F.avg_pool3d(x, kernel, stride, native, count_include_pad=False)
    elif mode == "max":
        y = F.max_pool3d(_pad(x, pads, float("-inf")), kernel, stride)
    else:
        total = F.avg_pool3d(_pad(x, pads, 0.0), kernel, stride, divisor_override=1)
        y = total / _real_cells(x.shape[2:], kernel, stride, pads, x)
    return y.contiguous(memory_format=CL)


def pool3d_backward(grad_out: torch.Tensor, x: Optional[torch.Tensor], input_shape, mode: str, kernel: Triple,
                    stride: Triple, pads: Pads) -> torch.Tensor:
    native = _native_padding(kernel, pads)
    if native is not None and mode == "max":
        x = x.contiguous(memory_format=CL)
        _, indices = aten.max_pool3d_with_indices(x, kernel, stride, native)
        return aten.max_pool3d_with_indices_backward(grad_out, x, kernel, stride, native, [1, 1, 1], False,
                                                     indices).contiguous(memory_format=CL)
    if native is not None:
        like = grad_out.new_empty(input_shape).contiguous(memory_format=CL)
        return aten.avg_pool3d_backward(grad_out.contiguous(memory_format=CL), like, kernel, stride, native, False,
                                        False, None).contiguous(memory_format=CL)
    if mode == "max":
        xp = _pad(x.contiguous(memory_format=CL), pads, float("-inf"))
        _, indices = aten.max_pool3d_with_indices(xp, kernel, stride)
        grad = aten.max_pool3d_with_indices_backward(grad_out, xp, kernel, stride, [0, 0, 0], [1, 1, 1], False,
                                                     indices)
    else:
        padded_shape = [input_shape[0], input_shape[1]] + [s + p[0] + p[1] for s, p in zip(input_shape[2:], pads)]
        share = grad_out / _real_cells(input_shape[2:], kernel, stride, pads, grad_out)
        like = grad_out.new_empty(padded_shape).contiguous(memory_format=CL)
        grad = aten.avg_pool3d_backward(share.contiguous(memory_format=CL), like, kernel, stride, [0, 0, 0], False,
                                        True, 1)
    return _crop(grad, input_shape, pads)
