"""Video decoding for I3D with PyAV: any container and codec FFmpeg reads, GIF included.

DeepMind's preprocessing, frame by frame and streamed (a video is never held whole in memory):

1. decode with FFmpeg (PyAV) to RGB24;
2. resample to 25 fps by presentation timestamps, as FFmpeg's ``fps`` filter does (``round=near``):
   a frame shown at time t (seconds after the first frame) lands in output slot ``round(t * fps)``;
   several frames in one slot keep the last (drop), an empty slot repeats the previous frame
   (duplicate); the video ends after ``round(duration * fps)`` slots, where the duration runs to the
   end of the last frame (its own duration, else the stream's frame period);
3. resize so the short side is 256 pixels, bilinear (``align_corners=False``, no antialiasing, like
   OpenCV's ``INTER_LINEAR``), rounded back to uint8;
4. centre crop 224 x 224 (for the RGB stream; TV-L1 flow is computed on the full resized frame and
   cropped afterwards);
5. RGB to float in [-1, 1] (``x / 127.5 - 1``) when a clip is handed to the model; greyscale frames
   for flow use ITU-R BT.601 luma, ``Y = 0.299 R + 0.587 G + 0.114 B``, in OpenCV's 15-bit fixed-point
   form (``cv2.cvtColor(..., COLOR_RGB2GRAY)`` gives the same uint8 values).

Frames are ``numpy.uint8`` arrays ``[H, W, 3]`` (RGB) or ``[H, W]`` (grey). :func:`windows` cuts any
frame stream into fixed-length clips with overlap, holding one clip at a time.
"""
from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Deque, Iterable, Iterator, List, Optional, Tuple, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F

from ._optional import require

FPS = 25.0
SHORT_SIDE = 256
CROP = 224

PathLike = Union[str, Path]
T = TypeVar("T")


class VideoError(ValueError):
    """A video cannot be read (missing, empty, corrupt, no video stream) or is too short or too small."""


@dataclass(frozen=True)
class Preprocess:
    """How frames are prepared. ``fps=None``: keep every decoded frame; ``short_side=None``: no resize;
    ``crop=None``: no crop."""

    fps: Optional[float] = FPS
    short_side: Optional[int] = SHORT_SIDE
    crop: Optional[int] = CROP
    #: a video whose decoded frames end well before the duration its container declares (truncated or
    #: damaged) raises VideoError instead of warning (TruncatedVideoWarning)
    strict_duration: bool = False

    def __post_init__(self):
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be a positive number or None, got {self.fps}")
        for name in ("short_side", "crop"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if self.short_side is not None and self.crop is not None and self.crop > self.short_side:
            raise ValueError(f"crop {self.crop} is larger than the resized short side {self.short_side}")


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream (``frames`` is 0 when it does not know)."""

    path: str
    codec: str
    width: int
    height: int
    fps: Optional[float]
    frames: int
    duration: Optional[float]


def _av():
    return require("av", "video", "decoding video")


def _open(path: PathLike):
    av = _av()
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if path.is_dir():
        raise VideoError(f"{path}: is a directory, not a video file")
    if not path.is_file():
        raise VideoError(f"{path}: not a regular file (a FIFO, socket or device); videos are read from files")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: not a readable video ({_describe(exc)})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: has no video stream")
    return container


def _describe(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {text}"


def _stream_rate(stream) -> Optional[Fraction]:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def probe(path: PathLike) -> VideoInfo:
    """Container metadata of the first video stream (no decoding)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = _stream_rate(stream)
        duration = _declared_duration(stream, container)
        return VideoInfo(str(path), stream.codec_context.name, stream.codec_context.width,
                         stream.codec_context.height, float(rate) if rate else None, stream.frames or 0, duration)
    finally:
        container.close()


class TruncatedVideoWarning(UserWarning):
    """The decoded frames end well before the duration the container declares (a truncated or damaged
    file): the output covers only the decoded part."""


def _declared_duration(stream, container) -> Optional[float]:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / 1e6 if container.duration is not None else None


def _check_duration(path: PathLike, decoded: float, declared: Optional[float], strict: bool) -> None:
    """Warns (or raises with ``strict``) when ``decoded`` seconds fall short of ``declared`` by more than
    10% and more than half a second."""
    if declared is None or not declared - decoded > max(0.5, 0.1 * declared):
        return
    message = (f"{path}: decoded {decoded:.2f} s of the {declared:.2f} s its container declares (truncated or "
               "damaged?)")
    if strict:
        raise VideoError(message)
    warnings.warn(message + "; the result covers only the decoded part", TruncatedVideoWarning, stacklevel=3)


def decode(path: PathLike, strict_duration: bool = False) -> Iterator[Tuple[float, float, np.ndarray]]:
    """Every decoded frame as ``(time, duration, rgb)``: seconds since the stream's first frame, the
    frame's display duration in seconds (0 when unknown), and ``uint8 [H, W, 3]``.

    Raises :class:`VideoError` for unreadable input, and when no frame at all can be decoded. When the
    frames end well before the container's declared duration, warns with
    :class:`TruncatedVideoWarning` after the last frame (raises :class:`VideoError` with
    ``strict_duration``).
    """
    av = _av()
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = _stream_rate(stream)
        period = float(1 / rate) if rate else 1 / FPS
        t0: Optional[float] = None
        last = -math.inf
        last_duration = 0.0
        count = 0
        try:
            for frame in container.decode(stream):
                t = frame.time
                if t is None or t <= last:  # no timestamp, or not increasing: assume the nominal frame period
                    t = (last + period) if count else 0.0
                if t0 is None:
                    t0 = t
                duration = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
                rgb = frame.to_ndarray(format="rgb24")
                last, last_duration = t, duration or period
                count += 1
                yield t - t0, duration or period, rgb
        except av.error.FFmpegError as exc:
            raise VideoError(f"{path}: decoding failed after {count} frames ({_describe(exc)})") from exc
        if count == 0:
            raise VideoError(f"{path}: no frame could be decoded")
        _check_duration(path, last + last_duration - t0, _declared_duration(stream, container), strict_duration)
    finally:
        container.close()


def resample(frames: Iterable[Tuple[float, float, T]], fps: float) -> Iterator[T]:
    """Frames at a constant ``fps`` from timed frames ``(time, duration, frame)``, as FFmpeg's ``fps``
    filter does: a frame at time t goes to slot ``round(t * fps)`` (half up), later frames in the same
    slot replace earlier ones, empty slots repeat the previous frame, and the output ends after
    ``round((t_last + duration_last) * fps)`` slots (at least one slot per video)."""
    held = None
    next_slot = 0
    end = 0.0
    for t, duration, frame in frames:
        slot = math.floor(t * fps + 0.5 + 1e-9)
        while held is not None and next_slot < slot:
            yield held
            next_slot += 1
        held = frame
        end = t + duration
    if held is None:
        return
    total = max(math.floor(end * fps + 0.5 + 1e-9), 1)  # a last frame past the end is dropped
    while next_slot < total:
        yield held
        next_slot += 1


#: Longest side a resized frame may have: a 1000x1 video resized to a 256-pixel short side would
#: give 256000x256 frames (200 MB each); such inputs are refused instead of exhausting memory.
MAX_RESIZED_SIDE = 8192


def resized_size(height: int, width: int, short_side: int) -> Tuple[int, int]:
    """(H, W) with the short side at ``short_side`` and the aspect ratio kept (rounded). Raises
    :class:`VideoError` when the long side would exceed :data:`MAX_RESIZED_SIDE`."""
    if height <= width:
        size = short_side, max(1, int(width * short_side / height + 0.5))
    else:
        size = max(1, int(height * short_side / width + 0.5)), short_side
    if max(size) > MAX_RESIZED_SIDE:
        raise VideoError(f"frames of {height}x{width} pixels would be resized to {size[0]}x{size[1]} for a "
                         f"{short_side}-pixel short side (more than {MAX_RESIZED_SIDE} pixels on a side): an aspect "
                         "ratio this extreme is not a video this model can use")
    return size


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
    """Bilinear resize (``align_corners=False``, no antialiasing) of ``uint8 [H, W, C]`` or ``[H, W]``
    so the short side is ``short_side``; rounded back to uint8."""
    h, w = frame.shape[:2]
    size = resized_size(h, w, short_side)
    if size == (h, w):
        return frame
    x = torch.from_numpy(np.ascontiguousarray(frame))
    x = (x.permute(2, 0, 1) if x.dim() == 3 else x[None]).float()[None]
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)[0]
    y = y.round_().clamp_(0, 255).to(torch.uint8)
    return (y.permute(1, 2, 0) if frame.ndim == 3 else y[0]).contiguous().numpy()


def center_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """The central ``size x size`` pixels of ``[H, W, ...]`` (the extra pixel of an odd margin goes to
    the bottom/right)."""
    h, w = frame.shape[:2]
    if h < size or w < size:
        raise VideoError(f"frames of {h}x{w} pixels are smaller than the {size}x{size} crop "
                         "(resize them first: a larger short side)")
    top, left = (h - size) // 2, (w - size) // 2
    return frame[top:top + size, left:left + size]


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of ``uint8 [..., 3]`` RGB -> ``uint8 [...]``: 0.299 R + 0.587 G + 0.114 B in
    OpenCV's 15-bit fixed point (9798, 19235, 3735) with rounding, so it equals
    ``cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)`` exactly."""
    c = rgb.astype(np.int32)
    return ((c[..., 0] * 9798 + c[..., 1] * 19235 + c[..., 2] * 3735 + (1 << 14)) >> 15).astype(np.uint8)


def frames(path: PathLike, preprocess: Preprocess = Preprocess(), gray: bool = False) -> Iterator[np.ndarray]:
    """The preprocessed frames of a video, one at a time: ``uint8 [H, W, 3]`` RGB, or ``uint8 [H, W]``
    BT.601 grey with ``gray=True`` (resized and cropped like the RGB frames)."""
    timed = decode(path, preprocess.strict_duration)
    stream: Iterable[np.ndarray] = resample(timed, preprocess.fps) if preprocess.fps else (f for _, _, f in timed)
    for rgb in stream:
        if preprocess.short_side:
            rgb = resize_short_side(rgb, preprocess.short_side)
        if preprocess.crop:
            rgb = center_crop(rgb, preprocess.crop)
        yield to_gray(rgb) if gray else rgb


def read_video(path: PathLike, preprocess: Preprocess = Preprocess(), gray: bool = False,
               max_frames: int = 10_000) -> np.ndarray:
    """All preprocessed frames stacked: ``uint8 [T, H, W, 3]`` (or ``[T, H, W]``). For short videos;
    raises :class:`VideoError` past ``max_frames`` (stream long ones with :func:`frames` + :func:`windows`)."""
    out: List[np.ndarray] = []
    for frame in frames(path, preprocess, gray):
        if len(out) == max_frames:
            raise VideoError(f"{path}: more than max_frames={max_frames} frames; stream it with "
                             "i3d_fast.video.frames() and windows() instead of reading it whole")
        out.append(frame)
    return np.stack(out)


def to_model_input(clip: Union[np.ndarray, List[np.ndarray]], device: Union[str, torch.device] = "cpu"
                   ) -> torch.Tensor:
    """RGB uint8 frames ``[T, H, W, 3]`` -> the model's ``Tensor[1, 3, T, H, W]`` float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(np.stack(clip) if isinstance(clip, list) else clip)).to(device)
    if x.dim() != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 RGB frames [T, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    return (x.permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0).contiguous(memory_format=torch.channels_last_3d)


def windows(items: Iterable[T], size: int, stride: int, tail: str = "end") -> Iterator[Tuple[int, List[T]]]:
    """Windows ``(start, items[start:start + size])`` every ``stride`` items, holding at most ``size``
    items in memory. A sequence shorter than ``size`` gives one window with all its items.

    When the last full window does not reach the last item:
      - ``tail="end"``: one more full window, ending at the last item (every window has ``size`` items);
      - ``tail="rest"``: one more window starting ``stride`` after the previous one, holding what is
        left (shorter; starts stay on the ``stride`` grid).
    """
    if size < 1 or stride < 1:
        raise ValueError(f"window size and stride must be >= 1, got size={size}, stride={stride}")
    if tail not in ("end", "rest"):
        raise ValueError(f"tail must be 'end' or 'rest', got {tail!r}")
    buf: Deque[T] = deque(maxlen=size)
    seen = next_start = emitted_end = 0
    for item in items:
        buf.append(item)
        seen += 1
        if seen == next_start + size:
            yield next_start, list(buf)
            emitted_end = seen
            next_start += stride
    if seen == 0 or emitted_end == seen:
        return
    if emitted_end == 0:
        yield 0, list(buf)
    elif tail == "end":
        yield seen - size, list(buf)
    elif next_start < seen:
        yield next_start, list(buf)[next_start - (seen - len(buf)):]
