"""The plug-in interface every deployment target implements (``PLUGIN_API`` 2).

A target says what it needs to build here and which runtimes load its artifacts on a device, turns
the BN-folded FP32 ONNX plus calibration images into artifacts, loads an artifact as a runner, and
may offer hooks: its own flags (a typed options class), an on-device build step, device profiles,
layers kept in float, serving configs. The pipeline, the CLI and the device side only see this, so
a new target is one module (or an installed package, entry point group ``resnet_deploy.targets``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol, Sequence

import numpy as np

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.errors import ConfigError, DependencyError

# The hooks a target may implement, by API version. A plug-in declares the version it was written
# for; newer hooks have defaults, so a version-1 plug-in keeps working when version 2 adds some.
# 2: ``Target.load_throughput`` (default: ``load(hint="throughput")``, one request at a time);
#    ``Target.notices`` and ``Target.simulated_by`` (default: none).
PLUGIN_API = 2


class Runner(Protocol):
    """A loaded model: synchronous ``run(batch NCHW float32) -> logits (N, classes)``."""

    description: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...


class ThroughputRunner(Protocol):
    """A model loaded in its runtime's throughput mode: ``requests`` inferences in flight at once (a
    runtime's streams, concurrent runs), so images/s is what the runtime's own benchmark tool reports."""

    description: str
    requests: int

    def run_many(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) for every image of ``batch`` (NCHW float32), in order."""


class OneRequestAtATime:
    """The throughput mode of a runtime that has none of its own: ``run`` on the whole batch."""

    requests = 1

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.description = runner.description

    def run_many(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.runner.run(batch))


@dataclass(frozen=True)
class Runtime:
    """A runtime that loads artifacts on a device, as recorded in ``Artifact.runtime``.

    ``preference`` orders runtimes when ``infer``/``bench`` choose on their own (higher wins: a
    device engine over a CPU runtime); ``packages`` are the distributions reports record versions of;
    ``loggers`` are the library loggers ``--quiet`` silences.
    """

    name: str
    module: str  # the import name whose presence means the runtime is installed
    install: str  # how to install it, for messages: "pip install onnxruntime"
    preference: int = 0
    packages: tuple[str, ...] = ()
    loggers: tuple[str, ...] = ()

    def present(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except ValueError:  # imported already without a spec (a stand-in module in tests)
            return self.module in sys.modules


@dataclass(frozen=True)
class CompileInput:
    """What every target compiles from: the same folded ONNX and the same calibration images."""

    fp32_onnx: Path
    calibration: np.ndarray  # float32 NCHW, normalised with ``preprocessing``
    preprocessing: Preprocessing
    options: Any = None  # the target's own parsed options (``Target.parse_options``)
    float_layers: tuple[str, ...] = ()  # ONNX node names to keep in float (``Target.float_layers``)
    # Calibration-source images the ranges never see, for an ``auto`` choice to be scored on
    # (``calibration.agreement.scoring_images``); None: the first calibration images.
    check: np.ndarray | None = None


@dataclass(frozen=True)
class Artifact:
    """One model file a target produced, relative to the bundle root (or absolute for an engine kept in
    a cache outside the bundle, with its ``sha256``).

    ``files``: the other files the model needs (weights of an IR, a calibration cache); ``note``: what a
    person must know about the row; ``commands``: shell commands for the device, by name; ``details``:
    the target's settings (quantization method, device profile ...), shown in reports as they are.
    """

    target: str
    precision: str  # "fp32" | "fp16" | "int8"
    path: str
    runtime: str  # ``Runtime.name`` of the runtime that loads it
    simulated: bool = False  # measured here on CPU in place of the device
    files: tuple[str, ...] = ()
    note: str = ""
    commands: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    sha256: str | None = None  # for a file outside the bundle only

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"target": self.target, "precision": self.precision, "path": self.path,
                             "runtime": self.runtime, "simulated": self.simulated}
        for key in ("files", "note", "commands", "details", "sha256"):
            value = getattr(self, key)
            if value:
                d[key] = list(value) if key == "files" else dict(value) if isinstance(value, Mapping) else value
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Artifact:
        if not isinstance(d, Mapping):
            raise TypeError(f"an artifact record must be an object, got {type(d).__name__}")
        extra = d.get("extra") or {}  # bundles written before the typed fields kept them here
        files = d.get("files", extra.get("files", ()))
        details = dict(d.get("details", {k: v for k, v in extra.items()
                                          if k not in ("files", "note", "commands", "sha256")}))
        for key, value in (("target", d.get("target")), ("precision", d.get("precision")), ("path", d.get("path")),
                           ("runtime", d.get("runtime"))):
            if not isinstance(value, str) or not value:
                raise ValueError(f"artifact field {key!r} must be a non-empty string, got {value!r}")
        if not isinstance(files, (list, tuple)) or not all(isinstance(f, str) for f in files):
            raise ValueError("artifact field 'files' must be a list of paths")
        return cls(d["target"], d["precision"], d["path"], d["runtime"], bool(d.get("simulated", False)),
                   tuple(files), str(d.get("note", extra.get("note", ""))),
                   dict(d.get("commands", extra.get("commands", {}))), details,
                   d.get("sha256", extra.get("sha256")))


@dataclass(frozen=True)
class DeviceBuild:
    """What a target's on-device build step made: artifacts to add to the bundle's record, and the
    files (bundle-relative name -> path) the manifest must list so the device side trusts them."""

    artifacts: tuple[Artifact, ...]
    files: Mapping[str, Path]
    message: str


def option_fields(options_type: type | None) -> tuple[dataclasses.Field, ...]:
    """The flags a typed options class declares: its dataclass fields with ``metadata["help"]``."""
    if options_type is None:
        return ()
    if not dataclasses.is_dataclass(options_type):
        raise TypeError(f"{options_type!r} must be a dataclass to declare flags")
    return tuple(dataclasses.fields(options_type))


# every calibration method of a target; the best top-1 agreement with FP32 on held-out (else calibration) images
AUTO_METHOD = "auto"


def calib_method_flag() -> Any:
    """The ``--calib-method`` field every quantizing target declares the same way (so the flag is shared)."""
    return field(default=None, metadata={
        "help": "Activation range rule: auto (each of the target's methods, the best agreement with FP32 on the "
                "held-out calibration-source images wins) or one of the target's methods (README); "
                "TARGET=METHOD,... per target.",
        "type": str})


def calib_method(raw: Any, *, target: str, methods: Sequence[str], default: str) -> str:
    """This target's ``--calib-method``: ``auto``, one of ``methods``, or a ``target=method,...`` list (a target
    the list leaves out keeps ``default``). ConfigError names the flag, the target and its methods."""
    if raw is None or raw == "":
        return default
    text = str(raw).strip()
    choice: str | None = text
    if "=" in text:
        pairs = [p.partition("=") for p in text.split(",") if p.strip()]
        if any(not sep or not name.strip() or not value.strip() for name, sep, value in pairs):
            raise ConfigError(f"--calib-method {text!r}: give one method for every target, or TARGET=METHOD pairs "
                              "separated by commas (openvino=max,onnxruntime=entropy).")
        choice = next((value.strip() for name, _, value in pairs if name.strip().lower() == target), None)
    if choice is None:
        return default
    if choice.lower() not in (AUTO_METHOD, *methods):
        raise ConfigError(f"--calib-method {choice!r} is not a method of --target {target}: choose {AUTO_METHOD} or "
                          f"one of {', '.join(methods)} (TARGET=METHOD,... sets it per target).")
    return choice.lower()


class Target(ABC):
    """A deployment target. Subclasses set ``name``, ``summary``, ``runtimes`` and implement ``compile``
    and ``load``; every other hook has a default meaning "not offered"."""

    api_version: ClassVar[int] = PLUGIN_API
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    runtimes: ClassVar[tuple[Runtime, ...]] = ()
    # import name -> pip name of what ``compile`` needs on the build machine (beyond the [build] extra)
    build_requires: ClassVar[Mapping[str, str]] = {}
    # A frozen dataclass whose fields are this target's ``build`` flags (``metadata``: help, type); its
    # instance, validated by ``parse_options``, reaches ``compile`` as ``CompileInput.options``.
    options: ClassVar[type | None] = None
    # The same for ``device-build`` (``device_build``'s ``options``).
    device_options: ClassVar[type | None] = None
    # Whether ``compile`` honours ``CompileInput.float_layers`` (layers kept in float).
    float_layers: ClassVar[bool] = False
    # Names of the ``runtimes`` that only run a CPU simulation of this target's models (accuracy, not the
    # device's speed): with only those present, ``resnet-deploy targets`` says the target's runtime is missing.
    simulated_by: ClassVar[tuple[str, ...]] = ()

    # --- what it needs -----------------------------------------------------------------------------

    def missing(self) -> list[str]:
        """pip names of the packages ``compile`` needs that are not installed here."""
        out = []
        for module, pip in self.build_requires.items():
            try:
                found = importlib.util.find_spec(module) is not None
            except ValueError:
                found = module in sys.modules
            if not found:
                out.append(pip)
        return out

    def ensure_available(self) -> None:
        missing = self.missing()
        if missing:
            raise DependencyError(
                f"--target {self.name} needs {', '.join(missing)}, which is not installed. "
                f"Install it with `pip install {' '.join(missing)}` and run again."
            )

    def parse_options(self, raw: Mapping[str, Any]) -> Any:
        """This target's options from the raw flag values (None = not given); ConfigError for values it
        cannot use. Called before any stage runs. Keys of other targets are ignored."""
        if self.options is None:
            return None
        names = {f.name for f in option_fields(self.options)}
        return self.options(**{k: v for k, v in raw.items() if k in names and v is not None})

    # --- the two required steps ----------------------------------------------------------------------

    @abstractmethod
    def compile(self, inp: CompileInput, bundle: Path) -> Sequence[Artifact]:
        """Write this target's artifacts under ``bundle/<name>/``; return them, FP32 first."""

    @abstractmethod
    def load(self, artifact: Artifact, bundle: Path, *, threads: int | None = None,
             hint: str | None = None) -> Runner:
        """A runner for one of this target's artifacts. ``hint`` is "latency" (batch 1, one request at a
        time) or "throughput" (the runtime's own multi-stream settings); runtimes without one ignore it."""

    # --- optional hooks (API 1) ------------------------------------------------------------------------

    def load_throughput(self, artifact: Artifact, bundle: Path, *, threads: int | None = None) -> ThroughputRunner:
        """(API 2) A runner in the runtime's throughput mode, for accuracy passes over many images and for
        images/s. The default runs ``load(hint="throughput")`` one request at a time."""
        return OneRequestAtATime(self.load(artifact, bundle, threads=threads, hint="throughput"))

    def has_device_build(self, bundle: Path) -> bool:
        """Whether ``bundle`` holds something ``device_build`` can build on this device."""
        return False

    def device_build(self, bundle: Path, options: Any, *, force: bool = False,
                     cache_dir: Path | None = None) -> DeviceBuild:
        """On the device: build (or reuse) what only the device can build (a TensorRT engine)."""
        raise ConfigError(f"--target {self.name} has no on-device build step.")

    def parse_device_options(self, raw: Mapping[str, Any]) -> Any:
        if self.device_options is None:
            return None
        names = {f.name for f in option_fields(self.device_options)}
        return self.device_options(**{k: v for k, v in raw.items() if k in names and v is not None})

    def profiles(self) -> Sequence[tuple[str, str]]:
        """Device profiles, as (name, one-line description), for ``resnet-deploy devices``."""
        return ()

    def notices(self, raw: Mapping[str, Any]) -> Sequence[str]:
        """(API 2) What a person must know about the raw flag values before a build starts, such as a default
        this target chose for a flag left out (a device profile); ``build`` shows each as a warning."""
        return ()

    def host_facts(self, artifact: Artifact) -> Mapping[str, Any]:
        """What a device report records about the device that ran ``artifact`` beyond the CPU (a Jetson's
        JetPack and power mode, the TensorRT and GPU or DLA core used)."""
        return {}

    def serving_configs(self, bundle: Path, artifacts: Sequence[Artifact], prep: Preprocessing,
                        num_classes: int) -> Sequence[Path]:
        """Serving-system files for this target's artifacts (a Triton model folder, a DeepStream config),
        written into the bundle after ``compile``; the paths written."""
        return ()
