"""Data portability (Art. 20): the person's records in a structured, machine-readable form.

Art. 20(1) covers data processed on consent (Art. 6(1)(a)) or a contract (Art. 6(1)(b)): the
activities whose legal bases include one of them and whose dataset names its data subject.
Their records are read through the source adapters (as for access) and written as one JSON
file (every activity) and one CSV file per activity and system, UTF-8, to the request's
place (`responses`). The files are personal data: never in logs, XComs or the ledger.

Every field of a record is included: the catalogue does not tell fields the person provided
from ones the controller derived, and giving more is allowed where it adversely affects no one
else (the records are the person's own).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable
from typing import Any

from include.retention.access_extract import Found, plain, searchable
from include.retention.catalogue import Activity, LegalBasis
from include.retention.lookup import Reach
from include.retention.responses import ResponseStore

PORTABLE_BASES = frozenset({LegalBasis.consent, LegalBasis.contract})
JSON_FILE = "dataportabilitet.json"


def portable(catalogue: Iterable[Activity], kinds: Iterable[str]) -> list[Activity]:
    """Activities on consent or contract that identifiers of ``kinds`` can search (never those
    run as a processor: `access_extract.searchable`)."""
    return [a for a in searchable(catalogue, kinds) if PORTABLE_BASES & set(a.legal_bases)]


def csv_name(activity: Activity) -> str:
    return f"dataportabilitet-{activity.id}-{activity.source.system}.csv"


def document(
    request_ref: str, found: list[Found], created: dt.datetime, reach: Reach | None = None
) -> dict[str, Any]:
    """The JSON file: per activity and system, its legal bases and the records; where the
    company is a processor, whom to ask instead."""
    return {
        "request": request_ref,
        "created": created.isoformat(),
        "format": "GDPR Art. 20 data portability export, UTF-8 JSON",
        "ask_the_controller": [
            {"system": r["system"], "controller": r["controller_en"]}
            for r in (reach.refer if reach else [])
        ],
        "activities": [
            {
                "activity": f.activity.id,
                "name": {"sv": f.activity.name.sv, "en": f.activity.name.en},
                "legal_bases": [str(b) for b in f.activity.legal_bases if b in PORTABLE_BASES],
                "system": f.activity.source.system,
                "dataset": f.activity.source.dataset,
                "csv": csv_name(f.activity),
                "records": [{k: plain(v) for k, v in r.items()} for r in f.records],
            }
            for f in found
            if f.records
        ],
    }


def to_csv(records: list[dict[str, Any]]) -> bytes:
    """One row per record; the columns are every field seen, in first-seen order; nested
    values (an object's metadata) as JSON."""
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\r\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: _cell(v) for k, v in record.items()})
    return out.getvalue().encode("utf-8")


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return "" if value is None else value


def write(
    request_ref: str, found: list[Found], store: ResponseStore, created: dt.datetime,
    reach: Reach | None = None,
) -> list[str]:  # fmt: skip
    """Write the JSON file and one CSV per activity with records; the file names."""
    doc = document(request_ref, found, created, reach)
    store.write(JSON_FILE, json.dumps(doc, ensure_ascii=False, indent=2).encode("utf-8"))
    names = [JSON_FILE]
    for item in doc["activities"]:
        store.write(item["csv"], to_csv(item["records"]))
        names.append(item["csv"])
    return names
