"""The deletion ledger: tamper-evident, pseudonymous evidence of every enforcement run.

It lives in its own control database (never Airflow's metadata DB). Entries are append-only
and hash-chained: entry_hash = sha256(prev_hash + canonical JSON document + sha256(blob)), where
the document carries every column of the entry (seq included), so editing, deleting,
inserting or reordering entries breaks the chain at a seq that `verify()` reports. Deleting
entries from the end is caught against the head row, or against a head hash noted elsewhere
(`verify(expect_head=...)`); every finished run logs it.

Entry kinds:
- ``run_started``: activity, rules, as_of, cutoffs, dry-run flag, catalogue and code version,
  approved_by, origin (Airflow dag_id, run_id, run_type, triggering user), start time.
- ``batch_prepared``: written BEFORE the source transaction commits (write-ahead): action,
  counts, time, and one blob of the batch's 16-byte record references.
- ``batch_resolved``: the outcome of a prepared batch: ``committed``, ``rolled_back`` or
  ``partial`` (then with its own blob of the references actually applied).
- ``run_finished``: outcome, counts, end time, message.
- ``run_verified``: the independent post-run verification (Great Expectations) of the run.
- ``hold_placed`` / ``hold_released``: every change of the hold register, written in the same
  transaction as the change (see ``holds.py``), so a hold row deleted, edited or released behind
  the register's back is caught by ``HoldRegister.verify()``.

No raw identifier ever enters the ledger: records are known by
HMAC-SHA256(key, system \\x1f dataset \\x1f pk) truncated to 16 bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from include.retention.errors import RetentionError
from include.retention.pseudonym import (
    REF_SIZE,
    PackedRefs,
    RecordRefHasher,
    check_key,
    pack_refs,
    unpack_refs,
)

log = logging.getLogger(__name__)

GENESIS = b"\x00" * 32
SUBJECT_ROWS = 10_000  # subject index rows fetched at a time by verify()
BLOB_ROWS = 4  # entries fetched at a time: a batch blob can be 800 kB (50k refs)
SQLITE_BUSY_TIMEOUT_MS = 60_000  # an appender waits this long for another's commit
Blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")

metadata = sa.MetaData()

ledger_table = sa.Table(
    "retention_ledger",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("activity_id", sa.String(200), nullable=False),
    sa.Column("system", sa.String(200), nullable=True),
    sa.Column("dataset", sa.String(200), nullable=True),
    sa.Column("ref_seq", sa.BigInteger, nullable=True),  # batch_resolved -> its batch_prepared
    sa.Column("recorded_at", sa.String(40), nullable=False),  # ISO text: hashed as stored
    sa.Column(
        "document", sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False
    ),
    sa.Column("blob", Blob, nullable=True),
    sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("entry_hash", sa.LargeBinary(32), nullable=False),
    sa.Index("ix_retention_ledger_dataset", "system", "dataset", "kind"),
    sa.Index("ix_retention_ledger_run", "run_id"),
    sa.Index("ix_retention_ledger_ref", "ref_seq"),
)

# The keyed subject references of each batch_prepared entry, one row each, written in the
# entry's transaction: lookup by person is an index seek on subject_ref. The entry's body carries
# the count and SHA-256 of the packed references in `pos` order, so `verify()` recomputes them
# from these rows and the chain covers the index.
subject_table = sa.Table(
    "retention_ledger_subject",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("pos", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column(
        "subject_ref",
        sa.LargeBinary(16).with_variant(mysql.BINARY(16), "mysql", "mariadb"),
        nullable=False,
    ),
    sa.Index("ix_retention_ledger_subject_ref", "subject_ref", "seq"),
    sqlite_with_rowid=False,
)

# One row; locked while appending so that concurrent writers serialise on the chain head
# (see `_lock_head`).
head_table = sa.Table(
    "retention_ledger_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("entry_hash", sa.LargeBinary(32), nullable=False),
)

HOLD_EVENTS = ("hold_placed", "hold_released")
_COLUMNS = ("seq", "kind", "run_id", "activity_id", "system", "dataset", "ref_seq", "recorded_at")


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    ).encode("utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not JSON-serialisable in a ledger entry: {type(value).__name__}")


def entry_hash(prev_hash: bytes, document: bytes, blob: bytes | None) -> bytes:
    return hashlib.sha256(prev_hash + document + hashlib.sha256(blob or b"").digest()).digest()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def code_version() -> str:
    """RETENTION_CODE_VERSION if set, else a hash of this package's source files."""
    env = os.environ.get("RETENTION_CODE_VERSION")
    if env:
        return env
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\x00" + path.read_bytes())
    return "src-sha256:" + digest.hexdigest()[:16]


@dataclass(frozen=True)
class RunHeader:
    """What a run is about; written as the run_started entry. No personal data."""

    activity_id: str
    system: str
    dataset: str
    action: str
    rules: list[str]
    as_of: str
    cutoffs: list[str | None]
    dry_run: bool
    catalogue_version: str
    code_version: str
    approved_by: str | None = None
    # Who asked for the run: the Airflow dag_id, run_id, run_type and, for a manual run, the
    # user who triggered it. Empty when the engine is called outside Airflow.
    origin: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: str
    run_id: str
    activity_id: str
    system: str | None
    dataset: str | None
    ref_seq: int | None
    recorded_at: str
    document: dict[str, Any]
    blob: bytes | None


@dataclass(frozen=True)
class PendingBatch:
    """A batch_prepared entry that no batch_resolved entry answers yet."""

    seq: int
    run_id: str
    activity_id: str
    system: str
    dataset: str
    action: str
    refs: bytes


@dataclass(frozen=True)
class Evidence:
    """One answer of `lookup`: the record was deleted/anonymised by this batch and run."""

    action: str
    at: str
    run_id: str
    activity_id: str
    rules: list[str]
    as_of: str | None
    batch_seq: int
    recovered: bool


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    bad_seq: int | None = None
    problem: str | None = None


@dataclass
class RunSummary:
    run_id: str
    activity_id: str
    header: dict[str, Any]
    started_at: str
    finished: dict[str, Any] | None = None
    batches: list[int] = field(default_factory=list)


class Ledger:
    """Append-only, hash-chained evidence store. `key` is the pseudonym key (bytes)."""

    def __init__(self, engine: Engine, key: bytes) -> None:
        self.engine = engine
        self._key = check_key(key)

    @classmethod
    def from_url(cls, url: str, key: bytes) -> Ledger:
        return cls(sa.create_engine(url), key)

    def create_tables(self) -> None:
        metadata.create_all(self.engine)
        try:  # the head row exists before the first append, so appenders only ever lock it
            with self.engine.begin() as conn:
                if conn.execute(sa.select(head_table.c.id)).first() is None:
                    conn.execute(sa.insert(head_table).values(id=1, seq=0, entry_hash=GENESIS))
        except sa.exc.IntegrityError:
            pass  # created concurrently

    # ---------------------------------------------------------------- writing

    def _append(
        self,
        conn: Connection,
        *,
        kind: str,
        run_id: str,
        activity_id: str,
        body: Mapping[str, Any],
        system: str | None = None,
        dataset: str | None = None,
        ref_seq: int | None = None,
        blob: bytes | None = None,
    ) -> int:
        head = _lock_head(conn)
        if head is None:
            conn.execute(sa.insert(head_table).values(id=1, seq=0, entry_hash=GENESIS))
            prev_seq, prev_hash = 0, GENESIS
        else:
            prev_seq, prev_hash = int(head.seq), bytes(head.entry_hash)
        seq = prev_seq + 1
        cols: dict[str, Any] = {
            "seq": seq,
            "kind": kind,
            "run_id": run_id,
            "activity_id": activity_id,
            "system": system,
            "dataset": dataset,
            "ref_seq": ref_seq,
            "recorded_at": _now_iso(),
        }
        document = canonical_json({**cols, "body": dict(body)})
        digest = entry_hash(prev_hash, document, blob)
        conn.execute(
            sa.insert(ledger_table).values(
                **cols,
                document=document.decode("utf-8"),
                blob=blob,
                prev_hash=prev_hash,
                entry_hash=digest,
            )
        )
        conn.execute(
            sa.update(head_table).where(head_table.c.id == 1).values(seq=seq, entry_hash=digest)
        )
        return seq

    def start_run(self, header: RunHeader) -> str:
        run_id = str(uuid.uuid4())
        body = {
            k: v
            for k, v in header.__dict__.items()
            if k not in ("activity_id", "system", "dataset")
        }
        with self.engine.begin() as conn:
            self._append(
                conn,
                kind="run_started",
                run_id=run_id,
                activity_id=header.activity_id,
                system=header.system,
                dataset=header.dataset,
                body=body,
            )
        return run_id

    def prepare_batch(
        self,
        run_id: str,
        activity_id: str,
        system: str,
        dataset: str,
        *,
        batch_no: int,
        action: str,
        refs_blob: bytes,
        counts: Mapping[str, int],
        subject_refs_blob: bytes | None = None,
    ) -> int:
        """Write-ahead evidence of a batch whose source transaction is not yet committed.

        ``subject_refs_blob``: the packed keyed references (`pseudonym.pack_refs`) of the data
        subjects the batch's records belong to, so a person can be looked up after their records
        are gone. Duplicates are dropped; the chain covers them through the entry's body."""
        body: dict[str, Any] = {"batch_no": batch_no, "action": action, "counts": dict(counts)}
        subjects = _distinct(subject_refs_blob)
        if subjects is not None:
            body["subjects"] = subjects_digest(subjects)
        with self.engine.begin() as conn:
            seq = self._append(
                conn,
                kind="batch_prepared",
                run_id=run_id,
                activity_id=activity_id,
                system=system,
                dataset=dataset,
                blob=refs_blob,
                body=body,
            )
            if subjects:
                _insert_subjects(conn, seq, subjects)
            return seq

    def resolve_batch(
        self,
        batch: PendingBatch | int,
        *,
        outcome: str,
        applied_blob: bytes | None = None,
        recovered: bool = False,
        applied: int | None = None,
    ) -> int:
        """Finalise a prepared batch: committed, rolled_back, or partial (with the applied refs)."""
        if outcome not in ("committed", "rolled_back", "partial"):
            raise RetentionError(f"unknown batch outcome {outcome!r}")
        pending = batch if isinstance(batch, PendingBatch) else self._pending_by_seq(batch)
        body: dict[str, Any] = {"outcome": outcome, "recovered": recovered}
        if applied is not None:
            body["applied"] = applied
        with self.engine.begin() as conn:
            return self._append(
                conn,
                kind="batch_resolved",
                run_id=pending.run_id,
                activity_id=pending.activity_id,
                system=pending.system,
                dataset=pending.dataset,
                ref_seq=pending.seq,
                blob=applied_blob if outcome == "partial" else None,
                body=body,
            )

    def finish_run(
        self,
        run_id: str,
        activity_id: str,
        *,
        outcome: str,
        counts: Mapping[str, Any],
        message: str,
    ) -> int:
        with self.engine.begin() as conn:
            seq = self._append(
                conn,
                kind="run_finished",
                run_id=run_id,
                activity_id=activity_id,
                body={
                    "outcome": outcome,
                    "counts": dict(counts),
                    "message": message,
                    "ended_at": _now_iso(),
                },
            )
        seq_head, head_hash = self.head()
        log.info(
            "ledger run %s finished (%s); ledger head seq %s hash %s",
            run_id,
            outcome,
            seq_head,
            head_hash,
        )
        return seq

    def record_verification(
        self, run_id: str, activity_id: str, verification: Mapping[str, Any]
    ) -> int:
        """Close a finished run with the result of its independent verification."""
        with self.engine.begin() as conn:
            return self._append(
                conn, kind="run_verified", run_id=run_id, activity_id=activity_id,
                body=dict(verification),
            )  # fmt: skip

    def record_hold_event(
        self, conn: Connection, kind: str, hold_id: int, body: Mapping[str, Any], **where: Any
    ) -> int:
        """Chain a hold register change (``hold_placed``/``hold_released``) inside the caller's
        transaction; ``where`` gives the record hold's ``system`` and ``dataset``."""
        if kind not in HOLD_EVENTS:
            raise RetentionError(f"unknown hold event {kind!r}")
        return self._append(
            conn, kind=kind, run_id=f"hold-{hold_id}", activity_id="", body=body, **where
        )

    def hold_events(self) -> Iterator[Entry]:
        """Every hold register change, in chain order."""
        return self.entries(where=ledger_table.c.kind.in_(HOLD_EVENTS), with_blob=False)

    # ---------------------------------------------------------------- reading

    def head(self) -> tuple[int, str]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(head_table.c.seq, head_table.c.entry_hash)).first()
        return (0, GENESIS.hex()) if row is None else (int(row.seq), bytes(row.entry_hash).hex())

    def entries(self, *, where: Any = None, with_blob: bool = True) -> Iterator[Entry]:
        t = ledger_table
        cols = [t.c[name] for name in _COLUMNS] + [t.c.document] + ([t.c.blob] if with_blob else [])
        query = sa.select(*cols).order_by(t.c.seq)
        if where is not None:
            query = query.where(where)
        with self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=BLOB_ROWS).execute(query):
                yield _entry(row, with_blob)

    def _pending_by_seq(self, seq: int) -> PendingBatch:
        for entry in self.entries(where=ledger_table.c.seq == seq):
            if entry.kind == "batch_prepared":
                return _pending(entry)
        raise RetentionError(f"ledger entry {seq} is not a prepared batch")

    def pending_batches(self, activity_id: str | None = None) -> list[PendingBatch]:
        t = ledger_table
        resolved = sa.select(t.c.ref_seq).where(
            t.c.kind == "batch_resolved", t.c.ref_seq.is_not(None)
        )
        where = sa.and_(t.c.kind == "batch_prepared", t.c.seq.not_in(resolved))
        if activity_id is not None:
            where = sa.and_(where, t.c.activity_id == activity_id)
        return [_pending(e) for e in self.entries(where=where)]

    def unfinished_runs(self, activity_id: str) -> list[str]:
        t = ledger_table
        finished = sa.select(t.c.run_id).where(t.c.kind == "run_finished")
        where = sa.and_(
            t.c.kind == "run_started", t.c.activity_id == activity_id, t.c.run_id.not_in(finished)
        )
        return [e.run_id for e in self.entries(where=where, with_blob=False)]

    def runs(self, activity_id: str | None = None) -> list[RunSummary]:
        t = ledger_table
        where: ColumnElement[bool] = t.c.kind.in_(("run_started", "run_finished", "batch_prepared"))
        if activity_id is not None:
            where = sa.and_(where, t.c.activity_id == activity_id)
        runs: dict[str, RunSummary] = {}
        for e in self.entries(where=where, with_blob=False):
            body = e.document["body"]
            if e.kind == "run_started":
                runs[e.run_id] = RunSummary(e.run_id, e.activity_id, body, e.recorded_at)
            elif e.run_id in runs and e.kind == "run_finished":
                runs[e.run_id].finished = body
            elif e.run_id in runs:
                runs[e.run_id].batches.append(e.seq)
        return list(runs.values())

    def applied_refs(self, run_id: str, system: str, dataset: str) -> list[bytes]:
        """The references of every record of ``dataset`` that the run claims as applied."""
        t = ledger_table
        where = sa.and_(
            t.c.run_id == run_id, t.c.kind.like("batch_%"), t.c.system == system,
            t.c.dataset == dataset,
        )  # fmt: skip
        entries = list(self.entries(where=where))
        prepared = {e.seq: e for e in entries if e.kind == "batch_prepared"}
        refs: list[bytes] = []
        for resolution in (e for e in entries if e.kind == "batch_resolved"):
            outcome = resolution.document["body"]["outcome"]
            if outcome == "committed":
                refs.extend(PackedRefs(prepared[resolution.ref_seq].blob))  # type: ignore[index]
            elif outcome == "partial":
                refs.extend(PackedRefs(resolution.blob))
        return refs

    def lookup(self, system: str, dataset: str, pk: Any) -> list[Evidence]:
        """Was the record with this primary key deleted or anonymised: when, by which run/rule?"""
        ref = RecordRefHasher(self._key, system, dataset).ref(pk)
        t = ledger_table
        resolutions = {
            e.ref_seq: e
            for e in self.entries(
                where=sa.and_(
                    t.c.kind == "batch_resolved", t.c.system == system, t.c.dataset == dataset
                )
            )
        }
        found: list[Evidence] = []
        for e in self.entries(
            where=sa.and_(
                t.c.kind == "batch_prepared", t.c.system == system, t.c.dataset == dataset
            )
        ):
            res = resolutions.get(e.seq)
            if res is None or ref not in PackedRefs(e.blob):
                continue
            outcome = res.document["body"]["outcome"]
            if outcome == "rolled_back" or (
                outcome == "partial" and ref not in PackedRefs(res.blob)
            ):
                continue
            found.append(self._evidence(e, res))
        return found

    def subject_batches(self, subject_ref: bytes) -> list[Evidence]:
        """The applied batches that held records of the subject with this keyed reference
        (one index seek; a partially applied batch counts, its records are not told apart)."""
        t, s = ledger_table, subject_table
        seqs = sa.select(s.c.seq).where(s.c.subject_ref == subject_ref)
        prepared = list(self.entries(where=t.c.seq.in_(seqs), with_blob=False))
        resolutions = {
            e.ref_seq: e
            for e in self.entries(
                where=sa.and_(t.c.kind == "batch_resolved", t.c.ref_seq.in_(seqs)), with_blob=False
            )
        }
        return [
            self._evidence(e, resolutions[e.seq])
            for e in prepared
            if e.seq in resolutions
            and resolutions[e.seq].document["body"]["outcome"] != "rolled_back"
        ]

    def _evidence(self, prepared: Entry, resolution: Entry) -> Evidence:
        header: dict[str, Any] = {}
        for e in self.entries(
            where=sa.and_(
                ledger_table.c.run_id == prepared.run_id, ledger_table.c.kind == "run_started"
            ),
            with_blob=False,
        ):
            header = e.document["body"]
        return Evidence(
            action=prepared.document["body"]["action"],
            at=resolution.recorded_at
            if resolution.document["body"]["recovered"]
            else prepared.recorded_at,
            run_id=prepared.run_id,
            activity_id=prepared.activity_id,
            rules=list(header.get("rules", [])),
            as_of=header.get("as_of"),
            batch_seq=prepared.seq,
            recovered=bool(resolution.document["body"]["recovered"]),
        )

    def verify(self, expect_head: tuple[int, str] | None = None) -> VerifyReport:
        """Recompute the chain; report the first seq where it breaks."""
        t = ledger_table
        prev_hash, expected_seq, count = GENESIS, 1, 0
        query = sa.select(
            *[t.c[n] for n in _COLUMNS], t.c.document, t.c.blob, t.c.prev_hash, t.c.entry_hash
        )
        with self.engine.connect() as conn, _SubjectRows(self.engine) as subjects:
            rows = conn.execution_options(yield_per=BLOB_ROWS).execute(query.order_by(t.c.seq))
            for row in rows:
                problem = _check_row(row, expected_seq, prev_hash) or subjects.check(row)
                if problem:
                    return self._report(
                        False, count, prev_hash, bad_seq=expected_seq, problem=problem
                    )
                prev_hash, expected_seq, count = bytes(row.entry_hash), expected_seq + 1, count + 1
            stray = subjects.rest()
            if stray is not None:
                return self._report(
                    False, count, prev_hash, bad_seq=stray,
                    problem="subject references recorded for an entry that is not in the chain",
                )  # fmt: skip
        head_seq, head_hash = self.head()
        if (head_seq, head_hash) != (count, prev_hash.hex()):
            return self._report(
                False,
                count,
                prev_hash,
                bad_seq=count + 1,
                problem="entries missing at the end (head row)",
            )
        if expect_head is not None and (
            count < expect_head[0] or not self._chain_contains(expect_head)
        ):
            return self._report(
                False,
                count,
                prev_hash,
                bad_seq=expect_head[0],
                problem="expected head not in the chain",
            )
        return self._report(True, count, prev_hash)

    def _chain_contains(self, head: tuple[int, str]) -> bool:
        with self.engine.connect() as conn:
            got = conn.execute(
                sa.select(ledger_table.c.entry_hash).where(ledger_table.c.seq == head[0])
            ).scalar()
        return got is not None and bytes(got).hex() == head[1]

    @staticmethod
    def _report(
        ok: bool, count: int, last: bytes, *, bad_seq: int | None = None, problem: str | None = None
    ) -> VerifyReport:
        if not ok:
            log.error("ledger verification failed at seq %s: %s", bad_seq, problem)
        return VerifyReport(ok, count, count, last.hex(), bad_seq, problem)


def subjects_digest(blob: bytes) -> dict[str, Any]:
    """What a batch_prepared body records of its subject references (chained with the entry)."""
    return {"count": len(blob) // REF_SIZE, "sha256": hashlib.sha256(blob).hexdigest()}


def _distinct(blob: bytes | None) -> bytes | None:
    """The packed references without repeats, in first-seen order (no sort: it costs seconds
    per million references)."""
    if blob is None:
        return None
    refs = unpack_refs(blob)
    distinct = dict.fromkeys(refs)
    return blob if len(distinct) == len(refs) else pack_refs(distinct)


def _insert_subjects(conn: Connection, seq: int, blob: bytes) -> None:
    conn.execute(
        sa.insert(subject_table),
        [{"seq": seq, "pos": pos, "subject_ref": ref} for pos, ref in enumerate(unpack_refs(blob))],
    )


def _lock_head(conn: Connection) -> Any:
    """Take the chain head for this transaction: concurrent appenders wait here.

    PostgreSQL and MariaDB: ``SELECT … FOR UPDATE`` locks the head row. SQLite, where that is
    a no-op, first writes the head row (a no-op update) to take the database's write lock
    before anything is read, else two appenders would read the same head and collide on
    ``seq``. (On the servers the no-op update is not used: the control database's head
    trigger only lets the head move forward.)
    """
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        conn.execute(sa.update(head_table).where(head_table.c.id == 1).values(seq=head_table.c.seq))
    return conn.execute(
        sa.select(head_table.c.seq, head_table.c.entry_hash)
        .where(head_table.c.id == 1)
        .with_for_update()
    ).first()


class _SubjectRows:
    """The subject index read alongside the chain (both in seq order, on its own connection so
    two result streams may be open at once on any database), checked entry by entry against
    the count and SHA-256 each batch_prepared body records."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __enter__(self) -> _SubjectRows:
        t = subject_table
        self._conn = self._engine.connect()
        query = sa.select(t.c.seq, t.c.subject_ref).order_by(t.c.seq, t.c.pos)
        self._result = self._conn.execution_options(yield_per=SUBJECT_ROWS).execute(query)
        self._rows = iter(self._result)
        self._next: Any = next(self._rows, None)
        return self

    def __exit__(self, *exc: object) -> None:
        self._result.close()
        self._conn.close()

    def check(self, row: Any) -> str | None:
        if self._next is not None and self._next.seq < row.seq:
            return f"subject references recorded for entry {self._next.seq}, which has none"
        digest, count = hashlib.sha256(), 0
        while self._next is not None and self._next.seq == row.seq:
            digest.update(bytes(self._next.subject_ref))
            count += 1
            self._next = next(self._rows, None)
        body = json.loads(row.document)["body"] if row.kind == "batch_prepared" else {}
        recorded = body.get("subjects")
        if recorded is None:
            return None if count == 0 else "subject references recorded for an entry without any"
        if (count, digest.hexdigest()) != (recorded["count"], recorded["sha256"]):
            return "subject references differ from those the entry records: index edited"
        return None

    def rest(self) -> int | None:
        """The seq of a subject row past the chain's end, if any."""
        return None if self._next is None else int(self._next.seq)


def _check_row(row: Any, expected_seq: int, prev_hash: bytes) -> str | None:
    if row.seq != expected_seq:
        return f"seq {expected_seq} is missing (found {row.seq} next): entry deleted or inserted"
    if bytes(row.prev_hash) != prev_hash:
        return "prev_hash does not match the previous entry: entries reordered, deleted or inserted"
    document = row.document.encode("utf-8")
    if entry_hash(prev_hash, document, None if row.blob is None else bytes(row.blob)) != bytes(
        row.entry_hash
    ):
        return "entry hash does not match its content: entry edited"
    doc = json.loads(document)
    if any(doc.get(name) != getattr(row, name) for name in _COLUMNS):
        return "entry columns differ from the hashed document: entry edited"
    return None


def _entry(row: Any, with_blob: bool) -> Entry:
    doc = json.loads(row.document)
    blob = bytes(row.blob) if with_blob and row.blob is not None else None
    return Entry(
        seq=int(row.seq),
        kind=row.kind,
        run_id=row.run_id,
        activity_id=row.activity_id,
        system=row.system,
        dataset=row.dataset,
        ref_seq=row.ref_seq,
        recorded_at=row.recorded_at,
        document=doc,
        blob=blob,
    )


def _pending(entry: Entry) -> PendingBatch:
    return PendingBatch(
        seq=entry.seq,
        run_id=entry.run_id,
        activity_id=entry.activity_id,
        system=entry.system or "",
        dataset=entry.dataset or "",
        action=entry.document["body"]["action"],
        refs=entry.blob or b"",
    )
