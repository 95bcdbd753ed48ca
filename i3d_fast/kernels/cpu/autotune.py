"""Measured choice between our kernels (C++, or compositions of ATen ops such as the GEMM weight
gradient) and ATen's own (oneDNN for convolutions), once per layer configuration.

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
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch

#: The C++ kernel is chosen when its time is at most this fraction of oneDNN's.
MARGIN = 0.95
_VERDICTS: Dict[Hashable, Tuple[float, float]] = {}
_CHOICES: Dict[Hashable, Dict[str, float]] = {}


def enabled(*tensors) -> bool:
    """Autotuning is on (``I3D_FAST_AUTOTUNE`` is not "0") and ``tensors`` are ordinary tensors that
    can be timed (not the fake / symbolic tensors of tracing, which take the fixed rules)."""
    return os.environ.get("I3D_FAST_AUTOTUNE", "1") != "0" and all(type(t) in _TIMEABLE for t in tensors)


_TIMEABLE = (torch.Tensor, torch.nn.Parameter)


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _best_times(runs: Sequence[Callable[[], object]]) -> List[float]:
    """The best time (seconds) of each of ``runs``: each runs once to warm up, then in turns (2 runs
    each; 4 when one takes under 5 ms). The first (the baseline) may raise, having no kernel for
    the case (e.g. ATen's bf16 backward on some CPUs): it then counts as infinitely slow."""
    baseline, *others = runs
    for run in others:
        run()
    try:
        baseline()
    except (RuntimeError, NotImplementedError):
        baseline = None
    timed = [run for run in (baseline, *others) if run is not None]
    times: List[List[float]] = [[] for _ in timed]
    for turn in range(4):
        for run, t in zip(timed, times):
            t.append(_seconds(run))
        if turn == 1 and min(t[0] for t in times) >= 5e-3:
            break
    best = [min(t) for t in times]
    return best if baseline is not None else [math.inf, *best]


def slower(key: Hashable, candidates: Callable[[], Tuple[Callable[[], object], Callable[[], object]]]) -> Optional[str]:
    """None when ``ours()`` measured at most MARGIN of ``theirs()``'s time for ``key``, else why not;
    ``candidates()`` makes (ours, theirs), only when ``key`` was not measured yet (see
    :func:`_best_times`; a baseline that raises loses). Measured once per key per process."""
    hit = _VERDICTS.get(key)
    if hit is None:
        ours, theirs = candidates()
        onednn, mine = _best_times([theirs, ours])
        hit = _VERDICTS[key] = (mine, onednn)
    mine, onednn = hit
    if mine <= MARGIN * onednn:
        return None
    return (f"measured slower than ATen / oneDNN for this configuration ({mine * 1e3:.2f} ms vs {onednn * 1e3:.2f} "
            "ms; I3D_FAST_AUTOTUNE=0 uses fixed rules)")


def fastest(key: Hashable, candidates: Callable[[], Sequence[Tuple[str, Callable[[], object]]]]) -> str:
    """The name of the fastest of ``candidates()`` = [(name, run), ...] for ``key``, the first being
    the ATen / oneDNN baseline: another is chosen only when it took at most MARGIN of the baseline's
    time. ``candidates()`` is called only when ``key`` was not measured yet (see :func:`_best_times`;
    a lone baseline is not timed). Measured once per key per process; :func:`choices` lists the times."""
    hit = _CHOICES.get(key)
    if hit is None:
        named = list(candidates())
        times = _best_times([run for _, run in named]) if len(named) > 1 else [0.0]  # no choice: not timed
        hit = _CHOICES[key] = dict(zip((name for name, _ in named), times))
    baseline, *others = hit
    best = min(others, key=hit.__getitem__, default=None)
    return best if best is not None and hit[best] <= MARGIN * hit[baseline] else baseline


def verdicts() -> Dict[Hashable, Tuple[float, float]]:
    """Every configuration measured by :func:`slower`: key -> (C++ seconds, oneDNN seconds)."""
    return dict(_VERDICTS)


def choices() -> Dict[Hashable, Dict[str, float]]:
    """Every configuration measured by :func:`fastest`: key -> {candidate: seconds}."""
    return {key: dict(times) for key, times in _CHOICES.items()}
