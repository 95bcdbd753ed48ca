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


def plain_eager(x) -> bool:
    """Whether ``x`` is an ordinary tensor outside any tracing (not a FakeTensor / functional tensor
    of torch.compile or make_fx), so a kernel may be called directly instead of through its op."""
    return type(x) is torch.Tensor and not torch.compiler.is_compiling()


def eager_autograd(op: torch._ops.OpOverload, impl: Callable, backward: Callable,
                   setup_context: Callable) -> Callable:
    """``op``, called through a plain ``torch.autograd.Function`` (same kernel, formula and saved
    tensors) when eager autograd records, which skips the dispatcher's custom-op autograd wrapper
    (~0.1 ms per call: it matters for networks of many small layers); the op itself under
    ``torch.compile`` tracing and when no gradient is recorded."""
    def forward(ctx, *args):  # the ctx-first form: the setup_context form binds a signature per call
        output = impl(*args)
        setup_context(ctx, args, output)
        return output

    function = type(f"{op.__name__}_autograd", (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward)})

    def call(*args):
        if torch.is_grad_enabled() and plain_eager(args[0]):
            return function.apply(*args)
        return op(*args)

    return call
