"""From a video file to I3D outputs in one call: decoding, TV-L1 flow, both streams, fused logits.

    predictor = Predictor.from_pretrained("kinetics400-rgb")           # RGB only
    predictor = Predictor.from_pretrained("kinetics400-rgb", "flow.safetensors")  # two-stream
    result = predictor.predict("video.mp4")         # whole video: result.logits Tensor[num_classes]
    windows = predictor.predict_windows("video.mp4", window=64, stride=32)
    feats = predictor.features("video.mp4", "Mixed_5c")  # Tensor[1024, T', 7, 7]

**Whole-video prediction** follows DeepMind's evaluation: the network sees the whole clip and the Logits
head averages over all of its time steps. Videos are streamed, never held whole: frames go through the
network in chunks of ``chunk`` frames (default 512, about 20 s at 25 fps) that overlap by ``overlap``
frames (default 64). A video that fits in one chunk gets exactly the full-clip result. For a longer
one, each chunk's Mixed_5c features (one step per 8 frames) are trimmed by half the overlap at inner
edges and joined in time, and the Logits head's time mean covers the whole joined sequence (the head
is linear after its average pool, so a running sum over the steps is kept instead of the features:
memory does not grow with the video; :class:`HeadMean`). The result approximates a single full-clip pass: a joined step sees at least
``overlap / 2`` frames of context on each side instead of the whole video, and TF "SAME" padding of the
stride-2 layers can shift a chunk's frame phase by one frame relative to the full clip.

**Sliding windows** (``predict_windows``): independent clips of ``window`` frames every ``stride``
frames (the last one ends at the last frame), one set of logits per window.

**Two-stream**: the flow stream sees TV-L1 flow between consecutive greyscale frames (computed on the
resized, uncropped frame, then centre-cropped, clipped to +-``bound`` pixels and scaled to [-1, 1]); a
video of T frames has T - 1 flow fields, and the RGB stream then uses frames 0 .. T-2 so both streams
cover the same time steps. Logits are added (DeepMind) or averaged (``fusion="mean"``). TV-L1 runs on
the GPU when the predictor's device is one and CuPy is installed, else on the CPU (with a warning).

Both networks run through the fused inference path (:func:`i3d_fast.fuse`) unless ``fused=False``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F

from .flow import to_i3d_input, tvl1
from .flow.solver import solver_device
from .models import ENDPOINTS, InceptionI3d, fuse
from .models.i3d import HEAD_POOL
from .video import Preprocess, VideoError, frames, to_model_input, windows

T = TypeVar("T")
PathLike = Union[str, Path]
STREAMS = ("rgb", "flow")
FUSIONS = ("sum", "mean")
#: Default whole-video chunking: frames per chunk (a multiple of 8) and overlap (a multiple of 16).
CHUNK, OVERLAP = 512, 64
#: Flow values are clipped to +-BOUND pixels before scaling to [-1, 1] (I3D, TSN, denseflow).
BOUND = 20.0


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """"auto" / None -> CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but PyTorch sees no CUDA GPU")
    return device


def flow_batches(gray: Iterable[np.ndarray], device: Union[str, torch.device] = "cpu", batch: int = 16,
                 **tvl1_params) -> Iterator[torch.Tensor]:
    """TV-L1 flow between consecutive greyscale frames (``uint8 [H, W]``), ``batch`` pairs per call:
    ``Tensor[n, 2, H, W]`` (x, y, in pixels) with n <= batch, T - 1 fields in all for T frames. Holds
    ``batch + 1`` frames at a time. Solved on ``device`` when it is a CUDA device and CuPy is installed,
    else on the CPU (a one-time warning says so for a CUDA ``device``); the flow stays where it was
    solved (``i3d_fast.flow.solver.solver_device(device)``)."""
    solve_on = solver_device(device)
    for _, chunk in windows(gray, batch + 1, batch, tail="rest"):
        if len(chunk) < 2:
            continue
        g = torch.from_numpy(np.stack(chunk)).to(solve_on)
        yield tvl1(g[:-1], g[1:], **tvl1_params)


class _Counted(Iterator[T]):
    """Wraps an iterator and counts what it yields."""

    def __init__(self, items: Iterable[T]):
        self._it = iter(items)
        self.count = 0

    def __next__(self) -> T:
        item = next(self._it)
        self.count += 1
        return item


def _all_but_last(items: Iterable[T]) -> Iterator[T]:
    it = iter(items)
    try:
        prev = next(it)
    except StopIteration:
        return
    for item in it:
        yield prev
        prev = item


def time_stride(endpoint: str) -> int:
    """Input frames per time step of ``endpoint`` (1, 2, 4 or 8; Logits counts as Mixed_5c)."""
    name = "Mixed_5c" if endpoint == "Logits" else endpoint
    return 1024 // InceptionI3d.feature_size(1024, 1, 1, name)[0]


@dataclass
class Prediction:
    """Whole-video result: fused pre-softmax ``logits`` Tensor[num_classes] (CPU, float32), each
    stream's own logits, and the number of frames after resampling."""

    path: str
    logits: torch.Tensor
    frames: int
    fps: Optional[float]
    streams: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def seconds(self) -> Optional[float]:
        return self.frames / self.fps if self.fps else None


@dataclass
class WindowPrediction:
    """One sliding window: frames ``[start, end)`` (after resampling) and its fused logits."""

    start: int
    end: int
    logits: torch.Tensor
    streams: Dict[str, torch.Tensor] = field(default_factory=dict)


class HeadMean:
    """The I3D Logits head over Mixed_5c features that arrive in time order, piece by piece, in memory
    that does not grow with the video: ``head.add(piece)`` for each Tensor[1, C, t, H', W'], then
    ``head.logits(model)`` equals ``model.logits_from_features(torch.cat(pieces, dim=2))`` (to float
    rounding).

    The head is linear after its VALID average pool (kt x kh x kw = 2x7x7, or smaller with
    ``adaptive_head``): logits = W . mean over the pooled positions + b. With S[t] the mean over the
    spatial pooling windows at step t, the mean over all pooled positions is
    sum_t c_t S[t] / (kt (T' - kt + 1)), where c_t counts the temporal windows covering step t (kt = 2:
    1 for the first and the last step, 2 for the others; kt = 1: 1). So a running sum of S in double,
    the first step's S and the latest step's S are all that is kept; the 2-step windows that span the
    joins between pieces are counted exactly as in the joined tensor.
    """

    def __init__(self):
        self.total: Optional[torch.Tensor] = None  # sum over steps of S[t], float64 [1, C]
        self.first: Optional[torch.Tensor] = None
        self.last: Optional[torch.Tensor] = None
        self.steps = 0
        self.spatial: Optional[Tuple[int, int]] = None

    def add(self, piece: torch.Tensor) -> None:
        if piece.dim() != 5 or piece.shape[0] != 1:
            raise ValueError(f"HeadMean.add expects Tensor[1, C, t, H', W'], got {tuple(piece.shape)}")
        if self.spatial is not None and tuple(piece.shape[3:]) != self.spatial:
            raise ValueError(f"HeadMean.add: pieces of {self.spatial[0]}x{self.spatial[1]} and "
                             f"{piece.shape[3]}x{piece.shape[4]} steps cannot be joined")
        if piece.shape[2] == 0:
            return
        h, w = piece.shape[3:]
        self.spatial = (h, w)
        kh, kw = min(HEAD_POOL[1], h), min(HEAD_POOL[2], w)  # too small for a strict head: logits() says so
        per_step = F.avg_pool3d(piece.double(), (1, kh, kw), stride=1).mean(dim=(3, 4))  # S: [1, C, t]
        total = per_step.sum(dim=2)
        self.total = total if self.total is None else self.total + total
        if self.first is None:
            self.first = per_step[:, :, 0]
        self.last = per_step[:, :, -1]
        self.steps += piece.shape[2]

    def logits(self, model: InceptionI3d) -> torch.Tensor:
        """Tensor[1, num_classes]: ``model``'s Logits head over every step added (``model`` in eval mode)."""
        if self.total is None:
            raise ValueError("HeadMean.logits: no features were added")
        if self.steps >= HEAD_POOL[0]:  # kt = 2 (also with an adaptive head)
            mean = (2 * self.total - self.first - self.last) / (2 * (self.steps - 1))
        else:  # a single step: kt = 1 with an adaptive head (a strict one refuses it below)
            mean = self.total
        # The head of a features tensor whose every position holds the mean, shaped like the head's pool
        # window over the real features, gives W . mean + b with the model's own checks and layers.
        window = (min(HEAD_POOL[0], self.steps), *(min(k, s) for k, s in zip(HEAD_POOL[1:], self.spatial)))
        head = model.logits.conv3d.weight  # the head's own dtype and device (the pieces may be bf16)
        feats = mean.to(head.device, head.dtype)[:, :, None, None, None].expand(1, mean.shape[1], *window)
        return model.logits_from_features(feats.contiguous())


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: Union[str, torch.device], fused: bool = True) -> str:
    """"fp32" or "bf16" for ``precision``: "auto" is bf16 where it is fast and proven, the fused path on a
    CPU with native bf16 (avx512_bf16 / amx_bf16), else fp32; "bf16" needs the fused path."""
    from ._cpu import has_native_bf16

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and not fused:
        raise ValueError("bf16 runs on the fused path; --no-fuse runs the modules in fp32")
    if precision == "auto":
        cpu = torch.device(device).type == "cpu"
        return "bf16" if fused and cpu and has_native_bf16() else "fp32"
    return precision


class Predictor:
    """Video file -> I3D logits or features, RGB-only or two-stream.

    Args:
        rgb: the RGB network (3 input channels, a Logits head for prediction).
        flow: the optical-flow network (2 input channels) or None for RGB only.
        device: "auto" (CUDA when present), "cpu", "cuda", ...; the models are moved there.
        preprocess: frame rate, resize and crop (DeepMind's 25 fps / 256 / 224 by default).
        chunk, overlap: whole-video chunking in frames (see the module docstring).
        bound: flow clipping in pixels before scaling to [-1, 1].
        fusion: "sum" (DeepMind) or "mean" of the two streams' logits.
        flow_batch: frame pairs per TV-L1 call.
        tvl1_params: passed on to ``i3d_fast.flow.tvl1``.
        fused: run the networks through :func:`i3d_fast.fuse` (BatchNorm folded, each Inception block
            one op; same outputs to float32 rounding, faster); False runs the modules as built.
        precision: "fp32", "bf16" (the fused networks compute in bfloat16: about 2x faster on a CPU with
            AMX; logits within ~0.2 of fp32's, see the README) or "auto" (bf16 on a CPU with native bf16
            and the fused path, else fp32); :func:`resolve_precision`.
    """

    def __init__(self, rgb: InceptionI3d, flow: Optional[InceptionI3d] = None, *,
                 device: Union[str, torch.device, None] = "auto", preprocess: Preprocess = Preprocess(),
                 chunk: int = CHUNK, overlap: int = OVERLAP, bound: float = BOUND, fusion: str = "sum",
                 flow_batch: int = 16, tvl1_params: Optional[dict] = None, fused: bool = True,
                 precision: str = "fp32"):
        if rgb.in_channels != 3:
            raise ValueError(f"the RGB network must take 3 input channels, this one takes {rgb.in_channels}")
        if flow is not None:
            if flow.in_channels != 2:
                raise ValueError(f"the flow network must take 2 input channels (x, y), this one takes "
                                 f"{flow.in_channels}")
            if flow.num_classes != rgb.num_classes or flow.final_endpoint != rgb.final_endpoint:
                raise ValueError(f"the streams disagree: rgb has {rgb.num_classes} classes up to "
                                 f"{rgb.final_endpoint}, flow {flow.num_classes} up to {flow.final_endpoint}")
        if chunk < 16 or chunk % 8:
            raise ValueError(f"chunk must be a multiple of 8 frames, at least 16, got {chunk}")
        if overlap < 0 or overlap % 16 or overlap >= chunk:
            raise ValueError(f"overlap must be a multiple of 16 frames, >= 0 and < chunk ({chunk}), got {overlap}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if not bound > 0:
            raise ValueError(f"bound must be > 0 pixels, got {bound}")
        if isinstance(flow_batch, bool) or not isinstance(flow_batch, int) or flow_batch < 1:
            raise ValueError(f"flow_batch must be a positive int (frame pairs per TV-L1 call), got {flow_batch!r}")
        self.device = resolve_device(device)
        self.models: Dict[str, InceptionI3d] = {"rgb": rgb.to(self.device).eval()}
        if flow is not None:
            self.models["flow"] = flow.to(self.device).eval()
        # the networks that run the clips; the heads of long videos run on self.models' Logits layers
        self.precision = resolve_precision(precision, self.device, fused)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.runners = {s: fuse(m, dtype=dtype) if fused else m for s, m in self.models.items()}
        self.preprocess = preprocess
        self.chunk, self.overlap, self.bound, self.fusion = chunk, overlap, bound, fusion
        self.flow_batch = flow_batch
        self.tvl1_params = dict(tvl1_params or {})

    @classmethod
    def from_pretrained(cls, rgb: str = "kinetics400-rgb", flow: Optional[str] = None, **kwargs) -> "Predictor":
        """Networks from pretrained names or weight files (see ``InceptionI3d.from_pretrained``)."""
        return cls(InceptionI3d.from_pretrained(rgb), InceptionI3d.from_pretrained(flow) if flow else None, **kwargs)

    # -- properties ------------------------------------------------------------------------------
    @property
    def streams(self) -> Tuple[str, ...]:
        return tuple(self.models)

    @property
    def num_classes(self) -> int:
        return self.models["rgb"].num_classes

    @property
    def _extra(self) -> int:
        """Video frames beyond the per-stream time steps: 1 with a flow stream (T frames, T - 1 fields)."""
        return 1 if "flow" in self.models else 0

    def _min_steps(self, endpoint: str) -> int:
        head = endpoint == "Logits" and not all(m.adaptive_head for m in self.models.values())
        return 9 if head else 1

    def min_frames(self, endpoint: str = "Logits") -> int:
        """Fewest video frames (after resampling) a pass to ``endpoint`` accepts: 9 for the Logits
        head (10 with a flow stream: 9 flow fields), else 1 (2 with flow)."""
        return self._min_steps(endpoint) + self._extra

    # -- streams of model-ready frames -----------------------------------------------------------
    def _stream(self, path: PathLike, stream: str) -> Tuple[Iterator, Callable[[list], torch.Tensor]]:
        """(frame iterator, clip builder) for one stream of ``path``."""
        if stream == "rgb":
            rgb = frames(path, self.preprocess)
            items = _all_but_last(rgb) if "flow" in self.models else rgb
            return items, lambda clip: to_model_input(clip, self.device)
        if stream != "flow":
            raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
        if "flow" not in self.models:
            raise ValueError("this predictor has no flow network (give flow weights)")
        pre = self.preprocess
        gray = frames(path, Preprocess(pre.fps, pre.short_side, None, pre.strict_duration), gray=True)
        crop = pre.crop

        def fields() -> Iterator[torch.Tensor]:
            for batch in flow_batches(gray, self.device, self.flow_batch, **self.tvl1_params):
                if crop:
                    h, w = batch.shape[-2:]
                    if h < crop or w < crop:
                        raise VideoError(f"{path}: flow of {h}x{w} pixels is smaller than the {crop}x{crop} crop")
                    top, left = (h - crop) // 2, (w - crop) // 2
                    batch = batch[..., top:top + crop, left:left + crop]
                yield from to_i3d_input(batch, bound=self.bound)

        def clip_of(clip: list) -> torch.Tensor:  # the flow may have been solved on another device
            clip = torch.stack(clip, dim=1)[None].to(self.device, torch.float32)
            return clip.contiguous(memory_format=torch.channels_last_3d)

        return fields(), clip_of

    def _too_short(self, path: PathLike, steps: int, endpoint: str) -> VideoError:
        count, need, fps = steps + self._extra, self.min_frames(endpoint), self.preprocess.fps
        when = f" at {fps:g} fps ({count / fps:.2f} s)" if fps else ""
        why = "the I3D Logits head needs" if endpoint == "Logits" else f"{endpoint} needs"
        flow = f" ({need - 1} flow fields between consecutive frames)" if self._extra else ""
        return VideoError(f"{path}: too short: {count} frame(s){when}; {why} at least {need} frames{flow}")

    # -- whole video -----------------------------------------------------------------------------
    def _pieces(self, path: PathLike, stream: str, endpoint: str) -> Tuple[Iterator[torch.Tensor], "_Counted"]:
        """``endpoint`` features (Logits: Mixed_5c) of the whole video, chunk by chunk, trimmed so that joined
        in time they are the video's features: (iterator of Tensor[1, C, t, H', W'], counter). Holds two
        chunks' features at a time; once the iterator is exhausted, ``counter.count + self._extra`` is
        the number of frames seen."""
        runner = self.runners[stream]
        name = "Mixed_5c" if endpoint == "Logits" else endpoint
        stride = time_stride(name)
        items, clip_of = self._stream(path, stream)
        counted = _Counted(items)
        half = self.overlap // 2 // stride

        def pieces() -> Iterator[torch.Tensor]:
            held: Optional[Tuple[int, torch.Tensor]] = None
            for start, clip in windows(counted, self.chunk, self.chunk - self.overlap, tail="rest"):
                if start == 0 and len(clip) < self._min_steps(endpoint):
                    raise self._too_short(path, len(clip), endpoint)
                feats = runner.extract_features(clip_of(clip), name)
                if held is not None:  # the held chunk was not the last: trim its far edge
                    yield held[1][:, :, (half if held[0] else 0):self.chunk // stride - half]
                held = (start, feats)
            if held is None:  # a single frame and a flow stream: no flow field at all
                raise self._too_short(path, 0, endpoint)
            yield held[1][:, :, (half if held[0] else 0):]

        return pieces(), counted

    @torch.no_grad()
    def _stitched(self, path: PathLike, stream: str, endpoint: str) -> Tuple[torch.Tensor, int]:
        """``endpoint`` features of the whole video joined in time: (Tensor[1, C, T', H', W'], frames seen)."""
        pieces, counted = self._pieces(path, stream, endpoint)
        feats = torch.cat(list(pieces), dim=2)
        return feats, counted.count + self._extra

    @torch.no_grad()
    def _logits(self, path: PathLike, stream: str) -> Tuple[torch.Tensor, int]:
        """The Logits head over the whole video's Mixed_5c steps, in bounded memory (see :class:`HeadMean`):
        (Tensor[1, num_classes], frames seen)."""
        pieces, counted = self._pieces(path, stream, "Logits")
        head = HeadMean()
        for piece in pieces:
            head.add(piece)
        return head.logits(self.models[stream]), counted.count + self._extra

    @torch.no_grad()
    def predict(self, path: PathLike) -> Prediction:
        """Whole-video logits (every stream, fused)."""
        if self.models["rgb"].final_endpoint != "Logits":
            raise ValueError("prediction needs networks with a Logits head")
        per_stream: Dict[str, torch.Tensor] = {}
        count = 0
        for stream in self.models:
            logits, count = self._logits(path, stream)
            per_stream[stream] = logits[0].float().cpu()
        return Prediction(str(path), self._fuse(per_stream), count, self.preprocess.fps, per_stream)

    @torch.no_grad()
    def features(self, path: PathLike, endpoint: str = "Mixed_5c", stream: str = "rgb") -> torch.Tensor:
        """Whole-video features of one stream: Tensor[C, T', H', W'] for a feature endpoint, or the
        time-averaged pre-softmax Tensor[num_classes] for "Logits" (what FVD embeds). CPU, float32."""
        self._check_endpoint_and_stream(endpoint, stream)
        if endpoint == "Logits":
            feats, _ = self._logits(path, stream)
        else:
            feats, _ = self._stitched(path, stream, endpoint)
        return feats[0].float().cpu()

    # -- sliding windows -------------------------------------------------------------------------
    @torch.no_grad()
    def _windowed(self, path: PathLike, stream: str, endpoint: str, window: int, stride: int
                  ) -> List[Tuple[int, int, torch.Tensor]]:
        runner = self.runners[stream]
        items, clip_of = self._stream(path, stream)
        out = []
        for start, clip in windows(items, window, stride, tail="end"):
            if start == 0 and len(clip) < self._min_steps(endpoint):
                raise self._too_short(path, len(clip), endpoint)
            out.append((start, start + len(clip), runner.extract_features(clip_of(clip), endpoint)[0].float().cpu()))
        if not out:
            raise self._too_short(path, 0, endpoint)
        return out

    def check_window(self, window: int, stride: int, endpoint: str = "Logits") -> None:
        """Raises ValueError when sliding windows of ``window`` frames every ``stride`` cannot reach ``endpoint``."""
        low = self._min_steps(endpoint)
        if window < low:
            raise ValueError(f"window must be at least {low} frames for {endpoint}, got {window}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1 frame, got {stride}")

    def predict_windows(self, path: PathLike, window: int = 64, stride: int = 32) -> List[WindowPrediction]:
        """Logits of clips of ``window`` frames every ``stride`` frames (the last clip ends at the last
        frame; a video shorter than ``window`` is one clip)."""
        self.check_window(window, stride, "Logits")
        per_stream = {s: self._windowed(path, s, "Logits", window, stride) for s in self.models}
        rgb = per_stream["rgb"]
        return [WindowPrediction(start, end, self._fuse({s: per_stream[s][i][2] for s in per_stream}),
                                 {s: per_stream[s][i][2] for s in per_stream})
                for i, (start, end, _) in enumerate(rgb)]

    def window_features(self, path: PathLike, endpoint: str, window: int, stride: int, stream: str = "rgb"
                        ) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        """Features of each sliding window, stacked: (Tensor[N, ...], [(start, end)] frame ranges)."""
        self._check_endpoint_and_stream(endpoint, stream)
        self.check_window(window, stride, endpoint)
        rows = self._windowed(path, stream, endpoint, window, stride)
        return torch.stack([r[2] for r in rows]), [(r[0], r[1]) for r in rows]

    def _check_endpoint_and_stream(self, endpoint: str, stream: str) -> None:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; choose one of {ENDPOINTS}")
        if stream not in self.models:
            raise ValueError(f"stream {stream!r} is not loaded (streams: {self.streams})")

    def _fuse(self, logits: Dict[str, torch.Tensor]) -> torch.Tensor:
        total = sum(logits.values())
        return total / len(logits) if self.fusion == "mean" else total


def top_k(logits: torch.Tensor, labels: Sequence[str], k: int = 5) -> List[Dict[str, object]]:
    """The ``k`` most probable classes: [{"index", "label", "probability", "logit"}] (softmax of logits)."""
    probs = torch.softmax(logits.double(), dim=-1)
    values, indices = probs.topk(min(k, logits.numel()))
    return [{"index": int(i), "label": labels[int(i)], "probability": float(p), "logit": float(logits[int(i)])}
            for p, i in zip(values, indices)]
