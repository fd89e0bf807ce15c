"""``python -m include.retention holds``: place, list, release and verify, as a person runs it."""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from include.retention.__main__ import main
from include.retention.holds import HoldRegister
from include.retention.pseudonym import RecordRefHasher, subject_ref
from include.retention.runs import Control

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(name="cli")
def cli_fixture(tmp_path, monkeypatch):
    """Runs the command in this process (main(argv)); ``cli.subprocess`` runs it as a person
    does, in a fresh interpreter (slower: used once)."""
    key = secrets.token_urlsafe(32)
    url = f"sqlite:///{tmp_path / 'control.db'}"
    env = {
        "RETENTION_CONTROL_DB_URL": url,
        "AIRFLOW_CONN_RETENTION_PSEUDONYM_KEY": json.dumps(
            {"conn_type": "generic", "password": key}
        ),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["holds", *args])
            except SystemExit as exc:  # argparse refusing the arguments
                code = int(exc.code or 0)
        return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())

    def in_subprocess(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "include.retention", "holds", *args],
            cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "", **env},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    run.url, run.key, run.subprocess = url, key.encode(), in_subprocess  # type: ignore[attr-defined]
    return run


def test_place_list_release_a_person_and_a_record(cli) -> None:
    placed = cli.subprocess(
        "place", "--email", " Anna.Berg@Example.SE ", "--kind", "restriction",
        "--reason", "accuracy contested (Art. 18(1)(a)), case 2026-41", "--by", "legal.eva",
    )  # fmt: skip
    assert placed.returncode == 0, placed.stderr
    assert "placed restriction 1 on every record of the person given by email" in placed.stdout
    record = cli(
        "place", "--system", "crm", "--dataset", "contacts", "--pk", "17",
        "--reason", "dispute 2026-17", "--by", "legal.eva",
    )  # fmt: skip
    assert record.returncode == 0, record.stderr
    assert "placed legal_hold 2 on record '17' of crm/contacts" in record.stdout

    listed = json.loads(cli("list", "--json").stdout)
    assert [(h["id"], h["kind"], h["scope"]) for h in listed] == [
        (1, "restriction", "subject"),
        (2, "legal_hold", "record"),
    ]
    # The register knows the person by the keyed reference of the normalised address only.
    assert listed[0]["subject_ref"] == subject_ref(cli.key, "anna.berg@example.se").hex()
    assert listed[1]["record_ref"] == RecordRefHasher(cli.key, "crm", "contacts").ref(17).hex()
    assert "anna" not in cli("list").stdout.lower()

    released = cli("release", "1", "--by", "legal.eva")
    assert released.returncode == 0, released.stderr
    assert [h["id"] for h in json.loads(cli("list", "--json").stdout)] == [2]
    every = json.loads(cli("list", "--all", "--json").stdout)
    assert every[0]["released_by"] == "legal.eva" and every[0]["released_at"]
    assert cli("verify").returncode == 0
    events = [e.kind for e in Control.open(cli.url, cli.key).ledger.hold_events()]
    assert events == ["hold_placed", "hold_placed", "hold_released"]


def test_the_identifier_can_come_from_stdin(cli) -> None:
    placed = cli(
        "place", "--personnummer", "-", "--reason", "r", "--by", "b", stdin="811218-9876\n"
    )
    assert placed.returncode == 0, placed.stderr
    register = HoldRegister(Control.open(cli.url, cli.key).ledger.engine, cli.key)
    assert register.active("any", "thing").subjects == {
        subject_ref(cli.key, "198112189876"): frozenset({"legal_hold"})
    }


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--email", "anna(at)example.se"], "--email: not an e-mail address"),
        (["--personnummer", "811218-9875"], "--personnummer: the check digit"),
        (["--email", "a@b.se", "--phone", "0701234567"], "one identifier per hold"),
        (["--system", "crm"], "say what to hold"),
        (["--email", "a@b.se", "--system", "crm", "--dataset", "t", "--pk", "1"], "not both"),
        (["--system", "CRM", "--dataset", "contacts", "--pk", "1"], "not a catalogue system"),
    ],
)
def test_bad_placements_change_nothing_and_say_why(cli, args, problem) -> None:
    done = cli("place", *args, "--reason", "r", "--by", "b")
    assert done.returncode == 2
    assert problem in done.stderr
    assert "anna" not in done.stderr and "9875" not in done.stderr
    assert json.loads(cli("list", "--all", "--json").stdout) == []


def test_reason_and_who_are_required(cli) -> None:
    done = cli("place", "--email", "a@b.se", "--by", "b")
    assert done.returncode == 2 and "--reason" in done.stderr
    assert cli("place", "--email", "a@b.se", "--reason", " ", "--by", "b").returncode == 2
    assert json.loads(cli("list", "--all", "--json").stdout) == []


def test_releasing_twice_is_refused(cli) -> None:
    assert cli("place", "--customer-id", "k 10012", "--reason", "r", "--by", "b").returncode == 0
    assert cli("release", "1", "--by", "b").returncode == 0
    again = cli("release", "1", "--by", "b")
    assert again.returncode == 2 and "already released" in again.stderr
