"""The retention-rule calculus.

Every rule answers two questions that must always agree:

- ``due_at(anchor)``: from which instant may this one record be deleted?
- ``cutoff(as_of)``: which anchors are due at ``as_of``? (``anchor <= cutoff`` exactly when
  ``due_at(anchor) <= as_of``), so the rule can be pushed into a SQL ``WHERE`` clause.

Periods are counted in whole calendar days in Europe/Stockholm: a record is kept for the full
period, which ends with the day ``anchor date + period``; it is due from the next midnight.
Nothing is therefore ever deleted early, and "immediately" (P0D) means the first nightly run
after the event. Month arithmetic clamps to the month's end (31 Jan + P1M = 28/29 Feb).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import pendulum
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    model_validator,
)

from include.retention.errors import RetentionError

TIMEZONE = pendulum.timezone("Europe/Stockholm")
_ONE_DAY = dt.timedelta(days=1)
_ISO_PERIOD = re.compile(r"P(?:(\d{1,5})Y)?(?:(\d{1,5})M)?(?:(\d{1,5})W)?(?:(\d{1,6})D)?")
MAX_PERIOD_DAYS = 36_525  # 100 years: longer periods are typos, and overflow date arithmetic
_EPOCH = dt.date(2000, 1, 1)

Anchor = dt.datetime | dt.date


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


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enforceable: ClassVar[bool] = True
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

    def describe(self) -> str:
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
    """A period after an anchor event, e.g. two years after the hiring decision."""

    kind: Literal["period"] = "period"
    period: Period
    anchor: str = Field(min_length=3, description="The anchor event, in words")

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

    def describe(self) -> str:
        return f"{self.period} after {self.anchor}"


class EventRule(_AfterPeriod):
    """Immediately when an event happens (a contract ends, a project completes...)."""

    kind: Literal["event"] = "event"
    null_anchor_is_pending: ClassVar[bool] = True
    event: str = Field(min_length=3)

    def _period(self) -> IsoPeriod:
        return IsoPeriod()

    def describe(self) -> str:
        return f"immediately when {self.event}"


class ConsentRule(_AfterPeriod):
    """Until consent is withdrawn; the anchor is the withdrawal time."""

    kind: Literal["consent"] = "consent"
    null_anchor_is_pending: ClassVar[bool] = True

    def _period(self) -> IsoPeriod:
        return IsoPeriod()

    def describe(self) -> str:
        return "immediately when consent is withdrawn"


class FiscalYearRule(_Rule):
    """Bokföringslagen 7 kap. 2 §: kept until the end of the ``years``-th calendar year after the
    calendar year in which the fiscal year containing the anchor ended."""

    kind: Literal["fiscal_year"] = "fiscal_year"
    years: int = Field(default=7, ge=0, le=100)
    fiscal_year_end_month: int = Field(
        default=12, ge=1, le=12, description="The fiscal year ends on the last day of this month"
    )
    anchor: str = Field(min_length=3)

    def _fiscal_year_end_year(self, day: dt.date) -> int:
        return day.year if day.month <= self.fiscal_year_end_month else day.year + 1

    def due_date(self, anchor_date: dt.date) -> dt.date | None:
        return dt.date(self._fiscal_year_end_year(anchor_date) + self.years + 1, 1, 1)

    def last_due_date(self, as_of_date: dt.date) -> dt.date | None:
        year = as_of_date.year - self.years - 1
        return pendulum.Date(year, self.fiscal_year_end_month, 1).end_of("month")

    def describe(self) -> str:
        return (
            f"until the end of the {self.years}th calendar year after the fiscal year"
            f" (ending month {self.fiscal_year_end_month}) of {self.anchor}"
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
    reason: str = Field(min_length=3)

    def describe(self) -> str:
        return f"kept indefinitely ({self.reason})"


class UnspecifiedRule(_NeverDue):
    """The policy states no period: report only, listed as a policy gap, never deleted."""

    kind: Literal["unspecified"] = "unspecified"
    note: str = Field(min_length=3)

    def describe(self) -> str:
        return f"no retention period stated (policy gap: {self.note})"


Rule = Annotated[
    PeriodRule | EventRule | ConsentRule | FiscalYearRule | IndefiniteRule | UnspecifiedRule,
    Field(discriminator="kind"),
]
