"""Per-layer INT8 sensitivity: how much each layer's quantization costs, on one reference simulation.

The reference is the Q/DQ graph of ``qdq.py`` (symmetric INT8, per-channel weights) run by the caller's
ONNX executor on calibration images. Each layer in turn is left in float while every other stays INT8
("float one out"), because that is exactly what the mixed-precision fallback does to a failing model:
the recovery it measures is the recovery the fallback gets, interactions with the other quantized
layers included. Figures: top-1 agreement with FP32 and the output SQNR (dB) of each variant.

The residual Adds' shortcuts are one entry, kept in float together: each shortcut's quantization error rides
the residual stream through every later block, so one alone recovers little (at most +0.08 dB on a CIFAR
ResNeXt-50) and all of them much (+1.3 dB, agreement 97.3 -> 98.2 %; benchmarks/results/int8_agreement_cifar.md).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from resnet_deploy.calibration.activation_ranges import METHODS, SessionFactory
from resnet_deploy.calibration.channel_spread import ActivationSpread, activation_spread
from resnet_deploy.calibration.qdq import AUTO, cached_ranges, insert_qdq, keep_float, plan_qdq, quantizable_layers
from resnet_deploy.errors import ConfigError

REFERENCE = "Q/DQ graph of calibration/qdq.py (symmetric INT8, per-channel weights), run by the ONNX executor"
MAX_IMAGES = 128  # calibration images per variant: enough to rank layers by SQNR, seconds for a ResNet-20
MAX_SQNR_DB = 200.0  # a variant equal to FP32 (no error at all); report.json holds no infinities
SHORTCUTS = "residual shortcuts"  # the entry of every residual Add together
_CHUNK = 64


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer left in float, every other layer INT8: agreement with FP32, output SQNR, and the SQNR
    gained over the all-INT8 graph (what keeping this layer in float recovers)."""

    layer: str  # ONNX node name; for a group, what it is (``SHORTCUTS``)
    op: str
    agreement: float
    sqnr_db: float
    gain_db: float
    members: tuple[str, ...] = field(default=(), metadata={"omit_empty": True})  # a group's ONNX node names

    @property
    def label(self) -> str:
        """How a report shows it: the node name, or a group with its size ("residual shortcuts (9 Add)")."""
        return f"{self.layer} ({len(self.members)} {self.op})" if self.members else self.layer

    @property
    def names(self) -> tuple[str, ...]:
        """The ONNX node names this entry keeps in float."""
        return self.members or (self.layer,)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LayerSensitivity:
        return cls(str(d["layer"]), str(d.get("op", "")), float(d["agreement"]), float(d["sqnr_db"]),
                   float(d["gain_db"]), tuple(str(n) for n in d.get("members", ())))


@dataclass(frozen=True)
class Sensitivity:
    """The analysis: the all-INT8 graph's figures and one entry per quantized layer, most sensitive first."""

    reference: str
    method: str  # the amax rule of the reference Q/DQ graph
    images: int
    int8_agreement: float
    int8_sqnr_db: float
    layers: tuple[LayerSensitivity, ...]
    seconds: float
    spread: tuple[ActivationSpread, ...] = field(default=(), metadata={"omit_empty": True})  # channel_spread.py

    def ranked(self) -> list[tuple[str, ...]]:
        """The entries' ONNX node names (one layer, or a group), the one whose float copy recovers most first."""
        return [s.names for s in self.layers]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Sensitivity:
        return cls(str(d.get("reference", "")), str(d.get("method", "")), int(d.get("images", 0)),
                   float(d["int8_agreement"]), float(d["int8_sqnr_db"]),
                   tuple(LayerSensitivity.from_json(x) for x in d.get("layers", ())), float(d.get("seconds", 0.0)),
                   tuple(ActivationSpread.from_json(x) for x in d.get("spread", ())))


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """10 log10(signal power / error power) over every output value; capped at ``MAX_SQNR_DB``."""
    signal = float(np.square(reference, dtype=np.float64).sum())
    noise = float(np.square(reference.astype(np.float64) - approx).sum())
    if noise <= 0.0 or signal <= 0.0:
        return MAX_SQNR_DB if noise <= 0.0 else -MAX_SQNR_DB
    return round(min(MAX_SQNR_DB, 10.0 * math.log10(signal / noise)), 3)


def _logits(session: SessionFactory, model_bytes: bytes, images: np.ndarray) -> np.ndarray:
    runner = session(model_bytes)
    name = runner.get_inputs()[0].name
    return np.concatenate([runner.run(None, {name: np.ascontiguousarray(images[i:i + _CHUNK])})[0]
                           for i in range(0, len(images), _CHUNK)])


def analyse(fp32_onnx: Path, calibration: np.ndarray, *, session: SessionFactory, method: str = AUTO,
            max_images: int = MAX_IMAGES) -> Sensitivity:
    """Rank the quantized layers of ``fp32_onnx`` by the SQNR their float copy recovers, on ``calibration``.

    Activation ranges come from ``calibration`` once (``qdq.cached_ranges``); ``method`` "auto" keeps the amax
    rule whose all-INT8 graph agrees best with FP32 (then the higher SQNR), as the Q/DQ writer does.
    """
    import onnx

    started = time.perf_counter()
    if method != AUTO and method not in METHODS:
        raise ConfigError(f"Unknown calibration method {method!r}; choose auto or one of {', '.join(METHODS)}.")
    if len(calibration) == 0:
        raise ConfigError("The sensitivity analysis needs at least one calibration image.")
    model = onnx.load(str(fp32_onnx))
    plan = plan_qdq(model.graph)
    ranges = cached_ranges(fp32_onnx, model, calibration, session=session,
                           methods=METHODS if method == AUTO else (method,))
    images = calibration[:max_images]
    fp32 = _logits(session, model.SerializeToString(), images)
    top1 = fp32.argmax(1)

    def variant(table: dict[str, float], floats: list[str]) -> tuple[float, float]:
        candidate = copy.deepcopy(model)
        insert_qdq(candidate, keep_float(plan, model.graph, floats), table)
        out = _logits(session, candidate.SerializeToString(), images)
        return round(float((out.argmax(1) == top1).mean()), 6), sqnr_db(fp32, out)

    scored = {name: variant(table, []) for name, table in ranges.items()}
    chosen = max(scored, key=lambda n: scored[n])  # agreement first, then SQNR
    base_agreement, base_sqnr = scored[chosen]
    ops = {n.name: n.op_type for n in model.graph.node}
    candidates = quantizable_layers(model.graph)
    shortcuts = tuple(name for name in candidates if ops[name] == "Add")
    entries: list[tuple[str, tuple[str, ...]]] = [(name, ()) for name in candidates]
    if len(shortcuts) > 1:  # one entry for all of them: each alone recovers little (module docstring)
        entries = [(name, ()) for name in candidates if name not in shortcuts] + [(SHORTCUTS, shortcuts)]
    layers = []
    for name, members in entries:
        agreement, sqnr = variant(ranges[chosen], list(members or (name,)))
        layers.append(LayerSensitivity(name, "Add" if members else ops[name], agreement, sqnr,
                                       round(sqnr - base_sqnr, 3), members))
    layers.sort(key=lambda s: (-s.gain_db, -s.agreement, s.layer))
    spread = activation_spread(model, {t: ranges[chosen][t] for t in plan.activations}, images, session=session)
    return Sensitivity(REFERENCE, chosen, len(images), base_agreement, base_sqnr, tuple(layers),
                       round(time.perf_counter() - started, 3), tuple(spread))
