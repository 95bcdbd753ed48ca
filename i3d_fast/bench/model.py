"""Whole-model benchmarks: I3D RGB forward."""
from __future__ import annotations

from typing import List

import torch

from ..layers import AvgPool3d, MaxPool3d
from ..models import InceptionI3d
from .report import Row
from .timing import measure


def _set_pool_backend(model: torch.nn.Module, backend: str) -> None:
    for module in model.modules():
        if isinstance(module, (MaxPool3d, AvgPool3d)):
            module.backend = backend


def run(quick: bool = False, device: str = "cpu") -> List[Row]:
    frames = 16 if quick else 64
    repeat = 2 if quick else 3
    x = torch.randn(1, 3, frames, 224, 224, device=device).clamp(-1, 1)
    model = InceptionI3d().to(device).eval()
    case = f"I3D RGB forward [1, 3, {frames}, 224, 224] fp32"
    rows = []
    with torch.no_grad():
        _set_pool_backend(model, "aten")
        rows.append(Row("model", case, "reference model, ATen pooling", measure(lambda: model(x), repeat, device=device),
                        baseline=True))
        _set_pool_backend(model, "auto")
        rows.append(Row("model", case, "reference model, i3d_fast pooling",
                        measure(lambda: model(x), repeat, device=device)))
    return rows
