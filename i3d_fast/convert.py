"""``convert(model)``: runs an existing 3D network's convolutions, BatchNorms, ReLUs and pools on
i3d_fast's kernels, in place, in one call.

How chains are found (they are fused only where that is sound: the conv's output feeds nothing but
the BatchNorm, the BatchNorm's nothing but the ReLU, and each module runs once per forward):

1. ``torch.fx.symbolic_trace`` of the model (or, where the whole model does not trace, of each
   submodule that does): a chain is a ``call_module`` Conv3d node whose only user is a BatchNorm3d
   node (whose only user may be an ``nn.ReLU``), or a Conv3d node whose only user is an ``nn.ReLU``.
2. Elsewhere, inside plain ``nn.Sequential`` containers: consecutive Conv3d, BatchNorm3d, ReLU
   children (a Sequential runs its children in order and passes each output only to the next).

Modules that appear at more than one place in the model are not fused. A ReLU written as
``F.relu`` / ``torch.relu`` in the model's code stays where it is (conv + BatchNorm are fused
before it). Fused modules are changed in place (their class, not their identity): parameters stay
the same ``nn.Parameter`` objects and state_dict keys do not change, so optimisers, checkpoints and
``load_state_dict`` keep working before and after.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx
from torch import nn

from . import layers

log = logging.getLogger(__name__)

CONV, BN, RELU = nn.Conv3d, nn.BatchNorm3d, nn.ReLU


@dataclass
class ConversionReport:
    """What :func:`convert` did: ``converted`` = [(module names, what they became)], ``left`` =
    [(module name, type, why it stays stock PyTorch)], ``method`` = how chains were found."""
    converted: List[Tuple[str, str]] = field(default_factory=list)
    left: List[Tuple[str, str, str]] = field(default_factory=list)
    method: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        kinds = Counter(kind for _, kind in self.converted)
        lines = [f"i3d_fast.convert: {len(self.converted)} converted ("
                 + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + f"), {len(self.left)} left"]
        lines += [f"  chains found by: {m}" for m in self.method]
        lines += [f"  converted  {names}: {kind}" for names, kind in self.converted]
        lines += [f"  left       {name} ({kind}): {why}" for name, kind, why in self.left]
        return "\n".join(lines)


def convert(model: nn.Module, *, inference: bool = False, backend: str = "auto") -> nn.Module:
    """Runs ``model``'s 3D layers on i3d_fast's ops, in place; returns ``model``.

    - ``nn.Conv3d`` (and subclasses that keep its ``forward``), with the ``nn.BatchNorm3d`` and
      ``nn.ReLU`` that consume its output fused in (see the module docstring for how chains are
      found) -> :class:`i3d_fast.layers.FusedConv3d`: training (batch statistics, running statistics
      updated as BatchNorm does) and eval (BatchNorm folded, cached per weight version).
    - ``nn.MaxPool3d`` (dilation 1, floor mode, no indices) and ``nn.AvgPool3d`` (no padding or
      ``count_include_pad=False``, floor mode, no divisor override) -> ops pools.
    - Left alone, with the reason in the report: grouped / dilated convolutions, padding modes other
      than zeros, ceil-mode or dilated pools, ``nn.AdaptiveAvgPool3d`` and every 1D/2D layer.

    Args:
        model: any ``nn.Module``.
        inference: also put the model in eval mode and refuse training with the converted layers
            (``fuse()`` for any network: BatchNorm folded into the convolutions).
        backend: the ops' backend for every converted layer ("auto" picks per layer and falls back
            to ATen where the hand-written kernels are not faster for that shape).
    Returns:
        ``model`` (its ``i3d_fast_report`` attribute holds the :class:`ConversionReport`, also logged
        at INFO level).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: expected an nn.Module, got {type(model).__name__}")
    if backend not in ("auto", "cpu", "aten", "reference", "triton"):
        raise ValueError(f"convert: unknown backend {backend!r}; choose 'auto', 'triton', 'cpu', 'aten' or 'reference'")
    report = ConversionReport()
    names = _unique_names(model)
    counts = Counter(m for _, m in model.named_modules(remove_duplicate=False))
    chains = _find_chains(model, counts, report)
    fused = set()
    for conv, bn, relu in chains:
        _fuse(conv, bn, relu, backend, inference)
        fused.update(m for m in (conv, bn, relu) if m is not None)
        parts = "conv" + (" + batch_norm" if bn is not None else "") + (" + relu" if relu is not None else "")
        report.converted.append((" + ".join(names[m] for m in (conv, bn, relu) if m is not None), parts))
    for module, name in names.items():
        if module in fused:
            continue
        why = _convert_single(module, backend, inference)
        if why is None:
            report.converted.append((name, type(module).__name__.replace("Converted", "").replace("Fused", "").lower()))
        elif why:
            report.left.append((name, type(module).__name__, why))
    for module, count in counts.items():
        if count > 1 and isinstance(module, (CONV, BN, RELU)):
            report.left.append((names[module], type(module).__name__, f"appears at {count} places in the model; not fused"))
    if inference:
        model.eval()
    model.i3d_fast_report = report
    log.info("%s", report)
    return model


# -- finding chains ----------------------------------------------------------------------------------
def _unique_names(model: nn.Module) -> Dict[nn.Module, str]:
    return {m: name or "(model)" for name, m in model.named_modules()}


def _fusable_conv(m: nn.Module) -> Optional[str]:
    """Why ``m`` (an nn.Conv3d) cannot run on the ops (None when it can)."""
    if isinstance(m, layers.Conv3d) or isinstance(m, layers.FusedConv3d):
        return ""  # already an i3d_fast layer: nothing to report
    if type(m).forward is not CONV.forward or type(m)._conv_forward is not CONV._conv_forward:
        return f"{type(m).__name__} overrides nn.Conv3d's forward"
    if m.groups != 1:
        return f"groups={m.groups}: grouped / depthwise convolutions have no i3d_fast kernel yet (ATen runs them)"
    if tuple(m.dilation) != (1, 1, 1):
        return f"dilation {tuple(m.dilation)} is not supported"
    if m.padding_mode != "zeros":
        return f"padding_mode={m.padding_mode!r}: only zero padding is supported"
    return None


def _plain(m: nn.Module, cls) -> bool:
    """``m`` is exactly ``cls`` (a subclass may change what it computes), or a convertible Conv3d."""
    if cls is CONV:
        return isinstance(m, CONV) and _fusable_conv(m) is None
    return type(m) is cls


def _fusable_bn(m: nn.Module, conv: nn.Conv3d) -> bool:
    return _plain(m, BN) and m.num_features == conv.out_channels


def _find_chains(model: nn.Module, counts: Counter, report: ConversionReport):
    """[(conv, bn or None, relu or None)] with at least two members, each module in one chain and at
    one place in the model (``counts``: places per module)."""
    chains: List[tuple] = []
    taken: set = set()

    def add(conv, bn, relu):
        members = [m for m in (conv, bn, relu) if m is not None]
        if any(counts[m] > 1 or m in taken for m in members):
            return
        taken.update(members)
        chains.append((conv, bn, relu))

    def visit(module: nn.Module) -> None:
        if not any(isinstance(m, CONV) for m in module.modules()):
            return
        try:
            graph = torch.fx.symbolic_trace(module).graph
        except Exception as e:  # noqa: BLE001 - any tracing failure means: use the fallback here
            if module is model:
                first_line = (str(e).splitlines() or [""])[0][:120]
                report.method.append(f"nn.Sequential order (torch.fx could not trace the model: "
                                     f"{type(e).__name__}: {first_line})")
            if type(module).forward is nn.Sequential.forward:
                for conv, bn, relu in _sequential_chains(list(module.children())):
                    add(conv, bn, relu)
            for child in module.children():
                visit(child)
            return
        if module is model:
            report.method.append("torch.fx trace of the model")
        for conv, bn, relu in _fx_chains(module, graph):
            add(conv, bn, relu)

    visit(model)
    return chains


def _sequential_chains(children: List[nn.Module]):
    i = 0
    while i < len(children):
        conv = children[i]
        if not _plain(conv, CONV):
            i += 1
            continue
        bn = children[i + 1] if i + 1 < len(children) and _fusable_bn(children[i + 1], conv) else None
        j = i + 1 + (bn is not None)
        relu = children[j] if j < len(children) and _plain(children[j], RELU) else None
        if bn is not None or relu is not None:
            yield conv, bn, relu
        i = j + (relu is not None)


def _fx_chains(module: nn.Module, graph: torch.fx.Graph):
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    submodule = dict(module.named_modules())

    def single_user(node, cls, conv):
        """node's only user, when it is a call of a module of class ``cls`` run once per forward."""
        if len(node.users) != 1:
            return None
        user = next(iter(node.users))
        if user.op != "call_module" or calls[user.target] != 1 or len(user.args) != 1 or user.kwargs:
            return None
        m = submodule[user.target]
        return (user, m) if (_fusable_bn(m, conv) if cls is BN else _plain(m, cls)) else None

    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        conv = submodule[node.target]
        if not _plain(conv, CONV):
            continue
        bn_hit = single_user(node, BN, conv)
        relu_hit = single_user(bn_hit[0] if bn_hit else node, RELU, conv)
        if bn_hit or relu_hit:
            yield conv, bn_hit[1] if bn_hit else None, relu_hit[1] if relu_hit else None


# -- converting ------------------------------------------------------------------------------------------
def _fuse(conv: nn.Conv3d, bn: Optional[nn.BatchNorm3d], relu: Optional[nn.ReLU], backend: str,
          inference: bool) -> None:
    _to_fused_conv(conv, backend, inference)
    conv.__dict__["fused_bn"] = bn  # not registered: bn stays where it is in the module tree
    conv.fused_relu = relu is not None
    if bn is not None:
        bn.__class__ = layers.AbsorbedBatchNorm3d
    if relu is not None:
        relu.__class__ = layers.AbsorbedReLU


_FUSED_SUBCLASSES: Dict[type, type] = {}


def _to_fused_conv(conv: nn.Conv3d, backend: str, inference: bool) -> None:
    cls = type(conv)
    if cls is not CONV:  # a subclass that keeps nn.Conv3d's forward: keep it in the class hierarchy
        cls = _FUSED_SUBCLASSES.setdefault(cls, type(f"Fused{cls.__name__}", (layers.FusedConv3d, cls), {}))
    else:
        cls = layers.FusedConv3d
    conv.__class__ = cls
    conv.backend, conv.inference_only = backend, inference


def _convert_single(m: nn.Module, backend: str, inference: bool) -> Optional[str]:
    """Converts one module that is not in a chain; returns None when converted, "" when there is
    nothing to do or report, else why it stays stock."""
    if isinstance(m, CONV):
        why = _fusable_conv(m)
        if why is None:
            _to_fused_conv(m, backend, inference)
            m.__dict__["fused_bn"], m.fused_relu = None, False
        return why
    if type(m) is nn.MaxPool3d:
        if m.return_indices or m.ceil_mode or m.dilation not in (1, (1, 1, 1)):
            return "return_indices / ceil_mode / dilation are not supported"
        m.__class__, m.backend = layers.ConvertedMaxPool3d, backend
        return None
    if type(m) is nn.AvgPool3d:
        padded = m.padding not in (0, (0, 0, 0))
        if m.ceil_mode or m.divisor_override is not None or (padded and m.count_include_pad):
            return "ceil_mode, divisor_override and zero-counting padding (count_include_pad=True) are not supported"
        m.__class__, m.backend = layers.ConvertedAvgPool3d, backend
        return None
    if isinstance(m, (nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d)):
        return "adaptive pools stay ATen's (one reduction pass; no i3d_fast kernel)"
    if isinstance(m, (BN, RELU)) and not isinstance(m, (layers.AbsorbedBatchNorm3d, layers.AbsorbedReLU)):
        return "" if type(m) is RELU else "not directly after a Conv3d whose output feeds only it; runs as ATen's"
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)):
        return "1D / 2D layers have no i3d_fast kernel"
    return ""
