"""Airflow connections -> what the library needs: the pseudonym key and SQLAlchemy engines.

Airflow is imported lazily inside the functions, so the library (and its tests) work without
it; everything else in the package takes keys as bytes and engines/URLs directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from include.retention.errors import RetentionError
from include.retention.pseudonym import check_key

PSEUDONYM_KEY_CONN_ID = "retention_pseudonym_key"
CONTROL_DB_CONN_ID = "retention_control_db"
CONTROL_DB_ENV = "RETENTION_CONTROL_DB_URL"

_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
}


def _get_connection(conn_id: str) -> Any:
    from airflow.sdk import BaseHook  # lazy: the library must import without Airflow

    try:
        return BaseHook.get_connection(conn_id)
    except Exception as exc:  # AirflowNotFoundException and friends
        raise RetentionError(f"Airflow connection {conn_id!r} is not defined: {exc}") from None


def pseudonym_key(conn_id: str = PSEUDONYM_KEY_CONN_ID) -> bytes:
    """The secret HMAC key: the password of the Airflow connection ``conn_id``."""
    password = _get_connection(conn_id).password
    if not password:
        raise RetentionError(f"Airflow connection {conn_id!r} has no password (the pseudonym key)")
    return check_key(password.encode("utf-8"))


def url_for(conn: Any) -> sa.URL:
    """A SQLAlchemy URL for an Airflow connection (postgres, mysql/mariadb or sqlite)."""
    conn_type = (conn.conn_type or "").lower()
    if conn_type == "sqlite":
        return sa.make_url(f"sqlite:///{conn.host or conn.schema}")
    driver = _DRIVERS.get(conn_type)
    if driver is None:
        raise RetentionError(
            f"connection {conn.conn_id!r}: type {conn_type!r} is not a supported SQL source"
            f" (supported: {', '.join(sorted(_DRIVERS))}, sqlite)"
        )
    return sa.URL.create(
        driver,
        username=conn.login or None,
        password=conn.password or None,
        host=conn.host or None,
        port=conn.port or None,
        database=conn.schema or None,
    )


def source_engine(conn_id: str) -> Engine:
    """An engine for the SQL source behind the Airflow connection ``conn_id``."""
    url = url_for(_get_connection(conn_id))
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        # SQLite would silently create an empty database: a misconfigured path must fail.
        raise RetentionError(
            f"connection {conn_id!r}: SQLite database file {url.database!r} does not exist"
        )
    return sa.create_engine(url, pool_pre_ping=True)


def control_url(default_dir: Path | None = None) -> str:
    """The control database (ledger + holds): $RETENTION_CONTROL_DB_URL, else the Airflow
    connection ``retention_control_db``, else a SQLite file under $AIRFLOW_HOME."""
    url = os.environ.get(CONTROL_DB_ENV)
    if not url:
        try:
            url = url_for(_get_connection(CONTROL_DB_CONN_ID)).render_as_string(hide_password=False)
        except RetentionError:
            base = default_dir or Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
            url = f"sqlite:///{base / 'retention_control.db'}"
    # Airflow's metadata-DB setting is deliberately not read here: in a real task process it
    # is the placeholder "airflow-db-not-allowed:///" (tasks have no metadata-DB access).
    return url


def control_engine(url: str | None = None) -> Engine:
    return sa.create_engine(url or control_url(), pool_pre_ping=True, hide_parameters=True)
