"""The deployment side: the enforcement pool, the control-DB check and paused retention DAGs,
through the commands the set-up runs (separate processes, Airflow's metadata DB)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from include.retention.deployment import check_control_db

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW = Path(sys.executable).parent / "airflow"


def test_control_db_must_not_be_the_metadata_db(tmp_path: Path) -> None:
    meta = f"sqlite:///{tmp_path / 'airflow.db'}"
    assert check_control_db(f"sqlite:///{tmp_path / 'x' / '..' / 'airflow.db'}", meta)
    assert check_control_db(f"sqlite:///{tmp_path / 'control.db'}", meta) == []
    pg = "postgresql+psycopg2://airflow:pw@db:5432/airflow"
    assert check_control_db("postgresql+psycopg://retention@db:5432/airflow", pg)
    assert check_control_db("postgresql+psycopg://retention@db:5432/retention", pg) == []
    assert check_control_db("mysql+pymysql://root@db:3306/airflow", pg) == []


def _run(*args: str, env: dict[str, str], tool: Path | None = None) -> subprocess.CompletedProcess:
    command = [str(tool), *args] if tool else [sys.executable, "-m", "include.retention", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("deploy-airflow")
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    env.pop("RETENTION_CONTROL_DB_URL", None)
    migrated = _run("db", "migrate", env=env, tool=AIRFLOW)
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    return env


def test_setup_creates_the_pool_and_check_reports_paused_dags(
    airflow_env: dict[str, str], tmp_path: Path
) -> None:
    key = json.dumps({"conn_type": "generic", "password": secrets.token_urlsafe(32)})
    env = airflow_env | {
        "RETENTION_CONTROL_DB_URL": f"sqlite:///{tmp_path / 'control.db'}",
        "AIRFLOW_CONN_RETENTION_PSEUDONYM_KEY": key,
    }
    before = _run("check", env=env)
    assert "pool 'retention' is missing" in before.stdout
    setup = _run("setup", "--slots", "3", env=env)
    assert setup.returncode == 0 and "3 slots" in setup.stdout, setup.stderr[-2000:]
    assert "27 activities valid" in setup.stdout  # one command: the catalogue is validated,
    assert "ledger and hold tables ready" in setup.stdout  # the control tables created
    assert "every active hold matches" in setup.stdout  # and checked against the holds
    assert (tmp_path / "control.db").is_file()
    pools = _run("pools", "get", "retention", "-o", "plain", env=env, tool=AIRFLOW)
    assert "retention" in pools.stdout and "3" in pools.stdout

    parsed = _run("dags", "reserialize", env=env, tool=AIRFLOW)
    assert parsed.returncode == 0, parsed.stderr[-2000:]
    fresh = _run("check", env=env)
    assert fresh.returncode == 0 and "WARNING" not in fresh.stdout, fresh.stdout
    assert "deployment check: ok" in fresh.stdout  # created unpaused: nothing to warn about

    paused = _run("dags", "pause", "retention_crm", env=env, tool=AIRFLOW)
    assert paused.returncode == 0, paused.stderr[-2000:]
    warned = _run("check", env=env)
    assert warned.returncode == 0
    warnings = [line for line in warned.stdout.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "retention_crm is paused" in warnings[0]


def test_check_refuses_the_metadata_db_as_control_db(airflow_env: dict[str, str]) -> None:
    metadata = f"sqlite:///{Path(airflow_env['AIRFLOW_HOME']) / 'airflow.db'}"
    result = _run("check", env=airflow_env | {"RETENTION_CONTROL_DB_URL": metadata})
    assert result.returncode == 2
    assert "control database (ledger + holds) is Airflow's metadata database" in result.stderr
