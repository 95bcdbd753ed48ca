"""Decoding (PyAV), 25 fps resampling by timestamps, resize / crop / grey, windows, and bad files."""
import math
from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("av", reason="PyAV is in the test extra: pip install '.[test]'")

from _videos import make_video, pattern  # noqa: E402

from i3d_fast import video  # noqa: E402
from i3d_fast.video import Preprocess, VideoError  # noqa: E402

RAW = Preprocess(fps=None, short_side=None, crop=None)
AT_25 = Preprocess(short_side=None, crop=None)


def _slots(count, source_fps, fps=25):
    """Expected source index per output slot for ``count`` frames at a constant ``source_fps``: FFmpeg's fps
    filter (round=near, halves up), written out directly in exact rational arithmetic."""
    slot_of = [math.floor(Fraction(i, 1) / Fraction(source_fps) * fps + Fraction(1, 2)) for i in range(count)]
    total = math.floor(Fraction(count, 1) / Fraction(source_fps) * fps + Fraction(1, 2))
    return [max(i for i, s in enumerate(slot_of) if s <= k) for k in range(total)]


@pytest.mark.parametrize("source_fps", [25, 30, 10, 24])
def test_resample_picks_frames_by_timestamp(source_fps):
    times = [i / source_fps for i in range(40)]
    out = list(video.resample(((t, 1 / source_fps, i) for i, t in enumerate(times)), 25.0))
    assert out == _slots(40, source_fps)
    assert len(out) == round(40 / source_fps * 25)
    if source_fps == 25:
        assert out == list(range(40))


def test_resample_variable_frame_durations_like_a_gif():
    # frames shown for 0.1 s, 0.02 s, 0.02 s, 0.3 s: long frames repeat, short ones may be dropped
    timed = [(0.0, 0.1, "a"), (0.1, 0.02, "b"), (0.12, 0.02, "c"), (0.14, 0.3, "d")]
    assert list(video.resample(iter(timed), 25.0)) == ["a", "a", "a", "c", "d", "d", "d", "d", "d", "d", "d"]


def test_resample_keeps_at_least_one_frame():
    assert list(video.resample(iter([(0.0, 0.001, "only")]), 25.0)) == ["only"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {
        "mpeg4_25": make_video(root / "mpeg4_25.mp4", 24, 25),
        "h264_30": make_video(root / "h264_30.mp4", 36, 30, codec="libx264"),
        "vp9_ntsc": make_video(root / "vp9_ntsc.mkv", 30, Fraction(30000, 1001), codec="libvpx-vp9"),
        "gif_10": make_video(root / "gif_10.gif", 20, 10, codec="gif", pix_fmt="rgb8"),
        "portrait": make_video(root / "portrait.mp4", 10, 25, height=80, width=48),
    }


def test_decode_real_videos_frame_counts_and_content(clips):
    raw = video.read_video(clips["mpeg4_25"], RAW)
    assert raw.shape == (24, 64, 80, 3) and raw.dtype == np.uint8
    # lossy codec: close to the encoded pattern, and each frame closest to its own source frame
    errors = [[np.abs(raw[i].astype(int) - pattern(j, 64, 80)).mean() for j in range(24)] for i in range(24)]
    assert all(min(row) == row[i] and row[i] < 4 for i, row in enumerate(errors))
    assert video.read_video(clips["mpeg4_25"], AT_25).shape[0] == 24  # 25 fps in, 25 fps out
    assert video.read_video(clips["h264_30"], AT_25).shape[0] == 30  # 1.2 s
    assert video.read_video(clips["vp9_ntsc"], AT_25).shape[0] == 25  # 1.001 s
    assert video.read_video(clips["gif_10"], AT_25).shape[0] == 50  # 2 s


@pytest.mark.parametrize("name, source_fps", [("h264_30", 30), ("gif_10", 10)])
def test_resampled_frames_are_the_right_source_frames(clips, name, source_fps):
    raw = video.read_video(clips[name], RAW)
    out = video.read_video(clips[name], AT_25)
    expected = _slots(len(raw), source_fps)
    assert len(out) == len(expected)
    for k, i in enumerate(expected):
        np.testing.assert_array_equal(out[k], raw[i])


def test_default_preprocessing_resize_then_centre_crop(clips):
    out = video.read_video(clips["mpeg4_25"])
    assert out.shape == (24, 224, 224, 3)
    raw = video.read_video(clips["mpeg4_25"], RAW)
    resized = video.resize_short_side(raw[5], 256)
    assert resized.shape == (256, 320, 3)
    np.testing.assert_array_equal(out[5], resized[16:240, 48:272])
    portrait = video.read_video(clips["portrait"], Preprocess(crop=None))
    assert portrait.shape[1:] == (427, 256, 3)  # 80x48 -> 426.67 rounds to 427
    gray = video.read_video(clips["mpeg4_25"], gray=True)
    assert gray.shape == (24, 224, 224)
    np.testing.assert_array_equal(gray[5], video.to_gray(out[5]))


def test_resize_and_grey_match_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    ours = video.resize_short_side(img, 256)
    theirs = cv2.resize(img, (ours.shape[1], ours.shape[0]), interpolation=cv2.INTER_LINEAR)
    assert np.abs(ours.astype(int) - theirs).max() <= 1  # OpenCV rounds its 11-bit fixed-point weights
    big = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    np.testing.assert_array_equal(video.to_gray(big), cv2.cvtColor(big, cv2.COLOR_RGB2GRAY))


def test_to_model_input_range_layout_and_errors():
    frames = np.stack([np.full((4, 5, 3), v, np.uint8) for v in (0, 255)])
    x = video.to_model_input(frames)
    assert x.shape == (1, 3, 2, 4, 5) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert x[0, :, 0].eq(-1).all() and x[0, :, 1].eq(1).all()
    with pytest.raises(ValueError, match=r"uint8 RGB frames \[T, H, W, 3\]"):
        video.to_model_input(frames.astype(np.float32))


def test_centre_crop_and_preprocess_validation():
    frame = np.arange(6 * 9).reshape(6, 9)
    np.testing.assert_array_equal(video.center_crop(frame, 4), frame[1:5, 2:6])
    with pytest.raises(VideoError, match="smaller than the 8x8 crop"):
        video.center_crop(frame, 8)
    with pytest.raises(ValueError, match="crop 300 is larger"):
        Preprocess(crop=300)
    with pytest.raises(ValueError, match="fps must be a positive"):
        Preprocess(fps=0.0)


def test_probe(clips):
    info = video.probe(clips["h264_30"])
    assert (info.codec, info.width, info.height, info.fps) == ("h264", 80, 64, 30.0)


def test_bad_files_raise_clear_errors(tmp_path, clips):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.mp4"  # an mp4's index (moov) is at the end: half a file is unreadable
    data = clips["h264_30"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    cases = [(tmp_path / "missing.mp4", "no such file"), (empty, r"empty file \(0 bytes\)"),
             (corrupt, "not a readable video"), (truncated, "not a readable video"), (tmp_path, "is a directory")]
    for path, message in cases:
        with pytest.raises(VideoError, match=message):
            video.read_video(path)


def test_windows_end_and_rest_tails():
    items = list(range(10))
    assert [(s, w) for s, w in video.windows(items, 4, 3)] == [(0, [0, 1, 2, 3]), (3, [3, 4, 5, 6]),
                                                                (6, [6, 7, 8, 9])]
    assert [s for s, _ in video.windows(items, 4, 4)] == [0, 4, 6]  # the last window ends at the last item
    assert [(s, w) for s, w in video.windows(items, 4, 4, tail="rest")] == [(0, [0, 1, 2, 3]), (4, [4, 5, 6, 7]),
                                                                           (8, [8, 9])]
    assert list(video.windows(items, 4, 2, tail="rest"))[-1] == (6, [6, 7, 8, 9])
    assert list(video.windows(items[:3], 4, 2)) == [(0, [0, 1, 2])]  # shorter than one window
    assert [s for s, _ in video.windows(items, 2, 5)] == [0, 5, 8]  # stride beyond size skips items
    assert list(video.windows([], 4, 2)) == []
    with pytest.raises(ValueError, match="size and stride must be >= 1"):
        list(video.windows(items, 0, 1))


def test_windows_hold_one_window_of_a_lazy_stream():
    pulled = []

    def stream():
        for i in range(1000):
            pulled.append(i)
            yield i

    it = video.windows(stream(), 8, 8)
    start, first = next(it)
    assert (start, first) == (0, list(range(8))) and len(pulled) == 8  # nothing read ahead


def test_frames_are_streamed_lazily(clips):
    it = video.frames(clips["h264_30"])
    first = next(it)
    assert first.shape == (224, 224, 3)
    it.close()  # closes the container without decoding the rest


def test_truncated_video_warns_or_fails_when_strict(tmp_path):
    """An mp4 cut in half (index at the front) decodes ~half its declared frames: a warning names it;
    strict_duration makes it an error. A whole video stays quiet."""
    import warnings

    from _videos import make_truncated_video

    from i3d_fast.video import Preprocess, TruncatedVideoWarning, VideoError, frames

    cut = make_truncated_video(tmp_path / "cut.mp4")
    with pytest.warns(TruncatedVideoWarning, match=r"cut.mp4: decoded \d\.\d\d s of the 2.40 s"):
        assert 0 < sum(1 for _ in frames(cut, Preprocess(crop=None))) < 60
    with pytest.raises(VideoError, match="of the 2.40 s its container declares"):
        list(frames(cut, Preprocess(crop=None, strict_duration=True)))
    whole = make_video(tmp_path / "whole.mp4", 60, 25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sum(1 for _ in frames(whole, Preprocess(crop=None))) == 60


def test_fifo_is_not_reported_as_an_empty_file(tmp_path):
    import os

    from i3d_fast.video import VideoError, probe

    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(VideoError, match="not a regular file"):
        probe(fifo)


def test_extreme_aspect_ratio_is_refused_not_resized_into_gigabytes():
    from i3d_fast.video import VideoError, resized_size

    assert resized_size(64, 80, 256) == (256, 320)
    with pytest.raises(VideoError, match="1x1000 pixels would be resized to 256x256000"):
        resized_size(1, 1000, 256)
