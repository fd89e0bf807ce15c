"""A consent withdrawal (Art. 7(3)) or an objection (Art. 21) takes effect at once.

The request's ``suppress`` step first puts the person on the suppression list (imports and
the nightly retention runs keep them out from then on), then removes their records at once
from every activity the entry's scope reaches (`suppression.scopes_for`): the suppression run
the nightly retention runs make (`operations.remove_suppressed`), for this person's keyed
references only. So holds and restrictions are honoured, and the ledger records the run with
the suppression as its rule, the request in its origin and its filer as the approval: as for
an erasure, the volume gate does not stop one person's withdrawal (a small table would else
keep a person's records after they withdrew, with no one able to approve). The nightly
suppression runs, which reach everyone on the list, keep the gate. Where another activity
binds the same dataset on a contract or a legal obligation, no run is made: the records are
kept for it, and the response names it (``kept_for``).

An activity the identifiers given cannot search is not claimed as searched: the response
names it and the identifier it needs. One activity failing does not stop the others: each
is tried, the response says per activity what was removed, what was kept and why, where
nothing was found and what failed; then the step fails (:class:`PartlyDone`) if any did.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from include.retention import operations
from include.retention.catalogue import Activity
from include.retention.erasure import DONE_OUTCOMES, kept_by_run, kept_reasons
from include.retention.errors import PartlyDone, PartlyUnavailable, RetentionError, Unavailable
from include.retention.suppression import scopes_for

log = logging.getLogger(__name__)


@dataclass
class Removal:
    """The person's records in one activity: found, removed, kept by reason, or the failure."""

    activity: str
    outcome: str = "nothing_to_do"
    found: int = 0
    removed: int = 0
    kept: Counter[str] = field(default_factory=Counter)
    kept_for: str | None = None  # another activity of the dataset whose ground kept them
    ledger_run_id: str | None = None
    error: str | None = None
    transient: bool = False  # the failure may pass: retry

    @property
    def failed(self) -> bool:
        return self.outcome not in DONE_OUTCOMES

    def as_dict(self) -> dict[str, Any]:
        done = {
            "activity": self.activity, "outcome": self.outcome, "found": self.found,
            "removed": self.removed, "kept": dict(self.kept), "ledger_run_id": self.ledger_run_id,
        }  # fmt: skip
        kept_for = {"kept_for": self.kept_for} if self.kept_for else {}
        return done | kept_for | ({"error": self.error} if self.failed else {})


def reached(catalogue: Iterable[Activity], scope: str) -> list[Activity]:
    """The activities whose records of a person suppressed in ``scope`` are removed."""
    return [a for a in catalogue if operations.in_suppression_scope(a) and scope in scopes_for(a)]


def remove(
    activities: Iterable[Activity], refs: Collection[bytes], kinds: Collection[str],
    runtime: operations.Runtime, origin: Mapping[str, Any], *, by: str,
) -> tuple[list[Removal], list[dict[str, Any]]]:  # fmt: skip
    """Remove the person (``refs``, identifiers of ``kinds``) from each of ``activities`` that
    the kinds can search, approved by ``by`` (who filed the request): what happened in each,
    and those not searched and what they need."""
    searched: list[Activity] = []
    not_searched: list[dict[str, Any]] = []
    for activity in activities:
        lookup = activity.source.lookup
        if set(kinds).isdisjoint(lookup):
            not_searched.append({"activity": activity.id, "give_one_of": sorted(lookup)})
        else:
            searched.append(activity)
    not_searched.sort(key=lambda n: str(n["activity"]))
    removals = [_remove(activity, refs, runtime, origin, by) for activity in searched]
    return removals, not_searched


def _remove(
    activity: Activity, refs: Collection[bytes], runtime: operations.Runtime,
    origin: Mapping[str, Any], by: str,
) -> Removal:  # fmt: skip
    removal = Removal(activity.id)
    try:
        done = operations.named_faults(
            operations.remove_suppressed, activity, runtime, dry_run=False, origin=origin,
            refs=refs, approved_by=by,
        )  # fmt: skip
    except RetentionError as exc:  # names what is wrong, never a person
        log.error("%s: removing the suppressed person failed: %s", activity.id, exc)
        removal.outcome, removal.error = "failed", str(exc)
        removal.transient = isinstance(exc, Unavailable)
        return removal
    except Exception as exc:  # unexpected: its message may quote data, so the log keeps it
        log.exception("%s: removing the suppressed person failed", activity.id)
        removal.outcome, removal.transient = "failed", True
        removal.error = f"unexpected {type(exc).__name__}: see the task log"
        return removal
    assert done is not None  # (only activities in the suppression's scope are given)
    counts = done["counts"]
    removal.outcome, removal.ledger_run_id = done["outcome"], done["run_id"]
    if "kept_for" in done:  # another activity of the dataset keeps them: no run
        kept = done["kept_for"]
        removal.found, removal.kept_for = kept["records"], kept["activity"]
        removal.kept = +Counter({kept["reason"]: kept["records"]})
    if counts:
        removal.found, removal.removed = counts["expired"], counts["applied"]
        removal.kept = kept_by_run(counts)
    if removal.failed:
        removal.error = done.get("message")
    return removal


def response(removals: list[Removal], not_searched: list[dict[str, Any]]) -> dict[str, Any]:
    """What the register keeps and the person is told, per activity (no personal data)."""
    removals = sorted(removals, key=lambda r: r.activity)
    return {
        "removed": sum(r.removed for r in removals),
        "removed_from": [r.activity for r in removals if r.removed],
        "kept": kept_reasons((r.kept_for or r.activity, r.kept) for r in removals),
        "nothing_found_in": [r.activity for r in removals if not r.failed and not r.found],
        "failed_in": [r.activity for r in removals if r.failed],
        "activities": [r.as_dict() for r in removals],
        "not_searched": not_searched,
    }


def check(request: str, removals: list[Removal], result: dict[str, Any]) -> dict[str, Any]:
    """``result``, or :class:`PartlyDone` carrying it when a removal failed (retried:
    :class:`PartlyUnavailable`, when a failure may pass; a retry finds what is gone gone)."""
    failed = [r for r in removals if r.failed]
    if not failed:
        return result
    error = PartlyUnavailable if any(r.transient for r in failed) else PartlyDone
    raise error(
        f"{request}: on the suppression list, but removing the person's records failed in"
        f" {len(failed)} of {len(removals)} activities (the others are done; the nightly"
        " retention runs remove them too): "
        + "; ".join(f"{r.activity}: {r.outcome}: {r.error}" for r in failed),
        result,
    )
