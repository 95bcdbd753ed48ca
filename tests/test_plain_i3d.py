"""PlainInceptionI3d (the train benchmark's plain-PyTorch baseline) is InceptionI3d: same state_dict,
same outputs, and its ceil-mode pools are TF SAME max pooling."""
import pytest
import torch
import torch.nn.functional as F

from i3d_fast import InceptionI3d
from i3d_fast.bench.plain_i3d import PlainInceptionI3d, PlainMaxPool3d
from i3d_fast.models.i3d import ARCHITECTURE
from i3d_fast.padding import same_padding

from _models import randomise_batchnorm

CL = torch.channels_last_3d


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ours = InceptionI3d(num_classes=7, adaptive_head=True)
    randomise_batchnorm(ours, spread=0.1)
    plain = PlainInceptionI3d(num_classes=7, adaptive_head=True)
    plain.load_state_dict(ours.state_dict(), strict=True)
    return ours.eval(), plain.eval()


def test_state_dict_keys_and_shapes_equal_inception_i3d():
    ours, plain = InceptionI3d().state_dict(), PlainInceptionI3d().state_dict()
    assert list(plain) == list(ours)
    assert all(plain[k].shape == ours[k].shape for k in ours)
    bns = [m for m in PlainInceptionI3d().modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(bns) == 57 and all(m.eps == 1e-3 and m.momentum == 1e-3 for m in bns)


# T 9 and H 61 odd (symmetric SAME pads), W 64 even (the odd extra cell: F.pad / ceil mode).
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL])
def test_eval_features_and_logits_equal_inception_i3d(models, memory_format):
    ours, plain = models
    x = (torch.rand(2, 3, 9, 61, 64) * 2 - 1).contiguous(memory_format=memory_format)
    with torch.no_grad():
        want = ours.extract_endpoints(x, ["Mixed_5c", "Logits"])
        got_features, got_logits = plain.extract_features(x, "Mixed_5c"), plain(x)
    assert got_features.shape == want["Mixed_5c"].shape == (2, 1024, 2, 2, 2)
    torch.testing.assert_close(got_features, want["Mixed_5c"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_logits, want["Logits"], rtol=1e-4, atol=1e-5)


def test_unknown_endpoint_is_an_error(models):
    with pytest.raises(ValueError, match="unknown endpoint"):
        models[1].extract_features(torch.zeros(1, 3, 8, 32, 32), "Mixed_6a")


@pytest.mark.parametrize("kernel, stride", sorted({(spec[1], spec[2]) for _, spec in ARCHITECTURE if spec[0] == "max"}
                                                  | {((3, 3, 3), (1, 1, 1))}))
def test_ceil_mode_pool_is_tf_same_max_pool(kernel, stride):
    """Every I3D pool, every size 1..12: -inf F.pad + VALID max_pool3d is the TF SAME reference."""
    pool = PlainMaxPool3d(kernel, stride)
    for size in range(1, 13):
        x = torch.randn(1, 2, size, size, size + 1)
        (t0, t1), (h0, h1), (w0, w1) = [same_padding(n, k, s) for n, k, s in zip(x.shape[2:], kernel, stride)]
        want = F.max_pool3d(F.pad(x, (w0, w1, h0, h1, t0, t1), value=float("-inf")), kernel, stride)
        torch.testing.assert_close(pool(x), want, rtol=0, atol=0)


def test_ceil_mode_pool_refuses_even_kernels_at_stride_one():
    with pytest.raises(ValueError, match="even kernel at stride 1"):
        PlainMaxPool3d((2, 3, 3), (1, 2, 2))


def test_folding_batchnorm_keeps_the_plain_networks_outputs():
    from i3d_fast.bench.plain_i3d import fold_batchnorm

    torch.manual_seed(0)
    plain = randomise_batchnorm(PlainInceptionI3d(num_classes=7, adaptive_head=True)).eval()
    x = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = plain(x)
        folded = fold_batchnorm(plain)
        assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)
