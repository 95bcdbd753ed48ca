"""C++ CPU kernels from the ``i3d_fast._C`` extension, wrapped for tensors."""
from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch


@functools.lru_cache(maxsize=1)
def _load():
    """(the extension module, None), or (None, why it failed to import), warning once when it is missing."""
    try:
        from ... import _C
    except ImportError as exc:
        warnings.warn(f"i3d_fast._C (the C++ CPU kernels) is not built ({exc}): every CPU op runs its ATen "
                      "fallback, several times slower. Install with `pip install .` (needs g++) or build in "
                      "place with `python setup.py build_ext --inplace`; `i3d-fast doctor` lists every backend.",
                      RuntimeWarning, stacklevel=3)
        return None, str(exc)
    return _C, None


class _Profiled:
    """The extension module whose functions, while ``torch.profiler`` records, appear in the trace
    under their own names (``i3d_fast._C.winograd3d_forward``, ...) instead of inside the op that
    called them."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name: str):
        attr = getattr(self._module, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if not torch.autograd._profiler_enabled():
                return attr(*args, **kwargs)
            with torch.profiler.record_function(f"i3d_fast._C.{name}"):
                return attr(*args, **kwargs)

        setattr(self, name, call)  # wrapped once: later lookups find it without __getattr__
        return call


@functools.lru_cache(maxsize=1)
def _profiled() -> _Profiled:
    return _Profiled(_load()[0])


def extension():
    """The compiled extension module; raises ImportError with a build hint when it is missing."""
    module, error = _load()
    if module is None:
        raise ImportError(
            f"i3d_fast._C (the C++ CPU kernels) is not built: {error}. Install the package with "
            "`pip install .` (needs g++), or build in place with `python setup.py build_ext --inplace`."
        )
    return _profiled()


def reject_unless_available(x: torch.Tensor) -> Optional[str]:
    """Why the C++ CPU kernels cannot take ``x`` (None when they can)."""
    if x.device.type != "cpu":
        return f"needs a CPU tensor, got device {x.device}"
    if _load()[0] is None:
        return f"the C++ extension i3d_fast._C is not built ({_load()[1]})"
    return None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def empty_weight_grad(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised gradient for ``weight`` with its strides where it is contiguous or
    channels_last_3d (so autograd accumulates it without a copy), else contiguous."""
    if weight.is_contiguous() or weight.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.empty_like(weight, dtype=dtype)
    return torch.empty(weight.shape, dtype=dtype, device=weight.device)


def threads() -> int:
    """Threads the C++ kernels use: torch's intra-op thread count."""
    return torch.get_num_threads()
