"""Two builds of the same model side by side, as a regression gate: what changed, and is B worse than A.

Accuracy is compared image by image on the evaluation images both bundles saw (their per-image
predictions, ``predictions.npz``): a top-1 change is a paired difference, so it gets the same 95 %
interval (Newcombe) and exact McNemar test as the build's own verdict. B is worse than A only when a
change is beyond its tolerance *and* the data support it, so an identical rebuild compares clean and
two evaluations on a handful of images cannot fail a CI job by chance. The tolerances are fixed
(``Tolerances``), chosen before any build was compared, and stated in the README.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.pipeline import predictions as preds_io
from resnet_deploy.pipeline.device import LoadedBundle, open_bundle
from resnet_deploy.pipeline.records import ResultRow
from resnet_deploy.pipeline.verdict import mcnemar_exact, paired_difference

SIGNIFICANCE = 0.05  # a top-1 or agreement change counts only when McNemar's p is below this
# Timings are compared only between rows timed on the same CPU model with at least this many calls each:
# fewer calls on a shared machine differ by more than any tolerance worth having.
MIN_TIMED_CALLS = 200
_SKIPPED_SETTINGS = frozenset({"out"})  # where the bundle went is no setting of the model


@dataclass(frozen=True)
class Tolerances:
    """How much worse B may be than A before ``compare`` fails (exit 4)."""

    top1_points: float = 0.5  # B's top-1 may be this many points below A's, or a change not significant
    agreement_points: float = 0.5  # B's agreement with its own FP32 reference, likewise
    latency_ratio: float = 1.25  # B's p50 may be this many times A's (same CPU model, enough timed calls)
    size_ratio: float = 1.10  # B's artifact may be this many times A's bytes

    def to_json(self) -> dict[str, float]:
        return {"top1_points": self.top1_points, "agreement_points": self.agreement_points,
                "latency_ratio": self.latency_ratio, "size_ratio": self.size_ratio}


@dataclass(frozen=True)
class RowDelta:
    """One artifact (target, precision) in both bundles."""

    label: str
    top1: tuple[float, float]
    agreement: tuple[float | None, float | None]
    p50_ms: tuple[float | None, float | None]
    bytes: tuple[int, int]
    paired_images: int
    top1_change_interval: tuple[float, float] | None  # B - A in points, 95 %
    mcnemar_p: float | None
    latency_compared: str  # why the timings were or were not compared
    regressions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"row": self.label, "top1": list(self.top1), "agreement": list(self.agreement),
                "p50_ms": list(self.p50_ms), "bytes": list(self.bytes), "paired_images": self.paired_images,
                "top1_change_interval_points": None if self.top1_change_interval is None
                else [round(v, 3) for v in self.top1_change_interval],
                "mcnemar_p": self.mcnemar_p, "latency": self.latency_compared,
                "regressions": list(self.regressions)}


@dataclass(frozen=True)
class Comparison:
    a: Path
    b: Path
    settings: dict[str, tuple[Any, Any]]  # flag -> (A, B), only those that differ
    versions: dict[str, tuple[Any, Any]]
    rows: tuple[RowDelta, ...]
    missing: tuple[str, ...]  # rows A has and B lacks
    added: tuple[str, ...]
    tolerances: Tolerances = field(default_factory=Tolerances)
    notes: tuple[str, ...] = ()

    @property
    def regressions(self) -> tuple[str, ...]:
        return tuple(f"{r.label}: {why}" for r in self.rows for why in r.regressions) + \
            tuple(f"{label}: missing in B" for label in self.missing)

    @property
    def worse(self) -> bool:
        return bool(self.regressions)

    def to_json(self) -> dict[str, Any]:
        return {"a": str(self.a), "b": str(self.b), "worse": self.worse, "regressions": list(self.regressions),
                "tolerances": self.tolerances.to_json(), "significance": SIGNIFICANCE,
                "settings": {k: list(v) for k, v in self.settings.items()},
                "versions": {k: list(v) for k, v in self.versions.items()},
                "rows": [r.to_json() for r in self.rows], "missing_in_b": list(self.missing),
                "added_in_b": list(self.added), "notes": list(self.notes)}


def compare(a: Path, b: Path, tolerances: Tolerances = Tolerances()) -> Comparison:
    """Compare the bundles at ``a`` (the baseline) and ``b``; both are hash-checked first."""
    ba, bb = open_bundle(a), open_bundle(b)
    notes = []
    ma, mb = ba.report.model, bb.report.model
    if (ma.arch, ma.num_classes) != (mb.arch, mb.num_classes):
        notes.append(f"different models: A is {ma.arch} ({ma.num_classes} classes), B is {mb.arch} "
                     f"({mb.num_classes} classes); accuracy is compared on the images both evaluated.")
    pa, pb = preds_io.load(a), preds_io.load(b)
    ia, ib = _common_images(pa, pb)
    if len(ia) == 0:
        notes.append("the two bundles share no evaluation image: accuracy changes cannot be paired and are "
                     "not gated.")
    elif len(ia) < len(pa.labels) or len(ib) < len(pb.labels):
        notes.append(f"accuracy is paired on the {len(ia):,} evaluation images both bundles saw "
                     f"(A {len(pa.labels):,}, B {len(pb.labels):,}).")
    rows_a, rows_b = _rows(ba), _rows(bb)
    deltas = tuple(_row_delta(key, rows_a[key], rows_b[key], ba, bb, pa, pb, ia, ib, tolerances)
                   for key in rows_a if key in rows_b)
    label = {**{k: r.label for k, r in rows_a.items()}, **{k: r.label for k, r in rows_b.items()}}
    return Comparison(
        a, b, _differ(_manifest(a).get("args", {}), _manifest(b).get("args", {}), skip=_SKIPPED_SETTINGS),
        _differ(_manifest(a).get("versions", {}), _manifest(b).get("versions", {})), deltas,
        tuple(label[k] for k in rows_a if k not in rows_b), tuple(label[k] for k in rows_b if k not in rows_a),
        tolerances, tuple(notes))


def _manifest(bundle: Path) -> dict[str, Any]:
    data = json.loads((bundle / "manifest.json").read_text())
    return data if isinstance(data, dict) else {}


def _differ(x: dict[str, Any], y: dict[str, Any], *, skip: frozenset[str] = frozenset()) -> dict[str, tuple[Any, Any]]:
    return {k: (x.get(k), y.get(k)) for k in dict.fromkeys([*x, *y]) if k not in skip and x.get(k) != y.get(k)}


def _rows(b: LoadedBundle) -> dict[tuple[str, str, bool], ResultRow]:
    return {(r.target, r.precision, r.simulated): r for r in b.report.results}


def _common_images(pa: preds_io.Predictions, pb: preds_io.Predictions) -> tuple[np.ndarray, np.ndarray]:
    """Indices into A's and B's images of the images both evaluated (by identity), in A's order."""
    where_b = {str(i): n for n, i in enumerate(pb.image_ids)}
    pairs = [(n, where_b[str(i)]) for n, i in enumerate(pa.image_ids) if str(i) in where_b]
    if not pairs:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    ia, ib = zip(*pairs)
    return np.asarray(ia, np.int64), np.asarray(ib, np.int64)


def _row_delta(key: tuple[str, str, bool], ra: ResultRow, rb: ResultRow, ba: LoadedBundle, bb: LoadedBundle,
               pa: preds_io.Predictions, pb: preds_io.Predictions, ia: np.ndarray, ib: np.ndarray,
               tol: Tolerances) -> RowDelta:
    regressions: list[str] = []
    interval, p_value = None, None
    row_a, row_b = pa.row(*key), pb.row(*key)
    if row_a is not None and row_b is not None and len(ia):
        labels = pa.labels[ia]
        right_a, right_b = row_a.classes[ia] == labels, row_b.classes[ib] == labels
        a_only, b_only = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
        both, neither = int((right_a & right_b).sum()), int((~right_a & ~right_b).sum())
        low, high = paired_difference(both, b_only, a_only, neither)  # B - A
        interval, p_value = (100 * low, 100 * high), mcnemar_exact(a_only, b_only)
        change = 100 * (b_only - a_only) / len(ia)
        if change < -tol.top1_points and p_value < SIGNIFICANCE:
            regressions.append(f"top-1 {change:+.2f} points on {len(ia):,} paired images "
                               f"(95 % interval {interval[0]:+.2f} to {interval[1]:+.2f}, McNemar p {p_value:.2g}; "
                               f"tolerance {tol.top1_points} points)")
        agree_a = row_a.classes[ia] == pa.reference[ia]
        agree_b = row_b.classes[ib] == pb.reference[ib]
        lost, gained = int((agree_a & ~agree_b).sum()), int((~agree_a & agree_b).sum())
        agree_change = 100 * (gained - lost) / len(ia)
        if agree_change < -tol.agreement_points and mcnemar_exact(lost, gained) < SIGNIFICANCE:
            regressions.append(f"agreement with FP32 {agree_change:+.2f} points (tolerance "
                               f"{tol.agreement_points} points)")
    timed = _latency_comparable(ra, rb, ba, bb)
    if timed == "compared" and ra.latency_ms and rb.latency_ms:
        ratio = rb.latency_ms.p50 / ra.latency_ms.p50 if ra.latency_ms.p50 > 0 else 1.0
        if ratio > tol.latency_ratio:
            regressions.append(f"p50 latency {ratio:.2f}x A's ({rb.latency_ms.p50:.3f} vs {ra.latency_ms.p50:.3f} ms; "
                               f"tolerance {tol.latency_ratio}x)")
    if ra.bytes and rb.bytes / ra.bytes > tol.size_ratio:
        regressions.append(f"artifact {rb.bytes / ra.bytes:.2f}x A's size (tolerance {tol.size_ratio}x)")
    return RowDelta(ra.label, (ra.top1, rb.top1), (ra.agreement, rb.agreement),
                    (ra.latency_ms.p50 if ra.latency_ms else None, rb.latency_ms.p50 if rb.latency_ms else None),
                    (ra.bytes, rb.bytes), len(ia), interval, p_value, timed, tuple(regressions))


def _latency_comparable(ra: ResultRow, rb: ResultRow, ba: LoadedBundle, bb: LoadedBundle) -> str:
    if ra.latency_ms is None or rb.latency_ms is None:
        return "not timed (a simulated row)"
    if ba.report.host.cpu != bb.report.host.cpu:
        return f"not compared: timed on different CPUs ({ba.report.host.cpu} / {bb.report.host.cpu})"
    if min(ra.iterations, rb.iterations) < MIN_TIMED_CALLS:
        return (f"not compared: {min(ra.iterations, rb.iterations)} timed calls, fewer than {MIN_TIMED_CALLS} "
                "(build with a longer --latency-seconds)")
    return "compared"


# --- output -------------------------------------------------------------------------------------------

def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def table_rows(c: Comparison) -> list[list[str]]:
    """Header and one line per row, for text and HTML alike."""
    out = [["row", "top-1 A", "top-1 B", "change (95 % CI), points", "McNemar p", "agreement A", "agreement B",
            "p50 ms A", "p50 ms B", "MB A", "MB B", "verdict"]]
    for r in c.rows:
        ci = "-" if r.top1_change_interval is None else \
            f"{100 * (r.top1[1] - r.top1[0]):+.2f} ({r.top1_change_interval[0]:+.2f}, {r.top1_change_interval[1]:+.2f})"
        out.append([r.label, _pct(r.top1[0]), _pct(r.top1[1]), ci,
                    "-" if r.mcnemar_p is None else f"{r.mcnemar_p:.2g}", _pct(r.agreement[0]), _pct(r.agreement[1]),
                    _ms(r.p50_ms[0]), _ms(r.p50_ms[1]), f"{r.bytes[0] / 1e6:.2f}", f"{r.bytes[1] / 1e6:.2f}",
                    "WORSE" if r.regressions else "ok"])
    return out


def render_text(c: Comparison) -> str:
    lines = [f"A: {c.a}", f"B: {c.b}"]
    lines += [f"note: {n}" for n in c.notes]
    if c.settings:
        lines.append("settings that differ (A -> B):")
        lines += [f"  {k}: {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in c.settings.items()]
    else:
        lines.append("settings: the same")
    if c.versions:
        lines.append("versions that differ: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in c.versions.items()))
    rows = table_rows(c)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
              for r in rows]
    for r in c.rows:
        if r.latency_compared != "compared":
            lines.append(f"{r.label}: latency {r.latency_compared}")
    lines += [f"only in B: {label}" for label in c.added]
    t = c.tolerances
    verdict = (f"B is WORSE than A: {'; '.join(c.regressions)}" if c.worse else "B is not worse than A")
    lines.append(f"{verdict} (tolerances: top-1 {t.top1_points} points and agreement {t.agreement_points} points "
                 f"at McNemar p < {SIGNIFICANCE}, p50 {t.latency_ratio}x, size {t.size_ratio}x)")
    return "\n".join(lines) + "\n"


def render_html(c: Comparison) -> str:
    rows = table_rows(c)
    head = "".join(f"<th>{escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f'<td class="{"bad" if cell == "WORSE" else ""}">{escape(cell)}</td>'
                                    for cell in r) + "</tr>" for r in rows[1:])
    settings = "".join(f"<tr><td>{escape(k)}</td><td>{escape(json.dumps(a))}</td><td>{escape(json.dumps(b))}</td>"
                       "</tr>" for k, (a, b) in c.settings.items()) or '<tr><td colspan="3">the same</td></tr>'
    verdict = ("<p class=bad>B is WORSE than A:</p><ul>" + "".join(f"<li>{escape(x)}</li>" for x in c.regressions) +
               "</ul>") if c.worse else "<p>B is not worse than A.</p>"
    notes = "".join(f"<p class=note>{escape(n)}</p>" for n in c.notes)
    return (
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=Content-Security-Policy "
        "content=\"default-src 'none'; style-src 'unsafe-inline'\"><title>resnet-deploy compare</title><style>"
        "body{font:14px system-ui,sans-serif;margin:24px}table{border-collapse:collapse}"
        "td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}.bad{color:#c62828;font-weight:600}"
        ".note{color:#555}</style></head><body>"
        f"<h1>compare</h1><p>A: <code>{escape(str(c.a))}</code><br>B: <code>{escape(str(c.b))}</code></p>{notes}"
        f"{verdict}<h2>Rows</h2><table><tr>{head}</tr>{body}</table>"
        f"<h2>Settings that differ</h2><table><tr><th>flag</th><th>A</th><th>B</th></tr>{settings}</table>"
        "</body></html>\n"
    )
