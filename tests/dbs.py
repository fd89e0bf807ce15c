"""Real-database fixtures and builders for the SQL engine, ledger and crash tests.

Test modules import the fixtures (``source_db_fixture``, ``key_fixture``, ``control_fixture``;
used by their names ``source_db``, ``key``, ``control``). Every test gets a fresh PostgreSQL
schema, MariaDB database or SQLite file, dropped afterwards. An unreachable server fails the
test (it is never skipped).

Also the data of the crash tests (`crash_people`, `crash_activity`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from include.retention.catalogue import Activity
from include.retention.ledger import Ledger
from include.retention.runs import Control

PG_ADMIN_URL = os.environ.get(
    "RETENTION_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_ADMIN_URL = os.environ.get(
    "RETENTION_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"
)
DIALECTS = ("postgresql", "mariadb", "sqlite")
AS_OF = dt.datetime(2026, 6, 15, 3, 0, tzinfo=dt.UTC)


@dataclass
class Db:
    kind: str
    url: str
    engine: Engine


def _admin(url: str) -> Engine:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        raise RuntimeError(f"test database server unreachable at {url}: {exc}") from exc
    return engine


def _pg_url(schema: str) -> str:
    url = sa.make_url(PG_ADMIN_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@dataclass
class _Fresh:
    admin: Engine
    name: str


@contextlib.contextmanager
def ledger_on(kind: str, tmp_path: Path) -> Iterator[Ledger]:
    """A ledger with its tables on a fresh database of ``kind``, dropped afterwards."""
    db, cleanup = create_db(kind, tmp_path)
    ledger = Ledger(db.engine, secrets.token_bytes(32))
    ledger.create_tables()
    try:
        yield ledger
    finally:
        cleanup()


def create_db(kind: str, tmp_path: Path) -> tuple[Db, Any]:
    """A fresh, empty database of ``kind``; returns it and a cleanup callable."""
    name = f"rt_{uuid.uuid4().hex[:12]}"
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / (name + '.db')}"
        db = Db(kind, url, sa.create_engine(url))
        return db, db.engine.dispose
    admin = _admin(PG_ADMIN_URL if kind == "postgresql" else MARIADB_ADMIN_URL)
    with admin.connect() as conn:
        conn.execute(sa.schema.CreateSchema(name))
    if kind == "postgresql":
        url = _pg_url(name)
    else:
        url = (
            sa.make_url(MARIADB_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        )
    db = Db(kind, url, sa.create_engine(url))

    def cleanup() -> None:
        db.engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.schema.DropSchema(name, cascade=kind == "postgresql"))
        admin.dispose()

    return db, cleanup


@pytest.fixture(name="source_db", params=DIALECTS)
def source_db_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    db, cleanup = create_db(request.param, tmp_path)
    try:
        yield db
    finally:
        cleanup()


@pytest.fixture(name="key")
def key_fixture() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture(name="control")
def control_fixture(tmp_path: Path, key: bytes) -> Control:
    return Control.open(f"sqlite:///{tmp_path / 'control.db'}", key)


# ------------------------------------------------------------------------------ source schema


def people_schema(with_children: bool = True) -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "people",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", sa.String(200)),
        sa.Column("mobile", sa.String(40)),
        sa.Column("personnummer", sa.String(13)),
        sa.Column("status", sa.String(20)),
        sa.Column("decided_at", sa.DateTime),
        sa.Column("withdrawn_on", sa.Date),
        sa.Column("birth_date", sa.Date),
        sa.Column("age", sa.Integer),
        sa.Column("city", sa.String(100)),
        sa.Column("anonymised_at", sa.DateTime),
    )
    if with_children:
        sa.Table(
            "applications",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("person_id", sa.Integer, sa.ForeignKey("people.id"), nullable=False),
            sa.Column("title", sa.String(100)),
        )
        sa.Table(
            "attachments",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column(
                "application_id", sa.Integer, sa.ForeignKey("applications.id"), nullable=False
            ),
            sa.Column("filename", sa.String(100)),
        )
    return md


def seed(engine: Engine, people: list[dict[str, Any]], children: bool = True) -> None:
    """Create the tables and insert ``people`` (plus 2 applications with 1 attachment each)."""
    md = people_schema(children)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_fk)
        engine.dispose()
    md.create_all(engine)
    defaults = {c.name: None for c in md.tables["people"].c}
    with engine.begin() as conn:
        conn.execute(md.tables["people"].insert(), [defaults | p for p in people])
        if children:
            apps = [
                {"id": p["id"] * 10 + i, "person_id": p["id"], "title": "job"}
                for p in people
                for i in range(2)
            ]
            conn.execute(md.tables["applications"].insert(), apps)
            atts = [{"id": a["id"], "application_id": a["id"], "filename": "cv.pdf"} for a in apps]
            conn.execute(md.tables["attachments"].insert(), atts)


def _sqlite_fk(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def person(pid: int, decided: dt.datetime | None, **extra: Any) -> dict[str, Any]:
    return {
        "id": pid,
        "email": f"person{pid}@example.com",
        "status": "rejected",
        "decided_at": decided,
    } | extra


def ids(engine: Engine, table: str = "people") -> set[int]:
    t = sa.Table(table, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return {row[0] for row in conn.execute(sa.select(t.c.id))}


# ------------------------------------------------------------------------------ activities


def activity(
    *,
    retention: list[dict[str, Any]] | None = None,
    action: dict[str, Any] | None = None,
    children: bool = True,
    safety: dict[str, Any] | None = None,
    table: str = "people",
    lookup: dict[str, str] | None = None,
    activity_id: str = "recruitment",
) -> Activity:
    """A recruitment-like activity: rejected candidates 2 years after the decision; the
    person is looked up by ``lookup`` (default ``{"email": "email"}``)."""
    child_spec = [
        {
            "table": "applications",
            "foreign_key": "person_id",
            "children": [{"table": "attachments", "foreign_key": "application_id"}],
        }
    ]
    return Activity.model_validate(
        {
            "id": activity_id,
            "name": {"sv": "Rekrytering", "en": "Recruitment"},
            "purpose": {"sv": "Rekrytering", "en": "Recruitment"},
            "legal_bases": ["legitimate_interest"],
            "data_subjects": [{"sv": "sökande", "en": "applicants"}],
            "data_categories": [{"sv": "kontaktuppgifter", "en": "contact details"}],
            "policy_text_sv": "Vid ej tillsättning raderas personuppgifter efter två år.",
            "retention": retention
            or [
                {
                    "when": {"column": "status", "equals": "rejected"},
                    "rule": {
                        "kind": "period",
                        "period": "P2Y",
                        "anchor": {"sv": "beslutet", "en": "the hiring decision"},
                    },
                    "anchor_column": "decided_at",
                },
                {
                    "when": {"column": "status", "equals": "hired"},
                    "rule": {
                        "kind": "indefinite",
                        "reason": {"sv": "anställda", "en": "employees are out of scope"},
                    },
                },
            ],
            "action": action or {"kind": "delete"},
            "source": {
                "kind": "sql",
                "system": "ats",
                "conn_id": "ats_db",
                "table": table,
                "primary_key": "id",
                "lookup": {"email": "email"} if lookup is None else lookup,
                "children": child_spec if children else [],
            },
            "safety": safety or {"max_rows": None, "max_fraction": None},
        }
    )


def old(years: int = 3) -> dt.datetime:
    """A decision time that is expired (older than 2 years at AS_OF) when years >= 3."""
    return dt.datetime(AS_OF.year - years, 1, 10, 12, 0)


def recent() -> dt.datetime:
    return dt.datetime(AS_OF.year, 1, 10, 12, 0)


# ------------------------------------------------------------------------------ crash child


def crash_people() -> list[dict[str, Any]]:
    """35 expired rejected candidates among 50 (ids 1..50): 5 batches of 7."""
    return [person(i, old() if i % 10 < 7 else recent()) for i in range(1, 51)]


# Anonymise the candidates: e-mail and city to NULL, k=2 over the city.
ANONYMISE = {
    "kind": "anonymise",
    "marker_column": "anonymised_at",
    "direct_identifiers": ["email"],
    "quasi_identifiers": ["city"],
    "k_anonymity": 2,
    "columns": {"email": {"strategy": "null"}, "city": {"strategy": "null"}},
}


def crash_activity(action: str = "delete") -> Activity:
    return activity() if action == "delete" else activity(action=ANONYMISE, children=False)


CRASH_BATCH = 10


@contextlib.contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database named ``<prefix>_<random>``; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = _admin(PG_ADMIN_URL)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
