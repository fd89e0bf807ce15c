"""``requests forget-runs`` on a real Airflow: the dsr_* runs whose ``conf`` holds a person's
identifier are deleted from the metadata DB with their task instances and XComs; younger
request runs and other DAGs' runs stay.

The stack has no control database, so the request runs fail at their first task: what matters
here is the run Airflow stored with the form's identifier, as it does for every request.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from include.demo.airflow_stack import AirflowApi, AirflowStack, StackConfig
from include.demo.run import ROOT
from include.retention.audit_dag import DAG_ID as OTHER_DAG
from include.retention.errors import RetentionError
from tests.dbs import fresh_pg_database

pytestmark = pytest.mark.scheduler

REQUEST_DAG = "dsr_access"
OLD, NEW = "old.request@example.se", "new.request@example.se"


@dataclass
class Runs:
    stack: AirflowStack
    api: AirflowApi
    metadata: sa.Engine
    cutoff: dt.datetime
    old: str
    new: str
    other: str

    def forget(self, *extra: str) -> str:
        cli = [sys.executable, "-m", "include.retention", "requests", "forget-runs"]
        return self.stack.run(*cli, "--before", self.cutoff.isoformat(), *extra)

    def run_ids(self) -> set[tuple[str, str]]:
        with self.metadata.connect() as conn:
            return {(d, r) for d, r in conn.execute(sa.text("SELECT dag_id, run_id FROM dag_run"))}

    def text_of(self, table: str) -> str:
        with self.metadata.connect() as conn:
            return " ".join(str(row) for row in conn.execute(sa.text(f"SELECT * FROM {table}")))


@pytest.fixture
def runs(tmp_path) -> Iterator[Runs]:
    with fresh_pg_database("rt_af") as metadata_url:
        config = StackConfig(
            home=tmp_path / "airflow", metadata_url=metadata_url, dags_folder=ROOT / "dags",
            project_root=ROOT, parallelism=2,
        )  # fmt: skip
        with AirflowStack(config) as stack:
            api = stack.api()
            api.wait_for_dags([REQUEST_DAG, OTHER_DAG])
            for dag_id in (REQUEST_DAG, OTHER_DAG):
                api.unpause(dag_id)
            old = api.trigger(REQUEST_DAG, {"email": OLD})
            other = api.trigger(OTHER_DAG)
            api.wait_for_runs([(REQUEST_DAG, old), (OTHER_DAG, other)], timeout=240)
            time.sleep(1)
            cutoff = dt.datetime.now(dt.UTC)
            time.sleep(1)
            new = api.trigger(REQUEST_DAG, {"email": NEW})
            api.wait_for_runs([(REQUEST_DAG, new)], timeout=240)
            metadata = sa.create_engine(metadata_url)
            yield Runs(stack, api, metadata, cutoff, old, new, other)
            metadata.dispose()
            api.close()


def test_old_request_runs_are_forgotten_and_nothing_else(runs: Runs) -> None:
    before = runs.run_ids()
    assert {(REQUEST_DAG, runs.old), (REQUEST_DAG, runs.new), (OTHER_DAG, runs.other)} <= before
    assert OLD in runs.text_of("dag_run") and runs.old in runs.text_of("task_instance")

    assert "would delete 1 finished run(s)" in runs.forget("--dry-run")
    assert runs.run_ids() == before

    assert "deleted 1 finished run(s)" in runs.forget()
    assert runs.run_ids() == before - {(REQUEST_DAG, runs.old)}
    for table in ("dag_run", "task_instance", "xcom"):
        assert OLD not in runs.text_of(table), table
        assert runs.old not in runs.text_of(table), table
    assert NEW in runs.text_of("dag_run")  # younger than the cut-off: kept
    assert "deleted 0 finished run(s)" in runs.forget()  # once is enough


def test_a_cut_off_without_a_time_zone_is_refused_and_nothing_changes(runs: Runs) -> None:
    before = runs.run_ids()
    cli = [sys.executable, "-m", "include.retention", "requests", "forget-runs"]
    with pytest.raises(RetentionError, match="has no time zone"):
        runs.stack.run(*cli, "--before", runs.cutoff.replace(tzinfo=None).isoformat())
    assert runs.run_ids() == before
