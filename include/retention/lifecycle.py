"""One run lifecycle for every source kind and every selection (`sources.base`):

    lease → recover → plan → start → gate → batches (prepare → apply → resolve) → finish

A run holds the lease of its activity and dataset from recovery to its last ledger entry, so
runs never overlap and recovery only settles batches of runs that are dead. Each batch follows
the write-ahead protocol against the ledger (a different database than the source):

1. the adapter stages the batch (SQL: deletes or locks its records in an open transaction,
   leaving out held ones; object stores and APIs: lists them, changing nothing);
2. ``batch_prepared`` evidence with the records' keyed references is committed;
3. the holds are read again: a hold placed since staging on one of the batch's records (or
   subjects) rolls the batch back (``rolled_back``) and it is staged again; placing a hold
   waits for batches already past this check (`leases.wait_for_in_flight`);
4. follow-on: the files the batch's records point to (the binding's linked files) are deleted,
   each bucket with its own prepared/resolved batch; if that fails the batch is rolled back
   (the records stay and the next run retries) and the run fails;
5. the adapter applies the batch (SQL: commit; others: delete) and names the records applied;
6. ``batch_resolved``: committed, partial or rolled back, with the applied references.

After a crash anywhere, :func:`recover` (run first by every enforcing run) settles each
prepared batch from which of its records are present now (`SourceAdapter.present`): no record
is changed without evidence, no evidence claims a record that is still there, and nothing is
recorded twice. ``RETENTION_TEST_KILL_AT=<checkpoint>:<batch>[@<activity>[#<partition>]]``
kills the process at one of :data:`CHECKPOINTS` (crash tests; `runs.checkpoint`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from include.retention.catalogue import Activity, DeleteAction, ObjectLink, ReportOnlyAction
from include.retention.errors import RetentionError
from include.retention.leases import Lease, lease_name, leased
from include.retention.ledger import RunHeader, code_version
from include.retention.pseudonym import PackedRefs, pack_refs
from include.retention.run_record import read_run
from include.retention.runs import (
    Control,
    PlanResult,
    RunResult,
    check_approval_covers,
    check_as_of,
    check_not_early,
    checkpoint,
    close_interrupted_runs,
    database_errors,
    decide,
    finish_failed,
    finish_run,
    settle_batch,
)
from include.retention.sources.base import (
    Action,
    Applied,
    Batch,
    Counts,
    DueAt,
    HoldReader,
    KeyRange,
    Selection,
    SourceAdapter,
    adapter_for,
    base_selection,
    judged_through_of,
)

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 50_000
MAX_HOLD_RETRIES = 20
CHECKPOINTS = ("run_started", "batch_staged", "after_prepare", "after_apply", "after_resolve")
# Only for bindings with linked files: after the files were deleted, before the batch applies.
OBJECT_CHECKPOINT = "after_objects_deleted"
ClientFactory = Callable[[str], Any]
LINKED_COUNTS = (
    "objects_deleted", "object_versions_deleted", "objects_held_skipped", "objects_missing",
    "objects_still_linked",
)  # fmt: skip


@dataclass
class Hooks:
    """Callbacks for tests and operators; called with the plan or the batch number."""

    after_plan: Callable[[PlanResult], None] | None = None
    # After the batch's prepared entry, before the holds are read again.
    after_prepare: Callable[[int], None] | None = None
    # After that second read, just before the batch is applied.
    before_commit: Callable[[int], None] | None = None


@dataclass
class RecoveryResult:
    """What recovery settled: prepared batches by outcome, and runs closed as interrupted."""

    committed: int = 0
    rolled_back: int = 0
    partial: int = 0
    runs_closed: int = 0

    @property
    def anything(self) -> bool:
        return bool(self.committed or self.rolled_back or self.partial or self.runs_closed)


@dataclass
class RunReport(RunResult):
    """One run: :class:`RunResult` plus what its batches counted (child rows by table,
    versions, linked files, records that failed)."""

    plan: PlanResult
    recovery: RecoveryResult | None = None
    failed: int = 0  # records the source refused to change (kept; the run is partial)
    extra: dict[str, Any] = field(default_factory=dict)

    def extra_counts(self) -> dict[str, Any]:
        return {"failed": self.failed, **self.extra}


@dataclass(frozen=True)
class RunOptions:
    """How one run goes: who asked, whether it changes anything, batch size, test hooks."""

    catalogue_version: str
    dry_run: bool = False
    approved_by: str | None = None
    origin: Mapping[str, str | None] | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    hooks: Hooks = field(default_factory=Hooks)
    lease_wait: float | None = None
    clients: ClientFactory | None = None  # conn_id -> S3 client, for linked files
    # For one partition of a mapped run: the plan of the whole selection, which the safety
    # gate judges (a partition may hold every due record of the dataset).
    whole: PlanResult | None = None
    # For one partition of a mapped run: the ledger run the partitions share (started by
    # `start_partitioned`, finished by `finish_partitioned`); None: the run starts and
    # finishes its own.
    run_id: str | None = None
    # What the run is, when not the activity's retention (e.g. "erasure" for an Art. 17
    # request): the run header's action. The batches still name what they did to the records.
    purpose: str | None = None
    # Why the records are selected when it is not the retention rules (e.g. the suppression
    # list): the run's recorded rule.
    reason: str | None = None
    # How many records the approval (``approved_by``) was given for: a run that finds more
    # due refuses before it changes anything (`runs.check_approval_covers`).
    approved_up_to: int | None = None


# ------------------------------------------------------------------------------ entry points


def enforce(
    activity: Activity,
    as_of: dt.datetime,
    *,
    control: Control,
    catalogue_version: str,
    source: Any = None,
    adapter: SourceAdapter | None = None,
    dry_run: bool = False,
    approved_by: str | None = None,
    origin: Mapping[str, str | None] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    hooks: Hooks | None = None,
    clients: ClientFactory | None = None,
    lease_wait: float | None = None,
    partition: KeyRange | None = None,
    run_id: str | None = None,
    approved_up_to: int | None = None,
) -> RunReport:
    """Run the activity's retention at ``as_of`` (see the module doc).

    ``partition``: run only this key range of the due records (one mapped task of the
    partitioned ledger run ``run_id``; its ``within`` is ignored): its own lease and recovery
    scope, its batches in the shared run, gated by the plan of the whole dataset.

    ``source``: the source's connection (SQLAlchemy engine, boto3 client, ...) when no
    ``adapter`` is given; None: from the binding's Airflow connection. A second run of the
    activity waits up to ``lease_wait`` seconds (default $RETENTION_LEASE_WAIT_S or 90), then
    refuses naming the run that holds it. ``clients``: conn_id -> boto3 S3 client for linked
    files (default `object_store.s3_client`). A database failure raises a RetentionError
    naming the database.
    """
    check_not_early(as_of, dry_run)
    adapter = adapter or adapter_for(activity.source, control.key, source)
    due = DueAt(as_of, tuple(activity.retention))
    selection: Selection = due
    whole = None
    if partition is not None:
        if run_id is None:
            raise RetentionError("a partition runs within a partitioned run: give its run_id")
        selection = KeyRange(due, partition.lower, partition.upper, partition.index)
        whole = _with_run_so_far(
            plan(activity, as_of, control=control, adapter=adapter),
            control,
            adapter,
            run_id,
            deletes=isinstance(activity.action, DeleteAction),
        )
    options = RunOptions(
        catalogue_version, dry_run, approved_by, origin, batch_size, hooks or Hooks(), lease_wait,
        clients, whole, run_id if partition is not None else None,
        approved_up_to=approved_up_to,
    )  # fmt: skip
    return run(activity, selection, adapter, control, options)


def _with_run_so_far(
    whole: PlanResult, control: Control, adapter: SourceAdapter, run_id: str, *, deletes: bool
) -> PlanResult:
    """The plan of the whole dataset as the partitioned run ``run_id`` is judged: what its
    other partitions applied counts again (deleted records left the dataset and anonymised
    ones are no longer due), so the volume gate and the approval weigh the whole run, not what
    is left of it. A batch still in flight is counted where the source still shows it: not
    again, or parallel partitions of an approved run would refuse each other."""
    done = len(control.ledger.applied_refs(run_id, adapter.system, adapter.dataset))
    gone = done if deletes else 0  # anonymised records are still in the dataset's total
    return replace(whole, expired=whole.expired + done, total=whole.total + gone)


def plan(
    activity: Activity, as_of: dt.datetime, *, control: Control, source: Any = None,
    adapter: SourceAdapter | None = None,
) -> PlanResult:  # fmt: skip
    """Count what a run at ``as_of`` would do, changing nothing."""
    check_as_of(as_of)
    adapter = adapter or adapter_for(activity.source, control.key, source)
    selection = DueAt(as_of, tuple(activity.retention))
    with database_errors():
        adapter.resolve(_changing(activity))
        holds = control.holds.active(adapter.system, adapter.dataset)
        counts = adapter.count(selection, _changing(activity) or DeleteAction(), holds)
    result = plan_result(activity, selection, counts)
    log.info("plan %s: %s", activity.id, result.counts())
    return result


def recover(
    activity: Activity, *, control: Control, source: Any = None,
    adapter: SourceAdapter | None = None, clients: ClientFactory | None = None,
    lease_wait: float | None = None,
) -> RecoveryResult:  # fmt: skip
    """Settle the batches a crashed run left prepared (the records' from the source, the linked
    files' from their buckets) and close its run entry. Takes the activity's lease, so a live
    run is never touched."""
    adapter = adapter or adapter_for(activity.source, control.key, source)
    with database_errors():
        adapter.resolve(_changing(activity))
        with leased(control.ledger.engine, _lease(activity, adapter), wait=lease_wait):
            return _recover(activity, adapter, control, _LinkedFiles(activity, control, clients))


def run(
    activity: Activity, selection: Selection, adapter: SourceAdapter, control: Control,
    options: RunOptions,
) -> RunReport:  # fmt: skip
    """Apply the activity's action to ``selection`` of ``adapter``'s dataset."""
    if options.batch_size < 1:
        raise RetentionError("batch_size must be at least 1")
    if isinstance(selection, KeyRange) and options.run_id is None:
        raise RetentionError("a key range runs within a partitioned run: give options.run_id")
    with database_errors():
        adapter.resolve(_changing(activity))
        with leased(control.ledger.engine, _lease(activity, adapter, selection),
                    wait=options.lease_wait) as lease:  # fmt: skip
            linked = _LinkedFiles(activity, control, options.clients)
            return _Run(activity, selection, adapter, control, options, lease, linked).go()


def run_header(
    activity: Activity, adapter: SourceAdapter, planned: PlanResult, options: RunOptions
) -> RunHeader:
    """The ``run_started`` entry of a run: what it is about, who asked; no personal data."""
    return RunHeader(
        activity_id=activity.id, system=adapter.system, dataset=adapter.dataset,
        action=options.purpose or activity.action.kind, rules=planned.rules,
        as_of=planned.as_of, cutoffs=planned.cutoffs, dry_run=options.dry_run,
        catalogue_version=options.catalogue_version, code_version=code_version(),
        approved_by=options.approved_by, origin=dict(options.origin or {}),
    )  # fmt: skip


def plan_result(
    activity: Activity, selection: Selection, counts: Counts, reason: str | None = None
) -> PlanResult:
    """The plan's counts as the ledger, the gate and the UI know them. ``reason``: why the
    records are selected, recorded as the run's rule instead of the retention rules (e.g. the
    suppression list)."""
    base = base_selection(selection)
    rules = [reason] if reason else activity.rule_descriptions()
    return PlanResult(
        activity_id=activity.id,
        as_of=(base.as_of if isinstance(base, DueAt) else dt.datetime.now(dt.UTC)).isoformat(),
        rules=rules, cutoffs=list(counts.cutoffs) or [None] * len(rules), total=counts.total,
        expired=counts.selected,
        held=counts.held, restricted=counts.restricted, anchor_unknown=counts.anchor_unknown,
        kept=counts.kept, out_of_scope=counts.out_of_scope,
        already_anonymised=counts.already_anonymised, subject_unknown=counts.subject_unknown,
    )  # fmt: skip


def _changing(activity: Activity) -> Action | None:
    """The action that changes records, or None (report only)."""
    action = activity.action
    return None if isinstance(action, ReportOnlyAction) else action


def _lease(activity: Activity, adapter: SourceAdapter, selection: Selection | None = None) -> str:
    """The activity's lease on the dataset; a partition's own lease on its key range (the
    mapped DAG runs one run at a time, so partitions never meet a whole-dataset run)."""
    dataset = adapter.dataset
    if isinstance(selection, KeyRange):
        dataset = f"{dataset}#{selection.index}"
    return lease_name(activity.id, adapter.system, dataset)


def partitions(
    activity: Activity, as_of: dt.datetime, *, control: Control, size: int,
    source: Any = None, adapter: SourceAdapter | None = None,
) -> list[KeyRange]:  # fmt: skip
    """The key ranges of about ``size`` records each that a mapped run enforces in parallel."""
    adapter = adapter or adapter_for(activity.source, control.key, source)
    with database_errors():
        adapter.resolve(_changing(activity))
        return adapter.partitions(DueAt(as_of, tuple(activity.retention)), size)


def start_partitioned(
    activity: Activity, whole: PlanResult, partitions: int, *, control: Control,
    adapter: SourceAdapter, options: RunOptions,
) -> str:  # fmt: skip
    """Start the one ledger run whose key ranges mapped tasks enforce (`enforce` with
    ``partition`` and ``run_id``); its header records how many partitions it has."""
    origin = {**(options.origin or {}), "partitions": str(partitions)}
    header = run_header(activity, adapter, whole, replace(options, origin=origin))
    run_id = control.ledger.start_run(header)
    log.info("run %s for %s: started, %s partitions", run_id, activity.id, partitions)
    return run_id


def finish_partitioned(
    activity: Activity, run_id: str, ranges: list[KeyRange], *, control: Control,
    adapter: SourceAdapter, outcome: str, message: str, counts: Mapping[str, Any],
    clients: ClientFactory | None = None, lease_wait: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Finish the partitioned run ``run_id`` once, after its mapped tasks ended: each
    partition's batches a dead task left prepared are settled first (under that partition's
    lease, so a task still alive is waited for); then ``run_finished`` records ``outcome``,
    ``message`` and ``counts`` with the records applied and batches as its settled batches
    show (unless a retry of this step recorded it already). Returns the counts recorded."""
    with database_errors():
        adapter.resolve(_changing(activity))
        linked = _LinkedFiles(activity, control, clients)
        for part in ranges:
            with leased(control.ledger.engine, _lease(activity, adapter, part), wait=lease_wait):
                _recover(activity, adapter, control, linked, part, run_id)
        settled = read_run(control.ledger, run_id)
        written = {
            **counts, "applied": settled.applied, "batches": settled.applying_batches,
            "recovered_batches": settled.recovered,
        }  # fmt: skip
        if run_id in control.ledger.unfinished_runs(activity.id):
            control.ledger.finish_run(
                run_id, activity.id, outcome=outcome, counts=written, message=message
            )
            log.info("run %s for %s: %s (%s)", run_id, activity.id, outcome, written)
    return written


# ------------------------------------------------------------------------------ linked files


class _LinkedFiles:
    """The binding's linked files (e.g. CVs): one S3 adapter per link, made on first use."""

    def __init__(self, activity: Activity, control: Control, clients: ClientFactory | None) -> None:
        self.system = activity.source.system
        self.links: tuple[ObjectLink, ...] = tuple(getattr(activity.source, "objects", ()))
        self.key = control.key
        self._clients = clients
        self._made: dict[str, Any] = {}
        self._connected: dict[str, Any] = {}

    def adapter(self, link: ObjectLink) -> Any:
        """The S3 adapter of ``link``'s bucket (one client per connection)."""
        if link.column not in self._made:
            if link.conn_id not in self._connected:
                self._connected[link.conn_id] = self._client(link.conn_id)
            client = self._connected[link.conn_id]
            self._made[link.column] = adapter_for(link.binding(self.system), self.key, client)
        return self._made[link.column]

    def _client(self, conn_id: str) -> Any:
        if self._clients is not None:
            return self._clients(conn_id)
        from include.retention.object_store import s3_client

        return s3_client(conn_id)


# ------------------------------------------------------------------------------ recovery


def _recover(
    activity: Activity, adapter: SourceAdapter, control: Control, linked: _LinkedFiles,
    selection: Selection | None = None, shared_run: str | None = None,
) -> RecoveryResult:  # fmt: skip
    """Call under the lease: every other unfinished run of it is dead. Linked files first
    (they are deleted before their records' batch applies). A partition of the run
    ``shared_run`` settles only the batches of its own key range (the other partitions may be
    live) and closes no run (its run is finished once, by `finish_partitioned`)."""
    result = RecoveryResult()
    if shared_run is not None:
        index = selection.index if isinstance(selection, KeyRange) else None
        pending = [
            b for b in control.ledger.pending_batches(activity.id)
            if b.run_id == shared_run and b.partition == index
        ]  # fmt: skip
    else:
        live = control.leases.live_runs()
        pending = [b for b in control.ledger.pending_batches(activity.id) if b.run_id not in live]
    action = _changing(activity) or DeleteAction()
    targets: list[tuple[str, str, Callable[[], SourceAdapter], Action]] = [
        (linked.system, link.bucket, functools.partial(linked.adapter, link), DeleteAction())
        for link in linked.links
    ]

    def main() -> SourceAdapter:
        return adapter

    targets.append((adapter.system, adapter.dataset, main, action))
    for system, dataset, make, target_action in targets:
        mine = [b for b in pending if (b.system, b.dataset) == (system, dataset)]
        if not mine:
            continue
        claims = [batch.claims() for batch in mine]
        wanted = {ref for claim in claims for ref in claim}
        # A partition looks only in its own key range; linked buckets have no key ranges.
        within = selection if isinstance(selection, KeyRange) and make is main else None
        present = make().present(wanted, target_action, within, judged_through_of(claims))
        for batch in mine:
            outcome = settle_batch(
                control, batch, present, applied_if_present=target_action.kind == "anonymise"
            )
            setattr(result, outcome, getattr(result, outcome) + 1)
    if shared_run is None:  # the retention DAG's own runs also close its partitioned runs
        partitioned = selection is None or isinstance(selection, DueAt)
        result.runs_closed = close_interrupted_runs(control, activity.id, partitioned=partitioned)
    return result


# ------------------------------------------------------------------------------ the run


@dataclass
class _Run:
    activity: Activity
    selection: Selection
    adapter: SourceAdapter
    control: Control
    options: RunOptions
    lease: Lease
    linked: _LinkedFiles
    report: RunReport | None = None
    started: float = field(default_factory=time.monotonic)
    last_batch: int = 0  # the highest batch number staged

    @property
    def action(self) -> Action:
        return _changing(self.activity) or DeleteAction()

    @property
    def where(self) -> str:
        """The run, as crash tests name it: the activity, and its partition if it is one."""
        part = self.selection.index if isinstance(self.selection, KeyRange) else None
        return self.activity.id if part is None else f"{self.activity.id}#{part}"

    @property
    def partition(self) -> int | None:
        """The key range's index when the run is one partition of a shared run."""
        if self.options.run_id is None or not isinstance(self.selection, KeyRange):
            return None
        return self.selection.index

    def holds_of(self, adapter: SourceAdapter) -> HoldReader:
        return lambda: self.control.holds.active(adapter.system, adapter.dataset)

    def go(self) -> RunReport:
        options, control, activity = self.options, self.control, self.activity
        if options.run_id is not None and options.run_id not in control.ledger.unfinished_runs(
            activity.id
        ):
            raise RetentionError(
                f"the partitioned ledger run {options.run_id} of {activity.id} is finished"
                " already (its finish step ran): trigger a new DAG run for what is left"
            )
        recovery = None
        if not options.dry_run:
            recovery = _recover(
                activity, self.adapter, control, self.linked, self.selection, options.run_id
            )
        holds = self.holds_of(self.adapter)()
        counts = self.adapter.count(self.selection, self.action, holds)
        planned = plan_result(activity, self.selection, counts, options.reason)
        log.info("plan %s: %s", activity.id, planned.counts())
        if options.hooks.after_plan:
            options.hooks.after_plan(planned)
        check_approval_covers(
            activity, options.whole or planned, options.approved_by, options.approved_up_to
        )
        run_id = options.run_id or control.ledger.start_run(
            run_header(activity, self.adapter, planned, options)
        )
        report = self.report = RunReport(
            activity.id, "completed", "", planned, run_id=run_id,
            approved_by=options.approved_by, recovery=recovery,
            extra=dict.fromkeys(LINKED_COUNTS, 0) if self.linked.links else {},
        )  # fmt: skip
        self.lease.bind_run(report.run_id)  # type: ignore[arg-type]
        checkpoint("run_started", 0, self.where)
        decided = decide(activity, options.whole or planned, options.dry_run, options.approved_by)
        if decided:
            report.outcome, report.message = decided
            return self._finish(report)
        try:
            self._batches(planned.to_apply)
            self._release_files()
        except Exception as exc:
            if options.run_id is None:
                finish_failed(control, report, exc, "records")
            raise
        report.message = (
            f"{activity.action.kind}: {report.applied} records in {report.batches} batches;"
            f" skipped {report.held_skipped} held, {report.restricted_skipped} restricted"
            + (f"; {report.failed} failed" if report.failed else "")
        )
        if report.failed:
            report.outcome = "partial"
        return self._finish(report)

    def _finish(self, report: RunReport) -> RunReport:
        """Close the run's ledger entry; a partition leaves its shared run open."""
        if self.options.run_id is None:
            return finish_run(self.control, report)
        log.info("partition %s: %s (%s)", self.where, report.outcome, report.counts())
        return report

    def _batches(self, expected: int) -> None:
        staged = self.adapter.batches(
            self.selection, self.action, self.holds_of(self.adapter), self.options.batch_size
        )
        try:
            for batch in staged:
                self.lease.renew()  # a run that lost its lease stops here
                self._one(batch)
                self._progress(batch.no, expected)
        finally:
            close = getattr(staged, "close", None)
            if close is not None:
                close()

    def _release_files(self) -> None:
        """Delete the files the batches kept for a record left in the table that no record
        links now: that record's deletion by another transaction (a partition, an erasure)
        was in flight when the batch looked, and has committed since. Each is evidenced as a
        batch of its own (numbered after the last batch), like any linked file. The run's
        ``objects_still_linked`` counts the files that stay."""
        if not self.linked.links:
            return
        kept = self.adapter.kept_files()
        extra = self.report.extra  # type: ignore[union-attr]
        extra["objects_still_linked"] = sum(
            linked for keys in kept.values() for linked in keys.values()
        )
        for link in self.linked.links:
            free = [key for key, linked in kept.get(link.column, {}).items() if not linked]
            if free:
                log.info("%s file(s) kept for a record deleted meanwhile: deleting them", len(free))
                self._delete_files(self.linked.adapter(link), free, self.last_batch + 1)

    def _one(self, batch: Batch) -> None:
        adapter, report = self.adapter, self.report
        assert report is not None
        self.last_batch = max(self.last_batch, batch.no)
        batch, seq = self._prepared(adapter, batch, main=True)
        if seq is None:
            adapter.apply(batch)  # nothing to change (all held): ends the staging
            _add(report, batch, Applied(refs=()))
            return
        if self.linked.links and batch.linked:
            self._follow_on(batch, seq)
            checkpoint(OBJECT_CHECKPOINT, batch.no, self.where)
        applied = adapter.apply(batch)  # if this fails the batch stays pending for recovery
        checkpoint("after_apply", batch.no, self.where)
        self._resolve(seq, batch, applied)
        checkpoint("after_resolve", batch.no, self.where)
        _add(report, batch, applied)
        log.info(
            "batch %s: %s %s record(s) of %s/%s, %s skipped (held/restricted)%s",
            batch.no, self.activity.action.kind, len(applied.refs), adapter.system,
            adapter.dataset, batch.held_skipped + batch.restricted_skipped,
            f", {applied.failed} failed" if applied.failed else "",
        )  # fmt: skip

    def _prepared(
        self, adapter: SourceAdapter, batch: Batch, *, main: bool
    ) -> tuple[Batch, int | None]:
        """Write the staged batch's evidence, then re-read the holds: a hold placed meanwhile
        on it makes the batch roll back and stage again. (batch, prepared seq or None when the
        batch changes nothing)."""
        hooks = self.options.hooks
        for _ in range(MAX_HOLD_RETRIES):
            if main:
                checkpoint("batch_staged", batch.no, self.where)
            if not batch.refs:
                return batch, None
            seq = self._prepare(adapter, batch)
            if main:
                checkpoint("after_prepare", batch.no, self.where)
                if hooks.after_prepare:
                    hooks.after_prepare(batch.no)
            if not held_since(batch, self.holds_of(adapter)()):
                if main and hooks.before_commit:
                    hooks.before_commit(batch.no)
                return batch, seq
            adapter.abandon(batch)
            self.control.ledger.resolve_batch(seq, outcome="rolled_back", applied=0)
            log.info("batch %s: a hold was placed on it meanwhile; redoing it", batch.no)
            batch = adapter.redo(batch, self.holds_of(adapter))
        raise RetentionError(
            f"batch {batch.no}: holds kept changing; gave up after {MAX_HOLD_RETRIES} tries"
        )

    def _prepare(self, adapter: SourceAdapter, batch: Batch) -> int:
        assert self.report is not None and self.report.run_id is not None
        refs = batch.refs
        blob = refs.blob if isinstance(refs, PackedRefs) else pack_refs(refs)
        counts = {
            "records": len(refs), "held_skipped": batch.held_skipped,
            "restricted_skipped": batch.restricted_skipped, **batch.counts,
        }  # fmt: skip
        return self.control.ledger.prepare_batch(
            self.report.run_id, self.activity.id, adapter.system, adapter.dataset,
            batch_no=batch.no, action=self.action.kind if adapter is self.adapter else "delete",
            refs_blob=blob, counts=counts,
            subject_refs_blob=pack_refs(batch.subjects) if batch.subjects else None,
            partition=self.partition, judged_through=batch.judged_through,
        )  # fmt: skip

    def _resolve(self, seq: int, batch: Batch, applied: Applied) -> None:
        resolve(self.control, seq, len(batch.refs), applied.refs)

    def _follow_on(self, batch: Batch, seq: int) -> None:
        """Delete the files the batch's records point to before the batch applies; on any
        failure roll the batch back (the records stay, the next run retries)."""
        assert self.report is not None
        try:
            for link in self.linked.links:
                keys = sorted(set(batch.linked.get(link.column, ())))
                if keys:
                    self._delete_files(self.linked.adapter(link), keys, batch.no)
        except BaseException:
            self.adapter.abandon(batch)
            log.error("batch %s: deleting the linked files failed; batch rolled back", batch.no)
            try:
                self.control.ledger.resolve_batch(seq, outcome="rolled_back", applied=0)
            except Exception:  # left pending: the next run's recovery settles it
                log.exception("batch %s: could not resolve the rolled-back batch", batch.no)
            raise

    def _delete_files(self, files: Any, keys: list[str], batch_no: int) -> None:
        extra = self.report.extra  # type: ignore[union-attr]
        for staged in files.stage_keys(keys, self.holds_of(files), batch_no):
            staged, seq = self._prepared(files, staged, main=False)
            applied = files.apply(staged) if seq is not None else Applied(refs=())
            if seq is not None:
                self._resolve(seq, staged, applied)
            counts = {
                "objects_deleted": len(applied.refs),
                "object_versions_deleted": applied.counts.get("versions_deleted", 0),
                "objects_held_skipped": staged.held_skipped + staged.restricted_skipped,
                "objects_missing": staged.counts.get("missing", 0),
            }
            for name, n in counts.items():
                extra[name] = extra.get(name, 0) + n
            if applied.failed:
                raise RetentionError(
                    f"batch {batch_no}: {applied.failed} linked file(s) could not be deleted"
                )

    def _progress(self, batch_no: int, expected: int) -> None:
        report = self.report
        assert report is not None
        done = report.applied + report.held_skipped + report.restricted_skipped + report.failed
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = report.applied / elapsed
        left = max(expected - done, 0)
        eta = f", about {left / rate:.0f} s left" if rate and left else ""
        log.info(
            "%s: batch %s done, %s of about %s records (%.0f/s)%s",
            self.activity.id, batch_no, done, expected, rate, eta,
        )  # fmt: skip


def resolve(control: Control, seq: int, staged: int, applied: Sequence[bytes]) -> None:
    """Resolve the prepared batch ``seq`` of ``staged`` records of which ``applied`` were."""
    done = len(applied)
    outcome = "committed" if done == staged else "partial" if done else "rolled_back"
    control.ledger.resolve_batch(
        seq, outcome=outcome, applied=done,
        applied_blob=None if outcome == "committed" else pack_refs(applied),
    )  # fmt: skip


def held_since(batch: Batch, now: Any) -> bool:
    """Does a hold placed since the batch was staged cover one of its records?

    New record holds are matched against the batch's references, new subject holds against its
    subjects (when the adapter did not read them all, any new subject hold redoes the batch)."""
    before = batch.holds
    new_subjects = now.subjects.keys() - before.subjects.keys()
    unread = batch.subjects is None or batch.unread_subjects
    if new_subjects and (unread or new_subjects & batch.subjects):
        return True
    new = now.records.keys() - before.records.keys()
    if not new:
        return False
    refs = batch.refs if isinstance(batch.refs, PackedRefs) else set(batch.refs)
    return any(ref in refs for ref in new)


def _add(report: RunReport, batch: Batch, applied: Applied) -> None:
    report.batches += 1 if applied.refs else 0
    report.applied += len(applied.refs)
    report.failed += applied.failed
    report.held_skipped += batch.held_skipped
    report.restricted_skipped += batch.restricted_skipped
    extra = report.extra
    for name, n in batch.counts.items():
        if name.startswith("children."):
            children = extra.setdefault("children", {})
            table = name.removeprefix("children.")
            children[table] = children.get(table, 0) + n
    for name, n in applied.counts.items():
        extra[name] = extra.get(name, 0) + n
