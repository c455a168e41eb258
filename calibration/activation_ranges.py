"""Per-tensor activation ranges (amax) of an ONNX model over calibration images, without torch.

ONNX Runtime runs the FP32 graph with every float intermediate tensor exposed as an output; amax,
the clipping value of symmetric INT8 (scale = amax / 127), comes from one of three rules:

- ``max``: the largest |x| seen. Nothing is clipped, so one outlier pixel widens the step for all.
- ``percentile``: the 99.99th percentile of |x| (a 2048-bin histogram), clipping the rarest values.
- ``entropy``: TensorRT's own calibrator (IInt8EntropyCalibrator2): the clip whose 128-level
  histogram keeps the most information (least KL divergence from the FP32 histogram), as NVIDIA's
  pytorch-quantization reimplements it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from resnet_deploy.errors import ConfigError

METHODS = ("max", "percentile", "entropy")
HIST_BINS = 2048
QUANT_BINS = 128  # positive INT8 levels the entropy rule folds the histogram into
MIN_AMAX = 1e-6  # an all-zero tensor still needs a positive scale; its value does not matter


def float_tensors(model) -> list[str]:
    """The graph inputs and every node output whose type is float32, in graph order."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.value_info, *g.output)}
    initializers = {t.name for t in g.initializer}
    names = [i.name for i in g.input if i.name not in initializers]
    names += [o for n in g.node for o in n.output if o and n.op_type not in ("Constant", "Identity")]
    return [n for n in dict.fromkeys(names) if types.get(n) == onnx.TensorProto.FLOAT]


def _session(model, outputs: list[str]):
    """An ONNX Runtime session over ``model`` that returns ``outputs``."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in outputs:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _batches(calibration: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    for start in range(0, len(calibration), batch_size):
        yield np.ascontiguousarray(calibration[start:start + batch_size], dtype=np.float32)


def activation_amax(onnx_path: Path, calibration: np.ndarray, *, method: str = "max",
                    tensors: list[str] | None = None, percentile: float = 99.99,
                    batch_size: int = 8) -> dict[str, float]:
    """tensor name -> amax over ``calibration`` (float32 NCHW) for ``tensors`` (default: every float tensor)."""
    import onnx

    if method not in METHODS:
        raise ConfigError(f"Unknown calibration method {method!r}; choose one of {', '.join(METHODS)}.")
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile must lie in (0, 100], got {percentile}.")
    if len(calibration) == 0:
        raise ConfigError("Calibration needs at least one image.")
    model = onnx.load(str(onnx_path))
    names = float_tensors(model) if tensors is None else list(dict.fromkeys(tensors))
    session = _session(model, names)
    input_name = session.get_inputs()[0].name

    top = dict.fromkeys(names, 0.0)
    for batch in _batches(calibration, batch_size):
        for name, value in zip(names, session.run(names, {input_name: batch})):
            top[name] = max(top[name], float(np.abs(value).max(initial=0.0)))
    if method == "max":
        return {n: max(v, MIN_AMAX) for n, v in top.items()}

    hists = {n: np.zeros(HIST_BINS, dtype=np.int64) for n in names}
    for batch in _batches(calibration, batch_size):
        for name, value in zip(names, session.run(names, {input_name: batch})):
            if top[name] > 0:
                idx = np.minimum((np.abs(value) * (HIST_BINS / top[name])).astype(np.int64), HIST_BINS - 1)
                hists[name] += np.bincount(idx.ravel(), minlength=HIST_BINS)
    pick = (lambda h, t: percentile_amax(h, t, percentile)) if method == "percentile" else entropy_amax
    return {n: max(pick(hists[n], top[n]) if top[n] > 0 else 0.0, MIN_AMAX) for n in names}


def percentile_amax(hist: np.ndarray, top: float, percentile: float) -> float:
    """The upper edge of the bin where the cumulative count of |x| reaches ``percentile`` %."""
    cdf = np.cumsum(hist, dtype=np.float64)
    i = int(np.searchsorted(cdf, cdf[-1] * percentile / 100.0))
    return float(min(i + 1, len(hist)) * top / len(hist))


def entropy_amax(hist: np.ndarray, top: float, *, start: int = QUANT_BINS) -> float:
    """The clip (a bin edge) minimising KL(P || Q), P the histogram clipped there, Q it folded to 128 levels.

    As pytorch-quantization's ``_compute_amax_entropy``: the zero bin takes the count of its neighbour
    first, or the zeros every ReLU output is full of would drag the clip far too low.
    """
    hist = hist.astype(np.float64)
    hist[0] = hist[1]
    n = len(hist)
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    best_i, best = n, np.inf
    for i in range(start, n + 1):
        p = hist[:i].copy()
        p[-1] += tail[i]  # values beyond the clip saturate into the last level
        nonzero = hist[:i] > 0
        level = (np.arange(i) * QUANT_BINS) // i
        level_sum = np.bincount(level, weights=hist[:i], minlength=QUANT_BINS)
        level_nonzero = np.bincount(level, weights=nonzero, minlength=QUANT_BINS)
        q = np.where(nonzero, (level_sum / np.maximum(level_nonzero, 1.0))[level], 0.0)
        if q.sum() == 0 or p.sum() == 0:
            continue
        p /= p.sum()
        q /= q.sum()
        mask = p > 0
        if np.any(q[mask] == 0):
            continue  # Q cannot represent mass P has: infinite divergence
        divergence = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if divergence <= best:  # ties go to the wider clip, as the reference does
            best, best_i = divergence, i
    return float(best_i * top / n)
