"""What every enforcement run shares, whatever the source: the control database, the plan's
counts, the safety gate and the decision to proceed, and closing the run in the ledger."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from include.retention.catalogue import Activity, Catalogue
from include.retention.errors import RetentionError, Unavailable
from include.retention.holds import HoldRegister
from include.retention.leases import Leases
from include.retention.ledger import Ledger, PendingBatch
from include.retention.pseudonym import check_key, pack_refs, unpack_refs

log = logging.getLogger(__name__)

# Test hook: "<checkpoint>:<batch_no>[@<where>]" makes the process SIGKILL itself there (crash
# tests); ``where``: only in that run (an activity id, or "<activity id>#<partition>"). Several
# such points, comma-separated, each kill where they match.
KILL_ENV = "RETENTION_TEST_KILL_AT"
# With it, a file: only the process that creates it dies (the retry then passes the point);
# the n-th point of several (from 0) has its own file, with ".<n>" appended from the second on.
KILL_ONCE_ENV = "RETENTION_TEST_KILL_ONCE"


def checkpoint(name: str, batch_no: int, where: str = "") -> None:
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    for n, spec in enumerate(wanted.split(",")):
        point, _, scope = spec.partition("@")
        if point == f"{name}:{batch_no}" and scope in ("", where):
            _die(n)


def _die(n: int) -> None:
    once = os.environ.get(KILL_ONCE_ENV)
    if once:
        try:
            marker = once if n == 0 else f"{once}.{n}"
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Control:
    """The control database: ledger + hold register + run leases, and the pseudonym key."""

    ledger: Ledger
    holds: HoldRegister
    key: bytes

    @classmethod
    def open(
        cls,
        engine: Engine | str,
        key: bytes,
        *,
        create: bool = True,
        catalogue: Catalogue | None = None,
    ) -> Control:
        """The control database; ``catalogue``: the one hold placements record their binding
        from (default: the catalogue directory's)."""
        eng = sa.create_engine(engine) if isinstance(engine, str) else engine
        name_database(eng, "the control database (ledger, holds, leases)")
        control = cls(Ledger(eng, key), HoldRegister(eng, key, catalogue), check_key(key))
        if create:
            if eng.dialect.name == "sqlite" and eng.url.database not in (None, "", ":memory:"):
                # Write-ahead log: one fsync per commit instead of three; as durable on a crash.
                with eng.connect() as conn:
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            control.ledger.create_tables()
            control.holds.create_tables()
            control.leases.create_tables()
        return control

    @property
    def leases(self) -> Leases:
        return Leases(self.ledger.engine)


@dataclass(frozen=True)
class PlanResult:
    """What a run would do at ``as_of``; counts only, nothing changed."""

    activity_id: str
    as_of: str
    rules: list[str]
    cutoffs: list[str | None]
    total: int
    expired: int
    held: int
    restricted: int
    anchor_unknown: int
    kept: int
    out_of_scope: int
    already_anonymised: int = 0
    subject_unknown: int = 0  # kept: a lookup value no identifier has (said only when any)

    @property
    def to_apply(self) -> int:
        """Expired records that are neither held nor restricted."""
        return self.expired - self.held - self.restricted

    def counts(self) -> dict[str, int]:
        names = ("total", "expired", "held", "restricted", "anchor_unknown", "kept", "out_of_scope")
        counts = {name: getattr(self, name) for name in names}
        unknown = {"subject_unknown": self.subject_unknown} if self.subject_unknown else {}
        return (
            counts
            | {"already_anonymised": self.already_anonymised, "to_apply": self.to_apply}
            | unknown
        )


@dataclass
class RunResult:
    """What one run did: completed, nothing_to_do, approval_required, dry_run, report_only or
    failed. Each engine adds its own counts in :meth:`extra_counts`."""

    activity_id: str
    outcome: str
    message: str
    plan: Any  # the engine's plan; has counts()
    run_id: str | None = None
    applied: int = 0
    held_skipped: int = 0
    restricted_skipped: int = 0
    batches: int = 0
    approved_by: str | None = None

    @property
    def approval_required(self) -> bool:
        return self.outcome == "approval_required"

    def extra_counts(self) -> dict[str, Any]:
        return {}

    def counts(self) -> dict[str, Any]:
        shared = {
            "applied": self.applied,
            "held_skipped": self.held_skipped,
            "restricted_skipped": self.restricted_skipped,
            "batches": self.batches,
        }
        return self.plan.counts() | shared | self.extra_counts()


R = TypeVar("R", bound=RunResult)


def check_as_of(as_of: dt.datetime) -> None:
    if not isinstance(as_of, dt.datetime) or as_of.tzinfo is None:
        raise RetentionError("as_of must be a time-zone-aware datetime")


def describe_offset(as_of: dt.datetime, now: dt.datetime) -> str:
    """How far ``as_of`` is from ``now``, e.g. ``"3 days 4 h before now"``."""
    delta = as_of - now
    seconds = abs(delta.total_seconds())
    days, hours = int(seconds // 86400), int(seconds % 86400 // 3600)
    minutes = int(seconds % 3600 // 60)
    parts = [f"{days} day{'s' if days != 1 else ''}"] if days else []
    parts += [f"{hours} h"] if hours else []
    parts += [f"{minutes} min"] if minutes and not days else []
    side = "after" if delta.total_seconds() > 0 else "before"
    return f"{' '.join(parts) or 'less than a minute'} {side} now"


def check_not_early(as_of: dt.datetime, dry_run: bool, now: dt.datetime | None = None) -> None:
    """Refuse to enforce at a future ``as_of``: it would delete records before they are due.

    ``now`` is the wall clock when the check runs (never the run's scheduled time); a dry run
    may look ahead.
    """
    check_as_of(as_of)
    now = now or dt.datetime.now(dt.UTC)
    if not dry_run and as_of > now:
        raise RetentionError(
            f"as_of {as_of.isoformat()} is {describe_offset(as_of, now)}: an enforcing run"
            " never evaluates the rules in the future (records would be deleted before they"
            " are due). Nothing was changed; trigger with dry_run true to preview that date."
        )


def gate_reason(activity: Activity, plan_result: PlanResult) -> str | None:
    """Why the run needs approval, or None if it is within the activity's safety limits."""
    safety, n = activity.safety, plan_result.to_apply
    if safety.max_rows is not None and n > safety.max_rows:
        return f"{n} records exceed the limit of {safety.max_rows} rows per run"
    if (
        safety.max_fraction is not None
        and plan_result.total
        and n / plan_result.total > safety.max_fraction
    ):
        return (
            f"{n} of {plan_result.total} records ({n / plan_result.total:.1%}) exceed the limit of"
            f" {safety.max_fraction:.0%} of the dataset per run"
        )
    return None


def finish_run(control: Control, result: R) -> R:
    """Write the run's closing ledger entry (outcome, counts, message)."""
    if result.run_id is not None:
        control.ledger.finish_run(
            result.run_id, result.activity_id, outcome=result.outcome, counts=result.counts(),
            message=result.message,
        )  # fmt: skip
    log.info(
        "run %s for %s: %s (%s)", result.run_id, result.activity_id, result.outcome, result.counts()
    )
    return result


def decide(
    activity: Activity, plan_result: PlanResult, dry_run: bool, approved_by: str | None
) -> tuple[str, str] | None:
    """A terminal outcome before any change, or None to proceed."""
    if activity.action.kind == "report_only":
        return "report_only", "report only: the policy sets no enforceable period"
    if dry_run:
        return (
            "dry_run",
            f"dry run: would apply {activity.action.kind} to {plan_result.to_apply} records",
        )
    if plan_result.to_apply == 0:
        return "nothing_to_do", (
            f"nothing to do: no expired records to {activity.action.kind}"
            f" ({plan_result.held} held, {plan_result.restricted} restricted,"
            f" {plan_result.anchor_unknown} with unknown anchor)"
        )
    reason = gate_reason(activity, plan_result)
    if reason and not approved_by:
        return "approval_required", f"approval needed, nothing changed: {reason}"
    return None


def check_approval_covers(
    activity: Activity, plan_result: PlanResult, approved_by: str | None,
    approved_up_to: int | None,
) -> None:  # fmt: skip
    """An approval covers the records its plan counted, no more: raise (nothing has changed)
    when more are due now, e.g. records added, or a hold released, while the approval was
    awaited. ``approved_up_to`` None: no count was approved (an erasure's request is its own
    approval, and the run only takes the person's records)."""
    if approved_by is None or approved_up_to is None or plan_result.to_apply <= approved_up_to:
        return
    raise RetentionError(
        f"{activity.id}: the approval covered {approved_up_to} records to"
        f" {activity.action.kind}, but {plan_result.to_apply} are due now (records were added"
        " or released while it was awaited): nothing was changed. Trigger the run again: it"
        " counts afresh and asks for approval again"
    )


def settle_batch(
    control: Control, batch: PendingBatch, present: set[bytes], *, applied_if_present: bool
) -> str:
    """Resolve a batch a crashed run left prepared, from which of its records are present now.

    A deletion was applied to the records that are gone; an anonymisation to the records that
    are present and marked (``applied_if_present``). Returns the outcome written.
    """
    refs = unpack_refs(batch.refs)
    applied = [ref for ref in refs if (ref in present) == applied_if_present]
    outcome = "committed" if len(applied) == len(refs) else "partial" if applied else "rolled_back"
    control.ledger.resolve_batch(
        batch, outcome=outcome, applied_blob=pack_refs(applied), recovered=True,
        applied=len(applied),
    )  # fmt: skip
    log.warning(
        "recovered batch (ledger seq %s, %s): %s, %s of %s records",
        batch.seq, batch.dataset, outcome, len(applied), len(refs),
    )  # fmt: skip
    return outcome


def close_interrupted_runs(
    control: Control, activity_id: str, only: set[str] | None = None, *, partitioned: bool = False
) -> int:
    """Close the runs a crash left open (after their batches were settled); how many.
    Runs that still hold a lease are live and left alone; ``only``: close just these. A
    partitioned run (`is_partitioned`) has no lease between its tasks: it is closed only with
    ``partitioned`` (by its own DAG's next run or its finish step, never by another DAG)."""
    live = control.leases.live_runs()
    run_ids = [
        run_id for run_id, header in control.ledger.unfinished_runs(activity_id).items()
        if run_id not in live and (only is None or run_id in only)
        and (partitioned or not is_partitioned(header))
    ]  # fmt: skip
    for run_id in run_ids:
        control.ledger.finish_run(
            run_id, activity_id, outcome="interrupted", counts={},
            message="run was interrupted; its prepared batches were settled by recovery",
        )  # fmt: skip
    return len(run_ids)


def is_partitioned(header: Mapping[str, Any]) -> bool:
    """Whether a run header is of a run whose key ranges are enforced by parallel tasks."""
    return bool((header.get("origin") or {}).get("partitions"))


def finish_failed(control: Control, result: RunResult, exc: BaseException, unit: str) -> None:
    """Record a failed run; if the control database itself is down, say so in the log (the
    next run's recovery closes the run as interrupted)."""
    result.outcome = "failed"
    result.message = f"failed after {result.applied} {unit}: {type(exc).__name__}"
    try:
        finish_run(control, result)
    except sa.exc.SQLAlchemyError:
        log.error(
            "run %s: could not record the failure in the ledger (control database"
            " unreachable); the next run's recovery closes it as interrupted",
            result.run_id,
        )


# ------------------------------------------------------------------ naming the failing database

_LABEL = "_retention_label"


def _tag(context: Any) -> None:
    label = getattr(context.engine, _LABEL, None)
    if label and context.sqlalchemy_exception is not None:
        setattr(context.sqlalchemy_exception, _LABEL, label)


def name_database(engine: Engine, role: str) -> None:
    """Errors from ``engine`` name it (role and URL without password): see `database_errors`."""
    url = engine.url.render_as_string(hide_password=True)
    setattr(engine, _LABEL, f"{role} at {url}")
    if not sa.event.contains(engine, "handle_error", _tag):
        sa.event.listen(engine, "handle_error", _tag)


def describe_failure(exc: sa.exc.DBAPIError) -> str:
    """Which database failed and what to do; no SQL parameters (they may be personal data)."""
    where = getattr(exc, _LABEL, "a database")
    what = type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__
    if isinstance(exc, sa.exc.OperationalError) and exc.orig is not None:
        what += f": {str(exc.orig).splitlines()[0][:200] if str(exc.orig) else ''}"
    lost = " (connection lost)" if exc.connection_invalidated else ""
    return (
        f"{where} failed mid-run{lost}: {what}. Nothing is left half-done: a batch in flight is"
        " settled from the source by the next run's recovery. Once the database is reachable"
        " again, run the task again."
    )


@contextmanager
def database_errors() -> Iterator[None]:
    """Turn a database failure into a RetentionError naming the database: :class:`Unavailable`
    (the task is retried) when the database could not be reached or the connection was lost."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        transient = isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
        raise (Unavailable if transient else RetentionError)(describe_failure(exc)) from exc
