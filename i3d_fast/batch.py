"""The batch runner behind ``i3d-fast features`` and ``i3d-fast flow``: one output per video, over
datasets of any size.

- **Naming**: a video's output is ``OUT/<stem><suffix>`` (a file such as ``.npy``, or a directory when
  the suffix is empty); with ``root``, ``OUT/<path relative to root, extension dropped><suffix>``, so
  a dataset's folder layout is kept. Two inputs with the same output name are refused up front.
- **Sharding**: inputs are sorted by output name and shard ``I/N`` (0 <= I < N) takes every N-th one
  from position I, so N machines (or processes) given the same inputs split them without overlap.
- **Resumable**: a video whose output exists is skipped. Each output is written atomically: the job
  writes into a fresh hidden temp directory beside it (``.<name>.partial-*``) which is renamed into
  place (a directory output) or from which the file is renamed (a file output), so an output exists only
  when complete. Temp leftovers of an interrupted run are removed when the same shard runs again.
- **Concurrent runs**: each output is produced under an exclusive lock (``flock`` on a file in the
  temp folder, released by the system when its process ends), so two runs on the same inputs and
  ``--out`` never produce one output twice or delete each other's temp folders: a video whose output
  another live run is producing is left to it ("busy"), and only leftovers whose owner is gone are
  removed.
- **Bad items**: a video that fails (missing, empty, corrupt, too short, ...) is reported and skipped;
  the run goes on. A summary at the end lists every failure.
- **Workers**: ``workers > 1`` runs videos in that many processes (spawned, each with its own copy of
  the job, its own :meth:`Job.setup` and ``cpu_count / workers`` torch threads); the parent only runs
  the job's cheap :meth:`Job.validate` first, and keeps at most ``workers`` videos in flight. When a
  worker process dies (a crash, ``os._exit``, the out-of-memory killer) only the videos in flight are
  affected: a new pool takes over the others, and the in-flight videos are tried again one at a
  time, so the one that kills its worker is reported as failed ("worker process died while
  processing ...") and the rest are done.
- **Exit code** (:attr:`Summary.exit_code`): 0 when every video is done or was already done, 1 when
  any failed, 130 when interrupted (Ctrl-C: running videos finish or are discarded, never half-written).
"""
from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, TextIO, Tuple, Union

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

from . import malloc
from ._atomic import PARTIAL, atomic_dir, atomic_file

PathLike = Union[str, Path]


class BatchError(ValueError):
    """The batch cannot start: bad shard, output name collisions, inputs outside ``root``, no inputs."""


class Job(abc.ABC):
    """One kind of per-video work. Subclasses are picklable configurations (sent to worker processes);
    whatever :meth:`setup` loads goes in attributes starting with ``_``, which are not pickled."""

    #: Shown in the progress bar and the summary.
    name: str = "job"
    #: Output suffix: a file suffix such as ".npy" (one file per video) or "" (one directory per video).
    output_suffix: str = ""

    def setup(self) -> None:
        """Loads what :meth:`process` needs (models, solvers), once per process that runs videos. Errors
        here stop the run."""

    def validate(self) -> None:
        """Cheap checks run in the parent process instead of :meth:`setup` when the videos run in worker
        processes: raise on a configuration that cannot work (missing weights or dependency, bad
        options) so that the run stops before any work. Must not keep models or open a GPU context."""

    def options(self) -> Dict[str, object]:
        """What determines this job's outputs (JSON-serialisable): recorded in the output folder's
        manifest, so a rerun with other options does not take the old outputs as done."""
        return {}

    @abc.abstractmethod
    def process(self, video: Path, target: Path) -> str:
        """Writes the output of ``video`` at ``target``: a file to create (file outputs), or an existing
        empty directory to fill (directory outputs). Returns a short note for the log. Raises on a bad video."""

    def __getstate__(self) -> Dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass(frozen=True)
class Task:
    video: Path
    output: Path


@dataclass
class Outcome:
    task: Task
    status: str  # "done" | "skipped" | "busy" (another run is producing it) | "failed"
    message: str = ""
    seconds: float = 0.0
    warnings: List[str] = field(default_factory=list)  # e.g. a truncated video: done, but only in part


@dataclass
class Summary:
    job: str
    shard: Tuple[int, int]
    total: int
    outcomes: List[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    def _count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def done(self) -> int:
        return self._count("done")

    @property
    def skipped(self) -> int:
        return self._count("skipped")

    @property
    def busy(self) -> int:
        return self._count("busy")

    @property
    def failures(self) -> List[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else (1 if self.failures else 0)

    def format(self) -> str:
        shard = f" (shard {self.shard[0]}/{self.shard[1]})" if self.shard[1] > 1 else ""
        lines = [f"{self.job}: {self.total} video(s){shard}: {self.done} done, {self.skipped} already done "
                 f"(skipped), {len(self.failures)} failed, in {self.seconds:.1f} s"]
        if self.busy:
            lines.append(f"{self.busy} video(s) left to another run that is producing them now")
        if self.interrupted:
            left = self.total - len(self.outcomes)
            lines.append(f"interrupted with {left} video(s) not finished; run the same command again to resume")
        warned = [o for o in self.outcomes if o.warnings]
        if warned:
            lines.append(f"{len(warned)} with warnings:")
            lines.extend(f"  {o.task.video}: {w}" for o in warned for w in o.warnings)
        if self.failures:
            lines.append("failed:")
            lines.extend(f"  {o.task.video}: {o.message}" for o in self.failures)
        return "\n".join(lines)


# -- planning -------------------------------------------------------------------------------------
def parse_shard(text: str) -> Tuple[int, int]:
    """"I/N" -> (I, N) with 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise BatchError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise BatchError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return index, count


def read_list(path: PathLike, root: Optional[PathLike] = None) -> List[Path]:
    """Video paths from a text file, one per line (blank lines and lines starting with # skipped);
    relative paths are taken relative to ``root`` when given (a dataset's list of paths relative to
    its top folder, used with ``--root``), else relative to the list file's folder."""
    base = Path(root) if root is not None else Path(path).parent
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"{path}: cannot read the list of videos ({exc})") from exc
    return [base / line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def plan(videos: Iterable[PathLike], out_dir: PathLike, suffix: str, root: Optional[PathLike] = None) -> List[Task]:
    """One task per video, sorted by output path; refuses duplicate output names."""
    out_dir = Path(out_dir)
    tasks: Dict[Path, Task] = {}
    clashes: List[str] = []
    for video in map(Path, videos):
        if video.is_dir():
            raise BatchError(f"{video} is a directory: pass video files (e.g. {video}/*.mp4) or --list FILE")
        if root is not None:
            try:
                rel = video.resolve().relative_to(Path(root).resolve())
            except ValueError:
                raise BatchError(f"{video} is not inside --root {root}") from None
            name = rel.with_suffix("") if rel.suffix else rel
        else:
            name = Path(video.stem if video.suffix else video.name)
        output = out_dir / (str(name) + suffix)
        if output in tasks:
            if tasks[output].video != video:
                clashes.append(f"{tasks[output].video} and {video} -> {output}")
            continue
        tasks[output] = Task(video, output)
    if clashes:
        raise BatchError("several videos would write the same output (use --root DIR to keep their folders, or "
                         "rename them): " + "; ".join(clashes[:5]) + (" ..." if len(clashes) > 5 else ""))
    if not tasks:
        raise BatchError("no input videos")
    return [tasks[k] for k in sorted(tasks)]


def select_shard(tasks: Sequence[Task], index: int, count: int) -> List[Task]:
    """Tasks ``index, index + count, index + 2 count, ...`` of the sorted list."""
    return list(tasks[index::count])


def _lock_path(output: Path) -> Path:
    """The lock file of an output: in the temp folder (not beside the outputs), named by a hash of
    the output's absolute path, so every process on this machine finds the same one."""
    digest = hashlib.sha1(str(Path(output).absolute()).encode()).hexdigest()
    return Path(tempfile.gettempdir()) / "i3d-fast-locks" / f"{digest}.lock"


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[bool]:
    """Holds the output's exclusive lock while the block runs and yields True, or yields False at once
    when another process holds it (another run producing the same output). The lock is an ``flock``:
    the system releases it when its process ends, however it ends, so a crashed run never blocks the
    next. Without ``fcntl`` (Windows) every output counts as free."""
    if fcntl is None:
        yield True
        return
    path = _lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def remove_stale(tasks: Sequence[Task]) -> int:
    """Deletes temp leftovers (``.<name>.partial-*``) of these tasks' outputs whose owner is gone (no
    process holds the output's lock); returns how many."""
    free = []
    for task in tasks:
        with output_lock(task.output) as unlocked:
            if unlocked:
                free.append(task.output)
    return _remove_partials(free)


def _remove_partials(outputs: Sequence[Path]) -> int:
    """Deletes the temp leftovers of ``outputs`` (the caller knows their owners are gone)."""
    names: Dict[Path, set] = {}
    for output in outputs:
        names.setdefault(output.parent, set()).add(output.name)
    removed = 0
    for parent, wanted in names.items():
        try:
            entries = list(os.scandir(parent))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not (entry.name.startswith(".") and PARTIAL in entry.name):
                continue
            if entry.name[1:].rsplit(PARTIAL, 1)[0] in wanted:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
                removed += 1
    return removed


# -- options manifest ------------------------------------------------------------------------------
#: The manifest in an output folder: the job and the options its outputs were produced with.
MANIFEST = ".i3d-fast-run.json"


def check_manifest(job: Job, out: Path, tasks: Sequence[Task], overwrite: bool) -> None:
    """Records ``job``'s options in ``out``/MANIFEST, or checks them against the recorded ones: on a
    difference raises :class:`BatchError` naming it (outputs made with other options must not count
    as done), unless ``overwrite``, which deletes these tasks' existing outputs so they are made again."""
    current = {"job": job.name, "options": job.options()}
    path = out / MANIFEST
    recorded = None
    if path.exists():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BatchError(f"{path}: unreadable options manifest ({exc}); delete it to start over") from None
    if recorded is not None and recorded != current:
        if not overwrite:
            was, now = recorded.get("options", {}), current["options"]
            diff = [f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
            if recorded.get("job") != current["job"]:
                diff.insert(0, f"job: {recorded.get('job')!r} -> {current['job']!r}")
            raise BatchError(f"{out} holds outputs made with other options ({'; '.join(diff)}); use another "
                             "--out, or --overwrite to make them again")
        for task in tasks:
            with output_lock(task.output) as mine:
                if not mine:
                    raise BatchError(f"--overwrite: another run is producing {task.output} now")
                if task.output.is_dir():
                    shutil.rmtree(task.output)
                elif task.output.exists():
                    task.output.unlink()
    if recorded != current:
        from ._atomic import atomic_write

        with atomic_write(path, "w") as f:
            f.write(json.dumps(current, indent=2, sort_keys=True) + "\n")


# -- running ---------------------------------------------------------------------------------------
def describe_error(exc: BaseException, video: PathLike) -> str:
    """A one-line failure message for ``video`` (without a repeated leading path)."""
    text = str(exc) or type(exc).__name__
    prefix = f"{video}: "
    text = text[len(prefix):] if text.startswith(prefix) else text
    return text if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {text}"


def execute(job: Job, task: Task) -> Outcome:
    """Runs one task atomically under its output's lock: skipped when its output exists, "busy" when
    another run holds the lock; a failure leaves nothing behind."""
    start = time.perf_counter()
    if task.output.exists():
        return Outcome(task, "skipped")
    from .video import TruncatedVideoWarning

    with output_lock(task.output) as mine:
        if not mine:
            return Outcome(task, "busy", "another run is producing it")
        if task.output.exists():  # finished by another run since the check above
            return Outcome(task, "skipped")
        _remove_partials([task.output])  # a crashed run's leftovers: we hold the lock, so their owner is gone
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncatedVideoWarning)
            outcome = _execute(job, task, start)
    outcome.warnings = [str(w.message) for w in caught if issubclass(w.category, TruncatedVideoWarning)]
    for w in caught:  # anything else goes on as it would have
        if not issubclass(w.category, TruncatedVideoWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return outcome


def _execute(job: Job, task: Task, start: float) -> Outcome:
    try:
        if job.output_suffix:
            with atomic_file(task.output) as target:
                note = job.process(task.video, target)
                if not target.is_file():
                    raise RuntimeError(f"the {job.name} job wrote no output file")
        else:
            with atomic_dir(task.output) as target:
                note = job.process(task.video, target)
    except Exception as exc:
        return Outcome(task, "failed", describe_error(exc, task.video), time.perf_counter() - start)
    return Outcome(task, "done", note or "", time.perf_counter() - start)


_WORKER_JOB: Optional[Job] = None
_WORKER_SETUP_ERROR: Optional[str] = None


class WorkerSetupError(RuntimeError):
    """The job's setup failed in a worker process (raised by the worker for each of its tasks)."""


def _init_worker(job: Job, threads: int, reuse_freed_memory: bool) -> None:
    global _WORKER_JOB, _WORKER_SETUP_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and lets running videos finish
    import torch

    torch.set_num_threads(threads)
    if reuse_freed_memory:  # as the parent's malloc (the i3d-fast commands set it)
        malloc.reuse_freed_memory()
    try:
        job.setup()
    except Exception as exc:  # reported with the first task, so the parent can stop the run
        _WORKER_SETUP_ERROR = f"{type(exc).__name__}: {exc}"
    _WORKER_JOB = job


def _work(task: Task) -> Outcome:
    if _WORKER_SETUP_ERROR is not None:
        raise WorkerSetupError(_WORKER_SETUP_ERROR)
    assert _WORKER_JOB is not None
    return execute(_WORKER_JOB, task)


def _died(task: Task, exc: BaseException) -> Outcome:
    return Outcome(task, "failed", f"worker process died while processing {task.video} (a crash, os._exit or the "
                                   f"out-of-memory killer: {exc})")


def _finished_earlier(outcome: Outcome) -> Outcome:
    """A retried task's outcome: "skipped" there means its output was completed in this run, by the
    worker pool that broke before it could report it: done."""
    if outcome.status != "skipped":
        return outcome
    return Outcome(outcome.task, "done", "finished before its worker pool broke")


def _run_workers(job: Job, todo: Sequence[Task], workers: int, record) -> None:
    """Runs ``todo`` in ``workers`` spawned processes, at most ``workers`` tasks in flight. A pool whose
    worker died is replaced; the tasks in flight then are retried one at a time (the one that kills its
    worker alone is failed), the tasks not started yet go to the new pool."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    pending = deque(todo)
    suspects: deque = deque()  # in flight when a worker died: each is retried alone
    retries: set = set()  # the futures of those retries
    while pending or suspects:
        size = min(workers, len(pending) + len(suspects))  # processes start on demand
        crashed: List[Task] = []
        with ProcessPoolExecutor(size, context, initializer=_init_worker,
                                 initargs=(job, threads, malloc.reusing())) as pool:
            in_flight: Dict[Future, Task] = {}
            try:
                while pending or suspects or in_flight:
                    if suspects:
                        if not in_flight:
                            task = suspects.popleft()
                            future = pool.submit(_work, task)
                            in_flight[future] = task
                            retries.add(future)
                    else:
                        while pending and len(in_flight) < workers:
                            task = pending.popleft()
                            in_flight[pool.submit(_work, task)] = task
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    died: List[Tuple[Task, BaseException]] = []
                    for future in done:
                        task = in_flight.pop(future)
                        try:
                            record(_finished_earlier(future.result()) if future in retries else future.result())
                        except BrokenProcessPool as exc:
                            died.append((task, exc))
                        except WorkerSetupError as exc:
                            raise BatchError(f"the {job.name} job could not start in a worker process: {exc}") from None
                    if died:
                        for future, task in in_flight.items():  # the broken pool fails the others in flight too
                            try:
                                record(future.result())
                            except BrokenProcessPool as exc:
                                died.append((task, exc))
                        in_flight.clear()
                        crashed = [task for task, _ in died]
                        if len(died) == 1:
                            record(_died(*died[0]))
                        else:  # which of them killed the worker is unknown: try each alone
                            suspects.extend(task for task, _ in died)
                        break  # a new pool
            except BaseException:
                for future in in_flight:
                    future.cancel()
                for future, task in in_flight.items():  # those already running finish (workers ignore
                    if not future.cancelled():           # Ctrl-C): count what they did
                        with contextlib.suppress(BaseException):
                            record(future.result())
                raise
        remove_stale(crashed)  # the temp outputs of the tasks in flight, now that the pool's processes are gone


def run(job: Job, tasks: Sequence[Task], workers: int = 1, shard: Tuple[int, int] = (0, 1),
        progress: Optional[bool] = None, log: Optional[TextIO] = None) -> Summary:
    """Runs ``job`` over ``tasks`` (already sharded). ``progress``: a tqdm bar on ``log`` (default
    stderr; None: only when ``log`` is a terminal). Failures are logged as they happen; returns the
    :class:`Summary`."""
    from tqdm import tqdm

    log = log if log is not None else sys.stderr

    if workers < 1:
        raise BatchError(f"--workers must be >= 1, got {workers}")
    started = time.perf_counter()
    summary = Summary(job.name, shard, len(tasks))
    remove_stale(tasks)
    todo = []
    for task in tasks:
        if task.output.exists():
            summary.outcomes.append(Outcome(task, "skipped"))
        else:
            todo.append(task)
    bar = tqdm(total=len(tasks), initial=summary.skipped, unit="video", desc=job.name, file=log,
               disable=(None if progress is None else not progress), dynamic_ncols=True)

    def record(outcome: Outcome) -> None:
        summary.outcomes.append(outcome)
        bar.update(1)
        if outcome.status == "failed":
            bar.write(f"{job.name}: failed: {outcome.task.video}: {outcome.message}", file=log)
        for warning in outcome.warnings:
            bar.write(f"{job.name}: warning: {warning}", file=log)

    try:
        if todo and (workers == 1 or len(todo) == 1):
            job.setup()
            for task in todo:
                record(execute(job, task))
        elif todo:
            job.validate()  # setup() runs in each worker
            _run_workers(job, todo, workers, record)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - started
    return summary
