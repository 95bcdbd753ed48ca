"""InceptionV1 (2D Inception-v1 + BatchNorm) and InceptionI3d.from_2d: inflation with I3D's temporal choices."""
from __future__ import annotations

import fractions
import math
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from i3d_fast import InceptionI3d, WeightsError, inflate
from i3d_fast.layers import MaxPool2d, MaxPool3d, Unit2D, Unit3D
from i3d_fast.models import I3D_TIME_KERNELS, I3D_TIME_STRIDES, InceptionV1
from i3d_fast.models.i3d import ARCHITECTURE, HEAD_POOL
from i3d_fast.padding import same_padding, triple

NUM_CLASSES = 5


def _random_inception_v1() -> InceptionV1:
    """InceptionV1 in eval mode with random weights, random BatchNorm scales and shifts, and running statistics
    measured on random images, so that the signal survives 60 layers and the logits depend on the input."""
    torch.manual_seed(0)
    net = InceptionV1(NUM_CLASSES)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
        bn.momentum = 1.0  # the running statistics := those of the next batch
    with torch.no_grad():
        net.train()(torch.randn(4, 3, 193, 193))
    for bn in bns:
        bn.momentum = 1e-3
    return net.eval()


@pytest.fixture(scope="module")
def net_2d() -> InceptionV1:
    return _random_inception_v1()


@pytest.fixture(scope="module")
def i3d(net_2d: InceptionV1) -> InceptionI3d:
    return InceptionI3d.from_2d(net_2d.state_dict())


@pytest.fixture(scope="module")
def inflated(net_2d: InceptionV1) -> nn.Module:
    return inflate(net_2d, time_kernels=I3D_TIME_KERNELS, time_strides=I3D_TIME_STRIDES)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _boring(image: torch.Tensor, frames: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, frames, H, W): the image repeated in time."""
    return image.unsqueeze(2).repeat(1, 1, frames, 1, 1)


def test_random_network_depends_on_its_input(net_2d: InceptionV1) -> None:
    """What makes the comparisons below meaningful: two images give clearly different logits."""
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = net_2d(images)
    assert _rel(logits[0], logits[1]) > 0.05


# -- structure ---------------------------------------------------------------------------------------------------
def test_state_dict_keys_equal_inception_i3d() -> None:
    state_2d, state_3d = InceptionV1(7, 2).state_dict(), InceptionI3d(7, 2).state_dict()
    assert list(state_2d) == list(state_3d)
    for key, value in state_3d.items():
        expected = (*value.shape[:2], *value.shape[3:]) if value.dim() == 5 else value.shape
        assert state_2d[key].shape == expected, key
    bns = [m for m in InceptionV1().modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 57 and all(m.eps == 1e-3 for m in bns)


def test_time_choices_are_i3d_and_inflation_builds_its_layers(inflated: nn.Module) -> None:
    """Every Unit2D and pool of InceptionV1 is named in I3D_TIME_KERNELS / I3D_TIME_STRIDES, and the inflated
    network's Unit3D / MaxPool3d layers are InceptionI3d's, kernel, stride and padding."""
    layers_2d = {name for name, m in InceptionV1().named_modules() if isinstance(m, (Unit2D, MaxPool2d, nn.AvgPool2d))}
    assert set(I3D_TIME_KERNELS) == set(I3D_TIME_STRIDES) == layers_2d
    inflated_layers = dict(inflated.named_modules())
    for name, module in InceptionI3d().named_modules():
        if isinstance(module, Unit3D):
            assert (I3D_TIME_KERNELS[name], I3D_TIME_STRIDES[name]) == (module.kernel_size[0], module.stride[0]), name
            layer = inflated_layers[name]
            assert type(layer) is Unit3D and layer.relu == module.relu, name
            assert (layer.kernel_size, layer.stride) == (module.kernel_size, module.stride), name
            assert (layer.bn is None) == (module.bn is None) and type(layer.conv3d) is nn.Conv3d, name
        elif isinstance(module, MaxPool3d):
            kernel, stride = triple(module.kernel_size, name), triple(module.stride, name)
            assert (I3D_TIME_KERNELS[name], I3D_TIME_STRIDES[name]) == (kernel[0], stride[0]), name
            layer = inflated_layers[name]
            assert type(layer) is MaxPool3d and layer.padding == module.padding == "same", name
            assert (triple(layer.kernel_size, name), triple(layer.stride, name)) == (kernel, stride), name
    head_pool = inflated_layers["head_pool"]
    assert type(head_pool) is nn.AvgPool3d and head_pool.kernel_size == HEAD_POOL
    assert head_pool.stride == (1, 1, 1) and head_pool.padding == (0, 0, 0)


def test_inception_v1_refuses_bad_inputs() -> None:
    net = InceptionV1(NUM_CLASSES)
    with pytest.raises(ValueError, match=r"Tensor\[N, 3, H, W\], got \(1, 2, 32, 32\)"):
        net.extract_features(torch.randn(1, 2, 32, 32))
    with pytest.raises(ValueError, match="unknown endpoint 'Mixed_6a'"):
        net.extract_features(torch.randn(1, 3, 32, 32), "Mixed_6a")
    with pytest.raises(ValueError, match="dropout"):
        InceptionV1(dropout=1.0)


def test_max_pool_2d_same_pads_at_the_end_and_ignores_padding() -> None:
    x = torch.randn(2, 3, 4, 5)
    out = MaxPool2d(3, 2)(x)  # H: pads (0, 1); W: pads (1, 1)
    assert out.shape == (2, 3, 2, 3)
    assert torch.equal(out[..., 0, 0], x[..., 0:3, 0:2].amax((-2, -1)))
    assert torch.equal(out[..., 1, 2], x[..., 2:4, 3:5].amax((-2, -1)))
    assert torch.equal(MaxPool2d(2, padding="valid")(x), nn.functional.max_pool2d(x, 2))


def test_inception_v1_matches_the_3d_kernels_with_time_kernels_of_one(net_2d: InceptionV1) -> None:
    """Inflated with time kernels of 1, InceptionV1 runs on the package's 3D ops (Unit3D, MaxPool3d: the TF SAME
    of InceptionI3d): on a still clip it must give the 2D network's logits, at 224 pixels where SAME is asymmetric."""
    ones = {name: 1 for name in I3D_TIME_KERNELS}
    net_3d = inflate(net_2d, time_kernels=ones, time_strides=ones)
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, out = net_2d(image), net_3d(_boring(image, 2))
    assert expected.shape == out.shape == (1, NUM_CLASSES)
    assert _rel(out, expected) <= 1e-5


# -- the bootstrapped I3D --------------------------------------------------------------------------------------
def test_from_2d_weights_are_the_2d_ones_repeated_in_time(net_2d: InceptionV1, i3d: InceptionI3d) -> None:
    state_2d, state_3d = net_2d.state_dict(), i3d.state_dict()
    assert list(state_3d) == list(state_2d) and not i3d.training
    for key, value in state_2d.items():
        if value.dim() == 4:
            time_kernel = I3D_TIME_KERNELS[key[: -len(".conv3d.weight")]]
            assert state_3d[key].shape == (*value.shape[:2], time_kernel, *value.shape[2:]), key
            for t in range(time_kernel):
                torch.testing.assert_close(state_3d[key][:, :, t], value / time_kernel, rtol=0, atol=0)
        else:
            torch.testing.assert_close(state_3d[key], value, rtol=0, atol=0)


def test_inflated_network_computes_what_from_2d_computes(inflated: nn.Module, i3d: InceptionI3d) -> None:
    """The smallest clip the VALID 2x7x7 head takes (9 frames, 193 pixels): logits; a small clip: Mixed_5c."""
    clip = torch.randn(1, 3, 9, 193, 193, generator=torch.Generator().manual_seed(2))
    small = torch.randn(1, 3, 16, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, expected_logits = inflated(clip), i3d(clip)
        features, expected_features = inflated.extract_features(small), i3d.extract_features(small)
    assert logits.shape == expected_logits.shape == (1, NUM_CLASSES)
    assert _rel(logits, expected_logits) <= 1e-5
    assert features.shape == expected_features.shape == (1, 1024, 2, 2, 2)
    assert _rel(features, expected_features) <= 1e-5


def _exact_frames(frames: int) -> List[int]:
    """The Mixed_5c frames of a ``frames``-long clip whose temporal receptive field lies inside the clip: no time
    padding of a convolution reaches them (I3D's max pools ignore their padding)."""
    inside = [True] * frames

    def window(inside: List[bool], kernel: int, stride: int, padding_harmless: bool) -> List[bool]:
        before, _ = same_padding(len(inside), kernel, stride)
        starts = range(-before, len(inside) - before, stride)
        return [all(inside[i] if 0 <= i < len(inside) else padding_harmless for i in range(s, s + kernel))
                for s in starts]

    for _, spec in ARCHITECTURE:
        if spec[0] == "unit":
            inside = window(inside, spec[2][0], spec[3][0], False)
        elif spec[0] == "max":
            inside = window(inside, spec[1][0], spec[2][0], True)
        else:  # the 1 -> 3 conv branches and the 3 (pool) -> 1 branch; the 1x1 branch adds nothing
            convs, pooled = window(inside, 3, 1, False), window(window(inside, 3, 1, True), 1, 1, False)
            inside = [a and b for a, b in zip(convs, pooled)]
    return [t for t, ok in enumerate(inside) if ok]


def test_exact_frames_need_clips_of_101_frames() -> None:
    """What the inception2d docstring states: a Mixed_5c frame sees 99 frames; with SAME padding's alignment the
    first exact one needs a clip of 101, and a T-frame clip has exact frames 6 .. 6 + (T - 101) // 8."""
    field, jump = 1, 1
    for _, spec in ARCHITECTURE:
        kernel, stride = (3, 1) if spec[0] == "mixed" else (spec[-2][0], spec[-1][0])
        field, jump = field + (kernel - 1) * jump, jump * stride
    assert field == 99
    assert all(_exact_frames(frames) == [] for frames in range(1, 101))
    for frames in range(101, 400):
        assert _exact_frames(frames) == list(range(6, 7 + (frames - 101) // 8)), frames


def test_boring_video_fixed_point_holds_inside_the_clip(net_2d: InceptionV1, i3d: InceptionI3d) -> None:
    """On a still clip, the Mixed_5c frames whose receptive field lies inside the clip are the 2D features; the
    edge frames (zero time padding) and so the time average are not."""
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    frames = 112
    with torch.no_grad():
        expected, features = net_2d.extract_features(image), i3d.extract_features(_boring(image, frames))
    assert features.shape == (1, 1024, math.ceil(frames / 8), 1, 1)
    for t in _exact_frames(frames):
        assert _rel(features[:, :, t], expected) <= 1e-5, t
    for t in (0, features.shape[2] - 1):
        assert _rel(features[:, :, t], expected) > 1e-3, t
    assert _rel(features.mean(2), expected) > 1e-4


def test_from_2d_passes_constructor_arguments(net_2d: InceptionV1) -> None:
    model = InceptionI3d.from_2d(net_2d.state_dict(), final_endpoint="Mixed_5c", dropout=0.3, adaptive_head=True)
    assert model.final_endpoint == "Mixed_5c" and model.adaptive_head and model.num_classes == NUM_CLASSES
    assert not hasattr(model, "logits")
    model = InceptionI3d.from_2d(net_2d.state_dict(), num_classes=NUM_CLASSES, in_channels=3, dropout=0.3)
    assert model.dropout.p == 0.3
    flow = InceptionI3d.from_2d(InceptionV1(num_classes=3, in_channels=2).state_dict())
    assert (flow.num_classes, flow.in_channels) == (3, 2)


# -- files and errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_from_2d_reads_files(net_2d: InceptionV1, i3d: InceptionI3d, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"inception_v1{suffix}"
    state = {key: value.contiguous() for key, value in net_2d.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = InceptionI3d.from_2d(path).state_dict()
    for key, value in i3d.state_dict().items():
        assert torch.equal(loaded[key], value), key


def _state(net_2d: InceptionV1) -> Dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in net_2d.state_dict().items()}


def test_from_2d_names_the_bad_tensor(net_2d: InceptionV1) -> None:
    state = _state(net_2d)
    del state["Mixed_4b.b1b.bn.running_var"]
    with pytest.raises(WeightsError, match=r"missing.*Mixed_4b\.b1b\.bn\.running_var"):
        InceptionI3d.from_2d(state)
    state = _state(net_2d)
    state["Mixed_4b.b9.conv3d.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(WeightsError, match=r"not InceptionV1's.*Mixed_4b\.b9\.conv3d\.weight"):
        InceptionI3d.from_2d(state)
    state = _state(net_2d)
    state["Mixed_3b.b2b.conv3d.weight"] = state["Mixed_3b.b2b.conv3d.weight"][:, :, :1]
    with pytest.raises(WeightsError, match=r"Mixed_3b\.b2b\.conv3d\.weight has shape \(32, 16, 1, 3\)"):
        InceptionI3d.from_2d(state)
    state = _state(net_2d)
    state["Mixed_5c.b0.bn.running_mean"][3] = float("nan")
    with pytest.raises(WeightsError, match=r"Mixed_5c\.b0\.bn\.running_mean holds non-finite"):
        InceptionI3d.from_2d(state)
    state = _state(net_2d)
    del state["logits.conv3d.weight"]
    with pytest.raises(WeightsError, match=r"logits\.conv3d\.weight is missing"):
        InceptionI3d.from_2d(state)
    with pytest.raises(WeightsError, match=r"logits\.conv3d\.weight has shape \(5, 1024, 1, 1, 1\).*from_pretrained"):
        InceptionI3d.from_2d(InceptionI3d(NUM_CLASSES).state_dict())
    with pytest.raises(WeightsError, match="expected a dict of tensors"):
        InceptionI3d.from_2d({**_state(net_2d), "note": 1})


def test_from_2d_refuses_arguments_the_weights_contradict(net_2d: InceptionV1) -> None:
    with pytest.raises(WeightsError, match=r"num_classes=5, not 400.*replace_logits"):
        InceptionI3d.from_2d(net_2d.state_dict(), num_classes=400)
    with pytest.raises(WeightsError, match=r"in_channels=3, not 2"):
        InceptionI3d.from_2d(net_2d.state_dict(), in_channels=2)
    with pytest.raises(TypeError, match="state_dict or a path"):
        InceptionI3d.from_2d(42)  # type: ignore[arg-type]


def test_from_2d_refuses_bad_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such file"):
        InceptionI3d.from_2d(tmp_path / "missing.safetensors")
    unknown = tmp_path / "weights.bin"
    unknown.write_bytes(b"\0" * 8)
    with pytest.raises(WeightsError, match="unknown weights format"):
        InceptionI3d.from_2d(unknown)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        InceptionI3d.from_2d(corrupt)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"logits.conv3d.weight": fractions.Fraction(1, 3)}, unsafe)
    with pytest.raises(WeightsError, match="weights_only=True"):
        InceptionI3d.from_2d(unsafe)


class _BasicConv2d(torch.nn.Module):
    """torchvision's GoogLeNet layer layout (written here: torchvision is not a dependency)."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, k, bias=False)
        self.bn = torch.nn.BatchNorm2d(cout, eps=0.001)


class _GoogLeNetBlock(torch.nn.Module):
    def __init__(self, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = _BasicConv2d(cin, ch1x1, 1)
        self.branch2 = torch.nn.Sequential(_BasicConv2d(cin, ch3x3red, 1), _BasicConv2d(ch3x3red, ch3x3, 3))
        self.branch3 = torch.nn.Sequential(_BasicConv2d(cin, ch5x5red, 1), _BasicConv2d(ch5x5red, ch5x5, 3))
        self.branch4 = torch.nn.Sequential(torch.nn.MaxPool2d(3, 1, 1), _BasicConv2d(cin, pool_proj, 1))


class _GoogLeNet(torch.nn.Module):
    """The module tree and widths of torchvision.models.googlenet (the auxiliary heads as two stand-in
    layers: their keys must be dropped)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = _BasicConv2d(3, 64, 7), _BasicConv2d(64, 64, 1), _BasicConv2d(64, 192, 3)
        blocks = {"inception3a": (192, 64, 96, 128, 16, 32, 32), "inception3b": (256, 128, 128, 192, 32, 96, 64),
                  "inception4a": (480, 192, 96, 208, 16, 48, 64), "inception4b": (512, 160, 112, 224, 24, 64, 64),
                  "inception4c": (512, 128, 128, 256, 24, 64, 64), "inception4d": (512, 112, 144, 288, 32, 64, 64),
                  "inception4e": (528, 256, 160, 320, 32, 128, 128),
                  "inception5a": (832, 256, 160, 320, 32, 128, 128), "inception5b": (832, 384, 192, 384, 48, 128, 128)}
        for name, widths in blocks.items():
            setattr(self, name, _GoogLeNetBlock(*widths))
        self.aux1, self.aux2 = torch.nn.Linear(2048, 1024), torch.nn.Linear(2048, 1024)
        self.fc = torch.nn.Linear(1024, num_classes)


def test_a_torchvision_layout_googlenet_state_dict_bootstraps_i3d():
    from i3d_fast.models import InceptionI3d

    torch.manual_seed(0)
    googlenet = _GoogLeNet(num_classes=10)
    state = googlenet.state_dict()
    i3d = InceptionI3d.from_2d(state)  # every tensor placed by name and shape (strict)
    assert i3d.num_classes == 10
    kernel = i3d.Mixed_4d.b2b.conv3d.weight  # inception4c.branch3.1: 3x3 conv, 3 frames
    torch.testing.assert_close(kernel.sum(2), state["inception4c.branch3.1.conv.weight"])
    torch.testing.assert_close(i3d.Conv3d_2c_3x3.bn.running_var, state["conv3.bn.running_var"])
    torch.testing.assert_close(i3d.logits.conv3d.weight[:, :, 0, 0, 0], state["fc.weight"])
    torch.testing.assert_close(i3d.logits.conv3d.bias, state["fc.bias"])
    state["inception4c.branch5.0.conv.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="tensors of no GoogLeNet layer"):
        InceptionI3d.from_2d(state)
