"""The Retention page's data and charts, without Airflow: rows from ledger runs, the chain
status, and the inline SVG charts."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from include.retention import retention_status, svg_chart
from include.retention.catalogue import load_catalogue
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
        _run("a", "2026-10-26T23:59:00+00:00", 7),  # the day before the 30 days shown
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
        catalogue, ledger, {}, dt.datetime.now(dt.UTC).date(),
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
    assert checker.status(ledger).ok and checker.status(ledger).entries == 2
    with ledger.engine.begin() as conn:
        conn.execute(ledger_table.update().where(ledger_table.c.seq == 1).values(run_id="x"))
    broken = checker.status(ledger)
    assert not broken.ok and broken.bad_seq == 1 and "edited" in (broken.problem or "")


def _rects(svg: str) -> list[dict[str, str]]:
    return [dict(re.findall(r'(\w+)="([^"]*)"', tag)) for tag in re.findall(r"<rect [^>]*>", svg)]


def test_bar_heights_are_proportional_and_labels_escaped() -> None:
    svg = svg_chart.bar_chart([0, 5, 10], ["a", "<b>", "c"], title="T & U", height=160)
    rects = _rects(svg)
    heights = [float(r["height"]) for r in rects]
    plot = 160 - 10 - 22
    assert heights == [1.0, plot / 2, plot]
    assert rects[0]["fill"] == svg_chart.EMPTY_COLOUR and rects[2]["fill"] == svg_chart.BAR_COLOUR
    assert "&lt;b&gt;: 5" in svg and "<b>" not in svg and "T &amp; U" in svg
    assert 'aria-label="T &amp; U: 15 records in total, at most 10 on one day"' in svg


def test_charts_refuse_values_without_labels() -> None:
    with pytest.raises(ValueError, match="2 values but 1 labels"):
        svg_chart.bar_chart([1, 2], ["a"], title="t")
    with pytest.raises(ValueError, match="1 values but 0 labels"):
        svg_chart.sparkline([1], [], title="t")


def test_every_page_renders_from_rows_and_escapes_what_it_shows() -> None:
    from include.retention import retention_app

    activity = load_catalogue()["recruitment"]
    days = retention_status.chart_days(TODAY)
    run = _run("<b>run</b>", "2026-11-25T01:30:00+00:00", 4, origin={"run_id": "manual__<x>"})
    row = retention_status.activity_status(activity, [run], {}, days, DagFacts(paused=True))
    chain = retention_status.LedgerStatus(
        ok=False, entries=3, head_seq=3, head_hash="ab" * 32, checked_at=dt.datetime.now(dt.UTC),
        bad_seq=2, problem="entry hash does not match its content: entry edited",
    )  # fmt: skip
    pages = retention_app._templates()
    common = {"page": "/retention", "airflow": ""}
    overview = pages.get_template("overview.html").render(
        rows=[row], chain=chain, invalid=["bad.yaml"], lookup=[("ats", "candidates")],
        **common, **retention_app.charts([row], TODAY),
    )  # fmt: skip
    assert "ledger broken" in overview and "at entry 2" in overview and "bad.yaml" in overview
    assert "certificates/%3Cb%3Erun%3C/b%3E" in overview and "<b>run</b>" not in overview
    assert "manual__%3Cx%3E" in overview and ">paused<" in overview
    assert 'action="/retention/lookup/person"' in overview
    tab = pages.get_template("dag.html").render(
        row=row, runs=[row.last_run], chart="", activity=activity, **common
    )
    assert "in 1 run<" in tab and "&lt;b&gt;run&lt;/b&gt;" in tab
    denied = pages.get_template("overview.html").render(
        rows=[], chain=chain, invalid=[], lookup=None, **common, **retention_app.charts([], TODAY)
    )
    assert 'id="lookup-denied"' in denied and "No retention DAG" in denied
