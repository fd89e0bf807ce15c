"""Mapped partitions: a table split into key ranges enforced in parallel within one ledger run
(started once, finished once) deletes exactly what one run does; a partition killed mid-batch
recovers its own batch without touching the batches of a partition still in flight, and the
finish settles what a partition that never came back left prepared. Real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.retention import lifecycle, operations
from include.retention.catalogue import Activity, Catalogue, Partitioning
from include.retention.certificate import build_certificate, render
from include.retention.errors import RetentionError
from include.retention.lifecycle import Hooks, RunOptions
from include.retention.pseudonym import RecordRefHasher
from include.retention.runs import Control
from include.retention.sources.base import DueAt, KeyRange
from include.retention.sources.sql import SqlAdapter
from tests.crash import fork_run
from tests.dbs import AS_OF, Db, activity, create_db, ids, old, person, recent, seed

PEOPLE = 120
SIZE = 40  # rows of the table per partition: 3 partitions
BATCH = 7
HELD, SUBJECT_HELD = 17, 83


def _people() -> list[dict[str, Any]]:
    # Every third person is not yet due, every fifth has no anchor (kept), the rest are due.
    rows = []
    for pid in range(1, PEOPLE + 1):
        decided = recent() if pid % 3 == 0 else None if pid % 5 == 0 else old()
        rows.append(person(pid, decided))
    return rows


def _expected_survivors() -> set[int]:
    """Computed from the seed itself, not by the code under test."""
    return {
        pid for pid in range(1, PEOPLE + 1) if pid % 3 == 0 or pid % 5 == 0
    } | {HELD, SUBJECT_HELD}  # fmt: skip


@pytest.fixture(name="db")
def db_fixture(tmp_path: Path) -> Iterator[Db]:
    db, cleanup = create_db("postgresql", tmp_path)
    try:
        seed(db.engine, _people(), children=False)
        yield db
    finally:
        cleanup()


def _control(tmp_path: Path, name: str) -> tuple[str, Control]:
    url = f"sqlite:///{tmp_path / name}"
    control = Control.open(url, b"partition-test-key-0123456789abcdef")
    control.holds.place_record_hold("ats", "people", HELD, kind="legal_hold", reason="claim",
                                    placed_by="legal")  # fmt: skip
    control.holds.place_subject_hold(person(SUBJECT_HELD, None)["email"], kind="restriction",
                                     reason="Art. 18", placed_by="dpo")  # fmt: skip
    return url, control


def _activity() -> Activity:
    return activity(children=False, safety={"max_rows": None, "max_fraction": None})


def _start(act: Activity, engine: sa.Engine, control: Control, partitions: int) -> str:
    """Start the partitioned ledger run (what the DAG's partition step does)."""
    whole = lifecycle.plan(act, AS_OF, control=control, source=engine)
    adapter = SqlAdapter(act.source, control.key, engine)
    return lifecycle.start_partitioned(
        act, whole, partitions, control=control, adapter=adapter, options=RunOptions("test")
    )


def _partition_run(
    act: Activity, part: KeyRange, engine: sa.Engine, control: Control, run_id: str,
    **options: Any,
) -> lifecycle.RunReport:  # fmt: skip
    whole = lifecycle.plan(act, AS_OF, control=control, source=engine)
    adapter = SqlAdapter(act.source, control.key, engine)
    opts = RunOptions("test", batch_size=BATCH, whole=whole, run_id=run_id, **options)
    return lifecycle.run(act, part, adapter, control, opts)


def _together(calls: list[Callable[[], object]]) -> None:
    """Run ``calls`` at the same time, one thread each, and wait for them (two minutes)."""
    threads = [threading.Thread(target=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def _finish(
    act: Activity, run_id: str, parts: list[KeyRange], engine: sa.Engine, control: Control,
    outcome: str = "completed",
) -> dict[str, Any]:  # fmt: skip
    adapter = SqlAdapter(act.source, control.key, engine)
    return lifecycle.finish_partitioned(
        act, run_id, parts, control=control, adapter=adapter, outcome=outcome, message="",
        counts={},
    )  # fmt: skip


def test_partitions_cover_every_key_once(db: Db, tmp_path: Path) -> None:
    _, control = _control(tmp_path, "control.db")
    parts = lifecycle.partitions(_activity(), AS_OF, control=control, size=SIZE, source=db.engine)
    assert [(p.lower, p.upper, p.index) for p in parts] == [
        (None, 40, 0), (40, 80, 1), (80, None, 2),
    ]  # fmt: skip
    assert all(isinstance(p.within, DueAt) for p in parts)


def test_mapped_partitions_delete_exactly_what_one_run_deletes(tmp_path: Path) -> None:
    act = _activity()
    single_db, drop_single = create_db("postgresql", tmp_path / "single")
    mapped_db, drop_mapped = create_db("postgresql", tmp_path / "mapped")
    try:
        for db in (single_db, mapped_db):
            seed(db.engine, _people(), children=False)
        _, single_control = _control(tmp_path, "single.db")
        one = lifecycle.enforce(act, AS_OF, source=single_db.engine, control=single_control,
                                catalogue_version="test", batch_size=BATCH)  # fmt: skip
        assert one.outcome == "completed", one.message

        _, control = _control(tmp_path, "mapped.db")
        parts = lifecycle.partitions(act, AS_OF, control=control, size=SIZE,
                                     source=mapped_db.engine)  # fmt: skip
        assert len(parts) == 3
        run_id = _start(act, mapped_db.engine, control, len(parts))
        reports: list[lifecycle.RunReport] = []
        _together([
            lambda p=p: reports.append(_partition_run(act, p, mapped_db.engine, control, run_id))
            for p in parts
        ])  # fmt: skip
        assert sorted(r.outcome for r in reports) == ["completed"] * 3
        assert {r.run_id for r in reports} == {run_id}
        assert control.ledger.unfinished_runs(act.id).keys() == {run_id}  # until the finish
        counts = _finish(act, run_id, parts, mapped_db.engine, control)
        assert ids(single_db.engine) == ids(mapped_db.engine) == _expected_survivors()
        assert sum(r.applied for r in reports) == one.applied == PEOPLE - len(_expected_survivors())
        assert counts["applied"] == one.applied
        assert sum(r.held_skipped + r.restricted_skipped for r in reports) == 2
        assert control.ledger.verify().ok and control.ledger.pending_batches() == []
        [run] = control.ledger.runs()  # started once, finished once
        assert run.header["origin"]["partitions"] == "3"
        assert run.finished is not None and run.finished["outcome"] == "completed"
    finally:
        drop_single()
        drop_mapped()


def test_a_killed_partition_recovers_only_its_own_batch(db: Db, tmp_path: Path) -> None:
    act = _activity()
    control_url, control = _control(tmp_path, "control.db")
    parts = lifecycle.partitions(act, AS_OF, control=control, size=SIZE, source=db.engine)
    first, second = parts[0], parts[1]
    run_id = _start(act, db.engine, control, len(parts))

    def killed_partition() -> None:
        engine = sa.create_engine(db.url)
        own = Control.open(control_url, control.key, create=False)
        _partition_run(act, first, engine, own, run_id)

    assert fork_run(killed_partition, kill_at="after_prepare:2") == "killed"
    [dead] = control.ledger.pending_batches(act.id)

    in_flight, recovered = threading.Event(), threading.Event()

    def hold_open(batch_no: int) -> None:  # partition 1's first batch waits, prepared
        if batch_no == 1:
            in_flight.set()
            assert recovered.wait(60), "the killed partition was not retried"

    reports: list[lifecycle.RunReport] = []
    hooks = Hooks(after_prepare=hold_open)
    live = threading.Thread(target=lambda: reports.append(_partition_run(
        act, second, db.engine, control, run_id, hooks=hooks)))  # fmt: skip
    live.start()
    try:
        assert in_flight.wait(60)
        [live_batch] = [b for b in control.ledger.pending_batches(act.id) if b.seq != dead.seq]
        assert (dead.partition, live_batch.partition) == (0, 1)
        retry = _partition_run(act, first, db.engine, control, run_id)  # the task's retry
        assert retry.recovery is not None
        assert (retry.recovery.rolled_back, retry.recovery.committed) == (1, 0)
        assert retry.recovery.runs_closed == 0  # the shared run stays open for the others
        assert [b.seq for b in control.ledger.pending_batches(act.id)] == [live_batch.seq]
    finally:
        recovered.set()
        live.join(120)
    assert [r.outcome for r in reports] == ["completed"]
    _partition_run(act, parts[2], db.engine, control, run_id)
    _finish(act, run_id, parts, db.engine, control)
    assert ids(db.engine) == _expected_survivors()
    assert control.ledger.verify().ok and control.ledger.pending_batches() == []
    for pid in range(1, PEOPLE + 1):
        gone = pid not in _expected_survivors()
        assert len(control.ledger.lookup("ats", "people", pid)) == gone, pid


# ------------------------------------------------------------------ the DAG's steps (operations)


class _Runtime(operations.Runtime):
    """The DAG tasks' runtime on a test source (the adapter's engine instead of a connection)."""

    def __init__(self, act: Activity, control: Control, engine: sa.Engine) -> None:
        catalogue = Catalogue(activities={act.id: act}, version="partitions-test")
        super().__init__(catalogue, given_control=control)
        self.engine = engine

    def adapter(self, activity: Activity) -> SqlAdapter:
        return SqlAdapter(activity.source, self.control.key, self.engine)


def _dag_steps(rt: _Runtime, act: Activity) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """plan → partition → enforce (one thread per partition, as mapped tasks run) → finish →
    verify → report, as the DAG wires them; (the partitions, the report)."""
    params = {"as_of": AS_OF.isoformat(), "dry_run": False}
    planned = operations.plan(act.id, params, AS_OF, rt, now=AS_OF)
    parts = operations.partition(act.id, planned, None, rt)
    results: dict[int, dict[str, Any]] = {}
    _together([
        lambda p=p: results.__setitem__(
            p["index"], operations.enforce(act.id, planned, None, rt, part=p))
        for p in parts
    ])  # fmt: skip
    finished = operations.finish(act.id, planned, parts, [results[p["index"]] for p in parts], rt)
    verified = operations.verify(act.id, planned, finished, rt)
    assert verified["checked"] and verified["success"], verified
    report = operations.report(
        act.id, {"plan": planned, "enforce": finished, "verify": verified}, rt
    )
    return parts, report


def _deleted_refs(control: Control) -> set[bytes]:
    ledger = control.ledger
    return {ref for r in ledger.runs() for ref in ledger.applied_refs(r.run_id, "ats", "people")}


def test_the_mapped_dag_steps_delete_exactly_what_the_single_task_run_does(tmp_path: Path) -> None:
    single = activity(children=True)
    mapped = single.model_copy(update={"partitioning": Partitioning(records_per_partition=SIZE)})
    expected_gone = set(range(1, PEOPLE + 1)) - _expected_survivors()
    dbs = {name: create_db("postgresql", tmp_path / name) for name in ("single", "mapped")}
    try:
        reports, controls = {}, {}
        for name, act in (("single", single), ("mapped", mapped)):
            db = dbs[name][0]
            seed(db.engine, _people(), children=True)
            _, controls[name] = _control(tmp_path, f"{name}.db")
            parts, reports[name] = _dag_steps(_Runtime(act, controls[name], db.engine), act)
            assert len(parts) == (1 if name == "single" else 3)
            assert ids(db.engine) == _expected_survivors()
            assert {pk // 10 for pk in ids(db.engine, "applications")} == _expected_survivors()
            assert {pk // 10 for pk in ids(db.engine, "attachments")} == _expected_survivors()
            assert reports[name]["outcome"] == "completed" and reports[name]["verified"]
            assert len(reports[name]["ledger_run_ids"]) == 1
        hasher = RecordRefHasher(controls["single"].key, "ats", "people")
        assert (
            _deleted_refs(controls["single"])
            == _deleted_refs(controls["mapped"])
            == {hasher.ref(pk) for pk in expected_gone}
        )
        counts = {name: reports[name]["counts"] for name in reports}
        assert counts["single"]["applied"] == counts["mapped"]["applied"] == len(expected_gone)
        assert counts["mapped"]["children"] == counts["single"]["children"] == {
            "applications": 2 * len(expected_gone), "attachments": 2 * len(expected_gone),
        }  # fmt: skip
        for control in controls.values():
            assert control.ledger.verify().ok and control.ledger.pending_batches() == []
        [mapped_run] = controls["mapped"].ledger.runs()
        assert mapped_run.header["origin"]["partitions"] == "3"
        assert mapped_run.finished is not None
        assert mapped_run.finished["counts"]["applied"] == len(expected_gone)
        [single_run] = controls["single"].ledger.runs()
        assert "partitions" not in single_run.header["origin"]
        for name, run, count in (("mapped", mapped_run, "3"), ("single", single_run, "1")):
            catalogue = Catalogue(activities={"recruitment": mapped}, version="v")
            page = render(build_certificate(controls[name].ledger, run.run_id, "en",
                                            catalogue=catalogue), "html").decode()  # fmt: skip
            assert f"Parallel partitions (key ranges)</th><td>{count}</td>" in page
    finally:
        for _, drop in dbs.values():
            drop()


def test_small_datasets_and_dry_runs_are_one_partition_and_the_cap_holds(
    db: Db, tmp_path: Path
) -> None:
    act = _activity().model_copy(update={"partitioning": Partitioning(records_per_partition=SIZE)})
    _, control = _control(tmp_path, "control.db")
    rt = _Runtime(act, control, db.engine)
    planned = operations.plan(act.id, {"as_of": AS_OF.isoformat()}, AS_OF, rt, now=AS_OF)
    assert len(operations.partition(act.id, planned, None, rt)) == 3
    dry = planned | {"dry_run": True}
    assert operations.partition(act.id, dry, None, rt) == [operations.WHOLE]
    big = act.model_copy(update={"partitioning": Partitioning(records_per_partition=PEOPLE)})
    rt_big = _Runtime(big, control, db.engine)
    assert operations.partition(big.id, planned, None, rt_big) == [operations.WHOLE]
    capped = act.model_copy(
        update={"partitioning": Partitioning(records_per_partition=1, max_partitions=2)}
    )
    parts = operations.partition(act.id, planned, None, _Runtime(capped, control, db.engine))
    assert [(p["lower"], p["upper"], p["of"]) for p in parts] == [(None, 60, 2), (60, None, 2)]
    assert ids(db.engine) == set(range(1, PEOPLE + 1))  # partitioning changes no record
    # Each split started its run; the second split's recovery closed the first (never enforced).
    first, second = control.ledger.runs()
    assert [r.header["origin"]["partitions"] for r in (first, second)] == ["3", "2"]
    assert first.finished is not None and first.finished["outcome"] == "interrupted"
    assert second.finished is None and first.batches == second.batches == []
    assert {p["run_id"] for p in parts} == {second.run_id}


def test_the_finish_settles_a_partition_that_never_came_back(db: Db, tmp_path: Path) -> None:
    """Partition 1 dies after its first batch's source commit (no resolve, no retry): the
    finish settles that batch from the source and the run's applied count is what is gone."""
    act = _activity()
    control_url, control = _control(tmp_path, "control.db")
    parts = lifecycle.partitions(act, AS_OF, control=control, size=SIZE, source=db.engine)
    run_id = _start(act, db.engine, control, len(parts))

    def dies_after_commit() -> None:
        engine = sa.create_engine(db.url)
        own = Control.open(control_url, control.key, create=False)
        _partition_run(act, parts[0], engine, own, run_id)

    assert fork_run(dies_after_commit, kill_at="after_apply:1") == "killed"
    for part in parts[1:]:
        assert _partition_run(act, part, db.engine, control, run_id).outcome == "completed"
    [dead] = control.ledger.pending_batches(act.id)
    counts = _finish(act, run_id, parts, db.engine, control, outcome="failed")
    assert control.ledger.pending_batches() == [] and control.ledger.verify().ok
    [run] = control.ledger.runs()
    assert run.finished is not None and run.finished["outcome"] == "failed"
    gone = PEOPLE - len(ids(db.engine))
    assert counts["applied"] == run.finished["counts"]["applied"] == gone
    assert _expected_survivors() <= ids(db.engine)  # nothing not due, held or restricted went
    assert ids(db.engine) - _expected_survivors()  # partition 1's other due rows are still there
    assert len(control.ledger.applied_refs(run_id, "ats", "people")) == gone
    assert dead.partition == 0
    # Its task cleared after the finish: refused, nothing changes (a new DAG run does the rest).
    with pytest.raises(RetentionError, match="finished already"):
        _partition_run(act, parts[0], db.engine, control, run_id)
    assert PEOPLE - len(ids(db.engine)) == gone
