"""Typed, validated settings for one build."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from resnet_deploy.errors import ConfigError
from resnet_deploy.pipeline.latency import LatencySettings

# Shipped inside the package: a resnet20 trained with `resnet-deploy train` on Fashion-MNIST (see README).
EMBEDDED_MODEL = Path(str(files("resnet_deploy") / "assets" / "fmnist_resnet20.safetensors"))


@dataclass(frozen=True)
class BuildSettings:
    """Everything ``build`` needs. None means "decide from the checkpoint, the data or the family"."""

    targets: tuple[str, ...]
    out: Path | None = None
    checkpoint: Path | None = None
    arch: str | None = None
    num_classes: int | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    calib_data: str | None = None
    calib_samples: int = 300
    eval_data: str | None = None
    eval_samples: int | None = None
    max_drop: float = 1.0
    seed: int = 0
    threads: int | None = None
    latency: LatencySettings = field(default_factory=LatencySettings)
    target_options: dict[str, Any] = field(default_factory=dict)
    eval_sample_size: int = 500

    def __post_init__(self) -> None:
        if not self.targets:
            raise ConfigError("Give at least one --target (openvino, onnxruntime, tensorrt, jetson or all).")
        if self.calib_samples < 1:
            raise ConfigError(f"--calib-samples must be at least 1, got {self.calib_samples}.")
        if self.eval_samples is not None and self.eval_samples < 1:
            raise ConfigError(f"--eval-samples must be at least 1, got {self.eval_samples}.")
        if self.max_drop < 0:
            raise ConfigError(f"--max-drop must be zero or positive (points of top-1), got {self.max_drop}.")
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"--num-classes must be at least 1, got {self.num_classes}.")
        if self.checkpoint is None and self.arch is None and not EMBEDDED_MODEL.is_file():
            raise ConfigError(f"The embedded default model {EMBEDDED_MODEL} is missing: pass --checkpoint or --arch.")

    def to_args(self) -> dict[str, Any]:
        """The settings as written into the manifest (paths as strings)."""
        return {
            "targets": list(self.targets), "out": str(self.out), "checkpoint": str(self.checkpoint or "embedded"),
            "arch": self.arch, "num_classes": self.num_classes,
            "input_size": list(self.input_size) if self.input_size else None,
            "mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None,
            "calib_data": self.calib_data, "calib_samples": self.calib_samples, "eval_data": self.eval_data,
            "eval_samples": self.eval_samples, "max_drop": self.max_drop, "seed": self.seed, "threads": self.threads,
            "target_options": self.target_options,
        }
