"""Concurrency on real servers: two enforcements of one activity at once, in two processes
(PostgreSQL and MariaDB, each with its control database on the same server), and legal holds
placed at random moments while a run deletes (PostgreSQL and MariaDB, pipelined batches);
an Art. 17 erasure of some people during a retention run of the same dataset (PostgreSQL and
MariaDB).

Two runs at once: the lease lets one enforce and the other wait and then find nothing to do;
no deadlock, every deleted record has exactly one evidence entry, no run is marked
interrupted. Holds: a record still present when its placement returns is never deleted.
Runs in about 35 s on a 2-core machine.
"""

from __future__ import annotations

import os
import random
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.retention.runs import Control
from tests.crash import check_people
from tests.dbs import Db, create_db, ids, old, person, recent, seed
from tests.workers import Worker

pytestmark = pytest.mark.reliability
TRIALS = 20
PEOPLE = [person(i, old() if i % 10 < 7 else recent()) for i in range(1, 41)]
DUE = {p["id"] for p in PEOPLE if p["decided_at"] == old()}
NOT_DUE = {p["id"] for p in PEOPLE} - DUE
HOLD_SEED = int(os.environ.get("RETENTION_FUZZ_SEED", "20261125"))
MIN_PLACEMENTS = 200
PER_RUN = 100
HOLD_PEOPLE = [person(i, old() if i % 10 < 8 else recent()) for i in range(1, 401)]
HOLD_DUE = {p["id"] for p in HOLD_PEOPLE if p["decided_at"] == old()}


@pytest.fixture(scope="module", name="workers")
def workers_fixture() -> Iterator[list[Worker]]:
    pair = [Worker(), Worker()]
    yield pair
    for worker in pair:
        worker.close()


def _trial(dialect: str, workers: list[Worker], tmp_path: Path, control_db: Db, trial: int) -> None:
    """One trial on a fresh source; the control database is shared, each trial is its own
    activity with its own pseudonym key."""
    source, drop_source = create_db(dialect, tmp_path)
    activity_id = f"trial_{trial}"
    try:
        seed(source.engine, PEOPLE)
        key = secrets.token_bytes(32)
        control = Control.open(control_db.engine, key, create=False)
        start_at = time.time() + 0.1
        for worker in workers:
            worker.send(source=source.url, control=control_db.url, key=key.hex(), batch_size=4,
                        start_at=start_at, activity_id=activity_id)  # fmt: skip
        answers = [worker.answer(120) for worker in workers]
        assert None not in answers, f"trial {trial}: a run did not finish in 120 s (deadlock?)"
        assert all(a["ok"] for a in answers), f"trial {trial}: {answers}"  # type: ignore[index]
        outcomes = sorted(a["outcome"] for a in answers)  # type: ignore[index]
        assert outcomes == ["completed", "nothing_to_do"], f"trial {trial}: {answers}"
        assert (
            check_people(control, source.engine, DUE, NOT_DUE, activity_id=activity_id) == NOT_DUE
        )
        runs = control.ledger.runs(activity_id)
        finished = [r.finished["outcome"] for r in runs if r.finished]
        assert sorted(finished) == outcomes, "a live run was marked interrupted"
    finally:
        drop_source()


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_two_runs_at_once_never_deadlock_and_record_once(
    dialect: str, workers: list[Worker], tmp_path: Path
) -> None:
    control_db, drop_control = create_db(dialect, tmp_path)
    try:
        Control.open(control_db.engine, b"only-creates-the-tables-0123456789")
        for trial in range(TRIALS):
            _trial(dialect, workers, tmp_path, control_db, trial)
    finally:
        drop_control()
    print(f"{dialect}: {TRIALS} two-process trials, no deadlock, evidence exactly once")


def _present(engine: Any, pk: int) -> bool:
    people = sa.table("people", sa.column("id"))
    with engine.connect() as conn:
        return conn.execute(sa.select(people.c.id).where(people.c.id == pk)).first() is not None


def _place_during_run(
    control: Control, source: Any, worker: Worker, rng: random.Random
) -> tuple[list[tuple[int, bool]], int, dict[str, Any]]:
    """Place record holds on random due records until the run ends; (pk, present right after
    placement) per hold, how many placements waited for a batch, and the run's answer."""
    candidates = sorted(HOLD_DUE)
    rng.shuffle(candidates)
    placed: list[tuple[int, bool]] = []
    waited = 0
    answer = None
    while len(placed) < PER_RUN and (answer := worker.answer(0)) is None:
        time.sleep(rng.uniform(0, 0.006))
        pk = candidates.pop()
        control.holds.place_record_hold(
            "ats", "people", pk, kind="legal_hold", reason="claim", placed_by="legal"
        )
        waited += bool(control.holds.last_in_flight.waited)
        placed.append((pk, _present(source, pk)))
    return placed, waited, answer or worker.answer(120) or {}


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_holds_placed_at_random_moments_are_honoured(
    dialect: str, workers: list[Worker], tmp_path: Path
) -> None:
    rng = random.Random(HOLD_SEED)
    placements = protected = waited = trials = 0
    while placements < MIN_PLACEMENTS and trials < 30:
        trials += 1
        source, drop_source = create_db(dialect, tmp_path)
        control_db, drop_control = create_db(dialect, tmp_path)
        try:
            seed(source.engine, HOLD_PEOPLE, children=False)
            key = secrets.token_bytes(32)
            control = Control.open(control_db.engine, key)
            workers[0].send(source=source.url, control=control_db.url, key=key.hex(),
                            batch_size=5, children=False)  # fmt: skip
            placing = _place_during_run(control, source.engine, workers[0], rng)
            placed, trial_waited, answer = placing
            assert answer.get("ok"), answer.get("error", answer)
            survivors = ids(source.engine)
            lost = [pk for pk, present in placed if present and pk not in survivors]
            assert lost == [], f"trial {trials}: held records deleted: {lost}"
            kept = {pk for pk, present in placed if present}
            must_stay = {p["id"] for p in HOLD_PEOPLE} - HOLD_DUE | kept
            check_people(control, source.engine, HOLD_DUE, must_stay, children=False)
            placements += len(placed)
            protected += len(kept)
            waited += trial_waited
        finally:
            drop_source()
            drop_control()
    print(
        f"holds: {placements} placed during {trials} runs (seed {HOLD_SEED}); {protected} on"
        f" records still present, 0 of them lost; {waited} placements waited for a batch"
    )
    assert placements >= MIN_PLACEMENTS


# An erasure of some people during a retention run of the same dataset (two processes): due
# and not-due people, one under a record legal hold and one restricted.
ERASED = {3, 4, 13, 18, 24, 27}  # 3, 4, 13, 24: due; 18, 27: not due
HELD, RESTRICTED = 4, 27
ERASURE_TRIALS = 8


def _erasure_trial(dialect: str, workers: list[Worker], tmp_path: Path, trial: int) -> None:
    source, drop_source = create_db(dialect, tmp_path)
    control_db, drop_control = create_db(dialect, tmp_path)
    try:
        seed(source.engine, PEOPLE)
        key = secrets.token_bytes(32)
        control = Control.open(control_db.engine, key)
        control.holds.place_record_hold("ats", "people", HELD, kind="legal_hold",
                                        reason="claim", placed_by="legal")  # fmt: skip
        control.holds.place_subject_hold(f"person{RESTRICTED}@example.com", kind="restriction",
                                         reason="DSR-0", placed_by="dpo")  # fmt: skip
        start_at = time.time() + 0.1
        common = {"source": source.url, "control": control_db.url, "key": key.hex(),
                  "batch_size": 3, "start_at": start_at}  # fmt: skip
        # Alternate who starts a hair earlier, so both orders are exercised.
        first, second = workers if trial % 2 else workers[::-1]
        first.send(**common)
        second.send(**common, erase=[f"person{pk}@example.com" for pk in sorted(ERASED)])
        answers = {a["outcome"]: a for a in (w.answer(120) or {} for w in workers)}
        assert set(answers) == {"completed", "erasure"}, f"trial {trial}: {answers}"
        kept = {HELD, RESTRICTED}
        gone_by_design = (DUE | ERASED) - kept
        present = check_people(control, source.engine, DUE | ERASED, NOT_DUE - ERASED | kept)
        assert present == {p["id"] for p in PEOPLE} - gone_by_design, f"trial {trial}"
        erasure = answers["erasure"]
        assert erasure["kept"] == {"legal_hold": 1, "restriction": 1}, f"trial {trial}: {erasure}"
        # The erasure claims exactly what it deleted: the not-due ones, and the due ones the
        # retention run had not deleted first.
        runs = control.ledger.runs("recruitment")
        [retention] = [r.run_id for r in runs if r.header["action"] == "delete"]
        claimed = {
            ref for r in runs if r.header["action"] == "erasure"
            for ref in control.ledger.applied_refs(r.run_id, "ats", "people")
        }  # fmt: skip
        assert len(claimed) == erasure["applied"] >= len(ERASED - DUE - kept)
        retained = set(control.ledger.applied_refs(retention, "ats", "people"))
        assert not claimed & retained and len(retained) + len(claimed) == len(gone_by_design)
        assert all(r.finished and r.finished["outcome"] != "interrupted" for r in runs)
    finally:
        drop_source()
        drop_control()


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_an_erasure_during_a_retention_run_loses_nothing_and_records_once(
    dialect: str, workers: list[Worker], tmp_path: Path
) -> None:
    assert ERASED & DUE and ERASED - DUE and HELD in DUE and RESTRICTED in NOT_DUE
    for trial in range(ERASURE_TRIALS):
        _erasure_trial(dialect, workers, tmp_path, trial)
    print(f"{dialect}: {ERASURE_TRIALS} erasure-during-retention trials, evidence exactly once")
