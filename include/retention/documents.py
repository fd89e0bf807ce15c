"""Audit documents (deletion certificates, audit reports) as a small model of blocks, rendered
to print-ready HTML and to PDF in the Art. 30 register's style.

A document is a title, a few lines under it, and blocks: ``Facts`` (a two-column table of
labelled values), ``Grid`` (a table with a header row), ``Notes`` (a bullet list) and
``Figure`` (a chart). Technical identifiers are ``Item(code=True)`` or listed in a grid's
``code_columns``: shown in monospace (and left out of language checks).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from include.retention.charts import TrendChart, draw_pdf, to_svg
from include.retention.register import _CSS, Item, _html_list, _html_table


@dataclass(frozen=True)
class Facts:
    heading: str
    items: list[Item]


@dataclass(frozen=True)
class Grid:
    heading: str
    columns: list[str]
    rows: list[list[str]]
    code_columns: tuple[int, ...] = ()
    widths: tuple[float, ...] = ()  # relative column widths (PDF); equal when empty


@dataclass(frozen=True)
class Notes:
    heading: str
    lines: list[str]


@dataclass(frozen=True)
class Figure:
    heading: str
    chart: TrendChart
    caption: str = ""


Block = Facts | Grid | Notes | Figure


@dataclass(frozen=True)
class Document:
    """A rendered audit document in one language. ``words`` needs ``page`` and ``none``."""

    language: str
    title: str
    meta: list[str]
    blocks: list[Block]
    words: dict[str, str] = field(repr=False)
    landscape: bool = False


# ----------------------------------------------------------------------------------- HTML

_EXTRA_CSS = """
table.grid { table-layout: auto; font-size: 9pt; }
table.grid th { width: auto; vertical-align: bottom; }
table.grid th, table.grid td { overflow-wrap: normal; hyphens: manual; }
table.grid td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: .4em 0 1em; break-inside: avoid; }
figcaption { font-size: 9pt; color: #444; }
p.meta { margin: .15em 0; }
"""


def _grid_html(grid: Grid) -> str:
    esc = html.escape
    head = "".join(f'<th scope="col">{esc(c)}</th>' for c in grid.columns)
    rows = []
    for row in grid.rows:
        cells = []
        for i, value in enumerate(row):
            shown = f"<code>{esc(value)}</code>" if i in grid.code_columns else esc(value)
            numeric = value.replace(" ", "").replace("–", "").isdigit()
            cells.append(f'<td class="n">{shown}</td>' if numeric else f"<td>{shown}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    body = "".join(rows)
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _block_html(block: Block, none: str) -> str:
    heading = f"<h2>{html.escape(block.heading)}</h2>"
    if isinstance(block, Facts):
        return heading + _html_table(block.items)
    if isinstance(block, Grid):
        return heading + _grid_html(block)
    if isinstance(block, Notes):
        return heading + _html_list(block.lines, none)
    caption = f"<figcaption>{html.escape(block.caption)}</figcaption>" if block.caption else ""
    return f"{heading}<figure>{to_svg(block.chart)}{caption}</figure>"


def to_html(document: Document) -> str:
    esc, none = html.escape, document.words["none"]
    page = "@page { size: A4 landscape; } body { max-width: 265mm; }" if document.landscape else ""
    meta = "".join(f'<p class="meta">{esc(line)}</p>' for line in document.meta)
    body = "".join(_block_html(block, none) for block in document.blocks)
    return (
        f'<!doctype html>\n<html lang="{document.language}"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(document.title)}</title><style>{_CSS}{_EXTRA_CSS}{page}</style></head>"
        f"<body><h1>{esc(document.title)}</h1>{meta}{body}</body></html>\n"
    )


# ------------------------------------------------------------------------------------ PDF


def to_pdf(document: Document) -> bytes:
    from fpdf.fonts import FontFace  # fpdf2: only when a PDF is asked for

    from include.retention.register_pdf import PdfDocument, latin1

    pdf = PdfDocument(
        document.title, document.language, document.words, landscape=document.landscape,
        creator="include.retention.documents",
    )  # fmt: skip
    pdf.add_page()
    pdf.heading(document.title, 16)
    for line in document.meta:
        pdf.paragraph(line, 9)
    for block in document.blocks:
        if pdf.will_page_break(40):
            pdf.add_page()
        pdf.heading(block.heading, 12)
        if isinstance(block, Facts):
            pdf.items(block.items)
        elif isinstance(block, Notes):
            pdf.bullets(block.lines)
        elif isinstance(block, Figure):
            if pdf.will_page_break(80):
                pdf.add_page()
            draw_pdf(pdf, block.chart, pdf.epw, 70.0, latin1)
            if block.caption:
                pdf.paragraph(block.caption, 8.5)
        else:
            _grid_pdf(pdf, block, FontFace(emphasis="BOLD", fill_color=(243, 243, 243)), latin1)
    return bytes(pdf.output())


def _grid_pdf(pdf: Any, grid: Grid, heading_style: Any, latin1: Callable[[str], str]) -> None:
    pdf.set_font("Helvetica", size=7.5)
    widths = grid.widths or tuple(1.0 for _ in grid.columns)
    with pdf.table(
        col_widths=widths, line_height=3.6, padding=1, headings_style=heading_style,
        width=pdf.epw,
    ) as table:  # fmt: skip
        for row in [grid.columns, *grid.rows]:
            cells = table.row()
            for value in row:
                cells.cell(latin1(value))
    pdf.ln(3)
