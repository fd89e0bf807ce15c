"""The Art. 30 record as a PDF (A4), drawn with fpdf2: pure Python, pinned in requirements.txt,
no browser or system library needed (Chromium is not installed on every machine that runs
``make register``). The built-in Helvetica covers Swedish (Latin-1); the few typographic
characters outside it are replaced by their plain equivalents."""

from __future__ import annotations

from fpdf import FPDF
from fpdf.fonts import FontFace

from include.retention.register import Item, Register

_PLAIN = str.maketrans({"–": "-", "—": "-", "’": "'", "“": '"', "”": '"', "…": "...", "≤": "<="})
_LABEL_WIDTH = 52  # mm, of 180 mm between the margins


def latin1(text: str) -> str:
    """``text`` in the built-in fonts' Latin-1 (Swedish fits; dashes and quotes are plainer)."""
    return text.translate(_PLAIN).encode("latin-1", "replace").decode("latin-1")


class PdfDocument(FPDF):
    """An A4 document in the register's style: a title in the footer with the page number,
    headings, paragraphs, bullet lists and two-column label/value tables."""

    def __init__(
        self, title: str, language: str, words: dict[str, str], *, landscape: bool = False,
        creator: str = "include.retention.register",
    ) -> None:  # fmt: skip
        orientation = "landscape" if landscape else "portrait"
        super().__init__(orientation=orientation, unit="mm", format="A4")
        self.doc_title, self.words = title, words
        self.set_margins(15, 15, 15)
        self.set_auto_page_break(auto=True, margin=18)
        self.set_title(latin1(title))
        self.set_lang(language)
        self.set_creator(creator)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", size=8)
        page = f"{self.doc_title} - {self.words['page']} {self.page_no()}"
        self.cell(0, 5, latin1(page), align="C")

    def heading(self, text: str, size: float) -> None:
        self.set_font("Helvetica", "B", size)
        self.multi_cell(0, size * 0.5, latin1(text), new_x="LMARGIN", new_y="NEXT")
        self.ln(1.5)

    def paragraph(self, text: str, size: float = 9.5) -> None:
        self.set_font("Helvetica", size=size)
        self.multi_cell(0, 4.6, latin1(text), new_x="LMARGIN", new_y="NEXT")
        self.ln(1)

    def bullets(self, items: list[str]) -> None:
        self.set_font("Helvetica", size=9.5)
        for item in items or [self.words["none"]]:
            self.multi_cell(0, 4.6, latin1(f"- {item}"), new_x="LMARGIN", new_y="NEXT")
            self.ln(0.8)
        self.ln(2)

    def items(self, items: list[Item]) -> None:
        self.set_font("Helvetica", size=9)
        width = self.epw
        label_style = FontFace(emphasis="BOLD", fill_color=(243, 243, 243))
        with self.table(
            col_widths=(_LABEL_WIDTH, width - _LABEL_WIDTH),
            first_row_as_headings=False,
            line_height=4.4,
            padding=1.2,
            width=width,
        ) as table:
            for item in items:
                row = table.row()
                row.cell(latin1(item.label), style=label_style)
                row.cell(latin1(item.value))
        self.ln(3)


def to_pdf(register: Register) -> bytes:
    words = register.words
    pdf = PdfDocument(words["title"], register.language, words)
    pdf.add_page()
    pdf.heading(words["title"], 16)
    pdf.paragraph(f"{words['generated']}. {words['version']}: {register.version}.", 9)
    pdf.heading(words["controller"], 12.5)
    pdf.items(register.controller)
    pdf.heading(words["interpretations"], 12.5)
    pdf.bullets(register.interpretations)
    pdf.heading(words["activities"], 12.5)
    for entry in register.entries:
        if pdf.will_page_break(60):
            pdf.add_page()
        pdf.heading(f"{entry.title} ({entry.id})", 11)
        pdf.items(entry.items)
    for heading, items in (
        (words["gaps"], register.gaps),
        (words["assumptions"], register.assumptions),
        (words["security"], register.security),
    ):
        pdf.heading(heading, 12.5)
        pdf.bullets(items)
    return bytes(pdf.output())
