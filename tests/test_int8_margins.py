"""benchmarks/int8_margins.py: agreement per FP32 top-2 margin decile, and the noise that decides a flip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import script_module

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def margins():
    with script_module(BENCHMARKS / "int8_margins.py") as module:
        yield module


def test_flips_sit_in_the_small_margin_deciles_and_a_common_shift_is_no_noise(margins) -> None:
    rng = np.random.default_rng(0)
    fp32 = rng.normal(0, 2, size=(2000, 10)).astype(np.float32)
    noise = rng.normal(0, 0.05, size=fp32.shape).astype(np.float32)
    int8 = fp32 + noise + 3.0  # a shift of every logit changes no label and is not counted as noise
    labels = fp32.argmax(1)
    out = margins.analyse(fp32, int8, labels)

    assert out["images"] == 2000 and out["fp32_top1"] == 1.0
    assert sum(d["images"] for d in out["deciles"]) == 2000
    first, rest = out["deciles"][0], out["deciles"][1:]
    assert first["agreement"] < 1.0  # the flips are among the closest calls...
    assert all(d["agreement"] == 1.0 for d in rest[2:])  # ...and none where the margin is wide
    # the deciding difference moves by two independent N(0, 0.05): median |.| = 0.6745 * 0.05 * sqrt(2)
    assert out["deciding_noise_median_abs"] == pytest.approx(0.6745 * 0.05 * np.sqrt(2), rel=0.1)
    assert out["per_image_noise_rms_p50_p99"][0] == pytest.approx(0.05, rel=0.15)
    # agreement follows from the flips counted per decile
    flips = sum(d["images"] * (1 - d["agreement"]) for d in out["deciles"])
    assert out["agreement"] == pytest.approx(1 - flips / 2000, abs=1e-3)
