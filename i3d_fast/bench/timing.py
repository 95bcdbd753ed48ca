"""Wall-clock timing: medians and quantiles over repeated runs, providers measured side by side."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, List

import torch


@dataclass
class Timing:
    median_ms: float
    q20_ms: float
    q80_ms: float
    runs: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], repeat: int = 7, warmup: int = 1, device: str = "cpu") -> Timing:
    """Runs ``fn`` ``warmup`` times, then ``repeat`` timed times; returns median and 20/80% quantiles."""
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(dev)
    times: List[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(dev)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=5, method="inclusive") if len(times) > 1 else [times[0]] * 4
    return Timing(statistics.median(times), q[0], q[3], len(times))
