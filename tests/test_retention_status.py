"""The Retention page's data and charts, without Airflow: rows from ledger runs, the chain
status, and the inline SVG charts."""

from __future__ import annotations

import datetime as dt

import pendulum

from include.retention import retention_status
from include.retention.catalogue import load_catalogue
from include.retention.certificate import LedgerState
from include.retention.ledger import RunHeader, RunSummary, ledger_table
from include.retention.retention_status import DagFacts, LedgerChecker
from include.retention.runs import Control
from tests.dbs import control_fixture, key_fixture  # noqa: F401 - fixtures

TODAY = dt.date(2026, 11, 25)


def _run(run_id: str, started: str, applied: int | None, **header: object) -> RunSummary:
    finished = None if applied is None else {
        "outcome": "completed", "counts": {"applied": applied, "held": 2, "restricted": 1,
                                           "anchor_unknown": 3},
    }  # fmt: skip
    return RunSummary(run_id, "recruitment", {"dry_run": False, **header}, started, finished)


def test_a_row_counts_the_runs_per_day_and_ignores_dry_runs() -> None:
    activity = load_catalogue()["recruitment"]
    runs = [
        _run("a", "2026-10-26T22:59:00+00:00", 7),  # 23:59 in Stockholm: the day before the chart
        _run("b", "2026-11-24T01:30:00+00:00", 5),
        _run("c", "2026-11-24T13:00:00+00:00", 9, dry_run=True),
        _run("d", "2026-11-25T01:30:00+00:00", 4, origin={"run_id": "scheduled__x"}),
    ]
    days = retention_status.chart_days(TODAY)
    row = retention_status.activity_status(activity, runs, {"d": True}, days, DagFacts())
    assert row.total_applied == 16 and row.runs == 4
    assert len(row.daily_applied) == 30
    assert row.daily_applied[-2:] == [5, 4] and sum(row.daily_applied) == 9
    last = row.last_run
    assert last is not None
    assert (last.ledger_run_id, last.applied, last.held, last.restricted) == ("d", 4, 2, 1)
    assert (last.anchor_unknown, last.verified, last.dag_run_id) == (3, True, "scheduled__x")
    assert row.policy_gap is False and row.dag_id == "retention_recruitment"


def test_the_last_run_shown_is_a_retention_run_and_erasures_count_as_applied() -> None:
    activity = load_catalogue()["recruitment"]
    runs = [
        _run("r", "2026-11-24T01:30:00+00:00", 5, action="delete"),
        _run("e", "2026-11-24T13:00:00+00:00", 2, action="erasure"),
    ]
    days = retention_status.chart_days(TODAY)
    row = retention_status.activity_status(activity, runs, {}, days)
    assert row.last_run is not None and row.last_run.ledger_run_id == "r"
    assert row.total_applied == 7 and row.daily_applied[-2] == 7


def test_an_unfinished_run_is_shown_as_running() -> None:
    activity = load_catalogue()["recruitment"]
    days = retention_status.chart_days(TODAY)
    row = retention_status.activity_status(
        activity, [_run("a", "2026-11-25T01:30:00+00:00", None)], {}, days
    )
    assert row.last_run is not None and row.last_run.outcome == "running"
    assert row.last_run.verified is None and row.total_applied == 0


def _header(activity_id: str = "recruitment") -> RunHeader:
    return RunHeader(
        activity_id=activity_id, system="ats", dataset="candidates", action="delete",
        rules=["r"], as_of="2026-11-24T00:00:00+00:00", cutoffs=[None], dry_run=False,
        catalogue_version="v", code_version="c",
    )  # fmt: skip


def test_rows_come_from_the_ledger_only_for_the_dags_asked_for(control: Control) -> None:
    ledger = control.ledger
    run_id = ledger.start_run(_header())
    ledger.finish_run(run_id, "recruitment", outcome="completed", counts={"applied": 3}, message="")
    ledger.record_verification(run_id, "recruitment", {"success": False})
    catalogue = load_catalogue()
    rows = retention_status.activity_statuses(
        catalogue, ledger, {}, pendulum.now("Europe/Stockholm").date(),
        only={"retention_recruitment", "retention_chatbot"},
    )  # fmt: skip
    assert [r.activity_id for r in rows] == ["chatbot", "recruitment"]
    assert rows[0].last_run is None and rows[0].total_applied == 0
    assert rows[1].last_run is not None and rows[1].last_run.verified is False
    assert rows[1].daily_applied[-1] == 3


def test_the_chain_status_reports_a_break_once_the_cache_expires(control: Control) -> None:
    ledger = control.ledger
    ledger.finish_run(ledger.start_run(_header()), "recruitment", outcome="completed",
                      counts={"applied": 1}, message="")  # fmt: skip
    checker = LedgerChecker(ttl=0)
    state, _ = checker.status(ledger)
    assert state.ok and state.entries == 2
    with ledger.engine.begin() as conn:
        conn.execute(ledger_table.update().where(ledger_table.c.seq == 1).values(run_id="x"))
    broken, _ = checker.status(ledger)
    assert not broken.ok and broken.bad_seq == 1 and "edited" in (broken.problem or "")


def test_every_page_renders_from_rows_and_escapes_what_it_shows() -> None:
    from include.retention import retention_app

    activity = load_catalogue()["recruitment"]
    days = retention_status.chart_days(TODAY)
    run = _run("<b>run</b>", "2026-11-25T01:30:00+00:00", 4, origin={"run_id": "manual__<x>"})
    row = retention_status.activity_status(activity, [run], {}, days, DagFacts(paused=True))
    chain = LedgerState(
        head_seq=3, head_hash="ab" * 32, ok=False, entries=3, bad_seq=2,
        problem="entry hash does not match its content: entry edited",
    )  # fmt: skip
    pages = retention_app._templates()
    chart = retention_app.trend([row], TODAY, "per day")
    assert "<title>Recruitment process 11-25: 4</title>" in chart
    common = {
        "page": "/retention", "airflow": "", "chart": chart, "checked_at": dt.datetime.now(dt.UTC),
        "report_period": retention_app.report_period(TODAY),
    }  # fmt: skip
    overview = pages.get_template("overview.html").render(
        rows=[row], chain=chain, invalid=["bad.yaml"], lookup=[("ats", "candidates")], **common
    )
    assert "ledger broken" in overview and "at entry 2" in overview and "bad.yaml" in overview
    assert "certificates/%3Cb%3Erun%3C/b%3E" in overview and "<b>run</b>" not in overview
    assert "manual__%3Cx%3E" in overview and ">paused<" in overview
    assert 'action="/retention/lookup/person"' in overview
    assert (
        'name="from" value="2026-10-27"' in overview and 'name="to" value="2026-11-25"' in overview
    )
    tab = pages.get_template("dag.html").render(
        row=row, runs=[row.last_run], activity=activity, **common
    )
    assert "in 1 run<" in tab and "&lt;b&gt;run&lt;/b&gt;" in tab
    assert (  # where the DAG deletes: the recruitment binding in systems/ats.yaml
        '<td data-col="source"><code>ats.candidates</code> <span class="muted">through the'
        " connection <code>retention_ats</code></span></td>"
    ) in tab
    denied = pages.get_template("overview.html").render(
        rows=[], chain=chain, invalid=[], lookup=None, **common
    )
    assert 'id="lookup-denied"' in denied and "No retention DAG" in denied


def test_the_chart_counts_a_run_on_its_stockholm_day() -> None:
    # 23:30 UTC on 1 December is 00:30 on 2 December in Stockholm (CET, UTC+1).
    run = _run("r1", "2026-12-01T23:30:00+00:00", 4)
    days = [dt.date(2026, 12, 1), dt.date(2026, 12, 2)]
    row = retention_status.activity_status(load_catalogue()["recruitment"], [run], {}, days)
    assert row.daily_applied == [0, 4]


NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def test_a_next_run_more_than_an_hour_in_the_past_is_overdue_unless_paused() -> None:
    hours = [dt.timedelta(hours=h) for h in (-2, -0.5, 3)]
    assert [DagFacts.of(False, NOW + h, 0, NOW).overdue for h in hours] == [True, False, False]
    assert not DagFacts.of(True, NOW - dt.timedelta(days=3), 0, NOW).overdue  # paused says so
    assert not DagFacts.of(False, None, 0, NOW).overdue  # no run scheduled
    assert not DagFacts.of(False, NOW - dt.timedelta(days=3), 0, None).overdue  # schedule off


def test_the_page_flags_an_overdue_next_run() -> None:
    from include.retention import retention_app

    activity = load_catalogue()["recruitment"]
    days = retention_status.chart_days(TODAY)
    late = DagFacts.of(False, NOW - dt.timedelta(hours=5), 0, NOW)
    on_time = DagFacts.of(False, NOW + dt.timedelta(hours=5), 0, NOW)
    macros = retention_app._templates().get_template("_macros.html").module
    for facts, shown in ((late, True), (on_time, False)):
        row = retention_status.activity_status(activity, [], {}, days, facts)
        cell = str(macros.next_run(row))  # type: ignore[attr-defined]
        assert ("overdue" in cell) is shown, cell
        assert "2026-11-25" in cell
