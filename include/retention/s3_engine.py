"""The enforcement engine for object storage: S3 sources (the image bank) and the files SQL
records point to (``ObjectLink``, e.g. candidates' CVs).

Rules read object metadata (``RuleCase.when.column`` and ``anchor_column`` name metadata keys,
falling back to object tags; anchors are ``YYYY-MM-DD`` dates). An object's metadata is that of
its newest version that is not a delete marker, so soft-deleted objects are found too.

Deleting an object means removing EVERY version and delete marker of its key
(``list_object_versions`` + ``DeleteObjects`` in calls of at most 1000 entries): in a versioned
bucket anything less deletes nothing. Each batch follows the ledger's write-ahead protocol:

1. read the active holds afresh and drop held objects (record holds on the object key,
   subject holds via the subject metadata);
2. append ``batch_prepared`` with the objects' pseudonymous references
   (HMAC over system, bucket, key) BEFORE deleting;
2b. read the active holds once more and keep the objects held since step 1 (hold placement
   waits for batches past this check, see `leases.wait_for_in_flight`);
3. delete all versions;
4. append ``batch_resolved``: ``committed``, or ``partial``/``rolled_back`` from the
   DeleteObjects errors.

After a crash, :func:`recover_s3` settles prepared batches by checking which keys still have
any version: keys gone were deleted, the others were not. Logs carry counts and references only.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from include.retention.catalogue import Activity, RuleCase, S3Source, SqlSource
from include.retention.errors import RetentionError
from include.retention.holds import ActiveHolds
from include.retention.leases import lease_name, leased
from include.retention.ledger import RunHeader, code_version
from include.retention.object_store import iter_versions, s3_client
from include.retention.pseudonym import RecordRefHasher, SubjectRefHasher, pack_refs, unpack_refs
from include.retention.runs import (
    Control,
    PlanResult,
    RunResult,
    check_as_of,
    check_not_early,
    checkpoint,
    close_interrupted_runs,
    database_errors,
    decide,
    finish_failed,
    finish_run,
    settle_batch,
)

log = logging.getLogger(__name__)

MAX_KEYS_PER_CALL = 1000  # the DeleteObjects limit
# Crash-test checkpoints (see runs.KILL_ENV); also passed by linked-file batches of SQL runs.
CHECKPOINTS = ("s3_run_started", "s3_after_prepare", "s3_after_delete", "s3_after_resolve")
HEAD_WORKERS = 16

Status = Literal["due", "unknown_anchor", "kept", "out_of_scope"]
ClientFactory = Callable[[str], Any]


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class S3Object:
    """One key with its whole history (newest first)."""

    key: str
    versions: tuple[str, ...]  # version ids of every version and delete marker
    delete_markers: int
    latest: str | None  # newest version that is not a delete marker (metadata source)


@dataclass(frozen=True)
class S3Plan:
    """What a run would do, as :class:`PlanResult` counts, plus the due objects themselves."""

    result: PlanResult
    bucket: str
    prefix: str
    due: tuple[S3Object, ...] = field(repr=False)
    versions: int = 0  # versions and delete markers of the due, unheld objects

    def counts(self) -> dict[str, int]:
        return self.result.counts() | {"versions": self.versions}


@dataclass
class S3EnforceResult(RunResult):
    """An S3 run: :class:`RunResult` (``applied``: objects whose every version is gone) plus
    versions and DeleteObjects calls."""

    plan: S3Plan
    versions_deleted: int = 0
    failed: int = 0  # objects with a version DeleteObjects refused
    delete_calls: int = 0
    recovery: S3Recovery | None = None

    def extra_counts(self) -> dict[str, Any]:
        return {
            "versions_deleted": self.versions_deleted,
            "failed": self.failed,
            "delete_calls": self.delete_calls,
        }


@dataclass
class S3Recovery:
    committed: int = 0
    rolled_back: int = 0
    partial: int = 0
    runs_closed: int = 0


@dataclass
class LinkedDeleteResult:
    """What :func:`delete_linked_objects` did for one SQL batch."""

    objects: int = 0
    versions_deleted: int = 0
    held_skipped: int = 0
    failed: int = 0
    missing: int = 0  # keys with no version at all (already gone)
    batches: list[int] = field(default_factory=list)  # ledger seqs of the prepared entries


# ------------------------------------------------------------------------------ listing


def _s3_source(activity: Activity) -> S3Source:
    if not isinstance(activity.source, S3Source):
        raise RetentionError(f"activity {activity.id!r}: the S3 engine needs an 's3' source")
    return activity.source


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
    latest = next((v["VersionId"] for v in items if not v["IsDeleteMarker"]), None)
    return S3Object(
        key=key,
        versions=tuple(v["VersionId"] for v in items),
        delete_markers=sum(1 for v in items if v["IsDeleteMarker"]),
        latest=latest,
    )


def _metadata(client: Any, bucket: str, obj: S3Object, wanted: set[str]) -> dict[str, str]:
    """User metadata of the newest real version; object tags fill keys metadata lacks."""
    if obj.latest is None:
        return {}
    head = client.head_object(Bucket=bucket, Key=obj.key, VersionId=obj.latest)
    meta = {k.lower(): v for k, v in head.get("Metadata", {}).items()}
    if wanted - meta.keys():
        tags = client.get_object_tagging(Bucket=bucket, Key=obj.key, VersionId=obj.latest)
        for tag in tags.get("TagSet", []):
            meta.setdefault(tag["Key"].lower(), tag["Value"])
    return meta


def _all_metadata(
    client: Any, bucket: str, objects: Sequence[S3Object], wanted: set[str]
) -> list[dict[str, str]]:
    with ThreadPoolExecutor(max_workers=HEAD_WORKERS) as pool:
        return list(pool.map(lambda o: _metadata(client, bucket, o, wanted), objects))


# ------------------------------------------------------------------------------ rules


def _wanted_keys(activity: Activity) -> set[str]:
    keys = {c.anchor_column.lower() for c in activity.retention if c.anchor_column}
    keys |= {c.when.column.lower() for c in activity.retention if c.when}
    return keys


def _applies(case: RuleCase, meta: Mapping[str, str]) -> bool:
    if case.when is None:
        return True
    value = meta.get(case.when.column.lower())
    return value is not None and value.strip().lower() in {_text(v) for v in case.when.values}


def _text(value: Any) -> str:
    return str(value).lower()  # True -> "true", matching metadata text


def _anchor_date(meta: Mapping[str, str], column: str) -> dt.date | None:
    raw = meta.get(column.lower())
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw.strip()[:10])
    except ValueError:
        return None


def classify(
    activity: Activity, meta: Mapping[str, str], as_of: dt.datetime
) -> tuple[Status, str | None]:
    """The status of one object by its metadata, and the label of the deciding case."""
    applicable = [c for c in activity.retention if _applies(c, meta)]
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


@dataclass(frozen=True)
class _HoldCheck:
    records: RecordRefHasher
    subjects: SubjectRefHasher
    active: ActiveHolds
    subject_key: str | None

    def kind(self, key: str, meta: Mapping[str, str]) -> str | None:
        if self.active.empty:
            return None
        subject = meta.get(self.subject_key.lower()) if self.subject_key else None
        sref = self.subjects.ref(subject) if subject else None
        return self.active.kind_for(self.records.ref(key), sref)


def _hold_check(control: Control, system: str, bucket: str, subject_key: str | None) -> _HoldCheck:
    return _HoldCheck(
        RecordRefHasher(control.key, system, bucket),
        SubjectRefHasher(control.key),
        control.holds.active(system, bucket),
        subject_key,
    )


# ------------------------------------------------------------------------------ plan


def _cutoffs(activity: Activity, as_of: dt.datetime) -> list[str | None]:
    out: list[str | None] = []
    for case in activity.retention:
        cut = case.rule.cutoff_date(as_of) if case.rule.enforceable else None
        out.append(None if cut is None else cut.isoformat())
    return out


def plan_s3(
    activity: Activity, as_of: dt.datetime, *, client: Any = None, control: Control
) -> S3Plan:
    """Count what a run at ``as_of`` would delete (changing nothing)."""
    check_as_of(as_of)
    src = _s3_source(activity)
    client = client if client is not None else s3_client(src.conn_id)
    objects = [o for o in list_objects(client, src.bucket, src.prefix) if o.latest is not None]
    metas = _all_metadata(client, src.bucket, objects, _wanted_keys(activity))
    holds = _hold_check(control, src.system, src.bucket, src.subject_key)
    counts = dict.fromkeys(
        ("due", "held", "restricted", "unknown_anchor", "kept", "out_of_scope"), 0
    )
    due: list[S3Object] = []
    for obj, meta in zip(objects, metas, strict=True):
        status: str = classify(activity, meta, as_of)[0]
        if status == "due":
            hold = holds.kind(obj.key, meta)
            status = {"legal_hold": "held", "restriction": "restricted"}.get(hold or "", "due")
            if status == "due":
                due.append(obj)
        counts[status] += 1
    expired = counts["due"] + counts["held"] + counts["restricted"]
    result = PlanResult(
        activity_id=activity.id, as_of=as_of.isoformat(), rules=activity.rule_descriptions(),
        cutoffs=_cutoffs(activity, as_of), total=len(objects), expired=expired,
        held=counts["held"], restricted=counts["restricted"],
        anchor_unknown=counts["unknown_anchor"], kept=counts["kept"],
        out_of_scope=counts["out_of_scope"],
    )  # fmt: skip
    plan = S3Plan(result, src.bucket, src.prefix, tuple(due), sum(len(o.versions) for o in due))
    log.info("plan %s: %s", activity.id, plan.counts())
    return plan


# ------------------------------------------------------------------------------ deleting


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


def _delete_versions(
    client: Any, bucket: str, objects: Sequence[S3Object]
) -> tuple[set[str], int, int]:
    """DeleteObjects for every version of ``objects``; (keys with an error, deleted, calls)."""
    entries = [{"Key": o.key, "VersionId": v} for o in objects for v in o.versions]
    failed: set[str] = set()
    calls = 0
    for start in range(0, len(entries), MAX_KEYS_PER_CALL):
        chunk = entries[start : start + MAX_KEYS_PER_CALL]
        response = client.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
        calls += 1
        failed |= {error["Key"] for error in response.get("Errors", [])}
    deleted = sum(len(o.versions) for o in objects if o.key not in failed)
    return failed, deleted, calls


@dataclass(frozen=True)
class _Target:
    """Where a batch goes and how it is recorded."""

    client: Any
    control: Control
    run_id: str
    activity_id: str
    system: str
    bucket: str


@dataclass(frozen=True)
class _BatchOutcome:
    applied: int
    versions: int
    failed: int
    calls: int
    seq: int | None
    late_held: dict[str, str] = field(default_factory=dict)  # key -> kind, held since step 1


# Which of a batch's objects are held now (key -> hold kind): read after the prepared entry.
Recheck = Callable[[Sequence[S3Object]], dict[str, str]]


def _delete_batch(
    target: _Target,
    objects: Sequence[S3Object],
    batch_no: int,
    counts: Mapping[str, int],
    recheck: Recheck,
) -> _BatchOutcome:
    """Write-ahead: prepared evidence, re-check the holds, delete every version, then resolve
    from the errors."""
    if not objects:
        return _BatchOutcome(0, 0, 0, 0, None)
    hasher = RecordRefHasher(target.control.key, target.system, target.bucket)
    refs = {o.key: hasher.ref(o.key) for o in objects}
    versions = sum(len(o.versions) for o in objects)
    seq = target.control.ledger.prepare_batch(
        target.run_id, target.activity_id, target.system, target.bucket, batch_no=batch_no,
        action="delete", refs_blob=pack_refs(refs.values()),
        counts={"records": len(objects), "versions": versions, **counts},
    )  # fmt: skip
    checkpoint("s3_after_prepare", batch_no)
    try:
        late = recheck(objects)
        go = [o for o in objects if o.key not in late]
        failed, deleted, calls = _delete_versions(target.client, target.bucket, go)
        failed |= _still_present(target.client, target.bucket, [o.key for o in go])
        failed |= late.keys()
    except Exception:
        log.error(
            "batch %s: DeleteObjects failed; ledger batch %s left for recovery", batch_no, seq
        )
        raise
    checkpoint("s3_after_delete", batch_no)
    applied = [refs[o.key] for o in objects if o.key not in failed]
    outcome = "committed" if not failed else ("partial" if applied else "rolled_back")
    target.control.ledger.resolve_batch(
        seq, outcome=outcome, applied_blob=pack_refs(applied), applied=len(applied)
    )
    checkpoint("s3_after_resolve", batch_no)
    log.info(
        "batch %s: deleted %s object(s) (%s versions) in %s call(s); %s failed, %s held meanwhile",
        batch_no, len(applied), deleted, calls, len(failed) - len(late), len(late),
    )  # fmt: skip
    return _BatchOutcome(len(applied), deleted, len(failed) - len(late), calls, seq, late)


# ------------------------------------------------------------------------------ recovery


def present_refs(
    client: Any, control: Control, system: str, bucket: str, prefix: str, wanted: set[bytes]
) -> set[bytes]:
    hasher = RecordRefHasher(control.key, system, bucket)
    keys = {v["Key"] for v in iter_versions(client, bucket, prefix)}
    return {ref for ref in hasher.refs(sorted(keys)) if ref in wanted}


def _buckets(activity: Activity) -> list[tuple[str, str, str, str]]:
    """(system, bucket, prefix, conn_id) of every bucket the activity deletes from."""
    src = activity.source
    if isinstance(src, S3Source):
        return [(src.system, src.bucket, src.prefix, src.conn_id)]
    links = src.objects if isinstance(src, SqlSource) else []
    return [(src.system, link.bucket, "", link.conn_id) for link in links]


def recover_s3(
    activity: Activity,
    *,
    control: Control,
    clients: ClientFactory | None = None,
    close_runs: bool = True,
) -> S3Recovery:
    """Settle object batches a crashed run left prepared (by checking which keys still exist)
    and, for S3 activities, close the run entry. SQL activities: call with ``close_runs=False``
    and let the SQL engine close its runs. Runs under the activity's lease (`enforce_s3` and
    the SQL engine's recovery take it); batches of runs that hold a lease are left alone."""
    result = S3Recovery()
    clients = clients or s3_client
    live = control.leases.live_runs()  # never settle a batch of a run still going
    pending = [b for b in control.ledger.pending_batches(activity.id) if b.run_id not in live]
    for system, bucket, prefix, conn_id in _buckets(activity):
        mine = [b for b in pending if b.system == system and b.dataset == bucket]
        if not mine:
            continue
        wanted = {ref for b in mine for ref in unpack_refs(b.refs)}
        present = present_refs(clients(conn_id), control, system, bucket, prefix, wanted)
        for batch in mine:
            outcome = settle_batch(control, batch, present, applied_if_present=False)
            setattr(result, outcome, getattr(result, outcome) + 1)
    if close_runs:
        result.runs_closed = close_interrupted_runs(control, activity.id)
    return result


# ------------------------------------------------------------------------------ enforce


def enforce_s3(
    activity: Activity,
    as_of: dt.datetime,
    *,
    control: Control,
    catalogue_version: str,
    client: Any = None,
    dry_run: bool = False,
    approved_by: str | None = None,
    origin: Mapping[str, str | None] | None = None,
    batch_size: int = MAX_KEYS_PER_CALL,
    lease_wait: float | None = None,
) -> S3EnforceResult:
    """Run an S3 activity's retention at ``as_of``: recover, plan, gate, delete in batches.

    Holds the activity's lease throughout, like the SQL engine's `enforce`."""
    check_not_early(as_of, dry_run)
    if not 1 <= batch_size <= MAX_KEYS_PER_CALL:
        raise RetentionError(f"batch_size must be between 1 and {MAX_KEYS_PER_CALL}")
    src = _s3_source(activity)
    client = client if client is not None else s3_client(src.conn_id)
    name = lease_name(activity.id, src.system, src.bucket)
    with database_errors(), leased(control.ledger.engine, name, wait=lease_wait) as lease:
        recovery = (
            None if dry_run else recover_s3(activity, control=control, clients=lambda _: client)
        )
        return _enforce_s3(
            activity, as_of, control, client, recovery, lease.bind_run,
            (catalogue_version, dry_run, approved_by, batch_size, dict(origin or {})),
        )  # fmt: skip


def _enforce_s3(
    activity: Activity, as_of: dt.datetime, control: Control, client: Any,
    recovery: S3Recovery | None, bind_run: Callable[[str], None],
    options: tuple[str, bool, str | None, int, dict[str, str | None]],
) -> S3EnforceResult:  # fmt: skip
    catalogue_version, dry_run, approved_by, batch_size, origin = options
    src = _s3_source(activity)
    plan = plan_s3(activity, as_of, client=client, control=control)
    header = RunHeader(
        activity_id=activity.id, system=src.system, dataset=src.bucket, action="delete",
        rules=plan.result.rules, as_of=plan.result.as_of, cutoffs=plan.result.cutoffs,
        dry_run=dry_run, catalogue_version=catalogue_version, code_version=code_version(),
        approved_by=approved_by, origin=origin,
    )  # fmt: skip
    result = S3EnforceResult(
        activity.id, "completed", "", plan, run_id=control.ledger.start_run(header),
        approved_by=approved_by, recovery=recovery,
    )  # fmt: skip
    bind_run(result.run_id)  # type: ignore[arg-type]
    checkpoint("s3_run_started", 0)
    decided = decide(activity, plan.result, dry_run, approved_by)
    if decided:
        result.outcome, result.message = decided
        return finish_run(control, result)
    target = _Target(client, control, result.run_id, activity.id, src.system, src.bucket)  # type: ignore[arg-type]
    try:
        _run_batches(target, activity, plan, result, batch_size)
    except Exception as exc:
        finish_failed(control, result, exc, "objects")
        raise
    result.message = (
        f"delete: {result.applied} objects ({result.versions_deleted} versions) in"
        f" {result.batches} batches; skipped {result.held_skipped} held,"
        f" {result.restricted_skipped} restricted; {result.failed} failed"
    )
    if result.failed:
        result.outcome = "partial"
    return finish_run(control, result)


def _run_batches(
    target: _Target, activity: Activity, plan: S3Plan, result: S3EnforceResult, batch_size: int
) -> None:
    src = _s3_source(activity)
    wanted = _wanted_keys(activity) | ({src.subject_key.lower()} if src.subject_key else set())
    for batch_no, group in enumerate(batches(plan.due, batch_size), start=1):
        holds = _hold_check(target.control, src.system, src.bucket, src.subject_key)
        keep: list[S3Object] = []
        metas = (
            _all_metadata(target.client, src.bucket, group, wanted)
            if not holds.active.empty
            else [{}] * len(group)
        )
        held = restricted = 0
        for obj, meta in zip(group, metas, strict=True):
            kind = holds.kind(obj.key, meta)
            held += kind == "legal_hold"
            restricted += kind == "restriction"
            if kind is None:
                keep.append(obj)
        counts = {"held_skipped": held, "restricted_skipped": restricted}
        by_key = {o.key: meta for o, meta in zip(group, metas, strict=True)}

        recheck = functools.partial(_held_now, target, src, metas=by_key, wanted=wanted)
        outcome = _delete_batch(target, keep, batch_no, counts, recheck)
        late = list(outcome.late_held.values())
        result.held_skipped += held + late.count("legal_hold")
        result.restricted_skipped += restricted + late.count("restriction")
        result.applied += outcome.applied
        result.versions_deleted += outcome.versions
        result.failed += outcome.failed
        result.delete_calls += outcome.calls
        result.batches += 1 if keep else 0


def _held_now(
    target: _Target, src: S3Source, objects: Sequence[S3Object],
    metas: dict[str, dict[str, str]], wanted: set[str],
) -> dict[str, str]:  # fmt: skip
    """key -> hold kind of the objects held by the holds active now."""
    holds = _hold_check(target.control, src.system, src.bucket, src.subject_key)
    if holds.active.empty:
        return {}
    missing = [o for o in objects if not metas.get(o.key)]
    if holds.active.subjects and missing:  # metadata was not read: no holds at step 1
        fetched = _all_metadata(target.client, src.bucket, missing, wanted)
        metas.update(zip([o.key for o in missing], fetched, strict=True))
    kinds = {o.key: holds.kind(o.key, metas.get(o.key, {})) for o in objects}
    return {key: kind for key, kind in kinds.items() if kind}


# ------------------------------------------------------------------------------ linked files


def _still_present(client: Any, bucket: str, keys: Sequence[str]) -> set[str]:
    """Confirm: the keys that have a current version again (e.g. uploaded meanwhile).

    One HEAD per key (cheap everywhere); a version uploaded meanwhile and then hidden under a
    new delete marker is not seen here, and is found by the next run's listing.
    """

    def present(key: str) -> bool:
        try:
            client.head_object(Bucket=bucket, Key=key)
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    with ThreadPoolExecutor(max_workers=HEAD_WORKERS) as pool:
        return {key for key, found in zip(keys, pool.map(present, keys), strict=True) if found}


def _versions_of(client: Any, bucket: str, key: str) -> S3Object:
    items = [v for v in iter_versions(client, bucket, key) if v["Key"] == key]
    return _object(key, items) if items else S3Object(key, (), 0, None)


def delete_linked_objects(
    activity: Activity,
    keys_by_column: Mapping[str, Iterable[str | None]],
    *,
    control: Control,
    run_id: str,
    batch_no: int,
    clients: ClientFactory | None = None,
) -> LinkedDeleteResult:
    """Delete every version of the files that one SQL batch's records point to.

    For the SQL engine, per batch: call it with the object-key column values of the records
    the batch deletes (``{"cv_object_key": [...]}``) after ``prepare_batch`` for the rows and
    BEFORE the source commit; if it raises, roll the source back (the rows stay, the next run
    retries). Each bucket gets its own prepared/resolved ledger batch (dataset = bucket).
    Record holds on an object key (system, bucket, key) keep that file.
    """
    src = activity.source
    if not isinstance(src, SqlSource):
        raise RetentionError(f"activity {activity.id!r}: linked files need a 'sql' source")
    clients = clients or s3_client
    result = LinkedDeleteResult()
    for link in src.objects:
        keys = sorted({k for k in keys_by_column.get(link.column, ()) if k})
        if keys:
            _delete_link(activity, src, link.bucket, clients(link.conn_id), keys, control,
                         run_id, batch_no, result)  # fmt: skip
    return result


def _delete_link(
    activity: Activity, src: SqlSource, bucket: str, client: Any, keys: list[str],
    control: Control, run_id: str, batch_no: int, result: LinkedDeleteResult,
) -> None:  # fmt: skip
    with ThreadPoolExecutor(max_workers=HEAD_WORKERS) as pool:
        objects = list(pool.map(lambda k: _versions_of(client, bucket, k), keys))
    holds = _hold_check(control, src.system, bucket, None)
    present = [o for o in objects if o.versions]
    keep = [o for o in present if holds.kind(o.key, {}) is None]
    result.missing += len(objects) - len(present)
    result.held_skipped += len(present) - len(keep)
    target = _Target(client, control, run_id, activity.id, src.system, bucket)

    def recheck(objs: Sequence[S3Object]) -> dict[str, str]:
        fresh = _hold_check(control, src.system, bucket, None)
        kinds = {o.key: fresh.kind(o.key, {}) for o in objs}
        return {key: kind for key, kind in kinds.items() if kind}

    for sub_no, group in enumerate(batches(keep), start=1):
        counts = {"held_skipped": len(present) - len(keep) if sub_no == 1 else 0}
        outcome = _delete_batch(target, group, batch_no, counts, recheck)
        result.held_skipped += len(outcome.late_held)
        result.objects += outcome.applied
        result.versions_deleted += outcome.versions
        result.failed += outcome.failed
        if outcome.seq is not None:
            result.batches.append(outcome.seq)
