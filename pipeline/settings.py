"""Typed, validated settings for one build."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from resnet_deploy.calibration.preprocess import (
    CHANNEL_ORDERS,
    CROPS,
    INTERPOLATIONS,
    MAX_INPUT_SIZE,
    MIN_INPUT_SIZE,
    STD_RANGE,
)
from resnet_deploy.errors import ConfigError
from resnet_deploy.pipeline.latency import LatencySettings
from resnet_deploy.ranges import SEED_MAX, THREADS_MAX, check_float, check_int

# Shipped inside the package: a resnet20 trained with `resnet-deploy train` on Fashion-MNIST (see README).
MAX_IMAGES = 10_000_000  # more than ImageNet-21k's 14M would take days here; a typo guard, not a policy
MAX_CLASSES = 100_000
MAX_FLOAT_LAYERS = 10_000
FALLBACK_MODES = ("auto", "off")
EMBEDDED_MODEL = Path(str(files("resnet_deploy") / "assets" / "fmnist_resnet20.safetensors"))


@dataclass(frozen=True)
class BuildSettings:
    """Everything ``build`` needs. None means "decide from the checkpoint, the data or the family"."""

    targets: tuple[str, ...]
    out: Path | None = None
    checkpoint: Path | None = None
    onnx: Path | None = None  # an FP32 ONNX classifier to start from instead of a checkpoint (no torch stages)
    arch: str | None = None
    num_classes: int | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | float | None = None  # the shorter side before the centre crop: pixels (int) or crop ratio (float)
    crop: str | None = None  # center | none
    interpolation: str | None = None
    channel_order: str | None = None  # RGB | BGR
    labels: Path | None = None  # class names in the model's output order (infer prints them)
    ground_truth: Path | None = None  # labels of a flat --eval-data folder (ImageNet's val layout)
    calib_data: str | None = None
    calib_samples: int = 300
    eval_data: str | None = None
    eval_samples: int | None = None
    max_drop: float = 1.0
    min_agreement: float = 0.98  # share of evaluation images whose INT8 prediction equals FP32's
    fallback: str = "auto"  # auto: keep the most sensitive layers in float until the gate holds; off: never
    max_float_layers: int = 8
    seed: int = 0
    threads: int | None = None
    latency: LatencySettings = field(default_factory=LatencySettings)
    target_options: dict[str, Any] = field(default_factory=dict)
    eval_sample_size: int = 500
    force: bool = False  # replace a bundle at --out even when it holds files it did not write
    recipe: dict[str, Any] = field(default_factory=dict)  # the flags as given, kept in the bundle as recipe.yaml
    train_data: str | None = None  # train first (a TrainSettings in ``train``), then build the weights
    train: Any = None  # pipeline.train.TrainSettings (typed loosely: this module stays importable without torch)
    train_out: Path | None = None  # the training run's folder (default runs/<arch>)

    def __post_init__(self) -> None:
        if not self.targets:
            from resnet_deploy.targets import list_targets

            raise ConfigError(f"Give at least one --target ({', '.join(list_targets())} or all).")
        check_int(self.calib_samples, "--calib-samples", lo=1, hi=MAX_IMAGES)
        check_int(self.eval_samples, "--eval-samples", lo=1, hi=MAX_IMAGES, optional=True)
        check_float(self.max_drop, "--max-drop (points of top-1)", lo=0.0, hi=100.0)
        check_float(self.min_agreement, "--min-agreement (share of images, 0 to 1)", lo=0.0, hi=1.0)
        if self.fallback not in FALLBACK_MODES:
            raise ConfigError(f"--fallback must be one of {', '.join(FALLBACK_MODES)}, got {self.fallback!r}.")
        check_int(self.max_float_layers, "--max-float-layers", lo=0, hi=MAX_FLOAT_LAYERS)
        check_int(self.num_classes, "--num-classes", lo=1, hi=MAX_CLASSES, optional=True)
        check_int(self.seed, "--seed", lo=0, hi=SEED_MAX)
        check_int(self.threads, "--threads", lo=1, hi=THREADS_MAX, optional=True)
        check_int(self.eval_sample_size, "eval_sample_size", lo=1, hi=MAX_IMAGES)
        # The values alone, before the model is read (their count against its channels comes later).
        for side in self.input_size or ():
            check_int(side, "--input-size", lo=MIN_INPUT_SIZE, hi=MAX_INPUT_SIZE)
        for v in self.mean or ():
            check_float(v, "--mean values (on [0, 1] pixels)", lo=0.0, hi=1.0)
        for v in self.std or ():
            check_float(v, "--std values (on [0, 1] pixels)", lo=STD_RANGE[0], hi=STD_RANGE[1])
        if isinstance(self.resize, int):
            check_int(self.resize, "--resize (the shorter side in pixels)", lo=MIN_INPUT_SIZE, hi=2 * MAX_INPUT_SIZE)
        elif self.resize is not None:
            check_float(self.resize, "--resize (as a crop ratio: input size / resized side)", lo=0.1, hi=1.0)
        for flag, value, allowed in (("--crop", self.crop, CROPS), ("--interpolation", self.interpolation,
                                     tuple(INTERPOLATIONS)), ("--channel-order", self.channel_order, CHANNEL_ORDERS)):
            if value is not None and value not in allowed:
                raise ConfigError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}.")
        if self.ground_truth is not None and self.eval_data is None:
            raise ConfigError("--ground-truth labels the images of a flat --eval-data folder: give --eval-data too.")
        if self.onnx is not None and (self.checkpoint is not None or self.arch is not None):
            raise ConfigError(f"--onnx {self.onnx} is the model: leave out --checkpoint and --arch, which give "
                              "another one.")
        if self.train_data is not None and (self.checkpoint is not None or self.onnx is not None):
            given = "--checkpoint" if self.checkpoint is not None else "--onnx"
            raise ConfigError(f"--train-data trains a new model, and {given} gives one: use one of the two.")
        if self.train_data is not None and self.train is None:
            raise ConfigError("--train-data needs the training settings (BuildSettings.train).")
        if self.checkpoint is None and self.onnx is None and self.arch is None and not EMBEDDED_MODEL.is_file():
            raise ConfigError(f"The embedded default model {EMBEDDED_MODEL} is missing: pass --checkpoint or --arch.")

    def to_args(self) -> dict[str, Any]:
        """The settings as written into the manifest (paths as strings)."""
        return {
            "targets": list(self.targets), "out": str(self.out),
            "checkpoint": None if self.onnx else str(self.checkpoint or "embedded"),
            "onnx": str(self.onnx) if self.onnx else None,
            "arch": self.arch, "num_classes": self.num_classes,
            "input_size": list(self.input_size) if self.input_size else None,
            "mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None,
            "resize": self.resize, "crop": self.crop, "interpolation": self.interpolation,
            "channel_order": self.channel_order, "labels": str(self.labels) if self.labels else None,
            "ground_truth": str(self.ground_truth) if self.ground_truth else None,
            "calib_data": self.calib_data, "calib_samples": self.calib_samples, "eval_data": self.eval_data,
            "eval_samples": self.eval_samples, "max_drop": self.max_drop,
            "min_agreement": self.min_agreement, "fallback": self.fallback, "max_float_layers": self.max_float_layers,
            "seed": self.seed, "threads": self.threads,
            "target_options": self.target_options,
        }
