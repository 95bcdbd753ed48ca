"""I3D flow preprocessing and the denseflow JPEG layout.

- :func:`to_i3d_input`: clip flow to [-bound, bound] pixels and scale to [-1, 1] (the I3D recipe,
  bound 20).
- :func:`write_flow_jpegs` / :func:`read_flow_jpegs`: the dense_flow / denseflow format, one
  greyscale JPEG per component and pair, ``flow_x_00001.jpg`` and ``flow_y_00001.jpg``, each pixel
  ``round(255 * (v + bound) / (2 * bound))`` with v clipped to [-bound, bound] (0 and 255 beyond).
  JPEGs are written with Pillow at quality 95 (OpenCV ``imwrite``'s default, which denseflow uses).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch

from .._atomic import atomic_write

PathArg = Union[str, os.PathLike]
JPEG_QUALITY = 95
JPEG_NAME = re.compile(r"^flow_([xy])_(\d+)\.jpg$")


def _check_bound(bound: float) -> float:
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not np.isfinite(bound) or bound <= 0:
        raise ValueError(f"bound must be a positive finite number of pixels, got {bound!r}")
    return float(bound)


def _flow_tensor(flow, name: str) -> torch.Tensor:
    if isinstance(flow, np.ndarray):
        flow = torch.from_numpy(flow)
    if not isinstance(flow, torch.Tensor) or not flow.is_floating_point():
        raise TypeError(f"{name}: flow must be a floating-point Tensor or ndarray [..., 2, H, W], got "
                        f"{getattr(flow, 'dtype', type(flow).__name__)}")
    if flow.dim() < 3 or flow.shape[-3] != 2:
        raise ValueError(f"{name}: flow must be [2, H, W] or [N, 2, H, W] (x, y), got shape {tuple(flow.shape)}")
    if not bool(torch.isfinite(flow).all()):
        raise ValueError(f"{name}: flow has non-finite values (NaN or inf)")
    return flow


def to_i3d_input(flow, bound: float = 20.0) -> torch.Tensor:
    """Flow in pixels ``[..., 2, H, W]`` -> float32 in [-1, 1]: ``clip(flow, -bound, bound) / bound``."""
    bound = _check_bound(bound)
    flow = _flow_tensor(flow, "to_i3d_input")
    return (flow.to(torch.float32).clamp(-bound, bound) / bound)


def encode_flow(flow, bound: float = 20.0) -> torch.Tensor:
    """Flow in pixels -> uint8 denseflow codes: 0 below -bound, 255 above, else round(255 (v + b) / 2b)."""
    bound = _check_bound(bound)
    flow = _flow_tensor(flow, "encode_flow").to(torch.float64)
    codes = torch.round(255.0 * (flow.clamp(-bound, bound) + bound) / (2 * bound))
    return codes.to(torch.uint8)


def decode_flow(codes: torch.Tensor, bound: float = 20.0) -> torch.Tensor:
    """uint8 denseflow codes -> flow in pixels (float32): code * 2 bound / 255 - bound."""
    bound = _check_bound(bound)
    return codes.to(torch.float32) * (2 * bound / 255.0) - bound


def _write_jpeg(image: np.ndarray, path: Path) -> None:
    """Writes a greyscale JPEG atomically (temp file in the same directory, then rename)."""
    from PIL import Image

    with atomic_write(path) as f:
        Image.fromarray(image, mode="L").save(f, format="JPEG", quality=JPEG_QUALITY)


def write_flow_jpegs(flow, out_dir: PathArg, bound: float = 20.0, start_index: int = 1) -> List[Path]:
    """Writes flow ``[2, H, W]`` or ``[N, 2, H, W]`` (pixels) as ``flow_x_%05d.jpg`` /
    ``flow_y_%05d.jpg`` in ``out_dir`` (created if needed), numbered from ``start_index``.

    Returns the written paths (x then y for each pair). Every file is written to a temporary name
    and renamed, so a crash never leaves a half-written JPEG under a final name.
    """
    if isinstance(start_index, bool) or not isinstance(start_index, int) or start_index < 0:
        raise ValueError(f"write_flow_jpegs: start_index must be an int >= 0, got {start_index!r}")
    codes = encode_flow(flow, bound)
    if codes.dim() == 3:
        codes = codes[None]
    if codes.dim() != 4:
        raise ValueError(f"write_flow_jpegs: flow must be [2, H, W] or [N, 2, H, W], got shape {tuple(codes.shape)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    codes = codes.cpu().numpy()
    paths = []
    for i, pair in enumerate(codes):
        for axis, plane in zip("xy", pair):
            path = out / f"flow_{axis}_{start_index + i:05d}.jpg"
            _write_jpeg(np.ascontiguousarray(plane), path)
            paths.append(path)
    return paths


def read_flow_jpegs(directory: PathArg, bound: float = 20.0, start_index: Optional[int] = 1) -> torch.Tensor:
    """Reads every ``flow_x_*.jpg`` / ``flow_y_*.jpg`` pair of ``directory`` (consecutive indices from
    ``start_index``, as :func:`write_flow_jpegs` numbers them; None: from wherever they start) into
    flow ``Tensor[N, 2, H, W]`` float32 in pixels (JPEG is lossy: expect about 0.1-0.3 px of error at
    bound 20). A folder with gaps, or starting elsewhere, is refused: it is incomplete. Use
    :func:`to_i3d_input` for the network's [-1, 1] input."""
    from PIL import Image

    bound = _check_bound(bound)
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"read_flow_jpegs: {root} is not a directory")
    found = {"x": {}, "y": {}}
    for entry in root.iterdir():
        m = JPEG_NAME.match(entry.name)
        if m:
            found[m.group(1)][int(m.group(2))] = entry
    if not found["x"] and not found["y"]:
        raise FileNotFoundError(f"read_flow_jpegs: no flow_x_*.jpg / flow_y_*.jpg files in {root}")
    if set(found["x"]) != set(found["y"]):
        only_x = sorted(set(found["x"]) - set(found["y"]))
        only_y = sorted(set(found["y"]) - set(found["x"]))
        raise ValueError(f"read_flow_jpegs: flow_x and flow_y files do not pair up in {root} "
                         f"(x only: {only_x[:5]}, y only: {only_y[:5]})")
    indices = sorted(found["x"])
    if start_index is not None and indices[0] != start_index:
        raise ValueError(f"read_flow_jpegs: the flow files in {root} start at index {indices[0]}, not {start_index} "
                         "(an incomplete folder?)")
    if indices != list(range(indices[0], indices[0] + len(indices))):
        missing = sorted(set(range(indices[0], indices[-1] + 1)) - set(indices))
        raise ValueError(f"read_flow_jpegs: indices in {root} are not consecutive (missing {missing[:5]})")
    planes = []
    shape = None
    for index in indices:
        pair = []
        for axis in "xy":
            path = found[axis][index]
            try:
                with Image.open(path) as img:
                    arr = np.asarray(img.convert("L"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"read_flow_jpegs: cannot decode {path}: {exc}") from exc
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise ValueError(f"read_flow_jpegs: {path} is {arr.shape[1]}x{arr.shape[0]}, the others are "
                                 f"{shape[1]}x{shape[0]}")
            pair.append(arr)
        planes.append(np.stack(pair))
    return decode_flow(torch.from_numpy(np.stack(planes)), bound)
