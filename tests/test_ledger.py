"""The deletion ledger: hash chain, tamper detection, lookup, compact pseudonymous evidence."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.retention.errors import RetentionError
from include.retention.ledger import Ledger, RunHeader, ledger_table
from include.retention.pseudonym import (
    REF_SIZE,
    PackedRefs,
    RecordRefHasher,
    hmac_pads,
    pack_refs,
    record_ref,
    subject_ref,
    unpack_refs,
)
from tests.dbs import ledger_on


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    with ledger_on(request.param, tmp_path) as ledger:
        yield ledger


def _header(**kw: object) -> RunHeader:
    fields = {
        "activity_id": "crm", "system": "crm", "dataset": "contacts", "action": "delete",
        "rules": ["P2Y after the contract ended"], "as_of": "2026-06-15T03:00:00+00:00",
        "cutoffs": ["2024-06-14T23:59:59.999999+02:00"], "dry_run": False,
        "catalogue_version": "abc", "code_version": "test",
    } | kw  # fmt: skip
    return RunHeader(**fields)  # type: ignore[arg-type]


def _one_run(ledger: Ledger, pks: list[int], outcome: str = "committed") -> str:
    run_id = ledger.start_run(_header())
    hasher = RecordRefHasher(ledger._key, "crm", "contacts")
    seq = ledger.prepare_batch(
        run_id, "crm", "crm", "contacts", batch_no=1, action="delete",
        refs_blob=pack_refs(hasher.refs(pks)), counts={"records": len(pks)},
    )  # fmt: skip
    ledger.resolve_batch(seq, outcome=outcome)
    ledger.finish_run(
        run_id, "crm", outcome="completed", counts={"applied": len(pks)}, message="ok"
    )
    return run_id


def _filled(ledger: Ledger) -> Ledger:
    _one_run(ledger, [1, 2, 3])
    _one_run(ledger, [4, 5])
    assert ledger.verify().ok and ledger.verify().entries == 8
    return ledger


def test_lookup_by_identifier(ledger: Ledger) -> None:
    run_id = _one_run(ledger, [10, 11, 12])
    _one_run(ledger, [13], outcome="rolled_back")
    [evidence] = ledger.lookup("crm", "contacts", 11)
    assert (evidence.run_id, evidence.action, evidence.rules) == (
        run_id,
        "delete",
        ["P2Y after the contract ended"],
    )
    assert evidence.as_of == "2026-06-15T03:00:00+00:00" and not evidence.recovered
    assert ledger.lookup("crm", "contacts", 13) == []  # rolled back: no evidence
    assert ledger.lookup("crm", "contacts", 99) == []
    assert ledger.lookup("crm", "other_table", 11) == []


def test_evidence_is_one_compact_blob_per_batch(ledger: Ledger) -> None:
    _one_run(ledger, list(range(1000)))
    with ledger.engine.connect() as conn:
        blobs = [b for (b,) in conn.execute(sa.select(ledger_table.c.blob)) if b is not None]
    assert len(blobs) == 1 and len(blobs[0]) == 1000 * REF_SIZE
    hasher = RecordRefHasher(ledger._key, "crm", "contacts")
    assert set(unpack_refs(bytes(blobs[0]))) == set(hasher.refs(range(1000)))


def test_verify_detects_an_edited_entry(ledger: Ledger) -> None:
    _filled(ledger)
    with ledger.engine.begin() as conn:
        doc = conn.execute(
            sa.select(ledger_table.c.document).where(ledger_table.c.seq == 2)
        ).scalar()
        assert '"records":3' in doc
        conn.execute(
            sa.update(ledger_table).where(ledger_table.c.seq == 2)
            .values(document=doc.replace('"records":3', '"records":2'))
        )  # fmt: skip
    report = ledger.verify()
    assert not report.ok and report.bad_seq == 2 and "edited" in report.problem


def test_verify_detects_an_edited_blob_or_column(ledger: Ledger) -> None:
    _filled(ledger)
    with ledger.engine.begin() as conn:
        conn.execute(
            sa.update(ledger_table).where(ledger_table.c.seq == 2).values(blob=b"\x00" * 16)
        )
    assert ledger.verify().bad_seq == 2
    _fresh = _filled_copy(ledger)
    with _fresh.engine.begin() as conn:
        conn.execute(sa.update(ledger_table).where(ledger_table.c.seq == 6).values(dataset="x"))
    assert _fresh.verify().bad_seq == 6


def _filled_copy(ledger: Ledger) -> Ledger:
    with ledger.engine.begin() as conn:
        conn.execute(sa.delete(ledger_table))
        conn.execute(sa.text("DELETE FROM retention_ledger_head"))
    return _filled(ledger)


def test_verify_detects_a_deleted_entry(ledger: Ledger) -> None:
    _filled(ledger)
    with ledger.engine.begin() as conn:
        conn.execute(sa.delete(ledger_table).where(ledger_table.c.seq == 4))
    report = ledger.verify()
    assert not report.ok and report.bad_seq == 4 and "missing" in report.problem


def test_verify_detects_entries_cut_from_the_end(ledger: Ledger) -> None:
    _filled(ledger)
    head = ledger.head()
    with ledger.engine.begin() as conn:
        conn.execute(sa.delete(ledger_table).where(ledger_table.c.seq >= 7))
    assert ledger.verify().bad_seq == 7
    # even if the head row is rewound too, a head noted elsewhere still catches it
    with ledger.engine.begin() as conn:
        last = conn.execute(
            sa.select(ledger_table.c.entry_hash).where(ledger_table.c.seq == 6)
        ).scalar()
        conn.execute(
            sa.text("UPDATE retention_ledger_head SET seq = 6, entry_hash = :h"), {"h": last}
        )
    assert ledger.verify().ok
    assert not ledger.verify(expect_head=head).ok


def test_verify_detects_an_inserted_entry(ledger: Ledger) -> None:
    _filled(ledger)
    with ledger.engine.begin() as conn:
        rows = conn.execute(sa.select(ledger_table).where(ledger_table.c.seq >= 5)).all()
        conn.execute(sa.delete(ledger_table).where(ledger_table.c.seq >= 5))
        forged = dict(rows[0]._mapping) | {"seq": 5}
        conn.execute(sa.insert(ledger_table).values(forged))  # a copy of entry 5 ...
        for row in rows:  # ... and the originals shifted up by one
            conn.execute(sa.insert(ledger_table).values(dict(row._mapping) | {"seq": row.seq + 1}))
    report = ledger.verify()
    assert not report.ok and report.bad_seq == 6


def test_verify_detects_reordered_entries(ledger: Ledger) -> None:
    _filled(ledger)
    with ledger.engine.begin() as conn:
        conn.execute(sa.update(ledger_table).where(ledger_table.c.seq == 3).values(seq=-3))
        conn.execute(sa.update(ledger_table).where(ledger_table.c.seq == 4).values(seq=3))
        conn.execute(sa.update(ledger_table).where(ledger_table.c.seq == -3).values(seq=4))
    report = ledger.verify()
    assert not report.ok and report.bad_seq == 3


def test_refs_are_keyed_and_domain_separated() -> None:
    k1, k2 = secrets.token_bytes(32), secrets.token_bytes(32)
    assert record_ref(k1, "crm", "contacts", 1) != record_ref(k2, "crm", "contacts", 1)
    assert record_ref(k1, "crm", "contacts", 1) != record_ref(k1, "crm", "leads", 1)
    assert (
        record_ref(k1, "crm", "contacts", 1) == RecordRefHasher(k1, "crm", "contacts").refs([1])[0]
    )
    assert subject_ref(k1, " Anna@Example.COM") == subject_ref(k1, "anna@example.com")
    packed = PackedRefs(pack_refs([record_ref(k1, "s", "d", i) for i in range(100)]))
    assert record_ref(k1, "s", "d", 42) in packed and record_ref(k1, "s", "d", 100) not in packed
    a, b = record_ref(k1, "s", "d", 1), record_ref(k1, "s", "d", 2)
    assert a[8:] + b[:8] not in PackedRefs(a + b)  # only aligned matches count
    with pytest.raises(RetentionError, match="too short"):
        record_ref(b"short", "s", "d", 1)


def test_hmac_pads_reproduce_hmac() -> None:
    import hashlib
    import hmac

    key = secrets.token_bytes(32)
    ipad, opad = hmac_pads(key)
    inner = hashlib.sha256(ipad + b"value").digest()
    assert (
        hashlib.sha256(opad + inner).hexdigest()
        == hmac.new(key, b"value", hashlib.sha256).hexdigest()
    )
