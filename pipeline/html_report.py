"""The build's report as one self-contained HTML page: tables plus charts, readable offline.

Everything is inline (CSS, charts as SVG from ``svg_chart``) and a Content-Security-Policy forbids any
network fetch, so ``report.html`` opens the same from a bundle copied to an air-gapped machine.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from resnet_deploy.pipeline import fallback_report
from resnet_deploy.pipeline import svg_chart as chart
from resnet_deploy.pipeline.records import Gate, GateRow, Reference, Report, ResultRow, Stage
from resnet_deploy.pipeline.report import (
    describe_checks,
    describe_gate,
    describe_host,
    describe_rules,
    describe_settings,
)

# One colour per precision, the same in every chart.
_COLOURS = {"fp32": "#4C72B0", "int8": "#DD8452", "fp16": "#55A868", "bf16": "#8172B3"}
_REFERENCE_COLOUR = "#555555"
# Above this many classes a per-class bar chart is unreadable; plot the sorted per-class change instead.
_MAX_CLASS_BARS = 20

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d1d1f;
 background:#f6f7f9;margin:0}
main{max-width:1040px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:24px;margin:0 0 12px}h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #e3e5e8;
 padding-bottom:4px}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;font-size:13px;vertical-align:middle;color:#fff}
.badge.passed{background:#2e7d32}.badge.failed{background:#c62828}.badge.unverified{background:#b26a00}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}
dl.facts dt{color:#5f6368}dl.facts dd{margin:0;word-break:break-all}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #e3e5e8;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f1f3f5;font-weight:600}td.l,th.l{text-align:left}td.wrap{white-space:normal;min-width:7em;font-size:12px}
tr.int8 td{background:#fff8f2}td.bad{color:#c62828;font-weight:600}
.failure{background:#fdecea;border-left:4px solid #c62828;padding:6px 10px;margin:6px 0}
.unverified{background:#fff4e0;border-left:4px solid #b26a00;padding:6px 10px;margin:6px 0}
td.unsure{color:#b26a00;font-weight:600}td.up{background:#fdecea}td.down{background:#e8f0fb}
.note{color:#5f6368;font-size:13px}
figure{margin:8px 0}figure svg{max-width:100%;height:auto;border:1px solid #eceef1;display:block}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
figcaption{color:#5f6368;font-size:12px}
code{background:#f1f3f5;padding:0 3px;border-radius:3px}
.scroll{overflow-x:auto}
"""


def render_html(report: Report) -> str:
    """The build's report as a self-contained HTML document."""
    results = list(report.results)
    ref = report.reference
    status = report.gate.status
    classes = list(report.preprocessing.get("class_names", []))

    parts = [_header(report, status)]
    parts.append(_section("results", "Results per target", _results_table(results, ref, report.gate)))
    parts.append(_section("verdict", "Verdict per INT8 row", _verdict(report.gate)))
    parts.append(_section("settings", "Quantization settings", _settings(results)))
    parts.append(_section("confusion", "Confusion-matrix difference: INT8 minus FP32",
                          _confusion(report.gate, classes)))
    parts.append(_section("accuracy", "Top-1: FP32 vs INT8", chart.figure(
        _accuracy_chart(results, ref),
        caption=f"Dashed line: the {report.reference.label} reference every INT8 row is gated against. Dashed "
                "outline: a row simulated on this machine's CPU.")))
    timed = [r for r in results if r.latency_ms is not None]  # simulated rows are accuracy rows
    sampled = any(r.samples_ms for r in timed)
    batches = sorted({r.batch for r in timed})
    devices = ", ".join(dict.fromkeys(r.measured_on for r in timed if r.measured_on))
    lat_title = ("Latency distribution" + (f" (batch {', '.join(map(str, batches))})" if batches else "")
                 + (f", measured on {devices}" if devices else ""))
    parts.append(_section("latency", lat_title, chart.figure(
        _latency_chart(timed),
        caption=("Boxes: the raw per-call samples' quartiles and median (whiskers at p1/p99); markers: p50, p90, "
                 "p99." if sampled else "p50, p90 and p99 of the per-call wall time; raw samples were not "
                 "recorded."))))
    parts.append(_section("sizes", "Model sizes", chart.figure(_size_chart(results))))
    parts.append(_section("fallback", "Mixed-precision fallback and per-layer sensitivity",
                          fallback_report.html(report)))
    parts.append(_section("per-class", "Per-class top-1: FP32 vs INT8", _per_class(results, ref, classes)))
    parts.append(_section("stages", "Build stages", _stages(list(report.stages))))
    parts.append(_section("checks", "Checks", _checks(report)))
    title = f"resnet-deploy report: {report.model.arch} ({status})"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        # No network: only inline styles and data: images may load (the charts are inline SVG).
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
        + "\n".join(parts) + "\n</main></body></html>\n"
    )


# --- sections ---------------------------------------------------------------------------------------

def _section(ident: str, title: str, body: str) -> str:
    return f'<section id="{ident}"><h2>{escape(title)}</h2>\n{body}\n</section>'


def _header(report: Report, status: str) -> str:
    model, data, host = report.model, report.data, report.host
    facts = [
        ("model", f"{model.arch}, {model.num_classes} classes, input "
                  f"{'x'.join(map(str, model.input_shape))}, from {model.source}"),
        ("reference", f"{report.reference.label} top-1 {_pct(report.reference.top1)}"),
        ("gate", f"{describe_gate(report.gate)}: {status.upper()}"),
        ("calibration", f"{data.calibration.count} images from {data.calibration.source}"),
        ("evaluation", f"{data.evaluation.count} images from {data.evaluation.source}"),
        *describe_host(host),
        ("created", report.created),
        ("build time", f"{report.wall_seconds:.1f} s"),
    ]
    dl = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts)
    failures = "".join(f'<div class="failure">Gate failure: {escape(f)}</div>' for f in report.gate.failures)
    word = "Unverified" if status == "unverified" else "Evaluation"
    failures += "".join(f'<div class="unverified">{word}: {escape(u)}</div>' for u in report.gate.unverified)
    return (f'<header><h1>resnet-deploy report: {escape(model.arch)} '
            f'<span class="badge {status}">{status.upper()}</span></h1>\n'
            f'<dl class="facts">{dl}</dl>{failures}</header>')


def _results_table(results: list[ResultRow], ref: Reference, gate: Gate) -> str:
    """Measured rows with their timings (and the device that timed them); simulated rows apart, accuracy only."""
    measured = [r for r in results if not r.simulated]
    simulated = [r for r in results if r.simulated]
    out = ""
    if measured:
        devices = ", ".join(dict.fromkeys(r.measured_on or "this machine" for r in measured))
        out += (f'<p class="note">Measured on {escape(devices)}: p50/p90/p99 at batch 1, one request at a time; '
                "img/s in the runtime's throughput mode (completed images over wall time).</p>"
                + _rows_table(measured, ref, gate, timed=True))
    if simulated:
        out += ("<h3>Simulated on this machine's CPU: accuracy only</h3><p class=\"note\">The device's model run "
                "here by a CPU runtime: its accuracy stands for the device's, its speed does not (build and time the "
                "engine on the device: <code>resnet-deploy device-build</code>, then <code>bench</code>).</p>"
                + _rows_table(simulated, ref, gate, timed=False))
    return out


def _rows_table(results: list[ResultRow], ref: Reference, gate: Gate, *, timed: bool) -> str:
    timing = "<th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>img/s</th>" if timed else ""
    head = ("<tr><th class=l>target</th><th class=l>precision</th><th class=l>runtime</th><th>top-1</th>"
            "<th>drop (pts)</th><th>drop 95% CI</th><th>McNemar p</th><th>agreement</th><th class=l>verdict</th>"
            f"{timing}<th>size</th><th class=l>runner</th></tr>")
    rows = []
    for r in results:
        lat = r.latency_ms
        drop = (ref.top1 - r.top1) * 100
        sim = " (simulated on CPU)" if r.simulated else ""
        g = gate.row(r.target, r.precision, r.simulated)
        cells = (f'<td>{_ms(lat.p50)}</td><td>{_ms(lat.p90)}</td><td>{_ms(lat.p99)}</td>' if lat else
                 "<td>-</td>" * 3) + f'<td>{_num(r.throughput_ips, "{:.0f}")}</td>' if timed else ""
        failed = g.failed if g else ()
        # The failed measure in red; an interval too wide for a verdict in amber.
        wide = g is not None and g.status == "unverified" and (g.drop_high - g.drop_low) / 2 > gate.max_drop
        ci = f"{g.drop_low:+.2f} to {g.drop_high:+.2f}" if g else "-"
        rows.append(
            f'<tr class="{escape(r.precision)}"><td class=l>{escape(r.target)}</td>'
            f'<td class="l wrap">{escape(r.precision)}{escape(sim)}</td>'
            f'<td class=l>{escape(r.runtime)}</td><td>{_pct(r.top1)}</td>'
            f'<td{_cell("drop" in failed)}>{drop:+.2f}</td><td{" class=unsure" if wide else ""}>{ci}</td>'
            f'<td>{_num(g.mcnemar_p, "{:.2g}") if g else "-"}</td>'
            f'<td{_cell("agreement" in failed)}>{_pct(r.agreement)}</td>'
            f'<td class=l>{escape(g.status.upper()) if g else "-"}</td>'
            f'{cells}<td>{_size(r.bytes)}</td>'
            f'<td class="l wrap">{escape(r.runner)}</td></tr>'
        )
    notes = "".join(f"<li>{escape(r.target)} {escape(r.precision)}: {escape(r.note)}</li>"
                    for r in results if r.note)
    table = f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'
    return table + (f'<ul class="note">{notes}</ul>' if notes else "")


def _cell(failed: bool) -> str:
    return " class=bad" if failed else ""


def _verdict(gate: Gate) -> str:
    rules = f'<p class="note">{escape(describe_rules(gate))}</p>' if gate.rules else ""
    if not gate.rows:
        return rules + '<p class="note">No INT8 row was judged in this report.</p>'
    head = ("<tr><th class=l>row</th><th class=l>verdict</th><th>images</th><th>drop (pts)</th><th>95% CI</th>"
            "<th>McNemar p</th><th>only FP32 right</th><th>only INT8 right</th><th>agreement</th><th>95% CI</th>"
            "<th>changed class</th><th class=l>reasons</th></tr>")
    lines = []
    for g in gate.rows:
        reasons = "<br>".join(escape(r) for r in g.reasons) or "-"
        lines.append(
            f"<tr><td class=l>{escape(g.label)}</td><td class=l>{escape(g.status.upper())}</td><td>{g.images}</td>"
            f"<td{_cell('drop' in g.failed)}>{g.drop:+.2f}</td><td>{g.drop_low:+.2f} to {g.drop_high:+.2f}</td>"
            f"<td>{_num(g.mcnemar_p, '{:.2g}')}</td><td>{g.fp32_only_correct}</td><td>{g.int8_only_correct}</td>"
            f"<td{_cell('agreement' in g.failed)}>{_pct(g.agreement)}</td>"
            f"<td>{_pct(g.agreement_low)} to {_pct(g.agreement_high)}</td><td>{g.disagreements}</td>"
            f'<td class="l wrap">{reasons}</td></tr>')
    return rules + f'<div class="scroll"><table>{head}{"".join(lines)}</table></div>'


def _settings(results: list[ResultRow]) -> str:
    items = [(r.label, describe_settings(r.details)) for r in results if r.details]
    if not items:
        return '<p class="note">No target recorded its settings.</p>'
    return "".join(f"<h3>{escape(label)}</h3><ul>" + "".join(f"<li><code>{escape(i)}</code></li>" for i in lines)
                   + "</ul>" for label, lines in items)


def _confusion(gate: Gate, classes: list[str]) -> str:
    if not gate.rows:
        return '<p class="note">No INT8 row was judged in this report.</p>'
    note = ('<p class="note">Rows: the label; columns: the predicted class. Each cell is INT8\'s count minus '
            "FP32's on the same images (red: more under INT8, blue: fewer); empty cells did not change.</p>")
    return note + "".join(_confusion_table(g, classes) for g in gate.rows)


def _confusion_table(g: GateRow, classes: list[str]) -> str:
    title = f"<h3>{escape(g.label)}: {g.disagreements} image(s) changed class</h3>"
    if not g.confusion_delta:
        return title
    used = sorted({c for t, p, _ in g.confusion_delta for c in (t, p)})

    def name(c: int) -> str:
        return classes[c] if 0 <= c < len(classes) else str(c)

    if len(used) > _MAX_CLASS_BARS:  # too wide for a table: the cells that moved most
        moved = "".join(f"<li>{escape(name(t))} &rarr; {escape(name(p))}: {d:+d}</li>"
                        for t, p, d in g.confusion_delta[:40])
        return title + f"<ul>{moved}</ul>"
    delta = {(t, p): d for t, p, d in g.confusion_delta}
    head = "<tr><th class=l>label \\ predicted</th>" + "".join(f"<th>{escape(name(c))}</th>" for c in used) + "</tr>"
    body = []
    for t in used:
        cells = []
        for p in used:
            d = delta.get((t, p), 0)
            cells.append(f'<td class={"up" if d > 0 else "down"}>{d:+d}</td>' if d else "<td></td>")
        body.append(f"<tr><td class=l>{escape(name(t))}</td>{''.join(cells)}</tr>")
    return title + f'<div class="scroll"><table>{head}{"".join(body)}</table></div>'


def _per_class(results: list[ResultRow], ref: Reference, classes: list[str]) -> str:
    rows = [r for r in results if r.per_class_top1]
    if not rows:
        return '<p class="note">No per-class figures in this report.</p>'
    n = len(rows[0].per_class_top1)
    names = classes if len(classes) == n else [str(i) for i in range(n)]
    body = "".join(chart.figure(svg) for svg in _per_class_charts(rows, ref, names))
    if n > _MAX_CLASS_BARS:
        return body + f'<p class="note">{n} classes: the table is left out; the chart shows every class.</p>'
    head = "<tr><th class=l>row</th>" + "".join(f"<th>{escape(c)}</th>" for c in names) + "</tr>"
    lines = []
    if ref.per_class_top1:
        lines.append(f"<tr><td class=l>{escape(ref.label)} (reference)</td>"
                     + "".join(f"<td>{_pct(v)}</td>" for v in ref.per_class_top1) + "</tr>")
    fp32 = {r.target: r.per_class_top1 for r in rows if r.precision == "fp32"}
    for r in rows:
        base = fp32.get(r.target) if r.precision != "fp32" else None
        cells = []
        for i, v in enumerate(r.per_class_top1):
            # Mark a class that lost more than 5 points against the same target's FP32.
            worse = base is not None and _finite(v) and _finite(base[i]) and base[i] - v > 0.05
            cells.append(f'<td{" class=bad" if worse else ""}>{_pct(v)}</td>')
        lines.append(f"<tr><td class=l>{escape(r.label)}</td>{''.join(cells)}</tr>")
    return body + f'<div class="scroll"><table>{head}{"".join(lines)}</table></div>'


def _stages(stages: list[Stage]) -> str:
    if not stages:
        return '<p class="note">No stage timings in this report.</p>'
    rows = "".join(f"<tr><td class=l>{escape(s.name)}</td><td>{_num(s.seconds, '{:.2f}')}</td>"
                   f"<td>{_num(s.peak_rss_mb, '{:.0f}')}</td></tr>" for s in stages)
    table = f"<table><tr><th class=l>stage</th><th>seconds</th><th>peak RSS MB</th></tr>{rows}</table>"
    return chart.figure(_stages_chart(stages)) + table


def _checks(report: Report) -> str:
    items = describe_checks(report.checks, report.reference)
    for name, cmd in report.commands.items():
        items.append(f"device command {name}: {cmd}")
    if not items:
        return '<p class="note">No checks recorded.</p>'
    return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


# --- charts ------------------------------------------------------------------------------------------

def _colour(precision: str) -> str:
    return _COLOURS.get(precision, "#999999")


def _accuracy_chart(results: list[ResultRow], ref: Reference) -> str | None:
    if not results:
        return None
    targets = list(dict.fromkeys(r.target for r in results))
    series = []
    for prec in dict.fromkeys(r.precision for r in results):
        rows = [next((r for r in results if r.target == t and r.precision == prec), None) for t in targets]
        series.append(chart.Series(prec, _colour(prec), [r.top1 * 100 if r else None for r in rows],
                                   [bool(r and r.simulated) for r in rows]))
    reference = (ref.label, ref.top1 * 100) if _finite(ref.top1) else None
    return chart.grouped_bars(targets, series, ylabel="top-1 (%)", ymax=105, reference=reference)


def _latency_chart(rows: list[ResultRow]) -> str | None:
    keys = list(chart.MARK_SHAPES)  # p50, p90, p99
    return chart.latency_rows([
        chart.Interval(r.label, _colour(r.precision), [s for s in r.samples_ms if _finite(s)],
                       [(k, getattr(r.latency_ms, k)) for k in keys if _finite(getattr(r.latency_ms, k))])
        for r in rows if r.latency_ms is not None], xlabel="ms per call")


def _size_chart(results: list[ResultRow]) -> str | None:
    return chart.horizontal_bars([chart.Bar(r.label, r.bytes / 1e6, _colour(r.precision), f"{r.bytes / 1e6:.2f} MB")
                                  for r in results if r.bytes], xlabel="MB on disk")


def _per_class_charts(rows: list[ResultRow], ref: Reference, names: list[str]) -> list[str | None]:
    """One chart per target: its rows' per-class top-1 as bars (the reference as a tick per class), or, past
    ``_MAX_CLASS_BARS`` classes, each row's per-class change against the reference, sorted."""
    out = []
    for t in dict.fromkeys(r.target for r in rows):
        mine = [r for r in rows if r.target == t]
        if len(names) <= _MAX_CLASS_BARS:
            series = [chart.Series(r.precision + (" (sim)" if r.simulated else ""), _colour(r.precision),
                                   [v * 100 if _finite(v) else None for v in r.per_class_top1]) for r in mine]
            marks = ((ref.label, [v * 100 if _finite(v) else None for v in ref.per_class_top1])
                     if ref.per_class_top1 else None)
            out.append(chart.grouped_bars(names, series, ylabel="top-1 (%)", ymax=105, reference_marks=marks,
                                          annotate=False, title=t, height=260))
        elif ref.per_class_top1:
            deltas = [(r.precision, _colour(r.precision),
                       sorted((v - b) * 100 for v, b in zip(r.per_class_top1, ref.per_class_top1)
                              if _finite(v) and _finite(b))) for r in mine]
            out.append(chart.lines(deltas, ylabel="points vs FP32", xlabel="classes, sorted by change", title=t))
    return out


def _stages_chart(stages: list[Stage]) -> str | None:
    return chart.horizontal_bars([
        chart.Bar(s.name, s.seconds, _colour("fp32"),
                  f"{s.seconds:.2f} s" + (f"  ({s.peak_rss_mb:.0f} MB peak)" if _finite(s.peak_rss_mb) else ""))
        for s in stages if _finite(s.seconds)], xlabel="seconds")


# --- formatting -----------------------------------------------------------------------------------

def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pct(v: Any) -> str:
    return f"{v * 100:.2f}%" if _finite(v) else "-"


def _ms(v: Any) -> str:
    return f"{v:.3f}" if _finite(v) else "-"


def _num(v: Any, fmt: str) -> str:
    return fmt.format(v) if _finite(v) else "-"


def _size(n: Any) -> str:
    if not _finite(n):
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
