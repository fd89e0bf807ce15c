"""Request parameters and approval answers, as the DAG tasks interpret them."""

from __future__ import annotations

import datetime as dt

import pendulum
import pytest

from include.retention.errors import RetentionError
from include.retention.operations import approver, next_step, resolve_as_of

RUN_AFTER = dt.datetime(2026, 11, 24, 1, 0, tzinfo=dt.UTC)


def test_empty_as_of_means_the_run_time():
    assert resolve_as_of("", RUN_AFTER) == RUN_AFTER
    assert resolve_as_of(None, RUN_AFTER) == RUN_AFTER


def test_a_date_means_stockholm_midnight():
    assert resolve_as_of("2026-03-29", RUN_AFTER) == pendulum.datetime(
        2026, 3, 29, tz="Europe/Stockholm"
    )


def test_an_explicit_offset_is_kept():
    assert resolve_as_of("2026-06-01T02:00:00+00:00", RUN_AFTER) == dt.datetime(
        2026, 6, 1, 2, tzinfo=dt.UTC
    )


@pytest.mark.parametrize("bad", ["next tuesday", "2026-13-01", "PT1H", "12:00"])
def test_bad_as_of_is_named_in_the_error(bad):
    with pytest.raises(RetentionError, match=f"as_of {bad!r} is not an ISO-8601"):
        resolve_as_of(bad, RUN_AFTER)


def test_approval_needs_an_explicit_approve():
    user = {"id": "7", "name": "dpo.anna"}
    assert approver({"chosen_options": ["Approve"], "responded_by_user": user}) == "dpo.anna"
    assert approver({"chosen_options": ["Reject"], "responded_by_user": user}) is None
    assert approver(None) is None  # marked success without an answer: not an approval
    assert approver({}) is None


def test_gate_branch():
    assert next_step({"needs_approval": True}) == "approve"
    assert next_step({"needs_approval": False}) == "enforce"


@pytest.mark.parametrize(
    ("schedule", "as_of", "deadline"),
    [
        ("0 2 * * *", "2026-11-24T02:30:00+01:00", "2026-11-25T00:00:00+01:00"),
        ("0 2 * * 1", "2026-11-23T02:30:00+01:00", "2026-11-30T00:00:00+01:00"),  # Mondays
        ("0 2 * * *", "2026-03-28T23:30:00+00:00", "2026-03-30T00:00:00+02:00"),  # 29 Mar, DST
    ],
)
def test_a_deadline_at_stake_is_the_start_of_the_next_run_day(schedule, as_of, deadline):
    from include.retention.escalation import deadline_at_stake

    at_stake = deadline_at_stake(schedule, dt.datetime.fromisoformat(as_of))
    assert at_stake == dt.datetime.fromisoformat(deadline)


def test_the_approval_text_names_the_deadlines_at_stake():
    from include.retention.escalation import deadline_text

    assert deadline_text([]) == ""
    stakes = [{"rule": "immediately when consent is withdrawn", "records": 3, "deadline": "X"}]
    text = deadline_text(stakes)
    assert text.startswith(" Policy deadlines at stake: 3 records under 'immediately when")
    assert "must be deleted before X" in text
