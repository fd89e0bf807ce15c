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
SUBJECT_BUCKETS = 1024  # rows of the subject index per batch, at most (a power of 2)
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

# The keyed subject references of each batch_prepared entry, written in the entry's
# transaction, spread over SUBJECT_BUCKETS rows by the reference's first bits: a batch writes at
# most that many rows (cheap next to one row per person), and looking a person up reads one
# bucket row per batch (an index seek; ~1/1024 of the references). The entry's body records
# the count and SHA-256 of the references in bucket order, so `verify()` recomputes them from
# these rows: the chain covers the index.
subject_table = sa.Table(
    "retention_ledger_subject",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("bucket", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("refs", Blob, nullable=False),
    sa.Index("ix_retention_ledger_subject_bucket", "bucket", "seq"),
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


def bucket_of(ref: bytes) -> int:
    return ((ref[0] << 8) | ref[1]) & (SUBJECT_BUCKETS - 1)


def subject_buckets(blob: bytes) -> dict[int, bytes]:
    """A packed blob of references grouped by bucket (ascending), each group in the blob's
    order. Vectorised: ~0.25 us a reference, where a Python loop costs ~1 us (a million
    references are one enforcement run's worth)."""
    import numpy as np  # lazy: DAG parsing must not pay for it

    arr = np.frombuffer(blob, dtype=np.uint8).reshape(-1, REF_SIZE)
    keys = ((arr[:, 0].astype(np.uint16) << 8) | arr[:, 1]) & (SUBJECT_BUCKETS - 1)
    order = np.argsort(keys, kind="stable")
    grouped = arr[order].tobytes()
    cuts = np.searchsorted(keys[order], np.arange(SUBJECT_BUCKETS + 1)) * REF_SIZE
    return {int(b): grouped[cuts[b] : cuts[b + 1]] for b in np.flatnonzero(cuts[1:] - cuts[:-1])}


def subjects_digest(buckets: dict[int, bytes]) -> dict[str, Any]:
    """What a batch_prepared body records of its subject references (chained with the entry):
    their count and the SHA-256 of the bucket rows in bucket order."""
    digest, count = hashlib.sha256(), 0
    for bucket in sorted(buckets):
        update_digest(digest, bucket, buckets[bucket])
        count += len(buckets[bucket]) // REF_SIZE
    return {"count": count, "sha256": digest.hexdigest(), "buckets": SUBJECT_BUCKETS}


def update_digest(digest: Any, bucket: int, refs: bytes) -> None:
    """Feed one bucket row, framed by its bucket and length: a reference moved to another
    bucket's row (where a lookup would miss it) changes the digest."""
    digest.update(bucket.to_bytes(4, "big") + len(refs).to_bytes(4, "big") + refs)


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
