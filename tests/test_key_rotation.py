"""Pseudonym key versions: the evidence records which key made each reference; a rotated key
is kept (retained) only for lookups, and active holds must be placed again under the new key."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.retention.__main__ import main
from include.retention.errors import RetentionError
from include.retention.ledger import RunHeader
from include.retention.pseudonym import RecordRefHasher, SubjectRefHasher, key_id, pack_refs
from include.retention.runs import Control

OLD, NEW = secrets.token_hex(24), secrets.token_hex(24)


def _header() -> RunHeader:
    return RunHeader(
        activity_id="crm", system="crm", dataset="contacts", action="delete", rules=["P2Y"],
        as_of="2026-06-15T03:00:00+00:00", cutoffs=[None], dry_run=False,
        catalogue_version="v", code_version="t", approved_by="dpo@corp",
    )  # fmt: skip


def _run(control: Control, pk: int, person: str) -> str:
    ledger = control.ledger
    run_id = ledger.start_run(_header())
    seq = ledger.prepare_batch(
        run_id, "crm", "crm", "contacts", batch_no=1, action="delete",
        refs_blob=pack_refs(RecordRefHasher(control.key, "crm", "contacts").refs([pk])),
        counts={"records": 1},
        subject_refs_blob=pack_refs(SubjectRefHasher(control.key).refs([person])),
    )  # fmt: skip
    ledger.resolve_batch(seq, outcome="committed")
    ledger.finish_run(run_id, "crm", outcome="completed", counts={}, message="ok")
    return run_id


def _connections(monkeypatch: pytest.MonkeyPatch, url: str, *, retain_old: bool) -> None:
    current = {"conn_type": "generic", "password": NEW}
    if retain_old:
        current["extra"] = {"retained": ["retention_pseudonym_key_2025"]}  # type: ignore[assignment]
    monkeypatch.setenv("RETENTION_CONTROL_DB_URL", url)
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_PSEUDONYM_KEY", json.dumps(current))
    monkeypatch.setenv(
        "AIRFLOW_CONN_RETENTION_PSEUDONYM_KEY_2025",
        json.dumps({"conn_type": "generic", "password": OLD}),
    )


def _lookup(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict]:
    assert main(["ledger", "lookup", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_evidence_made_under_both_keys_is_found_while_the_old_key_is_retained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    before = _run(Control.open(sa.create_engine(url), OLD.encode()), 1, "anna@example.se")
    after = _run(Control.open(sa.create_engine(url), NEW.encode()), 2, "anna@example.se")
    ledger = Control.open(sa.create_engine(url), NEW.encode()).ledger
    recorded = [
        e.document["body"]["key_id"] for e in ledger.entries() if e.kind == "batch_prepared"
    ]
    assert recorded == [key_id(OLD.encode()), key_id(NEW.encode())]
    assert key_id(OLD.encode()) != key_id(NEW.encode()) and OLD not in recorded[0]

    _connections(monkeypatch, url, retain_old=True)
    found = _lookup(capsys, "--email", "Anna@Example.se")
    assert [f["run_id"] for f in found] == [before, after]
    found = _lookup(capsys, "--system", "crm", "--dataset", "contacts", "--key", "1")
    assert [f["run_id"] for f in found] == [before]

    # the old key destroyed: what it made can no longer be linked to anyone
    _connections(monkeypatch, url, retain_old=False)
    assert [f["run_id"] for f in _lookup(capsys, "--email", "anna@example.se")] == [after]
    assert _lookup(capsys, "--system", "crm", "--dataset", "contacts", "--key", "1") == []


def test_no_run_starts_while_a_hold_placed_under_the_old_key_is_active(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    old = Control.open(sa.create_engine(url), OLD.encode())
    _run(old, 1, "anna@example.se")
    held = old.holds.place_subject_hold(
        "bo@example.se", kind="legal_hold", reason="case 9", placed_by="legal@corp"
    )
    new = Control.open(sa.create_engine(url), NEW.encode())
    with pytest.raises(RetentionError, match=f"hold-{held}.*older pseudonym key"):
        new.ledger.start_run(_header())

    _connections(monkeypatch, url, retain_old=True)
    assert main(["ledger", "keys"]) == 1
    out = capsys.readouterr().out
    assert f"current key {key_id(NEW.encode())}; retained: {key_id(OLD.encode())}" in out
    assert f"place again under the current key, then release: hold-{held}" in out

    again = new.holds.place_subject_hold(
        "bo@example.se", kind="legal_hold", reason="case 9", placed_by="legal@corp"
    )
    new.holds.release(held, released_by="legal@corp")
    assert new.ledger.start_run(_header())  # the hold now matches what the new key hashes
    assert new.holds.active("crm", "contacts").subjects.keys() == {
        SubjectRefHasher(NEW.encode()).ref("bo@example.se")
    }
    assert main(["ledger", "keys"]) == 0
    out = capsys.readouterr().out
    assert f"retained key {key_id(OLD.encode())}: keep it for lookups until" in out
    assert again != held
