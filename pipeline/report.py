"""The build's reports: ``report.json`` for programs and ``report.md`` for people."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from resnet_deploy.pipeline import fallback_report
from resnet_deploy.pipeline.predictions import Predictions
from resnet_deploy.pipeline.records import Gate, GateRow, Host, Reference, Report, ResultRow
from resnet_deploy.pipeline.verdict import RULES, evaluation_reasons, judge, overall


def gate(results: Sequence[ResultRow], predictions: Predictions, *, max_drop: float, min_agreement: float,
         class_names: tuple[str, ...] = ()) -> Gate:
    """Every INT8 row (simulated ones too), paired image by image with the FP32 reference: at most ``max_drop``
    points below it and agreeing on at least ``min_agreement`` of the images, on an evaluation that can
    tell (``pipeline/verdict.py``)."""
    evaluation = evaluation_reasons(predictions.labels, predictions.reference, class_names)
    rows = []
    for r in results:
        if r.precision != "int8":
            continue
        pred = predictions.row(r.target, r.precision, r.simulated)
        if pred is None:
            raise ValueError(f"no per-image predictions for {r.label}")  # a bug of the caller's
        rows.append(judge(r.target, r.precision, r.simulated, predictions.labels, predictions.reference, pred.classes,
                          max_drop=max_drop, min_agreement=min_agreement, evaluation=evaluation))
    status = overall([r.status for r in rows])
    failures = tuple(reason for r in rows if r.status == "failed" for reason in r.reasons)
    # What keeps the evaluation from verifying a pass, also beside a failure (a random model's, say).
    unverified = tuple(dict.fromkeys([*(evaluation if rows else ()),
                                      *(reason for r in rows if r.status == "unverified" for reason in r.reasons)]))
    return Gate(max_drop, status == "passed", failures, status, min_agreement, unverified, dict(RULES), tuple(rows))


# The verdict's rules in words, for both reports (the numbers are pipeline/verdict.py's).
RULES_TEXT = ("FAILED when an INT8 row's top-1 drop exceeds --max-drop or its agreement with FP32 is below "
              "--min-agreement (whatever else holds). Otherwise UNVERIFIED when the evaluation labels hold fewer "
              "than {min_classes:g} classes; the FP32 reference's top-1 has the low end of its 95 % Wilson interval "
              "not above the share of the most frequent label; one class takes more than {max_class_share:.0%} of "
              "FP32's predictions and more than {class_share_over_labels:g}x its share of the labels; or the "
              "drop's 95 % interval (Newcombe, paired) is wider than +-max-drop. Else PASSED.")


def describe_gate(g: Gate) -> str:
    """The gate in one sentence."""
    rule = f"INT8 at most {g.max_drop:g} points below the reference"
    if g.min_agreement is not None:
        rule += f" and agreeing with it on at least {g.min_agreement:.2%} of the images"
    return rule


def describe_rules(g: Gate) -> str:
    return RULES_TEXT.format(**g.rules) if g.rules else ""


def describe_settings(details: Mapping[str, Any]) -> list[str]:
    """A target's settings (its artifact's ``details``) as "key: value" lines, nested keys joined with dots,
    shown as the target wrote them."""
    out: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (list, tuple)):
            out.append(f"{prefix}: {', '.join(map(str, value)) or '-'}")
        else:
            out.append(f"{prefix}: {'-' if value is None else value}")

    walk("", {k: v for k, v in details.items() if k != "fallback"})  # the fallback has a section of its own
    return out


def moved_cells(row: GateRow, class_names: Sequence[str], *, limit: int = 10) -> list[str]:
    """The confusion-matrix cells that moved most from FP32 to INT8, as "label -> predicted: change"."""
    def name(c: int) -> str:
        return class_names[c] if 0 <= c < len(class_names) else str(c)

    return [f"{name(t)} -> {name(p)}: {d:+d}" for t, p, d in row.confusion_delta[:limit]]


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


def _mark(text: str, bad: bool) -> str:
    return f"**{text} (failed)**" if bad else text


def describe_host(host: Host) -> list[tuple[str, str]]:
    """The header's machine and software lines, shared by report.md and report.html: what the timings and the
    INT8 kernels depend on. A report written before a field existed leaves its line out."""
    out = [("host", f"{host.cpu} ({host.platform})" if host.platform else host.cpu)]
    if host.isa or host.cores:
        out.append(("instruction sets", " ".join(host.isa) or "none of AVX2, AVX512, VNNI, AMX, BF16 (x86) or "
                                                             "NEON, DOTPROD, I8MM, SVE (ARM)"))
    if host.cores:
        threads = (f"{host.threads} runtime threads (--threads)" if host.threads is not None else
                   "runtime threads: each runtime's default")
        out.append(("cores", f"{host.cores} usable of {host.logical_cpus} logical CPUs; {threads}"))
    software = [f"resnet-deploy {host.tool_version}"] if host.tool_version else []
    software += [f"{name} {version}" for name, version in host.versions.items() if name != "resnet-deploy"]
    if software:
        out.append(("software", ", ".join(software)))
    return out


def describe_checks(checks: Mapping[str, Mapping[str, Any]], reference: Reference) -> list[str]:
    """One sentence per conversion self-check (BN fold, ONNX export), shared by report.md and report.html; the
    export is checked against the PyTorch model, or against the input graph of an ``--onnx`` build."""
    against = "PyTorch" if reference.framework == "pytorch" else "the input graph"
    out = []
    if "fold" in checks:
        c = checks["fold"]
        out.append(f"BN folding: {c.get('folded_layers')} conv+BN pairs folded; max |diff| "
                   f"{_num(c.get('max_abs_diff'), '{:.2e}')} ({_num(c.get('relative'), '{:.2e}')} of the output "
                   f"scale, limit {_num(c.get('tolerance'), '{:.0e}')}); top-1 identical: {c.get('top1_equal')}")
    if "export" in checks:
        c = checks["export"]
        out.append(f"ONNX export (opset {c.get('opset')}): {c.get('checker', 'onnx.checker')} passed; max |diff| vs "
                   f"{against} {_num(c.get('max_abs_diff'), '{:.2e}')} on {c.get('samples')} images "
                   f"(atol {c.get('atol')}, rtol {c.get('rtol')}); top-1 identical: {c.get('top1_equal')}")
    return out


def render_markdown(report: Report) -> str:
    m, ref, g, data = report.model, report.reference, report.gate, report.data
    status = g.status.upper()
    rows = {(gr.target, gr.precision, gr.simulated): gr for gr in g.rows}
    lines = [
        f"# resnet-deploy report: {m.arch} ({status})",
        "",
        f"- model: {m.arch}, {m.num_classes} classes, input {'x'.join(map(str, m.input_shape))}, from `{m.source}`",
        f"- calibration: {data.calibration.count} images from `{data.calibration.source}`",
        f"- evaluation: {data.evaluation.count} images from `{data.evaluation.source}`",
        f"- reference ({ref.label}) top-1: **{_pct(ref.top1)}**",
        f"- gate: {describe_gate(g)}: **{status}**",
        *(f"- {label}: {text}" for label, text in describe_host(report.host)),
    ]

    def accuracy(r: ResultRow) -> str:
        gr = rows.get((r.target, r.precision, r.simulated))
        failed = gr.failed if gr else ()
        ci = f"{gr.drop_low:+.2f} to {gr.drop_high:+.2f}" if gr else "-"
        return (f"| {r.target} | {r.precision} | {r.runtime} | {_pct(r.top1)} | "
                f"{_mark(f'{(ref.top1 - r.top1) * 100:+.2f}', 'drop' in failed)} | {ci} | "
                f"{_num(gr.mcnemar_p, '{:.2g}') if gr else '-'} | {_mark(_pct(r.agreement), 'agreement' in failed)} | "
                f"{gr.status.upper() if gr else '-'} | ")

    head = "| target | precision | runtime | top-1 | drop (pts) | drop 95% CI | McNemar p | agreement | verdict | "
    measured = [r for r in report.results if not r.simulated]
    simulated = [r for r in report.results if r.simulated]
    if measured:
        lines += ["", f"Measured on {', '.join(dict.fromkeys(r.measured_on or 'this machine' for r in measured))}: "
                  "p50/p90/p99 at batch 1 one request at a time, img/s in the runtime's throughput mode (completed "
                  "images over wall time).", "",
                  head + "p50 ms | p90 ms | p99 ms | img/s | size |", "|---" * 14 + "|"]
        for r in measured:
            lat = r.latency_ms
            timing = f"{_ms(lat.p50)} | {_ms(lat.p90)} | {_ms(lat.p99)} | " if lat else "- | - | - | "
            lines.append(accuracy(r) + timing + f"{_num(r.throughput_ips, '{:.0f}')} | {_size(r.bytes)} |")
    if simulated:
        lines += ["", "## Simulated on this machine's CPU: accuracy only", "",
                  "The device's model run here by a CPU runtime: its accuracy stands for the device's, its speed does "
                  "not (build and time the engine on the device: `resnet-deploy device-build`, then `bench`).", "",
                  head + "size |", "|---" * 10 + "|"]
        lines += [accuracy(r) + f"{_size(r.bytes)} |" for r in simulated]
    for f in g.failures:
        lines.append(f"\n**Gate failure:** {f}")
    for u in g.unverified:
        lines.append(f"\n**{'Unverified' if g.status == 'unverified' else 'Evaluation'}:** {u}")
    if g.rules:
        lines.append(f"\nVerdict rules: {describe_rules(g)}")
    settings = [(r.label, describe_settings(r.details)) for r in report.results if r.details]
    if settings:
        lines += ["", "## Quantization settings"]
        lines += [f"- {label}: {'; '.join(items)}" for label, items in settings]
    names = list(report.preprocessing.get("class_names", []))
    moved = [(gr, moved_cells(gr, names)) for gr in g.rows]
    if moved:
        lines += ["", "## Confusion-matrix difference, INT8 minus FP32 (label -> predicted: change)"]
        lines += [f"- {gr.label}: {'; '.join(cells) if cells else 'no image changed class'}" for gr, cells in moved]
    lines += fallback_report.markdown(report)  # layers kept in float, their cost, the per-layer sensitivity
    notes = [f"- {r.target} {r.precision}: {r.note}" for r in report.results if r.note]
    if notes:
        lines += ["", "## Notes", *notes]
    checks = describe_checks(report.checks, report.reference)
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
