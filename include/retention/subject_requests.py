"""The register of data-subject requests (Art. 12(3)), in the control database.

Every request a ``dsr_*`` DAG handles is registered by its first task: the kind of request,
when it was received, when it is due (one month later), its status, the Airflow run that
handles it and who filed it. The person appears only as keyed subject references
(`pseudonym.subject_ref` of each normalised identifier), never as the identifier itself.

Deadlines follow Art. 12(3) and Regulation 1182/71 on periods: a request received on 31
January is due by the end of 28 (or 29) February, Stockholm time. It can be extended by up to
two more months with a recorded reason, but only while the first month runs (the person must
be told of the extension within it). ``dsr_deadlines`` mails a daily list of open requests
close to their deadline.

Every change is chained into the ledger (``dsr_received``, ``dsr_extended``, ``dsr_status``,
``dsr_recipient_notified``; ``dsr_rectified`` for what a rectification changed) in the same
transaction; free-text reasons enter the ledger only
as keyed hashes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pendulum
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from include.retention.errors import RetentionError
from include.retention.identifiers import SubjectId
from include.retention.ledger import REQUEST_EVENTS, Entry, Ledger, ledger_table
from include.retention.pseudonym import (
    SubjectRefHasher,
    check_key,
    hmac_hex,
    pack_refs,
    unpack_refs,
)

log = logging.getLogger(__name__)

TIMEZONE = "Europe/Stockholm"
# kind -> (GDPR article, Swedish name, English name)
REQUEST_KINDS: dict[str, tuple[str, str, str]] = {
    "access": ("Art. 15", "registerutdrag", "access"),
    "portability": ("Art. 20", "dataportabilitet", "data portability"),
    "erasure": ("Art. 17", "radering", "erasure"),
    "rectification": ("Art. 16", "rättelse", "rectification"),
    "restriction": ("Art. 18", "begränsning", "restriction"),
    "objection": ("Art. 21", "invändning", "objection"),
    "consent_withdrawal": ("Art. 7(3)", "återkallat samtycke", "consent withdrawal"),
}
STATUSES = ("received", "in_progress", "completed", "refused", "failed")
CLOSED = ("completed", "refused")
MAX_EXTENSION_MONTHS = 2
MAX_TEXT = 2000
MAX_NAME = 200

metadata = sa.MetaData()

requests_table = sa.Table(
    "dsr_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("subject_refs", sa.LargeBinary(1024), nullable=False),  # packed 16-byte refs
    sa.Column("identifier_kinds", sa.String(100), nullable=False),  # e.g. "email,phone"
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("first_due_on", sa.Date, nullable=False),
    sa.Column("due_on", sa.Date, nullable=False),
    sa.Column("extended_months", sa.Integer, nullable=False, default=0),
    sa.Column("extension_reason", sa.Text, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("status_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_by", sa.String(MAX_NAME), nullable=False),
    sa.Column("filed_by", sa.String(MAX_NAME), nullable=False),
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("run_id", sa.String(250), nullable=True),
    sa.Column("outcome", sa.Text, nullable=True),  # JSON: counts, exceptions; no personal data
    sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("dag_id", "run_id", name="uq_dsr_requests_run"),
    sa.Index("ix_dsr_requests_open", "status", "due_on"),
)

notices_table = sa.Table(
    "dsr_recipient_notices",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.Integer, sa.ForeignKey("dsr_requests.id"), nullable=False),
    sa.Column("recipient", sa.String(500), nullable=False),
    sa.Column("notified_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("notified_by", sa.String(MAX_NAME), nullable=False),
)


# ------------------------------------------------------------------------------ dates


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(moment: dt.datetime, name: str) -> dt.datetime:
    if not isinstance(moment, dt.datetime) or moment.tzinfo is None:
        raise RetentionError(f"{name} must be a time-zone-aware time")
    utc = moment.astimezone(dt.UTC)
    return dt.datetime.combine(utc.date(), utc.time(), tzinfo=dt.UTC)  # not pendulum's subclass


def local_date(moment: dt.datetime) -> dt.date:
    """The Stockholm calendar date of ``moment``."""
    return pendulum.instance(moment).in_timezone(TIMEZONE).date()


def due_date(received_at: dt.datetime, months: int = 1) -> dt.date:
    """The last day to answer: the same date ``months`` later, or that month's last day
    when it has no such date (31 Jan -> 28/29 Feb)."""
    received = local_date(received_at)
    due = pendulum.date(received.year, received.month, received.day).add(months=months)
    return dt.date(due.year, due.month, due.day)


def deadline_of(due_on: dt.date) -> dt.datetime:
    """The instant a request due on ``due_on`` becomes late: the end of that day, Stockholm."""
    day = pendulum.datetime(due_on.year, due_on.month, due_on.day, tz=TIMEZONE)
    return day.add(days=1)


# ------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class Request:
    """One registered request; no personal data (the person is known by keyed references)."""

    id: int
    kind: str
    subject_refs: tuple[bytes, ...]
    identifier_kinds: tuple[str, ...]
    received_at: dt.datetime
    first_due_on: dt.date
    due_on: dt.date
    extended_months: int
    extension_reason: str | None
    status: str
    status_at: dt.datetime
    updated_by: str
    filed_by: str
    dag_id: str | None
    run_id: str | None
    outcome: dict[str, Any] | None
    closed_at: dt.datetime | None

    @property
    def ref(self) -> str:
        """How people name the request: ``DSR-<id>``."""
        return f"DSR-{self.id}"

    @property
    def open(self) -> bool:
        return self.status not in CLOSED

    def days_left(self, today: dt.date) -> int:
        """Days until the due date (0: due today; negative: overdue)."""
        return (self.due_on - today).days

    def summary(self) -> dict[str, Any]:
        """What may be shown or passed on anywhere (XComs, mails): no references either."""
        return {
            "request": self.ref,
            "kind": self.kind,
            "article": REQUEST_KINDS[self.kind][0],
            "received_at": self.received_at.isoformat(),
            "due_on": self.due_on.isoformat(),
            "extended_months": self.extended_months,
            "status": self.status,
        }


def _row_to_request(row: Any) -> Request:
    def utc(value: dt.datetime | None) -> dt.datetime | None:
        if value is None:
            return None
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)  # SQLite drops the zone

    return Request(
        id=int(row["id"]),
        kind=row["kind"],
        subject_refs=tuple(unpack_refs(bytes(row["subject_refs"]))),
        identifier_kinds=tuple(k for k in row["identifier_kinds"].split(",") if k),
        received_at=utc(row["received_at"]),  # type: ignore[arg-type]
        first_due_on=row["first_due_on"],
        due_on=row["due_on"],
        extended_months=int(row["extended_months"]),
        extension_reason=row["extension_reason"],
        status=row["status"],
        status_at=utc(row["status_at"]),  # type: ignore[arg-type]
        updated_by=row["updated_by"],
        filed_by=row["filed_by"],
        dag_id=row["dag_id"],
        run_id=row["run_id"],
        outcome=json.loads(row["outcome"]) if row["outcome"] else None,
        closed_at=utc(row["closed_at"]),
    )


def check_kind(kind: Any) -> str:
    if kind not in REQUEST_KINDS:
        raise RetentionError(f"request kind {kind!r} is not one of {', '.join(REQUEST_KINDS)}")
    return str(kind)


def _text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RetentionError(f"{name} is required (non-empty text)")
    if len(value) > limit or any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise RetentionError(f"{name} must be at most {limit} characters without control codes")
    return value.strip()


# ------------------------------------------------------------------------------ register


class RequestRegister:
    """Register, extend, update and list data-subject requests. ``key``: the pseudonym key."""

    def __init__(self, engine: Engine, key: bytes) -> None:
        self.engine = engine
        self._key = check_key(key)
        self._subjects = SubjectRefHasher(self._key)
        self._ledger = Ledger(engine, self._key)

    def create_tables(self) -> None:
        self._ledger.create_tables()
        metadata.create_all(self.engine)

    def subject_refs(self, subjects: Iterable[SubjectId]) -> list[bytes]:
        """The keyed references of normalised identifiers, distinct, in a stable order."""
        return sorted({self._subjects.ref(s.value) for s in subjects})

    # ------------------------------------------------------------ writing

    def receive(
        self,
        kind: str,
        subjects: Sequence[SubjectId],
        *,
        filed_by: str,
        received_at: dt.datetime | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        now: dt.datetime | None = None,
    ) -> Request:
        """Register a request (idempotent per Airflow run: a retried task gets the same one)."""
        check_kind(kind)
        filed_by = _text("who filed the request", filed_by, MAX_NAME)
        if not subjects:
            raise RetentionError("a request needs at least one identifier of the person")
        now = _aware(now or _now(), "now")
        received = _aware(received_at, "received_at") if received_at else now
        if received > now:
            raise RetentionError(
                f"received_at {received.isoformat()} is in the future: give the day the request"
                " arrived (today or earlier)"
            )
        if dag_id and run_id and (existing := self._by_run(dag_id, run_id)) is not None:
            return existing
        due = due_date(received)
        values: dict[str, Any] = {
            "kind": kind,
            "subject_refs": pack_refs(self.subject_refs(subjects)),
            "identifier_kinds": ",".join(sorted({s.kind for s in subjects})),
            "received_at": received,
            "first_due_on": due,
            "due_on": due,
            "extended_months": 0,
            "status": "received",
            "status_at": now,
            "updated_by": filed_by,
            "filed_by": filed_by,
            "dag_id": dag_id,
            "run_id": run_id,
        }
        with self.engine.begin() as conn:
            inserted = conn.execute(sa.insert(requests_table).values(**values))
            request_id = int(inserted.inserted_primary_key[0])  # type: ignore[index]
            body = {
                "kind": kind,
                "subject_refs": [r.hex() for r in unpack_refs(values["subject_refs"])],
                "identifier_kinds": values["identifier_kinds"],
                "received_at": received.replace(microsecond=0).isoformat(),
                "due_on": due.isoformat(),
                "filed_by": filed_by,
                "dag_id": dag_id,
                "run_id": run_id,
            }
            self._ledger.record_request_event(conn, "dsr_received", request_id, body)
        request = self.get(request_id)
        if due < local_date(now):
            log.warning("%s was received on %s: already overdue", request.ref, request.due_on)
        log.info("registered %s (%s), due %s", request.ref, kind, request.due_on)
        return request

    def extend(
        self,
        request_id: int,
        *,
        months: int,
        reason: str,
        by: str,
        now: dt.datetime | None = None,
    ) -> Request:
        """Extend the deadline by ``months`` more (at most two in all), with the reason the
        person is told. Only while the first month runs (Art. 12(3))."""
        reason = _text("the reason for the extension", reason, MAX_TEXT)
        by = _text("who extends it", by, MAX_NAME)
        if isinstance(months, bool) or not isinstance(months, int) or months < 1:
            raise RetentionError("an extension is 1 or 2 whole months")
        now = _aware(now or _now(), "now")
        request = self.get(request_id)
        total = request.extended_months + months
        if not request.open:
            raise RetentionError(f"{request.ref} is {request.status}: nothing to extend")
        if total > MAX_EXTENSION_MONTHS:
            raise RetentionError(
                f"{request.ref} is already extended by {request.extended_months} month(s):"
                f" Art. 12(3) allows at most {MAX_EXTENSION_MONTHS} more months in all"
            )
        if now >= deadline_of(request.first_due_on):
            raise RetentionError(
                f"{request.ref}: the first month ended on {request.first_due_on}; Art. 12(3)"
                " allows an extension only if the person is told within it. Answer now."
            )
        due = due_date(request.received_at, 1 + total)
        with self.engine.begin() as conn:
            self._update(
                conn, request, extended_months=total, due_on=due, updated_by=by,
                extension_reason=_joined(request.extension_reason, reason),
            )  # fmt: skip
            body = {
                "extended_months": total,
                "due_on": due.isoformat(),
                "reason_hmac": hmac_hex(self._key, "dsr-extension\x1f" + reason),
                "by": by,
            }
            self._ledger.record_request_event(conn, "dsr_extended", request.id, body)
        log.info("%s extended by %s month(s): due %s", request.ref, months, due)
        return self.get(request_id)

    def set_status(
        self,
        request_id: int,
        status: str,
        *,
        by: str,
        outcome: Mapping[str, Any] | None = None,
        now: dt.datetime | None = None,
    ) -> Request:
        """Move a request to ``status``; ``outcome`` (counts, exceptions and their reasons, never
        personal data) is kept with it. A closed request stays closed."""
        if status not in STATUSES:
            raise RetentionError(f"status {status!r} is not one of {', '.join(STATUSES)}")
        by = _text("who changes the status", by, MAX_NAME)
        now = _aware(now or _now(), "now")
        request = self.get(request_id)
        if not request.open and status != request.status:
            raise RetentionError(f"{request.ref} is already {request.status}")
        document = json.dumps(dict(outcome), sort_keys=True) if outcome is not None else None
        with self.engine.begin() as conn:
            self._update(
                conn, request, status=status, status_at=now, updated_by=by,
                outcome=document if document is not None else request_outcome(request),
                closed_at=now if status in CLOSED else None,
            )  # fmt: skip
            body = {"status": status, "by": by, "outcome": dict(outcome or {})}
            self._ledger.record_request_event(conn, "dsr_status", request.id, body)
        log.info("%s is now %s", request.ref, status)
        return self.get(request_id)

    def record_notified(
        self, request_id: int, recipient: str, *, by: str, now: dt.datetime | None = None
    ) -> None:
        """Record that ``recipient`` (a recipient category or organisation, as the catalogue
        names it) was told of the erasure, rectification or restriction (Art. 19)."""
        recipient = _text("the recipient", recipient, 500)
        by = _text("who notified the recipient", by, MAX_NAME)
        now = _aware(now or _now(), "now")
        request = self.get(request_id)
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(notices_table).values(
                    request_id=request.id, recipient=recipient, notified_at=now, notified_by=by
                )
            )
            body = {"recipient": recipient, "by": by, "at": now.replace(microsecond=0).isoformat()}
            self._ledger.record_request_event(conn, "dsr_recipient_notified", request.id, body)

    def record_rectified(self, request_id: int, body: Mapping[str, Any]) -> None:
        """Chain what a rectification changed in one dataset (fields, counts, keyed record
        references; never the values)."""
        request = self.get(request_id)
        with self.engine.begin() as conn:
            self._ledger.record_request_event(conn, "dsr_rectified", request.id, dict(body))

    def _update(self, conn: Connection, request: Request, **values: Any) -> None:
        conn.execute(
            sa.update(requests_table).where(requests_table.c.id == request.id).values(**values)
        )

    # ------------------------------------------------------------ reading

    def get(self, request_id: int) -> Request:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(requests_table).where(requests_table.c.id == request_id)
            ).first()
        if row is None:
            raise RetentionError(f"there is no request DSR-{request_id} in the register")
        return _row_to_request(row._mapping)

    def _by_run(self, dag_id: str, run_id: str) -> Request | None:
        t = requests_table
        with self.engine.connect() as conn:
            query = sa.select(t).where(t.c.dag_id == dag_id, t.c.run_id == run_id)
            row = conn.execute(query).first()
        return None if row is None else _row_to_request(row._mapping)

    def requests(self, *, open_only: bool = False) -> list[Request]:
        t = requests_table
        query = sa.select(t).order_by(t.c.due_on, t.c.id)
        if open_only:
            query = query.where(t.c.status.not_in(CLOSED))
        with self.engine.connect() as conn:
            return [_row_to_request(row._mapping) for row in conn.execute(query)]

    def near_deadline(self, today: dt.date, within_days: int) -> list[Request]:
        """Open requests due within ``within_days`` of ``today``, and overdue ones."""
        return [r for r in self.requests(open_only=True) if r.days_left(today) <= within_days]

    def events(self, request_id: int) -> list[Entry]:
        """The request's chained evidence, in chain order."""
        t = ledger_table
        where = sa.and_(t.c.kind.in_(REQUEST_EVENTS), t.c.run_id == f"dsr-{request_id}")
        return list(self._ledger.entries(where=where, with_blob=False))

    def notices(self, request_id: int) -> list[dict[str, Any]]:
        t = notices_table
        query = sa.select(t.c.recipient, t.c.notified_at, t.c.notified_by)
        with self.engine.connect() as conn:
            rows = conn.execute(query.where(t.c.request_id == request_id).order_by(t.c.id))
            return [row._asdict() for row in rows]


def request_outcome(request: Request) -> str | None:
    return json.dumps(request.outcome, sort_keys=True) if request.outcome is not None else None


def _joined(before: str | None, reason: str) -> str:
    return reason if not before else f"{before}\n{reason}"
