"""Keyed subject references in the ledger: written with the batch, found by person, chained."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.retention.ledger import Ledger, RunHeader, subject_table
from include.retention.pseudonym import RecordRefHasher, pack_refs, subject_ref
from tests.dbs import create_db


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    db, cleanup = create_db(request.param, tmp_path)
    ledger = Ledger(db.engine, secrets.token_bytes(32))
    ledger.create_tables()
    try:
        yield ledger
    finally:
        cleanup()


def _run(ledger: Ledger, people: dict[int, str], outcome: str = "committed") -> str:
    run_id = ledger.start_run(
        RunHeader(
            activity_id="crm", system="crm", dataset="contacts", action="delete",
            rules=["P2Y after the contract ended"], as_of="2026-06-15T03:00:00+00:00",
            cutoffs=[None], dry_run=False, catalogue_version="v", code_version="t",
        )
    )  # fmt: skip
    records = RecordRefHasher(ledger._key, "crm", "contacts")
    seq = ledger.prepare_batch(
        run_id, "crm", "crm", "contacts", batch_no=1, action="delete",
        refs_blob=pack_refs(records.refs(people)), counts={"records": len(people)},
        subject_refs_blob=pack_refs(subject_ref(ledger._key, e) for e in people.values()),
    )  # fmt: skip
    ledger.resolve_batch(seq, outcome=outcome)
    ledger.finish_run(run_id, "crm", outcome="completed", counts={}, message="ok")
    return run_id


def test_a_person_is_found_after_their_records_are_gone(ledger: Ledger) -> None:
    first = _run(ledger, {1: "anna@example.com", 2: "bo@example.com", 3: "anna@example.com"})
    _run(ledger, {4: "carl@example.com"}, outcome="rolled_back")
    second = _run(ledger, {5: "Anna@Example.com "})
    found = ledger.subject_batches(subject_ref(ledger._key, "anna@example.com"))
    assert [(e.run_id, e.action) for e in found] == [(first, "delete"), (second, "delete")]
    assert found[0].rules == ["P2Y after the contract ended"]
    assert ledger.subject_batches(subject_ref(ledger._key, "carl@example.com")) == []
    assert ledger.subject_batches(subject_ref(ledger._key, "nobody@example.com")) == []
    with ledger.engine.connect() as conn:  # anna twice in the first batch: stored once
        rows = conn.execute(sa.select(sa.func.count()).select_from(subject_table)).scalar()
    assert rows == 4
    assert ledger.verify().ok


def _tamper(ledger: Ledger, statement: sa.Executable) -> str | None:
    with ledger.engine.begin() as conn:
        conn.execute(statement)
    report = ledger.verify()
    assert not report.ok
    return report.problem


def test_a_deleted_subject_row_breaks_the_chain(ledger: Ledger) -> None:
    _run(ledger, {1: "anna@example.com", 2: "bo@example.com"})
    problem = _tamper(ledger, sa.delete(subject_table).where(subject_table.c.pos == 1))
    assert problem is not None and "subject references differ" in problem


def test_an_added_subject_row_breaks_the_chain(ledger: Ledger) -> None:
    _run(ledger, {1: "anna@example.com"})
    fake = subject_ref(ledger._key, "dora@example.com")
    report_seq = ledger.verify().entries
    _tamper(ledger, sa.insert(subject_table).values(seq=2, pos=1, subject_ref=fake))
    # and rows pinned on an entry that has no subjects, or past the end of the chain
    for seq in (1, report_seq + 5):
        with ledger.engine.begin() as conn:
            conn.execute(sa.delete(subject_table).where(subject_table.c.subject_ref == fake))
        assert ledger.verify().ok
        _tamper(ledger, sa.insert(subject_table).values(seq=seq, pos=0, subject_ref=fake))


def test_an_edited_subject_row_breaks_the_chain(ledger: Ledger) -> None:
    _run(ledger, {1: "anna@example.com", 2: "bo@example.com"})
    fake = subject_ref(ledger._key, "dora@example.com")
    _tamper(
        ledger,
        sa.update(subject_table).where(subject_table.c.pos == 0).values(subject_ref=fake),
    )
