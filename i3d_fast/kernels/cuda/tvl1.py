"""CUDA TV-L1 launcher (csrc/cuda/tvl1.cu): all pairs of a batch in every launch, on torch's stream.

OpenCV's stopping rule is evaluated on the device per pair (see the .cu); the host launches the
iteration kernel up to inner x outer times per warp and, every ``check_every`` iterations, reads
whether any pair is still active (the only host synchronisation) to stop launching early.
"""
from __future__ import annotations

import torch

from ..reference.tvl1 import pyramid_sizes
from . import Launcher, ptr

TILE = (32, 8)


def _grid(h: int, w: int, n: int):
    return ((w + TILE[0] - 1) // TILE[0], (h + TILE[1] - 1) // TILE[1], n)


def tvl1(frames0: torch.Tensor, frames1: torch.Tensor, params, check_every: int = 10) -> torch.Tensor:
    """frames Tensor[N, H, W] (uint8, or float in [0, 1]) on one CUDA device -> flow Tensor[N, 2, H, W] float32."""
    import numpy as np

    dev = frames0.device
    run = Launcher("tvl1.cu", dev)
    n, h, w = frames0.shape
    mult = 1.0 if frames0.dtype == torch.uint8 else 255.0
    sizes = pyramid_sizes(h, w, params.nscales, params.scale_step)
    inv = 1.0 / params.scale_step
    f32 = dict(dtype=torch.float32, device=dev)
    i0s = [frames0.to(torch.float32) * mult]
    i1s = [frames1.to(torch.float32) * mult]
    for lh, lw in sizes[1:]:
        ph, pw = i0s[-1].shape[1:]
        for pyr in (i0s, i1s):
            dst = torch.empty((n, lh, lw), **f32)
            run("tvl1_resize", _grid(lh, lw, n), TILE,
                (ptr(pyr[-1]), np.int32(ph), np.int32(pw), ptr(dst), np.int32(lh), np.int32(lw), np.float64(inv),
                 np.float64(inv), np.float32(1.0)))
            pyr.append(dst)
    fh, fw = sizes[0]
    i1x, i1y, i1wx, i1wy, rho = (torch.empty((n, fh, fw), **f32) for _ in range(5))
    p = torch.empty((2, n, 4, fh, fw), **f32)
    state = torch.zeros((n, 4), dtype=torch.int32, device=dev)
    err = torch.zeros(n, **f32)
    l_t, taut = params.lambda_ * params.theta, params.tau / params.theta
    median = {3: "tvl1_median3", 5: "tvl1_median5"}.get(params.median_filtering)
    u = None
    for level in range(len(sizes) - 1, -1, -1):
        lh, lw = sizes[level]
        plane = lh * lw
        grid = _grid(lh, lw, n)
        dims = (np.int32(n), np.int32(lh), np.int32(lw))
        new_u = torch.empty((2, n, 2, lh, lw), **f32)
        if u is None:
            new_u[0].zero_()
        else:
            ch, cw = sizes[level + 1]
            run("tvl1_upsample", grid, TILE,
                (ptr(u), ptr(state), np.int32(n), np.int32(ch), np.int32(cw), ptr(new_u), np.int32(lh),
                 np.int32(lw), np.float64(ch / lh), np.float64(cw / lw), np.float32(inv)))
        u = new_u
        state.zero_()
        p.view(-1)[: n * 4 * plane].zero_()  # buffer 0 of p at this level's plane size
        views = [t.view(-1)[: n * plane] for t in (i1x, i1y, i1wx, i1wy, rho)]
        run("tvl1_gradient", grid, TILE, (ptr(i1s[level]), np.int32(lh), np.int32(lw), ptr(views[0]), ptr(views[1])))
        # p is laid out [2, n, 4, h, w] at this level's size inside the finest-size allocation
        p_level = p.view(-1)[: 2 * n * 4 * plane]
        scaled_eps = np.float32(params.epsilon * params.epsilon * plane)
        for _ in range(params.warps):
            run("tvl1_warp", grid, TILE,
                (ptr(i0s[level]), ptr(i1s[level]), ptr(views[0]), ptr(views[1]), ptr(u), ptr(state), *dims,
                 ptr(views[2]), ptr(views[3]), ptr(views[4])))
            active = True
            count = 0
            for _ in range(params.outer_iterations):
                if median is not None:
                    run(median, grid, TILE, (ptr(u), ptr(state), *dims))
                for _ in range(params.inner_iterations):
                    run("tvl1_iterate", grid, TILE,
                        (ptr(views[2]), ptr(views[3]), ptr(views[4]), ptr(u), ptr(p_level), ptr(state), ptr(err),
                         *dims, np.float32(l_t), np.float32(params.theta), np.float32(taut), scaled_eps))
                    count += 1
                    if count % check_every == 0 and not bool(state[:, 0].any()):
                        active = False
                        break
                if not active:
                    break
    out = torch.empty((n, 2, h, w), **f32)
    run("tvl1_output", _grid(h, w, n), TILE, (ptr(u), ptr(state), np.int32(n), np.int32(h), np.int32(w), ptr(out)))
    return out
