"""The ``train`` bench suite at tiny sizes: both providers' training steps agree, and the suite's rows."""
import json
import math
from dataclasses import asdict, replace

import pytest

from i3d_fast import bench
from i3d_fast.bench import train
from i3d_fast.bench.timing import peak_memory_in_subprocess

TINY = train.Case(batch=1, frames=8, size=64, adaptive_head=True)


@pytest.mark.parametrize("bf16, rel", [(False, 1e-4), (True, 2e-2)])
def test_train_steps_of_both_providers_give_the_same_finite_loss(bf16, rel):
    case = replace(TINY, bf16=bf16)
    plain, ours = (train.workload(p, case)() for p in train.PROVIDERS)
    assert math.isfinite(plain.item()) and math.isfinite(ours.item())
    assert ours.item() == pytest.approx(plain.item(), rel=rel)


def test_train_suite_rows(monkeypatch):
    monkeypatch.setitem(train.CPU_CASE, True, TINY)
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(train, "peak_memory_in_subprocess", lambda *args: 12.5)
    rows = bench.SUITES["train"](quick=True)
    steps, ops = [r for r in rows if r.suite == "train"], [r for r in rows if r.suite == "train-profile"]
    assert [(r.provider, r.baseline) for r in steps[:2]] == [(train.BASELINE, True), (train.OURS, False)]
    assert all(r.extra["peak MiB"] == 12.5 and r.extra["clips/s"] > 0 for r in steps[:2])
    assert [r.timing for r in steps[2:]] == [None, None] and steps[3].note.startswith("not measured")
    assert len(ops) == 2 * train.PROFILE_TOP and all(r.case.startswith(f"{r.provider}: ") for r in ops)
    assert "of the step" in ops[0].note and ops[0].timing.median_ms >= ops[1].timing.median_ms


def test_train_peak_memory_subprocess_prints_a_number():
    peak = peak_memory_in_subprocess(train.__name__, "1", "1", json.dumps(asdict(TINY)))
    assert peak is not None and peak > 0
