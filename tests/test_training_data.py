"""Training data: datasets, clip sampling and augmentation, seeded batches (i3d_fast.training.data)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from _videos import make_video
from i3d_fast.flow import write_flow_jpegs
from i3d_fast.training.data import (ClipDataset, ClipSpec, EpochBatches, Example, collate, flow_field_count,
                                    load_clip, load_examples, relabel, scan_split)
from i3d_fast.video import VideoError

pytest.importorskip("av")


def test_a_split_list_reads_labels_from_the_list_or_from_the_class_folder(tmp_path):
    (tmp_path / "classInd.txt").write_text("1 Walk\n2 Run\n")
    (tmp_path / "trainlist01.txt").write_text("Walk/a.avi 1\nRun/b.avi 2\n\n")
    (tmp_path / "testlist01.txt").write_text("run/c.avi\n")
    classes, train = scan_split(tmp_path / "trainlist01.txt", tmp_path / "videos")
    assert classes == ["Walk", "Run"]
    assert train == [Example(tmp_path / "videos/Walk/a.avi", 0), Example(tmp_path / "videos/Run/b.avi", 1)]
    assert load_examples(tmp_path / "testlist01.txt")[1] == [Example(tmp_path / "run/c.avi", 1)]
    (tmp_path / "bad.txt").write_text("Jump/x.avi\n")
    with pytest.raises(ValueError, match="bad.txt:1: no label given and the folder 'Jump' is not a class"):
        scan_split(tmp_path / "bad.txt")
    (tmp_path / "bad.txt").write_text("Walk/x.avi 3\n")
    with pytest.raises(ValueError, match=r"label 3 is not in classInd.txt \(1..2\)"):
        scan_split(tmp_path / "bad.txt")
    (tmp_path / "classInd.txt").unlink()
    with pytest.raises(ValueError, match="needs classInd.txt in the same folder"):
        scan_split(tmp_path / "trainlist01.txt")


def test_validation_classes_are_relabelled_by_the_training_classes(tmp_path):
    val = [Example(Path("b.mp4"), 0), Example(Path("a.mp4"), 1)]
    assert [e.label for e in relabel(val, ["run", "walk"], ["jump", "run", "walk"], "val")] == [1, 2]
    with pytest.raises(ValueError, match=r"val: class\(es\) \['swim'\] are not among the 2 training classes"):
        relabel(val, ["swim", "walk"], ["run", "walk"], "val")


def test_batches_do_not_depend_on_the_number_of_processes_and_resume_where_they_stopped():
    one = list(EpochBatches(22, 4, seed=3, epoch=1))
    assert len(one) == 5 and sorted(i for b in one for i, _ in b) != list(range(20))  # shuffled, last 2 dropped
    two = [list(EpochBatches(22, 2, seed=3, epoch=1, world=2, rank=r)) for r in range(2)]
    assert [a + b for a, b in zip(*two)] == one  # the same keys (videos and seeds), split between ranks
    assert list(EpochBatches(22, 4, seed=3, epoch=1, start=2)) == one[2:]
    assert list(EpochBatches(22, 4, seed=3, epoch=2)) != one
    val = [list(EpochBatches(5, 2, world=2, rank=r, shuffle=False)) for r in range(2)]
    assert val == [[[(0, None), (2, None)], [(4, None)]], [[(1, None), (3, None)]]]


@pytest.fixture
def video(tmp_path):
    return make_video(tmp_path / "clip.mp4", frames=12, height=40, width=48)


def test_validation_clips_are_evenly_spaced_central_crops_and_short_videos_loop(video):
    spec = ClipSpec(("rgb",), frames=4, crop=32, short_side=40, train=False, clips=3)
    clips = load_clip(video, spec)["rgb"]
    assert clips.shape == (3, 3, 4, 32, 32) and clips.dtype == torch.float32
    frames = np.stack(list(__import__("i3d_fast.video", fromlist=["frames"]).frames(video, spec.preprocess)))
    expected = torch.from_numpy(frames[:, 4:36, 8:40]).permute(3, 0, 1, 2).float() / 127.5 - 1
    for k, start in enumerate((0, 4, 8)):  # 12 frames, windows of 4: starts 0, 4, 8
        torch.testing.assert_close(clips[k], expected[:, start:start + 4])
    looped = load_clip(video, ClipSpec(("rgb",), frames=20, crop=32, short_side=40, train=False))["rgb"][0]
    torch.testing.assert_close(looped[:, 12:], looped[:, :8])
    with pytest.raises(ValueError, match="crop <= short side"):
        ClipSpec(("rgb",), frames=4, crop=48, short_side=40)


def test_training_clips_are_seeded_and_flip_negates_the_flow_x_component(video, tmp_path):
    # precomputed flow beside the video: field i = (i + 1, -(i + 1)) pixels everywhere
    fields = torch.stack([torch.full((2, 40, 48), i + 1.0) * torch.tensor([1.0, -1.0])[:, None, None]
                          for i in range(11)])
    write_flow_jpegs(fields, tmp_path / "clip", bound=20)
    assert flow_field_count(tmp_path / "clip") == 11
    spec = ClipSpec(("rgb", "flow"), frames=4, crop=24, short_side=40, train=True)
    flips = set()
    for seed in range(12):
        a, b = load_clip(video, spec, seed), load_clip(video, spec, seed)
        torch.testing.assert_close(a["rgb"], b["rgb"], rtol=0, atol=0)
        rgb, flow = a["rgb"], a["flow"] * 20  # flow back in pixels
        assert rgb.shape == (3, 4, 24, 24) and flow.shape == (2, 4, 24, 24)
        first = -flow[1, 0].mean().item() - 1  # the window's first field
        assert torch.allclose(flow[1].mean((1, 2)), -(first + 1 + torch.arange(4.0)), atol=0.2)
        flipped = flow[0].mean().item() < 0  # x negated
        assert torch.allclose(flow[0].mean((1, 2)).abs(), first + 1 + torch.arange(4.0), atol=0.2)
        # the test pattern's red channel grows left to right: a flipped crop has it falling
        assert (rgb[0, 0, :, -1].mean() < rgb[0, 0, :, 0].mean()) == flipped
        flips.add(flipped)
    assert flips == {True, False}
    assert not torch.equal(load_clip(video, spec, 1)["rgb"], load_clip(video, spec, 2)["rgb"])


def test_a_flow_folder_of_another_size_than_the_frames_is_refused(video, tmp_path):
    write_flow_jpegs(torch.zeros(11, 2, 20, 24), tmp_path / "clip", bound=20)
    with pytest.raises(VideoError, match="the flow in .* is 24x20 pixels; frames resized to a short side of 40 are "
                       "48x40"):
        load_clip(video, ClipSpec(("rgb", "flow"), frames=4, crop=16, short_side=40, train=False))
    with pytest.raises(VideoError, match="is 24x20 pixels; frames resized to a short side of 40 are not that size"):
        load_clip(video, ClipSpec(("flow",), frames=4, crop=16, short_side=40, train=False))


def test_flow_without_a_precomputed_folder_is_solved_on_the_fly(video):
    flow = load_clip(video, ClipSpec(("flow",), frames=3, crop=24, short_side=40, train=False))["flow"][0]
    assert flow.shape == (2, 3, 24, 24)
    # the test pattern's square moves 2 px right per frame: the flow is positive in x around it
    assert flow[0].amax() * 20 > 1.0


def test_a_bad_video_is_replaced_in_training_and_skipped_in_evaluation(video, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    examples = [Example(broken, 0), Example(video, 1)]
    spec = ClipSpec(("rgb",), frames=2, crop=16, short_side=40, train=True)
    clips, example, used, failures = ClipDataset(examples, spec)[(0, 7)]
    assert example == examples[1] and used == 1 and failures[0][0] == str(broken)
    assert "not a readable video" in failures[0][1]
    eval_spec = ClipSpec(("rgb",), frames=2, crop=16, short_side=40, train=False)
    items = [ClipDataset(examples, eval_spec, replace=False)[(i, None)] for i in range(2)]
    batch = collate(items)
    assert batch.labels.tolist() == [1] and batch.clips["rgb"].shape == (1, 1, 3, 2, 16, 16)
    assert [f[0] for f in batch.failures] == [str(broken)]
    with pytest.raises(RuntimeError, match="2 videos in a row could not be read"):
        ClipDataset([Example(broken, 0), Example(broken, 1)], spec)[(0, 1)]


def test_tsn_segments_take_one_window_from_each_equal_segment():
    from i3d_fast.training.data import _windows

    rng = np.random.default_rng(0)
    for _ in range(20):
        picks = _windows(30, 4, rng, 1, 3)  # segments [0, 10), [10, 20), [20, 30)
        assert len(picks) == 3
        for k, window in enumerate(picks):
            assert window == list(range(window[0], window[0] + 4)) and 10 * k <= window[0] <= 10 * k + 6
    assert [w[0] for w in _windows(30, 4, None, 1, 3)] == [3, 13, 23]  # evaluation: segment centres
    assert [w[0] for w in _windows(12, 8, None, 1, 3)] == [0, 2, 4]  # longer than a segment: centred, clamped
    assert _windows(3, 4, rng, 1, 2) == [[0, 1, 2, 0]] * 2  # a short video loops


def test_tsn_training_clips_share_one_crop_and_flip(video):
    spec = ClipSpec(("rgb",), frames=2, crop=24, short_side=40, train=True, segments=3)
    clips = load_clip(video, spec, 5)["rgb"]
    assert clips.shape == (3, 3, 2, 24, 24)
    evaluation = load_clip(video, ClipSpec(("rgb",), frames=2, crop=24, short_side=40, train=False, segments=3))
    assert evaluation["rgb"].shape == (3, 3, 2, 24, 24)
    with pytest.raises(ValueError, match="exclude several clips per video"):
        ClipSpec(("rgb",), frames=2, crop=24, short_side=40, train=False, segments=3, clips=2)


def test_ten_crop_evaluation_takes_the_centre_and_corners_each_mirrored(video, tmp_path):
    write_flow_jpegs(torch.randn(11, 2, 40, 48), tmp_path / "clip", bound=20)
    spec = ClipSpec(("rgb", "flow"), frames=2, crop=24, short_side=40, train=False, ten_crop=True)
    views = load_clip(video, spec)
    assert views["rgb"].shape == (10, 3, 2, 24, 24) and views["flow"].shape == (10, 2, 2, 24, 24)
    centre = load_clip(video, ClipSpec(("rgb", "flow"), frames=2, crop=24, short_side=40, train=False))
    for stream in ("rgb", "flow"):
        torch.testing.assert_close(views[stream][0], centre[stream][0])
    torch.testing.assert_close(views["rgb"][1], views["rgb"][0].flip(-1))  # the mirrored centre
    mirrored_flow = views["flow"][0].flip(-1) * torch.tensor([-1.0, 1.0])[:, None, None, None]
    torch.testing.assert_close(views["flow"][1], mirrored_flow)
    frames = torch.from_numpy(np.stack(list(__import__("i3d_fast.video", fromlist=["frames"]).frames(
        video, spec.preprocess)))).permute(3, 0, 1, 2).float() / 127.5 - 1
    start = (11 - 2) // 2  # the central window over the 11 frames that have a flow field
    window = frames[:, start:start + 2]
    corners = [window[..., :24, :24], window[..., :24, 24:], window[..., 16:, :24], window[..., 16:, 24:]]
    for n, corner in enumerate(corners):
        torch.testing.assert_close(views["rgb"][2 + 2 * n], corner)
    with pytest.raises(ValueError, match="ten-crop is an evaluation sampling"):
        ClipSpec(("rgb",), frames=2, crop=24, short_side=40, train=True, ten_crop=True)


def test_bidirectional_flow_stacks_forward_fields_then_backward_ones(video):
    # the test pattern's 12-pixel square moves 2 px right per frame: forward flow +2 px in x on it, backward -2
    spec = ClipSpec(("flow",), frames=4, crop=40, short_side=40, train=False, bidirectional=True)
    flow = load_clip(video, spec)["flow"][0] * 20  # [2, 4, 40, 40] in pixels
    square = (slice(14, 26), None)
    for t, sign in enumerate((1, 1, -1, -1)):
        x = flow[0, t, square[0]]
        moving = x[x.abs() > 1.0]
        assert moving.numel() > 20 and (moving.sign() == sign).float().mean() > 0.9, (t, moving)
    # the first half is the forward flow of the window's second half
    forward = load_clip(video, ClipSpec(("flow",), frames=4, crop=40, short_side=40, train=False))["flow"][0]
    torch.testing.assert_close(flow[:, :2] / 20, forward[:, 2:])
    with pytest.raises(ValueError, match="needs the flow stream and an even clip"):
        ClipSpec(("flow",), frames=3, crop=40, short_side=40, bidirectional=True)
