"""The batch runner shared by `i3d-fast features` and `i3d-fast flow`: naming, sharding, atomic
outputs, resume, bad items, summary and exit codes. The jobs here do real per-video work (decoding)
that needs no model and no TV-L1."""
import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="PyAV is in the test extra: pip install '.[test]'")

from _videos import make_video  # noqa: E402

from i3d_fast import batch, video  # noqa: E402


class GreyFramesJob(batch.Job):
    """One folder per video with its greyscale frames as frame_00001.npy ...; refuses videos with fewer
    than ``need`` frames only after writing the ones it has (so a failure happens mid-output)."""

    name = "grey"
    output_suffix = ""

    def __init__(self, need: int = 1):
        self.need = need

    def process(self, video_path: Path, target: Path) -> str:
        count = 0
        for count, frame in enumerate(video.frames(video_path, video.Preprocess(short_side=None, crop=None),
                                                   gray=True), start=1):
            np.save(target / f"frame_{count:05d}.npy", frame)
        if count < self.need:
            raise video.VideoError(f"{video_path}: only {count} frames, this job needs {self.need}")
        return f"{count} frames"


class FrameCountJob(batch.Job):
    """One small .npy file per video: its number of frames at 25 fps."""

    name = "count"
    output_suffix = ".npy"

    def process(self, video_path: Path, target: Path) -> str:
        n = sum(1 for _ in video.frames(video_path, video.Preprocess(short_side=None, crop=None)))
        with open(target, "wb") as f:
            np.save(f, np.array([n]))
        return str(n)


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "data"
    (root / "x").mkdir(parents=True)
    (root / "y").mkdir()
    vids = [make_video(root / "x" / "a.mp4", 12), make_video(root / "x" / "b.mp4", 6),
            make_video(root / "y" / "c.gif", 10, 10, codec="gif", pix_fmt="rgb8")]
    (root / "y" / "empty.mp4").write_bytes(b"")
    return root, vids + [root / "y" / "empty.mp4"]


def test_parse_shard():
    assert batch.parse_shard("0/1") == (0, 1) and batch.parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(batch.BatchError, match="--shard"):
            batch.parse_shard(bad)


def test_plan_names_root_and_collisions(dataset, tmp_path):
    root, vids = dataset
    tasks = batch.plan(vids, tmp_path / "out", ".npy")
    assert [t.output.name for t in tasks] == ["a.npy", "b.npy", "c.npy", "empty.npy"]
    tasks = batch.plan(vids, tmp_path / "out", "", root=root)
    assert [t.output.relative_to(tmp_path / "out").as_posix() for t in tasks] == ["x/a", "x/b", "y/c", "y/empty"]
    make_video(root / "y" / "a.mkv", 3, codec="libvpx-vp9")
    with pytest.raises(batch.BatchError, match="same output.*a.mp4 and .*a.mkv"):
        batch.plan(vids + [root / "y" / "a.mkv"], tmp_path / "out", ".npy")
    assert len(batch.plan(vids + [root / "y" / "a.mkv"], tmp_path / "out", ".npy", root=root)) == 5
    with pytest.raises(batch.BatchError, match="is a directory"):
        batch.plan([root], tmp_path / "out", ".npy")
    with pytest.raises(batch.BatchError, match="not inside --root"):
        batch.plan(vids, tmp_path / "out", ".npy", root=root / "x")
    with pytest.raises(batch.BatchError, match="no input videos"):
        batch.plan([], tmp_path / "out", ".npy")


def test_shards_partition_the_sorted_inputs(tmp_path):
    videos = [tmp_path / f"v{i:02d}.mp4" for i in range(11)]
    tasks = batch.plan(reversed(videos), tmp_path / "out", ".npy")  # order of the arguments does not matter
    shards = [batch.select_shard(tasks, i, 3) for i in range(3)]
    assert sorted(t.video for s in shards for t in s) == videos
    assert [len(s) for s in shards] == [4, 4, 3]
    assert [t.video.name for t in shards[1]] == ["v01.mp4", "v04.mp4", "v07.mp4", "v10.mp4"]


def test_list_file(tmp_path):
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "sub" / "videos.txt"
    listing.write_text("# a comment\nclip1.mp4\n\n/abs/clip2.mp4\n")
    assert batch.read_list(listing) == [tmp_path / "sub" / "clip1.mp4", Path("/abs/clip2.mp4")]
    # with --root, relative entries are paths inside the dataset's root (as Kinetics/UCF lists are written)
    assert batch.read_list(listing, tmp_path / "data") == [tmp_path / "data" / "clip1.mp4", Path("/abs/clip2.mp4")]
    with pytest.raises(batch.BatchError, match="cannot read the list"):
        batch.read_list(tmp_path / "nope.txt")


def test_directory_outputs_bad_items_summary_and_resume(dataset, tmp_path):
    root, vids = dataset
    out = tmp_path / "out"
    tasks = batch.plan(vids, out, "", root=root)
    summary = batch.run(GreyFramesJob(need=8), tasks, progress=False)
    assert (summary.done, summary.skipped, len(summary.failures), summary.exit_code) == (2, 0, 2, 1)
    assert {o.task.video.name: o.message for o in summary.failures} == {
        "b.mp4": "only 6 frames, this job needs 8", "empty.mp4": "empty file (0 bytes)"}
    assert sorted(p.name for p in (out / "x" / "a").iterdir())[-1] == "frame_00012.npy"
    assert len(list((out / "y" / "c").iterdir())) == 25  # 10 frames at 10 fps -> 25 at 25 fps
    # nothing half-written: b wrote 6 frames before failing, and neither b nor a temp folder remains
    assert sorted(p.name for p in (out / "x").iterdir()) == ["a"]
    assert sorted(p.name for p in (out / "y").iterdir()) == ["c"]
    text = summary.format()
    assert "4 video(s): 2 done, 0 already done (skipped), 2 failed" in text and "b.mp4: only 6 frames" in text

    # resume: done videos are skipped, the bad ones are tried again
    again = batch.run(GreyFramesJob(need=8), tasks, progress=False)
    assert (again.done, again.skipped, len(again.failures), again.exit_code) == (0, 2, 2, 1)
    fixed = batch.run(GreyFramesJob(need=1), tasks, progress=False)
    assert (fixed.done, fixed.skipped, len(fixed.failures), fixed.exit_code) == (1, 2, 1, 1)


def test_file_outputs_stale_temp_is_cleaned_and_done_outputs_are_kept(dataset, tmp_path):
    _, vids = dataset
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.npy").write_bytes(b"finished earlier")  # a finished output from an earlier run
    stale = out / f".b.npy{batch.PARTIAL}k3j2"  # what a killed run leaves behind
    stale.mkdir()
    (stale / "b.npy").write_bytes(b"half")
    other = out / f".zzz.npy{batch.PARTIAL}1234"  # another shard's output: not ours to delete
    other.mkdir()
    tasks = batch.plan(vids[:3], out, ".npy")
    summary = batch.run(FrameCountJob(), tasks, progress=False)
    assert (summary.done, summary.skipped, summary.exit_code) == (2, 1, 0)
    assert (out / "a.npy").read_bytes() == b"finished earlier"
    assert int(np.load(out / "b.npy")[0]) == 6 and int(np.load(out / "c.npy")[0]) == 25
    assert sorted(p.name for p in out.iterdir()) == [other.name, "a.npy", "b.npy", "c.npy"]


def test_a_job_that_writes_nothing_fails_cleanly(dataset, tmp_path):
    class Silent(FrameCountJob):
        def process(self, video_path, target):
            return "nothing"

    _, vids = dataset
    summary = batch.run(Silent(), batch.plan(vids[:1], tmp_path / "out", ".npy"), progress=False)
    assert summary.failures[0].message == "RuntimeError: the count job wrote no output file"
    assert list((tmp_path / "out").iterdir()) == []


def test_interrupt_leaves_no_partial_output(dataset, tmp_path):
    class Interrupted(GreyFramesJob):
        def process(self, video_path, target):
            super().process(video_path, target)
            if video_path.name == "b.mp4":
                raise KeyboardInterrupt
            return "ok"

    _, vids = dataset
    out = tmp_path / "out"
    summary = batch.run(Interrupted(), batch.plan(vids, out, ""), progress=False)
    assert summary.interrupted and summary.exit_code == 130
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    assert "run the same command again to resume" in summary.format()


def test_progress_bar_and_failure_log(dataset, tmp_path):
    _, vids = dataset
    log = io.StringIO()
    batch.run(FrameCountJob(), batch.plan(vids, tmp_path / "out", ".npy"), progress=True, log=log)
    text = log.getvalue()
    assert "count: failed: " in text and "empty file (0 bytes)" in text
    assert "4/4" in text  # the tqdm bar reached the end


class CrashJob(batch.Job):
    """Writes the video's name; the video named crash.mp4 kills its worker process. Records in ``log``
    which process ran validate() and setup()."""

    name = "crash"
    output_suffix = ".txt"

    def __init__(self, log: Path, setup_error: bool = False):
        self.log, self.setup_error = log, setup_error

    def _note(self, what):
        import os

        with open(self.log, "a") as f:
            f.write(f"{what} {os.getpid()}\n")

    def validate(self):
        self._note("validate")

    def setup(self):
        self._note("setup")
        if self.setup_error:
            raise RuntimeError("out of GPU memory")

    def process(self, video_path: Path, target: Path) -> str:
        import os

        if video_path.name == "crash.mp4":
            os._exit(3)
        target.write_text(video_path.name)
        return "ok"


def test_a_retried_video_found_finished_counts_as_done(tmp_path):
    """A video in flight when another one killed the worker pool may have finished its output before the
    pool broke: its retry then finds the output and it was done in this run, not skipped."""
    task = batch.Task(tmp_path / "d.mp4", tmp_path / "d.txt")
    outcome = batch._finished_earlier(batch.Outcome(task, "skipped"))
    assert outcome.status == "done" and "before its worker pool broke" in outcome.message
    failed = batch.Outcome(task, "failed", "corrupt")
    assert batch._finished_earlier(failed) is failed


def test_a_dying_worker_fails_only_its_video(tmp_path):
    import os

    names = ["a", "b", "crash", "d", "e", "f"]
    tasks = batch.plan([tmp_path / f"{n}.mp4" for n in names], tmp_path / "out", ".txt")
    log = tmp_path / "log.txt"
    summary = batch.run(CrashJob(log), tasks, workers=2, progress=False)
    assert [o.task.video.name for o in summary.failures] == ["crash.mp4"]
    message = summary.failures[0].message
    assert message.startswith(f"worker process died while processing {tmp_path / 'crash.mp4'}"), message
    assert summary.done == 5 and summary.exit_code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{n}.txt" for n in names if n != "crash"]
    calls = [line.split() for line in log.read_text().splitlines()]
    assert calls[0] == ["validate", str(os.getpid())]  # the parent only validates ...
    assert all(what == "setup" and pid != str(os.getpid()) for what, pid in calls[1:])  # ... workers set up


def test_setup_failing_in_the_workers_stops_the_run(tmp_path):
    tasks = batch.plan([tmp_path / f"{n}.mp4" for n in "abc"], tmp_path / "out", ".txt")
    with pytest.raises(batch.BatchError, match="could not start in a worker process: RuntimeError: out of GPU memory"):
        batch.run(CrashJob(tmp_path / "log.txt", setup_error=True), tasks, workers=2, progress=False)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_output_another_run_is_producing_is_left_to_it(dataset, tmp_path):
    """Two runs on the same inputs and --out: while one holds an output's lock (producing it), the
    other neither produces it nor deletes its temp folder; once the owner is gone, a rerun does both."""
    root, vids = dataset
    tasks = batch.plan(vids[:2], tmp_path / "out", ".npy")
    owner_temp = tasks[0].output.parent / f".{tasks[0].output.name}.partial-owner"
    owner_temp.mkdir(parents=True)
    with batch.output_lock(tasks[0].output) as mine:  # "another run", mid-way through the first video
        assert mine
        summary = batch.run(FrameCountJob(), tasks, progress=False)
        assert [o.status for o in summary.outcomes] == ["busy", "done"] and summary.busy == 1
        assert owner_temp.exists() and not tasks[0].output.exists()
        assert "1 video(s) left to another run" in summary.format() and summary.exit_code == 0
    summary = batch.run(FrameCountJob(), tasks, progress=False)  # the owner is gone
    assert [o.status for o in summary.outcomes] == ["skipped", "done"]
    assert tasks[0].output.exists() and not owner_temp.exists()


def test_interrupt_with_workers_counts_the_videos_that_finished(dataset, tmp_path, monkeypatch):
    """Ctrl-C while two workers run: they finish their videos (workers ignore SIGINT), and the summary
    counts those as done instead of "0 done"."""
    from concurrent.futures import ALL_COMPLETED

    real_wait = batch.wait

    def wait_then_interrupt(futures, return_when):
        real_wait(futures, return_when=ALL_COMPLETED)  # both workers finish their video ...
        raise KeyboardInterrupt  # ... as Ctrl-C arrives

    monkeypatch.setattr(batch, "wait", wait_then_interrupt)
    _, vids = dataset
    summary = batch.run(FrameCountJob(), batch.plan(vids[:3], tmp_path / "out", ".npy"), workers=2, progress=False)
    assert summary.interrupted and summary.done == 2 and summary.exit_code == 130
    assert len(list((tmp_path / "out").glob("*.npy"))) == 2
