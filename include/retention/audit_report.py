"""The audit report for a period: per activity, what the ledger says its runs did.

For every catalogue activity (and any activity the ledger has runs of that the catalogue no
longer lists): the runs started in the period, records deleted and anonymised (counted from
the runs' batches), records held, restricted, with an unknown anchor and not yet due (as the
last run of the period found them: these are states, summing them over nightly runs would
count the same record every night), exceptions (failed, interrupted or unfinished runs,
approvals rejected or not given, verification failures, runs never verified, batches settled
after a crash, no run at all), what others changed while the runs worked (records changed
or deleted in the source system, objects uploaded again: not exceptions, each run's
certificate explains them), verification outcomes and policy gaps; the chain check of the
whole ledger; and the trend of deletions per activity as a chart. HTML, PDF and CSV, Swedish
and English. No personal data: counts, ids and outcomes only.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from include.retention.catalogue import Catalogue
from include.retention.certificate import FORMATS as DOCUMENT_FORMATS
from include.retention.certificate import LedgerState, check_language, local_time, render
from include.retention.charts import Series, TrendChart, top_series
from include.retention.documents import Block, Document, Facts, Figure, Grid, Notes
from include.retention.errors import RetentionError
from include.retention.evidence import EvidenceReader
from include.retention.register import Item
from include.retention.run_record import RunRecord, by_retention_rules, local_day, read_period
from include.retention.texts import Language

FORMATS = (*DOCUMENT_FORMATS, "csv")
DAILY_UP_TO_DAYS = 62  # longer periods are charted per week
CHART_SERIES = 6  # activities drawn one by one; the rest are summed
EXCEPTIONS = (
    "failed", "interrupted", "unfinished", "rejected", "verification_failed", "not_verified",
    "recovered", "no_runs",
)  # fmt: skip
VERIFIED_OUTCOMES = ("completed", "nothing_to_do")
# What others changed while a run worked on the records: not exceptions (nothing went wrong,
# each run's certificate explains them), but an auditor sees them per activity.
MEANWHILE = ("changed_meanwhile", "uploaded_meanwhile", "already_gone")

_W: dict[str, dict[str, str]] = {
    "sv": {
        "title": "Granskningsrapport: gallring",
        "period": "Period {first} till och med {last} (svensk tid).",
        "generated": "Framställd {at} ur gallringsloggen. Katalogversion {version}.",
        "page": "Sida",
        "none": "inga",
        "yes": "ja",
        "no": "nej",
        "summary_h": "Sammanfattning",
        "runs": "Körningar",
        "deleted": "Raderade",
        "anonymised": "Anonymiserade",
        "exceptions": "Avvikelser",
        "ledger": "Kedjekontroll av gallringsloggen",
        "ledger_ok": "hel ({n} poster, senaste post {seq})",
        "ledger_broken": "BRUTEN vid post {seq}: {problem}",
        "trend_h": "Raderade och anonymiserade uppgifter per behandling",
        "trend_caption": "Staplarna visar antalet uppgifter per {unit}, efter körningens"
        " startdag; de minsta behandlingarna är sammanslagna.",
        "day": "dag",
        "week": "vecka (veckans första dag)",
        "other": "övriga",
        "empty": "Inga uppgifter raderades eller anonymiserades under perioden.",
        "chart": "Diagram över raderade och anonymiserade uppgifter per behandling",
        "table_h": "Per behandling",
        "activity": "Behandling",
        "id": "Id",
        "held": "Spärrade*",
        "restricted": "Begränsade*",
        "unknown": "Startdatum saknas*",
        "kept": "Ej förfallna*",
        "verification": "Kontroll (godkänd/underkänd/ej)",
        "gap": "Lucka i policyn",
        "details_h": "Avvikelser i detalj",
        "gaps_h": "Luckor i policyn (ingen lagringstid – endast rapport, ingen radering)",
        "notes_h": "Så läses rapporten",
        "note_state": "* Antal enligt periodens sista körning av behandlingen (ett tillstånd,"
        " inte en summa).",
        "note_counts": "Raderade och anonymiserade räknas ur loggens omgångar och summeras över"
        " periodens körningar. Körningar som inte nådde gallringsloggen (till exempel när"
        " planeringen misslyckades) syns i Airflow, inte här.",
        "x_failed": "{n} misslyckade körningar",
        "x_interrupted": "{n} avbrutna körningar",
        "x_unfinished": "{n} körningar utan avslut",
        "x_rejected": "{n} avslagna eller obesvarade godkännanden",
        "x_verification_failed": "{n} underkända kontroller",
        "x_not_verified": "{n} körningar utan kontroll",
        "x_recovered": "{n} omgångar avslutade efter avbrott",
        "x_no_runs": "ingen körning under perioden",
        "meanwhile_h": "Ändrat av andra medan körningarna arbetade (inga avvikelser: varje"
        " körnings intyg förklarar)",
        "m_changed_meanwhile": "{n} uppgifter ändrades i källsystemet under körningen och"
        " behölls till nästa körning",
        "m_uploaded_meanwhile": "{n} objekt laddades upp på nytt under samma nyckel (de bedömda"
        " versionerna raderades)",
        "m_already_gone": "{n} uppgifter hade redan raderats av någon annan (körningen anger inte"
        " att den raderade dem)",
        "csv_changed_meanwhile": "ändrade_under_körningen",
        "csv_uploaded_meanwhile": "uppladdade_på_nytt_under_körningen",
        "csv_already_gone": "redan_raderade_av_annan",
        "csv_activity_id": "behandling_id",
        "csv_activity": "behandling",
        "csv_runs": "körningar",
        "csv_completed": "genomförda",
        "csv_deleted": "raderade",
        "csv_anonymised": "anonymiserade",
        "csv_held": "spärrade_senaste",
        "csv_restricted": "begränsade_senaste",
        "csv_unknown": "startdatum_saknas_senaste",
        "csv_kept": "ej_förfallna_senaste",
        "csv_verified": "kontroll_godkänd",
        "csv_gap": "lucka_i_policyn",
        "csv_last_run": "senaste_körning",
    },
    "en": {
        "title": "Retention audit report",
        "period": "Period {first} to {last} inclusive (Swedish time).",
        "generated": "Generated {at} from the deletion ledger. Catalogue version {version}.",
        "page": "Page",
        "none": "none",
        "yes": "yes",
        "no": "no",
        "summary_h": "Summary",
        "runs": "Runs",
        "deleted": "Deleted",
        "anonymised": "Anonymised",
        "exceptions": "Exceptions",
        "ledger": "Chain check of the deletion ledger",
        "ledger_ok": "intact ({n} entries, last entry {seq})",
        "ledger_broken": "BROKEN at entry {seq}: {problem}",
        "trend_h": "Records deleted and anonymised per activity",
        "trend_caption": "Bars show the records per {unit}, by the day the run started; the"
        " smallest activities are summed.",
        "day": "day",
        "week": "week (its first day)",
        "other": "others",
        "empty": "No records were deleted or anonymised in the period.",
        "chart": "Chart of records deleted and anonymised per activity",
        "table_h": "Per activity",
        "activity": "Activity",
        "id": "Id",
        "held": "Held*",
        "restricted": "Restricted*",
        "unknown": "Unknown anchor*",
        "kept": "Not yet due*",
        "verification": "Verification (passed/failed/none)",
        "gap": "Policy gap",
        "details_h": "Exceptions in detail",
        "gaps_h": "Policy gaps (no retention period: report only, never deleted)",
        "notes_h": "How to read this report",
        "note_state": "* Counts as the activity's last run in the period found them (a state,"
        " not a sum).",
        "note_counts": "Deleted and anonymised are counted from the ledger's batches and"
        " summed over the period's runs. Runs that never reached the ledger (for example when"
        " planning failed) show in Airflow, not here.",
        "x_failed": "{n} failed runs",
        "x_interrupted": "{n} interrupted runs",
        "x_unfinished": "{n} runs never finished",
        "x_rejected": "{n} approvals rejected or not given",
        "x_verification_failed": "{n} verifications failed",
        "x_not_verified": "{n} runs not verified",
        "x_recovered": "{n} batches settled after an interruption",
        "x_no_runs": "no run in the period",
        "meanwhile_h": "Changed by others while the runs worked (not exceptions: each run's"
        " certificate explains)",
        "m_changed_meanwhile": "{n} records changed in the source system during the run and were"
        " kept for the next run",
        "m_uploaded_meanwhile": "{n} objects uploaded again under their key (the judged versions"
        " were deleted)",
        "m_already_gone": "{n} records already deleted by someone else (the run does not claim"
        " them)",
        "csv_changed_meanwhile": "changed_during_run",
        "csv_uploaded_meanwhile": "uploaded_again_during_run",
        "csv_already_gone": "already_deleted_by_others",
        "csv_activity_id": "activity_id",
        "csv_activity": "activity",
        "csv_runs": "runs",
        "csv_completed": "completed",
        "csv_deleted": "deleted",
        "csv_anonymised": "anonymised",
        "csv_held": "held_last_run",
        "csv_restricted": "restricted_last_run",
        "csv_unknown": "unknown_anchor_last_run",
        "csv_kept": "not_yet_due_last_run",
        "csv_verified": "verification_passed",
        "csv_gap": "policy_gap",
        "csv_last_run": "last_run",
    },
}


@dataclass
class ActivityLine:
    """One activity's runs in the period."""

    activity_id: str
    name: str
    policy_gap: bool
    enforceable: bool
    runs: list[RunRecord] = field(default_factory=list)

    def applied(self, action: str) -> int:
        return sum(r.applied for r in self.runs if r.action == action)

    @property
    def last(self) -> RunRecord | None:
        """The last finished retention run of the period (the state it found; an erasure's or
        a suppression run's counts are some people's records, not the dataset's state)."""
        finished = [r for r in self.runs if r.finished is not None and by_retention_rules(r.header)]
        return finished[-1] if finished else None

    def state(self, name: str) -> int | None:
        return None if self.last is None else self.last.count(name)

    def verifications(self) -> tuple[int, int, int]:
        """Runs whose verification passed, failed, and runs that changed data unverified."""
        passed = sum(1 for r in self.runs if r.verification and r.verification.get("success"))
        failed = sum(1 for r in self.runs if r.verification and not r.verification.get("success"))
        return passed, failed, self.exceptions()["not_verified"]

    def exceptions(self) -> Counter[str]:
        outcomes = Counter(r.outcome or "unfinished" for r in self.runs)
        found: Counter[str] = Counter(
            failed=outcomes["failed"], interrupted=outcomes["interrupted"],
            unfinished=outcomes["unfinished"], rejected=outcomes["approval_required"],
            recovered=sum(r.recovered for r in self.runs),
        )  # fmt: skip
        for run in self.runs:
            if run.verification is not None and not run.verification.get("success"):
                found["verification_failed"] += 1
            elif run.verification is None and run.outcome in VERIFIED_OUTCOMES:
                found["not_verified"] += 1
        if not self.runs and self.enforceable:
            found["no_runs"] = 1
        return found

    def meanwhile(self) -> Counter[str]:
        """`MEANWHILE` counts summed over the period's runs."""
        return Counter({name: sum(r.count(name) for r in self.runs) for name in MEANWHILE})


@dataclass
class AuditReport:
    """The period's evidence, per activity; rendered by :func:`to_document` and :func:`to_csv`."""

    language: Language
    first: dt.date
    last: dt.date
    catalogue_version: str
    generated_at: dt.datetime
    ledger: LedgerState
    lines: list[ActivityLine]

    @property
    def words(self) -> dict[str, str]:
        return _W[self.language]


def build_report(
    ledger: EvidenceReader,
    first: dt.date,
    last: dt.date,
    language: str,
    *,
    catalogue: Catalogue,
    state: LedgerState | None = None,
    generated_at: dt.datetime | None = None,
) -> AuditReport:
    """The audit report of the runs started from ``first`` to ``last`` (Stockholm dates)."""
    lang = check_language(language)
    runs = read_period(ledger, first, last)
    lines = {
        a.id: ActivityLine(a.id, a.name[lang], a.policy_gap, a.enforceable)
        for a in sorted(catalogue, key=lambda a: a.id)
    }
    for run in runs:
        line = lines.setdefault(
            run.activity_id, ActivityLine(run.activity_id, run.activity_id, False, False)
        )
        line.runs.append(run)
    return AuditReport(
        lang, first, last, catalogue.version, generated_at or dt.datetime.now(dt.UTC),
        state or LedgerState.of(ledger), list(lines.values()),
    )  # fmt: skip


# ---------------------------------------------------------------------------------- trend


def _buckets(report: AuditReport) -> tuple[list[dt.date], bool]:
    days = (report.last - report.first).days + 1
    if days <= DAILY_UP_TO_DAYS:
        return [report.first + dt.timedelta(days=i) for i in range(days)], True
    monday = report.first - dt.timedelta(days=report.first.weekday())
    weeks = (report.last - monday).days // 7 + 1
    return [monday + dt.timedelta(weeks=i) for i in range(weeks)], False


def trend(report: AuditReport) -> TrendChart:
    """Records deleted or anonymised per activity per day (per week for long periods)."""
    starts, daily = _buckets(report)
    index = {start: i for i, start in enumerate(starts)}
    series = []
    for line in report.lines:
        values = [0] * len(starts)
        for run in line.runs:
            day = local_day(run.started_at)
            bucket = day if daily else day - dt.timedelta(days=day.weekday())
            values[index[bucket]] += run.applied
        series.append(Series(line.name, values))
    w = report.words
    return TrendChart(
        buckets=[start.strftime("%m-%d") for start in starts],
        series=top_series(series, CHART_SERIES, w["other"]),
        empty_text=w["empty"],
        description=w["chart"],
    )


# ------------------------------------------------------------------------------ rendering


def _verification_cell(line: ActivityLine) -> str:
    return "/".join(str(n) for n in line.verifications())


def _exceptions_text(line: ActivityLine, w: dict[str, str]) -> str:
    found = line.exceptions()
    return "; ".join(w[f"x_{name}"].format(n=found[name]) for name in EXCEPTIONS if found[name])


def _state_cell(value: int | None) -> str:
    return "–" if value is None else str(value)


def _grid(report: AuditReport) -> Grid:
    w = report.words
    columns = [
        w["activity"], w["id"], w["runs"], w["deleted"], w["anonymised"], w["held"],
        w["restricted"], w["unknown"], w["kept"], w["verification"], w["exceptions"], w["gap"],
    ]  # fmt: skip
    rows = [
        [
            line.name,
            line.activity_id,
            str(len(line.runs)),
            str(line.applied("delete")),
            str(line.applied("anonymise")),
            _state_cell(line.state("held")),
            _state_cell(line.state("restricted")),
            _state_cell(line.state("anchor_unknown")),
            _state_cell(line.state("kept")),
            _verification_cell(line),
            _exceptions_text(line, w) or "–",
            w["yes"] if line.policy_gap else w["no"],
        ]
        for line in report.lines
    ]
    widths = (3.2, 2.6, 1, 1.2, 1.4, 1.1, 1.2, 1.3, 1.2, 1.7, 3.6, 1)
    return Grid(w["table_h"], columns, rows, code_columns=(1,), widths=widths)


def _ledger_text(report: AuditReport) -> str:
    w, state = report.words, report.ledger
    if state.ok:
        return w["ledger_ok"].format(n=state.entries, seq=state.head_seq)
    return w["ledger_broken"].format(seq=state.bad_seq, problem=state.problem)


def _meanwhile_text(line: ActivityLine, w: dict[str, str]) -> str:
    found = line.meanwhile()
    return "; ".join(w[f"m_{name}"].format(n=found[name]) for name in MEANWHILE if found[name])


def _per_activity(
    report: AuditReport, text: Callable[[ActivityLine, dict[str, str]], str]
) -> list[str]:
    w = report.words
    return [
        f"{line.name} ({line.activity_id}): {found}"
        for line in report.lines
        if (found := text(line, w))
    ]


def to_document(report: AuditReport) -> Document:
    w = report.words
    exceptions = sum(sum(line.exceptions().values()) for line in report.lines)
    summary = Facts(w["summary_h"], [
        Item(w["runs"], str(sum(len(line.runs) for line in report.lines))),
        Item(w["deleted"], str(sum(line.applied("delete") for line in report.lines))),
        Item(w["anonymised"], str(sum(line.applied("anonymise") for line in report.lines))),
        Item(w["exceptions"], str(exceptions)),
        Item(w["ledger"], _ledger_text(report)),
    ])  # fmt: skip
    unit = w["day"] if _buckets(report)[1] else w["week"]
    blocks: list[Block] = [
        summary,
        Figure(w["trend_h"], trend(report), w["trend_caption"].format(unit=unit)),
        _grid(report),
        Notes(w["details_h"], _per_activity(report, _exceptions_text)),
        Notes(w["meanwhile_h"], _per_activity(report, _meanwhile_text)),
        Notes(
            w["gaps_h"], [f"{ln.name} ({ln.activity_id})" for ln in report.lines if ln.policy_gap]
        ),
        Notes(w["notes_h"], [w["note_state"], w["note_counts"]]),
    ]
    meta = [
        w["period"].format(first=report.first, last=report.last),
        w["generated"].format(
            at=local_time(report.generated_at.isoformat()), version=report.catalogue_version
        ),
    ]
    words = {"page": w["page"], "none": w["none"]}
    return Document(report.language, w["title"], meta, blocks, words, landscape=True)


def to_csv(report: AuditReport) -> str:
    """One row per activity; exceptions one column each (names in the report's language)."""
    w = report.words
    keys = ("activity_id", "activity", "runs", "completed", "deleted", "anonymised", "held",
            "restricted", "unknown", "kept", "verified")  # fmt: skip
    header = [w[f"csv_{k}"] for k in keys]
    header += [w[f"x_{name}"].replace("{n} ", "").replace(" ", "_") for name in EXCEPTIONS]
    header += [w[f"csv_{name}"] for name in MEANWHILE]
    header += [w["csv_gap"], w["csv_last_run"]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for line in report.lines:
        found, meanwhile, last = line.exceptions(), line.meanwhile(), line.last
        writer.writerow([
            line.activity_id, line.name, len(line.runs),
            sum(1 for r in line.runs if r.outcome == "completed"),
            line.applied("delete"), line.applied("anonymise"),
            *("" if line.state(k) is None else line.state(k)
              for k in ("held", "restricted", "anchor_unknown", "kept")),
            line.verifications()[0], *(found[name] for name in EXCEPTIONS),
            *(meanwhile[name] for name in MEANWHILE),
            int(line.policy_gap), last.run_id if last else "",
        ])  # fmt: skip
    return buffer.getvalue()


def report_bytes(report: AuditReport, fmt: str) -> bytes:
    """The report as ``html``, ``pdf`` or ``csv`` bytes (what the Retention page serves)."""
    if fmt == "csv":
        return to_csv(report).encode("utf-8")
    if fmt not in FORMATS:
        raise RetentionError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return render(to_document(report), fmt)


def render_report(
    ledger: EvidenceReader, first: dt.date, last: dt.date, *, language: str = "en",
    fmt: str = "html", catalogue: Catalogue,
) -> bytes:  # fmt: skip
    """The period's report, rendered (``fmt`` html, pdf or csv): what the Retention page serves."""
    return report_bytes(build_report(ledger, first, last, language, catalogue=catalogue), fmt)
