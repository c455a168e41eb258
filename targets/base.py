"""The one interface every deployment target implements.

A target says whether it can run here, turns the BN-folded FP32 ONNX plus calibration images into
its artifacts (an FP32 and an INT8 model, or what its device needs), loads an artifact as a runner,
and describes itself. The build chain, the validator and the latency harness only see this.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.errors import DependencyError


class Runner(Protocol):
    """A loaded model: synchronous ``run(batch NCHW float32) -> logits (N, classes)``."""

    description: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class CompileInput:
    """What every target compiles from: the same folded ONNX and the same calibration images."""

    fp32_onnx: Path
    calibration: np.ndarray  # float32 NCHW, normalised with ``preprocessing``
    preprocessing: Preprocessing
    options: dict[str, Any] = field(default_factory=dict)  # target-specific, validated by the target


@dataclass(frozen=True)
class Artifact:
    """One model file a target produced, relative to the bundle root."""

    target: str
    precision: str  # "fp32" | "fp16" | "int8"
    path: str
    runtime: str  # the runtime that loads it: "openvino" | "onnxruntime" | "tensorrt"
    simulated: bool = False  # measured here on CPU in place of the device (the Q/DQ graph under ONNX Runtime)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {"target": self.target, "precision": self.precision, "path": self.path, "runtime": self.runtime,
             "simulated": self.simulated}
        if self.extra:
            d["extra"] = self.extra
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Artifact":
        return cls(d["target"], d["precision"], d["path"], d["runtime"], bool(d.get("simulated", False)),
                   dict(d.get("extra", {})))


class Target(ABC):
    """A deployment target. Subclasses set ``name``, ``summary`` and ``requires`` (import name -> pip name)."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    summary: str = ""
    requires: dict[str, str] = {}

    def missing(self) -> list[str]:
        """pip names of the packages this target needs that are not installed."""
        return [pip for module, pip in self.requires.items() if importlib.util.find_spec(module) is None]

    option_keys: tuple[str, ...] = ()  # the keys of CompileInput.options this target reads

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise ConfigError for option values this target cannot use; called before any stage runs."""

    def ensure_available(self) -> None:
        missing = self.missing()
        if missing:
            raise DependencyError(
                f"--target {self.name} needs {', '.join(missing)}, which is not installed. "
                f"Install it with `pip install {' '.join(missing)}` and run again."
            )

    @abstractmethod
    def compile(self, inp: CompileInput, bundle: Path) -> list[Artifact]:
        """Write this target's artifacts under ``bundle/<name>/``; return them, FP32 first."""

    @abstractmethod
    def load(self, artifact: Artifact, bundle: Path, *, threads: int | None = None,
             hint: str | None = None) -> Runner:
        """A runner for one of this target's artifacts. ``hint`` ("latency"/"throughput") is a
        performance hint for runtimes that take one (OpenVINO's streams); others ignore it."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "aliases": list(self.aliases), "summary": self.summary,
                "missing": self.missing()}
