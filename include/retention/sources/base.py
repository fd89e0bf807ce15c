"""What every kind of source must answer, the selections it is asked about, and the registry
from source kind (the catalogue's ``source.kind``) to its adapter.

An adapter is bound to one dataset (a table, a bucket, an API collection) of one system, as the
catalogue binds it. The run lifecycle (`include.retention.lifecycle`) drives it through the
write-ahead protocol, the same for every kind::

    batch = next(adapter.batches(selection, action, holds, size))  # staged: nothing final yet
    seq = ledger.prepare_batch(..., refs=batch.refs)                # evidence first
    if a hold was placed meanwhile on the batch:                   # lifecycle re-reads holds
        adapter.abandon(batch); resolve rolled_back; batch = adapter.redo(batch, holds)
    applied = adapter.apply(batch)                                  # make it final
    ledger.resolve_batch(seq, applied.refs)

``batches`` stages a batch: whatever must happen before its evidence is written (SQL: the
DELETE or the row locks in an open transaction, so ``RETURNING`` tells exactly which records;
object stores and APIs: listing the batch's keys, changing nothing). ``apply`` makes it final
(SQL: commit; object stores and APIs: delete) and returns the references actually applied.
After a crash, ``present`` tells recovery which of a prepared batch's references still exist.

Records are named by keyed references only (`include.retention.pseudonym`): an adapter never
hands personal data to the lifecycle, except ``read`` (data-subject access and portability),
whose records go to the requester and nowhere else (not to logs, XComs or the ledger).

A new source kind is a module ``include/retention/sources/<kind>.py`` defining a class with
``@register("<kind>")`` (loaded on first use by :func:`adapter_for`) and a binding model in
the catalogue (`include.retention.catalogue`) whose ``kind`` is ``"<kind>"``.
"""

from __future__ import annotations

import datetime as dt
import importlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from include.retention.catalogue import AnonymiseAction, DeleteAction, RuleCase
from include.retention.errors import RetentionError
from include.retention.holds import ActiveHolds

Key = int | str  # a record's key as JSON carries it (partition bounds travel as XComs)
Action = DeleteAction | AnonymiseAction
HoldReader = Callable[[], ActiveHolds]  # the active holds of the adapter's dataset, read now
Record = Mapping[str, Any]  # one record's fields as the source holds them (personal data)


# ------------------------------------------------------------------------------ selections


@dataclass(frozen=True)
class DueAt:
    """Retention: the records one of ``rules`` makes due at ``as_of`` (aware datetime).

    Records that are held or restricted are selected (and counted as such) but never changed;
    records whose anchor is unknown, not yet due, or that no rule applies to are not selected.
    """

    as_of: dt.datetime
    rules: tuple[RuleCase, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.as_of, dt.datetime) or self.as_of.tzinfo is None:
            raise RetentionError("as_of must be a time-zone-aware datetime")
        if not self.rules:
            raise RetentionError("a retention selection needs at least one rule")


@dataclass(frozen=True)
class OfSubject:
    """Every record of one data subject: those whose lookup columns (any of them, each value
    normalised by its kind, `include.retention.lookup`) hold one of ``subject_refs``, the
    keyed references of the person's normalised identifiers (`SubjectRefHasher`)."""

    subject_refs: frozenset[bytes]

    def __post_init__(self) -> None:
        refs = self.subject_refs
        if isinstance(refs, bytes | str) or not refs:
            raise RetentionError(
                "a subject selection needs the subject's keyed references (a collection)"
            )
        refs = frozenset(refs)
        if not all(isinstance(r, bytes) and r for r in refs):
            raise RetentionError("a subject's keyed references are non-empty bytes")
        object.__setattr__(self, "subject_refs", refs)

    def matches(self, refs: AbstractSet[bytes]) -> bool:
        """Whether a record with these lookup references is the subject's."""
        return not self.subject_refs.isdisjoint(refs)


@dataclass(frozen=True)
class KeyRange:
    """The records of ``within`` whose key is above ``lower`` and at most ``upper`` (None: no
    bound): one partition of a selection (see `SourceAdapter.partitions`)."""

    within: DueAt | OfSubject
    lower: Key | None = None
    upper: Key | None = None
    index: int = 0  # the partition's number (0-based), for logs and the evidence

    def __post_init__(self) -> None:
        if isinstance(self.within, KeyRange):
            raise RetentionError("a key range partitions a selection, not another key range")


Selection = DueAt | OfSubject | KeyRange


def base_selection(selection: Selection) -> DueAt | OfSubject:
    """The selection a key range partitions (or the selection itself)."""
    return selection.within if isinstance(selection, KeyRange) else selection


def key_bounds(selection: Selection) -> tuple[Key | None, Key | None]:
    """(lower exclusive, upper inclusive) key bounds of the selection; (None, None): all."""
    if isinstance(selection, KeyRange):
        return selection.lower, selection.upper
    return None, None


def key_ranges(selection: Selection, uppers: Sequence[Key]) -> list[KeyRange]:
    """The partitions of ``selection`` whose inner upper bounds are ``uppers`` (ascending)."""
    lower, upper = key_bounds(selection)
    edges = [lower, *uppers, upper]
    base = base_selection(selection)
    return [KeyRange(base, lo, hi, index=i) for i, (lo, hi) in enumerate(itertools.pairwise(edges))]


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Counts:
    """What a selection matches in the source now; counts only, nothing changed.

    ``selected`` includes the held and restricted records (they are selected, then kept).
    The retention fields (``anchor_unknown``, ``kept``, ``out_of_scope``,
    ``already_anonymised``, ``cutoffs``) are only filled for :class:`DueAt` selections.
    ``subject_unknown``: records the selection would select but kept because a lookup field
    holds a value no identifier has (`SubjectMatcher.unreadable`; not in ``selected``).
    """

    total: int  # records of the dataset (of the key range, for a partition)
    selected: int
    held: int = 0
    restricted: int = 0
    anchor_unknown: int = 0
    kept: int = 0
    out_of_scope: int = 0
    already_anonymised: int = 0
    subject_unknown: int = 0
    cutoffs: tuple[str | None, ...] = ()  # per rule, the cutoff as the source compares it

    @property
    def to_apply(self) -> int:
        return self.selected - self.held - self.restricted


@dataclass
class Batch:
    """One staged batch: what the lifecycle writes as evidence before :meth:`apply`.

    ``refs``: the records the batch changes (held and restricted ones already left out);
    ``subjects``: the distinct keyed subject references of those records (of all their lookup
    columns), or None when the adapter did not read them (then any new subject hold makes the
    lifecycle redo the batch); ``unread_subjects``: the adapter read only some of them (S3: not
    the people an object's older versions name, read only while subject holds exist), so any
    new subject hold redoes the batch too;
    ``holds``: the active holds the batch was checked against; ``skipped``: hold kind ->
    records left out; ``counts``: further evidence counts (``children.<table>``, ``versions``);
    ``linked``: per linked dataset (e.g. a bucket of files the records point to), the keys of
    the records' linked items, for the lifecycle's follow-on step; ``judged_through``: for a
    source whose records carry the moment they were written (S3 versions), the newest such
    moment of what the batch judged, in the source's own clock (see :data:`JudgedThrough`);
    ``state``: the adapter's own (an open transaction, the objects to delete), opaque to
    everyone else.
    """

    no: int
    refs: Sequence[bytes]
    holds: ActiveHolds
    subjects: frozenset[bytes] | None = None
    unread_subjects: bool = False
    skipped: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    linked: dict[str, list[str]] = field(default_factory=dict)
    judged_through: dt.datetime | None = None
    state: Any = field(default=None, repr=False)

    @property
    def held_skipped(self) -> int:
        return self.skipped.get("legal_hold", 0)

    @property
    def restricted_skipped(self) -> int:
        return self.skipped.get("restriction", 0)


JudgedThrough = Mapping[bytes, dt.datetime]
"""Per record reference, the ``judged_through`` moment of the batch that claimed it. A source
that can tell when a record was written (S3: each version's ``LastModified``) does not count
what was written under the same key later: a new record, not the one judged and claimed
(e.g. a photo uploaded again under its old key during the run). Other sources ignore it."""


def judged_through_of(claims: Iterable[Mapping[bytes, dt.datetime | None]]) -> JudgedThrough:
    """Claims (reference -> its batch's ``judged_through``, e.g. `EvidenceReader.claims`) as
    one :data:`JudgedThrough`. A reference claimed twice takes the later moment, and none if
    either claim has none: more of what is found then counts as the claimed record, the safe
    side."""
    through: dict[bytes, dt.datetime] = {}
    unbounded: set[bytes] = set()
    for claim in claims:
        for ref, at in claim.items():
            if at is None:
                unbounded.add(ref)
            elif ref not in through or at > through[ref]:
                through[ref] = at
    return {ref: at for ref, at in through.items() if ref not in unbounded}


@dataclass(frozen=True)
class Updated:
    """What :meth:`SourceAdapter.update` changed: the references of the records updated, the
    held or restricted records left as they were (hold kind -> records), and the keyed
    references of the updated records' lookup values as they were before (a rectified
    identifier's holds and suppressions are carried over from them)."""

    refs: Sequence[bytes]
    skipped: Mapping[str, int] = field(default_factory=dict)
    subjects: frozenset[bytes] = frozenset()


# Called by `SourceAdapter.update` with what is about to change, before it is final.
Prepare = Callable[[Updated], None]


class NotUpdatable(RetentionError):
    """The source cannot change a record's fields through its adapter (e.g. objects in a
    bucket): a rectification must be made there by hand."""


@dataclass(frozen=True)
class Applied:
    """What :meth:`SourceAdapter.apply` made final: the references applied (a subset of the
    batch's), how many records failed (kept, e.g. an API error), and further counts."""

    refs: Sequence[bytes]
    failed: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------ the protocol


@runtime_checkable
class SourceAdapter(Protocol):
    """One dataset of one source system, as the catalogue binds it (see the module doc)."""

    kind: ClassVar[str]
    system: str  # the catalogue's system id (evidence and holds are keyed by it)
    dataset: str  # the table, bucket or collection name (ditto)

    def resolve(self, action: Action | None = None) -> None:
        """Check the binding (and the action's columns and their types) against the real
        source; raise :class:`RetentionError` naming what does not match. Idempotent."""

    def count(self, selection: Selection, action: Action, holds: ActiveHolds) -> Counts:
        """Count what ``selection`` matches now, changing nothing."""

    def partitions(self, selection: Selection, size: int) -> list[KeyRange]:
        """Split ``selection`` into key ranges of about ``size`` records of the dataset each,
        covering every key exactly once, in key order (one range when it is small)."""

    def batches(
        self, selection: Selection, action: Action, holds: HoldReader, size: int
    ) -> Iterator[Batch]:
        """Stage the selection's records a batch of at most about ``size`` at a time, numbered
        from 1; held and restricted records (by ``holds()``, read at staging) are left out.
        The lifecycle applies or abandons each batch before it asks for the next."""

    def redo(self, batch: Batch, holds: HoldReader) -> Batch:
        """Stage an abandoned batch again (same records, holds read afresh), same number."""

    def apply(self, batch: Batch) -> Applied:
        """Make the staged batch final; the references actually applied."""

    def abandon(self, batch: Batch) -> None:
        """Undo whatever staging did (SQL: roll back); nothing of the batch is applied."""

    def present(
        self, refs: AbstractSet[bytes], action: Action, within: Selection | None = None,
        judged_through: JudgedThrough | None = None,
    ) -> set[bytes]:  # fmt: skip
        """Which of ``refs`` are present now: for a deletion, the records that still exist;
        for an anonymisation, the records that exist and are marked anonymised. Waits for a
        change still being committed (recovery relies on it). ``within``: look only in this
        key range (a partition's recovery must not wait for the others' batches in flight);
        an adapter may look further. ``judged_through``: see :data:`JudgedThrough`."""

    def read(self, selection: Selection) -> Iterator[Record]:
        """The selected records' fields (data-subject access and portability)."""

    def fields_to_update(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Of ``values`` (field name -> new value), the fields this dataset has (names matched
        exactly), each value checked against and converted to its field's type; {} when it
        has none of them. Raise :class:`RetentionError` naming every field whose value does
        not fit, or :class:`NotUpdatable` when the source cannot change fields. Changes
        nothing."""

    def update(
        self, selection: Selection, values: Mapping[str, Any], holds: HoldReader,
        prepare: Prepare,
    ) -> Updated:  # fmt: skip
        """Set ``values`` (as :meth:`fields_to_update` returned them) on the selected records
        at once, leaving out held and restricted ones (``holds()`` read while the records are
        locked, where the source can lock). Data-subject rectification (Art. 16).

        Write-ahead: ``prepare`` is called with the records about to change (and those left
        out) before any change is final (SQL: the UPDATE done, not committed; APIs: before
        the first request); when it raises, nothing changes. Returns the records changed."""

    def holding(self, refs: AbstractSet[bytes], values: Mapping[str, Any]) -> set[bytes]:
        """Which of ``refs`` are records whose fields equal ``values`` exactly now (recovery
        of a rectification a crash interrupted). Waits for a change still being committed."""

    def kept_files(self) -> dict[str, dict[str, bool]]:
        """The files linked to records (``objects``) that the run's committed batches kept
        because a record left in the dataset still linked them: link column -> {object key:
        whether a record links it now}. Asked once every batch has committed; none for a
        source without links."""

    def close(self) -> None:
        """Release connections the adapter made itself."""


# ------------------------------------------------------------------------------ registry

A = TypeVar("A")
AdapterFactory = Callable[..., SourceAdapter]
_ADAPTERS: dict[str, AdapterFactory] = {}


def register(kind: str) -> Callable[[A], A]:
    """Class decorator: the adapter of source kind ``kind``. Registering a kind twice is an
    error (two modules would silently disagree about a source)."""

    def add(cls: A) -> A:
        if kind in _ADAPTERS and _ADAPTERS[kind] is not cls:
            raise RetentionError(f"source kind {kind!r} has two adapters: {_ADAPTERS[kind]!r}")
        cls.kind = kind  # type: ignore[attr-defined]
        _ADAPTERS[kind] = cls  # type: ignore[assignment]
        return cls

    return add


def adapter_class(kind: str) -> AdapterFactory:
    """The adapter of ``kind``, importing ``include.retention.sources.<kind>`` on first use."""
    if kind not in _ADAPTERS:
        try:
            importlib.import_module(f"{__package__}.{kind}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{kind}":
                raise
        if kind not in _ADAPTERS:
            raise RetentionError(
                f"no adapter for source kind {kind!r}: expected a module"
                f" include/retention/sources/{kind}.py with @register({kind!r})"
            )
    return _ADAPTERS[kind]


def adapter_for(binding: Any, key: bytes, connection: Any = None) -> SourceAdapter:
    """An adapter bound to ``binding`` (the catalogue's source model; its ``kind`` picks the
    adapter). ``key``: the pseudonym key. ``connection``: the SQLAlchemy engine, boto3 client
    or HTTP session to use; None: made from the binding's Airflow connection (``conn_id``)."""
    return adapter_class(binding.kind)(binding, key, connection)


def registered() -> tuple[str, ...]:
    """Source kinds with an adapter loaded so far."""
    return tuple(sorted(_ADAPTERS))
