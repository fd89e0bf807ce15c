"""The S3 source adapter: objects in a bucket (the image bank), and the files SQL records point
to (``ObjectLink``, e.g. candidates' CVs: `S3Adapter.stage_keys`, the run's follow-on step).

Rules read object metadata (``RuleCase.when.column`` and ``anchor_column`` name metadata keys,
falling back to object tags; anchors are ISO-8601 dates or date-times, a date-time taken as its
Stockholm date, a naive one as UTC). An object's metadata is that of its newest version that
is not a delete marker, so soft-deleted objects are found too. Tag keys are case-sensitive:
every value of a lookup key's case variants names a person of the object, and a key a rule
reads whose case variants disagree makes its anchor unknown. While subject holds exist, the
people the older versions of a due object name count for its holds too (a HEAD each).

Deleting an object means removing EVERY version and delete marker of its key
(``list_object_versions`` + ``DeleteObjects`` in calls of at most 1000 entries): in a versioned
bucket anything less deletes nothing. Staging a batch changes nothing (it drops the held
objects); ``apply`` deletes the versions, then confirms with one listing of the batch's key
range that no listed version or delete marker of its keys is left (a key ``DeleteObjects``
reported an error for is not claimed). A key holding only what was written after the listing
(``LastModified`` after the newest listed, in S3's own clock) was uploaded again meanwhile: its
judged versions are gone, so it is claimed and counted ``uploaded_meanwhile``; the new upload
is a new object for the next run. The batch's ``judged_through`` keeps that moment for
recovery and verification (``present``). Where an upload replaces a version in
place (the key's ``null`` version, current or not, in a bucket never versioned or with
versioning suspended), deleting by version id would delete whatever was uploaded last, judged
by nobody: that version is deleted only if its ETag is still the listed one (a conditional
delete), else the object is left whole and counted ``changed_meanwhile``; the next run judges
it afresh. A ``null`` delete marker has no ETag: it goes by version id. Tags change without a new
version or ETag: an object judged by values from its tags is read again just before its batch
is deleted, and kept the same way if the selection no longer selects it or it names other
people. Metadata is read with a HEAD per object (S3 has no bulk read of it),
``HEAD_WORKERS`` at a time, never more than the client's connection pool holds. Logs carry
counts and references only.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from include.retention.catalogue import RuleCase, S3Source
from include.retention.errors import RetentionError
from include.retention.holds import ActiveHolds
from include.retention.lookup import SubjectMatcher
from include.retention.object_store import POOL_CONNECTIONS, iter_versions, s3_client
from include.retention.pseudonym import RecordRefHasher
from include.retention.rules import local_date
from include.retention.sources.base import (
    Action,
    Applied,
    Batch,
    Counts,
    DueAt,
    HoldReader,
    JudgedThrough,
    KeyRange,
    NotUpdatable,
    OfSubject,
    Prepare,
    Record,
    Selection,
    Updated,
    base_selection,
    key_bounds,
    key_ranges,
    register,
)

log = logging.getLogger(__name__)

MAX_KEYS_PER_CALL = 1000  # the DeleteObjects limit
HEAD_WORKERS = POOL_CONNECTIONS
PROGRESS_EVERY = 10.0  # seconds between progress lines while metadata is read
CONFIRM_PAGES = 4  # listing pages a batch's confirmation reads before it checks key by key
NULL_VERSION = "null"  # the version id of an object stored without versioning
# A conditional delete's answers when the object was replaced (412), is being written (409) or
# is gone (404): the object is not this run's to delete or claim.
GONE_CODES = frozenset({"404", "NoSuchKey", "NoSuchVersion"})
CHANGED_CODES = frozenset(
    {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"}
)

Status = Literal["due", "unknown_anchor", "kept", "out_of_scope"]


@dataclass(frozen=True)
class S3Object:
    """One key with its whole history (newest first)."""

    key: str
    versions: tuple[str, ...]  # version ids of every version and delete marker
    delete_markers: int
    latest: str | None  # newest version that is not a delete marker (metadata source)
    # The listed ETag of the key's "null" version, wherever it is in the history: without
    # versioning (never enabled, or suspended) an upload replaces that version in place.
    null_etag: str | None = None
    # The newest LastModified listed (S3's clock, whole seconds): anything of the key written
    # later was not listed, so not judged.
    listed_through: dt.datetime | None = None
    # The versions under ``latest`` that are not delete markers (newest first): deleted with
    # the key, so while subject holds exist the people they name are checked too.
    older: tuple[str, ...] = ()

    @property
    def replaceable(self) -> bool:
        """Whether the key has a ``null`` version, which an upload would replace in place."""
        return self.null_etag is not None

    @property
    def current_is_null(self) -> bool:
        """Whether the current version is the ``null`` one (not a delete marker)."""
        return self.versions[:1] == (NULL_VERSION,) and self.latest == NULL_VERSION


# ------------------------------------------------------------------------------ listing


def list_objects(client: Any, bucket: str, prefix: str = "") -> list[S3Object]:
    """Every key under ``prefix`` with all its versions and delete markers."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    try:
        for version in iter_versions(client, bucket, prefix):
            grouped.setdefault(version["Key"], []).append(version)
    except client.exceptions.NoSuchBucket:
        raise RetentionError(f"bucket {bucket!r} does not exist") from None
    return [_object(key, items) for key, items in sorted(grouped.items())]


def _object(key: str, items: list[dict[str, Any]]) -> S3Object:
    items = sorted(items, key=lambda v: (v["LastModified"], v.get("IsLatest", False)), reverse=True)
    real = [v["VersionId"] for v in items if not v["IsDeleteMarker"]]
    null = [v for v in items if v["VersionId"] == NULL_VERSION and not v["IsDeleteMarker"]]
    return S3Object(
        key=key,
        versions=tuple(v["VersionId"] for v in items),
        delete_markers=sum(1 for v in items if v["IsDeleteMarker"]),
        latest=real[0] if real else None,
        null_etag=null[0]["ETag"] if null else None,
        listed_through=items[0]["LastModified"],
        older=tuple(real[1:]),
    )


def _versions_of(client: Any, bucket: str, key: str) -> S3Object:
    items = [v for v in iter_versions(client, bucket, key) if v["Key"] == key]
    return _object(key, items) if items else S3Object(key, (), 0, None)


@dataclass(frozen=True)
class _Meta:
    """A version's metadata (which never changes), and where it lacks a wanted key, the
    version's tags (which can change). Tag keys are case-sensitive: a key's case variants
    whose values disagree are in ``variants`` (every value), not in ``values``."""

    values: dict[str, str]
    from_tags: frozenset[str] = frozenset()
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def fixed(self, keys: AbstractSet[str]) -> bool:
        """Whether ``keys`` all come from the version's own metadata (cannot change)."""
        return not keys - (self.values.keys() - self.from_tags)

    def record(self) -> dict[str, Any]:
        """Every value, a key of disagreeing variants with the list of them."""
        return {**self.values, **{k: list(v) for k, v in self.variants.items()}}


def _grouped(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Values by lower-case key: those whose case variants agree, and the others' values."""
    found: dict[str, dict[str, None]] = {}
    for key, value in pairs:
        found.setdefault(key.lower(), {})[value] = None
    single = {k: next(iter(v)) for k, v in found.items() if len(v) == 1}
    return single, {k: tuple(v) for k, v in found.items() if len(v) > 1}


def _metadata(client: Any, bucket: str, obj: S3Object, wanted: set[str]) -> _Meta:
    if obj.latest is None:
        return _Meta({})
    # The current "null" version is read as the current object: some S3 servers refuse a
    # version id in a bucket never versioned. A replacement read here fails the delete's ETag.
    version = {} if obj.current_is_null else {"VersionId": obj.latest}
    return _version_metadata(client, bucket, obj.key, version, wanted)


def _version_metadata(
    client: Any, bucket: str, key: str, version: Mapping[str, str], wanted: set[str]
) -> _Meta:
    head = client.head_object(Bucket=bucket, Key=key, **version)
    meta, meta_variants = _grouped(head.get("Metadata", {}).items())
    if not wanted - meta.keys() - meta_variants.keys():
        return _Meta(meta, variants=meta_variants)
    tags = client.get_object_tagging(Bucket=bucket, Key=key, **version)
    tagged, variants = _grouped((t["Key"], t["Value"]) for t in tags.get("TagSet", []))
    own = meta.keys() | meta_variants.keys()  # the version's metadata wins over its tags
    return _Meta(
        {**{k: v for k, v in tagged.items() if k not in own}, **meta},
        frozenset(tagged.keys() - own),
        {**{k: v for k, v in variants.items() if k not in own}, **meta_variants},
    )


def _current_metadata(client: Any, bucket: str, obj: S3Object, wanted: set[str]) -> _Meta | None:
    """The object's metadata now, or None when it is gone (deleted since it was listed)."""
    try:
        return _metadata(client, bucket, obj, wanted)
    except client.exceptions.ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in GONE_CODES:
            return None
        raise


def _older_metadata(
    client: Any, bucket: str, objects: Sequence[S3Object], wanted: set[str]
) -> dict[str, tuple[_Meta, ...]]:
    """By key, the metadata of each object's older versions (a HEAD each); a version deleted
    since it was listed has none."""

    def read(key: str, version: str) -> _Meta | None:
        try:
            return _version_metadata(client, bucket, key, {"VersionId": version}, wanted)
        except client.exceptions.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in GONE_CODES:
                return None
            raise

    pairs = [(o.key, v) for o in objects for v in o.older]
    found: dict[str, list[_Meta]] = {o.key: [] for o in objects}
    with _pool(client) as pool:
        for (key, _), meta in zip(pairs, pool.map(lambda p: read(*p), pairs), strict=True):
            if meta is not None:
                found[key].append(meta)
    return {key: tuple(metas) for key, metas in found.items()}


def _all_metadata(
    client: Any, bucket: str, objects: Sequence[S3Object], wanted: set[str]
) -> list[_Meta]:
    """The metadata of every object (a HEAD each), with a progress line every
    `PROGRESS_EVERY` seconds: a large bucket takes minutes."""
    metas: list[_Meta] = []
    started = shown = time.monotonic()
    with _pool(client) as pool:
        for meta in pool.map(lambda o: _metadata(client, bucket, o, wanted), objects):
            metas.append(meta)
            now = time.monotonic()
            if now - shown >= PROGRESS_EVERY and len(metas) < len(objects):
                shown = now
                rate = len(metas) / max(now - started, 1e-6)
                log.info(
                    "bucket %s: read the metadata of %s of %s objects (%.0f/s, about %.0f s left)",
                    bucket, len(metas), len(objects), rate, (len(objects) - len(metas)) / rate,
                )  # fmt: skip
    return metas


def _pool(client: Any) -> ThreadPoolExecutor:
    """Threads for per-object calls: no more than the client's pool has connections (more
    would open and drop a connection per call)."""
    connections = client.meta.config.max_pool_connections
    return ThreadPoolExecutor(max_workers=max(1, min(HEAD_WORKERS, connections)))


def batches(
    objects: Sequence[S3Object], limit: int = MAX_KEYS_PER_CALL
) -> Iterator[list[S3Object]]:
    """Groups of objects with at most ``limit`` versions in all (bigger objects alone)."""
    batch: list[S3Object] = []
    size = 0
    for obj in objects:
        if batch and size + len(obj.versions) > limit:
            yield batch
            batch, size = [], 0
        batch.append(obj)
        size += len(obj.versions)
    if batch:
        yield batch


@dataclass
class _Deleted:
    """What deleting a batch's objects did, by key."""

    failed: set[str] = field(default_factory=set)  # an error was reported
    changed: set[str] = field(default_factory=set)  # replaced since listed: left whole
    versions: int = 0
    calls: int = 0


def _delete_versions(
    client: Any, bucket: str, objects: Sequence[S3Object], *, if_unchanged: bool
) -> _Deleted:
    """Delete every version of ``objects``: DeleteObjects by version id, after (with
    ``if_unchanged``) a conditional delete of each ``null`` version, which an upload would
    replace."""
    replaceable = [o for o in objects if o.replaceable] if if_unchanged else []
    done = _delete_if_unchanged(client, bucket, replaceable)
    left = done.failed | done.changed  # left whole
    entries = [
        {"Key": o.key, "VersionId": v}
        for o in objects if o.key not in left
        for v in o.versions if not (if_unchanged and o.replaceable and v == NULL_VERSION)
    ]  # fmt: skip
    for start in range(0, len(entries), MAX_KEYS_PER_CALL):
        chunk = entries[start : start + MAX_KEYS_PER_CALL]
        response = client.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
        done.calls += 1
        done.failed |= {error["Key"] for error in response.get("Errors", [])}
    done.versions = sum(len(o.versions) for o in objects if o.key not in done.failed | left)
    return done


def _delete_if_unchanged(client: Any, bucket: str, objects: Sequence[S3Object]) -> _Deleted:
    """Delete each object's ``null`` version if its ETag is still the listed one."""

    def delete(obj: S3Object) -> str | None:
        try:
            client.delete_object(
                Bucket=bucket, Key=obj.key, VersionId=NULL_VERSION, IfMatch=obj.null_etag
            )
        except client.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in CHANGED_CODES:
                return "changed"
            if code in ("AccessDenied", "403"):
                return "failed"
            raise
        return None

    done = _Deleted(calls=len(objects))
    if not objects:
        return done
    with _pool(client) as pool:
        for obj, outcome in zip(objects, pool.map(delete, objects), strict=True):
            if outcome == "changed":
                done.changed.add(obj.key)
            elif outcome == "failed":
                done.failed.add(obj.key)
    return done


def _remaining(client: Any, bucket: str, keys: Sequence[str]) -> dict[str, dt.datetime]:
    """Confirm: the keys that still have a version or delete marker (e.g. uploaded meanwhile),
    each with the LastModified of the oldest of them.

    One listing under the keys' common prefix, up to the last key: a batch holds the next due
    keys in key order and earlier batches deleted theirs, so what precedes them there is
    mostly kept objects. Keys not yet passed after ``CONFIRM_PAGES`` pages (keys spread thinly
    under a short prefix, e.g. linked files) are listed one by one.
    """
    wanted = set(keys)
    if not wanted:
        return {}
    first, last = min(wanted), max(wanted)
    pages = client.get_paginator("list_object_versions").paginate(
        Bucket=bucket,
        Prefix=os.path.commonprefix([first, last]),  # noqa: RUF071 (S3 prefixes are per character)
    )
    found: dict[str, dt.datetime] = {}
    reached = ""  # every key below it has been listed completely
    for page in itertools.islice(pages, CONFIRM_PAGES):
        _oldest(itertools.chain(page.get("Versions", ()), page.get("DeleteMarkers", ())), found)
        if not page.get("IsTruncated") or page["NextKeyMarker"] > last:
            return {k: at for k, at in found.items() if k in wanted}
        reached = page["NextKeyMarker"]
    rest = sorted(k for k in wanted - found.keys() if k >= reached)
    with _pool(client) as pool:
        for entries in pool.map(lambda k: list(iter_versions(client, bucket, k)), rest):
            _oldest(entries, found)
    return {k: at for k, at in found.items() if k in wanted}


def _oldest(entries: Iterable[Mapping[str, Any]], into: dict[str, dt.datetime]) -> None:
    """Per key of ``entries`` (versions, delete markers), the oldest LastModified, into ``into``."""
    for entry in entries:
        key, at = entry["Key"], entry["LastModified"]
        if key not in into or at < into[key]:
            into[key] = at


def _written_after(at: dt.datetime, through: dt.datetime | None) -> bool:
    """Whether something written at ``at`` is newer than ``through``. Both are S3's whole
    seconds: the same second could be either, so it counts as not newer (the safe side)."""
    return through is not None and at > through


# ------------------------------------------------------------------------------ rules


def _wanted_keys(rules: Sequence[RuleCase]) -> set[str]:
    keys = {c.anchor_column.lower() for c in rules if c.anchor_column}
    keys |= {c.when.column.lower() for c in rules if c.when}
    return keys


def _applies(case: RuleCase, meta: Mapping[str, str]) -> bool:
    if case.when is None:
        return True
    value = meta.get(case.when.column.lower())
    return value is not None and value.strip().lower() in {str(v).lower() for v in case.when.values}


def _anchor_date(meta: Mapping[str, str], column: str) -> dt.date | None:
    """The anchor's Stockholm date: an ISO-8601 date as it is, a date-time converted (a naive
    one is UTC, as in an HTTP source without ``anchor_timezone``); None when unreadable."""
    raw = meta.get(column.lower())
    if not raw:
        return None
    text = raw.strip()
    try:
        if len(text) == 10:
            return dt.date.fromisoformat(text)
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return local_date(moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC))


def classify(
    rules: Sequence[RuleCase],
    meta: Mapping[str, str],
    as_of: dt.datetime,
    ambiguous: AbstractSet[str] = frozenset(),
) -> tuple[Status, str | None]:
    """The status of one object by its metadata, and the label of the deciding case.
    ``ambiguous``: keys (lower case) with disagreeing values (tag keys differing in case); one
    a rule reads makes the object's anchor unknown."""
    unclear = next((c for c in rules if _wanted_keys([c]) & ambiguous), None)
    if unclear is not None:
        return "unknown_anchor", unclear.label or unclear.anchor_column
    applicable = [c for c in rules if _applies(c, meta)]
    if not applicable:
        return "out_of_scope", None
    unknown: str | None = None
    for case in applicable:
        if not case.rule.enforceable or case.anchor_column is None:
            continue
        anchor, cutoff = _anchor_date(meta, case.anchor_column), case.rule.cutoff_date(as_of)
        if anchor is None:
            if not case.rule.null_anchor_is_pending:
                unknown = unknown or (case.label or case.anchor_column)
        elif cutoff is not None and anchor <= cutoff:
            return "due", case.label
    return ("unknown_anchor", unknown) if unknown else ("kept", None)


def _cutoffs(rules: Sequence[RuleCase], as_of: dt.datetime) -> tuple[str | None, ...]:
    out: list[str | None] = []
    for case in rules:
        cut = case.rule.cutoff_date(as_of) if case.rule.enforceable else None
        out.append(None if cut is None else cut.isoformat())
    return tuple(out)


# ------------------------------------------------------------------------------ the adapter


@dataclass
class _Staged:
    """A batch's objects (held ones dropped) and what is known of their metadata."""

    objects: list[S3Object]
    metas: dict[str, _Meta] = field(default_factory=dict)
    # The metadata of the objects' older versions, by key, where it was read (only while
    # subject holds exist: see `S3Adapter._stage`).
    older: dict[str, tuple[_Meta, ...]] = field(default_factory=dict)
    bucket_counts: dict[str, int] = field(default_factory=dict)
    # The selection that judged the objects by their metadata: they go only unchanged. None
    # for linked files, which are judged by their record and go with it.
    base: DueAt | OfSubject | None = None


@register("s3")
class S3Adapter:
    """One bucket (under a prefix) of a system (see the module doc)."""

    kind: ClassVar[str] = "s3"

    def __init__(self, binding: S3Source, key: bytes, connection: Any = None) -> None:
        if not isinstance(binding, S3Source):
            raise RetentionError(f"the S3 adapter needs an 's3' source, not {binding.kind!r}")
        self.binding, self.key = binding, key
        self.client = connection if connection is not None else s3_client(binding.conn_id)
        self.system, self.dataset, self.bucket = binding.system, binding.dataset, binding.bucket
        self.hasher = RecordRefHasher(key, self.system, self.dataset)
        self._matcher = SubjectMatcher(key, binding.lookup_columns())
        # The last count's selection, its objects, their metadata and that of their older
        # versions (read at count time).
        self._selected: (
            tuple[Selection, list[S3Object], dict[str, _Meta], dict[str, tuple[_Meta, ...]]] | None
        ) = None

    # -------------------------------------------------------------------- the protocol

    def resolve(self, action: Action | None = None) -> None:
        if action is not None and action.kind != "delete":
            raise RetentionError(
                f"bucket {self.bucket!r}: objects can only be deleted, not {action.kind}d"
            )
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except self.client.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise RetentionError(
                    f"bucket {self.bucket!r} does not exist (system {self.system!r},"
                    f" connection {self.binding.conn_id!r})"
                ) from None
            raise

    def count(self, selection: Selection, action: Action, holds: ActiveHolds) -> Counts:
        objects = self._listed(selection)
        base = base_selection(selection)
        rules = base.rules if isinstance(base, DueAt) else ()
        metas = _all_metadata(self.client, self.bucket, objects, self._wanted(rules))
        tally = dict.fromkeys(
            ("due", "held", "restricted", "unknown_anchor", "kept", "out_of_scope"), 0
        )
        statuses = [self._status(base, meta) for meta in metas]
        judged = list(zip(objects, metas, statuses, strict=True))
        chosen = [o for o, _, status in judged if status == "due"]
        chosen_metas = {o.key: m for o, m, status in judged if status == "due"}
        older = self._older(chosen) if holds.subjects else {}
        for obj, _, status in judged:
            if status == "due":
                subjects = self._all_subjects(chosen_metas[obj.key], older.get(obj.key, ()))
                hold = holds.kind_for(self.hasher.ref(obj.key), subjects)
                status = {"legal_hold": "held", "restriction": "restricted"}.get(hold or "", "due")
            tally[status] += 1
        self._selected = (selection, chosen, chosen_metas, older)
        counts = Counts(
            total=len(objects), selected=tally["due"] + tally["held"] + tally["restricted"],
            held=tally["held"], restricted=tally["restricted"],
            anchor_unknown=tally["unknown_anchor"], kept=tally["kept"],
            out_of_scope=tally["out_of_scope"],
            cutoffs=_cutoffs(rules, base.as_of) if isinstance(base, DueAt) else (),
        )  # fmt: skip
        log.info("%s/%s: %s", self.system, self.dataset, counts)
        return counts

    def partitions(self, selection: Selection, size: int) -> list[KeyRange]:
        if size < 1:
            raise RetentionError("a partition needs at least one record")
        keys = [o.key for o in self._listed(selection)]
        uppers = [keys[i] for i in range(size - 1, len(keys) - 1, size)]
        return key_ranges(selection, uppers)

    def batches(
        self, selection: Selection, action: Action, holds: HoldReader, size: int
    ) -> Iterator[Batch]:
        if self._selected is None or self._selected[0] != selection:
            self.count(selection, action, holds())
        _, chosen, metas, older = self._selected or (selection, [], {}, {})
        limit = max(1, min(size, MAX_KEYS_PER_CALL))
        for no, group in enumerate(batches(chosen, limit), start=1):
            group_metas = {o.key: metas[o.key] for o in group}
            group_older = {o.key: older[o.key] for o in group if o.key in older}
            staged = _Staged(list(group), group_metas, group_older, base=base_selection(selection))
            yield self._stage(no, staged, holds)

    def redo(self, batch: Batch, holds: HoldReader) -> Batch:
        staged: _Staged = batch.state
        again = self._stage(
            batch.no, _Staged(staged.objects, staged.metas, staged.older, base=staged.base), holds
        )
        for kind, n in batch.skipped.items():  # held at the first staging: still skipped
            again.skipped[kind] = again.skipped.get(kind, 0) + n
        return again

    def apply(self, batch: Batch) -> Applied:
        staged: _Staged = batch.state
        retagged = self._retagged(staged)
        objects = [o for o in staged.objects if o.key not in retagged]
        judged = staged.base is not None
        done = _delete_versions(self.client, self.bucket, objects, if_unchanged=judged)
        changed = retagged | done.changed
        listed = {o.key: o.listed_through for o in objects if o.key not in changed}
        remaining = _remaining(self.client, self.bucket, list(listed))
        # Only what was written after the listing left: the judged versions are gone, and the
        # key holds a new upload (a new object, for the next run to judge). Not for a linked
        # file: no run would find a new upload once its record is gone, so its batch fails
        # and the record stays (the next run deletes both).
        again = {
            k for k, at in remaining.items() if judged and _written_after(at, listed[k])
        }  # fmt: skip
        failed = done.failed | (remaining.keys() - again)
        applied = [self.hasher.ref(key) for key in listed if key not in failed]
        counts = {"versions_deleted": done.versions, "delete_calls": done.calls}
        if changed:
            log.info("%s object(s) changed since they were judged: left for the next run",
                     len(changed))  # fmt: skip
            counts["changed_meanwhile"] = len(changed)
        if uploaded := len(again - done.failed):
            log.info("%s object(s) uploaded again under their key while deleted: the new"
                     " uploads stay for the next run", uploaded)  # fmt: skip
            counts["uploaded_meanwhile"] = uploaded
        return Applied(refs=applied, failed=len(failed), counts=counts)

    def abandon(self, batch: Batch) -> None:
        """Staging changed nothing."""

    def present(
        self, refs: AbstractSet[bytes], action: Action, within: Selection | None = None,
        judged_through: JudgedThrough | None = None,
    ) -> set[bytes]:  # fmt: skip
        """The keys with any version or delete marker; with ``judged_through``, one written
        no later than the newest version the claiming batch judged (newer: new uploads)."""
        oldest: dict[str, dt.datetime] = {}
        _oldest(iter_versions(self.client, self.bucket, self.binding.prefix), oldest)
        keys = sorted(oldest)
        through = judged_through or {}
        return {
            ref for ref, key in zip(self.hasher.refs(keys), keys, strict=True)
            if ref in refs and not _written_after(oldest[key], through.get(ref))
        }  # fmt: skip

    def read(self, selection: Selection) -> Iterator[Record]:
        base = base_selection(selection)
        rules = base.rules if isinstance(base, DueAt) else ()
        objects = self._listed(selection)
        metas = _all_metadata(self.client, self.bucket, objects, self._wanted(rules))
        for obj, meta in zip(objects, metas, strict=True):
            if self._status(base, meta) == "due":
                yield {"key": obj.key, "versions": len(obj.versions), "metadata": meta.record()}

    def fields_to_update(self, values: Mapping[str, Any]) -> dict[str, Any]:
        raise self._not_updatable()

    def update(
        self, selection: Selection, values: Mapping[str, Any], holds: HoldReader,
        prepare: Prepare,
    ) -> Updated:  # fmt: skip
        raise self._not_updatable()

    def holding(self, refs: AbstractSet[bytes], values: Mapping[str, Any]) -> set[bytes]:
        raise self._not_updatable()

    def _not_updatable(self) -> NotUpdatable:
        return NotUpdatable(
            f"bucket {self.bucket!r} of system {self.system!r}: an object's metadata cannot be"
            " changed without rewriting the object; rectify it in the system itself"
        )

    def kept_files(self) -> dict[str, dict[str, bool]]:
        return {}  # objects link to no files

    def close(self) -> None:
        """The client belongs to whoever made it."""

    # -------------------------------------------------------------------- linked files

    def stage_keys(self, keys: Sequence[str], holds: HoldReader, no: int) -> Iterator[Batch]:
        """Stage the objects of exactly these keys (files SQL records point to), every version;
        batch numbers are all ``no`` (the records' batch). Keys without any version are counted
        as ``missing`` in the first batch."""
        with _pool(self.client) as pool:
            found = list(pool.map(lambda k: _versions_of(self.client, self.bucket, k), keys))
        present = [o for o in found if o.versions]
        missing = len(found) - len(present)
        for i, group in enumerate(batches(present) if present else [[]]):
            counts = {"missing": missing} if i == 0 else {}
            staged = _Staged(list(group), bucket_counts=counts)
            yield self._stage(no, staged, holds)

    # -------------------------------------------------------------------- helpers

    def _listed(self, selection: Selection) -> list[S3Object]:
        lower, upper = key_bounds(selection)
        objects = list_objects(self.client, self.bucket, self.binding.prefix)
        return [
            o for o in objects if o.latest is not None
            and (lower is None or o.key > str(lower)) and (upper is None or o.key <= str(upper))
        ]  # fmt: skip

    def _wanted(self, rules: Sequence[RuleCase]) -> set[str]:
        return _wanted_keys(rules) | {c.column.lower() for c in self._matcher.columns}

    def _subject_refs(self, meta: _Meta) -> frozenset[bytes]:
        """The references of a version's lookup metadata (keys are lower case), every value
        of a key's case variants included."""
        refs = self._matcher.record_refs(meta.values)
        for key, values in meta.variants.items():
            for value in values:
                refs |= self._matcher.record_refs({key: value})
        return refs

    def _all_subjects(self, meta: _Meta, older: Iterable[_Meta]) -> frozenset[bytes]:
        """The references of an object's lookup metadata and of its older versions'."""
        return self._subject_refs(meta).union(*(self._subject_refs(m) for m in older))

    def _older(self, objects: Sequence[S3Object]) -> dict[str, tuple[_Meta, ...]]:
        """The metadata of the older versions of ``objects`` (their lookup keys only)."""
        lookup = {c.column.lower() for c in self._matcher.columns}
        with_older = [o for o in objects if o.older]
        if not lookup or not with_older:
            return {o.key: () for o in objects}
        read = _older_metadata(self.client, self.bucket, with_older, lookup)
        return {o.key: read.get(o.key, ()) for o in objects}

    def _status(self, base: DueAt | OfSubject, meta: _Meta) -> str:
        if isinstance(base, DueAt):
            return classify(base.rules, meta.values, base.as_of, meta.variants.keys())[0]
        if not self._matcher.columns:
            raise RetentionError(
                f"dataset {self.dataset!r} (bucket {self.bucket!r}) has no lookup metadata key:"
                " its objects cannot be selected by data subject (set source.lookup)"
            )
        return "due" if base.matches(self._subject_refs(meta)) else "out_of_scope"

    def _stage(self, no: int, staged: _Staged, holds: HoldReader) -> Batch:
        """Drop the objects held now, by the subjects of the metadata read when counting (a
        version's metadata never changes); while holds exist, subjects that came from object
        tags (which can change) are read afresh. Every version of a key is deleted: while
        subject holds exist, the people its older versions name are checked too (read here
        if the count did not). Without them, the batch says its subjects are not all read,
        so a subject hold placed before its delete has it staged again."""
        active = holds()
        objects = staged.objects
        if not active.empty:
            self._refresh_subjects(staged)
        if active.subjects and staged.base is not None:
            self._refresh_older(staged)
        kinds = (
            {}
            if active.empty
            else {o.key: active.kind_for(self.hasher.ref(o.key), self._subjects(staged, o))
                  for o in objects}
        )  # fmt: skip
        keep = [o for o in objects if not kinds.get(o.key)]
        skipped = [k for k in kinds.values() if k]
        subjects = frozenset(ref for o in keep for ref in self._subjects(staged, o))
        unread = staged.base is not None and any(
            o.older and o.key not in staged.older for o in keep
        )
        return Batch(
            no=no, refs=[self.hasher.ref(o.key) for o in keep], holds=active, subjects=subjects,
            unread_subjects=unread,
            skipped={k: skipped.count(k) for k in ("legal_hold", "restriction") if k in skipped},
            counts={"versions": sum(len(o.versions) for o in keep), **staged.bucket_counts},
            judged_through=self._judged_through(staged, keep),
            state=replace(staged, objects=keep),
        )  # fmt: skip

    @staticmethod
    def _judged_through(staged: _Staged, objects: Sequence[S3Object]) -> dt.datetime | None:
        """The newest write the batch judged; None for linked files (any version of theirs
        left counts as present, see ``apply``)."""
        if staged.base is None:
            return None
        return max((o.listed_through for o in objects if o.listed_through), default=None)

    def _retagged(self, staged: _Staged) -> set[str]:
        """The objects whose judgement rested on tags (which change without a new version)
        and which, read again now, are gone, no longer selected or name other people."""
        base = staged.base
        if base is None:
            return set()
        wanted = self._wanted(base.rules if isinstance(base, DueAt) else ())
        judged = {o.key: staged.metas.get(o.key, _Meta({})) for o in staged.objects}
        stale = [o for o in staged.objects if not judged[o.key].fixed(wanted)]
        if not stale:
            return set()
        with _pool(self.client) as pool:
            fresh = pool.map(
                lambda o: _current_metadata(self.client, self.bucket, o, wanted), stale
            )
            return {
                o.key for o, now in zip(stale, fresh, strict=True)
                if now is None or self._status(base, now) != "due"
                or self._subject_refs(now) != self._subject_refs(judged[o.key])
            }  # fmt: skip

    def _refresh_subjects(self, staged: _Staged) -> None:
        """Read again the metadata of the objects whose subjects may come from tags."""
        lookup = {c.column.lower() for c in self._matcher.columns}
        stale = [o for o in staged.objects if not staged.metas.get(o.key, _Meta({})).fixed(lookup)]
        if lookup and stale:
            fresh = _all_metadata(self.client, self.bucket, stale, lookup)
            staged.metas = {**staged.metas, **{o.key: m for o, m in zip(stale, fresh, strict=True)}}

    def _refresh_older(self, staged: _Staged) -> None:
        """Read the older versions' metadata where the count did not, and again where their
        subjects may come from tags."""
        lookup = {c.column.lower() for c in self._matcher.columns}
        stale = [
            o for o in staged.objects if o.older and (
                o.key not in staged.older
                or not all(m.fixed(lookup) for m in staged.older[o.key])
            )
        ]  # fmt: skip
        if stale:
            staged.older = {**staged.older, **self._older(stale)}

    def _subjects(self, staged: _Staged, obj: S3Object) -> frozenset[bytes]:
        meta = staged.metas.get(obj.key)
        if meta is None:
            return frozenset()
        return self._all_subjects(meta, staged.older.get(obj.key, ()))
