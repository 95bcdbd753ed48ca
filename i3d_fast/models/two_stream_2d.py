"""Simonyan & Zisserman's two-stream ConvNet (2014): 2D networks on a single frame (spatial stream) and
on L stacked optical-flow fields (temporal stream), late-fused.

- :class:`CNNM`: the paper's CNN-M-2048 (Chatfield et al. 2014) with BatchNorm in place of local response
  normalisation and a global average pool before the fully connected layers, so clips of any size
  from 32 pixels work (the paper's 224-pixel crops give the paper's 7x7 -> 6x6 map pooled to 1x1 here).
- :class:`FrameStream`: a 2D network applied to a clip ``Tensor[B, C, T, H, W]``: the spatial stream
  sees the clip's centre frame, the temporal stream the T flow fields stacked as 2T channels (x_1, y_1,
  x_2, y_2, ...), optionally minus each field's mean displacement (the paper's camera-motion
  compensation). Bi-directional stacking (half forward, half backward fields) is a loader option
  (``ClipSpec.bidirectional``, ``train --bidirectional``).

Clips come from the same loader as I3D's (``i3d-fast train --model two-stream-2d --clip L``): the flow
clip's T = L fields follow the spatial stream's frame window. Test-time sampling as the paper: ``evaluate
--clips-per-video 25 --ten-crop`` (25 evenly spaced windows, each as 5 crops and their mirror images).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, Tuple, Union

import torch
from torch import nn

#: safetensors metadata key holding a FrameStream's constructor arguments
CONFIG_KEY = "i3d_fast.frame_stream"
KINDS = ("spatial", "temporal")


class CNNM(nn.Module):
    """CNN-M-2048: conv1 7x7/2 -> pool 3/2 -> conv2 5x5/2 -> pool 3/2 -> conv3, conv4, conv5 3x3 -> pool
    3/2 -> global average -> fc6 -> dropout -> fc7 -> dropout -> ``logits``; BatchNorm + ReLU after every
    conv, ReLU after fc6 / fc7. ``Tensor[B, in_channels, H, W] -> Tensor[B, num_classes]`` (H, W >= 32).
    ``channels`` / ``hidden``: the widths (the paper's by default; smaller for tests)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5,
                 channels: Sequence[int] = (96, 256, 512, 512, 512), hidden: Sequence[int] = (4096, 2048)):
        super().__init__()
        if len(channels) != 5 or len(hidden) != 2:
            raise ValueError(f"CNN-M has 5 conv and 2 hidden fully connected widths, got {channels}, {hidden}")
        kernels, strides = (7, 5, 3, 3, 3), (2, 2, 1, 1, 1)
        layers = []
        width = in_channels
        for i, (out, k, s) in enumerate(zip(channels, kernels, strides)):
            layers += [nn.Conv2d(width, out, k, s, padding=k // 2, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if i in (0, 1, 4):
                layers.append(nn.MaxPool2d(3, 2, padding=1))
            width = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc6 = nn.Sequential(nn.Linear(width, hidden[0]), nn.ReLU(), nn.Dropout(dropout))
        self.fc7 = nn.Sequential(nn.Linear(hidden[0], hidden[1]), nn.ReLU(), nn.Dropout(dropout))
        self.logits = nn.Linear(hidden[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.fc7(self.fc6(self.pool(self.features(x)).flatten(1))))


class FrameStream(nn.Module):
    """One stream of the 2D two-stream ConvNet over clips (see the module docstring).

    ``kind``: "spatial" (``in_channels`` 3, the centre frame) or "temporal" (``in_channels`` 2, ``frames``
    flow fields stacked into ``2 * frames`` input channels). ``forward``: ``Tensor[B, in_channels, T, H, W]``
    (T = ``frames`` for the temporal stream) -> ``Tensor[B, num_classes]``."""

    final_endpoint = "Logits"

    def __init__(self, kind: str, num_classes: int, frames: int, mean_flow_subtraction: bool = False,
                 dropout: float = 0.5, channels: Sequence[int] = (96, 256, 512, 512, 512),
                 hidden: Sequence[int] = (4096, 2048)):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        self.kind, self.frames, self.mean_flow_subtraction = kind, frames, mean_flow_subtraction
        self.in_channels = 3 if kind == "spatial" else 2
        self.config = dict(kind=kind, num_classes=num_classes, frames=frames,
                           mean_flow_subtraction=mean_flow_subtraction, dropout=dropout, channels=list(channels),
                           hidden=list(hidden))
        stacked = self.in_channels * (frames if kind == "temporal" else 1)
        self.net = CNNM(stacked, num_classes, dropout, channels, hidden)

    @property
    def num_classes(self) -> int:
        return self.net.logits.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"the {self.kind} stream takes clips Tensor[B, {self.in_channels}, T, H, W], got "
                             f"{tuple(x.shape)}")
        if self.kind == "spatial":
            return self.net(x[:, :, x.shape[2] // 2].contiguous())
        if x.shape[2] != self.frames:
            raise ValueError(f"the temporal stream stacks {self.frames} flow fields, got a clip of {x.shape[2]}")
        if self.mean_flow_subtraction:
            x = x - x.mean(dim=(3, 4), keepdim=True)
        return self.net(x.transpose(1, 2).flatten(1, 2).contiguous())

    def replace_logits(self, num_classes: int) -> None:
        """A fresh last layer with ``num_classes`` outputs (for fine-tuning)."""
        old = self.net.logits
        self.net.logits = nn.Linear(old.in_features, num_classes).to(old.weight.device)
        self.config["num_classes"] = num_classes

    def save_pretrained(self, path: Union[str, Path]) -> None:
        """Weights and constructor arguments as safetensors, written atomically."""
        from safetensors.torch import save_file

        from .._atomic import atomic_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_file(path) as tmp:
            save_file(state, str(tmp), metadata={CONFIG_KEY: json.dumps(self.config)})

    @classmethod
    def from_pretrained(cls, path: Union[str, Path]) -> "FrameStream":
        model = load_stream(path)
        if not isinstance(model, cls):
            raise ValueError(f"{path}: an I3D network, not a two-stream-2d one (no {CONFIG_KEY} metadata)")
        return model


def read_frame_stream(path: Union[str, Path]) -> Tuple[dict, Union[dict, None]]:
    """(state_dict, FrameStream arguments or None when the file holds another network) of a safetensors
    file."""
    from safetensors import SafetensorError, safe_open

    from ..weights import WeightsError

    try:
        with safe_open(str(path), framework="pt") as f:
            config = (f.metadata() or {}).get(CONFIG_KEY)
            state = {k: f.get_tensor(k) for k in f.keys()} if config is not None else {}
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    return state, json.loads(config) if config is not None else None


def load_stream(path: Union[str, Path]) -> nn.Module:
    """A trained stream from a weights file: a :class:`FrameStream` when the file says so, else an
    :class:`InceptionI3d`."""
    from .i3d import InceptionI3d

    if Path(path).suffix == ".safetensors":
        state, config = read_frame_stream(path)
        if config is not None:
            model = FrameStream(**config)
            model.load_state_dict(state)
            return model.eval()
    return InceptionI3d.from_pretrained(str(path))
