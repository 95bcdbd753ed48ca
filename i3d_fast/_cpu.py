"""What the CPU can do, from /proc/cpuinfo (Linux; elsewhere nothing is known and nothing is assumed)."""
from __future__ import annotations

import functools
import platform

#: flags that mean the CPU computes bf16 natively (oneDNN emulates bf16 slowly without them)
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's "model name"; elsewhere what ``platform`` says)."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        name = None
    return name or platform.processor() or platform.machine()


def has_native_bf16() -> bool:
    """Whether the CPU has avx512_bf16 or amx_bf16."""
    return bool(BF16_FLAGS & cpu_flags())
