"""The weekly ``retention_audit_report`` DAG: its shape, its period, where it writes (a folder,
owner-only; an S3 prefix), a broken ledger failing it, and a run through Airflow."""

from __future__ import annotations

import csv
import datetime as dt
import io
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pendulum
import pytest
import sqlalchemy as sa

from include.retention import lifecycle
from include.retention.audit_dag import DAG_ID, build_audit_dag
from include.retention.audit_publish import (
    Location,
    open_ledger,
    previous_week,
    publish,
    publish_task,
    resolve_period,
)
from include.retention.catalogue import load_valid
from include.retention.errors import RetentionError
from include.retention.runs import Control
from tests.audit_ledger import applied_from_rows, raw_rows
from tests.dbs import AS_OF, activity, old, person, recent, seed
from tests.s3 import new_bucket, s3_fixture, s3_server_fixture  # noqa: F401

# The period holds the fixture's run, recorded now (a day's margin for a run across midnight).
_TODAY = pendulum.now("Europe/Stockholm").date()
PERIOD = {"from": str(_TODAY - dt.timedelta(days=30)), "to": str(_TODAY + dt.timedelta(days=1))}
STEM = f"retention-report-{PERIOD['from']}-{PERIOD['to']}"
FILES = sorted(f"{STEM}.{lang}.{fmt}" for lang in ("sv", "en") for fmt in ("html", "pdf", "csv"))


@pytest.fixture(name="ledger_url")
def ledger_url_fixture(tmp_path: Path) -> str:
    """A control database with one real, completed deletion run."""
    url = f"sqlite:///{tmp_path / 'control.db'}"
    control = Control.open(url, secrets.token_bytes(32))
    source = sa.create_engine(f"sqlite:///{tmp_path / 'ats.db'}")
    seed(source, [person(i, old() if i <= 5 else recent()) for i in range(1, 9)])
    lifecycle.enforce(activity(), AS_OF, source=source, control=control,
                      catalogue_version="test")  # fmt: skip
    return url


def _csv_rows(data: bytes) -> dict[str, dict[str, str]]:
    return {r["activity_id"]: r for r in csv.DictReader(io.StringIO(data.decode("utf-8")))}


def test_dag_shape():
    dag = build_audit_dag()
    assert dag.dag_id == DAG_ID
    assert [t.task_id for t in dag.tasks] == ["write_report"]
    assert dag.timetable.expression == "0 6 * * 1"
    assert str(dag.timetable.timezone) == "Europe/Stockholm"
    assert set(dag.params.keys()) == {"from", "to"}
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.is_paused_upon_creation is False
    assert dag.on_failure_callback and dag.default_args["retries"] >= 1
    assert "retention_audit_report_location" in dag.doc_md


@pytest.mark.parametrize(
    ("run_after", "expected"),
    [
        # Monday 06:00 Stockholm (05:00 UTC): the week before, Monday to Sunday
        (dt.datetime(2026, 11, 30, 5, 0, tzinfo=dt.UTC), ("2026-11-23", "2026-11-29")),
        # Sunday 23:30 UTC is already Monday in Stockholm
        (dt.datetime(2026, 11, 29, 23, 30, tzinfo=dt.UTC), ("2026-11-23", "2026-11-29")),
        # a Wednesday: still the previous full week
        (dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC), ("2026-11-23", "2026-11-29")),
    ],
)
def test_previous_week(run_after, expected):
    assert previous_week(run_after) == tuple(dt.date.fromisoformat(d) for d in expected)
    assert resolve_period({}, run_after) == previous_week(run_after)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "2026-11-01"}, "give both 'from' and 'to'"),
        ({"from": "2026-11-30", "to": "2026-11-01"}, "is before 'from'"),
        ({"from": "1 Nov", "to": "2026-11-30"}, "YYYY-MM-DD"),
    ],
)
def test_bad_period_is_refused(params, message):
    with pytest.raises(RetentionError, match=message):
        resolve_period(params, dt.datetime(2026, 11, 30, tzinfo=dt.UTC))


@pytest.mark.parametrize("raw", ["ftp://host/reports", "s3://", "s3:///prefix"])
def test_bad_location_is_refused(raw):
    with pytest.raises(RetentionError, match="retention_audit_report_location"):
        Location.parse(raw)


def test_publish_to_an_s3_prefix(ledger_url, s3):
    bucket = new_bucket(s3, "reports")
    location = Location.parse(f"s3://{bucket}/audit/weekly/")
    first, last = (dt.date.fromisoformat(PERIOD[end]) for end in ("from", "to"))
    summary = publish(
        first, last, location, ledger=open_ledger(ledger_url),
        catalogue=load_valid()[0], client=lambda: s3,
    )  # fmt: skip
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="audit/weekly/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [f"audit/weekly/{name}" for name in FILES]
    assert summary["ledger_ok"] is True and summary["runs"] == 1
    body = s3.get_object(Bucket=bucket, Key=f"audit/weekly/{STEM}.en.csv")["Body"].read()
    rows = raw_rows(ledger_url)
    run_id = next(r["run_id"] for r in rows if r["kind"] == "run_started")
    assert int(_csv_rows(body)["recruitment"]["deleted"]) == applied_from_rows(rows, run_id) == 5


def test_a_broken_ledger_fails_the_task_after_writing_the_report(ledger_url, tmp_path, monkeypatch):
    engine = sa.create_engine(ledger_url)
    with engine.begin() as conn:  # an attacker edits a finished run's counts
        conn.execute(
            sa.text(
                "UPDATE retention_ledger SET document = replace(document, :was, :now)"
                " WHERE kind = 'run_finished'"
            ),
            {"was": '"applied":5', "now": '"applied":0'},
        )
    monkeypatch.setenv("RETENTION_CONTROL_DB_URL", ledger_url)
    folder = tmp_path / "reports"
    with pytest.raises(RetentionError, match="chain is broken"):
        publish_task(PERIOD, dt.datetime(2026, 12, 1, tzinfo=dt.UTC), str(folder))
    assert sorted(p.name for p in folder.iterdir()) == FILES
    page = (folder / f"{STEM}.en.html").read_text(encoding="utf-8")
    assert "BROKEN at entry" in page


@pytest.fixture(scope="module")
def airflow_db() -> None:
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)


@pytest.mark.slow
def test_dag_runs_through_airflow_and_writes_owner_only_files(
    airflow_db, ledger_url, tmp_path, monkeypatch
):
    folder = tmp_path / "audit" / "reports"
    monkeypatch.setenv("RETENTION_CONTROL_DB_URL", ledger_url)
    monkeypatch.setenv("AIRFLOW_VAR_RETENTION_AUDIT_REPORT_LOCATION", str(folder))
    dag = build_audit_dag()
    for task in dag.tasks:
        task.retries = 0
    run = dag.test(run_conf=PERIOD)
    assert run.state == "success"
    assert sorted(p.name for p in folder.iterdir()) == FILES
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}
    rows = raw_rows(ledger_url)
    run_id = next(r["run_id"] for r in rows if r["kind"] == "run_started")
    table = _csv_rows((folder / f"{STEM}.en.csv").read_bytes())
    assert int(table["recruitment"]["runs"]) == 1
    assert int(table["recruitment"]["deleted"]) == applied_from_rows(rows, run_id)
    assert table["recruitment"]["last_run"] == run_id
