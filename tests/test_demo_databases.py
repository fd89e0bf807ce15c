"""``make demo DB=postgres``: the demo's systems seeded on PostgreSQL and MariaDB, the control
database on PostgreSQL, and Airflow connections of the real types that reach them.

(The DAGs on this layout run through the scheduler and a Celery worker in
``tests/test_scheduler_e2e.py``.)
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.demo import databases
from include.demo.embedded_s3 import EmbeddedS3
from include.demo.manifest import Manifest
from include.demo.run import DemoPaths, environment, seed, seeded_as_of
from include.demo.schema import SYSTEMS
from include.retention import connections
from include.retention.catalogue import load_catalogue
from include.retention.errors import RetentionError
from include.retention.runs import Control
from tests.s3 import s3_server_fixture  # noqa: F401

AS_OF = dt.datetime(2026, 11, 24, 1, 30, tzinfo=dt.UTC)
BACKEND = {"postgresql": "postgresql", "mariadb": "mysql"}


def test_every_system_is_placed_and_both_servers_are_used() -> None:
    assert set(databases.PLACEMENT) == set(SYSTEMS)
    assert set(databases.PLACEMENT.values()) == {"postgresql", "mariadb"}


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (lambda: databases.check_layout("oracle"), "not a demo layout"),
        (lambda: databases.source_urls("Rdemo-1"), "lower-case letters"),
        (lambda: databases.control_url("rdemo_x; drop"), "lower-case letters"),
        (lambda: databases.source_urls("rdemo_x", {"ats": "postgresql"}), "no server placed"),
    ],
)
def test_bad_layouts_and_names_are_refused(call, problem) -> None:
    with pytest.raises(RetentionError, match=problem):
        call()


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[DemoPaths]:
    paths = DemoPaths(tmp_path / "var", "postgres")
    (paths.var).mkdir()
    try:
        yield paths
    finally:
        databases.drop_databases([*paths.source_urls.values(), paths.control_url])


def test_the_postgres_layout_is_seeded_on_the_servers_and_reached_by_connections(
    layout: DemoPaths, s3_server: EmbeddedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = secrets.token_urlsafe(48)
    seed(layout, key, s3_server.endpoint_url, AS_OF)
    manifest = Manifest.read(layout.demo / "manifest.json")
    env = environment(layout, key, s3_server.endpoint_url)
    assert env["RETENTION_CONTROL_DB_URL"].startswith("postgresql+psycopg://")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    catalogue = load_catalogue()
    for system in SYSTEMS:
        conn = json.loads(env[f"AIRFLOW_CONN_RETENTION_{system.upper()}"])
        assert (
            conn["conn_type"]
            == {"postgresql": "postgres", "mariadb": "mysql"}[databases.PLACEMENT[system]]
        )
        engine = connections.source_engine(f"retention_{system}")  # through the provider hook
        assert engine.dialect.name == BACKEND[databases.PLACEMENT[system]]
        where = "current_schema()" if engine.dialect.name == "postgresql" else "DATABASE()"
        with engine.connect() as db:  # its own schema (PostgreSQL) or database (MariaDB)
            name = db.exec_driver_sql(f"SELECT {where}").scalar()
        prefix = databases.prefix_for(layout.var)
        assert name == (system if engine.dialect.name == "postgresql" else f"{prefix}_{system}")
        sql = [a.source for a in catalogue if a.source.kind == "sql"]
        for table in {src.table for src in sql if src.system == system}:
            rows = [e for e in manifest if e.system == system and e.dataset == table]
            with engine.connect() as db:
                count = db.execute(sa.select(sa.func.count()).select_from(sa.table(table)))
                assert count.scalar_one() == len(rows) > 0, (system, table)
        engine.dispose()
    control = Control.open(layout.control_url, key.encode())
    assert control.ledger.engine.dialect.name == "postgresql"
    report = control.holds.verify()
    assert report.ok and report.holds == len(manifest.hold_requests()) > 0
    assert seeded_as_of(layout) == AS_OF
    assert seeded_as_of(DemoPaths(layout.var)) is None  # switching to SQLite reseeds
