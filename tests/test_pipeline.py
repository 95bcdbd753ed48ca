"""Video -> logits / features: whole-video chunking and joining, sliding windows, too-short videos,
labels, and the two-stream path end to end."""
import pytest
import torch

pytest.importorskip("av", reason="PyAV is in the test extra: pip install '.[test]'")

from _videos import make_video  # noqa: E402

from i3d_fast import InceptionI3d, labels  # noqa: E402
from i3d_fast.models import FusedInceptionI3d  # noqa: E402
from i3d_fast.pipeline import HeadMean, Predictor, time_stride, top_k  # noqa: E402
from i3d_fast.video import Preprocess, VideoError, read_video, to_model_input  # noqa: E402

SMALL = Preprocess(short_side=64, crop=64)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return InceptionI3d(num_classes=5, adaptive_head=True).eval()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    return {"v20": make_video(root / "v20.mp4", 20), "v56": make_video(root / "v56.mp4", 56, codec="libx264"),
            "v5": make_video(root / "v5.mp4", 5)}


@pytest.mark.parametrize("fused", [True, False])
def test_whole_video_that_fits_in_one_chunk_is_one_forward_pass(small, videos, fused):
    predictor = Predictor(small, device="cpu", preprocess=SMALL, fused=fused)
    assert isinstance(predictor.runners["rgb"], FusedInceptionI3d if fused else InceptionI3d)
    result = predictor.predict(videos["v20"])
    with torch.no_grad():
        direct = small(to_model_input(read_video(videos["v20"], SMALL)))[0]
    assert result.frames == 20 and result.seconds == pytest.approx(0.8) and result.streams.keys() == {"rgb"}
    torch.testing.assert_close(result.logits, direct, rtol=0, atol=1e-6)


def test_chunks_are_joined_exactly_where_context_suffices(small, videos):
    # Conv3d_2c_3x3 sees 11 frames (radius 5): 8 frames of context at each inner chunk edge is enough, and
    # chunks of even length keep the SAME-padding phase of the 56-frame clip, so joining is exact.
    whole = Predictor(small, device="cpu", preprocess=SMALL, chunk=64, overlap=0)
    chunked = Predictor(small, device="cpu", preprocess=SMALL, chunk=32, overlap=16)  # chunks 0-32, 16-48, 32-56
    a = whole.features(videos["v56"], "Conv3d_2c_3x3")
    b = chunked.features(videos["v56"], "Conv3d_2c_3x3")
    assert a.shape == b.shape == (192, 28, 16, 16)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # deep endpoints join to the full clip's length (one step per 8 frames), and the Logits head runs once over
    # the joined steps: the same as the head over the joined Mixed_5c features
    joined = chunked.features(videos["v56"], "Mixed_5c")
    assert joined.shape == (1024, *InceptionI3d.feature_size(56, 64, 64)) == (1024, 7, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(chunked.predict(videos["v56"]).logits, small.logits_from_features(joined[None])[0])


@pytest.mark.parametrize("adaptive, lengths, spatial", [
    (False, [3, 1, 4, 2], (9, 8)),  # 2x7x7 windows: several spatial positions, 2-step windows over every join
    (False, [2], (7, 7)),
    (True, [1], (3, 2)),  # a single step: the adaptive head pools 1x3x2
    (True, [1, 1, 3], (3, 2)),
])
def test_head_mean_equals_the_head_over_the_joined_features(adaptive, lengths, spatial):
    torch.manual_seed(2)
    model = InceptionI3d(num_classes=5, adaptive_head=adaptive).eval()
    pieces = [torch.randn(1, 1024, t, *spatial) for t in lengths]
    head = HeadMean()
    for piece in pieces:
        head.add(piece)
    with torch.no_grad():
        expected = model.logits_from_features(torch.cat(pieces, dim=2))
        torch.testing.assert_close(head.logits(model), expected, rtol=1e-5, atol=1e-5)


def test_head_mean_keeps_the_strict_heads_checks():
    head = HeadMean()
    head.add(torch.randn(1, 1024, 1, 7, 7))
    with pytest.raises(ValueError, match="smaller than the 2x7x7 head pool"):
        head.logits(InceptionI3d(num_classes=5))
    with pytest.raises(ValueError, match="cannot be joined"):
        head.add(torch.randn(1, 1024, 1, 6, 7))


def test_time_strides():
    assert [time_stride(e) for e in ("Conv3d_1a_7x7", "Mixed_3c", "Mixed_4f", "Mixed_5c", "Logits")] == [2, 2, 4, 8, 8]


def test_features_logits_equal_the_prediction(small, videos):
    predictor = Predictor(small, device="cpu", preprocess=SMALL)
    torch.testing.assert_close(predictor.features(videos["v20"], "Logits"), predictor.predict(videos["v20"]).logits)


def test_sliding_windows(small, videos):
    predictor = Predictor(small, device="cpu", preprocess=SMALL)
    windows = predictor.predict_windows(videos["v20"], window=12, stride=6)
    assert [(w.start, w.end) for w in windows] == [(0, 12), (6, 18), (8, 20)]
    frames = read_video(videos["v20"], SMALL)
    with torch.no_grad():
        for w in windows:
            torch.testing.assert_close(w.logits, small(to_model_input(frames[w.start:w.end]))[0], rtol=0, atol=1e-6)
    feats, spans = predictor.window_features(videos["v20"], "Mixed_5c", window=16, stride=16)
    assert feats.shape == (2, 1024, 2, 2, 2) and spans == [(0, 16), (4, 20)]


def test_too_short_video_names_the_minimum(videos):
    strict = Predictor(InceptionI3d(num_classes=5), device="cpu")
    with pytest.raises(VideoError, match=r"too short: 5 frame\(s\) at 25 fps \(0\.20 s\); the I3D Logits head "
                                         r"needs at least 9 frames"):
        strict.predict(videos["v5"])
    with pytest.raises(VideoError, match="too short"):
        strict.predict_windows(videos["v5"], window=16, stride=8)
    with pytest.raises(ValueError, match="window must be at least 9 frames"):
        strict.predict_windows(videos["v5"], window=8, stride=4)


def test_predictor_argument_checks(small):
    with pytest.raises(ValueError, match="multiple of 8"):
        Predictor(small, chunk=100)
    with pytest.raises(ValueError, match="overlap must be a multiple of 16"):
        Predictor(small, chunk=64, overlap=64)
    with pytest.raises(ValueError, match="RGB network must take 3 input channels"):
        Predictor(InceptionI3d(num_classes=5, in_channels=2, final_endpoint="Conv3d_1a_7x7"))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="flow_batch must be a positive int"):
            Predictor(small, flow_batch=bad)


def test_unknown_stream_or_endpoint_is_refused_up_front(small, videos):
    rgb_only = Predictor(small, device="cpu", preprocess=SMALL)
    for call in (lambda: rgb_only.features(videos["v20"], "Mixed_5c", stream="flow"),
                 lambda: rgb_only.window_features(videos["v20"], "Mixed_5c", 16, 8, stream="flow")):
        with pytest.raises(ValueError, match=r"stream 'flow' is not loaded \(streams: \('rgb',\)\)"):
            call()
    with pytest.raises(ValueError, match="unknown endpoint 'Mixed_9z'"):
        rgb_only.window_features(videos["v20"], "Mixed_9z", 16, 8)


def test_logits_from_features_checks():
    model = InceptionI3d(num_classes=5)
    with pytest.raises(ValueError, match="smaller than the 2x7x7 head pool"):
        model.logits_from_features(torch.zeros(1, 1024, 1, 7, 7))
    with pytest.raises(ValueError, match=r"Mixed_5c features Tensor\[B, 1024"):
        model.logits_from_features(torch.zeros(1, 832, 2, 7, 7))


def test_two_stream_end_to_end(small, videos):
    torch.manual_seed(1)
    flow = InceptionI3d(num_classes=5, in_channels=2, adaptive_head=True).eval()
    predictor = Predictor(small, flow, device="cpu", preprocess=SMALL)
    result = predictor.predict(videos["v20"])
    assert result.frames == 20 and set(result.streams) == {"rgb", "flow"}
    torch.testing.assert_close(result.logits, result.streams["rgb"] + result.streams["flow"])
    from i3d_fast import flow as tvl1

    frames = read_video(videos["v20"], SMALL)
    grey = read_video(videos["v20"], Preprocess(short_side=64, crop=None), gray=True)  # 64x80, cropped after flow
    fields = tvl1.to_i3d_input(tvl1.tvl1_video(grey)[..., :, 8:72], bound=20)  # [19, 2, 64, 64]
    with torch.no_grad():  # the RGB stream sees frames 0..T-2, aligned with the T-1 flow fields
        torch.testing.assert_close(result.streams["rgb"], small(to_model_input(frames[:-1]))[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(result.streams["flow"], flow(fields.permute(1, 0, 2, 3)[None])[0], rtol=1e-5,
                                   atol=1e-5)
    assert predictor.features(videos["v20"], "Mixed_5c", stream="flow").shape == (1024, 3, 2, 2)


def test_flow_for_a_cuda_device_is_solved_on_the_cpu_without_cupy(videos, monkeypatch):
    """A GPU machine without CuPy: the networks may run on CUDA, TV-L1 runs on the CPU (no CUDA tensor is
    made for it, so this runs here too)."""
    from i3d_fast.flow import solver, tvl1_video
    from i3d_fast.kernels import cuda as cuda_kernels
    from i3d_fast.pipeline import flow_batches

    monkeypatch.setattr(solver, "_warned_no_cupy", False)
    monkeypatch.setattr(cuda_kernels, "cupy_missing", lambda: "CuPy is not installed (test)")
    grey = read_video(videos["v20"], Preprocess(short_side=32, crop=None), gray=True)
    with pytest.warns(RuntimeWarning, match="TV-L1 optical flow runs on the CPU, not on cuda"):
        flows = list(flow_batches(iter(grey), torch.device("cuda"), batch=8))
    assert [f.shape[0] for f in flows] == [8, 8, 3] and all(f.device.type == "cpu" for f in flows)
    torch.testing.assert_close(torch.cat(flows), tvl1_video(grey), rtol=0, atol=0)


def test_kinetics400_labels_and_label_files(tmp_path):
    names = labels.kinetics400()
    assert len(names) == 400 == len(set(names)) and names[227] == "playing cricket" and names == sorted(names)
    assert labels.labels_for(400) == names and labels.labels_for(3) == ["class 0", "class 1", "class 2"]
    path = tmp_path / "mine.txt"
    path.write_text("run\njump\n\n")
    assert labels.labels_for(2, path) == ["run", "jump"]
    with pytest.raises(ValueError, match="2 class names, but the model has 3 classes"):
        labels.labels_for(3, path)
    path.write_text("run\n\njump\n")
    with pytest.raises(ValueError, match=r"blank class name on line\(s\) \[2\]"):
        labels.read_labels(path)


def test_shipped_kinetics400_labels_equal_deepminds_label_map(shared_data):
    theirs = (shared_data / "label_map.txt").read_text().splitlines()
    assert labels.kinetics400() == [line.strip() for line in theirs if line.strip()]


def test_top_k():
    out = top_k(torch.tensor([0.0, 2.0, 1.0]), ["a", "b", "c"], k=2)
    assert [(t["index"], t["label"]) for t in out] == [(1, "b"), (2, "c")]
    assert out[0]["probability"] == pytest.approx(torch.softmax(torch.tensor([0.0, 2.0, 1.0]), 0)[1].item())
    assert out[0]["logit"] == 2.0


def test_bf16_runs_the_fused_networks_in_bf16_close_to_fp32(small, videos):
    fp32 = Predictor(small, device="cpu", preprocess=SMALL, chunk=32, overlap=16)
    bf16 = Predictor(small, device="cpu", preprocess=SMALL, chunk=32, overlap=16, precision="bf16")
    assert bf16.precision == "bf16" and bf16.runners["rgb"].dtype == torch.bfloat16
    exact, low = fp32.predict(videos["v56"]), bf16.predict(videos["v56"])  # chunked: the head mean in float64
    assert low.logits.dtype == torch.float32
    scale = exact.logits.abs().max()
    assert 0 < (low.logits - exact.logits).abs().max() <= 0.05 * scale  # bf16 rounding, not another network
    windows = bf16.predict_windows(videos["v20"], window=16, stride=8)
    assert all(w.logits.dtype == torch.float32 for w in windows)


def test_auto_precision_is_bf16_only_on_the_fused_cpu_path_of_a_bf16_cpu(monkeypatch):
    from i3d_fast import _cpu
    from i3d_fast.pipeline import resolve_precision

    monkeypatch.setattr(_cpu, "has_native_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu", fused=False) == resolve_precision("auto", "cuda") == "fp32"
    monkeypatch.setattr(_cpu, "has_native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="bf16 runs on the fused path"):
        resolve_precision("bf16", "cpu", fused=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")
