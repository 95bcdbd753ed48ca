"""The ``train`` bench suite at tiny sizes: both providers' training steps agree, and the suite's rows."""
import json
import math
from dataclasses import asdict, replace

import pytest

from i3d_fast import bench
from i3d_fast.bench import train
from i3d_fast.bench.timing import FIXED_MMAP_THRESHOLD, number_in_subprocess

TINY = train.Case(batch=1, frames=8, size=64, adaptive_head=True)


@pytest.mark.parametrize("bf16, rel", [(False, 1e-4), (True, 2e-2)])
def test_train_steps_of_both_providers_give_the_same_finite_loss(bf16, rel):
    case = replace(TINY, bf16=bf16)
    plain, ours, keeping = (train.workload(p, case)() for p in train.PROVIDERS)
    assert math.isfinite(plain.item()) and math.isfinite(ours.item())
    assert ours.item() == pytest.approx(plain.item(), rel=rel) and ours.item() == keeping.item()


def test_train_suite_rows(monkeypatch):
    monkeypatch.setitem(train.CPU_CASE, True, TINY)
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(train, "number_in_subprocess",
                        lambda *args, env=None: (12.5 if args[-1] == "steady" else 20.0) if env is None else 10.0)
    monkeypatch.setitem(train.PIPELINE_CASE, True, (2, 32, 24, 4, 2))
    rows = bench.SUITES["train"](quick=True)
    steps, ops = [r for r in rows if r.suite == "train"], [r for r in rows if r.suite == "train-profile"]
    assert [(r.provider, r.baseline) for r in steps[:3]] == [(train.BASELINE, True), (train.OURS, False),
                                                             (train.OURS_KEEPING, False)]
    assert all(r.extra["peak MiB"] == 12.5 and r.extra["peak MiB, fixed mmap threshold"] == 10.0
               and r.extra["first-step peak MiB"] == 20.0 and r.extra["clips/s"] > 0 for r in steps[:3])
    first = steps[3:5]  # the first step in a new process: kernels timed, then timings read from the file
    assert [r.baseline for r in first] == [True, False] and len({r.case for r in first}) == 1
    assert "timed" in first[0].provider and "read from the timing file" in first[1].provider
    assert all(r.timing.median_ms == 10.0e3 for r in first)
    assert [r.timing for r in steps[5:7]] == [None, None] and steps[6].note.startswith("not measured")
    pipeline = steps[7:]  # i3d-fast train end to end (4 steps per epoch), after the step alone
    assert [r.baseline for r in pipeline] == [True, False] and len({r.case for r in pipeline}) == 1
    assert pipeline[1].provider.startswith("i3d-fast train") and pipeline[1].timing.runs == 4
    assert all(r.timing.median_ms > 0 and r.extra["clips/s"] > 0 for r in pipeline)
    assert len(ops) == 2 * train.PROFILE_TOP and all(r.case.startswith(f"{r.provider}: ") for r in ops)
    assert "of the step" in ops[0].note and ops[0].timing.median_ms >= ops[1].timing.median_ms


def test_convert_suite_rows(monkeypatch):
    """The convert suite at tiny sizes: per network and mode the baseline row first (inference: the
    BatchNorm-folded stock network, then the plain stock one; training: the stock network) and the
    converted row last, a geomean row per compared provider, the CUDA row "not measured". The
    reduced-precision mode leaves PyTorch's switch as it found it."""
    import torch

    from i3d_fast.bench import convert as convert_suite

    monkeypatch.setattr(convert_suite, "_input_shape", lambda name, quick: (2, 3, 8, 32, 32))
    if not hasattr(getattr(torch.backends.mkldnn, "conv", None), "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has no torch.backends.mkldnn.conv.fp32_precision (2.9+)")
    before = torch.backends.mkldnn.conv.fp32_precision
    rows = bench.SUITES["convert"](quick=True)
    names = list(convert_suite.ARCHITECTURES)
    expected = {"inference": (convert_suite.FOLDED, convert_suite.STOCK, convert_suite.CONVERTED),
                "inference, fp32_precision tf32": (convert_suite.FOLDED, convert_suite.CONVERTED),
                "train step": (convert_suite.STOCK, convert_suite.CONVERTED)}
    for mode, providers in expected.items():
        timed = [r for r in rows if f" {mode} " in r.case and r.timing is not None]
        assert len(timed) == len(providers) * len(names)
        groups = [timed[i:i + len(providers)] for i in range(0, len(timed), len(providers))]
        for group in groups:
            assert [(r.provider, r.baseline) for r in group] == [(p, i == 0) for i, p in enumerate(providers)]
        for i, provider in enumerate(providers[:-1]):
            summary = next(r for r in rows if r.case == f"all networks {mode} (geomean)"
                           and r.provider == f"{convert_suite.CONVERTED} vs {provider}")
            ratios = [g[i].timing.median_ms / g[-1].timing.median_ms for g in groups]
            assert summary.extra["geomean speedup"] == pytest.approx(math.prod(ratios) ** (1 / len(ratios)), rel=1e-2)
    assert rows[-1].timing is None and rows[-1].note.startswith("not measured")
    assert torch.backends.mkldnn.conv.fp32_precision == before


@pytest.mark.parametrize("shape, kernel, stride", [((1, 4, 8, 20, 20), (1, 3, 3), (1, 2, 2)),
                                                   ((1, 4, 8, 10, 10), (3, 3, 3), (1, 1, 1)),
                                                   ((1, 4, 8, 10, 10), (3, 3, 3), (2, 2, 2)),
                                                   ((1, 4, 7, 9, 11), (3, 3, 3), (2, 2, 2)),
                                                   ((1, 4, 6, 6, 6), (2, 2, 2), (2, 2, 2))])
def test_pool_baseline_is_the_same_result_as_ours(shape, kernel, stride):
    """The pool suite's ATen baseline (padding= / ceil_mode where ATen can, else a -inf pad) computes
    exactly TF SAME max pooling."""
    import torch

    from i3d_fast.bench.pool3d import _aten_same
    from i3d_fast.ops import max_pool3d

    x = torch.randn(shape)
    torch.testing.assert_close(_aten_same(x, False, kernel, stride, "same"),
                               max_pool3d(x, kernel, stride, "same", backend="reference"), rtol=0, atol=0)


def test_conv_bench_providers_compute_the_same_result():
    """The 3x3x3 conv suite's providers (oneDNN prepacked / per-call reorder / Winograd F(2x2x2) and
    F(2x4x4)) agree."""
    import torch

    from i3d_fast.bench.conv3d_cpu import PROVIDERS, workloads
    from i3d_fast.kernels import cpu as cpu_kernels

    if cpu_kernels.reject_unless_available(torch.zeros(1)) is not None:
        pytest.skip("the C++ extension is not built")
    outs = [fn() for fn in workloads(16, 24, 4, 6, 6)]
    assert len(outs) == len(PROVIDERS) == 4
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-4, atol=1e-4)


def test_model_suite_rows_fp32_and_bf16(monkeypatch):
    """fp32: the reference model first, then fuse(model); bf16 where the CPU has it: autocast first, then the
    bf16 fused model; elsewhere one "not measured" row."""
    from i3d_fast.bench import model as model_suite

    monkeypatch.setattr(model_suite, "SIZE", 32)
    monkeypatch.setattr(model_suite, "number_in_subprocess", lambda *args: 7.0)
    monkeypatch.setattr(model_suite, "has_native_bf16", lambda: True)
    rows = bench.SUITES["model"](quick=True)
    layers, rows = [r for r in rows if r.suite == "model-layers"], [r for r in rows if r.suite == "model"]
    expected = [model_suite.PROVIDERS[0], model_suite.PLAIN_FOLDED, model_suite.PROVIDERS[1],
                model_suite.BF16_PROVIDERS[0], model_suite.PLAIN_FOLDED_BF16,
                model_suite.BF16_PROVIDERS[1]]  # --quick: no torch.compile rows
    assert [r.provider for r in rows] == expected
    assert [r.baseline for r in rows] == [True, False, False, True, False, False]
    assert all(r.timing.median_ms > 0 and r.extra["peak MiB"] == 7.0 for r in rows)
    assert rows[3].case.endswith("bf16") and rows[0].case.endswith("float32")
    # where the forward's time goes: every endpoint, reference (baseline) then fused, shares summing to ~100%
    names = [r.case.split(" ")[0] for r in layers[::2]]
    assert names == [n for n in model_suite.InceptionI3d().endpoint_names]
    assert [r.provider for r in layers[:2]] == list(model_suite.PROVIDERS) and layers[0].baseline
    for provider in model_suite.PROVIDERS:
        shares = [float(r.note.split("%")[0]) for r in layers if r.provider == provider]
        assert sum(shares) == pytest.approx(100, abs=len(shares) * 0.5)
    folded, reference = model_suite.workload(model_suite.PLAIN_FOLDED, 8)(), model_suite.workload(
        model_suite.PROVIDERS[0], 8)()
    assert folded.shape == reference.shape == (1, 400)
    monkeypatch.setattr(model_suite, "has_native_bf16", lambda: False)
    last = [r for r in bench.SUITES["model"](quick=True) if r.suite == "model"][-1]
    assert last.timing is None and "neither avx512_bf16 nor amx_bf16" in last.note


def test_plots_one_readable_figure_per_suite(tmp_path):
    """A figure per suite (continued when long, never much over 2000 px tall); breakdown suites too;
    rows that were not measured are not drawn."""
    from PIL import Image

    from i3d_fast.bench import Row, write_plots
    from i3d_fast.bench.plot import ROWS_PER_FIGURE
    from i3d_fast.bench.timing import Timing

    def timed(ms):
        return Timing(ms, ms, ms, 1)

    rows = [Row("big", f"case {k}", p, timed(1.0 + k % 3 if p == "ours" else 2.0), baseline=p == "base")
            for k in range(ROWS_PER_FIGURE + 5) for p in ("base", "ours")]
    rows += [Row("model-layers", f"layer {k}", "ours", timed(k + 1.0), note="10% of the forward") for k in range(4)]
    rows += [Row("gpu", "conv", "triton", None, note="not measured (no GPU)")]
    written = write_plots(rows, str(tmp_path / "bench.png"))
    assert [p.rsplit("/", 1)[1] for p in written] == ["bench-big.png", "bench-big-2.png", "bench-model-layers.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.size[1] <= 2000 and image.size[0] <= 1400, (path, image.size)
    with pytest.raises(ValueError, match="no measured rows"):
        write_plots(rows[-1:], str(tmp_path / "none.png"))


@pytest.mark.parametrize("when, env", [("steady", None), ("steady", FIXED_MMAP_THRESHOLD), ("first", None)])
def test_train_peak_memory_subprocess_prints_a_number(when, env):
    """The fresh-process peak measurement the train suite's peak columns run (a tiny case)."""
    peak = number_in_subprocess(train.__name__, "1", "1", json.dumps(asdict(TINY)), when, env=env)
    assert peak is not None and 0 < peak < 2000
