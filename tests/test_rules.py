"""The rule calculus: due_at (one record) and cutoff (pushed into SQL) always agree."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pendulum
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.retention.rules import (
    ConsentRule,
    EventRule,
    FiscalYearRule,
    IndefiniteRule,
    IsoPeriod,
    PeriodRule,
    UnspecifiedRule,
)

STOCKHOLM = ZoneInfo("Europe/Stockholm")
ZONES = st.sampled_from([STOCKHOLM, dt.UTC, ZoneInfo("America/New_York")])
INSTANTS = st.datetimes(
    min_value=dt.datetime(1990, 1, 1),
    max_value=dt.datetime(2080, 12, 31),
    timezones=ZONES,
    allow_imaginary=False,
)
# Instants close to Stockholm's DST changes, month ends, leap days and midnights.
EDGE_DAYS = st.sampled_from(
    [
        (2024, 2, 29),
        (2024, 3, 31),
        (2024, 10, 27),
        (2025, 3, 30),
        (2025, 10, 26),
        (2025, 1, 31),
        (2025, 2, 28),
        (2025, 6, 30),
        (2025, 12, 31),
        (2028, 2, 29),
        (2033, 1, 1),
    ]
)
EDGE_INSTANTS = st.builds(
    lambda day, seconds, offset: (
        dt.datetime(*day, tzinfo=STOCKHOLM) + dt.timedelta(days=offset, seconds=seconds)
    ),
    EDGE_DAYS,
    st.integers(0, 86_399),
    st.integers(-400, 4000),
)
ANY_INSTANT = st.one_of(INSTANTS, EDGE_INSTANTS)
PERIODS = st.builds(
    lambda y, m, w, d: IsoPeriod.parse(
        "P"
        + (f"{y}Y" if y else "")
        + (f"{m}M" if m else "")
        + (f"{w}W" if w else "")
        + (f"{d}D" if d or not (y or m or w) else "")
    ),
    st.integers(0, 10),
    st.integers(0, 24),
    st.integers(0, 3),
    st.integers(0, 400),
)
ENFORCEABLE_RULES = st.one_of(
    st.builds(
        lambda p: EventRule(event="the event")
        if p.zero
        else PeriodRule(period=p, anchor="the anchor event"),
        PERIODS,
    ),
    st.builds(
        lambda y, m: FiscalYearRule(years=y, fiscal_year_end_month=m, anchor="a transaction"),
        st.integers(0, 10),
        st.integers(1, 12),
    ),
    st.just(EventRule(event="the contract ends")),
    st.just(ConsentRule()),
)


@settings(max_examples=3000, deadline=None)
@given(rule=ENFORCEABLE_RULES, anchor=ANY_INSTANT, as_of=ANY_INSTANT)
def test_cutoff_agrees_with_due_at_for_instants(rule, anchor, as_of):
    assert (anchor <= rule.cutoff(as_of)) == (rule.due_at(anchor) <= as_of)


@settings(max_examples=3000, deadline=None)
@given(rule=ENFORCEABLE_RULES, anchor=ANY_INSTANT, as_of=ANY_INSTANT)
def test_cutoff_date_agrees_with_due_at_for_dates(rule, anchor, as_of):
    day = anchor.date()
    assert (day <= rule.cutoff_date(as_of)) == (rule.due_at(day) <= as_of)


@settings(max_examples=500, deadline=None)
@given(rule=ENFORCEABLE_RULES, anchor=ANY_INSTANT)
def test_nothing_is_due_before_its_anchor(rule, anchor):
    assert rule.due_at(anchor) > anchor


def _stockholm(*args: int) -> pendulum.DateTime:
    return pendulum.datetime(*args, tz="Europe/Stockholm")


def test_bokforingslagen_worked_example():
    rule = FiscalYearRule(years=7, fiscal_year_end_month=6, anchor="the last transaction")
    for anchor in (dt.date(2024, 7, 1), dt.date(2025, 6, 30)):  # both in the FY ending 2025-06-30
        assert rule.due_at(anchor) == _stockholm(2033, 1, 1)
    assert rule.due_at(dt.date(2025, 7, 1)) == _stockholm(2034, 1, 1)
    assert rule.cutoff_date(_stockholm(2032, 12, 31, 23, 59, 59)) < dt.date(2025, 6, 30)
    assert rule.cutoff_date(_stockholm(2033, 1, 1)) == dt.date(2025, 6, 30)


def test_calendar_fiscal_year_is_the_default():
    rule = FiscalYearRule(anchor="the last transaction")
    assert rule.due_at(dt.date(2025, 12, 31)) == _stockholm(2033, 1, 1)
    assert rule.due_at(dt.date(2026, 1, 1)) == _stockholm(2034, 1, 1)


@pytest.mark.parametrize(
    ("period", "anchor", "due"),
    [
        ("P2Y", dt.date(2024, 3, 15), dt.date(2026, 3, 16)),
        ("P1Y", dt.date(2024, 2, 29), dt.date(2025, 3, 1)),  # leap day clamps to 28 Feb
        ("P1M", dt.date(2025, 1, 31), dt.date(2025, 3, 1)),  # month end clamps
        ("P6M", dt.date(2025, 8, 31), dt.date(2026, 3, 1)),
        ("P180D", dt.date(2025, 1, 1), dt.date(2025, 7, 1)),  # period ends 30 Jun
        ("P2W", dt.date(2025, 3, 20), dt.date(2025, 4, 4)),
    ],
)
def test_period_due_dates(period, anchor, due):
    rule = PeriodRule(period=period, anchor="the anchor event")
    assert rule.due_at(anchor) == _stockholm(due.year, due.month, due.day)


def test_event_rule_is_due_the_next_midnight():
    rule = EventRule(event="the account is closed")
    assert rule.due_at(dt.date(2025, 10, 26)) == _stockholm(2025, 10, 27)


@pytest.mark.parametrize("period", ["P0D", "P0Y0M", "P0W"])
def test_a_period_rule_of_zero_is_refused(period):
    with pytest.raises(ValueError, match="use rule kind 'event'"):
        PeriodRule(period=period, anchor="the anchor event")


@pytest.mark.parametrize("period", ["P101Y", "P9999Y", "P1201M", "P36526D", "P5219W", "P99Y30M"])
def test_periods_longer_than_100_years_are_refused(period):
    with pytest.raises(ValueError, match="longer than 100 years"):
        IsoPeriod.parse(period)


def test_100_years_is_accepted():
    assert IsoPeriod.parse("P100Y").add_to(dt.date(2025, 1, 1)) == dt.date(2125, 1, 1)
    assert IsoPeriod.parse("P36525D").days == 36525


def test_boundary_day_is_kept_and_the_day_before_is_due():
    rule = PeriodRule(period="P1M", anchor="the anchor event")
    as_of = _stockholm(2025, 3, 1, 2)  # the nightly run
    assert rule.cutoff_date(as_of) == dt.date(2025, 1, 31)  # 28-31 Jan all end on 28 Feb
    assert rule.cutoff(as_of) == _stockholm(2025, 1, 31).end_of("day")


def test_dst_change_does_not_shift_the_day():
    rule = EventRule(event="the account is closed")
    closed = dt.datetime(2025, 3, 30, 1, 30, tzinfo=dt.UTC)  # 03:30 CEST, after the change
    assert rule.due_at(closed) == _stockholm(2025, 3, 31)
    assert rule.due_at(closed).utcoffset() == dt.timedelta(hours=2)


@pytest.mark.parametrize(
    "rule", [IndefiniteRule(reason="certifications"), UnspecifiedRule(note="gap")]
)
def test_never_due_rules(rule):
    assert not rule.enforceable
    assert rule.due_at(dt.date(1900, 1, 1)) is None
    assert rule.cutoff(_stockholm(2100, 1, 1)) is None


@pytest.mark.parametrize(
    "text", ["2Y", "P", "PT1H", "P1.5Y", "P-1D", "p2y", "P2Y1H", "", "P2Y\n", " P2Y", "P123456Y"]
)
def test_malformed_periods_are_rejected(text):
    with pytest.raises(ValueError, match="ISO-8601 period"):
        IsoPeriod.parse(text)


def test_naive_anchor_is_rejected():
    from include.retention.errors import RetentionError

    with pytest.raises(RetentionError, match="no time zone"):
        EventRule(event="the account is closed").due_at(dt.datetime(2025, 1, 1))
