"""What each retention DAG task does, in plain functions (the DAG file only wires them).

Every function takes and returns JSON-serialisable dicts of counts, ids and outcomes: they are
XComs, so they never carry personal data. Every source kind goes through the same run
lifecycle (`include.retention.lifecycle`); its adapter is chosen by the source's kind.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import pendulum

from include.retention import connections, erasure, holds, lifecycle
from include.retention.catalogue import (
    Activity,
    AnonymiseAction,
    Catalogue,
    DeleteAction,
    load_valid,
)
from include.retention.errors import RetentionError
from include.retention.escalation import deadline_at_stake, deadline_text
from include.retention.object_store import storage_fault
from include.retention.runs import (
    Control,
    PlanResult,
    check_approval_covers,
    check_not_early,
    decide,
    describe_offset,
    gate_reason,
)
from include.retention.sources.base import DueAt, KeyRange, OfSubject, SourceAdapter, adapter_for

log = logging.getLogger(__name__)

APPROVE = "Approve"
_ISO_DATE_START = re.compile(r"^\d{4}-\d{2}-\d{2}")
VERIFIED_OUTCOMES = ("completed", "nothing_to_do")
# Retention is evaluated within the records' lifetime; outside it date arithmetic overflows.
AS_OF_YEARS = (1970, 2999)
AS_OF_RANGE = (
    dt.datetime(AS_OF_YEARS[0], 1, 1, tzinfo=dt.UTC),
    dt.datetime(AS_OF_YEARS[1], 12, 31, tzinfo=dt.UTC),
)
AS_OF_FORMATS = (
    "YYYY-MM-DD (midnight in Stockholm) or YYYY-MM-DDTHH:MM[:SS][±HH:MM],"
    " e.g. 2026-11-24 or 2026-11-24T02:30:00+01:00"
)
T = TypeVar("T")


def named_faults(step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one task's work; a database or object-store fault becomes an error naming the
    connection (:class:`Unavailable` when transient) instead of a raw driver traceback."""
    try:
        return step(*args, **kwargs)
    except RetentionError:
        raise
    except Exception as exc:
        fault = connections.database_fault(exc) or storage_fault(exc)
        if fault is None:
            raise
        raise fault from None


@dataclass
class Runtime:
    """The catalogue, the control database and the sources of one task."""

    catalogue: Catalogue
    invalid: dict[str, str] = field(default_factory=dict)  # file name -> its error
    # activity id -> engine or client for its source (tests); else its Airflow connection
    sources: Mapping[str, Any] = field(default_factory=dict)
    # the control database to use (a data-subject request's task, tests); else the configured one
    given_control: Control | None = field(default=None, repr=False)

    @classmethod
    def load(cls) -> Runtime:
        """The valid activities: a broken catalogue file stops only its own activity."""
        return cls(*load_valid())

    @classmethod
    def of(
        cls, catalogue: Catalogue, control: Control, sources: Mapping[str, Any] | None = None
    ) -> Runtime:
        """A runtime on a given control database (a data-subject request's task, tests)."""
        return cls(catalogue, sources=sources or {}, given_control=control)

    @cached_property
    def control(self) -> Control:
        """The given control database, else the configured one (opened on first use)."""
        if self.given_control is not None:
            return self.given_control
        return Control.open(connections.control_engine(), connections.pseudonym_key())

    def activity(self, activity_id: str) -> Activity:
        """The activity, once the catalogue is known to match the active holds."""
        for name, error in self.invalid.items():
            if Path(name).parent == Path() and Path(name).stem == activity_id:  # not systems/
                raise RetentionError(f"invalid catalogue file {error}")
        activity = self.catalogue[activity_id]
        holds.check_catalogue(self.control.holds.engine, self.catalogue, self.invalid)
        return activity

    def adapter(self, activity: Activity) -> SourceAdapter:
        """The adapter of the activity's source, connected through its Airflow connection."""
        return adapter_for(activity.source, self.control.key, self.sources.get(activity.id))


def resolve_as_of(raw: Any, run_after: dt.datetime | None) -> pendulum.DateTime:
    """The ``as_of`` param (ISO-8601; a date means its Stockholm midnight), else the run time."""
    if raw in (None, ""):
        if run_after is None:
            raise RetentionError("as_of is empty and the run has no time to fall back on")
        return pendulum.instance(run_after)
    parsed = None
    if isinstance(raw, str) and _ISO_DATE_START.match(raw):  # "12:00" would mean "today"
        try:
            parsed = pendulum.parse(raw, tz="Europe/Stockholm")
        except (ValueError, OverflowError, pendulum.parsing.exceptions.ParserError):
            parsed = None
    if not isinstance(parsed, pendulum.DateTime):
        raise RetentionError(
            f"as_of {raw!r} is not an ISO-8601 date or date-time: use {AS_OF_FORMATS},"
            " or leave it empty for the run's own time"
        )
    try:
        in_range = AS_OF_RANGE[0] <= parsed <= AS_OF_RANGE[1]
    except OverflowError:  # an offset pushes it past the representable range
        in_range = False
    if not in_range:
        raise RetentionError(
            f"as_of {raw!r} is outside the years {AS_OF_YEARS[0]}-{AS_OF_YEARS[1]}"
            f" ({AS_OF_RANGE[0].date()}..{AS_OF_RANGE[1].date()}) retention is evaluated in:"
            " give a date such as 2026-11-24"
        )
    return parsed


def origin_of(dag_run: Any) -> dict[str, str | None]:
    """Who asked for the run (recorded in the ledger's run header): the Airflow dag_id, run_id,
    run_type and, for a manual run, the user who triggered it."""
    run_type = getattr(dag_run, "run_type", None)
    run_type = str(getattr(run_type, "value", run_type)) if run_type is not None else None
    user = getattr(dag_run, "triggering_user_name", None) if run_type == "manual" else None
    return {
        "dag_id": getattr(dag_run, "dag_id", None),
        "run_id": getattr(dag_run, "run_id", None),
        "run_type": run_type,
        "triggered_by": user,
    }


def _dry_run(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise RetentionError(f"dry_run must be true or false, not {raw!r}")
    return raw


def _plan_result(activity: Activity, as_of: dt.datetime, runtime: Runtime) -> PlanResult:
    return lifecycle.plan(
        activity, as_of, control=runtime.control, adapter=runtime.adapter(activity)
    )


def plan(
    activity_id: str,
    params: dict[str, Any],
    run_after: dt.datetime | None,
    runtime: Runtime | None = None,
    *,
    origin: dict[str, str | None] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Count what the run would do and decide whether a person must approve it.

    A bad parameter, or a future ``as_of`` on an enforcing run, is refused here (nothing has
    changed yet); ``now`` is the wall clock, not the run's scheduled time.
    """
    as_of = resolve_as_of(params.get("as_of"), run_after)
    dry_run = _dry_run(params.get("dry_run", False))
    now = now or dt.datetime.now(dt.UTC)
    check_not_early(as_of, dry_run, now)
    runtime = runtime or Runtime.load()
    activity = runtime.activity(activity_id)
    from include.retention import verification  # Great Expectations: imported when used

    checks = verification.precheck(activity, runtime.adapter(activity), dry_run=dry_run)
    result = _plan_result(activity, as_of, runtime)
    gated = activity.enforceable and not dry_run and result.to_apply > 0
    reason = gate_reason(activity, result) if gated else None
    planned = {
        "activity_id": activity_id,
        "as_of": as_of.isoformat(),
        "dry_run": dry_run,
        "counts": result.counts(),
        "needs_approval": reason is not None,
        "approval_text": (
            f"{reason}. Approve to {activity.action.kind} {result.to_apply} records of"
            f" {activity.name.en} ({activity.describe_rule()}) as of {as_of.isoformat()}"
            f" ({describe_offset(as_of, now)}); silence rejects.{_four_eyes(origin)}"
            if reason
            else "within the safety limits"
        ),
        "origin": origin or {},
        "source_checks": checks,
        "policy": activity.enforcement_digest(),  # what an approval of this plan binds to
    }
    stakes = _deadlines_at_stake(activity, as_of, runtime) if reason else []
    planned["deadlines_at_stake"] = stakes
    planned["approval_text"] = f"{planned['approval_text']}{deadline_text(stakes)}"
    log.info("plan %s", describe_plan(planned))
    return planned


def _deadlines_at_stake(
    activity: Activity, as_of: dt.datetime, runtime: Runtime
) -> list[dict[str, Any]]:
    """Per deadline rule with records to apply now: the rule, the count and the deadline they
    miss if this run does not apply them (see :mod:`include.retention.escalation`)."""
    deadline = deadline_at_stake(activity.schedule, as_of).strftime("%Y-%m-%d %H:%M")
    stakes = []
    for case in activity.deadlines:
        alone = activity.model_copy(update={"retention": [case]})
        records = _plan_result(alone, as_of, runtime).to_apply
        if records:
            stakes.append({"rule": case.describe(), "records": records, "deadline": deadline})
    return stakes


def describe_plan(planned: dict[str, Any]) -> str:
    """One readable line of a plan: counts and the decision, no personal data."""
    c = planned["counts"]
    mode = "dry run" if planned["dry_run"] else "enforcing"
    return (
        f"{planned['activity_id']} as of {planned['as_of']} ({mode}): {c['total']} checked,"
        f" {c['expired']} expired ({c['held']} held, {c['restricted']} restricted),"
        f" {c['anchor_unknown']} unknown anchor, {c['kept']} kept -> {c['to_apply']} to apply;"
        f" approval needed: {'yes' if planned['needs_approval'] else 'no'}"
    )


def next_step(planned: dict[str, Any]) -> str:
    """The branch after planning: ask a person, or go straight to partitioning and enforcement."""
    return "approve" if planned["needs_approval"] else "partition"


def approver(approval: dict[str, Any] | None) -> str | None:
    """Who approved the run (from the approval task's answer), or None."""
    if not approval or approval.get("chosen_options") != [APPROVE]:
        return None
    user = approval.get("responded_by_user") or {}
    return str(user.get("name") or user.get("id") or "unknown approver")


def _four_eyes(origin: dict[str, str | None] | None) -> str:
    """What the approval text says about who may approve a run a user triggered."""
    user = (origin or {}).get("triggered_by")
    return f" {user} triggered this run: someone else must approve it (four eyes)." if user else ""


def _approved(
    activity: Activity, planned: dict[str, Any], approval: dict[str, Any] | None
) -> tuple[str | None, int | None]:
    """Who approved the planned run and for how many records; raises (nothing has changed)
    when the approver triggered the run (an approval is a second person's), or the policy is
    not the one the plan counted under (an approval is given for what its plan showed, under
    that rule)."""
    by = approver(approval)
    if by is None:
        return None, None
    if by == (planned.get("origin") or {}).get("triggered_by"):
        raise RetentionError(
            f"{activity.id}: {by} triggered this run and approved it, but a run held back by"
            " its volume limit needs a second person to approve it (four eyes): nothing was"
            " changed. Trigger the run again and ask someone else to approve it"
        )
    if planned.get("policy") != activity.enforcement_digest():
        raise RetentionError(
            f"{activity.id}: its rule, action or dataset changed in the catalogue since the"
            " run was planned and approved: nothing was changed. Trigger the run again: it"
            " plans under the catalogue in force and asks for approval again"
        )
    return by, int(planned["counts"]["to_apply"])


WHOLE: dict[str, Any] = {
    "index": 0,
    "of": 1,
    "lower": None,
    "upper": None,
}  # one partition: the whole dataset


def partition(
    activity_id: str,
    planned: dict[str, Any],
    approval: dict[str, Any] | None,
    runtime: Runtime | None = None,
) -> list[dict[str, Any]]:
    """The partitions the mapped ``enforce`` tasks apply, one each (start once).

    A SQL dataset of more than ``partitioning.records_per_partition`` records is split into
    primary-key ranges (at most ``max_partitions``) and the one ledger run they share is
    started here (each partition carries its ``run_id``; :func:`finish` closes it). Anything
    else is one partition, the whole dataset, enforced exactly as an unpartitioned run (also a
    dry run, a report-only activity, and a run the gate stops: that run records why). Before
    splitting, the batches earlier runs left prepared are settled: their key ranges need not
    be today's, and a partition's recovery only looks in its own range. Only integer key
    bounds travel as XComs.
    """
    if planned["dry_run"] or planned["counts"]["to_apply"] == 0:
        return [WHOLE]
    runtime = runtime or Runtime.load()
    activity = runtime.activity(activity_id)
    setting = activity.partitioning
    if activity.source.kind != "sql" or planned["counts"]["total"] <= setting.records_per_partition:
        return [WHOLE]
    as_of = resolve_as_of(planned["as_of"], None)
    control, adapter = runtime.control, runtime.adapter(activity)
    lifecycle.recover(activity, control=control, adapter=adapter)
    whole = lifecycle.plan(activity, as_of, control=control, adapter=adapter)
    approved_by, approved_up_to = _approved(activity, planned, approval)
    if decide(activity, whole, False, approved_by) is not None:
        return [WHOLE]
    check_approval_covers(activity, whole, approved_by, approved_up_to)
    size = max(setting.records_per_partition, math.ceil(whole.total / setting.max_partitions))
    ranges = lifecycle.partitions(activity, as_of, control=control, size=size, adapter=adapter)
    bounds = [b for r in ranges for b in (r.lower, r.upper) if b is not None]
    if len(ranges) < 2 or not all(isinstance(b, int) for b in bounds):
        return [WHOLE]  # text keys may be personal data: never in an XCom
    options = lifecycle.RunOptions(
        runtime.catalogue.version, approved_by=approved_by, origin=planned.get("origin")
    )
    run_id = lifecycle.start_partitioned(
        activity, whole, len(ranges), control=control, adapter=adapter, options=options
    )
    parts = [
        {"index": r.index, "of": len(ranges), "lower": r.lower, "upper": r.upper, "run_id": run_id}
        for r in ranges
    ]
    log.info(
        "partition %s: %s records in %s key ranges; ledger run %s",
        activity_id, whole.total, len(parts), run_id,
    )  # fmt: skip
    return parts


def enforce(
    activity_id: str,
    planned: dict[str, Any],
    approval: dict[str, Any] | None,
    runtime: Runtime | None = None,
    part: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply the rule (or record a dry run, report-only or gated run) and write the ledger run;
    ``part``: only that partition (from :func:`partition`; one of several: its batches join the
    partitioned run, which :func:`finish` closes).

    Without a recorded approval a gated run changes nothing: the engine records it as
    ``approval_required``.
    """
    as_of = resolve_as_of(planned["as_of"], None)
    check_not_early(as_of, planned["dry_run"])  # again: the approval may have taken hours
    runtime = runtime or Runtime.load()
    activity = runtime.activity(activity_id)
    approved_by, approved_up_to = _approved(activity, planned, approval)
    part = part or WHOLE
    key_range = _key_range(activity, as_of, part)
    result = lifecycle.enforce(
        activity,
        as_of,
        control=runtime.control,
        catalogue_version=runtime.catalogue.version,
        adapter=runtime.adapter(activity),
        dry_run=planned["dry_run"],
        approved_by=approved_by,
        origin=planned.get("origin"),
        partition=key_range,
        run_id=part.get("run_id"),
        approved_up_to=approved_up_to,
    )
    summary = {
        "run_id": result.run_id,
        "outcome": result.outcome,
        "message": result.message,
        "approved_by": result.approved_by,
        "counts": result.counts(),
        "partition": part["index"],
        "partitions": part["of"],
    }
    log.info(
        "enforce %s (partition %s of %s): %s — %s; ledger run %s",
        activity_id, part["index"] + 1, part["of"], result.outcome, result.message, result.run_id,
    )  # fmt: skip
    if part["index"] == 0:  # once per DAG run: the first partition (or the whole dataset)
        suppressed = remove_suppressed(
            activity, runtime, dry_run=planned["dry_run"], origin=planned.get("origin")
        )
        if suppressed is not None:
            summary["suppression"] = suppressed
    return summary


def remove_suppressed(
    activity: Activity, runtime: Runtime, *, dry_run: bool, origin: Mapping[str, Any] | None,
    refs: Collection[bytes] | None = None, approved_by: str | None = None,
) -> dict[str, Any] | None:  # fmt: skip
    """Remove (by the activity's action) the records of people on the suppression list that
    an activity on consent, or for direct marketing, holds again (e.g. imported by another
    tool): its own ledger run whose rule names the suppression; held and restricted records
    are kept, and the safety limits apply as to any run unless ``approved_by`` names who
    approved it. ``refs``: only these people (those of them on the list; a withdrawal's own
    removal). Returns None when the activity is out of scope."""
    from include.retention import suppression

    if not in_suppression_scope(activity):
        return None  # (records held for another controller are theirs to stop)
    scopes = suppression.scopes_for(activity)
    control = runtime.control
    register = suppression.SuppressionList(control.ledger.engine, control.key)
    active = register.active() if register.exists() else {}
    listed = frozenset().union(*(active.get(scope, ()) for scope in scopes))
    refs = listed if refs is None else listed & frozenset(refs)
    if not refs:
        return {"people": 0, "run_id": None, "outcome": "nothing_to_do", "counts": {}}
    kept = erasure.suppression_keeper(runtime.catalogue, activity)
    if kept is not None:
        return _kept_for_another(activity, refs, kept, runtime)
    options = lifecycle.RunOptions(
        runtime.catalogue.version, dry_run=dry_run, reason=suppression.reason(scopes),
        approved_by=approved_by, origin={**(origin or {}), "reason": "suppression"},
    )  # fmt: skip
    selection = OfSubject(refs)
    result = lifecycle.run(activity, selection, runtime.adapter(activity), control, options)
    log.info(
        "suppression %s: %s — %s; ledger run %s",
        activity.id, result.outcome, result.message, result.run_id,
    )  # fmt: skip
    summary = {
        "people": len(refs), "run_id": result.run_id, "outcome": result.outcome,
        "message": result.message, "counts": result.counts(),
    }  # fmt: skip
    if result.outcome == "completed" and result.applied and result.run_id:
        summary["verified"] = _recount(activity, selection, runtime, result.run_id)
    return summary


def _kept_for_another(
    activity: Activity, refs: Collection[bytes], kept: erasure.Keeper, runtime: Runtime
) -> dict[str, Any]:
    """No suppression run: another activity binding the same dataset on a contract or a legal
    obligation (``kept``) keeps those people's records; how many."""
    adapter = runtime.adapter(activity)
    try:
        found = erasure.records_of(activity, adapter, refs, runtime.control)
    finally:
        adapter.close()
    log.info(
        "suppression %s: %s record(s) of suppressed people kept: %s (%s) binds the dataset too",
        activity.id, found, kept.activity, kept.reason,
    )  # fmt: skip
    return {
        "people": len(refs), "run_id": None, "outcome": "nothing_to_do", "counts": {},
        "kept_for": {"activity": kept.activity, "reason": kept.reason, "records": found},
    }  # fmt: skip


def in_suppression_scope(activity: Activity) -> bool:
    """Whether suppression runs remove records from the activity: it is on consent or for
    direct marketing, can find a person's records (lookup columns) and is not run as a
    processor for another controller."""
    from include.retention.suppression import scopes_for

    lookup, processor = activity.source.lookup, activity.processor_for
    return bool(scopes_for(activity)) and bool(lookup) and processor is None


def _recount(activity: Activity, selection: OfSubject, runtime: Runtime, run_id: str) -> bool:
    """The suppression run's verification: counted afresh, no record of those people is left
    that is neither held nor restricted. Recorded as the run's ``run_verified``; raises when
    one is left (the run failed: someone must look)."""
    action = activity.action
    if not isinstance(action, DeleteAction | AnonymiseAction):
        raise RetentionError(f"{activity.id}: a report-only activity changes no records")
    adapter = runtime.adapter(activity)
    holds_now = runtime.control.holds.active(adapter.system, adapter.dataset)
    counts = adapter.count(selection, action, holds_now)
    result = {
        "success": counts.to_apply == 0, "method": "recount of the suppressed people's records",
        "remaining": counts.to_apply, "held": counts.held, "restricted": counts.restricted,
    }  # fmt: skip
    runtime.control.ledger.record_verification(run_id, activity.id, result)
    if counts.to_apply:
        raise RetentionError(
            f"{activity.id}: {counts.to_apply} record(s) of suppressed people are still there"
            f" after ledger run {run_id}; check the source (a concurrent import?) and run again"
        )
    return True


def partition_label(part: dict[str, Any]) -> str:
    """How the UI names a mapped enforce task: which partition, no keys."""
    if part["of"] == 1:
        return "whole dataset"
    return f"partition {part['index'] + 1} of {part['of']}"


def combine(enforced: Any) -> dict[str, Any] | None:
    """One result of the mapped ``enforce`` tasks (finish once): what Airflow returns for them
    (a result, a list of results, or None) summed up; the ledger runs of every partition."""
    if isinstance(enforced, dict) and "run_ids" in enforced:
        return enforced  # combined already
    results = _results(enforced)
    if not results:
        return None
    if len(results) == 1:
        return {**results[0], "run_ids": [results[0]["run_id"]]}
    outcomes = {r["outcome"] for r in results}
    outcome = next(
        (o for o in ("failed", "partial", "approval_required") if o in outcomes),
        "completed" if "completed" in outcomes else results[0]["outcome"],
    )
    if outcome == "approval_required" and any(r["counts"].get("applied") for r in results):
        outcome = "partial"  # stopped by the gate after other partitions changed records
    return {
        "run_id": results[0]["run_id"],
        "run_ids": [r["run_id"] for r in results],
        "outcome": outcome,
        "message": "; ".join(f"partition {r['partition'] + 1}: {r['message']}" for r in results),
        "approved_by": results[0]["approved_by"],
        "counts": _summed([r["counts"] for r in results]),
        "partition": None,
        "partitions": results[0]["partitions"],
        **{k: r[k] for r in results for k in ("suppression",) if k in r},
    }


def _key_range(activity: Activity, as_of: dt.datetime, part: dict[str, Any]) -> KeyRange | None:
    """The key range of one partition of a partitioned run (None: the whole dataset)."""
    if part["of"] == 1:
        return None
    due = DueAt(as_of, tuple(activity.retention))
    return KeyRange(due, part["lower"], part["upper"], part["index"])


def finish(
    activity_id: str,
    planned: dict[str, Any],
    parts: list[dict[str, Any]] | None,
    enforced: Any,
    runtime: Runtime | None = None,
) -> dict[str, Any] | None:
    """After every mapped ``enforce`` task ended, however: one result of the run (finish
    once). A partitioned run's ledger run is closed here: the partitions' counts added up,
    the records applied as its settled batches show (a partition whose task died is settled
    first), and outcome ``failed`` when a partition left no result."""
    combined = combine(enforced)
    if not parts or "run_id" not in parts[0]:
        return combined  # one partition: the enforce task closed its own run
    runtime = runtime or Runtime.load()
    activity = runtime.catalogue[activity_id]
    as_of = resolve_as_of(planned["as_of"], None)
    result = combined or {"outcome": "failed", "message": "", "approved_by": None, "counts": {}}
    reported = {r["partition"] for r in _results(enforced)}
    missing = [p["index"] + 1 for p in parts if p["index"] not in reported]
    outcome, message = result["outcome"], result["message"]
    if missing:
        outcome = "failed"
        message = "; ".join(filter(None, [
            f"partition(s) {', '.join(map(str, missing))} of {len(parts)} ended without a result"
            " (the task failed); the run's settled batches are its evidence", message,
        ]))  # fmt: skip
    run_id = parts[0]["run_id"]
    counts = lifecycle.finish_partitioned(
        activity, run_id, [r for p in parts if (r := _key_range(activity, as_of, p))],
        control=runtime.control, adapter=runtime.adapter(activity), outcome=outcome,
        message=message, counts=result["counts"],
    )  # fmt: skip
    log.info("finish %s: %s in %s partitions; ledger run %s", activity_id, outcome, len(parts),
             run_id)  # fmt: skip
    return {
        **result, "run_id": run_id, "run_ids": [run_id], "outcome": outcome, "message": message,
        "counts": counts, "partition": None, "partitions": len(parts),
    }  # fmt: skip


def _results(enforced: Any) -> list[dict[str, Any]]:
    if isinstance(enforced, dict):
        return [enforced]
    if isinstance(enforced, Sequence):
        # Airflow's lazy XCom sequence: one slice request. Iterating it asks for the item past
        # the end, which the task log shows as an error ("XCom not found") in every run.
        enforced = enforced[:]
    return [r for r in enforced or () if r]


def _summed(counts: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of disjoint partitions added up (nested counts, e.g. child rows, too)."""
    total: dict[str, Any] = {}
    for one in counts:
        for name, value in one.items():
            if isinstance(value, dict):
                total[name] = _summed([total.get(name, {}), value])
            elif isinstance(value, int | float):
                total[name] = total.get(name, 0) + value
    return total


def verify(
    activity_id: str,
    planned: dict[str, Any],
    enforced: dict[str, Any],
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Prove the run's result with Great Expectations; raise if it does not hold.
    ``enforced``: the mapped enforce tasks' results (see :func:`combine`)."""
    enforced = combine(enforced) or {}
    outcome = enforced.get("outcome")
    if outcome not in VERIFIED_OUTCOMES:
        stopped = outcome in ("failed", "partial")
        why = "it stopped part-way (see enforce)" if stopped else "nothing changed"
        return {"checked": False, "reason": f"outcome {outcome}: {why}"}
    from include.retention import verification

    runtime = runtime or Runtime.load()
    activity = runtime.catalogue[activity_id]
    result = verification.verify(
        activity,
        resolve_as_of(planned["as_of"], None),
        enforced["run_ids"],
        control=runtime.control,
        adapter=runtime.adapter(activity),
    )
    stored = result.as_dict() | {"source_checks": planned.get("source_checks")}
    for run_id in enforced["run_ids"]:
        runtime.control.ledger.record_verification(run_id, activity_id, stored)
    if not result.success:
        raise RetentionError(f"verification of {activity_id} failed: {result.as_dict()}")
    return {"checked": True, **result.as_dict()}


def failures(
    results: dict[str, dict[str, Any] | None], failed_steps: list[str] | None = None
) -> list[str]:
    """Which steps of the run failed: the failed tasks Airflow reports, and what their
    results show (a failed task leaves none)."""
    problems = [f"{step} failed" for step in failed_steps or []]
    planned, enforced, verified = (results.get(k) for k in ("plan", "enforce", "verify"))
    if planned is None:
        return problems or ["plan failed: nothing was changed"]
    if enforced is None:
        return problems or ([] if planned["needs_approval"] else ["enforce failed"])
    if enforced["outcome"] in ("failed", "partial"):
        problems.append(f"enforce ended {enforced['outcome']}: {enforced['message']}")
    suppressed = enforced.get("suppression") or {}
    if suppressed.get("outcome") in ("failed", "partial"):
        problems.append(f"removing suppressed people ended {suppressed['outcome']}")
    if enforced["outcome"] in VERIFIED_OUTCOMES and verified is None and not problems:
        problems.append("verify failed: the run's result is not proven")
    return problems


def report(
    activity_id: str,
    results: dict[str, dict[str, Any] | None],
    runtime: Runtime | None = None,
    *,
    failed_steps: list[str] | None = None,
) -> dict[str, Any]:
    """The run's summary (the asset event's extra). A rejected or unanswered approval is
    recorded in the ledger as a run that changed nothing. Raises :class:`RunFailed` after
    logging the summary when a step failed, so the DAG run is failed and alerts someone."""
    results = {**results, "enforce": combine(results.get("enforce"))}
    planned, enforced, verified = (results.get(k) for k in ("plan", "enforce", "verify"))
    problems = failures(results, failed_steps)
    if planned is not None and enforced is None and planned["needs_approval"] and not problems:
        enforced = combine(enforce(activity_id, planned, None, runtime))  # approval_required
    summary = {
        "activity_id": activity_id,
        "as_of": planned and planned["as_of"],
        "outcome": "failed" if problems else enforced["outcome"] if enforced else "failed",
        "ledger_run_id": enforced and enforced["run_id"],
        "ledger_run_ids": enforced and enforced["run_ids"],
        "counts": (enforced or planned or {}).get("counts", {}),
        "verified": bool(verified and verified.get("checked")),
    }
    counts = summary["counts"]
    log.info(
        "report %s: %s; applied %s of %s expired, %s held, verified %s; ledger run %s",
        activity_id, summary["outcome"], counts.get("applied", 0), counts.get("expired", 0),
        counts.get("held", 0), "yes" if summary["verified"] else "no", summary["ledger_run_id"],
    )  # fmt: skip
    if problems:
        raise RunFailed(f"retention run of {activity_id} failed: {'; '.join(problems)}")
    return summary


class RunFailed(RetentionError):
    """A step of the run failed; raised by ``report`` after recording what happened."""
