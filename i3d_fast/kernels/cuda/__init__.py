"""CUDA C++ kernels (csrc/cuda/*.cu) compiled just in time with NVRTC through CuPy.

Sources are found in the installed package (``i3d_fast/_csrc``, copied there by setup.py) or, for
an editable install, in the repository's ``csrc/``. The ``#include "common/..."`` lines of a source
are replaced by the headers' text before compiling (:func:`source_code`), so CuPy's on-disk cache,
which keys on the code string, sees every change to a shared header. Modules are compiled once per
(file, device) and cached; kernels are launched on torch's current CUDA stream, so they order with
torch ops.
"""
from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

_PACKAGE = Path(__file__).resolve().parents[2]  # i3d_fast/


def source_root() -> Path:
    """The directory holding ``common/`` and ``cuda/`` (installed ``_csrc`` or the repo's ``csrc``)."""
    for root in (_PACKAGE / "_csrc", _PACKAGE.parent / "csrc"):
        if (root / "cuda").is_dir() and (root / "common").is_dir():
            return root
    raise FileNotFoundError(f"CUDA sources not found in {_PACKAGE / '_csrc'} or {_PACKAGE.parent / 'csrc'}; "
                            "reinstall i3d_fast (setup.py copies csrc/common and csrc/cuda into the package)")


#: A quoted include of a file under the source root, e.g. ``#include "common/tvl1.h"``.
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"((?:common|cuda)/[^"]+)"[ \t]*$', re.MULTILINE)
_PRAGMA_ONCE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+once[ \t]*$", re.MULTILINE)


def source_code(filename: str, root: Optional[Path] = None) -> str:
    """The text of ``cuda/<filename>`` with every ``#include "common/..."`` / ``"cuda/..."`` replaced by
    that file's text (recursively, each file once, as ``#pragma once`` would), with ``#line``
    directives so that compiler messages name the original files. Needs no include path."""
    root = root or source_root()
    done = set()

    def expand(rel: str) -> str:
        done.add(rel)
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"CUDA source {path} (included from the sources in {root}) is missing")
        text = path.read_text()
        lines = text.split("\n")
        out, last = [], 0
        for m in _INCLUDE.finditer(text):
            line_no = text.count("\n", 0, m.start())  # 0-based line of the include
            out.extend(lines[last:line_no])
            if m.group(1) not in done:
                out.append(f'#line 1 "{m.group(1)}"')
                out.append(_PRAGMA_ONCE.sub("", expand(m.group(1))))
            out.append(f'#line {line_no + 2} "{rel}"')
            last = line_no + 1
        out.extend(lines[last:])
        return "\n".join(out)

    return expand(f"cuda/{filename}")


def cupy_missing() -> Optional[str]:
    """Why CuPy cannot be used (None when it can)."""
    if importlib.util.find_spec("cupy") is None:
        return ("CuPy is not installed; install the `cuda` extra: pip install 'i3d-fast[cuda]' (CUDA 13 builds of "
                "torch) or 'i3d-fast[cuda12]' (CUDA 12)")
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

    with cupy.cuda.Device(device_index):
        mod = cupy.RawModule(code=source_code(filename), options=("-std=c++17", *options), backend="nvrtc")
        mod.compile()
    return mod


@functools.lru_cache(maxsize=None)
def kernel(filename: str, device_index: int, name: str):
    """The kernel ``name`` of ``csrc/cuda/<filename>`` on device ``device_index`` (looked up once)."""
    return module(filename, device_index).get_function(name)


class Launcher:
    """Launches the kernels of one compiled file on torch's current stream of ``device``.

    Use it as a context manager around a run of launches: the CuPy device and stream contexts are
    entered once, on entry (the stream is torch's current stream of ``device`` at that moment)::

        with Launcher("tvl1.cu", x.device) as run:
            run("kernel_name", grid, block, (arg, ...))
    """

    def __init__(self, filename: str, device: torch.device):
        import cupy

        self._cupy = cupy
        self.filename = filename
        self.index = device.index if device.index is not None else torch.cuda.current_device()
        module(filename, self.index)  # compile now: errors surface before any launch
        self._kernels: Dict[str, object] = {}
        self._contexts = None

    def __enter__(self) -> "Launcher":
        import contextlib

        cupy = self._cupy
        stream = torch.cuda.current_stream(self.index)
        contexts = contextlib.ExitStack()
        contexts.enter_context(cupy.cuda.Device(self.index))
        contexts.enter_context(cupy.cuda.ExternalStream(stream.cuda_stream, self.index))
        self._contexts = contexts
        return self

    def __exit__(self, *exc) -> None:
        contexts, self._contexts = self._contexts, None
        contexts.close()

    def __call__(self, name: str, grid, block, args) -> None:
        if self._contexts is None:
            raise RuntimeError("Launcher: launch kernels inside `with launcher:` (torch's stream is entered there)")
        fn = self._kernels.get(name)
        if fn is None:
            fn = self._kernels[name] = kernel(self.filename, self.index, name)
        fn(grid, block, args)


def ptr(t: torch.Tensor):
    """A tensor's device address as a kernel pointer argument."""
    import numpy as np

    return np.uint64(t.data_ptr())


