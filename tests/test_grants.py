"""Least privilege on real PostgreSQL and MariaDB: the worker's role, created by the generated
scripts, runs a normal enforcement (and its verification) but nothing else.

Every test makes a fresh source and control schema/database and a uniquely named role,
dropped afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from include.retention import verification
from include.retention.grants import APPEND_ONLY, HEAD_FORWARD, Target, apply, init_control
from include.retention.grants import control_script as make_control_script
from include.retention.grants import source_script as make_source_script
from include.retention.ledger import subject_table
from include.retention.lifecycle import enforce
from include.retention.runs import Control
from tests.dbs import (  # noqa: F401 - fixtures
    AS_OF,
    MARIADB_ADMIN_URL,
    PG_ADMIN_URL,
    Db,
    activity,
    crash_activity,
    create_db,
    ids,
    key_fixture,
    old,
    person,
    recent,
    seed,
)

ROOT = Path(__file__).resolve().parent.parent
DIALECT = {"postgresql": "postgresql", "mariadb": "mysql"}
DENIED = {"postgresql": "InsufficientPrivilege", "mariadb": "denied"}
# ids 1..10: odd ids decided long ago (expired), even ids recently (kept)
PEOPLE = [person(i, old() if i % 2 else recent(), city="Lund", age=30) for i in range(1, 11)]
EXPIRED = {1, 3, 5, 7, 9}


@dataclass
class Setup:
    kind: str
    source: Db
    control: Db
    role: str
    password: str
    admin: Engine

    def schema(self, db: Db) -> str:
        url = sa.make_url(db.url)
        if self.kind == "mariadb":
            return str(url.database)
        return str(url.query["options"]).split("search_path=")[1]

    def target(self, db: Db) -> Target:
        return Target(DIALECT[self.kind], self.role, self.schema(db))

    def as_role(self, db: Db) -> Engine:
        url = sa.make_url(db.url).set(username=self.role, password=self.password)
        return sa.create_engine(url)

    def apply(self, statements: list[str]) -> None:
        apply(self.admin, statements)


@pytest.fixture(name="setup", params=["postgresql", "mariadb"])
def setup_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    kind = request.param
    source, drop_source = create_db(kind, tmp_path)
    control, drop_control = create_db(kind, tmp_path)
    admin = sa.create_engine(
        PG_ADMIN_URL if kind == "postgresql" else MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT"
    )
    setup = Setup(kind, source, control, f"rt_role_{uuid.uuid4().hex[:12]}",
                  secrets.token_hex(16), admin)  # fmt: skip
    try:
        yield setup
    finally:
        drop_source()
        drop_control()
        if kind == "postgresql":
            setup.apply([f'DROP ROLE IF EXISTS "{setup.role}"'])
        else:
            setup.apply([f"DROP USER IF EXISTS `{setup.role}`@'%'"])
        admin.dispose()


def _prepare(setup: Setup, key: bytes, action: str = "delete") -> tuple[Engine, Control]:
    """Seed the source and an unbound table, create the control tables, apply both scripts
    as the administrator, and return the source engine and control as the worker's role."""
    seed(setup.source.engine, PEOPLE)
    with setup.source.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE salaries (id INTEGER PRIMARY KEY, amount INTEGER)")
    # as airflow-init does: the control tables, then the role's grants and the triggers
    applied = init_control(setup.control.engine, key, setup.role)
    assert applied == make_control_script(setup.target(setup.control))
    setup.apply(make_source_script(setup.target(setup.source), [crash_activity(action)]))
    _set_password(setup)
    return setup.as_role(setup.source), Control.open(setup.as_role(setup.control), key)


def _set_password(setup: Setup) -> None:
    if setup.kind == "postgresql":
        setup.apply([f"ALTER ROLE \"{setup.role}\" PASSWORD '{setup.password}'"])
    else:
        setup.apply(
            [f"ALTER USER `{setup.role}`@'%' IDENTIFIED BY '{setup.password}' ACCOUNT UNLOCK"]
        )


def _refused(engine: Engine, statement: str, reason: str) -> None:
    with pytest.raises(sa.exc.DBAPIError) as caught, engine.begin() as conn:
        conn.exec_driver_sql(statement)
    assert reason in str(caught.value), statement


def test_enforcement_runs_as_the_role_and_nothing_else_is_allowed(setup: Setup, key: bytes) -> None:
    source, control = _prepare(setup, key)
    result = enforce(activity(), AS_OF, source=source, control=control, catalogue_version="t")
    assert (result.outcome, result.applied) == ("completed", len(EXPIRED))
    assert ids(setup.source.engine) == set(range(1, 11)) - EXPIRED
    assert ids(setup.source.engine, "applications") == {
        p * 10 + i for p in set(range(1, 11)) - EXPIRED for i in range(2)
    }
    checked = verification.verify_sql(
        activity(), AS_OF, result.run_id, source=source, control=control
    )
    assert (checked.success, checked.claims_checked) == (True, len(EXPIRED))

    denied = DENIED[setup.kind]
    for statement in (
        "SELECT * FROM salaries",  # not bound by the catalogue
        "UPDATE people SET email = 'x'",  # delete action: no UPDATE of data
        "INSERT INTO people (id) VALUES (99)",
        "DROP TABLE attachments",
        "CREATE TABLE intruder (id INTEGER)",
    ):
        _refused(source, statement, denied)
    worker_control = control.ledger.engine
    for statement in (
        "UPDATE retention_ledger SET kind = 'edited'",
        "DELETE FROM retention_ledger",
        "DELETE FROM retention_holds",
        "INSERT INTO retention_holds (scope, kind, reason, placed_by, placed_at)"
        " VALUES ('subject', 'legal_hold', 'r', 'p', '2026-01-01')",
    ):
        _refused(worker_control, statement, denied)
    _refused(worker_control, "UPDATE retention_ledger_head SET seq = seq - 1", HEAD_FORWARD)
    assert ids(setup.source.engine) == set(range(1, 11)) - EXPIRED
    assert control.ledger.verify().ok


def test_the_ledger_refuses_update_and_delete_even_for_its_owner(setup: Setup, key: bytes) -> None:
    _, control = _prepare(setup, key)
    enforce(activity(), AS_OF, source=setup.source.engine, control=control, catalogue_version="t")
    before = control.ledger.verify()
    assert before.ok and before.entries > 0
    owner = setup.control.engine
    _refused(owner, "UPDATE retention_ledger SET kind = 'edited' WHERE seq = 1", APPEND_ONLY)
    _refused(owner, "DELETE FROM retention_ledger WHERE seq = 1", APPEND_ONLY)
    _refused(owner, "UPDATE retention_ledger_head SET seq = 1", HEAD_FORWARD)
    _refused(owner, "DELETE FROM retention_ledger_head", HEAD_FORWARD)
    assert control.ledger.verify() == before
    with owner.begin() as conn:  # a stray subject reference: appending is allowed, and caught
        conn.execute(sa.insert(subject_table).values(seq=1, pos=0, subject_ref=b"s" * 16))
    _refused(owner, "UPDATE retention_ledger_subject SET pos = pos + 1", APPEND_ONLY)
    _refused(owner, "DELETE FROM retention_ledger_subject", APPEND_ONLY)
    assert not control.ledger.verify().ok


def test_anonymisation_updates_only_the_masked_columns(setup: Setup, key: bytes) -> None:
    source, control = _prepare(setup, key, "anonymise")
    result = enforce(
        crash_activity("anonymise"), AS_OF, source=source, control=control, catalogue_version="t"
    )
    assert (result.outcome, result.applied) == ("completed", len(EXPIRED))
    people = sa.Table("people", sa.MetaData(), autoload_with=setup.source.engine)
    with setup.source.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(people))}
    assert {i for i, r in rows.items() if r.anonymised_at is not None} == EXPIRED
    assert all(rows[i].city is None and rows[i].email != f"person{i}@example.com" for i in EXPIRED)
    denied = DENIED[setup.kind]
    _refused(source, "UPDATE people SET age = 1", denied)
    _refused(source, "DELETE FROM people WHERE id = 2", denied)
    assert control.ledger.verify().ok


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_the_command_prints_the_catalogue_grants(dialect: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "include.retention", "grants", "--dialect", dialect,
         "--schema", "ats", "--conn-id", "retention_ats"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    q = '"' if dialect == "postgresql" else "`"
    table = f"{q}ats{q}.{q}candidates{q}"
    grant_line = next(line for line in out.splitlines() if f"ON {table}" in line)
    assert grant_line.startswith("GRANT DELETE, SELECT")
    assert "applications" in out and "attachments" in out
    assert "INSERT" not in out and "crm" not in out  # other connections' tables are not included


def test_bad_names_are_refused() -> None:
    with pytest.raises(Exception, match="not a safe SQL identifier"):
        Target("postgresql", "worker; DROP TABLE x", "public")
    with pytest.raises(Exception, match="dialect"):
        Target("oracle", "worker", "public")


def test_control_init_command_creates_tables_and_grants(setup: Setup, key: bytes) -> None:
    """What airflow-init runs: as the owner, from $RETENTION_CONTROL_DB_URL and the key's
    Airflow connection; afterwards the role can append but not edit."""
    secret = key.hex()
    env = os.environ | {
        "RETENTION_CONTROL_DB_URL": setup.control.url,
        "AIRFLOW_CONN_RETENTION_PSEUDONYM_KEY": json.dumps(
            {"conn_type": "generic", "password": secret}
        ),
    }
    done = subprocess.run(
        [sys.executable, "-m", "include.retention", "control-init", "--grant-to", setup.role],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ledger and hold tables ready" in done.stdout
    assert secret not in done.stdout + done.stderr
    _set_password(setup)
    seed(setup.source.engine, PEOPLE)
    control = Control.open(setup.as_role(setup.control), secret.encode())
    enforce(activity(), AS_OF, source=setup.source.engine, control=control, catalogue_version="t")
    assert control.ledger.verify().ok
    _refused(control.ledger.engine, "DELETE FROM retention_ledger", DENIED[setup.kind])
