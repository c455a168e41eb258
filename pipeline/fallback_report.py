"""The sensitivity analysis and the mixed-precision fallback as report sections (report.md and report.html).

Read back from ``report.json`` alone: the ``sensitivity`` record and each INT8 row's ``details["fallback"]``
(written by ``pipeline/fallback.py``), so a report re-rendered later shows the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any, Mapping

from resnet_deploy.calibration.channel_spread import diagnosis
from resnet_deploy.calibration.sensitivity import Sensitivity
from resnet_deploy.pipeline import svg_chart
from resnet_deploy.pipeline.records import Report, ResultRow

MAX_BARS = 60  # a deeper network's bar chart keeps its most sensitive layers
MAX_TABLE = 12
SPREAD_TABLE = 5  # report.json keeps every quantized activation


@dataclass(frozen=True)
class RowFallback:
    """What the fallback did to one INT8 row."""

    label: str
    layers: tuple[str, ...]
    held_out: Mapping[str, Any]
    attempts: int
    held_out_images: int
    latency: Mapping[str, float] | None  # all-INT8 and mixed p50 timed in alternation; None when not measured
    simulated: bool


def row_fallbacks(report: Report) -> list[RowFallback]:
    out = []
    for r in report.results:
        record = r.details.get("fallback") if r.precision == "int8" else None
        if isinstance(record, Mapping):
            out.append(_row(r, record))
    return out


def _row(r: ResultRow, record: Mapping[str, Any]) -> RowFallback:
    latency = record.get("latency")
    return RowFallback(r.label, tuple(str(x) for x in record.get("float_layers", ())),
                       dict(record.get("held_out") or {}), max(len(record.get("attempts", ())) - 1, 0),
                       int(record.get("held_out_images", 0)), dict(latency) if isinstance(latency, Mapping) else None,
                       r.simulated)


def describe_row(f: RowFallback) -> str:
    """One sentence: the layers kept in float, the held-out check, and the latency cost where measured."""
    h = f.held_out
    bounds = (f" (one-sided 95 % bounds: agreement at least {h['agreement_low'] * 100:.2f}%, drop at most "
              f"{h['drop_high']:+.2f})" if h and "agreement_low" in h and "drop_high" in h else "")
    check = (f"held-out check on {f.held_out_images} calibration images: agreement {h.get('agreement', 0) * 100:.2f}%, "
             f"drop {h.get('drop', 0):+.2f} points{bounds}, {'meets' if h.get('passed') else 'misses'} the gate") if h \
        else "no held-out check (its runtime is not installed here)"
    if not f.layers:
        return f"all layers INT8; {check}"
    kept = f"{len(f.layers)} layer(s) kept in float after {f.attempts} recompile(s): {', '.join(f.layers)}; {check}"
    if f.latency:
        lat = f.latency
        return (kept + f"; latency p50 {lat['all_int8_p50_ms']:.3f} ms all-INT8 -> {lat['p50_ms']:.3f} ms "
                f"({lat['cost'] * 100:+.1f}%, timed in alternation in this build)")
    return kept + ("; simulated row: no latency cost is claimed" if f.simulated else "")


def markdown(report: Report) -> list[str]:
    """report.md lines (empty when no row went through the fallback)."""
    rows = row_fallbacks(report)
    sens = report.sensitivity
    if not rows and sens is None:
        return []
    lines = ["", "## Mixed-precision fallback"]
    lines += [f"- {f.label}: {describe_row(f)}" for f in rows]
    if sens is not None:
        lines += ["", f"Per-layer sensitivity ({sens.reference}; amax rule {sens.method}; {sens.images} calibration "
                  f"images): all-INT8 agreement {sens.int8_agreement * 100:.2f}%, SQNR {sens.int8_sqnr_db:.1f} dB. "
                  "Each layer left in float alone (the residual shortcuts together), most sensitive first:", ""]
        lines += _markdown_table(_layer_table(sens))
        if len(sens.layers) > MAX_TABLE:
            lines.append(f"\n({len(sens.layers) - MAX_TABLE} more layers in report.json.)")
    if sens is not None and sens.spread:
        lines += ["", f"The activations with the most uneven channels (one INT8 scale each, the same ranges). "
                  f"{diagnosis(sens.spread)}", ""]
        lines += _markdown_table(_spread_table(sens))
    return lines


def html(report: Report) -> str:
    """The report.html section body, with the sensitivity chart."""
    rows = row_fallbacks(report)
    sens = report.sensitivity
    if not rows and sens is None:
        return '<p class="note">No INT8 row went through the held-out check (--fallback off, or too few ' \
               "calibration images).</p>"
    parts = ["<ul>" + "".join(f"<li><b>{escape(f.label)}</b>: {escape(describe_row(f))}</li>" for f in rows) + "</ul>"]
    if sens is not None:
        parts.append(f'<p class="note">Per-layer sensitivity: {escape(sens.reference)}; amax rule '
                     f"{escape(sens.method)}; {sens.images} calibration images; all-INT8 agreement "
                     f"{sens.int8_agreement * 100:.2f}%, SQNR {sens.int8_sqnr_db:.1f} dB. A bar is the SQNR the model "
                     "gains when that layer alone stays in float; worst (most sensitive) first.</p>")
        parts.append(svg_chart.figure(sensitivity_chart(sens),
                                      caption="SQNR gain (dB) with the layer in float, worst first"))
        parts.append(_html_table(_layer_table(sens)))
    if sens is not None and sens.spread:
        parts.append(f'<p class="note">The activations with the most uneven channels (one INT8 scale each, the same '
                     f"ranges). {escape(diagnosis(sens.spread))}</p>")
        parts.append(_html_table(_spread_table(sens)))
    return "".join(parts)


Table = tuple[list[str], list[list[str]], int]  # headers, rows of cells, how many leading columns hold text


def _layer_table(sens: Sensitivity) -> Table:
    rows = [[s.label, s.op, f"{s.gain_db:+.2f}", f"{s.sqnr_db:.1f}", f"{s.agreement * 100:.2f}%"]
            for s in sens.layers[:MAX_TABLE]]
    return ["layer", "op", "SQNR gain dB", "SQNR dB", "agreement"], rows, 2


def _spread_table(sens: Sensitivity) -> Table:
    rows = [[r.tensor, f"{r.median_channel_range:.3f}", f"{r.rounded_to_zero * 100:.1f}%", f"{r.clipped * 100:.1f}%",
             f"{r.amax:g}"] for r in sens.spread[:SPREAD_TABLE]]
    return ["tensor", "median channel peak / tensor peak", "non-zero values rounded to 0", "clipped", "amax"], rows, 1


def _markdown_table(table: Table) -> list[str]:
    """The first cell of a row is a name, in code style."""
    headers, rows, _ = table
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + \
        ["| " + " | ".join([f"`{row[0]}`", *row[1:]]) + " |" for row in rows]


def _html_table(table: Table) -> str:
    """The first cell of a row is a name, in code style; the table's text columns align left."""
    headers, rows, text = table

    def cells(tag: str, values: list[str]) -> str:
        return "".join(f"<{tag}{' class=l' if i < text else ''}>{v}</{tag}>" for i, v in enumerate(values))

    head = f"<tr>{cells('th', headers)}</tr>"
    body = "".join(f"<tr>{cells('td', [f'<code>{escape(row[0])}</code>', *map(escape, row[1:])])}</tr>" for row in rows)
    return f'<div class="scroll"><table>{head}{body}</table></div>'


def sensitivity_chart(sens: Sensitivity) -> str | None:
    """A horizontal bar per layer (SQNR gain when kept in float), the most sensitive on top."""
    return svg_chart.horizontal_bars(
        [svg_chart.Bar(s.label, s.gain_db, "#DD8452" if s.gain_db > 0 else "#BBBBBB") for s in sens.layers[:MAX_BARS]],
        xlabel="SQNR gain (dB) when this layer alone stays in float", row=16, label_size=9)
