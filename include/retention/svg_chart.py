"""Bar charts as inline SVG: no script, no CDN, readable without a browser plug-in.

:func:`bar_chart` draws one bar per labelled value with a y-axis maximum and the first and last
labels under the axis; :func:`sparkline` is the same without axes, small enough for a table
cell. Every bar carries a ``<title>`` (the exact figure on hover) and the chart a text
alternative (``role="img"`` and ``aria-label``).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

BAR_COLOUR = "#0b6e99"
AXIS_COLOUR = "#6b7280"
EMPTY_COLOUR = "#d1d5db"


def _bars(
    values: Sequence[int], labels: Sequence[str], box: tuple[float, float, float, float]
) -> list[str]:
    """``<rect>`` elements for ``values`` inside ``box`` = (left, top, width, height)."""
    left, top, width, height = box
    peak = max(values, default=0) or 1
    step = width / max(len(values), 1)
    bar = max(step * 0.7, 1.0)
    out = []
    for i, (value, label) in enumerate(zip(values, labels, strict=True)):
        h = height * value / peak if value else 1.0  # a hairline marks a day with none
        colour = BAR_COLOUR if value else EMPTY_COLOUR
        x, y = left + i * step + (step - bar) / 2, top + height - h
        out.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colour}">'
            f"<title>{escape(label)}: {value:,}</title></rect>"
        )
    return out


def bar_chart(
    values: Sequence[int],
    labels: Sequence[str],
    *,
    title: str,
    unit: str = "records",
    width: int = 640,
    height: int = 160,
) -> str:
    """A bar chart of ``values`` (one per label, in order) as an SVG element."""
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} values but {len(labels)} labels")
    pad_left, pad_bottom, pad_top = 48, 22, 10
    plot = (pad_left, pad_top, width - pad_left - 4, height - pad_top - pad_bottom)
    peak = max(values, default=0)
    total = sum(values)
    axis_y = pad_top + plot[3]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}"'
        f' height="{height}" viewBox="0 0 {width} {height}" role="img"'
        f' aria-label="{escape(title)}: {total:,} {escape(unit)} in total, at most {peak:,}'
        f' on one day">',
        f"<title>{escape(title)}</title>",
        *_bars(values, labels, plot),
        f'<line x1="{pad_left}" y1="{axis_y}" x2="{width - 4}" y2="{axis_y}"'
        f' stroke="{AXIS_COLOUR}"/>',
        f'<text x="{pad_left - 6}" y="{pad_top + 10}" text-anchor="end" font-size="11"'
        f' fill="{AXIS_COLOUR}">{peak:,}</text>',
        f'<text x="{pad_left - 6}" y="{axis_y}" text-anchor="end" font-size="11"'
        f' fill="{AXIS_COLOUR}">0</text>',
    ]
    if labels:
        parts += [
            f'<text x="{pad_left}" y="{height - 6}" font-size="11" fill="{AXIS_COLOUR}">'
            f"{escape(labels[0])}</text>",
            f'<text x="{width - 4}" y="{height - 6}" text-anchor="end" font-size="11"'
            f' fill="{AXIS_COLOUR}">{escape(labels[-1])}</text>',
        ]
    parts.append("</svg>")
    return "".join(parts)


def sparkline(
    values: Sequence[int], labels: Sequence[str], *, title: str, width: int = 120, height: int = 24
) -> str:
    """A small bar chart without axes, for a table cell."""
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} values but {len(labels)} labels")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="spark" width="{width}"'
        f' height="{height}" viewBox="0 0 {width} {height}" role="img"'
        f' aria-label="{escape(title)}: {sum(values):,} in total">'
        + "".join(_bars(values, labels, (0, 1, width, height - 2)))
        + "</svg>"
    )
