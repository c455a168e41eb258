"""Typed settings of a TensorRT bundle: the validated target flags and ``build_config.json``.

``build_config.json`` is what the device reads to build its engine (``device_build``), so it holds
everything the build needs and nothing that depends on the build machine; no torch, no onnx here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from resnet_deploy.errors import BundleError, ConfigError
from resnet_deploy.targets.base import calib_method_flag
from resnet_deploy.targets.tensorrt.calibration_cache import parse_version
from resnet_deploy.targets.tensorrt.profiles import DeviceProfile, get_profile, jetson_profiles

BUILD_CONFIG = "build_config.json"
QDQ_ONNX = "model_qdq.onnx"
CALIBRATION_CACHE = "calibration.cache"
TRTEXEC_SCRIPT = "trtexec.sh"
SCHEMA = 1
MAX_BATCH_LIMIT = 4096  # DLA's largest batch; far beyond any useful profile on a GPU too


def _flag(help_text: str, kind: type) -> Any:
    return field(default=None, metadata={"help": help_text, "type": kind})


@dataclass(frozen=True)
class TensorRTFlags:
    """``build`` flags of ``--target tensorrt`` (and jetson): None means the preset's value."""

    max_batch: int | None = _flag("Largest batch of the TensorRT optimisation profile.", int)
    workspace_mb: int | None = _flag("TensorRT builder workspace limit in MiB.", int)
    calib_method: str | None = calib_method_flag()  # the amax rule of the Q/DQ model and the cache


@dataclass(frozen=True)
class JetsonFlags(TensorRTFlags):
    """``build`` flags of ``--target jetson``."""

    device: str | None = _flag("Jetson profile (see `resnet-deploy devices`; default orin-nano).", str)
    dla_core: int | None = _flag("Jetson DLA core for the engine (GPU fallback on).", int)


@dataclass(frozen=True)
class DeviceBuildFlags:
    """``device-build`` flags of the TensorRT targets."""

    dla_core: int | None = _flag("DLA core (default: the bundle's choice); GPU fallback on.", int)


@dataclass(frozen=True)
class TrtPreset:
    """Per-target defaults: a desktop GPU serves throughput, a Jetson usually serves one camera at a time."""

    device: str
    max_batch: int
    opt_for_latency: bool  # optimise kernels for batch 1 (latency) rather than max_batch (throughput)
    workspace_mb: int
    device_flag: bool  # whether --device / --dla-core apply to this target


DESKTOP = TrtPreset(device="desktop", max_batch=32, opt_for_latency=False, workspace_mb=2048, device_flag=False)
# orin-nano: every Orin module runs its bundle (same JetPack 6 / TensorRT 10.3 / sm 8.7), and it
# assumes no DLA, which the Orin Nano lacks; pass --device agx-orin or orin-nx-8gb/16gb to use a DLA core.
JETSON = TrtPreset(device="orin-nano", max_batch=8, opt_for_latency=True, workspace_mb=512, device_flag=True)


def _int(value: Any, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{flag} must be a whole number, got {value!r}.")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{flag} must be a whole number, got {value!r}.") from None


@dataclass(frozen=True)
class TrtOptions:
    """The target flags, validated: device profile, DLA core, batch range, builder workspace."""

    profile: DeviceProfile
    dla_core: int | None
    max_batch: int
    opt_batch: int
    workspace_mb: int
    calib_method: str = "auto"  # "auto" or one of calibration/activation_ranges.METHODS

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= MAX_BATCH_LIMIT:
            raise ConfigError(f"--max-batch must be between 1 and {MAX_BATCH_LIMIT}, got {self.max_batch}.")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"the optimisation batch must lie in 1..--max-batch, got {self.opt_batch}.")
        if not 16 <= self.workspace_mb <= 1 << 20:
            raise ConfigError(f"--workspace-mb must be between 16 and {1 << 20} (MiB), got {self.workspace_mb}.")
        if self.dla_core is not None:
            cores = self.profile.dla_cores
            if cores == 0:
                raise ConfigError(f"--dla-core {self.dla_core}: {self.profile.gpu} (--device {self.profile.name}) "
                                  "has no DLA; leave --dla-core out, or pick agx-orin, orin-nx-8gb, orin-nx-16gb "
                                  "or a Xavier.")
            if not 0 <= self.dla_core < cores:
                raise ConfigError(f"--dla-core {self.dla_core}: {self.profile.gpu} (--device {self.profile.name}) has "
                                  f"{cores} DLA core{'s' if cores != 1 else ''}, so --dla-core must be "
                                  f"{'0' if cores == 1 else f'0..{cores - 1}'}.")

    @classmethod
    def from_flags(cls, flags: Any, preset: TrtPreset) -> TrtOptions:
        """Validate a ``TensorRTFlags``/``JetsonFlags`` (None means "not given") against the preset."""
        given = {k: v for k, v in dataclasses.asdict(flags).items() if v is not None} if flags is not None else {}
        if preset.device_flag:
            profile = get_profile(str(given.get("device", preset.device)))
            if not profile.is_jetson:
                raise ConfigError(f"--device {profile.name} is not a Jetson (choose one of "
                                  f"{', '.join(jetson_profiles())}); use --target tensorrt for a desktop GPU.")
            dla = _int(given["dla_core"], "--dla-core") if "dla_core" in given else None
        else:
            # --device and --dla-core belong to --target jetson; with --target all they reach here too.
            profile, dla = get_profile(preset.device), None
        max_batch = _int(given.get("max_batch", preset.max_batch), "--max-batch")
        workspace = _int(given.get("workspace_mb", preset.workspace_mb), "--workspace-mb")
        opt = 1 if preset.opt_for_latency else max_batch
        return cls(profile, dla, max_batch, min(opt, max_batch), workspace)


def quantization_mode(trt_version: str, *, precision: str, dla_core: int | None) -> str:
    """How the INT8 ranges reach TensorRT: "explicit" Q/DQ ONNX, "implicit" calibration cache, or "none" (FP16).

    Explicit Q/DQ on TensorRT 10+ GPUs. TensorRT 8.x takes the calibration cache through
    IInt8EntropyCalibrator2 (implicit INT8), and so does DLA on every release: DLA does not take Q/DQ
    networks (NVIDIA's DLA qdq-translator turns them into exactly this FP32 ONNX + cache pair).
    """
    if precision != "int8":
        return "none"
    if dla_core is not None or parse_version(trt_version)[0] < 10:
        return "implicit"
    return "explicit"


@dataclass(frozen=True)
class TrtBuildConfig:
    """``build_config.json``: the device, precision, input, batch range and files of an engine build.

    Paths are relative to the target's folder in the bundle.
    """

    target: str
    profile: DeviceProfile
    precision: str  # "int8" | "fp16"
    input_name: str
    input_shape: tuple[int, int, int]  # C, H, W
    min_batch: int
    opt_batch: int
    max_batch: int
    dla_core: int | None
    workspace_mb: int
    qdq_onnx: str
    fp32_onnx: str
    calibration_cache: str
    amax_method: str
    note: str = ""
    # ONNX node names (TensorRT's ONNX parser names its layers after them) kept in float: the Q/DQ model has
    # no Q/DQ around them (explicit); implicit INT8 gets FP32 precision constraints on them (engine.py).
    float_layers: tuple[str, ...] = ()

    def mode(self, *, trt_version: str | None = None, dla_core: int | None = None) -> str:
        return quantization_mode(trt_version or self.profile.tensorrt, precision=self.precision,
                                 dla_core=self.dla_core if dla_core is None else dla_core)

    def onnx_for(self, mode: str) -> str:
        """The model TensorRT parses: the Q/DQ graph for explicit INT8, else the FP32 graph."""
        return self.qdq_onnx if mode == "explicit" else self.fp32_onnx

    def shapes(self, *, dla_core: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """min / opt / max input shapes. DLA takes static shapes only (min = opt = max), so it gets opt."""
        on_dla = self.dla_core is not None if dla_core is None else True
        batches = (self.opt_batch,) * 3 if on_dla else (self.min_batch, self.opt_batch, self.max_batch)
        return tuple((b, *self.input_shape) for b in batches)  # type: ignore[return-value]

    def with_dla(self, dla_core: int | None) -> TrtBuildConfig:
        TrtOptions(self.profile, dla_core, self.max_batch, self.opt_batch, self.workspace_mb)  # validates
        return replace(self, dla_core=dla_core)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "target": self.target, "profile": self.profile.to_dict(), "precision": self.precision,
            "quantization": self.mode(), "input": {"name": self.input_name, "shape": list(self.input_shape)},
            "batch": {"min": self.min_batch, "opt": self.opt_batch, "max": self.max_batch},
            "dla_core": self.dla_core, "gpu_fallback": self.dla_core is not None, "workspace_mb": self.workspace_mb,
            "files": {"qdq_onnx": self.qdq_onnx, "fp32_onnx": self.fp32_onnx,
                      "calibration_cache": self.calibration_cache, "trtexec": TRTEXEC_SCRIPT},
            "amax_method": self.amax_method, "note": self.note, "float_layers": list(self.float_layers),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrtBuildConfig:
        if d.get("schema") != SCHEMA:
            raise BundleError(f"{BUILD_CONFIG} has schema {d.get('schema')!r}; this resnet-deploy reads schema "
                              f"{SCHEMA}. Rebuild the bundle with this version.")
        c, h, w = (int(v) for v in d["input"]["shape"])
        files = d["files"]
        return cls(str(d["target"]), DeviceProfile.from_dict(d["profile"]), str(d["precision"]),
                   str(d["input"]["name"]), (c, h, w), int(d["batch"]["min"]), int(d["batch"]["opt"]),
                   int(d["batch"]["max"]), None if d.get("dla_core") is None else int(d["dla_core"]),
                   int(d["workspace_mb"]), str(files["qdq_onnx"]), str(files["fp32_onnx"]),
                   str(files["calibration_cache"]), str(d.get("amax_method", "")), str(d.get("note", "")),
                   tuple(str(n) for n in d.get("float_layers", ())))

    def write(self, folder: Path) -> Path:
        path = folder / BUILD_CONFIG
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> TrtBuildConfig:
        path = folder / BUILD_CONFIG
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise BundleError(f"{path} is missing: this folder holds no TensorRT build. Give a bundle built with "
                              "--target tensorrt or --target jetson.") from None
        except (ValueError, KeyError, TypeError) as err:
            raise BundleError(f"{path} is damaged ({err.__class__.__name__}: {err}). Copy the bundle again.") from None
