"""CUDA C++ kernels (csrc/cuda/*.cu) compiled just in time with NVRTC through CuPy.

Sources are found in the installed package (``i3d_fast/_csrc``, copied there by setup.py) or, for
an editable install, in the repository's ``csrc/``. Modules are compiled once per (file, device)
and cached; kernels are launched on torch's current CUDA stream, so they order with torch ops.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Sequence

import torch

_PACKAGE = Path(__file__).resolve().parents[2]  # i3d_fast/


def source_root() -> Path:
    """The directory holding ``common/`` and ``cuda/`` (installed ``_csrc`` or the repo's ``csrc``)."""
    for root in (_PACKAGE / "_csrc", _PACKAGE.parent / "csrc"):
        if (root / "cuda").is_dir() and (root / "common").is_dir():
            return root
    raise FileNotFoundError(f"CUDA sources not found in {_PACKAGE / '_csrc'} or {_PACKAGE.parent / 'csrc'}; "
                            "reinstall i3d_fast (setup.py copies csrc/common and csrc/cuda into the package)")


def cupy_missing() -> Optional[str]:
    """Why CuPy cannot be used (None when it can)."""
    try:
        import cupy  # noqa: F401
    except ImportError as exc:
        return f"CuPy is not installed ({exc}); install the `cuda` extra: pip install 'i3d-fast[cuda]'"
    return None


def reject_unless_cuda(x: torch.Tensor) -> Optional[str]:
    """Why the CUDA C++ kernels cannot take ``x`` (None when they can)."""
    if not x.is_cuda:
        return f"needs a CUDA tensor, got device {x.device}"
    return cupy_missing()


@functools.lru_cache(maxsize=None)
def module(filename: str, device_index: int, options: Sequence[str] = ()):
    """The CuPy RawModule of ``csrc/cuda/<filename>`` compiled for device ``device_index``."""
    import cupy

    root = source_root()
    code = (root / "cuda" / filename).read_text()
    with cupy.cuda.Device(device_index):
        mod = cupy.RawModule(code=code, options=("-std=c++17", f"-I{root}", *options), backend="nvrtc")
        mod.compile()
    return mod


class Launcher:
    """Launches the kernels of one compiled file on torch's current stream of ``device``."""

    def __init__(self, filename: str, device: torch.device):
        import cupy

        self._cupy = cupy
        self.device = device
        self.module = module(filename, device.index if device.index is not None else torch.cuda.current_device())

    def __call__(self, name: str, grid, block, args) -> None:
        cupy = self._cupy
        stream = torch.cuda.current_stream(self.device)
        with cupy.cuda.Device(self.device.index), cupy.cuda.ExternalStream(stream.cuda_stream, self.device.index):
            self.module.get_function(name)(tuple(grid), tuple(block), tuple(args))


def ptr(t: torch.Tensor):
    """A tensor's device address as a kernel pointer argument."""
    import numpy as np

    return np.uint64(t.data_ptr())


