"""The shared latency harness and the accuracy gate: pure logic, no timing assertions."""

from __future__ import annotations

import numpy as np
import pytest

from resnet_deploy.pipeline.evaluate import score
from resnet_deploy.pipeline.latency import LatencySettings, LatencyStats, measure
from resnet_deploy.pipeline.predictions import Predictions, RowPredictions
from resnet_deploy.pipeline.records import (
    DataInfo,
    DataSet,
    Gate,
    Host,
    Latency,
    ModelInfo,
    Reference,
    Report,
    ResultRow,
)
from resnet_deploy.pipeline.report import gate, render_markdown


def test_percentiles_from_known_times():
    stats = LatencyStats.from_times(np.arange(1, 101) / 1000.0, batch=4)  # 1..100 ms
    assert stats.p50 == pytest.approx(50.5) and stats.p90 == pytest.approx(90.1) and stats.p99 == pytest.approx(99.01)
    assert stats.min == pytest.approx(1.0) and stats.mean == pytest.approx(50.5)
    assert stats.throughput_ips == pytest.approx(4 * 1000 / 50.5)


def test_measure_warms_up_then_respects_min_and_max_iterations():
    calls = []
    stats = measure(lambda b: calls.append(len(b)), np.zeros((2, 3)),
                    LatencySettings(warmup=3, min_iterations=7, max_iterations=9, min_seconds=0.0))
    assert len(calls) == 3 + 7 and stats.iterations == 7 and stats.batch == 2
    calls.clear()
    stats = measure(lambda b: calls.append(1), np.zeros((1, 3)),
                    LatencySettings(warmup=0, min_iterations=1, max_iterations=5, min_seconds=60.0))
    assert stats.iterations == 5  # the cap wins over the time budget


def test_bad_latency_settings_are_refused():
    with pytest.raises(ValueError):
        LatencySettings(min_iterations=10, max_iterations=5)


def test_score_top1_agreement_and_per_class():
    labels = np.array([0, 0, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0])
    ref = np.array([0, 1, 1, 0, 0])
    acc = score(preds, labels, 3, reference=ref)
    assert acc.top1 == pytest.approx(3 / 5) and acc.agreement == pytest.approx(4 / 5)
    assert acc.per_class == [0.5, 1.0, 0.0]


def _row(target, precision, top1):
    return ResultRow(target, precision, "onnxruntime", False, "runner", top1, (), 1.0, 1, 100, 900.0,
                     Latency(1.0, 1.2, 1.5, 1.1, 0.9), f"{target}/m.onnx", 1000, top1)


def test_gate_counts_only_int8_rows_and_uses_points():
    labels = np.arange(10_000) % 10

    def wrong(count: int, start: int = 0) -> np.ndarray:  # FP32 (91 % top-1) with more images answered wrong
        out = labels.copy()
        out[:900] = (out[:900] + 1) % 10
        out[start:start + count] = (labels[start:start + count] + 1) % 10
        return out

    rows = [_row("a", "fp32", 0.80), _row("a", "int8", 0.905), _row("b", "int8", 0.889)]
    preds = Predictions(labels.astype(str), labels, wrong(0), (
        RowPredictions("a", "fp32", False, wrong(2000)), RowPredictions("a", "int8", False, wrong(50, 900)),
        RowPredictions("b", "int8", False, wrong(210, 900))))
    g = gate(rows, preds, max_drop=1.0, min_agreement=0.9)
    assert not g.passed and len(g.failures) == 1 and "b int8" in g.failures[0] and "2.10 points" in g.failures[0]
    assert [r.label for r in g.rows] == ["a int8", "b int8"]
    assert gate(rows, preds, max_drop=2.2, min_agreement=0.9).passed


def test_markdown_report_names_status_and_rows():
    data = DataSet("c", 3, 0, 0)
    report = Report("failed", "", ModelInfo("resnet20", 10, (1, 28, 28), "x", "A", 0), {}, DataInfo(data, data),
                    Reference("pytorch", "fp32", 0.9, ()), (_row("a", "int8", 0.85),),
                    Gate(1.0, False, ("a int8: forced",)), {}, (), {}, Host("cpu", "", ""), 1.0, ())
    md = render_markdown(report)
    assert "FAILED" in md and "| a | int8 |" in md and "+5.00" in md
