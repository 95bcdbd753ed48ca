"""glibc's malloc set to reuse freed memory for large tensors.

By default glibc serves every block over its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and unmaps it when freed, so each large activation of every step is page-faulted and zeroed by the
kernel again on first touch: on a 2-core Xeon, 20% of an R(2+1)D-18 inference at 2 x 16 x 112^2 and
~8-10% of an I3D training step, for stock PyTorch and this library alike. :func:`reuse_freed_memory`
raises the mmap and trim thresholds (as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` do
at start-up, or jemalloc / tcmalloc by design), so freed blocks go back to the heap and serve the next
step's tensors. The price: memory freed stays resident (the process keeps its peak). It is process-
wide; ``i3d-fast`` commands call it (``I3D_FAST_MALLOC=default`` keeps glibc's default), the library
never does on its own.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Optional

#: mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
#: blocks below this size come from the heap and go back to it when freed (1 GiB)
REUSE_THRESHOLD_BYTES = 1 << 30

_setting: Optional[str] = None


def reuse_freed_memory(threshold_bytes: int = REUSE_THRESHOLD_BYTES) -> bool:
    """Sets glibc's mmap and trim thresholds to ``threshold_bytes`` for this process, so freed large
    tensors are reused instead of re-mapped (see the module docstring); a glibc that refuses a
    threshold that high (some cap it at 32 MiB) gets no mmapped blocks at all instead
    (``M_MMAP_MAX`` 0). Returns False where the C library is not glibc or refuses both."""
    global _setting
    if not 0 < threshold_bytes < 1 << 31:
        raise ValueError(f"threshold_bytes must be in (0, 2 GiB), got {threshold_bytes}")
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(threshold_bytes)) == 1:
            how = f"mmap and trim thresholds {threshold_bytes >> 20} MiB"
        elif libc.mallopt(M_MMAP_MAX, ctypes.c_int(0)) == 1:
            how = f"no mmapped blocks, trim threshold {threshold_bytes >> 20} MiB"
        else:
            return False
        libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(threshold_bytes))
    except (OSError, AttributeError):
        return False
    _setting = f"glibc, freed memory reused ({how})"
    return True


def configure_from_environment() -> bool:
    """What the ``i3d-fast`` commands do at start: :func:`reuse_freed_memory` unless the environment
    says ``I3D_FAST_MALLOC=default``. Returns whether it was applied."""
    choice = os.environ.get("I3D_FAST_MALLOC", "reuse")
    if choice not in ("reuse", "default"):
        raise ValueError(f"I3D_FAST_MALLOC must be 'reuse' or 'default', got {choice!r}")
    return choice == "reuse" and reuse_freed_memory()


def reusing() -> bool:
    """Whether :func:`reuse_freed_memory` took effect in this process."""
    return _setting is not None


def setting() -> str:
    """How this process's malloc is set, for benchmark records."""
    return _setting or "the C library's default"
