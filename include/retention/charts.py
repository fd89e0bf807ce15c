"""A stacked bar chart of a trend (e.g. records deleted per activity per day), laid out once as
shapes in millimetres and drawn by two painters: inline SVG for HTML, fpdf2 for PDF. Both show
the same picture because they draw the same shapes."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Colour-blind-safe palette (Okabe-Ito), then grey for "the rest".
PALETTE = (
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167),
    (86, 180, 233), (213, 94, 0), (240, 228, 66),
)  # fmt: skip
OTHER_COLOUR = (153, 153, 153)
AXIS_COLOUR = (90, 90, 90)
GRID_COLOUR = (220, 220, 220)
TEXT_MM = 2.6  # label height in mm (about 7.4 pt)


@dataclass(frozen=True)
class Series:
    name: str
    values: list[int]


@dataclass(frozen=True)
class TrendChart:
    """Values per bucket (a day or a week) and series (an activity), stacked."""

    buckets: list[str]
    series: list[Series]
    empty_text: str  # shown instead of bars when every value is 0
    description: str  # the chart's accessible name

    @property
    def total(self) -> int:
        return sum(sum(s.values) for s in self.series)


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    fill: tuple[int, int, int]
    title: str = ""


@dataclass(frozen=True)
class Text:
    x: float
    y: float  # baseline
    text: str
    anchor: str = "start"  # start | middle | end
    size: float = TEXT_MM


@dataclass(frozen=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    colour: tuple[int, int, int] = AXIS_COLOUR


Shape = Rect | Text | Line


def top_series(series: Sequence[Series], keep: int, other_name: str) -> list[Series]:
    """The ``keep`` largest series, the rest summed into one named ``other_name``."""
    ranked = sorted((s for s in series if sum(s.values)), key=lambda s: (-sum(s.values), s.name))
    if len(ranked) <= keep + 1:
        return ranked
    rest = ranked[keep:]
    summed = [sum(values) for values in zip(*(s.values for s in rest), strict=True)]
    return [*ranked[:keep], Series(other_name, summed)]


def _nice_max(value: int) -> int:
    """The top of the y axis: four equal, round integer steps reaching ``value``."""
    raw = max(value, 4) / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        tick = step * magnitude
        if tick >= raw and tick == int(tick):
            return 4 * int(tick)
    return 4 * math.ceil(raw)


def colour(index: int, count: int) -> tuple[int, int, int]:
    last_is_other = count > len(PALETTE)
    if last_is_other and index == count - 1:
        return OTHER_COLOUR
    return PALETTE[index % len(PALETTE)] if index < len(PALETTE) else OTHER_COLOUR


def layout(chart: TrendChart, width: float = 180.0, height: float = 70.0) -> list[Shape]:
    """The chart as shapes in a ``width`` x ``height`` mm box (y grows downwards)."""
    left, right, top = 12.0, 2.0, 3.0
    legend_rows = math.ceil(len(chart.series) / 3) if chart.series else 0
    bottom = 8.0 + legend_rows * 4.5
    plot_w, plot_h = width - left - right, height - top - bottom
    base = top + plot_h
    shapes: list[Shape] = [Line(left, base, left + plot_w, base)]
    if not chart.total:
        return [*shapes, Text(left + plot_w / 2, top + plot_h / 2, chart.empty_text, "middle")]
    totals = [sum(vals) for vals in zip(*(s.values for s in chart.series), strict=True)]
    y_max = _nice_max(max(totals))
    for tick in range(5):
        value = y_max * tick // 4
        y = base - plot_h * tick / 4
        if tick:
            shapes.append(Line(left, y, left + plot_w, y, GRID_COLOUR))
        shapes.append(Text(left - 1.2, y + TEXT_MM / 3, f"{value:,}".replace(",", " "), "end"))
    slot = plot_w / max(len(chart.buckets), 1)
    bar_w = slot * 0.7
    label_every = max(1, math.ceil(len(chart.buckets) * 14 / plot_w))
    for i, bucket in enumerate(chart.buckets):
        x, y = left + slot * i + (slot - bar_w) / 2, base
        for j, series in enumerate(chart.series):
            h = plot_h * series.values[i] / y_max
            if h > 0:
                y -= h
                title = f"{series.name} {bucket}: {series.values[i]}"
                shapes.append(Rect(x, y, bar_w, h, colour(j, len(chart.series)), title))
        if i % label_every == 0:
            shapes.append(Text(x + bar_w / 2, base + 3.6, bucket, "middle"))
    return shapes + _legend(chart, left, base + 8.0, plot_w)


def _legend(chart: TrendChart, left: float, y: float, width: float) -> list[Shape]:
    shapes: list[Shape] = []
    column = width / 3
    for j, series in enumerate(chart.series):
        x, row_y = left + column * (j % 3), y + 4.5 * (j // 3)
        shapes.append(Rect(x, row_y - 2.4, 2.8, 2.8, colour(j, len(chart.series))))
        shapes.append(Text(x + 4, row_y, f"{series.name} ({sum(series.values):,})"))
    return shapes


# ------------------------------------------------------------------------------------ SVG


def _rgb(fill: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*fill)


def _svg_shape(shape: Shape) -> str:
    if isinstance(shape, Rect):
        title = f"<title>{html.escape(shape.title)}</title>" if shape.title else ""
        return (
            f'<rect x="{shape.x:.2f}" y="{shape.y:.2f}" width="{shape.w:.2f}"'
            f' height="{shape.h:.2f}" fill="{_rgb(shape.fill)}">{title}</rect>'
        )
    if isinstance(shape, Line):
        return (
            f'<line x1="{shape.x1:.2f}" y1="{shape.y1:.2f}" x2="{shape.x2:.2f}"'
            f' y2="{shape.y2:.2f}" stroke="{_rgb(shape.colour)}" stroke-width="0.25"/>'
        )
    return (
        f'<text x="{shape.x:.2f}" y="{shape.y:.2f}" text-anchor="{shape.anchor}"'
        f' font-size="{shape.size:.2f}">{html.escape(shape.text)}</text>'
    )


def to_svg(chart: TrendChart, width: float = 180.0, height: float = 70.0) -> str:
    """The chart as an inline ``<svg>`` element (scales to the page width)."""
    body = "".join(_svg_shape(s) for s in layout(chart, width, height))
    label = html.escape(chart.description)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:g} {height:g}"'
        f' width="100%" role="img" aria-label="{label}" font-family="Helvetica, Arial,'
        f' sans-serif"><title>{label}</title>{body}</svg>'
    )


# ------------------------------------------------------------------------------------ PDF


def draw_pdf(pdf: Any, chart: TrendChart, width: float, height: float, latin1: Any) -> None:
    """Draw the chart on an fpdf2 document at its current position, then move below it."""
    x0, y0 = pdf.get_x(), pdf.get_y()
    pdf.set_line_width(0.25)
    for shape in layout(chart, width, height):
        if isinstance(shape, Rect):
            pdf.set_fill_color(*shape.fill)
            pdf.rect(x0 + shape.x, y0 + shape.y, shape.w, shape.h, style="F")
        elif isinstance(shape, Line):
            pdf.set_draw_color(*shape.colour)
            pdf.line(x0 + shape.x1, y0 + shape.y1, x0 + shape.x2, y0 + shape.y2)
        else:
            pdf.set_font("Helvetica", size=shape.size * 72 / 25.4)
            text = latin1(shape.text)
            shift = {"start": 0.0, "middle": 0.5, "end": 1.0}[shape.anchor]
            pdf.text(x0 + shape.x - pdf.get_string_width(text) * shift, y0 + shape.y, text)
    pdf.set_draw_color(0, 0, 0)
    pdf.set_xy(x0, y0 + height + 2)
