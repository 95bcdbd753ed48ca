"""One command for a lent GPU: ``python benchmarks/gpu_check.py --out DIR [--budget-s 480] [--dry-run]``.

A plan of named steps, run in order within the time budget, each in its own process (a hang or a
CUDA fault costs that step only) with its own allowance (its share of the budget; SIGINT at the
end of it, so pytest still writes its junit XML, then SIGKILL). Each step writes its files into DIR
as it goes; after each step ``summary.json`` / ``summary.txt`` say what ran, how it ended and its
headline, so a run cut off at any point leaves everything done so far.

1. ``environment``: GPU, driver, CUDA / cuDNN / torch / triton / cupy versions (environment.json).
2. ``gpu-tests``: the compiled ``gpu`` test tier (I3D_FAST_TEST_GPU=1) with a junit XML
   (gpu-tests.xml, gpu-tests.log): conv variants and dtypes against float64, pooling, TV-L1 against
   the CPU solver, the fused model's logits, every variant passing its first-use self-check.
3. ``conv-layers``: every I3D conv layer, bf16, batch 8 x 64 x 224 x 224: ours vs cuDNN conv + BN +
   ReLU, conv + folded bias + ReLU and conv alone, CUDA-graph timed, TFLOP/s and % of peak.
4. ``model``: the fused model vs the plain PyTorch network (BatchNorm folded) eager on cuDNN and
   under ``torch.compile``, bf16, batch 8 x 64 x 224 x 224: ms/clip and logits differences.
5. ``train``: one training step (bf16 autocast, channels_last_3d, cudnn.benchmark, batch 8 x 32 x 224
   x 224), ``InceptionI3d`` vs the plain network.
6. ``tvl1``: CUDA TV-L1 pairs/s for batches of 16 and 32 pairs, and its flow against the CPU solver's.

``--dry-run`` runs the same plan on the CPU with tiny shapes and no timing (Triton interpreted, the
test tier only collected), to prove the wiring. Without a CUDA device the normal mode exits with
status 2 and a message at once.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from .._atomic import atomic_write

#: The budget the allowances below add up to; a larger or smaller --budget-s scales them all.
DEFAULT_BUDGET_S = 480.0
#: A step is skipped when less than this is left of the budget.
MIN_STEP_S = 15.0
#: Seconds between SIGINT and SIGKILL for a step past its allowance.
GRACE_S = 10.0
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Context:
    """What a step gets: where to write, whether this is a dry run, and until when it may run."""

    out: Path
    dry_run: bool
    deadline: float  # time.monotonic() by which the step should have written its results
    tests: Optional[Path] = None  # the repository's tests/ folder, when gpu_check runs in a checkout

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def write_json(self, name: str, payload) -> str:
        with atomic_write(self.out / name, "w") as f:
            json.dump(payload, f, indent=2, default=str)
        return name

    def write_text(self, name: str, text: str) -> str:
        with atomic_write(self.out / name, "w") as f:
            f.write(text)
        return name


@dataclass
class Step:
    name: str
    allowance_s: float  # at DEFAULT_BUDGET_S
    run: Callable[[Context], Dict[str, object]]  # -> {"headline": str, "files": [...], ...}
    what: str


@dataclass
class StepRecord:
    name: str
    status: str  # ok, failed, timed out, skipped
    seconds: float
    allowance_s: float
    headline: str = ""
    files: List[str] = field(default_factory=list)


# -- 1. environment ---------------------------------------------------------------------------------
def _version(module: str) -> str:
    try:
        return getattr(__import__(module), "__version__", "installed")
    except Exception as exc:  # noqa: BLE001 - a missing or broken package is a fact to record
        return f"unavailable ({type(exc).__name__}: {exc})"


def _command(args: List[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=REPO)
        return (done.stdout or done.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({type(exc).__name__})"


def step_environment(ctx: Context) -> Dict[str, object]:
    from .. import __version__
    from ..ops import selfcheck

    info: Dict[str, object] = {
        "i3d_fast": __version__, "git commit": _command(["git", "rev-parse", "HEAD"]),
        "python": sys.version.split()[0], "torch": torch.__version__, "torch CUDA": torch.version.cuda,
        "cuDNN": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": _version("triton"), "cupy": _version("cupy"),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "0"),
        f"{selfcheck.ENV}": os.environ.get(selfcheck.ENV, "auto"),
        "nvidia-smi": _command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                "power.limit", "--format=csv"]),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "SMs": props.multi_processor_count, "memory GiB": round(props.total_memory / 2**30, 1)}
    gpu = info.get("gpu", {}).get("name", "no CUDA device")  # type: ignore[union-attr]
    return {"headline": f"{gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}), triton {info['triton']}",
            "files": [ctx.write_json("environment.json", info)]}


# -- 2. the GPU test tier ---------------------------------------------------------------------------
def _junit_counts(path: Path) -> Dict[str, int]:
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}


def step_gpu_tests(ctx: Context) -> Dict[str, object]:
    tests = ctx.tests
    if tests is None:
        raise FileNotFoundError(f"no test folder in {' or '.join(map(str, _test_folders()))}: run gpu_check from "
                                "a checkout of the repository")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["I3D_FAST_TEST_GPU"] = "0" if ctx.dry_run else "1"
    cmd = [sys.executable, "-m", "pytest", str(tests), "-m", "gpu", "-p", "no:cacheprovider", "-o",
           "junit_family=xunit2", f"--junitxml={ctx.out / 'gpu-tests.xml'}"]
    cmd += ["--collect-only", "-q"] if ctx.dry_run else ["-v", "-rfE"]
    with open(ctx.out / "gpu-tests.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = _run_until(cmd, env, ctx.left() - 2 * GRACE_S, log, cwd=tests.parent)  # ends before our allowance
    files = ["gpu-tests.log"] + ["gpu-tests.xml"] * (ctx.out / "gpu-tests.xml").is_file()
    if ctx.dry_run:
        collected = sum("::" in line for line in (ctx.out / "gpu-tests.log").read_text().splitlines())
        if rc != 0 or collected == 0:
            raise RuntimeError(f"collecting the gpu tests failed (pytest exit {rc}, {collected} collected); "
                               "see gpu-tests.log")
        return {"headline": f"dry run: {collected} gpu tests collected, none run", "files": files}
    if "gpu-tests.xml" not in files:
        raise RuntimeError(f"pytest exit {rc} and no junit XML; see gpu-tests.log")
    counts = _junit_counts(ctx.out / "gpu-tests.xml")
    headline = (f"{counts['tests']} tests: {counts['failures']} failed, {counts['errors']} errors, "
                f"{counts['skipped']} skipped (pytest exit {rc})")
    if rc != 0:
        raise RuntimeError(headline)
    return {"headline": headline, "files": files, **counts}


def _test_folders() -> List[Path]:
    """Where the tests may be: the checkout the package was installed from (editable), else the one
    gpu_check runs in (the package may be installed from a wheel while it runs in its checkout, as in CI)."""
    return [REPO / "tests", Path.cwd() / "tests"]


def _find_tests() -> Optional[Path]:
    return next((t for t in _test_folders() if (t / "conftest.py").is_file()), None)


def _run_until(cmd: List[str], env: Dict[str, str], seconds: float, log, cwd: Optional[Path] = REPO) -> int:
    """Runs ``cmd`` with output to ``log``; SIGINT after ``seconds``, SIGKILL :data:`GRACE_S` later."""
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        return proc.wait(timeout=max(seconds, 1.0))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    except BaseException:  # interrupted ourselves: leave no orphan behind
        proc.kill()
        proc.wait()
        raise


# -- 3. per-layer conv timings ---------------------------------------------------------------------
#: The dry run's layers (cheap in the interpreter, one per kernel mode): FOLD stem, DIRECT 3x3x3, POOL.
DRY_LAYERS = ("Conv3d_1a_7x7 rgb", "Conv3d_2c_3x3", "Mixed_3b.b3 pool+b3b")


def step_conv_layers(ctx: Context) -> Dict[str, object]:
    from . import conv3d_cuda
    from .report import Row, format_table, summary, write_json

    if ctx.dry_run:
        convs = [c for c in conv3d_cuda.i3d_layers(1, 4, 16)[0] if c.name in DRY_LAYERS]
        dname = "fp16"  # the interpreter's bf16 is wrong
    else:
        torch.backends.cudnn.benchmark = True
        convs, dname = conv3d_cuda.i3d_layers(8, 64, 224)[0], "bf16"
    gen = torch.Generator().manual_seed(0)
    rows, started, cut, failed = [], time.monotonic(), "", []
    for i, conv in enumerate(convs):
        per_layer = (time.monotonic() - started) / max(i, 1)
        if i and ctx.left() < 1.5 * per_layer + 5:
            cut = f"; cut by the time allowance after {i} of {len(convs)} layers"
            break
        try:
            rows += conv3d_cuda.layer_rows(conv, dname, ctx.device, gen, timed=not ctx.dry_run)
        except Exception as exc:  # noqa: BLE001 - a wrong or failing layer is a result; the next layer runs
            failed.append(conv.name)
            rows.append(Row(conv3d_cuda.SUITE, conv3d_cuda.layer_case(conv, dname), conv3d_cuda.OURS, None,
                            note=f"FAILED: {type(exc).__name__}: {str(exc)[:200]}"))
        write_json(rows, str(ctx.out / "conv-layers.json"))
        ctx.write_text("conv-layers.txt", summary(rows) + "\n\n" + format_table(rows) + "\n")
    files = ["conv-layers.json", "conv-layers.txt"]
    if failed:
        raise RuntimeError(f"{len(failed)} layers failed ({', '.join(failed[:5])}); see conv-layers.txt")
    if ctx.dry_run:
        return {"headline": f"dry run: {len(rows)} rows of {len(convs)} layers ran once, not timed", "files": files}
    ours = {r.case: r.timing.median_ms for r in rows if r.provider == conv3d_cuda.OURS and r.timing}
    parts = []
    for provider in (conv3d_cuda.FOLDED, conv3d_cuda.BASELINE, conv3d_cuda.CONV_ONLY):
        ratios = [r.timing.median_ms / ours[r.case] for r in rows if r.provider == provider and r.case in ours]
        if ratios:
            parts.append(f"vs {provider} {_geomean(ratios):.2f}x")
    return {"headline": f"{len(ours)} layers bf16 batch 8, geomean speedup of ours " + ", ".join(parts) + cut,
            "files": files}


def _geomean(values: List[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


# -- 4. end to end ----------------------------------------------------------------------------------
def step_model(ctx: Context) -> Dict[str, object]:
    from ..models import InceptionI3d, fuse
    from ..ops import selfcheck
    from .plain_i3d import PlainInceptionI3d, fold_batchnorm
    from .report import Row, format_table, write_json
    from .timing import measure

    cl = torch.channels_last_3d
    batch, frames, size = (1, 8, 32) if ctx.dry_run else (8, 64, 224)
    device = ctx.device
    low = torch.float32 if ctx.dry_run else torch.bfloat16  # the CPU's ATen has no bf16 avg_pool3d
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = InceptionI3d(adaptive_head=ctx.dry_run).eval()
    for m in model.modules():  # non-trivial folded BatchNorm
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    plain = PlainInceptionI3d(adaptive_head=ctx.dry_run)
    plain.load_state_dict(model.state_dict())
    plain = fold_batchnorm(plain.eval()).to(device).to(memory_format=cl)
    x = (torch.rand(batch, 3, frames, size, size, device=device) * 2 - 1).contiguous(memory_format=cl)
    with torch.no_grad():
        prev = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        reference = plain(x).double()  # fp32, no TF32
        torch.backends.cudnn.allow_tf32 = prev
    plain_low = plain.to(low)
    compiled = torch.compile(plain_low, backend="eager" if ctx.dry_run else "inductor")
    fused = fuse(model.to(device), dtype=low)
    tag = str(low).replace("torch.", "")
    # torch.compile last: its compilation may use up the allowance
    providers = [(f"plain PyTorch I3D, BatchNorm folded, {tag} eager" + ("" if ctx.dry_run else " (cuDNN)"),
                  lambda: plain_low(x.to(low))),
                 (f"i3d_fast.fuse(model, dtype=torch.{tag})", lambda: fused(x)),
                 ("same plain network + torch.compile" + (" (eager backend: dry run)" if ctx.dry_run else ""),
                  lambda: compiled(x.to(low)))]
    case = f"I3D RGB forward [{batch}, 3, {frames}, {size}, {size}] {tag}"
    rows, logits = [], {}
    with torch.no_grad():
        for i, (name, fn) in enumerate(providers):
            started = time.monotonic()
            logits[name] = fn().double()  # warm-up: cuDNN autotuning, compilation, Triton JIT
            warm_s = time.monotonic() - started
            diff = {"rel. error vs fp32": ((logits[name] - reference).norm() / reference.norm()).item(),
                    "max |diff| vs eager": (logits[name] - logits[providers[0][0]]).abs().max().item()}
            extra = {k: float(f"{v:.3g}") for k, v in diff.items()}
            extra["warm-up s"] = round(warm_s, 1)
            if ctx.dry_run:
                rows.append(Row("gpu-model", case, name, None, baseline=i == 0, note="dry run: not timed",
                                extra=extra))
                continue
            timing = measure(fn, repeat=5, warmup=1, device=device)
            extra["ms/clip"] = round(timing.median_ms / batch, 2)
            rows.append(Row("gpu-model", case, name, timing, baseline=i == 0, extra=extra))
            write_json(rows, str(ctx.out / "model.json"))
    failed = [f"{v} on {d}: {why}" for v, d, why in selfcheck.verdicts() if why is not None]
    write_json(rows, str(ctx.out / "model.json"))
    ctx.write_text("model.txt", format_table(rows) + "".join(f"\nSELF-CHECK FAILED: {f}" for f in failed) + "\n")
    files = ["model.json", "model.txt"]
    labels = ("eager", "ours", "torch.compile")
    errors = ", ".join(f"{k} {r.extra['rel. error vs fp32']:.3g}" for k, r in zip(labels, rows))
    speed = "" if ctx.dry_run else "; ms/clip " + ", ".join(f"{k} {r.extra['ms/clip']}" for k, r in zip(labels, rows))
    headline = (f"logits rel. error vs fp32 {errors}{speed}"
                + (f"; {len(failed)} variants FAILED their self-check" if failed else ""))
    return {"headline": headline, "files": files}


# -- 5. training step -------------------------------------------------------------------------------
def step_train(ctx: Context) -> Dict[str, object]:
    from . import train
    from .report import Row, format_table, write_json
    from .timing import measure_interleaved

    case = (train.Case(2, 8, 32, adaptive_head=True) if ctx.dry_run
            else train.Case(8, 32, 224, bf16=True, device="cuda"))
    providers = (train.BASELINE, train.OURS)
    steps = [train.workload(p, case) for p in providers]
    losses = [step().item() for step in steps]  # the same seed, clip and weights: the same loss
    rows = [Row("gpu-train", case.name, p, None, baseline=i == 0, note="first step only, not timed",
                extra={"loss": round(loss, 4)}) for i, (p, loss) in enumerate(zip(providers, losses))]
    write_json(rows, str(ctx.out / "train.json"))  # kept if the timing below is cut off
    if not ctx.dry_run:
        timings = measure_interleaved(steps, repeat=5, device="cuda")
        rows = [Row("gpu-train", case.name, p, t, baseline=i == 0,
                    extra={"clips/s": round(case.batch * 1e3 / t.median_ms, 2), "loss": round(loss, 4)})
                for i, (p, t, loss) in enumerate(zip(providers, timings, losses))]
        write_json(rows, str(ctx.out / "train.json"))
    ctx.write_text("train.txt", format_table(rows) + "\n")
    speed = "" if ctx.dry_run else "; clips/s " + ", ".join(f"{r.provider}: {r.extra['clips/s']}" for r in rows)
    return {"headline": f"first-step loss {losses[0]:.4f} (plain) vs {losses[1]:.4f} (ours){speed}",
            "files": ["train.json", "train.txt"]}


# -- 6. TV-L1 ---------------------------------------------------------------------------------------
def step_tvl1(ctx: Context) -> Dict[str, object]:
    from ..flow import tvl1
    from .report import Row, format_table, write_json
    from .timing import measure
    from .tvl1_pairs import epe, make_pair

    shapes, batches = (((32, 40),), (2,)) if ctx.dry_run else (((224, 224), (256, 340)), (16, 32))
    backend = "cpu" if ctx.dry_run else "cuda"
    rows = []
    for h, w in shapes:
        i0, i1, truth = make_pair("sinusoidal", h, w)
        ours = tvl1(torch.from_numpy(i0).to(ctx.device), torch.from_numpy(i1).to(ctx.device), backend=backend)
        cpu = tvl1(i0, i1, backend="cpu")
        accuracy = {"EPE vs true flow": round(epe(ours.cpu().numpy(), truth), 4),
                    "EPE vs CPU solver": round(epe(ours.cpu().numpy(), cpu.numpy()), 4)}
        for n in batches:
            a = torch.from_numpy(i0).to(ctx.device)[None].repeat(n, 1, 1)
            b = torch.from_numpy(i1).to(ctx.device)[None].repeat(n, 1, 1)
            case = f"TV-L1 {h}x{w} batch {n} (time per batch)"
            if ctx.dry_run:
                tvl1(a, b, backend=backend)
                rows.append(Row("gpu-tvl1", case, f"i3d_fast {backend}", None, note="dry run: not timed",
                                extra=accuracy))
                continue
            timing = measure(lambda: tvl1(a, b, backend=backend), 5, device=ctx.device)
            rows.append(Row("gpu-tvl1", case, "i3d_fast CUDA", timing,
                            extra={"pairs/s": round(n * 1e3 / timing.median_ms, 1), **accuracy}))
            write_json(rows, str(ctx.out / "tvl1.json"))
    write_json(rows, str(ctx.out / "tvl1.json"))
    ctx.write_text("tvl1.txt", format_table(rows) + "\n")
    rates = ", ".join(f"{r.case.split(' (')[0]}: {r.extra['pairs/s']} pairs/s" for r in rows if r.timing)
    return {"headline": rates or f"dry run: {len(rows)} case(s) solved once", "files": ["tvl1.json", "tvl1.txt"]}


PLAN = (
    Step("environment", 30, step_environment, "GPU, driver and package versions"),
    Step("gpu-tests", 170, step_gpu_tests, "the compiled gpu test tier, junit XML"),
    Step("conv-layers", 110, step_conv_layers, "per-layer conv timings against cuDNN, bf16, batch 8"),
    Step("model", 90, step_model, "fused model vs eager cuDNN and torch.compile, bf16, 8 x 64 x 224 x 224"),
    Step("train", 50, step_train, "training step, bf16 autocast, 8 x 32 x 224 x 224"),
    Step("tvl1", 30, step_tvl1, "CUDA TV-L1 pairs/s, batches of 16 and 32"),
)


# -- the driver -------------------------------------------------------------------------------------
def _write_summary(out: Path, records: List[StepRecord], budget_s: float, dry_run: bool, done: bool) -> None:
    payload = {"budget_s": budget_s, "dry_run": dry_run, "finished": done, "steps": [asdict(r) for r in records]}
    with atomic_write(out / "summary.json", "w") as f:
        json.dump(payload, f, indent=2)
    lines = [f"gpu_check{' --dry-run' if dry_run else ''}: budget {budget_s:.0f} s, "
             f"{'finished' if done else 'in progress'}"]
    for r in records:
        lines.append(f"{r.name:12s} {r.status:9s} {r.seconds:6.1f} s of {r.allowance_s:5.0f}  {r.headline}")
    with atomic_write(out / "summary.txt", "w") as f:
        f.write("\n".join(lines) + "\n")


def _child_env(dry_run: bool) -> Dict[str, str]:
    env = dict(os.environ)
    if dry_run:
        env["TRITON_INTERPRET"] = "1"  # Triton on CPU tensors
    else:
        env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_plan(out: Path, budget_s: float, dry_run: bool, log=print) -> List[StepRecord]:
    """Runs every step of :data:`PLAN` in its own process within ``budget_s``; returns the records."""
    out.mkdir(parents=True, exist_ok=True)
    start, records = time.monotonic(), []
    scale = budget_s / DEFAULT_BUDGET_S
    tests = _find_tests()
    for step in PLAN:
        left = budget_s - (time.monotonic() - start)
        allowance = min(step.allowance_s * scale, left)
        if allowance < MIN_STEP_S:
            records.append(StepRecord(step.name, "skipped", 0.0, 0.0, f"out of budget ({left:.0f} s left)"))
            _write_summary(out, records, budget_s, dry_run, False)
            continue
        log(f"gpu_check: {step.name} ({step.what}), up to {allowance:.0f} s")
        began = time.monotonic()
        cmd = [sys.executable, "-m", __name__, "--step", step.name, "--out", str(out),
               "--seconds", f"{allowance:.1f}"] + ["--dry-run"] * dry_run + (["--tests", str(tests)] if tests else [])
        with open(out / f"{step.name}.log", "w") as step_log:
            rc = _run_until(cmd, _child_env(dry_run), allowance, step_log)
        seconds = time.monotonic() - began
        result_path = out / f"{step.name}.result.json"
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if result.get("status") == "ok" and rc == 0:
            status = "ok"
        elif result.get("status") == "timed out" or (not result and seconds >= allowance - 0.5):
            status = "timed out"
        else:
            status = "failed"
        headline = result.get("headline") or f"exit {rc}; see {step.name}.log"
        records.append(StepRecord(step.name, status, round(seconds, 1), round(allowance, 1), headline,
                                  list(result.get("files", [])) + [f"{step.name}.log"]))
        log(f"gpu_check: {step.name} {status} in {seconds:.0f} s: {headline}")
        _write_summary(out, records, budget_s, dry_run, False)
    _write_summary(out, records, budget_s, dry_run, True)
    return records


def _run_step(name: str, out: Path, seconds: float, dry_run: bool, tests: Optional[Path] = None) -> int:
    """Runs one step in this process and writes ``<name>.result.json`` (status, headline, files)."""
    step = next(s for s in PLAN if s.name == name)
    ctx = Context(out, dry_run, time.monotonic() + seconds, tests)
    try:
        result = {"status": "ok", **step.run(ctx)}
    except KeyboardInterrupt:  # SIGINT at the end of the allowance: what it wrote so far stays
        traceback.print_exc()
        result = {"status": "timed out", "headline": "stopped at the end of its time allowance (partial results)"}
    except Exception as exc:  # noqa: BLE001 - recorded for the summary; the next step still runs
        traceback.print_exc()
        result = {"status": "failed", "headline": f"{type(exc).__name__}: {str(exc)[:300]}"}
    ctx.write_json(f"{name}.result.json", result)
    return 0 if result["status"] == "ok" else 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for every result file (created)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for the whole plan (default {DEFAULT_BUDGET_S:.0f}); steps get shares of it")
    parser.add_argument("--dry-run", action="store_true",
                        help="run the plan on the CPU with tiny shapes and no timing (checks the wiring)")
    parser.add_argument("--step", choices=[s.name for s in PLAN], help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--tests", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        return _run_step(args.step, args.out, args.seconds, args.dry_run, args.tests)
    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device is visible to torch {torch.__version__} (CUDA build: "
              f"{torch.version.cuda or 'none'}); nothing was measured. On a GPU machine run it there; "
              "--dry-run checks the plan's wiring on the CPU.", file=sys.stderr)
        return 2
    if args.budget_s < MIN_STEP_S:
        parser.error(f"--budget-s must be at least {MIN_STEP_S:.0f}")
    records = run_plan(args.out, args.budget_s, args.dry_run)
    bad = [r.name for r in records if r.status != "ok"]
    print(f"gpu_check: {len(records) - len(bad)} of {len(records)} steps ok"
          + (f"; not ok: {', '.join(bad)}" if bad else "") + f"; results in {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
