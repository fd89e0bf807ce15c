"""The suppression list: people who objected or withdrew their consent, by keyed reference only.

An entry says "do not process this person for consent-based activities" (``consent``: a
withdrawn consent, Art. 7(3)) or "never for direct marketing" (``direct_marketing``: an
objection under Art. 21(2)-(3), absolute). Imports ask :meth:`SuppressionList.admit` before
loading people into a consent-based activity, so a re-import does not bring them back; and
every retention run of such an activity removes the records of suppressed people it finds
(brought back by another tool), as its own ledger run whose rule names the suppression
(`operations.remove_suppressed`). The request that adds an entry removes that person's
records at once, by the same run (`withdrawal`). Which scopes reach which activity:
:func:`scopes_for`.
Entries are never removed by the product: a person who consents again is a new consent,
recorded by the system that collects it, which then releases the entry
(:meth:`SuppressionList.lift`, logged with who and why).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from include.retention.errors import RetentionError
from include.retention.identifiers import InvalidIdentifier, normalise
from include.retention.pseudonym import SubjectRefHasher, check_key

log = logging.getLogger(__name__)

SCOPES = ("consent", "direct_marketing")
MAX_NAME = 200

metadata = sa.MetaData()

suppressions_table = sa.Table(
    "dsr_suppressions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("subject_ref", sa.LargeBinary(32), nullable=False),
    sa.Column("scope", sa.String(32), nullable=False),
    sa.Column("request_id", sa.Integer, nullable=True),  # the dsr_requests row, if any
    sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("added_by", sa.String(MAX_NAME), nullable=False),
    sa.Column("lifted_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("lifted_by", sa.String(MAX_NAME), nullable=True),
    sa.Column("lift_reason", sa.Text, nullable=True),
    sa.Index("ix_dsr_suppressions_ref", "subject_ref", "scope"),
)


REASONS = {
    "consent": "consent withdrawn (Art. 7(3))",
    "direct_marketing": "objection to direct marketing (Art. 21(3))",
}


def blocking(scope: str) -> tuple[str, ...]:
    """The suppression scopes that keep a person out of processing of ``scope``: everything
    suppressed for consent-based processing, only direct-marketing objections for direct
    marketing."""
    return (scope,) if _check_scope(scope) == "direct_marketing" else SCOPES


def scopes_for(activity: Any) -> tuple[str, ...]:
    """The scopes whose people an activity's runs remove: consent withdrawals from an activity
    on consent, direct-marketing objections from one marked ``direct_marketing`` (both for a
    newsletter on consent); none for the others. Removing is stricter than importing
    (:func:`blocking`): an objection to direct marketing is no reason to delete what the
    person consented to for another purpose."""
    scopes = ("consent",) if "consent" in activity.legal_bases else ()
    return scopes + (("direct_marketing",) if activity.direct_marketing else ())


def reason(scopes: Iterable[str]) -> str:
    """The rule a suppression run records (no person in it)."""
    return "suppression list: " + " or ".join(REASONS[s] for s in scopes)


def _check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise RetentionError(f"suppression scope {scope!r} is not one of {', '.join(SCOPES)}")
    return scope


class SuppressionList:
    """Add, query and lift suppressions. ``key``: the pseudonym key."""

    def __init__(self, engine: Engine, key: bytes) -> None:
        self.engine = engine
        self._subjects = SubjectRefHasher(check_key(key))

    def create_tables(self) -> None:
        metadata.create_all(self.engine)

    def exists(self) -> bool:
        """Whether the list's table exists (the DSR DAGs or the deployment create it; the
        retention workers' role only reads it)."""
        return sa.inspect(self.engine).has_table(suppressions_table.name)

    def add(
        self,
        refs: Iterable[bytes],
        scope: str,
        *,
        added_by: str,
        request_id: int | None = None,
        now: dt.datetime | None = None,
    ) -> int:
        """Suppress every reference in ``scope`` (already suppressed ones are left as they
        are); returns how many were added."""
        _check_scope(scope)
        wanted = set(refs)
        now = now or dt.datetime.now(dt.UTC)
        with self.engine.begin() as conn:
            present = self._active(conn, wanted, scope)
            new = sorted(wanted - present)
            if new:
                conn.execute(
                    sa.insert(suppressions_table),
                    [
                        {"subject_ref": ref, "scope": scope, "request_id": request_id,
                         "added_at": now, "added_by": added_by}
                        for ref in new
                    ],
                )  # fmt: skip
        log.info("suppression list: %s added (%s), %s already there", len(new), scope, len(present))
        return len(new)

    def _active(self, conn: Any, refs: set[bytes], scope: str | None) -> set[bytes]:
        if not refs:
            return set()
        t = suppressions_table
        query = sa.select(t.c.subject_ref).where(t.c.lifted_at.is_(None), t.c.subject_ref.in_(refs))
        if scope is not None:
            query = query.where(t.c.scope == scope)
        return {bytes(ref) for (ref,) in conn.execute(query)}

    def suppressed(self, refs: Iterable[bytes], scope: str | None = None) -> set[bytes]:
        """Which of ``refs`` are suppressed (in ``scope``, or in any scope)."""
        with self.engine.connect() as conn:
            return self._active(conn, set(refs), scope)

    def active(self) -> dict[str, set[bytes]]:
        """Every active suppression: scope -> keyed references."""
        t = suppressions_table
        found: dict[str, set[bytes]] = {scope: set() for scope in SCOPES}
        with self.engine.connect() as conn:
            for ref, scope in conn.execute(
                sa.select(t.c.subject_ref, t.c.scope).where(t.c.lifted_at.is_(None))
            ):
                found[scope].add(bytes(ref))
        return found

    def lift(self, ref: bytes, scope: str, *, by: str, reason: str) -> int:
        """Lift the active suppressions of ``ref`` in ``scope`` (e.g. a new, recorded consent);
        how many were lifted."""
        _check_scope(scope)
        if not by.strip() or not reason.strip():
            raise RetentionError("lifting a suppression needs who lifts it and why")
        t = suppressions_table
        with self.engine.begin() as conn:
            done = conn.execute(
                sa.update(t)
                .where(t.c.subject_ref == ref, t.c.scope == scope, t.c.lifted_at.is_(None))
                .values(lifted_at=dt.datetime.now(dt.UTC), lifted_by=by, lift_reason=reason)
            )
        return int(done.rowcount)

    def admit(
        self, rows: Iterable[Mapping[str, Any]], column: str, kind: str, scope: str = "consent"
    ) -> list[Mapping[str, Any]]:
        """The rows of an import that may be loaded: rows whose person (``column`` holds an
        identifier of ``kind``) is suppressed are left out, and so is every suppressed person
        for ``consent`` imports when they objected to direct marketing. A row whose identifier
        is invalid is refused with an error naming the column."""
        scopes = blocking(scope)
        batch: list[tuple[bytes, Mapping[str, Any]]] = []
        for row in rows:
            try:
                value = normalise(kind, row.get(column), field=column).value
            except InvalidIdentifier as exc:
                raise RetentionError(f"import refused, nothing admitted: {exc}") from None
            batch.append((self._subjects.ref(value), row))
        refs = {ref for ref, _ in batch}
        blocked = set().union(*(self.suppressed(refs, s) for s in scopes))
        admitted = [row for ref, row in batch if ref not in blocked]
        log.info("import: %s of %s rows suppressed", len(batch) - len(admitted), len(batch))
        return admitted
