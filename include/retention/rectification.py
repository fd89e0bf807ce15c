"""Rectification (Art. 16): the corrected fields set on the person's records in every system
that holds them, through the source adapters (`SourceAdapter.fields_to_update` / `update`).

Two passes. First every dataset that can find the person is asked which of the fields it has,
and checks each new value against its field's type; nothing changes unless every field names
a field of some dataset exactly and every value fits everywhere (the error names each problem,
never a value). Then each dataset updates the person's records in one go.

What is refused:
- the fields that key a record (primary key, file links), and fields a retention rule of the
  dataset reads (anchors, conditions, the anonymisation marker): correcting them would move a
  deadline; the controller does that in the system itself; a lookup column's new value that
  is no valid identifier of its kind (the record could no longer be found);
- records under a legal hold (kept as evidence as they are) or a restriction (Art. 18: while
  restricted, data is only stored; a contested accuracy is settled by lifting the restriction,
  telling the person (Art. 18(3)), then filing the rectification again). They are left as
  they are and the answer says how many and why.
- sources that cannot change fields (objects in a bucket): the answer names them, so the
  correction is made there by hand.

Evidence is written ahead, by the retention lifecycle's protocol (`lifecycle`): per dataset a
ledger run of :data:`RUN_ACTIVITY` (action ``rectification``, the request in its origin)
under the dataset's rectification lease, whose ``batch_prepared`` entry (action ``rectify``)
names the records about to change and the fields set (names, never values) before any change
is final (SQL: the UPDATE done, not committed; APIs: before the first PATCH); the holds are
read again after it, and a hold placed meanwhile on those records undoes the update, which
is staged again. Once applied, ``batch_resolved`` says which records were. After a crash
anywhere, the request's next attempt (the task's retry, or clearing it) first settles the
batches its dead runs left prepared from the source: a record whose fields equal the
requested values was rectified, any other was not (`SourceAdapter.holding`). Retention runs
never settle them (their activity is never :data:`RUN_ACTIVITY`).

Then the request register chains one ``dsr_rectified`` entry per dataset changed: which
fields, how many records and their keyed references, never the values, and its ledger run.
The answer lists the activities' recipients to tell (Art. 19).

A lookup column (e.g. a wrong e-mail address) is how requests, holds, restrictions and the
suppression list find the person: when one is corrected, the person's active subject holds
and suppressions on the old values are placed on the new value too (:class:`_Carry`), so
nothing restricted or held becomes deletable and nobody suppressed comes back.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from include.retention import lifecycle
from include.retention.catalogue import Activity
from include.retention.errors import RetentionError
from include.retention.holds import ActiveHolds, HoldRegister
from include.retention.leases import Lease, lease_name, leased
from include.retention.ledger import RunHeader, code_version
from include.retention.lookup import normal_value
from include.retention.pseudonym import pack_refs, subject_ref, unpack_refs
from include.retention.runs import (
    Control,
    checkpoint,
    close_interrupted_runs,
    database_errors,
    settle_batch,
)
from include.retention.sources.base import (
    Batch,
    NotUpdatable,
    OfSubject,
    SourceAdapter,
    Updated,
    adapter_for,
)
from include.retention.subject_requests import RequestRegister
from include.retention.suppression import SuppressionList

log = logging.getLogger(__name__)

# The ledger runs' activity: no retention activity's, so retention recovery never settles a
# rectification's batch as a deletion. Also the crash tests' checkpoint scope.
RUN_ACTIVITY = "dsr_rectification"
ACTION = "rectify"

KEPT_REASONS = {
    "legal_hold": "under a legal hold: kept as it is",
    "restriction": "restricted (Art. 18): lift the restriction and tell the person, then file"
    " the rectification again",
    "changed_meanwhile": "changed in the source system while it was being rectified (for"
    " example its e-mail address now names someone else): check it, and file the"
    " rectification again if it still needs it",
    "subject_unknown": "an identifier field of the record (such as the e-mail) holds a value"
    " that cannot be read as an identifier, so whose it is and whether a hold covers it cannot"
    " be told: correct that field in the source system, then file the rectification again",
}


@dataclass
class Target:
    """One dataset that can find the person, and the activities that bind it."""

    activities: list[Activity]
    adapter: SourceAdapter

    @property
    def where(self) -> dict[str, str]:
        return {"system": self.adapter.system, "dataset": self.adapter.dataset}

    def rule_fields(self) -> set[str]:
        return rule_fields(self.activities)


def rule_fields(activities: Iterable[Activity]) -> set[str]:
    """Fields a retention rule reads (anchors, conditions) or that mark a record anonymised:
    they decide what retention does with the record, so they are not rectified here."""
    fields = {
        name for a in activities for case in a.retention
        for name in (case.anchor_column, case.when.column if case.when else None) if name
    }  # fmt: skip
    return fields | {m for a in activities if (m := getattr(a.action, "marker_column", None))}


def finds_people(activities: Iterable[Activity]) -> bool:
    """Whether a data-subject request searches (and so may rectify) the dataset these
    activities bind: one of them is run as controller and has a lookup column."""
    return any(a.processor_for is None and a.source.lookup for a in activities)


def rectifiable_columns(activities: Sequence[Activity], columns: Iterable[str]) -> set[str]:
    """Of a SQL table's ``columns``, those a rectification may set (least-privilege grants):
    none when no activity binding the table can find a person (no lookup column, or run as
    a processor); never the key and file-link columns, nor :func:`rule_fields`."""
    if not finds_people(activities):
        return set()
    fixed = rule_fields(activities)
    for a in activities:
        source = a.source
        key = getattr(source, "primary_key", ())
        fixed |= {*([key] if isinstance(key, str) else key)}
        fixed |= {link.column for link in getattr(source, "objects", ())}
    return set(columns) - fixed


@dataclass
class Rectification:
    request_id: int
    request_ref: str
    refs: frozenset[bytes]
    kinds: list[str]  # the kinds of identifier given (which lookup columns can find them)
    values: dict[str, Any]
    key: bytes
    connections: Mapping[str, Any] = field(default_factory=dict)
    catalogue_version: str = ""
    by: str = "airflow"  # who filed it: places the holds carried to a new identifier

    def run(self, catalogue: Iterable[Activity], registers: Registers) -> dict[str, Any]:
        from include.retention.access_extract import searchable

        targets = self._targets(searchable(catalogue, self.kinds))
        try:
            checked, cannot = self._check(targets)
            outcomes = [
                self._apply(target, fields, registers)
                for target, fields in checked if fields
            ]  # fmt: skip
        finally:
            for target in targets:
                target.adapter.close()
        changed = [result for result, _ in outcomes if result["records"]]
        kept = [
            {"system": r["system"], "dataset": r["dataset"], "records": n,
             "reason": KEPT_REASONS[kind]}
            for r, skipped in outcomes for kind, n in skipped.items()
        ]  # fmt: skip
        return {
            "fields": sorted(self.values),
            "changed": changed,
            "kept": kept,
            "not_rectifiable": cannot,
            "recipients_to_notify": _recipients(targets, changed),
        }

    def _targets(self, activities: list[Activity]) -> list[Target]:
        by_dataset: dict[tuple[str, str], Target] = {}
        for activity in activities:
            where = (activity.source.system, activity.source.dataset)
            if where in by_dataset:
                by_dataset[where].activities.append(activity)
                continue
            connection = self.connections.get(activity.id)
            adapter = adapter_for(activity.source, self.key, connection)
            by_dataset[where] = Target([activity], adapter)
        return list(by_dataset.values())

    def _selection(self) -> OfSubject:
        return OfSubject(self.refs)

    def _check(
        self, targets: list[Target]
    ) -> tuple[list[tuple[Target, dict[str, Any]]], list[dict[str, str]]]:
        """Per dataset the checked values it takes; the datasets holding the person that
        cannot be rectified. Raises naming every problem; nothing has changed then."""
        problems: list[str] = []
        checked: list[tuple[Target, dict[str, Any]]] = []
        cannot: list[dict[str, str]] = []
        known: set[str] = set()
        for target in targets:
            try:
                fields = target.adapter.fields_to_update(self.values)
            except NotUpdatable as exc:
                if any(True for _ in target.adapter.read(self._selection())):
                    cannot.append(target.where | {"reason": str(exc)})
                continue
            except RetentionError as exc:
                problems.append(str(exc))
                continue
            known |= fields.keys()
            ruled = sorted(fields.keys() & target.rule_fields())
            if ruled:
                problems.append(
                    f"{target.adapter.system}.{target.adapter.dataset}: field(s)"
                    f" {', '.join(ruled)} decide when its records are deleted or mark them"
                    " anonymised; correct them in the system itself"
                )
            checked.append((target, fields))
        unknown = sorted(set(self.values) - known)
        if unknown:
            problems.append(
                f"fields: {', '.join(repr(n) for n in unknown)} is not a field of any system"
                " that can find a person by identifier (names are matched exactly)"
            )
        if problems:
            raise RetentionError("nothing was changed: " + "; ".join(problems))
        return checked, cannot

    def _apply(
        self, target: Target, fields: dict[str, Any], registers: Registers
    ) -> tuple[dict[str, Any], dict[str, int]]:
        adapter, control = target.adapter, registers.control
        name = lease_name(RUN_ACTIVITY, adapter.system, adapter.dataset)
        carry = _Carry(self, registers, self.new_refs(target, fields))
        with database_errors(), leased(control.ledger.engine, name) as lease:
            self._recover(adapter, fields, control)
            updated, run_id = _Write(self, target, fields, registers, carry).go(lease)
            carry.holds(updated.subjects)  # and those placed while the change was in flight
            carry.suppressions(updated.subjects)
        result = target.where | {
            "activities": [a.id for a in target.activities],
            "fields": sorted(fields),
            "records": len(updated.refs),
        } | ({"carried": carry.done} if carry.to else {})  # fmt: skip
        if updated.refs or updated.skipped:
            registers.requests.record_rectified(self.request_id, result | {
                "record_refs": sorted(ref.hex() for ref in updated.refs),
                **_kept_counts(updated), "run_id": run_id,
            })  # fmt: skip
        log.info("%s: %s.%s: %s record(s) rectified (%s), %s kept (held, restricted or"
                 " changed meanwhile)",
                 self.request_ref, adapter.system, adapter.dataset, len(updated.refs),
                 ", ".join(sorted(fields)), sum(updated.skipped.values()))  # fmt: skip
        return result, {kind: n for kind, n in updated.skipped.items() if n}

    def _recover(self, adapter: SourceAdapter, fields: dict[str, Any], control: Control) -> None:
        """Under the dataset's lease: settle the batches this request's dead runs left prepared
        on it, from whether each record's fields equal the values now, and close those runs.
        Another request's batch left prepared there refuses the rectification: only that
        request knows its values, and changing the records first would falsify its check."""
        live = control.leases.live_runs()
        origins = {
            run.run_id: run.header.get("origin") or {}
            for run in control.ledger.runs(RUN_ACTIVITY) if run.run_id not in live
        }  # fmt: skip
        requests = {
            run_id: origin.get("request") for run_id, origin in origins.items()
            if origin.get("dataset") == _where(adapter)
        }  # fmt: skip
        mine = {run_id for run_id, ref in requests.items() if ref == self.request_ref}
        pending = [b for b in control.ledger.pending_batches(RUN_ACTIVITY) if b.run_id in requests]
        others = sorted({str(requests[b.run_id]) for b in pending if b.run_id not in mine})
        if others:
            raise RetentionError(
                f"nothing was changed in {adapter.system}.{adapter.dataset}: the rectification"
                f" of {', '.join(others)} was interrupted there and is not settled yet. Clear"
                " its failed rectify task in the Airflow UI first (its retry settles it), then"
                " this one again"
            )
        if pending:
            wanted = {ref for batch in pending for ref in unpack_refs(batch.refs)}
            holding = adapter.holding(wanted, fields)
            for batch in pending:
                settle_batch(control, batch, holding, applied_if_present=True)
        close_interrupted_runs(control, RUN_ACTIVITY, only=mine)

    def new_refs(self, target: Target, fields: Mapping[str, Any]) -> frozenset[bytes]:
        """The keyed references of the new values of the lookup columns among ``fields``."""
        lookups = target.activities[0].source.lookup_columns()
        normal = [normal_value(kind, fields[column]) for kind, column in lookups
                  if column in fields]  # fmt: skip
        return frozenset(subject_ref(self.key, value) for value in normal if value is not None)

    def header(self, adapter: SourceAdapter, fields: dict[str, Any]) -> RunHeader:
        return RunHeader(
            activity_id=RUN_ACTIVITY, system=adapter.system, dataset=adapter.dataset,
            action="rectification",
            rules=[f"Art. 16: rectification of {self.request_ref} ({', '.join(sorted(fields))})"],
            as_of=dt.datetime.now(dt.UTC).isoformat(), cutoffs=[None], dry_run=False,
            catalogue_version=self.catalogue_version, code_version=code_version(),
            origin={"reason": "rectification", "request": self.request_ref,
                    "dataset": _where(adapter)},
        )  # fmt: skip


@dataclass
class _Write:
    """One dataset's write-ahead update: a ledger run with one ``rectify`` batch, staged again
    (a new batch) when a hold was placed on its records between staging and evidence."""

    plan: Rectification
    target: Target
    fields: dict[str, Any]
    registers: Registers
    carry: _Carry
    seen: list[ActiveHolds] = field(default_factory=list)
    prepared: tuple[int, int] | None = None  # the prepared batch's seq, and its records

    @property
    def adapter(self) -> SourceAdapter:
        return self.target.adapter

    def read_holds(self) -> ActiveHolds:
        holds = self.registers.holds
        self.seen.append(holds.active(self.adapter.system, self.adapter.dataset))
        return self.seen[-1]

    def go(self, lease: Lease) -> tuple[Updated, str]:
        ledger = self.registers.control.ledger
        run_id = ledger.start_run(self.plan.header(self.adapter, self.fields))
        lease.bind_run(run_id)
        try:
            updated, seq = self._update(run_id)
        except Exception as exc:
            ledger.finish_run(run_id, RUN_ACTIVITY, outcome="failed", counts={},
                              message=f"failed: {type(exc).__name__}")  # fmt: skip
            raise
        counts = {"applied": len(updated.refs), **_kept_counts(updated)}
        ledger.finish_run(
            run_id, RUN_ACTIVITY, outcome="completed" if seq else "nothing_to_do", counts=counts,
            message=f"rectify: {len(updated.refs)} records ({', '.join(sorted(self.fields))})",
        )  # fmt: skip
        return updated, run_id

    def _update(self, run_id: str) -> tuple[Updated, int | None]:
        selection = OfSubject(self.plan.refs)
        for no in range(1, lifecycle.MAX_HOLD_RETRIES + 1):
            self.prepared = None
            try:
                updated = self.adapter.update(
                    selection, self.fields, self.read_holds,
                    functools.partial(self._prepare, run_id, no),
                )  # fmt: skip
            except _HeldMeanwhile:
                log.info("%s: a hold was placed on the records meanwhile; staging again",
                         self.plan.request_ref)  # fmt: skip
                continue
            if self.prepared is None:
                return updated, None
            seq, staged = self.prepared
            checkpoint("after_apply", no, RUN_ACTIVITY)
            lifecycle.resolve(self.registers.control, seq, staged, updated.refs)
            checkpoint("after_resolve", no, RUN_ACTIVITY)
            return updated, seq
        raise RetentionError(
            f"{self.plan.request_ref}: holds kept changing; gave up after"
            f" {lifecycle.MAX_HOLD_RETRIES} tries (nothing of the last try was changed)"
        )

    def _prepare(self, run_id: str, no: int, staged: Updated) -> None:
        """Suppressions carried to a new identifier, evidence; then a hold placed since the
        holds were read undoes the update."""
        if not staged.refs:
            return
        self.carry.suppressions(staged.subjects)
        adapter, ledger = self.adapter, self.registers.control.ledger
        seq = ledger.prepare_batch(
            run_id, RUN_ACTIVITY, adapter.system, adapter.dataset, batch_no=no, action=ACTION,
            refs_blob=pack_refs(staged.refs), fields=sorted(self.fields),
            counts={"records": len(staged.refs), **_kept_counts(staged)},
        )  # fmt: skip
        checkpoint("after_prepare", no, RUN_ACTIVITY)
        read = self.seen[-1]
        if lifecycle.held_since(Batch(no, staged.refs, read), self.read_holds()):
            ledger.resolve_batch(seq, outcome="rolled_back", applied=0)
            raise _HeldMeanwhile
        self.prepared = (seq, len(staged.refs))


@dataclass(frozen=True)
class Registers:
    """Where a rectification reads holds and writes: the hold register, the request register
    and the suppression list (the request DAGs' role), and the control database (ledger runs,
    leases)."""

    holds: HoldRegister
    requests: RequestRegister
    suppressions: SuppressionList
    control: Control


@dataclass
class _Carry:
    """A rectified identifier keeps what protects or suppresses the person: every active
    subject hold and suppression on the records' old identifiers (and those the request gave)
    is placed on the new ones too, chained like any placement, reason naming the request.

    Suppressions are carried before the evidence (they do not keep a record from changing);
    holds after the change: a record an active hold covers is never changed, so only a hold
    placed while the change was in flight (its placement waited for it) can cover an old
    value the records no longer have."""

    plan: Rectification
    registers: Registers
    to: frozenset[bytes]
    done: dict[str, Any] = field(default_factory=lambda: {"holds": [], "suppressions": 0})

    def _old(self, subjects: AbstractSet[bytes]) -> set[bytes]:
        return (set(subjects) | self.plan.refs) - self.to

    def holds(self, subjects: AbstractSet[bytes]) -> None:
        if not self.to:
            return
        register = self.registers.holds
        have = {(kind, ref) for _, kind, ref in register.active_subject_holds(self.to)}
        for hold_id, kind, _ in register.active_subject_holds(self._old(subjects)):
            for ref in sorted(self.to):
                if (kind, ref) in have:
                    continue
                self.done["holds"].append(register.place_subject_ref_hold(
                    ref, kind=kind, placed_by=self.plan.by,  # type: ignore[arg-type]
                    reason=f"rectification of {self.plan.request_ref}: carried from hold {hold_id}",
                ))  # fmt: skip
                have.add((kind, ref))

    def suppressions(self, subjects: AbstractSet[bytes]) -> None:
        if not self.to:
            return
        register, old = self.registers.suppressions, self._old(subjects)
        for scope, refs in register.active().items():
            if refs & old:
                self.done["suppressions"] += register.add(
                    self.to, scope, added_by=f"rectification of {self.plan.request_ref}",
                    request_id=self.plan.request_id,
                )  # fmt: skip


def _where(adapter: SourceAdapter) -> str:
    return f"{adapter.system}/{adapter.dataset}"


def _kept_counts(updated: Updated) -> dict[str, int]:
    others = ("changed_meanwhile", "subject_unknown")
    return {
        "held_skipped": updated.skipped.get("legal_hold", 0),
        "restricted_skipped": updated.skipped.get("restriction", 0),
    } | {name: n for name in others if (n := updated.skipped.get(name, 0))}


class _HeldMeanwhile(Exception):
    """A hold was placed on a staged rectification's records before it was applied."""


def _recipients(targets: list[Target], changed: list[dict[str, Any]]) -> list[str]:
    """Art. 19: the recipient categories of the activities whose records changed."""
    touched = {(r["system"], r["dataset"]) for r in changed}
    return sorted({
        r.en for t in targets if (t.adapter.system, t.adapter.dataset) in touched
        for a in t.activities for r in a.recipients
    })  # fmt: skip
