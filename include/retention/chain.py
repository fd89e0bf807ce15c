"""The ledger's storage format: its tables and how an entry is hashed into the chain.

Shared by the writer (`ledger.Ledger`, appends) and the reader (`evidence.EvidenceReader`:
runs, lookup, verification). An entry's hash is
sha256(prev_hash + canonical JSON document + sha256(blob)); the document carries every column
of the entry (seq included) and its body.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from include.retention.pseudonym import REF_SIZE

GENESIS = b"\x00" * 32
Blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
HOLD_EVENTS = ("hold_placed", "hold_released")
COLUMNS = ("seq", "kind", "run_id", "activity_id", "system", "dataset", "ref_seq", "recorded_at")

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


def subjects_digest(blob: bytes) -> dict[str, Any]:
    """What a batch_prepared body records of its subject references (chained with the entry)."""
    return {"count": len(blob) // REF_SIZE, "sha256": hashlib.sha256(blob).hexdigest()}


def decode_entry(row: Any, with_blob: bool) -> Entry:
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
