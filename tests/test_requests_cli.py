"""``python -m include.retention requests``: list, extend, status, notified."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import secrets

import pytest
import sqlalchemy as sa

from include.retention.__main__ import main
from include.retention.identifiers import normalise
from include.retention.runs import Control
from include.retention.subject_requests import RequestRegister


@pytest.fixture(name="cli")
def cli_fixture(tmp_path, monkeypatch):
    key = secrets.token_urlsafe(32)
    url = f"sqlite:///{tmp_path / 'control.db'}"
    monkeypatch.setenv("RETENTION_CONTROL_DB_URL", url)
    monkeypatch.setenv(
        "AIRFLOW_CONN_RETENTION_PSEUDONYM_KEY",
        json.dumps({"conn_type": "generic", "password": key}),
    )
    register = RequestRegister(Control.open(url, key.encode()).ledger.engine, key.encode())
    register.create_tables()

    def run(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["requests", *args])
            except SystemExit as exc:
                code = int(exc.code or 0)
        return code, out.getvalue(), err.getvalue()

    run.register = register  # type: ignore[attr-defined]
    return run


def test_list_extend_close_and_notify(cli) -> None:
    now = dt.datetime.now(dt.UTC)
    request = cli.register.receive(
        "erasure", [normalise("email", "anna@example.se")], filed_by="dpo.anna", received_at=now
    )
    code, out, _ = cli("list")
    assert code == 0 and "DSR-1" in out and "erasure" in out and "Art. 17" in out
    assert "anna@" not in out

    code, out, err = cli("extend", "DSR-1", "--months", "2", "--reason", "12 systems", "--by", "x")
    assert code == 0, err
    assert f"now due {cli.register.get(request.id).due_on}" in out
    assert cli.register.get(request.id).extended_months == 2
    code, _, err = cli("extend", "1", "--months", "1", "--reason", "more", "--by", "x")
    assert code == 2 and "at most 2 more months" in err

    assert cli("notified", "DSR-1", "--recipient", "Mailchimp", "--by", "x")[0] == 0
    code, out, _ = cli(
        "status", "DSR-1", "refused", "--by", "x", "--reason-code", "manifestly_unfounded"
    )
    assert code == 0 and "DSR-1 is now refused" in out
    assert cli("list")[1].strip() == "no open requests"
    listed = json.loads(cli("list", "--all", "--json")[1])
    assert listed[0]["status"] == "refused" and listed[0]["extended_months"] == 2


@pytest.mark.parametrize(
    "args",
    [
        ("extend", "DSR-x", "--months", "1", "--reason", "r", "--by", "b"),
        ("extend", "1", "--months", "3", "--reason", "r", "--by", "b"),
        ("status", "1", "completed", "--by", "b", "--reason-code", "anna@example.se"),
    ],
)
def test_bad_arguments_are_refused(cli, args) -> None:
    code, _, err = cli(*args)
    assert code == 2 and "error" in err


def test_recipients_lists_who_must_be_told_and_who_was(cli) -> None:
    now = dt.datetime.now(dt.UTC)
    request = cli.register.receive(
        "erasure", [normalise("email", "anna@example.se")], filed_by="dpo.anna", received_at=now
    )
    agency = {"sv": "rekryteringsbyrå", "en": "recruitment agency"}
    outcome = {"steps": {"erase": {"recipients_to_notify": [agency]}}, "failed_steps": []}
    cli.register.set_status(request.id, "completed", by="airflow", outcome=outcome)
    code, out, _ = cli("recipients", "DSR-1")
    assert code == 0 and "recruitment agency (rekryteringsbyrå): NOT TOLD YET" in out
    assert cli("notified", "DSR-1", "--recipient", "recruitment agency", "--by", "dpo.anna")[0] == 0
    code, out, _ = cli("recipients", "1")
    assert code == 0 and "NOT TOLD" not in out and "by dpo.anna" in out
    assert [e.kind for e in cli.register.events(request.id)][-1] == "dsr_recipient_notified"


def test_reapply_refuses_a_system_the_catalogue_does_not_have(cli) -> None:
    code, _, err = cli("reapply", "--system", "nowhere", "--by", "ops.olle")
    assert code == 2 and "choose one of" in err and "crm" in err and "Nothing was changed" in err
    assert cli.register.requests() == []


def test_reapply_erases_a_restored_persons_record_again(cli, tmp_path, monkeypatch) -> None:
    from include.demo.databases import airflow_connection
    from include.demo.seed import seed_sql

    url = f"sqlite:///{tmp_path / 'newsletter.sqlite'}"
    manifest = seed_sql(dt.datetime(2026, 11, 24, tzinfo=dt.UTC), {"newsletter": url})
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_NEWSLETTER", airflow_connection(url))
    entry = next(e for e in manifest.for_activity("newsletter") if e.hold is None and not e.due)
    request = cli.register.receive(
        "erasure", [normalise("email", entry.subject)], filed_by="dpo", received_at=None
    )
    cli.register.set_status(request.id, "completed", by="airflow")  # (its row: "restored")

    code, out, err = cli("reapply", "--system", "newsletter", "--by", "ops.olle")
    assert code == 0, err
    assert "newsletter: 1 recorded erasure(s)" in out and "1 record(s) erased" in out
    assert entry.subject not in out
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        pks = set(conn.execute(sa.text("SELECT id FROM recipients")).scalars())
    engine.dispose()
    assert entry.pk not in pks and len(pks) == len(manifest.for_activity("newsletter")) - 1
    code, out, _ = cli("reapply", "--system", "newsletter", "--by", "ops.olle")
    assert code == 0 and "0 record(s) erased" in out  # idempotent
