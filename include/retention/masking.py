"""Anonymisation strategies: each is named, configured by a validated model, found in a registry.

A SQL source applies them as one set-based ``UPDATE`` per batch (each strategy renders the SQL
expression that replaces a column's value, see :mod:`include.retention.sources.sql`); other
sources and rectification use :meth:`MaskStrategy.mask` on values in Python. Each declares the
column types it can replace (checked when the dataset is resolved) and describes itself for the
UI (:func:`describe_strategies`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from decimal import Decimal
from typing import Any, ClassVar, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.sql.elements import ColumnElement

from include.retention.errors import RetentionError

STRATEGIES: dict[str, type[MaskStrategy]] = {}


class MaskStrategy(BaseModel):
    """Base of every strategy: ``strategy`` names it in the catalogue."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str]
    removes_value: ClassVar[bool] = False  # nothing of the value is left (anonymises it)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name in STRATEGIES:
            raise TypeError(
                f"masking strategy name {cls.name!r} is taken by {STRATEGIES[cls.name].__name__}"
            )
        STRATEGIES[cls.name] = cls

    def mask(self, value: Any) -> Any:
        """The value that replaces ``value`` (None stays None), in Python."""
        raise NotImplementedError(f"strategy {self.name!r} has no Python rendering")

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """What the strategy does, for people: name, summary, settings, column types."""
        settings = {
            name: field.description or str(field.annotation)
            for name, field in cls.model_fields.items()
            if name != "strategy"
        }
        return {
            "strategy": cls.name,
            "summary": (cls.__doc__ or "").strip().splitlines()[0],
            "settings": settings,
            "column_types": [t.__name__ for t in cls.column_types] or ["any"],
            "removes_value": cls.removes_value,
        }

    # SQLAlchemy types of the columns the strategy can replace (empty: any).
    column_types: ClassVar[tuple[type[sa.types.TypeEngine[Any]], ...]] = ()

    def to_sql(self, column: sa.Column[Any], dialect: str, key: bytes) -> ColumnElement[Any]:
        """The SQL expression that replaces ``column``'s value (``dialect``: engine name)."""
        raise NotImplementedError(f"strategy {self.name!r} has no SQL rendering")

    def check_type(self, column: str, type_: sa.types.TypeEngine[Any]) -> None:
        """Refuse a column whose type the strategy cannot replace (checked at resolve time)."""
        if self.column_types and not isinstance(type_, self.column_types):
            kinds = ", ".join(t.__name__ for t in self.column_types)
            raise RetentionError(
                f"column {column!r} is {type_}: masking strategy {self.name!r} works on"
                f" {kinds} columns only; choose another strategy or column"
            )


def mask_key(key: bytes) -> bytes:
    """A sub-key for pseudonyms in the data, separate from the ledger's record references."""
    return hmac.new(key, b"retention-mask-pseudonym", hashlib.sha256).digest()


class NullMask(MaskStrategy):
    """Replace the value with NULL."""

    name = "null"
    removes_value = True
    strategy: Literal["null"] = "null"

    def to_sql(self, column: sa.Column[Any], dialect: str, key: bytes) -> ColumnElement[Any]:
        return sa.null()

    def mask(self, value: Any) -> Any:
        return None


class FixedMask(MaskStrategy):
    """Replace the value with one fixed value (e.g. ``"anonymised"``), the same for every row."""

    name = "fixed"
    removes_value = True
    strategy: Literal["fixed"] = "fixed"
    value: str | int | float

    def to_sql(self, column: sa.Column[Any], dialect: str, key: bytes) -> ColumnElement[Any]:
        return sa.literal(self.value, type_=column.type)

    def mask(self, value: Any) -> Any:
        return self.value


class YearMask(MaskStrategy):
    """Generalise a date to its year: the value becomes 1 January of the same year."""

    name = "year"
    column_types = (sa.Date, sa.DateTime)
    strategy: Literal["year"] = "year"

    def to_sql(self, column: sa.Column[Any], dialect: str, key: bytes) -> ColumnElement[Any]:
        with_time = isinstance(column.type, sa.DateTime)
        if dialect == "postgresql":
            return sa.cast(sa.func.date_trunc("year", column), column.type)
        if dialect in ("mysql", "mariadb"):
            return sa.cast(sa.func.makedate(sa.func.year(column), 1), column.type)
        if dialect == "sqlite":  # SQLAlchemy stores dates as ISO text on SQLite
            pattern = "%Y-01-01 00:00:00.000000" if with_time else "%Y-01-01"
            return sa.func.strftime(pattern, column)
        raise NotImplementedError(f"strategy 'year' is not implemented for {dialect}")

    def mask(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value) if "T" in value or " " in value else (
                dt.date.fromisoformat(value)
            )  # fmt: skip
        if isinstance(value, dt.datetime):
            return value.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
        if isinstance(value, dt.date):
            return dt.date(value.year, 1, 1)
        raise RetentionError(f"strategy 'year' cannot mask a {type(value).__name__}")


class BandMask(MaskStrategy):
    """Band a number: the value becomes the lower bound of its band of ``width``."""

    name = "band"
    column_types = (sa.Integer, sa.Numeric)
    strategy: Literal["band"] = "band"
    width: int = Field(gt=0)

    def to_sql(self, column: sa.Column[Any], dialect: str, key: bytes) -> ColumnElement[Any]:
        # value - ((value mod w) + w) mod w: the lower band bound, also for negative values.
        width = sa.literal(self.width)
        return column - ((column % width + width) % width)

    def mask(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise RetentionError(f"strategy 'band' cannot mask a {type(value).__name__}")
        number: Any = value
        rem = number % self.width
        if rem < 0:  # Decimal's % keeps the dividend's sign; int and float floor
            rem += self.width
        return number - rem


def parse_mask(raw: object) -> MaskStrategy:
    """Validate one column's masking spec, e.g. ``{"strategy": "band", "width": 10}``."""
    if isinstance(raw, MaskStrategy):
        return raw
    if not isinstance(raw, dict) or "strategy" not in raw:
        raise ValueError(f"a masking spec needs a 'strategy' (one of {sorted(STRATEGIES)})")
    strategy = STRATEGIES.get(raw["strategy"])
    if strategy is None:
        raise ValueError(
            f"unknown masking strategy {raw['strategy']!r}; known: {sorted(STRATEGIES)}"
        )
    return strategy.model_validate(raw)


def describe_strategies() -> list[dict[str, Any]]:
    """Every registered strategy, described (for the UI and the docs)."""
    return [STRATEGIES[name].describe() for name in sorted(STRATEGIES)]
