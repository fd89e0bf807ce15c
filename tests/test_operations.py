"""Request parameters and approval answers, as the DAG tasks interpret them."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

import pendulum
import pytest

from include.retention.errors import RetentionError
from include.retention.operations import (
    approver,
    combine,
    failures,
    next_step,
    origin_of,
    plan,
    resolve_as_of,
)
from include.retention.runs import check_not_early, describe_offset

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


@pytest.mark.parametrize("bad", ["next tuesday", "2026-13-01", "PT1H", "12:00", 20261124])
def test_bad_as_of_is_named_in_the_error(bad):
    with pytest.raises(RetentionError) as error:
        resolve_as_of(bad, RUN_AFTER)
    message = str(error.value)
    assert f"as_of {bad!r} is not an ISO-8601 date" in message
    assert "YYYY-MM-DD" in message and "^" not in message  # a format, not a regex


@pytest.mark.parametrize(
    "far", ["0001-01-01", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00"]
)
def test_as_of_far_from_now_is_a_clear_error(far):
    with pytest.raises(RetentionError, match=re.escape(f"as_of {far!r} is outside the years")):
        resolve_as_of(far, RUN_AFTER)


NOW = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "as_of",
    [
        "2026-12-10",  # 15 days ahead
        "2026-11-25T23:59:59-12:00",  # today's date, but 2026-11-26 11:59 UTC
        "2026-11-25T14:00:01+00:00",  # one second ahead
        "2026-11-26",  # tomorrow's midnight in Stockholm
    ],
)
def test_enforcing_at_a_future_as_of_is_refused_before_anything_is_read(as_of):
    # No runtime is given: the refusal must come before the catalogue or any database.
    with pytest.raises(RetentionError, match=r"after now: an enforcing run never evaluates"):
        plan("newsletter", {"as_of": as_of, "dry_run": False}, RUN_AFTER, now=NOW)
    with pytest.raises(RetentionError, match="after now"):
        check_not_early(resolve_as_of(as_of, None), dry_run=False, now=NOW)


def test_a_dry_run_may_look_ahead_and_the_past_may_be_enforced():
    future = resolve_as_of("2026-12-10", None)
    check_not_early(future, dry_run=True, now=NOW)  # no error
    check_not_early(resolve_as_of("2026-11-25T14:00:00+00:00", None), dry_run=False, now=NOW)
    check_not_early(resolve_as_of("2026-11-25T15:59:59+02:00", None), dry_run=False, now=NOW)


def test_offset_is_described_in_words():
    assert describe_offset(NOW - dt.timedelta(days=1, hours=3), NOW) == "1 day 3 h before now"
    assert describe_offset(NOW + dt.timedelta(days=15), NOW) == "15 days after now"
    assert describe_offset(NOW - dt.timedelta(minutes=5), NOW) == "5 min before now"


def test_origin_names_the_dag_run_and_who_triggered_a_manual_run():
    class Run:
        dag_id, run_id, run_after = "retention_crm", "manual__2026-11-25", RUN_AFTER
        run_type, triggering_user_name = "manual", "dpo.anna"

    assert origin_of(Run()) == {
        "dag_id": "retention_crm", "run_id": "manual__2026-11-25", "run_type": "manual",
        "triggered_by": "dpo.anna",
    }  # fmt: skip
    Run.run_type = "scheduled"
    assert origin_of(Run())["triggered_by"] is None


PLANNED = {"needs_approval": False, "as_of": "2026-11-24T00:00:00+01:00"}
DONE = {"outcome": "completed", "message": "ok", "run_id": "r"}


def test_failures_are_read_from_failed_steps_and_results():
    assert failures({"plan": None}) == ["plan failed: nothing was changed"]
    assert failures({"plan": PLANNED, "enforce": None}) == ["enforce failed"]
    gated = PLANNED | {"needs_approval": True}
    assert failures({"plan": gated, "enforce": None}) == []  # rejected: nothing to do
    assert failures({"plan": gated, "enforce": None}, ["approve"]) == ["approve failed"]
    assert failures({"plan": PLANNED, "enforce": DONE, "verify": {"checked": True}}) == []
    assert failures({"plan": PLANNED, "enforce": DONE, "verify": None}) == [
        "verify failed: the run's result is not proven"
    ]
    partial = DONE | {"outcome": "partial", "message": "1 failed"}
    assert failures({"plan": PLANNED, "enforce": partial, "verify": {"checked": False}}) == [
        "enforce ended partial: 1 failed"
    ]


def test_approval_needs_an_explicit_approve():
    user = {"id": "7", "name": "dpo.anna"}
    assert approver({"chosen_options": ["Approve"], "responded_by_user": user}) == "dpo.anna"
    assert approver({"chosen_options": ["Reject"], "responded_by_user": user}) is None
    assert approver(None) is None  # marked success without an answer: not an approval
    assert approver({}) is None


def test_gate_branch():
    assert next_step({"needs_approval": True}) == "approve"
    assert next_step({"needs_approval": False}) == "partition"


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


class _LazyResults(Sequence[dict]):
    """Like Airflow's lazy XCom sequence of a mapped task's results: each access is a request,
    and one past the end is logged as an error ("XCom not found") by the task supervisor."""

    def __init__(self, items: list[dict]) -> None:
        self.items, self.asked = items, []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):  # type: ignore[override]
        self.asked.append(key)
        if not isinstance(key, slice) and key >= len(self.items):
            raise IndexError(key)
        return self.items[key]


def test_mapped_results_are_read_in_one_request_and_never_past_their_end():
    def result(partition: int, applied: int) -> dict:
        return {
            "run_id": "r", "outcome": "completed", "message": "ok", "approved_by": None,
            "counts": {"applied": applied}, "partition": partition, "partitions": 2,
        }  # fmt: skip

    results = _LazyResults([result(0, 2), result(1, 3)])
    combined = combine(results)
    assert results.asked == [slice(None)]
    assert combined is not None and combined["counts"] == {"applied": 5}
    assert combined["message"] == "partition 1: ok; partition 2: ok"
