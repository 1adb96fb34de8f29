"""Line charts written directly as SVG (a run's ``plot.svg``): panels of lines with markers, grid,
ticks, axis labels and a legend.

Written by hand, not with matplotlib: a run's plot is a few lines over at most a few thousand
rounds, and matplotlib (an optional extra) cost about 30 MB of resident memory and a second of
import in the coordinator's process for it — on W1 the largest single item of the framework's
memory overhead over a plain PyTorch loop — while without the extra a run had no plot at all. SVG
opens in every browser and renders in Markdown viewers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

BLUE, GREEN, RED, ORANGE = "#1f77b4", "#2ca02c", "#d62728", "#ff7f0e"
PANEL_W, PANEL_H = 500, 380
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 44


@dataclass(frozen=True)
class Series:
    """One line: its legend label, points, colour and marker (``circle``, ``square`` or ``dot``)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str = BLUE
    marker: str = "circle"


@dataclass(frozen=True)
class Panel:
    """One chart: its lines, axis labels and the legend's corner (``lower right``/``upper right``)."""

    series: Sequence[Series]
    xlabel: str
    ylabel: str
    legend: str = "lower right"


def ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """About ``count`` round tick values covering ``[lo, hi]`` (steps of 1, 2, 2.5 or 5 × 10ᵏ)."""
    if hi <= lo:
        lo, hi = lo - (abs(lo) * 0.1 or 0.5), hi + (abs(hi) * 0.1 or 0.5)
    raw = (hi - lo) / max(count, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, math.ceil(step))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [i * step for i in range(first, last + 1)]


def _label(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if round(step / 10 ** math.floor(math.log10(step)), 6) == 2.5 else 0)
    return f"{v:.{decimals}f}"


def _panel(p: Panel, ox: float, oy: float) -> list[str]:
    pts = [(x, y) for s in p.series for x, y in zip(s.x, s.y) if math.isfinite(x) and math.isfinite(y)]
    xs, ys = [x for x, _ in pts] or [0.0, 1.0], [y for _, y in pts] or [0.0, 1.0]
    xt, yt = ticks(min(xs), max(xs), 6, integer=True), ticks(min(ys), max(ys), 5)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    left, top, w, h = ox + LEFT, oy + TOP, PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM

    def px(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * w

    def py(y: float) -> float:
        return top + h - (y - y0) / ((y1 - y0) or 1) * h

    out = [f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="white" stroke="#444"/>']
    ystep = (yt[1] - yt[0]) if len(yt) > 1 else 1.0
    for v in yt:
        out.append(f'<line x1="{left}" y1="{py(v):.1f}" x2="{left + w}" y2="{py(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{_label(v, ystep)}</text>')
    for v in xt:
        out.append(f'<line x1="{px(v):.1f}" y1="{top}" x2="{px(v):.1f}" y2="{top + h}" stroke="#ddd"/>')
        out.append(f'<text x="{px(v):.1f}" y="{top + h + 16}" text-anchor="middle">{v:.0f}</text>')
    out.append(f'<text x="{left + w / 2}" y="{top + h + 36}" text-anchor="middle">{escape(p.xlabel)}</text>')
    out.append(f'<text transform="translate({ox + 16},{top + h / 2}) rotate(-90)" text-anchor="middle">{escape(p.ylabel)}</text>')
    for s in p.series:
        line = [(px(x), py(y)) for x, y in zip(s.x, s.y) if math.isfinite(x) and math.isfinite(y)]
        if not line:
            continue
        out.append(f'<polyline fill="none" stroke="{s.color}" stroke-width="1.5" points="'
                   + " ".join(f"{a:.1f},{b:.1f}" for a, b in line) + '"/>')
        out.extend(_marker(s, a, b) for a, b in line)
    shown = [s for s in p.series if len(s.x)]
    if shown:  # the legend, in the chosen corner, on a white box over the lines
        first = (top + h - 12 - 18 * (len(shown) - 1)) if p.legend.startswith("lower") else top + 14
        out.append(f'<rect x="{left + w - 216}" y="{first - 16}" width="212" height="{18 * len(shown) + 6}" '
                   'fill="white" fill-opacity="0.85" stroke="#ccc"/>')
    for i, s in enumerate(shown):
        ly = (top + h - 12 - 18 * (len(shown) - 1 - i)) if p.legend.startswith("lower") else (top + 14 + 18 * i)
        lx = left + w - 210
        out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 24}" y2="{ly - 4}" stroke="{s.color}" stroke-width="1.5"/>')
        out.append(_marker(s, lx + 12, ly - 4))
        out.append(f'<text x="{lx + 30}" y="{ly}">{escape(s.label)}</text>')
    return out


def _marker(s: Series, x: float, y: float) -> str:
    if s.marker == "square":
        return f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{s.color}"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{1.8 if s.marker == "dot" else 3}" fill="{s.color}"/>'


def write_svg(path: Path, panels: Sequence[Panel], title: str = "") -> Path:
    """``panels`` side by side under ``title``, written to ``path``."""
    head = 28 if title else 0
    width, height = PANEL_W * len(panels), PANEL_H + head
    body = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            'font-family="sans-serif" font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        body.append(f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15">{escape(title)}</text>')
    for i, p in enumerate(panels):
        body.extend(_panel(p, i * PANEL_W, head))
    body.append("</svg>")
    path.write_text("\n".join(body) + "\n")
    return path
