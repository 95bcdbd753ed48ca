"""Inception-v1 with BatchNorm as a 2D image network: the per-frame counterpart of :class:`InceptionI3d`, whose
ImageNet weights bootstrap I3D (Carreira & Zisserman 2017, "Quo Vadis", section 2.4).

:class:`InceptionV1` has InceptionI3d's module names and state_dict keys (the conv weights (O, I, kh, kw)
instead of (O, I, kt, kh, kw)), TF "SAME" padding, BatchNorm eps 1e-3 and the head's VALID 7x7 average pool.
``inflate(InceptionV1(), time_kernels=I3D_TIME_KERNELS, time_strides=I3D_TIME_STRIDES)`` computes what
InceptionI3d computes; :meth:`InceptionI3d.from_2d` loads its state_dict into an InceptionI3d.

The boring-video fixed point of the bootstrapped I3D (eval mode): on a clip made of one image repeated, the
Mixed_5c frames whose temporal receptive field lies inside the clip equal InceptionV1's Mixed_5c features on
that image (up to rounding). Nothing is promised for the others (the frames at the clip's ends differ, others
may come close where ReLUs and max pools mask the edge effects), nor for the time-averaged logits: I3D pads
time with zeros (TF SAME) in its convolutions; its max pools ignore padding, which keeps the fixed point.
A Mixed_5c frame sees 99 frames (time strides 2, 2 and 2), so the first exact one takes a clip of 101 frames
(SAME padding's alignment); a clip of T >= 101 frames has exact Mixed_5c frames 6 .. 6 + (T - 101) // 8, of
ceil(T / 8).
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Tuple, Type, TypeVar, Union

import torch
from torch import nn

from ..inflate import inflate
from ..layers import MaxPool2d, Unit2D
from ..weights import WeightsError, load_state, read_weights_file
from .i3d import ARCHITECTURE, ENDPOINTS, HEAD_POOL

#: Time kernel of each InceptionModule branch in I3D: 3 where the 2D branch has a 3x3 conv or pool.
MIXED_BRANCH_TIME_KERNELS: Dict[str, int] = {"b0": 1, "b1a": 1, "b1b": 3, "b2a": 1, "b2b": 3, "b3a": 3, "b3b": 1}
STEM_WEIGHT, LOGITS_WEIGHT = "Conv3d_1a_7x7.conv3d.weight", "logits.conv3d.weight"


class InceptionModule2D(nn.Module):
    """:class:`InceptionModule` per frame: four branches on one input, concatenated on channels: 1x1 |
    1x1 -> 3x3 | 1x1 -> 3x3 | 3x3 max pool (SAME, stride 1) -> 1x1.

    Tensor[N, in_channels, H, W] -> Tensor[N, b0 + b1b + b2b + b3b, H, W].
    """

    def __init__(self, in_channels: int, widths: Tuple[int, ...]):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3b = widths
        self.b0 = Unit2D(in_channels, b0)
        self.b1a = Unit2D(in_channels, b1a)
        self.b1b = Unit2D(b1a, b1b, 3)
        self.b2a = Unit2D(in_channels, b2a)
        self.b2b = Unit2D(b2a, b2b, 3)
        self.b3a = MaxPool2d(3, 1, "same")
        self.b3b = Unit2D(in_channels, b3b)
        self.out_channels = b0 + b1b + b2b + b3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionV1(nn.Module):
    """Inception-v1 with BatchNorm (GoogLeNet + BN), the 2D network that I3D inflates, laid out and named as
    :class:`InceptionI3d` (endpoints Conv3d_1a_7x7 ... Mixed_5c, then ``head_pool``, ``dropout``, ``logits``).

    Args:
        num_classes: size of the Logits head (1000 for ImageNet).
        in_channels: 3 for RGB.
        dropout: drop probability before the Logits conv.

    ``forward``: Tensor[N, in_channels, H, W] in [-1, 1], H and W at least 193 (224 standard) for the VALID 7x7
    head pool -> Tensor[N, num_classes] (pre-softmax, averaged over the positions of the head).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout is a drop probability in [0, 1), got {dropout}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        channels = in_channels
        for name, spec in ARCHITECTURE:  # the 3D layout without its time entries
            if spec[0] == "unit":
                module: nn.Module = Unit2D(channels, spec[1], spec[2][1:], spec[3][1:])
                channels = spec[1]
            elif spec[0] == "max":
                module = MaxPool2d(spec[1][1:], spec[2][1:], "same")
            else:
                module = InceptionModule2D(channels, spec[1])
                channels = module.out_channels
            self.add_module(name, module)
        self.feature_channels = channels
        self.head_pool = nn.AvgPool2d(HEAD_POOL[1:], stride=1)
        self.dropout = nn.Dropout(dropout)
        self.logits = Unit2D(channels, num_classes, batch_norm=False, relu=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extract_features(x, "Logits")

    def extract_features(self, x: torch.Tensor, endpoint: str = "Mixed_5c") -> torch.Tensor:
        """Output of ``endpoint`` (one of :data:`ENDPOINTS`): Tensor[N, C, H', W'], or Tensor[N, num_classes]
        for "Logits". Written for any number of dimensions, so that the inflated network runs it on
        Tensor[N, C, T, H, W] (then Tensor[N, C, T', H', W'], or the logits averaged over time as well)."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; choose one of {ENDPOINTS}")
        if x.dim() < 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"InceptionV1 expects Tensor[N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        for name in ENDPOINTS[: ENDPOINTS.index(endpoint) + 1]:
            x = self._head(x) if name == "Logits" else getattr(self, name)(x)
        return x

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c features Tensor[N, C, *S] -> Tensor[N, num_classes]: VALID 7x7 average pool, dropout, 1x1
        conv, mean over the remaining positions."""
        return self.logits(self.dropout(self.head_pool(x))).flatten(2).mean(2)


def _i3d_time_choices() -> Tuple[Dict[str, int], Dict[str, int]]:
    """I3D's time kernel and time stride of every Unit2D and pool of :class:`InceptionV1`, by module name: the time
    entries of :data:`ARCHITECTURE`, :data:`MIXED_BRANCH_TIME_KERNELS` (stride 1), the 2x7x7 head pool (stride 1)
    and the 1x1x1 logits."""
    kernels: Dict[str, int] = {}
    strides: Dict[str, int] = {}
    for name, spec in ARCHITECTURE:
        if spec[0] == "mixed":
            for branch, kernel in MIXED_BRANCH_TIME_KERNELS.items():
                kernels[f"{name}.{branch}"], strides[f"{name}.{branch}"] = kernel, 1
        else:
            kernel_size, stride = spec[-2:]  # ("unit", channels, kernel, stride) or ("max", kernel, stride)
            kernels[name], strides[name] = kernel_size[0], stride[0]
    kernels["head_pool"], strides["head_pool"] = HEAD_POOL[0], 1
    kernels["logits"], strides["logits"] = 1, 1
    return kernels, strides


#: ``inflate`` arguments that turn :class:`InceptionV1` into :class:`InceptionI3d`: every conv's time kernel is its
#: spatial size (Conv3d_1a_7x7: 7, time stride 2), MaxPool3d_2a/3a keep time, MaxPool3d_4a_3x3 is 3 (stride 2),
#: MaxPool3d_5a_2x2 2 (stride 2), the branch pools b3a 3 (stride 1), the head pool 2 (2x7x7, stride 1).
I3D_TIME_KERNELS, I3D_TIME_STRIDES = _i3d_time_choices()

I3D = TypeVar("I3D", bound=nn.Module)


#: torchvision's GoogLeNet module names -> ours (same widths; its "branch3" has a 3x3 conv, as TF-Slim's)
GOOGLENET_UNITS = {"conv1": "Conv3d_1a_7x7", "conv2": "Conv3d_2b_1x1", "conv3": "Conv3d_2c_3x3"}
GOOGLENET_BLOCKS = {"inception3a": "Mixed_3b", "inception3b": "Mixed_3c", "inception4a": "Mixed_4b",
                    "inception4b": "Mixed_4c", "inception4c": "Mixed_4d", "inception4d": "Mixed_4e",
                    "inception4e": "Mixed_4f", "inception5a": "Mixed_5b", "inception5b": "Mixed_5c"}
GOOGLENET_BRANCHES = {"branch1": "b0", "branch2.0": "b1a", "branch2.1": "b1b", "branch3.0": "b2a", "branch3.1": "b2b",
                      "branch4.1": "b3b"}


def is_googlenet_layout(state: Mapping[str, torch.Tensor]) -> bool:
    return "conv1.conv.weight" in state and "fc.weight" in state


def from_googlenet_layout(state: Mapping[str, torch.Tensor], where: str = "state_dict") -> Dict[str, torch.Tensor]:
    """A torchvision-layout GoogLeNet state_dict (``conv1.conv.weight``, ``inception3a.branch2.1.bn.*``,
    ``fc.*``; BatchNorm, eps 1e-3) renamed to :class:`InceptionV1`'s keys; the auxiliary classifiers
    (``aux1.*``, ``aux2.*``) are dropped and ``fc`` becomes the 1x1 logits conv. The weights are the same
    numbers; the networks differ only in padding (torchvision pads symmetrically and pools with
    ``ceil_mode``, InceptionV1 pads as TF "SAME"), so ImageNet accuracy carries over approximately."""
    out: Dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith(("aux1.", "aux2.")):
            continue
        module, _, rest = key.partition(".")
        if module == "fc" and rest in ("weight", "bias"):
            out[f"logits.conv3d.{rest}"] = value[:, :, None, None] if rest == "weight" else value
            continue
        if module in GOOGLENET_UNITS:
            name, tail = GOOGLENET_UNITS[module], rest
        elif module in GOOGLENET_BLOCKS:
            branch = next((b for b in GOOGLENET_BRANCHES if rest.startswith(b + ".")), None)
            if branch is None:
                unknown.append(key)
                continue
            name, tail = f"{GOOGLENET_BLOCKS[module]}.{GOOGLENET_BRANCHES[branch]}", rest[len(branch) + 1:]
        else:
            unknown.append(key)
            continue
        layer, _, field = tail.partition(".")
        if layer not in ("conv", "bn"):
            unknown.append(key)
            continue
        out[f"{name}.{'conv3d' if layer == 'conv' else 'bn'}.{field}"] = value
    if unknown:
        raise WeightsError(f"{where}: {len(unknown)} tensors of no GoogLeNet layer, e.g. {unknown[:4]}")
    return out


def i3d_from_inception_v1(cls: Type[I3D], source: Union[Mapping[str, torch.Tensor], str, os.PathLike],
                          **kwargs) -> I3D:
    """``cls`` (InceptionI3d) bootstrapped from :class:`InceptionV1` weights: a state_dict, or a ``.safetensors`` /
    ``.pt`` / ``.pth`` file of one (read without unpickling code); a torchvision-layout GoogLeNet state_dict is
    renamed first (:func:`from_googlenet_layout`). InceptionV1 is built and loaded strictly,
    inflated with :data:`I3D_TIME_KERNELS` / :data:`I3D_TIME_STRIDES`, and its state_dict loaded into
    ``cls(**kwargs)``; ``num_classes`` and ``in_channels`` come from the weights. Returned on the CPU, in eval mode.

    Raises:
        WeightsError: an unreadable file; a missing, unexpected, misshapen or non-finite tensor (named);
            ``num_classes`` / ``in_channels`` in ``kwargs`` that the weights contradict.
        TypeError: ``source`` is neither a mapping nor a path.
    """
    if isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        state, _ = read_weights_file(where)
    elif isinstance(source, Mapping):
        where, state = "state_dict", dict(source)
    else:
        raise TypeError(f"from_2d expects an InceptionV1 state_dict or a path to one, got {type(source).__name__}")
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise WeightsError(f"{where}: expected a dict of tensors; not tensors: {not_tensors[:4]}")
    if is_googlenet_layout(state):
        state = from_googlenet_layout(state, where)
    for key, arg, dim in ((LOGITS_WEIGHT, "num_classes", 0), (STEM_WEIGHT, "in_channels", 1)):
        if key not in state:
            raise WeightsError(f"{where}: {key} is missing (not an InceptionV1 state_dict)")
        if state[key].dim() != 4:
            raise WeightsError(f"{where}: {key} has shape {tuple(state[key].shape)}, not a 2D conv weight "
                               "(O, I, kh, kw); for I3D weights use InceptionI3d.from_pretrained")
        found = state[key].shape[dim]
        if kwargs.setdefault(arg, found) != found:
            hint = " (build with the weights' head, then replace_logits())" if arg == "num_classes" else ""
            raise WeightsError(f"{where}: the weights have {arg}={found}, not {kwargs[arg]}{hint}")
    model_2d = InceptionV1(kwargs["num_classes"], kwargs["in_channels"])
    unexpected = sorted(set(state) - set(model_2d.state_dict()))
    if unexpected:
        raise WeightsError(f"{where}: {len(unexpected)} tensors are not InceptionV1's, e.g. {unexpected[:4]}")
    load_state(model_2d, state, where)
    inflated = inflate(model_2d.eval(), time_kernels=I3D_TIME_KERNELS, time_strides=I3D_TIME_STRIDES)
    model = cls(**kwargs)
    load_state(model, inflated.state_dict(), where)
    return model.eval()
