"""GPU tier (I3D_FAST_TEST_GPU=1, compiled Triton): the fused model on CUDA against the float64
reference model, and every kernel variant it uses passing its first-use self-check."""
import warnings

import pytest
import torch

import i3d_fast
from i3d_fast import InceptionI3d
from i3d_fast.ops import selfcheck

from _models import randomise_batchnorm

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return randomise_batchnorm(InceptionI3d(num_classes=10, adaptive_head=True)).eval()


def _rel(a, b) -> float:
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_fused_logits_match_the_reference_model(model, dtype):
    """fuse(model) on CUDA (backend auto: the Triton kernels) within twice the error of the reference
    model run in the same dtype (autocast for bf16 / fp16) against its float64 self."""
    x = torch.rand(2, 3, 16, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = model.double()(x.double())
        model.float()
        gpu = model.cuda()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            torch_logits = gpu(x.cuda())
        fused = i3d_fast.fuse(gpu, dtype=dtype)
        ours = fused(x.cuda())
        model.cpu()
    assert ours.dtype == dtype and ours.shape == expected.shape
    floor = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    assert _rel(ours, expected) <= max(2 * _rel(torch_logits, expected), floor)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_every_variant_the_model_uses_passes_its_selfcheck(model, dtype, monkeypatch):
    monkeypatch.setenv(selfcheck.ENV, "1")
    selfcheck.reset()
    fused = i3d_fast.fuse(model.float().cuda(), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", selfcheck.SelfCheckWarning)
        with torch.no_grad():
            fused(torch.rand(2, 3, 16, 64, 64, device="cuda") * 2 - 1)
        x = torch.randn(2, 64, 8, 20, 20, device="cuda", dtype=dtype, requires_grad=True)
        i3d_fast.ops.max_pool3d(x, 3, 2, "same").sum().backward()
    model.cpu()
    seen = selfcheck.verdicts()
    assert {v.split()[0] for v, _, _ in seen} == {"conv3d", "pool3d"}
    modes = {v.split()[1] for v, _, _ in seen if v.startswith("conv3d")}
    assert "pool" in modes and len(modes) >= 2  # branch 3's fused pool and the plain convolutions
    assert all(why is None for _, _, why in seen), seen
    selfcheck.reset()
