"""``i3d_fast.convert`` on well-known video networks (:mod:`.video_nets`): each stock network against
its converted copy (same weights), channels_last_3d, same threads, timed interleaved in one run.

Cases per network: inference (eval, ``torch.no_grad``), inference where reduced-precision float32
convolutions are allowed (``torch.backends.mkldnn.conv.fp32_precision = "tf32"`` for both models:
oneDNN stays float32 on CPUs without TF32 hardware, the converted network may take Winograd F(4, 3)
tiles, see :func:`i3d_fast.kernels.cpu.conv3d.wide_tiles`) and a training step (train mode,
``zero_grad``, forward, cross-entropy on 400 classes, backward; no optimiser step). Inference
baseline: the stock network with BatchNorm folded into its convolutions
(``torch.fx.experimental.optimization.fuse``, what a user deploying it would do), the plain stock
network a row beside it (float32 only); training baseline: the stock network (BatchNorm in training
mode cannot be folded). ``torch.compile`` is not a row: compiling four networks takes many minutes on 2 cores. Conversion happens
before timing; the converted model's first call (which times the C++ kernels against oneDNN per
layer, see :mod:`i3d_fast.kernels.cpu.autotune`) is in the warm-up. A "geomean" row per mode sums
the networks up. CUDA rows are "not measured" without a GPU.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, Iterator, List

import torch
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse

from ..convert import convert
from .report import Row
from .timing import measure_interleaved
from .video_nets import ARCHITECTURES

SUITE = "convert"
CL = torch.channels_last_3d
NUM_CLASSES = 400
STOCK, CONVERTED = "stock PyTorch", "i3d_fast.convert"
FOLDED = "stock, BatchNorm folded (torch.fx fuse)"


def _input_shape(name: str, quick: bool) -> tuple:
    """The network's benchmark input (batch 2, the frames and size it expects); quick: batch 1 and
    half the frames and pixels."""
    shape = ARCHITECTURES[name][1]
    if not quick:
        return shape
    n, c, t, h, w = shape
    return (1, c, max(t // 2, 8), h // 2, w // 2)


def workload(name: str, provider: str, training: bool, shape: tuple) -> Callable[[], object]:
    """One inference call or training step of the stock or converted network (seeded: same weights
    and inputs for both)."""
    torch.manual_seed(0)
    model = ARCHITECTURES[name][0](NUM_CLASSES).to(memory_format=CL)
    if provider == CONVERTED:
        model = convert(copy.deepcopy(model))
    elif provider == FOLDED:  # inference only: what a user who folds BatchNorm for deployment runs
        model = fuse(model.eval())
    model.train(training)
    x = torch.randn(shape).contiguous(memory_format=CL)
    labels = torch.randint(NUM_CLASSES, (shape[0],))
    if not training:
        def infer():
            with torch.no_grad():
                return model(x)
        return infer

    def step():
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        return loss.detach()
    return step


@contextlib.contextmanager
def _conv_fp32_precision(precision: str) -> Iterator[None]:
    """``torch.backends.mkldnn.conv.fp32_precision = precision`` inside, restored after."""
    conv = torch.backends.mkldnn.conv
    before = conv.fp32_precision
    conv.fp32_precision = precision
    try:
        yield
    finally:
        conv.fp32_precision = before


#: (mode, training, torch.backends.mkldnn.conv.fp32_precision or None to leave it)
MODES = (("inference", False, None), ("inference, fp32_precision tf32", False, "tf32"), ("train step", True, None))


def run(quick: bool = False, device: str = "cpu") -> List[Row]:
    if device == "cuda":
        return [Row(SUITE, "video networks", f"{CONVERTED} vs {STOCK}", None,
                    note="not measured: the CUDA training backend of the fused unit is ATen's for now")]
    repeat = 3 if quick else 5
    rows: List[Row] = []
    for mode, training, precision in MODES:
        if precision and not hasattr(getattr(torch.backends.mkldnn, "conv", None), "fp32_precision"):
            rows.append(Row(SUITE, f"all networks {mode}", CONVERTED, None,
                            note=f"not measured (torch {torch.__version__} has no torch.backends.mkldnn.conv."
                                 "fp32_precision, added in 2.9)"))
            continue
        # Inference: the baseline is the stock network with BatchNorm folded into the convolutions
        # (torch.fx fuse), the plain stock network a row beside it; training: the stock network.
        providers = (STOCK, CONVERTED) if training else (FOLDED, CONVERTED) if precision else (FOLDED, STOCK, CONVERTED)
        ratios = {p: [] for p in providers[:-1]}
        for name in ARCHITECTURES:
            shape = _input_shape(name, quick)
            steps = [workload(name, p, training, shape) for p in providers]
            with _conv_fp32_precision(precision) if precision else contextlib.nullcontext():
                timings = measure_interleaved(steps, repeat)
            case = f"{name} {mode} {list(shape)} float32"
            for i, (provider, timing) in enumerate(zip(providers, timings)):
                rows.append(Row(SUITE, case, provider, timing, baseline=i == 0))
            for provider, timing in zip(providers[:-1], timings):
                ratios[provider].append(timing.median_ms / timings[-1].median_ms)
            del steps
        for provider, values in ratios.items():
            geomean = math.exp(sum(map(math.log, values)) / len(values))
            rows.append(Row(SUITE, f"all networks {mode} (geomean)", f"{CONVERTED} vs {provider}", None,
                            note=f"geomean {geomean:.2f}x, worst {min(values):.2f}x",
                            extra={"geomean speedup": round(geomean, 3), "worst speedup": round(min(values), 3)}))
    why = "not measured (no GPU)" if not torch.cuda.is_available() else "not measured (--cpu)"
    rows.append(Row(SUITE, "video networks on CUDA", f"{CONVERTED} vs {STOCK}", None, note=why))
    return rows
