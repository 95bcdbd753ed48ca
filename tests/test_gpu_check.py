"""benchmarks/gpu_check.py: without CUDA it stops at once with a clear message; its plan runs end to
end on the CPU in --dry-run mode (every step wired); the driver records failed, timed-out and
skipped steps and keeps going."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from i3d_fast.bench import conv3d_cuda, gpu_check

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the script would run the whole plan")
def test_without_cuda_it_exits_at_once_with_a_clear_message(tmp_path):
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "no CUDA device is visible to torch" in done.stderr and "--dry-run" in done.stderr
    assert time.monotonic() - began < 30  # seconds: torch's import, nothing else
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dry_run_runs_every_step_of_the_plan(tmp_path):
    out = tmp_path / "out"
    # run in the checkout, as the README says (the package may be installed from a wheel, as in CI)
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--dry-run"], capture_output=True,
                          text=True, timeout=600, cwd=SCRIPT.parents[1])
    summary = json.loads((out / "summary.json").read_text())
    assert done.returncode == 0, (done.stdout, (out / "summary.txt").read_text())
    assert summary["finished"] and summary["dry_run"]
    assert [s["name"] for s in summary["steps"]] == [s.name for s in gpu_check.PLAN]
    for step in summary["steps"]:
        assert step["status"] == "ok", step
        for name in step["files"]:
            assert (out / name).is_file(), name
    env = json.loads((out / "environment.json").read_text())
    assert {"torch", "triton", "cupy", "nvidia-smi", "git commit"} <= set(env)
    conv = json.loads((out / "conv-layers.json").read_text())["rows"]
    assert {r["provider"] for r in conv} == {conv3d_cuda.OURS, conv3d_cuda.BASELINE, conv3d_cuda.FOLDED,
                                             conv3d_cuda.CONV_ONLY}
    assert len({r["case"] for r in conv}) == len(gpu_check.DRY_LAYERS)
    model = json.loads((out / "model.json").read_text())["rows"]
    assert len(model) == 3 and all(r["extra"]["rel. error vs fp32"] < 1e-4 for r in model)
    assert "gpu tests collected" in summary["steps"][1]["headline"]
    assert "test_gpu_models.py::" in (out / "gpu-tests.log").read_text()


def test_driver_records_each_outcome_and_keeps_going(tmp_path, monkeypatch):
    outcomes = {"gpu-tests": ("failed", 1), "model": ("timed out", 1)}

    def fake_run(cmd, env, seconds, log):  # stands in for the step processes
        name = cmd[cmd.index("--step") + 1]
        status, rc = outcomes.get(name, ("ok", 0))
        files = [] if status != "ok" else [f"{name}.json"]
        (tmp_path / f"{name}.json").write_text("{}")
        (tmp_path / f"{name}.result.json").write_text(json.dumps({"status": status, "headline": name, "files": files}))
        assert "--dry-run" in cmd and env["TRITON_INTERPRET"] == "1"
        return rc

    monkeypatch.setattr(gpu_check, "_run_until", fake_run)
    records = gpu_check.run_plan(tmp_path, 480, dry_run=True, log=lambda _: None)
    assert [(r.name, r.status) for r in records] == [
        ("environment", "ok"), ("gpu-tests", "failed"), ("conv-layers", "ok"), ("model", "timed out"),
        ("train", "ok"), ("tvl1", "ok")]
    assert sum(r.allowance_s for r in records) <= 480
    text = (tmp_path / "summary.txt").read_text()
    assert "finished" in text and "gpu-tests    failed" in text

    records = gpu_check.run_plan(tmp_path, 20, dry_run=True, log=lambda _: None)  # too little for any step
    assert {r.status for r in records} == {"skipped"}
    assert json.loads((tmp_path / "summary.json").read_text())["finished"]


def test_a_step_past_its_allowance_is_interrupted(tmp_path):
    began = time.monotonic()
    with open(tmp_path / "log", "w") as log:
        rc = gpu_check._run_until([sys.executable, "-c", "import time; time.sleep(60)"], {}, 1.0, log)
    assert rc != 0 and time.monotonic() - began < 1.0 + gpu_check.GRACE_S + 5
    assert "KeyboardInterrupt" in (tmp_path / "log").read_text()


def test_peak_table():
    assert conv3d_cuda.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert conv3d_cuda.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert conv3d_cuda.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert conv3d_cuda.peak_tflops("NVIDIA A10") == 125.0 and conv3d_cuda.peak_tflops("NVIDIA L4") == 121.0
    assert conv3d_cuda.peak_tflops("Tesla T4") is None


@pytest.mark.gpu
def test_layer_rows_are_graph_timed_on_a_gpu():
    torch.backends.cudnn.benchmark = True
    conv = conv3d_cuda.Conv("Mixed_test.b1b", (2, 96, 4, 14, 14), 128, (3, 3, 3))
    rows = conv3d_cuda.layer_rows(conv, "bf16", "cuda", torch.Generator().manual_seed(0), repeat=5)
    assert [r.provider for r in rows] == [conv3d_cuda.BASELINE, conv3d_cuda.FOLDED, conv3d_cuda.CONV_ONLY,
                                          conv3d_cuda.OURS]
    assert rows[0].baseline and rows[0].note.startswith("cuDNN kernel")
    for r in rows:
        assert r.timing.median_ms > 0 and r.extra["TFLOP/s"] > 0
        assert "back-to-back" not in r.note  # every provider was captured in a CUDA graph
        if conv3d_cuda.peak_tflops(torch.cuda.get_device_name()):
            assert 0 < r.extra["% of peak"] < 100
