"""Small charts for the HTML report, drawn as SVG text: bar charts (stacked or side by side) and a step line.

The report's three plots are a histogram, a cumulative step line and a grouped histogram. Drawn
here they cost about a millisecond each; through matplotlib they cost its import (about half a
second, most of a campaign's fixed cost on a small run) plus a rasterizing draw per plot
(docs/benchmarks.md, "Fixed cost"). The SVG scales with the page and inlines as a data URI.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Sequence
from xml.sax.saxutils import escape

#: Chart size in CSS pixels and the plot area's margins (left, right, top, bottom).
WIDTH, HEIGHT = 600, 320
MARGIN = (62, 14, 34, 48)
FONT = "font-family='sans-serif' font-size='12'"
TITLE_FONT = "font-family='sans-serif' font-size='14'"
#: The shade behind a highlighted bin (explain's blamed layer).
HIGHLIGHT_COLOR = "#fde2e1"


@dataclass(frozen=True)
class Series:
    """One labelled series: a value per bin (bar charts) or per x (step lines)."""

    label: str
    values: Sequence[float]
    color: str


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high] (steps of 1, 2 or 5 times a power of 10)."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < high - step * 1e-9:  # up to the first tick at or above high
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _label(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"


class _Frame:
    """The axes: maps data to pixels and draws ticks, labels, title and legend."""

    def __init__(self, x_range: tuple[float, float], y_max: float, title: str, xlabel: str, ylabel: str) -> None:
        self.x_ticks = nice_ticks(*x_range)
        self.y_ticks = nice_ticks(0.0, max(y_max, 1.0))
        self.x0, self.x1 = x_range[0], max(x_range[1], x_range[0] + 1e-9)
        self.y1 = self.y_ticks[-1]
        left, right, top, bottom = MARGIN
        self.px0, self.px1, self.py0, self.py1 = left, WIDTH - right, HEIGHT - bottom, top
        self.parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
                      f"viewBox='0 0 {WIDTH} {HEIGHT}'>", f"<rect width='{WIDTH}' height='{HEIGHT}' fill='white'/>",
                      f"<text x='{WIDTH / 2}' y='20' text-anchor='middle' {TITLE_FONT}>{escape(title)}</text>",
                      f"<text x='{(self.px0 + self.px1) / 2}' y='{HEIGHT - 10}' text-anchor='middle' {FONT}>"
                      f"{escape(xlabel)}</text>",
                      f"<text x='16' y='{(self.py0 + self.py1) / 2}' text-anchor='middle' {FONT} "
                      f"transform='rotate(-90 16 {(self.py0 + self.py1) / 2})'>{escape(ylabel)}</text>"]
        for t in self.y_ticks:
            y = self.y(t)
            self.parts.append(f"<line x1='{self.px0}' x2='{self.px1}' y1='{y:.1f}' y2='{y:.1f}' stroke='#e5e5e5'/>"
                              f"<text x='{self.px0 - 6}' y='{y + 4:.1f}' text-anchor='end' {FONT}>{_label(t)}</text>")
        for t in self.x_ticks:
            if self.x0 - 1e-9 <= t <= self.x1 + 1e-9:
                x = self.x(t)
                self.parts.append(
                    f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{self.py0}' y2='{self.py0 + 4}' stroke='#333'/>"
                    f"<text x='{x:.1f}' y='{self.py0 + 17}' text-anchor='middle' {FONT}>{_label(t)}</text>")

    def x(self, value: float) -> float:
        return self.px0 + (value - self.x0) / (self.x1 - self.x0) * (self.px1 - self.px0)

    def y(self, value: float) -> float:
        return self.py0 - value / self.y1 * (self.py0 - self.py1)

    def rect(self, x_low: float, x_high: float, y_low: float, y_high: float, color: str) -> None:
        if y_high <= y_low:
            return
        left, right = self.x(x_low), self.x(x_high)
        top, bottom = self.y(y_high), self.y(y_low)
        self.parts.append(f"<rect x='{left:.1f}' y='{top:.1f}' width='{max(0.5, right - left):.1f}' "
                          f"height='{bottom - top:.1f}' fill='{color}'/>")

    def legend(self, series: Sequence[Series]) -> None:
        for i, s in enumerate(series):
            y = self.py1 + 8 + 16 * i
            self.parts.append(f"<rect x='{self.px1 - 110}' y='{y}' width='10' height='10' fill='{s.color}'/>"
                              f"<text x='{self.px1 - 95}' y='{y + 9}' {FONT}>{escape(s.label)}</text>")

    def svg(self) -> str:
        self.parts.append(f"<line x1='{self.px0}' x2='{self.px1}' y1='{self.py0}' y2='{self.py0}' stroke='#333'/>"
                          f"<line x1='{self.px0}' x2='{self.px0}' y1='{self.py0}' y2='{self.py1}' stroke='#333'/>")
        return "".join(self.parts) + "</svg>"


def bar_chart(edges: Sequence[float], series: Sequence[Series], title: str, xlabel: str, ylabel: str,
              stacked: bool = True, highlight: int | None = None, highlight_label: str = "") -> str:
    """Bars over the bins ``edges[i]..edges[i+1]``: series stacked, or side by side in each bin.

    ``highlight`` shades bin ``highlight`` behind its bars and writes ``highlight_label`` above it.
    """
    if stacked:
        top = max((sum(vals) for vals in zip(*(s.values for s in series))), default=0.0)
    else:
        top = max((max(s.values, default=0.0) for s in series), default=0.0)
    frame = _Frame((float(edges[0]), float(edges[-1])), float(top), title, xlabel, ylabel)
    if highlight is not None and 0 <= highlight < len(edges) - 1:
        frame.rect(float(edges[highlight]), float(edges[highlight + 1]), 0.0, frame.y1, HIGHLIGHT_COLOR)
        x = frame.x((float(edges[highlight]) + float(edges[highlight + 1])) / 2)
        frame.parts.append(f"<text x='{x:.1f}' y='{frame.py1 - 2}' text-anchor='middle' {FONT}>"
                           f"{escape(highlight_label)}</text>")
    for i in range(len(edges) - 1):
        low, high = float(edges[i]), float(edges[i + 1])
        base = 0.0
        for k, s in enumerate(series):
            value = float(s.values[i])
            if stacked:
                frame.rect(low, high, base, base + value, s.color)
                base += value
            else:
                width = (high - low) / len(series)
                frame.rect(low + k * width, low + (k + 1) * width, 0.0, value, s.color)
    frame.legend(series)
    return frame.svg()


def step_chart(xs: Sequence[float], ys: Sequence[float], title: str, xlabel: str, ylabel: str,
               color: str) -> str:
    """A post-step line through (xs[i], ys[i]) (each value holds until the next x)."""
    frame = _Frame((float(min(xs, default=0.0)), float(max(xs, default=1.0))), float(max(ys, default=0.0)),
                   title, xlabel, ylabel)
    points = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        if i:
            points.append(f"{frame.x(x):.1f},{frame.y(ys[i - 1]):.1f}")
        points.append(f"{frame.x(x):.1f},{frame.y(y):.1f}")
    frame.parts.append(f"<polyline fill='none' stroke='{color}' stroke-width='1.5' points='{' '.join(points)}'/>")
    return frame.svg()


def empty_chart(text: str, title: str, xlabel: str, ylabel: str) -> str:
    """Axes with a message instead of data."""
    frame = _Frame((0.0, 1.0), 1.0, title, xlabel, ylabel)
    frame.parts.append(f"<text x='{(frame.px0 + frame.px1) / 2}' y='{(frame.py0 + frame.py1) / 2}' "
                       f"text-anchor='middle' {FONT}>{escape(text)}</text>")
    return frame.svg()


def data_uri(svg: str) -> str:
    """The chart as an ``<img src>`` data URI."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")
