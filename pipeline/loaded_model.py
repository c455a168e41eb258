"""What the load stage hands on: a model and what is known of it. Kept free of torch, so a build that starts
from an ONNX file (``build --onnx``) never imports PyTorch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode and what is known of it."""

    model: nn.Module | None  # None when the model came as ONNX (``onnx_input.OnnxModel``)
    arch: str
    num_classes: int
    in_channels: int
    shortcut: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def parameter_count(self) -> int:
        assert self.model is not None
        return int(sum(p.numel() for p in self.model.parameters()))
