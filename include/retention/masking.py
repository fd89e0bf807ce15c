"""Anonymisation strategies: each is named, configured by a validated model, found in a registry.

The engine applies them as one set-based ``UPDATE`` per batch; each strategy renders the SQL
expression that replaces a column's value (see :mod:`include.retention.sql_engine`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

STRATEGIES: dict[str, type[MaskStrategy]] = {}


class MaskStrategy(BaseModel):
    """Base of every strategy: ``strategy`` names it in the catalogue."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        STRATEGIES[cls.name] = cls


class NullMask(MaskStrategy):
    """Replace the value with NULL."""

    name = "null"
    strategy: Literal["null"] = "null"


class FixedMask(MaskStrategy):
    """Replace the value with one fixed value (e.g. ``"anonymised"``)."""

    name = "fixed"
    strategy: Literal["fixed"] = "fixed"
    value: str | int | float


class HmacMask(MaskStrategy):
    """Replace the value with a keyed-HMAC pseudonym (hex), stable across records."""

    name = "hmac"
    strategy: Literal["hmac"] = "hmac"
    length: int = Field(default=32, ge=16, le=64, description="Hex characters kept")


class YearMask(MaskStrategy):
    """Generalise a date to its year: the value becomes 1 January of the same year."""

    name = "year"
    strategy: Literal["year"] = "year"


class BandMask(MaskStrategy):
    """Band a number: the value becomes the lower bound of its band of ``width``."""

    name = "band"
    strategy: Literal["band"] = "band"
    width: int = Field(gt=0)


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
