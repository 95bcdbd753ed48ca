"""Optional dependencies (PyAV for video, matplotlib for plots): imported on first use, with an error
that says what to install when they are missing."""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependencyError(ImportError):
    """An optional dependency needed for the requested feature is not installed."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Imports ``module`` or raises :class:`MissingDependencyError` naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the {module!r} package, which is not installed ({exc}). Install it with "
            f"`pip install 'i3d-fast[{extra}]'` (or `pip install {_PIP.get(module, module)}`).") from exc


_PIP = {"PIL": "pillow"}  # import name -> pip name where they differ

