"""Wall-clock timing: medians and quantiles over repeated runs, providers measured side by side."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

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
    return summarise(times)


def summarise(times: List[float]) -> Timing:
    """Median and 20/80% quantiles of ``times`` (ms)."""
    times = sorted(times)
    q = statistics.quantiles(times, n=5, method="inclusive") if len(times) > 1 else [times[0]] * 4
    return Timing(statistics.median(times), q[0], q[3], len(times))


def measure_interleaved(fns: Sequence[Callable[[], object]], repeat: int = 7, warmup: int = 1,
                        device: str = "cpu") -> List[Timing]:
    """Like :func:`measure` for several providers at once, taking turns run by run so that a
    noisy machine's slow spells fall on all of them alike."""
    dev = torch.device(device)
    for fn in fns:
        for _ in range(warmup):
            fn()
    _sync(dev)
    times: List[List[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            _sync(dev)
            t.append((time.perf_counter() - start) * 1e3)
    return [summarise(t) for t in times]


def first_call_seconds(fn: Callable[[], object], device: str = "cpu") -> float:
    """Seconds of one call of ``fn``: for a ``torch.compile``d workload, its compile time (reported
    apart from the steady-state timings, which start after it)."""
    start = time.perf_counter()
    fn()
    _sync(torch.device(device))
    return time.perf_counter() - start


def _status_kib(field: str) -> int:
    """A KiB field of /proc/self/status, e.g. VmRSS (resident set) or VmHWM (its peak; unlike
    ru_maxrss it restarts at exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _peak_rss_kib() -> int:
    return _status_kib("VmHWM")


def peak_rss_mb(fn: Callable[[], object]) -> float:
    """Growth of this process's peak resident set size while ``fn`` runs, in MiB. Meaningful only
    in a fresh process (see :func:`number_in_subprocess`): a peak reached earlier hides it."""
    before = _peak_rss_kib()
    fn()
    return (_peak_rss_kib() - before) / 1024


def steady_peak_rss_mb(fn: Callable[[], object]) -> Optional[float]:
    """Growth of the resident set's peak over a second call of ``fn``, in MiB: after a first call
    (one-off work: kernel timing, caches), freed heap memory is handed back (glibc ``malloc_trim``)
    and the peak is reset (``/proc/self/clear_refs``), so the number is what every later call needs
    above what stays resident between calls. None where the peak cannot be reset."""
    fn()
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except (OSError, AttributeError):
        return None
    before = _status_kib("VmRSS")
    fn()
    return (_peak_rss_kib() - before) / 1024


#: glibc's malloc with a fixed mmap threshold: without it, freeing a large block raises the threshold
#: (up to 32 MiB), later blocks below it come from the heap, and freed heap memory stays resident.
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def number_in_subprocess(module: str, *args: str, env: Optional[Dict[str, str]] = None) -> Optional[float]:
    """Runs ``python -m <module> <args>`` in a fresh interpreter, which prints one number last (e.g. the
    MiB of its workload's :func:`peak_rss_mb`, so that each provider's peak is its own, or a first
    call's seconds), and returns it (None when the run fails); ``env``: extra environment variables
    (e.g. :data:`FIXED_MMAP_THRESHOLD`)."""
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env})
    if done.returncode != 0:
        return None
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
