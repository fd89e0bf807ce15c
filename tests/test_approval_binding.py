"""An approval covers what its plan showed: the records it counted, under the rule it counted
them by. A gated run waits for a person, maybe for hours; if more records are due when the
approved run starts (records added, a hold released) or the activity's rule, action or dataset
changed in the catalogue meanwhile, the run refuses before it changes anything and says what
to do. The DAG's steps (`operations`) on real PostgreSQL, the control database in SQLite."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.retention import operations
from include.retention.catalogue import Activity, Catalogue, Partitioning
from include.retention.errors import RetentionError
from include.retention.runs import Control
from include.retention.sources.sql import SqlAdapter
from tests.dbs import AS_OF, activity, create_db, ids, old, person, recent, seed

EVERYONE = set(range(1, 11))
DUE = {1, 2, 3, 4, 5, 6}  # decided long ago; 7-10 recently
APPROVAL = {"chosen_options": [operations.APPROVE], "responded_by_user": {"name": "dpo.anna"}}
GATE = {"max_rows": 2, "max_fraction": None}  # 6 due: a person must approve


def _gated(period: str = "P2Y") -> Activity:
    rule = {"kind": "period", "period": period, "anchor": {"sv": "beslut", "en": "decision"}}
    return activity(
        children=False, safety=GATE,
        retention=[{"when": {"column": "status", "equals": "rejected"}, "rule": rule,
                    "anchor_column": "decided_at"}],
    )  # fmt: skip


class World:
    def __init__(self, engine: sa.Engine, control: Control) -> None:
        self.engine, self.control = engine, control

    def runtime(self, act: Activity) -> operations.Runtime:
        catalogue = Catalogue(activities={act.id: act}, version="approval-test")
        return operations.Runtime.of(catalogue, self.control, {act.id: self.engine})

    def plan(self, act: Activity, triggered_by: str | None = None) -> dict[str, Any]:
        params = {"as_of": AS_OF.isoformat(), "dry_run": False}
        origin = {"run_type": "manual", "triggered_by": triggered_by} if triggered_by else None
        planned = operations.plan(
            act.id, params, AS_OF, self.runtime(act), origin=origin, now=AS_OF
        )
        assert planned["needs_approval"], planned
        return planned


@pytest.fixture(name="world")
def world_fixture(tmp_path: Path) -> Iterator[World]:
    source, drop = create_db("postgresql", tmp_path)
    try:
        people = [person(i, old() if i in DUE else recent()) for i in sorted(EVERYONE)]
        seed(source.engine, people, children=False)
        control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", b"approval-key-0123456789")
        yield World(source.engine, control)
    finally:
        drop()


def test_an_approved_run_deletes_what_its_plan_counted_or_less(world: World) -> None:
    act = _gated()
    planned = world.plan(act)
    assert planned["counts"]["to_apply"] == len(DUE)
    with world.engine.begin() as conn:  # someone else deleted one meanwhile: fewer is fine
        conn.execute(sa.text("DELETE FROM people WHERE id = 1"))

    done = operations.enforce(act.id, planned, APPROVAL, world.runtime(act))

    assert (done["outcome"], done["counts"]["applied"]) == ("completed", len(DUE) - 1)
    assert ids(world.engine) == EVERYONE - DUE
    (run,) = world.control.ledger.runs(act.id)
    assert run.header["approved_by"] == "dpo.anna"


@pytest.mark.parametrize("step", ["partition", "enforce"])
def test_the_person_who_triggered_a_run_cannot_approve_it(world: World, step: str) -> None:
    act = _gated().model_copy(update={"partitioning": Partitioning(records_per_partition=3)})
    planned = world.plan(act, triggered_by="dpo.anna")
    assert planned["approval_text"].endswith(
        "dpo.anna triggered this run: someone else must approve it (four eyes)."
    )

    with pytest.raises(RetentionError) as refused:
        getattr(operations, step)(act.id, planned, APPROVAL, world.runtime(act))

    message = str(refused.value)
    assert "dpo.anna triggered this run and approved it" in message
    assert "nothing was changed" in message and "ask someone else to approve it" in message
    assert ids(world.engine) == EVERYONE
    assert world.control.ledger.runs(act.id) == []
    by_another = world.plan(act, triggered_by="ops.erik")  # a second person's approval stands
    assert len(operations.partition(act.id, by_another, APPROVAL, world.runtime(act))) > 1


@pytest.mark.parametrize("grows_by", ["a hold released", "a record added"])
def test_more_due_than_approved_is_refused_and_nothing_changes(world: World, grows_by: str) -> None:
    act = _gated()
    hold = world.control.holds.place_record_hold(
        "ats", "people", 3, kind="legal_hold", reason="claim", placed_by="legal"
    )
    planned = world.plan(act)
    assert planned["counts"]["to_apply"] == len(DUE) - 1  # the held one is not counted
    if grows_by == "a hold released":
        world.control.holds.release(hold, released_by="legal")
    else:
        seed(world.engine, [person(11, old())], children=False)

    with pytest.raises(RetentionError) as refused:
        operations.enforce(act.id, planned, APPROVAL, world.runtime(act))

    message = str(refused.value)
    assert "the approval covered 5 records to delete, but 6 are due now" in message
    assert "nothing was changed" in message and "Trigger the run again" in message
    assert ids(world.engine) >= EVERYONE  # all there, the added one too
    assert world.control.ledger.runs(act.id) == []  # no run started


def test_a_rule_changed_since_the_approved_plan_is_refused_even_for_fewer_records(
    world: World,
) -> None:
    planned = world.plan(_gated("P2Y"))
    longer = _gated("P10Y")  # nothing of these is due under it: the edit deletes less

    with pytest.raises(RetentionError, match="changed in the catalogue since the run was planned"):
        operations.enforce(longer.id, planned, APPROVAL, world.runtime(longer))

    assert ids(world.engine) == EVERYONE
    assert world.control.ledger.runs(longer.id) == []


def test_an_edit_that_decides_nothing_leaves_the_approval_standing(world: World) -> None:
    act = _gated()
    planned = world.plan(act)
    renamed = act.model_copy(update={"owner": "another-team", "schedule": "0 4 * * *"})

    done = operations.enforce(act.id, planned, APPROVAL, world.runtime(renamed))

    assert done["outcome"] == "completed" and ids(world.engine) == EVERYONE - DUE


def test_a_partitioned_run_refuses_before_it_starts(world: World) -> None:
    act = _gated().model_copy(update={"partitioning": Partitioning(records_per_partition=3)})
    planned = world.plan(act)
    seed(world.engine, [person(11, old())], children=False)

    with pytest.raises(RetentionError, match="the approval covered 6 records"):
        operations.partition(act.id, planned, APPROVAL, world.runtime(act))

    assert world.control.ledger.runs(act.id) == []
    assert len(operations.partition(act.id, world.plan(act), APPROVAL, world.runtime(act))) > 1


def _partitioned(limit: int) -> Activity:
    gated = _gated()
    return gated.model_copy(update={
        "partitioning": Partitioning(records_per_partition=3),
        "safety": gated.safety.model_copy(update={"max_rows": limit}),
    })  # fmt: skip


def _plan(world: World, act: Activity) -> dict[str, Any]:
    params = {"as_of": AS_OF.isoformat(), "dry_run": False}
    return operations.plan(act.id, params, AS_OF, world.runtime(act), now=AS_OF)


@pytest.mark.parametrize("approved", [True, False], ids=["approved", "within_the_limit"])
def test_a_partitioned_run_never_applies_more_than_approved_or_its_limit(
    world: World, approved: bool
) -> None:
    """4 of the 6 due are free (5 and 6 held): approved for 4 (limit 2), or within the limit of
    4 without approval. Both holds are released after the first partition has deleted its
    records: the later partitions, counting what is left, must still weigh the whole run."""
    act = _partitioned(2 if approved else 4)
    holds = [
        world.control.holds.place_record_hold(
            "ats", "people", pk, kind="legal_hold", reason="claim", placed_by="legal"
        )
        for pk in (5, 6)
    ]
    planned = _plan(world, act)
    assert (planned["counts"]["to_apply"], planned["needs_approval"]) == (4, approved)
    approval = APPROVAL if approved else None
    parts = operations.partition(act.id, planned, approval, world.runtime(act))
    assert len(parts) > 1
    for n, part in enumerate(parts):
        try:
            operations.enforce(act.id, planned, approval, world.runtime(act), part=part)
        except RetentionError as exc:  # refusing is right: the whole run would exceed 4
            assert "approval covered 4" in str(exc) or "nothing was changed" in str(exc)
        if n == 0:
            for hold in holds:
                world.control.holds.release(hold, released_by="legal")
    gone = EVERYONE - ids(world.engine)
    assert gone == {1, 2, 3}, f"deleted {sorted(gone)}; approved or allowed: 4"


def test_a_partitioned_run_stopped_by_the_gate_after_deleting_fails(world: World) -> None:
    """6 due, limit 6: no approval needed. After partition 1 deleted its records, 4 more due
    records arrive; the later partitions stop at the gate. The run changed records, so it
    is not an 'approval required, nothing changed' run: it ends partial and alerts."""
    act = _partitioned(6)
    rt = world.runtime(act)
    planned = _plan(world, act)
    assert (planned["counts"]["to_apply"], planned["needs_approval"]) == (6, False)
    parts = operations.partition(act.id, planned, None, rt)
    results = []
    for n, part in enumerate(parts):
        results.append(operations.enforce(act.id, planned, None, rt, part=part))
        if n == 0:
            seed(world.engine, [person(pk, old()) for pk in (11, 12, 13, 14)], children=False)
    assert {r["outcome"] for r in results[1:]} == {"approval_required"}
    finished = operations.finish(act.id, planned, parts, results, rt)
    verified = operations.verify(act.id, planned, finished, rt)
    deleted = EVERYONE - ids(world.engine)
    assert deleted and finished["outcome"] == "partial"
    assert verified == {
        "checked": False,
        "reason": "outcome partial: it stopped part-way (see enforce)",
    }
    (run,) = world.control.ledger.runs(act.id)
    assert run.finished["outcome"] == "partial"
    with pytest.raises(operations.RunFailed, match="enforce ended partial"):
        operations.report(act.id, {"plan": planned, "enforce": finished, "verify": verified}, rt)


def test_parallel_partitions_of_an_approved_run_do_not_stop_each_other(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Approved for exactly the 6 due: partition 2 plans while partition 1's batch is deleted
    but not yet committed. Counting that batch both where the source still shows it and as
    the run's own would exceed the approval: both partitions must complete."""
    act = _partitioned(2)
    rt = world.runtime(act)
    planned = _plan(world, act)
    assert (planned["counts"]["to_apply"], planned["needs_approval"]) == (6, True)
    parts = operations.partition(act.id, planned, APPROVAL, rt)
    reached, release = threading.Event(), threading.Event()
    original = SqlAdapter.apply

    def apply_after_the_other(self: SqlAdapter, batch: Any) -> Any:
        if not reached.is_set():  # the first batch (partition 1) waits, its delete uncommitted
            reached.set()
            assert release.wait(60)
        return original(self, batch)

    monkeypatch.setattr(SqlAdapter, "apply", apply_after_the_other)
    first: list[dict[str, Any]] = []
    thread = threading.Thread(
        target=lambda: first.append(
            operations.enforce(act.id, planned, APPROVAL, world.runtime(act), part=parts[0])
        )
    )
    thread.start()
    assert reached.wait(60)
    try:
        later = [operations.enforce(act.id, planned, APPROVAL, rt, part=p) for p in parts[1:]]
    finally:
        release.set()
        thread.join(60)
    assert [r["outcome"] for r in first + later if r["counts"]["applied"]] == ["completed"] * 2
    assert ids(world.engine) == EVERYONE - DUE
