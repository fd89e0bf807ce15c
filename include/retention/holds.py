"""The register of legal holds and Art. 18 restrictions, in the control database.

A hold is scoped either to a data subject (by the pseudonymous reference of the subject
identifier) or to one record (by the record reference the ledger uses), so the register
itself holds no raw personal data. Held records are never deleted or anonymised; the engine
reads the active holds afresh inside every deleting transaction, and again after the batch's
write-ahead evidence; placing a hold waits for the batches of running enforcements that were
already past that second check (`leases.wait_for_in_flight`), so a hold placed at any moment
is honoured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from include.retention.errors import RetentionError
from include.retention.leases import InFlight, wait_for_in_flight
from include.retention.ledger import Ledger
from include.retention.pseudonym import RecordRefHasher, SubjectRefHasher, check_key

log = logging.getLogger(__name__)

HoldKind = Literal["legal_hold", "restriction"]
HOLD_KINDS: tuple[str, ...] = ("legal_hold", "restriction")

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

    def kind_for(self, record_ref: bytes, subject_ref: bytes | None) -> str | None:
        """'legal_hold' if any legal hold covers the record, else 'restriction' or None."""
        kinds = set(self.records.get(record_ref, ()))
        if subject_ref is not None:
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


class HoldRegister:
    """Place, release and query holds. `key` is the pseudonym key (bytes)."""

    def __init__(self, engine: Engine, key: bytes) -> None:
        self.engine = engine
        self._key = check_key(key)
        self._subjects = SubjectRefHasher(self._key)
        self.last_in_flight = InFlight((), ())  # what the last placement waited for

    def create_tables(self) -> None:
        metadata.create_all(self.engine)

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
        """Hold every record of one data subject (matched through the source's subject column)."""
        return self._insert(
            scope="subject",
            kind=kind,
            subject_ref=self.subject_ref(identifier),
            reason=reason,
            placed_by=placed_by,
            placed_at=placed_at,
        )

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
        """Hold one record, identified by its primary key in `system`/`dataset` (a table)."""
        ref = RecordRefHasher(self._key, system, dataset).ref(pk)
        return self._insert(
            scope="record",
            kind=kind,
            system=system,
            dataset=dataset,
            record_ref=ref,
            reason=reason,
            placed_by=placed_by,
            placed_at=placed_at,
        )

    def _insert(
        self, *, kind: str, reason: str, placed_by: str, placed_at: datetime | None, **cols: Any
    ) -> int:
        _check_kind(kind)
        if not reason.strip() or not placed_by.strip():
            raise RetentionError("a hold needs a reason and the name of who placed it")
        values = dict(
            cols, kind=kind, reason=reason, placed_by=placed_by, placed_at=placed_at or _now()
        )
        with self.engine.begin() as conn:
            inserted = conn.execute(sa.insert(holds_table).values(**values)).inserted_primary_key
        if not inserted:
            raise RetentionError("the hold register did not return the new hold's id")
        hold_id = int(inserted[0])
        log.info("placed %s hold %s (scope %s)", kind, hold_id, cols["scope"])
        self.settle(hold_id, cols.get("system"), cols.get("dataset"), cols.get("record_ref"))
        return hold_id

    def settle(
        self, hold_id: int, system: str | None, dataset: str | None, record_ref: bytes | None
    ) -> InFlight:
        """Wait for the batches of running enforcements that were already past their hold
        check (see `leases.wait_for_in_flight`); from then on the hold binds every batch."""
        found = wait_for_in_flight(Ledger(self.engine, self._key), system, dataset, record_ref)
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
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(holds_table)
                .where(holds_table.c.id == hold_id, holds_table.c.released_at.is_(None))
                .values(released_at=released_at or _now(), released_by=released_by)
            )
        if result.rowcount != 1:
            raise RetentionError(f"hold {hold_id} does not exist or is already released")
        log.info("released hold %s", hold_id)

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
