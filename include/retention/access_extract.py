"""The register extract of a data-subject access request (Art. 15): every record of the person
found in every system, per activity with its purpose, legal basis, recipients, transfers,
retention and source system; JSON plus a readable HTML and PDF in Swedish.

Records are found through the source adapters (`sources`), selecting by the person's keyed
references, so the raw identifier is not needed here. The extract is personal data: it is
written only to the configured folder or S3 prefix (`responses`), and never to Airflow's
metadata DB, XComs or logs: the task returns counts and the location.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from include.retention.catalogue import Activity
from include.retention.errors import RetentionError
from include.retention.lookup import Reach
from include.retention.register import BASIS_LABELS
from include.retention.responses import ResponseStore
from include.retention.sources.base import OfSubject, adapter_for

FILES = ("registerutdrag.json", "registerutdrag.html", "registerutdrag.pdf")
LABELS_SV = {
    "email": "e-postadress",
    "phone": "telefonnummer",
    "personnummer": "personnummer eller samordningsnummer",
    "customer_id": "kundnummer",
}


@dataclass(frozen=True)
class Found:
    """The person's records in one activity's dataset."""

    activity: Activity
    records: list[dict[str, Any]]


def searchable(catalogue: Iterable[Activity], kinds: Iterable[str]) -> list[Activity]:
    """The activities a request giving identifiers of ``kinds`` can search: those the company
    runs as controller whose dataset has a lookup column of one of those kinds. Activities run
    as a processor are never searched (`lookup.reach` lists them: the person is referred)."""
    given = set(kinds)
    return [
        a for a in catalogue if a.processor_for is None and not given.isdisjoint(a.source.lookup)
    ]


def collect(
    activities: Iterable[Activity], refs: Sequence[bytes], key: bytes, connections: Any = None
) -> list[Found]:
    """Every record of the person (any of ``refs``, through any lookup column) in each
    activity's dataset. ``connections``: activity id -> engine or client (tests); else the
    Airflow connections."""
    found = []
    selection = OfSubject(frozenset(refs))
    for activity in activities:
        if activity.processor_for is not None:
            raise RetentionError(
                f"activity {activity.id!r} is processed for another controller: data-subject"
                " requests do not read its records (refer the person to that controller)"
            )
        connection = (connections or {}).get(activity.id)
        adapter = adapter_for(activity.source, key, connection)
        try:
            records = [dict(record) for record in adapter.read(selection)]
        finally:
            adapter.close()
        found.append(Found(activity, records))
    return found


def plain(value: Any) -> Any:
    """A record's value as JSON has it; child rows (lists of mappings) are converted too."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def document(
    request_ref: str, found: list[Found], created: dt.datetime, reach: Reach | None = None
) -> dict[str, Any]:
    """The extract as data (the JSON file), in Swedish: the records per activity; where we
    process as a processor, whom to ask instead; systems the given identifiers cannot search."""
    reach = reach or Reach()
    return {
        "ärende": request_ref,
        "skapat": created.isoformat(),
        "personuppgiftsbiträde": [
            f"{r['system']}: vi behandlar uppgifterna som personuppgiftsbiträde åt"
            f" {r['controller_sv']}; kontakta {r['controller_sv']} för att utöva dina rättigheter"
            for r in reach.refer
        ],
        "ej genomsökta system": [
            f"{system}: kan inte sökas med de uppgifter du lämnat; ange "
            + " eller ".join(LABELS_SV[k] for k in kinds)
            for system, kinds in sorted(reach.needed().items())
        ]
        + [
            f"{system}: har inte genomsökts; uppgifterna ingår ännu inte i någon registrerad"
            " behandling"
            for system in sorted(reach.undeclared)
        ],
        "behandlingar": [
            {
                "behandling": f.activity.name.sv,
                "ändamål": f.activity.purpose.sv,
                "rättslig grund": [BASIS_LABELS["sv"][b] for b in f.activity.legal_bases],
                "mottagare": [r.sv for r in f.activity.recipients],
                "överföringar till tredje land": [
                    {"land": t.country, "skyddsåtgärd": t.mechanism} for t in f.activity.transfers
                ],
                "lagringstid": f.activity.rule_descriptions("sv"),
                "källsystem": f.activity.source.system,
                "uppgifter": [{k: plain(v) for k, v in r.items()} for r in f.records],
            }
            for f in found
            if f.records
        ],
    }


def _html(doc: dict[str, Any]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html lang='sv'><meta charset='utf-8'>",
        f"<title>Registerutdrag {esc(doc['ärende'])}</title>",
        f"<h1>Registerutdrag ({esc(doc['ärende'])})</h1><p>Skapat {esc(doc['skapat'])}.</p>",
    ]
    if not doc["behandlingar"]:
        parts.append("<p>Vi har inga personuppgifter om dig i våra system.</p>")
    for key in ("personuppgiftsbiträde", "ej genomsökta system"):
        parts += [f"<p>{esc(line)}</p>" for line in doc[key]]
    for item in doc["behandlingar"]:
        facts = "".join(
            f"<tr><th>{esc(k)}</th><td>{esc(_text(item[k]))}</td></tr>"
            for k in ("ändamål", "rättslig grund", "mottagare", "överföringar till tredje land",
                      "lagringstid", "källsystem")
        )  # fmt: skip
        records = "".join(
            "<tr>" + "".join(f"<td>{esc(k)}: {esc(str(v))}</td>" for k, v in r.items()) + "</tr>"
            for r in item["uppgifter"]
        )
        parts.append(
            f"<h2>{esc(item['behandling'])}</h2><table>{facts}</table>"
            f"<h3>Uppgifter ({len(item['uppgifter'])})</h3><table>{records}</table>"
        )
    return "".join(parts) + "</html>"


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join(_text(v) for v in value) or "–"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def _pdf(doc: dict[str, Any]) -> bytes:
    from fpdf import FPDF

    from include.retention.register_pdf import latin1

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.multi_cell(0, 8, latin1(f"Registerutdrag ({doc['ärende']})"), new_x="LMARGIN")
    pdf.set_font("Helvetica", size=9)
    if not doc["behandlingar"]:
        pdf.multi_cell(0, 5, latin1("Vi har inga personuppgifter om dig i våra system."))
    for key in ("personuppgiftsbiträde", "ej genomsökta system"):
        for line in doc[key]:
            pdf.multi_cell(0, 5, latin1(line), new_x="LMARGIN")
    for item in doc["behandlingar"]:
        pdf.set_font("Helvetica", "B", 11)
        pdf.multi_cell(0, 7, latin1(item["behandling"]), new_x="LMARGIN")
        pdf.set_font("Helvetica", size=9)
        for name, value in item.items():
            if name not in ("behandling", "uppgifter"):
                pdf.multi_cell(0, 5, latin1(f"{name}: {_text(value)}"), new_x="LMARGIN")
        for record in item["uppgifter"]:
            pdf.multi_cell(0, 5, latin1("- " + _text(record)), new_x="LMARGIN")
    return bytes(pdf.output())


def write(
    request_ref: str, found: list[Found], store: ResponseStore, created: dt.datetime,
    reach: Reach | None = None,
) -> str:  # fmt: skip
    """Write the extract's three files to the request's place; returns its location."""
    doc = document(request_ref, found, created, reach)
    text = json.dumps(doc, ensure_ascii=False, indent=2, default=str)
    store.write(FILES[0], text.encode("utf-8"))
    store.write(FILES[1], _html(doc).encode("utf-8"))
    store.write(FILES[2], _pdf(doc))
    return store.location
