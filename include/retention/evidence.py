"""Reading the deletion ledger: runs, applied references, lookup, verification.

The UI, reports and command line import this module only to read; `ledger.Ledger` (which
appends) extends `EvidenceReader`. Verification recomputes the hash chain (see `chain`), the
subject index against the entries that record it, and the head row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from include.retention.chain import (
    COLUMNS,
    GENESIS,
    HOLD_EVENTS,
    Entry,
    bucket_of,
    decode_entry,
    entry_hash,
    head_table,
    ledger_table,
    subject_table,
    update_digest,
)
from include.retention.errors import RetentionError
from include.retention.pseudonym import (
    REF_SIZE,
    KeyRing,
    PackedRefs,
    RecordRefHasher,
    check_key,
    subject_ref,
)

log = logging.getLogger(__name__)

SUBJECT_ROWS = 10_000  # subject index rows fetched at a time by verify()
BLOB_ROWS = 4  # entries fetched at a time: a batch blob can be 800 kB (50k refs)


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
    partition: int | None = None  # the key range of a partitioned run that prepared it
    judged_through: dt.datetime | None = None  # see sources.base.JudgedThrough

    def claims(self) -> dict[bytes, dt.datetime | None]:
        """The batch's references, each with its ``judged_through``."""
        return dict.fromkeys(PackedRefs(self.refs), self.judged_through)


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
    system: str | None = None
    dataset: str | None = None
    outcome: str = "committed"  # or "partial": only some of the batch's records were applied
    approved_by: str | None = None
    origin: dict[str, Any] = field(default_factory=dict)  # Airflow dag_id, run_id, run_type, user

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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


class EvidenceReader:
    """Read-only access to the ledger in ``engine``. ``key`` (the pseudonym key) is needed only
    to look up a record or person by identifier."""

    def __init__(
        self, engine: Engine, key: bytes | None = None, *, keyring: KeyRing | None = None
    ) -> None:
        """``keyring`` (instead of ``key``): look up under every retained key version too."""
        self.engine = engine
        self._keyring = keyring
        if keyring is not None:
            key = keyring.current
        self._key = None if key is None else check_key(key)

    @classmethod
    def from_url(cls, url: str, key: bytes | None = None) -> Self:
        return cls(sa.create_engine(url), key)

    def _need_key(self) -> bytes:
        if self._key is None:
            raise RetentionError("looking up by identifier needs the pseudonym key")
        return self._key

    def hold_events(self) -> Iterator[Entry]:
        """Every hold register change, in chain order."""
        return self.entries(where=ledger_table.c.kind.in_(HOLD_EVENTS), with_blob=False)

    def head(self) -> tuple[int, str]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(head_table.c.seq, head_table.c.entry_hash)).first()
        return (0, GENESIS.hex()) if row is None else (int(row.seq), bytes(row.entry_hash).hex())

    def entries(self, *, where: Any = None, with_blob: bool = True) -> Iterator[Entry]:
        t = ledger_table
        cols = [t.c[name] for name in COLUMNS] + [t.c.document] + ([t.c.blob] if with_blob else [])
        query = sa.select(*cols).order_by(t.c.seq)
        if where is not None:
            query = query.where(where)
        # The result is closed before its connection, also when the caller stops early: a
        # MySQL streaming result left open warns and is drained by the connection's next use.
        with (
            self.engine.connect() as conn,
            conn.execution_options(yield_per=BLOB_ROWS).execute(query) as rows,
        ):
            for row in rows:
                yield decode_entry(row, with_blob)

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

    def unfinished_runs(self, activity_id: str) -> dict[str, dict[str, Any]]:
        """The activity's runs without a ``run_finished`` entry: run id -> run header."""
        t = ledger_table
        finished = sa.select(t.c.run_id).where(t.c.kind == "run_finished")
        where = sa.and_(
            t.c.kind == "run_started", t.c.activity_id == activity_id, t.c.run_id.not_in(finished)
        )
        return {e.run_id: e.document["body"] for e in self.entries(where=where, with_blob=False)}

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
        """The references of every record of ``dataset`` that the run claims as applied (a
        record claimed twice is listed twice)."""
        return [ref for ref, _ in self._claimed(run_id, system, dataset)]

    def claims(self, run_id: str, system: str, dataset: str) -> dict[bytes, dt.datetime | None]:
        """The references the run claims as applied in ``dataset``, each with the
        ``judged_through`` of the batch that claimed it (`sources.base.JudgedThrough`)."""
        return dict(self._claimed(run_id, system, dataset))

    def _claimed(
        self, run_id: str, system: str, dataset: str
    ) -> Iterator[tuple[bytes, dt.datetime | None]]:
        t = ledger_table
        where = sa.and_(
            t.c.run_id == run_id, t.c.kind.like("batch_%"), t.c.system == system,
            t.c.dataset == dataset,
        )  # fmt: skip
        entries = list(self.entries(where=where))
        prepared = {e.seq: e for e in entries if e.kind == "batch_prepared"}
        for resolution in (e for e in entries if e.kind == "batch_resolved"):
            outcome = resolution.document["body"]["outcome"]
            batch = prepared[resolution.ref_seq]  # type: ignore[index]
            through = _judged_through(batch.document["body"])
            if outcome == "committed":
                yield from ((ref, through) for ref in PackedRefs(batch.blob))
            elif outcome == "partial":
                yield from ((ref, through) for ref in PackedRefs(resolution.blob))

    def lookup(self, system: str, dataset: str, pk: Any) -> list[Evidence]:
        """Was the record with this primary key deleted or anonymised: when, by which run/rule?"""
        refs = {RecordRefHasher(key, system, dataset).ref(pk) for key in self._lookup_keys()}
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
            if res is None:
                continue
            batch = PackedRefs(e.blob)
            ref = next((r for r in refs if r in batch), None)
            outcome = res.document["body"]["outcome"]
            if (
                ref is None
                or outcome == "rolled_back"
                or (outcome == "partial" and ref not in PackedRefs(res.blob))
            ):
                continue
            found.append(self._evidence(e, res))
        return found

    def subject_batches(self, ref: bytes, *more: bytes) -> list[Evidence]:
        """The applied batches that held records of the subject with these keyed references
        (an index seek on their buckets; a partially applied batch counts, its records are not
        told apart), in ledger order. Two queries on one connection, whatever the ledger's
        size."""
        t, s = ledger_table, subject_table
        wanted: dict[int, list[bytes]] = {}
        for one in (ref, *more):
            wanted.setdefault(bucket_of(one), []).append(one)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(s.c.seq, s.c.bucket, s.c.refs).where(s.c.bucket.in_(list(wanted)))
            ).all()
            seqs = sorted(
                {int(r.seq) for r in rows if any(x in PackedRefs(r.refs) for x in wanted[r.bucket])}
            )
            if not seqs:
                return []
            runs = sa.select(t.c.run_id).where(t.c.seq.in_(seqs))
            related = sa.or_(
                t.c.seq.in_(seqs),
                sa.and_(t.c.kind == "batch_resolved", t.c.ref_seq.in_(seqs)),
                sa.and_(t.c.kind == "run_started", t.c.run_id.in_(runs)),
            )
            cols = [t.c[name] for name in COLUMNS] + [t.c.document]
            entries = [
                decode_entry(row, False)
                for row in conn.execute(sa.select(*cols).where(related).order_by(t.c.seq))
            ]
        headers = {e.run_id: e.document["body"] for e in entries if e.kind == "run_started"}
        resolutions = {e.ref_seq: e for e in entries if e.kind == "batch_resolved"}
        return [
            _evidence(e, resolutions[e.seq], headers.get(e.run_id, {}))
            for e in entries
            if e.kind == "batch_prepared"
            and e.seq in resolutions
            and resolutions[e.seq].document["body"]["outcome"] != "rolled_back"
        ]

    def lookup_person(self, identifiers: Sequence[str]) -> list[Evidence]:
        """What was deleted or anonymised of the person known by these normalised identifiers
        (see `identifiers.normalise`), under every pseudonym key this reader holds."""
        refs = [subject_ref(key, i) for key in self._lookup_keys() for i in identifiers]
        return self.subject_batches(*refs) if refs else []

    def _lookup_keys(self) -> list[bytes]:
        return list(self._keyring.all) if self._keyring is not None else [self._need_key()]

    def run_rows(
        self, start: str | None = None, end: str | None = None, activity_id: str | None = None
    ) -> list[dict[str, Any]]:
        """One flat row per run started in [start, end) (ISO times): what an export shows.
        No personal data: counts, rules, times and identities of runs and approvers only."""
        t = ledger_table
        where = _period(t.c.kind.in_(RUN_KINDS), start, end, activity_id, self._run_ids)
        rows: dict[str, dict[str, Any]] = {}
        for e in self.entries(where=where, with_blob=False):
            body = e.document["body"]
            if e.kind == "run_started":
                rows[e.run_id] = _run_row(e, body)
            elif e.run_id in rows:
                _close_run_row(rows[e.run_id], e, body)
        return list(rows.values())

    def batch_rows(
        self, start: str | None = None, end: str | None = None, activity_id: str | None = None
    ) -> list[dict[str, Any]]:
        """One flat row per batch of the runs started in [start, end): no references."""
        t = ledger_table
        kinds = t.c.kind.in_(("batch_prepared", "batch_resolved"))
        where = _period(kinds, start, end, activity_id, self._run_ids)
        rows: dict[int, dict[str, Any]] = {}
        for e in self.entries(where=where, with_blob=False):
            body = e.document["body"]
            if e.kind == "batch_prepared":
                rows[e.seq] = {
                    "run_id": e.run_id, "activity_id": e.activity_id, "batch_seq": e.seq,
                    "batch_no": body.get("batch_no"), "system": e.system, "dataset": e.dataset,
                    "action": body.get("action"), "prepared_at": e.recorded_at,
                    "subjects": (body.get("subjects") or {}).get("count"),
                    **{f"count.{k}": v for k, v in sorted(body.get("counts", {}).items())},
                    "outcome": None, "applied": None, "recovered": None, "resolved_at": None,
                }  # fmt: skip
            elif e.ref_seq in rows:
                rows[e.ref_seq].update(
                    outcome=body.get("outcome"), applied=body.get("applied"),
                    recovered=body.get("recovered"), resolved_at=e.recorded_at,
                )  # fmt: skip
        return list(rows.values())

    def _run_ids(self, start: str | None, end: str | None) -> sa.Select[Any]:
        t = ledger_table
        query = sa.select(t.c.run_id).where(t.c.kind == "run_started")
        if start is not None:
            query = query.where(t.c.recorded_at >= start)
        if end is not None:
            query = query.where(t.c.recorded_at < end)
        return query

    def _evidence(self, prepared: Entry, resolution: Entry) -> Evidence:
        header: dict[str, Any] = {}
        for e in self.entries(
            where=sa.and_(
                ledger_table.c.run_id == prepared.run_id, ledger_table.c.kind == "run_started"
            ),
            with_blob=False,
        ):
            header = e.document["body"]
        return _evidence(prepared, resolution, header)

    def verify(self, expect_head: tuple[int, str] | None = None) -> VerifyReport:
        """Recompute the chain up to the head row as read first (runs may append meanwhile);
        report the first seq where it breaks."""
        t = ledger_table
        head_seq, head_hash = self.head()
        prev_hash, expected_seq, count = GENESIS, 1, 0
        query = sa.select(
            *[t.c[n] for n in COLUMNS], t.c.document, t.c.blob, t.c.prev_hash, t.c.entry_hash
        ).where(t.c.seq <= head_seq)
        with (
            self.engine.connect() as conn,
            _SubjectRows(self.engine, head_seq) as subjects,
            conn.execution_options(yield_per=BLOB_ROWS).execute(query.order_by(t.c.seq)) as rows,
        ):
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
        if (head_seq, head_hash) != (count, prev_hash.hex()) or self._beyond_head():
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

    def active_hold_keys(self) -> dict[str, str | None]:
        """run id ("hold-N") -> the key id its placement recorded (None: before key ids were
        recorded), for every hold placed and not released."""
        placed: dict[str, str | None] = {}
        for e in self.hold_events():
            if e.kind == "hold_placed":
                placed[e.run_id] = e.document["body"].get("key_id")
            else:
                placed.pop(e.run_id, None)
        return placed

    def key_usage(self) -> dict[str | None, dict[str, Any]]:
        """key id -> how many batches and hold events carry references it made, and when it
        was first and last used (None: entries written before key ids were recorded)."""
        t = ledger_table
        kinds = t.c.kind.in_(("batch_prepared", *HOLD_EVENTS))
        usage: dict[str | None, dict[str, Any]] = {}
        for e in self.entries(where=kinds, with_blob=False):
            kid = e.document["body"].get("key_id")
            use = usage.setdefault(kid, {"entries": 0, "first": e.recorded_at})
            use["entries"] += 1
            use["last"] = e.recorded_at
        return usage

    def _beyond_head(self) -> bool:
        """Entries or subject rows past the head row as it is now (appenders move it in the
        same transaction)."""
        with self.engine.connect() as conn:
            last = max(
                conn.execute(sa.select(sa.func.max(table.c.seq))).scalar() or 0
                for table in (ledger_table, subject_table)
            )
        return int(last) > self.head()[0]

    def entry_hash_at(self, seq: int) -> str | None:
        """The stored hash of entry ``seq`` (hex), or None if there is no such entry."""
        with self.engine.connect() as conn:
            got = conn.execute(
                sa.select(ledger_table.c.entry_hash).where(ledger_table.c.seq == seq)
            ).scalar()
        return None if got is None else bytes(got).hex()

    def kind_at(self, seq: int) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(ledger_table.c.kind).where(ledger_table.c.seq == seq)
            ).scalar()

    def _chain_contains(self, head: tuple[int, str]) -> bool:
        return self.entry_hash_at(head[0]) == head[1]

    @staticmethod
    def _report(
        ok: bool, count: int, last: bytes, *, bad_seq: int | None = None, problem: str | None = None
    ) -> VerifyReport:
        if not ok:
            log.error("ledger verification failed at seq %s: %s", bad_seq, problem)
        return VerifyReport(ok, count, count, last.hex(), bad_seq, problem)


class _SubjectRows:
    """The subject index read alongside the chain (both in seq order, on its own connection so
    two result streams may be open at once on any database), checked entry by entry against
    the count and SHA-256 each batch_prepared body records."""

    def __init__(self, engine: Engine, upto: int) -> None:
        self._engine = engine
        self._upto = upto

    def __enter__(self) -> _SubjectRows:
        t = subject_table
        self._conn = self._engine.connect()
        query = (
            sa.select(t.c.seq, t.c.bucket, t.c.refs)
            .where(t.c.seq <= self._upto)
            .order_by(t.c.seq, t.c.bucket)
        )
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
            refs = bytes(self._next.refs)
            update_digest(digest, self._next.bucket, refs)
            count += len(refs) // REF_SIZE
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


def _evidence(prepared: Entry, resolution: Entry, header: dict[str, Any]) -> Evidence:
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
        system=prepared.system,
        dataset=prepared.dataset,
        outcome=resolution.document["body"]["outcome"],
        approved_by=header.get("approved_by"),
        origin=dict(header.get("origin") or {}),
    )


RUN_KINDS = ("run_started", "run_finished", "run_verified")


def _period(
    kinds: ColumnElement[bool],
    start: str | None,
    end: str | None,
    activity_id: str | None,
    run_ids: Any,
) -> ColumnElement[bool]:
    where = kinds
    if start is not None or end is not None:
        where = sa.and_(where, ledger_table.c.run_id.in_(run_ids(start, end)))
    if activity_id is not None:
        where = sa.and_(where, ledger_table.c.activity_id == activity_id)
    return where


def _run_row(e: Entry, body: dict[str, Any]) -> dict[str, Any]:
    origin = body.get("origin") or {}
    return {
        "run_id": e.run_id, "activity_id": e.activity_id, "system": e.system,
        "dataset": e.dataset, "action": body.get("action"), "started_at": e.recorded_at,
        "as_of": body.get("as_of"), "rules": " | ".join(body.get("rules", [])),
        "dry_run": body.get("dry_run"), "catalogue_version": body.get("catalogue_version"),
        "code_version": body.get("code_version"), "approved_by": body.get("approved_by"),
        "dag_id": origin.get("dag_id"), "dag_run_id": origin.get("run_id"),
        "outcome": None, "ended_at": None, "message": None, "verification": None,
    }  # fmt: skip


def _close_run_row(row: dict[str, Any], e: Entry, body: dict[str, Any]) -> None:
    if e.kind == "run_finished":
        row.update(outcome=body.get("outcome"), ended_at=body.get("ended_at"))
        row["message"] = body.get("message")
        row.update({f"count.{k}": v for k, v in sorted(body.get("counts", {}).items())})
    else:
        success = body.get("success")
        row["verification"] = None if success is None else ("passed" if success else "failed")


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
    if any(doc.get(name) != getattr(row, name) for name in COLUMNS):
        return "entry columns differ from the hashed document: entry edited"
    return None


def _pending(entry: Entry) -> PendingBatch:
    return PendingBatch(
        seq=entry.seq,
        run_id=entry.run_id,
        activity_id=entry.activity_id,
        system=entry.system or "",
        dataset=entry.dataset or "",
        action=entry.document["body"]["action"],
        refs=entry.blob or b"",
        partition=entry.document["body"].get("partition"),
        judged_through=_judged_through(entry.document["body"]),
    )


def _judged_through(body: dict[str, Any]) -> dt.datetime | None:
    at = body.get("judged_through")
    return dt.datetime.fromisoformat(at) if at else None
