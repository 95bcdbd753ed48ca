"""A small synthetic action-recognition dataset whose class is the motion, not the appearance.

Each video shows one random smooth texture filling the whole frame, sliding at a constant velocity
of :data:`SPEED` pixels per frame (by default) or standing still; how it moves is the class:

============  ========================================================
class         motion of the content
============  ========================================================
``up``        -y (towards the top edge)
``down``      +y (towards the bottom edge)
``sideways``  +x or -x, drawn per video
``still``     none
============  ========================================================

The classes are unchanged by a horizontal flip, the augmentation I3D trains with (left and right
classes would be swapped by it and could not be learnt).

Appearance is uninformative on purpose: every video draws its texture (blurred white noise,
contrast-normalised, with a random blur scale, brightness and colour tint) from the same
distribution whatever its class, so a single frame says nothing about the label; only the change
between frames does. The texture is periodic, so shifting it with wrap-around (``np.roll``) leaves
no border. A model that learns this dataset must therefore use the temporal signal, which makes
it a quick check that a video model (or a training loop) really looks at motion.

Layout written by :func:`make_synthetic`::

    out_dir/
        train/<class>/<class>_0000.mp4, <class>_0001.mp4, ...
        val/<class>/<class>_0000.mp4, ...

Videos are MPEG-4 Part 2 in ``.mp4`` (yuv420p) at a high bit rate, so decoded frames stay close to
the rendered ones. Every video is generated from its own random generator seeded with
``(seed, split, class, index)``: the output depends on the seed only, not on the generation order
or on how many other videos are made.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from i3d_fast._atomic import atomic_dir
from i3d_fast._optional import require

#: Class names, in label order: how the texture moves. The classes survive a horizontal flip (DeepMind's
#: training augmentation), which would turn "right" into "left": "sideways" is left or right at random.
CLASSES: tuple[str, ...] = ("up", "down", "sideways", "still")
#: Per-frame displacement ``(dy, dx)`` of the content for one pixel of speed, by class ("sideways": the
#: sign of dx is drawn per video).
DIRECTIONS: dict[str, tuple[int, int]] = {"up": (-1, 0), "down": (1, 0), "sideways": (0, 1), "still": (0, 0)}
#: Default speed of the motion in pixels per frame.
SPEED = 2
#: The dataset splits, in the order they are written (their position enters each video's seed).
SPLITS: tuple[str, ...] = ("train", "val")
#: Bits per second of the encoded videos: high enough that every frame stays close to its source.
BIT_RATE = 4_000_000

PathLike = Union[str, "os.PathLike[str]"]
Progress = Callable[[int, int], None]


def make_synthetic(out_dir: PathLike, *, classes: int = 4, train_per_class: int = 24, val_per_class: int = 8,
                   frames: int = 32, size: int = 64, fps: int = 25, speed: int = SPEED, seed: int = 0,
                   progress: Optional[Progress] = None) -> dict:
    """Writes the dataset described in this module's docstring into ``out_dir`` and returns a summary.

    ``classes``: how many of :data:`CLASSES` to use (the first ones). ``frames`` frames of ``size`` x
    ``size`` RGB per video at ``fps``; the texture moves ``speed`` pixels per frame. ``progress``, if
    given, is called as ``progress(done, total)`` after each video. ``out_dir`` must not exist or be an
    empty folder; it appears complete or not at all (built in a temp folder beside it, then renamed).

    Returns ``{"root", "train", "val"`` (paths as str), ``"classes"`` (names, in label order),
    ``"train_videos", "val_videos", "frames", "size", "fps", "speed", "seed"}``.
    """
    _check_arguments(classes, train_per_class, val_per_class, frames, size, fps, speed, seed)
    av = require("av", "video", "writing the synthetic videos")
    out_dir = Path(out_dir)
    _make_room(out_dir)
    class_names = CLASSES[:classes]
    per_class = {"train": train_per_class, "val": val_per_class}
    total = classes * (train_per_class + val_per_class)
    done = 0
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            for name in class_names:
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for index in range(per_class[split]):
                    rng = video_rng(seed, split, name, index)
                    clip = render_clip(rng, name, frames=frames, size=size, speed=speed)
                    _encode(av, folder / f"{name}_{index:04d}.mp4", clip, fps)
                    done += 1
                    if progress is not None:
                        progress(done, total)
    return {"root": str(out_dir), "train": str(out_dir / "train"), "val": str(out_dir / "val"),
            "classes": list(class_names), "train_videos": classes * train_per_class,
            "val_videos": classes * val_per_class, "frames": frames, "size": size, "fps": fps,
            "speed": speed, "seed": seed}


def video_rng(seed: int, split: str, name: str, index: int) -> np.random.Generator:
    """The random generator of one video, from ``(seed, split, class, index)`` only."""
    return np.random.default_rng([seed, SPLITS.index(split), CLASSES.index(name), index])


def random_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """float64 ``[size, size]``: periodic white noise blurred by a Gaussian of random width (applied in
    the Fourier domain, so the texture wraps seamlessly), normalised to zero mean and unit variance."""
    blur_sigma = rng.uniform(1.0, 2.5)
    noise = rng.standard_normal((size, size))
    frequencies = np.fft.fftfreq(size)
    squared_radius = frequencies[:, None] ** 2 + frequencies[None, :] ** 2
    gaussian = np.exp(-2.0 * (np.pi * blur_sigma) ** 2 * squared_radius)
    texture = np.fft.ifft2(np.fft.fft2(noise) * gaussian).real
    return (texture - texture.mean()) / texture.std()


def render_clip(rng: np.random.Generator, name: str, *, frames: int, size: int, speed: int = SPEED) -> np.ndarray:
    """uint8 ``[frames, size, size, 3]``: a random tinted texture moving ``speed`` px per frame in the
    direction of class ``name``. The appearance draws from ``rng`` in the same way for every class, so
    the same generator state gives the same first frame whatever the class."""
    texture = random_texture(rng, size)
    brightness = rng.uniform(80.0, 176.0, size=3)
    tint = rng.uniform(0.5, 1.0, size=3)
    contrast = rng.uniform(20.0, 35.0)
    image = np.clip(brightness + contrast * tint * texture[..., None], 0, 255).round().astype(np.uint8)
    dy, dx = DIRECTIONS[name]
    dx *= int(rng.choice([-1, 1]))  # drawn after the appearance, for every class alike
    return np.stack([np.roll(image, (t * speed * dy, t * speed * dx), axis=(0, 1)) for t in range(frames)])


def _encode(av, path: Path, clip: np.ndarray, fps: int) -> None:
    """Writes ``clip`` (uint8 ``[T, H, W, 3]``) as MPEG-4 Part 2 / yuv420p at ``fps`` into ``path``."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.height, stream.width = clip.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = BIT_RATE
        for image in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def _check_arguments(classes: int, train_per_class: int, val_per_class: int, frames: int, size: int, fps: int,
                     speed: int, seed: int) -> None:
    def whole(name: str, value) -> None:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ValueError(f"{name} must be an int, got {value!r}")

    for name, value in (("classes", classes), ("train_per_class", train_per_class),
                        ("val_per_class", val_per_class), ("frames", frames), ("size", size), ("fps", fps),
                        ("speed", speed), ("seed", seed)):
        whole(name, value)
    if not 2 <= classes <= len(CLASSES):
        raise ValueError(f"classes must be between 2 and {len(CLASSES)} ({', '.join(CLASSES)}), got {classes}")
    for name, value in (("train_per_class", train_per_class), ("val_per_class", val_per_class)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if frames < 2:
        raise ValueError(f"frames must be at least 2 (the class is the motion between frames), got {frames}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number of pixels, at least 16 (yuv420p), got {size}")
    if fps < 1:
        raise ValueError(f"fps must be at least 1, got {fps}")
    if not 1 <= speed <= size // 4:
        raise ValueError(f"speed must be between 1 and size // 4 = {size // 4} pixels per frame (larger shifts "
                         f"of the wrapping texture become ambiguous), got {speed}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")


def _make_room(out_dir: Path) -> None:
    """Removes ``out_dir`` if it is an empty folder, so that the finished dataset can be renamed onto
    it; refuses anything else that exists there."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise ValueError(f"{out_dir} exists and is not a folder; choose a new output folder")
    if any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} already contains files; choose a new or empty output folder")
    out_dir.rmdir()
