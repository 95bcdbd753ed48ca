"""I3D written in plain PyTorch, the baseline of the ``train`` benchmark suite.

The same network, forward and state_dict keys as :class:`i3d_fast.models.InceptionI3d` (the
piergiaj/pytorch-i3d layout), built only from stock modules and ATen ops, the way a careful PyTorch
user would write it: TF "SAME" padding goes into the conv's and the pool's own symmetric
``padding=``, the odd extra cell at the end into ``F.pad`` (convs) or ``ceil_mode=True`` (pools).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models.i3d import ARCHITECTURE, ENDPOINTS, HEAD_POOL
from ..padding import Triple, same_padding


def _same_pads(sizes: Sequence[int], kernel: Triple, stride: Triple) -> List[Tuple[int, int]]:
    """TF SAME (before, after) pads of each dimension (T, H, W); after is before or before + 1."""
    return [same_padding(n, k, s) for n, k, s in zip(sizes, kernel, stride)]


class PlainUnit3D(nn.Module):
    """nn.Conv3d with TF SAME padding, BatchNorm3d (eps 1e-3, momentum 1e-3), ReLU; parameters
    ``conv3d.*`` and ``bn.*`` as in piergiaj/pytorch-i3d.

    The conv pads the symmetric part itself (``F.conv3d`` on its parameters with ``padding=``, which
    SAME sets per input size); ``F.pad`` adds the odd cell at the end only where SAME is asymmetric
    (Conv3d_1a_7x7 on even sizes). Tensor[N, C_in, T, H, W] ->
    Tensor[N, C_out, ceil(T/s), ceil(H/s), ceil(W/s)].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Triple = (1, 1, 1),
                 stride: Triple = (1, 1, 1), batch_norm: bool = True, relu: bool = True, bias: bool = False):
        super().__init__()
        self.relu = relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel_size, stride, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=1e-3) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv3d
        (t0, t1), (h0, h1), (w0, w1) = _same_pads(x.shape[2:], conv.kernel_size, conv.stride)
        if (t1 - t0) or (h1 - h0) or (w1 - w0):
            x = F.pad(x, (0, w1 - w0, 0, h1 - h0, 0, t1 - t0))
        x = F.conv3d(x, conv.weight, conv.bias, conv.stride, padding=(t0, h0, w0))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True) if self.relu else x


class PlainMaxPool3d(nn.Module):
    """TF SAME max pooling (padding ignored) as one ATen ``max_pool3d``: ``padding=`` the symmetric
    part of each dimension's SAME pad, ``ceil_mode=True`` for the odd cell at the end.

    Exact whenever every dimension has stride > 1 or an odd kernel (true of every I3D pool): then an
    odd SAME total comes only with stride > 1, where ceil mode adds exactly the one window that
    reaches into the extra cell, and an even total leaves nothing for ceil mode to round.
    Tensor[N, C, T, H, W] -> Tensor[N, C, ceil(T/s), ceil(H/s), ceil(W/s)].
    """

    def __init__(self, kernel_size: Triple, stride: Triple):
        super().__init__()
        if any(s == 1 and k % 2 == 0 for k, s in zip(kernel_size, stride)):
            raise ValueError(f"ceil_mode cannot place SAME's odd cell for an even kernel at stride 1: "
                             f"kernel {kernel_size}, stride {stride}")
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before = [b for b, _ in _same_pads(x.shape[2:], self.kernel_size, self.stride)]
        return F.max_pool3d(x, self.kernel_size, self.stride, padding=before, ceil_mode=True)


class PlainInceptionModule(nn.Module):
    """Branches 1x1x1 | 1x1x1 -> 3x3x3 | 1x1x1 -> 3x3x3 | 3x3x3 max pool -> 1x1x1, joined by
    ``torch.cat``. Tensor[N, C_in, T, H, W] -> Tensor[N, b0 + b1b + b2b + b3b, T, H, W]."""

    def __init__(self, in_channels: int, widths: Sequence[int]):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3b = widths
        self.b0 = PlainUnit3D(in_channels, b0)
        self.b1a = PlainUnit3D(in_channels, b1a)
        self.b1b = PlainUnit3D(b1a, b1b, (3, 3, 3))
        self.b2a = PlainUnit3D(in_channels, b2a)
        self.b2b = PlainUnit3D(b2a, b2b, (3, 3, 3))
        self.b3a = PlainMaxPool3d((3, 3, 3), (1, 1, 1))
        self.b3b = PlainUnit3D(in_channels, b3b)
        self.out_channels = b0 + b1b + b2b + b3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class PlainInceptionI3d(nn.Module):
    """Plain-PyTorch twin of :class:`i3d_fast.models.InceptionI3d` (same arguments, state_dict and
    outputs; the whole network, no ``final_endpoint``).

    ``forward``: Tensor[B, in_channels, T, H, W] in [-1, 1] -> Tensor[B, num_classes] (pre-softmax,
    averaged over time and space). ``adaptive_head`` shrinks the VALID 2x7x7 head pool to fit clips
    smaller than 9 frames x 193x193 pixels.
    """

    def __init__(self, num_classes: int = 400, in_channels: int = 3, dropout: float = 0.0,
                 adaptive_head: bool = False):
        super().__init__()
        self.adaptive_head = adaptive_head
        channels = in_channels
        for name, spec in ARCHITECTURE:
            if spec[0] == "unit":
                module = PlainUnit3D(channels, spec[1], spec[2], spec[3])
                channels = spec[1]
            elif spec[0] == "max":
                module = PlainMaxPool3d(spec[1], spec[2])
            else:
                module = PlainInceptionModule(channels, spec[1])
                channels = module.out_channels
            self.add_module(name, module)
        self.dropout = nn.Dropout(dropout)
        self.logits = PlainUnit3D(channels, num_classes, batch_norm=False, relu=False, bias=True)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        kernel = tuple(min(k, s) for k, s in zip(HEAD_POOL, x.shape[2:])) if self.adaptive_head else HEAD_POOL
        x = self.logits(self.dropout(F.avg_pool3d(x, kernel, stride=1)))
        return x.mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extract_features(x, "Logits")

    def extract_features(self, x: torch.Tensor, endpoint: str = "Mixed_5c") -> torch.Tensor:
        """Output of ``endpoint``: Tensor[B, C, T', H', W'], or Tensor[B, num_classes] for "Logits"."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; choose one of {ENDPOINTS}")
        for name, _ in ARCHITECTURE:
            x = getattr(self, name)(x)
            if name == endpoint:
                return x
        return self._head(x)


def fold_batchnorm(model: PlainInceptionI3d) -> PlainInceptionI3d:
    """``model`` (eval mode) with every BatchNorm folded into its convolution, in place (what a user
    deploying the plain network would do; ``torch.fx`` cannot trace the size-dependent SAME padding)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for unit in model.modules():
        if isinstance(unit, PlainUnit3D) and unit.bn is not None:
            unit.conv3d, unit.bn = fuse_conv_bn_eval(unit.conv3d, unit.bn), None
    return model
