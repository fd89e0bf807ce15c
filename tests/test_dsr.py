"""The data-subject-request tasks on a real control database: the form, pseudonymisation,
restriction holds, the suppression list, the response and the deadline mail."""

from __future__ import annotations

import datetime as dt

import pytest

from include.retention import dsr
from include.retention.catalogue import Catalogue
from include.retention.errors import RetentionError
from include.retention.evidence import EvidenceReader
from include.retention.pseudonym import subject_ref
from include.retention.suppression import SuppressionList
from tests.dbs import DIALECTS, create_db, key_fixture  # noqa: F401 - fixtures

NOW = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
NONE = Catalogue(activities={}, version="none")  # no systems to search
FORM = {"email": " Anna.Berg@Example.SE", "phone": "070-123 45 67", "personnummer": None}
IDENTIFIERS = ("anna.berg@example.se", "+46701234567")
RAW = ("anna.berg", "Anna.Berg", "070-123", "701234567", "123 45 67")


@pytest.fixture(name="runtime", params=DIALECTS)
def runtime_fixture(request, tmp_path, key):
    db, cleanup = create_db(request.param, tmp_path)
    try:
        yield dsr.DsrRuntime.of(db.engine, key)
    finally:
        cleanup()


def receive(runtime, kind="erasure", run_id="manual__1", **form):
    return dsr.receive(
        kind, FORM | form, user="dpo.anna", dag_id=f"dsr_{kind}", run_id=run_id,
        runtime=runtime, now=NOW,
    )  # fmt: skip


def no_raw_identifier(value: object) -> None:
    text = str(value).replace("dpo.anna", "")
    assert [raw for raw in RAW if raw in text] == [], text


def test_receive_registers_keyed_references_only(runtime, key) -> None:
    received = receive(runtime)
    assert received["request"] == "DSR-1" and received["kind"] == "erasure"
    assert received["due_on"] == "2026-12-25" and received["status"] == "received"
    assert received["subject_refs"] == sorted(subject_ref(key, i).hex() for i in IDENTIFIERS)
    no_raw_identifier(received)
    no_raw_identifier([e.document for e in EvidenceReader(runtime.engine, key).entries()])
    assert receive(runtime)["request_id"] == received["request_id"]  # a retry: same request


def test_received_on_sets_the_deadline(runtime) -> None:
    received = receive(runtime, received_on="2026-10-31")
    assert received["due_on"] == "2026-11-30"


@pytest.mark.parametrize(
    ("kind", "form", "problem"),
    [
        ("erasure", {"email": "", "phone": None}, "names no person"),
        ("erasure", {"email": "anna(at)example.se"}, "email: not an e-mail address"),
        ("erasure", {"personnummer": "811218-9875"}, "personnummer: the check digit"),
        ("erasure", {"received_on": "2026-12-24"}, "received_on: 2026-12-24 is in the future"),
        ("erasure", {"received_on": "24/11/2026"}, "received_on: write the day"),
        ("erasure", {"received_on": "2026-01-02"}, "more than 92 days ago"),
        ("restriction", {"action": "pause"}, "action: choose one of place, lift"),
        ("restriction", {"action": "place", "ground": "because"}, "ground: choose one of"),
        ("objection", {"scope": None}, "scope: choose one of direct_marketing"),
    ],
)
def test_a_malformed_request_changes_nothing_and_says_what_to_fix(
    runtime, kind, form, problem
) -> None:
    with pytest.raises(RetentionError, match=problem) as caught:
        receive(runtime, kind, **form)
    no_raw_identifier(caught.value)
    assert runtime.requests.requests() == []


def test_restriction_is_placed_once_and_lifted_as_its_own_action(runtime, key) -> None:
    form = {"action": "place", "ground": "accuracy_contested"}
    received = receive(runtime, "restriction", **form)
    placed = dsr.restrict(received, FORM | form, user="dpo.anna", runtime=runtime, catalogue=NONE)
    assert len(placed["holds_placed"]) == 2
    again = dsr.restrict(received, FORM | form, user="dpo.anna", runtime=runtime, catalogue=NONE)
    assert again["holds_placed"] == []  # a retried task places nothing twice
    active = runtime.holds.active("crm", "contacts").subjects
    assert active == {subject_ref(key, i): frozenset({"restriction"}) for i in IDENTIFIERS}

    lift = {"action": "lift"}
    lifting = receive(runtime, "restriction", run_id="manual__2", **lift)
    lifted = dsr.restrict(lifting, FORM | lift, user="dpo.anna", runtime=runtime, catalogue=NONE)
    assert sorted(lifted["holds_released"]) == sorted(placed["holds_placed"])
    assert runtime.holds.active("crm", "contacts").subjects == {}
    kinds = [e.kind for e in EvidenceReader(runtime.engine, key).hold_events()]
    assert kinds == ["hold_placed"] * 2 + ["hold_released"] * 2
    assert runtime.holds.verify().ok


@pytest.mark.parametrize(
    ("kind", "form", "scope"),
    [
        ("consent_withdrawal", {}, "consent"),
        ("objection", {"scope": "direct_marketing"}, "direct_marketing"),
        ("objection", {"scope": "legitimate_interest"}, "consent"),
    ],
)
def test_suppression_and_a_suppressed_reimport(runtime, key, kind, form, scope) -> None:
    received = receive(runtime, kind, **form)
    # (no systems to remove the person from: test_withdrawal does)
    done = dsr.suppress(kind, received, user="dpo.anna", runtime=runtime, catalogue=NONE)
    assert done == {
        "suppression_scope": scope, "suppressed": 2, "already_suppressed": 0, "removed": 0,
        "removed_from": [], "kept": [], "nothing_found_in": [], "failed_in": [],
        "activities": [], "not_searched": [],
    }  # fmt: skip
    refs = {subject_ref(key, i) for i in IDENTIFIERS}
    assert runtime.suppressions.suppressed(refs, scope) == refs
    rows = [
        {"id": 1, "email": "ANNA.BERG@example.se"},
        {"id": 2, "email": "bo.ek@example.se"},
        {"id": 3, "email": " anna.berg@EXAMPLE.se "},
    ]
    admitted = SuppressionList(runtime.engine, key).admit(rows, "email", "email", "consent")
    assert [row["id"] for row in admitted] == [2]
    marketing = runtime.suppressions.admit(rows, "email", "email", "direct_marketing")
    assert [row["id"] for row in marketing] == ([2] if scope == "direct_marketing" else [1, 2, 3])


def test_an_import_with_an_invalid_identifier_admits_nothing(runtime) -> None:
    rows = [{"email": "a@b.se"}, {"email": "not an address"}]
    with pytest.raises(RetentionError, match="import refused, nothing admitted: email"):
        runtime.suppressions.admit(rows, "email", "email")


def test_respond_completes_or_fails_the_request(runtime) -> None:
    received = receive(runtime)
    summary = dsr.respond(received, {"erase": {"erased": 0}}, [], user="u", runtime=runtime)
    assert summary["status"] == "completed" and summary["outcome"] == {"erase": {"erased": 0}}
    other = receive(runtime, run_id="manual__2")
    with pytest.raises(RetentionError, match="DSR-2 \\(erasure\\) failed at erase; it stays open"):
        dsr.respond(other, {"erase": None}, ["erase"], user="u", runtime=runtime)
    assert runtime.requests.get(2).status == "failed" and runtime.requests.get(2).open
    with pytest.raises(RetentionError, match="was not registered"):
        dsr.respond(None, {}, ["receive"], user="u", runtime=runtime)


def test_deadline_report_and_mail_name_requests_not_people(runtime) -> None:
    receive(runtime, received_on="2026-10-29")  # due 2026-11-29: 4 days left
    receive(runtime, run_id="manual__2", received_on="2026-10-20")  # due 11-20: overdue
    receive(runtime, run_id="manual__3")  # due 12-25: not yet
    report = dsr.deadlines(7, now=NOW, runtime=runtime)
    assert [(i["request"], i["days_left"]) for i in report["near"]] == [("DSR-2", -5), ("DSR-1", 4)]
    subject, body = dsr.deadline_mail(report)
    assert subject == "[dsr] 2 data-subject request(s) due within 7 days, 1 OVERDUE"
    assert "DSR-2" in body and "5 days overdue" in body and "DSR-3" not in body
    no_raw_identifier(subject + body)
