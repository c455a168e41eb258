"""The build's reports: ``report.json`` for programs and ``report.md`` for people."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from resnet_deploy.pipeline.records import Gate, Report, ResultRow


def gate(reference_top1: float, results: Sequence[ResultRow], max_drop: float) -> Gate:
    """Every INT8 row (simulated ones too) may sit at most ``max_drop`` points below the FP32 reference."""
    failures = []
    for row in results:
        if row.precision == "int8":
            drop = (reference_top1 - row.top1) * 100
            if drop > max_drop + 1e-9:
                failures.append(f"{row.target} int8: top-1 {row.top1:.4f} is {drop:.2f} points below "
                                f"the FP32 reference {reference_top1:.4f}")
    return Gate(max_drop, not failures, tuple(failures))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _num(v: Any, fmt: str) -> str:
    finite = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return fmt.format(v) if finite else "-"


def describe_checks(checks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One sentence per conversion self-check (BN fold, ONNX export), shared by report.md and report.html."""
    out = []
    if "fold" in checks:
        c = checks["fold"]
        out.append(f"BN folding: {c.get('folded_layers')} conv+BN pairs folded; max |diff| "
                   f"{_num(c.get('max_abs_diff'), '{:.2e}')} ({_num(c.get('relative'), '{:.2e}')} of the output "
                   f"scale, limit {_num(c.get('tolerance'), '{:.0e}')}); top-1 identical: {c.get('top1_equal')}")
    if "export" in checks:
        c = checks["export"]
        out.append(f"ONNX export (opset {c.get('opset')}): {c.get('checker', 'onnx.checker')} passed; max |diff| vs "
                   f"PyTorch {_num(c.get('max_abs_diff'), '{:.2e}')} on {c.get('samples')} images "
                   f"(atol {c.get('atol')}, rtol {c.get('rtol')}); top-1 identical: {c.get('top1_equal')}")
    return out


def render_markdown(report: Report) -> str:
    m, ref, g, data = report.model, report.reference, report.gate, report.data
    status = "PASSED" if g.passed else "FAILED"
    lines = [
        f"# resnet-deploy report: {m.arch} ({status})",
        "",
        f"- model: {m.arch}, {m.num_classes} classes, input {'x'.join(map(str, m.input_shape))}, from `{m.source}`",
        f"- calibration: {data.calibration.count} images from `{data.calibration.source}`",
        f"- evaluation: {data.evaluation.count} images from `{data.evaluation.source}`",
        f"- reference (PyTorch FP32) top-1: **{_pct(ref.top1)}**",
        f"- gate: INT8 at most {g.max_drop} points below the reference: **{status}**",
        f"- host: {report.host.cpu}",
        "",
        "| target | precision | runtime | top-1 | drop (pts) | agreement | p50 ms | p90 ms | p99 ms | img/s | size |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.results:
        sim = " (simulated on CPU)" if r.simulated else ""
        lat = r.latency_ms
        lines.append(
            f"| {r.target} | {r.precision}{sim} | {r.runtime} | {_pct(r.top1)} | {(ref.top1 - r.top1) * 100:+.2f} | "
            f"{_pct(r.agreement)} | {_ms(lat.p50)} | {_ms(lat.p90)} | {_ms(lat.p99)} | "
            f"{r.throughput_ips:.0f} | {_size(r.bytes)} |"
        )
    for f in g.failures:
        lines.append(f"\n**Gate failure:** {f}")
    notes = [f"- {r.target} {r.precision}: {r.note}" for r in report.results if r.note]
    if notes:
        lines += ["", "## Notes", *notes]
    checks = describe_checks(report.checks)
    if checks:
        lines += ["", "## Checks", *[f"- {c}" for c in checks]]
    if report.stages:
        lines += ["", "## Stages", "", "| stage | seconds | peak RSS MB |", "|---|---|---|"]
        lines += [f"| {st.name} | {st.seconds:.2f} | {st.peak_rss_mb:.0f} |" for st in report.stages]
    if report.commands:
        lines += ["", "## Commands on the device"]
        lines += [f"- {name}: `{cmd}`" for name, cmd in report.commands.items()]
    lines += ["", f"Build wall time: {report.wall_seconds:.1f} s.", ""]
    return "\n".join(lines)
