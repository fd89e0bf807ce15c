"""Holds survive catalogue edits, and the hold register is tamper-evident (issue 8, 1 and 4)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from include.retention.catalogue import POLICY_DIR, SYSTEMS, Catalogue, load_catalogue, load_valid
from include.retention.errors import RetentionError
from include.retention.holds import check_catalogue, holds_table
from include.retention.ledger import ledger_table
from include.retention.operations import Runtime, enforce, plan
from include.retention.runs import Control
from tests.dbs import DIALECTS, create_db, key_fixture  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS_DIR = POLICY_DIR / SYSTEMS
PLACED_AT = dt.datetime(2026, 5, 4, 10, 30, 15, 250_000, tzinfo=dt.UTC)


@pytest.fixture(name="any_control", params=DIALECTS)
def any_control_fixture(request, tmp_path, key):
    db, cleanup = create_db(request.param, tmp_path)
    try:
        yield Control.open(db.engine, key)
    finally:
        cleanup()


def _newsletter(tmp_path: Path, system: str = "newsletter", table: str = "recipients",
                **binding: Any) -> Path:  # fmt: skip
    """A one-activity catalogue: the real newsletter activity and its system file, the system
    or the table renamed (and the activity's reference with them) and ``binding`` fields of
    the dataset changed."""
    raw = yaml.safe_load((POLICY_DIR / "newsletter.yaml").read_text(encoding="utf-8"))
    raw["source"] = f"{system}/{table}"
    bound = yaml.safe_load((SYSTEMS_DIR / "newsletter.yaml").read_text(encoding="utf-8"))
    dataset = bound["datasets"].pop("recipients") | binding
    bound.update(system=system, datasets={table: dataset})
    folder = tmp_path / f"catalogue-{len(list(tmp_path.glob('catalogue-*')))}"
    (folder / SYSTEMS).mkdir(parents=True)
    (folder / "newsletter.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    system_file = folder / SYSTEMS / f"{system.strip()}.yaml"  # "newsletter\n": newsletter.yaml
    system_file.write_text(yaml.safe_dump(bound), encoding="utf-8")
    shutil.copytree(POLICY_DIR / "text", folder / "text", dirs_exist_ok=True)
    return folder


def _hold_two_recipients(control: Control) -> list[int]:
    place = control.holds.place_record_hold
    return [
        place(
            "newsletter",
            "recipients",
            pk,
            kind="legal_hold",
            reason="dispute 2026-17",
            placed_by="legal.eva",
            placed_at=PLACED_AT,
        )
        for pk in (3, 4)
    ]


# --------------------------------------------------------- 1. holds survive catalogue changes


def test_matching_catalogue_is_accepted(tmp_path, key):
    control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", key)
    _hold_two_recipients(control)
    check_catalogue(control.holds.engine, load_catalogue(_newsletter(tmp_path)))


def test_renamed_system_is_refused_naming_the_holds(tmp_path, key):
    control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", key)
    first, second = _hold_two_recipients(control)
    renamed = load_catalogue(_newsletter(tmp_path, system="mailing"))
    with pytest.raises(RetentionError) as error:
        check_catalogue(control.holds.engine, renamed)
    message = str(error.value)
    assert "2 active holds no longer match the catalogue" in message
    assert f"hold {first} (legal_hold on 'newsletter'/'recipients'" in message
    assert "matches no dataset of the catalogue" in message
    assert f"hold {second} " in message and "legal.eva" in message


def test_renamed_table_is_refused(tmp_path, key):
    control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", key)
    _hold_two_recipients(control)
    with pytest.raises(RetentionError, match="'newsletter'/'recipients'"):
        check_catalogue(control.holds.engine, load_catalogue(_newsletter(tmp_path, table="subs")))


def test_released_holds_do_not_block_a_rename(tmp_path, key):
    control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", key)
    for hold_id in _hold_two_recipients(control):
        control.holds.release(hold_id, released_by="legal.eva")
    check_catalogue(control.holds.engine, load_catalogue(_newsletter(tmp_path, system="mailing")))


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("system", "newsletter\n", "is not an id"),
        ("system", "newsletter ", "is not an id"),
        ("table", "recipients\n", "safe SQL identifier"),
        ("table", "RECIPIENTS", "safe SQL identifier"),
        ("table", "Recipients", "safe SQL identifier"),
        ("table", "recipients\t", "safe SQL identifier"),
    ],
)
def test_inexact_identifiers_are_refused_at_load(tmp_path, field, value, problem):
    folder = _newsletter(tmp_path, **{field: value})
    catalogue, errors = load_valid(folder)
    where = "system" if field == "system" else f"datasets.{value}.sql.table"
    assert errors["systems/newsletter.yaml"].startswith(f"systems/newsletter.yaml: {where}: ")
    assert problem in errors["systems/newsletter.yaml"]
    assert "newsletter.yaml" in errors and not catalogue.activities  # its activity is not built


def _validate(folder: Path, control_url: str) -> subprocess.CompletedProcess[str]:
    """`python -m include.retention validate` of ``folder`` against the control database."""
    return subprocess.run(
        [sys.executable, "-m", "include.retention", "--catalogue", str(folder), "validate",
         "--control-db", control_url],
        cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )  # fmt: skip


def test_validate_with_the_control_db_refuses_a_rename(tmp_path, key):
    url = f"sqlite:///{tmp_path / 'control.db'}"
    first, _ = _hold_two_recipients(Control.open(url, key))
    folder = _newsletter(tmp_path, system="mailing")
    result = _validate(folder, url)
    assert result.returncode == 2, result.stdout
    assert f"hold {first} (legal_hold on 'newsletter'/'recipients'" in result.stderr
    ok = _validate(_newsletter(tmp_path), url)
    assert ok.returncode == 0, ok.stderr
    assert "every active hold matches the catalogue's bindings" in ok.stdout


def _runtime(catalogue: Catalogue, control: Control) -> Runtime:
    return Runtime.of(catalogue, control)


def test_plan_and_enforce_refuse_a_renamed_system_and_change_nothing(tmp_path, key):
    control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", key)
    first, _ = _hold_two_recipients(control)
    head = control.ledger.head()
    runtime = _runtime(load_catalogue(_newsletter(tmp_path, system="mailing")), control)
    run_after = dt.datetime(2026, 11, 24, 1, tzinfo=dt.UTC)
    with pytest.raises(RetentionError, match=f"hold {first} "):
        plan("newsletter", {}, run_after, runtime)
    planned = {"as_of": run_after.isoformat(), "dry_run": False}
    with pytest.raises(RetentionError, match=f"hold {first} "):
        enforce("newsletter", planned, None, runtime)
    assert control.ledger.head() == head  # no run started, nothing recorded
    assert control.holds.verify().ok


# ----------------------------- holds record the binding: key and subject columns (issue 8, 1)


def _bound_control(tmp_path: Path, key: bytes) -> Control:
    """A control DB whose placements record the bindings of the unchanged newsletter."""
    catalogue = load_catalogue(_newsletter(tmp_path))
    return Control.open(f"sqlite:///{tmp_path / 'control.db'}", key, catalogue=catalogue)


def _hold_subject(control: Control) -> int:
    return control.holds.place_subject_hold(
        "anna@example.com", kind="restriction", reason="Art. 18 request", placed_by="dpo.anna",
        placed_at=PLACED_AT,
    )  # fmt: skip


def test_holds_record_the_binding_they_were_placed_on(tmp_path, key):
    control = _bound_control(tmp_path, key)
    record, subject = _hold_two_recipients(control)[0], _hold_subject(control)
    with control.holds.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(T))}
    assert rows[record].key_columns == "id"  # newsletter.yaml: primary_key: id
    assert json.loads(rows[subject].subject_columns) == {"newsletter/recipients": ["email:email"]}
    placed = [e.document["body"] for e in control.ledger.entries() if e.kind == "hold_placed"]
    assert [b.get("key_columns") for b in placed] == ["id", "id", None]  # chained as evidence
    check_catalogue(control.holds.engine, load_catalogue(_newsletter(tmp_path)))


def test_renamed_primary_key_is_refused_naming_the_record_holds(tmp_path, key):
    control = _bound_control(tmp_path, key)
    first, second = _hold_two_recipients(control)
    _hold_subject(control)  # the subject column is unchanged: not named
    with pytest.raises(RetentionError) as error:
        check_catalogue(
            control.holds.engine, load_catalogue(_newsletter(tmp_path, primary_key="recipient_id"))
        )
    message = str(error.value)
    assert message.startswith("2 active holds no longer match the catalogue")
    for hold in (first, second):
        assert f"hold {hold} (legal_hold on 'newsletter'/'recipients', placed by legal.eva" in (
            message
        )
    assert "was placed on key (id); the catalogue now binds key (recipient_id)" in message


def test_composite_primary_key_is_refused(tmp_path, key):
    control = _bound_control(tmp_path, key)
    first, _ = _hold_two_recipients(control)
    catalogue = load_catalogue(_newsletter(tmp_path))
    newsletter = catalogue["newsletter"]
    # The key made composite (id plus the list it belongs to): a record known by "id" alone
    # no longer names one row, so the hold is refused, not silently reinterpreted.
    source = newsletter.source.model_copy(update={"primary_key": ("id", "list_id")})
    composite = Catalogue(
        activities={"newsletter": newsletter.model_copy(update={"source": source})},
        version=catalogue.version,
    )
    with pytest.raises(RetentionError, match=f"hold {first} .*the catalogue now binds key"
                       r" \(id,list_id\)"):  # fmt: skip
        check_catalogue(control.holds.engine, composite)


@pytest.mark.parametrize(
    ("lookup", "now"),
    [({"phone": "phone"}, "phone:phone"), ({"email": "email_address"}, "email:email_address")],
)
def test_removed_or_renamed_lookup_column_is_refused_naming_the_subject_holds(
    tmp_path, key, lookup, now
):
    control = _bound_control(tmp_path, key)
    _hold_two_recipients(control)  # the key is unchanged: not named
    subject = _hold_subject(control)
    edited = load_catalogue(_newsletter(tmp_path, lookup=lookup))
    with pytest.raises(RetentionError) as error:
        check_catalogue(control.holds.engine, edited)
    message = str(error.value)
    assert message.startswith("1 active holds no longer match the catalogue")
    assert f"hold {subject} (restriction (subject), placed by dpo.anna at" in message
    assert f"lookup column(s) newsletter/recipients by email:email (now: {now})" in message
    control.holds.release(subject, released_by="dpo.anna")
    check_catalogue(control.holds.engine, edited)  # released: the edit may go ahead


def test_an_added_lookup_column_keeps_the_subject_holds(tmp_path, key):
    control = _bound_control(tmp_path, key)
    _hold_subject(control)
    more = {"email": "email", "phone": "phone"}
    check_catalogue(control.holds.engine, load_catalogue(_newsletter(tmp_path, lookup=more)))
    # a hold placed before lookup kinds were recorded names the column only
    with control.holds.engine.begin() as conn:
        conn.execute(sa.update(T).values(subject_columns='{"newsletter/recipients": ["email"]}'))
    check_catalogue(control.holds.engine, load_catalogue(_newsletter(tmp_path, lookup=more)))
    with pytest.raises(RetentionError, match=r"by email \(now: phone:phone\)"):
        check_catalogue(
            control.holds.engine, load_catalogue(_newsletter(tmp_path, lookup={"phone": "phone"}))
        )


def test_a_changed_binding_is_refused_at_run_time_and_changes_nothing(tmp_path, key):
    control = _bound_control(tmp_path, key)
    subject = _hold_subject(control)
    head = control.ledger.head()
    runtime = _runtime(load_catalogue(_newsletter(tmp_path, lookup={"phone": "phone"})), control)
    run_after = dt.datetime(2026, 11, 24, 1, tzinfo=dt.UTC)
    with pytest.raises(RetentionError, match=f"hold {subject} .*lookup column"):
        plan("newsletter", {}, run_after, runtime)
    planned = {"as_of": run_after.isoformat(), "dry_run": False}
    with pytest.raises(RetentionError, match=f"hold {subject} "):
        enforce("newsletter", planned, None, runtime)
    assert control.ledger.head() == head


def test_validate_refuses_a_changed_primary_key(tmp_path, key):
    url = f"sqlite:///{tmp_path / 'control.db'}"
    control = Control.open(url, key, catalogue=load_catalogue(_newsletter(tmp_path)))
    first, _ = _hold_two_recipients(control)
    folder = _newsletter(tmp_path, primary_key="recipient_id")
    result = _validate(folder, url)
    assert result.returncode == 2, result.stdout
    assert f"hold {first} (legal_hold on 'newsletter'/'recipients'" in result.stderr
    assert "now binds key (recipient_id)" in result.stderr


def test_a_register_from_before_bindings_is_upgraded_in_place(tmp_path, key):
    url = f"sqlite:///{tmp_path / 'control.db'}"
    unbound = load_catalogue(_newsletter(tmp_path, table="subscribers"))
    control = Control.open(url, key, catalogue=unbound)
    first, _ = _hold_two_recipients(control)  # no binding to record, as before
    engine = control.holds.engine
    with engine.begin() as conn:  # the register as an earlier version created it
        conn.exec_driver_sql("ALTER TABLE retention_holds DROP COLUMN key_columns")
        conn.exec_driver_sql("ALTER TABLE retention_holds DROP COLUMN subject_columns")
    upgraded = Control.open(url, key)
    with engine.connect() as conn:
        assert conn.execute(sa.select(T.c.key_columns).where(T.c.id == first)).scalar() is None
    assert upgraded.holds.verify().ok  # evidence and rows still agree
    renamed = load_catalogue(_newsletter(tmp_path, system="mailing"))
    with pytest.raises(RetentionError, match=f"hold {first} "):
        check_catalogue(engine, renamed)  # still checked by dataset


# ------------------------------------------------------- 4. the hold register is tamper-evident


def _register_with_history(control: Control) -> dict[str, int]:
    ids = {
        "record": control.holds.place_record_hold(
            "ats", "candidates", 7, kind="legal_hold", reason="litigation", placed_by="legal.eva",
            placed_at=PLACED_AT,
        ),
        "subject": control.holds.place_subject_hold(
            "someone@example.com", kind="restriction", reason="Art. 18 request",
            placed_by="dpo.anna",
        ),
        "released": control.holds.place_record_hold(
            "ats", "people", 8, kind="legal_hold", reason="audit", placed_by="legal.eva",
        ),
    }  # fmt: skip
    control.holds.release(ids["released"], released_by="legal.olle")
    return ids


def test_untouched_register_verifies(any_control):
    _register_with_history(any_control)
    report = any_control.holds.verify()
    assert report.ok, report.problems
    assert report.holds == 3
    kinds = [e.kind for e in any_control.ledger.entries() if e.kind.startswith("hold_")]
    assert kinds == ["hold_placed", "hold_placed", "hold_placed", "hold_released"]


def _tamper(control: Control, statement) -> None:
    with control.holds.engine.begin() as conn:
        conn.execute(statement)


T = holds_table
# case -> (the hold tampered with, the new column values or None to delete it, the problem)
TAMPERING = {
    "row deleted": ("record", None, "deleted"),
    "kind weakened": ("record", {"kind": "restriction"}, "kind differ from its placement"),
    "reason rewritten": ("subject", {"reason": "no reason"}, "reason_hmac differ"),
    "moved to another table": ("record", {"dataset": "old_candidates"}, "dataset differ"),
    "released behind the register's back": (
        "record",
        {"released_at": PLACED_AT, "released_by": "x"},
        "released without release",
    ),
    "release signer changed": ("released", {"released_by": "x"}, "released_by differ"),
    "released hold re-activated": (
        "released",
        {"released_at": None, "released_by": None},
        "active again",
    ),
    "key binding rewritten": ("record", {"key_columns": "other_id"}, "key_columns differ"),
    "subject binding rewritten": ("subject", {"subject_columns": "{}"}, "subject_columns differ"),
    "placement time moved": (
        "record",
        {"placed_at": PLACED_AT + dt.timedelta(days=1)},
        "placed_at differ",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampering_with_the_register_is_detected(any_control, case):
    victim, values, problem = TAMPERING[case]
    ids = _register_with_history(any_control)
    row = T.c.id == ids[victim]
    _tamper(any_control, sa.delete(T).where(row) if values is None else
            sa.update(T).where(row).values(**values))  # fmt: skip
    report = any_control.holds.verify()
    assert not report.ok
    assert any(f"hold {ids[victim]}" in p and problem in p for p in report.problems), report


def test_a_hold_added_outside_the_register_is_detected(tmp_path, key):
    control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", key)
    _register_with_history(control)
    _tamper(control, sa.insert(T).values(
        id=99, scope="record", kind="legal_hold", system="ats", dataset="people",
        record_ref=b"\x01" * 16, reason="x", placed_by="intruder", placed_at=PLACED_AT,
    ))  # fmt: skip
    assert "hold 99 has no placement evidence: added outside the register" in (
        control.holds.verify().problems
    )


def test_deleting_the_row_and_its_evidence_breaks_the_chain(tmp_path, key):
    control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", key)
    ids = _register_with_history(control)
    _tamper(control, sa.delete(T).where(T.c.id == ids["record"]))
    L = ledger_table
    _tamper(control, sa.delete(L).where(L.c.run_id == f"hold-{ids['record']}"))
    report = control.holds.verify()
    assert not report.ok
    assert report.problems[0].startswith("ledger chain broken at seq 1")


@pytest.mark.parametrize(
    ("system", "dataset", "pk", "problem"),
    [
        ("newsletter\n", "recipients", 1, "system 'newsletter\\\\n'"),
        ("Newsletter", "recipients", 1, "is not a catalogue system id"),
        ("newsletter", "RECIPIENTS", 1, "dataset 'RECIPIENTS'"),
        ("newsletter", "recipients ", 1, "is neither a table name"),
        ("newsletter", "recipients;drop", 1, "is neither a table name"),
        ("newsletter", "recipients", None, "needs the primary key"),
        ("newsletter", "recipients", "", "needs the primary key"),
        ("newsletter", "recipients", True, "needs the primary key"),
    ],
)
def test_bad_record_hold_requests_are_refused(tmp_path, key, system, dataset, pk, problem):
    control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", key)
    head = control.ledger.head()
    with pytest.raises(RetentionError, match=problem):
        control.holds.place_record_hold(
            system, dataset, pk, kind="legal_hold", reason="r", placed_by="p"
        )
    assert control.ledger.head() == head
    with control.holds.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(T)).scalar() == 0
