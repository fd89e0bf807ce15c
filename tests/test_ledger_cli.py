"""``python -m include.retention ledger verify|lookup|export`` against real ledgers."""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.retention.__main__ import main
from include.retention.ledger import Ledger, RunHeader, ledger_table
from include.retention.pseudonym import RecordRefHasher, pack_refs, subject_ref
from tests.dbs import create_db

ROOT = Path(__file__).resolve().parents[1]
ANNA = {"email": "anna.berg@example.se", "phone": "+46701234567", "personnummer": "191212121212"}


@dataclass
class Setup:
    url: str
    ledger: Ledger
    env: dict[str, str]
    runs: list[str]


def _run(ledger: Ledger, activity: str, rows: dict[int, list[str]], **kw: object) -> str:
    """One run whose single batch covers records ``rows`` (pk -> the subject's identifiers)."""
    header = {
        "activity_id": activity, "system": "crm", "dataset": "contacts", "action": "delete",
        "rules": ["P2Y after the contract ended"], "as_of": "2026-06-15T03:00:00+00:00",
        "cutoffs": [None], "dry_run": False, "catalogue_version": "v1", "code_version": "t",
        "approved_by": "dpo@corp", "origin": {"dag_id": f"retention_{activity}", "run_id": "m1"},
    } | kw  # fmt: skip
    run_id = ledger.start_run(RunHeader(**header))  # type: ignore[arg-type]
    records = RecordRefHasher(ledger._key, "crm", "contacts")
    subjects = [subject_ref(ledger._key, i) for ids in rows.values() for i in ids]
    seq = ledger.prepare_batch(
        run_id, activity, "crm", "contacts", batch_no=1, action=str(header["action"]),
        refs_blob=pack_refs(records.refs(rows)), counts={"records": len(rows)},
        subject_refs_blob=pack_refs(subjects),
    )  # fmt: skip
    ledger.resolve_batch(seq, outcome="committed")
    ledger.finish_run(
        run_id, activity, outcome="completed", counts={"applied": len(rows)}, message="ok"
    )
    return run_id


@pytest.fixture(params=["sqlite", "postgresql"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    db, cleanup = create_db(request.param, tmp_path)
    key = secrets.token_hex(24)
    ledger = Ledger(db.engine, key.encode())
    ledger.create_tables()
    runs = [
        _run(ledger, "crm", {1: list(ANNA.values()), 2: ["bo@example.se"]}),
        _run(ledger, "support", {7: ["k10012"]}, action="anonymise", approved_by=None),
    ]
    env = {
        "RETENTION_CONTROL_DB_URL": db.url,
        "AIRFLOW_CONN_RETENTION_PSEUDONYM_KEY": json.dumps(
            {"conn_type": "generic", "password": key}
        ),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        yield Setup(db.url, ledger, env, runs)
    finally:
        cleanup()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["ledger", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "option",
    [
        ("--email", " Anna.Berg@EXAMPLE.se "),
        ("--phone", "070-123 45 67"),
        ("--personnummer", "19121212-1212"),
    ],
)
def test_lookup_by_person_after_deletion(
    setup: Setup, capsys: pytest.CaptureFixture[str], option: tuple[str, str]
) -> None:
    code, out, _ = _cli(capsys, "lookup", *option)
    assert code == 0
    assert "1 batch(es) deleted or anonymised" in out
    assert f"run {setup.runs[0]}" in out and "retention_crm m1" in out
    assert "deleted at" in out and "crm/contacts by activity crm" in out
    assert "rule: P2Y after the contract ended" in out and "approved by: dpo@corp" in out
    assert option[1].strip() not in out  # the identifier itself is never printed


def test_lookup_by_customer_id_and_json(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "lookup", "--customer-id", "K 10012", "--json")
    [found] = json.loads(out)
    assert code == 0
    assert (found["run_id"], found["action"], found["activity_id"]) == (
        setup.runs[1], "anonymise", "support",
    )  # fmt: skip
    assert found["approved_by"] is None and found["outcome"] == "committed"


def test_lookup_says_when_nothing_was_deleted(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _cli(capsys, "lookup", "--email", "nobody@example.se")
    assert code == 0 and out.startswith("nothing in the ledger")
    code, out, _ = _cli(capsys, "lookup", "--system", "crm", "--dataset", "contacts", "--key", "3")
    assert code == 0 and out.startswith("nothing in the ledger")


def test_lookup_by_record_key(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "lookup", "--system", "crm", "--dataset", "contacts", "--key", "2")
    assert code == 0 and f"run {setup.runs[0]}" in out and "deleted at" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--email", "not-an-address"], "--email: not an e-mail address"),
        (["--personnummer", "121212-1213"], "--personnummer"),
        (["--system", "crm", "--key", "1"], "needs --system, --dataset and --key"),
        (["--email", "a@b.se", "--key", "1"], "either a person or a record"),
        ([], "say whom to look up"),
    ],
)
def test_lookup_refuses_bad_input(
    setup: Setup, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = _cli(capsys, "lookup", *argv)
    assert code == 2 and message in err and out == ""


def test_verify_passes_then_names_the_broken_entry(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _cli(capsys, "verify")
    assert code == 0 and out.startswith("ledger ok: 8 entries, head seq 8 ")
    with setup.ledger.engine.begin() as conn:
        conn.execute(
            sa.update(ledger_table).where(ledger_table.c.seq == 4).values(activity_id="other")
        )
    # as an operator runs it: a separate process, exit status
    done = subprocess.run(
        [sys.executable, "-m", "include.retention", "ledger", "verify"],
        cwd=ROOT, env=os.environ | setup.env | {"PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "LEDGER BROKEN at entry seq 4" in done.stderr and "edited" in done.stderr


def test_export_runs_csv_for_a_period_and_activity(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _cli(capsys, "export", "runs", "--from", "2000-01-01", "--to", "2100-12-31")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["run_id"] for r in rows] == setup.runs
    crm = rows[0]
    assert (crm["activity_id"], crm["outcome"], crm["count.applied"], crm["approved_by"]) == (
        "crm", "completed", "2", "dpo@corp",
    )  # fmt: skip
    code, out, _ = _cli(capsys, "export", "runs", "--activity", "support")
    assert [r["activity_id"] for r in csv.DictReader(io.StringIO(out))] == ["support"]
    code, out, _ = _cli(capsys, "export", "runs", "--to", "2000-01-01")
    assert code == 0 and list(csv.DictReader(io.StringIO(out))) == []


def test_export_batches_json_holds_no_personal_data(
    setup: Setup, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "batches.json"
    code, _, err = _cli(capsys, "export", "batches", "--format", "json", "--out", str(out_file))
    batches = json.loads(out_file.read_text())
    assert code == 0 and "wrote 2 batches" in err
    assert [(b["run_id"], b["outcome"], b["count.records"], b["subjects"]) for b in batches] == [
        (setup.runs[0], "committed", 2, 4), (setup.runs[1], "committed", 1, 1),
    ]  # fmt: skip
    text = out_file.read_text()
    assert not any(identifier in text for identifier in [*ANNA.values(), "bo@example.se"])


def test_export_refuses_a_reversed_period(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "export", "--from", "2026-02-01", "--to", "2026-01-01")
    assert code == 2 and "--from must be on or before --to" in err
    code, _, err = _cli(capsys, "export", "--from", "1.2.2026")
    assert code == 2 and "YYYY-MM-DD" in err


@pytest.mark.parametrize(
    "verb", [["verify", "--no-manifests"], ["export", "runs"], ["lookup", "--key", "1"]]
)
def test_a_missing_control_database_is_refused_and_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: list[str]
) -> None:
    # as `certificate` and `report` (test_audit_documents): exit 2, not 1 ("LEDGER BROKEN"),
    # and no empty database file left behind by a mistyped path
    url = f"sqlite:///{tmp_path / 'nothing.db'}"
    code, _, err = _cli(capsys, *verb, "--control-db", url)
    assert code == 2 and "no control database" in err
    assert not (tmp_path / "nothing.db").exists()


def test_export_to_a_file_is_readable_by_its_owner_only(
    setup: Setup, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # it names approvers (employees' personal data): 0600, like certificates and reports
    out_file = tmp_path / "runs.csv"
    code, _, _ = _cli(capsys, "export", "runs", "--out", str(out_file))
    assert code == 0 and "dpo@corp" in out_file.read_text()
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
