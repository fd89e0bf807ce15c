"""Evidence outside the database: signed ledger manifests in S3 under Object Lock.

Anyone who can write the control database can recompute the whole hash chain, so the chain
alone proves only that it is self-consistent. Every day `publish` writes a manifest: the
ledger head (seq and entry hash, which commits to every entry before it), the hold register's
last event, per-activity counts and the run ids — no references, no personal data — signed
with Ed25519 and stored in an S3 bucket with Object Lock in *compliance* mode, so no one, the
bucket's owner included, can delete or overwrite it before its retention date.

`check` verifies every published manifest's signature and that the ledger still holds, at the
manifest's head seq, the entry hash it recorded: a chain rewritten (edited, backdated,
reordered, runs removed, entries inserted, with every hash recomputed), truncated or emptied
before that point no longer matches. `ledger verify` runs it after the chain check.

Configuration: the bucket is ``$RETENTION_MANIFEST_BUCKET`` (default
``retention-ledger-manifests``; created by the demo, by ``ensure_manifest_bucket``, with
Object Lock enabled), reached through the ``retention_s3`` connection; the signing key is the
password of the Airflow connection ``retention_manifest_signing_key`` (base64 of a 32-byte
Ed25519 seed; ``python -m include.retention ledger manifest-key --new`` makes one). Auditors
verify with the public key alone (``--public-key``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from include.retention.chain import canonical_json
from include.retention.errors import RetentionError
from include.retention.evidence import EvidenceReader

log = logging.getLogger(__name__)

BUCKET_ENV = "RETENTION_MANIFEST_BUCKET"
DEFAULT_BUCKET = "retention-ledger-manifests"
RETAIN_DAYS_ENV = "RETENTION_MANIFEST_RETAIN_DAYS"
DEFAULT_RETAIN_DAYS = 2557  # 7 years: the evidence outlives the longest retention period
SIGNING_KEY_CONN_ID = "retention_manifest_signing_key"
PREFIX = "ledger-manifests/"
FORMAT = 1


def bucket_name() -> str:
    return os.environ.get(BUCKET_ENV) or DEFAULT_BUCKET


# ------------------------------------------------------------------------------ keys


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key (32-byte seed)."""

    seed: bytes

    @classmethod
    def new(cls) -> SigningKey:
        return cls(os.urandom(32))

    @classmethod
    def from_text(cls, text: str) -> SigningKey:
        try:
            seed = base64.b64decode(text.strip(), validate=True)
        except ValueError:
            seed = b""
        if len(seed) != 32:
            raise RetentionError(
                "the manifest signing key must be base64 of 32 bytes (an Ed25519 seed); make one"
                " with: python -m include.retention ledger manifest-key --new"
            )
        return cls(seed)

    def text(self) -> str:
        return base64.b64encode(self.seed).decode("ascii")

    def public(self) -> str:
        """The public key, base64 (give it to auditors)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.from_private_bytes(self.seed).public_key()
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode("ascii")

    def sign(self, message: bytes) -> str:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        signature = Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)
        return base64.b64encode(signature).decode("ascii")


def signing_key(conn_id: str = SIGNING_KEY_CONN_ID) -> SigningKey:
    """The signing key from its Airflow connection's password."""
    from include.retention.connections import _get_connection

    password = _get_connection(conn_id).password
    if not password:
        raise RetentionError(f"Airflow connection {conn_id!r} has no password (the signing key)")
    return SigningKey.from_text(password)


def signature_ok(public_key: str, message: bytes, signature: str) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def key_id(public_key: str) -> str:
    return hashlib.sha256(public_key.encode("ascii")).hexdigest()[:16]


# ------------------------------------------------------------------------------ building


def build(reader: EvidenceReader, now: dt.datetime | None = None) -> dict[str, Any]:
    """The manifest body: ledger head, hold history head, per-activity counts, run ids."""
    head_seq, head_hash = reader.head()
    runs = reader.run_rows()
    batches = reader.batch_rows()
    activities: dict[str, Counter[str]] = {}
    for run in runs:
        activities.setdefault(run["activity_id"], Counter())["runs"] += 1
    for batch in batches:
        applied = _applied(batch)
        if applied:
            counts = activities.setdefault(batch["activity_id"], Counter())
            counts[f"records_{batch['action']}"] += applied
    holds = list(reader.hold_events())
    return {
        "format": FORMAT,
        "published_at": (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
        "ledger": {"head_seq": head_seq, "head_hash": head_hash},
        "holds": {
            "events": len(holds),
            "last_seq": holds[-1].seq if holds else 0,
        },
        "activities": {a: dict(sorted(c.items())) for a, c in sorted(activities.items())},
        "run_ids": [run["run_id"] for run in runs],
    }


def _applied(batch: dict[str, Any]) -> int:
    if batch["outcome"] == "committed":
        return int(batch.get("count.records") or 0)
    if batch["outcome"] == "partial":
        return int(batch.get("applied") or 0)
    return 0


def sign(body: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    public = key.public()
    return {
        "body": body,
        "key_id": key_id(public),
        "signature": key.sign(canonical_json(body)),
    }


# ------------------------------------------------------------------------------ S3


def ensure_manifest_bucket(client: Any, bucket: str) -> None:
    """Create the bucket with Object Lock enabled (it can only be enabled at creation), or
    refuse an existing bucket without it."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        kwargs: dict[str, Any] = {"Bucket": bucket, "ObjectLockEnabledForBucket": True}
        region = client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        client.create_bucket(**kwargs)
        return
    try:
        config = client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    except client.exceptions.ClientError:
        config = {}
    if config.get("ObjectLockEnabled") != "Enabled":
        raise RetentionError(
            f"bucket {bucket!r} has no Object Lock: manifests there could be deleted. Create a"
            f" new bucket with Object Lock (or let the demo do it) and set ${BUCKET_ENV}"
        )


def publish(
    reader: EvidenceReader,
    client: Any,
    key: SigningKey,
    *,
    bucket: str | None = None,
    now: dt.datetime | None = None,
    retain_days: int | None = None,
) -> str:
    """Verify the chain against what is already published, then publish a new manifest under
    compliance-mode Object Lock. Returns its object key. Refuses (raises) on a broken chain:
    a manifest must never bless a tampered ledger."""
    bucket = bucket or bucket_name()
    now = now or dt.datetime.now(dt.UTC)
    ensure_manifest_bucket(client, bucket)
    report = reader.verify()
    if not report.ok:
        raise RetentionError(
            f"ledger chain broken at seq {report.bad_seq} ({report.problem}): no manifest"
            " published; run `python -m include.retention ledger verify` and investigate"
        )
    published = fetch_all(client, bucket)
    problems = check(reader, published, [key.public()])
    if problems:
        raise RetentionError("ledger differs from its published manifests: " + "; ".join(problems))
    document = sign(build(reader, now), key)
    head = document["body"]["ledger"]["head_seq"]
    object_key = f"{PREFIX}{now:%Y/%m/%d}/{now:%Y%m%dT%H%M%S}Z-seq{head:012d}.json"
    days = retain_days if retain_days is not None else _retain_days()
    body = json.dumps(document, indent=1, sort_keys=True).encode("utf-8")
    client.put_object(
        Bucket=bucket,
        Key=object_key,
        Body=body,
        ContentType="application/json",
        ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode("ascii"),
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=now + dt.timedelta(days=days),
    )
    log.info(
        "published ledger manifest s3://%s/%s: head seq %s, %s runs, locked %s days",
        bucket, object_key, head, len(document["body"]["run_ids"]), days,
    )  # fmt: skip
    return object_key


def _retain_days() -> int:
    raw = os.environ.get(RETAIN_DAYS_ENV)
    if not raw:
        return DEFAULT_RETAIN_DAYS
    if not raw.isdigit() or int(raw) < 1:
        raise RetentionError(f"${RETAIN_DAYS_ENV} must be a whole number of days, not {raw!r}")
    return int(raw)


@dataclass
class Published:
    """One manifest object as read back from the bucket."""

    key: str
    document: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def fetch_all(client: Any, bucket: str) -> list[Published]:
    """Every manifest in the bucket, oldest first (keys sort by time)."""
    found: list[Published] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=PREFIX):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            try:
                found.append(Published(item["Key"], json.loads(body)))
            except ValueError:
                found.append(Published(item["Key"], error="not JSON"))
    return sorted(found, key=lambda p: p.key)


# ------------------------------------------------------------------------------ checking


def check(reader: EvidenceReader, published: list[Published], public_keys: list[str]) -> list[str]:
    """Problems found comparing the ledger with every published manifest (empty: all agree)."""
    keys = {key_id(k): k for k in public_keys}
    problems: list[str] = []
    for item in published:
        problem = item.error or _signature_problem(item.document, keys)
        problem = problem or _ledger_problem(reader, item.document["body"])
        if problem:
            problems.append(f"manifest {item.key}: {problem}")
    return problems


def _signature_problem(document: dict[str, Any], keys: dict[str, str]) -> str | None:
    body, signature = document.get("body"), document.get("signature")
    if not isinstance(body, dict) or not isinstance(signature, str):
        return "not a signed manifest"
    public = keys.get(str(document.get("key_id")))
    if public is None:
        return f"signed by an unknown key {document.get('key_id')!r}"
    if not signature_ok(public, canonical_json(body), signature):
        return "signature does not match its content: forged or altered"
    return None


def _ledger_problem(reader: EvidenceReader, body: dict[str, Any]) -> str | None:
    seq, expected = int(body["ledger"]["head_seq"]), body["ledger"]["head_hash"]
    if seq == 0:
        return None
    found = reader.entry_hash_at(seq)
    if found is None:
        return f"ledger has no entry {seq}, published as its head: entries removed (truncated)"
    if found != expected:
        return (
            f"ledger entry {seq} has hash {found[:16]}…, published {expected[:16]}…: the chain"
            " up to it was rewritten"
        )
    hold_seq = int(body.get("holds", {}).get("last_seq") or 0)
    if hold_seq and reader.kind_at(hold_seq) not in ("hold_placed", "hold_released"):
        return f"ledger entry {hold_seq}, published as the last hold event, is not one"
    return None
