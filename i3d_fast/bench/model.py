"""Whole-model benchmarks: the I3D RGB forward of the reference model vs the fused inference model, beside
the same network in plain PyTorch with BatchNorm folded, eager and (full size) under ``torch.compile`` with
inductor's ``freezing`` (its compile time reported apart): in fp32, and in bf16 (CUDA, or a CPU with native
bf16) with the baselines under ``torch.autocast`` against ``fuse(model, dtype=bf16)``; then the fp32
forward's time per endpoint, reference vs fused (suite ``model-layers``: where the time goes).

Run as ``python -m i3d_fast.bench.model PROVIDER FRAMES`` it prints one provider's peak memory
growth (MiB) in a fresh process; :func:`run` uses that for the table's "peak MiB" column.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Dict, List

import torch

from .._cpu import has_native_bf16
from ..models import InceptionI3d, fuse
from .plain_i3d import PlainInceptionI3d, fold_batchnorm
from .report import Row
from .timing import (Timing, first_call_seconds, measure_interleaved, number_in_subprocess, peak_rss_mb,
                     summarise)

CL = torch.channels_last_3d
PROVIDERS = ("reference model (channels_last_3d)", "i3d_fast.fuse(model)")
BF16_PROVIDERS = ("reference model under torch.autocast bf16", "i3d_fast.fuse(model, dtype=torch.bfloat16)")
PLAIN_FOLDED = "plain PyTorch I3D, BatchNorm folded"
PLAIN_COMPILED = "plain PyTorch I3D, BatchNorm folded + torch.compile (inductor, freezing)"
PLAIN_FOLDED_BF16 = PLAIN_FOLDED + ", under torch.autocast bf16"
PLAIN_COMPILED_BF16 = PLAIN_COMPILED + ", under torch.autocast bf16"
COMPILED = (PLAIN_COMPILED, PLAIN_COMPILED_BF16)
ALL_PROVIDERS = PROVIDERS + BF16_PROVIDERS + (PLAIN_FOLDED, PLAIN_FOLDED_BF16) + COMPILED
SIZE = 224  # pixels


def workload(provider: str, frames: int, device: str = "cpu") -> Callable[[], torch.Tensor]:
    """A no-grad forward of ``provider`` on a [1, 3, frames, SIZE, SIZE] fp32 clip."""
    x = (torch.rand(1, 3, frames, SIZE, SIZE, device=device) * 2 - 1).contiguous(memory_format=CL)
    model = InceptionI3d(adaptive_head=SIZE < 193).to(device).eval().to(memory_format=CL)
    if provider.startswith(PLAIN_FOLDED):  # the same weights in plain PyTorch, BatchNorm folded
        plain = PlainInceptionI3d(adaptive_head=SIZE < 193)
        plain.load_state_dict(model.state_dict())
        model = fold_batchnorm(plain.to(device).eval()).to(memory_format=CL)
        if provider in COMPILED:  # freezing: weights become constants, as for deployment
            model = torch.compile(model, options={"freezing": True})
    if provider == PROVIDERS[1]:
        model = fuse(model)
    elif provider == BF16_PROVIDERS[1]:
        model = fuse(model, dtype=torch.bfloat16)
    autocast = provider in (BF16_PROVIDERS[0], PLAIN_FOLDED_BF16, PLAIN_COMPILED_BF16)

    def forward():
        with torch.no_grad(), torch.autocast(torch.device(device).type, torch.bfloat16, enabled=autocast):
            return model(x)

    return forward


def _rows(providers, case: str, frames: int, repeat: int, device: str) -> List[Row]:
    # Interleaved, run by run: on a shared machine a slow spell then falls on every provider.
    workloads = [workload(p, frames, device) for p in providers]
    compile_s = {p: first_call_seconds(fn, device) for p, fn in zip(providers, workloads) if p in COMPILED}
    timings = measure_interleaved(workloads, repeat, device=device)
    rows = []
    for i, (provider, timing) in enumerate(zip(providers, timings)):
        extra = {"compile s": round(compile_s[provider], 1)} if provider in compile_s else {}
        if device == "cpu" and provider not in COMPILED:
            peak = number_in_subprocess(__name__, str(ALL_PROVIDERS.index(provider)), str(frames))
            if peak is not None:
                extra["peak MiB"] = round(peak, 1)
        rows.append(Row("model", case, provider, timing, baseline=i == 0, extra=extra))
    return rows


def _layer_times(model: torch.nn.Module, x: torch.Tensor, repeat: int, device: str) -> Dict[str, Timing]:
    """Per endpoint module of ``model`` (the reference or the fused I3D), its forward time over ``repeat``
    no-grad forwards of ``x`` (forward hooks around each endpoint's module)."""
    names = [n for n in model.endpoint_names if n != "Logits"] + ["logits"]
    times: Dict[str, List[float]] = {n: [] for n in names}
    started: Dict[str, float] = {}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def before(name):
        def hook(module, args):
            sync()
            started[name] = time.perf_counter()
        return hook

    def after(name):
        def hook(module, args, output):
            sync()
            times[name].append((time.perf_counter() - started[name]) * 1e3)
        return hook

    handles = [h for n in names for h in (getattr(model, n).register_forward_pre_hook(before(n)),
                                           getattr(model, n).register_forward_hook(after(n)))]
    try:
        with torch.no_grad():
            model(x)  # warm-up (weight transforms, autotuning)
            for ts in times.values():
                ts.clear()
            for _ in range(repeat):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {("Logits" if n == "logits" else n): summarise(ts) for n, ts in times.items()}


def layer_rows(frames: int, repeat: int, device: str = "cpu") -> List[Row]:
    """The fp32 forward's time per endpoint (Conv3d_1a_7x7 ... Mixed_5c, Logits): the reference model vs
    fuse(model), each row noting its share of that model's forward (suite ``model-layers``)."""
    x = (torch.rand(1, 3, frames, SIZE, SIZE, device=device) * 2 - 1).contiguous(memory_format=CL)
    reference = InceptionI3d(adaptive_head=SIZE < 193).to(device).eval().to(memory_format=CL)
    timed = {PROVIDERS[0]: _layer_times(reference, x, repeat, device),
             PROVIDERS[1]: _layer_times(fuse(reference), x, repeat, device)}
    totals = {p: sum(t.median_ms for t in layers.values()) for p, layers in timed.items()}
    rows = []
    for name in timed[PROVIDERS[0]]:
        for i, provider in enumerate(PROVIDERS):
            t = timed[provider][name]
            rows.append(Row("model-layers", f"{name} (forward [1, 3, {frames}, {SIZE}, {SIZE}] float32)", provider,
                            t, baseline=i == 0, note=f"{t.median_ms / totals[provider]:.0%} of the forward"))
    return rows


def run(quick: bool = False, device: str = "cpu") -> List[Row]:
    """fp32: the reference model, the plain network folded (and compiled), fuse(model); bf16 (CUDA, or a
    CPU with native bf16): the reference model and the folded plain network (and compiled) under autocast,
    then the bf16 fused model ("not measured" elsewhere: bf16 would be emulated); then ``model-layers``."""
    frames = 16 if quick else 64
    repeat = 3 if quick else 5
    shape = f"[1, 3, {frames}, {SIZE}, {SIZE}]"
    # the reference model first, the plain PyTorch network folded (and compiled, full size only: minutes of
    # compilation on 2 cores, reported as its "compile s"; no peak-memory column for it) beside it
    plain, plain_bf16 = (PLAIN_FOLDED,), (PLAIN_FOLDED_BF16,)
    if not quick:
        plain, plain_bf16 = plain + (PLAIN_COMPILED,), plain_bf16 + (PLAIN_COMPILED_BF16,)
    rows = _rows(PROVIDERS[:1] + plain + PROVIDERS[1:], f"I3D RGB forward {shape} float32", frames, repeat, device)
    case = f"I3D RGB forward {shape} bf16"
    if device == "cuda" or has_native_bf16():
        rows += _rows(BF16_PROVIDERS[:1] + plain_bf16 + BF16_PROVIDERS[1:], case, frames, repeat, device)
    else:
        rows.append(Row("model", case, f"{BF16_PROVIDERS[1]} vs {BF16_PROVIDERS[0]}", None,
                        note="not measured (the CPU has neither avx512_bf16 nor amx_bf16)"))
    return rows + layer_rows(frames, repeat, device)


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    fn = workload(ALL_PROVIDERS[int(sys.argv[1])], int(sys.argv[2]))
    print(peak_rss_mb(fn))
