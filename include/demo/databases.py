"""Where the demo's source systems and control database live.

Two layouts, chosen by ``make demo DB=…``:

- ``sqlite`` (the embedded default): one SQLite file per system under ``var/demo/``, the
  control database in ``var/control.db``.
- ``postgres`` (real databases): the systems a business keeps in its ERP/CRM estate on
  PostgreSQL, the web-facing ones (LAMP-style CMS, newsletter, LMS, support desk, chat,
  demo platform) on MariaDB; the control database on PostgreSQL. The servers are
  ``$RETENTION_DEMO_PG_URL`` and ``$RETENTION_DEMO_MARIADB_URL`` (defaults: the local
  ``postgres`` and ``root`` accounts). Each checkout (state directory) gets its own: on
  PostgreSQL the database ``rdemo_<8 hex>`` with one schema per system and ``control`` (a
  schema is cheap to recreate; a database costs a checkpoint), on MariaDB one database
  ``rdemo_<8 hex>_<system>`` per system. Two checkouts never share data.

The Airflow connections of both layouts are built here, so the DAGs reach the sources
exactly as they would in production: through ``postgres``, ``mysql`` or ``sqlite``
connections and their providers' hooks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import sqlalchemy as sa

from include.demo.schema import SYSTEMS
from include.retention.errors import RetentionError

LAYOUTS = ("sqlite", "postgres")
PG_ENV, MARIADB_ENV = "RETENTION_DEMO_PG_URL", "RETENTION_DEMO_MARIADB_URL"
DEFAULT_SERVERS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/",
}
# System -> the server it lives on in the ``postgres`` layout.
PLACEMENT: dict[str, str] = {
    "ats": "postgresql",
    "accounting": "postgresql",
    "contracts": "postgresql",
    "crm": "postgresql",
    "access_control": "postgresql",
    "booking": "postgresql",
    "product_analytics": "postgresql",
    "support_desk": "mariadb",
    "newsletter": "mariadb",
    "learning": "mariadb",
    "cms": "mariadb",
    "chatbot": "mariadb",
    "demo_platform": "mariadb",
}
CONTROL = "control"  # the control database's name suffix (on PostgreSQL)
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_CONN_TYPES = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise RetentionError(f"DB={layout!r} is not a demo layout; use one of {', '.join(LAYOUTS)}")
    return layout


def prefix_for(state_dir: Path) -> str:
    """The database-name prefix of one state directory (checkout or test)."""
    return "rdemo_" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]


def server_url(kind: str) -> sa.URL:
    """The admin URL of the ``postgresql`` or ``mariadb`` server."""
    env = PG_ENV if kind == "postgresql" else MARIADB_ENV
    return sa.make_url(os.environ.get(env) or DEFAULT_SERVERS[kind])


def _checked(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise RetentionError(f"demo database name {name!r}: lower-case letters, digits and _")
    return name


def _database_url(kind: str, prefix: str, system: str) -> str:
    """PostgreSQL: the schema ``system`` of the database ``prefix``; MariaDB: the database
    ``<prefix>_<system>``."""
    server = server_url(kind)
    if kind == "postgresql":
        url = server.set(database=_checked(prefix)).update_query_dict(
            {"options": f"-csearch_path={_checked(system)}"}
        )
    else:
        url = server.set(database=_checked(f"{prefix}_{system}"))
    return url.render_as_string(hide_password=False)


def source_urls(prefix: str, placement: Mapping[str, str] = PLACEMENT) -> dict[str, str]:
    """Where each demo system lives on its server (``placement``: system -> server kind)."""
    missing = sorted(set(SYSTEMS) - set(placement))
    if missing:
        raise RetentionError(f"no server placed for demo system(s) {missing}")
    return {system: _database_url(placement[system], prefix, system) for system in SYSTEMS}


def control_url(prefix: str) -> str:
    return _database_url("postgresql", prefix, CONTROL)


def _pg_schema(url: sa.URL) -> str | None:
    options = str(url.query.get("options", ""))
    return options.removeprefix("-csearch_path=") if options.startswith("-csearch_path=") else None


def _admin(kind: str, database: str | None = None) -> sa.Engine:
    default = "postgres" if kind == "postgresql" else None
    admin = server_url(kind).set(database=database or default)
    return sa.create_engine(admin, isolation_level="AUTOCOMMIT")


def _run(kind: str, statements: list[str], database: str | None = None) -> None:
    """Run DDL (names checked against ``_NAME`` and quoted) as the server's admin, in
    ``database`` (default: the server's admin database)."""
    if not statements:
        return
    engine = _admin(kind, database)
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    except sa.exc.OperationalError as exc:
        where = server_url(kind).set(database=None).render_as_string(hide_password=True)
        raise RetentionError(
            f"the demo's databases live on {where}, which does not answer: start the server,"
            f" or set {PG_ENV}/{MARIADB_ENV} ({type(exc).__name__})"
        ) from None
    finally:
        engine.dispose()


def _split(urls: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
    """PostgreSQL schemas by database, and MariaDB databases (SQLite URLs are left out)."""
    schemas: dict[str, list[str]] = {}
    mariadb: list[str] = []
    for raw in urls:
        url = sa.make_url(raw)
        if url.get_backend_name() == "postgresql":
            schema = _pg_schema(url)
            if schema is None:
                raise RetentionError(f"{url.render_as_string()}: no schema (search_path) given")
            schemas.setdefault(_checked(url.database or ""), []).append(_checked(schema))
        elif url.get_backend_name() != "sqlite":
            mariadb.append(_checked(url.database or ""))
    return schemas, mariadb


def _fresh(drop: str, create: str, names: list[str]) -> list[str]:
    return [statement for name in names for statement in (drop % name, create % name)]


def recreate_databases(urls: Iterable[str]) -> None:
    """Fresh, empty schemas (PostgreSQL; the database is created if missing) and databases
    (MariaDB), dropped first if they exist; SQLite URLs are left alone."""
    schemas, mariadb = _split(urls)
    for database, names in schemas.items():
        if not _pg_database_exists(database):
            _run("postgresql", [f'CREATE DATABASE "{database}"'])
        fresh = _fresh('DROP SCHEMA IF EXISTS "%s" CASCADE', 'CREATE SCHEMA "%s"', names)
        _run("postgresql", fresh, database)
    _run("mariadb", _fresh("DROP DATABASE IF EXISTS `%s`", "CREATE DATABASE `%s`", mariadb))


def drop_databases(urls: Iterable[str]) -> None:
    """Drop what :func:`recreate_databases` made: MariaDB's databases, and the PostgreSQL
    databases holding the schemas (a demo database holds nothing else)."""
    schemas, mariadb = _split(urls)
    _run("postgresql", [f'DROP DATABASE IF EXISTS "{d}" WITH (FORCE)' for d in schemas])
    _run("mariadb", [f"DROP DATABASE IF EXISTS `{n}`" for n in mariadb])


def _pg_database_exists(name: str) -> bool:
    engine = _admin("postgresql")
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT 1 FROM pg_database WHERE datname = :name")
            return conn.execute(query, {"name": name}).first() is not None
    except sa.exc.OperationalError:
        return False  # reported by the CREATE DATABASE that follows
    finally:
        engine.dispose()


def airflow_connection(url: str) -> str:
    """The Airflow connection (JSON, for ``AIRFLOW_CONN_…``) reaching the database at ``url``."""
    parsed = sa.make_url(url)
    conn_type = _CONN_TYPES[parsed.get_backend_name()]
    if conn_type == "sqlite":
        return json.dumps({"conn_type": "sqlite", "host": parsed.database})
    fields = {
        "conn_type": conn_type,
        "host": parsed.host,
        "port": parsed.port or (5432 if conn_type == "postgres" else 3306),
        "login": parsed.username,
        "password": parsed.password,
        "schema": parsed.database,  # Airflow's name for the database
        "extra": {k: str(v) for k, v in parsed.query.items()} or None,  # e.g. the search_path
    }
    return json.dumps({k: v for k, v in fields.items() if v is not None})
