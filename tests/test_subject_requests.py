"""The data-subject request register: deadlines (Art. 12(3)), extensions, status, evidence."""

from __future__ import annotations

import datetime as dt

import pytest

from include.retention.errors import RetentionError
from include.retention.identifiers import normalise
from include.retention.ledger import Ledger
from include.retention.pseudonym import subject_ref
from include.retention.subject_requests import RequestRegister, due_date
from tests.dbs import DIALECTS, create_db, key_fixture  # noqa: F401 - fixtures

STOCKHOLM_NOON = dt.timezone(dt.timedelta(hours=1))
RECEIVED = dt.datetime(2026, 1, 31, 12, 0, tzinfo=STOCKHOLM_NOON)
ANNA = [normalise("email", "Anna.Berg@Example.se"), normalise("phone", "070-123 45 67")]


@pytest.fixture(name="register", params=DIALECTS)
def register_fixture(request, tmp_path, key):
    db, cleanup = create_db(request.param, tmp_path)
    try:
        register = RequestRegister(db.engine, key)
        register.create_tables()
        yield register
    finally:
        cleanup()


@pytest.mark.parametrize(
    ("received", "months", "due"),
    [
        ((2026, 1, 31, 12), 1, (2026, 2, 28)),  # no 31 February: the month's last day
        ((2028, 1, 31, 12), 1, (2028, 2, 29)),
        ((2026, 3, 15, 9), 1, (2026, 4, 15)),
        ((2026, 3, 15, 9), 3, (2026, 6, 15)),
        ((2026, 12, 31, 22), 1, (2027, 1, 31)),  # 23:00 in Stockholm
        ((2026, 12, 31, 23), 1, (2027, 2, 1)),  # already 1 January in Stockholm
        ((2026, 11, 30, 23, 30), 1, (2027, 1, 1)),  # 00:30 on 1 Dec in Stockholm
    ],
)
def test_due_dates(received, months, due) -> None:
    at = dt.datetime(*received[:4], *(received[4:] or (0,)), tzinfo=dt.UTC)
    assert due_date(at, months) == dt.date(*due)


def test_a_request_is_registered_with_keyed_references_only(register, key) -> None:
    request = register.receive(
        "erasure", ANNA, filed_by="dpo.anna", received_at=RECEIVED,
        dag_id="dsr_erasure", run_id="manual__1", now=RECEIVED + dt.timedelta(hours=1),
    )  # fmt: skip
    assert request.ref == f"DSR-{request.id}"
    assert request.due_on == dt.date(2026, 2, 28) == request.first_due_on
    assert request.status == "received" and request.open
    assert set(request.subject_refs) == {
        subject_ref(key, "anna.berg@example.se"),
        subject_ref(key, "+46701234567"),
    }
    assert request.identifier_kinds == ("email", "phone")
    # A retried first task gets the same request.
    again = register.receive(
        "erasure", ANNA, filed_by="dpo.anna", dag_id="dsr_erasure", run_id="manual__1"
    )
    assert again.id == request.id and len(register.requests()) == 1
    ledger = Ledger(register.engine, key)
    text = " ".join(str(e.document) for e in ledger.entries(with_blob=False))
    assert "anna" not in text.lower().replace("dpo.anna", "") and "701234567" not in text
    assert [e.kind for e in register.events(request.id)] == ["dsr_received"]
    assert ledger.verify().ok


def test_extension_up_to_two_months_within_the_first_month(register) -> None:
    request = register.receive("access", ANNA[:1], filed_by="dpo.anna", received_at=RECEIVED)
    within = dt.datetime(2026, 2, 20, tzinfo=dt.UTC)
    once = register.extend(request.id, months=1, reason="many systems", by="dpo.anna", now=within)
    assert once.due_on == dt.date(2026, 3, 31) and once.extended_months == 1
    twice = register.extend(request.id, months=1, reason="archive", by="dpo.anna", now=within)
    assert twice.due_on == dt.date(2026, 4, 30) and twice.first_due_on == dt.date(2026, 2, 28)
    assert twice.extension_reason == "many systems\narchive"
    with pytest.raises(RetentionError, match="at most 2 more months"):
        register.extend(request.id, months=1, reason="more", by="dpo.anna", now=within)


def test_no_extension_after_the_first_month(register) -> None:
    request = register.receive("access", ANNA[:1], filed_by="dpo.anna", received_at=RECEIVED)
    late = dt.datetime(2026, 2, 28, 23, 0, tzinfo=dt.UTC)  # 1 March 00:00 in Stockholm
    with pytest.raises(RetentionError, match="first month ended on 2026-02-28"):
        register.extend(request.id, months=1, reason="late", by="dpo.anna", now=late)
    assert register.get(request.id).due_on == dt.date(2026, 2, 28)


@pytest.mark.parametrize(
    ("months", "reason", "by", "problem"),
    [
        (0, "r", "x", "1 or 2 whole months"),
        (True, "r", "x", "1 or 2 whole months"),
        (1, " ", "x", "reason for the extension is required"),
        (1, "r", "", "who extends it is required"),
        (3, "r", "x", "at most 2"),
    ],
)
def test_bad_extensions_change_nothing(register, months, reason, by, problem) -> None:
    request = register.receive("access", ANNA[:1], filed_by="dpo.anna", received_at=RECEIVED)
    with pytest.raises(RetentionError, match=problem):
        register.extend(request.id, months=months, reason=reason, by=by, now=RECEIVED)
    assert register.get(request.id) == request


def test_status_outcome_and_recipients(register, key) -> None:
    request = register.receive("erasure", ANNA, filed_by="dpo.anna", received_at=RECEIVED)
    register.set_status(request.id, "in_progress", by="airflow")
    done = register.set_status(
        request.id, "completed", by="airflow", outcome={"erased": 3, "kept": {"accounting": 1}}
    )
    assert not done.open and done.closed_at is not None
    assert done.outcome == {"erased": 3, "kept": {"accounting": 1}}
    with pytest.raises(RetentionError, match="already completed"):
        register.set_status(request.id, "in_progress", by="airflow")
    register.record_notified(request.id, "Mailchimp (newsletter processor)", by="dpo.anna")
    assert [n["recipient"] for n in register.notices(request.id)] == [
        "Mailchimp (newsletter processor)"
    ]
    kinds = [e.kind for e in register.events(request.id)]
    assert kinds == ["dsr_received", "dsr_status", "dsr_status", "dsr_recipient_notified"]


def test_near_deadline_lists_open_requests_only(register) -> None:
    old = register.receive("access", ANNA[:1], filed_by="a", received_at=RECEIVED)
    newer = register.receive(
        "erasure", ANNA[:1], filed_by="a", received_at=RECEIVED + dt.timedelta(days=20)
    )
    closed = register.receive("objection", ANNA[:1], filed_by="a", received_at=RECEIVED)
    register.set_status(closed.id, "completed", by="a")
    today = dt.date(2026, 2, 24)  # old is due 28 Feb, newer 20 March
    assert [r.id for r in register.near_deadline(today, 7)] == [old.id]
    assert [r.id for r in register.near_deadline(today, 30)] == [old.id, newer.id]
    assert register.get(old.id).days_left(dt.date(2026, 3, 2)) == -2


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"kind": "delete_me"}, "not one of access"),
        ({"filed_by": ""}, "who filed the request is required"),
        ({"subjects": []}, "at least one identifier"),
        ({"received_at": dt.datetime(2099, 1, 1, tzinfo=dt.UTC)}, "in the future"),
        ({"received_at": dt.datetime(2026, 1, 1)}, "time-zone-aware"),
    ],
)
def test_bad_requests_are_refused(register, kwargs, problem) -> None:
    call = {"kind": "erasure", "subjects": ANNA, "filed_by": "dpo.anna"} | kwargs
    with pytest.raises(RetentionError, match=problem):
        register.receive(call.pop("kind"), call.pop("subjects"), **call)
    assert register.requests() == []
