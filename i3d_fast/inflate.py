"""``inflate(model_2d)``: a 3D network from a 2D image network, by "inflation" (Carreira & Zisserman,
"Quo Vadis, Action Recognition?", 2017): every 2D kernel gains a time dimension and the 2D weights
bootstrap the 3D ones, so that the new network sees a video of shape (N, C, T, H, W).

- ``nn.Conv2d`` (kh, kw) -> ``nn.Conv3d`` (kt, kh, kw), kt = kh unless overridden ("square" inflation),
  temporal stride = the spatial stride ``stride[0]`` unless overridden, (kt - 1) // 2 frames of padding
  at each end of time (an even kt therefore gives one frame fewer than an odd one; with
  ``time_padding="replicate"`` the edge frames are repeated instead of zeros: :class:`InflatedConv3d`).
  Weights: the 2D kernel repeated kt times along time and divided by kt; the bias copied.
- ``nn.BatchNorm2d`` -> ``nn.BatchNorm3d`` with the same parameters, statistics and settings.
- ``nn.MaxPool2d`` / ``nn.AvgPool2d`` (k, s, p) -> 3D pools ((kt, k, k), (st, s, s), ((kt - 1) // 2, p, p)),
  kt = st = 1 (time untouched) unless overridden. An overridden kernel does not change the stride: set
  both. A max pool pads with -inf whatever ``time_padding`` says (for a max, the same as repeating the
  edge frames); an average pool with time padding and ``count_include_pad=True`` averages the zeros in
  (``time_padding="zeros"``) or repeats the edge frames (:class:`InflatedAvgPool3d`); a
  ``divisor_override`` d becomes kt * d.
- This package's 2D layers (:mod:`i3d_fast.layers`, TF "SAME" padding): :class:`~i3d_fast.layers.Unit2D` ->
  :class:`~i3d_fast.layers.Unit3D` (kernel and stride defaults as for ``nn.Conv2d``, the weights inflated the same
  way, the BatchNorm kept); :class:`~i3d_fast.layers.MaxPool2d` -> :class:`~i3d_fast.layers.MaxPool3d` (time kernel
  and stride 1 unless overridden). Their time padding is TF "SAME" too (zeros for a Unit3D: ``time_padding=
  "replicate"`` is refused for a Unit2D whose time kernel exceeds 1; padding ignored for a max pool). Overrides
  name the Unit2D itself, not its conv.
- ``nn.AdaptiveAvgPool2d`` (h, w) -> ``nn.AdaptiveAvgPool3d`` (1, h, w): time is pooled to one frame, so
  a ``Flatten`` + ``Linear`` head after it sees the same number of features as in 2D.
- ``nn.Dropout2d`` -> ``nn.Dropout3d``. Kept as they are (they work unchanged on 5D tensors or on the
  features after the head's ``Flatten``): Linear, GroupNorm, PReLU, Dropout, Flatten, Identity, the
  element-wise activations, Softmax / LogSoftmax over dim 1.
- Containers (Sequential, ModuleList, ModuleDict, custom modules) are kept; only their leaves change,
  under the same names, so the state_dict keys stay the same (the conv weights gain a time dimension).

Per-layer overrides name modules as ``model_2d.named_modules()`` does, e.g. ``{"layer1.0.conv1": 1}``.

The boring-video fixed point (eval mode): on a clip made of one image repeated T times, the inflated
network with ``time_padding="replicate"`` gives the 2D network's output on that image (up to rounding),
at any depth, as long as every temporal stride and pool leaves at least one frame. With
``time_padding="zeros"`` this holds only for the output frames whose temporal receptive field lies
inside the clip: e.g. after L stride-1 convolutions with kt = 3 (and pools that keep time), frames
L .. T - 1 - L of the feature map equal the 2D one; the edge frames, and so anything pooled over all
of time (a global average pool head), differ.

Not convertible: code in a custom ``forward`` that is 2D-specific (``F.max_pool2d``, ``F.conv2d``,
reshapes or broadcasts that assume 4 dimensions, ``torch.cat`` / ``sum`` / ``mean`` over dims >= 2
counted as in 4D). Modules are converted, code is not; such models need their forward rewritten.
"""
from __future__ import annotations

import copy
from typing import Dict, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import layers

TIME_PADDINGS = ("zeros", "replicate")
# Leaves that work unchanged on (N, C, T, H, W) tensors (or on the features after a Flatten).
DIMENSION_AGNOSTIC = (nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Mish, nn.Sigmoid,
                      nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Dropout, nn.Flatten, nn.Linear, nn.GroupNorm, nn.PReLU)
TIME_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, layers.Unit2D, layers.MaxPool2d)
# 2D classes whose 3D class differs only in the input dimension it checks.
SAME_STATE_3D = {nn.BatchNorm2d: nn.BatchNorm3d, nn.Dropout2d: nn.Dropout3d}
KNOWN_2D = TIME_LAYERS + tuple(SAME_STATE_3D) + (nn.AdaptiveAvgPool2d,)


def _replicate_time(x: torch.Tensor, time_pad: int) -> torch.Tensor:
    """(N, C, T, H, W) -> (N, C, T + 2 * time_pad, H, W), the first and last frames repeated."""
    return F.pad(x, (0, 0, 0, 0, time_pad, time_pad), mode="replicate")


class InflatedConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose input is padded in time by repeating the edge frames (``time_pad`` at each end)
    and in space with zeros (its own ``padding``, whose time entry is 0). Same parameters as ``nn.Conv3d``."""

    def __init__(self, *args, time_pad: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding[0] != 0 or self.padding_mode != "zeros":
            raise ValueError("InflatedConv3d: time_pad pads time; padding[0] must be 0 and padding_mode 'zeros'")
        self.time_pad = time_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_replicate_time(x, self.time_pad))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", time_pad={self.time_pad} (replicate)"


class InflatedAvgPool3d(nn.AvgPool3d):
    """``nn.AvgPool3d`` whose input is padded in time by repeating the edge frames (``time_pad`` at each end);
    its own ``padding`` (time entry 0) pads space."""

    def __init__(self, *args, time_pad: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding[0] != 0:
            raise ValueError("InflatedAvgPool3d: time_pad pads time; padding[0] must be 0")
        self.time_pad = time_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_replicate_time(x, self.time_pad))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", time_pad={self.time_pad} (replicate)"


def _pair(value) -> Tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _copy_inflated_weights(conv: nn.Conv2d, conv3d: nn.Conv3d) -> None:
    """Conv2d weight (O, I/g, kh, kw) -> Conv3d weight (O, I/g, kt, kh, kw) = the 2D one / kt at every t; the bias
    copied; ``requires_grad`` carried over."""
    with torch.no_grad():
        conv3d.weight.copy_(conv.weight.unsqueeze(2).expand_as(conv3d.weight) / conv3d.kernel_size[0])
        conv3d.weight.requires_grad_(conv.weight.requires_grad)
        if conv.bias is not None:
            conv3d.bias.copy_(conv.bias)
            conv3d.bias.requires_grad_(conv.bias.requires_grad)


def _inflate_conv(conv: nn.Conv2d, name: str, time_kernel: int, time_stride: int, time_padding: str) -> nn.Conv3d:
    """Conv2d -> Conv3d ((kt - 1) // 2 frames of time padding: zeros, or an InflatedConv3d repeating the edges)."""
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ValueError(f"inflate: {name} (Conv2d): only explicit zero padding is supported, got "
                         f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
    time_pad = (time_kernel - 1) // 2
    replicate = time_padding == "replicate" and time_pad > 0
    kwargs = dict(in_channels=conv.in_channels, out_channels=conv.out_channels,
                  kernel_size=(time_kernel, *conv.kernel_size), stride=(time_stride, *conv.stride),
                  padding=(0 if replicate else time_pad, *conv.padding), dilation=(1, *conv.dilation),
                  groups=conv.groups, bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
    conv3d = InflatedConv3d(**kwargs, time_pad=time_pad) if replicate else nn.Conv3d(**kwargs)
    _copy_inflated_weights(conv, conv3d)
    return conv3d


def _inflate_unit(unit: layers.Unit2D, name: str, time_kernel: int, time_stride: int,
                  time_padding: str) -> layers.Unit3D:
    """Unit2D -> Unit3D (TF "SAME" in time too): the conv inflated, the BatchNorm2d turned into a BatchNorm3d with
    the same parameters, statistics, settings and mode."""
    if time_padding == "replicate" and time_kernel > 1:
        raise ValueError(f"inflate: {name} (Unit2D): time_padding='replicate' is not supported: a Unit3D pads time "
                         "with zeros (TF SAME); use time_padding='zeros' or a time kernel of 1")
    conv = unit.conv3d
    if type(conv) is not nn.Conv2d or (unit.bn is not None and type(unit.bn) is not nn.BatchNorm2d):
        raise ValueError(f"inflate: {name} (Unit2D): its conv3d / bn must be the nn.Conv2d / nn.BatchNorm2d it "
                         f"builds, got {type(conv).__name__} / {type(unit.bn).__name__}")
    unit3d = layers.Unit3D(conv.in_channels, conv.out_channels, (time_kernel, *unit.kernel_size),
                           (time_stride, *unit.stride), batch_norm=False, relu=unit.relu, bias=conv.bias is not None)
    unit3d.conv3d.to(device=conv.weight.device, dtype=conv.weight.dtype).train(conv.training)
    _copy_inflated_weights(conv, unit3d.conv3d)
    if unit.bn is not None:
        unit.bn.__class__ = nn.BatchNorm3d  # same state: the 3D class in place, as for a plain BatchNorm2d
        unit3d.bn = unit.bn
    return unit3d


def _inflate_max_pool(pool: nn.MaxPool2d, time_kernel: int, time_stride: int) -> nn.MaxPool3d:
    """Pads with -inf in time as in space, which for a max equals repeating the edge frames."""
    return nn.MaxPool3d((time_kernel, *_pair(pool.kernel_size)), (time_stride, *_pair(pool.stride)),
                        ((time_kernel - 1) // 2, *_pair(pool.padding)), (1, *_pair(pool.dilation)),
                        return_indices=pool.return_indices, ceil_mode=pool.ceil_mode)


def _inflate_avg_pool(pool: nn.AvgPool2d, time_kernel: int, time_stride: int, time_padding: str) -> nn.AvgPool3d:
    """A ``divisor_override`` d becomes kt * d, so that a constant-in-time input averages as in 2D."""
    time_pad = (time_kernel - 1) // 2
    replicate = time_padding == "replicate" and time_pad > 0
    divisor = None if pool.divisor_override is None else pool.divisor_override * time_kernel
    kwargs = dict(kernel_size=(time_kernel, *_pair(pool.kernel_size)), stride=(time_stride, *_pair(pool.stride)),
                  padding=(0 if replicate else time_pad, *_pair(pool.padding)), ceil_mode=pool.ceil_mode,
                  count_include_pad=pool.count_include_pad, divisor_override=divisor)
    return InflatedAvgPool3d(**kwargs, time_pad=time_pad) if replicate else nn.AvgPool3d(**kwargs)


def _check_kept(module: nn.Module, name: str) -> None:
    """Raises ValueError unless ``module`` (neither inflated nor a container) works unchanged in 3D."""
    where = f"inflate: {name or '<model>'} ({type(module).__name__})"
    if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        if module.dim != 1:
            raise ValueError(f"{where} over dim {module.dim}: only dim=1 means the same in 3D")
        return
    if type(module) in DIMENSION_AGNOSTIC:
        return
    if isinstance(module, KNOWN_2D):
        raise ValueError(f"{where} is a subclass of a 2D layer, whose forward may differ from its base class's: "
                         "not inflated")
    own_state = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    if own_state or not list(module.children()):
        raise ValueError(f"{where} cannot be inflated: not a known 2D layer "
                         f"({', '.join(t.__name__ for t in KNOWN_2D)}) nor one that works unchanged on 5D tensors "
                         "(a module with its own parameters or buffers must be one of these)")


def _inside_units(model: nn.Module) -> Set[nn.Module]:
    """The modules inside the model's Unit2D layers (inflated with their unit, as a whole)."""
    return {m for unit in model.modules() if type(unit) is layers.Unit2D for m in unit.modules() if m is not unit}


def _check_overrides(model_2d: nn.Module, overrides: Dict[str, Dict[str, int]]) -> None:
    inside = _inside_units(model_2d)
    time_layers = {name for name, m in model_2d.named_modules() if type(m) in TIME_LAYERS and m not in inside}
    for what, values in overrides.items():
        unknown = sorted(set(values) - time_layers)
        if unknown:
            raise ValueError(f"inflate: {what} names no Conv2d / MaxPool2d / AvgPool2d / layers.Unit2D / "
                             f"layers.MaxPool2d of the model (a Unit2D by its own name, not its conv's): {unknown}")
        bad = {name: v for name, v in values.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
        if bad:
            raise ValueError(f"inflate: {what} must be positive ints, got {bad}")


def inflate(model_2d: nn.Module, *, time_kernels: Optional[Dict[str, int]] = None,
            time_strides: Optional[Dict[str, int]] = None, time_padding: str = "zeros") -> nn.Module:
    """A new 3D network (input (N, C, T, H, W)) inflated from ``model_2d`` (input (N, C, H, W)), which is
    left untouched. See the module docstring for what each layer becomes.

    Args:
        model_2d: a network of Conv2d, BatchNorm2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Dropout(2d),
            Flatten, Linear, layers.Unit2D, layers.MaxPool2d, element-wise activations and containers whose
            forward code works unchanged in 3D.
        time_kernels: {module name: kt} for Conv2d / MaxPool2d / AvgPool2d / Unit2D / layers.MaxPool2d modules;
            default kt = kh for a conv or Unit2D, 1 for a pool.
        time_strides: {module name: temporal stride}; default the spatial stride ``stride[0]`` for a conv or
            Unit2D, 1 for a pool.
        time_padding: "zeros" or "replicate" (repeat the edge frames: the boring-video fixed point then holds
            at every frame; refused for a Unit2D with kt > 1).
    Returns:
        the 3D network, with the same module names and state_dict keys as ``model_2d``, each module in the
        same train / eval mode.
    Raises:
        ValueError: an unknown ``time_padding``, or "replicate" with a Unit2D of kt > 1; override names that are
            not Conv2d / MaxPool2d / AvgPool2d / Unit2D / layers.MaxPool2d modules of ``model_2d`` (nor the convs
            inside a Unit2D), or values that are not positive ints; a module that is neither a known
            2D layer nor dimension-agnostic (e.g. Conv1d, LayerNorm, a custom module with its own parameters
            or buffers), named by its path and type.
    """
    if time_padding not in TIME_PADDINGS:
        raise ValueError(f"inflate: time_padding must be one of {TIME_PADDINGS}, got {time_padding!r}")
    time_kernels, time_strides = dict(time_kernels or {}), dict(time_strides or {})
    _check_overrides(model_2d, {"time_kernels": time_kernels, "time_strides": time_strides})
    model_3d = copy.deepcopy(model_2d)
    names = {module: name for name, module in model_3d.named_modules()}
    inside_units = _inside_units(model_3d)
    inflated: Dict[nn.Module, nn.Module] = {}  # a module shared by several parents is inflated once, for all

    def inflated_version(module: nn.Module) -> Optional[nn.Module]:
        name = names[module]
        if type(module) is nn.Conv2d:
            return _inflate_conv(module, name, time_kernels.get(name, module.kernel_size[0]),
                                 time_strides.get(name, module.stride[0]), time_padding)
        if type(module) in SAME_STATE_3D:  # same attributes, parameters and buffers: the 3D class in place
            module.__class__ = SAME_STATE_3D[type(module)]
            return module
        if type(module) is nn.MaxPool2d:
            return _inflate_max_pool(module, time_kernels.get(name, 1), time_strides.get(name, 1))
        if type(module) is nn.AvgPool2d:
            return _inflate_avg_pool(module, time_kernels.get(name, 1), time_strides.get(name, 1), time_padding)
        if type(module) is nn.AdaptiveAvgPool2d:
            return nn.AdaptiveAvgPool3d((1, *_pair(module.output_size)))
        if type(module) is layers.Unit2D:
            return _inflate_unit(module, name, time_kernels.get(name, module.kernel_size[0]),
                                 time_strides.get(name, module.stride[0]), time_padding)
        if type(module) is layers.MaxPool2d:
            return layers.MaxPool3d((time_kernels.get(name, 1), *module.kernel_size),
                                    (time_strides.get(name, 1), *module.stride), module.padding)
        _check_kept(module, name)
        return None

    for module in list(names):
        new = None if module in inside_units else inflated_version(module)
        if new is not None:
            new.training = module.training  # a Unit3D's conv and BatchNorm keep their own modes
            inflated[module] = new
    for parent in list(names):
        for child_name, child in list(parent._modules.items()):  # named_children() skips repeated children
            if child in inflated:
                setattr(parent, child_name, inflated[child])
    if model_3d in inflated:  # model_2d is itself a single layer
        return inflated[model_3d]
    return model_3d
