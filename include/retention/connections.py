"""Airflow connections -> what the library needs: the pseudonym key and SQLAlchemy engines.

SQL engines are built through the providers' hooks (PostgresHook, MySqlHook, SqliteHook), and
every driver option in the connection's extras (``sslmode``, certificates, ``charset``, …) is
kept in the URL: a connection that requires TLS never silently falls back to plaintext.
Each engine is probed once, so a refused or unreachable database is reported by its
connection id. Airflow is imported lazily inside the functions, so the library (and its
tests) work without it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from include.retention.errors import RetentionError, Unavailable
from include.retention.pseudonym import KeyRing, check_key

PSEUDONYM_KEY_CONN_ID = "retention_pseudonym_key"
CONTROL_DB_CONN_ID = "retention_control_db"
CONTROL_DB_ENV = "RETENTION_CONTROL_DB_URL"
DSR_CONTROL_DB_CONN_ID = "retention_dsr_control_db"  # the data-subject-request DAGs' role

PYMYSQL_SSL_KEYS = ("ca", "cert", "key", "capath", "cipher", "check_hostname")
# Hook-level extras that are not driver options (the hooks drop them from their connect args).
MYSQL_HOOK_EXTRAS = frozenset({"client", "cursor", "iam", "aws_conn_id", "local_infile"})
_TLS_WORDS = ("ssl", "tls", "certificate")


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


def pseudonym_keyring(conn_id: str = PSEUDONYM_KEY_CONN_ID) -> KeyRing:
    """The current key (``conn_id``'s password) and the retained older versions: the
    connections named in its extra ``{"retained": ["retention_pseudonym_key_2025", …]}``."""
    retained = _get_connection(conn_id).extra_dejson.get("retained") or []
    if not isinstance(retained, list) or not all(isinstance(c, str) for c in retained):
        raise RetentionError(
            f"Airflow connection {conn_id!r}: extra 'retained' must be a list of connection ids"
        )
    return KeyRing(pseudonym_key(conn_id), tuple(pseudonym_key(c) for c in retained))


# ------------------------------------------------------------------------------ URLs via hooks


def _postgres_url(conn_id: str) -> sa.URL:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=conn_id)
    extras = hook.connection.extra_dejson
    # The hook's URL keeps only ``sqlalchemy_query``; its get_conn() passes every other extra
    # to libpq. Keep them here too (sslmode, sslrootcert, sslcert, sslkey, connect_timeout…).
    options = {
        k: str(v) for k, v in extras.items() if k not in hook.ignored_extra_options and v != ""
    }
    return hook.sqlalchemy_url.update_query_dict(options)


def _mysql_url(conn_id: str) -> sa.URL:
    from airflow.providers.mysql.hooks.mysql import MySqlHook

    hook = MySqlHook(mysql_conn_id=conn_id)
    extras = dict(hook.connection.extra_dejson)
    url = sa.make_url(hook.get_uri()).set(drivername="mysql+pymysql")
    query = {k: v for k, v in url.query.items() if k not in MYSQL_HOOK_EXTRAS and k != "ssl"}
    ssl = extras.get("ssl")
    if isinstance(ssl, str) and ssl:
        ssl = json.loads(ssl)
    if isinstance(ssl, dict):
        unknown = sorted(set(ssl) - set(PYMYSQL_SSL_KEYS))
        if unknown:
            raise RetentionError(
                f"connection {conn_id!r}: extra ssl keys {unknown} are not supported"
                f" (supported: {', '.join(PYMYSQL_SSL_KEYS)})"
            )
        query |= {f"ssl_{k}": str(v).lower() if isinstance(v, bool) else str(v)
                  for k, v in ssl.items()}  # fmt: skip
    if "ssl_mode" in query and str(query["ssl_mode"]).upper() not in ("", "DISABLED"):
        raise RetentionError(
            f"connection {conn_id!r}: extra ssl_mode is not understood by the PyMySQL driver;"
            " give the certificates in extra 'ssl' ({\"ca\": …}) to require TLS"
        )
    query.pop("ssl_mode", None)
    return url.set(query=query)


def _sqlite_url(conn_id: str) -> sa.URL:
    from airflow.providers.sqlite.hooks.sqlite import SqliteHook

    url = sa.make_url(SqliteHook(sqlite_conn_id=conn_id).get_uri())
    if not Path(url.database or "").is_file():
        # SQLite would silently create an empty database: a misconfigured path must fail.
        raise RetentionError(
            f"connection {conn_id!r}: SQLite database file {url.database!r} does not exist"
        )
    return url


_URL_BUILDERS = {
    "postgres": _postgres_url,
    "postgresql": _postgres_url,
    "mysql": _mysql_url,
    "mariadb": _mysql_url,
    "sqlite": _sqlite_url,
}


def url_for(conn_id: str) -> sa.URL:
    """The SQLAlchemy URL of the Airflow connection ``conn_id``, built by its provider's hook
    (postgres, mysql/mariadb or sqlite), with the driver options from its extras."""
    conn_type = (_get_connection(conn_id).conn_type or "").lower()
    builder = _URL_BUILDERS.get(conn_type)
    if builder is None:
        raise RetentionError(
            f"connection {conn_id!r}: type {conn_type!r} is not a supported SQL source"
            f" (supported: {', '.join(sorted(_URL_BUILDERS))})"
        )
    try:
        return builder(conn_id)
    except RetentionError:
        raise
    except Exception as exc:  # the hooks raise ValueError/TypeError on bad extras
        raise RetentionError(f"connection {conn_id!r}: {type(exc).__name__}: {exc}") from None


# ------------------------------------------------------------------------------ engines


def describe_failure(label: str, exc: BaseException) -> RetentionError:
    """A named error for a driver's connection failure: a refused TLS requirement is a
    configuration problem (no retry); anything else is transient (:class:`Unavailable`)."""
    orig = getattr(exc, "orig", None) or exc
    reason = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    if any(word in reason.lower() for word in _TLS_WORDS):
        return RetentionError(
            f"{label}: the connection requires TLS but it could not be established ({reason});"
            " fix the server's TLS set-up or the connection's extras"
        )
    return Unavailable(
        f"{label} is unreachable ({type(orig).__name__}: {reason}); the task is retried —"
        " check that the server is up and the connection's host, port and credentials"
    )


def _label(conn_id: str | None, url: sa.URL) -> str:
    where = url.render_as_string(hide_password=True)
    return f"database of connection {conn_id!r} ({where})" if conn_id else f"database {where}"


def make_engine(url: sa.URL | str, conn_id: str | None = None, **kwargs: Any) -> Engine:
    """An engine whose connection failures name the database; probed once."""
    engine = sa.create_engine(url, pool_pre_ping=True, hide_parameters=True, **kwargs)
    label = _label(conn_id, engine.url)

    @sa.event.listens_for(engine, "handle_error")
    def _name_the_database(context: Any) -> None:
        exc = context.sqlalchemy_exception
        if exc is not None:
            exc.retention_database = label  # read by `database_fault`

    if engine.dialect.name in ("mysql", "mariadb") and any(
        k.startswith("ssl_") for k in engine.url.query
    ):
        sa.event.listen(engine, "connect", _tls_required(label))

    try:
        with engine.connect():
            pass
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        engine.dispose()
        raise describe_failure(label, exc) from None
    except OSError as exc:  # e.g. a certificate file named in the extras is missing
        engine.dispose()
        raise RetentionError(f"{label}: {exc}") from None
    return engine


def _tls_required(label: str) -> Any:
    """A connect hook: PyMySQL silently stays in plaintext when the server offers no TLS, even
    with certificates given; refuse such a connection instead."""

    def check(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            row = cursor.fetchone()
        finally:
            cursor.close()
        if not row or not row[1]:
            dbapi_connection.close()
            raise RetentionError(
                f"{label}: the connection requires TLS (extra 'ssl') but the server did not"
                " establish it; fix the server's TLS set-up or the connection's extras"
            )

    return check


def database_fault(exc: BaseException) -> RetentionError | None:
    """The named error for a connection failure of an engine made by :func:`make_engine`."""
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return describe_failure(getattr(exc, "retention_database", "a database"), exc)
    return None


def source_engine(conn_id: str) -> Engine:
    """An engine for the SQL source behind the Airflow connection ``conn_id``."""
    return make_engine(url_for(conn_id), conn_id)


def control_url(default_dir: Path | None = None) -> str:
    """The control database (ledger + holds): $RETENTION_CONTROL_DB_URL, else the Airflow
    connection ``retention_control_db``, else a SQLite file under $AIRFLOW_HOME."""
    url = os.environ.get(CONTROL_DB_ENV)
    if not url:
        try:
            url = url_for(CONTROL_DB_CONN_ID).render_as_string(hide_password=False)
        except RetentionError as exc:
            if "is not defined" not in str(exc):
                raise
            base = default_dir or Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
            url = f"sqlite:///{base / 'retention_control.db'}"
    # Airflow's metadata-DB setting is deliberately not read here: in a real task process it
    # is the placeholder "airflow-db-not-allowed:///" (tasks have no metadata-DB access).
    # `python -m include.retention check` compares the two on the deployment side.
    return url


def control_engine(url: str | None = None) -> Engine:
    conn_id = None if url or os.environ.get(CONTROL_DB_ENV) else CONTROL_DB_CONN_ID
    return make_engine(url or control_url(), conn_id)


def dsr_control_engine() -> Engine:
    """The control database as the data-subject-request DAGs' role (they place holds and write
    the request register): the Airflow connection ``retention_dsr_control_db``, else the one
    the retention workers use."""
    try:
        url = url_for(DSR_CONTROL_DB_CONN_ID)
    except RetentionError as exc:
        if "is not defined" not in str(exc):
            raise
        return control_engine()
    return make_engine(url, DSR_CONTROL_DB_CONN_ID)
