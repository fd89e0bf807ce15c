"""Crash safety of rectification (Art. 16): its evidence is written ahead like a retention
batch's. A real rectification on PostgreSQL, MariaDB and SQLite is SIGKILLed (forked process)
after its evidence entry and before the source commits, after the commit and before the
evidence is resolved, and after that; or the resolution raises. The request's next attempt
settles what the dead run left prepared from the source: the records whose fields hold the
requested values were rectified, the others were not; nothing is left pending, nothing is
claimed that did not happen, and the rectification completes."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.retention import dsr, rectification
from include.retention.catalogue import Catalogue
from include.retention.errors import RetentionError
from include.retention.pseudonym import record_ref
from tests.crash import fork_run
from tests.dbs import DIALECTS, activity, create_db, old, person, recent, seed

ANNA = "person1@example.com"
NEW_CITY = "Lund-" + secrets.token_hex(4)  # a value no code could produce by itself
CATALOGUE = Catalogue(activities={"recruitment": activity(children=False)}, version="t")


def _runtime(control_url: str, key: bytes) -> dsr.DsrRuntime:
    return dsr.DsrRuntime.of(sa.create_engine(control_url), key, catalogue=CATALOGUE)


def _rectify(received: dict, control_url: str, db_url: str, key: bytes) -> dict[str, Any]:
    return dsr.rectify(
        received, {"email": ANNA, "corrections": {"city": NEW_CITY}},
        runtime=_runtime(control_url, key), catalogue=CATALOGUE,
        connections={"recruitment": sa.create_engine(db_url)},
    )  # fmt: skip


def _cities(engine: sa.Engine) -> dict[int, str]:
    table = sa.Table("people", sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(table.c.id, table.c.city)).all())  # type: ignore[arg-type]


@contextlib.contextmanager
def _case(dialect: str, tmp_path: Path) -> Iterator[tuple[Any, str, dict, bytes]]:
    """A fresh source with Anna's two records and Umeå's one, a control database and Anna's
    registered request: (source, control URL, the request as received, key)."""
    key = secrets.token_bytes(32)
    db, cleanup = create_db(dialect, tmp_path)
    try:
        seed(db.engine, [
            person(1, old(), city="Malmö"), person(2, recent(), city="Umeå"),
            person(3, recent(), email="Person1@Example.com ", city="Malmö"),
        ], children=False)  # fmt: skip
        control_url = f"sqlite:///{tmp_path / 'control.db'}"
        received = dsr.receive(
            "rectification", {"email": ANNA, "corrections": {"city": NEW_CITY}}, user="u",
            dag_id="dsr_rectification", run_id="r", runtime=_runtime(control_url, key),
        )  # fmt: skip
        yield db, control_url, received, key
    finally:
        cleanup()


def _claims(runtime: dsr.DsrRuntime) -> tuple[Counter[bytes], list[dict[str, Any]]]:
    """Records the rectification runs claim as rectified, and each resolution's body."""
    ledger = runtime.control.ledger
    runs = ledger.runs(rectification.RUN_ACTIVITY)
    claimed = Counter(ref for r in runs for ref in ledger.applied_refs(r.run_id, "ats", "people"))
    resolved = [e.document["body"] for e in ledger.entries() if e.kind == "batch_resolved"]
    return claimed, resolved


def _check_settled(runtime: dsr.DsrRuntime) -> None:
    ledger = runtime.control.ledger
    assert ledger.pending_batches() == [] and ledger.verify().ok
    assert not ledger.unfinished_runs(rectification.RUN_ACTIVITY)


@pytest.mark.parametrize("kill_at", ["after_prepare:1", "after_apply:1", "after_resolve:1"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_rectification_killed_anywhere_loses_nothing_and_claims_nothing_false(
    dialect: str, kill_at: str, tmp_path: Path
) -> None:
    with _case(dialect, tmp_path) as (db, control_url, received, key):
        db.engine.dispose()  # the forked child opens its own connections
        child = partial(_rectify, received, control_url, db.url, key)
        assert fork_run(child, kill_at=kill_at) == "killed"
        committed = kill_at != "after_prepare:1"
        changed = {1: NEW_CITY, 2: "Umeå", 3: NEW_CITY}
        assert _cities(db.engine) == (changed if committed else {1: "Malmö", 2: "Umeå",
                                                                 3: "Malmö"})  # fmt: skip
        runtime = _runtime(control_url, key)
        ledger = runtime.control.ledger
        (pending,) = ledger.pending_batches() if kill_at != "after_resolve:1" else (None,)
        if pending is not None:  # the evidence names the records and fields, never values
            (prepared,) = [e for e in ledger.entries() if e.seq == pending.seq]
            assert prepared.document["body"]["fields"] == ["city"]
            assert prepared.document["body"]["action"] == "rectify"
            assert NEW_CITY not in str(prepared.document)

        result = _rectify(received, control_url, db.url, key)  # the task's retry

        assert _cities(db.engine) == changed
        assert result["changed"][0]["records"] == 2
        _check_settled(runtime)
        claimed, resolved = _claims(runtime)
        refs = {pk: record_ref(key, "ats", "people", pk) for pk in (1, 2, 3)}
        # the retry rectifies both records again (same values) with its own evidence; the
        # dead run's batch claims them only if its commit happened
        first = 2 if committed else 1
        assert claimed == Counter({refs[1]: first, refs[3]: first})
        recovered = [(b["outcome"], b["applied"]) for b in resolved if b["recovered"]]
        expected = {"after_prepare:1": [("rolled_back", 0)], "after_apply:1": [("committed", 2)],
                    "after_resolve:1": []}[kill_at]  # fmt: skip
        assert recovered == expected
        outcomes = [r.finished["outcome"] for r in ledger.runs(rectification.RUN_ACTIVITY)
                    if r.finished]  # fmt: skip
        assert outcomes == ["interrupted", "completed"]


def test_a_failure_between_commit_and_resolution_is_settled_by_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _case("sqlite", tmp_path) as (db, control_url, received, key):
        with monkeypatch.context() as patched:

            def control_db_lost(*args: Any) -> None:
                raise sa.exc.OperationalError("resolve", {}, Exception("gone"))

            patched.setattr(rectification.lifecycle, "resolve", control_db_lost)
            with pytest.raises(Exception, match="gone"):
                _rectify(received, control_url, db.url, key)
        runtime = _runtime(control_url, key)
        assert len(runtime.control.ledger.pending_batches()) == 1
        assert _cities(db.engine)[1] == NEW_CITY  # committed, not yet resolved

        _rectify(received, control_url, db.url, key)

        _check_settled(runtime)
        claimed, resolved = _claims(runtime)
        assert [(b["outcome"], b["recovered"]) for b in resolved] == [
            ("committed", True), ("committed", False),
        ]  # fmt: skip
        assert set(claimed.values()) == {2} and len(claimed) == 2
        outcomes = [r.finished["outcome"] for r in runtime.control.ledger.runs(
            rectification.RUN_ACTIVITY)]  # fmt: skip
        assert outcomes == ["failed", "completed"]


def test_a_pending_rectification_of_another_request_refuses_until_settled(
    tmp_path: Path,
) -> None:
    """Only the interrupted request knows the values its batch must be checked against: a
    second request changing the records first would make that check wrong."""
    with _case("sqlite", tmp_path) as (db, control_url, received, key):
        db.engine.dispose()
        child = partial(_rectify, received, control_url, db.url, key)
        assert fork_run(child, kill_at="after_apply:1") == "killed"
        ystad = {"email": ANNA, "corrections": {"city": "Ystad"}}
        other = dsr.receive("rectification", ystad, user="u", dag_id="dsr_rectification",
                            run_id="r2", runtime=_runtime(control_url, key))  # fmt: skip
        again = partial(dsr.rectify, other, ystad, runtime=_runtime(control_url, key),
                        catalogue=CATALOGUE, connections={"recruitment": db.engine})  # fmt: skip
        with pytest.raises(RetentionError, match=f"the rectification of {received['request']}"
                           " was interrupted there and is not settled yet"):  # fmt: skip
            again()
        runtime = _runtime(control_url, key)
        (pending,) = runtime.control.ledger.pending_batches()
        assert _cities(db.engine) == {1: NEW_CITY, 2: "Umeå", 3: NEW_CITY}

        _rectify(received, control_url, db.url, key)  # its own retry settles it: committed
        again()

        assert _cities(db.engine) == {1: "Ystad", 2: "Umeå", 3: "Ystad"}
        _check_settled(runtime)
        (settled,) = [e.document["body"] for e in runtime.control.ledger.entries()
                      if e.kind == "batch_resolved" and e.ref_seq == pending.seq]  # fmt: skip
        assert (settled["outcome"], settled["recovered"]) == ("committed", True)


def test_a_hold_placed_after_the_evidence_undoes_the_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _case("postgresql", tmp_path) as (db, control_url, received, key):
        runtime = _runtime(control_url, key)
        placing = threading.Thread(
            target=runtime.holds.place_record_hold, args=("ats", "people", 3),
            kwargs={"kind": "legal_hold", "reason": "claim", "placed_by": "legal"},
        )  # fmt: skip

        def after_prepare(name: str, no: int, where: str = "") -> None:
            if name == "after_prepare" and placing.ident is None:  # another process places it
                placing.start()
                deadline = time.monotonic() + 10
                while not runtime.holds.active("ats", "people").records:
                    assert time.monotonic() < deadline, "the hold was not placed"
                    time.sleep(0.01)

        monkeypatch.setattr(rectification, "checkpoint", after_prepare)
        result = dsr.rectify(
            received, {"email": ANNA, "corrections": {"city": NEW_CITY}}, runtime=runtime,
            catalogue=CATALOGUE, connections={"recruitment": db.engine},
        )  # fmt: skip
        placing.join(10)
        assert not placing.is_alive()
        assert _cities(db.engine) == {1: NEW_CITY, 2: "Umeå", 3: "Malmö"}
        assert result["changed"][0]["records"] == 1 and result["kept"][0]["records"] == 1
        _check_settled(runtime)
        claimed, resolved = _claims(runtime)
        assert [b["outcome"] for b in resolved] == ["rolled_back", "committed"]
        assert claimed == Counter({record_ref(key, "ats", "people", 1): 1})
