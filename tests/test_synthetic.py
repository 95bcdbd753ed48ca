"""The synthetic motion dataset: layout, decodable videos, motion per class, determinism, appearance
that does not give the class away, argument checks and refusing to overwrite."""
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="PyAV is in the test extra: pip install '.[test]'")

from i3d_fast._optional import MissingDependencyError  # noqa: E402
from i3d_fast.training.synthetic import CLASSES, make_synthetic, render_clip  # noqa: E402
from i3d_fast.video import Preprocess, read_video  # noqa: E402

RAW = Preprocess(fps=None, short_side=None, crop=None)
SMALL = dict(classes=4, train_per_class=2, val_per_class=1, frames=8, size=32, seed=0)
#: Expected (dy, dx) between consecutive frames at the default 2 px/frame, written out independently.
EXPECTED_SHIFTS = {"up": [(-2, 0)], "down": [(2, 0)], "sideways": [(0, 2), (0, -2)], "still": [(0, 0)]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "data"
    return root, make_synthetic(root, **SMALL)


def _videos(root: Path):
    return sorted(root.glob("*/*/*.mp4"))


def _shift(before: np.ndarray, after: np.ndarray) -> tuple:
    """(dy, dx) such that ``after`` ~ ``np.roll(before, (dy, dx))``, by phase correlation of the grey frames."""
    grey = [f.astype(np.float64).mean(axis=-1) for f in (before, after)]
    cross = np.fft.fft2(grey[1] - grey[1].mean()) * np.conj(np.fft.fft2(grey[0] - grey[0].mean()))
    surface = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    peak = np.unravel_index(np.argmax(surface), surface.shape)
    return tuple(int(p - n if p > n // 2 else p) for p, n in zip(peak, surface.shape))


def test_layout_and_counts(dataset):
    root, summary = dataset
    assert CLASSES == ("up", "down", "sideways", "still")
    assert summary["classes"] == list(CLASSES)
    assert (summary["train_videos"], summary["val_videos"]) == (8, 4)
    assert (Path(summary["root"]), Path(summary["train"]), Path(summary["val"])) == (root, root / "train",
                                                                                    root / "val")
    assert sorted(p.name for p in root.iterdir()) == ["train", "val"]
    assert sorted(p.name for p in root.parent.iterdir()) == ["data"]  # no temp folder left beside it
    for split, count in (("train", 2), ("val", 1)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASSES)
        for name in CLASSES:
            assert sorted(p.name for p in (root / split / name).iterdir()) == [f"{name}_{i:04d}.mp4"
                                                                               for i in range(count)]


def test_videos_decode_to_the_requested_frames_and_size(dataset):
    root, _ = dataset
    videos = _videos(root)
    assert len(videos) == 12
    for path in videos:
        clip = read_video(path, RAW)
        assert clip.shape == (8, 32, 32, 3) and clip.dtype == np.uint8, path
        assert clip.std() > 5, f"{path}: no texture"


def test_motion_is_the_class_direction(dataset):
    root, _ = dataset
    for path in _videos(root):
        name = path.parent.name
        clip = read_video(path, RAW)
        shifts = [_shift(clip[t], clip[t + 1]) for t in range(len(clip) - 1)]
        assert shifts[0] in EXPECTED_SHIFTS[name] and shifts == shifts[:1] * (len(clip) - 1), f"{path}: {shifts}"


def test_speed_sets_the_shift(tmp_path):
    make_synthetic(tmp_path / "fast", classes=2, train_per_class=1, val_per_class=1, frames=3, size=32, speed=5)
    clip = read_video(tmp_path / "fast" / "val" / "down" / "down_0000.mp4", RAW)
    assert [_shift(clip[0], clip[1]), _shift(clip[1], clip[2])] == [(5, 0), (5, 0)]


def _first_frame(root: Path, split: str = "train", name: str = "up", index: int = 0) -> bytes:
    return read_video(root / split / name / f"{name}_{index:04d}.mp4", RAW)[0].tobytes()


def test_same_seed_same_videos_and_independent_of_generation_order(tmp_path):
    tiny = dict(classes=2, val_per_class=1, frames=2, size=16)
    make_synthetic(tmp_path / "a", train_per_class=1, seed=3, **tiny)
    make_synthetic(tmp_path / "b", train_per_class=1, seed=3, **tiny)
    make_synthetic(tmp_path / "more", train_per_class=3, seed=3, **tiny)
    make_synthetic(tmp_path / "other", train_per_class=1, seed=4, **tiny)
    first = _first_frame(tmp_path / "a")
    assert _first_frame(tmp_path / "b") == first
    assert _first_frame(tmp_path / "more") == first  # more videos per class do not change the others
    assert _first_frame(tmp_path / "more", "val", "down") == _first_frame(tmp_path / "a", "val", "down")
    assert _first_frame(tmp_path / "other") != first
    # videos differ from each other within one dataset
    assert _first_frame(tmp_path / "more", index=1) != _first_frame(tmp_path / "more", index=2)
    assert _first_frame(tmp_path / "a", "val") != first


def test_appearance_does_not_depend_on_the_class():
    """The same random state renders the same first frame for every class; the class only sets how
    the later frames are shifted."""
    for seed in range(3):
        clips = {name: render_clip(np.random.default_rng(seed), name, frames=4, size=32) for name in CLASSES}
        first = clips["up"][0]
        for name, clip in clips.items():
            np.testing.assert_array_equal(clip[0], first)
            dy, dx = _shift(clip[0], clip[1])
            assert (dy, dx) in EXPECTED_SHIFTS[name]
            for t in range(4):
                np.testing.assert_array_equal(clip[t], np.roll(first, (t * dy, t * dx), axis=(0, 1)))


def test_mean_colour_carries_no_class_information(tmp_path):
    """Per class, the mean colour of the first frames: the class means lie within the spread of the
    videos of one class (a class-dependent tint or brightness would separate them)."""
    per_class = 32
    make_synthetic(tmp_path / "d", classes=4, train_per_class=per_class, val_per_class=1, frames=2, size=16)
    colours = np.array([[read_video(tmp_path / "d" / "train" / name / f"{name}_{i:04d}.mp4", RAW)[0]
                         .reshape(-1, 3).mean(axis=0) for i in range(per_class)] for name in CLASSES])
    within = colours.std(axis=1, ddof=1).mean(axis=0)  # [3]: spread of videos inside a class
    assert (within > 10).all(), within  # the colour does vary from video to video
    class_means = colours.mean(axis=1)  # [classes, 3]
    spread_of_means = class_means.max(axis=0) - class_means.min(axis=0)
    # independent draws: each class mean scatters by within / sqrt(per_class) ~ 0.18 * within, so the
    # range of 4 of them exceeds `within` with a probability of about 0.04% per channel
    assert (spread_of_means < within).all(), (spread_of_means, within)


def test_progress_reports_every_video(tmp_path):
    calls = []
    summary = make_synthetic(tmp_path / "d", classes=3, train_per_class=2, val_per_class=1, frames=2, size=16,
                             progress=lambda done, total: calls.append((done, total)))
    assert summary["classes"] == ["up", "down", "sideways"]
    assert calls == [(i, 9) for i in range(1, 10)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(classes=1), "classes must be between 2 and 4"),
    (dict(classes=5), "classes must be between 2 and 4"),
    (dict(train_per_class=0), "train_per_class must be at least 1"),
    (dict(val_per_class=0), "val_per_class must be at least 1"),
    (dict(frames=1), "frames must be at least 2"),
    (dict(size=8), "size must be an even number of pixels, at least 16"),
    (dict(size=33), "size must be an even number of pixels, at least 16"),
    (dict(fps=0), "fps must be at least 1"),
    (dict(speed=0), "speed must be between 1 and"),
    (dict(speed=9, size=32), "speed must be between 1 and"),
    (dict(seed=-1), "seed must be non-negative"),
    (dict(frames=2.5), "frames must be an int"),
    (dict(classes=True), "classes must be an int"),
])
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic(tmp_path / "d", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_out_dir_with_files(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already contains files"):
        make_synthetic(out, classes=2, train_per_class=1, val_per_class=1, frames=2, size=16)
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=f"{a_file} exists and is not a folder"):
        make_synthetic(a_file, classes=2, train_per_class=1, val_per_class=1, frames=2, size=16)


def test_fills_an_empty_out_dir(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    make_synthetic(out, classes=2, train_per_class=1, val_per_class=1, frames=2, size=16)
    assert len(_videos(out)) == 4


def test_a_failure_leaves_nothing_behind(tmp_path):
    def fail_at_third(done, total):
        if done == 3:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        make_synthetic(tmp_path / "d", classes=2, train_per_class=2, val_per_class=1, frames=2, size=16,
                       progress=fail_at_third)
    assert list(tmp_path.iterdir()) == []


def test_missing_pyav_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` fail
    with pytest.raises(MissingDependencyError, match=r"i3d-fast\[video\]"):
        make_synthetic(tmp_path / "d", classes=2, train_per_class=1, val_per_class=1, frames=2, size=16)
    assert list(tmp_path.iterdir()) == []
