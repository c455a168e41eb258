"""Simulated rows are accuracy rows, shown apart from the timed ones; every timing names the device that took it.
Also through ``bench --hint throughput``: images/s from the runtime's own parallel requests."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_html_report import sample_report

from resnet_deploy.cli import main
from resnet_deploy.pipeline.html_report import render_html
from resnet_deploy.pipeline.records import Report, to_json
from resnet_deploy.pipeline.report import render_markdown

DEVICE = "host CPU: AMD EPYC 9R14"


@pytest.fixture()
def report() -> Report:
    d = sample_report()
    for row in d["results"]:
        if row["simulated"]:  # what the build writes for a simulation: no timing at all
            row.update(latency_ms=None, throughput_ips=None, iterations=0)
        else:
            row.update(measured_on=DEVICE, throughput={"images": 640, "seconds": 2.0, "requests": 2,
                                                       "runner": "runtime (2 requests in flight)"})
    return Report.from_json(d)


def test_a_simulated_row_round_trips_without_timings(report):
    again = Report.from_json(json.loads(json.dumps(to_json(report))))
    sim = next(r for r in again.results if r.simulated)
    assert sim.latency_ms is None and sim.throughput_ips is None and sim.throughput is None and not sim.measured_on
    timed = next(r for r in again.results if not r.simulated)
    assert timed.measured_on == DEVICE and timed.throughput is not None and timed.throughput.requests == 2


def test_markdown_puts_simulated_rows_in_their_own_accuracy_table(report):
    md = render_markdown(report)
    measured, _, simulated = md.partition("## Simulated on this machine's CPU: accuracy only")
    assert simulated, "no separate table for the simulated row"
    assert f"Measured on {DEVICE}" in measured
    assert "| tensorrt |" not in measured and "| openvino |" not in simulated
    sim_head = next(line for line in simulated.splitlines() if line.startswith("| target |"))
    sim_row = next(line for line in simulated.splitlines() if line.startswith("| tensorrt |"))
    assert "p50" not in sim_head and "img/s" not in sim_head and sim_row.count("|") == sim_head.count("|")
    timed_row = next(line for line in measured.splitlines() if line.startswith("| openvino | int8"))
    assert "0.400" in timed_row  # p50 beside the measured row


def test_html_puts_simulated_rows_apart_and_names_the_device(report):
    html = render_html(report)
    results = html.split('<section id="results">')[1].split("</section>")[0]
    measured, _, simulated = results.partition("Simulated on this machine's CPU: accuracy only")
    assert simulated and DEVICE in measured and "tensorrt" not in measured and "tensorrt" in simulated
    assert "p50 ms" in measured and "p50 ms" not in simulated
    assert "measured on " + DEVICE in html.split('<section id="latency">')[1].split("</section>")[0]


def test_bench_throughput_reports_completed_images_over_wall_time(shared_bundle, tmp_path):
    out = tmp_path / "device_report.json"
    result = CliRunner().invoke(main, ["bench", str(shared_bundle), "--runtime", "openvino", "--hint", "throughput",
                                       "--seconds", "0.3", "--iterations", "1", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    t = report["throughput"]
    assert t["images"] > 0 and t["requests"] >= 1 and t["seconds"] >= 0.3
    assert t["throughput_ips"] == pytest.approx(t["images"] / t["seconds"], rel=1e-2)
    assert "latency" not in report and report["host"]["hint"] == "throughput" and report["host"]["cpu"]
    assert "requests in flight" in report["runner"] and report["accuracy"]["images"] > 0
    assert report["accuracy"]["top1"] == report["accuracy"]["build_top1_same_images"]
