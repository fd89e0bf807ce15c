"""Crash safety of the write-ahead protocol: SIGKILL a real enforcement at every checkpoint.

Each case (one per dialect and kill point) seeds a fresh source, runs the engine in a forked
process that kills itself (SIGKILL) at one checkpoint of one batch, then recovers and checks
against the real source that no record was deleted without evidence, no evidence claims a
record that still exists, and nothing is recorded twice; finally a normal run completes the job.
"""

from __future__ import annotations

import secrets
from functools import partial
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.retention import runs
from include.retention.lifecycle import CHECKPOINTS, enforce, recover
from include.retention.runs import Control
from tests.crash import fork_run
from tests.dbs import (
    AS_OF,
    CRASH_BATCH,
    DIALECTS,
    crash_activity,
    crash_people,
    create_db,
    ids,
    seed,
)

PEOPLE = crash_people()
EXPIRED = {p["id"] for p in PEOPLE if p["decided_at"].year < AS_OF.year}
# Batches are windows of CRASH_BATCH consecutive keys (every key is due): 10 rows, 7 due each.
BATCHES = len(PEOPLE) // CRASH_BATCH
PER_BATCH = len(EXPIRED) // BATCHES
KILL_POINTS = [("run_started", 0)] + [
    (c, b) for c in CHECKPOINTS[1:] for b in range(1, BATCHES + 1)
]


def _check_invariants(db_engine, control: Control) -> set[int]:
    present = ids(db_engine)
    assert present >= {p["id"] for p in PEOPLE} - EXPIRED, "a record that was not due is gone"
    for pk in EXPIRED:
        evidence = control.ledger.lookup("ats", "people", pk)
        if pk in present:
            assert evidence == [], f"evidence claims record {pk} that still exists"
        else:
            assert len(evidence) == 1, f"record {pk}: deleted with {len(evidence)} evidence entries"
    assert control.ledger.pending_batches() == []
    assert control.ledger.verify().ok
    children = {pk // 10 for pk in ids(db_engine, "applications")}
    assert children <= present, "orphaned child rows"
    return present


def _child(db_url: str, control_url: str, key: bytes, action: str) -> None:
    enforce(
        crash_activity(action), AS_OF, source=sa.create_engine(db_url),
        control=Control.open(control_url, key, create=False), catalogue_version="test",
        batch_size=CRASH_BATCH,
    )  # fmt: skip


def _kill_child(db, control_url: str, key: bytes, action: str, kill_at: str) -> None:
    db.engine.dispose()  # the forked child opens its own connections
    child = partial(_child, db.url, control_url, key, action)
    assert fork_run(child, kill_at=kill_at) == "killed"


def test_the_kill_points_are_what_the_tests_assume() -> None:
    assert (BATCHES, PER_BATCH, len(KILL_POINTS)) == (5, 7, 21)


@pytest.mark.parametrize("kill_point", KILL_POINTS, ids=lambda p: f"{p[0]}:{p[1]}")
@pytest.mark.parametrize("dialect", DIALECTS)
def test_kill_at_every_checkpoint_then_recover(
    dialect: str, kill_point: tuple[str, int], tmp_path: Path
) -> None:
    checkpoint, batch_no = kill_point
    key = secrets.token_bytes(32)
    db, cleanup = create_db(dialect, tmp_path)
    try:
        seed(db.engine, PEOPLE)
        control_url = f"sqlite:///{tmp_path / 'control.db'}"
        control = Control.open(control_url, key)
        _kill_child(db, control_url, key, "delete", f"{checkpoint}:{batch_no}")
        recovery = recover(crash_activity(), source=db.engine, control=control)
        assert recovery.runs_closed == 1
        if checkpoint in ("after_prepare", "after_apply"):
            assert recovery.committed + recovery.rolled_back == 1
            assert recovery.committed == (checkpoint == "after_apply")
        present = _check_invariants(db.engine, control)
        done = batch_no - (checkpoint in ("batch_staged", "after_prepare"))
        assert len(EXPIRED - present) == PER_BATCH * done
        result = enforce(
            crash_activity(), AS_OF, source=db.engine, control=control,
            catalogue_version="test", batch_size=CRASH_BATCH,
        )  # fmt: skip
        assert result.outcome in ("completed", "nothing_to_do")
        assert _check_invariants(db.engine, control).isdisjoint(EXPIRED)
    finally:
        cleanup()


def _anonymised(db_engine) -> set[int]:
    people = sa.Table("people", sa.MetaData(), autoload_with=db_engine)
    with db_engine.connect() as conn:
        query = sa.select(people.c.id).where(people.c.anonymised_at.is_not(None))
        return set(conn.execute(query).scalars())


def _check_anonymised(db_engine, control: Control) -> set[int]:
    marked = _anonymised(db_engine)
    assert marked <= EXPIRED
    for pk in EXPIRED:
        evidence = control.ledger.lookup("ats", "people", pk)
        assert len(evidence) == (pk in marked), f"record {pk}: {len(evidence)} evidence entries"
    assert control.ledger.pending_batches() == [] and control.ledger.verify().ok
    return marked


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_kill_during_anonymisation_then_recover(
    dialect: str, checkpoint: str, tmp_path: Path
) -> None:
    key = secrets.token_bytes(32)
    db, cleanup = create_db(dialect, tmp_path)
    try:
        seed(db.engine, PEOPLE)
        control_url = f"sqlite:///{tmp_path / 'control.db'}"
        control = Control.open(control_url, key)
        batch_no = 0 if checkpoint == "run_started" else 2
        _kill_child(db, control_url, key, "anonymise", f"{checkpoint}:{batch_no}")
        recover(crash_activity("anonymise"), source=db.engine, control=control)
        done = batch_no - (checkpoint in ("run_started", "batch_staged", "after_prepare"))
        assert len(_check_anonymised(db.engine, control)) == PER_BATCH * max(done, 0)
        enforce(
            crash_activity("anonymise"), AS_OF, source=db.engine, control=control,
            catalogue_version="test", batch_size=CRASH_BATCH,
        )  # fmt: skip
        assert _check_anonymised(db.engine, control) == EXPIRED
    finally:
        cleanup()


def test_several_kill_points_each_kill_where_they_match_once_each(monkeypatch, tmp_path) -> None:
    """``KILL_ENV`` with two points: each kills in its own run; with ``KILL_ONCE_ENV`` each
    kills once (its own marker file), so the first point's kill does not spend the second's."""
    calls: list[tuple[str, int, str]] = [
        ("after_prepare", 1, "a#1"), ("after_prepare", 1, "a#2"), ("after_apply", 3, "a#2"),
        ("after_apply", 3, "b"), ("after_prepare", 1, "a#2"), ("after_apply", 3, "b"),
    ]  # fmt: skip
    killed: list[int] = []
    monkeypatch.setattr(runs.os, "kill", lambda pid, sig: killed.append(len(done)))
    monkeypatch.setenv(runs.KILL_ENV, "after_prepare:1@a#2,after_apply:3@b")
    monkeypatch.setenv(runs.KILL_ONCE_ENV, str(tmp_path / "once"))
    done: list[tuple[str, int, str]] = []
    for name, no, where in calls:
        runs.checkpoint(name, no, where)
        done.append((name, no, where))
    assert killed == [1, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["once", "once.1"]
