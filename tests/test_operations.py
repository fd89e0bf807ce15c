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
