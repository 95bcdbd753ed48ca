"""The training loop (i3d_fast.training.loop): schedule, exact resume, several processes, evaluate."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from i3d_fast.training import TrainOptions, evaluate, make_synthetic, train
from i3d_fast.training.loop import learning_rate

pytest.importorskip("av")

SMALL = dict(clip=8, crop=32, short_side=32, init="none", workers=0, threads=1, progress=False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "data"
    make_synthetic(root, classes=2, train_per_class=4, val_per_class=2, frames=12, size=32)
    return root


def _weights(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _metrics(out: Path):
    drop = ("seconds", "clips_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_learning_rate_schedules():
    assert [learning_rate(1.0, "cosine", s, 10, 0) for s in (0, 5)] == [1.0, pytest.approx(0.5)]
    assert learning_rate(1.0, "cosine", 10, 10, 0) == pytest.approx(0.0)
    assert [learning_rate(1.0, "step", s, 10, 0) for s in (3, 4, 7, 8)] == pytest.approx([1, 0.1, 0.1, 0.01])
    assert [learning_rate(0.4, "constant", s, 10, 4) for s in (0, 1, 3, 9)] == pytest.approx([0.1, 0.2, 0.4, 0.4])
    assert learning_rate(1.0, "cosine", 4, 10, 4) == pytest.approx(1.0)  # cosine starts after the warmup


@pytest.mark.parametrize("stop_at, how", [(3, "max-steps"), (4, "max-steps"), (3, "killed")])
def test_a_stopped_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(synthetic, tmp_path, monkeypatch,
                                                                               stop_at, how):
    """Stopped by --max-steps in the middle of epoch 1 or at its end, or killed during step 4 with a
    checkpoint every 3 steps (--save-every): the resumed run ends where the uninterrupted one does."""
    from i3d_fast.training import loop

    options = dict(data=str(synthetic / "train"), val=str(synthetic / "val"), epochs=2, batch_size=2, lr=0.05,
                   stream="both", dropout=0.5, **SMALL)
    whole = train(TrainOptions(out=str(tmp_path / "whole"), **options), log=lambda _: None)
    log = []
    if how == "killed":
        def dies_at_step_4(base, schedule, step, *args):
            if step == 3:
                raise KeyboardInterrupt
            return learning_rate(base, schedule, step, *args)

        with monkeypatch.context() as patch:
            patch.setattr(loop, "learning_rate", dies_at_step_4)
            with pytest.raises(KeyboardInterrupt):
                train(TrainOptions(out=str(tmp_path / "parts"), save_every=stop_at, **options), log=log.append)
    else:
        train(TrainOptions(out=str(tmp_path / "parts"), max_steps=stop_at, **options), log=log.append)
        assert any("stopped after step" in line and "continue with --resume" in line for line in log)
    assert len(_metrics(tmp_path / "parts")) == (stop_at // 4)
    with pytest.raises(ValueError, match=r"started with other options \(lr: 0.05 -> 0.1\)"):
        train(TrainOptions(out=str(tmp_path / "parts"), resume=True, **{**options, "lr": 0.1}))
    log.clear()
    resumed = train(TrainOptions(out=str(tmp_path / "parts"), resume=True, **options), log=log.append)
    assert any(f"resuming {tmp_path / 'parts'} at epoch {stop_at // 4 + 1}, step {stop_at % 4} of 4" in line
               for line in log)
    for stream in ("rgb", "flow"):
        for name, value in whole[stream].state_dict().items():
            torch.testing.assert_close(resumed[stream].state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
        on_disk = _weights(tmp_path / "parts" / f"{stream}.safetensors")
        torch.testing.assert_close(on_disk, _weights(tmp_path / "whole" / f"{stream}.safetensors"), rtol=1e-5,
                                   atol=1e-6)
    parts, whole_metrics = _metrics(tmp_path / "parts"), _metrics(tmp_path / "whole")
    assert len(parts) == len(whole_metrics) == 2
    for a, b in zip(parts, whole_metrics):
        assert a == pytest.approx(b, rel=1e-5)
    record = _metrics(tmp_path / "whole")[-1]
    assert {"train_loss_rgb", "train_top1_flow", "val_top1_fused", "val_top5_rgb", "lr"} <= set(record)
    assert not [p for p in (tmp_path / "parts").iterdir() if p.name.startswith(".")]  # no partial files


def test_resume_refuses_a_folder_without_a_run(synthetic, tmp_path):
    with pytest.raises(ValueError, match="holds no run to resume"):
        train(TrainOptions(data=str(synthetic / "train"), out=str(tmp_path / "none"), resume=True, **SMALL))


def test_two_processes_give_the_weights_of_one_process_with_the_same_global_batch(synthetic, tmp_path):
    options = ["--epochs", "1", "--clip", "8", "--crop", "32", "--short-side", "32", "--init", "none", "--lr", "0.05",
               "--bn", "frozen", "--dropout", "0", "--workers", "0", "--threads", "1"]
    one = train(TrainOptions(data=str(synthetic / "train"), out=str(tmp_path / "one"), epochs=1, batch_size=4,
                             lr=0.05, bn="frozen", dropout=0.0, **SMALL), log=lambda _: None)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "i3d_fast.cli", "train", str(synthetic / "train"), "--out", str(tmp_path / "two"),
                          "--batch-size", "2", *options], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "batch 2 x 2 process(es)" in run.stdout and run.stdout.count("train: done") == 1  # rank 0 speaks
    two = _weights(tmp_path / "two" / "rgb.safetensors")
    for name, value in one["rgb"].state_dict().items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert _metrics(tmp_path / "two")[0]["step"] == _metrics(tmp_path / "one")[0]["step"] == 2


def test_evaluate_averages_clips_and_fuses_the_streams(synthetic, tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    models = train(TrainOptions(data=str(synthetic / "train"), out=str(run), epochs=1, batch_size=2, stream="both",
                                **SMALL), log=lambda _: None)
    result = evaluate(synthetic / "val", run, clips_per_video=2, workers=0, log=lambda _: None)
    assert result["videos"] == 4 and result["clips_per_video"] == 2 and result["clip"] == 8
    assert {"top1_rgb", "top1_flow", "top1_fused", "top5_fused"} <= set(result)
    assert result["top5_fused"] == 1.0  # two classes
    matrix = result["confusion"]["rows_true_columns_predicted"]
    assert result["confusion"]["stream"] == "fused" and sum(map(sum, matrix)) == 4
    assert sum(matrix[i][i] for i in range(2)) / 4 == result["top1_fused"]
    assert (run / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run / "evaluation.json").read_text())
    assert saved["top1_fused"] == result["top1_fused"]
    # the fused prediction of one video by hand: both streams, logits averaged over the 2 clips and summed
    from i3d_fast.training.data import ClipSpec, load_clip

    video = sorted((synthetic / "val" / "down").iterdir())[0]
    clips = load_clip(video, ClipSpec(("rgb", "flow"), 8, 32, 32, train=False, clips=2))
    with torch.no_grad():
        fused = sum(models[s](clips[s]).mean(0) for s in ("rgb", "flow"))
    mine = next(v for v in result["per_video"] if v["video"] == str(video))
    assert mine["label"] == 0 and mine["predicted"]["fused"] == int(fused.argmax())
    with pytest.raises(ValueError, match="no labels.txt"):
        evaluate(synthetic / "val", tmp_path, workers=0)


def test_bf16_autocast_trains_and_fp16_needs_cuda(synthetic, tmp_path):
    options = dict(data=str(synthetic / "train"), epochs=1, batch_size=4, **SMALL)
    before = train(TrainOptions(out=str(tmp_path / "fp32"), max_steps=1, **options), log=lambda _: None)["rgb"]
    after = train(TrainOptions(out=str(tmp_path / "bf16"), precision="bf16", **options), log=lambda _: None)["rgb"]
    weights = after.logits.conv3d.weight
    assert weights.dtype == torch.float32 and torch.isfinite(weights).all()  # fp32 master weights
    assert not torch.equal(weights, before.logits.conv3d.weight)
    record = _metrics(tmp_path / "bf16")[0]
    assert record["step"] == 2 and 0 < record["train_loss_rgb"] < 10
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--precision fp16 needs a CUDA device"):
            train(TrainOptions(out=str(tmp_path / "fp16"), precision="fp16", **options))


@pytest.mark.parametrize("changes, message", [
    (dict(stream="both", init="weights.safetensors"), "one weights file cannot start both streams"),
    (dict(stream="flow", init="kinetics400"), "only the RGB stream has Kinetics weights"),
    (dict(batch_size=9), "8 videos, fewer than one global batch"),
    (dict(crop=48, short_side=32), "--crop 48 needs a --short-side of at least that many pixels"),
    (dict(warmup_epochs=1), r"--warmup-epochs must be in \[0, epochs\)"),
])
def test_bad_training_options_are_refused_before_any_step(synthetic, tmp_path, changes, message):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    options = {**dict(data=str(synthetic / "train"), out=str(tmp_path / "run"), epochs=1, batch_size=2), **SMALL,
               **changes}
    if options["init"].endswith(".safetensors"):
        options["init"] = str(tmp_path / options["init"])
    with pytest.raises(ValueError, match=message):
        train(TrainOptions(**options))
    assert not (tmp_path / "run" / "resume.safetensors").exists()


def test_a_split_list_trains_with_its_video_root(synthetic, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 down\n2 up\n")
    videos = sorted((synthetic / "train").glob("*/*.mp4"))
    (lists / "trainlist01.txt").write_text("".join(f"{v.parent.name}/{v.name} {1 + (v.parent.name == 'up')}\n"
                                                   for v in videos))
    (lists / "testlist01.txt").write_text("".join(f"{v.parent.name}/{v.name}\n"
                                                  for v in sorted((synthetic / "val").glob("*/*.mp4"))))
    train(TrainOptions(data=str(lists / "trainlist01.txt"), video_root=str(synthetic / "train"),
                       val=str(lists / "testlist01.txt"), val_video_root=str(synthetic / "val"),
                       out=str(tmp_path / "run"), epochs=1, batch_size=4, **SMALL), log=lambda _: None)
    record = _metrics(tmp_path / "run")[0]
    assert record["clips"] == 8 and record["val_videos"] == 4
    assert (tmp_path / "run" / "labels.txt").read_text() == "down\nup\n"


def test_tsn_sampling_trains_on_the_consensus_of_the_segments(synthetic, tmp_path):
    options = dict(data=str(synthetic / "train"), val=str(synthetic / "val"), epochs=1, batch_size=2,
                   sampling="tsn", segments=2, **{**SMALL, "clip": 4})
    models = train(TrainOptions(out=str(tmp_path / "tsn"), **options), log=lambda _: None)
    record = _metrics(tmp_path / "tsn")[0]
    assert record["clips"] == 8 and record["val_videos"] == 4 and 0 < record["train_loss_rgb"] < 10
    result = evaluate(synthetic / "val", tmp_path / "tsn", workers=0, log=lambda _: None)
    assert result["segments"] == 2 and result["top1_rgb"] == record["val_top1_rgb"]  # the same 2 segment centres
    from i3d_fast.training.data import ClipSpec, load_clip
    from i3d_fast.training.loop import clip_logits

    video = sorted((synthetic / "val" / "up").iterdir())[0]
    clips = load_clip(video, ClipSpec(("rgb",), 4, 32, 32, train=False, segments=2))["rgb"]
    with torch.no_grad():
        consensus = clip_logits(models["rgb"], clips[None])[0]
        by_hand = (models["rgb"](clips[:1]) + models["rgb"](clips[1:])).squeeze(0) / 2
    torch.testing.assert_close(consensus, by_hand, rtol=1e-5, atol=1e-5)


def test_distillation_adds_the_teachers_softened_outputs_to_the_loss(synthetic, tmp_path):
    from i3d_fast.training.loop import distillation_loss

    student, teacher = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    t = 2.0
    p, q = (teacher / t).softmax(1), (student / t).softmax(1)
    by_hand = (p * (p.log() - q.log())).sum(1).mean() * t * t
    torch.testing.assert_close(distillation_loss(student, teacher, t), by_hand)
    assert float(distillation_loss(teacher, teacher, t)) == pytest.approx(0, abs=1e-12)
    # a flow teacher, then an RGB student taught by it: the clips carry flow for the teacher only
    common = dict(data=str(synthetic / "train"), epochs=1, batch_size=4, **SMALL)
    train(TrainOptions(out=str(tmp_path / "teacher"), stream="flow", **common), log=lambda _: None)
    taught = train(TrainOptions(out=str(tmp_path / "student"), distill_from=str(tmp_path / "teacher"),
                                distill_weight=1.0, **common), log=lambda _: None)
    alone = train(TrainOptions(out=str(tmp_path / "alone"), **common), log=lambda _: None)
    assert set(taught) == {"rgb"} and sorted(p.name for p in (tmp_path / "student").glob("*.safetensors")) == [
        "resume.safetensors", "rgb.safetensors"]
    assert _metrics(tmp_path / "student")[0]["train_loss_rgb"] > _metrics(tmp_path / "alone")[0]["train_loss_rgb"]
    assert not torch.equal(taught["rgb"].logits.conv3d.weight, alone["rgb"].logits.conv3d.weight)
    with pytest.raises(ValueError, match="no flow.safetensors"):
        train(TrainOptions(out=str(tmp_path / "x"), distill_from=str(tmp_path / "alone"), **common))
    with pytest.raises(ValueError, match="--distill-from trains an RGB student"):
        TrainOptions(out=str(tmp_path / "x"), stream="both", distill_from=str(tmp_path / "teacher"), **common)


def test_svm_fusion_fits_on_training_videos_and_is_reported_beside_the_other_fusions(synthetic, tmp_path):
    pytest.importorskip("sklearn")
    from i3d_fast.training.evaluate import VideoScores, svm_fusion

    # separable by the flow stream alone: the SVM finds it whatever the RGB scores say
    labels = torch.tensor([0, 1, 2] * 6)
    flow = torch.nn.functional.one_hot(labels, 3).double() * 4
    rgb = torch.randn(18, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scores = VideoScores({"rgb": rgb, "flow": flow}, labels, [f"v{i}" for i in range(18)], [])
    decision = svm_fusion(scores, scores, ["rgb", "flow"])
    assert decision.shape == (18, 3) and torch.equal(decision.argmax(1), labels)
    run = tmp_path / "run"
    train(TrainOptions(data=str(synthetic / "train"), out=str(run), epochs=1, batch_size=4, stream="both",
                       **SMALL), log=lambda _: None)
    result = evaluate(synthetic / "val", run, svm_train=synthetic / "train", workers=0, log=lambda _: None)
    assert {"top1_fused", "top1_fused_softmax", "top1_fused_svm", "top5_fused_svm"} <= set(result)
    with pytest.raises(ValueError, match="--svm-train fuses two streams"):
        only_rgb = tmp_path / "rgb_only"
        train(TrainOptions(data=str(synthetic / "train"), out=str(only_rgb), epochs=1, batch_size=4, **SMALL),
              log=lambda _: None)
        evaluate(synthetic / "val", only_rgb, svm_train=synthetic / "train", workers=0)


def test_multi_task_heads_share_the_network_and_learn_only_from_their_own_dataset(synthetic, tmp_path):
    from i3d_fast.models import InceptionI3d
    from i3d_fast.training.loop import TaskNetwork
    from i3d_fast.layers import Unit3D

    torch.manual_seed(0)
    network = InceptionI3d(num_classes=2, adaptive_head=True).eval()
    tasked = TaskNetwork(network, torch.nn.ModuleList([Unit3D(1024, 3, batch_norm=False, relu=False, bias=True)]))
    clips, tasks = torch.rand(3, 3, 8, 32, 32) * 2 - 1, torch.tensor([1, 0, 1])
    with torch.no_grad():
        first, second = tasked(clips, tasks)
        torch.testing.assert_close(first, network(clips[1:2]), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(second, tasked.task_model(1)(clips[[0, 2]]), rtol=1e-4, atol=1e-5)
    assert second.shape == (2, 3) and tasked.task_model(1).num_classes == 3
    assert tasked(clips[1:2], tasks[1:2])[1] is None  # no clip of task 2: no output, no loss, no gradient
    # a run on two datasets: the second dataset's networks in OUT/task2/, validated on its own classes
    other = tmp_path / "other"
    make_synthetic(other, classes=3, train_per_class=2, val_per_class=1, frames=12, size=32, seed=1)
    out = tmp_path / "run"
    assert __import__("i3d_fast.cli", fromlist=["main"]).main(
        ["train", str(synthetic / "train"), str(other / "train"), "--val", str(synthetic / "val"), "--val",
         str(other / "val"), "--out", str(out), "--epochs", "1", "--batch-size", "7", "--clip", "8", "--crop", "32",
         "--short-side", "32", "--init", "none", "--workers", "0", "--threads", "1"]) == 0
    record = _metrics(out)[0]
    assert record["clips"] == 14 and record["val_videos"] == 4 and record["val_videos_task2"] == 3
    assert {"val_top1_rgb", "val_top5_rgb_task2"} <= set(record)
    assert (out / "task2" / "labels.txt").read_text() == "down\nsideways\nup\n"
    first, second = (InceptionI3d.from_pretrained(str(p)) for p in (out / "rgb.safetensors",
                                                                   out / "task2" / "rgb.safetensors"))
    assert (first.num_classes, second.num_classes) == (2, 3)
    torch.testing.assert_close(first.Mixed_5c.b3b.conv3d.weight, second.Mixed_5c.b3b.conv3d.weight, rtol=0, atol=0)
    result = evaluate(other / "val", out / "task2", workers=0, log=lambda _: None)
    assert result["videos"] == 3 and result["top1_rgb"] == record["val_top1_rgb_task2"]


def test_flow_root_mirrors_the_common_folder_of_every_dataset(tmp_path):
    from i3d_fast.training.loop import clip_specs

    for split in ("train", "val"):
        (tmp_path / "data" / split / "up").mkdir(parents=True)
    options = TrainOptions(data=str(tmp_path / "data" / "train"), val=str(tmp_path / "data" / "val"),
                           out=str(tmp_path / "run"), flow_root=str(tmp_path / "flows"), stream="flow")
    train_spec, val_spec = clip_specs(options)
    video = "up/up_0000.mp4"
    expected = tmp_path / "flows" / "train" / "up" / "up_0000"
    assert train_spec.flow_folder(tmp_path / "data" / "train" / video) == expected
    assert val_spec.flow_folder(tmp_path / "data" / "val" / video) == tmp_path / "flows" / "val" / "up" / "up_0000"
    alone = clip_specs(TrainOptions(data=str(tmp_path / "data" / "train"), out=str(tmp_path / "run"),
                                    flow_root=str(tmp_path / "flows"), stream="flow"))[0]
    assert alone.flow_folder(tmp_path / "data" / "train" / video) == tmp_path / "flows" / "up" / "up_0000"
    from i3d_fast.video import VideoError

    with pytest.raises(VideoError, match="is not inside"):
        alone.flow_folder(tmp_path / "elsewhere" / "x.mp4")


def test_resume_checks_the_process_count_and_max_steps_counts_all_steps(synthetic, tmp_path):
    from i3d_fast.training.loop import _check_resumable

    options = TrainOptions(data=str(synthetic / "train"), out=str(tmp_path / "run"), max_steps=1, epochs=1,
                           batch_size=2, **SMALL)
    train(options, log=lambda _: None)
    log = []
    train(TrainOptions(**{**options.recorded(), "resume": True, "out": str(tmp_path / "run") + "/"}), log=log.append)
    assert any("at step 1 already (--max-steps 1); nothing to do" in line for line in log)  # no extra step
    with pytest.raises(ValueError, match="was trained by 2 process"):
        _check_resumable({**options.recorded(), "world": 2}, options, tmp_path / "run", 1)
