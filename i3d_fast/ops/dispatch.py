"""Backend selection shared by every op.

Each op lists its backends in "auto" priority order. A backend says why it cannot run the given
inputs (or ``None`` when it can); when none fits, :class:`NoBackendError` names every backend and
its reason.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch


class NoBackendError(RuntimeError):
    """No backend of an op can run the given inputs."""


@dataclass(frozen=True)
class Backend:
    name: str
    #: ``reject(*args, explicit=bool)``: why this backend cannot run the op's inputs, or None if it
    #: can. ``explicit`` is True when the caller asked for this backend by name.
    reject: Callable[..., Optional[str]]
    #: Returns the module holding the backend's kernels (imported on first use).
    impl: Callable[[], object]


def select(op: str, requested: str, backends: Sequence[Backend], *args) -> Backend:
    """The first backend (in priority order) that accepts ``args``, or the one ``requested``."""
    names = [b.name for b in backends]
    if requested != "auto" and requested not in names:
        raise ValueError(f"{op}: unknown backend {requested!r}; choose 'auto' or one of {names}")
    reasons: Dict[str, str] = {}
    for b in backends:
        if requested not in ("auto", b.name):
            continue
        why = b.reject(*args, explicit=requested == b.name)
        if why is None:
            return b
        reasons[b.name] = why
    lines = "\n".join(f"  {name}: {why}" for name, why in reasons.items())
    raise NoBackendError(
        f"{op}: no backend can run these inputs (requested {requested!r}; backends: {', '.join(names)}):\n{lines}"
    )


def triton_interpreting() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def reject_unless_triton_device(x: torch.Tensor, explicit: bool) -> Optional[str]:
    """Triton runs CUDA tensors; CPU tensors only through the interpreter (TRITON_INTERPRET=1) and
    only when asked for by name, since interpreting is far slower than the CPU kernels."""
    if x.is_cuda:
        why = None
    elif x.device.type == "cpu" and triton_interpreting():
        why = None if explicit else "runs CPU tensors (interpreted) only when requested with backend='triton'"
    else:
        return f"needs a CUDA tensor (or a CPU tensor with TRITON_INTERPRET=1), got device {x.device}"
    return why or (None if _triton_installed() else "the triton package is not installed")


@functools.lru_cache(maxsize=1)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def reject_dtype(x: torch.Tensor, allowed: Sequence[torch.dtype]) -> Optional[str]:
    if x.dtype in allowed:
        return None
    names = ", ".join(str(d).replace("torch.", "") for d in allowed)
    return f"supports {names}, got {str(x.dtype).replace('torch.', '')}"
