"""ResNet after He et al., "Deep Residual Learning for Image Recognition" (2015).

Two families share the same blocks:
- ImageNet models (resnet18..152): 7x7/2 stem, 3x3/2 max-pool, widths 64-128-256-512 and
  projection shortcuts ("option B"). Parameter names equal torchvision's, so its checkpoints load
  unchanged.
- CIFAR models (resnet20..110, 6n+2 layers): 3x3 stem, widths 16-32-64 and the parameter-free
  zero-padding shortcut ("option A", section 4.2 of the paper), laid out like the widely used public
  checkpoints of this family (channel zeros split evenly before and after, as they do).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
import torch.nn.functional as F

Shortcut = Literal["A", "B"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and append zero channels; no parameters."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


def _shortcut(kind: Shortcut, in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    """The "convolution block" shortcut, or None for the identity block."""
    if stride == 1 and in_planes == out_planes:
        return None
    if kind == "A":
        return ZeroPadShortcut(in_planes, out_planes, stride)
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: Shortcut = "B") -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(shortcut, in_planes, planes, stride)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's "V1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: Shortcut = "B") -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(shortcut, in_planes, out_planes, stride)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A stem, stages of residual blocks, global average pooling and one linear classifier.

    ``stem="imagenet"`` is 7x7/2 conv + 3x3/2 max-pool; ``stem="cifar"`` is one 3x3/1 conv.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        *,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        stem: Literal["imagenet", "cifar"] = "imagenet",
        shortcut: Shortcut = "B",
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"layers {layers} and widths {widths} differ in length")
        self.in_planes = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        for i, (width, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", self._make_layer(block, width, blocks, stride, shortcut))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)
        self._init_weights(stem)

    def _make_layer(self, block, planes: int, blocks: int, stride: int, shortcut: Shortcut) -> nn.Sequential:
        layers = [block(self.in_planes, planes, stride, shortcut)]
        self.in_planes = planes * block.expansion
        layers += [block(self.in_planes, planes, 1, shortcut) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, stem: str) -> None:
        # He initialisation, as in the paper (section 3.4) and torchvision.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if stem == "cifar":
            nn.init.kaiming_normal_(self.fc.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
