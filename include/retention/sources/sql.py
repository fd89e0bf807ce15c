"""The SQL source adapter: a table (with child tables and linked files) reached through
SQLAlchemy Core; the run lifecycle (`include.retention.lifecycle`) drives it.

Table and column names come from the catalogue (validated as identifiers there) and are
checked against the reflected schema here. A batch is one source transaction over a
primary-key range (keyset boundaries found by an index-only scan, never a list of keys):
staging deletes the batch's records and ``RETURNING`` tells exactly which (with child tables it
locks them first and deletes their children, then them, by exactly those keys; to anonymise it
locks them and updates exactly those not held; on SQLite the batch is the one writer from
before it reads); the active holds are read inside that transaction and a held record makes
the batch redo itself without it. ``apply`` commits. ``present`` scans the keys
under a shared lock, which waits for a commit still in flight, so recovery settles a prepared
batch from what the source really holds.

Cost per record beyond the DELETE itself: its RETURNING row, one HMAC in Python (~0.7 us;
another for each distinct subject of the batch) and 16 bytes of blob (see the README's
Figures). On PostgreSQL, MariaDB and MySQL the next batch's DELETE runs on a worker thread
while the current batch is hashed and logged (`SqlAdapter._pipelined`). Every source statement
has a lock and a statement timeout (`SourceTimeouts`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import chain
from operator import itemgetter
from typing import Any, ClassVar

import pendulum
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from include.retention.catalogue import AnonymiseAction, ObjectLink, RuleCase, SqlChild, SqlSource
from include.retention.errors import RetentionError
from include.retention.field_values import for_column, for_lookup
from include.retention.holds import ActiveHolds
from include.retention.lookup import SubjectMatcher
from include.retention.masking import MaskStrategy, mask_key
from include.retention.pseudonym import PackedRefs, RecordRefHasher
from include.retention.runs import name_database
from include.retention.sources.base import (
    Action,
    Applied,
    Batch,
    Counts,
    DueAt,
    HoldReader,
    JudgedThrough,
    Key,
    KeyRange,
    OfSubject,
    Prepare,
    Record,
    Selection,
    Updated,
    base_selection,
    key_bounds,
    key_ranges,
    register,
)

log = logging.getLogger(__name__)

MAX_HOLD_RETRIES = 20
MAX_WINDOW_FACTOR = 4
SCAN_CHUNK = 50_000
FETCH_CHUNK = 5_000
KEY_CHUNK = 10_000  # locked keys per statement naming them
LINK_CHUNK = 1_000  # file keys per query asking which a record left in the table links
PIPELINED_DIALECTS = frozenset({"postgresql", "mysql"})  # see `SqlAdapter._pipelined`
# Anchors before this are no dates but placeholders for "unknown" (MariaDB's zero date,
# PostgreSQL's -infinity): such a record's anchor is unknown, never due.
ANCHOR_FLOOR = dt.datetime(1, 1, 1)
LOCK_TIMEOUT_ENV = "RETENTION_SOURCE_LOCK_TIMEOUT_S"
STATEMENT_TIMEOUT_ENV = "RETENTION_SOURCE_STATEMENT_TIMEOUT_S"


@dataclass(frozen=True)
class SourceTimeouts:
    """Limits on every source statement, so a run never waits forever on another's locks.

    ``lock``: seconds a statement waits for a row lock (PostgreSQL ``lock_timeout``, MariaDB
    ``innodb_lock_wait_timeout``); ``statement``: seconds a statement may run (PostgreSQL
    ``statement_timeout``, MariaDB ``max_statement_time``). Defaults from
    $RETENTION_SOURCE_LOCK_TIMEOUT_S and $RETENTION_SOURCE_STATEMENT_TIMEOUT_S, else 30 s and
    30 min. SQLite waits at most its busy timeout (5 s).
    """

    lock: float = 30.0
    statement: float = 1800.0

    def __post_init__(self) -> None:
        for name in ("lock", "statement"):
            value = getattr(self, name)
            if not 1 <= value <= 86_400:
                raise RetentionError(f"source {name} timeout must be 1-86400 s, not {value!r}")

    @classmethod
    def from_env(cls) -> SourceTimeouts:
        values = {}
        for name, env in (("lock", LOCK_TIMEOUT_ENV), ("statement", STATEMENT_TIMEOUT_ENV)):
            raw = os.environ.get(env)
            if raw:
                try:
                    values[name] = float(raw)
                except ValueError:
                    raise RetentionError(f"{env}={raw!r} is not a number of seconds") from None
        return cls(**values)


def limit(conn: Connection, timeouts: SourceTimeouts) -> None:
    """Apply ``timeouts`` to the connection's current transaction (PostgreSQL) or session."""
    dialect = conn.dialect
    if dialect.name == "postgresql":
        conn.execute(
            sa.select(
                sa.func.set_config("lock_timeout", f"{int(timeouts.lock * 1000)}", True),
                sa.func.set_config("statement_timeout", f"{int(timeouts.statement * 1000)}", True),
            )
        )
    elif dialect.name == "mysql":
        stmt = (
            "max_statement_time = :stmt"
            if getattr(dialect, "is_mariadb", False)
            else ("max_execution_time = :stmt_ms")
        )
        conn.execute(
            sa.text(f"SET SESSION innodb_lock_wait_timeout = :lock, SESSION {stmt}"),
            {"lock": max(1, int(timeouts.lock)), "stmt": timeouts.statement,
             "stmt_ms": int(timeouts.statement * 1000)},
        )  # fmt: skip


# ------------------------------------------------------------------------------------ schema


@dataclass(frozen=True)
class ReflectedChild:
    """A child table as reflected: its foreign key to the parent and its own key."""

    table: sa.Table
    fk: sa.Column[Any]
    pk: sa.Column[Any]
    children: tuple[ReflectedChild, ...]


@dataclass(frozen=True)
class SqlDataset:
    """The bound table as the database has it: every column the catalogue names, reflected."""

    system: str
    dataset: str
    table: sa.Table
    pk: sa.Column[Any]
    lookups: tuple[sa.Column[Any], ...]  # in the order of the binding's lookup_columns()
    children: tuple[ReflectedChild, ...]
    marker: sa.Column[Any] | None  # anonymisation only
    masks: tuple[tuple[sa.Column[Any], MaskStrategy], ...]
    anchor_tz: Any
    # Columns holding object keys of linked files (source ``objects``), in catalogue order.
    objects: tuple[sa.Column[Any], ...] = ()

    def column(self, name: str, role: str) -> sa.Column[Any]:
        if name not in self.table.c:
            raise RetentionError(
                f"{role} column {name!r} does not exist in table {self.table.name!r} of system"
                f" {self.system!r} (columns: {', '.join(self.table.c.keys())})"
            )
        return self.table.c[name]


def _reflect(engine: Engine, src: SqlSource, name: str) -> sa.Table:
    try:
        return sa.Table(name, sa.MetaData(), autoload_with=engine)
    except sa.exc.NoSuchTableError:
        raise RetentionError(
            f"table {name!r} does not exist in system {src.system!r} (connection {src.conn_id!r})"
        ) from None


def _column(src: SqlSource, table: sa.Table, name: str, role: str) -> sa.Column[Any]:
    if name not in table.c:
        raise RetentionError(
            f"{role} column {name!r} does not exist in table {table.name!r} of system"
            f" {src.system!r} (columns: {', '.join(table.c.keys())})"
        )
    return table.c[name]


def _unique_key(src: SqlSource, table: sa.Table) -> sa.Column[Any]:
    """The binding's primary key: the table's primary key, or a NOT NULL column with a unique
    constraint or (not partial) unique index of its own. A key two rows share would make
    recovery find a deleted record "present" (its twin) and settle a real deletion as rolled
    back, without evidence."""
    column = _column(src, table, src.primary_key, "primary key")
    alone = [column.name]
    unique = [
        [c.name for c in constraint.columns]
        for constraint in [*table.indexes, *table.constraints]
        if isinstance(constraint, sa.UniqueConstraint)
        or (isinstance(constraint, sa.Index) and constraint.unique and not _partial(constraint))
    ]
    if [c.name for c in table.primary_key.columns] != alone and (
        column.nullable or alone not in unique
    ):
        raise RetentionError(
            f"primary key column {column.name!r} of dataset {src.table!r} in system"
            f" {src.system!r} is not unique by itself: it must be the table's primary key, or"
            " NOT NULL with a unique constraint or unique index on exactly that column. Set"
            " primary_key to such a column, or add the constraint"
        )
    return column


def _partial(index: sa.Index) -> bool:
    """A partial index (PostgreSQL, SQLite ``WHERE``) makes only some rows unique."""
    return any(
        key.endswith("_where") and value is not None for key, value in index.dialect_kwargs.items()
    )


def _resolve_child(engine: Engine, src: SqlSource, child: SqlChild) -> ReflectedChild:
    table = _reflect(engine, src, child.table)
    return ReflectedChild(
        table=table,
        fk=_column(src, table, child.foreign_key, "foreign key"),
        pk=_column(src, table, child.primary_key, "child primary key"),
        children=tuple(_resolve_child(engine, src, c) for c in child.children),
    )


def resolve_dataset(src: SqlSource, engine: Engine, action: Action | None = None) -> SqlDataset:
    """Check every table and column the binding (and an anonymising action) names against the
    real database, and each masking strategy against its column's type."""
    table = _reflect(engine, src, src.table)
    marker: sa.Column[Any] | None = None
    masks: tuple[tuple[sa.Column[Any], MaskStrategy], ...] = ()
    if isinstance(action, AnonymiseAction):
        if src.children or src.objects:  # the catalogue refuses it; a binding made in code too
            raise RetentionError(
                f"dataset {src.table!r} of system {src.system!r} has child tables or linked"
                " files: anonymise does not reach them. Bind a dataset without them, or delete"
                " them with a rule of their own"
            )
        marker = _column(src, table, action.marker_column, "marker")
        masks = tuple(
            (_column(src, table, name, "anonymised"), spec) for name, spec in action.columns.items()
        )
        for column, spec in masks:
            spec.check_type(column.name, column.type)
    try:
        anchor_tz = pendulum.timezone(src.anchor_timezone)
    except Exception:  # pendulum raises several types for unknown zones
        raise RetentionError(
            f"anchor_timezone {src.anchor_timezone!r} is not a time zone"
        ) from None
    return SqlDataset(
        system=src.system,
        dataset=src.table,
        table=table,
        pk=_unique_key(src, table),
        lookups=tuple(
            _column(src, table, c.column, f"lookup ({c.kind})") for c in src.lookup_columns()
        ),
        children=tuple(_resolve_child(engine, src, c) for c in src.children),
        marker=marker,
        masks=masks,
        anchor_tz=anchor_tz,
        objects=tuple(_column(src, table, link.column, "object key") for link in src.objects),
    )


# ------------------------------------------------------------------------------------ predicates


@dataclass(frozen=True)
class _Predicates:
    expired: ColumnElement[bool]
    unknown: ColumnElement[bool]
    matched: ColumnElement[bool]
    cutoffs: tuple[str | None, ...]


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


def _floor_value(column: sa.Column[Any]) -> Any:
    """`ANCHOR_FLOOR` in the column's own terms (see `_cutoff_value`)."""
    if isinstance(column.type, sa.Date) and not isinstance(column.type, sa.DateTime):
        return ANCHOR_FLOOR.date()
    if getattr(column.type, "timezone", False):
        return ANCHOR_FLOOR.replace(tzinfo=dt.UTC)
    return ANCHOR_FLOOR


def _known(anchor: sa.Column[Any], dialect: str) -> ColumnElement[bool]:
    """The anchor holds a real date (never NULL): not before `ANCHOR_FLOOR` (MariaDB's zero
    date '0000-00-00', PostgreSQL's '-infinity' and BC dates are not), on MariaDB with no zero
    month or day ('2020-00-00'), on SQLite text that its date functions read as the date it
    starts with ('', '15/03/2031', a number, a time of day: not). Only the anchor column's own
    comparison stays index-friendly on PostgreSQL and MariaDB; the rest filters its rows."""
    parts = [anchor.is_not(None), anchor >= _floor_value(anchor)]
    if dialect == "mysql" and isinstance(anchor.type, sa.Date | sa.DateTime):
        parts += [sa.extract("month", anchor) != 0, sa.extract("day", anchor) != 0]
    elif dialect == "sqlite":
        parsed = sa.func.date(anchor)
        parts += [
            sa.func.typeof(anchor) == "text",
            parsed.is_not(None),
            parsed == sa.func.substr(anchor, 1, 10),
        ]
    return sa.and_(*parts)


def _when(case: RuleCase, ds: SqlDataset, dialect: str) -> ColumnElement[bool]:
    if case.when is None:
        return sa.true()
    column = ds.column(case.when.column, "condition")
    values = case.when.values
    cond = column == values[0] if case.when.one_of is None else column.in_(values)
    if dialect == "mysql" and all(isinstance(v, str) for v in values):
        # MariaDB compares text under the column's collation: 'REJECTED ' = 'rejected'. The
        # UTF-8 bytes decide (the collation's comparison above still narrows by index).
        as_bytes = sa.cast(sa.cast(column, mysql.CHAR(charset="utf8mb4")), sa.LargeBinary)
        exact = [sa.literal(str(v).encode(), sa.LargeBinary) for v in values]
        cond = sa.and_(cond, as_bytes.in_(exact))
    return cond


def _predicates(due: DueAt, ds: SqlDataset, dialect: str) -> _Predicates:
    """Per case: expired (a real anchor at or before the cutoff) and unknown (no real anchor:
    NULL, unless the rule reads NULL as pending, or a value that is no date, see `_known`)."""
    expired: list[ColumnElement[bool]] = []
    unknown: list[ColumnElement[bool]] = []
    cutoffs: list[str | None] = []
    for case in due.rules:
        if not case.rule.enforceable or case.anchor_column is None:
            cutoffs.append(None)
            continue
        anchor = ds.column(case.anchor_column, "anchor")
        cutoff = _cutoff_value(case, due.as_of, anchor, ds.anchor_tz)
        cutoffs.append(None if cutoff is None else cutoff.isoformat())
        known = _known(anchor, dialect)
        if case.rule.null_anchor_is_pending:
            unknown.append(sa.and_(_when(case, ds, dialect), anchor.is_not(None), sa.not_(known)))
        else:
            unknown.append(sa.and_(_when(case, ds, dialect), sa.not_(known)))
        if cutoff is not None:
            expired.append(sa.and_(_when(case, ds, dialect), known, anchor <= cutoff))
    return _Predicates(
        expired=sa.or_(*expired) if expired else sa.false(),
        unknown=sa.or_(*unknown) if unknown else sa.false(),
        matched=sa.or_(*(_when(case, ds, dialect) for case in due.rules)),
        cutoffs=tuple(cutoffs),
    )


def _bounds(ds: SqlDataset, selection: Selection) -> ColumnElement[bool]:
    lower, upper = key_bounds(selection)
    parts = []
    if lower is not None:
        parts.append(ds.pk > lower)
    if upper is not None:
        parts.append(ds.pk <= upper)
    return sa.and_(sa.true(), *parts)


def _sum(cond: ColumnElement[bool]) -> ColumnElement[Any]:
    return sa.func.coalesce(sa.func.sum(sa.case((cond, 1), else_=0)), 0)


# ------------------------------------------------------------------------------------ batches


@dataclass
class _Open:
    """A batch's open source transaction (its delete may be running on a worker already)."""

    no: int
    upper: Any
    where: ColumnElement[bool]
    conn: Connection
    started: Future[_Deleted] | None = None
    skipped: dict[Any, str] = field(default_factory=dict)
    kept: dict[str, set[str]] = field(default_factory=dict)  # link column -> file keys kept


# The DELETE ... RETURNING results (one per chunk of locked keys), their columns, the child
# row counts.
_Deleted = tuple[list[sa.CursorResult[Any]], list[sa.Column[Any]], dict[str, int]]


def _write_lock(conn: Connection, table: sa.Table) -> None:
    """On SQLite, make the open transaction the database's one writer now, with a write that
    changes nothing: SELECT ... FOR UPDATE is a plain SELECT there, so the rows it reads would
    stay open to other writers until the transaction's first change."""
    if conn.dialect.name == "sqlite":
        conn.execute(sa.delete(table).where(sa.false()))


def _lock(
    conn: Connection, ds: SqlDataset, columns: Sequence[sa.Column[Any]], cond: ColumnElement[bool]
) -> Sequence[sa.Row[Any]]:
    """The rows matching ``cond`` (``columns``, key first), locked until the transaction ends:
    they keep matching it, and a row another transaction is changing is waited for."""
    _write_lock(conn, ds.table)
    return conn.execute(sa.select(*columns).where(cond).with_for_update()).all()


def _key_chunks(keys: Sequence[Any]) -> Iterator[Sequence[Any]]:
    """``keys`` a statement at a time (SQLite allows 32,766 parameters, PostgreSQL 65,535)."""
    for start in range(0, len(keys), KEY_CHUNK):
        yield keys[start : start + KEY_CHUNK]


def _delete_children(
    conn: Connection,
    child: ReflectedChild,
    parent_keys: Sequence[Any] | sa.Select[Any],
    counts: dict[str, int],
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


def _chunks(
    result: sa.CursorResult[Any], columns: Sequence[sa.Column[Any]]
) -> Iterator[Sequence[Any]]:
    """The rows of a RETURNING result, a chunk at a time (memory stays flat per batch).

    On PostgreSQL and MariaDB, when no column needs a result processor, straight from the
    DBAPI cursor: building SQLAlchemy Row objects costs as much as the DELETE itself for large
    batches.
    """
    dialect = result.context.dialect
    cursor = result.cursor if dialect.name in ("postgresql", "mysql") else None
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


@dataclass
class _Digest:
    """A staged batch's rows, digested: count, packed references, subjects, held, file keys."""

    count: int = 0
    blob: bytearray = field(default_factory=bytearray)
    subjects: set[bytes] | None = None  # None: not read
    held: dict[Any, str] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=dict)
    kept: dict[str, set[str]] = field(default_factory=dict)  # link column -> file keys a
    # record left in the table still links: not deleted with this batch


@register("sql")
class SqlAdapter:
    """One table of a SQL system (see the module doc). ``after_lock``: a test hook called with
    the batch number inside the batch's transaction, after its rows are deleted or locked and
    before the holds are read."""

    kind: ClassVar[str] = "sql"

    def __init__(
        self,
        binding: SqlSource,
        key: bytes,
        connection: Engine | None = None,
        *,
        timeouts: SourceTimeouts | None = None,
        after_lock: Callable[[int], None] | None = None,
    ) -> None:
        if not isinstance(binding, SqlSource):
            raise RetentionError(f"the SQL adapter needs a 'sql' source, not {binding.kind!r}")
        if connection is None:
            from include.retention import connections

            connection = connections.source_engine(binding.conn_id)
        self.binding, self.engine, self.key = binding, connection, key
        self.system, self.dataset = binding.system, binding.table
        self.timeouts = timeouts or SourceTimeouts.from_env()
        self.after_lock = after_lock
        self.hasher = RecordRefHasher(key, self.system, self.dataset)
        self._matcher = SubjectMatcher(key, binding.lookup_columns())
        self._resolved: dict[str, SqlDataset] = {}
        self._counted: tuple[Selection, Counts] | None = None  # the last count, for its window
        self._kept: dict[str, set[str]] = {}  # link column -> file keys kept for a record left
        self._elsewhere: dict[str, sa.Table] = {}  # other tables linking into our buckets
        name_database(connection, f"the source database of system {binding.system!r}"
                                  f" ({binding.conn_id})")  # fmt: skip

    # -------------------------------------------------------------------- the protocol

    def resolve(self, action: Action | None = None) -> None:
        self.table_of(action)
        for link in self.binding.objects:  # the other tables linking into its buckets
            self._columns_elsewhere(link)

    def table_of(self, action: Action | None = None) -> SqlDataset:
        """The reflected table (with the action's columns checked), resolved once."""
        kind = action.kind if action is not None else "read"
        if kind not in self._resolved:
            self._resolved[kind] = resolve_dataset(self.binding, self.engine, action)
        return self._resolved[kind]

    def count(self, selection: Selection, action: Action, holds: ActiveHolds) -> Counts:
        ds = self.table_of(action)
        base = base_selection(selection)
        bounds = _bounds(ds, selection)
        marker_set = sa.false() if ds.marker is None else ds.marker.is_not(None)
        in_scope = sa.not_(marker_set) if ds.marker is not None else sa.true()
        with self.engine.connect() as conn:
            limit(conn, self.timeouts)
            if isinstance(base, DueAt):
                counts = self._count_due(conn, ds, base, bounds, marker_set, in_scope)
            else:
                total = conn.execute(sa.select(sa.func.count()).where(bounds).select_from(ds.table))
                keys = self._subject_keys(conn, ds, base, bounds)
                counts = Counts(total=int(total.scalar() or 0), selected=len(keys))
            selected = self._selected(conn, ds, selection, action)
            kinds = list(self._held_kinds(conn, ds, selected, holds).values())
        counts = replace(
            counts, held=kinds.count("legal_hold"), restricted=kinds.count("restriction")
        )
        self._counted = (selection, counts)
        return counts

    def partitions(self, selection: Selection, size: int) -> list[KeyRange]:
        if size < 1:
            raise RetentionError("a partition needs at least one record")
        ds = self.table_of()
        lower, upper = key_bounds(selection)
        uppers: list[Any] = []
        last = lower
        with self.engine.connect() as conn:
            limit(conn, self.timeouts)
            while True:
                query = sa.select(ds.pk).where(_bounds(ds, KeyRange(base_selection(selection),
                                                                     last, upper)))  # fmt: skip
                # The partition's last key, and whether any key follows it.
                found = conn.execute(query.order_by(ds.pk).offset(size - 1).limit(2)).scalars()
                bound, *after = found.all() or [None]
                if not after or (upper is not None and bound >= upper):
                    break
                uppers.append(_json_key(bound))
                last = bound
        return key_ranges(selection, uppers)

    def batches(
        self, selection: Selection, action: Action, holds: HoldReader, size: int
    ) -> Iterator[Batch]:
        ds = self.table_of(action)
        with self.engine.connect() as conn:
            cond = self._selected(conn, ds, selection, action)
        counted = self._counted[1] if self._counted and self._counted[0] == selection else None
        window = _window(size, counted) if counted else size
        pool = ThreadPoolExecutor(max_workers=1) if self._pipelined(action) else None
        state = _Walk(ds, action, cond, window, holds, pool, stop=key_bounds(selection)[1])
        current: _Open | None = self._open(state, 1, key_bounds(selection)[0])
        try:
            while current is not None:
                if pool is not None and current.upper is not None:
                    state.ahead = self._open(state, current.no + 1, current.upper)
                yield self._stage(state, current)
                current.conn.close()
                if state.ahead is None and current.upper is not None:
                    state.ahead = self._open(state, current.no + 1, current.upper)
                current, state.ahead = state.ahead, None
        finally:
            for batch in (current, state.ahead):
                if batch is not None and not batch.conn.closed:
                    _discard(batch)
            if pool is not None:
                pool.shutdown(wait=True)

    def redo(self, batch: Batch, holds: HoldReader) -> Batch:
        walk, opened = batch.state
        walk.hold_back()
        opened.conn.begin()
        limit(opened.conn, self.timeouts)
        walk.holds = holds
        return self._stage(walk, opened)

    def apply(self, batch: Batch) -> Applied:
        # If this commit fails the prepared entry stays pending and recovery settles it.
        opened: _Open = batch.state[1]
        opened.conn.commit()
        for column, gone in batch.linked.items():  # deleted with this batch's records
            self._kept.get(column, set()).difference_update(gone)
        for column, keys in opened.kept.items():  # for `kept_files`, once committed
            self._kept.setdefault(column, set()).update(keys)
        return Applied(refs=batch.refs)

    def abandon(self, batch: Batch) -> None:
        batch.state[1].conn.rollback()

    def present(
        self, refs: AbstractSet[bytes], action: Action, within: Selection | None = None,
        judged_through: JudgedThrough | None = None,
    ) -> set[bytes]:  # fmt: skip
        """``judged_through`` is ignored: a row does not say when it was written."""
        ds = self.table_of(action)
        query = sa.select(ds.pk)
        if within is not None:
            query = query.where(_bounds(ds, within))
        if ds.marker is not None:
            query = query.where(ds.marker.is_not(None))
        return self._locked_refs(query, refs)

    def read(self, selection: Selection) -> Iterator[Record]:
        """The selected records in key order, each with its rows of the binding's child tables
        under the child table's name (a list, in key order; grandchildren nested alike)."""
        ds = self.table_of()
        with self.engine.connect() as conn, self.engine.connect() as children:
            limit(conn, self.timeouts)
            limit(children, self.timeouts)  # a second connection: the records are streamed
            cond = self._selected(conn, ds, selection, None)
            result = conn.execution_options(yield_per=FETCH_CHUNK).execute(
                sa.select(ds.table).where(cond).order_by(ds.pk)
            )
            for chunk in result.partitions():
                records = [dict(row._mapping) for row in chunk]
                _with_children(children, ds.children, records, ds.pk.name)
                yield from records

    def fields_to_update(self, values: Mapping[str, Any]) -> dict[str, Any]:
        ds = self.table_of()
        lookups = {column: kind for kind, column in self.binding.lookup_columns()}
        fixed = {ds.pk.name, *(c.name for c in ds.objects)}
        checked: dict[str, Any] = {}
        problems = []
        for name in sorted(set(values) & set(ds.table.c.keys())):
            if name in fixed:
                problems.append(
                    f"field {name!r} keys the record or names its person: it cannot be"
                    " rectified through the form"
                )
                continue
            try:
                if name in lookups:
                    for_lookup(name, lookups[name], values[name])
                checked[name] = for_column(name, values[name], ds.table.c[name])
            except RetentionError as exc:
                problems.append(str(exc))
        if problems:
            raise RetentionError(f"table {ds.dataset!r} of system {ds.system!r}: "
                                 + "; ".join(problems))  # fmt: skip
        return checked

    def update(
        self, selection: Selection, values: Mapping[str, Any], holds: HoldReader,
        prepare: Prepare,
    ) -> Updated:  # fmt: skip
        """One transaction: lock the selected rows, read the holds, update the others, call
        ``prepare``, commit."""
        ds = self.table_of()
        with self.engine.connect() as conn:  # (a scan by subject streams its connection)
            cond = self._selected(conn, ds, selection, None)
        with self.engine.connect() as conn, conn.begin():
            limit(conn, self.timeouts)
            locked = _lock(conn, ds, [ds.pk, *ds.lookups], cond)
            refs = self.hasher.refs(row[0] for row in locked)
            subjects = self._subjects(ds, locked)
            held = self._kinds(holds(), locked, refs, subjects)
            keys = [row[0] for row in locked if row[0] not in held]
            if keys and values:
                conn.execute(sa.update(ds.table).where(ds.pk.in_(keys)).values(**values))
            kinds = list(held.values())
            changing = [row[0] not in held for row in locked]
            updated = Updated(
                refs=[ref for ref, change in zip(refs, changing, strict=True) if change],
                skipped={kind: kinds.count(kind) for kind in set(kinds)},
                subjects=frozenset().union(*(
                    sub for sub, change in zip(subjects, changing, strict=True) if change
                )),
            )  # fmt: skip
            prepare(updated)  # raising rolls the update back
        return updated

    def holding(self, refs: AbstractSet[bytes], values: Mapping[str, Any]) -> set[bytes]:
        """The database narrows by the values (its collation may ignore case or trailing
        spaces), Python compares them exactly."""
        ds = self.table_of()
        columns = [ds.table.c[name] for name in sorted(values)]
        query = sa.select(ds.pk, *columns).where(*(c == values[c.name] for c in columns))
        return self._locked_refs(
            query, refs, lambda row: all(row[i] == values[c.name] for i, c in enumerate(columns, 1))
        )

    def _locked_refs(
        self, query: sa.Select[Any], refs: AbstractSet[bytes],
        keep: Callable[[Any], bool] = lambda row: True,
    ) -> set[bytes]:  # fmt: skip
        """Of ``refs``, those of the rows ``query`` (key first) returns that ``keep`` accepts,
        read under share locks: a change still being committed is waited for."""
        found: set[bytes] = set()
        with self.engine.connect() as conn:
            limit(conn, self.timeouts)
            result = conn.execution_options(yield_per=SCAN_CHUNK).execute(
                query.with_for_update(read=True)
            )
            for chunk in result.partitions():
                kept = [row for row in chunk if keep(row)]
                found.update(r for r in self.hasher.refs(row[0] for row in kept) if r in refs)
            conn.rollback()
        return found

    def kept_files(self) -> dict[str, dict[str, bool]]:
        """The files this adapter's committed batches kept because a record left in the table
        still linked them: link column -> {object key: whether a record links it now}. A
        record that another transaction was deleting at the time may be gone since. Read
        from committed state; forgets what it kept."""
        kept, self._kept = self._kept, {}
        if not kept:
            return {}
        ds = self.table_of()
        found: dict[str, dict[str, bool]] = {}
        with self.engine.connect() as conn:
            limit(conn, self.timeouts)
            for columns, elsewhere in self._links_by_bucket(ds):
                keys = sorted({k for c in columns for k in kept.get(c.name, ())})
                linked = self._still_linked(conn, [*columns, *elsewhere], keys)
                for c in columns:
                    if c.name in kept:
                        found[c.name] = {k: k in linked for k in sorted(kept[c.name])}
        return found

    def close(self) -> None:
        """The engine belongs to whoever made it (the connection registry or the caller)."""

    # -------------------------------------------------------------------- selections

    def _count_due(
        self, conn: Connection, ds: SqlDataset, due: DueAt, bounds: ColumnElement[bool],
        marker_set: ColumnElement[bool], in_scope: ColumnElement[bool],
    ) -> Counts:  # fmt: skip
        preds = _predicates(due, ds, conn.dialect.name)
        query = (
            sa.select(
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
                sa.func.coalesce(
                    sa.func.sum(sa.case((preds.matched, 0), (in_scope, 1), else_=0)), 0
                ),
            )
            .select_from(ds.table)
            .where(bounds)
        )
        total, anonymised, expired, unknown, unmatched = (int(v) for v in conn.execute(query).one())
        return Counts(
            total=total, selected=expired, anchor_unknown=unknown,
            kept=total - anonymised - expired - unknown - unmatched, out_of_scope=unmatched,
            already_anonymised=anonymised, cutoffs=preds.cutoffs,
        )  # fmt: skip

    def _subject_keys(
        self, conn: Connection, ds: SqlDataset, of: OfSubject, bounds: ColumnElement[bool]
    ) -> list[Any]:
        """Keys of the subject's records: the lookup columns are normalised and hashed here
        (the reference is keyed and the normal forms need parsing: the database cannot)."""
        if not ds.lookups:
            raise RetentionError(
                f"table {ds.dataset!r} of system {ds.system!r} has no lookup column: its"
                " records cannot be selected by data subject (set source.lookup)"
            )
        present = sa.or_(*(column.is_not(None) for column in ds.lookups))
        result = conn.execution_options(yield_per=SCAN_CHUNK).execute(
            sa.select(ds.pk, *ds.lookups).where(bounds, present)
        )
        keys = []
        for chunk in result.partitions():
            refs = self._matcher.row_refs(chunk, 1)
            keys += [row[0] for row, mine in zip(chunk, refs, strict=True) if of.matches(mine)]
        return keys

    def _selected(
        self, conn: Connection, ds: SqlDataset, selection: Selection, action: Action | None
    ) -> ColumnElement[bool]:
        """The WHERE clause of the records ``selection`` picks (anonymised rows never again)."""
        base, bounds = base_selection(selection), _bounds(ds, selection)
        if isinstance(base, DueAt):
            cond = sa.and_(bounds, _predicates(base, ds, conn.dialect.name).expired)
        else:
            cond = sa.and_(bounds, ds.pk.in_(self._subject_keys(conn, ds, base, bounds)))
        if isinstance(action, AnonymiseAction) and ds.marker is not None:
            cond = sa.and_(ds.marker.is_(None), cond)
        return cond

    # -------------------------------------------------------------------- holds

    def _subjects(self, ds: SqlDataset, rows: Sequence[Any]) -> list[frozenset[bytes]]:
        """Per row (pk, then the lookup columns), the references of its lookup values."""
        return self._matcher.row_refs(rows, 1) if ds.lookups else [frozenset()] * len(rows)

    @staticmethod
    def _kinds(holds: ActiveHolds, rows: Sequence[Any], refs: Sequence[bytes],
               subjects: Sequence[frozenset[bytes]]) -> dict[Any, str]:  # fmt: skip
        """pk -> 'legal_hold' | 'restriction' for the held rows (pk first in each row);
        ``subjects``: per row, the references of its lookup values."""
        if holds.empty:
            return {}
        held: dict[Any, str] = {}
        for row, ref, mine in zip(rows, refs, subjects, strict=True):
            kind = holds.kind_for(ref, mine)
            if kind:
                held[row[0]] = kind
        return held

    def _held_kinds(
        self, conn: Connection, ds: SqlDataset, cond: ColumnElement[bool], holds: ActiveHolds
    ) -> dict[Any, str]:
        """pk -> hold kind for the rows matching ``cond`` that are held or restricted."""
        if holds.empty:
            return {}
        kinds: dict[Any, str] = {}
        result = conn.execution_options(yield_per=SCAN_CHUNK).execute(
            sa.select(ds.pk, *ds.lookups).where(cond)
        )
        for chunk in result.partitions():
            refs = self.hasher.refs(row[0] for row in chunk)
            subjects = self._subjects(ds, chunk) if holds.subjects else [frozenset()] * len(chunk)
            kinds.update(self._kinds(holds, chunk, refs, subjects))
        return kinds

    def due_and_unheld(
        self, due: DueAt, action: Action, holds: ActiveHolds
    ) -> tuple[sa.Select[Any], int]:
        """A query of the keys ``due`` selects that are under no hold or restriction (after a
        completed run there must be none), and how many selected records are held."""
        ds = self.table_of(action)
        with self.engine.connect() as conn:
            cond = self._selected(conn, ds, due, action)
            held = self._held_kinds(conn, ds, cond, holds)
        query = sa.select(ds.pk).where(cond)
        if held:
            query = query.where(ds.pk.not_in(sorted(held)))
        return query, len(held)

    # -------------------------------------------------------------------- staging

    def _pipelined(self, action: Action) -> bool:
        """Delete batch n+1 on a worker thread while batch n is hashed, logged and committed.

        The ranges are disjoint, so with row locks only (PostgreSQL; MariaDB and MySQL in READ
        COMMITTED, which takes no gap locks) the two open transactions never wait for each other;
        a batch that deletes again first rolls back the one ahead (`_Walk.hold_back`). Not on
        SQLite (one writer), and not for anonymisation (which locks before it changes anything).
        """
        return action.kind == "delete" and self.engine.dialect.name in PIPELINED_DIALECTS

    def _open(self, walk: _Walk, no: int, last: Any) -> _Open:
        conn = self.engine.connect()
        if walk.pool is not None and self.engine.dialect.name == "mysql":
            # REPEATABLE READ (the default) locks the gap past a range's end, up to the next
            # batch's first row: that batch's DELETE would wait until this one commits.
            conn = conn.execution_options(isolation_level="READ COMMITTED")
        try:
            conn.begin()
            limit(conn, self.timeouts)
            upper = _next_upper(walk, conn, last)
        except BaseException:
            conn.close()
            raise
        opened = _Open(no, upper, _range(walk, last, upper), conn)
        if walk.pool is not None:
            opened.started = walk.pool.submit(self._delete_rows, walk, conn, opened.where)
        return opened

    def _stage(self, walk: _Walk, opened: _Open) -> Batch:
        if isinstance(walk.action, AnonymiseAction):
            return self._stage_anonymise(walk, opened)
        return self._stage_delete(walk, opened)

    def _delete_rows(self, walk: _Walk, conn: Connection, cond: ColumnElement[bool]) -> _Deleted:
        """Children first, then the records; returns the unread RETURNING (pk, lookup columns,
        object keys) results, their columns and the child row counts.

        With child tables the records are locked first and their children deleted by exactly
        those keys: a record that stopped matching ``cond`` in between would lose its
        children but live on (a sub-select locks no parent)."""
        children: dict[str, int] = {}
        ds = walk.ds
        returned = [ds.pk, *ds.lookups, *ds.objects]
        if not ds.children:  # one statement: each row is judged as it is deleted
            stmt = sa.delete(ds.table).where(cond).returning(*returned)
            return [conn.execute(stmt)], returned, children
        keys = [row[0] for row in _lock(conn, ds, [ds.pk], cond)]
        results = []
        for chunk in _key_chunks(keys):
            for child in ds.children:
                _delete_children(conn, child, chunk, children)
            stmt = sa.delete(ds.table).where(cond, ds.pk.in_(chunk)).returning(*returned)
            results.append(conn.execute(stmt))
        return results, returned, children

    def _stage_delete(self, walk: _Walk, opened: _Open) -> Batch:
        """Delete the batch (children first); if a record turns out held, redo without it."""
        conn, ds = opened.conn, walk.ds
        skipped = opened.skipped
        for attempt in range(MAX_HOLD_RETRIES):
            if opened.started is not None:
                results, returned, children = opened.started.result()
                opened.started = None
            else:
                cond = _excluding(ds, opened.where, skipped)
                results, returned, children = self._delete_rows(walk, conn, cond)
            if self.after_lock and attempt == 0:
                self.after_lock(opened.no)
            holds = walk.holds()
            rows = chain.from_iterable(_chunks(result, returned) for result in results)
            digest = self._digest(ds, holds, rows)
            if not digest.held:
                self._keep_shared_files(conn, ds, digest)
                return self._batch(opened, walk, digest, holds, children)
            skipped.update(digest.held)
            for result in results:
                result.close()
            conn.rollback()
            walk.hold_back()
            conn.begin()
            limit(conn, self.timeouts)
            log.info("batch %s: held records found after locking; redoing without them", opened.no)
        raise RetentionError(
            f"batch {opened.no}: holds kept changing; gave up after {MAX_HOLD_RETRIES} tries"
        )

    def _digest(
        self, ds: SqlDataset, holds: ActiveHolds, chunks: Iterable[Sequence[Any]]
    ) -> _Digest:
        """Count the rows (pk, lookup columns, object keys), pack their references, find the
        held ones, collect the subjects (of every lookup column) and the object keys of the
        linked files."""
        digest = _Digest(keys={c.name: [] for c in ds.objects})
        digest.subjects = set() if ds.lookups else None
        first_key = 1 + len(ds.lookups)
        for chunk in chunks:
            blob = self.hasher.packed(map(itemgetter(0), chunk))
            digest.count += len(chunk)
            digest.blob += blob
            if not holds.empty:
                subjects = self._subjects(ds, chunk)
                digest.held.update(self._kinds(holds, chunk, PackedRefs(blob), subjects))
            if digest.subjects is not None:  # the batch's distinct subjects, not per row
                digest.subjects.update(self._matcher.distinct_refs(chunk, 1))
            for i, column in enumerate(ds.objects, start=first_key):
                digest.keys[column.name].extend(str(row[i]) for row in chunk if row[i] is not None)
        return digest

    def _keep_shared_files(self, conn: Connection, ds: SqlDataset, digest: _Digest) -> None:
        """A file goes with the last record linking it: drop from the batch's file keys those
        that a record left in the table still links to (held, not yet due, in a later batch;
        the batch's own rows are deleted in this transaction), and each key's repeats. The
        dropped ones are remembered for `kept_files` when the batch commits.

        Per bucket, over every link column to it. A linked column without an index makes
        this a scan of the table per batch."""
        for columns, elsewhere in self._links_by_bucket(ds):
            keys = {k for c in columns for k in digest.keys.get(c.name, ())}
            linked = self._still_linked(conn, [*columns, *elsewhere], sorted(keys))
            for c in columns:
                mine = dict.fromkeys(digest.keys[c.name])
                digest.kept[c.name] = {k for k in mine if k in linked}
                digest.keys[c.name] = [k for k in mine if k not in linked]

    def _links_by_bucket(
        self, ds: SqlDataset
    ) -> list[tuple[list[sa.Column[Any]], list[sa.Column[Any]]]]:
        """Per bucket (and connection) the table's link columns point into: those columns,
        and the columns of the system's other tables that link files there too."""
        groups: dict[tuple[str, str], tuple[list[sa.Column[Any]], list[sa.Column[Any]]]] = {}
        for link, column in zip(self.binding.objects, ds.objects, strict=True):
            bucket = (link.conn_id, link.bucket)
            if bucket not in groups:
                groups[bucket] = ([], self._columns_elsewhere(link))
            groups[bucket][0].append(column)
        return list(groups.values())

    def _columns_elsewhere(self, link: ObjectLink) -> list[sa.Column[Any]]:
        """The reflected link columns of the system's other tables into ``link``'s bucket."""
        found = []
        for table, column in self.binding.linked_elsewhere(link):
            if table not in self._elsewhere:
                self._elsewhere[table] = _reflect(self.engine, self.binding, table)
            found.append(_column(self.binding, self._elsewhere[table], column, "linked file"))
        return found

    @staticmethod
    def _still_linked(conn: Connection, columns: list[sa.Column[Any]], keys: list[str]) -> set[str]:
        """Which of ``keys`` a row of the columns' tables links (one query per table)."""
        by_table: dict[sa.Table, list[sa.Column[Any]]] = {}
        for c in columns:
            by_table.setdefault(c.table, []).append(c)
        found: set[str] = set()
        for start in range(0, len(keys), LINK_CHUNK):
            chunk = keys[start : start + LINK_CHUNK]
            for cols in by_table.values():
                query = sa.select(*cols).where(sa.or_(*(c.in_(chunk) for c in cols)))
                found.update(str(v) for row in conn.execute(query) for v in row if v is not None)
        return found & set(keys)

    def _batch(
        self, opened: _Open, walk: _Walk, digest: _Digest, holds: ActiveHolds,
        children: dict[str, int],
    ) -> Batch:  # fmt: skip
        kinds = list(opened.skipped.values())
        opened.kept = digest.kept
        kept = sum(map(len, digest.kept.values()))
        return Batch(
            no=opened.no, refs=PackedRefs(bytes(digest.blob)), holds=holds,
            subjects=frozenset(digest.subjects or ()),  # no subject column: none
            skipped={k: kinds.count(k) for k in ("legal_hold", "restriction") if k in kinds},
            counts={f"children.{name}": n for name, n in children.items()}
            | ({"objects_still_linked": kept} if kept else {}),
            linked={name: keys for name, keys in digest.keys.items() if keys},
            state=(walk, opened),
        )  # fmt: skip

    def _stage_anonymise(self, walk: _Walk, opened: _Open) -> Batch:
        """Lock the batch's rows, drop the held ones, then UPDATE exactly the others (by key,
        the rule checked again); all of them or none."""
        conn, ds = opened.conn, walk.ds
        cols = [ds.pk, *ds.lookups]
        for attempt in range(MAX_HOLD_RETRIES):
            locked = _lock(conn, ds, cols, opened.where)
            if self.after_lock and attempt == 0:
                self.after_lock(opened.no)
            holds = walk.holds()
            refs = self.hasher.refs(r[0] for r in locked)
            held = self._kinds(holds, locked, refs, self._subjects(ds, locked))
            opened.skipped = held
            rows = [row for row in locked if row[0] not in held]
            values = walk.values(self.engine.dialect.name, self.key)
            updated = 0
            for chunk in _key_chunks([row[0] for row in rows]):
                stmt = sa.update(ds.table).where(opened.where, ds.pk.in_(chunk)).values(values)
                updated += conn.execute(stmt).rowcount
            if updated == len(rows):
                digest = self._digest(ds, ActiveHolds(), [rows])
                return self._batch(opened, walk, digest, holds, {})
            conn.rollback()  # a locked row changed after all: never expected
            conn.begin()
            limit(conn, self.timeouts)
        raise RetentionError(
            f"batch {opened.no}: rows kept changing; gave up after {MAX_HOLD_RETRIES} tries"
        )


@dataclass
class _Walk:
    """One walk of a selection's batches: the table, the action, the WHERE and the window."""

    ds: SqlDataset
    action: Action
    cond: ColumnElement[bool]
    window: int
    holds: HoldReader
    pool: ThreadPoolExecutor | None
    stop: Any = None  # the selection's upper key bound
    ahead: _Open | None = None  # the next batch, its delete already running (pipelined)
    _values: dict[str, Any] | None = None

    def hold_back(self) -> None:
        """Roll back the batch opened ahead (it is opened again when its turn comes), before
        a batch deletes again: MariaDB locks the row past a range's end, so the redo would wait
        for the batch ahead, which commits only after this one."""
        if self.ahead is not None:
            _discard(self.ahead)
            self.ahead = None

    def values(self, dialect: str, key: bytes) -> dict[str, Any]:
        """The anonymising UPDATE's SET clause (the same for every batch of the walk)."""
        if self._values is None:
            if self.ds.marker is None:
                raise RetentionError(
                    f"table {self.ds.dataset!r}: anonymisation needs a marker column"
                )
            mkey = mask_key(key)
            values = {c.name: spec.to_sql(c, dialect, mkey) for c, spec in self.ds.masks}
            values[self.ds.marker.name] = _marker_value(self.ds.marker, dt.datetime.now(dt.UTC))
            self._values = values
        return self._values


def _excluding(ds: SqlDataset, where: ColumnElement[bool], held: Iterable[Any]) -> Any:
    held = list(held)
    return where if not held else sa.and_(where, ds.pk.not_in(held))


def _next_upper(walk: _Walk, conn: Connection, last: Any) -> Any:
    """Upper pk bound of the next batch (None: the rest of the selection).

    The window counts table rows, not due rows: an index-only keyset scan of the primary key,
    far cheaper than filtering by the rule. It spans ``batch_size`` divided by the share of due
    rows (at most MAX_WINDOW_FACTOR times ``batch_size``), so a batch holds about ``batch_size``
    due records and never more than its window.
    """
    pk = walk.ds.pk
    query = sa.select(pk)
    if last is not None:
        query = query.where(pk > last)
    if walk.stop is not None:
        query = query.where(pk <= walk.stop)
    query = query.order_by(pk).offset(walk.window - 1).limit(1)
    return conn.execute(query).scalar()


def _window(batch_size: int, counts: Counts) -> int:
    due = max(counts.selected, 1)
    factor = min(MAX_WINDOW_FACTOR, max(1, round(counts.total / due)))
    return batch_size * factor


def _range(walk: _Walk, last: Any, upper: Any) -> ColumnElement[bool]:
    parts = [walk.cond]
    if last is not None:
        parts.append(walk.ds.pk > last)
    if upper is not None:
        parts.append(walk.ds.pk <= upper)
    return sa.and_(*parts)


def _discard(opened: _Open) -> None:
    """Roll back a batch that will not be finished (the run stopped before it, or a redo
    holds it back)."""
    if opened.started is not None:
        try:
            opened.started.result()
        except Exception:  # the run is failing already; this batch changes nothing
            log.debug("discarded batch %s failed", opened.no)
    opened.conn.close()


def _with_children(
    conn: Connection, children: Sequence[ReflectedChild], records: list[dict[str, Any]], key: str
) -> None:
    """Add to each of ``records`` (rows whose key column is ``key``) its child rows."""
    keys = [record[key] for record in records]
    for child in children:
        name = child.table.name
        rows: list[dict[str, Any]] = []
        if keys:
            query = sa.select(child.table).where(child.fk.in_(keys)).order_by(child.pk)
            rows = [dict(row._mapping) for row in conn.execute(query)]
        _with_children(conn, child.children, rows, child.pk.name)
        by_parent: dict[Any, list[dict[str, Any]]] = {}
        for row in rows:
            by_parent.setdefault(row[child.fk.name], []).append(row)
        for record in records:
            if name in record:
                raise RetentionError(
                    f"child table {name!r} has the name of a column of its parent row: rename"
                    " one of them to read the records with their child rows"
                )
            record[name] = by_parent.get(record[key], [])


def _json_key(value: Any) -> Key:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise RetentionError(
            f"primary key values of type {type(value).__name__} cannot bound a partition"
            " (integer or text keys only)"
        )
    return value
