"""Well-known 3D video networks written in stock PyTorch (``nn.Conv3d`` + ``nn.BatchNorm3d`` +
``nn.ReLU``), the targets of :func:`i3d_fast.convert` in its tests and its benchmark (torchvision's
video models are not installable beside torch 2.13 CPU here).

- :class:`R3D18`: ResNet-18 with 3x3x3 convolutions (Tran et al. 2018; torchvision ``r3d_18``).
- :class:`R2Plus1D18`: ResNet-18 with each 3x3x3 convolution factorised into a (1, 3, 3) spatial and
  a (3, 1, 1) temporal one (torchvision ``r2plus1d_18``).
- :class:`S3D`: separable Inception (Xie et al. 2018; torchvision ``s3d``).
- :class:`SlowFast`: two pathways (speed ratio alpha = 8, channel ratio beta = 1/8) joined by lateral
  (5, 1, 1) stride-(8, 1, 1) convolutions (Feichtenhofer et al. 2019), with one bottleneck block per
  stage (the block structure of SlowFast-R50, a shallower stack).

Each takes Tensor[N, 3, T, H, W] and returns logits Tensor[N, num_classes].
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

Triple = Tuple[int, int, int]


def conv_bn_relu(cin: int, cout: int, kernel: Triple, stride: Triple = (1, 1, 1), padding: Triple = (0, 0, 0),
                 relu: bool = True) -> nn.Sequential:
    """Conv3d (no bias) -> BatchNorm3d -> ReLU (optional), as the torchvision models write it."""
    layers = [nn.Conv3d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm3d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# -- R3D-18 and R(2+1)D-18 ------------------------------------------------------------------------------
class Conv2Plus1D(nn.Sequential):
    """(1, 3, 3) spatial conv -> BN -> ReLU -> (3, 1, 1) temporal conv (no BN: the block adds it)."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int = 1):
        super().__init__(nn.Conv3d(cin, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
                         nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
                         nn.Conv3d(mid, cout, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, factorised: bool):
        super().__init__()
        if factorised:
            mid1 = cin * cout * 27 // (cin * 9 + 3 * cout)
            mid2 = cout * cout * 27 // (cout * 9 + 3 * cout)
            self.conv1 = nn.Sequential(Conv2Plus1D(cin, cout, mid1, stride), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))
            self.conv2 = nn.Sequential(Conv2Plus1D(cout, cout, mid2), nn.BatchNorm3d(cout))
        else:
            self.conv1 = conv_bn_relu(cin, cout, (3, 3, 3), (stride,) * 3, (1, 1, 1))
            self.conv2 = conv_bn_relu(cout, cout, (3, 3, 3), padding=(1, 1, 1), relu=False)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = conv_bn_relu(cin, cout, (1, 1, 1), (stride,) * 3, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + residual)


class VideoResNet18(nn.Module):
    def __init__(self, stem: nn.Module, factorised: bool, num_classes: int):
        super().__init__()
        self.stem = stem
        widths, cin = (64, 128, 256, 512), 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, width, stride, factorised),
                                                         BasicBlock(width, width, 1, factorised)))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.avgpool(x).flatten(1))


class R3D18(VideoResNet18):
    """R3D-18: input Tensor[N, 3, 16, 112, 112]."""

    def __init__(self, num_classes: int = 400):
        super().__init__(conv_bn_relu(3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3)), False, num_classes)


class R2Plus1D18(VideoResNet18):
    """R(2+1)D-18: input Tensor[N, 3, 16, 112, 112]."""

    def __init__(self, num_classes: int = 400):
        stem = nn.Sequential(nn.Conv3d(3, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False), nn.BatchNorm3d(45),
                             nn.ReLU(inplace=True), nn.Conv3d(45, 64, (3, 1, 1), (1, 1, 1), (1, 0, 0), bias=False),
                             nn.BatchNorm3d(64), nn.ReLU(inplace=True))
        super().__init__(stem, True, num_classes)


# -- S3D ------------------------------------------------------------------------------------------------
class SepConv3d(nn.Sequential):
    """(1, k, k) spatial conv -> BN -> ReLU -> (k, 1, 1) temporal conv -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0):
        super().__init__(*conv_bn_relu(cin, cout, (1, k, k), (1, stride, stride), (0, pad, pad)),
                         *conv_bn_relu(cout, cout, (k, 1, 1), (stride, 1, 1), (pad, 0, 0)))


class SepInception(nn.Module):
    def __init__(self, cin: int, b0: int, b1: Tuple[int, int], b2: Tuple[int, int], b3: int):
        super().__init__()
        self.branch0 = conv_bn_relu(cin, b0, (1, 1, 1))
        self.branch1 = nn.Sequential(conv_bn_relu(cin, b1[0], (1, 1, 1)), SepConv3d(b1[0], b1[1], 3, 1, 1))
        self.branch2 = nn.Sequential(conv_bn_relu(cin, b2[0], (1, 1, 1)), SepConv3d(b2[0], b2[1], 3, 1, 1))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, 1, 1), conv_bn_relu(cin, b3, (1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class S3D(nn.Module):
    """S3D (torchvision's layout): input Tensor[N, 3, 16, 224, 224]."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.features = nn.Sequential(
            SepConv3d(3, 64, 7, 2, 3),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            conv_bn_relu(64, 64, (1, 1, 1)),
            SepConv3d(64, 192, 3, 1, 1),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            SepInception(192, 64, (96, 128), (16, 32), 32),
            SepInception(256, 128, (128, 192), (32, 96), 64),
            nn.MaxPool3d(3, 2, 1),
            SepInception(480, 192, (96, 208), (16, 48), 64),
            SepInception(512, 160, (112, 224), (24, 64), 64),
            SepInception(512, 128, (128, 256), (24, 64), 64),
            SepInception(512, 112, (144, 288), (32, 64), 64),
            SepInception(528, 256, (160, 320), (32, 128), 128),
            nn.MaxPool3d(2, 2, 0),
            SepInception(832, 256, (160, 320), (32, 128), 128),
            SepInception(832, 384, (192, 384), (48, 128), 128),
        )
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Conv3d(1024, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x))).flatten(1)


# -- SlowFast ---------------------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    """1x1 (temporal kernel kt) -> 1x3x3 (spatial stride) -> 1x1 expanding, residual."""

    def __init__(self, cin: int, mid: int, cout: int, kt: int, stride: int):
        super().__init__()
        self.a = conv_bn_relu(cin, mid, (kt, 1, 1), padding=(kt // 2, 0, 0))
        self.b = conv_bn_relu(mid, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1))
        self.c = conv_bn_relu(mid, cout, (1, 1, 1), relu=False)
        self.shortcut = None if cin == cout and stride == 1 else \
            conv_bn_relu(cin, cout, (1, 1, 1), (1, stride, stride), relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.c(self.b(self.a(x))) + residual)


class SlowFast(nn.Module):
    """SlowFast (alpha 8, beta 1/8): input Tensor[N, 3, 16, 112, 112] feeds the fast pathway whole and
    the slow pathway every 8th frame."""

    alpha = 8

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.slow_stem = conv_bn_relu(3, 64, (1, 7, 7), (1, 2, 2), (0, 3, 3))
        self.fast_stem = conv_bn_relu(3, 8, (5, 7, 7), (1, 2, 2), (2, 3, 3))
        self.pool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        slow_in, fast_in = 64, 8
        self.slow, self.fast, self.lateral = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for stage, (width, slow_kt) in enumerate(((64, 1), (128, 1), (256, 3), (512, 3))):
            stride = 1 if stage == 0 else 2
            self.lateral.append(conv_bn_relu(fast_in, 2 * fast_in, (5, 1, 1), (self.alpha, 1, 1), (2, 0, 0)))
            self.slow.append(Bottleneck(slow_in + 2 * fast_in, width, 4 * width, slow_kt, stride))
            self.fast.append(Bottleneck(fast_in, width // 8, width // 2, 3, stride))
            slow_in, fast_in = 4 * width, width // 2
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(slow_in + fast_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slow = self.pool(self.slow_stem(x[:, :, ::self.alpha]))
        fast = self.pool(self.fast_stem(x))
        for lateral, slow_block, fast_block in zip(self.lateral, self.slow, self.fast):
            slow = slow_block(torch.cat([slow, lateral(fast)], 1))
            fast = fast_block(fast)
        pooled = torch.cat([self.avgpool(slow).flatten(1), self.avgpool(fast).flatten(1)], 1)
        return self.fc(pooled)


#: name -> (constructor, input shape for a batch of 2)
ARCHITECTURES = {
    "r3d_18": (R3D18, (2, 3, 16, 112, 112)),
    "r2plus1d_18": (R2Plus1D18, (2, 3, 16, 112, 112)),
    "s3d": (S3D, (2, 3, 16, 224, 224)),
    "slowfast": (SlowFast, (2, 3, 16, 112, 112)),
}
