"""``i3d-fast evaluate``: video-level accuracy of a training run's networks on labelled videos.

For each video, ``clips_per_video`` evenly spaced clips with the central crop (the clip size the run was
trained with, from its ``train.json``, unless given); each stream's logits are averaged over the clips,
the streams' summed (fused). Reports top-1 / top-5 per stream and fused, writes ``evaluation.json`` and a
confusion-matrix PNG of the fused (or only) predictions; ``evaluation.json`` also lists each video's
label and predicted class per stream.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .._atomic import atomic_file, atomic_write
from ..models import InceptionI3d
from . import checkpoint
from .data import STREAMS, ClipDataset, ClipSpec, EpochBatches, load_examples, loader, relabel
from .loop import TrainOptions, options_from_json, topk_correct


def evaluate(data: Path, weights: Path, *, clips_per_video: int = 1, clip: Optional[int] = None,
             crop: Optional[int] = None, video_root: Optional[Path] = None, batch_size: int = 4, workers: int = 2,
             device: str = "auto", out: Optional[Path] = None, log: Callable[[str], None] = print) -> dict:
    """Evaluates the streams found in ``weights`` (a ``train --out`` folder) on ``data`` (a class folder
    or a split list); returns the metrics and writes ``evaluation.json`` + ``confusion.png`` into ``out``
    (default: ``weights``)."""
    from .._optional import require
    from ..pipeline import resolve_device

    require("av", "video", "evaluating on videos")
    weights = Path(weights)
    if not weights.is_dir():
        raise ValueError(f"--weights {weights}: not a folder (expected the --out folder of i3d-fast train)")
    labels_file = weights / checkpoint.LABELS
    if not labels_file.is_file():
        raise ValueError(f"--weights {weights}: no {checkpoint.LABELS} (is it the --out folder of i3d-fast train?)")
    classes = [line.strip() for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    streams = [s for s in STREAMS if checkpoint.weights_path(weights, s).is_file()]
    if not streams:
        raise ValueError(f"--weights {weights}: neither rgb.safetensors nor flow.safetensors is there")
    if clips_per_video < 1 or batch_size < 1:
        raise ValueError(f"clips per video and batch size must be >= 1, got {clips_per_video}, {batch_size}")
    options_text = (weights / checkpoint.OPTIONS).read_text() if (weights / checkpoint.OPTIONS).is_file() else None
    trained = options_from_json(options_text) if options_text else TrainOptions(data=str(data), out=str(weights))
    data_classes, examples = load_examples(Path(data), video_root)
    examples = relabel(examples, data_classes, classes, str(data))
    dev = resolve_device(device)
    models: Dict[str, InceptionI3d] = {}
    for s in streams:
        model = InceptionI3d.from_pretrained(str(checkpoint.weights_path(weights, s)))
        if model.num_classes != len(classes):
            raise ValueError(f"{checkpoint.weights_path(weights, s)}: {model.num_classes} classes, "
                             f"{checkpoint.LABELS} lists {len(classes)}")
        models[s] = model.to(dev).to(memory_format=torch.channels_last_3d).eval()
    spec = ClipSpec(tuple(streams), clip or trained.clip, crop or trained.crop, max(trained.short_side, crop or 0),
                    trained.fps, trained.bound, train=False, clips=clips_per_video,
                    flow_root=trained.flow_root and Path(trained.flow_root),
                    data_root=Path(data) if Path(data).is_dir() else Path(video_root or Path(data).parent))
    names = streams + (["fused"] if len(streams) > 1 else [])
    predictions: Dict[str, List[int]] = {name: [] for name in names}
    hits = {name: [0, 0] for name in names}
    truth: List[int] = []
    per_video: List[dict] = []
    skipped = []
    with torch.no_grad():
        for batch in loader(ClipDataset(examples, spec, replace=False),
                            EpochBatches(len(examples), batch_size, shuffle=False), workers):
            for video, reason in batch.failures:
                skipped.append(video)
                log(f"evaluate: skipped {video}: {reason}")
            if not batch.clips:
                continue
            logits = {}
            for s, model in models.items():
                x = batch.clips[s].to(dev)
                b, k = x.shape[:2]
                logits[s] = model(x.flatten(0, 1).contiguous(memory_format=torch.channels_last_3d)).float() \
                    .view(b, k, -1).mean(1)
            if len(streams) > 1:
                logits["fused"] = sum(logits[s] for s in streams)
            labels = batch.labels.to(dev)
            truth += batch.labels.tolist()
            per_video += [{"video": str(examples[i].video), "label": examples[i].label,
                           "predicted": {name: int(logits[name][n].argmax()) for name in names}}
                          for n, i in enumerate(batch.indices)]
            for name in names:
                top1, top5 = topk_correct(logits[name], labels)
                hits[name][0] += top1
                hits[name][1] += top5
                predictions[name] += logits[name].argmax(1).tolist()
    if not truth:
        raise ValueError(f"{data}: no video could be read ({len(skipped)} failed)")
    result = {"videos": len(truth), "skipped": len(skipped), "clips_per_video": clips_per_video,
              "clip": spec.frames, "crop": spec.crop, "classes": classes}
    for name in names:
        result[f"top1_{name}"] = hits[name][0] / len(truth)
        result[f"top5_{name}"] = hits[name][1] / len(truth)
    main = names[-1]
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(truth, predictions[main]):
        matrix[t, p] += 1
    result["confusion"] = {"stream": main, "rows_true_columns_predicted": matrix.tolist()}
    result["per_video"] = per_video
    out = Path(out) if out is not None else weights
    with atomic_write(out / "evaluation.json", "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    png = out / "confusion.png"
    plot_confusion(matrix, classes, f"{main}: top-1 {result[f'top1_{main}']:.3f} on {len(truth)} videos", png)
    log("evaluate: " + ", ".join(f"{name} top-1 {result[f'top1_{name}']:.4f} top-5 {result[f'top5_{name}']:.4f}"
                                 for name in names) + f" on {len(truth)} videos ({len(skipped)} skipped, "
        f"{clips_per_video} clip(s) each); wrote {out / 'evaluation.json'} and {png}")
    return result


def plot_confusion(matrix: np.ndarray, classes: List[str], title: str, path: Path) -> None:
    """A confusion matrix (rows: true class, columns: predicted) as a PNG, row-normalised colours and counts
    in the cells (up to 30 classes; labels omitted beyond 60)."""
    from .._optional import require

    require("matplotlib", "bench", "the confusion-matrix plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    side = min(16.0, 2.5 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 60:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
