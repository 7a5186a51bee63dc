"""Inline SVG charts for the self-contained report: no JavaScript, no network.

Every chart is one <svg class="chart" data-chart=NAME> with fault windows drawn first as
<rect class="window" data-fault=...> (shaded, labelled, with a <title> tooltip), then
the series as <path class="line" data-series=...> or stacked <rect class="bar">.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]
WINDOW_COLORS = {"hsm": "#f4a261", "node": "#e76f51", "kek": "#9b5de5", "db": "#577590", "keystone": "#43aa8b"}
W, H = 900, 270
ML, MR, MT, MB = 64, 16, 26, 48


@dataclass
class Line:
    name: str
    points: list[tuple[float, float | None]]
    color: str | None = None
    width: float = 1.8
    dash: str | None = None


@dataclass
class Window:
    label: str
    start: float
    end: float
    detail: str = ""


@dataclass
class Chart:
    name: str
    title: str
    y_label: str
    x_range: tuple[float, float]
    windows: list[Window] = field(default_factory=list)
    log_y: bool = False


def window_color(label: str) -> str:
    for key, color in WINDOW_COLORS.items():
        if label.startswith(key):
            return color
    return "#adb5bd"


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


class _Frame:
    def __init__(self, chart: Chart, y_max: float, y_min: float = 0.0):
        self.c = chart
        self.x0, self.x1 = chart.x_range
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1
        self.log = chart.log_y
        if self.log:
            self.y_min = 10 ** math.floor(math.log10(max(y_min, 1)))
            self.y_max = 10 ** math.ceil(math.log10(max(y_max, self.y_min * 10)))
        else:
            self.y_min, self.y_max = 0.0, _nice_max(y_max)

    def x(self, v: float) -> float:
        return ML + (v - self.x0) / (self.x1 - self.x0) * (W - ML - MR)

    def y(self, v: float) -> float:
        if self.log:
            v = max(v, self.y_min)
            frac = (math.log10(v) - math.log10(self.y_min)) / (math.log10(self.y_max) - math.log10(self.y_min))
        else:
            frac = (v - self.y_min) / (self.y_max - self.y_min)
        return H - MB - frac * (H - MT - MB)

    def open(self) -> list[str]:
        c = self.c
        out = [f'<svg class="chart" data-chart="{escape(c.name)}" viewBox="0 0 {W} {H}" width="100%" '
               f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg" role="img">',
               f'<title>{escape(c.title)}</title>',
               f'<text class="ctitle" x="{ML}" y="16">{escape(c.title)}</text>']
        for w in c.windows:
            a, b = self.x(max(w.start, self.x0)), self.x(min(w.end, self.x1))
            color = window_color(w.label)
            out.append(f'<rect class="window" data-fault="{escape(w.label)}" x="{a:.1f}" y="{MT}" '
                       f'width="{max(b - a, 1):.1f}" height="{H - MT - MB}" fill="{color}" fill-opacity="0.22">'
                       f'<title>{escape(w.label)}: {w.start:.1f} s → {w.end:.1f} s {escape(w.detail)}</title></rect>')
            out.append(f'<text class="wlabel" x="{a + 3:.1f}" y="{MT + 11}" fill="{color}">{escape(w.label)}</text>')
        # axes and grid
        out.append(f'<line class="axis" x1="{ML}" y1="{H - MB}" x2="{W - MR}" y2="{H - MB}"/>')
        out.append(f'<line class="axis" x1="{ML}" y1="{MT}" x2="{ML}" y2="{H - MB}"/>')
        for v in self.y_ticks():
            yy = self.y(v)
            out.append(f'<line class="grid" x1="{ML}" y1="{yy:.1f}" x2="{W - MR}" y2="{yy:.1f}"/>')
            out.append(f'<text class="tick" x="{ML - 6}" y="{yy + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
        for v in self.x_ticks():
            xx = self.x(v)
            out.append(f'<text class="tick" x="{xx:.1f}" y="{H - MB + 14}" text-anchor="middle">{_fmt(v)}</text>')
        out.append(f'<text class="tick" x="{W - MR}" y="16" text-anchor="end">x: seconds since load start</text>')
        out.append(f'<text class="tick" transform="translate(14,{(H - MB + MT) / 2}) rotate(-90)" '
                   f'text-anchor="middle">{escape(c.y_label)}</text>')
        return out

    def y_ticks(self) -> list[float]:
        if self.log:
            out, v = [], self.y_min
            while v <= self.y_max * 1.0001:
                out.append(v)
                v *= 10
            return out
        return [self.y_max * i / 4 for i in range(5)]

    def x_ticks(self) -> list[float]:
        span = self.x1 - self.x0
        step = _nice_max(span / 8)
        start = math.ceil(self.x0 / step) * step
        out, v = [], start
        while v <= self.x1 + 1e-9:
            out.append(v)
            v += step
        return out


def _fmt(v: float) -> str:
    if v >= 1000 and v % 1000 == 0:
        return f"{v / 1000:g}k"
    return f"{v:g}" if v == int(v) else f"{v:.2g}"


def _legend(items: list[tuple[str, str]]) -> str:
    """One row under the plot area, left to right."""
    parts, x = [], ML
    for name, color in items:
        parts.append(f'<rect x="{x}" y="{H - 13}" width="12" height="10" fill="{color}"/>'
                     f'<text class="legend" x="{x + 16}" y="{H - 4}">{escape(name)}</text>')
        x += 22 + 7 * len(name)
    return "".join(parts)


def line_chart(chart: Chart, lines: list[Line]) -> str:
    values = [v for ln in lines for _, v in ln.points if v is not None]
    positive = [v for v in values if v > 0]
    frame = _Frame(chart, max(values, default=1.0), min(positive, default=1.0))
    out = frame.open()
    legend = []
    for i, ln in enumerate(lines):
        color = ln.color or PALETTE[i % len(PALETTE)]
        legend.append((ln.name, color))
        segs, cur = [], []
        for t, v in ln.points:
            if v is None:
                if cur:
                    segs.append(cur)
                cur = []
                continue
            cur.append(f"{frame.x(t):.1f},{frame.y(v):.1f}")
        if cur:
            segs.append(cur)
        d = " ".join("M" + " L".join(seg) for seg in segs)
        dash = f' stroke-dasharray="{ln.dash}"' if ln.dash else ""
        out.append(f'<path class="line" data-series="{escape(ln.name)}" d="{d}" fill="none" stroke="{color}" '
                   f'stroke-width="{ln.width}"{dash}/>')
    out.append(_legend(legend))
    out.append("</svg>")
    return "\n".join(out)


def stacked_bars(chart: Chart, times: list[float], stacks: dict[str, list[float]],
                 colors: dict[str, str] | None = None) -> str:
    totals = [sum(vals[i] for vals in stacks.values()) for i in range(len(times))]
    frame = _Frame(chart, max(totals, default=1.0))
    out = frame.open()
    bw = max(1.0, (W - ML - MR) / max(1.0, chart.x_range[1] - chart.x_range[0]) * 0.8)
    base = [0.0] * len(times)
    legend = []
    for i, (name, vals) in enumerate(stacks.items()):
        color = (colors or {}).get(name) or PALETTE[i % len(PALETTE)]
        legend.append((name, color))
        for j, (t, v) in enumerate(zip(times, vals)):
            if not v:
                continue
            y_top, y_bot = frame.y(base[j] + v), frame.y(base[j])
            out.append(f'<rect class="bar" data-series="{escape(name)}" x="{frame.x(t) - bw / 2:.1f}" '
                       f'y="{y_top:.1f}" width="{bw:.1f}" height="{max(y_bot - y_top, 0.5):.1f}" fill="{color}">'
                       f'<title>{t:.0f} s: {escape(name)} {v:g}</title></rect>')
            base[j] += v
    if not any(totals):
        out.append(f'<text class="empty" x="{W / 2}" y="{H / 2}" text-anchor="middle">no errors</text>')
    out.append(_legend(legend))
    out.append("</svg>")
    return "\n".join(out)
