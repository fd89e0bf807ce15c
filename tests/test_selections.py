"""The selections besides retention: every record of one data subject, and key ranges, through
the SQL and S3 adapters (real PostgreSQL/MariaDB/SQLite and the moto server)."""

from __future__ import annotations

from typing import Any

import pytest

from include.retention import lifecycle
from include.retention.catalogue import DeleteAction, load_catalogue
from include.retention.errors import RetentionError
from include.retention.lifecycle import RunOptions
from include.retention.runs import Control
from include.retention.sources.base import DueAt, KeyRange, OfSubject
from include.retention.sources.s3 import S3Adapter
from include.retention.sources.sql import SqlAdapter
from tests.dbs import (  # noqa: F401 - fixtures
    AS_OF,
    Db,
    activity,
    control_fixture,
    ids,
    key_fixture,
    old,
    person,
    recent,
    seed,
    source_db_fixture,
)
from tests.s3 import new_bucket, put, s3_fixture, s3_server_fixture  # noqa: F401

ANNA = "Anna.Berg@Example.com"


def _people() -> list[dict[str, Any]]:
    return [
        person(1, old(), email=ANNA),
        person(2, recent(), email="anna.berg@example.com "),  # the same person, not yet due
        person(3, old()),
        person(4, None, email=ANNA),  # the same person, anchor unknown
        person(5, recent()),
    ]


def test_every_record_of_one_subject_is_counted_read_and_erased(
    source_db: Db, control: Control
) -> None:
    seed(source_db.engine, _people(), children=False)
    act = activity(children=False, safety={"max_rows": None, "max_fraction": None})
    adapter = SqlAdapter(act.source, control.key, source_db.engine)
    anna = OfSubject({control.holds.subject_ref(ANNA)})
    counts = adapter.count(anna, DeleteAction(), control.holds.active("ats", "people"))
    assert (counts.total, counts.selected, counts.to_apply) == (5, 3, 3)
    assert sorted(r["id"] for r in adapter.read(anna)) == [1, 2, 4]
    assert sorted(r["id"] for r in adapter.read(KeyRange(anna, lower=1, upper=4))) == [2, 4]
    control.holds.place_record_hold("ats", "people", 4, kind="legal_hold", reason="claim",
                                    placed_by="legal")  # fmt: skip
    report = lifecycle.run(act, anna, adapter, control, RunOptions("test", batch_size=2))
    assert (report.outcome, report.applied, report.held_skipped) == ("completed", 2, 1)
    assert ids(source_db.engine) == {3, 4, 5}
    for pk in (1, 2):
        [evidence] = control.ledger.lookup("ats", "people", pk)
        assert evidence.run_id == report.run_id


def _applications(pid: int) -> list[dict[str, Any]]:
    """Person ``pid``'s child rows as tests/dbs.py seeds them: 2 applications, 1 attachment each."""
    return [
        {"id": app, "person_id": pid, "title": "job",
         "attachments": [{"id": app, "application_id": app, "filename": "cv.pdf"}]}
        for app in (pid * 10, pid * 10 + 1)
    ]  # fmt: skip


def test_a_subjects_records_are_read_with_their_child_rows(source_db: Db, control: Control) -> None:
    """Access and portability: each record with its child tables' rows, nested as bound."""
    seed(source_db.engine, _people(), children=True)
    with source_db.engine.begin() as conn:  # record 4 has no child rows left
        conn.exec_driver_sql("DELETE FROM attachments WHERE application_id IN (40, 41)")
        conn.exec_driver_sql("DELETE FROM applications WHERE person_id = 4")
    act = activity(children=True)
    adapter = SqlAdapter(act.source, control.key, source_db.engine)
    anna = OfSubject({control.holds.subject_ref(ANNA)})
    records = list(adapter.read(anna))
    assert [r["id"] for r in records] == [1, 2, 4]
    assert [r["applications"] for r in records] == [_applications(1), _applications(2), []]
    assert records[0]["email"] == ANNA and records[0]["status"] == "rejected"
    [three] = adapter.read(KeyRange(DueAt(AS_OF, tuple(act.retention)), lower=2, upper=3))
    assert (three["id"], three["applications"]) == (3, _applications(3))


def test_a_subject_selection_needs_a_lookup_column(source_db: Db, control: Control) -> None:
    seed(source_db.engine, _people(), children=False)
    act = activity(children=False)
    binding = act.source.model_copy(update={"lookup": {}})
    adapter = SqlAdapter(binding, control.key, source_db.engine)
    with pytest.raises(RetentionError, match="no lookup column"):
        adapter.count(OfSubject({b"x" * 16}), DeleteAction(), control.holds.active("ats", "people"))


def test_a_masking_strategy_is_checked_against_the_column_type(
    source_db: Db, control: Control
) -> None:
    seed(source_db.engine, _people(), children=False)
    action = {
        "kind": "anonymise", "marker_column": "anonymised_at", "direct_identifiers": ["email"],
        "quasi_identifiers": ["status"], "k_anonymity": 2,
        "columns": {"email": {"strategy": "null"}, "status": {"strategy": "band", "width": 5}},
    }  # fmt: skip
    act = activity(children=False, action=action)
    with pytest.raises(RetentionError, match=r"column 'status' is VARCHAR.*'band' works on"):
        lifecycle.plan(act, AS_OF, control=control, source=source_db.engine)


def test_s3_objects_of_one_subject_and_a_key_range(s3: Any, control: Control) -> None:
    bucket = new_bucket(s3, "subject")
    meta = {"category": "spontaneous", "capture_date": AS_OF.date().isoformat()}
    people = (("a.jpg", "person-1@x.se"), ("b.jpg", "person-2@x.se"), ("c.jpg", "Person-1@X.se "))
    for key, subject in people:
        put(s3, bucket, key, **meta, subject=subject)
    base = load_catalogue()["image_bank"]
    adapter = S3Adapter(base.source.model_copy(update={"bucket": bucket, "prefix": ""}),
                        control.key, s3)  # fmt: skip
    one = OfSubject({control.holds.subject_ref("person-1@x.se")})
    counts = adapter.count(one, DeleteAction(), control.holds.active("image_bank", bucket))
    assert (counts.total, counts.selected) == (3, 2)
    assert sorted(r["key"] for r in adapter.read(one)) == ["a.jpg", "c.jpg"]
    assert [r["key"] for r in adapter.read(KeyRange(one, lower="a.jpg"))] == ["c.jpg"]
    parts = adapter.partitions(DueAt(AS_OF, tuple(base.retention)), 2)
    assert [(p.lower, p.upper) for p in parts] == [(None, "b.jpg"), ("b.jpg", None)]
