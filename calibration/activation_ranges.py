"""Per-tensor activation ranges (amax) of an ONNX model over calibration images, without torch.

The caller's ONNX executor runs the FP32 graph with every float intermediate exposed as an output. amax, the clip of
symmetric INT8 (scale = amax / 127), by three rules, since each trades clipping against step size:
- ``max``: the largest |x|; clips nothing, so one outlier pixel widens the step for all;
- ``percentile``: the 99.99th percentile of |x| (2048-bin histogram), clipping the rarest values;
- ``entropy``: TensorRT's IInt8EntropyCalibrator2 rule (least KL divergence over 128 levels), as
  pytorch-quantization reimplements it;
- ``mse``: the clip with the least mean squared error of INT8 over the histogram (pytorch-quantization's
  and ModelOpt's "mse" calibrator).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from resnet_deploy.errors import ConfigError

SessionFactory = Callable[[bytes], Any]  # ONNX model bytes -> an InferenceSession-like executor

METHODS = ("max", "percentile", "entropy", "mse")
# No one rule wins everywhere. Measured here (top-1 agreement with FP32 of the Q/DQ model):
# - CIFAR-10 ResNet-20 (68% top-1; 300 calibration, 1,000 test images): entropy 98.8%, percentile 98.6%,
#   max 97.9%;
# - the embedded Fashion-MNIST ResNet-20 (93.9%; 300 calibration, 3,000 test images): entropy 94.5%
#   (-2.8 points top-1), percentile 99.5%, max 99.4% (-0.1 points).
# - a CIFAR-10 ResNeXt-50 at 32 px (58 % top-1; 512 calibration, 1,000 test images, the Q/DQ graph): mse
#   97.3 %, percentile 96.8 %, max 96.1 %, entropy 95.6 % (benchmarks/results/int8_agreement_cifar.md).
# So the default ("auto", in qdq.py) computes every rule from one pass of statistics and keeps the one
# whose Q/DQ model agrees best with FP32 on the calibration images (never the evaluation images).
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


def with_outputs(model, outputs: list[str]) -> bytes:
    """``model`` serialised with ``outputs`` added as graph outputs, so one run returns them all."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in outputs:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return probe.SerializeToString()


def _batches(calibration: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    for start in range(0, len(calibration), batch_size):
        yield np.ascontiguousarray(calibration[start:start + batch_size], dtype=np.float32)


def activation_amax_by_method(onnx_path: Path, calibration: np.ndarray, *, session: SessionFactory,
                              methods: Iterable[str] = METHODS, tensors: list[str] | None = None,
                              percentile: float = 99.99, batch_size: int = 8) -> dict[str, dict[str, float]]:
    """method -> (tensor name -> amax), every method from one pass of statistics over ``calibration``.

    ``session(model_bytes)`` is the ONNX executor (an ``InferenceSession``-like object with
    ``get_inputs()`` and ``run(outputs, feeds)``): the caller's runtime, not named here."""
    import onnx

    methods = tuple(methods)
    for method in methods:
        if method not in METHODS:
            raise ConfigError(f"Unknown calibration method {method!r}; choose one of {', '.join(METHODS)}.")
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile must lie in (0, 100], got {percentile}.")
    if len(calibration) == 0:
        raise ConfigError("Calibration needs at least one image.")
    model = onnx.load(str(onnx_path))
    names = float_tensors(model) if tensors is None else list(dict.fromkeys(tensors))
    runner = session(with_outputs(model, names))
    input_name = runner.get_inputs()[0].name

    top = dict.fromkeys(names, 0.0)
    for batch in _batches(calibration, batch_size):
        for name, value in zip(names, runner.run(names, {input_name: batch})):
            top[name] = max(top[name], float(np.abs(value).max(initial=0.0)))
    out: dict[str, dict[str, float]] = {}
    if "max" in methods:
        out["max"] = {n: max(v, MIN_AMAX) for n, v in top.items()}
    rules = {"percentile": lambda h, t: percentile_amax(h, t, percentile), "entropy": entropy_amax, "mse": mse_amax}
    wanted = [m for m in methods if m in rules]
    if wanted:
        hists = {n: np.zeros(HIST_BINS, dtype=np.int64) for n in names}
        for batch in _batches(calibration, batch_size):
            for name, value in zip(names, runner.run(names, {input_name: batch})):
                if top[name] > 0:
                    idx = np.minimum((np.abs(value) * (HIST_BINS / top[name])).astype(np.int64), HIST_BINS - 1)
                    hists[name] += np.bincount(idx.ravel(), minlength=HIST_BINS)
        for m in wanted:
            out[m] = {n: max(rules[m](hists[n], top[n]) if top[n] > 0 else 0.0, MIN_AMAX) for n in names}
    return out


def percentile_amax(hist: np.ndarray, top: float, percentile: float) -> float:
    """The upper edge of the bin where the cumulative count of |x| reaches ``percentile`` %."""
    cdf = np.cumsum(hist, dtype=np.float64)
    i = int(np.searchsorted(cdf, cdf[-1] * percentile / 100.0))
    return float(min(i + 1, len(hist)) * top / len(hist))


def mse_amax(hist: np.ndarray, top: float, *, start: int = QUANT_BINS) -> float:
    """The clip (a bin centre) minimising the mean squared error of symmetric INT8 (127 levels a side) over the
    histogram, each bin's count at its centre: pytorch-quantization's ``_compute_amax_mse``, first minimum."""
    width = top / len(hist)
    centres = (np.arange(len(hist)) + 0.5) * width
    filled = hist > 0
    x, counts = centres[filled], hist[filled].astype(np.float64)
    if not len(x):
        return float(top)
    clips = centres[start:]
    errors = np.empty(len(clips))
    for lo in range(0, len(clips), 256):  # 256 clips x the filled bins at a time: bounded memory
        c = clips[lo:lo + 256, None]
        step = c / 127.0
        q = np.clip(np.round(x[None, :] / step), -127, 127) * step
        errors[lo:lo + 256] = (counts * (q - x) ** 2).sum(1)
    return float(clips[int(np.argmin(errors))])


def entropy_amax(hist: np.ndarray, top: float, *, start: int = QUANT_BINS) -> float:
    """The clip (a bin edge) minimising KL(P || Q), P the histogram clipped there, Q it folded to 128 levels.

    As pytorch-quantization's ``_compute_amax_entropy``: the zero bin takes the count of its neighbour
    first, or the zeros every ReLU output is full of would drag the clip far too low.
    """
    hist = hist.astype(np.float64)
    hist[0] = hist[1]
    clips = np.arange(start, len(hist) + 1)
    divergence = _entropy_divergences(hist, clips)
    finite = np.isfinite(divergence)
    if not finite.any():
        return float(top)
    # Ties go to the wider clip, as the reference does; "tie" allows for rounding (1e-12), since the
    # closed form and the loop sum in different orders (e.g. several clips with zero divergence).
    best = divergence[finite].min()
    best_i = int(clips[np.nonzero(divergence <= best + 1e-12 * max(1.0, abs(best)))[0][-1]])
    return float(best_i * top / len(hist))



def _entropy_divergences(hist: np.ndarray, clips: np.ndarray) -> np.ndarray:
    """KL(P_i || Q_i) for every clip i at once, in O(128) per clip from cumulative sums.

    P_i: the histogram cut at i, the tail beyond it added to bin i-1, over S = the total count.
    Q_i: bins [0, i) folded into 128 levels, each level's count spread evenly over its non-empty bins,
    over C_i = the count below i. Level l holds bins [ceil(l*i/128), ceil((l+1)*i/128)). Expanding
    sum p log(p/q) over the non-empty bins gives sums the cumulative arrays below answer directly;
    the result equals the bin-by-bin loop of pytorch-quantization's ``_compute_amax_entropy``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        hlogh = np.where(hist > 0, hist * np.log(np.where(hist > 0, hist, 1.0)), 0.0)
    cs = np.concatenate([[0.0], np.cumsum(hist)])
    cnz = np.concatenate([[0.0], np.cumsum(hist > 0)])
    chl = np.concatenate([[0.0], np.cumsum(hlogh)])
    total = cs[-1]
    i = clips.astype(np.int64)
    last = hist[i - 1]
    tail = total - cs[i]
    below = cs[i]  # C_i
    edges = -(-(np.arange(QUANT_BINS + 1)[None, :] * i[:, None]) // QUANT_BINS)
    level_sum = np.diff(cs[edges], axis=1)
    level_nz = np.diff(cnz[edges], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_v = np.where(level_nz > 0, np.log(level_sum / np.maximum(level_nz, 1.0)), 0.0)
        log_ratio = np.log(below) - np.log(total)  # log C_i - log S
        # bins j < i-1: sum h_j (log h_j - log v_l(j)) + (log C_i - log S) * sum h_j, over S
        inner_sum = cs[i - 1]
        inner = chl[i - 1] - (log_v * level_sum).sum(1) + last * log_v[:, -1] + log_ratio * inner_sum
        # bin i-1 carries the tail: (h + T)(log(h + T) - log v_127 + log C_i - log S)
        carried = last + tail
        log_carried = np.log(np.where(carried > 0, carried, 1.0))
        edge = np.where(carried > 0, carried * (log_carried - log_v[:, -1] + log_ratio), 0.0)
        out = (inner + edge) / total
    invalid = (below == 0) | (total == 0) | ((last == 0) & (tail > 0))  # Q cannot hold mass P has
    out[invalid] = np.inf
    return out
