"""The demo's SaaS tool: its designed records, seeded into the API server's store, are
deleted through the http adapter exactly as designed (due gone; held, kept, unknown stay)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from include.demo.manifest import Expectation, ManifestEntry
from include.demo.saas import design_collection
from include.demo.saas_server import SaasServer, Store
from include.retention.catalogue import Activity, DeleteAction, HttpSource, load_catalogue
from include.retention.holds import ActiveHolds
from include.retention.pseudonym import record_ref, subject_ref
from include.retention.sources.base import DueAt, adapter_for
from include.retention.sources.http import ApiClient, ApiSettings
from tests.s3 import AS_OF, KEY

SEED = 7
E = Expectation


def _lead_crm() -> Activity:
    """The catalogue's lead activity with an http source (whatever the catalogue binds now)."""
    activity = load_catalogue()["sales_leads"]
    source = HttpSource(
        system="lead_crm",
        conn_id="retention_lead_crm",
        collection="leads",
        lookup={"email": "email"},
    )
    return activity.model_copy(update={"source": source})


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[SaasServer, list[ManifestEntry]]]:
    records, entries = design_collection(_lead_crm(), AS_OF, SEED)
    Store(tmp_path / "saas.db").upsert("leads", [(i, json.dumps(f)) for i, f in records])
    with SaasServer(tmp_path / "saas.db", secrets.token_urlsafe(16)) as server:
        yield server, entries


def _holds(entries: list[ManifestEntry]) -> ActiveHolds:
    held = frozenset({"legal_hold"})
    return ActiveHolds(
        subjects={subject_ref(KEY, e.subject): held for e in entries if e.hold == "subject"},
        records={
            record_ref(KEY, e.system, e.dataset, e.pk): held for e in entries if e.hold == "record"
        },
    )


def test_the_design_is_deterministic_and_covers_every_category() -> None:
    first, entries = design_collection(_lead_crm(), AS_OF, SEED)
    assert design_collection(_lead_crm(), AS_OF, SEED)[0] == first
    assert {e.expectation for e in entries} == {
        E.expired, E.kept, E.boundary_due, E.boundary_kept, E.held, E.unknown_anchor,
        E.consent_withdrawn,
    }  # fmt: skip
    assert all(e.kind == "record" and e.subject for e in entries)
    assert first[0][0] == "lead-0001" and "@" in first[0][1]["email"]
    anchors = [f["received_at"] for _, f in first if f["received_at"]]
    assert all(len(a) == 19 and a[10] == "T" for a in anchors)  # ISO date-times, as APIs send


def test_the_adapter_deletes_exactly_the_designed_due_records(
    seeded: tuple[SaasServer, list[ManifestEntry]],
) -> None:
    server, entries = seeded
    activity = _lead_crm()
    client = ApiClient(ApiSettings(server.base_url, server.token, page_size=7), "demo")
    adapter = adapter_for(activity.source, KEY, client)
    selection = DueAt(AS_OF, tuple(activity.retention))
    holds = _holds(entries)
    counts = adapter.count(selection, DeleteAction(), holds)
    due = [e for e in entries if e.due]
    assert counts.to_apply == len(due)
    assert counts.held == sum(e.expectation == E.held for e in entries)
    assert counts.anchor_unknown == sum(e.expectation == E.unknown_anchor for e in entries)
    for batch in adapter.batches(selection, DeleteAction(), lambda: holds, 5):
        assert len(adapter.apply(batch).refs) == len(batch.refs)
    left = {rid for rid, _ in server.store.page("leads", "", 1000)}
    assert left == {e.pk for e in entries if not e.due}
