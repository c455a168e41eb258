"""The typed records a build hands between modules and writes as ``report.json``.

One home for their JSON form: ``to_json`` turns any of them into plain data, and each record's
``from_json`` reads it back explicitly (no type-hint evaluation, so the device side reads reports on
Python 3.8). The field names are the report.json keys, so bundles written before these types read alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

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
    return obj


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
class ResultRow:
    """One artifact validated on the evaluation images: accuracy against labels and the FP32 reference,
    latency at ``batch``, size. ``sample_top1`` is top-1 on the images the bundle carries (for ``bench``)."""

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
    throughput_ips: float
    latency_ms: Latency
    artifact: str
    bytes: int
    sample_top1: float
    samples_ms: tuple[float, ...] = ()  # every timed call (up to 1000), for the HTML report's plots
    details: Mapping[str, Any] = _omit_empty(dict)
    note: str = _omit_empty("")

    @property
    def label(self) -> str:
        return f"{self.target} {self.precision}" + (" (sim)" if self.simulated else "")

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ResultRow:
        agreement = d.get("agreement")
        return cls(str(d["target"]), str(d["precision"]), str(d["runtime"]), bool(d.get("simulated", False)),
                   str(d.get("runner", "")), float(d["top1"]), tuple(float(v) for v in d.get("per_class_top1", ())),
                   None if agreement is None else float(agreement), int(d.get("batch", 1)),
                   int(d.get("iterations", 0)), float(d.get("throughput_ips", 0.0)),
                   Latency.from_json(d["latency_ms"]), str(d["artifact"]), int(d.get("bytes", 0)),
                   float(d.get("sample_top1", 0.0)), tuple(float(v) for v in d.get("samples_ms", ())),
                   dict(d.get("details", {})), str(d.get("note", "")))


@dataclass(frozen=True)
class Reference:
    """The PyTorch FP32 model on the evaluation images: what every row is compared with."""

    framework: str
    precision: str
    top1: float
    per_class_top1: tuple[float, ...]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Reference:
        return cls(str(d["framework"]), str(d["precision"]), float(d["top1"]),
                   tuple(float(v) for v in d.get("per_class_top1", ())))


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
class Gate:
    """The accuracy verdict: every INT8 row within ``max_drop`` points of the reference."""

    max_drop: float
    passed: bool
    failures: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Gate:
        return cls(float(d["max_drop"]), bool(d["passed"]), tuple(str(f) for f in d.get("failures", ())))


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
    cpu: str
    platform: str
    python: str

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Host:
        return cls(str(d.get("cpu", "")), str(d.get("platform", "")), str(d.get("python", "")))


@dataclass(frozen=True)
class Report:
    """``report.json``: what was built, from what, how well it does, and how long it took."""

    status: str  # "passed" | "failed"
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
                   tuple(Artifact.from_dict(a) for a in d.get("artifacts", ())), str(d.get("schema", SCHEMA)))
