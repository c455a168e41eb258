"""Architecture registry: a name -> settings table, as torchvision's ``register_model``.

Every name is a configuration of the same blocks (``models/resnet.py``): depth per stage, block type,
grouped/wide 3x3, squeeze-and-excitation, stem and shortcut kind. Names and parameter layouts follow
torchvision (resnet*, resnext*, wide_resnet*) and timm (the "d" and "se" variants).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from resnet_deploy.errors import ConfigError

if TYPE_CHECKING:  # torch is imported only when a model is built
    from resnet_deploy.models.resnet import ResNet, Shortcut, Stem

BLOCKS = ("basic", "bottleneck")
FAMILIES = ("imagenet", "cifar")
STEMS = ("default", "deep", "cifar")
DOWNSAMPLES = ("conv", "avg")


@dataclass(frozen=True)
class ArchSpec:
    """What a name means: the block, depth per stage, family, default input size and the block options.

    ``groups`` x ``width_per_group`` sets the bottleneck's 3x3 width (torchvision's formula);
    ``se`` adds squeeze-and-excitation; ``stem`` is "default" (7x7/2), "deep" (three 3x3, ResNet-C/D)
    or "cifar" (one 3x3/1); ``downsample`` is the projection shortcut: "conv" (1x1 with stride) or
    "avg" (2x2 average pool, then 1x1: ResNet-D).
    """

    name: str
    block: str  # "basic" | "bottleneck"
    layers: tuple[int, ...]
    family: str  # "imagenet" | "cifar"
    default_input_size: int
    groups: int = 1
    width_per_group: int = 64
    se: bool = False
    stem: str = ""  # "" means the family's own: "default" for imagenet, "cifar" for cifar
    downsample: str = "conv"

    def __post_init__(self) -> None:
        if not self.stem:
            object.__setattr__(self, "stem", "cifar" if self.family == "cifar" else "default")
        problems = []
        if self.block not in BLOCKS:
            problems.append(f"block {self.block!r} is not one of {BLOCKS}")
        if self.family not in FAMILIES:
            problems.append(f"family {self.family!r} is not one of {FAMILIES}")
        if self.stem not in STEMS:
            problems.append(f"stem {self.stem!r} is not one of {STEMS}")
        if self.downsample not in DOWNSAMPLES:
            problems.append(f"downsample {self.downsample!r} is not one of {DOWNSAMPLES}")
        if (self.stem == "cifar") != (self.family == "cifar"):
            problems.append(f"stem {self.stem!r} does not fit family {self.family!r}")
        if self.groups < 1 or self.width_per_group < 1:
            problems.append("groups and width_per_group must be positive")
        if self.block == "basic" and (self.groups != 1 or self.width_per_group != 64 or self.se):
            problems.append("basic blocks take only groups=1, width_per_group=64 and no SE")
        if problems:
            raise ConfigError(f"Architecture {self.name!r}: {'; '.join(problems)}.")

    @property
    def widths(self) -> tuple[int, ...]:
        return (64, 128, 256, 512) if self.family == "imagenet" else (16, 32, 64)


_ARCHS: dict[str, ArchSpec] = {}


def _register(spec: ArchSpec) -> None:
    _ARCHS[spec.name] = spec


for _name, _block, _layers in [
    ("resnet18", "basic", (2, 2, 2, 2)),
    ("resnet34", "basic", (3, 4, 6, 3)),
    ("resnet50", "bottleneck", (3, 4, 6, 3)),
    ("resnet101", "bottleneck", (3, 4, 23, 3)),
    ("resnet152", "bottleneck", (3, 8, 36, 3)),
]:
    _register(ArchSpec(_name, _block, _layers, "imagenet", 224))
for _depth in (20, 32, 44, 56, 110):
    _n = (_depth - 2) // 6
    _register(ArchSpec(f"resnet{_depth}", "basic", (_n, _n, _n), "cifar", 32))

_R50, _R101, _R26 = (3, 4, 6, 3), (3, 4, 23, 3), (2, 2, 2, 2)
for _spec in [
    # ResNeXt (torchvision): cardinality x width of each group in the first stage.
    ArchSpec("resnext50_32x4d", "bottleneck", _R50, "imagenet", 224, groups=32, width_per_group=4),
    ArchSpec("resnext101_32x8d", "bottleneck", _R101, "imagenet", 224, groups=32, width_per_group=8),
    ArchSpec("resnext101_64x4d", "bottleneck", _R101, "imagenet", 224, groups=64, width_per_group=4),
    # Wide ResNet (torchvision): the bottleneck's 3x3 twice as wide; the block outputs stay the same.
    ArchSpec("wide_resnet50_2", "bottleneck", _R50, "imagenet", 224, width_per_group=128),
    ArchSpec("wide_resnet101_2", "bottleneck", _R101, "imagenet", 224, width_per_group=128),
    # Squeeze-and-excitation (timm).
    ArchSpec("seresnet50", "bottleneck", _R50, "imagenet", 224, se=True),
    ArchSpec("seresnext50_32x4d", "bottleneck", _R50, "imagenet", 224, groups=32, width_per_group=4, se=True),
    # ResNet-D (timm): deep 3x3 stem and average-pooled projection shortcut.
    ArchSpec("resnet26d", "bottleneck", _R26, "imagenet", 224, stem="deep", downsample="avg"),
    ArchSpec("resnet50d", "bottleneck", _R50, "imagenet", 224, stem="deep", downsample="avg"),
    ArchSpec("seresnext26d_32x4d", "bottleneck", _R26, "imagenet", 224, groups=32, width_per_group=4, se=True,
             stem="deep", downsample="avg"),
]:
    _register(_spec)


def list_archs() -> list[str]:
    return list(_ARCHS)


def get_arch(name: str) -> ArchSpec:
    try:
        return _ARCHS[name.lower()]
    except KeyError:
        raise ConfigError(
            f"Unknown architecture {name!r} (--arch). Known architectures: {', '.join(_ARCHS)}."
        ) from None


def build_model(
    arch: str, *, num_classes: int = 1000, in_channels: int = 3, shortcut: str | None = None
) -> ResNet:
    """A freshly initialised model. ``shortcut`` overrides the family's default ("B" ImageNet, "A" CIFAR)."""
    from resnet_deploy.models.resnet import BasicBlock, Bottleneck, ResNet

    spec = get_arch(arch)
    if num_classes < 1:
        raise ConfigError(f"--num-classes must be at least 1, got {num_classes}.")
    if in_channels not in (1, 3):
        raise ConfigError(f"Input channels must be 1 or 3, got {in_channels}.")
    kind = shortcut or ("B" if spec.family == "imagenet" else "A")
    if kind not in ("A", "B"):
        raise ConfigError(f"Shortcut must be 'A' (zero padding) or 'B' (projection), got {kind!r}.")
    block = BasicBlock if spec.block == "basic" else Bottleneck
    model = ResNet(
        block,
        list(spec.layers),
        widths=spec.widths,
        stem=cast("Stem", spec.stem),  # checked by ArchSpec
        shortcut=cast("Shortcut", kind),  # checked above
        avg_down=spec.downsample == "avg",
        groups=spec.groups,
        width_per_group=spec.width_per_group,
        se=spec.se,
        num_classes=num_classes,
        in_channels=in_channels,
    )
    model.arch = spec.name
    return model


@functools.lru_cache(maxsize=None)
def parameter_count(arch: str, *, num_classes: int = 1000) -> int:
    """Parameters of ``arch`` with a ``num_classes`` classifier, counted on PyTorch's meta device
    (shapes only, no memory), once per process: building a 101-layer model's modules still takes 0.1 s."""
    import torch

    with torch.device("meta"):
        model = build_model(arch, num_classes=num_classes)
    return sum(p.numel() for p in model.parameters())


def describe_arch(name: str) -> str:
    """One line for ``resnet-deploy archs``: family, block, depth per stage, block options, parameters."""
    s = get_arch(name)
    options = [f"{s.groups}x{s.width_per_group}d" if s.groups > 1 else
               (f"3x3 width {s.width_per_group // 64}x" if s.width_per_group != 64 else "")]
    options += ["SE" if s.se else "", f"{s.stem} stem" if s.stem == "deep" else "",
                "avg-pool shortcut" if s.downsample == "avg" else ""]
    extra = ", ".join(o for o in options if o)
    classes = 10 if s.family == "cifar" else 1000  # the family's usual data set: CIFAR-10, ImageNet
    params = parameter_count(name, num_classes=classes) / 1e6
    return (f"{s.name:19s} {s.family:8s} {s.block:10s} {'-'.join(map(str, s.layers)):9s} "
            f"{params:7.2f}M params ({classes} classes)" + (f"  {extra}" if extra else ""))
