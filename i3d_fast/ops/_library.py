"""Registers i3d_fast's operators with ``torch.library``: schema, one device-agnostic kernel (the
op dispatches to a backend itself), a fake implementation for tracing and, where differentiable,
an autograd formula.

``torch.library.custom_op`` would do the same, but it wraps every kernel so that the first call in
a process imports ``torch._dynamo`` (seconds per CLI start) and adds tens of microseconds per call.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

LIBRARY = torch.library.Library("i3d_fast", "DEF")


def define(schema: str, impl: Callable, fake: Callable, backward: Optional[Callable] = None,
           setup_context: Optional[Callable] = None) -> torch._ops.OpOverload:
    """Defines ``i3d_fast::<schema>`` and returns its OpOverload (call it like a function)."""
    name = schema.split("(", 1)[0]
    LIBRARY.define(schema)
    LIBRARY.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"i3d_fast::{name}", fake, lib=LIBRARY)
    if backward is not None:
        torch.library.register_autograd(f"i3d_fast::{name}", backward, setup_context=setup_context, lib=LIBRARY)
    return getattr(torch.ops.i3d_fast, name).default
