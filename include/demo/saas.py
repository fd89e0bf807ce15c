"""The demo's SaaS tool: catalogue activities with an ``http`` source keep their records in a
lead-capture CRM reached over its HTTP API (:mod:`include.demo.saas_server`).

Its records are designed like the SQL datasets (:mod:`include.demo.design`: expired, kept,
boundary, held, unknown anchor, consent withdrawn), with string ids (``lead-0001``) and
ISO-8601 date-times (UTC) as the API returns them, and listed in the manifest as ``record``
entries. They are written to the server's store file, which outlives the server process.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faker import Faker

from include.demo.design import AnchorKind, Designer
from include.demo.fill import Children, Row, RowContext, demo_leads, make_person
from include.demo.manifest import ManifestEntry
from include.demo.saas_server import Store
from include.retention.catalogue import Activity, Catalogue, HttpSource
from include.retention.errors import RetentionError
from include.retention.lookup import first_identifier

# Realistic fields of a collection's records, by collection (the SQL fillers' shape).
FILLERS: dict[str, Callable[[RowContext], tuple[Row, Children]]] = {"leads": demo_leads}
UID_BASE = 900_000  # people of the SaaS tool are not the SQL systems' people


def http_activities(catalogue: Catalogue) -> list[Activity]:
    return [a for a in catalogue if isinstance(a.source, HttpSource)]


def _text(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date) else value


def design_collection(
    activity: Activity, as_of: dt.datetime, seed: int
) -> tuple[list[tuple[str, dict[str, Any]]], list[ManifestEntry]]:
    """The records (id, fields) of one activity's collection and their manifest entries."""
    src = activity.source
    assert isinstance(src, HttpSource)
    filler = FILLERS.get(src.collection)
    if filler is None:
        raise RetentionError(f"activity {activity.id!r}: no demo data for {src.collection!r}")
    rng = random.Random(f"{seed}/{activity.id}")
    fake = Faker("sv_SE")
    fake.seed_instance(f"{seed}/{activity.id}/faker")
    anchors: dict[str, AnchorKind] = {
        c.anchor_column: "datetime" for c in activity.retention if c.anchor_column
    }
    designer = Designer(activity, as_of, anchors, rng)
    records: list[tuple[str, dict[str, Any]]] = []
    entries: list[ManifestEntry] = []
    for pk, design in enumerate(designer.designs(), start=1):
        uid = UID_BASE + pk
        ctx = RowContext(fake, rng, as_of, pk, uid, dict(design.values), make_person(fake, uid))
        extra, _ = filler(ctx)
        fields = {name: _text(value) for name, value in {**extra, **design.values}.items()}
        record_id = f"{src.collection.removesuffix('s')}-{pk:04d}"
        records.append((record_id, fields))
        subject = first_identifier(src.lookup_columns(), fields)
        entry = ManifestEntry(
            activity=activity.id, system=src.system, dataset=src.collection, pk=record_id,
            expectation=design.expectation, kind="record", hold=design.hold, note=design.note,
            subject=None if subject is None else str(subject),
        )  # fmt: skip
        entries.append(entry)
    return records, entries


def seed_saas(
    store: Path, as_of: dt.datetime, catalogue: Catalogue, seed: int
) -> list[ManifestEntry]:
    """Replace the records of every ``http`` activity's collection in the ``store`` file."""
    target = Store(store)
    entries: list[ManifestEntry] = []
    for activity in http_activities(catalogue):
        records, made = design_collection(activity, as_of, seed)
        collection = activity.source.collection  # type: ignore[union-attr]
        target.clear(collection)
        target.upsert(collection, [(rid, json.dumps(fields)) for rid, fields in records])
        entries += made
    return entries


def ensure_token(path: Path) -> str:
    """The demo API's token: generated once, readable by the owner only."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(secrets.token_urlsafe(32), encoding="ascii")
        path.chmod(0o600)
    return path.read_text(encoding="ascii").strip()
