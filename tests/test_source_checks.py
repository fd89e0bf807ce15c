"""Great Expectations around enforcement: the source pre-check stops a run before anything is
deleted and says why (one DAG run per stop reason, ``dag.test``); the checks' results are
stored with the run's evidence; and a check prints no warnings."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.demo.embedded_s3 import EmbeddedS3
from include.demo.run import ROOT, DemoPaths, environment
from include.demo.seed import seed_demo
from include.retention.catalogue import load_catalogue
from include.retention.dag_factory import build_dag
from tests.demo_checks import Demo, demo_environment, edited_catalogue, survivors
from tests.s3 import s3_server_fixture  # noqa: F401

AS_OF = dt.datetime(2026, 11, 24, 1, 30, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, s3_server: EmbeddedS3) -> Iterator[Demo]:
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)
    root = tmp_path_factory.mktemp("source-checks")
    key = secrets.token_urlsafe(32)
    result = seed_demo(AS_OF, root / "demo", s3_client=s3_server.client())
    env = environment(DemoPaths(root), key, s3_server.endpoint_url)
    with demo_environment(env, key, result.hold_requests()) as control:
        yield Demo(root, result.manifest, result.urls, control, s3_server.client())


def _anchor_to(column: str) -> Any:
    def edit(raw: dict[str, Any]) -> None:
        for case in raw["retention"]:
            if case.get("anchor_column"):
                case["anchor_column"] = column

    return edit


def _update(demo: Demo, system: str, statement: str) -> None:
    engine = sa.create_engine(demo.urls[system])
    with engine.begin() as conn:
        conn.exec_driver_sql(statement)
    engine.dispose()


def _stopped(demo: Demo, activity_id: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the activity's DAG; assert it failed in ``plan`` and changed nothing. Returns what
    the run printed (the task log)."""
    entries, alive_before = survivors(demo, activity_id)
    dag = build_dag(load_catalogue()[activity_id])
    for task in dag.tasks:
        task.retries = 0
    capsys.readouterr()
    run = dag.test(run_conf={"as_of": AS_OF.isoformat(), "dry_run": False})
    printed = "".join(capsys.readouterr())
    assert run.state == "failed"
    assert survivors(demo, activity_id)[1] == alive_before == entries  # nothing deleted
    assert demo.control.ledger.runs(activity_id) == []  # nor recorded as if it ran
    assert "nothing was deleted" in printed
    return printed


def test_a_missing_anchor_column_stops_the_run(demo, tmp_path, monkeypatch, capsys):
    folder = edited_catalogue(tmp_path / "policies", {"chatbot": _anchor_to("started_on")})
    monkeypatch.setenv("RETENTION_CATALOGUE_DIR", str(folder))
    printed = _stopped(demo, "chatbot", capsys)
    assert "anchor column conversations.started_on does not exist" in printed


def test_an_anchor_column_that_holds_no_dates_stops_the_run(demo, tmp_path, monkeypatch, capsys):
    folder = edited_catalogue(tmp_path / "policies", {"demo_process": _anchor_to("email")})
    monkeypatch.setenv("RETENTION_CATALOGUE_DIR", str(folder))
    printed = _stopped(demo, "demo_process", capsys)
    assert "anchor column demo_accounts.email is of type" in printed
    assert "not a date or date-time" in printed


def test_too_many_unknown_anchors_stop_the_run(demo, capsys):
    # 3 of the 25 candidates were hired (out of scope); every other decision date is lost
    _update(demo, "ats", "UPDATE candidates SET decision_at = NULL WHERE hired = 0")
    printed = _stopped(demo, "recruitment", capsys)
    assert "anchor column candidates.decision_at is NULL (unknown) in 100%" in printed, [
        line for line in printed.splitlines() if "source check" in line
    ]
    assert "max_null_anchor_fraction allows (50%)" in printed


def test_too_many_future_anchors_stop_the_run(demo, capsys):
    # a time-zone or format fault moves most registrations into the next century
    _update(demo, "cms", "UPDATE event_registrations SET received_at = '2099-01-01 00:00:00'")
    printed = _stopped(demo, "event_registration", capsys)
    assert "anchor column event_registrations.received_at lies in the future" in printed
    assert "max_future_anchor_fraction allows (5%)" in printed


def test_a_limit_in_the_catalogue_lets_the_run_through(demo, tmp_path, monkeypatch):
    _update(demo, "crm", "UPDATE contacts SET contract_terminated_on = '2099-12-31'"
            " WHERE id IN (SELECT id FROM contacts WHERE contract_terminated_on IS NOT NULL"
            " ORDER BY id DESC LIMIT 3)")  # fmt: skip

    def lenient(raw: dict[str, Any]) -> None:
        raw["source_checks"] = {"max_future_anchor_fraction": 0.5}

    folder = edited_catalogue(tmp_path / "policies", {"crm": lenient})
    monkeypatch.setenv("RETENTION_CATALOGUE_DIR", str(folder))
    dag = build_dag(load_catalogue()["crm"])
    assert dag.test(run_conf={"as_of": AS_OF.isoformat(), "dry_run": False}).state == "success"
    assert demo.last_run("crm")["outcome"] == "completed"


def test_check_results_are_stored_with_the_evidence_without_values(demo):
    dag = build_dag(load_catalogue()["newsletter"])
    assert dag.test(run_conf={"as_of": AS_OF.isoformat(), "dry_run": False}).state == "success"
    run_id = demo.control.ledger.runs("newsletter")[-1].run_id
    (verified,) = [
        e.document for e in demo.control.ledger.entries()
        if e.kind == "run_verified" and e.run_id == run_id
    ]  # fmt: skip
    body = verified.get("body", verified)
    after = {e["expectation"]: e for e in body["expectations"]}
    assert after["expect_table_row_count_to_equal"]["success"] is True
    assert after["expect_table_row_count_to_equal"]["observed_value"] == 0
    before = body["source_checks"]
    assert before["checked"] is True and before["passed"] is True
    kinds = {(e["expectation"], e["column"]) for e in before["expectations"]}
    assert ("expect_column_values_to_not_be_null", "last_sent_at") in kinds  # a period rule
    assert ("expect_column_values_to_not_be_null", "consent_withdrawn_at") not in kinds  # pending
    assert ("expect_column_values_to_be_between", "consent_withdrawn_at") in kinds
    text = json.dumps(body)
    for entry in demo.manifest.for_activity("newsletter"):
        if entry.subject:
            assert entry.subject not in text


def test_a_check_prints_no_warnings(demo):
    """In a fresh process, as a task runs it: nothing GX warns about reaches stdout/stderr."""
    script = (
        "import datetime as dt, warnings\n"
        "from include.retention import connections, operations, verification\n"
        "from include.retention.catalogue import load_catalogue\n"
        "runtime = operations.Runtime.load()\n"
        "activity = load_catalogue()['training_register']\n"
        "source = connections.source_engine(activity.source.conn_id)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    checked = verification.precheck(activity, runtime.adapter(activity), dry_run=False)\n"
        f"    result = verification.verify_sql(activity, dt.datetime.fromisoformat("
        f"'{AS_OF.isoformat()}'), None, source=source, control=runtime.control)\n"
        "print('passed', checked['passed'], 'remaining', result.remaining_due)\n"
        "print('warnings', [str(w.message)[:80] for w in caught])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "passed True" in done.stdout  # the checks ran
    assert "warnings []" in done.stdout
    assert "warning" not in done.stderr.lower(), done.stderr[-2000:]
    assert "Warning" not in done.stdout


def test_gx_is_quiet_in_this_process_too(demo):
    from include.retention import operations, verification

    activity = load_catalogue()["supplier_register"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checked = verification.precheck(
            activity, operations.Runtime.load().adapter(activity), dry_run=False
        )
    assert checked["passed"] and checked["expectations"]
    assert [str(w.message) for w in caught] == []
