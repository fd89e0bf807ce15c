"""Finding a data subject's records through the bindings' lookup columns.

A request names the person by identifiers of some kinds (`identifiers.KINDS`); a dataset
binding declares which of its columns hold which kind (``lookup: {email: email, phone:
mobile}``, `catalogue._Bound`). A record belongs to the person when any of its lookup values,
normalised by its column's kind exactly as a request's identifier is (`identifiers.normalise`),
has one of the person's keyed references. A value that does not normalise (``n/a``, a
malformed number) matches nobody. A list of values (an API giving a person's addresses as a
list) is each of its values. A value of a type no identifier has (a JSON object, a boolean, a
fraction, a list in a list) is not understood (:meth:`SubjectMatcher.unreadable`): whoever
holds such a record cannot tell whose it is, so must not act on it as if it were nobody's.

:class:`SubjectMatcher` computes those references for source values (adapters, per batch);
:func:`reach` tells which systems a request's identifier kinds can search at all, which
cannot (and what identifier they need), and which activities the company runs as a processor
for another controller (the person is referred there; data-subject requests never touch them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from include.retention.catalogue import Activity, Catalogue, LookupColumn
from include.retention.identifiers import (
    LABELS,
    InvalidIdentifier,
    normalise_customer_id,
    normalise_email,
    normalise_personnummer,
    normalise_phone,
)
from include.retention.pseudonym import SubjectRefHasher

_NORMALISERS: dict[str, Callable[[str, dt.date | None], str]] = {
    "email": lambda value, _: normalise_email(value),
    "phone": lambda value, _: normalise_phone(value),
    "personnummer": lambda value, today: normalise_personnummer(value, today=today).value,
    "customer_id": lambda value, _: normalise_customer_id(value),
}


def normal_value(kind: str, value: Any, today: dt.date | None = None) -> str | None:
    """The normal form of one source value of ``kind`` (exactly `identifiers.normalise`), or
    None when it is no such identifier (it then matches nobody)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    try:
        return _NORMALISERS[kind](str(value), today)
    except InvalidIdentifier:
        return None


def _candidates(value: Any) -> tuple[list[str | int], bool]:
    """The identifier candidates of one source value (a list's or tuple's items each), and
    whether some part of it is of a type no identifier has. None (and an empty list) is no
    value."""
    items = value if isinstance(value, list | tuple) else [value]
    found: list[str | int] = []
    unreadable = False
    for item in items:
        if item is None:
            continue
        if isinstance(item, str | int) and not isinstance(item, bool):
            found.append(item)
        else:
            unreadable = True
    return found, unreadable


def normal_values(kind: str, value: Any, today: dt.date | None = None) -> list[str]:
    """The normal forms of a source value of ``kind`` that normalise: one for a single value,
    one per item for a list of values."""
    normal = (normal_value(kind, item, today) for item in _candidates(value)[0])
    return [found for found in normal if found is not None]


def first_identifier(columns: Iterable[LookupColumn], fields: Mapping[str, Any]) -> str | None:
    """The normal form of a record's first lookup value that normalises (by column order)."""
    for column in columns:
        found = normal_value(column.kind, fields.get(column.column))
        if found is not None:
            return found
    return None


class SubjectMatcher:
    """Keyed subject references of source values, each normalised by its column's kind."""

    def __init__(
        self, key: bytes, columns: Sequence[LookupColumn], today: dt.date | None = None
    ) -> None:
        self.columns = tuple(columns)
        self._hasher = SubjectRefHasher(key)
        self._today = today or dt.date.today()  # once: a personnummer asks for it per value

    def refs(self, kind: str, values: Iterable[Hashable]) -> dict[Any, bytes]:
        """Value -> reference, for each distinct value that normalises (each hashed once)."""
        normaliser, today = _NORMALISERS[kind], self._today
        normal: dict[Any, str] = {}
        for value in dict.fromkeys(values):
            if type(value) is not str and (isinstance(value, bool) or not isinstance(value, int)):
                continue  # NULL, dates, ...: no identifier
            try:
                normal[value] = normaliser(str(value), today)
            except InvalidIdentifier:
                continue
        return dict(zip(normal, self._hasher.refs(normal.values()), strict=True))

    def row_refs(self, rows: Sequence[Sequence[Any]], first: int) -> list[frozenset[bytes]]:
        """Per row, the references of its lookup values (the row's items ``first`` onwards,
        in the order of :attr:`columns`)."""
        per_column = [
            self.refs(column.kind, (row[first + i] for row in rows))
            for i, column in enumerate(self.columns)
        ]
        out = []
        for row in rows:
            refs = (known.get(row[first + i]) for i, known in enumerate(per_column))
            out.append(frozenset(r for r in refs if r is not None))
        return out

    def distinct_refs(self, rows: Sequence[Sequence[Any]], first: int) -> set[bytes]:
        """The references of every lookup value of ``rows`` (laid out as for `row_refs`),
        without telling whose: what a batch's evidence records."""
        found: set[bytes] = set()
        for i, column in enumerate(self.columns):
            found.update(self.refs(column.kind, map(itemgetter(first + i), rows)).values())
        return found

    def record_refs(self, fields: Mapping[str, Any]) -> frozenset[bytes]:
        """The references of one record's lookup fields (by column name; a list of values
        gives each value's)."""
        normal = {
            value for c in self.columns
            for value in normal_values(c.kind, fields.get(c.column), self._today)
        }  # fmt: skip
        return frozenset(self._hasher.refs(normal))

    def unreadable(self, fields: Mapping[str, Any]) -> list[str]:
        """The lookup fields of one record holding a value of a type no identifier has (see
        the module doc): whose the record is cannot be told, nor whether a hold covers it."""
        return [c.column for c in self.columns if _candidates(fields.get(c.column))[1]]


# ------------------------------------------------------------------------------ reach


@dataclass
class Reach:
    """Where a request's identifier kinds can find the person (no personal data: names of
    systems, datasets and identifier kinds only)."""

    searched: dict[str, list[str]] = field(default_factory=dict)  # system -> datasets
    not_searchable: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # ^ system -> dataset -> the identifier kinds it can be searched by
    refer: list[dict[str, str]] = field(default_factory=list)  # processor activities
    undeclared: dict[str, list[str]] = field(default_factory=dict)
    # ^ system -> datasets bound without an activity: no purpose or legal basis to act under

    def needed(self) -> dict[str, list[str]]:
        """Per system with a dataset the request cannot search: the kinds that would."""
        return {
            system: sorted({k for kinds in datasets.values() for k in kinds})
            for system, datasets in self.not_searchable.items()
        }

    def summary(self) -> dict[str, Any]:
        """For the task's result (an XCom) and the request register's outcome."""
        return {
            "systems_searched": {s: sorted(d) for s, d in sorted(self.searched.items())},
            "systems_not_covered": {
                system: {
                    "datasets": sorted(self.not_searchable[system]),
                    "give_one_of": kinds,
                    "note": "not searchable by the identifiers given; ask the person for "
                    + " or ".join(LABELS[k] for k in kinds),
                }
                for system, kinds in sorted(self.needed().items())
            },
            "refer_to_controller": self.refer,
            "systems_without_activity": {
                system: {
                    "datasets": sorted(datasets),
                    "note": "bound in the catalogue, but no activity declares the purpose and"
                    " legal basis of these records: not searched; declare their activity",
                }
                for system, datasets in sorted(self.undeclared.items())
            },
        }


def reach(catalogue: Catalogue | Iterable[Activity], kinds: Iterable[str]) -> Reach:
    """Which datasets the identifier ``kinds`` can search, which not, the activities run as a
    processor (never searched: the person is referred to their controller) and the datasets
    bound without an activity (never searched: nothing says why they are kept or whether an
    Art. 17(3) exception applies)."""
    given = set(kinds)
    found = Reach()
    lookups: dict[tuple[str, str], set[str]] = {}
    for binding in catalogue.unreferenced() if isinstance(catalogue, Catalogue) else ():
        found.undeclared.setdefault(binding.system, []).append(binding.dataset)
    for activity in catalogue:
        src = activity.source
        if activity.processor_for is not None:
            found.refer.append({
                "activity": activity.id, "system": src.system, "dataset": src.dataset,
                "controller_sv": activity.processor_for.sv,
                "controller_en": activity.processor_for.en,
            })  # fmt: skip
            continue
        lookups.setdefault((src.system, src.dataset), set()).update(src.lookup)
    for (system, dataset), declared in sorted(lookups.items()):
        if declared & given:
            found.searched.setdefault(system, []).append(dataset)
        else:
            found.not_searchable.setdefault(system, {})[dataset] = sorted(declared)
    return found
