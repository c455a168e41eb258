"""ResNet after He et al., "Deep Residual Learning for Image Recognition" (2015), and its wider family.

One set of blocks, configured per architecture (``models/registry.py`` holds the settings per name):
- ImageNet models (resnet18..152): 7x7/2 stem, 3x3/2 max-pool, widths 64-128-256-512 and
  projection shortcuts ("option B"). Parameter names equal torchvision's, so its checkpoints load
  unchanged.
- CIFAR models (resnet20..110, 6n+2 layers): 3x3 stem, widths 16-32-64 and the parameter-free
  zero-padding shortcut ("option A", section 4.2 of the paper), laid out like the widely used public
  checkpoints of this family (channel zeros split evenly before and after, as they do).
- The bottleneck's options: grouped 3x3 (ResNeXt, Xie et al. 2017: ``groups`` x ``width_per_group``),
  a wider 3x3 (Wide ResNet, Zagoruyko & Komodakis 2016: width_per_group 128) and squeeze-and-excitation
  after ``bn3`` (Hu et al. 2018). The ResNet-D tweaks of He et al. 2019 ("Bag of Tricks"): a deep
  3x3 stem and an average-pooled projection shortcut. Names follow torchvision (ResNeXt, Wide) and
  timm (SE, ResNet-D), so their state dicts load unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnet_deploy.models.squeeze_excite import SqueezeExcite

Shortcut = Literal["A", "B"]
Stem = Literal["default", "deep", "cifar"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


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


def _shortcut(
    kind: Shortcut, in_planes: int, out_planes: int, stride: int, avg_down: bool = False
) -> nn.Module | None:
    """The "convolution block" shortcut, or None for the identity block.

    ``avg_down`` (ResNet-D): average-pool 2x2 first, then a stride-1 1x1 projection, so the shortcut
    sees every input pixel instead of one in four. Laid out as timm's ``downsample_avg``.
    """
    if stride == 1 and in_planes == out_planes:
        return None
    if kind == "A":
        return ZeroPadShortcut(in_planes, out_planes, stride)
    if avg_down:
        pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        return nn.Sequential(pool, conv1x1(in_planes, out_planes), nn.BatchNorm2d(out_planes))
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, shortcut: Shortcut = "B", *,
        groups: int = 1, width_per_group: int = 64, se: bool = False, avg_down: bool = False,
    ) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64 or se:
            raise ValueError("BasicBlock supports only groups=1, width_per_group=64 and no SE")
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(shortcut, in_planes, planes, stride, avg_down)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's "V1.5"), 1x1 expand by 4.

    The 3x3 has ``groups`` groups of ``width_per_group * planes / 64`` channels (torchvision's width
    formula): 1 x 64 is ResNet, 32 x 4 ResNeXt-50 (32x4d), 1 x 128 Wide ResNet-50-2. ``se`` rescales the
    channels after ``bn3``, before the residual add, as timm does.
    """

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, shortcut: Shortcut = "B", *,
        groups: int = 1, width_per_group: int = 64, se: bool = False, avg_down: bool = False,
    ) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        out_planes = planes * self.expansion
        self.conv1 = conv1x1(in_planes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.se = SqueezeExcite(out_planes) if se else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(shortcut, in_planes, out_planes, stride, avg_down)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


def _stem(kind: Stem, in_channels: int, width: int, stem_width: int) -> nn.Module:
    """``conv1`` of each stem: 7x7/2 (torchvision), three 3x3 convs (ResNet-C/D deep stem, timm's
    ``stem_type='deep'``: stem_width, stem_width, then ``width``; the first with stride 2) or one 3x3/1 (CIFAR)."""
    if kind == "default":
        return nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    if kind == "deep":
        return nn.Sequential(
            conv3x3(in_channels, stem_width, stride=2), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True),
            conv3x3(stem_width, stem_width), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True),
            conv3x3(stem_width, width),
        )
    return conv3x3(in_channels, width)


class ResNet(nn.Module):
    """A stem, stages of residual blocks, global average pooling and one linear classifier.

    ``stem="default"`` is 7x7/2 conv + 3x3/2 max-pool, ``"deep"`` three 3x3 convs + the same max-pool,
    ``"cifar"`` one 3x3/1 conv and no pooling. ``bn1`` follows the stem's last conv in each case.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        *,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        stem: Stem = "default",
        stem_width: int = 32,
        shortcut: Shortcut = "B",
        avg_down: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        se: bool = False,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"layers {layers} and widths {widths} differ in length")
        if stem not in ("default", "deep", "cifar"):
            raise ValueError(f"stem must be 'default', 'deep' or 'cifar', got {stem!r}")
        self.arch = ""  # the registry's name, set by build_model
        self.shortcut: Shortcut = shortcut
        self.in_planes = widths[0]
        self.conv1 = _stem(stem, in_channels, widths[0], stem_width)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if stem == "cifar" else nn.MaxPool2d(3, stride=2, padding=1)
        options = {"groups": groups, "width_per_group": width_per_group, "se": se, "avg_down": avg_down}
        for i, (width, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", self._make_layer(block, width, blocks, stride, shortcut, options))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)
        self._init_weights(stem)

    def _make_layer(
        self, block, planes: int, blocks: int, stride: int, shortcut: Shortcut, options: dict
    ) -> nn.Sequential:
        layers = [block(self.in_planes, planes, stride, shortcut, **options)]
        self.in_planes = planes * block.expansion
        layers += [block(self.in_planes, planes, 1, shortcut, **options) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def zero_init_residual(self) -> None:
        """Start every residual branch's last BN scale at 0, so each block starts as its shortcut (Goyal et al.
        2017, He et al. 2019's "zero gamma"; timm's default, torchvision's ``zero_init_residual``). For training
        from scratch: without it an ImageNet-stem ResNeXt-50 at 32 px starts near loss 8.5 and its loss stayed
        above chance for epochs here; a random model built for latency keeps the paper's initialisation."""
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def _init_weights(self, stem: str) -> None:
        # He initialisation, as in the paper (section 3.4) and torchvision.
        if self.fc.weight.is_meta:  # shapes only (parameter counts): torch's meta normal_ imports dynamo, 3 s
            return
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
