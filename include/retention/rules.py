"""The retention-rule calculus.

Rules say "not before" (kept for a period, then due) or "no later than" (a deadline the policy
promises). Every rule answers two questions that must always agree:

- ``due_at(anchor)``: from which instant may this one record be deleted?
- ``cutoff(as_of)``: which anchors are due at ``as_of``? (``anchor <= cutoff`` exactly when
  ``due_at(anchor) <= as_of``), so the rule can be pushed into a SQL ``WHERE`` clause.

Periods are counted in whole calendar days in Europe/Stockholm: a record is kept for the full
period, which ends with the day ``anchor date + period``; it is due from the next midnight.
Nothing is therefore ever deleted early. Month arithmetic clamps to the month's end
(31 Jan + P1M = 28/29 Feb).

A deadline ("raderas inom en månad", "direkt") must be met by the activity's schedule (cron,
Europe/Stockholm): a record must be gone before the start of the day after ``anchor date +
period``; it is due from the day of the last scheduled run before that instant, and never on its
anchor's own day. "Immediately" is the deadline of one day: the first scheduled run after the day
of the event. A schedule without a run in some record's window cannot meet the deadline and is
refused when the rule is validated.
"""

from __future__ import annotations

import datetime as dt
import re
from bisect import bisect_left
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, ClassVar, Literal

import pendulum
from croniter import CroniterBadDateError, croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    field_validator,
    model_validator,
)

from include.retention.errors import RetentionError
from include.retention.texts import Language, Localised, month_name, period_words

TIMEZONE = pendulum.timezone("Europe/Stockholm")
_ONE_DAY = dt.timedelta(days=1)
_ISO_PERIOD = re.compile(r"P(?:(\d{1,5})Y)?(?:(\d{1,5})M)?(?:(\d{1,5})W)?(?:(\d{1,6})D)?")
MAX_PERIOD_DAYS = 36_525  # 100 years: longer periods are typos, and overflow date arithmetic
_EPOCH = dt.date(2000, 1, 1)

Anchor = dt.datetime | dt.date
DEFAULT_SCHEDULE = "0 2 * * *"  # nightly at 02:00, Europe/Stockholm
# Deadlines are checked against a schedule for every anchor day of four years (one leap year).
_CHECK_FROM, _CHECK_TO = dt.date(2024, 1, 1), dt.date(2027, 12, 31)


@dataclass(frozen=True)
class IsoPeriod:
    """An ISO-8601 calendar period of whole days (``P2Y``, ``P6M``, ``P180D``, ``P0D``)."""

    years: int = 0
    months: int = 0
    days: int = 0
    text: str = "P0D"

    @classmethod
    def parse(cls, text: str) -> IsoPeriod:
        match = _ISO_PERIOD.fullmatch(text) if isinstance(text, str) else None
        if not match or text == "P":
            raise ValueError(
                f"{text!r} is not an ISO-8601 period of whole days such as P2Y, P6M, P180D or P0D"
                " (time parts like PT1H are not supported: retention is counted in days)"
            )
        years, months, weeks, days = (int(part or 0) for part in match.groups())
        period = cls(years=years, months=months, days=weeks * 7 + days, text=text)
        if (
            years > 100
            or months > 1200
            or period.days > MAX_PERIOD_DAYS
            or (period.add_to(_EPOCH) - _EPOCH).days > MAX_PERIOD_DAYS
        ):
            raise ValueError(f"{text!r} is longer than 100 years; retention periods are bounded")
        return period

    @property
    def zero(self) -> bool:
        return not (self.years or self.months or self.days)

    def add_to(self, day: dt.date) -> dt.date:
        return pendulum.Date(day.year, day.month, day.day).add(
            years=self.years, months=self.months, days=self.days
        )

    def subtract_from(self, day: dt.date) -> dt.date:
        return pendulum.Date(day.year, day.month, day.day).subtract(
            years=self.years, months=self.months, days=self.days
        )

    def __str__(self) -> str:
        return self.text

    def words(self, language: Language = "en") -> str:
        """``2 years``, ``6 månader``: the period for a person to read."""
        return period_words(self.years, self.months, self.days, language)


def _parse_period(value: object) -> IsoPeriod:
    if isinstance(value, IsoPeriod):
        return value
    return IsoPeriod.parse(value)  # type: ignore[arg-type]


Period = Annotated[IsoPeriod, PlainValidator(_parse_period), PlainSerializer(str)]


def local_date(anchor: Anchor) -> dt.date:
    """The Stockholm calendar date of an anchor (a date is taken as it is)."""
    if isinstance(anchor, dt.datetime):
        if anchor.tzinfo is None:
            raise RetentionError(
                f"anchor {anchor.isoformat()} has no time zone; localise it to the source's zone"
            )
        return anchor.astimezone(TIMEZONE).date()
    return anchor


def start_of_day(day: dt.date) -> pendulum.DateTime:
    """Midnight at the start of ``day`` in Stockholm (midnight always exists there)."""
    return pendulum.datetime(day.year, day.month, day.day, tz=TIMEZONE)


def end_of_day(day: dt.date) -> pendulum.DateTime:
    """The last representable instant (microsecond) of ``day`` in Stockholm."""
    return start_of_day(day + _ONE_DAY).subtract(microseconds=1)


def _as_of_date(as_of: dt.datetime) -> dt.date:
    if as_of.tzinfo is None:
        raise RetentionError(f"as_of {as_of.isoformat()} has no time zone")
    return as_of.astimezone(TIMEZONE).date()


IMMEDIATELY = IsoPeriod(days=1, text="P1D")  # "direkt": by the end of the day after the event


def check_schedule(schedule: str) -> str:
    """Five cron fields, as Airflow's CronTriggerTimetable accepts them, that do fire."""
    if (
        not isinstance(schedule, str)
        or len(schedule.split()) != 5
        or schedule != schedule.strip()
        or not croniter.is_valid(schedule)
    ):
        raise ValueError(
            f"{schedule!r} is not a cron expression of five fields, e.g. '0 2 * * *'"
            " (minute hour day-of-month month day-of-week, Europe/Stockholm)"
        )
    try:
        croniter(schedule).get_next()
    except CroniterBadDateError:
        raise ValueError(f"cron {schedule!r} never fires (no such date)") from None
    return schedule


@lru_cache(maxsize=64)
def _runs_every_day(schedule: str) -> bool:
    day_of_month, month, day_of_week = croniter(schedule).expanded[2:5]
    return day_of_month == month == day_of_week == ["*"]


@lru_cache(maxsize=4096)
def last_run_day(schedule: str, before: dt.date) -> dt.date | None:
    """The last day before ``before`` on which ``schedule`` runs (Stockholm wall clock: every
    run on a day starts after that day's midnight, so only the day matters)."""
    if _runs_every_day(schedule):
        return before - _ONE_DAY
    midnight = dt.datetime(before.year, before.month, before.day)
    try:
        previous = croniter(schedule, midnight).get_prev(dt.datetime)
    except (ValueError, KeyError):  # croniter gives up on expressions that never match
        return None
    return previous.date()


def next_run_day(schedule: str, after: dt.date) -> dt.date:
    """The first day after ``after`` on which ``schedule`` runs."""
    if _runs_every_day(schedule):
        return after + _ONE_DAY
    midnight = dt.datetime(after.year, after.month, after.day) + _ONE_DAY
    return croniter(schedule, midnight - dt.timedelta(microseconds=1)).get_next(dt.datetime).date()


@lru_cache(maxsize=64)
def _run_days(schedule: str, start: dt.date, end: dt.date) -> tuple[dt.date, ...]:
    """Every day from ``start`` to ``end`` on which ``schedule`` runs."""
    days: list[dt.date] = []
    day = start
    while day <= end:
        midnight = dt.datetime(day.year, day.month, day.day) - dt.timedelta(microseconds=1)
        day = croniter(schedule, midnight).get_next(dt.datetime).date()
        if day <= end:
            days.append(day)
        day += _ONE_DAY
    return tuple(days)


@lru_cache(maxsize=256)
def deadline_problem(schedule: str, within: IsoPeriod) -> str | None:
    """Why ``schedule`` cannot delete every record before its deadline ``within`` after the
    anchor (and after the anchor's own day), or None when it always can."""
    if within.add_to(_CHECK_FROM) <= _CHECK_FROM:
        return "a deadline of 0 days leaves no scheduled run after the event: use at least P1D"
    if _runs_every_day(schedule):
        return None
    last_deadline = within.add_to(_CHECK_TO) + _ONE_DAY
    runs = _run_days(schedule, _CHECK_FROM, last_deadline)
    day = _CHECK_FROM
    while day <= _CHECK_TO:
        first, deadline = day + _ONE_DAY, within.add_to(day) + _ONE_DAY
        index = bisect_left(runs, first)
        if index == len(runs) or runs[index] >= deadline:
            return (
                f"a record anchored on {day} must be deleted before {deadline}, but the schedule"
                f" has no run from {first} to {deadline - _ONE_DAY}"
            )
        day += _ONE_DAY
    return None


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enforceable: ClassVar[bool] = True
    deadline: ClassVar[bool] = False  # "no later than": the schedule must meet it
    # A NULL anchor is "unknown" (counted, never deleted) unless the anchor is an event that
    # may simply not have happened yet (a contract still running, consent not withdrawn).
    null_anchor_is_pending: ClassVar[bool] = False

    def last_due_date(self, as_of_date: dt.date) -> dt.date | None:
        """The latest anchor date that is due on ``as_of_date`` (None: nothing ever is)."""
        raise NotImplementedError

    def due_date(self, anchor_date: dt.date) -> dt.date | None:
        """The first day on which a record anchored on ``anchor_date`` is due."""
        raise NotImplementedError

    def due_at(self, anchor: Anchor) -> pendulum.DateTime | None:
        due = self.due_date(local_date(anchor))
        return None if due is None else start_of_day(due)

    def cutoff(self, as_of: dt.datetime) -> pendulum.DateTime | None:
        last = self.last_due_date(_as_of_date(as_of))
        return None if last is None else end_of_day(last)

    def cutoff_date(self, as_of: dt.datetime) -> dt.date | None:
        """The cutoff for DATE anchors: ``anchor_date <= cutoff_date`` means due."""
        return self.last_due_date(_as_of_date(as_of))

    def describe(self, language: Language = "en") -> str:
        raise NotImplementedError


class _AfterPeriod(_Rule):
    """Due the day after ``anchor date + period``."""

    def _period(self) -> IsoPeriod:
        raise NotImplementedError

    def due_date(self, anchor_date: dt.date) -> dt.date | None:
        return self._period().add_to(anchor_date) + _ONE_DAY

    def last_due_date(self, as_of_date: dt.date) -> dt.date | None:
        # Largest e with e + period <= as_of_date - 1 day. Adding a period is monotone but,
        # because month ends clamp, not invertible: start from the subtraction and step.
        period, target = self._period(), as_of_date - _ONE_DAY
        last = period.subtract_from(target)
        while period.add_to(last) > target:
            last -= _ONE_DAY
        while period.add_to(last + _ONE_DAY) <= target:
            last += _ONE_DAY
        return last


class PeriodRule(_AfterPeriod):
    """Not before: kept for a period after an anchor event, e.g. two years after the hiring
    decision, then due."""

    kind: Literal["period"] = "period"
    period: Period
    anchor: Localised = Field(description="The anchor event, in words (sv/en)")

    def _period(self) -> IsoPeriod:
        return self.period

    @model_validator(mode="after")
    def _not_zero(self) -> PeriodRule:
        if self.period.zero:
            raise ValueError(
                f"period {self.period} keeps nothing: for deletion when an event happens use"
                " rule kind 'event' with the event named"
            )
        return self

    def describe(self, language: Language = "en") -> str:
        after = "efter" if language == "sv" else "after"
        return f"{self.period.words(language)} {after} {self.anchor[language]}"


class _Deadline(_Rule):
    """No later than: a record must be gone before the start of the day after ``anchor date +
    within``. It is due from the day of the schedule's last run before that instant (never on
    the anchor's own day). The schedule is the activity's; the catalogue sets it."""

    deadline: ClassVar[bool] = True
    schedule: str = Field(
        default=DEFAULT_SCHEDULE, description="The activity's cron, Europe/Stockholm"
    )

    _check_schedule = field_validator("schedule")(check_schedule)

    @model_validator(mode="after")
    def _schedule_meets_the_deadline(self) -> _Deadline:
        problem = deadline_problem(self.schedule, self._within())
        if problem:
            raise ValueError(
                f"schedule {self.schedule!r} cannot meet the deadline '{self.describe()}': "
                f"{problem}; schedule a run at least once in every such window (e.g. nightly)"
            )
        return self

    def _within(self) -> IsoPeriod:
        raise NotImplementedError

    def deadline_date(self, anchor_date: dt.date) -> dt.date:
        """The record must be gone before this day begins (Europe/Stockholm)."""
        return self._within().add_to(anchor_date) + _ONE_DAY

    def due_date(self, anchor_date: dt.date) -> dt.date | None:
        earliest = anchor_date + _ONE_DAY
        last_run = last_run_day(self.schedule, self.deadline_date(anchor_date))
        return earliest if last_run is None else max(earliest, last_run)

    def last_due_date(self, as_of_date: dt.date) -> dt.date | None:
        # due_date is monotone in the anchor: step from an estimate to the largest due anchor.
        last = self._within().subtract_from(as_of_date)
        while self._due(last) > as_of_date:
            last -= _ONE_DAY
        while self._due(last + _ONE_DAY) <= as_of_date:
            last += _ONE_DAY
        return last

    def _due(self, anchor_date: dt.date) -> dt.date:
        due = self.due_date(anchor_date)
        assert due is not None  # a deadline always gives a day
        return due


class DeadlineRule(_Deadline):
    """No later than a period after an anchor event, e.g. "raderas inom en månad" after a lead
    declined: deleted at the last scheduled run before the deadline."""

    kind: Literal["deadline"] = "deadline"
    period: Period
    anchor: Localised = Field(description="The anchor event, in words (sv/en)")

    def _within(self) -> IsoPeriod:
        return self.period

    def describe(self, language: Language = "en") -> str:
        if language == "sv":
            return (
                f"senast {self.period.words('sv')} efter {self.anchor.sv} (raderas vid den sista"
                " schemalagda körningen före tidsfristen)"
            )
        return (
            f"no later than {self.period.words('en')} after {self.anchor.en} (deleted at the"
            " last scheduled run before the deadline)"
        )


_IN_PRACTICE = {
    "sv": "i praktiken: vid första schemalagda körningen efter {day}, senast dagen därpå",
    "en": "in practice: at the first scheduled run after the day of {day}, within one day",
}


class EventRule(_Deadline):
    """Immediately when an event happens (a contract ends, a project completes...): the first
    scheduled run after the day of the event, a deadline of one day."""

    kind: Literal["event"] = "event"
    null_anchor_is_pending: ClassVar[bool] = True
    event: Localised

    def _within(self) -> IsoPeriod:
        return IMMEDIATELY

    def describe(self, language: Language = "en") -> str:
        if language == "sv":
            return f"direkt när {self.event.sv} ({_IN_PRACTICE['sv'].format(day='händelsedagen')})"
        return f"immediately when {self.event.en} ({_IN_PRACTICE['en'].format(day='the event')})"


class ConsentRule(_Deadline):
    """Until consent is withdrawn; the anchor is the withdrawal time. Withdrawal takes effect
    immediately: a deadline of one day."""

    kind: Literal["consent"] = "consent"
    null_anchor_is_pending: ClassVar[bool] = True

    def _within(self) -> IsoPeriod:
        return IMMEDIATELY

    def describe(self, language: Language = "en") -> str:
        if language == "sv":
            practice = _IN_PRACTICE["sv"].format(day="dagen för återkallelsen")
            return f"direkt när samtycket återkallas ({practice})"
        practice = _IN_PRACTICE["en"].format(day="the withdrawal")
        return f"immediately when consent is withdrawn ({practice})"


class FiscalYearRule(_Rule):
    """Bokföringslagen 7 kap. 2 §: kept until the end of the ``years``-th calendar year after the
    calendar year in which the fiscal year containing the anchor ended."""

    kind: Literal["fiscal_year"] = "fiscal_year"
    years: int = Field(default=7, ge=0, le=100)
    fiscal_year_end_month: int = Field(
        default=12, ge=1, le=12, description="The fiscal year ends on the last day of this month"
    )
    anchor: Localised

    def _fiscal_year_end_year(self, day: dt.date) -> int:
        return day.year if day.month <= self.fiscal_year_end_month else day.year + 1

    def due_date(self, anchor_date: dt.date) -> dt.date | None:
        return dt.date(self._fiscal_year_end_year(anchor_date) + self.years + 1, 1, 1)

    def last_due_date(self, as_of_date: dt.date) -> dt.date | None:
        year = as_of_date.year - self.years - 1
        return pendulum.Date(year, self.fiscal_year_end_month, 1).end_of("month")

    def describe(self, language: Language = "en") -> str:
        month = month_name(self.fiscal_year_end_month, language)
        years = period_words(self.years, 0, 0, language)
        if language == "sv":
            return (
                f"{years} efter det kalenderår då räkenskapsåret (som slutar i {month}) för"
                f" {self.anchor.sv} avslutades"
            )
        return (
            f"{years} after the calendar year in which the fiscal year (ending in {month}) of"
            f" {self.anchor.en} ended"
        )


class _NeverDue(_Rule):
    enforceable: ClassVar[bool] = False

    def due_date(self, anchor_date: dt.date) -> dt.date | None:
        return None

    def last_due_date(self, as_of_date: dt.date) -> dt.date | None:
        return None


class IndefiniteRule(_NeverDue):
    """Explicitly kept without end (e.g. certifications); not a policy gap."""

    kind: Literal["indefinite"] = "indefinite"
    reason: Localised

    def describe(self, language: Language = "en") -> str:
        if language == "sv":
            return f"sparas tills vidare ({self.reason.sv})"
        return f"kept indefinitely ({self.reason.en})"


class UnspecifiedRule(_NeverDue):
    """The policy states no period: report only, listed as a policy gap, never deleted."""

    kind: Literal["unspecified"] = "unspecified"
    note: Localised

    def describe(self, language: Language = "en") -> str:
        if language == "sv":
            return f"ingen lagringstid angiven (lucka i policyn: {self.note.sv})"
        return f"no retention period stated (policy gap: {self.note.en})"


Rule = Annotated[
    PeriodRule
    | DeadlineRule
    | EventRule
    | ConsentRule
    | FiscalYearRule
    | IndefiniteRule
    | UnspecifiedRule,
    Field(discriminator="kind"),
]
DEADLINE_KINDS = ("deadline", "event", "consent")  # the rules that take the activity's schedule
