"""TV-L1 benchmarks: accuracy (EPE) and speed against OpenCV's DualTVL1OpticalFlow, side by side.

CPU: every synthetic pair kind (translation, rotation, zoom, large displacement, the reference
doc's sinusoidal field; and the doc's astronaut pair when scikit-image is installed) at 256x340, OpenCV and ours on the same pair with the same thread count
(cv2.setNumThreads = torch.get_num_threads), one pair at a time and ours also on a batch. The EPE
of each solver against the true flow goes in the row's extras, with the solver's peak extra
memory (ours: its buffers; OpenCV: not measured). CUDA: pairs/s at 224x224 and 256x340 for
batches of 1, 16, 64 ("not measured" without a GPU).
"""
from __future__ import annotations

from typing import List

import numpy as np
import torch

from .report import Row
from .timing import measure
from .tvl1_pairs import KINDS, astronaut_pair, epe, make_pair, opencv_missing

CUDA_SHAPES = ((224, 224), (256, 340))
CUDA_BATCHES = (1, 16, 64)


def _workspace_mb(h: int, w: int, nscales: int = 5, scale_step: float = 0.8) -> float:
    """The C++ solver's buffers per pair solved at once: 13 planes + the two pyramids + the output."""
    from ..kernels.reference.tvl1 import pyramid_sizes

    pyramid = sum(a * b for a, b in pyramid_sizes(h, w, nscales, scale_step))
    return (13 * h * w + 2 * pyramid + 2 * h * w) * 4 / 2**20


def _cpu_rows(quick: bool) -> List[Row]:
    from ..flow import tvl1

    missing = opencv_missing()  # the baseline only: the pairs need no OpenCV
    if missing is None:
        import cv2
    threads = torch.get_num_threads()
    h, w = (128, 160) if quick else (256, 340)
    repeat = 3 if quick else 5
    batch = max(2, threads) * (1 if quick else 2)
    rows: List[Row] = []
    pairs = [(kind, *make_pair(kind, h, w)) for kind in KINDS]
    doc_pair = None if quick else astronaut_pair()
    if doc_pair is not None:  # the reference doc's pair, when scikit-image is installed
        pairs.insert(0, ("astronaut (doc pair)", *doc_pair))
    for kind, i0, i1, truth in pairs:
        h, w = i0.shape
        case = f"TV-L1 {kind} {h}x{w} uint8, {threads} threads"
        if missing is None:
            cv2.setNumThreads(threads)
            solver = cv2.optflow.DualTVL1OpticalFlow_create()
            flow_cv = solver.calc(i0, i1, None).transpose(2, 0, 1)
            rows.append(Row("tvl1", case, "OpenCV DualTVL1 (CPU), 1 pair",
                            measure(lambda: solver.calc(i0, i1, None), repeat), baseline=True,
                            extra={"EPE": round(epe(flow_cv, truth), 4)}))
        else:
            rows.append(Row("tvl1", case, "OpenCV DualTVL1 (CPU), 1 pair", None, baseline=True, note=missing))
        ours = tvl1(i0, i1).numpy()
        rows.append(Row("tvl1", case, "i3d_fast C++, 1 pair", measure(lambda: tvl1(i0, i1), repeat),
                        extra={"EPE": round(epe(ours, truth), 4), "MiB": round(_workspace_mb(h, w), 1)}))
        a = np.ascontiguousarray(np.broadcast_to(i0, (batch, h, w)))
        b = np.ascontiguousarray(np.broadcast_to(i1, (batch, h, w)))
        timing = measure(lambda: tvl1(a, b), max(2, repeat // 2))
        per_pair = type(timing)(timing.median_ms / batch, timing.q20_ms / batch, timing.q80_ms / batch, timing.runs)
        rows.append(Row("tvl1", case, f"i3d_fast C++, batch of {batch} (time per pair)", per_pair,
                        extra={"MiB": round(batch * _workspace_mb(h, w), 1)}))
    return rows


def _cuda_rows(quick: bool, device: str) -> List[Row]:
    from ..flow import tvl1

    rows: List[Row] = []
    measured = device == "cuda" and torch.cuda.is_available()
    for h, w in CUDA_SHAPES:
        i0, i1, _ = make_pair("sinusoidal", h, w)
        for n in CUDA_BATCHES:
            case = f"TV-L1 CUDA {h}x{w} batch {n} (time per batch)"
            if not measured:
                rows.append(Row("tvl1", case, "i3d_fast CUDA", None, note="not measured (no CUDA GPU)"))
                continue
            a = torch.from_numpy(i0).cuda()[None].repeat(n, 1, 1)
            b = torch.from_numpy(i1).cuda()[None].repeat(n, 1, 1)
            torch.cuda.reset_peak_memory_stats()
            timing = measure(lambda: tvl1(a, b, backend="cuda"), 3 if quick else 5, device="cuda")
            rows.append(Row("tvl1", case, "i3d_fast CUDA", timing,
                            extra={"pairs/s": round(n / (timing.median_ms / 1e3), 1),
                                   "peak MiB": round(torch.cuda.max_memory_allocated() / 2**20, 1)}))
    return rows


def run(quick: bool = False, device: str = "cpu") -> List[Row]:
    return _cpu_rows(quick) + _cuda_rows(quick, device)
