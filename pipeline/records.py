"""The typed records a build hands between modules and writes as ``report.json``.

One home for their JSON form: ``to_json`` turns any of them into plain data, and each record's
``from_json`` reads it back explicitly (no type-hint evaluation, so the device side reads reports on
Python 3.8). The field names are the report.json keys, so bundles written before these types read alike.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from resnet_deploy.calibration.sensitivity import Sensitivity
from resnet_deploy.targets.base import Artifact

SCHEMA = "resnet-deploy/report/1"


def to_json(obj: Any) -> Any:
    """Plain JSON data for a record, an artifact, or containers of them (tuples become lists)."""
    if isinstance(obj, Artifact):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("omit_empty") and not value:
                continue
            out[f.name] = to_json(value)
        return out
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON: a class absent from the evaluation images has no top-1
    return obj


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


def _omit_empty(default: Any) -> Any:
    factory = default if callable(default) else None
    if factory is not None:
        return field(default_factory=factory, metadata={"omit_empty": True})
    return field(default=default, metadata={"omit_empty": True})


@dataclass(frozen=True)
class Latency:
    """Per-call wall times in milliseconds."""

    p50: float
    p90: float
    p99: float
    mean: float
    min: float

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Latency:
        return cls(float(d["p50"]), float(d["p90"]), float(d["p99"]), float(d["mean"]), float(d["min"]))


@dataclass(frozen=True)
class Throughput:
    """One throughput run: ``images`` completed in ``seconds`` of wall time with ``requests`` in flight, by
    ``runner`` (the runtime in its throughput mode)."""

    images: int
    seconds: float
    requests: int
    runner: str

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Throughput:
        return cls(int(d["images"]), float(d["seconds"]), int(d["requests"]), str(d.get("runner", "")))


@dataclass(frozen=True)
class ResultRow:
    """One artifact validated on the evaluation images: accuracy against labels and the FP32 reference,
    latency at ``batch``, throughput, size. ``sample_top1`` is top-1 on the images the bundle carries (for
    ``bench``). A simulated row (a device model run here on the CPU) is an accuracy row: no latency, no
    throughput. ``measured_on`` names the device that timed a measured row."""

    target: str
    precision: str
    runtime: str
    simulated: bool
    runner: str
    top1: float
    per_class_top1: tuple[float, ...]
    agreement: float | None
    batch: int
    iterations: int
    throughput_ips: float | None  # images / wall second of the throughput run (``throughput``)
    latency_ms: Latency | None
    artifact: str
    bytes: int
    sample_top1: float
    samples_ms: tuple[float, ...] = ()  # every timed call (up to 1000), for the HTML report's plots
    details: Mapping[str, Any] = _omit_empty(dict)
    note: str = _omit_empty("")
    throughput: Throughput | None = field(default=None, metadata={"omit_empty": True})
    measured_on: str = _omit_empty("")

    @property
    def label(self) -> str:
        return f"{self.target} {self.precision}" + (" (sim)" if self.simulated else "")

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ResultRow:
        agreement = d.get("agreement")
        return cls(str(d["target"]), str(d["precision"]), str(d["runtime"]), bool(d.get("simulated", False)),
                   str(d.get("runner", "")), float(d["top1"]), tuple(_float(v) for v in d.get("per_class_top1", ())),
                   None if agreement is None else float(agreement), int(d.get("batch", 1)),
                   int(d.get("iterations", 0)), None if d.get("throughput_ips") is None else float(d["throughput_ips"]),
                   None if d.get("latency_ms") is None else Latency.from_json(d["latency_ms"]), str(d["artifact"]),
                   int(d.get("bytes", 0)), float(d.get("sample_top1", 0.0)),
                   tuple(float(v) for v in d.get("samples_ms", ())), dict(d.get("details", {})),
                   str(d.get("note", "")), Throughput.from_json(d["throughput"]) if d.get("throughput") else None,
                   str(d.get("measured_on", "")))


@dataclass(frozen=True)
class Reference:
    """The FP32 model on the evaluation images, what every row is compared with: the PyTorch model, or (``--onnx``)
    the input graph as given, run by ``framework``."""

    framework: str
    precision: str
    top1: float
    per_class_top1: tuple[float, ...]

    @property
    def label(self) -> str:
        """How reports name it: "PyTorch FP32", or the ONNX input's graph and what ran it."""
        return "PyTorch FP32" if self.framework == "pytorch" else f"input ONNX FP32 ({self.framework})"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Reference:
        return cls(str(d["framework"]), str(d["precision"]), float(d["top1"]),
                   tuple(_float(v) for v in d.get("per_class_top1", ())))


@dataclass(frozen=True)
class DataSet:
    source: str
    count: int
    skipped: int
    seed: int
    sha256: str | None = _omit_empty(None)  # of the sorted image identities (calibration)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DataSet:
        return cls(str(d["source"]), int(d["count"]), int(d.get("skipped", 0)), int(d.get("seed", 0)),
                   d.get("sha256"))


@dataclass(frozen=True)
class DataInfo:
    calibration: DataSet
    evaluation: DataSet

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DataInfo:
        return cls(DataSet.from_json(d["calibration"]), DataSet.from_json(d["evaluation"]))


@dataclass(frozen=True)
class ModelInfo:
    arch: str
    num_classes: int
    input_shape: tuple[int, ...]
    source: str
    shortcut: str
    parameters: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelInfo:
        return cls(str(d["arch"]), int(d["num_classes"]), tuple(int(v) for v in d["input_shape"]), str(d["source"]),
                   str(d.get("shortcut", "")), int(d.get("parameters", 0)))


@dataclass(frozen=True)
class GateRow:
    """One INT8 row's verdict (``pipeline/verdict.py``) with its paired evidence: FP32 and INT8 on the same
    images. ``drop*`` in top-1 points (negative: INT8 scores higher), with its 95 % interval; ``failed``
    names the measures outside the gate ("drop", "agreement"); ``confusion_delta`` holds the cells of
    INT8's confusion matrix minus FP32's that moved, as (label, predicted, change)."""

    target: str
    precision: str
    simulated: bool
    status: str  # "passed" | "failed" | "unverified"
    reasons: tuple[str, ...]
    failed: tuple[str, ...]
    images: int
    drop: float
    drop_low: float
    drop_high: float
    agreement: float
    agreement_low: float
    agreement_high: float
    mcnemar_p: float
    fp32_only_correct: int  # McNemar's discordant pairs: images only FP32 gets right ...
    int8_only_correct: int  # ... and images only INT8 gets right
    disagreements: int  # images whose predicted class differs
    confusion_delta: tuple[tuple[int, int, int], ...] = ()

    @property
    def label(self) -> str:
        return f"{self.target} {self.precision}" + (" (sim)" if self.simulated else "")

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GateRow:
        return cls(str(d["target"]), str(d["precision"]), bool(d.get("simulated", False)), str(d["status"]),
                   tuple(str(r) for r in d.get("reasons", ())), tuple(str(f) for f in d.get("failed", ())),
                   int(d["images"]), float(d["drop"]), float(d["drop_low"]), float(d["drop_high"]),
                   float(d["agreement"]), float(d["agreement_low"]), float(d["agreement_high"]),
                   float(d["mcnemar_p"]), int(d["fp32_only_correct"]), int(d["int8_only_correct"]),
                   int(d["disagreements"]),
                   tuple((int(a), int(b), int(c)) for a, b, c in d.get("confusion_delta", ())))


@dataclass(frozen=True)
class Gate:
    """The accuracy verdict: "passed", "failed" (a row outside ``max_drop`` points or ``min_agreement``) or
    "unverified" (the evaluation cannot support a verdict), with the reasons and each INT8 row's evidence.
    ``passed`` is ``status == "passed"``; a report written before verdicts has only the first three fields."""

    max_drop: float
    passed: bool
    failures: tuple[str, ...] = ()
    status: str = ""  # empty: derived from ``passed``
    min_agreement: float | None = None
    unverified: tuple[str, ...] = ()
    rules: Mapping[str, float] = field(default_factory=dict)
    rows: tuple[GateRow, ...] = ()

    def __post_init__(self) -> None:
        if not self.status:
            object.__setattr__(self, "status", "passed" if self.passed else "failed")

    def row(self, target: str, precision: str, simulated: bool) -> GateRow | None:
        return next((r for r in self.rows if (r.target, r.precision, r.simulated) == (target, precision, simulated)),
                    None)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Gate:
        agreement = d.get("min_agreement")
        return cls(float(d["max_drop"]), bool(d["passed"]), tuple(str(f) for f in d.get("failures", ())),
                   str(d.get("status", "")), None if agreement is None else float(agreement),
                   tuple(str(r) for r in d.get("unverified", ())),
                   {str(k): float(v) for k, v in d.get("rules", {}).items()},
                   tuple(GateRow.from_json(r) for r in d.get("rows", ())))


@dataclass(frozen=True)
class Stage:
    name: str
    seconds: float
    peak_rss_mb: float

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Stage:
        return cls(str(d["name"]), float(d["seconds"]), float(d.get("peak_rss_mb", 0.0)))


@dataclass(frozen=True)
class Host:
    """The machine and software a build ran on: what its timings and its INT8 kernels depend on. Fields after
    ``python`` came later; reports written before them read with their defaults."""

    cpu: str
    platform: str
    python: str
    tool_version: str = ""  # resnet-deploy's
    isa: tuple[str, ...] = ()  # the instruction sets that decide the int8/bf16 kernels (AVX512-VNNI, AMX, ...)
    cores: int = 0  # logical CPUs this process may run on (its affinity: a container's share)
    logical_cpus: int = 0  # the machine's
    threads: int | None = None  # --threads given to the runtimes; None: each runtime's own default
    versions: Mapping[str, str] = field(default_factory=dict)  # the build's libraries and runtimes

    @classmethod
    def of_this_machine(cls, *, threads: int | None, versions: Mapping[str, str]) -> Host:
        import os
        import platform
        import sys

        from resnet_deploy import __version__, host

        return cls(host.cpu_name(), platform.platform(), sys.version.split()[0], __version__, host.isa(),
                   host.usable_cores(), os.cpu_count() or 0, threads, dict(versions))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Host:
        threads = d.get("threads")
        return cls(str(d.get("cpu", "")), str(d.get("platform", "")), str(d.get("python", "")),
                   str(d.get("tool_version", "")), tuple(str(v) for v in d.get("isa") or ()), int(d.get("cores") or 0),
                   int(d.get("logical_cpus") or 0), None if threads is None else int(threads),
                   {str(k): str(v) for k, v in (d.get("versions") or {}).items()})


@dataclass(frozen=True)
class Report:
    """``report.json``: what was built, from what, how well it does, and how long it took."""

    status: str  # "passed" | "failed" | "unverified" (the gate's)
    created: str
    model: ModelInfo
    preprocessing: Mapping[str, Any]
    data: DataInfo
    reference: Reference
    results: tuple[ResultRow, ...]
    gate: Gate
    checks: Mapping[str, Mapping[str, Any]]
    stages: tuple[Stage, ...]
    commands: Mapping[str, str]
    host: Host
    wall_seconds: float
    artifacts: tuple[Artifact, ...]
    schema: str = SCHEMA
    # The per-layer analysis the mixed-precision fallback ranked layers by (absent when no row needed it).
    sensitivity: Sensitivity | None = field(default=None, metadata={"omit_empty": True})

    def to_json(self) -> dict[str, Any]:
        out = to_json(self)
        return {"schema": out.pop("schema"), **out}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Report:
        return cls(str(d["status"]), str(d.get("created", "")), ModelInfo.from_json(d["model"]),
                   dict(d.get("preprocessing", {})), DataInfo.from_json(d["data"]),
                   Reference.from_json(d["reference"]), tuple(ResultRow.from_json(r) for r in d.get("results", ())),
                   Gate.from_json(d["gate"]), dict(d.get("checks", {})),
                   tuple(Stage.from_json(s) for s in d.get("stages", ())), dict(d.get("commands", {})),
                   Host.from_json(d.get("host", {})), float(d.get("wall_seconds", 0.0)),
                   tuple(Artifact.from_dict(a) for a in d.get("artifacts", ())), str(d.get("schema", SCHEMA)),
                   sensitivity=Sensitivity.from_json(d["sensitivity"]) if d.get("sensitivity") else None)
