"""``tvl1`` and ``tvl1_video``: validated, dispatched Dual TV-L1 optical flow.

One custom op ``i3d_fast::tvl1`` (not differentiable) with backends, in "auto" order:
``cuda`` (CUDA C++ via NVRTC, CUDA tensors, needs CuPy), ``cpu`` (C++ in i3d_fast._C) and
``reference`` (plain PyTorch in float64: slow, the test oracle). With ``backend="auto"``, CUDA
tensors on a machine without CuPy are solved by the C++ CPU solver (see :func:`solver_device`).
"""
from __future__ import annotations

import warnings
from typing import Optional, Union

import numpy as np
import torch

from ..kernels import cpu as cpu_kernels
from ..kernels import cuda as cuda_kernels
from ..kernels.reference import tvl1 as reference_tvl1
from ..ops import _library, dispatch
from .params import TVL1Params

FrameArg = Union[torch.Tensor, np.ndarray]
FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: Float frames are intensities in [0, 1]; values this far outside are taken as a mistake.
RANGE_TOLERANCE = 1e-3


_warned_no_cupy = False


def solver_device(device: Union[str, torch.device]) -> torch.device:
    """The device ``tvl1(backend="auto")`` solves on for frames on ``device``: that CUDA device when CuPy
    is installed (the CUDA solver), otherwise the CPU (the C++ solver; a warning says so, once per
    process). Frames on the CPU stay there."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    missing = cuda_kernels.cupy_missing()
    if missing is None:
        return device
    global _warned_no_cupy
    if not _warned_no_cupy:
        _warned_no_cupy = True
        warnings.warn(f"TV-L1 optical flow runs on the CPU, not on {device}: {missing}", RuntimeWarning,
                      stacklevel=2)
    return torch.device("cpu")


def _reject_cuda(x: torch.Tensor, explicit: bool) -> Optional[str]:
    return cuda_kernels.reject_unless_cuda(x)


def _reject_cpu(x: torch.Tensor, explicit: bool) -> Optional[str]:
    return cpu_kernels.reject_unless_available(x)


def _reject_reference(x: torch.Tensor, explicit: bool) -> Optional[str]:
    return None if explicit else "float64 oracle, far slower: only when requested with backend='reference'"


class _Reference:
    @staticmethod
    def tvl1(frames0, frames1, params):
        # the reference takes intensities in 0..255: float frames in [0, 1] are scaled as OpenCV does
        scale = 1.0 if frames0.dtype == torch.uint8 else 255.0
        return torch.stack([reference_tvl1.tvl1(a.double() * scale, b.double() * scale, params, torch.float64)
                            for a, b in zip(frames0, frames1)]).to(torch.float32)


class _Cpu:
    @staticmethod
    def tvl1(frames0, frames1, params):
        from ..kernels.cpu import tvl1 as cpu_tvl1

        return cpu_tvl1.tvl1(frames0, frames1, params)


class _Cuda:
    @staticmethod
    def tvl1(frames0, frames1, params):
        from ..kernels.cuda import tvl1 as cuda_tvl1

        return cuda_tvl1.tvl1(frames0, frames1, params)


BACKENDS = (
    dispatch.Backend("cuda", _reject_cuda, lambda: _Cuda),
    dispatch.Backend("cpu", _reject_cpu, lambda: _Cpu),
    dispatch.Backend("reference", _reject_reference, lambda: _Reference),
)


def _tvl1(frames0: torch.Tensor, frames1: torch.Tensor, tau: float, lambda_: float, theta: float, nscales: int,
          warps: int, epsilon: float, inner_iterations: int, outer_iterations: int, scale_step: float,
          median_filtering: int, backend: str) -> torch.Tensor:
    params = TVL1Params(tau, lambda_, theta, nscales, warps, epsilon, inner_iterations, outer_iterations, scale_step,
                        median_filtering)
    impl = dispatch.select("i3d_fast.flow.tvl1", backend, BACKENDS, frames0).impl()
    return impl.tvl1(frames0, frames1, params)


def _tvl1_fake(frames0, frames1, tau, lambda_, theta, nscales, warps, epsilon, inner_iterations, outer_iterations,
               scale_step, median_filtering, backend):
    n, h, w = frames0.shape
    return frames0.new_empty((n, 2, h, w), dtype=torch.float32)


#: Validated frames Tensor[N, H, W] (uint8 or float32 in [0, 1]) -> flow Tensor[N, 2, H, W] float32.
tvl1_op = _library.define(
    "tvl1(Tensor frames0, Tensor frames1, float tau, float lambda_, float theta, int nscales, int warps, "
    "float epsilon, int inner_iterations, int outer_iterations, float scale_step, int median_filtering, "
    "str backend) -> Tensor", _tvl1, _tvl1_fake)


def _as_tensor(x: FrameArg, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"tvl1: {name} must be uint8 or floating point, got numpy {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        return x
    raise TypeError(f"tvl1: {name} must be a torch.Tensor or numpy.ndarray [H, W] or [N, H, W], got {type(x).__name__}")


def _validate_frames(x: torch.Tensor, name: str) -> torch.Tensor:
    """Checks one frame stack [N, H, W]; returns it as uint8 or float32 (contiguous)."""
    if x.dtype != torch.uint8 and x.dtype not in FLOAT_TYPES:
        raise TypeError(f"tvl1: {name} must be uint8 (0..255) or floating point (0..1), got {x.dtype}")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"tvl1: {name} must be on the CPU or a CUDA device, got {x.device}")
    if x.dtype != torch.uint8:
        x = x.to(torch.float32)
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"tvl1: {name} has {bad} non-finite values (NaN or inf); frames must be finite")
        if x.numel():
            lo, hi = float(x.min()), float(x.max())
            if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
                raise ValueError(f"tvl1: float {name} must be intensities in [0, 1] (OpenCV's convention; uint8 "
                                 f"frames are 0..255), got values in [{lo:g}, {hi:g}]; divide by 255 or pass uint8")
    return x.contiguous()


def tvl1(frames0: FrameArg, frames1: FrameArg, params: Optional[TVL1Params] = None, backend: str = "auto",
         **kwargs) -> torch.Tensor:
    """Dual TV-L1 optical flow from ``frames0`` to ``frames1`` (OpenCV's algorithm and defaults).

    Args:
        frames0, frames1: greyscale frames ``[H, W]`` or a batch ``[N, H, W]`` (same shape, same
            device), numpy or torch, CPU or CUDA: uint8 in 0..255, or floating point in [0, 1]
            (as OpenCV takes them). At least 16x16 pixels.
        params: a :class:`TVL1Params`; keyword arguments (``tau``, ``lambda_`` or ``lambda``,
            ``theta``, ``nscales``, ``warps``, ``epsilon``, ``inner_iterations``,
            ``outer_iterations``, ``scale_step``, ``median_filtering``, or OpenCV's camelCase
            names) override it.
        backend: "auto": the CUDA solver for CUDA tensors when CuPy is installed; the C++ CPU solver
            for CPU tensors, and for CUDA tensors without CuPy (copied to the CPU and the flow back,
            with a one-time warning). Or by name: "cuda" (CUDA tensors, needs CuPy), "cpu" (CPU
            tensors) or "reference" (float64 PyTorch oracle, slow).

    Returns:
        float32 Tensor ``[2, H, W]`` (or ``[N, 2, H, W]``) on the frames' device: channel 0 is the
        x (column) displacement, channel 1 the y (row) displacement, in pixels, with
        ``frames0(x) ~ frames1(x + flow(x))``.

    The CPU backend runs a batch's pairs in parallel over ``torch.get_num_threads()`` threads
    (all threads on one pair when the batch is smaller than the thread count).
    """
    params = TVL1Params.from_kwargs(params, **kwargs)
    a, b = _as_tensor(frames0, "frames0"), _as_tensor(frames1, "frames1")
    if a.shape != b.shape:
        raise ValueError(f"tvl1: frames0 and frames1 must have the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.dim() not in (2, 3):
        raise ValueError(f"tvl1: frames must be [H, W] or [N, H, W], got shape {tuple(a.shape)}")
    if a.device != b.device:
        raise ValueError(f"tvl1: frames0 and frames1 must be on the same device, got {a.device} and {b.device}")
    h, w = a.shape[-2:]
    if h < reference_tvl1.MIN_LEVEL_SIZE or w < reference_tvl1.MIN_LEVEL_SIZE:
        raise ValueError(f"tvl1: frames must be at least {reference_tvl1.MIN_LEVEL_SIZE}x"
                         f"{reference_tvl1.MIN_LEVEL_SIZE} (the smallest pyramid level), got {h}x{w}")
    single = a.dim() == 2
    a, b = _validate_frames(a, "frames0"), _validate_frames(b, "frames1")
    if a.dtype != b.dtype:  # uint8 with float: compute both as float in [0, 1]
        a = a.to(torch.float32) / 255 if a.dtype == torch.uint8 else a
        b = b.to(torch.float32) / 255 if b.dtype == torch.uint8 else b
    if single:
        a, b = a[None], b[None]
    device = a.device
    if backend == "auto" and solver_device(device) != device:  # CUDA tensors, no CuPy: the C++ solver
        a, b = a.cpu(), b.cpu()
    if a.shape[0] == 0:
        flow = torch.empty((0, 2, h, w), dtype=torch.float32, device=a.device)
    else:
        flow = tvl1_op(a, b, float(params.tau), float(params.lambda_), float(params.theta), params.nscales,
                       params.warps, float(params.epsilon), params.inner_iterations, params.outer_iterations,
                       float(params.scale_step), params.median_filtering, backend)
        if not bool(torch.isfinite(flow).all()):
            raise RuntimeError("tvl1: the solver produced non-finite flow from finite frames; please report this "
                               f"(backend {backend!r}, shape {tuple(a.shape)}, params {params})")
    flow = flow.to(device)
    return flow[0] if single else flow


def tvl1_video(frames: FrameArg, params: Optional[TVL1Params] = None, backend: str = "auto",
               batch_size: int = 64, **kwargs) -> torch.Tensor:
    """The T - 1 flows between consecutive frames of ``frames`` ``[T, H, W]`` (greyscale, uint8 or
    float in [0, 1]): ``Tensor[T - 1, 2, H, W]``, flow t from frame t to frame t + 1.

    Pairs are solved ``batch_size`` at a time (the CPU solver's buffers take about 80 bytes per
    pixel per pair solved at once). Other arguments as :func:`tvl1`.
    """
    x = _as_tensor(frames, "frames")
    if x.dim() != 3:
        raise ValueError(f"tvl1_video: frames must be [T, H, W] greyscale, got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"tvl1_video: need at least 2 frames for a flow, got {x.shape[0]}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"tvl1_video: batch_size must be a positive int, got {batch_size!r}")
    params = TVL1Params.from_kwargs(params, **kwargs)
    flows = []
    for start in range(0, x.shape[0] - 1, batch_size):
        stop = min(start + batch_size, x.shape[0] - 1)
        flows.append(tvl1(x[start:stop], x[start + 1:stop + 1], params, backend=backend))
    return torch.cat(flows)
