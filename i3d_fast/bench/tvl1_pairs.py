"""Synthetic frame pairs with known flow for the TV-L1 benchmarks and tests (numpy and torch only;
OpenCV is needed for :func:`opencv_flow`, the baseline, alone).

Textures are procedural (Gaussian-smoothed noise at several scales plus edges), so no image data set
is needed; the motion fields cover translation, rotation, zoom, a large displacement and the smooth
sinusoidal field of docs/tvl1-reference.md. I0(x) = I1(x + f(x)) (Keys bicubic, mirrored border),
both rounded to uint8.
"""
from __future__ import annotations

import numpy as np
import torch

from ..kernels.reference.tvl1 import remap_bicubic


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a float64 image, as OpenCV's ``GaussianBlur(img, (0, 0), sigma)`` on
    float64: kernel of 2 round(4 sigma) + 1 taps, mirrored border without repeating the edge pixel
    (BORDER_REFLECT_101)."""
    radius = int(np.floor(4 * sigma + 0.5))
    taps = np.exp(-np.arange(-radius, radius + 1, dtype=np.float64) ** 2 / (2 * sigma * sigma))
    taps /= taps.sum()
    out = np.asarray(img, dtype=np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        out = sum(t * np.take(padded, np.arange(k, k + n), axis=axis) for k, t in enumerate(taps))
    return out


def warp(base: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``base`` [H, W] sampled at x + flow(x) (Keys bicubic, A = -0.75, the package's reference remap),
    with the image mirrored beyond its border (BORDER_REFLECT_101): float64 [H, W]."""
    h, w = base.shape
    margin = int(np.ceil(np.abs(flow).max())) + 3  # every bicubic tap lands inside the mirrored image
    padded = torch.from_numpy(np.pad(np.asarray(base, dtype=np.float64), margin, mode="reflect"))
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    map_x = torch.from_numpy(x + flow[0] + margin)
    map_y = torch.from_numpy(y + flow[1] + margin)
    (out,) = remap_bicubic([padded], map_x, map_y)
    return out.numpy()


def _to_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """A float64 image in 0..255 with structure at several scales and some sharp edges."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w))
    for sigma, weight in ((1.0, 0.25), (3.0, 0.45), (8.0, 0.3)):
        noise = gaussian_blur(rng.standard_normal((h, w)), sigma)
        img += weight * noise / (noise.std() + 1e-12)
    y, x = np.mgrid[0:h, 0:w]
    for _ in range(6):  # a few bright and dark rectangles for edges
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        img[y0:y0 + rng.integers(6, h // 3), x0:x0 + rng.integers(6, w // 3)] += rng.choice([-1.5, 1.5])
    img = (img - img.min()) / (img.max() - img.min())
    return 20 + 215 * img


def motion(kind: str, h: int, w: int) -> np.ndarray:
    """Flow [2, H, W] (x, y) in pixels."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    if kind == "translation":
        return np.stack([np.full((h, w), 2.6), np.full((h, w), -1.3)])
    if kind == "large":
        return np.stack([np.full((h, w), 9.0), np.full((h, w), 4.5)])
    if kind == "rotation":  # 3 degrees about the centre
        a = np.deg2rad(3.0)
        return np.stack([np.cos(a) * (x - cx) - np.sin(a) * (y - cy) + cx - x,
                         np.sin(a) * (x - cx) + np.cos(a) * (y - cy) + cy - y])
    if kind == "zoom":  # 5 % larger
        return np.stack([0.05 * (x - cx), 0.05 * (y - cy)])
    if kind == "sinusoidal":  # the doc's field, max |f| = 3 px
        u = np.sin(2 * np.pi * x / w) * np.cos(2 * np.pi * y / h)
        v = np.cos(np.pi * x / w) * np.sin(2 * np.pi * y / h)
        scale = 3.0 / np.sqrt(u * u + v * v).max()
        return np.stack([u * scale, v * scale])
    raise ValueError(kind)


def make_pair(kind: str, h: int = 128, w: int = 160, seed: int = 0):
    """(I0 uint8, I1 uint8, flow [2, H, W]) with I0(x) = I1(x + flow(x)) (bicubic, reflected border)."""
    base = texture(h, w, seed)
    flow = motion(kind, h, w)
    return _to_u8(warp(base, flow)), _to_u8(base), flow


KINDS = ("translation", "rotation", "zoom", "large", "sinusoidal")


def epe(flow, truth, margin: int = 0) -> float:
    """Mean end-point error of flow [2, H, W] against truth (optionally without a border margin)."""
    d = np.sqrt(((np.asarray(flow, dtype=np.float64) - truth) ** 2).sum(0))
    if margin:
        d = d[margin:-margin, margin:-margin]
    return float(d.mean())


def opencv_missing() -> str | None:
    """Why OpenCV's TV-L1 (the baseline) cannot run here, or None."""
    try:
        import cv2
    except ImportError:
        return "needs opencv-contrib-python-headless"
    if not hasattr(cv2, "optflow"):
        return "needs opencv-contrib-python-headless (this OpenCV has no optflow module)"
    return None


def opencv_flow(i0: np.ndarray, i1: np.ndarray, **kwargs) -> np.ndarray:
    """OpenCV's DualTVL1OpticalFlow (defaults unless overridden) as [2, H, W]; needs opencv-contrib."""
    import cv2

    solver = cv2.optflow.DualTVL1OpticalFlow_create(**kwargs)
    return solver.calc(i0, i1, None).transpose(2, 0, 1)


def astronaut_pair():
    """The reproducible pair of docs/tvl1-reference.md (needs scikit-image for the image, which is
    not a dependency: returns None without it): (I0, I1, flow) at 256x340."""
    try:
        from skimage import color, data, transform
    except ImportError:
        return None
    base = transform.resize(color.rgb2gray(data.astronaut()), (256, 340), order=1, anti_aliasing=True,
                            mode="reflect") * 255
    flow = motion("sinusoidal", 256, 340)
    return _to_u8(warp(base, flow)), _to_u8(base), flow
