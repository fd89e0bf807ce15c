"""Anonymisation strategies: each is named, configured by a validated model, found in a registry.

The engine applies them as one set-based ``UPDATE`` per batch; each strategy renders the SQL
expression that replaces a column's value (see :mod:`include.retention.sql_engine`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.sql.elements import ColumnElement

from include.retention.pseudonym import hmac_pads

STRATEGIES: dict[str, type[MaskStrategy]] = {}


class MaskStrategy(BaseModel):
    """Base of every strategy: ``strategy`` names it in the catalogue."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str]
    removes_value: ClassVar[bool] = False  # nothing of the value is left (anonymises it)
    keyed: ClassVar[bool] = False  # a per-value replacement a key holder can link back

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        STRATEGIES[cls.name] = cls

    def to_sql(self, column: sa.Column[Any], dialect: str, key: bytes) -> ColumnElement[Any]:
        """The SQL expression that replaces ``column``'s value (``dialect``: engine name)."""
        raise NotImplementedError(f"strategy {self.name!r} has no SQL rendering")


class NullMask(MaskStrategy):
    """Replace the value with NULL."""

    name = "null"
    removes_value = True
    strategy: Literal["null"] = "null"

    def to_sql(self, column: sa.Column[Any], dialect: str, key: bytes) -> ColumnElement[Any]:
        return sa.null()


class FixedMask(MaskStrategy):
    """Replace the value with one fixed value (e.g. ``"anonymised"``), the same for every row."""

    name = "fixed"
    removes_value = True
    strategy: Literal["fixed"] = "fixed"
    value: str | int | float

    def to_sql(self, column: sa.Column[Any], dialect: str, key: bytes) -> ColumnElement[Any]:
        return sa.literal(self.value, type_=column.type)


class HmacMask(MaskStrategy):
    """Replace the value with a keyed-HMAC pseudonym (hex), stable across records.

    Pseudonymisation: the key holder can link it back, so anonymisation refuses it."""

    name = "hmac"
    keyed = True
    strategy: Literal["hmac"] = "hmac"
    length: int = Field(default=32, ge=16, le=64, description="Hex characters kept")

    def to_sql(self, column: sa.Column[Any], dialect: str, key: bytes) -> ColumnElement[Any]:
        """HMAC-SHA256(key, text of the value) as lower-case hex, computed by the database from
        SHA-256 with the key pre-xored with ipad/opad (bound parameters, never in the SQL text).
        NULL stays NULL. SQLite needs ``retention_hmac_hex`` registered on the connection."""
        if dialect == "sqlite":
            digest: ColumnElement[Any] = sa.func.retention_hmac_hex(
                sa.literal(key, sa.LargeBinary), column
            )
        else:
            ipad, opad = hmac_pads(key)
            digest = _sql_hmac(column, ipad, opad, dialect)
        return sa.func.substr(digest, 1, self.length)


class YearMask(MaskStrategy):
    """Generalise a date to its year: the value becomes 1 January of the same year."""

    name = "year"
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


class BandMask(MaskStrategy):
    """Band a number: the value becomes the lower bound of its band of ``width``."""

    name = "band"
    strategy: Literal["band"] = "band"
    width: int = Field(gt=0)

    def to_sql(self, column: sa.Column[Any], dialect: str, key: bytes) -> ColumnElement[Any]:
        # value - ((value mod w) + w) mod w: the lower band bound, also for negative values.
        width = sa.literal(self.width)
        return column - ((column % width + width) % width)


def _sql_hmac(column: sa.Column[Any], ipad: bytes, opad: bytes, dialect: str) -> ColumnElement[Any]:
    k_in, k_out = sa.literal(ipad, sa.LargeBinary), sa.literal(opad, sa.LargeBinary)
    if dialect == "postgresql":
        message = sa.func.convert_to(sa.cast(column, sa.Text), "UTF8")
        inner = sa.func.sha256(k_in.op("||", return_type=sa.LargeBinary)(message))
        outer = sa.func.sha256(k_out.op("||", return_type=sa.LargeBinary)(inner))
        return sa.func.encode(outer, "hex")
    if dialect in ("mysql", "mariadb"):
        inner = sa.func.unhex(sa.func.sha2(sa.func.concat(k_in, column), 256))
        return sa.func.lower(sa.func.sha2(sa.func.concat(k_out, inner), 256))
    raise NotImplementedError(f"strategy 'hmac' is not implemented for {dialect}")


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
