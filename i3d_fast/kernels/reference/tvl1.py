"""Reference Dual TV-L1 optical flow: plain PyTorch, any dtype (float64 for the oracle), one pair.

The same algorithm as the C++ and CUDA solvers and as OpenCV's ``cv::optflow::DualTVL1OpticalFlow``
(Zach, Pock & Bischof 2007; see docs in :mod:`i3d_fast.flow`), written step by step so that each
step can be checked on its own:

- :func:`pyramid_sizes`, :func:`resize_linear`: the coarse-to-fine pyramid (scaleStep, linear, no
  prefilter, levels below 16 px dropped) and the flow upsampling between levels.
- :func:`centered_gradient`: gradients of I1 (centred, one-sided halves at the border).
- :func:`remap_bicubic`: Keys bicubic (A = -0.75) at the exact position, zero outside (OpenCV 5).
- :func:`warp_terms`: per warp, I1w/I1wx/I1wy at x + u and the linearisation (grad, rho_c).
- :func:`threshold`, :func:`divergence`, :func:`forward_gradient`, :func:`dual_update`, and
  :func:`iterate` (threshold, divergence, primal update, dual update; returns the squared update).
- :func:`median`: 3x3 / 5x5 median with replicated borders (OpenCV's ``medianBlur`` on floats).
- :func:`tvl1`: the whole solver with OpenCV's stopping rule.

Slow (tens of tensor ops per iteration): use it on small images.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.nn.functional as F

FLT_EPSILON = 1.1920928955078125e-07
#: Keys' cubic convolution parameter (OpenCV's INTER_CUBIC).
CUBIC_A = -0.75
#: Pyramid levels smaller than this (either side) are not built.
MIN_LEVEL_SIZE = 16


def round_half_even(x: float) -> int:
    """OpenCV's cvRound / saturate_cast<int>: round to nearest, ties to even."""
    return int(round(x))


def pyramid_sizes(height: int, width: int, nscales: int, scale_step: float) -> List[Tuple[int, int]]:
    """[(H, W)] from the finest level down; a level is dropped (with all coarser ones) when a side is < 16."""
    sizes = [(height, width)]
    for _ in range(1, nscales):
        h, w = sizes[-1]
        nh, nw = round_half_even(h * scale_step), round_half_even(w * scale_step)
        if nh < MIN_LEVEL_SIZE or nw < MIN_LEVEL_SIZE:
            break
        sizes.append((nh, nw))
    return sizes


def _linear_taps(out_size: int, in_size: int, scale: float, dtype, device):
    """Source index pairs and weights along one axis: src = (dst + 0.5) * scale - 0.5, clamped."""
    pos = ((torch.arange(out_size, dtype=torch.float64, device=device) + 0.5) * scale - 0.5).to(torch.float32)
    pos = pos.to(dtype)
    i0 = torch.floor(pos)
    frac = pos - i0
    i0 = i0.long()
    frac = torch.where(i0 < 0, torch.zeros_like(frac), frac)
    i0 = i0.clamp(min=0)
    frac = torch.where(i0 >= in_size - 1, torch.zeros_like(frac), frac)
    i0 = i0.clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    return i0, i1, frac


def resize_linear(img: torch.Tensor, out_h: int, out_w: int, scale_y: float, scale_x: float) -> torch.Tensor:
    """Bilinear resize of Tensor[H, W] (OpenCV INTER_LINEAR, clamp-to-edge); scale = input px per output px."""
    h, w = img.shape
    y0, y1, fy = _linear_taps(out_h, h, scale_y, img.dtype, img.device)
    x0, x1, fx = _linear_taps(out_w, w, scale_x, img.dtype, img.device)
    rows = img[:, x0] * (1 - fx) + img[:, x1] * fx
    return rows[y0] * (1 - fy)[:, None] + rows[y1] * fy[:, None]


def centered_gradient(img: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dI/dx, dI/dy): 0.5 * (f[i+1] - f[i-1]) inside, 0.5 * one-sided difference at the border."""
    padded_x = F.pad(img[None, None], (1, 1, 0, 0), mode="replicate")[0, 0]
    padded_y = F.pad(img[None, None], (0, 0, 1, 1), mode="replicate")[0, 0]
    dx = 0.5 * (padded_x[:, 2:] - padded_x[:, :-2])
    dy = 0.5 * (padded_y[2:, :] - padded_y[:-2, :])
    return dx, dy


def cubic_weights(frac: torch.Tensor) -> torch.Tensor:
    """Keys cubic weights (A = -0.75) for taps at -1, 0, 1, 2 around a fractional offset; [..., 4]."""
    a = CUBIC_A
    x = frac
    w0 = ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a
    w1 = ((a + 2) * x - (a + 3)) * x * x + 1
    w2 = ((a + 2) * (1 - x) - (a + 3)) * (1 - x) * (1 - x) + 1
    w3 = 1 - w0 - w1 - w2
    return torch.stack([w0, w1, w2, w3], dim=-1)


def remap_bicubic(imgs: List[torch.Tensor], map_x: torch.Tensor, map_y: torch.Tensor) -> List[torch.Tensor]:
    """Samples each Tensor[H, W] in ``imgs`` at (map_x, map_y) as OpenCV 5's remap does (INTER_CUBIC,
    BORDER_CONSTANT 0): Keys A = -0.75 at the exact position (OpenCV 4 quantised it to 1/32 px),
    taps outside the image are 0."""
    h, w = imgs[0].shape
    fx0, fy0 = torch.floor(map_x), torch.floor(map_y)
    wx = cubic_weights(map_x - fx0)
    wy = cubic_weights(map_y - fy0)
    # positions far outside are clamped first so that the integer conversion cannot overflow
    ix = fx0.clamp(-4, w + 4).long()
    iy = fy0.clamp(-4, h + 4).long()
    dtype = imgs[0].dtype
    outs = [torch.zeros_like(map_x, dtype=dtype) for _ in imgs]
    for j in range(4):
        yy = iy + (j - 1)
        for i in range(4):
            xx = ix + (i - 1)
            inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
            flat = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).flatten()
            weight = wy[..., j] * wx[..., i] * inside.to(dtype)
            for out, img in zip(outs, imgs):
                out += weight * img.flatten()[flat].view_as(map_x)
    return outs


def warp_terms(i0, i1, i1x, i1y, u1, u2):
    """One warp: (I1wx, I1wy, grad, rho_c) with I1 and its gradients sampled at x + u."""
    h, w = i0.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=u1.dtype, device=u1.device),
                            torch.arange(w, dtype=u1.dtype, device=u1.device), indexing="ij")
    i1w, i1wx, i1wy = remap_bicubic([i1, i1x, i1y], xs + u1, ys + u2)
    grad = i1wx * i1wx + i1wy * i1wy
    rho_c = i1w - i1wx * u1 - i1wy * u2 - i0
    return i1wx, i1wy, grad, rho_c


def threshold(i1wx, i1wy, grad, rho_c, u1, u2, l_t: float):
    """The thresholding step TH: (v1, v2) from u and the linearised data term."""
    rho = rho_c + (i1wx * u1 + i1wy * u2)
    zero = torch.zeros_like(rho)
    lower = rho < -l_t * grad
    upper = rho > l_t * grad
    fi = torch.where(grad > FLT_EPSILON, -rho / torch.where(grad > FLT_EPSILON, grad, torch.ones_like(grad)), zero)
    coef = torch.where(lower, torch.full_like(rho, l_t), torch.where(upper, torch.full_like(rho, -l_t), fi))
    return u1 + coef * i1wx, u2 + coef * i1wy


def divergence(p1, p2):
    """Backward-difference divergence; the value before the first row/column counts as 0."""
    return (p1 - F.pad(p1, (1, 0))[:, :-1]) + (p2 - F.pad(p2, (0, 0, 1, 0))[:-1, :])


def forward_gradient(u):
    """Forward differences, 0 in the last column (x) / last row (y)."""
    ux = F.pad(u[:, 1:] - u[:, :-1], (0, 1))
    uy = F.pad(u[1:, :] - u[:-1, :], (0, 0, 0, 1))
    return ux, uy


def dual_update(p1, p2, ux, uy, taut: float):
    norm = 1 + taut * torch.sqrt(ux * ux + uy * uy)
    return (p1 + taut * ux) / norm, (p2 + taut * uy) / norm


def iterate(state: dict, l_t: float, theta: float, taut: float) -> float:
    """One inner iteration in place on ``state`` (keys i1wx, i1wy, grad, rho_c, u1, u2, p11, p12,
    p21, p22); returns the summed squared update of u."""
    s = state
    v1, v2 = threshold(s["i1wx"], s["i1wy"], s["grad"], s["rho_c"], s["u1"], s["u2"], l_t)
    u1 = v1 + theta * divergence(s["p11"], s["p12"])
    u2 = v2 + theta * divergence(s["p21"], s["p22"])
    error = float(((u1 - s["u1"]) ** 2 + (u2 - s["u2"]) ** 2).sum())
    s["u1"], s["u2"] = u1, u2
    u1x, u1y = forward_gradient(u1)
    u2x, u2y = forward_gradient(u2)
    s["p11"], s["p12"] = dual_update(s["p11"], s["p12"], u1x, u1y, taut)
    s["p21"], s["p22"] = dual_update(s["p21"], s["p22"], u2x, u2y, taut)
    return error


def median(u: torch.Tensor, ksize: int) -> torch.Tensor:
    """ksize x ksize median (ksize odd) with replicated borders."""
    r = ksize // 2
    padded = F.pad(u[None, None], (r, r, r, r), mode="replicate")[0, 0]
    windows = padded.unfold(0, ksize, 1).unfold(1, ksize, 1)  # [H, W, k, k]
    return windows.reshape(*u.shape, ksize * ksize).median(dim=-1).values


def solve_level(i0, i1, u1, u2, params, stats: dict | None = None):
    """Warps and iterations at one pyramid level; returns the refined (u1, u2)."""
    h, w = i0.shape
    l_t = params.lambda_ * params.theta
    taut = params.tau / params.theta
    # OpenCV compares in float: eps^2 * pixels.
    scaled_eps = float(torch.tensor(params.epsilon * params.epsilon * h * w, dtype=torch.float32))
    i1x, i1y = centered_gradient(i1)
    zeros = torch.zeros_like(i0)
    state = {"u1": u1, "u2": u2, "p11": zeros, "p12": zeros, "p21": zeros, "p22": zeros}
    for _ in range(params.warps):
        state["i1wx"], state["i1wy"], state["grad"], state["rho_c"] = warp_terms(i0, i1, i1x, i1y, state["u1"],
                                                                                 state["u2"])
        error = math.inf
        outer = 0
        while error > scaled_eps and outer < params.outer_iterations:
            if params.median_filtering > 1:
                k = params.median_filtering
                state["u1"], state["u2"] = median(state["u1"], k), median(state["u2"], k)
            inner = 0
            while error > scaled_eps and inner < params.inner_iterations:
                error = iterate(state, l_t, params.theta, taut)
                inner += 1
                if stats is not None:
                    stats["iterations"] = stats.get("iterations", 0) + 1
            outer += 1
    return state["u1"], state["u2"]


def tvl1(frame0: torch.Tensor, frame1: torch.Tensor, params, dtype: torch.dtype = torch.float64,
         stats: dict | None = None) -> torch.Tensor:
    """Flow Tensor[2, H, W] (x, y) in pixels with I0(x) ~ I1(x + u(x)); frames Tensor[H, W] in 0..255."""
    i0s = [frame0.to(dtype)]
    i1s = [frame1.to(dtype)]
    sizes = pyramid_sizes(*frame0.shape, params.nscales, params.scale_step)
    inv = 1.0 / params.scale_step
    for h, w in sizes[1:]:
        i0s.append(resize_linear(i0s[-1], h, w, inv, inv))
        i1s.append(resize_linear(i1s[-1], h, w, inv, inv))
    u1 = torch.zeros(sizes[-1], dtype=dtype, device=frame0.device)
    u2 = torch.zeros_like(u1)
    for level in range(len(sizes) - 1, -1, -1):
        u1, u2 = solve_level(i0s[level], i1s[level], u1, u2, params, stats)
        if level == 0:
            break
        (h, w), (ph, pw) = sizes[level - 1], sizes[level]
        mult = 1.0 / params.scale_step
        u1 = resize_linear(u1, h, w, ph / h, pw / w) * mult
        u2 = resize_linear(u2, h, w, ph / h, pw / w) * mult
    return torch.stack([u1, u2])
