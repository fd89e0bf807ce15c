"""Rectification (Art. 16): the corrected fields set on the person's records in every system
that holds them, through the source adapters (`SourceAdapter.fields_to_update` / `update`).

Two passes. First every dataset that can find the person is asked which of the fields it has,
and checks each new value against its field's type; nothing changes unless every field names
a field of some dataset exactly and every value fits everywhere (the error names each problem,
never a value). Then each dataset updates the person's records in one go.

What is refused:
- the fields that key a record or name its person (primary key, subject column, file links),
  and fields a retention rule of the dataset reads (anchors and conditions): correcting them
  would move a deadline; the controller does that in the system itself;
- records under a legal hold (kept as evidence as they are) or a restriction (Art. 18: while
  restricted, data is only stored; a contested accuracy is settled by lifting the restriction,
  telling the person (Art. 18(3)), then filing the rectification again). They are left as
  they are and the answer says how many and why.
- sources that cannot change fields (objects in a bucket): the answer names them, so the
  correction is made there by hand.

The ledger gets one ``dsr_rectified`` entry per dataset changed: which fields, how many
records and their keyed references, never the values. The answer lists the activities'
recipients to tell (Art. 19).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from include.retention.catalogue import Activity
from include.retention.errors import RetentionError
from include.retention.holds import HoldRegister
from include.retention.sources.base import (
    NotUpdatable,
    OfSubject,
    SourceAdapter,
    Updated,
    adapter_for,
)
from include.retention.subject_requests import RequestRegister

log = logging.getLogger(__name__)

KEPT_REASONS = {
    "legal_hold": "under a legal hold: kept as it is",
    "restriction": "restricted (Art. 18): lift the restriction and tell the person, then file"
    " the rectification again",
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
        """Fields a retention rule reads (anchors, conditions): not rectified here."""
        return {
            name for a in self.activities for case in a.retention
            for name in (case.anchor_column, case.when.column if case.when else None) if name
        }  # fmt: skip


@dataclass
class Rectification:
    request_id: int
    request_ref: str
    refs: frozenset[bytes]
    kinds: list[str]  # the kinds of identifier given (which lookup columns can find them)
    values: dict[str, Any]
    key: bytes
    connections: Mapping[str, Any] = field(default_factory=dict)

    def run(
        self, catalogue: Iterable[Activity], holds: HoldRegister, register: RequestRegister
    ) -> dict[str, Any]:
        from include.retention.access_extract import searchable

        targets = self._targets(searchable(catalogue, self.kinds))
        try:
            checked, cannot = self._check(targets)
            outcomes = [
                self._apply(target, fields, holds, register) for target, fields in checked if fields
            ]
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
                    f" {', '.join(ruled)} decide when its records are deleted; correct them in"
                    " the system itself"
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
        self, target: Target, fields: dict[str, Any], holds: HoldRegister,
        register: RequestRegister,
    ) -> tuple[dict[str, Any], dict[str, int]]:  # fmt: skip
        adapter = target.adapter
        updated: Updated = adapter.update(
            self._selection(), fields, lambda: holds.active(adapter.system, adapter.dataset)
        )
        result = target.where | {
            "activities": [a.id for a in target.activities],
            "fields": sorted(fields),
            "records": len(updated.refs),
        }
        if updated.refs or updated.skipped:
            register.record_rectified(self.request_id, result | {
                "record_refs": sorted(ref.hex() for ref in updated.refs),
                "held_skipped": updated.skipped.get("legal_hold", 0),
                "restricted_skipped": updated.skipped.get("restriction", 0),
            })  # fmt: skip
        log.info("%s: %s.%s: %s record(s) rectified (%s), %s kept (held/restricted)",
                 self.request_ref, adapter.system, adapter.dataset, len(updated.refs),
                 ", ".join(sorted(fields)), sum(updated.skipped.values()))  # fmt: skip
        return result, {kind: n for kind, n in updated.skipped.items() if n}


def _recipients(targets: list[Target], changed: list[dict[str, Any]]) -> list[str]:
    """Art. 19: the recipient categories of the activities whose records changed."""
    touched = {(r["system"], r["dataset"]) for r in changed}
    return sorted({
        r.en for t in targets if (t.adapter.system, t.adapter.dataset) in touched
        for a in t.activities for r in a.recipients
    })  # fmt: skip
