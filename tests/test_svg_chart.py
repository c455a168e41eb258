"""pipeline/svg_chart: the report's charts drawn as SVG by hand, checked by their geometry."""

from __future__ import annotations

import math
import re
from xml.etree import ElementTree

import numpy as np
import pytest

from resnet_deploy.pipeline import svg_chart as chart


def parse(svg: str | None) -> ElementTree.Element:
    assert svg is not None
    return ElementTree.fromstring(svg)


def texts(root: ElementTree.Element) -> list[str]:
    return [t.text or "" for t in root.iter("text")]


@pytest.mark.parametrize("lo, hi, expected", [
    (0, 105, [0, 20, 40, 60, 80, 100]),
    (0, 6.27, [0, 2, 4, 6]),
    (-1.5, 3.2, [-1, 0, 1, 2, 3]),
    (0, 0.003, [0, 0.0005, 0.001, 0.0015, 0.002, 0.0025, 0.003]),
])
def test_nice_ticks_are_round_and_cover_the_range(lo, hi, expected):
    assert chart.nice_ticks(lo, hi) == pytest.approx(expected)


def test_log_ticks_are_one_two_five_per_decade():
    assert chart.log_ticks(0.3, 12) == pytest.approx([0.5, 1, 2, 5, 10])


@pytest.mark.parametrize("q", [0.01, 0.25, 0.5, 0.75, 0.99])
def test_quantile_is_numpys_linear_rule(q):
    values = sorted(np.random.default_rng(0).lognormal(0, 0.3, 301).tolist())
    assert chart.quantile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))


def test_bars_stand_on_zero_at_their_values_scale():
    root = parse(chart.grouped_bars(["a", "b"], [chart.Series("fp32", "#123456", [50.0, None]),
                                                 chart.Series("int8", "#654321", [25.0, 100.0])],
                                    ylabel="top-1 (%)", ymax=100))
    bars = {r.find("title").text: r for r in root.iter("rect") if r.find("title") is not None}
    assert set(bars) == {"a, fp32: 50.00", "a, int8: 25.00", "b, int8: 100.00"}  # None draws no bar
    heights = {k: float(r.get("height")) for k, r in bars.items()}
    assert heights["a, fp32: 50.00"] == pytest.approx(2 * heights["a, int8: 25.00"])
    bottoms = {round(float(r.get("y")) + float(r.get("height")), 3) for r in bars.values()}
    assert len(bottoms) == 1  # one baseline


def test_negative_bars_extend_left_of_a_zero_line():
    root = parse(chart.horizontal_bars([chart.Bar("gains", 2.0, "#f00"), chart.Bar("loses", -1.0, "#888")],
                                       xlabel="dB"))
    rects = {r.find("title").text: r for r in root.iter("rect")}
    gain, loss = rects["gains: 2"], rects["loses: -1"]
    zero = float(gain.get("x"))
    assert float(loss.get("x")) + float(loss.get("width")) == pytest.approx(zero, abs=0.2)  # 0.1 px rounding
    assert float(gain.get("width")) == pytest.approx(2 * float(loss.get("width")), abs=0.2)


def test_latency_axis_turns_logarithmic_past_8x():
    def axis(p50s):
        rows = [chart.Interval(f"row{i}", "#000", [], [("p50", v), ("p99", v * 1.5)]) for i, v in enumerate(p50s)]
        return texts(parse(chart.latency_rows(rows, xlabel="ms per call")))

    assert "5" in axis([0.4, 4.0]) and "2" in axis([0.4, 4.0])  # 1-2-5 ticks: log
    linear = [float(t) for t in axis([1.0, 1.6]) if re.fullmatch(r"[\d.]+", t)]
    steps = {round(b - a, 9) for a, b in zip(linear, linear[1:])}
    assert len(steps) == 1  # evenly spaced: linear


def test_latency_boxes_span_the_samples_quartiles():
    samples = [float(v) for v in range(1, 101)]
    root = parse(chart.latency_rows([chart.Interval("r", "#000", samples, [("p50", 50.5)])], xlabel="ms"))
    box = next(r for r in root.iter("rect") if r.find("title") is not None)
    assert "quartiles 25.750-75.250 ms, median 50.500 ms" in box.find("title").text


def test_labels_are_escaped_and_nothing_to_draw_is_a_note():
    svg = chart.grouped_bars(["<b>&"], [chart.Series("s", "#000", [1.0])], ylabel="y", ymax=2)
    assert "<b>" not in svg and "&lt;b&gt;&amp;" in svg
    assert chart.horizontal_bars([chart.Bar("x", math.nan, "#000")], xlabel="x") is None
    assert chart.latency_rows([], xlabel="ms") is None
    assert chart.figure(None) == '<p class="note">Nothing to plot.</p>'
