"""CUDA TV-L1 launcher (csrc/cuda/tvl1.cu): all pairs of a batch in every launch, on torch's stream.

OpenCV's stopping rule is evaluated on the device per pair (see the .cu): a pair whose update fell
under the threshold stops, and its later iteration kernels return at once. The host launches the
iterations of up to outer_iterations outer iterations per warp and only stops launching early when no
pair is left: after each outer iteration it asks "any pair active" (copied asynchronously into pinned
memory, with an event) and reads the answer to the previous question, one outer iteration old by then,
so the host never drains the stream (it waits at most for that old event); the cost is at most one
outer iteration of launches that return at once.

With ``graphs`` (the default) one outer iteration of a pyramid level (the median filter and the
``inner_iterations`` iteration launches, whose arguments do not change within the level) is captured once
per level as a CUDA graph and replayed, so the host issues one graph launch instead of ~30 kernel
launches per outer iteration (a batch at the default parameters: ~7,750 launches -> ~300 host calls), and
asks "any pair active" once per outer iteration. Results are the same either way: each pair's stopping
rule is evaluated on the device. Where capture fails, a warning says so once and the launches go one
by one.

Batches of more than 65535 pairs (the grid's z limit) are solved 65535 pairs at a time.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import numpy as np
import torch

from ..reference.tvl1 import pyramid_sizes
from . import Launcher, ptr

TILE = (32, 8)
#: CUDA's limit on gridDim.z, the pair index of every launch.
MAX_PAIRS = 65535


def _grid(h: int, w: int, n: int):
    return ((w + TILE[0] - 1) // TILE[0], (h + TILE[1] - 1) // TILE[1], n)


class _AnyActive:
    """'Is any pair still iterating?' without a blocking round trip: :meth:`finished` reads the answer
    to the question asked at its previous call (waiting for that event only) and asks again."""

    def __init__(self, state: torch.Tensor):
        self.state = state
        self.flag = torch.ones(1, dtype=torch.int32, pin_memory=True)
        self.event = torch.cuda.Event()
        self.asked = False

    def reset(self) -> None:
        """Forget the pending question (the pairs were restarted since)."""
        self.asked = False

    def finished(self) -> bool:
        if self.asked:
            self.event.synchronize()
            if int(self.flag[0]) == 0:
                return True
        self.flag.copy_(self.state[:, 0].amax(dim=0, keepdim=True), non_blocking=True)
        self.event.record()  # torch's current stream, the one the kernels run on
        self.asked = True
        return False


def tvl1(frames0: torch.Tensor, frames1: torch.Tensor, params, graphs: bool = True) -> torch.Tensor:
    """frames Tensor[N, H, W] (uint8, or float in [0, 1]) on one CUDA device -> flow Tensor[N, 2, H, W] float32.
    ``graphs``: replay each level's outer iteration as a CUDA graph (else launch kernel by kernel)."""
    n = frames0.shape[0]
    if n > MAX_PAIRS:
        return torch.cat([_solve(frames0[s:s + MAX_PAIRS], frames1[s:s + MAX_PAIRS], params, graphs)
                          for s in range(0, n, MAX_PAIRS)])
    return _solve(frames0, frames1, params, graphs)


def _solve(frames0: torch.Tensor, frames1: torch.Tensor, params, graphs: bool) -> torch.Tensor:
    dev = frames0.device
    launcher = Launcher("tvl1.cu", dev)
    with torch.cuda.device(dev), launcher as run:
        return _levels(run, frames0, frames1, params, graphs)


_warned_capture = False


def _capture(launches: Callable, device: torch.device) -> Optional[torch.cuda.CUDAGraph]:
    """``launches(run)`` captured as a CUDA graph (nothing runs yet), or None (warned once) if capture fails."""
    global _warned_capture
    graph = torch.cuda.CUDAGraph()
    # a side stream (capture cannot use the legacy default stream); capture_begin / capture_end rather than
    # torch.cuda.graph(), which would also collect garbage and empty torch's allocator cache every level
    stream = torch.cuda.Stream(device)
    try:
        with torch.cuda.stream(stream):
            graph.capture_begin()
            try:
                with Launcher("tvl1.cu", device) as run:  # run: on the capture stream
                    launches(run)
            finally:
                graph.capture_end()
    except Exception as exc:  # noqa: BLE001 - any capture failure falls back to plain launches
        if not _warned_capture:
            _warned_capture = True
            warnings.warn(f"TV-L1 on CUDA: capturing the iteration launches as a CUDA graph failed "
                          f"({type(exc).__name__}: {exc}); launching them one by one", RuntimeWarning)
        return None
    return graph


def _levels(run, frames0, frames1, params, graphs: bool) -> torch.Tensor:
    dev = frames0.device
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
    gx, gy, _ = _grid(fh, fw, n)
    partial = torch.empty(n * gx * gy, dtype=torch.float64, device=dev)  # per-block sums of the finest level
    any_active = _AnyActive(state)
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
        iterate_args = (ptr(views[2]), ptr(views[3]), ptr(views[4]), ptr(u), ptr(p_level), ptr(state), ptr(partial),
                        *dims, np.float32(l_t), np.float32(params.theta), np.float32(taut), scaled_eps)

        def outer_iteration(launch, median_args=(ptr(u), ptr(state), *dims), iterate_args=iterate_args):
            if median is not None:
                launch(median, grid, TILE, median_args)
            for _ in range(params.inner_iterations):
                launch("tvl1_iterate", grid, TILE, iterate_args)

        graph = _capture(outer_iteration, dev) if graphs else None
        for _ in range(params.warps):
            run("tvl1_warp", grid, TILE,
                (ptr(i0s[level]), ptr(i1s[level]), ptr(views[0]), ptr(views[1]), ptr(u), ptr(state), *dims,
                 ptr(views[2]), ptr(views[3]), ptr(views[4])))
            any_active.reset()  # the warp restarted every pair
            for _ in range(params.outer_iterations):
                if graph is not None:
                    graph.replay()  # on torch's current stream, in order with the launches above
                else:
                    outer_iteration(run)
                if any_active.finished():
                    break
    out = torch.empty((n, 2, h, w), **f32)
    run("tvl1_output", _grid(h, w, n), TILE, (ptr(u), ptr(state), np.int32(n), np.int32(h), np.int32(w), ptr(out)))
    return out
