"""Designing demo records from the catalogue's rules: which anchor values test what.

For every enforceable rule case the designer makes records that are expired, not yet due,
exactly on the boundary (the last instant of ``cutoff_date(as_of)`` — due — and the first
instant of the next day — kept), held, with a NULL anchor, and (for consent cases) with
consent withdrawn. Anchor values are computed from the rule calculus at ``as_of``; datetime
anchors are returned as naive UTC, date anchors as dates. Fewer than a quarter of each
dataset is due, so a demo run stays within the default safety limit (25%) without approval.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from typing import Any, Literal

import pendulum

from include.demo.manifest import Expectation, HoldScope
from include.retention.catalogue import Activity, RuleCase
from include.retention.rules import TIMEZONE

AnchorKind = Literal["date", "datetime"]
E = Expectation
_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Design:
    """The designed values (anchor and condition columns) of one record."""

    expectation: Expectation
    values: dict[str, Any]
    hold: HoldScope | None = None
    note: str = ""


@dataclass(frozen=True)
class OutOfScope:
    """A record no enforceable case applies to; its anchors are ``expired`` or ``none``."""

    values: dict[str, Any]
    anchors: Literal["expired", "none"] = "expired"
    note: str = ""


@dataclass
class Designer:
    """Anchor values for one activity at ``as_of`` (``kinds``: anchor column -> date/datetime)."""

    activity: Activity
    as_of: dt.datetime
    kinds: dict[str, AnchorKind]
    rng: random.Random
    counts: dict[Expectation, int] = field(default_factory=dict)

    @property
    def today(self) -> dt.date:
        return self.as_of.astimezone(TIMEZONE).date()

    # ------------------------------------------------------------------ values

    def at(self, column: str, day: dt.date, seconds: int) -> dt.date | dt.datetime:
        """The anchor value for ``day`` (Stockholm) at ``seconds`` after its midnight."""
        return day if self.kinds[column] == "date" else self._instant(day, seconds)

    @staticmethod
    def _instant(day: dt.date, seconds: int) -> dt.datetime:
        """Naive UTC of ``seconds`` after midnight of ``day`` in Stockholm."""
        local = pendulum.datetime(day.year, day.month, day.day, tz=TIMEZONE).add(seconds=seconds)
        return local.in_tz("UTC").naive()

    def _random_time(self) -> int:
        return self.rng.randint(7 * 3600, 19 * 3600)

    def expired(self, case: RuleCase, max_days: int = 900) -> dt.date | dt.datetime:
        cut = _cutoff(case, self.as_of)
        day = cut - _DAY * self.rng.randint(1, max_days)
        return self.at(_anchor(case), day, self._random_time())

    def kept(self, case: RuleCase) -> dt.date | dt.datetime:
        """A not-yet-due anchor: after the boundary day, not after ``as_of``."""
        column, first = _anchor(case), _cutoff(case, self.as_of) + _DAY
        span = (self.today - first).days
        day = first + _DAY * self.rng.randint(0, max(span, 0))
        if self.kinds[column] == "date":
            return day
        value = self._instant(day, self._random_time())
        latest = self.as_of.astimezone(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=1)
        return max(self._instant(first, 1), min(value, latest))

    def boundary(self, case: RuleCase, due: bool) -> dt.date | dt.datetime:
        cut = _cutoff(case, self.as_of)
        return self.at(_anchor(case), cut, 86399) if due else self.at(_anchor(case), cut + _DAY, 0)

    def past(self, column: str, max_days: int = 1000) -> dt.date | dt.datetime:
        """Any past value (for anchors of cases that are never due)."""
        day = self.today - _DAY * self.rng.randint(1, max_days)
        return self.at(column, day, self._random_time())

    # ----------------------------------------------------------------- designs

    def designs(self, out_of_scope: tuple[OutOfScope, ...] = ()) -> list[Design]:
        cases = [c for c in self.activity.retention if c.rule.enforceable]
        if not cases:
            return self._report_only()
        designs: list[Design] = []
        for case in cases:
            made = self._consent(case) if case.rule.kind == "consent" else self._period(case)
            designs += [self._complete(d, case) for d in made]
        designs += [self._out_of_scope(o) for o in out_of_scope]
        return designs

    def _period(self, case: RuleCase) -> list[Design]:
        col = _anchor(case)
        return [
            *[Design(E.expired, {col: self.expired(case)}) for _ in range(4)],
            Design(E.boundary_due, {col: self.boundary(case, True)}, note="last instant due"),
            Design(E.boundary_kept, {col: self.boundary(case, False)}, note="first instant kept"),
            *[Design(E.kept, {col: self.kept(case)}) for _ in range(12)],
            Design(E.held, {col: self.expired(case)}, hold="record", note="record hold"),
            Design(E.held, {col: self.expired(case)}, hold="subject", note="subject hold"),
            *[Design(E.unknown_anchor, {col: None}) for _ in range(2)],
        ]

    def _consent(self, case: RuleCase) -> list[Design]:
        col = _anchor(case)
        return [
            *[Design(E.consent_withdrawn, {col: self.expired(case, 60)}) for _ in range(3)],
            Design(E.boundary_due, {col: self.boundary(case, True)}, note="withdrawn yesterday"),
            Design(E.boundary_kept, {col: self.boundary(case, False)}, note="withdrawn today"),
            *[Design(E.kept, {col: None}, note="consent in force") for _ in range(12)],
            Design(E.held, {col: self.expired(case, 60)}, hold="record", note="withdrawn, held"),
        ]

    def _report_only(self) -> list[Design]:
        columns = {c.anchor_column for c in self.activity.retention if c.anchor_column}
        kept = [Design(E.kept, {c: self.past(c, 2500) for c in columns}) for _ in range(16)]
        return kept + [Design(E.unknown_anchor, dict.fromkeys(columns)) for _ in range(3)]

    def _complete(self, design: Design, target: RuleCase) -> Design:
        """Put the record in the target case's scope; keep every other case not due."""
        values = dict(design.values)
        if target.when is not None:
            values.setdefault(target.when.column, target.when.values[0])
        for case in self.activity.retention:
            col = case.anchor_column
            if case is target or col is None or col in values or not _applies(case, values):
                continue
            if not case.rule.enforceable:
                values[col] = self.past(col)
            elif case.rule.kind == "consent":
                values[col] = None
            else:
                values[col] = self.kept(case)
        return Design(design.expectation, values, design.hold, design.note)

    def _out_of_scope(self, spec: OutOfScope) -> Design:
        values = dict(spec.values)
        for case in self.activity.retention:
            col = case.anchor_column
            if col is None or col in values:
                continue
            if not case.rule.enforceable:
                values[col] = self.past(col)
            else:
                values[col] = self.expired(case) if spec.anchors == "expired" else None
        return Design(E.out_of_scope, values, note=spec.note)


def _anchor(case: RuleCase) -> str:
    assert case.anchor_column is not None  # enforceable cases always have one
    return case.anchor_column


def _cutoff(case: RuleCase, as_of: dt.datetime) -> dt.date:
    cut = case.rule.cutoff_date(as_of)
    assert cut is not None  # enforceable rules always have a cutoff
    return cut


def _applies(case: RuleCase, values: dict[str, Any]) -> bool:
    if case.when is None:
        return True
    return case.when.column not in values or values[case.when.column] in case.when.values
