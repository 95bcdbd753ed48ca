"""A training run's files in its output folder, each replaced atomically (a killed run never leaves a
half-written one):

- ``<stream>.safetensors``: the weights ``i3d-fast predict`` / ``evaluate`` load (every epoch);
- ``labels.txt``: the class names, one per line, in label order;
- ``train.json``: the options of the run (what ``evaluate`` reads the clip size from);
- ``metrics.jsonl``: one JSON object per finished epoch;
- ``resume.safetensors``: everything ``--resume`` needs (weights, optimiser buffers, loss scaler, the
  position in the epoch, the metrics so far) as tensors plus JSON metadata. No pickle anywhere.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .._atomic import atomic_file, atomic_write

RESUME = "resume.safetensors"
METRICS = "metrics.jsonl"
OPTIONS = "train.json"
LABELS = "labels.txt"
_INFO_KEY = "i3d_fast.resume"


def weights_path(out: Path, stream: str) -> Path:
    return Path(out) / f"{stream}.safetensors"


def flatten_optimizer(prefix: str, state: dict, tensors: Dict[str, torch.Tensor]) -> dict:
    """Moves the tensors of ``optimizer.state_dict()`` into ``tensors`` (keys ``prefix.<param>.<name>``);
    returns the rest (JSON-serialisable)."""
    rest = {"param_groups": state["param_groups"], "state": {}}
    for param, entries in state["state"].items():
        rest["state"][str(param)] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{param}.{name}"] = value.detach().cpu().contiguous()
                rest["state"][str(param)][name] = None
            else:
                rest["state"][str(param)][name] = value
    return rest


def unflatten_optimizer(prefix: str, rest: dict, tensors: Dict[str, torch.Tensor]) -> dict:
    """The inverse of :func:`flatten_optimizer`."""
    state = {}
    for param, entries in rest["state"].items():
        state[int(param)] = {name: tensors[f"{prefix}.{param}.{name}"] if value is None else value
                             for name, value in entries.items()}
    return {"param_groups": rest["param_groups"], "state": state}


def save_resume(out: Path, tensors: Dict[str, torch.Tensor], info: dict) -> None:
    from safetensors.torch import save_file

    with atomic_file(Path(out) / RESUME) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={_INFO_KEY: json.dumps(info)})


def load_resume(out: Path) -> Optional[Tuple[Dict[str, torch.Tensor], dict]]:
    """(tensors, info) of ``out``'s resume file, or None when there is none."""
    from safetensors import SafetensorError, safe_open

    path = Path(out) / RESUME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {})[_INFO_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable resume file ({type(exc).__name__}: {exc}); start a new run in "
                         "another folder") from exc
    return tensors, info


def write_metrics(out: Path, records: Sequence[dict]) -> None:
    with atomic_write(Path(out) / METRICS, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def read_metrics(out: Path) -> List[dict]:
    path = Path(out) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def write_labels(out: Path, classes: Sequence[str]) -> None:
    with atomic_write(Path(out) / LABELS, "w") as f:
        f.write("\n".join(classes) + "\n")


def write_options(out: Path, options: dict) -> None:
    with atomic_write(Path(out) / OPTIONS, "w") as f:
        json.dump(options, f, indent=1, sort_keys=True)
        f.write("\n")


def read_options(out: Path) -> dict:
    path = Path(out) / OPTIONS
    return json.loads(path.read_text()) if path.is_file() else {}
