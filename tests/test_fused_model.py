"""i3d_fast.fuse(): the fused inference model gives the reference model's outputs."""
import pytest
import torch

import i3d_fast
from i3d_fast import InceptionI3d, TwoStreamI3D

from _models import randomise_batchnorm


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(1)
    return randomise_batchnorm(InceptionI3d(num_classes=10, adaptive_head=True)).eval()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_fused_logits_match_reference(small):
    x = torch.rand(2, 3, 12, 40, 36) * 2 - 1
    with torch.no_grad():
        expected = small(x)
    fused = i3d_fast.fuse(small)
    assert _rel(fused(x), expected) <= 1e-4


def test_fused_endpoints_match_reference(small):
    x = torch.rand(1, 3, 10, 33, 40) * 2 - 1
    names = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Mixed_3b", "Mixed_4f", "Mixed_5c", "Logits"]
    with torch.no_grad():
        expected = small.extract_endpoints(x, names)
    actual = i3d_fast.fuse(small).extract_endpoints(x, names)
    for name in names:
        assert actual[name].shape == expected[name].shape, name
        assert _rel(actual[name], expected[name]) <= 1e-4, name


def test_fused_has_no_batchnorm_and_keeps_channels_last(small):
    fused = i3d_fast.fuse(small)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fused.modules())
    feats = fused.extract_features(torch.rand(1, 3, 9, 32, 32), "Mixed_4b")
    assert feats.is_contiguous(memory_format=torch.channels_last_3d)


def test_fused_two_stream():
    torch.manual_seed(2)
    rgb = randomise_batchnorm(InceptionI3d(num_classes=4, adaptive_head=True)).eval()
    flow = randomise_batchnorm(InceptionI3d(num_classes=4, in_channels=2, adaptive_head=True)).eval()
    model = TwoStreamI3D(rgb, flow, fusion="mean")
    a, b = torch.rand(1, 3, 9, 32, 32), torch.rand(1, 2, 8, 32, 32)
    with torch.no_grad():
        expected = model(a, b)
    assert _rel(i3d_fast.fuse(model)(a, b), expected) <= 1e-4


def test_fuse_rejects_other_modules():
    with pytest.raises(TypeError, match="InceptionI3d or TwoStreamI3D"):
        i3d_fast.fuse(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_fused_triton_backend_through_the_interpreter(small):
    """Every fused layer on the Triton kernels (exact fp32 variant), run by TRITON_INTERPRET=1."""
    x = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = small(x)
    assert _rel(i3d_fast.fuse(small, backend="triton")(x), expected) <= 1e-4


def test_fold_unit_keeps_a_conv_bias_under_batchnorm():
    from i3d_fast.layers import Unit3D
    from i3d_fast.models.fused import fold_unit

    unit = randomise_batchnorm(Unit3D(3, 4, 3, bias=True)).eval()
    unit.conv3d.bias.data.uniform_(-1, 1)
    weight, shift = fold_unit(unit, torch.float64)
    x = torch.randn(1, 3, 4, 5, 6, dtype=torch.float64)
    expected = unit.double()(x)
    actual = i3d_fast.ops.conv3d(x, weight, None, shift, 1, "same", True, backend="reference")
    torch.testing.assert_close(actual, expected)


def test_fused_model_gives_the_same_input_errors():
    fused = i3d_fast.fuse(InceptionI3d(num_classes=4))
    with pytest.raises(ValueError, match="at least 9 frames and 193x193"):
        fused(torch.zeros(1, 3, 8, 224, 224))
    with pytest.raises(ValueError, match="3 input channels, got 2"):
        fused(torch.zeros(1, 2, 16, 224, 224))


def test_non_finite_clip_gives_non_finite_logits(small):
    """An all-NaN clip must not come out as confident finite logits (the reference model gives NaN)."""
    x = torch.full((1, 3, 12, 40, 36), float("nan"))
    with torch.no_grad():
        assert small(x).isnan().all()
        assert i3d_fast.fuse(small)(x).isnan().all()
