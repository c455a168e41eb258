"""report.html: one self-contained page (no network), every section present, charts as inline SVG."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest

from resnet_deploy.pipeline.html_report import render_html
from resnet_deploy.pipeline.records import Report, to_json

CHROMIUM = Path("/usr/bin/chromium")


def _row(target: str, precision: str, top1: float, per_class: list[float], p50: float, *, size: int,
         simulated: bool = False, samples: bool = False) -> dict:
    row = {"target": target, "precision": precision, "runtime": target, "simulated": simulated,
           "runner": f"{target} runner", "top1": top1, "per_class_top1": per_class, "agreement": 0.99, "batch": 1,
           "iterations": 200, "throughput_ips": 1e3 / p50,
           "latency_ms": {"p50": p50, "p90": p50 * 1.2, "p99": p50 * 1.6, "mean": p50 * 1.1, "min": p50 * 0.9},
           "artifact": f"{target}/model_{precision}.x", "bytes": size, "sample_top1": top1}
    if samples:
        rng = np.random.default_rng(0)
        row["samples_ms"] = [round(float(v), 4) for v in p50 * rng.lognormal(0, 0.15, 300)]
    return row


@pytest.fixture()
def report() -> Report:
    return Report.from_json(sample_report())


def sample_report() -> dict:
    """The layout ``pipeline/build.py`` ``report_stage`` writes, with the awkward cases a real one can hold."""
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "<script>x</script>"]
    ref = [0.9, 0.95, 0.8, 0.7, 0.85, 0.75, 0.9, 0.88, 0.93, 0.91]
    int8 = [v - 0.01 for v in ref]
    int8[3] = 0.6  # one class that lost 10 points: flagged in the per-class table
    return {
        "schema": "resnet-deploy/report/1", "status": "failed", "created": "2026-01-01T00:00:00+00:00",
        "model": {"arch": "resnet18", "num_classes": 10, "input_shape": [3, 64, 64], "source": "random-init",
                  "shortcut": "B", "parameters": 11181642},
        "preprocessing": {"input_size": [64, 64], "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3,
                          "crop_ratio": 1.0, "channel_order": "RGB", "class_names": classes},
        "data": {"calibration": {"source": "/data/cifar10/train", "count": 64},
                 "evaluation": {"source": "/data/cifar10/test", "count": 200}},
        "reference": {"framework": "pytorch", "precision": "fp32", "top1": 0.857, "per_class_top1": ref},
        "results": [
            _row("openvino", "fp32", 0.857, ref, 4.0, size=44_731_409, samples=True),
            _row("openvino", "int8", 0.845, int8, 0.4, size=11_300_000, samples=True),
            _row("onnxruntime", "fp32", 0.857, ref, 6.3, size=44_700_000),
            _row("onnxruntime", "int8", 0.84, [*int8[:9], math.nan], 0.45, size=11_400_000),
            # a simulated device row with a note
            {**_row("tensorrt", "int8", 0.83, int8, 9.0, size=11_000_000, simulated=True),
             "note": "measured on CPU in place of the device"},
        ],
        "gate": {"max_drop": 1.0, "passed": False,
                 "failures": ["onnxruntime int8: top-1 0.8400 is 1.70 points below the FP32 reference 0.8570"]},
        "checks": {"fold": {"folded_layers": 20, "max_abs_diff": 7e-7, "output_scale": 1.4, "relative": 5e-7,
                            "tolerance": 1e-5, "top1_equal": True, "passed": True},
                   "export": {"max_abs_diff": 7e-7, "atol": 1e-4, "rtol": 1e-3, "top1_equal": True, "samples": 64,
                              "opset": 17, "checker": "onnx.checker (full_check)", "passed": True}},
        "stages": [{"name": n, "seconds": s, "peak_rss_mb": m} for n, s, m in
                   [("load", 0.26, 325.7), ("data", 0.38, 340.9), ("fold", 3.9, 492.0), ("export", 3.45, 668.5),
                    ("reference", 1.9, 672.1), ("compile:openvino", 4.55, 808.8),
                    ("compile:onnxruntime", 2.38, 808.8), ("validate", 6.27, 808.8)]],
        "commands": {}, "host": {"cpu": "AMD EPYC", "platform": "Linux", "python": "3.11.7"},
        "wall_seconds": 23.06, "artifacts": [],
    }


def _charts(html: str) -> list[ElementTree.Element]:
    """Every inline SVG chart, parsed (a malformed one fails here)."""
    return [ElementTree.fromstring(m) for m in re.findall(r"<svg .*?</svg>", html, flags=re.S)]


def _bars(chart: ElementTree.Element) -> dict[str, float]:
    """A chart's bars by their tooltip ("group, series: value"): height in pixels."""
    return {r.find("title").text: float(r.get("height")) for r in chart.iter("rect")
            if r.find("title") is not None}


def test_structure(report: Report) -> None:
    html = render_html(report)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    for section in ("results", "accuracy", "latency", "sizes", "per-class", "stages", "checks"):
        assert f'<section id="{section}">' in html
    assert "FAILED" in html and "Gate failure" in html
    # one results row per report row, in tables whose header names the latency percentiles (measured rows) or
    # not (the simulated row's own table: accuracy only)
    results = html.split('<section id="results">')[1].split("</section>")[0]
    assert results.count("<tr") == 2 + len(report.results)
    assert all(h in results for h in ("p50 ms", "p90 ms", "p99 ms", "img/s", "size"))
    # accuracy, latency, sizes, per-class (one per target) and stages charts
    charts = _charts(html)
    assert [c.get("aria-label") for c in charts] == ["top-1 (%)", "ms per call", "MB on disk", "openvino",
                                                      "onnxruntime", "tensorrt", "seconds"]
    # bar heights are the values to scale: top-1 85.7 % and 84.0 % on the same axis
    accuracy = _bars(charts[0])
    assert len(accuracy) == len(report.results)
    assert accuracy["openvino, fp32: 85.70"] / accuracy["onnxruntime, int8: 84.00"] == pytest.approx(85.7 / 84.0,
                                                                                                      rel=1e-3)
    assert "raw per-call samples" in html  # rows carried samples_ms
    # the class that lost 10 points is flagged; the missing class reads as "-"
    per_class = html.split('<section id="per-class">')[1].split("</section>")[0]
    assert per_class.count("class=bad") == 2  # openvino int8 and onnxruntime int8, class "cat"
    assert "<td>-</td>" in per_class


def test_self_contained_and_escaped(report: Report) -> None:
    html = render_html(report)
    # nothing fetched from anywhere: no external URLs, no scripts, and a CSP that forbids them
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html
    assert "default-src 'none'" in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html  # class names are data, not markup


def test_minimal_report_without_optional_parts(report: Report) -> None:
    """A report without per-class figures, latency samples, stages or checks still renders."""
    minimal = replace(report, stages=(), checks={}, commands={},
                      results=tuple(replace(r, per_class_top1=(), samples_ms=()) for r in report.results))
    html = render_html(minimal)
    assert "No per-class figures" in html and "No stage timings" in html
    assert "raw samples were not recorded" in html


def test_an_onnx_input_names_its_graph_as_the_reference_not_pytorch(report: Report) -> None:
    """`build --onnx`: every row is compared with the input graph run by ONNX Runtime; no report may call that
    PyTorch, nor say the export was checked against PyTorch."""
    from resnet_deploy.pipeline.report import render_markdown

    onnx_input = replace(report, reference=replace(report.reference, framework="onnxruntime"))
    for page in (render_html(onnx_input), render_markdown(onnx_input)):
        assert "input ONNX FP32 (onnxruntime)" in page and "vs the input graph" in page
        assert "PyTorch" not in page
    assert "PyTorch FP32" in render_markdown(report) and "vs PyTorch" in render_html(report)


def test_charts_need_no_plotting_library(report: Report, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device-side install (no matplotlib) renders the same page with every chart."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert len(_charts(render_html(report))) == 7


def test_round_trips_through_json(report: Report) -> None:
    """report.json on disk, read back, renders the same as the record it came from."""
    again = Report.from_json(json.loads(json.dumps(to_json(report))))
    assert render_html(again) == render_html(report)


@pytest.mark.slow
def test_chromium_renders_a_page(report: Report, tmp_path: Path) -> None:
    """Headless Chromium opens report.html offline and paints it: the screenshot is not blank."""
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from PIL import Image

    page = tmp_path / "report.html"
    page.write_text(render_html(report))
    shot = tmp_path / "report.png"
    cmd = [str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")), "--headless", "--no-sandbox",
           "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot: chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    with Image.open(shot) as img:
        assert img.size == (1280, 2000)
        small = np.asarray(img.convert("RGB").resize((320, 500)))
    # A painted page has many colours (text, plots) and dark pixels (text) on a light background.
    colours = len(np.unique(small.reshape(-1, 3), axis=0))
    dark = float((small.mean(axis=2) < 100).mean())
    assert colours > 200, f"screenshot looks blank: {colours} distinct colours"
    assert 0.002 < dark < 0.5, f"screenshot has {dark:.1%} dark pixels"
