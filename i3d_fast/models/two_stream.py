"""DeepMind's two-stream I3D: an RGB and a flow network whose logits are fused."""
from __future__ import annotations

import torch
from torch import nn

from .i3d import InceptionI3d

FUSIONS = ("sum", "mean")


class TwoStreamI3D(nn.Module):
    """RGB I3D + flow I3D; logits fused by "sum" (DeepMind's release) or "mean".

    ``forward(rgb, flow)``: rgb Tensor[B, 3, T, H, W] and flow Tensor[B, 2, T', H, W] in [-1, 1]
    (flow usually has one frame fewer) -> Tensor[B, num_classes].
    """

    def __init__(self, rgb: InceptionI3d, flow: InceptionI3d, fusion: str = "sum"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if rgb.num_classes != flow.num_classes:
            raise ValueError(f"the streams disagree on num_classes: rgb {rgb.num_classes}, flow {flow.num_classes}")
        self.rgb, self.flow, self.fusion = rgb, flow, fusion

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        logits = self.rgb(rgb) + self.flow(flow)
        return logits / 2 if self.fusion == "mean" else logits
