"""The enforcement engine for SQL sources: `plan`, `enforce` and crash `recover`.

SQLAlchemy Core throughout; table and column names come from the catalogue (validated as
identifiers there) and are checked against the reflected schema here.

One batch = one source transaction over a primary-key range (keyset boundaries found by an
index-only scan, never a list of keys), with this write-ahead protocol against the ledger (a
different database):

1. delete (children first) or select-and-lock the batch's expired rows; ``RETURNING`` tells
   exactly which records were affected;
2. read the active holds afresh; if a held record is in the batch, roll back and redo the
   batch without it (for anonymisation: update only the rows not held);
3. append a ``batch_prepared`` ledger entry with the records' pseudonymous references and
   commit the ledger;
3b. if the source declares ``objects`` (files the records point to, e.g. CVs): delete every
   version of the deleted records' files (`s3_engine.delete_linked_objects`, with its own
   prepared/resolved ledger batch per bucket); if that fails, roll the source back (the rows
   stay and the next run retries) and fail the run;
4. commit the source;
5. append ``batch_resolved`` (committed).

After a crash anywhere, `recover` (run at the start of every enforcement) resolves each
prepared batch by scanning the source keys under a shared lock (which waits for a commit
still in flight) and HMAC-ing them: records gone (or marked anonymised) were applied,
the others were not; the linked files' batches are settled by checking which keys still exist
in the bucket (`s3_engine.recover_s3`). So no record is changed without evidence, no evidence
claims a record that is still there, and nothing is recorded twice.

Cost per record beyond the DELETE itself: one HMAC in Python (~0.7 us) and 16 bytes of blob.
On PostgreSQL the next batch's DELETE runs on a worker thread while the current batch is
hashed and logged. Runs of one activity must not overlap (the DAG allows one active run).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pendulum
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from include.retention import object_store, s3_engine
from include.retention.catalogue import Activity, AnonymiseAction, RuleCase, SqlChild, SqlSource
from include.retention.errors import RetentionError
from include.retention.holds import ActiveHolds
from include.retention.ledger import RunHeader, code_version
from include.retention.masking import MaskStrategy
from include.retention.pseudonym import (
    RecordRefHasher,
    SubjectRefHasher,
    hmac_hex,
    pack_refs,
    unpack_refs,
)
from include.retention.runs import (
    Control,
    PlanResult,
    RunResult,
    check_as_of,
    check_not_early,
    close_interrupted_runs,
    decide,
    finish_run,
    settle_batch,
)

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 50_000
MAX_HOLD_RETRIES = 20
MAX_WINDOW_FACTOR = 4
SCAN_CHUNK = 50_000
FETCH_CHUNK = 5_000
# Test hook: "<checkpoint>:<batch_no>" makes the process SIGKILL itself there (crash tests).
KILL_ENV = "RETENTION_TEST_KILL_AT"
CHECKPOINTS = (
    "run_started",
    "batch_applied",
    "after_prepare",
    "after_source_commit",
    "after_resolve",
)
# Only for activities with linked files: after the files were deleted, before the source commit.
OBJECT_CHECKPOINT = "after_objects_deleted"
ClientFactory = Callable[[str], Any]


# ------------------------------------------------------------------------------------ results


@dataclass
class Hooks:
    """Callbacks for tests and operators; called with the batch number."""

    after_plan: Callable[[PlanResult], None] | None = None
    # Inside the batch's source transaction, after its rows are deleted/locked and before the
    # active holds are read.
    after_lock: Callable[[int], None] | None = None


@dataclass
class RecoveryResult:
    committed: int = 0
    rolled_back: int = 0
    partial: int = 0
    runs_closed: int = 0
    objects: s3_engine.S3Recovery | None = None  # the linked files' batches, if any

    @property
    def anything(self) -> bool:
        linked = self.objects
        return bool(
            self.committed or self.rolled_back or self.partial or self.runs_closed
            or (linked and (linked.committed or linked.rolled_back or linked.partial))
        )  # fmt: skip


@dataclass
class EnforceResult(RunResult):
    """A SQL run: :class:`RunResult` plus child rows and linked files."""

    plan: PlanResult
    children: dict[str, int] = field(default_factory=dict)
    objects_deleted: int = 0  # linked files whose every version is gone
    object_versions_deleted: int = 0
    objects_held_skipped: int = 0  # linked files kept by a hold on the file itself
    objects_missing: int = 0  # linked keys that had no version at all
    recovery: RecoveryResult | None = None

    def extra_counts(self) -> dict[str, Any]:
        return {
            "children": dict(self.children),
            "objects_deleted": self.objects_deleted,
            "object_versions_deleted": self.object_versions_deleted,
            "objects_held_skipped": self.objects_held_skipped,
            "objects_missing": self.objects_missing,
        }


# ------------------------------------------------------------------------------------ schema


@dataclass(frozen=True)
class _Child:
    table: sa.Table
    fk: sa.Column[Any]
    pk: sa.Column[Any]
    children: tuple[_Child, ...]


@dataclass(frozen=True)
class _Schema:
    activity_id: str
    system: str
    dataset: str
    table: sa.Table
    pk: sa.Column[Any]
    subject: sa.Column[Any] | None
    children: tuple[_Child, ...]
    marker: sa.Column[Any] | None
    masks: tuple[tuple[sa.Column[Any], MaskStrategy], ...]
    anchor_tz: Any
    # Columns holding object keys of linked files (source ``objects``), in catalogue order.
    objects: tuple[sa.Column[Any], ...] = ()


def _sql_source(activity: Activity) -> SqlSource:
    if not isinstance(activity.source, SqlSource):
        raise RetentionError(f"activity {activity.id!r}: the SQL engine needs a 'sql' source")
    return activity.source


def _reflect(engine: Engine, activity: Activity, name: str) -> sa.Table:
    try:
        return sa.Table(name, sa.MetaData(), autoload_with=engine)
    except sa.exc.NoSuchTableError:
        src = _sql_source(activity)
        raise RetentionError(
            f"activity {activity.id!r}: table {name!r} does not exist in system {src.system!r}"
            f" (connection {src.conn_id!r})"
        ) from None


def _column(activity: Activity, table: sa.Table, name: str, role: str) -> sa.Column[Any]:
    if name not in table.c:
        raise RetentionError(
            f"activity {activity.id!r}: {role} column {name!r} does not exist in table"
            f" {table.name!r} (columns: {', '.join(table.c.keys())})"
        )
    return table.c[name]


def _resolve_child(engine: Engine, activity: Activity, child: SqlChild) -> _Child:
    table = _reflect(engine, activity, child.table)
    return _Child(
        table=table,
        fk=_column(activity, table, child.foreign_key, "foreign key"),
        pk=_column(activity, table, child.primary_key, "child primary key"),
        children=tuple(_resolve_child(engine, activity, c) for c in child.children),
    )


def resolve_schema(activity: Activity, engine: Engine) -> _Schema:
    """Check every table and column the catalogue names against the real database."""
    src = _sql_source(activity)
    table = _reflect(engine, activity, src.table)
    for case in activity.retention:
        if case.anchor_column:
            _column(activity, table, case.anchor_column, "anchor")
        if case.when:
            _column(activity, table, case.when.column, "condition")
    marker: sa.Column[Any] | None = None
    masks: tuple[tuple[sa.Column[Any], MaskStrategy], ...] = ()
    if isinstance(activity.action, AnonymiseAction):
        marker = _column(activity, table, activity.action.marker_column, "marker")
        masks = tuple(
            (_column(activity, table, name, "anonymised"), spec)
            for name, spec in activity.action.columns.items()
        )
    try:
        anchor_tz = pendulum.timezone(src.anchor_timezone)
    except Exception:  # pendulum raises several types for unknown zones
        raise RetentionError(
            f"activity {activity.id!r}: anchor_timezone {src.anchor_timezone!r} is not a time zone"
        ) from None
    return _Schema(
        activity_id=activity.id,
        system=src.system,
        dataset=src.table,
        table=table,
        pk=_column(activity, table, src.primary_key, "primary key"),
        subject=_column(activity, table, src.subject_column, "subject")
        if src.subject_column
        else None,
        children=tuple(_resolve_child(engine, activity, c) for c in src.children),
        marker=marker,
        masks=masks,
        anchor_tz=anchor_tz,
        objects=tuple(_column(activity, table, link.column, "object key") for link in src.objects),
    )


# ------------------------------------------------------------------------------------ predicates


@dataclass(frozen=True)
class _Predicates:
    expired: ColumnElement[bool]
    unknown: ColumnElement[bool]
    matched: ColumnElement[bool]
    cutoffs: list[str | None]


def _cutoff_value(case: RuleCase, as_of: dt.datetime, column: sa.Column[Any], tz: Any) -> Any:
    """The cutoff in the column's own terms: a date, an aware or a naive local datetime."""
    if isinstance(column.type, sa.Date) and not isinstance(column.type, sa.DateTime):
        return case.rule.cutoff_date(as_of)
    cutoff = case.rule.cutoff(as_of)
    if cutoff is None:
        return None
    if getattr(column.type, "timezone", False):
        return cutoff.in_timezone("UTC")
    local = cutoff.in_timezone(tz)
    return dt.datetime(
        local.year, local.month, local.day, local.hour, local.minute, local.second,
        local.microsecond,
    )  # fmt: skip


def _when(case: RuleCase, table: sa.Table) -> ColumnElement[bool]:
    if case.when is None:
        return sa.true()
    column = table.c[case.when.column]
    values = case.when.values
    return column == values[0] if case.when.one_of is None else column.in_(values)


def _predicates(activity: Activity, schema: _Schema, as_of: dt.datetime) -> _Predicates:
    table = schema.table
    expired: list[ColumnElement[bool]] = []
    unknown: list[ColumnElement[bool]] = []
    cutoffs: list[str | None] = []
    for case in activity.retention:
        if not case.rule.enforceable or case.anchor_column is None:
            cutoffs.append(None)
            continue
        anchor = table.c[case.anchor_column]
        cutoff = _cutoff_value(case, as_of, anchor, schema.anchor_tz)
        cutoffs.append(None if cutoff is None else cutoff.isoformat())
        if not case.rule.null_anchor_is_pending:
            unknown.append(sa.and_(_when(case, table), anchor.is_(None)))
        if cutoff is not None:
            expired.append(sa.and_(_when(case, table), anchor <= cutoff))
    matched = sa.or_(*(_when(case, table) for case in activity.retention))
    return _Predicates(
        expired=sa.or_(*expired) if expired else sa.false(),
        unknown=sa.or_(*unknown) if unknown else sa.false(),
        matched=matched,
        cutoffs=cutoffs,
    )


def _in_scope(schema: _Schema, cond: ColumnElement[bool]) -> ColumnElement[bool]:
    """Anonymised rows (marker set) are never matched again."""
    return cond if schema.marker is None else sa.and_(schema.marker.is_(None), cond)


# ------------------------------------------------------------------------------------ holds


class _HoldCheck:
    """Which of a batch's rows are held, given the active holds read just now."""

    def __init__(self, key: bytes, schema: _Schema, active: ActiveHolds) -> None:
        self.active = active
        self._subjects = (
            SubjectRefHasher(key) if active.subjects and schema.subject is not None else None
        )

    def kinds(self, rows: Sequence[Any], refs: Sequence[bytes]) -> dict[Any, str]:
        """pk -> 'legal_hold' | 'restriction' for the held rows."""
        if self.active.empty:
            return {}
        held: dict[Any, str] = {}
        for row, ref in zip(rows, refs, strict=True):
            subject = row[1] if self._subjects is not None and row[1] is not None else None
            sref = None if subject is None else self._subjects.ref(subject)  # type: ignore[union-attr]
            kind = self.active.kind_for(ref, sref)
            if kind:
                held[row[0]] = kind
        return held


def _returning_cols(
    schema: _Schema, with_subject: bool = True, with_objects: bool = False
) -> list[sa.Column[Any]]:
    """pk, then the subject (if wanted), then the object-key columns (deletes only)."""
    cols = [schema.pk]
    if schema.subject is not None and with_subject:
        cols.append(schema.subject)
    if with_objects:
        cols.extend(schema.objects)
    return cols


def _has_subject(schema: _Schema, returned: Sequence[sa.Column[Any]]) -> bool:
    return schema.subject is not None and len(returned) > 1 and returned[1] is schema.subject


def _chunks(
    result: sa.CursorResult[Any], columns: Sequence[sa.Column[Any]]
) -> Iterator[Sequence[Any]]:
    """The rows of a RETURNING result, a chunk at a time (memory stays flat per batch).

    On PostgreSQL, when no column needs a result processor, straight from the DBAPI cursor:
    building SQLAlchemy Row objects costs as much as the DELETE itself for large batches.
    """
    dialect = result.context.dialect
    cursor = result.cursor if dialect.name == "postgresql" else None
    if cursor is None or any(
        c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
    ):
        yield from result.partitions(FETCH_CHUNK)
        return
    seen = 0
    while chunk := cursor.fetchmany(FETCH_CHUNK):
        seen += len(chunk)
        yield chunk
    if seen != result.rowcount:
        raise RetentionError("RETURNING rows do not match the affected row count")


def _held_kinds(
    conn: Connection, schema: _Schema, cond: ColumnElement[bool], check: _HoldCheck, key: bytes
) -> dict[Any, str]:
    """pk -> hold kind for the rows matching ``cond`` that are held or restricted."""
    if check.active.empty:
        return {}
    hasher = RecordRefHasher(key, schema.system, schema.dataset)
    kinds: dict[Any, str] = {}
    result = conn.execution_options(yield_per=SCAN_CHUNK).execute(
        sa.select(*_returning_cols(schema)).where(cond)
    )
    for chunk in result.partitions():
        kinds.update(check.kinds(chunk, hasher.refs(row[0] for row in chunk)))
    return kinds


def _count_held(
    conn: Connection, schema: _Schema, cond: ColumnElement[bool], check: _HoldCheck, key: bytes
) -> tuple[int, int]:
    kinds = list(_held_kinds(conn, schema, cond, check, key).values())
    return kinds.count("legal_hold"), kinds.count("restriction")


def due_and_unheld(
    activity: Activity, as_of: dt.datetime, *, source: Engine, control: Control
) -> tuple[sa.Select[Any], int]:
    """A query of the primary keys that are due at ``as_of`` and under no hold or restriction
    (after a completed run there must be none), and how many due rows are held."""
    check_as_of(as_of)
    schema = resolve_schema(activity, source)
    due = _in_scope(schema, _predicates(activity, schema, as_of).expired)
    check = _HoldCheck(control.key, schema, control.holds.active(schema.system, schema.dataset))
    with source.connect() as conn:
        held = _held_kinds(conn, schema, due, check, control.key)
    query = sa.select(schema.pk).where(due)
    if held:
        query = query.where(schema.pk.not_in(sorted(held)))
    return query, len(held)


# ------------------------------------------------------------------------------------ plan


def _sum(cond: ColumnElement[bool]) -> ColumnElement[Any]:
    return sa.func.coalesce(sa.func.sum(sa.case((cond, 1), else_=0)), 0)


def _plan(
    activity: Activity, schema: _Schema, as_of: dt.datetime, source: Engine, control: Control
) -> tuple[PlanResult, _Predicates]:
    preds = _predicates(activity, schema, as_of)
    marker_set = sa.false() if schema.marker is None else schema.marker.is_not(None)
    in_scope = sa.not_(marker_set) if schema.marker is not None else sa.true()
    query = sa.select(
        sa.func.count(),
        _sum(marker_set),
        _sum(sa.and_(in_scope, preds.expired)),
        # expired wins over unknown: one case may be due while another has no anchor
        sa.func.coalesce(
            sa.func.sum(
                sa.case((preds.expired, 0), (sa.and_(in_scope, preds.unknown), 1), else_=0)
            ),
            0,
        ),
        sa.func.coalesce(sa.func.sum(sa.case((preds.matched, 0), (in_scope, 1), else_=0)), 0),
    ).select_from(schema.table)
    check = _HoldCheck(control.key, schema, control.holds.active(schema.system, schema.dataset))
    with source.connect() as conn:
        total, anonymised, expired, unknown, unmatched = (int(v) for v in conn.execute(query).one())
        held, restricted = _count_held(
            conn, schema, _in_scope(schema, preds.expired), check, control.key
        )
    result = PlanResult(
        activity_id=activity.id,
        as_of=as_of.isoformat(),
        rules=activity.rule_descriptions(),
        cutoffs=preds.cutoffs,
        total=total,
        expired=expired,
        held=held,
        restricted=restricted,
        anchor_unknown=unknown,
        kept=total - anonymised - expired - unknown - unmatched,
        out_of_scope=unmatched,
        already_anonymised=anonymised,
    )
    log.info("plan %s: %s", activity.id, result.counts())
    return result, preds


def plan(activity: Activity, as_of: dt.datetime, *, source: Engine, control: Control) -> PlanResult:
    """Count what a run at ``as_of`` would do, changing nothing."""
    check_as_of(as_of)
    schema = resolve_schema(activity, source)
    return _plan(activity, schema, as_of, source, control)[0]


# ------------------------------------------------------------------------------------ batches


def _checkpoint(name: str, batch_no: int) -> None:
    if os.environ.get(KILL_ENV) == f"{name}:{batch_no}":
        os.kill(os.getpid(), signal.SIGKILL)


def _delete_children(
    conn: Connection, child: _Child, parent_keys: sa.Select[Any], counts: dict[str, int]
) -> None:
    own_keys = sa.select(child.pk).where(child.fk.in_(parent_keys))
    for grandchild in child.children:
        _delete_children(conn, grandchild, own_keys, counts)
    deleted = conn.execute(sa.delete(child.table).where(child.fk.in_(parent_keys))).rowcount
    counts[child.table.name] = counts.get(child.table.name, 0) + max(deleted, 0)


def _marker_value(column: sa.Column[Any], now: dt.datetime) -> Any:
    if isinstance(column.type, sa.DateTime):
        return now if getattr(column.type, "timezone", False) else now.replace(tzinfo=None)
    if isinstance(column.type, sa.Date):
        return now.date()
    if isinstance(column.type, sa.Boolean):
        return True
    return now.isoformat()


def _mask_key(key: bytes) -> bytes:
    """A sub-key for pseudonyms in the data, separate from the ledger's record references."""
    return hmac.new(key, b"retention-mask-pseudonym", hashlib.sha256).digest()


@dataclass
class _BatchOutcome:
    """What a batch changed: how many records, their packed references, child rows, skips."""

    count: int
    blob: bytes
    children: dict[str, int]
    skipped: dict[Any, str]
    # column -> object keys of the deleted records (NULLs dropped); deletes with ``objects`` only
    object_keys: dict[str, list[str]] = field(default_factory=dict)
    linked: s3_engine.LinkedDeleteResult | None = None


@dataclass
class _Run:
    """Everything one enforcement run needs while it walks the batches."""

    activity: Activity
    schema: _Schema
    source: Engine
    control: Control
    run_id: str
    cond: ColumnElement[bool]
    batch_size: int
    hooks: Hooks
    hasher: RecordRefHasher
    values: dict[str, Any] = field(default_factory=dict)
    # Subjects are fetched only while subject holds exist (re-checked after every lock).
    with_subject: bool = True
    window: int = DEFAULT_BATCH_SIZE
    clients: ClientFactory | None = None

    @property
    def anonymise(self) -> bool:
        return self.schema.marker is not None

    @property
    def linked(self) -> bool:
        """Deleting records whose files must go too."""
        return not self.anonymise and bool(self.schema.objects)

    def hold_check(self) -> _HoldCheck:
        active = self.control.holds.active(self.schema.system, self.schema.dataset)
        return _HoldCheck(self.control.key, self.schema, active)


def _excluding(run: _Run, where: ColumnElement[bool], held: Iterable[Any]) -> ColumnElement[bool]:
    held = list(held)
    return where if not held else sa.and_(where, run.schema.pk.not_in(held))


_Deleted = tuple[sa.CursorResult[Any], list[sa.Column[Any]], dict[str, int]]


def _delete_rows(run: _Run, conn: Connection, cond: ColumnElement[bool]) -> _Deleted:
    """Children first, then the records; returns the unread RETURNING (pk[, subject][, object
    keys]) result, its columns and the child row counts."""
    children: dict[str, int] = {}
    parent_keys = sa.select(run.schema.pk).where(cond)
    for child in run.schema.children:
        _delete_children(conn, child, parent_keys, children)
    returned = _returning_cols(run.schema, run.with_subject, run.linked)
    stmt = sa.delete(run.schema.table).where(cond).returning(*returned)
    return conn.execute(stmt), returned, children


def _delete_attempt(
    run: _Run,
    conn: Connection,
    where: ColumnElement[bool],
    batch_no: int,
    first: Future[_Deleted] | None = None,
) -> _BatchOutcome:
    """Delete the batch (children first); if a record turns out held, retry without it.

    ``first``: the batch's delete already started on a worker thread (pipelining).
    """
    skipped: dict[Any, str] = {}
    for attempt in range(MAX_HOLD_RETRIES):
        cond = _excluding(run, where, skipped)
        if first is not None:
            result, returned, children = first.result()
            first = None
        else:
            result, returned, children = _delete_rows(run, conn, cond)
        if run.hooks.after_lock and attempt == 0:
            run.hooks.after_lock(batch_no)
        check = run.hold_check()
        retry = _needs_subjects(run, check, _has_subject(run.schema, returned))
        if not retry:
            offset = 2 if _has_subject(run.schema, returned) else 1
            count, blob, held, keys = _digest(run, check, _chunks(result, returned), offset)
            if not held:
                return _BatchOutcome(count, blob, children, skipped, keys)
            skipped.update(held)
        result.close()
        conn.rollback()
        conn.begin()
        log.info("batch %s: held records found after locking; redoing without them", batch_no)
    raise RetentionError(
        f"batch {batch_no}: holds kept changing; gave up after {MAX_HOLD_RETRIES} tries"
    )


def _digest(
    run: _Run, check: _HoldCheck, chunks: Iterable[Sequence[Any]], offset: int
) -> tuple[int, bytes, dict[Any, str], dict[str, list[str]]]:
    """Count the rows, pack their references into one blob, find the held ones, and collect
    the object keys (columns from ``offset`` on) of the linked files."""
    count, blob, held = 0, bytearray(), {}
    columns = [c.name for c in run.schema.objects] if run.linked else []
    keys: dict[str, list[str]] = {name: [] for name in columns}
    for chunk in chunks:
        refs = run.hasher.refs(row[0] for row in chunk)
        count += len(chunk)
        blob += pack_refs(refs)
        held.update(check.kinds(chunk, refs))
        for i, name in enumerate(columns, start=offset):
            keys[name].extend(str(row[i]) for row in chunk if row[i] is not None)
    return count, bytes(blob), held, keys


def _needs_subjects(run: _Run, check: _HoldCheck, fetched_subjects: bool) -> bool:
    """A subject hold is active but the batch was fetched without subjects: redo with them."""
    if check.active.subjects and run.schema.subject is not None and not fetched_subjects:
        run.with_subject = True
        return True
    return False


def _anonymise_attempt(
    run: _Run, conn: Connection, where: ColumnElement[bool], batch_no: int
) -> _BatchOutcome:
    """Lock the batch's rows, drop the held ones, then one set-based UPDATE for the rest."""
    if conn.dialect.name == "sqlite":
        conn.connection.driver_connection.create_function(  # type: ignore[union-attr]
            "retention_hmac_hex", 2, hmac_hex, deterministic=True
        )
    for attempt in range(MAX_HOLD_RETRIES):
        locked = conn.execute(
            sa.select(*_returning_cols(run.schema)).where(where).with_for_update()
        ).all()
        if run.hooks.after_lock and attempt == 0:
            run.hooks.after_lock(batch_no)
        held = run.hold_check().kinds(locked, run.hasher.refs(row[0] for row in locked))
        rows = [row for row in locked if row[0] not in held]
        stmt = sa.update(run.schema.table).where(_excluding(run, where, held)).values(run.values)
        updated = conn.execute(stmt).rowcount if rows else 0
        if updated == len(rows):
            blob = pack_refs(run.hasher.refs(row[0] for row in rows))
            return _BatchOutcome(len(rows), blob, {}, held)
        conn.rollback()  # rows changed between lock and update (SQLite has no row locks)
        conn.begin()
    raise RetentionError(
        f"batch {batch_no}: rows kept changing; gave up after {MAX_HOLD_RETRIES} tries"
    )


def _next_upper(run: _Run, conn: Connection, last: Any) -> Any:
    """Upper pk bound of the next batch (None: the rest of the table).

    The window counts table rows, not due rows: an index-only keyset scan of the primary key,
    far cheaper than filtering by the rule. It spans ``batch_size`` divided by the share of due
    rows (at most MAX_WINDOW_FACTOR times ``batch_size``), so a batch holds about ``batch_size``
    due records and never more than its window.
    """
    query = sa.select(run.schema.pk)
    if last is not None:
        query = query.where(run.schema.pk > last)
    query = query.order_by(run.schema.pk).offset(run.window - 1).limit(1)
    return conn.execute(query).scalar()


def _window(batch_size: int, plan_result: PlanResult) -> int:
    due = max(plan_result.expired, 1)
    factor = min(MAX_WINDOW_FACTOR, max(1, round(plan_result.total / due)))
    return batch_size * factor


def _range(run: _Run, last: Any, upper: Any) -> ColumnElement[bool]:
    parts = [run.cond]
    if last is not None:
        parts.append(run.schema.pk > last)
    if upper is not None:
        parts.append(run.schema.pk <= upper)
    return sa.and_(*parts)


@dataclass
class _Batch:
    """A batch whose source transaction is open (and whose delete may be running already)."""

    no: int
    upper: Any
    where: ColumnElement[bool]
    conn: Connection
    started: Future[_Deleted] | None = None


def _open_batch(run: _Run, no: int, last: Any, pool: ThreadPoolExecutor | None) -> _Batch:
    conn = run.source.connect()
    try:
        conn.begin()
        upper = _next_upper(run, conn, last)
    except BaseException:
        conn.close()
        raise
    batch = _Batch(no, upper, _range(run, last, upper), conn)
    if pool is not None:
        batch.started = pool.submit(_delete_rows, run, conn, batch.where)
    return batch


def _discard(batch: _Batch) -> None:
    """Roll back a batch that will not be finished (the run stopped before it)."""
    if batch.started is not None:
        try:
            batch.started.result()
        except Exception:  # the run is failing already; this batch changes nothing
            log.debug("discarded batch %s failed", batch.no)
    batch.conn.close()


def _one_batch(run: _Run, batch: _Batch) -> _BatchOutcome:
    """Finish one batch under the write-ahead protocol."""
    with batch.conn as conn:
        batch_no = batch.no
        if run.anonymise:
            outcome = _anonymise_attempt(run, conn, batch.where, batch_no)
        else:
            outcome = _delete_attempt(run, conn, batch.where, batch_no, batch.started)
        _checkpoint("batch_applied", batch_no)
        if not outcome.count:
            conn.commit()
            return outcome
        counts = {
            "records": outcome.count,
            "held_skipped": sum(1 for k in outcome.skipped.values() if k == "legal_hold"),
            "restricted_skipped": sum(1 for k in outcome.skipped.values() if k == "restriction"),
        } | {f"children.{name}": n for name, n in outcome.children.items()}
        prepared = run.control.ledger.prepare_batch(
            run.run_id, run.activity.id, run.schema.system, run.schema.dataset,
            batch_no=batch_no, action=run.activity.action.kind,
            refs_blob=outcome.blob, counts=counts,
        )  # fmt: skip
        _checkpoint("after_prepare", batch_no)
        if run.linked:
            outcome.linked = _delete_files(run, conn, outcome, prepared, batch_no)
            _checkpoint(OBJECT_CHECKPOINT, batch_no)
        # If this commit fails the prepared entry stays pending and `recover` settles it.
        conn.commit()
    _checkpoint("after_source_commit", batch_no)
    run.control.ledger.resolve_batch(prepared, outcome="committed", applied=outcome.count)
    _checkpoint("after_resolve", batch_no)
    log.info(
        "batch %s: %s %s record(s), %s skipped (held/restricted), children %s",
        batch_no, run.activity.action.kind, outcome.count, len(outcome.skipped),
        outcome.children,
    )  # fmt: skip
    return outcome


def _delete_files(
    run: _Run, conn: Connection, outcome: _BatchOutcome, prepared: int, batch_no: int
) -> s3_engine.LinkedDeleteResult:
    """Delete the batch's linked files before the source commits; on any failure roll the
    source back (the rows stay, the next run retries) and record the batch as rolled back."""
    try:
        linked = s3_engine.delete_linked_objects(
            run.activity, outcome.object_keys, control=run.control, run_id=run.run_id,
            batch_no=batch_no, clients=run.clients,
        )  # fmt: skip
        if linked.failed:
            raise RetentionError(
                f"batch {batch_no}: {linked.failed} linked file(s) could not be deleted"
            )
    except BaseException:
        conn.rollback()
        log.error("batch %s: deleting the linked files failed; source rolled back", batch_no)
        try:
            run.control.ledger.resolve_batch(prepared, outcome="rolled_back", applied=0)
        except Exception:  # left pending: the next run's recovery settles it from the source
            log.exception("batch %s: could not resolve the rolled-back batch", batch_no)
        raise
    return linked


def _pipelined(run: _Run) -> bool:
    """Delete batch n+1 on a worker thread while batch n is hashed, logged and committed.

    The ranges are disjoint, so on PostgreSQL (row locks only) the two open transactions never
    wait for each other. Not on SQLite (one writer) nor MariaDB (next-key locks at the range
    boundary), and not for anonymisation (which locks before it changes anything).
    """
    return not run.anonymise and run.source.dialect.name == "postgresql"


def _add(result: EnforceResult, outcome: _BatchOutcome) -> None:
    result.batches += 1 if outcome.count else 0
    result.applied += outcome.count
    result.held_skipped += sum(1 for k in outcome.skipped.values() if k == "legal_hold")
    result.restricted_skipped += sum(1 for k in outcome.skipped.values() if k == "restriction")
    for name, n in outcome.children.items():
        result.children[name] = result.children.get(name, 0) + n
    if outcome.linked is not None:
        result.objects_deleted += outcome.linked.objects
        result.object_versions_deleted += outcome.linked.versions_deleted
        result.objects_held_skipped += outcome.linked.held_skipped
        result.objects_missing += outcome.linked.missing


def _run_batches(run: _Run, result: EnforceResult) -> None:
    pool = ThreadPoolExecutor(max_workers=1) if _pipelined(run) else None
    current: _Batch | None = _open_batch(run, 1, None, pool)
    upcoming: _Batch | None = None
    try:
        while current is not None:
            if pool is not None and current.upper is not None:
                upcoming = _open_batch(run, current.no + 1, current.upper, pool)
            _add(result, _one_batch(run, current))
            if upcoming is None and current.upper is not None:
                upcoming = _open_batch(run, current.no + 1, current.upper, None)
            current, upcoming = upcoming, None
    finally:
        for batch in (current, upcoming):
            if batch is not None and not batch.conn.closed:
                _discard(batch)
        if pool is not None:
            pool.shutdown(wait=True)


# ------------------------------------------------------------------------------------ recovery


def recover(
    activity: Activity,
    *,
    source: Engine,
    control: Control,
    clients: ClientFactory | None = None,
) -> RecoveryResult:
    """Settle batches a crashed run left prepared (the table's from the source, the linked
    files' from their buckets), and close its run entry."""
    schema = resolve_schema(activity, source)
    return _recover(activity, schema, source, control, _cached(clients))


def present_refs(
    source: Engine, schema: _Schema, key: bytes, anonymise: bool, wanted: set[bytes]
) -> set[bytes]:
    hasher = RecordRefHasher(key, schema.system, schema.dataset)
    query = sa.select(schema.pk)
    if anonymise:
        query = query.where(schema.marker.is_not(None))  # type: ignore[union-attr]
    present: set[bytes] = set()
    with source.connect() as conn:
        result = conn.execution_options(yield_per=SCAN_CHUNK).execute(
            query.with_for_update(read=True)
        )
        for chunk in result.partitions():
            present.update(ref for ref in hasher.refs(row[0] for row in chunk) if ref in wanted)
        conn.rollback()
    return present


def _recover(
    activity: Activity,
    schema: _Schema,
    source: Engine,
    control: Control,
    clients: ClientFactory | None = None,
) -> RecoveryResult:
    result = RecoveryResult()
    if _sql_source(activity).objects:
        # Files are deleted before the source commits: settle them by existence in S3 (a
        # client is only made for a bucket with pending batches).
        result.objects = s3_engine.recover_s3(
            activity, control=control, clients=clients, close_runs=False
        )
    pending = [
        b
        for b in control.ledger.pending_batches(activity.id)
        if (b.system, b.dataset) == (schema.system, schema.dataset)
    ]
    anonymise = schema.marker is not None
    if pending:
        wanted = {ref for batch in pending for ref in unpack_refs(batch.refs)}
        present = present_refs(source, schema, control.key, anonymise, wanted)
        for batch in pending:
            outcome = settle_batch(control, batch, present, applied_if_present=anonymise)
            setattr(result, outcome, getattr(result, outcome) + 1)
    result.runs_closed = close_interrupted_runs(control, activity.id)
    return result


# ------------------------------------------------------------------------------------ enforce


def enforce(
    activity: Activity,
    as_of: dt.datetime,
    *,
    source: Engine,
    control: Control,
    catalogue_version: str,
    dry_run: bool = False,
    approved_by: str | None = None,
    origin: Mapping[str, str | None] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    hooks: Hooks | None = None,
    clients: ClientFactory | None = None,
) -> EnforceResult:
    """Run the activity's retention at ``as_of``: recover, plan, gate, then apply in batches.

    ``clients``: conn_id -> boto3 S3 client for the linked files (default:
    `object_store.s3_client`); only used by activities whose source declares ``objects``.
    """
    check_not_early(as_of, dry_run)
    if batch_size < 1:
        raise RetentionError("batch_size must be at least 1")
    hooks = hooks or Hooks()
    schema = resolve_schema(activity, source)
    clients = _cached(clients)
    recovery = None if dry_run else _recover(activity, schema, source, control, clients)
    plan_result, preds = _plan(activity, schema, as_of, source, control)
    if hooks.after_plan:
        hooks.after_plan(plan_result)
    header = RunHeader(
        activity_id=activity.id, system=schema.system, dataset=schema.dataset,
        action=activity.action.kind, rules=plan_result.rules, as_of=plan_result.as_of,
        cutoffs=plan_result.cutoffs, dry_run=dry_run, catalogue_version=catalogue_version,
        code_version=code_version(), approved_by=approved_by, origin=dict(origin or {}),
    )  # fmt: skip
    result = EnforceResult(
        activity.id, "completed", "", plan_result, run_id=control.ledger.start_run(header),
        approved_by=approved_by, recovery=recovery,
    )  # fmt: skip
    _checkpoint("run_started", 0)
    decided = decide(activity, plan_result, dry_run, approved_by)
    if decided:
        result.outcome, result.message = decided
        return finish_run(control, result)
    run = _Run(
        activity=activity, schema=schema, source=source, control=control,
        run_id=result.run_id, cond=_in_scope(schema, preds.expired),  # type: ignore[arg-type]
        batch_size=batch_size, hooks=hooks,
        hasher=RecordRefHasher(control.key, schema.system, schema.dataset), clients=clients,
    )  # fmt: skip
    run.with_subject = bool(control.holds.active(schema.system, schema.dataset).subjects)
    run.window = _window(batch_size, plan_result)
    if run.anonymise:
        run.values = _anonymise_values(schema, source.dialect.name, control.key)
    try:
        _run_batches(run, result)
    except Exception as exc:
        result.outcome, result.message = (
            "failed",
            f"failed after {result.applied} records: {type(exc).__name__}",
        )
        finish_run(control, result)
        raise
    result.message = (
        f"{activity.action.kind}: {result.applied} records in {result.batches} batches;"
        f" skipped {result.held_skipped} held, {result.restricted_skipped} restricted"
    )
    return finish_run(control, result)


def _cached(clients: ClientFactory | None) -> ClientFactory:
    """One client per connection for the whole run, made on first use."""
    factory = clients or object_store.s3_client
    made: dict[str, Any] = {}

    def client(conn_id: str) -> Any:
        if conn_id not in made:
            made[conn_id] = factory(conn_id)
        return made[conn_id]

    return client


def _anonymise_values(schema: _Schema, dialect: str, key: bytes) -> dict[str, Any]:
    mask_key = _mask_key(key)
    values = {column.name: spec.to_sql(column, dialect, mask_key) for column, spec in schema.masks}
    if schema.marker is None:
        raise RetentionError(
            f"activity {schema.activity_id!r}: anonymisation needs a marker column"
        )
    values[schema.marker.name] = _marker_value(schema.marker, dt.datetime.now(dt.UTC))
    return values
