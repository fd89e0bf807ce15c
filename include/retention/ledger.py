"""The deletion ledger: tamper-evident, pseudonymous evidence of every enforcement run.

It lives in its own control database (never Airflow's metadata DB). Entries are append-only
and hash-chained: entry_hash = sha256(prev_hash + canonical JSON document + sha256(blob)), where
the document carries every column of the entry (seq included), so editing, deleting,
inserting or reordering entries breaks the chain at a seq that `verify()` reports. Deleting
entries from the end is caught against the head row; a chain rewritten with recomputed hashes
against the signed manifests published outside the database (``manifest.py``). This module
appends; reading (runs, lookup, verification) is ``evidence.EvidenceReader``, which `Ledger`
extends, and the tables and hash format are ``chain.py``.

Entry kinds:
- ``run_started``: activity, rules, as_of, cutoffs, dry-run flag, catalogue and code version,
  approved_by, origin (Airflow dag_id, run_id, run_type, triggering user), start time.
- ``batch_prepared``: written BEFORE the source transaction commits (write-ahead): action
  (``delete``, ``anonymise``, or ``rectify`` with the names of the fields it sets),
  counts, time, the id of the pseudonym key (``key_id``), one blob of the batch's 16-byte
  record references, and, given, the count and digest of its subject references, which go to
  the subject index (``retention_ledger_subject``) in the same transaction.
- ``batch_resolved``: the outcome of a prepared batch: ``committed``, ``rolled_back`` or
  ``partial`` (then with its own blob of the references actually applied).
- ``run_finished``: outcome, counts, end time, message.
- ``run_verified``: the independent post-run verification (Great Expectations) of the run.
- ``hold_placed`` / ``hold_released``: every change of the hold register, written in the same
  transaction as the change (see ``holds.py``), so a hold row deleted, edited or released behind
  the register's back is caught by ``HoldRegister.verify()``.
- ``dsr_received`` / ``dsr_extended`` / ``dsr_status`` / ``dsr_recipient_notified``: every
  change of the data-subject request register (``subject_requests.py``), in the same
  transaction as the change; people appear only as keyed subject references.
- ``dsr_rectified``: a rectification (Art. 16) changed records of one dataset: which fields,
  how many records and their keyed references, never the values, and the ledger run whose
  ``rectify`` batch is its write-ahead evidence (``rectification.py``).

No raw identifier ever enters the ledger: records are known by
HMAC-SHA256(key, system \\x1f dataset \\x1f pk), people by HMAC-SHA256(key, "subject" \\x1f
normalised identifier), truncated to 16 bytes: pseudonymous data while the key exists.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from include.retention.chain import (  # re-exported: callers import them from here
    GENESIS,
    HOLD_EVENTS,
    Entry,
    canonical_json,
    entry_hash,
    head_table,
    ledger_table,
    metadata,
    subject_buckets,
    subject_table,
    subjects_digest,
)
from include.retention.errors import RetentionError
from include.retention.evidence import (  # re-exported: callers import them from here
    Evidence,
    EvidenceReader,
    PendingBatch,
    RunSummary,
    VerifyReport,
)
from include.retention.pseudonym import PackedRefs, check_key, key_id

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 60_000  # an appender waits this long for another's commit
# Changes of the data-subject request register (``subject_requests.py``).
REQUEST_EVENTS = (
    "dsr_received", "dsr_extended", "dsr_status", "dsr_recipient_notified", "dsr_rectified",
)  # fmt: skip

__all__ = [
    "GENESIS",
    "HOLD_EVENTS",
    "Entry",
    "Evidence",
    "Ledger",
    "PendingBatch",
    "RunHeader",
    "RunSummary",
    "VerifyReport",
    "canonical_json",
    "code_version",
    "entry_hash",
    "head_table",
    "ledger_table",
    "subject_table",
]


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


class Ledger(EvidenceReader):
    """Append-only, hash-chained evidence store. `key` is the pseudonym key (bytes).
    Reading (runs, lookup, verify) is inherited from `evidence.EvidenceReader`."""

    def __init__(self, engine: Engine, key: bytes) -> None:
        super().__init__(engine, check_key(key))
        self._key: bytes = check_key(key)
        self.key_id = key_id(self._key)  # recorded with every reference this ledger writes

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
        self._check_hold_keys()
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
        fields: Sequence[str] | None = None,
        partition: int | None = None,
        judged_through: datetime | None = None,
    ) -> int:
        """Write-ahead evidence of a batch whose source transaction is not yet committed.

        ``subject_refs_blob``: the packed keyed references (`pseudonym.pack_refs`) of the data
        subjects the batch's records belong to, so a person can be looked up after their records
        are gone. The caller passes each subject once per batch; the chain covers them through
        the entry's body. ``partition``: the key range (of a partitioned run) that prepared it,
        whose retry recovers it. ``fields``: the names (never the values) of the fields a
        rectification sets. ``judged_through``: the batch's (`sources.base.JudgedThrough`),
        kept so that recovery and verification tell the claimed records from new ones."""
        body: dict[str, Any] = {
            "batch_no": batch_no, "action": action, "counts": dict(counts), "key_id": self.key_id,
        }  # fmt: skip
        if partition is not None:
            body["partition"] = partition
        if fields is not None:
            body["fields"] = sorted(fields)
        if judged_through is not None:
            body["judged_through"] = judged_through.isoformat()
        buckets = None
        if subject_refs_blob is not None:
            buckets = subject_buckets(PackedRefs(subject_refs_blob).blob)
            body["subjects"] = subjects_digest(buckets)
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
            if buckets:
                conn.execute(
                    sa.insert(subject_table),
                    [{"seq": seq, "bucket": b, "refs": refs} for b, refs in buckets.items()],
                )
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
        body = {**body, "key_id": self.key_id}
        return self._append(
            conn, kind=kind, run_id=f"hold-{hold_id}", activity_id="", body=body, **where
        )

    def record_request_event(
        self, conn: Connection, kind: str, request_id: int, body: Mapping[str, Any]
    ) -> int:
        """Chain a change of the data-subject request register (``dsr_*``, see
        ``subject_requests.py``) inside the caller's transaction."""
        if kind not in REQUEST_EVENTS:
            raise RetentionError(f"unknown request event {kind!r}")
        return self._append(conn, kind=kind, run_id=f"dsr-{request_id}", activity_id="", body=body)

    def _check_hold_keys(self) -> None:
        """Refuse to start a run while an active hold was placed under another pseudonym key:
        its reference would not match the records this key hashes, and they would be deleted."""
        stale = {
            hold: kid
            for hold, kid in self.active_hold_keys().items()
            if kid not in (None, self.key_id)
        }
        if stale:
            raise RetentionError(
                f"{len(stale)} active hold(s) ({', '.join(sorted(stale))}) were placed under"
                f" an older pseudonym key ({', '.join(sorted(set(stale.values())))}), not the"
                f" current one ({self.key_id}): place them again under the current key and"
                " release the old ones before any run (see the README: rotating the key)"
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
