"""Keyed subject references in the ledger: written with the batch, found by person, chained."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.retention.chain import SUBJECT_BUCKETS, bucket_of
from include.retention.ledger import Ledger, RunHeader, subject_table
from include.retention.pseudonym import (
    REF_SIZE,
    RecordRefHasher,
    SubjectRefHasher,
    pack_refs,
    subject_ref,
)
from tests.dbs import ledger_on


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    with ledger_on(request.param, tmp_path) as ledger:
        yield ledger


def _run(ledger: Ledger, people: dict[int, str], outcome: str = "committed") -> str:
    run_id = ledger.start_run(
        RunHeader(
            activity_id="crm", system="crm", dataset="contacts", action="delete",
            rules=["P2Y after the contract ended"], as_of="2026-06-15T03:00:00+00:00",
            cutoffs=[None], dry_run=False, catalogue_version="v", code_version="t",
        )
    )  # fmt: skip
    records = RecordRefHasher(ledger._key, "crm", "contacts")
    subjects = dict.fromkeys(subject_ref(ledger._key, e) for e in people.values())
    seq = ledger.prepare_batch(
        run_id, "crm", "crm", "contacts", batch_no=1, action="delete",
        refs_blob=pack_refs(records.refs(people)), counts={"records": len(people)},
        subject_refs_blob=pack_refs(subjects),
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
    with ledger.engine.connect() as conn:  # anna twice in the first batch: passed once
        stored = b"".join(r.refs for r in conn.execute(sa.select(subject_table.c.refs)))
    assert len(stored) == 4 * REF_SIZE
    assert ledger.verify().ok


def test_many_subjects_share_few_bucket_rows(ledger: Ledger) -> None:
    people = {n: f"person{n}@example.com" for n in range(3000)}
    _run(ledger, people)
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(subject_table.c.bucket, subject_table.c.refs)).all()
    assert len(rows) <= SUBJECT_BUCKETS and sum(len(r.refs) for r in rows) == 3000 * REF_SIZE
    for n in (0, 1234, 2999):
        assert len(ledger.subject_batches(subject_ref(ledger._key, people[n]))) == 1
    assert ledger.verify().ok


def _tamper(ledger: Ledger, statement: sa.Executable) -> str:
    with ledger.engine.begin() as conn:
        conn.execute(statement)
    report = ledger.verify()
    assert not report.ok and report.problem is not None
    return report.problem


def _rows(ledger: Ledger) -> list[sa.Row[tuple[int, int, bytes]]]:
    t = subject_table
    with ledger.engine.connect() as conn:
        return list(conn.execute(sa.select(t.c.seq, t.c.bucket, t.c.refs).order_by(t.c.bucket)))


def test_a_deleted_subject_row_breaks_the_chain(ledger: Ledger) -> None:
    _run(ledger, {1: "anna@example.com", 2: "bo@example.com"})
    first = _rows(ledger)[0]
    problem = _tamper(
        ledger, sa.delete(subject_table).where(subject_table.c.bucket == first.bucket)
    )
    assert "subject references differ" in problem


def test_an_added_subject_row_breaks_the_chain(ledger: Ledger) -> None:
    _run(ledger, {1: "anna@example.com"})
    fake = subject_ref(ledger._key, "dora@example.com")
    end = ledger.verify().entries
    for seq in (2, 1, end + 5):  # on the batch, on an entry without subjects, past the end
        _tamper(
            ledger, sa.insert(subject_table).values(seq=seq, bucket=bucket_of(fake) ^ 1, refs=fake)
        )
        with ledger.engine.begin() as conn:
            conn.execute(sa.delete(subject_table).where(subject_table.c.refs == fake))
        assert ledger.verify().ok


def test_an_edited_or_moved_subject_row_breaks_the_chain(ledger: Ledger) -> None:
    _run(ledger, {1: "anna@example.com", 2: "bo@example.com", 3: "carl@example.com"})
    first, second = _rows(ledger)[:2]
    fake = subject_ref(ledger._key, "dora@example.com")
    t = subject_table
    _tamper(ledger, sa.update(t).where(t.c.bucket == first.bucket).values(refs=fake))
    with ledger.engine.begin() as conn:
        conn.execute(sa.update(t).where(t.c.bucket == first.bucket).values(refs=first.refs))
    assert ledger.verify().ok
    # one reference moved into the next bucket's row: the same bytes in bucket order
    with ledger.engine.begin() as conn:
        conn.execute(sa.delete(t).where(t.c.bucket == first.bucket))
    _tamper(
        ledger,
        sa.update(t).where(t.c.bucket == second.bucket).values(refs=first.refs + second.refs),
    )


@pytest.mark.parametrize("key_size", [16, 32, 80])  # 80: longer than SHA-256's block
def test_subject_refs_are_hmac_sha256_of_the_normalised_identifier(key_size: int) -> None:
    key = secrets.token_bytes(key_size)
    people = [" Anna@Example.COM", "+46701234567", "191212121212", "k10012", "åsa@örebro.se"]
    expected = [
        hmac.new(key, b"subject\x1f" + p.strip().casefold().encode(), hashlib.sha256).digest()[:16]
        for p in people
    ]
    assert SubjectRefHasher(key).refs(people) == expected
    assert [subject_ref(key, p) for p in people] == expected


def test_packed_and_cached_subject_refs_match_the_hmac_of_each_identifier() -> None:
    key = secrets.token_bytes(32)
    people = ["anna@example.com", " Anna@Example.COM", "bo@example.com", None, "bo@example.com"]

    def expected(p: str) -> bytes:
        message = b"subject\x1f" + p.strip().casefold().encode()
        return hmac.new(key, message, hashlib.sha256).digest()[:16]

    hasher = SubjectRefHasher(key)
    named = [p for p in people if p is not None]
    assert hasher.packed(named) == b"".join(expected(p) for p in named)
    assert hasher.packed_normalised([b"anna@example.com"]) == expected("anna@example.com")
    known: dict[object, bytes] = {"bo@example.com": b"x" * 16}  # already known: not hashed again
    hasher.add_refs(known, people)
    assert known == {
        "anna@example.com": expected("anna@example.com"),
        " Anna@Example.COM": expected("anna@example.com"),
        "bo@example.com": b"x" * 16,
    }
    records = RecordRefHasher(key, "crm", "contacts")
    keys: list[object] = [1, "k-2", (3, "x")]
    assert records.packed(keys) == b"".join(records.ref(k) for k in keys)
    assert records.ref(1) == hmac.new(key, b"crm\x1fcontacts\x1f1", hashlib.sha256).digest()[:16]


def test_verify_is_not_fooled_by_a_run_appending_meanwhile(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(ledger, {1: "anna@example.com"})
    head = Ledger.head
    calls = []

    def head_then_append(self: Ledger) -> tuple[int, str]:
        seen = head(self)
        if not calls:  # a run appends right after verify() read the head
            calls.append(seen)
            _run(ledger, {2: "bo@example.com"})
        return seen

    monkeypatch.setattr(Ledger, "head", head_then_append)
    report = ledger.verify()
    assert report.ok and report.entries == calls[0][0] == 4
