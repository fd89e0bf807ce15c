"""Rectifying an identifier (a lookup column, e.g. a wrong e-mail address) on real PostgreSQL,
MariaDB and SQLite: the person's records get the new address and stay findable by it; the
person's suppressions and subject holds on the old address are placed on the new one (also a
restriction placed while the change was in flight), so a retention run keeps the restricted
record and the person stays suppressed."""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time

import sqlalchemy as sa

from include.retention import dsr, rectification
from include.retention.lifecycle import enforce
from include.retention.pseudonym import subject_ref
from include.retention.sources.base import OfSubject, adapter_for
from tests.dbs import activity, ids, key_fixture, source_db_fixture  # noqa: F401
from tests.test_rectification import ANNA, NOW, _people, _setup

NEW_EMAIL = f"anna.{secrets.token_hex(4)}@example.se"  # a value no code could produce


def test_a_corrected_email_keeps_the_persons_restrictions_and_suppressions(
    source_db, tmp_path, key, monkeypatch
) -> None:
    runtime, catalogue = _setup(source_db, tmp_path, key)
    old, new = subject_ref(key, ANNA), subject_ref(key, NEW_EMAIL)
    runtime.suppressions.add([old], "consent", added_by="dpo")
    placing = threading.Thread(
        target=runtime.holds.place_subject_hold, args=(ANNA,),
        kwargs={"kind": "restriction", "reason": "accuracy contested", "placed_by": "dpo"},
    )  # fmt: skip

    def in_flight(name: str, no: int, where: str = "") -> None:
        if name == "after_apply" and placing.ident is None:  # committed, not yet resolved
            placing.start()  # (the placement waits for the batch in flight)
            deadline = time.monotonic() + 10
            while not runtime.holds.active_subject_holds({old}):
                assert time.monotonic() < deadline, "the restriction was not placed"
                time.sleep(0.01)

    monkeypatch.setattr(rectification, "checkpoint", in_flight)
    params = {"email": ANNA, "corrections": {"email": " " + NEW_EMAIL.upper()}}
    received = dsr.receive("rectification", params, user="u", dag_id="dsr_rectification",
                           run_id="r", runtime=runtime, now=NOW)  # fmt: skip
    result = dsr.rectify(received, params, user="clerk", runtime=runtime, catalogue=catalogue,
                         connections={"recruitment": source_db.engine})  # fmt: skip
    placing.join(10)
    assert not placing.is_alive()

    emails = {pid: row["email"] for pid, row in _people(source_db.engine).items()}
    assert emails == {1: " " + NEW_EMAIL.upper(), 2: "person2@example.com",
                      3: " " + NEW_EMAIL.upper()}  # fmt: skip
    adapter = adapter_for(catalogue.activities["recruitment"].source, key, source_db.engine)
    assert [r["id"] for r in adapter.read(OfSubject(frozenset({new})))] == [1, 3]
    (changed,) = result["changed"]
    (carried,) = runtime.holds.active_subject_holds({new})
    assert changed["carried"] == {"holds": [carried[0]], "suppressions": 1}
    assert carried[1] == "restriction"
    assert runtime.suppressions.suppressed({new}, "consent") == {new}
    assert runtime.holds.verify().ok and runtime.control.ledger.verify().ok

    kept = enforce(activity(children=False), dt.datetime.now(dt.UTC), control=runtime.control,
                   source=source_db.engine, catalogue_version="t")  # fmt: skip
    assert 1 in ids(source_db.engine) and (kept.plan.expired, kept.plan.restricted) == (1, 1)
    assert ANNA not in str(result) and NEW_EMAIL not in str(result).lower()


def test_a_retried_correction_carries_nothing_twice(source_db, tmp_path, key) -> None:
    runtime, catalogue = _setup(source_db, tmp_path, key)
    old, new = subject_ref(key, ANNA), subject_ref(key, NEW_EMAIL)
    runtime.suppressions.add([old], "direct_marketing", added_by="dpo")
    params = {"email": ANNA, "corrections": {"email": NEW_EMAIL}}
    received = dsr.receive("rectification", params, user="u", dag_id="d", run_id="r",
                           runtime=runtime, now=NOW)  # fmt: skip

    def rectify() -> dict:
        return dsr.rectify(received, params, runtime=runtime, catalogue=catalogue,
                           connections={"recruitment": source_db.engine})  # fmt: skip

    first, again = rectify(), rectify()
    assert first["changed"][0]["carried"] == {"holds": [], "suppressions": 1}
    assert first["changed"][0]["records"] == 2 and again["changed"] == []
    suppressions = sa.Table("dsr_suppressions", sa.MetaData(), autoload_with=runtime.engine)
    with runtime.engine.connect() as conn:
        rows = conn.execute(sa.select(suppressions.c.subject_ref, suppressions.c.added_by)).all()
    assert sorted((bytes(r), by) for r, by in rows) == sorted(
        [(old, "dpo"), (new, f"rectification of {received['request']}")]
    )
