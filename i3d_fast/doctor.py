"""``i3d-fast doctor``: what this machine can run, op by op, and why a backend is not available."""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import List

import torch

from . import __version__, malloc
from ._cpu import cpu_flags
from .bench.report import machine
from .flow import solver
from .kernels import cpu as cpu_kernels
from .kernels.cpu import autotune
from .ops.conv3d import BACKENDS as CONV3D_BACKENDS
from .ops.conv3d_bn import BACKENDS as CONV3D_BN_BACKENDS
from .ops import recompute, selfcheck
from .ops.pool3d import BACKENDS as POOL3D_BACKENDS

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def _version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return "not installed"
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as exc:  # noqa: BLE001 - a broken install is worth reporting, not raising
        return f"installed but fails to import ({type(exc).__name__}: {exc})"


def _backends(op: str, backends, *args) -> List[str]:
    """One line per backend: available, or why not, for ``args`` (asked for by name)."""
    lines = []
    for backend in backends:
        why = backend.reject(*args, explicit=True)
        lines.append(f"    {backend.name:10s} {'available' if why is None else 'no: ' + why}")
    return [f"  {op}"] + lines


def _selfcheck_line() -> str:
    """The self-check setting and, when any ran in this process, its verdicts."""
    try:
        what = {"off": "off", "all": "every Triton call", "cuda": "calls on CUDA devices"}[selfcheck.setting()]
    except ValueError as exc:
        return f"MISCONFIGURED: {exc}"
    line = f"{what} ({selfcheck.ENV}={os.environ.get(selfcheck.ENV, 'auto')}; 0 turns it off)"
    failed = [f"{variant} on {device}: {why}" for variant, device, why in selfcheck.verdicts() if why is not None]
    return line + "".join(f"\n    FAILED (runs on ATen): {f}" for f in failed)


def _timing_file_line() -> str:
    """Where the kernel timings of this machine and build persist, and how many are there."""
    path = autotune.cache_path()
    if path is None:
        return f"in memory only ({autotune.CACHE_ENV}=0 or no home folder)"
    if not path.exists():
        return f"{path} (none yet: the first call of each configuration times its kernels)"
    verdicts, choices = autotune.read_measurements(path)  # warns when unreadable
    return f"{path} ({len(verdicts) + len(choices)} measured configurations for this build)"


def report() -> str:
    """The environment and, for every op, each backend's availability on float32 inputs on the CPU
    (and on the GPU when there is one)."""
    info = machine()
    missing = cpu_kernels.reject_unless_available(torch.zeros(1))
    if missing is not None:
        extension = f"NOT BUILT: {missing}: every CPU op runs its ATen fallback, several times slower"
    else:
        avx512 = cpu_kernels.extension().conv3d_avx512
        extension = "built" + ("" if avx512 else " without AVX-512 (Winograd / GEMM kernels off)")
    lines = [
        f"i3d_fast {__version__}, torch {info['torch']}, Python {info['python']}",
        f"CPU: {info['cpu']}, {info['cpu_count']} cores, torch threads {info['threads']}, "
        f"ISA: {', '.join(f for f in ISA_FLAGS if f in cpu_flags()) or 'none of ' + ', '.join(ISA_FLAGS)}",
        f"C++ extension i3d_fast._C: {extension}",
        f"kernel selection: {'timed per layer (autotune)' if autotune.enabled() else 'fixed rules (I3D_FAST_AUTOTUNE=0)'}",
        f"kernel timings: {_timing_file_line()}",
        f"malloc: {malloc.setting()}; i3d-fast commands reuse freed memory for large tensors unless "
        "I3D_FAST_MALLOC=default",
        "training activations: " + ("remade in backward where cheap (I3D_FAST_RECOMPUTE)" if recompute.enabled()
                                    else "kept (I3D_FAST_RECOMPUTE=0)"),
        f"CUDA: {info['cuda'] or 'no GPU visible to torch'}",
        f"triton: {_version('triton')}; cupy (TV-L1 on CUDA): {_version('cupy')}; "
        f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}",
        f"Triton first-use self-check: {_selfcheck_line()}",
        "",
        "backends per op (on float32 inputs, asked for by name):",
    ]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        lines.append(f" on {device}:")
        x = torch.zeros(1, 16, 4, 8, 8, device=device).contiguous(memory_format=torch.channels_last_3d)
        w = torch.zeros(16, 16, 3, 3, 3, device=device)
        pads = ((1, 1),) * 3
        lines += _backends("conv3d (3x3x3, stride 1)", CONV3D_BACKENDS, x, w, (1, 1, 1), pads, None, False, None)
        lines += _backends("conv3d_bn_relu (training)", CONV3D_BN_BACKENDS, x)
        lines += _backends("max_pool3d / avg_pool3d", POOL3D_BACKENDS, x, "max")
        frames = torch.zeros(1, 16, 16, dtype=torch.uint8, device=device)
        lines += _backends("flow.tvl1", solver.BACKENDS, frames)
    return "\n".join(lines)
