"""Measured choice between our kernels (C++, or compositions of ATen ops such as the GEMM weight
gradient) and ATen's own (oneDNN for convolutions), once per layer configuration.

Fixed crossovers measured on one CPU do not hold on another (the Winograd kernels beat oneDNN by
2.4x on a Zen 4, whose AVX-512 runs at half width, and lose on some shapes on an Intel Xeon with
two full-width FMA units), so ``backend="auto"`` times both on the first call with a new
configuration (shapes, layout, threads) and keeps the C++ kernel only where it took at most
:data:`MARGIN` of oneDNN's time: a layer never runs slower than oneDNN would run it. Set
``I3D_FAST_AUTOTUNE=0`` for the fixed rules instead (deterministic selection, no timing runs).

The measurements are kept on disk (:func:`cache_path`, JSON), so the next process on the same machine
skips them (an I3D training step at 2 x 16 x 224^2 spends ~12 s on them, an inference call a few
seconds). One file per fingerprint (:func:`fingerprint`: CPU model, torch, the kernels' build), so
several environments on one machine (or a home folder shared by several machines) keep their own.
``I3D_FAST_AUTOTUNE_CACHE=0`` keeps them in memory only, ``I3D_FAST_AUTOTUNE_CACHE=<folder>`` puts the
files elsewhere; delete the file to re-time.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Hashable, Iterator, List, Optional, Sequence, Tuple

import torch

from ..._atomic import atomic_write
from ..._cpu import cpu_model

#: The C++ kernel is chosen when its time is at most this fraction of oneDNN's.
MARGIN = 0.95
_VERDICTS: Dict[Hashable, Tuple[float, float]] = {}
_CHOICES: Dict[Hashable, Dict[str, float]] = {}
CACHE_ENV = "I3D_FAST_AUTOTUNE_CACHE"
#: The on-disk format (bumped when keys or values change meaning).
CACHE_FORMAT = 1


def cache_dir() -> Optional[Path]:
    """The folder of the measurement files: ``$I3D_FAST_AUTOTUNE_CACHE`` ("0": none, in memory only),
    else ``$XDG_CACHE_HOME/i3d_fast`` (``~/.cache/i3d_fast``; none where there is no home folder)."""
    value = os.environ.get(CACHE_ENV, "")
    if value == "0":
        return None
    if value:
        return Path(value)
    try:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "i3d_fast"
    except RuntimeError:  # no HOME and no passwd entry (e.g. a container with an arbitrary uid)
        return None


def cache_path() -> Optional[Path]:
    """This machine's and build's file of measurements in :func:`cache_dir` (None: in memory only)."""
    folder = cache_dir()
    if folder is None:
        return None
    digest = hashlib.sha256(json.dumps(fingerprint(), sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"autotune-{digest}.json"


@functools.lru_cache(maxsize=1)
def fingerprint() -> Dict[str, str]:
    """What the measurements depend on besides their keys: CPU model, torch, and the kernels' build
    (hashes of the C++ extension and of the Python kernels and ops, whose keys and candidates they are)."""
    build = hashlib.sha256()
    spec = importlib.util.find_spec("i3d_fast._C")
    if spec is not None and spec.origin and os.path.isfile(spec.origin):
        build.update(Path(spec.origin).read_bytes())
    package = Path(__file__).resolve().parents[2]
    for source in sorted([*package.glob("kernels/**/*.py"), *package.glob("ops/*.py")]):
        build.update(source.read_bytes())
    return {"format": str(CACHE_FORMAT), "cpu": cpu_model(), "torch": torch.__version__,
            "build": build.hexdigest()[:16]}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` + ".lock" (fcntl; where there is none, no lock)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_measurements(path: Path) -> Tuple[Dict, Dict]:
    """(verdicts, choices) stored in ``path`` for this fingerprint; empty when absent, foreign or
    unreadable (warned: the file is rewritten on the next measurement)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return {}, {}
    except (OSError, ValueError) as exc:
        warnings.warn(f"i3d_fast: ignoring the kernel timing cache {path} ({exc}); it will be rewritten",
                      stacklevel=3)
        return {}, {}
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint():
        return {}, {}
    verdicts, choices = data.get("verdicts"), data.get("choices")
    return (verdicts if isinstance(verdicts, dict) else {}), (choices if isinstance(choices, dict) else {})


_UNREAD = object()


class _Persisted:
    """The measurements read from :func:`cache_path`: keys are ``repr`` of the in-memory keys;
    verdicts [C++ seconds, oneDNN seconds], choices [[name, seconds], ...] with the baseline first."""

    def __init__(self):
        self.verdicts: Dict[str, list] = {}
        self.choices: Dict[str, list] = {}
        self.loaded_from: object = _UNREAD  # the path read (None: persistence off)
        self.unwritable: Optional[Path] = None

    def sync(self) -> None:
        """(Re)reads the file when the configured path changed since the last read."""
        path = cache_path()
        if path != self.loaded_from:
            self.loaded_from = path
            self.verdicts, self.choices = read_measurements(path) if path else ({}, {})

    def save(self, kind: str, key: Hashable, value: list) -> None:
        """Adds one measurement and rewrites the file under a lock, merged with what other processes
        wrote since; a file that cannot be written is warned about once and given up for this process."""
        path = cache_path()
        if path is None or path != self.loaded_from or path == self.unwritable:
            return
        (self.verdicts if kind == "verdicts" else self.choices)[repr(key)] = value
        try:
            with _locked(path):
                verdicts, choices = read_measurements(path)
                verdicts.update(self.verdicts)
                choices.update(self.choices)
                with atomic_write(path, "w", encoding="utf-8") as f:
                    json.dump({"fingerprint": fingerprint(), "verdicts": verdicts, "choices": choices}, f)
        except OSError as exc:
            warnings.warn(f"i3d_fast: cannot write the kernel timing cache {path} ({exc}); timings are kept "
                          f"in memory only (set {CACHE_ENV}=0 to silence this)", stacklevel=3)
            self.unwritable = path


_PERSISTED = _Persisted()


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
    :func:`_best_times`; a baseline that raises loses). Measured once per key per machine (see
    :func:`cache_path`)."""
    hit = _VERDICTS.get(key)
    if hit is None:
        _PERSISTED.sync()
        stored = _PERSISTED.verdicts.get(repr(key))
        if isinstance(stored, list) and len(stored) == 2:
            hit = _VERDICTS[key] = (float(stored[0]), float(stored[1]))
    if hit is None:
        ours, theirs = candidates()
        onednn, mine = _best_times([theirs, ours])
        hit = _VERDICTS[key] = (mine, onednn)
        _PERSISTED.save("verdicts", key, [mine, onednn])
    mine, onednn = hit
    if mine <= MARGIN * onednn:
        return None
    return (f"measured slower than ATen / oneDNN for this configuration ({mine * 1e3:.2f} ms vs {onednn * 1e3:.2f} "
            "ms; I3D_FAST_AUTOTUNE=0 uses fixed rules)")


def fastest(key: Hashable, candidates: Callable[[], Sequence[Tuple[str, Callable[[], object]]]]) -> str:
    """The name of the fastest of ``candidates()`` = [(name, run), ...] for ``key``, the first being
    the ATen / oneDNN baseline: another is chosen only when it took at most MARGIN of the baseline's
    time. ``candidates()`` is called only when ``key`` was not measured yet (see :func:`_best_times`;
    a lone baseline is not timed). Measured once per key per machine (see :func:`cache_path`);
    :func:`choices` lists the times."""
    hit = _CHOICES.get(key)
    if hit is None:
        _PERSISTED.sync()
        stored = _PERSISTED.choices.get(repr(key))
        if isinstance(stored, list) and stored and all(isinstance(pair, list) and len(pair) == 2 for pair in stored):
            hit = _CHOICES[key] = {str(name): float(t) for name, t in stored}
    if hit is None:
        named = list(candidates())
        times = _best_times([run for _, run in named]) if len(named) > 1 else [0.0]  # no choice: not timed
        hit = _CHOICES[key] = dict(zip((name for name, _ in named), times))
        if len(named) > 1:
            _PERSISTED.save("choices", key, [[name, t] for name, t in hit.items()])
    baseline, *others = hit
    best = min(others, key=hit.__getitem__, default=None)
    return best if best is not None and hit[best] <= MARGIN * hit[baseline] else baseline


def verdicts() -> Dict[Hashable, Tuple[float, float]]:
    """Every configuration measured by :func:`slower`: key -> (C++ seconds, oneDNN seconds)."""
    return dict(_VERDICTS)


def choices() -> Dict[Hashable, Dict[str, float]]:
    """Every configuration measured by :func:`fastest`: key -> {candidate: seconds}."""
    return {key: dict(times) for key, times in _CHOICES.items()}
