"""Fine-tuning I3D (RGB) on a folder of class subfolders of videos: ``DATA/<class>/<video>``.

Each step takes one random clip per video: ``clip`` consecutive frames at ``fps`` (a random window of
the video, chosen while streaming it, so a long video is never held whole; a shorter video is looped
to length), a random ``crop`` x ``crop`` crop of the frames resized to ``short_side``, and a random
horizontal flip (DeepMind's training augmentation). BatchNorm statistics stay frozen (clips per batch
are few); dropout is active. Loss: cross-entropy; optimiser: SGD with momentum 0.9.

After every epoch the weights are saved atomically as safetensors (``save_pretrained``) with the class
names beside them (``<out>.labels.txt``), ready for ``i3d-fast predict --rgb-weights OUT --labels ...``.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ._atomic import atomic_write
from .batch import describe_error
from .models import InceptionI3d
from .video import Preprocess, VideoError, frames, to_model_input, windows


@dataclass
class Example:
    video: Path
    label: int


def scan_dataset(root: Path) -> Tuple[List[str], List[Example]]:
    """Class names (sorted subfolder names) and one example per file in each subfolder (hidden files
    skipped)."""
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


def random_clip(video: Path, clip: int, preprocess: Preprocess, crop: int, rng: random.Random) -> np.ndarray:
    """One training clip ``uint8 [clip, crop, crop, 3]``: a uniformly random window of ``clip`` frames
    (reservoir-sampled over windows every clip/4 frames while streaming; looped when the video is
    shorter), randomly cropped and flipped."""
    chosen: Optional[List[np.ndarray]] = None
    for seen, (_, window) in enumerate(windows(frames(video, preprocess), clip, max(1, clip // 4)), start=1):
        if rng.randrange(seen) == 0:
            chosen = window
    if chosen is None:
        raise VideoError(f"{video}: no frames")
    while len(chosen) < clip:  # loop a short video to the clip length
        chosen = chosen + chosen[: clip - len(chosen)]
    x = np.stack(chosen)
    h, w = x.shape[1:3]
    if h < crop or w < crop:
        raise VideoError(f"{video}: frames of {h}x{w} pixels are smaller than the {crop}x{crop} crop")
    top, left = rng.randrange(h - crop + 1), rng.randrange(w - crop + 1)
    x = x[:, top:top + crop, left:left + crop]
    return np.ascontiguousarray(x[:, :, ::-1] if rng.random() < 0.5 else x)


def _freeze_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.eval()


def _save(model: InceptionI3d, classes: Sequence[str], out: Path) -> None:
    model.save_pretrained(str(out))
    labels = out.with_name(out.name.rsplit(".", 1)[0] + ".labels.txt")
    with atomic_write(labels, "w") as f:
        f.write("\n".join(classes) + "\n")


def train(data: Path, out: Path, init: str = "kinetics400-rgb", *, head_only: bool = False, epochs: int = 1,
          batch_size: int = 4, lr: float = 0.01, clip: int = 64, preprocess: Preprocess = Preprocess(crop=None),
          crop: int = 224, dropout: float = 0.5, device: str = "auto", seed: int = 0,
          log: Callable[[str], None] = print) -> InceptionI3d:
    """Fine-tunes ``init`` (a pretrained name or weights file) on ``data``; returns the model and
    writes ``out`` (+ ``.labels.txt``) after each epoch. Bad videos are reported and skipped."""
    from .pipeline import resolve_device

    if epochs < 1 or batch_size < 1 or clip < 1 or not lr > 0:
        raise ValueError(f"epochs, batch size, clip and lr must be positive, got {epochs}, {batch_size}, {clip}, {lr}")
    if not str(out).endswith(".safetensors"):
        raise ValueError(f"--out must be a .safetensors path, got {out}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    classes, examples = scan_dataset(data)
    dev = resolve_device(device)
    model = InceptionI3d.from_pretrained(init, dropout=dropout)
    if model.final_endpoint != "Logits":
        raise ValueError(f"{init}: the model has no Logits head to train")
    if not model.adaptive_head and (clip < 9 or crop < 193):
        raise ValueError(f"clips of {clip} frames x {crop} pixels are too small for the Logits head (at least 9 "
                         "frames and 193 pixels)")
    if model.num_classes != len(classes):
        model.replace_logits(len(classes))
    model.to(dev)
    for name, param in model.named_parameters():
        param.requires_grad_(not head_only or name.startswith("logits."))
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=lr, momentum=0.9)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    log(f"train: {len(examples)} videos in {len(classes)} classes, {epochs} epoch(s), batch {batch_size}, "
        f"{'head only' if head_only else 'all layers'}, {sum(p.numel() for p in params):,} parameters trained, "
        f"on {dev}")
    for epoch in range(1, epochs + 1):
        model.train()
        _freeze_batchnorm(model)
        order = list(examples)
        rng.shuffle(order)
        started, losses, correct, used, failed = time.perf_counter(), [], 0, 0, 0
        for first in range(0, len(order), batch_size):
            clips, labels = [], []
            for example in order[first:first + batch_size]:
                try:
                    clips.append(random_clip(example.video, clip, preprocess, crop, rng))
                    labels.append(example.label)
                except Exception as exc:  # a bad video: report it, train on the others
                    failed += 1
                    log(f"train: skipped {example.video}: {describe_error(exc, example.video)}")
            if not clips:
                continue
            x = torch.cat([to_model_input(c, dev) for c in clips])
            y = torch.tensor(labels, device=dev)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()) * len(labels))
            correct += int((logits.argmax(1) == y).sum())
            used += len(labels)
        if used == 0:
            raise ValueError(f"{data}: no video could be read (every one failed)")
        _save(model, classes, out)
        log(f"train: epoch {epoch}/{epochs}: loss {sum(losses) / used:.4f}, train accuracy {correct / used:.3f} "
            f"on {used} clips ({failed} skipped), {time.perf_counter() - started:.1f} s; saved {out}")
    return model.eval()
