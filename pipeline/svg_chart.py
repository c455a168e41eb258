"""report.html's charts as inline SVG, drawn here: bars, per-call latency boxes and lines.

matplotlib took about a second of CPU per build for five small charts (and was the build side's only
plotting dependency); these take milliseconds. Inline SVG loads nothing, so the page stays self-contained
under its Content-Security-Policy, and the text in a chart is text: it scales, and it can be searched.
Only the standard library: the report module must import on the device side too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Sequence

WIDTH = 960
FONT = 12
_LEGEND_WIDTH = 150
_AXIS = "#555555"
_GRID = "#e3e5e8"
_TEXT = "#1d1d1f"


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round-numbered ticks covering [lo, hi]: steps of 1, 2 or 5 times a power of ten."""
    span = hi - lo if hi > lo else (abs(hi) or 1.0)
    raw = span / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first = math.ceil(lo / step - 1e-9)
    return [round(i * step, 12) for i in range(first, math.floor(hi / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2 and 5 times each power of ten within [lo, hi] (the ms axis spans an order of magnitude or more)."""
    out = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        out += [m * 10.0 ** k for m in (1, 2, 5) if lo <= m * 10.0 ** k <= hi]
    return out


def tick_label(v: float) -> str:
    return f"{v:g}"


def text_width(s: str, size: float = FONT) -> float:
    """An estimate from a sans-serif font's mean glyph width, for margins: there are no font metrics here."""
    return len(s) * 0.56 * size


@dataclass(frozen=True)
class Scale:
    """Data value to pixel: [lo, hi] onto [a, b], linear or logarithmic."""

    lo: float
    hi: float
    a: float
    b: float
    log: bool = False

    def __call__(self, v: float) -> float:
        f = math.log10 if self.log else float
        lo, hi = f(self.lo), f(self.hi)
        return self.a + (f(v) - lo) / ((hi - lo) or 1.0) * (self.b - self.a)

    def ticks(self) -> list[float]:
        return log_ticks(self.lo, self.hi) if self.log else nice_ticks(self.lo, self.hi)


@dataclass
class Canvas:
    """SVG elements in drawing order; ``svg()`` wraps them with a title for screen readers."""

    width: float
    height: float
    parts: list[str] = field(default_factory=list)

    def rect(self, x: float, y: float, w: float, h: float, fill: str, *, opacity: float | None = None,
             stroke: str | None = None, dashed: bool = False, tip: str = "") -> None:
        if w < 0:
            x, w = x + w, -w
        extra = (f' fill-opacity="{opacity}"' if opacity is not None else "") + (
            f' stroke="{stroke}"' if stroke else "") + (' stroke-dasharray="4 2" stroke-width="1.5"' if dashed else "")
        attrs = f'x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{fill}"{extra}'
        self.parts.append(f"<rect {attrs}><title>{escape(tip)}</title></rect>" if tip else f"<rect {attrs}/>")

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str, *, width: float = 1,
             dashed: bool = False) -> None:
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        self.parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
                          f'stroke-width="{width}"{dash}/>')

    def text(self, x: float, y: float, s: str, *, anchor: str = "start", size: float = FONT,
             rotate: float = 0, colour: str = _TEXT) -> None:
        turn = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate else ""
        self.parts.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                          f'dominant-baseline="middle" fill="{colour}"{turn}>{escape(s)}</text>')

    def marker(self, x: float, y: float, shape: str, fill: str, *, r: float = 4.5) -> None:
        if shape == "circle":
            self.parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}" stroke="#000" '
                              'stroke-width="0.6"/>')
            return
        points = {"diamond": [(0, -r), (r, 0), (0, r), (-r, 0)],
                  "triangle": [(0, -r), (r, r * 0.8), (-r, r * 0.8)]}[shape]
        self.polygon([(x + dx, y + dy) for dx, dy in points], fill)

    def polygon(self, points: Sequence[tuple[float, float]], fill: str) -> None:
        pts = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        self.parts.append(f'<polygon points="{pts}" fill="{fill}" stroke="#000" stroke-width="0.6"/>')

    def polyline(self, points: Sequence[tuple[float, float]], stroke: str) -> None:
        pts = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        self.parts.append(f'<polyline points="{pts}" fill="none" stroke="{stroke}" stroke-width="1.5"/>')

    def svg(self, title: str) -> str:
        return (f'<svg viewBox="0 0 {self.width:.0f} {self.height:.0f}" '
                f'width="{self.width:.0f}" height="{self.height:.0f}" role="img" aria-label="{escape(title)}">'
                f"<title>{escape(title)}</title>{''.join(self.parts)}</svg>")


def _x_axis(c: Canvas, x: Scale, top: float, bottom: float, label: str) -> None:
    """Vertical grid lines with tick labels below, and the axis label."""
    for t in x.ticks():
        px = x(t)
        c.line(px, top, px, bottom, _GRID)
        c.text(px, bottom + 10, tick_label(t), anchor="middle", size=FONT - 1)
    c.line(x.a, bottom, x.b, bottom, _AXIS)
    c.text((x.a + x.b) / 2, bottom + 28, label, anchor="middle")


def _y_axis(c: Canvas, y: Scale, left: float, right: float, label: str) -> None:
    for t in y.ticks():
        py = y(t)
        c.line(left, py, right, py, _GRID)
        c.text(left - 5, py, tick_label(t), anchor="end", size=FONT - 1)
    c.line(left, y.a, left, y.b, _AXIS)
    c.text(14, (y.a + y.b) / 2, label, anchor="middle", rotate=-90)


@dataclass(frozen=True)
class LegendKey:
    label: str
    colour: str
    shape: str = "box"  # box, line, dashed, circle, diamond, triangle, tick


def _legend(c: Canvas, keys: Sequence[LegendKey], x: float, y: float) -> None:
    for i, k in enumerate(keys):
        cy = y + 8 + i * 18
        if k.shape == "box":
            c.rect(x, cy - 5, 14, 10, k.colour)
        elif k.shape in ("line", "dashed", "tick"):
            c.line(x, cy, x + 14, cy, k.colour, width=2 if k.shape == "tick" else 1.5, dashed=k.shape == "dashed")
        else:
            c.marker(x + 7, cy, k.shape, k.colour)
        c.text(x + 20, cy, k.label, size=FONT - 1)


@dataclass(frozen=True)
class Series:
    """One bar per group: ``values[i]`` for group i (None: no bar); ``dashed[i]`` outlines a simulated row."""

    name: str
    colour: str
    values: Sequence[float | None]
    dashed: Sequence[bool] = ()


def grouped_bars(groups: Sequence[str], series: Sequence[Series], *, ylabel: str, ymax: float,
                 reference: tuple[str, float] | None = None,
                 reference_marks: tuple[str, Sequence[float | None]] | None = None,
                 annotate: bool = True, title: str = "", height: float = 320) -> str:
    """Vertical bars grouped by ``groups``, one colour per series; a dashed reference line across all groups or
    one reference tick per group; the legend on the right."""
    label_width = max((text_width(g, FONT - 1) for g in groups), default=0)
    labels_wide = label_width > WIDTH / max(len(groups), 1) * 0.9  # then written at 30 degrees
    bottom_pad = 44 + (min(label_width, 200) * 0.5 if labels_wide else 0)
    height += bottom_pad - 44
    top = 24 if title else 12
    c = Canvas(WIDTH, height)
    left, right = 56, WIDTH - _LEGEND_WIDTH
    y = Scale(0, ymax, height - bottom_pad, top)
    _y_axis(c, y, left, right, ylabel)
    if title:
        c.text(left, 10, title, size=FONT + 1)
    gw = (right - left) / max(len(groups), 1)
    bw = 0.8 * gw / max(len(series), 1)
    for j, s in enumerate(series):
        for i, v in enumerate(s.values):
            if v is None or not math.isfinite(v):
                continue
            x = left + gw * (i + 0.5) + (j - (len(series) - 1) / 2) * bw
            dashed = bool(s.dashed) and s.dashed[i]
            c.rect(x - bw * 0.47, y(v), bw * 0.94, y(0) - y(v), s.colour, opacity=0.45 if dashed else None,
                   stroke="#333333" if dashed else None, dashed=dashed, tip=f"{groups[i]}, {s.name}: {v:.2f}")
            if annotate and bw >= 26:
                c.text(x, y(v) - 8, f"{v:.1f}", anchor="middle", size=FONT - 2)
    keys = [LegendKey(s.name, s.colour) for s in series]
    if reference is not None:
        c.line(left, y(reference[1]), right, y(reference[1]), _AXIS, dashed=True)
        keys.append(LegendKey(reference[0], _AXIS, "dashed"))
    if reference_marks is not None:
        for i, v in enumerate(reference_marks[1]):
            if v is not None and math.isfinite(v):
                cx = left + gw * (i + 0.5)
                c.line(cx - gw * 0.42, y(v), cx + gw * 0.42, y(v), _AXIS, width=2)
        keys.append(LegendKey(reference_marks[0], _AXIS, "tick"))
    for i, g in enumerate(groups):
        cx, cy = left + gw * (i + 0.5), y(0) + 12
        if labels_wide:
            c.text(cx, cy, g, anchor="end", size=FONT - 1, rotate=-30)
        else:
            c.text(cx, cy, g, anchor="middle", size=FONT - 1)
    _legend(c, keys, right + 16, top)
    return c.svg(title or ylabel)


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    colour: str
    note: str = ""  # written past the bar's end


def horizontal_bars(bars: Sequence[Bar], *, xlabel: str, row: float = 24, label_size: float = FONT) -> str | None:
    """One labelled horizontal bar per row, first on top; negative values extend left of a zero line."""
    bars = [b for b in bars if math.isfinite(b.value)]
    if not bars:
        return None
    left = 16 + max(text_width(b.label, label_size) for b in bars)
    note_room = max((text_width(b.note, FONT - 1) for b in bars), default=0) + 10
    right = WIDTH - 20
    height = row * len(bars) + 56
    lo, hi = min(0.0, *(b.value for b in bars)), max(0.0, *(b.value for b in bars))
    hi = hi if hi > lo else lo + 1.0
    span = hi - lo
    # Room for the notes: the scale ends short of the right edge by their width.
    x = Scale(lo, hi, left, max(left + 100, right - note_room * (1 if span else 0)))
    top, bottom = 8, 8 + row * len(bars)
    c = Canvas(WIDTH, height)
    _x_axis(c, x, top, bottom, xlabel)
    for i, b in enumerate(bars):
        cy = top + row * (i + 0.5)
        c.rect(x(0), cy - row * 0.32, x(b.value) - x(0), row * 0.64, b.colour, tip=f"{b.label}: {b.value:g}")
        c.text(left - 6, cy, b.label, anchor="end", size=label_size)
        if b.note:
            c.text(max(x(b.value), x(0)) + 4, cy, b.note, size=FONT - 1)
    if lo < 0:
        c.line(x(0), top, x(0), bottom, _AXIS)
    return c.svg(xlabel)


@dataclass(frozen=True)
class Interval:
    """One latency row: its raw per-call samples (may be empty) and its reported percentiles."""

    label: str
    colour: str
    samples: Sequence[float]
    marks: Sequence[tuple[str, float]]  # (p50 | p90 | p99, ms)


MARK_SHAPES = {"p50": "circle", "p90": "diamond", "p99": "triangle"}


def quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default), on sorted values."""
    pos = (len(ordered) - 1) * q
    i = math.floor(pos)
    j = min(i + 1, len(ordered) - 1)
    return ordered[i] + (ordered[j] - ordered[i]) * (pos - i)


def latency_rows(rows: Sequence[Interval], *, xlabel: str, row: float = 34) -> str | None:
    """Per row: a box over the samples' quartiles with the median, whiskers at p1 and p99, and the reported
    p50/p90/p99 as markers; a log axis when the rows span more than 8x."""
    values = [v for r in rows for v in (*r.samples, *(m for _, m in r.marks)) if math.isfinite(v) and v > 0]
    if not values:
        return None
    lo, hi = min(values), max(values)
    log = hi / lo > 8
    if log:
        lo, hi = lo / 1.25, hi * 1.25
    else:
        pad = (hi - lo) * 0.08 or hi * 0.1
        lo, hi = max(0.0, lo - pad), hi + pad
    left = 16 + max(text_width(r.label) for r in rows)
    right = WIDTH - _LEGEND_WIDTH
    top, bottom = 8, 8 + row * len(rows)
    c = Canvas(WIDTH, bottom + 48)
    x = Scale(lo, hi, left, right, log=log)
    _x_axis(c, x, top, bottom, xlabel)
    for i, r in enumerate(rows):
        cy = top + row * (i + 0.5)
        c.text(left - 6, cy, r.label, anchor="end")
        samples = sorted(v for v in r.samples if math.isfinite(v) and v > 0)
        if samples:
            p1, q1, med, q3, p99 = (quantile(samples, q) for q in (0.01, 0.25, 0.5, 0.75, 0.99))
            c.line(x(p1), cy, x(p99), cy, r.colour)
            for end in (p1, p99):
                c.line(x(end), cy - 5, x(end), cy + 5, r.colour)
            c.rect(x(q1), cy - 7, max(x(q3) - x(q1), 1), 14, r.colour, opacity=0.35, stroke=r.colour,
                   tip=f"{r.label}: quartiles {q1:.3f}-{q3:.3f} ms, median {med:.3f} ms")
            c.line(x(med), cy - 7, x(med), cy + 7, r.colour, width=2)
        for name, v in r.marks:
            if math.isfinite(v) and v > 0:
                c.marker(x(v), cy, MARK_SHAPES.get(name, "circle"), r.colour)
        p50 = dict(r.marks).get("p50")
        if p50 is not None and math.isfinite(p50) and p50 > 0:
            c.text(x(p50), cy - 12, f"{p50:.2f} ms", anchor="middle", size=FONT - 2)
    _legend(c, [LegendKey(k, "#bbbbbb", s) for k, s in MARK_SHAPES.items()], right + 16, top)
    return c.svg(xlabel)


def lines(series: Sequence[tuple[str, str, Sequence[float]]], *, ylabel: str, xlabel: str, title: str = "",
          height: float = 260) -> str | None:
    """One polyline per (name, colour, values) over the values' index, with a zero line."""
    values = [v for _, _, vs in series for v in vs if math.isfinite(v)]
    if not values:
        return None
    lo, hi = min(0.0, *values), max(0.0, *values)
    hi = hi if hi > lo else lo + 1.0
    n = max(len(vs) for _, _, vs in series)
    left, right = 56, WIDTH - _LEGEND_WIDTH
    top = 24 if title else 12
    c = Canvas(WIDTH, height)
    y = Scale(lo, hi, height - 44, top)
    x = Scale(0, max(n - 1, 1), left, right)
    _y_axis(c, y, left, right, ylabel)
    c.line(left, y(0), right, y(0), _AXIS)
    c.text((left + right) / 2, height - 14, xlabel, anchor="middle")
    if title:
        c.text(left, 10, title, size=FONT + 1)
    for _, colour, vs in series:
        c.polyline([(x(i), y(v)) for i, v in enumerate(vs) if math.isfinite(v)], colour)
    _legend(c, [LegendKey(name, colour, "line") for name, colour, _ in series], right + 16, top)
    return c.svg(title or ylabel)


def figure(svg: str | None, caption: str = "") -> str:
    """A chart as an HTML figure with its caption; a note when there was nothing to draw."""
    if svg is None:
        return '<p class="note">Nothing to plot.</p>'
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f"<figure>{svg}{cap}</figure>"
