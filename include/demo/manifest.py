"""What the demo seeder created and what each record was designed to test.

Every seeded record (a table row or an object) gets one :class:`ManifestEntry` naming its
activity, where it lives, its primary key (or object key) and the designed
:class:`Expectation`. Expectations come from how the record was built relative to the rule's
cutoff, never from running the engine, so end-to-end tests can assert exactly what survives.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

HoldScope = Literal["record", "subject"]


class Expectation(StrEnum):
    """The designed fate of one record at the seed's ``as_of``."""

    expired = "expired"  # anchored before the cutoff: due
    kept = "kept"  # not yet due
    boundary_due = "boundary_due"  # anchored on the last instant of cutoff_date(as_of): due
    boundary_kept = "boundary_kept"  # anchored on the first instant of the next day: kept
    held = "held"  # due by its anchor, but under a legal hold: kept
    unknown_anchor = "unknown_anchor"  # the anchor is NULL or unreadable: kept, reported
    out_of_scope = "out_of_scope"  # no enforceable rule case applies: kept
    consent_withdrawn = "consent_withdrawn"  # consent withdrawn before today: due

    @property
    def due(self) -> bool:
        """Deleted (or anonymised) by an enforcing run at the seed's as_of."""
        return self in _DUE


_DUE = frozenset({Expectation.expired, Expectation.boundary_due, Expectation.consent_withdrawn})


@dataclass(frozen=True)
class HoldRequest:
    """A hold the caller should place (with the hold register) before enforcing.

    ``scope='record'``: a record hold on (system, dataset, pk); ``scope='subject'``: a subject
    hold on ``subject`` (the subject column value or the object's subject metadata).
    """

    activity: str
    system: str
    dataset: str
    pk: int | str
    scope: HoldScope
    subject: str | None


@dataclass(frozen=True)
class ManifestEntry:
    """One seeded record. ``kind`` is ``row`` (dataset = table), ``object`` (= bucket) or
    ``record`` (an API record; dataset = the API's collection)."""

    activity: str
    system: str
    dataset: str
    pk: int | str
    expectation: Expectation
    kind: Literal["row", "object", "record"] = "row"
    subject: str | None = None
    hold: HoldScope | None = None
    note: str = ""
    children: tuple[tuple[str, int], ...] = ()
    objects: tuple[str, ...] = ()

    @property
    def due(self) -> bool:
        return self.expectation.due

    def hold_request(self) -> HoldRequest | None:
        if self.hold is None:
            return None
        return HoldRequest(
            self.activity, self.system, self.dataset, self.pk, self.hold, self.subject
        )


@dataclass
class Manifest:
    """All entries of one seeding, in seeding order."""

    as_of: str
    entries: list[ManifestEntry] = field(default_factory=list)

    def __iter__(self) -> Iterator[ManifestEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def extend(self, entries: Iterable[ManifestEntry]) -> None:
        self.entries.extend(entries)

    def for_activity(self, activity: str, kind: str | None = None) -> list[ManifestEntry]:
        return [
            e for e in self.entries if e.activity == activity and (kind is None or e.kind == kind)
        ]

    def by_expectation(self, activity: str) -> dict[Expectation, list[ManifestEntry]]:
        out: dict[Expectation, list[ManifestEntry]] = {}
        for entry in self.for_activity(activity):
            out.setdefault(entry.expectation, []).append(entry)
        return out

    def hold_requests(self) -> list[HoldRequest]:
        return [r for r in (e.hold_request() for e in self.entries) if r is not None]

    def to_dict(self) -> dict[str, Any]:
        return {"as_of": self.as_of, "entries": [_entry_dict(e) for e in self.entries]}

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False), "utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> Manifest:
        raw = json.loads(path.read_text("utf-8"))
        entries = [
            ManifestEntry(
                **{
                    **e,
                    "expectation": Expectation(e["expectation"]),
                    "children": tuple(tuple(c) for c in e["children"]),
                    "objects": tuple(e["objects"]),
                }
            )
            for e in raw["entries"]
        ]
        return cls(as_of=raw["as_of"], entries=entries)


def _entry_dict(entry: ManifestEntry) -> dict[str, Any]:
    data = asdict(entry)
    data["expectation"] = entry.expectation.value
    return data
