"""Training-step benchmarks: i3d_fast's InceptionI3d against the same network in plain PyTorch
(:class:`.plain_i3d.PlainInceptionI3d`) with the same weights.

One step is ``zero_grad(set_to_none=True)``, forward, cross-entropy on 400 classes and backward (no
optimizer step). The models are in train mode and channels_last_3d, as are their inputs, and are timed
interleaved in one process (same threads): the plain model, ours as it runs by default (activations
it can remake are remade in backward, see :mod:`i3d_fast.ops.recompute`) and ours keeping them
(``I3D_FAST_RECOMPUTE=0``: faster, more memory); the full-size fp32 case also times the plain model
under ``torch.compile``. Cases: CPU fp32; CPU bf16 autocast, measured only where the CPU computes
bf16 natively (avx512_bf16 or amx_bf16); CUDA bf16 autocast with ``cudnn.benchmark``, "not measured"
without a GPU. Each row gives clips/s and the growth of peak memory over one step in a fresh process
(CPU: resident set; CUDA: the caching allocator's peak), see :data:`PEAK_COLUMNS`: a steady step
("peak MiB"), the same with glibc's mmap threshold fixed, and the first step, which also times each
layer's kernel choice. The CPU fp32 case adds "train-profile" rows: the plain model's and ours' top
ops by self CPU time in one profiled step, and our first step in a fresh process with no file of
kernel timings, then in another one reading the file the first wrote (:func:`first_step_rows`). The CPU run ends with ``i3d-fast train`` end to end on
synthetic videos (:func:`pipeline_rows`): the data pipeline's cost against the step alone.

Run as ``python -m i3d_fast.bench.train PROVIDER THREADS CASE_JSON steady|first|first-seconds`` it
prints one provider's peak memory growth (MiB) over a steady or the first step, or its first step's
seconds, in a fresh process; :func:`run` uses that for the peak columns and the first-step rows.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass, replace
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from ..kernels.cpu.autotune import CACHE_ENV
from ..models import InceptionI3d
from .plain_i3d import PlainInceptionI3d
from .._cpu import has_native_bf16
from .report import Row
from .timing import (FIXED_MMAP_THRESHOLD, Timing, first_call_seconds, measure, measure_interleaved,
                     number_in_subprocess, peak_rss_mb, steady_peak_rss_mb)

SUITE = "train"
CL = torch.channels_last_3d
NUM_CLASSES = 400
BASELINE = "PlainInceptionI3d (plain PyTorch)"
OURS = "i3d_fast InceptionI3d"
COMPILED = "PlainInceptionI3d + torch.compile (inductor)"
OURS_KEEPING = "i3d_fast InceptionI3d, activations kept (I3D_FAST_RECOMPUTE=0)"
PROVIDERS = (BASELINE, OURS, OURS_KEEPING)
PROFILE_TOP = 8
#: (column, which step, environment): the peak-memory columns, each measured in a fresh process. A
#: steady step is the second (the first also times kernel choices); glibc's default malloc keeps
#: freed heap memory resident, the fixed mmap threshold returns large blocks at once.
PEAK_COLUMNS = (("peak MiB", "steady", None), ("peak MiB, fixed mmap threshold", "steady", FIXED_MMAP_THRESHOLD),
                ("first-step peak MiB", "first", None))


@dataclass(frozen=True)
class Case:
    """One training-step workload: a [batch, 3, frames, size, size] clip on ``device``, fp32 or
    under bf16 autocast; ``adaptive_head`` for clips under 9 frames x 193x193 pixels."""

    batch: int
    frames: int
    size: int
    adaptive_head: bool = False
    bf16: bool = False
    device: str = "cpu"

    @property
    def name(self) -> str:
        dtype = "bf16 autocast" if self.bf16 else "float32"
        where = " (CUDA, cudnn.benchmark)" if self.device == "cuda" else ""
        return f"I3D RGB train step [{self.batch}, 3, {self.frames}, {self.size}, {self.size}] {dtype}{where}"


CPU_CASE = {False: Case(2, 16, 224), True: Case(1, 16, 112, adaptive_head=True)}  # by --quick
#: the end-to-end case (``i3d-fast train`` on make-synthetic videos), by --quick: videos per class, frame size
#: (= the short side), crop, clip frames, batch
PIPELINE_CASE = {False: (8, 128, 112, 16, 4), True: (4, 64, 56, 16, 4)}
PIPELINE_WORKERS = 2
CUDA_CASE = {False: Case(8, 32, 224, bf16=True, device="cuda"), True: Case(4, 16, 224, bf16=True, device="cuda")}


def cpu_has_bf16() -> bool:
    """Whether the CPU has avx512_bf16 or amx_bf16 (else oneDNN emulates bf16 math slowly)."""
    return has_native_bf16()


def workload(provider: str, case: Case) -> Callable[[], torch.Tensor]:
    """One training step of ``provider`` on ``case``; returns the detached loss (a scalar). Seeds
    torch's RNG, so every provider gets the same clip, labels and weights (the baseline loads ours)."""
    if case.device == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    x = torch.rand(case.batch, 3, case.frames, case.size, case.size) * 2 - 1
    labels = torch.randint(NUM_CLASSES, (case.batch,))
    model = InceptionI3d(NUM_CLASSES, adaptive_head=case.adaptive_head)
    if provider in (BASELINE, COMPILED):
        plain = PlainInceptionI3d(NUM_CLASSES, adaptive_head=case.adaptive_head)
        plain.load_state_dict(model.state_dict())
        model = plain
    model = model.to(case.device).train().to(memory_format=CL)
    if provider == COMPILED:
        model = torch.compile(model)
    x, labels = x.to(case.device).contiguous(memory_format=CL), labels.to(case.device)

    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with _recompute_switch(provider != OURS_KEEPING), \
                torch.autocast(case.device, dtype=torch.bfloat16, enabled=case.bf16):
            loss = F.cross_entropy(model(x), labels)
        loss.backward()
        return loss.detach()

    return step


@contextlib.contextmanager
def _recompute_switch(enabled: bool):
    """``I3D_FAST_RECOMPUTE`` set for the forward (where ops decide what to save), then restored."""
    before = os.environ.get("I3D_FAST_RECOMPUTE")
    os.environ["I3D_FAST_RECOMPUTE"] = "1" if enabled else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["I3D_FAST_RECOMPUTE"]
        else:
            os.environ["I3D_FAST_RECOMPUTE"] = before


def peak_mib(fn: Callable[[], object], device: str, steady: bool) -> Optional[float]:
    """Growth of peak memory over one call of ``fn``, in MiB: the resident set on the CPU (in a fresh
    process), the caching allocator's peak on CUDA. ``steady``: over a second call (see
    :func:`.timing.steady_peak_rss_mb`), else over the first (which includes one-off work such as
    timing kernel choices)."""
    if device != "cuda":
        return steady_peak_rss_mb(fn) if steady else peak_rss_mb(fn)
    if steady:
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def profile_rows(steps: List[Callable[[], object]]) -> List[Row]:
    """Each provider's top :data:`PROFILE_TOP` ops by self CPU time in one profiled step (warm
    ``steps`` of the baseline and ours), with their share of the step's total self CPU time."""
    rows = []
    for provider, step in zip(PROVIDERS[:2], steps):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        ops = prof.key_averages()
        total_us = sum(op.self_cpu_time_total for op in ops)
        for op in sorted(ops, key=lambda op: op.self_cpu_time_total, reverse=True)[:PROFILE_TOP]:
            ms = op.self_cpu_time_total / 1e3
            name = op.key.replace("autograd::engine::evaluate_function: ", "autograd engine: ")
            rows.append(Row(f"{SUITE}-profile", f"{provider}: {name}", provider, Timing(ms, ms, ms, 1),
                            note=f"{op.self_cpu_time_total / total_us:.0%} of the step"))
    return rows


def _case_rows(case: Case, repeat: int,
               compiled: bool = False) -> Tuple[List[Row], List[Callable[[], torch.Tensor]]]:
    """The case's rows (baseline first) and the warm steps of :data:`PROVIDERS`, in that order.
    ``compiled`` adds the plain model under ``torch.compile`` (its compile time, minutes on 2 cores, is the
    row's "compile s"; no peak-memory column, which would compile again in the subprocess)."""
    providers = PROVIDERS + ((COMPILED,) if compiled else ())
    steps = [workload(p, case) for p in providers]
    compile_s = {COMPILED: first_call_seconds(steps[-1], case.device)} if compiled else {}
    # Interleaved, run by run: on a shared machine a slow spell then falls on every provider.
    timings = measure_interleaved(steps, repeat, device=case.device)
    rows = []
    for i, (provider, timing) in enumerate(zip(providers, timings)):
        extra = {"clips/s": round(case.batch * 1e3 / timing.median_ms, 2)}
        if provider in compile_s:
            extra["compile s"] = round(compile_s[provider], 1)
        if provider in PROVIDERS:
            args = (__name__, str(i), str(torch.get_num_threads()), json.dumps(asdict(case)))
            for label, when, env in PEAK_COLUMNS:
                peak = number_in_subprocess(*args, when, env=env)
                if peak is not None:
                    extra[label] = round(peak, 1)
        rows.append(Row(SUITE, case.name, provider, timing, baseline=provider == BASELINE, extra=extra))
    return rows, steps[:len(PROVIDERS)]


def first_step_rows(case: Case) -> List[Row]:
    """Our first step in a fresh process, which times each layer's kernel choices on the CPU
    (:mod:`i3d_fast.kernels.cpu.autotune`): with no file of timings, then in a second process reading
    the file the first one wrote (as a user's next run does)."""
    import tempfile

    name = f"{case.name}: first step in a new process"
    args = (__name__, str(PROVIDERS.index(OURS)), str(torch.get_num_threads()), json.dumps(asdict(case)),
            "first-seconds")
    with tempfile.TemporaryDirectory() as tmp:
        env = {CACHE_ENV: tmp}
        seconds = [number_in_subprocess(*args, env=env) for _ in range(2)]
    labels = (f"{OURS}, kernel choices timed (no timing file)", f"{OURS}, kernel choices read from the timing file")
    return [Row(SUITE, name, label, None if s is None else Timing(s * 1e3, s * 1e3, s * 1e3, 1), baseline=i == 0,
                note=None if s is not None else "not measured (the subprocess failed)")
            for i, (label, s) in enumerate(zip(labels, seconds))]


def pipeline_rows(quick: bool, device: str = "cpu") -> List[Row]:
    """``i3d-fast train`` end to end (decoding, augmentation in :data:`PIPELINE_WORKERS` loader processes,
    step with SGD) on a make-synthetic dataset, per step in its second epoch (warm), against the same
    step on a batch already in memory: how much of the step rate the data pipeline keeps."""
    import tempfile
    from pathlib import Path

    from ..training import TrainOptions, make_synthetic, train
    from ..training.checkpoint import read_metrics
    from ..training.loop import TRAIN_BN_MOMENTUM

    per_class, size, crop, clip, batch = PIPELINE_CASE[quick]
    case = f"I3D RGB training [{batch}, 3, {clip}, {crop}, {crop}] fp32: decode + augment + SGD step"
    with tempfile.TemporaryDirectory() as tmp:
        data = make_synthetic(Path(tmp) / "data", train_per_class=per_class, val_per_class=1, frames=2 * clip,
                              size=size)
        options = TrainOptions(data=data["train"], out=str(Path(tmp) / "run"), init="none", epochs=2, batch_size=batch,
                               clip=clip, crop=crop, short_side=size, workers=PIPELINE_WORKERS, device=device,
                               progress=False)
        train(options, log=lambda _: None)
        warm = read_metrics(Path(options.out))[-1]
    steps = warm["clips"] / batch
    pipeline_ms = warm["seconds"] * 1e3 / steps

    torch.manual_seed(0)
    model = InceptionI3d(len(data["classes"]), adaptive_head=True).to(device).train().to(memory_format=CL)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.momentum = TRAIN_BN_MOMENTUM
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    x = (torch.rand(batch, 3, clip, crop, crop) * 2 - 1).to(device).contiguous(memory_format=CL)
    labels = torch.randint(len(data["classes"]), (batch,), device=device)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels).backward()
        optimiser.step()

    alone = measure(step, repeat=int(steps), device=device)
    return [Row(SUITE, case, "training step alone (batch in memory)", alone, baseline=True,
                extra={"clips/s": round(batch * 1e3 / alone.median_ms, 2)}),
            Row(SUITE, case, f"i3d-fast train ({PIPELINE_WORKERS} loader workers)",
                Timing(pipeline_ms, pipeline_ms, pipeline_ms, int(steps)),
                extra={"clips/s": round(warm["clips_per_s"], 2)},
                note="mean over the second epoch's steps")]


def run(quick: bool = False, device: str = "cpu") -> List[Row]:
    """CUDA: the CUDA bf16 case. CPU: fp32, bf16 where the CPU has native bf16, the CUDA case "not
    measured", then the fp32 profile rows."""
    repeat = 3 if quick else 5
    if device == "cuda":
        return _case_rows(CUDA_CASE[quick], repeat)[0]
    fp32 = CPU_CASE[quick]
    rows, fp32_steps = _case_rows(fp32, repeat, compiled=not quick)
    op_rows = profile_rows(fp32_steps)
    del fp32_steps  # free both models before the next case
    rows += first_step_rows(fp32)
    bf16 = replace(fp32, bf16=True)
    if cpu_has_bf16():
        rows += _case_rows(bf16, repeat)[0]
    else:
        rows.append(Row(SUITE, bf16.name, f"{OURS} vs {BASELINE}", None,
                        note="not measured (the CPU has neither avx512_bf16 nor amx_bf16: bf16 would be emulated)"))
    why = "not measured (no GPU)" if not torch.cuda.is_available() else "not measured (--cpu)"
    rows.append(Row(SUITE, CUDA_CASE[quick].name, f"{OURS} vs {BASELINE}", None, note=why))
    try:
        rows += pipeline_rows(quick)
    except ImportError as exc:  # PyAV missing: the pipeline cannot decode
        rows.append(Row(SUITE, "I3D RGB training: decode + augment + SGD step", "i3d-fast train", None,
                        note=f"not measured ({exc.__class__.__name__}: needs PyAV, pip install 'i3d-fast[video]')"))
    return rows + op_rows


if __name__ == "__main__":
    provider, threads, case_json, when = sys.argv[1:]
    torch.set_num_threads(int(threads))
    case = Case(**json.loads(case_json))
    if when == "first-seconds":
        print(first_call_seconds(workload(PROVIDERS[int(provider)], case), case.device))
        sys.exit()
    peak = peak_mib(workload(PROVIDERS[int(provider)], case), case.device, steady=when == "steady")
    if peak is None:
        sys.exit("the resident set's peak cannot be reset here (/proc/self/clear_refs)")
    print(peak)
