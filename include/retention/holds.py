"""The register of legal holds and Art. 18 restrictions, in the control database.

A hold is scoped either to a data subject (by the pseudonymous reference of the subject
identifier) or to one record (by the record reference the ledger uses), so the register
itself holds no raw personal data. Held records are never deleted or anonymised; the engine
reads the active holds afresh inside every deleting transaction, and again after the batch's
write-ahead evidence; placing a hold waits for the batches of running enforcements that were
already past that second check (`leases.wait_for_in_flight`), so a hold placed at any moment
is honoured.

Every placement and release is also chained into the ledger (``hold_placed``/``hold_released``)
in the same transaction: :meth:`HoldRegister.verify` replays that evidence against the rows,
so a hold deleted, edited or released behind the register's back is reported.

A hold also records the catalogue binding it was placed on: a record hold its dataset's key
column(s), a subject hold the lookup columns of every dataset. A catalogue edit
that would make an active hold match nothing (a renamed system, table or bucket, a changed
primary key, a removed or renamed lookup column) is refused by :func:`check_catalogue`, at
validation and at the start of every task, with a message naming the holds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from include.retention.catalogue import (
    Catalogue,
    LookupColumn,
    S3Source,
    check_dataset_name,
    check_system_name,
    load_valid,
)
from include.retention.errors import RetentionError
from include.retention.leases import InFlight, wait_for_in_flight
from include.retention.ledger import Ledger
from include.retention.pseudonym import RecordRefHasher, SubjectRefHasher, check_key, hmac_hex

log = logging.getLogger(__name__)

HoldKind = Literal["legal_hold", "restriction"]
HOLD_KINDS: tuple[str, ...] = ("legal_hold", "restriction")
MAX_REASON = 2000
MAX_NAME = 200
LISTED = 20  # holds named in one error message
# The key of a bucket's records is the object key itself: no catalogue edit can change it.
BINDING_FIELDS = ("key_columns", "subject_columns")

metadata = sa.MetaData()

holds_table = sa.Table(
    "retention_holds",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("scope", sa.String(16), nullable=False),  # subject | record
    sa.Column("kind", sa.String(16), nullable=False),  # legal_hold | restriction
    sa.Column("subject_ref", sa.LargeBinary(32), nullable=True),
    sa.Column("system", sa.String(200), nullable=True),
    sa.Column("dataset", sa.String(200), nullable=True),
    sa.Column("record_ref", sa.LargeBinary(32), nullable=True),
    # The binding the hold was placed on (NULL: placed before bindings were recorded, or on a
    # dataset no activity bound): comma-separated key columns; JSON {"system/dataset": [column]}.
    sa.Column("key_columns", sa.String(400), nullable=True),
    sa.Column("subject_columns", sa.Text, nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("placed_by", sa.String(200), nullable=False),
    sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("released_by", sa.String(200), nullable=True),
    sa.Index("ix_retention_holds_active", "released_at", "scope"),
)


@dataclass(frozen=True)
class ActiveHolds:
    """Active holds relevant to one dataset, keyed by reference; value = the set of kinds."""

    subjects: dict[bytes, frozenset[str]] = field(default_factory=dict)
    records: dict[bytes, frozenset[str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.subjects and not self.records

    def kind_for(self, record_ref: bytes, subject_refs: Iterable[bytes] = ()) -> str | None:
        """'legal_hold' if any legal hold covers the record, else 'restriction' or None.
        ``subject_refs``: the references of the record's lookup values (any may be held)."""
        kinds = set(self.records.get(record_ref, ()))
        for subject_ref in subject_refs:
            kinds |= self.subjects.get(subject_ref, frozenset())
        if "legal_hold" in kinds:
            return "legal_hold"
        return "restriction" if kinds else None


def _now() -> datetime:
    return datetime.now(UTC)


def _check_kind(kind: str) -> None:
    if kind not in HOLD_KINDS:
        raise RetentionError(f"hold kind {kind!r} is not one of {', '.join(HOLD_KINDS)}")


def _merge(target: dict[bytes, frozenset[str]], ref: bytes, kind: str) -> None:
    target[ref] = target.get(ref, frozenset()) | {kind}


def _check_text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RetentionError(f"a hold needs {name} (non-empty text)")
    if len(value) > limit or any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise RetentionError(f"{name} must be at most {limit} characters without control codes")
    return value


def _check_value(name: str, value: Any) -> None:
    if value is None or isinstance(value, bool) or value == "" or value == ():
        raise RetentionError(f"a hold needs the {name}; got {value!r}")


def _utc(moment: datetime | None) -> datetime:
    """A time to store: UTC (a zone-less column keeps it unambiguous); default now."""
    if moment is None:
        return _now()
    if moment.tzinfo is None:
        raise RetentionError(f"{moment.isoformat()} has no time zone; give an aware time")
    return moment.astimezone(UTC)


def _stamp(moment: datetime | None) -> str | None:
    """A time as evidence compares it: UTC, whole seconds (some databases drop fractions)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class HoldVerifyReport:
    """The hold register checked against its chained evidence in the ledger."""

    ok: bool
    holds: int
    problems: list[str]


@dataclass(frozen=True)
class Binding:
    """How the catalogue identifies the records of one dataset and their data subject."""

    key_columns: tuple[str, ...]
    lookup: tuple[LookupColumn, ...]  # (): the binding names no subject

    def lookup_text(self) -> list[str]:
        """The lookup columns as a subject hold records them: ``kind:column``."""
        return [f"{c.kind}:{c.column}" for c in self.lookup]


def bindings_of(catalogue: Catalogue) -> dict[tuple[str, str], set[Binding]]:
    """Every (system, dataset) the catalogue binds, whether or not an activity refers to it,
    with how each binding (and each activity's source, where one given in code differs) names
    its records."""
    found: dict[tuple[str, str], set[Binding]] = {}
    for src in [*catalogue.bindings.values(), *(activity.source for activity in catalogue)]:
        for hold_key in src.hold_keys():
            found.setdefault((src.system, hold_key.dataset), set()).add(
                Binding(hold_key.key_columns, hold_key.lookup)
            )
    return found


def _dataset_name(system: str, dataset: str) -> str:
    return f"{system}/{dataset}"


def subject_columns_of(catalogue: Catalogue) -> dict[str, list[str]]:
    """What a subject hold records: per dataset that names subjects, its lookup columns
    (``kind:column``)."""
    columns = {
        _dataset_name(*dataset): sorted({c for b in bindings for c in b.lookup_text()})
        for dataset, bindings in bindings_of(catalogue).items()
    }
    return {name: cols for name, cols in sorted(columns.items()) if cols}


def _still_bound(placed: str, now: list[str]) -> bool:
    """Whether a lookup column a hold was placed on is still one (holds placed before lookup
    kinds were recorded name the column only)."""
    return placed in now if ":" in placed else placed in {c.split(":", 1)[1] for c in now}


def _key_text(columns: Iterable[str]) -> str:
    return ",".join(columns)


def _active_holds(engine: Engine) -> list[dict[str, Any]]:
    t = holds_table
    query = sa.select(
        t.c.id, t.c.scope, t.c.kind, t.c.system, t.c.dataset, t.c.key_columns,
        t.c.subject_columns, t.c.placed_by, t.c.placed_at,
    ).where(t.c.released_at.is_(None)).order_by(t.c.id)  # fmt: skip
    if not sa.inspect(engine).has_table(t.name):
        return []  # a new control database: no holds yet
    with engine.connect() as conn:
        return [row._asdict() for row in conn.execute(query)]


def _record_problem(
    hold: dict[str, Any], bindings: Mapping[tuple[str, str], set[Binding]]
) -> str | None:
    current = bindings.get((hold["system"], hold["dataset"]))
    if current is None:
        return "matches no dataset of the catalogue"
    keys = sorted({_key_text(b.key_columns) for b in current})
    if hold["key_columns"] is not None and keys != [hold["key_columns"]]:
        return (
            f"was placed on key ({hold['key_columns']}); the catalogue now binds key"
            f" ({' | '.join(keys)})"
        )
    return None


def _subject_problem(
    hold: dict[str, Any], bindings: Mapping[tuple[str, str], set[Binding]]
) -> str | None:
    if hold["subject_columns"] is None:
        return None
    placed_on: dict[str, list[str]] = json.loads(hold["subject_columns"])
    current = {_dataset_name(*dataset): b for dataset, b in bindings.items()}
    changed = []
    for dataset, columns in placed_on.items():
        now = sorted({c for b in current.get(dataset, ()) for c in b.lookup_text()})
        if dataset in current and not all(_still_bound(c, now) for c in columns if c):
            shown = ", ".join(now) or "none"
            changed.append(f"{dataset} by {', '.join(columns)} (now: {shown})")
    if not changed:
        return None
    return "was placed on lookup column(s) " + "; ".join(changed)


def orphan_holds(engine: Engine, catalogue: Catalogue) -> list[dict[str, Any]]:
    """Active holds the catalogue no longer matches: a record hold whose system and dataset
    it no longer binds, or whose key columns changed; a subject hold whose lookup column of a
    dataset was removed or renamed. Each comes with its ``problem``."""
    bindings = bindings_of(catalogue)
    orphans = []
    for hold in _active_holds(engine):
        check = _record_problem if hold["scope"] == "record" else _subject_problem
        problem = check(hold, bindings)
        if problem is not None:
            orphans.append(hold | {"problem": problem})
    return orphans


def _describe_hold(hold: dict[str, Any]) -> str:
    where = (
        f" on {hold['system']!r}/{hold['dataset']!r}" if hold["scope"] == "record" else " (subject)"
    )
    return (
        f"hold {hold['id']} ({hold['kind']}{where}, placed by {hold['placed_by']} at"
        f" {_stamp(hold['placed_at'])}) {hold['problem']}"
    )


def check_catalogue(engine: Engine, catalogue: Catalogue, invalid: Iterable[str] = ()) -> None:
    """Refuse a catalogue that no longer matches the active holds (see :func:`orphan_holds`):
    after a rename, a changed key or a removed lookup column they would match nothing and the
    held records would be deleted."""
    orphans = orphan_holds(engine, catalogue)
    if not orphans:
        return
    named = "; ".join(_describe_hold(h) for h in orphans[:LISTED])
    more = f" and {len(orphans) - LISTED} more" if len(orphans) > LISTED else ""
    if invalid:
        more += f" (catalogue files that failed to load, fix them first: {', '.join(invalid)})"
    raise RetentionError(
        f"{len(orphans)} active holds no longer match the catalogue: {named}{more}. A catalogue"
        " edit renamed a system, table or bucket, changed a primary key, removed or renamed a"
        " lookup column, or removed the dataset: restore the binding, or release these holds"
        " and place them again on the new binding. Nothing was changed."
    )


class HoldRegister:
    """Place, release and query holds. `key` is the pseudonym key (bytes); `catalogue` the
    catalogue in force, whose bindings a placement records (default: the valid activities
    of the catalogue directory, read at the first placement)."""

    def __init__(self, engine: Engine, key: bytes, catalogue: Catalogue | None = None) -> None:
        self.engine = engine
        self._key = check_key(key)
        self._subjects = SubjectRefHasher(self._key)
        self._ledger = Ledger(engine, self._key)
        self._catalogue = catalogue
        self.last_in_flight = InFlight((), ())  # what the last placement waited for

    @property
    def catalogue(self) -> Catalogue:
        if self._catalogue is None:
            self._catalogue = load_valid()[0]
        return self._catalogue

    def create_tables(self) -> None:
        metadata.create_all(self.engine)
        _add_binding_columns(self.engine)
        self._ledger.create_tables()

    def subject_ref(self, identifier: Any) -> bytes:
        return self._subjects.ref(identifier)

    def place_subject_hold(
        self,
        identifier: Any,
        *,
        kind: HoldKind,
        reason: str,
        placed_by: str,
        placed_at: datetime | None = None,
    ) -> int:
        """Hold every record of one data subject (matched through the lookup columns)."""
        _check_value("subject identifier", identifier)
        return self.place_subject_ref_hold(
            self.subject_ref(identifier), kind=kind, reason=reason, placed_by=placed_by,
            placed_at=placed_at,
        )  # fmt: skip

    def place_subject_ref_hold(
        self, ref: bytes, *, kind: HoldKind, reason: str, placed_by: str,
        placed_at: datetime | None = None,
    ) -> int:  # fmt: skip
        """Hold every record of the subject with this keyed reference (a rectified identifier
        keeps the person's holds: `rectification`)."""
        return self._insert(
            scope="subject",
            kind=kind,
            subject_ref=ref,
            subject_columns=json.dumps(subject_columns_of(self.catalogue), sort_keys=True),
            reason=reason,
            placed_by=placed_by,
            placed_at=placed_at,
        )

    def active_subject_holds(self, refs: AbstractSet[bytes]) -> list[tuple[int, str, bytes]]:
        """(id, kind, subject reference) of the active subject holds on ``refs``."""
        t = holds_table
        query = sa.select(t.c.id, t.c.kind, t.c.subject_ref).where(
            t.c.released_at.is_(None), t.c.scope == "subject"
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(t.c.id)).all()
        return [(int(i), str(k), bytes(r)) for i, k, r in rows if bytes(r) in refs]

    def place_record_hold(
        self,
        system: str,
        dataset: str,
        pk: Any,
        *,
        kind: HoldKind,
        reason: str,
        placed_by: str,
        placed_at: datetime | None = None,
    ) -> int:
        """Hold one record, identified by its primary key in `system`/`dataset` (a table or a
        bucket), exactly as the catalogue names them; the hold records the key column(s) the
        catalogue binds the dataset by."""
        check_system_name(system)
        check_dataset_name(dataset)
        _check_value("primary key", pk)
        self._check_under_prefix(system, dataset, pk)
        ref = RecordRefHasher(self._key, system, dataset).ref(pk)
        return self._insert(
            scope="record",
            kind=kind,
            system=system,
            dataset=dataset,
            record_ref=ref,
            key_columns=self._key_columns_of(system, dataset),
            reason=reason,
            placed_by=placed_by,
            placed_at=placed_at,
        )

    def _check_under_prefix(self, system: str, dataset: str, key: Any) -> None:
        """A bucket dataset holds only the objects under its prefix: a hold on any other key
        would keep nothing. The error names the dataset that holds the key, if any, and never
        the key (it may name a person)."""
        bound = self.catalogue.bindings.get(f"{system}/{dataset}")
        if not isinstance(bound, S3Source) or str(key).startswith(bound.prefix):
            return
        owner = next(
            (b.reference for b in self.catalogue.bindings.values()
             if isinstance(b, S3Source) and (b.conn_id, b.bucket) == (bound.conn_id, bound.bucket)
             and str(key).startswith(b.prefix)),
            None,
        )  # fmt: skip
        where = f"it is an object of {owner}: hold it there" if owner else "no dataset has it"
        raise RetentionError(
            f"the object key given is not under the prefix {bound.prefix!r} of {system}/{dataset},"
            f" so a hold there would keep nothing; {where}"
        )

    def _key_columns_of(self, system: str, dataset: str) -> str | None:
        bindings = bindings_of(self.catalogue).get((system, dataset))
        if bindings is None:
            # Refused by check_catalogue until a system file binds it (then by its key).
            log.warning("hold on %s/%s: the catalogue binds no such dataset", system, dataset)
            return None
        keys = sorted({_key_text(b.key_columns) for b in bindings})
        if len(keys) > 1:
            raise RetentionError(
                f"{system}/{dataset} is bound by different primary keys ({' | '.join(keys)}) in"
                " the catalogue: make the bindings agree before placing a record hold"
            )
        return keys[0]

    def _insert(
        self, *, kind: str, reason: str, placed_by: str, placed_at: datetime | None, **cols: Any
    ) -> int:
        _check_kind(kind)
        _check_text("a reason", reason, MAX_REASON)
        _check_text("the name of who placed it", placed_by, MAX_NAME)
        values = dict(
            cols, kind=kind, reason=reason, placed_by=placed_by, placed_at=_utc(placed_at)
        )
        with self.engine.begin() as conn:
            inserted = conn.execute(sa.insert(holds_table).values(**values)).inserted_primary_key
            if not inserted:
                raise RetentionError("the hold register did not return the new hold's id")
            hold_id = int(inserted[0])
            self._record_placed(conn, hold_id, values)
        log.info("placed %s hold %s (scope %s)", kind, hold_id, cols["scope"])
        self.settle(hold_id, cols.get("system"), cols.get("dataset"), cols.get("record_ref"))
        return hold_id

    def settle(
        self, hold_id: int, system: str | None, dataset: str | None, record_ref: bytes | None
    ) -> InFlight:
        """Wait for the batches of running enforcements that were already past their hold
        check (see `leases.wait_for_in_flight`); from then on the hold binds every batch."""
        found = wait_for_in_flight(self._ledger, system, dataset, record_ref)
        self.last_in_flight = found
        if found.applied:
            log.warning(
                "hold %s: ledger batch(es) %s already in flight committed before the hold"
                " took effect%s; see the ledger's lookup",
                hold_id, list(found.applied), "" if record_ref is None else " with the record",
            )  # fmt: skip
        return found

    def release(
        self, hold_id: int, *, released_by: str, released_at: datetime | None = None
    ) -> None:
        _check_text("the name of who released it", released_by, MAX_NAME)
        released_at = _utc(released_at)
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(holds_table)
                .where(holds_table.c.id == hold_id, holds_table.c.released_at.is_(None))
                .values(released_at=released_at, released_by=released_by)
            )
            if result.rowcount != 1:
                raise RetentionError(f"hold {hold_id} does not exist or is already released")
            body = {
                "hold_id": hold_id,
                "released_by": released_by,
                **self._release_doc(released_at),
            }
            self._ledger.record_hold_event(conn, "hold_released", hold_id, body)
        log.info("released hold %s", hold_id)

    # ------------------------------------------------------------- evidence

    def _placement_doc(self, values: dict[str, Any]) -> dict[str, Any]:
        """What the evidence of a placement says about the row (no raw personal data)."""
        refs = {name: values.get(name) for name in ("subject_ref", "record_ref")}
        return {
            "scope": values["scope"],
            "kind": values["kind"],
            **{name: ref.hex() if ref is not None else None for name, ref in refs.items()},
            # The binding (absent in evidence from before bindings were recorded).
            **{name: values[name] for name in BINDING_FIELDS if values.get(name) is not None},
            "reason_hmac": hmac_hex(self._key, "hold-reason\x1f" + values["reason"]),
            "placed_by": values["placed_by"],
            "placed_at": _stamp(values["placed_at"]),
        }

    @staticmethod
    def _release_doc(released_at: datetime | None) -> dict[str, Any]:
        return {"released_at": _stamp(released_at)}

    def _record_placed(self, conn: Connection, hold_id: int, values: dict[str, Any]) -> None:
        body = {"hold_id": hold_id, **self._placement_doc(values)}
        where = {"system": values.get("system"), "dataset": values.get("dataset")}
        self._ledger.record_hold_event(conn, "hold_placed", hold_id, body, **where)

    def verify(self) -> HoldVerifyReport:
        """Replay the chained evidence against the register: every hold row must match its
        placement (and release) exactly, and every hold the evidence knows must still exist."""
        chain = self._ledger.verify()
        problems = (
            [] if chain.ok else [f"ledger chain broken at seq {chain.bad_seq}: {chain.problem}"]
        )
        placed: dict[int, dict[str, Any]] = {}
        released: dict[int, dict[str, Any]] = {}
        for entry in self._ledger.hold_events():
            body = dict(entry.document["body"])
            target = placed if entry.kind == "hold_placed" else released
            target[int(body.pop("hold_id"))] = body | {
                "system": entry.system,
                "dataset": entry.dataset,
            }
        with self.engine.connect() as conn:
            rows = [row._asdict() for row in conn.execute(sa.select(holds_table))]
        for row in rows:
            problems += self._row_problems(
                row, placed.pop(row["id"], None), released.get(row["id"])
            )
        problems += [
            f"hold {hold_id} ({body['kind']}, placed by {body['placed_by']} at"
            f" {body['placed_at']}) is in the evidence but not in the register: deleted"
            for hold_id, body in placed.items()
        ]
        for problem in problems:
            log.error("hold register verification: %s", problem)
        return HoldVerifyReport(ok=not problems, holds=len(rows), problems=problems)

    def _row_problems(
        self, row: dict[str, Any], placed: dict[str, Any] | None, released: dict[str, Any] | None
    ) -> list[str]:
        hold = f"hold {row['id']}"
        if placed is None:
            return [f"{hold} has no placement evidence: added outside the register"]
        actual = self._placement_doc(row) | {"system": row["system"], "dataset": row["dataset"]}
        problems = _differences(hold, "placement", placed, actual)
        if released is None:
            if row["released_at"] is not None or row["released_by"] is not None:
                problems.append(f"{hold} is marked released without release evidence")
        elif row["released_at"] is None:
            problems.append(f"{hold} was released but is active again in the register")
        else:
            actual = {"released_by": row["released_by"], **self._release_doc(row["released_at"])}
            problems += _differences(hold, "release", released, actual)
        return problems

    def active(self, system: str, dataset: str) -> ActiveHolds:
        """All active subject holds plus the active record holds of this dataset (fresh read)."""
        t = holds_table
        query = sa.select(t.c.scope, t.c.kind, t.c.subject_ref, t.c.record_ref).where(
            t.c.released_at.is_(None),
            sa.or_(t.c.scope == "subject", sa.and_(t.c.system == system, t.c.dataset == dataset)),
        )
        subjects: dict[bytes, frozenset[str]] = {}
        records: dict[bytes, frozenset[str]] = {}
        with self.engine.connect() as conn:
            for scope, kind, sref, rref in conn.execute(query):
                if scope == "subject":
                    _merge(subjects, bytes(sref), kind)
                else:
                    _merge(records, bytes(rref), kind)
        return ActiveHolds(subjects=subjects, records=records)


def _add_binding_columns(engine: Engine) -> None:
    """Add the binding columns to a hold register created before holds recorded them (its
    holds keep NULL: checked by dataset only, as when they were placed)."""
    present = {c["name"] for c in sa.inspect(engine).get_columns(holds_table.name)}
    missing = [c for c in (holds_table.c.key_columns, holds_table.c.subject_columns)
               if c.name not in present]  # fmt: skip
    if not missing:
        return
    table = engine.dialect.identifier_preparer.format_table(holds_table)
    with engine.begin() as conn:
        for column in missing:
            ddl = sa.schema.CreateColumn(column).compile(dialect=engine.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {ddl}")
    log.info("hold register: added the binding columns %s", [c.name for c in missing])


def _differences(
    hold: str, what: str, evidence: dict[str, Any], actual: dict[str, Any]
) -> list[str]:
    fields = sorted(name for name in evidence if name in actual and evidence[name] != actual[name])
    return (
        [f"{hold}: {', '.join(fields)} differ from its {what} evidence: edited"] if fields else []
    )
