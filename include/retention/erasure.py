"""Art. 17 erasure of one person across every system, and its re-application after a backup
restore.

Every dataset binding the request's identifier kinds can search (its lookup columns,
`include.retention.lookup`) is searched with one :class:`OfSubject` selection of the person's
keyed references. Records found are erased through the one run lifecycle (`lifecycle.run`):
lease, recovery, write-ahead evidence with the records' and subjects' keyed references, the
hold re-check, the run header's ``action`` = ``erasure`` and its origin naming the request.
The activity's own
action is used (delete, or anonymise where the catalogue anonymises); a report-only activity
deletes. The filer's request is the approval: the volume gate does not stop one person's
erasure.

What is kept, and why (Art. 17(3)), is counted per binding and never changed:

- ``legal_obligation``: the legal bases of an activity binding the dataset (this one or
  another: several activities may bind one dataset) include a legal obligation (e.g. supplier
  contacts under the Bookkeeping Act): the dataset's records of the person are counted, not
  run, by every activity binding it, and the response names the keeping activity;
- ``legal_hold`` and ``restriction``: the lifecycle leaves held records out (holds are read
  again before every batch commits).

Activities run as a processor for another controller (the catalogue's ``processor_for``, e.g.
an employer) are never searched or touched: the response refers the person to that controller
(`lookup.reach`), and names the systems the identifiers given cannot search.

:func:`reapply` re-applies, to one restored system, every completed erasure recorded in the
ledger (``dsr_received``/``dsr_status`` entries) and the suppression list (consent-scope
entries to consent-based activities, direct-marketing ones to activities marked
``direct_marketing``: `suppression.scopes_for`, as the nightly runs), with the same
exceptions, the same evidence and idempotently: what is gone is not found again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa

from include.retention import lifecycle
from include.retention.catalogue import (
    Activity,
    Catalogue,
    DeleteAction,
    LegalBasis,
    ReportOnlyAction,
)
from include.retention.chain import ledger_table
from include.retention.errors import RetentionError
from include.retention.evidence import EvidenceReader
from include.retention.holds import ActiveHolds
from include.retention.runs import Control
from include.retention.sources.base import OfSubject, SourceAdapter, adapter_for, judged_through_of
from include.retention.suppression import scopes_for

log = logging.getLogger(__name__)

PURPOSE = "erasure"
# Why records of the person were kept: code -> (Swedish, English), for the response.
KEPT_REASONS: dict[str, tuple[str, str]] = {
    "legal_obligation": (
        "Art. 17.3 b: uppgifterna behövs för att fullgöra en rättslig förpliktelse (t.ex."
        " bokföringslagen) och raderas när lagringstiden har gått ut",
        "Art. 17(3)(b): needed to comply with a legal obligation (e.g. the Bookkeeping Act);"
        " erased when the retention period ends",
    ),
    "legal_hold": (
        "Art. 17.3 e: uppgifterna omfattas av ett bevarandebeslut (rättsliga anspråk)",
        "Art. 17(3)(e): under a legal hold (establishment, exercise or defence of legal claims)",
    ),
    "restriction": (
        "Art. 18: behandlingen är begränsad; uppgifterna sparas tills begränsningen hävs",
        "Art. 18: processing is restricted; kept until the restriction is lifted",
    ),
    "contract": (
        "Art. 17.1 b: uppgifterna behövs också för att fullgöra ett avtal med dig (annan rättslig"
        " grund än samtycket)",
        "Art. 17(1)(b): also needed to perform a contract with you (a legal ground other than"
        " the consent)",
    ),
    "subject_unknown": (
        "ett identifieringsfält (t.ex. e-post) har ett värde som inte kan läsas som en"
        " identitet, så det går inte att avgöra om en spärr gäller; uppgiften rättas och"
        " begäran utförs då",
        "an identifier field (such as the e-mail) holds a value that cannot be read as an"
        " identifier, so whether a hold covers the record cannot be told; it is corrected and"
        " the request carried out then",
    ),
}
DONE_OUTCOMES = ("completed", "nothing_to_do")
T = TypeVar("T")
Connections = Mapping[str, Any]  # activity id -> engine or client (tests); else Airflow's


# ------------------------------------------------------------------------------ bindings


def subject_bindings(
    catalogue: Catalogue | Iterable[Activity], system: str | None = None,
    kinds: Iterable[str] | None = None,
) -> list[Activity]:  # fmt: skip
    """The activities a request can act on: run as controller, with a lookup column (of one of
    ``kinds``, when given), of ``system`` (when given). Processor activities never, nor a
    dataset bound without an activity (no purpose, legal basis or Art. 17(3) exception is
    declared for it: `lookup.reach` names it as not searched)."""
    given = None if kinds is None else set(kinds)
    return [
        a for a in catalogue
        if a.processor_for is None and a.source.lookup
        and (given is None or not given.isdisjoint(a.source.lookup))
        and (system is None or a.source.system == system)
    ]  # fmt: skip


def for_each_binding(
    activities: Iterable[Activity],
    key: bytes,
    work: Callable[[Activity, SourceAdapter], T],
    connections: Connections | None = None,
) -> list[T]:
    """``work(activity, adapter)`` for each activity with an adapter on its binding (closed
    afterwards); ``connections``: activity id -> engine or client, else the Airflow
    connections. The shared loop of the data-subject requests that act on every system."""
    results = []
    for activity in activities:
        adapter = adapter_for(activity.source, key, (connections or {}).get(activity.id))
        try:
            results.append(work(activity, adapter))
        finally:
            adapter.close()
    return results


def kept_reason(activity: Activity) -> str | None:
    """Why none of the activity's records of a person may be erased, or None."""
    if LegalBasis.legal_obligation in activity.legal_bases:
        return "legal_obligation"
    return None


@dataclass(frozen=True)
class Keeper:
    """The activity whose need keeps a dataset's records of a person, and why (a code of
    :data:`KEPT_REASONS`)."""

    activity: str
    reason: str


def _same_dataset(one: Activity, other: Activity) -> bool:
    return (one.source.system, one.source.dataset) == (other.source.system, other.source.dataset)


def keeper(catalogue: Iterable[Activity], activity: Activity) -> Keeper | None:
    """What keeps the person's records of ``activity``'s dataset from an erasure: the first
    activity binding that dataset (``activity`` itself first, then by id) that Art. 17(3)
    keeps (:func:`kept_reason`), or None. Per dataset, not per activity: a record another
    activity needs for a legal obligation is not erased through this one."""
    binding = sorted((a for a in catalogue if _same_dataset(a, activity)),
                     key=lambda a: (a.id != activity.id, a.id))  # fmt: skip
    for candidate in [activity, *binding]:
        if (reason := kept_reason(candidate)) is not None:
            return Keeper(candidate.id, reason)
    return None


def suppression_keeper(catalogue: Iterable[Activity], activity: Activity) -> Keeper | None:
    """What keeps the records of people on the suppression list in ``activity``'s dataset: the
    first other activity (by id) binding that dataset on a legal obligation or a contract, or
    None. A withdrawn consent or an objection ends this activity's processing, not another
    one's on another legal ground (Art. 17(1)(b), 17(3)(b))."""
    for other in sorted((a for a in catalogue if _same_dataset(a, activity)), key=lambda a: a.id):
        if other.id == activity.id:
            continue
        for basis in (LegalBasis.legal_obligation, LegalBasis.contract):
            if basis in other.legal_bases:
                return Keeper(other.id, basis.value)
    return None


def _erasing(activity: Activity) -> Activity:
    """The activity as an erasure runs it: its own delete or anonymise action; delete where
    the catalogue only reports (no retention period does not mean no erasure)."""
    if activity.action.kind != "report_only":
        return activity
    return activity.model_copy(update={"action": DeleteAction()})


def holding(
    activities: Iterable[Activity], refs: Sequence[bytes], key: bytes,
    connections: Connections | None = None,
) -> list[Activity]:  # fmt: skip
    """The activities that hold records of the person (any of ``refs``) now; changes nothing."""

    def found(activity: Activity, adapter: SourceAdapter) -> bool:
        action = _erasing(activity).action
        assert not isinstance(action, ReportOnlyAction)
        return bool(adapter.count(OfSubject(frozenset(refs)), action, ActiveHolds()).selected)

    chosen = list(activities)
    return [a for a, hit in zip(chosen, for_each_binding(chosen, key, found, connections),
                                strict=True) if hit]  # fmt: skip


def records_of(
    activity: Activity, adapter: SourceAdapter, refs: Iterable[bytes], control: Control
) -> int:
    """How many records of the person (any of ``refs``) the binding holds now, held ones
    included; changes nothing."""
    action = _erasing(activity).action
    assert not isinstance(action, ReportOnlyAction)
    adapter.resolve(None)
    holds = control.holds.active(adapter.system, adapter.dataset)
    return adapter.count(OfSubject(frozenset(refs)), action, holds).selected


def recipients_of(activities: Iterable[Activity]) -> list[dict[str, str]]:
    """The distinct recipients of ``activities`` (Art. 19), by English name."""
    named = {r.en: {"sv": r.sv, "en": r.en} for a in activities for r in a.recipients}
    return [named[name] for name in sorted(named)]


# ------------------------------------------------------------------------------ erasure


@dataclass
class BindingOutcome:
    """The person's records in one binding: found, erased (or anonymised), kept and why."""

    activity: str
    system: str
    dataset: str
    method: str
    found: int = 0
    erased: int = 0
    kept: Counter[str] = field(default_factory=Counter)
    runs: list[str] = field(default_factory=list)
    recipients: list[dict[str, str]] = field(default_factory=list)
    kept_for: str | None = None  # another activity of the dataset whose need kept its records

    def as_dict(self) -> dict[str, Any]:
        return {
            "activity": self.activity, "system": self.system, "dataset": self.dataset,
            "method": self.method, "found": self.found, "erased": self.erased,
            "kept": dict(self.kept), "ledger_runs": self.runs,
        } | ({"kept_for": self.kept_for} if self.kept_for else {})  # fmt: skip


@dataclass(frozen=True)
class Erasure:
    """How one erasure runs: who asked (the approval), its ledger origin, the catalogue."""

    by: str
    origin: Mapping[str, str | None]
    catalogue_version: str
    batch_size: int = lifecycle.DEFAULT_BATCH_SIZE
    lease_wait: float | None = None

    def options(self) -> lifecycle.RunOptions:
        return lifecycle.RunOptions(
            self.catalogue_version, approved_by=self.by, origin=self.origin,
            batch_size=self.batch_size, lease_wait=self.lease_wait, purpose=PURPOSE,
        )  # fmt: skip


def erase_in(
    activity: Activity, adapter: SourceAdapter, refs: Sequence[bytes], control: Control,
    how: Erasure, kept: Keeper | None = None,
) -> BindingOutcome:  # fmt: skip
    """Erase the person (any of ``refs``) from one binding, except what must be kept:
    everything, when ``kept`` names what keeps the dataset's records (:func:`keeper`)."""
    acting = _erasing(activity)
    action = acting.action
    assert not isinstance(action, ReportOnlyAction)
    outcome = BindingOutcome(activity.id, adapter.system, adapter.dataset, action.kind)
    if kept is None and (reason := kept_reason(activity)) is not None:
        kept = Keeper(activity.id, reason)
    adapter.resolve(None if kept else action)
    if not refs:
        return outcome
    selection = OfSubject(frozenset(refs))
    holds = control.holds.active(adapter.system, adapter.dataset)
    counts = adapter.count(selection, action, holds)
    found = counts.selected
    if found and kept is not None:
        outcome.found += found
        outcome.kept[kept.reason] += found
        outcome.kept_for = None if kept.activity == activity.id else kept.activity
    elif found:  # (not found: a run would only record that it found nothing)
        report = lifecycle.run(acting, selection, adapter, control, how.options())
        _add_run(outcome, report)  # its plan's subject_unknown among the kept
        verify(acting, adapter, selection, control, str(report.run_id))
    if kept is not None or not found:
        outcome.kept["subject_unknown"] += counts.subject_unknown
    outcome.kept = +outcome.kept  # only the reasons that kept something
    if outcome.erased:
        outcome.recipients = [{"sv": r.sv, "en": r.en} for r in activity.recipients]
    return outcome


def verify(
    activity: Activity, adapter: SourceAdapter, selection: OfSubject, control: Control,
    run_id: str,
) -> dict[str, Any]:  # fmt: skip
    """Check an erasure run against the source and record it (``run_verified``): every record
    its evidence claims is really erased, and nothing of the person is left but held or
    restricted records. A failed check fails the erasure after it is recorded."""
    action = activity.action
    assert not isinstance(action, ReportOnlyAction)
    claims = control.ledger.claims(run_id, adapter.system, adapter.dataset)
    claimed = set(claims)
    through = judged_through_of([claims])
    present = adapter.present(claimed, action, judged_through=through) if claimed else set()
    # an anonymised record is present (and marked); a deleted one is gone
    not_done = claimed - present if action.kind == "anonymise" else present
    counts = adapter.count(selection, action, control.holds.active(adapter.system, adapter.dataset))
    left = counts.selected - counts.held - counts.restricted
    result = {
        "kind": PURPOSE, "success": not not_done and left == 0, "claimed": len(claimed),
        "claimed_not_erased": len(not_done), "left_unheld": left,
    }  # fmt: skip
    control.ledger.record_verification(run_id, activity.id, result)
    if not result["success"]:
        raise RetentionError(
            f"erasure in {activity.id} ({adapter.system}/{adapter.dataset}), ledger run"
            f" {run_id}: verification failed: {len(not_done)} record(s) the evidence claims are"
            f" not erased, {left} record(s) of the person left unheld"
        )
    return result


def _add_run(outcome: BindingOutcome, report: lifecycle.RunReport) -> None:
    if report.outcome not in DONE_OUTCOMES:
        raise RetentionError(
            f"erasure in {outcome.activity} ({outcome.system}/{outcome.dataset}) ended"
            f" {report.outcome}: {report.message} (ledger run {report.run_id})"
        )
    outcome.runs.append(str(report.run_id))
    outcome.found += report.plan.expired
    outcome.erased += report.applied
    outcome.kept.update(kept_by_run(report.counts()))


def kept_by_run(counts: Mapping[str, int]) -> Counter[str]:
    """The records of the person a run (its ``counts()``) kept, by reason: those its batches
    skipped when it ran, else those its plan found held or restricted; and those whose
    identifier fields cannot be read (``subject_unknown``, never staged)."""
    ran = bool(counts["batches"] or counts["held_skipped"] or counts["restricted_skipped"])
    return +Counter({
        "legal_hold": counts["held_skipped" if ran else "held"],
        "restriction": counts["restricted_skipped" if ran else "restricted"],
        "subject_unknown": counts.get("subject_unknown", 0),
    })  # fmt: skip


def erase(
    activities: Iterable[Activity], refs: Sequence[bytes], control: Control, how: Erasure,
    connections: Connections | None = None, catalogue: Iterable[Activity] | None = None,
) -> list[BindingOutcome]:  # fmt: skip
    """Erase the person from every binding of ``activities`` (see the module doc), keeping
    what an activity of ``catalogue`` (default: ``activities``) binding the same dataset
    must keep (:func:`keeper`)."""
    chosen = list(activities)
    everything = chosen if catalogue is None else list(catalogue)

    def work(activity: Activity, adapter: SourceAdapter) -> BindingOutcome:
        kept = keeper(everything, activity)
        return erase_in(activity, adapter, refs, control, how, kept)

    return for_each_binding(chosen, control.key, work, connections)


def response(outcomes: Sequence[BindingOutcome]) -> dict[str, Any]:
    """What the register keeps and the person is told: counts per binding, what was kept and
    why and the recipients to tell (Art. 19). No personal data."""
    recipients: dict[str, dict[str, str]] = {}
    for outcome in outcomes:
        recipients |= {r["en"]: r for r in outcome.recipients}
    return {
        "erased": sum(o.erased for o in outcomes),
        "found": sum(o.found for o in outcomes),
        "bindings_searched": len(outcomes),
        "bindings": [o.as_dict() for o in outcomes if o.found],
        "kept": kept_reasons((o.kept_for or o.activity, o.kept) for o in outcomes),
        "recipients_to_notify": [recipients[name] for name in sorted(recipients)],
    }


def kept_reasons(kept: Iterable[tuple[str, Counter[str]]]) -> list[dict[str, Any]]:
    """What was kept and why, as the response says it: (the activity that kept them, records
    kept by reason) per binding in, per reason the records, the reason in Swedish and English,
    and the activities."""
    total, by = Counter[str](), dict[str, set[str]]()
    for activity, counts in kept:
        total.update(counts)
        for code in +counts:
            by.setdefault(code, set()).add(activity)
    return [
        {"reason": code, "records": records, "sv": KEPT_REASONS[code][0],
         "en": KEPT_REASONS[code][1], "activities": sorted(by[code])}
        for code, records in sorted(total.items())
    ]  # fmt: skip


# ------------------------------------------------------------------------------ re-apply


def erased_subjects(ledger: EvidenceReader) -> dict[int, list[bytes]]:
    """Request id -> subject references of every erasure the ledger records as completed
    (its ``dsr_received`` and last ``dsr_status`` entries)."""
    t = ledger_table
    where = t.c.kind.in_(("dsr_received", "dsr_status"))
    refs: dict[int, list[bytes]] = {}
    status: dict[int, str] = {}
    for entry in ledger.entries(where=sa.and_(where), with_blob=False):
        request_id = int(entry.run_id.removeprefix("dsr-"))
        body = entry.document["body"]
        if entry.kind == "dsr_received" and body.get("kind") == PURPOSE:
            refs[request_id] = [bytes.fromhex(r) for r in body["subject_refs"]]
        elif entry.kind == "dsr_status":
            status[request_id] = str(body.get("status"))
    return {rid: r for rid, r in refs.items() if status.get(rid) == "completed"}


def reapply_refs(
    activity: Activity, erased: Iterable[bytes], suppressed: Mapping[str, set[bytes]]
) -> list[bytes]:
    """The references to erase again from ``activity`` after a restore: every erased person,
    and those suppressed in the scopes the nightly suppression runs remove from it
    (`suppression.scopes_for`: consent withdrawals from a consent-based activity,
    direct-marketing objections from one marked ``direct_marketing``; an objection to direct
    marketing withdraws no consent given for another purpose)."""
    refs = set(erased)
    for scope in scopes_for(activity):
        refs |= suppressed.get(scope, set())
    return sorted(refs)


def systems(catalogue: Catalogue | Iterable[Activity]) -> list[str]:
    return sorted({a.source.system for a in subject_bindings(catalogue)})


def reapply(
    catalogue: Catalogue | Iterable[Activity],
    system: str,
    control: Control,
    how: Erasure,
    suppressed: Mapping[str, set[bytes]],
    connections: Connections | None = None,
) -> dict[str, Any]:
    """Re-apply every recorded erasure and the suppression list to ``system`` after a backup
    restore (see the module doc); counts per binding, no personal data."""
    catalogue = list(catalogue)
    activities = subject_bindings(catalogue, system) if isinstance(system, str) else []
    if not activities:
        raise RetentionError(
            f"system {system!r} has no dataset that names its data subject; choose one of"
            f" {', '.join(systems(catalogue))}. Nothing was changed."
        )
    erased = sorted({ref for refs in erased_subjects(control.ledger).values() for ref in refs})

    def again(activity: Activity, adapter: SourceAdapter) -> BindingOutcome:
        # as the nightly suppression runs: another activity's contract or legal obligation on
        # the dataset keeps the records of people who are only suppressed
        kept_for_another = suppression_keeper(catalogue, activity) is not None
        refs = reapply_refs(activity, erased, {} if kept_for_another else suppressed)
        return erase_in(activity, adapter, refs, control, how, keeper(catalogue, activity))

    outcomes = for_each_binding(activities, control.key, again, connections)
    result = response(outcomes) | {
        "system": system,
        "erasures_recorded": len(erased),
        "suppressed": {scope: len(refs) for scope, refs in sorted(suppressed.items())},
    }
    log.info(
        "re-applied to %s: %s erased subject reference(s) and the suppression list (%s) over"
        " %s dataset(s): %s record(s) erased, kept %s",
        system, len(erased), result["suppressed"], len(outcomes), result["erased"],
        {k["reason"]: k["records"] for k in result["kept"]},
    )  # fmt: skip
    return result
