"""Leases (one enforcement per activity and dataset), holds placed inside a batch's window,
and source lock timeouts, on real PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from include.retention.errors import RetentionError
from include.retention.leases import Leases, lease_name, leases_table
from include.retention.lifecycle import Hooks, enforce, recover
from include.retention.runs import Control, close_interrupted_runs
from include.retention.sources.sql import SourceTimeouts, SqlAdapter, limit
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

NAME = lease_name("recruitment", "ats", "people")


def _run(db: Db, control: Control, timeouts: SourceTimeouts | None = None, **kwargs: Any) -> Any:
    act = activity()
    adapter = SqlAdapter(act.source, control.key, db.engine, timeouts=timeouts)
    return enforce(act, AS_OF, adapter=adapter, control=control, catalogue_version="v1", **kwargs)


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _foreign_lease(control: Control, **values: Any) -> None:
    row = {
        "name": NAME, "owner": "other", "host": "elsewhere.example", "pid": 1, "run_id": "run-x",
        "acquired_at": time.time(), "expires_at": time.time() + 600,
    } | values  # fmt: skip
    with control.ledger.engine.begin() as conn:
        conn.execute(sa.insert(leases_table).values(row))


def test_a_second_run_refuses_naming_the_run_that_holds_the_lease(
    source_db: Db, control: Control
) -> None:
    seed(source_db.engine, [person(1, old()), person(2, recent())])
    lease = control.leases.acquire(NAME, wait=0)
    lease.bind_run("run-1234")
    started = time.monotonic()
    with pytest.raises(RetentionError, match=r"run run-1234 \(host .*, pid \d+") as err:
        _run(source_db, control, lease_wait=0.5)
    assert 0.5 <= time.monotonic() - started < 10
    assert "only one enforcement" in str(err.value).lower()
    assert ids(source_db.engine) == {1, 2} and control.ledger.runs() == []
    lease.release()
    assert _run(source_db, control).applied == 1


def test_recovery_never_touches_a_live_run(control: Control, tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    db = Db("sqlite", url, sa.create_engine(url))
    seed(db.engine, [person(1, old())])
    _foreign_lease(control, host=socket.gethostname(), pid=_pid_alive_other())
    with pytest.raises(RetentionError, match="run-x"):
        recover(activity(), source=db.engine, control=control, lease_wait=0)
    run_id = _unfinished_run(control)
    with control.ledger.engine.begin() as conn:
        conn.execute(sa.update(leases_table).values(run_id=run_id))
    assert close_interrupted_runs(control, "recruitment") == 0  # the live run is left alone
    with control.ledger.engine.begin() as conn:
        conn.execute(sa.update(leases_table).values(expires_at=time.time() - 1))
    assert close_interrupted_runs(control, "recruitment") == 1  # lapsed: it is closed


def _pid_alive_other() -> int:
    return 1  # init: always alive, never this process


def _unfinished_run(control: Control) -> str:
    from include.retention.ledger import RunHeader

    header = RunHeader(
        activity_id="recruitment", system="ats", dataset="people", action="delete", rules=[],
        as_of=AS_OF.isoformat(), cutoffs=[], dry_run=False, catalogue_version="v1",
        code_version="test",
    )  # fmt: skip
    return control.ledger.start_run(header)


@pytest.mark.parametrize(
    "lapsed",
    [
        {"host": socket.gethostname(), "pid": "dead"},  # this host, process gone
        {"expires_at": 0.0},  # expired
    ],
)
def test_a_lapsed_lease_is_taken_over_at_once(
    control: Control, lapsed: dict[str, Any], tmp_path: Any
) -> None:
    _foreign_lease(control, **(lapsed | ({"pid": _dead_pid()} if lapsed.get("pid") else {})))
    started = time.monotonic()
    lease = control.leases.acquire(NAME, wait=30)
    assert time.monotonic() - started < 15  # taken over, not waited out
    holder = Leases(control.ledger.engine).holder(NAME)
    assert holder is not None and holder.owner == lease.owner
    lease.release()
    assert Leases(control.ledger.engine).holder(NAME) is None


def test_a_live_foreign_lease_is_not_taken_over(control: Control) -> None:
    _foreign_lease(control)  # another host, not expired
    with pytest.raises(RetentionError, match=r"elsewhere\.example"):
        control.leases.acquire(NAME, wait=0.3)


def test_a_hold_placed_after_the_evidence_entry_redoes_the_batch(
    source_db: Db, control: Control
) -> None:
    seed(source_db.engine, [person(i, old()) for i in range(1, 9)])

    placing = threading.Thread(
        target=control.holds.place_record_hold, args=("ats", "people", 3),
        kwargs={"kind": "legal_hold", "reason": "claim", "placed_by": "legal"},
    )  # fmt: skip

    def after_prepare(batch_no: int) -> None:  # batch 1 (ids 1-4) deleted, evidence written
        if batch_no == 1 and placing.ident is None:  # another thread places the hold
            placing.start()
            deadline = time.monotonic() + 10
            while not control.holds.active("ats", "people").records:
                assert time.monotonic() < deadline, "the hold was not placed"
                time.sleep(0.01)

    result = _run(source_db, control, batch_size=4, hooks=Hooks(after_prepare=after_prepare))
    placing.join(10)
    assert not placing.is_alive()
    assert (result.applied, result.held_skipped) == (7, 1)
    assert ids(source_db.engine) == {3}
    assert ids(source_db.engine, "applications") == {30, 31}
    assert control.ledger.lookup("ats", "people", 3) == []
    outcomes = [e.document["body"]["outcome"] for e in control.ledger.entries()
                if e.kind == "batch_resolved"]  # fmt: skip
    assert outcomes == ["rolled_back", "committed", "committed"]
    assert control.ledger.verify().ok


def test_hold_placement_waits_for_a_batch_past_its_last_check(
    source_db: Db, control: Control
) -> None:
    seed(source_db.engine, [person(i, old()) for i in range(1, 5)], children=False)
    placed: list[Any] = []

    def place() -> None:
        control.holds.place_record_hold(
            "ats", "people", 2, kind="legal_hold", reason="claim", placed_by="legal"
        )
        placed.append(control.holds.last_in_flight)

    def before_commit(batch_no: int) -> None:
        placing = threading.Thread(target=place)
        placing.start()
        placing.join(1.0)
        assert placing.is_alive(), "the placement returned while the batch was in flight"
        placed.append(placing)

    act = activity(children=False)
    result = enforce(
        act, AS_OF, source=source_db.engine, control=control, catalogue_version="v1",
        hooks=Hooks(before_commit=before_commit),
    )  # fmt: skip
    placed[0].join(10)
    in_flight = placed[1]
    assert result.applied == 4 and ids(source_db.engine) == set()
    assert in_flight.waited == in_flight.applied and len(in_flight.applied) == 1
    assert len(control.ledger.lookup("ats", "people", 2)) == 1  # reported: deleted before
    # From now on the hold binds: a new record 2 is kept.
    seed_again = [person(2, old())]
    with source_db.engine.begin() as conn:
        conn.execute(sa.table("people", *(sa.column(c) for c in seed_again[0])).insert(),
                     seed_again)  # fmt: skip
    assert enforce(act, AS_OF, source=source_db.engine, control=control,
                   catalogue_version="v1").applied == 0  # fmt: skip
    assert ids(source_db.engine) == {2}


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_a_row_locked_elsewhere_fails_the_run_after_the_lock_timeout(
    dialect: str, control: Control, tmp_path: Any
) -> None:
    from tests.dbs import create_db

    db, cleanup = create_db(dialect, tmp_path)
    try:
        seed(db.engine, [person(i, old()) for i in range(1, 5)])
        people = sa.table("people", sa.column("id"))
        with db.engine.connect() as other:
            other.execute(sa.select(people.c.id).where(people.c.id == 2).with_for_update())
            started = time.monotonic()
            with pytest.raises(RetentionError, match="source database of system 'ats'"):
                _run(db, control, timeouts=SourceTimeouts(lock=1, statement=60))
            assert time.monotonic() - started < 20
            other.rollback()
        assert ids(db.engine) == {1, 2, 3, 4}
        assert [r.finished["outcome"] for r in control.ledger.runs()] == ["failed"]
        assert _run(db, control).applied == 4
    finally:
        cleanup()


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_source_timeouts_are_set_on_the_connection(dialect: str, tmp_path: Any) -> None:
    from tests.dbs import create_db

    db, cleanup = create_db(dialect, tmp_path)
    try:
        with db.engine.connect() as conn:
            limit(conn, SourceTimeouts(lock=7, statement=42))
            if dialect == "postgresql":
                got = (
                    conn.execute(sa.text("SHOW lock_timeout")).scalar(),
                    conn.execute(sa.text("SHOW statement_timeout")).scalar(),
                )
                assert got == ("7s", "42s")
            else:
                got = conn.execute(
                    sa.text(
                        "SELECT @@session.innodb_lock_wait_timeout, @@session.max_statement_time"
                    )
                ).one()
                assert (int(got[0]), float(got[1])) == (7, 42.0)
    finally:
        cleanup()


def test_timeouts_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RetentionError, match="lock timeout"):
        SourceTimeouts(lock=0)
    monkeypatch.setenv("RETENTION_SOURCE_LOCK_TIMEOUT_S", "soon")
    with pytest.raises(RetentionError, match="RETENTION_SOURCE_LOCK_TIMEOUT_S"):
        SourceTimeouts.from_env()
    monkeypatch.setenv("RETENTION_SOURCE_LOCK_TIMEOUT_S", "12")
    assert SourceTimeouts.from_env() == SourceTimeouts(lock=12)


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb", "sqlite"])
def test_lease_times_keep_their_precision(dialect: str, tmp_path: Any) -> None:
    from tests.dbs import create_db

    db, cleanup = create_db(dialect, tmp_path)
    try:
        Control.open(db.engine, b"lease-precision-key-0123456789abcdef")
        lease = Leases(db.engine).acquire(NAME, wait=0, ttl=60)
        holder = Leases(db.engine).holder(NAME)
        lease.release()
        assert holder is not None
        # A single-precision column (MariaDB FLOAT) rounds epoch seconds to 128 s steps.
        assert 59 < holder.expires_at - time.time() <= 60
        assert abs(holder.expires_at - holder.acquired_at - 60) < 0.001
    finally:
        cleanup()
