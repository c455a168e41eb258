"""The histogram rules equal their bin-by-bin references (pytorch-quantization's loops)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resnet_deploy.calibration.activation_ranges import HIST_BINS, QUANT_BINS, entropy_amax, mse_amax


def reference_entropy_amax(hist: np.ndarray, top: float) -> float:
    hist = hist.astype(np.float64)
    hist[0] = hist[1]
    n = len(hist)
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])
    best_i, best = n, np.inf
    for i in range(QUANT_BINS, n + 1):
        p = hist[:i].copy()
        p[-1] += tail[i]
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
            continue
        d = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if d <= best:
            best, best_i = d, i
    return float(best_i * top / n)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), power=st.floats(0.3, 3.0), zeros=st.floats(0.0, 0.9),
       gaps=st.booleans(), cut=st.floats(0.05, 1.0))
def test_closed_form_entropy_equals_the_reference_loop(seed, power, zeros, gaps, cut):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_normal(20_000)) ** power
    x[: int(zeros * len(x))] = 0.0  # ReLU zeros
    if gaps:
        x = np.round(x * 4) / 4  # a histogram with empty bins between full ones
    x = x[x <= np.quantile(x, cut)] if cut < 1 else x
    top = float(x.max())
    if top <= 0:
        return
    hist = np.bincount(np.minimum((x / top * HIST_BINS).astype(int), HIST_BINS - 1), minlength=HIST_BINS)
    assert entropy_amax(hist, top) == reference_entropy_amax(hist, top)


def reference_mse_amax(hist: np.ndarray, top: float) -> float:
    """pytorch-quantization's ``_compute_amax_mse``: every bin centre from bin 128 on, symmetric 8-bit
    (``fake_tensor_quant``, 127 levels a side), the first least mean squared error."""
    edges = np.linspace(0.0, top, len(hist) + 1)
    centres = (edges[1:] + edges[:-1]) / 2
    errors = []
    for i in range(QUANT_BINS, len(centres)):
        scale = 127.0 / centres[i]
        quantized = np.clip(np.round(centres * scale), -127, 127) / scale
        errors.append(((quantized - centres) ** 2 * hist).mean())
    return float(centres[QUANT_BINS + int(np.argmin(errors))])


def relu_histogram(seed: int, power: float, zeros: float, outliers: int, n: int = 20_000) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_normal(n)) ** power
    x[: int(zeros * len(x))] = 0.0
    x[len(x) - outliers:] *= 20  # a few large values: the clip has something to trade
    top = float(x.max())
    return np.bincount(np.minimum((x / top * HIST_BINS).astype(int), HIST_BINS - 1), minlength=HIST_BINS), top


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), power=st.floats(0.3, 3.0), zeros=st.floats(0.0, 0.9),
       outliers=st.integers(0, 20))
def test_mse_equals_the_reference_loop(seed, power, zeros, outliers):
    hist, top = relu_histogram(seed, power, zeros, outliers)
    assert mse_amax(hist, top) == pytest.approx(reference_mse_amax(hist, top), rel=1e-12)


def test_mse_clips_rare_outliers_and_keeps_a_bulk_without_them():
    """An activation tensor over a calibration set holds millions of values: there ten 20x outliers are not
    worth a 20x coarser step for all the rest, while the bulk's own tail is kept."""
    hist, top = relu_histogram(0, 1.0, 0.5, 10, n=2_000_000)
    assert mse_amax(hist, top) < 0.3 * top
    bulk, bulk_top = relu_histogram(0, 1.0, 0.5, 0, n=2_000_000)
    assert mse_amax(bulk, bulk_top) > 0.6 * bulk_top
