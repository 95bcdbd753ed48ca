"""Measured choice between a C++ kernel and ATen's (oneDNN for convolutions), once per layer
configuration.

Fixed crossovers measured on one CPU do not hold on another (the Winograd kernels beat oneDNN by
2.4x on a Zen 4, whose AVX-512 runs at half width, and lose on some shapes on an Intel Xeon with
two full-width FMA units), so ``backend="auto"`` times both on the first call with a new
configuration (shapes, layout, threads) and keeps the C++ kernel only where it took at most
:data:`MARGIN` of oneDNN's time: a layer never runs slower than oneDNN would run it. Set
``I3D_FAST_AUTOTUNE=0`` for the fixed rules instead (deterministic selection, no timing runs).
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Dict, Hashable, Optional, Tuple

import torch

#: The C++ kernel is chosen when its time is at most this fraction of oneDNN's.
MARGIN = 0.95
_VERDICTS: Dict[Hashable, Tuple[float, float]] = {}


def enabled(*tensors) -> bool:
    """Autotuning is on (``I3D_FAST_AUTOTUNE`` is not "0") and ``tensors`` are ordinary tensors that
    can be timed (not the fake / symbolic tensors of tracing, which take the fixed rules)."""
    return os.environ.get("I3D_FAST_AUTOTUNE", "1") != "0" and all(type(t) in _TIMEABLE for t in tensors)


_TIMEABLE = (torch.Tensor, torch.nn.Parameter)


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def slower(key: Hashable, candidates: Callable[[], Tuple[Callable[[], object], Callable[[], object]]]) -> Optional[str]:
    """None when ``ours()`` measured at most MARGIN of ``theirs()``'s time for ``key``, else why not;
    ``candidates()`` makes (ours, theirs), only when ``key`` was not measured yet. Each runs once to
    warm up, then alternately (2 runs each; 4 when a run takes under 5 ms); the best run of each
    counts (a baseline that raises, having no kernel for the case, loses). Measured once per key per
    process."""
    hit = _VERDICTS.get(key)
    if hit is None:
        ours, theirs = candidates()
        ours()
        try:
            theirs()
        except (RuntimeError, NotImplementedError):  # ATen has no kernel for this (e.g. a bf16 backward)
            hit = _VERDICTS[key] = (_seconds(ours), math.inf)
    if hit is None:
        times: Tuple[list, list] = ([], [])
        first = _seconds(ours)
        times[0].append(first)
        times[1].append(_seconds(theirs))
        for _ in range(3 if first < 5e-3 else 1):
            times[0].append(_seconds(ours))
            times[1].append(_seconds(theirs))
        hit = _VERDICTS[key] = (min(times[0]), min(times[1]))
    mine, onednn = hit
    if mine <= MARGIN * onednn:
        return None
    return (f"measured slower than ATen / oneDNN for this configuration ({mine * 1e3:.2f} ms vs {onednn * 1e3:.2f} "
            "ms; I3D_FAST_AUTOTUNE=0 uses fixed rules)")


def verdicts() -> Dict[Hashable, Tuple[float, float]]:
    """Every measured configuration: key -> (C++ seconds, oneDNN seconds)."""
    return dict(_VERDICTS)
