"""Data derived from a weight tensor (a packed or transformed copy), kept while the tensor lives
unchanged, so a model's weights are prepared once rather than on every call."""
from __future__ import annotations

from typing import Callable, Generic, Optional, TypeVar

import torch
from torch.utils.weak import WeakIdKeyDictionary

Derived = TypeVar("Derived")


def _state(weight: torch.Tensor) -> tuple:
    """What a derived copy depends on: in-place writes bump the version; ``.data = ...`` and
    ``module.to(...)`` swap the storage, dtype or device under the same tensor object."""
    return (weight._version, weight.data_ptr(), weight.dtype, weight.device, tuple(weight.shape), weight.stride())


class WeightCache(Generic[Derived]):
    """``cache.get(weight)`` = ``make(weight)``, computed once per weight tensor (by identity, not
    value) and again after any change to it; entries go when the tensor is freed. Inference-mode
    tensors (no version counter) and tensors that require grad (changed by every optimiser step)
    are never cached."""

    def __init__(self, make: Callable[[torch.Tensor], Derived]):
        self._make = make
        self._entries = WeakIdKeyDictionary()

    def get(self, weight: torch.Tensor) -> Derived:
        if weight.is_inference() or weight.requires_grad:
            return self._make(weight)
        state = _state(weight)
        hit = self._entries.get(weight)
        if hit is not None and hit[0] == state:
            return hit[1]
        value = self._make(weight)
        self._entries[weight] = (state, value)
        return value

    def forget(self, weight: torch.Tensor) -> None:
        """Drops what is kept for ``weight`` (nothing happens when nothing is)."""
        self._entries.pop(weight, None)

    def get_if_seen(self, weight: torch.Tensor) -> Optional[Derived]:
        """Like :meth:`get`, but only from the second call with the same unchanged tensor object:
        the first records it and returns None. Inside a custom op's autograd the kernels get a fresh
        alias of a trainable weight on every call, so this tells a constant weight (e.g. folded eval
        weights) from one in training without any flag, and never derives data for the latter."""
        if weight.is_inference():
            return None
        state = _state(weight)
        hit = self._entries.get(weight)
        if hit is None or hit[0] != state:
            self._entries[weight] = (state, None)
            return None
        if hit[1] is None:
            self._entries[weight] = (state, self._make(weight))
        return self._entries[weight][1]
