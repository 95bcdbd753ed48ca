"""Simonyan & Zisserman's 2D two-stream ConvNet (i3d_fast.models.two_stream_2d) and its training."""
import pytest
import torch

from i3d_fast.models.two_stream_2d import CNNM, FrameStream, load_stream

SMALL = dict(channels=(8, 8, 16, 16, 16), hidden=(32, 16))


def test_the_spatial_stream_sees_the_centre_frame_and_the_temporal_one_stacked_flow():
    torch.manual_seed(0)
    spatial = FrameStream("spatial", 5, frames=1, dropout=0.0, **SMALL).eval()
    clip = torch.randn(2, 3, 7, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(spatial(clip), spatial.net(clip[:, :, 3]))
        changed = clip.clone()
        changed[:, :, [0, 1, 2, 4, 5, 6]] = 0  # only the centre frame matters
        torch.testing.assert_close(spatial(changed), spatial(clip))
    temporal = FrameStream("temporal", 5, frames=3, mean_flow_subtraction=True, dropout=0.0, **SMALL).eval()
    assert temporal.net.features[0].in_channels == 6
    flow = torch.randn(2, 2, 3, 32, 32)
    stacked = torch.stack([flow[:, 0, 0], flow[:, 1, 0], flow[:, 0, 1], flow[:, 1, 1], flow[:, 0, 2], flow[:, 1, 2]], 1)
    with torch.no_grad():
        by_hand = temporal.net(stacked - stacked.mean(dim=(2, 3), keepdim=True))
        torch.testing.assert_close(temporal(flow), by_hand)
        # camera motion (a constant displacement added to every field) is removed
        torch.testing.assert_close(temporal(flow + 3.0), by_hand, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="stacks 3 flow fields, got a clip of 4"):
        temporal(torch.randn(1, 2, 4, 32, 32))
    with pytest.raises(ValueError, match=r"takes clips Tensor\[B, 3, T, H, W\]"):
        spatial(torch.randn(1, 2, 4, 32, 32))


def test_cnn_m_takes_small_and_paper_sized_frames():
    net = CNNM(3, 10, **SMALL).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32)).shape == net(torch.randn(1, 3, 224, 224)).shape == (1, 10)


def test_a_saved_stream_loads_back_as_itself_and_i3d_files_as_i3d(tmp_path):
    from i3d_fast.models import InceptionI3d

    stream = FrameStream("temporal", 4, frames=2, **SMALL)
    stream.save_pretrained(tmp_path / "flow.safetensors")
    loaded = load_stream(tmp_path / "flow.safetensors")
    assert isinstance(loaded, FrameStream) and loaded.config == stream.config and not loaded.training
    for name, value in stream.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)
    InceptionI3d(num_classes=3, adaptive_head=True).save_pretrained(str(tmp_path / "rgb.safetensors"))
    assert isinstance(load_stream(tmp_path / "rgb.safetensors"), InceptionI3d)
    with pytest.raises(ValueError, match="an I3D network, not a two-stream-2d one"):
        FrameStream.from_pretrained(tmp_path / "rgb.safetensors")


def test_the_trainer_and_evaluate_run_the_2d_two_stream_convnet(tmp_path):
    pytest.importorskip("av")
    from i3d_fast.training import TrainOptions, evaluate, make_synthetic, train

    data = make_synthetic(tmp_path / "data", classes=2, train_per_class=4, val_per_class=2, frames=12, size=32)
    out = tmp_path / "run"
    models = train(TrainOptions(data=data["train"], val=data["val"], out=str(out), model="two-stream-2d",
                                stream="both", clip=4, crop=32, short_side=32, epochs=1, batch_size=4, workers=0,
                                threads=1, progress=False), log=lambda _: None)
    assert isinstance(models["rgb"], FrameStream) and models["flow"].kind == "temporal"
    assert models["flow"].net.features[0].in_channels == 8  # 4 flow fields x (x, y)
    result = evaluate(tmp_path / "data" / "val", out, clips_per_video=3, workers=0, log=lambda _: None)
    assert result["videos"] == 4 and {"top1_rgb", "top1_flow", "top1_fused"} <= set(result)
    with pytest.raises(ValueError, match="multi-task training and --distill-from need --model i3d"):
        TrainOptions(data=data["train"], extra_data=[data["train"]], out=str(tmp_path / "x"), model="two-stream-2d")


def test_the_command_line_stacks_ten_flow_fields_by_default(tmp_path, monkeypatch):
    from i3d_fast import cli

    seen = {}
    monkeypatch.setattr("i3d_fast.training.train", lambda options: seen.update(clip=options.clip))
    monkeypatch.setattr(cli, "_require_av", lambda: None)
    for model, clip in (("two-stream-2d", 10), ("i3d", 64)):
        assert cli.main(["train", "data", "--out", str(tmp_path / model), "--model", model]) == 0
        assert seen["clip"] == clip


def test_evaluate_ten_crop_reports_ten_views(tmp_path):
    pytest.importorskip("av")
    from i3d_fast.training import TrainOptions, evaluate, make_synthetic, train

    data = make_synthetic(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1, frames=12, size=32)
    train(TrainOptions(data=data["train"], out=str(tmp_path / "run"), model="two-stream-2d", clip=4, crop=24,
                       short_side=32, epochs=1, batch_size=4, workers=0, threads=1, progress=False), log=lambda _: None)
    result = evaluate(tmp_path / "data" / "val", tmp_path / "run", clips_per_video=2, ten_crop=True, workers=0,
                      log=lambda _: None)
    assert result["views_per_clip"] == 10 and result["videos"] == 2


def test_bidirectional_stacking_trains_and_evaluates(tmp_path):
    pytest.importorskip("av")
    from i3d_fast.training import TrainOptions, evaluate, make_synthetic, train

    data = make_synthetic(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1, frames=12, size=32)
    options = dict(data=data["train"], out=str(tmp_path / "run"), model="two-stream-2d", stream="flow", clip=4,
                   crop=24, short_side=32, epochs=1, batch_size=4, workers=0, threads=1, progress=False)
    models = train(TrainOptions(bidirectional=True, **options), log=lambda _: None)
    assert models["flow"].net.features[0].in_channels == 8
    assert evaluate(tmp_path / "data" / "val", tmp_path / "run", workers=0, log=lambda _: None)["videos"] == 2
    with pytest.raises(ValueError, match="--bidirectional stacks flow for --model two-stream-2d"):
        TrainOptions(bidirectional=True, **{**options, "model": "i3d"})


def test_starting_from_a_saved_stream_takes_this_runs_options(tmp_path):
    from i3d_fast.training import TrainOptions
    from i3d_fast.training.loop import build_frame_stream

    FrameStream("temporal", 2, frames=4, dropout=0.5, **SMALL).save_pretrained(tmp_path / "flow.safetensors")
    options = TrainOptions(data="d", out="o", model="two-stream-2d", clip=4, mean_flow_subtraction=True, dropout=0.2)
    model = build_frame_stream("flow", str(tmp_path), 3, options, log=lambda _: None)
    assert model.mean_flow_subtraction and model.num_classes == 3
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.2}
    assert model.config["dropout"] == 0.2 and model.config["mean_flow_subtraction"]
