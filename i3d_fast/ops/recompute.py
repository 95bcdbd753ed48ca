"""Activations saved for backward as the recipe that made them instead of the tensor itself.

A fused unit's output y = relu?(batch_norm(z)) is one cheap pass over z, which the unit keeps for its
own backward anyway. When an op that reads y (another unit, a pooling, a convolution) would save y for
its backward, it saves y's recipe instead (z, the statistics and the BatchNorm parameters: no new
memory), so y is freed as soon as the forward is done with it and remade, bit for bit (the same
kernel), when that op's backward needs it. Recipes nest: a max pool of a recipe's output, a
stride-1 max pool of any tensor (it holds its input, which is never larger than what it saves), and
an Inception block's concatenated output have one too. A recipe is remade once per backward however
many ops saved it, and let go after its last one (unless the graph is retained, as autograd does).
(The C++ max pool itself saves its windows' argmax taps, one byte per output, not its input: see
:mod:`.pool3d`.) In I3D at 2 x 16 x 224 x 224 (fp32) the saved activations are 204 MiB with recipes,
322 MiB without (420 MiB when every op saved its input tensor), and remaking costs 0-2% of the step
(the remade tensors: each block's input and the 3x3x3 units' inputs).

Only in eager mode on ordinary tensors (``torch.compile`` keeps its own plan) and only while the
output is unmodified (an in-place change, e.g. a residual ``out += x``, makes the op save the tensor
itself); a recipe whose inputs were changed in place raises autograd's in-place error.
``I3D_FAST_RECOMPUTE=0`` turns it off (ops save their input tensors; the max pool still saves taps).
"""
from __future__ import annotations

import functools
import os
import weakref
from typing import Callable, Optional, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ._library import plain_eager

_RECIPES = WeakIdKeyDictionary()  # output tensor -> its _Recipe


def enabled() -> bool:
    return os.environ.get("I3D_FAST_RECOMPUTE", "1") != "0"


class _Recipe:
    """``make(*sources)``: a source is a tensor (held weakly until an op saves this recipe) or another
    recipe. ``users``: the ops (and recipes) that will ask for the value in backward."""

    __slots__ = ("make", "sources", "versions", "users", "value", "__weakref__")

    def __init__(self, make: Callable[..., torch.Tensor], sources: tuple, versions: tuple):
        self.make, self.sources, self.versions = make, sources, versions
        self.users, self.value = 0, None

    def _resolved(self) -> Optional[tuple]:
        """The sources as tensors and recipes, or None when one is gone (freed, or used up)."""
        if self.sources is None:
            return None
        held = []
        for source in self.sources:
            if isinstance(source, weakref.ref):
                source = source()
            if source is None or (isinstance(source, _Recipe) and source._resolved() is None):
                return None
            held.append(source)
        return tuple(held)

    def hold(self) -> bool:
        """Holds every source strongly for one more user; False (nothing held) when one is gone. A
        nested recipe counts this one as one user, however many users this one has."""
        held = self._resolved()
        if held is None:
            return False
        if self.users == 0:
            for source in held:
                if isinstance(source, _Recipe):
                    source.hold()
        self.sources, self.users = held, self.users + 1
        return True

    def take(self) -> torch.Tensor:
        """The remade tensor for one user, computed on the first request of a backward; the sources
        and the value are let go after the last user unless the graph is retained."""
        if self.sources is None:
            raise RuntimeError("Trying to backward through the graph a second time: an activation i3d_fast "
                               "remakes for backward was freed after the first. Pass retain_graph=True to the "
                               "first backward.")
        value = self.value
        if value is None:
            inputs = [s.take() if isinstance(s, _Recipe) else s for s in self.sources]
            if any(t._version != v for t, v in zip(inputs, self.versions) if v is not None):
                raise RuntimeError("one of the variables needed for gradient computation has been modified by an "
                                   "inplace operation (an input of an activation i3d_fast remakes for backward, "
                                   "e.g. a BatchNorm weight changed between forward and backward)")
            with torch.no_grad():
                value = self.make(*inputs)
        if torch._C._autograd._get_current_graph_task_keep_graph():
            self.value = value
        else:
            self.users -= 1
            self.value = value if self.users > 0 else None
            if self.users <= 0:
                self.sources = None
        return value


def remember(output: torch.Tensor, make: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
             hold_plain: bool = True) -> None:
    """Records that ``make(*inputs)`` remakes ``output`` exactly (``make`` holds no tensor itself). An
    input with a recipe of its own is remembered as that recipe, others by weak reference; with
    ``hold_plain=False`` only inputs with recipes are allowed (e.g. a strided pool, whose input is
    larger than its output: holding it would cost more than it saves)."""
    if not (plain_eager(output) and enabled()):
        return
    sources, versions = [], []
    for t in inputs:
        recipe = _valid(t)
        if recipe is None and not hold_plain:
            return
        sources.append(recipe if recipe is not None else weakref.ref(t))
        versions.append(None if recipe is not None else t._version)
    _RECIPES[output] = (_Recipe(make, tuple(sources), tuple(versions)), output._version)


def _valid(t: torch.Tensor) -> Optional[_Recipe]:
    hit = _RECIPES.get(t) if plain_eager(t) else None
    return hit[0] if hit is not None and hit[1] == t._version else None


def cat(tensors: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """``torch.cat(tensors, dim)``, remembered as a recipe when every input has one (an Inception
    block's output: its four branches' unit outputs)."""
    out = torch.cat(tensors, dim)
    remember(out, functools.partial(_cat, dim=dim), tensors, hold_plain=False)
    return out


def _cat(*tensors: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cat(tensors, dim)


def save(ctx, x: torch.Tensor) -> Optional[torch.Tensor]:
    """What an op's ``setup_context`` passes to ``ctx.save_for_backward`` for its input x: None when x
    has a recipe (kept on ``ctx`` for :func:`load`), else x itself."""
    recipe = _valid(x) if enabled() else None
    ctx.x_recipe = recipe if recipe is not None and recipe.hold() else None
    return x if ctx.x_recipe is None else None


def load(ctx, saved: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The op's input x in its backward: ``saved`` as :func:`save` returned it, or x remade."""
    recipe = getattr(ctx, "x_recipe", None)
    return saved if recipe is None else recipe.take()
