"""Pooling benchmarks: every pooling shape of I3D at 64x224x224, ours vs ATen, channels_last_3d."""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from ..ops import avg_pool3d, max_pool3d
from .report import Row
from .timing import measure

# (name, input [N, C, T, H, W], kernel, stride, padding) of I3D on a 64x224x224 clip.
I3D_POOLS = (
    ("MaxPool3d_2a_3x3", (1, 64, 32, 112, 112), (1, 3, 3), (1, 2, 2), "same"),
    ("MaxPool3d_3a_3x3", (1, 192, 32, 56, 56), (1, 3, 3), (1, 2, 2), "same"),
    ("Mixed_3b.b3a", (1, 192, 32, 28, 28), (3, 3, 3), (1, 1, 1), "same"),
    ("MaxPool3d_4a_3x3", (1, 480, 32, 28, 28), (3, 3, 3), (2, 2, 2), "same"),
    ("Mixed_4b.b3a", (1, 480, 16, 14, 14), (3, 3, 3), (1, 1, 1), "same"),
    ("MaxPool3d_5a_2x2", (1, 832, 16, 14, 14), (2, 2, 2), (2, 2, 2), "same"),
    ("Mixed_5b.b3a", (1, 832, 8, 7, 7), (3, 3, 3), (1, 1, 1), "same"),
    ("Logits.avg_pool", (1, 1024, 8, 7, 7), (2, 7, 7), (1, 1, 1), "valid"),
)


def run(quick: bool = False, device: str = "cpu") -> List[Row]:
    rows: List[Row] = []
    repeat = 3 if quick else 9
    for name, shape, kernel, stride, padding in I3D_POOLS:
        if quick:
            shape = shape[:2] + (max(shape[2] // 4, kernel[0]),) + shape[3:]
        x = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last_3d)
        is_avg = name.startswith("Logits")
        ours = avg_pool3d if is_avg else max_pool3d
        aten = F.avg_pool3d if is_avg else F.max_pool3d
        case = f"{name} {list(shape)} k{kernel} s{stride} {padding.upper()} fwd fp32"
        with torch.no_grad():
            # Baseline: what the same result costs with ATen (SAME max pooling needs a -inf pad first).
            rows.append(Row("pool3d", case, "ATen", measure(lambda: ours(x, kernel, stride, padding, backend="aten"),
                                                            repeat, device=device), baseline=True))
            if padding == "same":
                rows.append(Row("pool3d", case, "ATen kernel alone (VALID, less output)",
                                measure(lambda: aten(x, kernel, stride), repeat, device=device)))
            rows.append(Row("pool3d", case, "i3d_fast", measure(lambda: ours(x, kernel, stride, padding), repeat,
                                                                  device=device)))
    return rows
