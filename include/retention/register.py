"""The Art. 30 record of processing activities, rendered from the catalogue.

Swedish and English, as Markdown, HTML and CSV, with the list of policy gaps (activities whose
policy states no retention period for some records).
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.retention.catalogue import Activity, Catalogue

LANGUAGES = ("sv", "en")

_BASIS_LABELS = {
    "sv": {
        "consent": "Samtycke (art. 6.1 a)",
        "contract": "Avtal (art. 6.1 b)",
        "legal_obligation": "Rättslig förpliktelse (art. 6.1 c)",
        "vital_interest": "Grundläggande intresse (art. 6.1 d)",
        "public_task": "Allmänt intresse (art. 6.1 e)",
        "legitimate_interest": "Intresseavvägning (art. 6.1 f)",
    },
    "en": {
        "consent": "Consent (Art. 6(1)(a))",
        "contract": "Contract (Art. 6(1)(b))",
        "legal_obligation": "Legal obligation (Art. 6(1)(c))",
        "vital_interest": "Vital interests (Art. 6(1)(d))",
        "public_task": "Public task (Art. 6(1)(e))",
        "legitimate_interest": "Legitimate interests (Art. 6(1)(f))",
    },
}
_MECHANISMS = {
    "sv": {
        "standard_contractual_clauses": "EU-kommissionens standardavtalsklausuler",
        "adequacy_decision": "beslut om adekvat skyddsnivå",
    },
    "en": {
        "standard_contractual_clauses": "standard contractual clauses",
        "adequacy_decision": "adequacy decision",
    },
}
_HEADINGS: dict[str, dict[str, Any]] = {
    "sv": {
        "title": "Register över behandlingar (art. 30 GDPR)",
        "catalogue": "Katalogversion",
        "columns": [
            "Id",
            "Behandling",
            "Ändamål",
            "Rättslig grund",
            "Registrerade",
            "Kategorier",
            "Mottagare",
            "Överföring utanför EU/EES",
            "Lagringstid (policy)",
            "Regel som verkställs",
            "Åtgärd",
            "Källa",
        ],
        "gaps": "Luckor i policyn (ingen lagringstid angiven – endast rapport, ingen radering)",
        "none": "inga",
    },
    "en": {
        "title": "Record of processing activities (GDPR Art. 30)",
        "catalogue": "Catalogue version",
        "columns": [
            "Id",
            "Activity",
            "Purpose",
            "Legal basis",
            "Data subjects",
            "Data categories",
            "Recipients",
            "Transfers outside the EU/EEA",
            "Retention (policy text)",
            "Rule enforced",
            "Action",
            "Source",
        ],
        "gaps": "Policy gaps (no retention period stated: report only, never deleted)",
        "none": "none",
    },
}


@dataclass(frozen=True)
class Register:
    """The rendered record in one language: a header and one row per activity."""

    language: str
    version: str
    columns: list[str]
    rows: list[list[str]]
    gaps: list[str]


def _row(activity: Activity, language: str) -> list[str]:
    none = _HEADINGS[language]["none"]
    transfers = ", ".join(
        f"{t.country} ({_MECHANISMS[language][t.mechanism]})" for t in activity.transfers
    )
    source = activity.source
    location = source.table if source.kind == "sql" else f"s3://{source.bucket}/{source.prefix}"
    return [
        activity.id,
        getattr(activity.name, language),
        getattr(activity.purpose, language),
        ", ".join(_BASIS_LABELS[language][basis] for basis in activity.legal_bases),
        ", ".join(activity.data_subjects),
        ", ".join(activity.data_categories),
        ", ".join(activity.recipients) or none,
        transfers or none,
        activity.policy_text_sv,
        activity.describe_rule(),
        activity.action.kind,
        f"{source.system}: {location}",
    ]


def build_register(catalogue: Catalogue, language: str) -> Register:
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, not {language!r}")
    activities = sorted(catalogue, key=lambda a: a.id)
    return Register(
        language=language,
        version=catalogue.version,
        columns=list(_HEADINGS[language]["columns"]),
        rows=[_row(activity, language) for activity in activities],
        gaps=[f"{a.id} ({getattr(a.name, language)})" for a in activities if a.policy_gap],
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(register: Register) -> str:
    head = _HEADINGS[register.language]
    lines = [f"# {head['title']}", "", f"{head['catalogue']}: `{register.version}`", ""]
    lines.append("| " + " | ".join(register.columns) + " |")
    lines.append("|" + "---|" * len(register.columns))
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in register.rows]
    lines += ["", f"## {head['gaps']}", ""]
    lines += [f"- {gap}" for gap in register.gaps] or [f"- {head['none']}"]
    return "\n".join(lines) + "\n"


def _html_rows(rows: Iterable[list[str]], cell: str) -> str:
    return "\n".join(
        "<tr>" + "".join(f"<{cell}>{html.escape(c)}</{cell}>" for c in row) + "</tr>"
        for row in rows
    )


def to_html(register: Register) -> str:
    head = _HEADINGS[register.language]
    gaps = "".join(f"<li>{html.escape(g)}</li>" for g in register.gaps)
    return (
        f'<!doctype html><html lang="{register.language}"><head><meta charset="utf-8">'
        f"<title>{html.escape(head['title'])}</title></head><body>"
        f"<h1>{html.escape(head['title'])}</h1>"
        f"<p>{head['catalogue']}: <code>{register.version}</code></p>"
        f"<table><thead>{_html_rows([register.columns], 'th')}</thead>"
        f"<tbody>{_html_rows(register.rows, 'td')}</tbody></table>"
        f"<h2>{html.escape(head['gaps'])}</h2><ul>{gaps}</ul></body></html>\n"
    )


def to_csv(register: Register) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*register.columns, "policy_gap"])
    gap_ids = {gap.split(" ", 1)[0] for gap in register.gaps}
    writer.writerows([*row, "yes" if row[0] in gap_ids else "no"] for row in register.rows)
    return buffer.getvalue()


RENDERERS = {"md": to_markdown, "html": to_html, "csv": to_csv}


def write_register(catalogue: Catalogue, out_dir: Path) -> list[Path]:
    """Write the record in every language and format; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for language in LANGUAGES:
        register = build_register(catalogue, language)
        for suffix, render in RENDERERS.items():
            path = out_dir / f"art30_register.{language}.{suffix}"
            path.write_text(render(register), encoding="utf-8")
            written.append(path)
    return written
