"""What the ledger says about enforcement runs, read back from its entries (no blobs).

The deletion certificate and the audit report are built from these records only, so they say
exactly what the evidence says: a run's header (``run_started``), its batches (each
``batch_prepared`` with the ``batch_resolved`` that settled it), its close (``run_finished``)
and its independent verification (``run_verified``).

Records applied are counted from the batches, not from the run's own summary: a committed
batch applied all its records, a partial one the number its resolution names, a rolled-back
or unresolved one none.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pendulum
import sqlalchemy as sa

from include.retention.chain import Entry, ledger_table
from include.retention.errors import RetentionError
from include.retention.evidence import EvidenceReader
from include.retention.rules import start_of_day

RUN_KINDS = ("run_started", "batch_prepared", "batch_resolved", "run_finished", "run_verified")
TIMEZONE = "Europe/Stockholm"
_IN_CHUNK = 500  # run ids per IN (...) query


@dataclass
class Batch:
    """One write-ahead batch and how it was settled (``outcome`` None: not yet settled)."""

    seq: int
    system: str
    dataset: str
    action: str
    counts: dict[str, Any]
    outcome: str | None = None
    applied_partial: int = 0
    recovered: bool = False

    @property
    def applied(self) -> int:
        if self.outcome == "committed":
            return int(self.counts.get("records", 0))
        return self.applied_partial if self.outcome == "partial" else 0


def by_retention_rules(header: dict[str, Any]) -> bool:
    """Whether a run selected its records by the retention rules (its counts are the dataset's
    state): not an erasure (action ``erasure``) nor a run for another reason such as the
    suppression list (origin ``reason``)."""
    return header.get("action") != "erasure" and not (header.get("origin") or {}).get("reason")


@dataclass
class RunRecord:
    """One run as the ledger holds it."""

    run_id: str
    activity_id: str
    system: str
    dataset: str
    header: dict[str, Any]
    started_at: str
    first_seq: int
    last_seq: int
    finished: dict[str, Any] | None = None
    finished_at: str | None = None
    verification: dict[str, Any] | None = None
    batches: list[Batch] = field(default_factory=list)

    @property
    def outcome(self) -> str | None:
        """The run's outcome (``completed``, ``failed``, …), None while it is unfinished."""
        return None if self.finished is None else str(self.finished.get("outcome"))

    @property
    def action(self) -> str:
        return str(self.header.get("action", ""))

    @property
    def counts(self) -> dict[str, Any]:
        """The run's closing counts (plan and totals); empty for an unfinished run."""
        return dict((self.finished or {}).get("counts") or {})

    def count(self, name: str) -> int:
        value = self.counts.get(name, 0)
        return int(value) if isinstance(value, int | float) else 0

    @property
    def applied(self) -> int:
        """Records of the run's own dataset deleted or anonymised, from the settled batches."""
        return sum(b.applied for b in self.batches if self._own(b))

    @property
    def applying_batches(self) -> int:
        """Batches of the run's own dataset that applied records."""
        return sum(1 for b in self.batches if self._own(b) and b.applied)

    @property
    def linked(self) -> dict[str, int]:
        """Records applied in other datasets the run reached (e.g. a record's files), by
        ``system.dataset``."""
        linked: dict[str, int] = {}
        for batch in self.batches:
            if not self._own(batch):
                name = f"{batch.system}.{batch.dataset}"
                linked[name] = linked.get(name, 0) + batch.applied
        return linked

    def batch_outcomes(self) -> dict[str, int]:
        """How many batches ended each way (``unresolved`` for none yet)."""
        outcomes: dict[str, int] = {}
        for batch in self.batches:
            name = batch.outcome or "unresolved"
            outcomes[name] = outcomes.get(name, 0) + 1
        return outcomes

    @property
    def recovered(self) -> int:
        return sum(1 for b in self.batches if b.recovered)

    def _own(self, batch: Batch) -> bool:
        return (batch.system, batch.dataset) == (self.system, self.dataset)


def _fold(entries: Iterable[Entry]) -> dict[str, RunRecord]:
    runs: dict[str, RunRecord] = {}
    for e in entries:
        body = e.document["body"]
        if e.kind == "run_started":
            runs[e.run_id] = RunRecord(
                e.run_id, e.activity_id, e.system or "", e.dataset or "", body, e.recorded_at,
                e.seq, e.seq,
            )  # fmt: skip
            continue
        run = runs.get(e.run_id)
        if run is None:
            continue
        run.last_seq = max(run.last_seq, e.seq)
        _apply(run, e, body)
    return runs


def _apply(run: RunRecord, e: Entry, body: dict[str, Any]) -> None:
    if e.kind == "batch_prepared":
        run.batches.append(
            Batch(e.seq, e.system or "", e.dataset or "", body["action"], dict(body["counts"]))
        )
    elif e.kind == "batch_resolved":
        for batch in run.batches:
            if batch.seq == e.ref_seq:
                batch.outcome = body["outcome"]
                batch.applied_partial = int(body.get("applied") or 0)
                batch.recovered = bool(body.get("recovered"))
    elif e.kind == "run_finished":
        run.finished, run.finished_at = body, e.recorded_at
    elif e.kind == "run_verified":
        run.verification = body


def read_run(ledger: EvidenceReader, run_id: str) -> RunRecord:
    """The ledger's record of run ``run_id``; a clear error when there is none."""
    t = ledger_table
    where = sa.and_(t.c.run_id == run_id, t.c.kind.in_(RUN_KINDS))
    runs = _fold(ledger.entries(where=where, with_blob=False))
    if run_id not in runs:
        raise RetentionError(
            f"the ledger has no run {run_id!r}: give the ledger run id (a UUID, shown in the"
            " run's report task log and by `ledger export`)"
        )
    return runs[run_id]


def local_day(recorded_at: str) -> dt.date:
    """The Stockholm date of a ledger time stamp."""
    return pendulum.parse(recorded_at).in_timezone(TIMEZONE).date()  # type: ignore[union-attr]


def read_period(ledger: EvidenceReader, first: dt.date, last: dt.date) -> list[RunRecord]:
    """Every run started from ``first`` to ``last`` (inclusive, Stockholm dates), in order."""
    if last < first:
        raise RetentionError(f"the period ends ({last}) before it starts ({first})")
    t = ledger_table
    start = _utc(start_of_day(first)).isoformat(timespec="microseconds")
    end = _utc(start_of_day(last + dt.timedelta(days=1))).isoformat(timespec="microseconds")
    started = sa.and_(t.c.kind == "run_started", t.c.recorded_at >= start, t.c.recorded_at < end)
    run_ids = [e.run_id for e in ledger.entries(where=started, with_blob=False)]
    runs: dict[str, RunRecord] = {}
    for chunk in _chunks(run_ids):
        where = sa.and_(t.c.run_id.in_(chunk), t.c.kind.in_(RUN_KINDS))
        runs |= _fold(ledger.entries(where=where, with_blob=False))
    return sorted(runs.values(), key=lambda r: r.first_seq)


def _utc(moment: dt.datetime) -> dt.datetime:
    return dt.datetime.fromtimestamp(moment.timestamp(), dt.UTC)  # as the ledger writes it


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(items), _IN_CHUNK):
        yield items[i : i + _IN_CHUNK]


def entry_hash_at(ledger: EvidenceReader, seq: int) -> str:
    """The hex hash of ledger entry ``seq`` (the chain links a certificate to the ledger)."""
    with ledger.engine.connect() as conn:
        got = conn.execute(
            sa.select(ledger_table.c.entry_hash).where(ledger_table.c.seq == seq)
        ).scalar()
    if got is None:
        raise RetentionError(f"ledger entry {seq} is missing")
    return bytes(got).hex()
