"""Test setup: which tier runs (set before any Triton kernel is compiled), a fixed seed, and the
../shared data when it is present.

Two tiers, one per process (Triton decides at import whether it interprets):

* the CPU tier: Triton through its interpreter on CPU tensors (TRITON_INTERPRET=1), every test
  but the ``gpu`` ones. The default where torch sees no CUDA device, or when asked for with
  ``I3D_FAST_TEST_GPU=0`` (or ``TRITON_INTERPRET=1``).
* the GPU tier: compiled Triton (the interpreter is switched off), only the ``gpu`` tests. The
  default where there is a CUDA device; ``I3D_FAST_TEST_GPU=1`` asks for it and fails without one.
"""
import os

import torch

GPU_SWITCH = "I3D_FAST_TEST_GPU"


def _gpu_tier() -> bool:
    asked = os.environ.get(GPU_SWITCH, "").strip()
    if asked not in ("", "0", "1"):
        raise ValueError(f"{GPU_SWITCH}={asked!r}: expected 1 (the compiled GPU tier) or 0 (the interpreter tier)")
    if asked:
        return asked == "1"
    return torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"


GPU_TIER = _gpu_tier()
if GPU_TIER:
    os.environ.pop("TRITON_INTERPRET", None)
else:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests check the kernels themselves: no first-use check quietly routing a wrong variant to ATen
# (tests/test_selfcheck.py and the GPU tier's own self-check test turn it on where they test it).
os.environ.setdefault("I3D_FAST_SELFCHECK", "0")
# Kernel timings stay in memory: tests never read or write the user's timing files (test_autotune.py
# points them at a temporary folder where it tests them). The CLI's malloc setting stays out of the
# test process (tests call i3d_fast.cli.main in process; test_malloc.py checks it in subprocesses).
os.environ["I3D_FAST_AUTOTUNE_CACHE"] = "0"
os.environ["I3D_FAST_MALLOC"] = "default"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_report_header(config):
    if GPU_TIER:
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
        return f"i3d_fast GPU tier: compiled Triton on {name}, `gpu` tests only ({GPU_SWITCH}=0: the interpreter tier)"
    return f"i3d_fast CPU tier: Triton interpreter (TRITON_INTERPRET=1), `gpu` tests skipped ({GPU_SWITCH}=1: GPU tier)"


def pytest_collection_modifyitems(config, items):
    if GPU_TIER:
        if not torch.cuda.is_available():
            raise pytest.UsageError(f"{GPU_SWITCH}=1 asks for the GPU tier, but torch sees no CUDA device "
                                    f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
        keep = [item for item in items if "gpu" in item.keywords]
        config.hook.pytest_deselected(items=[item for item in items if "gpu" not in item.keywords])
        items[:] = keep
        return
    why = "needs a CUDA GPU; none on this machine (GPU tests are skipped, not faked)"
    if torch.cuda.is_available():
        why = f"GPU tier: run with {GPU_SWITCH}=1 (here Triton interprets, and its bf16 is wrong)"
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data/kinetics_sample beside the checkout (skips when absent)."""
    path = SHARED / "data" / "kinetics_sample"
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the sample clip and label list live beside the checkout, not in it")
    return path
