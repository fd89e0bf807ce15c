"""Seed the demo buckets: ``image-bank`` (photos and videos) and ``cv-files`` (candidates' CVs).

Both buckets are versioned. Image-bank objects carry the metadata the catalogue's rules read
(``category``, ``capture_date``, ``subject``: a name-less e-mail address of the person). The
designs are the same as for SQL datasets (expired, kept, boundary, held, unknown anchor, out of
scope), plus version histories: an expired object with old versions, an expired object whose current
version is a delete marker (soft-deleted: still retained), and a kept object with old versions.
"""

from __future__ import annotations

import datetime as dt
import random
import zlib
from typing import Any

from include.demo.design import Design, Designer, OutOfScope
from include.demo.embedded_s3 import ensure_bucket, purge_bucket
from include.demo.manifest import Expectation, Manifest, ManifestEntry
from include.retention.catalogue import Activity, Catalogue, S3Source, SqlSource, load_catalogue
from include.retention.errors import RetentionError

IMAGE_BANK = "image_bank"
_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
_MP4 = b"\x00\x00\x00\x18ftypmp42"
_PDF = b"%PDF-1.4\n"


def _rng(seed: int, name: str) -> random.Random:
    return random.Random(seed ^ zlib.crc32(name.encode("utf-8")))


def _body(rng: random.Random, header: bytes) -> bytes:
    return header + rng.randbytes(rng.randint(64, 512))


def _put(client: Any, bucket: str, key: str, body: bytes, metadata: dict[str, str]) -> None:
    content_type = "video/mp4" if key.endswith(".mp4") else "image/jpeg"
    if key.endswith(".pdf"):
        content_type = "application/pdf"
    client.put_object(
        Bucket=bucket, Key=key, Body=body, Metadata=metadata, ContentType=content_type
    )


def _metadata(design: Design, subject_key: str, subject: str) -> dict[str, str]:
    meta = {subject_key: subject}
    category = design.values.get("category")
    if category is not None:
        meta["category"] = str(category)
    capture = design.values.get("capture_date")
    if isinstance(capture, dt.date):
        meta["capture_date"] = capture.isoformat()
    elif isinstance(capture, str):
        meta["capture_date"] = capture
    return meta


def _image_designs(activity: Activity, as_of: dt.datetime, rng: random.Random) -> list[Design]:
    designer = Designer(activity, as_of, {"capture_date": "date"}, rng)
    designs = designer.designs(
        (
            OutOfScope({"category": "brand"}, note="brand asset: no rule case applies"),
            OutOfScope({"category": "brand"}, note="brand asset: no rule case applies"),
        )
    )
    designs.append(
        Design(
            Expectation.unknown_anchor,
            {"category": "spontaneous", "capture_date": "2021-13-40"},
            note="unreadable capture_date",
        )
    )
    return designs


def _image_key(index: int, design: Design, rng: random.Random) -> str:
    video = design.values.get("category") == "spontaneous" and index % 3 == 0
    kind, ext = ("videos", "mp4") if video else ("photos", "jpg")
    return f"media/{kind}/{index:04d}-{rng.getrandbits(32):08x}.{ext}"


def seed_image_bank(
    client: Any, activity: Activity, as_of: dt.datetime, *, seed: int
) -> list[ManifestEntry]:
    """Create the versioned image bank with designed objects and histories."""
    src = activity.source
    if not isinstance(src, S3Source):
        raise RetentionError(f"activity {activity.id!r}: expected an s3 source")
    ensure_bucket(client, src.bucket, versioned=True)
    purge_bucket(client, src.bucket)
    rng = _rng(seed, activity.id)
    entries: list[ManifestEntry] = []
    histories = {"expired_versions": False, "expired_marker": False, "kept_versions": False}
    for index, design in enumerate(_image_designs(activity, as_of, rng), start=1):
        key = _image_key(index, design, rng)
        subject = f"person-{2000 + index:05d}@example.se"
        meta = _metadata(design, src.lookup["email"], subject)
        header = _MP4 if key.endswith(".mp4") else _JPEG
        note = _history(client, src.bucket, key, design, histories, rng, header, meta)
        if not note:
            _put(client, src.bucket, key, _body(rng, header), meta)
        entries.append(
            ManifestEntry(
                activity=activity.id,
                system=src.system,
                dataset=src.bucket,
                pk=key,
                expectation=design.expectation,
                kind="object",
                subject=subject,
                hold=design.hold,
                note="; ".join(p for p in (design.note, note) if p),
            )
        )
    entries.append(_outside_prefix(client, activity, src, as_of, rng))
    return entries


def _history(
    client: Any,
    bucket: str,
    key: str,
    design: Design,
    done: dict[str, bool],
    rng: random.Random,
    header: bytes,
    meta: dict[str, str],
) -> str:
    """Write a version history for the first expired/kept objects; '' if not this one."""
    if design.expectation == Expectation.expired and not done["expired_versions"]:
        done["expired_versions"] = True
        for _ in range(3):
            _put(client, bucket, key, _body(rng, header), meta)
        return "3 versions"
    if design.expectation == Expectation.expired and not done["expired_marker"]:
        done["expired_marker"] = True
        for _ in range(2):
            _put(client, bucket, key, _body(rng, header), meta)
        client.delete_object(Bucket=bucket, Key=key)  # soft delete: a delete marker on top
        return "2 versions under a delete marker"
    if design.expectation == Expectation.kept and not done["kept_versions"]:
        done["kept_versions"] = True
        for _ in range(2):
            _put(client, bucket, key, _body(rng, header), meta)
        return "2 versions"
    return ""


def _outside_prefix(
    client: Any, activity: Activity, src: S3Source, as_of: dt.datetime, rng: random.Random
) -> ManifestEntry:
    """An old photo outside the activity's prefix: never the activity's to delete."""
    key = f"exports/{rng.getrandbits(32):08x}.jpg"
    old = (as_of - dt.timedelta(days=3000)).date().isoformat()
    meta = {"category": "spontaneous", "capture_date": old, "subject": "person-09999@example.se"}
    _put(client, src.bucket, key, _body(rng, _JPEG), meta)
    return ManifestEntry(
        activity=activity.id,
        system=src.system,
        dataset=src.bucket,
        pk=key,
        expectation=Expectation.out_of_scope,
        kind="object",
        subject="person-09999@example.se",
        note=f"outside the prefix {src.prefix!r}",
    )


def seed_linked_files(
    client: Any, activity: Activity, rows: list[ManifestEntry], *, seed: int
) -> list[ManifestEntry]:
    """Create the files SQL records point to (e.g. CVs); each follows its record's fate."""
    src = activity.source
    if not isinstance(src, SqlSource) or not src.objects:
        return []
    rng = _rng(seed, activity.id + "/objects")
    entries: list[ManifestEntry] = []
    for link in src.objects:
        ensure_bucket(client, link.bucket, versioned=True)
        purge_bucket(client, link.bucket)
    bucket = src.objects[0].bucket
    reuploaded = False
    for row in rows:
        for key in row.objects:
            versions = 2 if row.expectation == Expectation.expired and not reuploaded else 1
            reuploaded = reuploaded or versions == 2
            for _ in range(versions):
                _put(client, bucket, key, _body(rng, _PDF), {"record": str(row.pk)})
            entries.append(
                ManifestEntry(
                    activity=activity.id,
                    system=src.system,
                    dataset=bucket,
                    pk=key,
                    expectation=row.expectation,
                    kind="object",
                    subject=row.subject,
                    note=f"file of {row.dataset} {row.pk}"
                    + ("; 2 versions" if versions == 2 else ""),
                )
            )
    return entries


def seed_objects(
    client: Any,
    as_of: dt.datetime,
    manifest: Manifest,
    *,
    catalogue: Catalogue | None = None,
    seed: int,
) -> list[ManifestEntry]:
    """Seed every S3 activity's bucket and the files of SQL records already in ``manifest``."""
    catalogue = catalogue or load_catalogue()
    entries: list[ManifestEntry] = []
    for activity in catalogue:
        if isinstance(activity.source, S3Source):
            entries += seed_image_bank(client, activity, as_of, seed=seed)
        elif isinstance(activity.source, SqlSource) and activity.source.objects:
            rows = [e for e in manifest.for_activity(activity.id, kind="row") if e.objects]
            entries += seed_linked_files(client, activity, rows, seed=seed)
    return entries
