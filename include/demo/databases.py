"""Where the demo's source systems and control database live.

Two layouts, chosen by ``make demo DB=…``:

- ``sqlite`` (the embedded default): one SQLite file per system under ``var/demo/``, the
  control database in ``var/control.db``.
- ``postgres`` (real databases): the systems a business keeps in its ERP/CRM estate on
  PostgreSQL, the web-facing ones (LAMP-style CMS, newsletter, LMS, support desk, chat,
  demo platform) on MariaDB, one database per system; the control database on PostgreSQL.
  The servers are ``$RETENTION_DEMO_PG_URL`` and ``$RETENTION_DEMO_MARIADB_URL`` (defaults:
  the local ``postgres`` and ``root`` accounts). Each checkout (state directory) gets its own
  databases, ``rdemo_<8 hex>_<system>``, so two checkouts never share data.

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


def _database_url(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise RetentionError(f"demo database name {name!r}: lower-case letters, digits and _")
    return server_url(kind).set(database=name).render_as_string(hide_password=False)


def source_urls(prefix: str, placement: Mapping[str, str] = PLACEMENT) -> dict[str, str]:
    """One database per demo system on its server (``placement``: system -> server kind)."""
    missing = sorted(set(SYSTEMS) - set(placement))
    if missing:
        raise RetentionError(f"no server placed for demo system(s) {missing}")
    return {system: _database_url(placement[system], f"{prefix}_{system}") for system in SYSTEMS}


def control_url(prefix: str) -> str:
    return _database_url("postgresql", f"{prefix}_{CONTROL}")


def _admin(url: sa.URL) -> sa.Engine:
    kind = "postgresql" if url.get_backend_name() == "postgresql" else "mariadb"
    admin = server_url(kind).set(database="postgres" if kind == "postgresql" else None)
    return sa.create_engine(admin, isolation_level="AUTOCOMMIT")


def _each_database(urls: Iterable[str], create: bool) -> None:
    for raw in urls:
        url = sa.make_url(raw)
        if url.get_backend_name() == "sqlite":
            continue
        name = url.database or ""
        if not _NAME.fullmatch(name):
            raise RetentionError(f"demo database name {name!r}: lower-case letters, digits and _")
        admin = _admin(url)
        postgres = url.get_backend_name() == "postgresql"
        quoted = f'"{name}"' if postgres else f"`{name}`"  # checked against _NAME above
        try:
            with admin.connect() as conn:
                force = " WITH (FORCE)" if postgres else ""
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}{force}")
                if create:
                    conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
        except sa.exc.OperationalError as exc:
            where = url.set(database=None).render_as_string(hide_password=True)
            raise RetentionError(
                f"the demo's databases live on {where}, which does not answer: start the"
                f" server, or set {PG_ENV}/{MARIADB_ENV} ({type(exc).__name__})"
            ) from None
        finally:
            admin.dispose()


def recreate_databases(urls: Iterable[str]) -> None:
    """Fresh, empty databases (dropped first if they exist); SQLite URLs are left alone."""
    _each_database(urls, create=True)


def drop_databases(urls: Iterable[str]) -> None:
    _each_database(urls, create=False)


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
        "schema": parsed.database,
    }
    return json.dumps({k: v for k, v in fields.items() if v is not None})
