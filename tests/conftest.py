"""Test setup: Triton runs through its interpreter on CPU tensors (set before any kernel is
compiled), a fixed seed, and the ../shared data when it is present."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine (GPU tests are skipped, not faked)")
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
