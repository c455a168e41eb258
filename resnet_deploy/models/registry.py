"""Architecture registry: a name -> builder table, as torchvision's ``register_model``."""

from __future__ import annotations

from dataclasses import dataclass

from resnet_deploy.errors import ConfigError


@dataclass(frozen=True)
class ArchSpec:
    """What a name means: the block, depth per stage, family and default input size."""

    name: str
    block: str  # "basic" | "bottleneck"
    layers: tuple[int, ...]
    family: str  # "imagenet" | "cifar"
    default_input_size: int

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
):
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
        stem=spec.family,
        shortcut=kind,
        num_classes=num_classes,
        in_channels=in_channels,
    )
    model.arch = spec.name  # type: ignore[attr-defined]
    model.shortcut = kind  # type: ignore[attr-defined]
    return model


