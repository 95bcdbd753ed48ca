"""``i3d-fast evaluate``: video-level accuracy of a training run's networks on labelled videos.

For each video, ``clips_per_video`` evenly spaced clips (a run trained with TSN sampling: the centres of
its segments) of the clip size the run was trained with (from its ``train.json``, unless given), with
the central crop (``ten_crop``: also the four corners, each also mirrored, as Simonyan & Zisserman
tested); each stream's logits are averaged over them. Two streams are fused by summing logits, by
averaging softmax scores, and (with training videos to fit it on) by a linear SVM on the stacked
L2-normalised softmax scores (Simonyan & Zisserman's late fusion). Reports top-1 / top-5 per stream and
fused, writes ``evaluation.json`` (with each video's label and predicted class per stream) and a
confusion-matrix PNG of the fused (or only) predictions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .._atomic import atomic_file, atomic_write
from ..models.two_stream_2d import load_stream
from . import checkpoint
from .data import STREAMS, ClipDataset, ClipSpec, EpochBatches, load_examples, loader, relabel
from .loop import TrainOptions, clip_logits, flow_data_root, options_from_json, topk_correct


def evaluate(data: Path, weights: Path, *, clips_per_video: int = 1, ten_crop: bool = False,
             clip: Optional[int] = None, crop: Optional[int] = None, video_root: Optional[Path] = None,
             svm_train: Optional[Path] = None, batch_size: int = 4, workers: int = 2, device: str = "auto",
             out: Optional[Path] = None, log: Callable[[str], None] = print) -> dict:
    """Evaluates the streams found in ``weights`` (a ``train --out`` folder) on ``data`` (a class folder
    or a split list); returns the metrics and writes ``evaluation.json`` + ``confusion.png`` into ``out``
    (default: ``weights``). With two streams: fused by summed logits ("fused"), by averaged softmax scores
    ("fused_softmax") and, given ``svm_train`` videos, by a linear SVM on the stacked L2-normalised softmax
    scores fitted on them ("fused_svm")."""
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
    if svm_train is not None and len(streams) < 2:
        raise ValueError("--svm-train fuses two streams; the weights folder has only " + streams[0])
    options_text = (weights / checkpoint.OPTIONS).read_text() if (weights / checkpoint.OPTIONS).is_file() else None
    trained = options_from_json(options_text) if options_text else TrainOptions(data=str(data), out=str(weights))
    dev = resolve_device(device)
    models: Dict[str, torch.nn.Module] = {}
    for s in streams:
        model = load_stream(checkpoint.weights_path(weights, s))
        if model.num_classes != len(classes):
            raise ValueError(f"{checkpoint.weights_path(weights, s)}: {model.num_classes} classes, "
                             f"{checkpoint.LABELS} lists {len(classes)}")
        models[s] = model.to(dev).eval()
    segments = trained.clip_segments if clips_per_video == 1 else 1  # a TSN run: its segments

    def scores(where: Path) -> VideoScores:
        # --video-root is for split lists (both sets of a split share it); a class folder is its own root
        data_classes, examples = load_examples(Path(where), None if Path(where).is_dir() else video_root)
        examples = relabel(examples, data_classes, classes, str(where))
        spec = ClipSpec(tuple(streams), clip or trained.clip, crop or trained.crop,
                        max(trained.short_side, crop or 0), trained.fps, trained.bound, train=False,
                        clips=clips_per_video, segments=segments, ten_crop=ten_crop,
                        bidirectional=trained.bidirectional and "flow" in streams,
                        flow_root=trained.flow_root and Path(trained.flow_root),
                        data_root=flow_data_root(trained) if trained.flow_root else None)
        result = video_scores(models, examples, spec, batch_size, workers, dev, log)
        if not result.labels.numel():
            raise ValueError(f"{where}: no video could be read ({len(result.skipped)} failed)")
        return result

    val = scores(Path(data))
    predictions = dict(val.logits)
    if len(streams) > 1:
        predictions["fused"] = sum(val.logits[s] for s in streams)
        predictions["fused_softmax"] = sum(val.logits[s].softmax(1) for s in streams) / len(streams)
        if svm_train is not None:
            predictions["fused_svm"] = svm_fusion(scores(Path(svm_train)), val, streams)
    truth = val.labels
    result = {"videos": len(truth), "skipped": len(val.skipped), "clips_per_video": clips_per_video,
              "views_per_clip": 10 if ten_crop else 1,
              "segments": segments, "clip": clip or trained.clip, "crop": crop or trained.crop, "classes": classes}
    for name, score in predictions.items():
        top1, top5 = topk_correct(score, truth)
        result[f"top1_{name}"], result[f"top5_{name}"] = top1 / len(truth), top5 / len(truth)
    main = "fused" if len(streams) > 1 else streams[0]
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(truth.tolist(), predictions[main].argmax(1).tolist()):
        matrix[t, p] += 1
    result["confusion"] = {"stream": main, "rows_true_columns_predicted": matrix.tolist()}
    result["per_video"] = [{"video": video, "label": int(label),
                            "predicted": {name: int(score[n].argmax()) for name, score in predictions.items()}}
                           for n, (video, label) in enumerate(zip(val.videos, truth.tolist()))]
    out = Path(out) if out is not None else weights
    with atomic_write(out / "evaluation.json", "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    png = out / "confusion.png"
    plot_confusion(matrix, classes, f"{main}: top-1 {result[f'top1_{main}']:.3f} on {len(truth)} videos", png)
    log("evaluate: " + ", ".join(f"{name} top-1 {result[f'top1_{name}']:.4f} top-5 {result[f'top5_{name}']:.4f}"
                                 for name in predictions) + f" on {len(truth)} videos ({len(val.skipped)} "
        f"skipped, {max(clips_per_video, segments)} clip(s) each); wrote {out / 'evaluation.json'} and {png}")
    return result


@dataclass
class VideoScores:
    """Per read video: each stream's logits ``Tensor[N, classes]`` (averaged over its clips), the labels
    ``Tensor[N]`` and paths; the videos that could not be read."""

    logits: Dict[str, torch.Tensor]
    labels: torch.Tensor
    videos: List[str]
    skipped: List[str]


def video_scores(models: Dict[str, torch.nn.Module], examples, spec: ClipSpec, batch_size: int, workers: int,
                 device: torch.device, log: Callable[[str], None]) -> VideoScores:
    logits: Dict[str, List[torch.Tensor]] = {s: [] for s in models}
    labels: List[int] = []
    videos: List[str] = []
    skipped: List[str] = []
    with torch.no_grad():
        for batch in loader(ClipDataset(examples, spec, replace=False),
                            EpochBatches(len(examples), batch_size, shuffle=False), workers):
            for video, reason in batch.failures:
                skipped.append(video)
                log(f"evaluate: skipped {video}: {reason}")
            if not batch.clips:
                continue
            for s, model in models.items():
                logits[s].append(clip_logits(model, batch.clips[s].to(device)).cpu())
            labels += batch.labels.tolist()
            videos += [str(examples[i].video) for i in batch.indices]
    return VideoScores({s: torch.cat(v) if v else torch.zeros(0, models[s].num_classes) for s, v in logits.items()},
                       torch.tensor(labels, dtype=torch.int64), videos, skipped)


def _svm_features(scores: VideoScores, streams: List[str]) -> np.ndarray:
    """Each stream's softmax scores, L2-normalised per video, side by side: ``[N, streams x classes]``."""
    parts = [torch.nn.functional.normalize(scores.logits[s].softmax(1), dim=1) for s in streams]
    return torch.cat(parts, dim=1).numpy()


def svm_fusion(train: VideoScores, test: VideoScores, streams: List[str]) -> torch.Tensor:
    """Late fusion by a linear SVM (scikit-learn's LinearSVC, one-vs-rest) fitted on ``train``'s stacked
    L2-normalised softmax scores; returns its decision scores for ``test`` ``Tensor[N, classes]``."""
    from .._optional import require

    require("sklearn", "svm", "the SVM fusion (--svm-train)")
    from sklearn.svm import LinearSVC

    classes = test.logits[streams[0]].shape[1]
    present = sorted(set(train.labels.tolist()))
    if len(present) < 2:
        raise ValueError(f"--svm-train: the SVM needs videos of at least 2 classes, got {len(present)}")
    svm = LinearSVC(C=1.0).fit(_svm_features(train, streams), train.labels.numpy())
    decision = np.asarray(svm.decision_function(_svm_features(test, streams)), dtype=np.float64)
    if decision.ndim == 1:  # two classes: one score for the second
        decision = np.stack([-decision, decision], axis=1)
    full = np.full((decision.shape[0], classes), -np.inf)
    full[:, svm.classes_] = decision  # classes absent from the SVM's training videos are never predicted
    return torch.from_numpy(full)


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
