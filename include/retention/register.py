"""The Art. 30 record of processing activities, rendered from the catalogue.

One document per language (Swedish, English), written for a supervisory authority: the
controller and its contacts (Art. 30(1)(a)), how the policy's words about time are read, one
section per activity ((b)-(f) and the rule enforced), the policy gaps, the assumptions to
confirm and the security measures ((g)). Rendered as Markdown, HTML (print-ready), PDF and CSV.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from include.retention.catalogue import Activity, Assumption, Catalogue
from include.retention.controller import Controller, load_controller
from include.retention.texts import LANGUAGES, Language

BASIS_LABELS = {
    "sv": {
        "consent": "Samtycke (art. 6.1 a)",
        "contract": "Avtal (art. 6.1 b)",
        "legal_obligation": "Rättslig förpliktelse (art. 6.1 c)",
        "vital_interest": "Grundläggande intresse (art. 6.1 d)",
        "public_task": "Allmänt intresse (art. 6.1 e)",
        "legitimate_interest": "Intresseavvägning (art. 6.1 f)",
    },
    "en": {
        "consent": "Art. 6(1)(a) consent",
        "contract": "Art. 6(1)(b) contract",
        "legal_obligation": "Art. 6(1)(c) legal obligation",
        "vital_interest": "Art. 6(1)(d) vital interests",
        "public_task": "Art. 6(1)(e) public task",
        "legitimate_interest": "Art. 6(1)(f) legitimate interest",
    },
}
_MECHANISMS = {
    "sv": {
        "standard_contractual_clauses": "EU-kommissionens standardavtalsklausuler",
        "adequacy_decision": "beslut om adekvat skyddsnivå",
    },
    "en": {
        "standard_contractual_clauses": "the European Commission's standard contractual clauses",
        "adequacy_decision": "adequacy decision",
    },
}
_COUNTRIES = {
    "sv": {"US": "USA", "GB": "Storbritannien"},
    "en": {"US": "United States", "GB": "United Kingdom"},
}
ACTIONS = {
    "sv": {
        "delete": "radering (med tillhörande uppgifter och filer)",
        "anonymise": "anonymisering (direkta identifierare tas bort, indirekta generaliseras)",
        "report_only": "endast rapport (ingenting raderas)",
    },
    "en": {
        "delete": "erasure (with the data and files that belong to the record)",
        "anonymise": "anonymisation (direct identifiers removed, quasi-identifiers generalised)",
        "report_only": "report only (nothing is erased)",
    },
}
_WORDS: dict[str, dict[str, str]] = {
    "sv": {
        "title": "Register över behandlingar av personuppgifter (artikel 30 i GDPR)",
        "version": "Katalogversion",
        "generated": "Registret är framställt ur behandlingskatalogen",
        "controller": "Personuppgiftsansvarig (art. 30.1 a)",
        "name": "Namn",
        "contact": "Kontakt",
        "dpo": "Dataskyddskontakt",
        "authority": "Tillsynsmyndighet",
        "interpretations": "Hur policyns tidsangivelser tillämpas",
        "activities": "Behandlingar (art. 30.1 b–f)",
        "purpose": "Ändamål (b)",
        "basis": "Rättslig grund",
        "subjects": "Kategorier av registrerade (c)",
        "categories": "Kategorier av personuppgifter (c)",
        "recipients": "Kategorier av mottagare (d)",
        "transfers": "Överföring till tredjeland (e)",
        "policy": "Lagringstid enligt policyn (f)",
        "rule": "Gallringsregel som verkställs",
        "action": "Åtgärd",
        "source": "System och tabell",
        "assumption": "Antagande att bekräfta",
        "processor": "Personuppgiftsbiträde åt (art. 30.2; den registrerade hänvisas dit)",
        "gap": "Lucka i policyn",
        "gap_text": "ingen lagringstid angiven – endast rapport, ingenting raderas",
        "gaps": "Luckor i policyn (ingen lagringstid angiven – endast rapport, ingen radering)",
        "assumptions": "Antaganden att bekräfta (policyn säger inte detta)",
        "security": "Tekniska och organisatoriska säkerhetsåtgärder (art. 30.1 g)",
        "none": "inga",
        "page": "Sida",
        "id": "Id",
        "activity": "Behandling",
    },
    "en": {
        "title": "Record of processing activities (Article 30 GDPR)",
        "version": "Catalogue version",
        "generated": "This record is generated from the processing catalogue",
        "controller": "Controller (Art. 30(1)(a))",
        "name": "Name",
        "contact": "Contact",
        "dpo": "Data protection contact",
        "authority": "Supervisory authority",
        "interpretations": "How the policy's time expressions are applied",
        "activities": "Processing activities (Art. 30(1)(b)–(f))",
        "purpose": "Purpose (b)",
        "basis": "Legal basis",
        "subjects": "Categories of data subjects (c)",
        "categories": "Categories of personal data (c)",
        "recipients": "Categories of recipients (d)",
        "transfers": "Transfers to third countries (e)",
        "policy": "Retention in the policy (f; Swedish original)",
        "rule": "Retention rule enforced",
        "action": "Action",
        "source": "System and table",
        "assumption": "Assumption to confirm",
        "processor": "Processed as a processor for (Art. 30(2); the person is referred there)",
        "gap": "Policy gap",
        "gap_text": "no retention period stated – report only, nothing is erased",
        "gaps": "Policy gaps (no retention period stated: report only, never deleted)",
        "assumptions": "Assumptions to confirm (the policy does not state them)",
        "security": "Technical and organisational security measures (Art. 30(1)(g))",
        "none": "none",
        "page": "Page",
        "id": "Id",
        "activity": "Activity",
    },
}


@dataclass(frozen=True)
class Item:
    """One labelled value of a section; ``code`` marks technical identifiers."""

    label: str
    value: str
    code: bool = False


@dataclass(frozen=True)
class Entry:
    """One processing activity."""

    id: str
    title: str
    items: list[Item]


@dataclass(frozen=True)
class Register:
    """The rendered record in one language."""

    language: Language
    version: str
    controller: list[Item]
    interpretations: list[str]
    entries: list[Entry]
    gaps: list[str]
    assumptions: list[str]
    security: list[str]
    words: dict[str, str] = field(repr=False)

    @property
    def columns(self) -> list[str]:
        """The CSV header: id, activity, then every label an activity's items can have."""
        return [self.words["id"], self.words["activity"], *[self.words[k] for k in _ITEM_KEYS]]

    @property
    def rows(self) -> list[list[str]]:
        labels = [self.words[k] for k in _ITEM_KEYS]
        return [
            [e.id, e.title, *[{i.label: i.value for i in e.items}.get(c, "") for c in labels]]
            for e in self.entries
        ]


_ITEM_KEYS = (
    "purpose", "basis", "subjects", "categories", "recipients", "transfers", "policy", "rule",
    "action", "source", "processor", "assumption", "gap",
)  # fmt: skip


def _items(activity: Activity, lang: Language) -> list[Item]:
    w, none = _WORDS[lang], _WORDS[lang]["none"]
    transfers = "; ".join(
        f"{_COUNTRIES[lang].get(t.country, t.country)} ({_MECHANISMS[lang][t.mechanism]})"
        for t in activity.transfers
    )
    location = activity.source.location()
    items = [
        Item(w["purpose"], activity.purpose[lang]),
        Item(w["basis"], "; ".join(BASIS_LABELS[lang][b] for b in activity.legal_bases)),
        Item(w["subjects"], "; ".join(s[lang] for s in activity.data_subjects)),
        Item(w["categories"], "; ".join(c[lang] for c in activity.data_categories)),
        Item(w["recipients"], "; ".join(r[lang] for r in activity.recipients) or none),
        Item(w["transfers"], transfers or none),
        Item(w["policy"], activity.policy_text_sv),
        Item(w["rule"], "; ".join(activity.rule_descriptions(lang))),
        Item(w["action"], ACTIONS[lang][activity.action.kind]),
        Item(w["source"], location, code=True),
    ]
    if activity.processor_for is not None:
        items.append(Item(w["processor"], activity.processor_for[lang]))
    if activity.assumptions:
        text = " ".join(_assumption(a, lang) for a in activity.assumptions)
        items.append(Item(w["assumption"], text))
    if activity.policy_gap:
        items.append(Item(w["gap"], w["gap_text"]))
    return items


def _assumption(assumption: Assumption, lang: Language) -> str:
    return f"{assumption.statement[lang]} {assumption.reason[lang]}"


def _controller(controller: Controller, lang: Language) -> list[Item]:
    w, dpo = _WORDS[lang], controller.data_protection_contact
    return [
        Item(w["name"], controller.name),
        Item(w["contact"], f"{controller.contact.email} ({controller.contact.role[lang]})"),
        Item(w["dpo"], f"{dpo.title[lang]}: {dpo.email}"),
        Item(w["authority"], controller.supervisory_authority[lang]),
    ]


def build_register(
    catalogue: Catalogue, language: str, controller: Controller | None = None
) -> Register:
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, not {language!r}")
    lang: Language = "sv" if language == "sv" else "en"
    controller = controller or load_controller()
    activities = sorted(catalogue, key=lambda a: a.id)
    return Register(
        language=lang,
        version=catalogue.version,
        controller=_controller(controller, lang),
        interpretations=[text[lang] for text in controller.interpretations],
        entries=[Entry(a.id, a.name[lang], _items(a, lang)) for a in activities],
        gaps=[f"{a.id} ({a.name[lang]})" for a in activities if a.policy_gap],
        assumptions=[
            f"{a.id} ({a.name[lang]}): {_assumption(x, lang)}"
            for a in activities
            for x in a.assumptions
        ],
        security=[text[lang] for text in controller.security_measures],
        words=_WORDS[lang],
    )


# ------------------------------------------------------------------------------- Markdown


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_list(items: list[str], none: str) -> list[str]:
    return [f"- {_md(item)}" for item in items] or [f"- {none}"]


def to_markdown(register: Register) -> str:
    w = register.words
    lines = [f"# {w['title']}", "", f"{w['generated']}. {w['version']}: `{register.version}`.", ""]
    lines += [f"## {w['controller']}", ""]
    lines += [f"- **{i.label}:** {_md(i.value)}" for i in register.controller]
    lines += ["", f"## {w['interpretations']}", "", *_md_list(register.interpretations, w["none"])]
    lines += ["", f"## {w['activities']}"]
    for entry in register.entries:
        lines += ["", f"### {entry.title} (`{entry.id}`)", "", f"| {w['id']} | `{entry.id}` |"]
        lines.append("|---|---|")
        lines += [
            f"| {i.label} | " + (f"`{i.value}`" if i.code else _md(i.value)) + " |"
            for i in entry.items
        ]
    for heading, items in (
        (w["gaps"], register.gaps),
        (w["assumptions"], register.assumptions),
        (w["security"], register.security),
    ):
        lines += ["", f"## {heading}", "", *_md_list(items, w["none"])]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- HTML

_CSS = """
@page { size: A4; margin: 18mm 16mm 20mm; }
body { font-family: Georgia, "Times New Roman", serif; font-size: 10.5pt; line-height: 1.45;
  color: #111; max-width: 178mm; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 18pt; margin: 0 0 .3em; }
h2 { font-size: 13pt; margin: 1.8em 0 .6em; padding-bottom: .2em; border-bottom: 1px solid #888;
  break-after: avoid; }
h3 { font-size: 11.5pt; margin: 1.4em 0 .4em; break-after: avoid; }
p.meta { color: #444; font-size: 9.5pt; }
table { width: 100%; border-collapse: collapse; table-layout: fixed; margin: 0 0 .8em; }
th, td { border: 1px solid #bbb; padding: 3pt 6pt; text-align: left; vertical-align: top;
  overflow-wrap: anywhere; hyphens: auto; }
th { width: 30%; background: #f3f3f3; font-weight: 600; }
section.activity { break-inside: avoid; page-break-inside: avoid; }
ul { padding-left: 1.3em; } li { margin: .25em 0; }
code { font-family: "DejaVu Sans Mono", Consolas, monospace; font-size: 9pt; }
@media print { body { max-width: none; margin: 0; padding: 0; } h2 { break-before: auto; } }
"""


def _html_table(items: list[Item]) -> str:
    rows = "".join(
        f'<tr><th scope="row">{html.escape(i.label)}</th><td>'
        + (f"<code>{html.escape(i.value)}</code>" if i.code else html.escape(i.value))
        + "</td></tr>"
        for i in items
    )
    return f"<table>{rows}</table>"


def _html_list(items: list[str], none: str) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items or [none]) + "</ul>"


def to_html(register: Register) -> str:
    w, esc = register.words, html.escape
    sections = "".join(
        f'<section class="activity" id="{esc(e.id)}"><h3>{esc(e.title)} '
        f"(<code>{esc(e.id)}</code>)</h3>{_html_table(e.items)}</section>"
        for e in register.entries
    )
    tail = "".join(
        f"<h2>{esc(heading)}</h2>{_html_list(items, w['none'])}"
        for heading, items in (
            (w["gaps"], register.gaps),
            (w["assumptions"], register.assumptions),
            (w["security"], register.security),
        )
    )
    return (
        f'<!doctype html>\n<html lang="{register.language}"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(w['title'])}</title><style>{_CSS}</style></head><body>"
        f"<h1>{esc(w['title'])}</h1>"
        f'<p class="meta">{esc(w["generated"])}. {esc(w["version"])}: '
        f"<code>{esc(register.version)}</code>.</p>"
        f"<h2>{esc(w['controller'])}</h2>{_html_table(register.controller)}"
        f"<h2>{esc(w['interpretations'])}</h2>{_html_list(register.interpretations, w['none'])}"
        f"<h2>{esc(w['activities'])}</h2>{sections}{tail}</body></html>\n"
    )


# ------------------------------------------------------------------------------------ CSV


def to_csv(register: Register) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(register.columns)
    writer.writerows(register.rows)
    return buffer.getvalue()


RENDERERS = {"md": to_markdown, "html": to_html, "csv": to_csv}


def write_register(
    catalogue: Catalogue, out_dir: Path, controller: Controller | None = None
) -> list[Path]:
    """Write the record in every language and format; return the files written."""
    from include.retention.register_pdf import to_pdf  # fpdf2: only when writing files

    out_dir.mkdir(parents=True, exist_ok=True)
    controller = controller or load_controller()
    written = []
    for language in LANGUAGES:
        register = build_register(catalogue, language, controller)
        for suffix, render in RENDERERS.items():
            path = out_dir / f"art30_register.{language}.{suffix}"
            path.write_text(render(register), encoding="utf-8")
            written.append(path)
        path = out_dir / f"art30_register.{language}.pdf"
        path.write_bytes(to_pdf(register))
        written.append(path)
    return written
