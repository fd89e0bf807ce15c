"""Airflow connections -> keys and engines, built through the providers' hooks: the extras
(TLS, charset) reach the driver, and a failing database is named."""

from __future__ import annotations

import json
import secrets
import socket
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.retention import connections
from include.retention.errors import RetentionError, Unavailable
from tests.dbs import MARIADB_ADMIN_URL, PG_ADMIN_URL


def _define(monkeypatch: pytest.MonkeyPatch, conn_id: str, **conn: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def _server(url: str, conn_type: str, **extra: object) -> dict[str, object]:
    parsed = sa.make_url(url)
    return {
        "conn_type": conn_type, "host": parsed.host, "port": parsed.port,
        "login": parsed.username, "schema": parsed.database, "extra": extra,
    }  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_key_and_sqlite_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = secrets.token_hex(16)
    _define(monkeypatch, "retention_pseudonym_key", conn_type="generic", password=secret)
    _define(monkeypatch, "ats_db", conn_type="sqlite", host=str(tmp_path / "src.db"))
    assert connections.pseudonym_key() == secret.encode()
    with pytest.raises(RetentionError, match=r"SQLite database file .*src\.db' does not exist"):
        connections.source_engine("ats_db")
    (tmp_path / "src.db").touch()
    with connections.source_engine("ats_db").connect() as conn:
        assert conn.dialect.name == "sqlite"
    with pytest.raises(RetentionError, match="'nope' is not defined"):
        connections.pseudonym_key("nope")
    _define(monkeypatch, "mssql_db", conn_type="mssql", host="db")
    with pytest.raises(RetentionError, match="'mssql_db': type 'mssql' is not a supported"):
        connections.url_for("mssql_db")


def test_postgres_url_keeps_the_driver_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem", "cursor": "dictcursor"}
    _define(
        monkeypatch, "crm", conn_type="postgres", host="db", port=5432, login="u", password="p",
        schema="crm", extra=extra,
    )  # fmt: skip
    url = connections.url_for("crm")
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.username, url.password, url.database) == (
        "db", 5432, "u", "p", "crm",
    )  # fmt: skip
    assert dict(url.query) == {"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem"}


def test_mysql_url_keeps_charset_and_certificates(monkeypatch: pytest.MonkeyPatch) -> None:
    ssl = {"ca": "/etc/ca.pem", "check_hostname": False}
    _define(
        monkeypatch, "shop", conn_type="mysql", host="db", login="u", schema="shop",
        extra={"charset": "utf8mb4", "ssl": ssl, "client": "mysqlclient"},
    )  # fmt: skip
    url = connections.url_for("shop")
    assert url.drivername == "mysql+pymysql"
    assert dict(url.query) == {
        "charset": "utf8mb4", "ssl_ca": "/etc/ca.pem", "ssl_check_hostname": "false",
    }  # fmt: skip
    _define(monkeypatch, "shop2", conn_type="mysql", host="db", extra={"ssl_mode": "REQUIRED"})
    with pytest.raises(RetentionError, match="'shop2': extra ssl_mode is not understood"):
        connections.url_for("shop2")


def test_required_tls_against_a_plaintext_server_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The local PostgreSQL has no TLS: a connection requiring it must not fall back silently.
    _define(monkeypatch, "crm_tls", **_server(PG_ADMIN_URL, "postgres", sslmode="require"))
    with pytest.raises(RetentionError) as refused:
        connections.source_engine("crm_tls")
    assert not isinstance(refused.value, Unavailable)  # configuration: not retried
    assert "'crm_tls'" in str(refused.value) and "requires TLS" in str(refused.value)
    _define(monkeypatch, "crm_plain", **_server(PG_ADMIN_URL, "postgres", sslmode="disable"))
    with connections.source_engine("crm_plain").connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1


def test_mariadb_with_certificates_is_refused_when_the_server_stays_plaintext(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PyMySQL would fall back to plaintext when the server offers no TLS (the local one).
    ssl = {"ca": "/etc/ssl/certs/ca-certificates.crt", "check_hostname": False}
    _define(monkeypatch, "shop_tls", **_server(MARIADB_ADMIN_URL, "mysql", ssl=ssl))
    with pytest.raises(RetentionError) as refused:
        connections.source_engine("shop_tls")
    assert not isinstance(refused.value, Unavailable)
    assert "'shop_tls'" in str(refused.value) and "requires TLS" in str(refused.value)


def test_mariadb_connection_with_charset(monkeypatch: pytest.MonkeyPatch) -> None:
    _define(monkeypatch, "shop_db", **_server(MARIADB_ADMIN_URL, "mysql", charset="utf8mb4"))
    with connections.source_engine("shop_db").connect() as conn:
        charset = conn.exec_driver_sql("SELECT @@character_set_client").scalar()
    assert charset == "utf8mb4"


def test_unreachable_database_is_named_and_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    server = _server(PG_ADMIN_URL, "postgres") | {"port": _free_port()}
    _define(monkeypatch, "crm_down", **server)
    with pytest.raises(Unavailable, match=r"database of connection 'crm_down' .* is unreachable"):
        connections.source_engine("crm_down")


def test_a_connection_lost_mid_run_is_named() -> None:
    engine = connections.make_engine(PG_ADMIN_URL, "retention_control_db")
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with pytest.raises(sa.exc.OperationalError) as raised, engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with admin.connect() as killer:  # the server drops the session, as a restart would
            killer.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        conn.exec_driver_sql("SELECT 1")
    admin.dispose()
    fault = connections.database_fault(raised.value)
    assert isinstance(fault, Unavailable)
    assert "database of connection 'retention_control_db'" in str(fault)
    assert connections.database_fault(ValueError("not a database fault")) is None


def test_control_url_ignores_airflows_metadata_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    control_url = f"sqlite:///{tmp_path / 'control.db'}"
    monkeypatch.setenv("RETENTION_CONTROL_DB_URL", control_url)
    # A real task process sets this placeholder; the control URL must not depend on it.
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "airflow-db-not-allowed:///")
    assert connections.control_url() == control_url
    monkeypatch.delenv("RETENTION_CONTROL_DB_URL")
    _define(monkeypatch, "retention_control_db", **_server(PG_ADMIN_URL, "postgres"))
    assert connections.control_url().startswith("postgresql+psycopg://postgres@127.0.0.1")


def test_task_retry_policy_fails_bad_input_at_once_and_retries_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from botocore.exceptions import EndpointConnectionError

    from include.retention.dag_factory import run_step

    def bad_input() -> None:
        raise RetentionError("as_of 'x' is not an ISO-8601 date")

    with pytest.raises(AirflowFailException, match="as_of 'x'"):
        run_step(bad_input)
    server = _server(PG_ADMIN_URL, "postgres") | {"port": _free_port()}
    _define(monkeypatch, "crm_gone", **server)
    with pytest.raises(Unavailable, match="'crm_gone'"):  # not AirflowFailException: retried
        run_step(connections.source_engine, "crm_gone")

    def storage_down() -> None:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/")

    with pytest.raises(Unavailable, match=r"object storage at http://127.0.0.1:9/ is unreachable"):
        run_step(storage_down)
