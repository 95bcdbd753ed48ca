"""i3d_fast.inflate: 2D -> 3D inflation with the "boring video" weight bootstrap (Carreira & Zisserman 2017)."""
from __future__ import annotations

import copy
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from i3d_fast import layers
from i3d_fast.inflate import InflatedAvgPool3d, InflatedConv3d, inflate

TIMES = (1, 4, 8)


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> List[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class VGGish(nn.Module):
    """(N, 3, 32, 32) -> (N, 5): three 3x3 conv + BN + ReLU, max pools, an average pool, a global pool + Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*_conv_bn_relu(3, 8), nn.MaxPool2d(2), *_conv_bn_relu(8, 12),
                                      nn.MaxPool2d(3, 2, 1), *_conv_bn_relu(12, 16),
                                      nn.AvgPool2d(3, 1, 1, count_include_pad=True))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """Residual block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """(N, 3, 32, 32) -> (N, 7): a stem, residual blocks in a ModuleList (two of stride 2), global pool + Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, 8))
        self.blocks = nn.ModuleList([BasicBlock(8, 8, 1), BasicBlock(8, 16, 2), BasicBlock(16, 16, 1),
                                     BasicBlock(16, 24, 2)])
        self.pool, self.fc = nn.AdaptiveAvgPool2d((1, 1)), nn.Linear(24, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.fc(self.pool(x).flatten(1))


class Mixed(nn.Module):
    """Inception-style block: branches in a ModuleDict concatenated on the channels."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branches = nn.ModuleDict({
            "b1x1": nn.Sequential(nn.Conv2d(c_in, 4, 1), nn.ReLU()),
            "b3x3": nn.Sequential(nn.Conv2d(c_in, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()),
            "pool": nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c_in, 2, 1), nn.ReLU())})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches.values()], dim=1)


class StemNet(nn.Module):
    """(N, 3, 48, 48) -> (N, 4): 7x7 stride-2 stem, max pool, Inception-style block, 2x2 global pool + Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 7, 2, 3)
        self.bn, self.relu = nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.mixed = Mixed(8)
        self.avg = nn.AvgPool2d(3, 1, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12 * 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.avg(self.mixed(self.pool(self.relu(self.bn(self.stem(x)))))))


NETS = {"vgg": (VGGish, 32), "resnet": (TinyResNet, 32), "stem": (StemNet, 48)}


def _net(kind: str) -> nn.Module:
    """The 2D net, in eval mode, with non-trivial BatchNorm statistics and parameters."""
    torch.manual_seed(0)
    return _randomise_batchnorm(NETS[kind][0]())


def _randomise_batchnorm(net: nn.Module) -> nn.Module:
    """``net`` in eval mode with random BatchNorm parameters and statistics."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return net.eval()


def _image(kind: str) -> torch.Tensor:
    return torch.randn(2, 3, NETS[kind][1], NETS[kind][1], generator=torch.Generator().manual_seed(1))


def _boring(image: torch.Tensor, frames: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, frames, H, W): the image repeated in time."""
    return image.unsqueeze(2).repeat(1, 1, frames, 1, 1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("frames", TIMES)
@pytest.mark.parametrize("kind", sorted(NETS))
def test_boring_video_fixed_point_with_replicate_padding(kind: str, frames: int) -> None:
    net, image = _net(kind), _image(kind)
    net3d = inflate(net, time_padding="replicate")
    with torch.no_grad():
        expected, out = net(image), net3d(_boring(image, frames))
    assert out.shape == expected.shape
    assert _rel(out, expected) <= 1e-5


@pytest.mark.parametrize("frames", TIMES)
def test_boring_video_fixed_point_with_time_pools_and_strides(frames: int) -> None:
    """Overridden time kernels / strides (even ones, and a padded average pool: InflatedAvgPool3d) keep it."""
    net, image = _net("stem"), _image("stem")
    net3d = inflate(net, time_kernels={"pool": 3, "avg": 3, "mixed.branches.b3x3.2": 5, "stem": 4},
                    time_strides={"pool": 2, "stem": 1}, time_padding="replicate")
    assert isinstance(net3d.avg, InflatedAvgPool3d)
    with torch.no_grad():
        expected, out = net(image), net3d(_boring(image, frames + 1))  # the even stem kernel drops a frame
    assert _rel(out, expected) <= 1e-5


def test_zero_padding_holds_away_from_the_time_edges() -> None:
    """Three kt=3 stride-1 convs, pools that keep time: frames 3 .. T-4 equal the 2D feature map, the edges do not,
    and neither does the globally pooled output."""
    net, image = _net("vgg"), _image("vgg")
    net3d, frames = inflate(net), 9
    with torch.no_grad():
        expected, features = net.features(image), net3d.features(_boring(image, frames))
        out = net3d(_boring(image, frames))
    assert features.shape[2] == frames
    for t in range(frames):
        inside = 3 <= t <= frames - 4
        assert (_rel(features[:, :, t], expected) <= 1e-5) == inside, t
    assert _rel(out, net(image)) > 1e-3


def test_zero_padding_with_time_kernels_of_one_is_exact() -> None:
    net, image = _net("resnet"), _image("resnet")
    convs = {name: 1 for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    net3d = inflate(net, time_kernels=convs, time_padding="zeros")
    with torch.no_grad():
        assert _rel(net3d(_boring(image, 4)), net(image)) <= 1e-5


@pytest.mark.parametrize("time_padding", ["zeros", "replicate"])
def test_weight_bootstrap(time_padding: str) -> None:
    net = _net("stem")
    net3d = inflate(net, time_kernels={"mixed.branches.b1x1.0": 2}, time_padding=time_padding)
    convs3d = dict(net3d.named_modules())
    for name, conv in net.named_modules():
        if isinstance(conv, nn.Conv2d):
            weight3d = convs3d[name].weight.detach()
            kt = 2 if name == "mixed.branches.b1x1.0" else conv.kernel_size[0]
            assert weight3d.shape == (conv.out_channels, conv.in_channels, kt, *conv.kernel_size)
            torch.testing.assert_close(weight3d.sum(2), conv.weight.detach(), rtol=1e-6, atol=1e-7)
            for t in range(kt):
                torch.testing.assert_close(weight3d[:, :, t], conv.weight.detach() / kt, rtol=0, atol=0)
            torch.testing.assert_close(convs3d[name].bias, conv.bias, rtol=0, atol=0)


@pytest.mark.parametrize("time_padding", ["zeros", "replicate"])
@pytest.mark.parametrize("kind", sorted(NETS))
def test_state_dict_keys_and_shapes(kind: str, time_padding: str) -> None:
    net = _net(kind)
    state2d, state3d = net.state_dict(), inflate(net, time_padding=time_padding).state_dict()
    assert list(state3d) == list(state2d)
    for key, value in state2d.items():
        expected = value.shape
        if value.dim() == 4:  # a conv weight: (O, I, kh, kw) -> (O, I, kh, kh, kw)
            expected = (*value.shape[:2], value.shape[2], *value.shape[2:])
        assert state3d[key].shape == expected, key
    inflate(net, time_padding=time_padding).load_state_dict(state3d)


def test_layers_become_3d_with_their_settings() -> None:
    net = _net("vgg")
    net3d = inflate(net, time_padding="replicate")
    conv, bn, pool2, avg = net3d.features[0], net3d.features[1], net3d.features[7], net3d.features[11]
    assert type(conv) is InflatedConv3d and conv.time_pad == 1 and conv.padding == (0, 1, 1)
    assert conv.kernel_size == (3, 3, 3) and conv.stride == (1, 1, 1)
    assert type(bn) is nn.BatchNorm3d and bn.eps == net.features[1].eps and not bn.training
    assert type(pool2) is nn.MaxPool3d and pool2.kernel_size == (1, 3, 3) and pool2.stride == (1, 2, 2)
    assert pool2.padding == (0, 1, 1)
    assert type(avg) is nn.AvgPool3d and avg.kernel_size == (1, 3, 3) and avg.count_include_pad
    assert type(net3d.head[0]) is nn.AdaptiveAvgPool3d and net3d.head[0].output_size == (1, 1, 1)
    assert type(net3d.head[3]) is nn.Linear
    zero_padded = inflate(net).features[0]
    assert type(zero_padded) is nn.Conv3d and zero_padded.padding == (1, 1, 1)
    stem = inflate(_net("stem")).stem
    assert stem.kernel_size == (7, 7, 7) and stem.stride == (2, 2, 2) and stem.padding == (3, 3, 3)


@pytest.mark.parametrize("time_padding", ["zeros", "replicate"])
def test_per_layer_overrides(time_padding: str) -> None:
    net = _net("stem")
    net3d = inflate(net, time_kernels={"stem": 3, "pool": 3, "mixed.branches.b3x3.2": 1, "avg": 2},
                    time_strides={"stem": 1, "pool": 2, "avg": 2}, time_padding=time_padding)
    assert net3d.stem.kernel_size == (3, 7, 7) and net3d.stem.stride == (1, 2, 2)
    assert net3d.pool.kernel_size == (3, 3, 3) and net3d.pool.stride == (2, 2, 2) and net3d.pool.padding == (1, 1, 1)
    assert net3d.mixed.branches["b3x3"][2].kernel_size == (1, 3, 3)
    assert type(net3d.mixed.branches["b3x3"][2]) is nn.Conv3d  # nothing to pad in time
    assert net3d.avg.kernel_size == (2, 3, 3) and net3d.avg.stride == (2, 1, 1)
    clip = torch.randn(1, 3, 8, 48, 48)  # time: the stem keeps 8, the pool -> 4, the average pool (kt 2, stride 2) -> 2
    with torch.no_grad():
        features = net3d.avg(net3d.mixed(net3d.pool(net3d.relu(net3d.bn(net3d.stem(clip))))))
    assert features.shape == (1, 12, 2, 12, 12)


@pytest.mark.parametrize("time_padding", ["zeros", "replicate"])
def test_even_time_kernel_drops_one_frame(time_padding: str) -> None:
    conv3d = inflate(nn.Conv2d(2, 3, 4, padding=1), time_padding=time_padding)
    assert conv3d.kernel_size == (4, 4, 4)
    assert conv3d(torch.randn(1, 2, 6, 8, 8)).shape == (1, 3, 5, 7, 7)


def test_original_model_unchanged() -> None:
    net = _net("resnet").train()
    image = _image("resnet")
    state = copy.deepcopy(net.state_dict())
    types = [type(m) for m in net.modules()]
    with torch.no_grad():
        before = net.eval()(image)
    net.train()
    net3d = inflate(net, time_kernels={"stem.0": 1}, time_padding="replicate")
    assert net3d is not net and [type(m) for m in net.modules()] == types and net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(m.training for m in net3d.modules())
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(image), before, rtol=0, atol=0)


def test_eval_mode_and_requires_grad_carried_over() -> None:
    net = _net("vgg")
    net.features[0].weight.requires_grad_(False)
    net3d = inflate(net)
    assert not any(m.training for m in net3d.modules())
    assert not net3d.features[0].weight.requires_grad and net3d.features[4].weight.requires_grad


def test_shared_module_stays_shared() -> None:
    conv = nn.Conv2d(4, 4, 3, padding=1)
    net3d = inflate(nn.Sequential(conv, nn.ReLU(), conv))
    assert net3d[0] is net3d[2] and type(net3d[0]) is nn.Conv3d


def test_dimension_agnostic_layers_are_kept() -> None:
    """GroupNorm normalises over (C / groups, T, H, W): it works unchanged, and the fixed point holds."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Dropout2d(0.2), nn.PReLU(8),
                        nn.Conv2d(8, 4, 3, padding=1), nn.Softmax(dim=1)).eval()
    net3d = inflate(net, time_padding="replicate")
    assert type(net3d[1]) is nn.GroupNorm and type(net3d[3]) is nn.Dropout3d and type(net3d[6]) is nn.Softmax
    image = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        out = net3d(_boring(image, 4))
        for t in range(4):
            assert _rel(out[:, :, t], net(image)) <= 1e-5


class LayerScale(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1))
        self.body = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * self.body(x)


class StdConv2d(nn.Conv2d):
    pass


@pytest.mark.parametrize("module, path, kind", [
    (nn.Conv1d(4, 4, 3), "1", "Conv1d"),
    (nn.LayerNorm([4, 8, 8]), "1", "LayerNorm"),
    (nn.Upsample(scale_factor=2), "1", "Upsample"),
    (nn.Softmax(dim=-1), "1", "Softmax"),
    (LayerScale(4), "1", "LayerScale"),
    (StdConv2d(4, 4, 3), "1", "StdConv2d"),
    (nn.Conv2d(4, 4, 3, padding="same"), "1", "Conv2d"),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), "1", "Conv2d"),
])
def test_unsupported_modules_are_refused(module: nn.Module, path: str, kind: str) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), module)
    with pytest.raises(ValueError, match=rf"\b{path} \({kind}\)"):
        inflate(net)


def test_bad_arguments_are_refused() -> None:
    net = _net("stem")
    with pytest.raises(ValueError, match="time_padding"):
        inflate(net, time_padding="reflect")
    with pytest.raises(ValueError, match=r"time_kernels.*\['bn', 'nope'\]"):
        inflate(net, time_kernels={"stem": 3, "nope": 1, "bn": 3})
    with pytest.raises(ValueError, match=r"time_strides.*\['mixed.branches'\]"):
        inflate(net, time_strides={"mixed.branches": 1})
    bad: Dict[str, int] = {"stem": 0}
    with pytest.raises(ValueError, match="positive ints"):
        inflate(net, time_kernels=bad)
    with pytest.raises(ValueError, match="positive ints"):
        inflate(net, time_strides={"pool": 1.5})  # type: ignore[dict-item]


@pytest.mark.parametrize("time_padding", ["zeros", "replicate"])
def test_average_pool_divisor_override_scales_with_the_time_kernel(time_padding: str) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AvgPool2d(3, 1, 1, divisor_override=4)).eval()
    net3d = inflate(net, time_kernels={"1": 3}, time_padding=time_padding)
    assert net3d[1].divisor_override == 12
    image = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out, expected = net3d(_boring(image, 5)), net(image)
    inside = range(5) if time_padding == "replicate" else range(2, 3)  # two kt=3 layers: frames 2 .. T-3
    for t in inside:
        assert _rel(out[:, :, t], expected) <= 1e-5


# -- this package's 2D layers (TF SAME): Unit2D -> Unit3D, layers.MaxPool2d -> layers.MaxPool3d -----------------
def _unit_net() -> nn.Sequential:
    """(N, 3, H, W) -> (N, 5, H / 2, W / 2): Unit2D 3x3 stride 2, SAME max pool 3x3 stride 1, Unit2D 3x3, then a
    1x1 Unit2D with a bias and no BatchNorm; random BatchNorm parameters and statistics; eval mode."""
    torch.manual_seed(0)
    net = nn.Sequential(layers.Unit2D(3, 8, 3, 2), layers.MaxPool2d(3, 1), layers.Unit2D(8, 6, 3),
                        layers.Unit2D(6, 5, batch_norm=False, relu=False, bias=True))
    return _randomise_batchnorm(net)


def test_package_2d_layers_become_package_3d_layers() -> None:
    net = _unit_net()
    net[0].train().bn.eval()  # the unit's mode is carried over, and its BatchNorm keeps its own
    net[2].conv3d.weight.requires_grad_(False)
    net3d = inflate(net, time_kernels={"1": 3, "2": 1}, time_strides={"0": 1, "1": 2})
    unit, pool, unit1x3, head = net3d
    assert type(unit) is layers.Unit3D and unit.kernel_size == (3, 3, 3) and unit.stride == (1, 2, 2) and unit.relu
    assert unit.training and not unit.bn.training and type(unit.bn) is nn.BatchNorm3d
    assert (unit.bn.eps, unit.bn.momentum) == (1e-3, 1e-3)
    assert type(pool) is layers.MaxPool3d and pool.kernel_size == (3, 3, 3) and pool.stride == (2, 1, 1)
    assert pool.padding == "same"
    assert unit1x3.kernel_size == (1, 3, 3) and unit1x3.stride == (1, 1, 1)
    assert not unit1x3.conv3d.weight.requires_grad and unit.conv3d.weight.requires_grad
    assert head.bn is None and not head.relu and head.kernel_size == (1, 1, 1)
    assert list(net3d.state_dict()) == list(net.state_dict())
    for key, value in net.state_dict().items():
        inflated = net3d.state_dict()[key]
        if value.dim() == 4:
            kt = inflated.shape[2]
            for t in range(kt):
                torch.testing.assert_close(inflated[:, :, t], value / kt, rtol=0, atol=0)
        else:
            torch.testing.assert_close(inflated, value, rtol=0, atol=0)
    clip = torch.randn(1, 3, 8, 16, 16)  # time: 8, the pool (kt 3, stride 2, SAME) -> 4
    with torch.no_grad():
        assert net3d.eval()(clip).shape == (1, 5, 4, 8, 8)
    assert inflate(net)[1].kernel_size == (1, 3, 3)  # a pool keeps time unless overridden


def test_unit_inflation_keeps_dtype() -> None:
    unit = layers.Unit2D(3, 4, 3).double()
    unit3d = inflate(unit)
    assert unit3d.conv3d.weight.dtype == unit3d.bn.running_var.dtype == torch.float64


def test_package_layers_boring_video_with_same_zero_padding() -> None:
    """Two stride-1 kt=3 units (TF SAME: one zero frame at each end): frames 2 .. T-3 equal the 2D output, the
    edge frames do not."""
    net, frames = _unit_net(), 8
    net3d = inflate(net, time_strides={"0": 1})
    image = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        expected, out = net(image), net3d(_boring(image, frames))
    for t in range(frames):
        assert (_rel(out[:, :, t], expected) <= 1e-5) == (2 <= t <= frames - 3), t


def test_same_max_pool_inflation_is_exact_on_a_boring_video() -> None:
    pool, image = layers.MaxPool2d(3, 2), torch.randn(2, 3, 9, 10)
    pool3d = inflate(pool, time_kernels={"": 3}, time_strides={"": 2})
    out = pool3d(_boring(image, 5))
    assert out.shape == (2, 3, 3, 5, 5)
    for t in range(3):
        torch.testing.assert_close(out[:, :, t], pool(image), rtol=0, atol=0)


def test_unit_inflation_refusals() -> None:
    net = _unit_net()
    with pytest.raises(ValueError, match=r"time_kernels.*\['0.conv3d'\]"):  # a Unit2D is named itself
        inflate(net, time_kernels={"0.conv3d": 1})
    with pytest.raises(ValueError, match=r"0 \(Unit2D\): time_padding='replicate'"):
        inflate(net, time_padding="replicate")
    ones = {"0": 1, "2": 1}
    image = torch.randn(1, 3, 12, 12)
    with torch.no_grad():  # time kernels of 1: nothing to pad, the fixed point holds at every frame
        out = inflate(net, time_kernels=ones, time_strides={"0": 1}, time_padding="replicate")(_boring(image, 3))
        for t in range(3):
            assert _rel(out[:, :, t], net(image)) <= 1e-5
    net[0].bn = nn.GroupNorm(2, 8)
    with pytest.raises(ValueError, match=r"0 \(Unit2D\).*GroupNorm"):
        inflate(net)
