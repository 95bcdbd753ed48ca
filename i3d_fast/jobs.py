"""The per-video jobs of ``i3d-fast features`` and ``i3d-fast flow`` (run by :mod:`i3d_fast.batch`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ._optional import require
from .batch import Job
from .models import InceptionI3d
from .flow import write_flow_jpegs
from .pipeline import BOUND, CHUNK, OVERLAP, Predictor, flow_batches, resolve_device, resolve_precision
from .video import Preprocess, VideoError, frames


def _weights_identity(weights: str) -> object:
    """A weights name as given; a file by its absolute path, size and modification time (retrained
    weights saved under the same name are other weights)."""
    path = Path(weights)
    if not path.is_file():
        return weights
    stat = path.stat()
    return {"file": str(path.absolute()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _preprocess_options(preprocess: Preprocess) -> dict:
    return {"fps": preprocess.fps, "short_side": preprocess.short_side, "crop": preprocess.crop}


class FeaturesJob(Job):
    """I3D features of each video as one float32 ``.npy``.

    Whole video (``window=None``): ``[C, T', H', W']`` for a feature endpoint (e.g. Mixed_5c:
    ``[1024, ceil(T/8), 7, 7]``), ``[num_classes]`` for "Logits" (time-averaged pre-softmax logits, what
    FVD embeds). With ``window``/``stride``: one row per sliding window, ``[N, ...]``; ``stride``
    defaults to ``window // 2`` (as in ``i3d-fast features`` and ``predict``).
    """

    name = "features"
    output_suffix = ".npy"

    def __init__(self, weights: str = "kinetics400-rgb", endpoint: str = "Logits", *, window: Optional[int] = None,
                 stride: Optional[int] = None, preprocess: Preprocess = Preprocess(), device: str = "auto",
                 chunk: int = CHUNK, overlap: int = OVERLAP, fused: bool = True, precision: str = "fp32"):
        self.weights, self.endpoint = weights, endpoint
        # resolved here, so the run's manifest records what every worker computes in
        self.precision = resolve_precision(precision, resolve_device(device), fused)
        self.window = window
        self.stride = stride if stride is not None or not window else max(1, window // 2)
        self.preprocess, self.device, self.chunk, self.overlap = preprocess, device, chunk, overlap
        self.fused = fused

    def options(self) -> dict:
        return {"weights": _weights_identity(self.weights), "endpoint": self.endpoint, "window": self.window,
                "stride": self.stride, "preprocess": _preprocess_options(self.preprocess), "chunk": self.chunk,
                "overlap": self.overlap, "precision": self.precision}

    def _predictor_on(self, device: str, fused: bool) -> Predictor:
        """The predictor, with the window checked against the endpoint (ValueError up front)."""
        model = InceptionI3d.from_pretrained(self.weights, final_endpoint=self.endpoint)
        predictor = Predictor(model, device=device, preprocess=self.preprocess, chunk=self.chunk,
                              overlap=self.overlap, fused=fused, precision=self.precision if fused else "fp32")
        if self.window:
            predictor.check_window(self.window, self.stride, self.endpoint)
        return predictor

    def validate(self) -> None:
        """Loads the weights on the CPU to check them and the options, and drops them (no GPU context)."""
        resolve_device(self.device)
        self._predictor_on("cpu", fused=False)

    def setup(self) -> None:
        self._predictor = self._predictor_on(self.device, self.fused)

    def process(self, video: Path, target: Path) -> str:
        if self.window:
            feats, _ = self._predictor.window_features(video, self.endpoint, self.window, self.stride)
        else:
            feats = self._predictor.features(video, self.endpoint)
        with open(target, "wb") as f:
            np.save(f, feats.numpy().astype(np.float32, copy=False))
        return f"{self.endpoint} {list(feats.shape)}"


class FlowJob(Job):
    """TV-L1 flow of each video as denseflow-layout JPEGs in one directory per video:
    ``flow_x_00001.jpg``, ``flow_y_00001.jpg``, ... (file i: frame i -> i+1 counting from 1, values clipped to
    +-``bound`` pixels and mapped to 0..255), computed on greyscale frames resampled to ``fps`` and
    resized to ``short_side`` (not cropped)."""

    name = "flow"
    output_suffix = ""

    def __init__(self, bound: float = BOUND, *, fps: Optional[float] = 25.0, short_side: Optional[int] = 256,
                 device: str = "auto", batch: int = 16, tvl1_params: Optional[dict] = None,
                 strict_duration: bool = False):
        if not bound > 0:
            raise ValueError(f"--bound must be > 0 pixels, got {bound}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"--batch must be a positive int (frame pairs per TV-L1 call), got {batch!r}")
        self.bound, self.batch = bound, batch
        self.preprocess = Preprocess(fps=fps, short_side=short_side, crop=None, strict_duration=strict_duration)
        self.device = device
        self.tvl1_params = dict(tvl1_params or {})

    def options(self) -> dict:
        return {"bound": self.bound, "preprocess": _preprocess_options(self.preprocess), "tvl1": self.tvl1_params}

    def validate(self) -> None:
        require("PIL", "video", "writing flow JPEGs")
        resolve_device(self.device)

    def setup(self) -> None:
        self.validate()
        self._device = resolve_device(self.device)

    def process(self, video: Path, target: Path) -> str:
        written = 0
        gray = frames(video, self.preprocess, gray=True)
        for fields in flow_batches(gray, self._device, self.batch, **self.tvl1_params):
            write_flow_jpegs(fields, str(target), bound=self.bound, start_index=written + 1)
            written += fields.shape[0]
        if written == 0:
            raise VideoError(f"{video}: too short: a single frame; flow needs at least 2 frames")
        present = sum(1 for _ in target.glob("flow_[xy]_*.jpg"))
        if present != 2 * written:  # before the folder is published: never a partial one under the final name
            raise RuntimeError(f"{target} holds {present} flow JPEGs, expected {2 * written}")
        return f"{written} flow fields"
