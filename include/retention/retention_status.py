"""What the Retention page shows, per activity, as plain data (no web, no Airflow imports).

Evidence comes from the ledger only (run headers and closing counts, the independent
verification of each run, the chain's own verification); what Airflow knows (next run,
paused, approvals waiting for a person, the DAG run behind a ledger run) is passed in as
:class:`DagFacts`. Everything here is counts, rules, times and ids: no personal data.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from include.retention.catalogue import Activity, Catalogue
from include.retention.certificate import LedgerState
from include.retention.chain import ledger_table
from include.retention.dag_factory import dag_id_for, display_name
from include.retention.evidence import EvidenceReader, RunSummary
from include.retention.rules import local_date
from include.retention.run_record import by_retention_rules

CHART_DAYS = 30  # the deletions chart covers the last 30 days, one bar per day
LEDGER_CHECK_TTL = 60.0  # seconds a chain verification is reused before it is run again
OVERDUE_AFTER = dt.timedelta(hours=1)  # a next run this far in the past is flagged


@dataclass(frozen=True)
class DagFacts:
    """What Airflow's metadata DB says about one retention DAG. ``overdue``: not paused, and
    the scheduler should have started its next run more than `OVERDUE_AFTER` ago (it is not
    running, or the previous run still waits, e.g. for an approval: one run at a time)."""

    paused: bool | None = None
    next_run: dt.datetime | None = None
    pending_approvals: int = 0
    overdue: bool = False

    @classmethod
    def of(
        cls, paused: bool | None, next_run: dt.datetime | None, pending_approvals: int,
        now: dt.datetime | None,
    ) -> DagFacts:  # fmt: skip
        """``now`` None: this Airflow creates no runs by schedule (``[scheduler]
        use_job_schedule`` off, as in the demo), so no run is late."""
        late = False
        if now is not None and next_run is not None and not paused:
            late = next_run < now - OVERDUE_AFTER
        return cls(paused, next_run, pending_approvals, late)


@dataclass(frozen=True)
class LastRun:
    """The latest ledger run of an activity (counts from its closing entry)."""

    ledger_run_id: str
    started_at: dt.datetime
    outcome: str  # completed, nothing_to_do, approval_required, dry_run, failed, … or running
    applied: int
    held: int
    restricted: int
    anchor_unknown: int
    dry_run: bool
    dag_run_id: str | None
    verified: bool | None  # the run's independent verification; None: not checked


@dataclass(frozen=True)
class ActivityStatus:
    """One row of the Retention page."""

    activity_id: str
    dag_id: str
    name: str  # Swedish (English), as the DAG is named
    label: str  # the English name, for chart legends
    action: str  # delete, anonymise or report_only
    rules: list[str]
    policy_gap: bool
    schedule: str
    last_run: LastRun | None
    total_applied: int
    runs: int
    daily_applied: list[int]  # records deleted/anonymised per day, oldest first
    facts: DagFacts = field(default_factory=DagFacts)


def chart_days(today: dt.date, days: int = CHART_DAYS) -> list[dt.date]:
    """The chart's days, oldest first, ending with ``today``."""
    return [today - dt.timedelta(days=n) for n in range(days - 1, -1, -1)]


def _parse_time(text: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _applied(run: RunSummary) -> int:
    """Records the run deleted or anonymised (a dry run changes nothing)."""
    if run.finished is None or run.header.get("dry_run"):
        return 0
    return int(run.finished.get("counts", {}).get("applied", 0) or 0)


def run_row(run: RunSummary, verified: Mapping[str, bool]) -> LastRun:
    """One ledger run as a row (``verified``: :func:`verification_results`)."""
    counts = (run.finished or {}).get("counts", {})
    return LastRun(
        ledger_run_id=run.run_id,
        started_at=_parse_time(run.started_at),
        outcome=(run.finished or {}).get("outcome", "running"),
        applied=_applied(run),
        held=int(counts.get("held", 0) or 0),
        restricted=int(counts.get("restricted", 0) or 0),
        anchor_unknown=int(counts.get("anchor_unknown", 0) or 0),
        dry_run=bool(run.header.get("dry_run")),
        dag_run_id=(run.header.get("origin") or {}).get("run_id"),
        verified=verified.get(run.run_id),
    )


def verification_results(ledger: EvidenceReader) -> dict[str, bool]:
    """The outcome of every run's independent verification (``run_verified``), by run id."""
    where = ledger_table.c.kind == "run_verified"
    return {
        entry.run_id: bool(entry.document["body"].get("success"))
        for entry in ledger.entries(where=where, with_blob=False)
    }


def activity_status(
    activity: Activity,
    runs: list[RunSummary],
    verified: Mapping[str, bool],
    days: list[dt.date],
    facts: DagFacts | None = None,
) -> ActivityStatus:
    """The row of one activity from its ledger runs (in chain order)."""
    # The last run shown is the last retention run: an erasure's or a suppression run's
    # counts are some people's records.
    state = [run for run in runs if by_retention_rules(run.header)]
    per_day = dict.fromkeys(days, 0)
    for run in runs:
        day = local_date(_parse_time(run.started_at))
        if day in per_day:
            per_day[day] += _applied(run)
    return ActivityStatus(
        activity_id=activity.id,
        dag_id=dag_id_for(activity.id),
        name=display_name(activity),
        label=activity.name.en,
        action=activity.action.kind,
        rules=activity.rule_descriptions("en"),
        policy_gap=activity.policy_gap,
        schedule=activity.schedule,
        last_run=run_row(state[-1], verified) if state else None,
        total_applied=sum(_applied(run) for run in runs),
        runs=len(runs),
        daily_applied=[per_day[day] for day in days],
        facts=facts or DagFacts(),
    )


def activity_statuses(
    catalogue: Catalogue,
    ledger: EvidenceReader,
    facts: Mapping[str, DagFacts],
    today: dt.date,
    only: Iterable[str] | None = None,
) -> list[ActivityStatus]:
    """A row per activity of the catalogue (restricted to the DAG ids in ``only``)."""
    wanted = None if only is None else set(only)
    activities = [a for a in catalogue if wanted is None or dag_id_for(a.id) in wanted]
    by_activity: dict[str, list[RunSummary]] = {a.id: [] for a in activities}
    for run in ledger.runs():
        if run.activity_id in by_activity:
            by_activity[run.activity_id].append(run)
    verified = verification_results(ledger)
    days = chart_days(today)
    return [
        activity_status(a, by_activity[a.id], verified, days, facts.get(dag_id_for(a.id)))
        for a in sorted(activities, key=lambda a: a.id)
    ]


class LedgerChecker:
    """Verifies the chain at most once per ``ttl`` seconds (the page is reloaded often;
    a full verification reads every entry). ``status`` returns the result and when it was
    computed."""

    def __init__(self, ttl: float = LEDGER_CHECK_TTL) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, Any, LedgerState, dt.datetime] | None = None

    def status(self, ledger: EvidenceReader) -> tuple[LedgerState, dt.datetime]:
        key = ledger.engine.url.render_as_string(hide_password=True)
        with self._lock:
            cached = self._cached
            if cached and cached[1] == key and time.monotonic() - cached[0] < self.ttl:
                return cached[2], cached[3]
            state, at = LedgerState.of(ledger), dt.datetime.now(dt.UTC)
            self._cached = (time.monotonic(), key, state, at)
            return state, at
