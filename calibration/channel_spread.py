"""How unevenly each activation tensor's channels run: why a model's INT8 may miss the gate whatever is tried.

Every target's runtime (TensorRT, OpenVINO, ONNX Runtime) gives each activation tensor one INT8 scale (weights
get one per channel). When a few channels of a tensor peak 30x or more above its median channel, that one scale
either clips the loud channels or rounds most values of the quiet ones to 0; no range rule or calibration set
fixes it. Per tensor: the median channel's peak over the tensor's (rule-independent), and under the ranges
given, the shares of non-zero values that round to 0 and that are clipped. A CIFAR SE-ResNeXt-50 that misses
at 91-94 % has 14 such tensors, a ResNeXt-50 that passes none (benchmarks/results/int8_agreement_cifar.md).
The sensitivity analysis records them; the fallback and a failed build name them when keeping layers in float
is not enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from resnet_deploy.calibration.activation_ranges import SessionFactory, with_outputs

MAX_IMAGES = 32  # images per measurement: shares over millions of values
_CHUNK = 4  # images per run: every activation of the network is an output at once
UNEVEN = 1 / 30  # the median channel peaking below this share of the tensor's peak: no one scale serves both


@dataclass(frozen=True)
class ActivationSpread:
    """One quantized activation tensor, and what its INT8 range (``amax``: symmetric, 127 steps) does to it."""

    tensor: str
    amax: float
    median_channel_range: float  # the median live channel's peak |value| over the tensor's peak (1: even channels)
    rounded_to_zero: float  # share of its non-zero values below half a step
    clipped: float  # share of its non-zero values beyond amax

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ActivationSpread:
        return cls(str(d["tensor"]), float(d["amax"]), float(d["median_channel_range"]), float(d["rounded_to_zero"]),
                   float(d["clipped"]))


def activation_spread(model: Any, amax: Mapping[str, float], images: np.ndarray, *,
                      session: SessionFactory) -> list[ActivationSpread]:
    """Per tensor in ``amax`` (an activation of the ONNX ``model`` -> its INT8 range), measured on ``images`` by
    ``session`` (the caller's ONNX executor): the most uneven first."""
    names = sorted(amax)
    if not names or len(images) == 0:
        return []
    runner = session(with_outputs(model, names))
    feed = runner.get_inputs()[0].name
    counts = {name: np.zeros(3, np.int64) for name in names}  # non-zero, rounded to 0, clipped
    peaks: dict[str, np.ndarray] = {}
    for start in range(0, min(len(images), MAX_IMAGES), _CHUNK):
        batch = np.ascontiguousarray(images[start:start + _CHUNK], dtype=np.float32)
        for name, value in zip(names, runner.run(names, {feed: batch})):
            a = np.abs(np.asarray(value, dtype=np.float32))
            counts[name] += (np.count_nonzero(a), np.count_nonzero((a > 0) & (a < amax[name] / 254)),
                             np.count_nonzero(a > amax[name]))
            per_channel = a.max(axis=tuple(i for i in range(a.ndim) if i != 1)) if a.ndim > 1 else a
            peaks[name] = np.maximum(peaks[name], per_channel) if name in peaks else per_channel
    rows = []
    for name in names:
        nonzero, rounded, clipped = (int(c) for c in counts[name])
        live = peaks[name][peaks[name] > 0]  # a channel that is always 0 (a dead ReLU) loses nothing to rounding
        spread = float(np.median(live)) / float(live.max()) if live.size else 1.0
        rows.append(ActivationSpread(name, round(float(amax[name]), 4), round(spread, 4),
                                     round(rounded / nonzero, 4) if nonzero else 0.0,
                                     round(clipped / nonzero, 4) if nonzero else 0.0))
    return sorted(rows, key=lambda r: (r.median_channel_range, r.tensor))


def uneven(rows: Sequence[ActivationSpread]) -> list[ActivationSpread]:
    return [r for r in rows if r.median_channel_range < UNEVEN]


def diagnosis(rows: Sequence[ActivationSpread]) -> str:
    """One sentence for a report when INT8 misses the gate: whether one scale per tensor explains it."""
    if not rows:
        return ""
    bad = uneven(rows)
    if not bad:
        return (f"Every activation's channels are within {1 / UNEVEN:.0f}x of each other (the most uneven, "
                f"{rows[0].tensor}: median channel at {rows[0].median_channel_range:.3f} of its peak): one INT8 scale "
                "per tensor is not what misses.")
    worst = bad[0]
    return (f"{len(bad)} activation tensor(s) have channels {1 / UNEVEN:.0f}x or more apart (the most uneven, "
            f"{worst.tensor}: median channel at {worst.median_channel_range:.3f} of its peak; with its range "
            f"{worst.rounded_to_zero * 100:.0f} % of its non-zero values round to 0 and {worst.clipped * 100:.0f} % "
            "are clipped): one INT8 scale per activation tensor (all that any target's runtime offers) either clips "
            "the loud channels or rounds the quiet ones away, and no range rule or calibration set fixes that. Where "
            "keeping layers in float does not either, quantization-aware fine-tuning (`resnet-deploy train --init-from "
            "MODEL --int8-aware 1`) or this model in float is the way.")
