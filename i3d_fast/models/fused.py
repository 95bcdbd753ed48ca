"""Inference-only I3D with BatchNorm folded into the convolutions, channels-last throughout, whole
Inception blocks as one op (merged 1x1 GEMM, pool fused into branch 3, branches written in place),
and padding computed inside the kernels: no pad copies, no concatenation."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..layers import MaxPool3d, Unit3D
from ..ops import avg_pool3d, conv3d, max_pool3d
from ..ops.conv3d import inception_block_op
from .i3d import HEAD_POOL, InceptionI3d, InceptionModule, check_input
from .two_stream import TwoStreamI3D

CL = torch.channels_last_3d


def fold_unit(unit: Unit3D, dtype: torch.dtype) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(weight, shift) with an eval BatchNorm folded in: scale = gamma / sqrt(var + eps),
    w * scale and beta + (conv bias - mean) * scale."""
    weight = unit.conv3d.weight.detach().double()
    shift = unit.conv3d.bias.detach().double() if unit.conv3d.bias is not None else None
    if unit.bn is not None:
        bn = unit.bn
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = weight * scale.view(-1, 1, 1, 1, 1)
        bias = 0.0 if shift is None else shift
        shift = bn.bias.detach().double() + (bias - bn.running_mean.double()) * scale
    weight = weight.to(dtype).contiguous(memory_format=CL)
    return weight, None if shift is None else shift.to(dtype)


class _FusedUnit(nn.Module):
    def __init__(self, unit: Unit3D, dtype: torch.dtype):
        super().__init__()
        weight, shift = fold_unit(unit, dtype)
        self.register_buffer("weight", weight)
        self.register_buffer("shift", shift)
        self.stride, self.relu = unit.stride, unit.relu

    def forward(self, x: torch.Tensor, backend: str, allow_tf32: bool) -> torch.Tensor:
        return conv3d(x, self.weight, None, self.shift, self.stride, "same", self.relu, backend=backend,
                      allow_tf32=allow_tf32)


class _FusedBlock(nn.Module):
    def __init__(self, block: InceptionModule, dtype: torch.dtype):
        super().__init__()
        folded = {name: fold_unit(getattr(block, name), dtype) for name in ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")}
        merged_w = torch.cat([folded[n][0] for n in ("b0", "b1a", "b2a")]).contiguous(memory_format=CL)
        merged_s = torch.cat([folded[n][1] for n in ("b0", "b1a", "b2a")])
        for i, (w, s) in enumerate([(merged_w, merged_s)] + [folded[n] for n in ("b1b", "b2b", "b3b")]):
            self.register_buffer(f"weight{i}", w)
            self.register_buffer(f"shift{i}", s)
        self.widths = [folded[n][0].shape[0] for n in ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")]

    def forward(self, x: torch.Tensor, backend: str, allow_tf32: bool) -> torch.Tensor:
        weights = [getattr(self, f"weight{i}") for i in range(4)]
        shifts = [getattr(self, f"shift{i}") for i in range(4)]
        return inception_block_op(x, weights, shifts, self.widths, allow_tf32, backend)


class _FusedPool(nn.Module):
    def __init__(self, pool: MaxPool3d):
        super().__init__()
        self.kernel_size, self.stride = pool.kernel_size, pool.stride

    def forward(self, x: torch.Tensor, backend: str, allow_tf32: bool) -> torch.Tensor:
        return max_pool3d(x, self.kernel_size, self.stride, "same")


class FusedInceptionI3d(nn.Module):
    """Inference-only :class:`InceptionI3d` (same outputs, eval BatchNorm folded), built by :func:`fuse`.

    ``forward``: Tensor[B, C, T, H, W] -> Tensor[B, num_classes] (or the final endpoint's features).
    Inputs are converted once to ``dtype`` and channels_last_3d; outputs are in ``dtype``.
    """

    def __init__(self, model: InceptionI3d, dtype: torch.dtype = torch.float32, backend: str = "auto",
                 allow_tf32: bool = False):
        super().__init__()
        self.dtype, self.backend, self.allow_tf32 = dtype, backend, allow_tf32
        self.endpoint_names = model.endpoint_names
        self.num_classes, self.in_channels = model.num_classes, model.in_channels
        self.final_endpoint, self.adaptive_head = model.final_endpoint, model.adaptive_head
        for name in self.endpoint_names:
            if name == "Logits":
                self.logits = _FusedUnit(model.logits, dtype)
                continue
            module = getattr(model, name)
            if isinstance(module, Unit3D):
                self.add_module(name, _FusedUnit(module, dtype))
            elif isinstance(module, MaxPool3d):
                self.add_module(name, _FusedPool(module))
            else:
                self.add_module(name, _FusedBlock(module, dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extract_features(x, self.final_endpoint)

    def extract_features(self, x: torch.Tensor, endpoint: str = "Mixed_5c") -> torch.Tensor:
        """As :meth:`InceptionI3d.extract_features`."""
        return self.extract_endpoints(x, [endpoint])[endpoint]

    @torch.no_grad()
    def extract_endpoints(self, x: torch.Tensor, endpoints: Sequence[str]) -> Dict[str, torch.Tensor]:
        """As :meth:`InceptionI3d.extract_endpoints` (inference only)."""
        unknown = [e for e in endpoints if e not in self.endpoint_names]
        if unknown:
            raise ValueError(f"endpoints {unknown} are not in this model (available: {self.endpoint_names})")
        check_input(x, self.in_channels, "Logits" in endpoints and not self.adaptive_head)
        x = x.to(self.dtype).contiguous(memory_format=CL)
        last = max(self.endpoint_names.index(e) for e in endpoints)
        out: Dict[str, torch.Tensor] = {}
        for name in self.endpoint_names[: last + 1]:
            if name == "Logits":
                kernel = tuple(min(k, s) for k, s in zip(HEAD_POOL, x.shape[2:])) if self.adaptive_head else HEAD_POOL
                x = self.logits(avg_pool3d(x, kernel, 1, "valid"), self.backend, self.allow_tf32)
                x = x.float().mean(dim=(2, 3, 4)).to(self.dtype)
            else:
                x = getattr(self, name)(x, self.backend, self.allow_tf32)
            if name in endpoints:
                out[name] = x
        return out


class FusedTwoStreamI3D(nn.Module):
    """Inference-only :class:`TwoStreamI3D` whose streams are :class:`FusedInceptionI3d`."""

    def __init__(self, model: TwoStreamI3D, **kwargs):
        super().__init__()
        self.rgb = FusedInceptionI3d(model.rgb, **kwargs)
        self.flow = FusedInceptionI3d(model.flow, **kwargs)
        self.fusion = model.fusion

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        logits = self.rgb(rgb) + self.flow(flow)
        return logits / 2 if self.fusion == "mean" else logits


def fuse(model: nn.Module, dtype: torch.dtype = torch.float32, backend: str = "auto", allow_tf32: bool = False):
    """Inference-only fused copy of an :class:`InceptionI3d` or :class:`TwoStreamI3D` (BatchNorm uses
    its running statistics, as in ``eval()``). ``dtype``: float32, float16 or bfloat16 compute;
    ``backend``: the conv backend ("auto", "triton", "cpu", "aten", "reference").

    The folded weights are ordinary tensors even when built under ``torch.inference_mode()``, so
    that kernels can cache their transformed forms (see :mod:`i3d_fast.kernels.cpu.conv3d`)."""
    kwargs = dict(dtype=dtype, backend=backend, allow_tf32=allow_tf32)
    with torch.inference_mode(False):
        if isinstance(model, TwoStreamI3D):
            return FusedTwoStreamI3D(model, **kwargs).to(next(model.parameters()).device)
        if isinstance(model, InceptionI3d):
            return FusedInceptionI3d(model, **kwargs).to(next(model.parameters()).device)
    raise TypeError(f"fuse() takes an InceptionI3d or TwoStreamI3D, got {type(model).__name__}")
