"""Training data: labelled videos, clip sampling with DeepMind's augmentation, and seeded batches.

Datasets (:func:`load_examples`):
- a folder of class subfolders of videos, ``DATA/<class>/<video>`` (class names: the sorted subfolder
  names; hidden files and sub-subfolders, e.g. flow folders, are skipped);
- a UCF101-style split file (``trainlist01.txt`` lines ``<class>/<video> <label>``, ``testlist01.txt`` lines
  ``<class>/<video>``; also how HMDB51's splits are commonly converted) with ``classInd.txt`` (``<index>
  <class>`` from 1) in the same folder; video paths are relative to ``video_root`` (default: the list's
  folder).

Clips (:class:`ClipDataset`): ``frames`` consecutive frames at ``fps`` after resizing to ``short_side``;
in training a uniformly random window, a random ``crop`` x ``crop`` crop and a random horizontal flip
(the flow's x component negated when flipped), in validation the central window and crop. RGB:
``Tensor[3, T, crop, crop]``; flow: ``Tensor[2, T, crop, crop]`` (TV-L1, clipped to +-``bound`` px, in
[-1, 1]); both in [-1, 1]. Flow field i is frame i -> i + 1, so an RGB clip and its flow clip cover the
same frames. A video shorter than the clip is looped.

Flow comes precomputed (``i3d-fast flow``'s denseflow JPEG folder ``<flow_root>/<class>/<video stem>/``,
by default beside the video: ``i3d-fast flow DATA/*/*.mp4 --root DATA --out DATA``) or, where no folder
exists, is solved on the fly on the CPU (slow: a TV-L1 solve per frame pair per step).

Reproducibility: every clip's randomness comes from its own seed, derived from (run seed, epoch, position
in the epoch), so batches do not depend on the number of loader workers or processes, and a resumed run
sees the same clips. A video that cannot be read is reported (``Batch.failures``) and replaced by the next
one in the dataset, so every batch keeps its size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..flow.i3d import JPEG_NAME as FLOW_JPEG_NAME
from ..video import Preprocess, VideoError, frames, to_gray

STREAMS = ("rgb", "flow")
CHANNELS = {"rgb": 3, "flow": 2}
#: consecutive unreadable videos after which a clip request gives up
MAX_REPLACEMENTS = 16


@dataclass(frozen=True)
class Example:
    video: Path
    label: int
    #: which dataset (multi-task training: one classification head per dataset)
    task: int = 0


def derive_seed(*numbers: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence: well spread, stable across versions)."""
    return int(np.random.SeedSequence([int(n) & 0xFFFFFFFFFFFFFFFF for n in numbers]).generate_state(
        2, np.uint32).astype(np.uint64) @ np.array([1 << 31, 1], np.uint64)) & ((1 << 63) - 1)


# -- datasets --------------------------------------------------------------------------------------------
def scan_folder(root: Path) -> Tuple[List[str], List[Example]]:
    """Class names (sorted subfolder names) and the video files of each class folder."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (expected DATA/<class>/<video files>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"{root}: found {len(classes)} class folder(s); training needs at least 2 "
                         "(DATA/<class>/<video files>)")
    examples = [Example(path, label) for label, name in enumerate(classes)
                for path in sorted((root / name).iterdir()) if path.is_file() and not path.name.startswith(".")]
    empty = [name for label, name in enumerate(classes) if not any(e.label == label for e in examples)]
    if empty:
        raise ValueError(f"{root}: class folder(s) without videos: {empty}")
    return classes, examples


def read_class_index(path: Path) -> List[str]:
    """``classInd.txt``: lines ``<index> <class>`` with indices 1..K in order."""
    names: List[str] = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(names) + 1:
            raise ValueError(f"{path}:{number}: expected '<index> <class>' with index {len(names) + 1}, got {line!r}")
        names.append(parts[1])
    if len(names) < 2:
        raise ValueError(f"{path}: {len(names)} class(es); training needs at least 2")
    return names


def scan_split(list_file: Path, video_root: Optional[Path] = None) -> Tuple[List[str], List[Example]]:
    """A UCF101-style split list with ``classInd.txt`` beside it (see the module docstring)."""
    list_file = Path(list_file)
    index_file = list_file.parent / "classInd.txt"
    if not index_file.is_file():
        raise ValueError(f"{list_file}: a split list needs classInd.txt in the same folder ({index_file} is missing)")
    classes = read_class_index(index_file)
    by_name = {name.lower(): label for label, name in enumerate(classes)}
    root = Path(video_root) if video_root is not None else list_file.parent
    examples = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{list_file}:{number}"
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise ValueError(f"{where}: expected '<class>/<video> [label]', got {line!r}")
        folder = parts[0].replace("\\", "/").split("/")[0]
        if len(parts) == 2:
            label = int(parts[1]) - 1
            if not 0 <= label < len(classes):
                raise ValueError(f"{where}: label {parts[1]} is not in classInd.txt (1..{len(classes)})")
        elif folder.lower() in by_name:
            label = by_name[folder.lower()]
        else:
            raise ValueError(f"{where}: no label given and the folder {folder!r} is not a class of classInd.txt")
        examples.append(Example(root / parts[0], label))
    if not examples:
        raise ValueError(f"{list_file}: no videos listed")
    return classes, examples


def load_examples(data: Path, video_root: Optional[Path] = None) -> Tuple[List[str], List[Example]]:
    """A class-folder dataset (a folder) or a split list (a ``.txt`` file)."""
    data = Path(data)
    if data.is_file():
        return scan_split(data, video_root)
    if video_root is not None:
        raise ValueError(f"--video-root applies to a split list file; {data} is a folder")
    return scan_folder(data)


def relabel(examples: Sequence[Example], classes: Sequence[str], into: Sequence[str], what: str) -> List[Example]:
    """Examples labelled by ``classes`` relabelled by the training class list ``into``."""
    position = {name: label for label, name in enumerate(into)}
    unknown = [name for name in classes if name not in position]
    if unknown:
        raise ValueError(f"{what}: class(es) {unknown[:5]} are not among the {len(into)} training classes")
    return [Example(e.video, position[classes[e.label]], e.task) for e in examples]


# -- clips -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSpec:
    """What one clip is (see the module docstring)."""

    streams: Tuple[str, ...]
    frames: int
    crop: int
    short_side: int = 256
    fps: float = 25.0
    bound: float = 20.0
    train: bool = True
    #: where precomputed flow folders are looked up: flow_root/<video path relative to data_root minus suffix>
    flow_root: Optional[Path] = None
    data_root: Optional[Path] = None
    strict_duration: bool = False
    #: evaluation: evenly spaced clips per video (training takes one random clip)
    clips: int = 1
    #: TSN sampling: one clip from each of this many equal segments of the video (random place in training,
    #: the centre in evaluation; replaces ``clips``); the network's outputs are averaged over them
    segments: int = 1
    #: training: random horizontal flips (off for classes a flip would change, e.g. "moving left")
    flip: bool = True
    #: evaluation: the centre and four corner crops, each also mirrored (10 views of every window, averaged)
    ten_crop: bool = False
    #: flow stacked both ways (Simonyan & Zisserman): of a window of T = ``frames`` frames from s, the T/2
    #: forward fields from its middle frame s + T/2 on, then the T/2 backward fields from s + T/2 down to s
    #: (TV-L1 from each frame to the previous one, solved on the fly)
    bidirectional: bool = False

    def __post_init__(self):
        if not self.streams or any(s not in STREAMS for s in self.streams):
            raise ValueError(f"streams must be a non-empty subset of {STREAMS}, got {self.streams}")
        if self.frames < 1 or self.crop < 1 or self.short_side < self.crop:
            raise ValueError(f"need frames >= 1 and crop <= short side, got frames={self.frames}, "
                             f"crop={self.crop}, short side={self.short_side}")
        if self.clips < 1 or (self.train and self.clips != 1):
            raise ValueError(f"clips per video must be >= 1 (1 in training), got {self.clips}")
        if self.bidirectional and ("flow" not in self.streams or self.frames % 2):
            raise ValueError(f"bidirectional stacking needs the flow stream and an even clip, got {self.streams}, "
                             f"{self.frames} frames")
        if self.ten_crop and self.train:
            raise ValueError("ten-crop is an evaluation sampling; training takes one random crop")
        if self.segments < 1 or (self.segments > 1 and self.clips != 1):
            raise ValueError(f"segments must be >= 1 and exclude several clips per video, got segments="
                             f"{self.segments}, clips={self.clips}")

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(fps=self.fps, short_side=self.short_side, crop=None, strict_duration=self.strict_duration)

    def flow_folder(self, video: Path) -> Path:
        """Where ``i3d-fast flow`` would have written this video's flow: beside it, or under ``flow_root``
        at the video's path relative to ``data_root`` (``i3d-fast flow ... --root DATA_ROOT --out FLOW_ROOT``)."""
        if self.flow_root is None:
            return video.with_suffix("")
        try:
            relative = video.resolve().relative_to(Path(self.data_root or ".").resolve())
        except ValueError:
            raise VideoError(f"{video} is not inside {self.data_root}, the folder --flow-root mirrors") from None
        return Path(self.flow_root) / relative.with_suffix("")


def flow_field_count(folder: Path) -> int:
    """How many consecutive ``flow_x/flow_y`` pairs from index 1 a denseflow folder holds (0: none)."""
    if not folder.is_dir():
        return 0
    found: Dict[str, set] = {"x": set(), "y": set()}
    for entry in folder.iterdir():
        m = FLOW_JPEG_NAME.match(entry.name)
        if m:
            found[m.group(1)].add(int(m.group(2)))
    count = 0
    while count + 1 in found["x"] and count + 1 in found["y"]:
        count += 1
    return count


def _read_flow_fields(folder: Path, indices: Sequence[int], bound: float) -> np.ndarray:
    """float32 [len(indices), 2, H, W] in pixels from the JPEG pairs (0-based field indices)."""
    from PIL import Image

    planes = []
    for i in indices:
        pair = []
        for axis in "xy":
            path = folder / f"flow_{axis}_{i + 1:05d}.jpg"
            try:
                with Image.open(path) as img:
                    pair.append(np.asarray(img.convert("L")))
            except (OSError, ValueError) as exc:
                raise VideoError(f"{path}: cannot decode the flow JPEG ({exc})") from exc
        if pair[0].shape != pair[1].shape or (planes and pair[0].shape != planes[0].shape[1:]):
            raise VideoError(f"{folder}: flow JPEGs of different sizes")
        planes.append(np.stack(pair))
    codes = np.stack(planes).astype(np.float32)
    return codes * (2 * bound / 255.0) - bound


def _solve_flow(rgb_frames: Sequence[np.ndarray]) -> np.ndarray:
    """TV-L1 between consecutive frames (greyscale), float32 [n - 1, 2, H, W] in pixels, on the CPU."""
    from ..flow import tvl1_video

    return tvl1_video(np.stack([to_gray(f) for f in rgb_frames])).numpy()


def _windows(length: int, size: int, rng: Optional[np.random.Generator], count: int, segments: int
             ) -> List[List[int]]:
    """Windows of ``size`` consecutive indices into ``length`` items (looped when ``length < size``).
    ``segments`` > 1 (TSN): one window per equal segment, at a random place in it (``rng``) or its centre
    (a window longer than its segment is centred on it, clamped to the video). Otherwise one window at a
    random start (``rng``), or ``count`` evenly spaced (one: the central window)."""
    if length < size:
        return [[i % length for i in range(size)]] * (segments if segments > 1 else 1 if rng is not None else count)
    if segments > 1:
        starts = []
        for k in range(segments):
            first, last = k * length // segments, (k + 1) * length // segments  # the segment [first, last)
            lo, hi = first, last - size  # window starts that stay inside the segment
            if hi < lo:  # the window is longer than the segment: centred on it, inside the video
                lo = hi = min(max(0, (first + last - size) // 2), length - size)
            starts.append(int(rng.integers(lo, hi + 1)) if rng is not None else (lo + hi) // 2)
    elif rng is not None:
        starts = [int(rng.integers(0, length - size + 1))]
    elif count == 1:
        starts = [(length - size) // 2]
    else:
        starts = [round(k * (length - size) / (count - 1)) for k in range(count)]
    return [list(range(start, start + size)) for start in starts]


def _crop_box(height: int, width: int, crop: int, rng: Optional[np.random.Generator], video: Path
              ) -> Tuple[int, int]:
    if height < crop or width < crop:
        raise VideoError(f"{video}: frames of {width}x{height} pixels are smaller than the {crop}x{crop} crop")
    if rng is None:
        return (height - crop) // 2, (width - crop) // 2
    return int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))


def _views(height: int, width: int, spec: ClipSpec, rng: Optional[np.random.Generator], flip: bool, video: Path
           ) -> List[Tuple[slice, slice, bool]]:
    """The crops taken of every window, as (rows, columns, mirrored): training one (random place, ``flip``);
    evaluation the centre, or with ``spec.ten_crop`` the centre and the four corners, each also mirrored."""
    top, left = _crop_box(height, width, spec.crop, rng, video)
    places = [(top, left)]
    if spec.ten_crop:
        places += [(0, 0), (0, width - spec.crop), (height - spec.crop, 0), (height - spec.crop, width - spec.crop)]
    mirrors = (False, True) if spec.ten_crop else (flip,)
    return [(slice(t, t + spec.crop), slice(l, l + spec.crop), m) for t, l in places for m in mirrors]


def load_clip(video: Path, spec: ClipSpec, seed: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """The clips of one video per stream of ``spec.streams`` (see the module docstring): in training
    (``spec.train`` and a ``seed``) one random clip ``Tensor[C, T, crop, crop]``; else ``spec.clips``
    evenly spaced clips with the central crop, ``Tensor[clips, C, T, crop, crop]`` (``spec.ten_crop``: 10 views
    of each, ``Tensor[clips x 10, ...]``). With ``spec.segments`` K > 1, one clip per segment, ``Tensor[K, C, T,
    crop, crop]`` (training: one random crop and flip for all K, as TSN). Raises VideoError for a bad
    video."""
    rng = np.random.default_rng(seed) if spec.train and seed is not None else None
    want_flow = "flow" in spec.streams
    folder = spec.flow_folder(video) if want_flow else None
    stored_fields = flow_field_count(folder) if folder is not None else 0
    if want_flow and spec.flow_root is not None and not stored_fields:
        raise VideoError(f"{video}: no flow in {folder} (--flow-root {spec.flow_root}); compute it with "
                         f"i3d-fast flow ... --root {spec.data_root} --out {spec.flow_root}")
    need_frames = "rgb" in spec.streams or (want_flow and not stored_fields) or spec.bidirectional
    decoded: List[np.ndarray] = list(frames(video, spec.preprocess)) if need_frames else []
    if need_frames and not decoded:
        raise VideoError(f"{video}: no frames")
    if want_flow and not stored_fields and len(decoded) < 2:
        raise VideoError(f"{video}: a single frame; flow needs at least 2")
    # window over the frames every stream has (flow field i covers frames i and i + 1)
    lengths = [len(decoded)] if "rgb" in spec.streams else []
    if want_flow:
        lengths.append(stored_fields or len(decoded) - 1)
    picks = _windows(min(lengths), spec.frames, rng, spec.clips, spec.segments)
    flip = rng is not None and bool(rng.random() < 0.5) and spec.flip
    height, width = decoded[0].shape[:2] if decoded else (None, None)
    fields = None
    if want_flow:
        used = sorted({i for window in picks for i in window})
        if stored_fields:
            solved = _read_flow_fields(folder, used, spec.bound)
        else:
            solved = _solve_flow(decoded[used[0]:used[-1] + 2])[[i - used[0] for i in used]]
        where = {i: n for n, i in enumerate(used)}
        fields = [solved[[where[i] for i in window]] for window in picks]  # each [T, 2, H, W]
        if (height is not None and solved.shape[2:] != (height, width)) or min(solved.shape[2:]) != spec.short_side:
            raise VideoError(f"{video}: the flow in {folder} is {solved.shape[3]}x{solved.shape[2]} pixels; "
                             f"frames resized to a short side of {spec.short_side} are "
                             f"{f'{width}x{height}' if height else 'not that size'} (computed with another "
                             "--short-side?)")
        height, width = solved.shape[2:]
        if spec.bidirectional:
            half = spec.frames // 2
            fields = [np.concatenate([forward[half:], _solve_flow([decoded[i] for i in window[half::-1]])])
                      for forward, window in zip(fields, picks)]
    views = _views(height, width, spec, rng, flip, video)
    out: Dict[str, torch.Tensor] = {}
    if "rgb" in spec.streams:
        clips = np.stack([np.stack([decoded[i][rows, cols] for i in window])[:, :, ::-1 if mirror else 1]
                          for window in picks for rows, cols, mirror in views])  # [K x views, T, h, w, 3]
        rgb = torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 4, 1, 2, 3)
        out["rgb"] = rgb.float().div_(127.5).sub_(1.0)
    if fields is not None:
        negate_x = np.array([-1.0, 1.0], np.float32)[:, None, None]
        clips = np.stack([window[:, :, rows, cols][..., ::-1] * negate_x if mirror else window[:, :, rows, cols]
                          for window in fields for rows, cols, mirror in views])  # [K x views, T, 2, h, w]
        flow = torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 2, 1, 3, 4)
        out["flow"] = flow.clamp(-spec.bound, spec.bound).div_(spec.bound)
    return {stream: clip[0] for stream, clip in out.items()} if rng is not None and spec.segments == 1 else out


# -- datasets and batches for torch.utils.data -----------------------------------------------------------
@dataclass
class Batch:
    """Stacked clips per stream ``Tensor[B, C, T, crop, crop]`` (evaluation: ``[B, clips, C, T, crop, crop]``;
    no streams when no video of the batch could be read), labels and tasks ``Tensor[B]`` (int64), the
    dataset indices used, and the videos that failed on the way (path, reason)."""

    clips: Dict[str, torch.Tensor]
    labels: torch.Tensor
    tasks: torch.Tensor
    indices: List[int]
    failures: List[Tuple[str, str]] = field(default_factory=list)

    def pin_memory(self) -> "Batch":
        """Page-locked copies of the tensors (the DataLoader calls this with ``pin_memory=True``)."""
        return Batch({k: v.pin_memory() for k, v in self.clips.items()}, self.labels.pin_memory(),
                     self.tasks.pin_memory(), self.indices, self.failures)


class ClipDataset(torch.utils.data.Dataset):
    """``dataset[(index, seed)]`` -> (clips or None, example used, index used, failures). An unreadable video is
    replaced by the next one (``replace``, for training: batches keep their size) or skipped (clips None;
    evaluation counts only what it read)."""

    def __init__(self, examples: Sequence[Example], spec: ClipSpec, replace: bool = True):
        if not examples:
            raise ValueError("no videos to load")
        self.examples, self.spec, self.replace = list(examples), spec, replace

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: Tuple[int, Optional[int]]):
        from ..batch import describe_error

        index, seed = key
        failures: List[Tuple[str, str]] = []
        for attempt in range(min(MAX_REPLACEMENTS, len(self.examples)) if self.replace else 1):
            example = self.examples[(index + attempt) % len(self.examples)]
            try:
                clips = load_clip(example.video, self.spec, seed)
                return clips, example, (index + attempt) % len(self.examples), failures
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # a bad video: report it, use the next one
                failures.append((str(example.video), describe_error(exc, example.video)))
        if not self.replace:
            return None, self.examples[index], index, failures
        raise RuntimeError(f"{len(failures)} videos in a row could not be read, e.g. {failures[0][0]}: "
                           f"{failures[0][1]}")


def collate(items) -> Batch:
    """Stacks the items that have clips (skipped videos have none); failures of all."""
    read = [item for item in items if item[0] is not None]
    streams = read[0][0] if read else {}
    clips = {stream: torch.stack([item[0][stream] for item in read]) for stream in streams}
    return Batch(clips, torch.tensor([item[1].label for item in read], dtype=torch.int64),
                 torch.tensor([item[1].task for item in read], dtype=torch.int64), [item[2] for item in read],
                 [failure for item in items for failure in item[3]])


class EpochBatches(torch.utils.data.Sampler):
    """Batches of ``(index, seed)`` keys for one epoch and one process.

    Training (``shuffle``): a permutation seeded by (seed, epoch), cut into global batches of
    ``batch_size * world`` (the incomplete last one dropped); process ``rank`` takes its ``batch_size``
    slice of each, from global batch ``start`` on (resuming). Each key's seed is derived from (seed,
    epoch, position), so the clips are the same whatever ``world`` and the loader workers.
    Validation (not ``shuffle``): every index once, process ``rank`` taking ``rank::world``, no seeds."""

    def __init__(self, size: int, batch_size: int, *, seed: int = 0, epoch: int = 0, world: int = 1, rank: int = 0,
                 shuffle: bool = True, start: int = 0):
        self.size, self.batch_size, self.seed, self.epoch = size, batch_size, seed, epoch
        self.world, self.rank, self.shuffle, self.start = world, rank, shuffle, start

    def global_batches(self) -> int:
        """Steps per epoch (training) / batches of this process (validation)."""
        if self.shuffle:
            return self.size // (self.batch_size * self.world)
        mine = len(range(self.rank, self.size, self.world))
        return -(-mine // self.batch_size)

    def __len__(self) -> int:
        return self.global_batches() - (self.start if self.shuffle else 0)

    def __iter__(self) -> Iterator[List[Tuple[int, Optional[int]]]]:
        if not self.shuffle:
            mine = list(range(self.rank, self.size, self.world))
            for first in range(0, len(mine), self.batch_size):
                yield [(i, None) for i in mine[first:first + self.batch_size]]
            return
        order = np.random.default_rng(derive_seed(self.seed, self.epoch, 0x5A17)).permutation(self.size)
        step = self.batch_size * self.world
        for batch in range(self.start, self.global_batches()):
            first = batch * step + self.rank * self.batch_size
            yield [(int(order[p]), derive_seed(self.seed, self.epoch, p))
                   for p in range(first, first + self.batch_size)]


class RunBatches(torch.utils.data.Sampler):
    """The training batches of this process from epoch ``epoch``, global batch ``start``, to the end of
    epoch ``epochs - 1``: :class:`EpochBatches` one epoch after the other, so one DataLoader (and its
    workers, prefetching across epoch ends) serves the whole run."""

    def __init__(self, size: int, batch_size: int, *, seed: int, world: int, rank: int, epoch: int, start: int,
                 epochs: int):
        self.epochs = [EpochBatches(size, batch_size, seed=seed, epoch=e, world=world, rank=rank,
                                    start=start if e == epoch else 0) for e in range(epoch, epochs)]

    def __len__(self) -> int:
        return sum(len(e) for e in self.epochs)

    def __iter__(self) -> Iterator[List[Tuple[int, Optional[int]]]]:
        for epoch in self.epochs:
            yield from epoch


def loader(dataset: ClipDataset, batches: EpochBatches, workers: int, pin_memory: bool = False
           ) -> torch.utils.data.DataLoader:
    """A DataLoader over ``batches``: decoding and augmentation in ``workers`` processes (0: inline).
    The workers are spawned, not forked: a process forked after OpenMP ran (the training step's
    kernels, torch's intra-op threads) can deadlock on a lock one of those threads held."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                                       pin_memory=pin_memory, prefetch_factor=2 if workers else None,
                                       multiprocessing_context="spawn" if workers else None)
