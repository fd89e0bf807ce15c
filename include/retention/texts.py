"""Texts in Swedish and English: the model for a localised catalogue text and the few words
the product itself renders (periods, months), so nothing English leaks into Swedish output."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Language = Literal["sv", "en"]
LANGUAGES: tuple[Language, ...] = ("sv", "en")

_UNITS = {
    "sv": {"years": ("år", "år"), "months": ("månad", "månader"), "days": ("dag", "dagar")},
    "en": {"years": ("year", "years"), "months": ("month", "months"), "days": ("day", "days")},
}
_AND = {"sv": "och", "en": "and"}
MONTHS = {
    "sv": "januari februari mars april maj juni juli augusti september oktober november december",
    "en": "January February March April May June July August September October November December",
}


class Localised(BaseModel):
    """A text in Swedish and English."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sv: str = Field(min_length=2)
    en: str = Field(min_length=2)

    def __getitem__(self, language: str) -> str:
        if language not in LANGUAGES:
            raise ValueError(f"language must be one of {LANGUAGES}, not {language!r}")
        return str(getattr(self, language))


def period_words(years: int, months: int, days: int, language: Language) -> str:
    """``2 years``, ``1 år och 6 månader``, ``0 days``: a period for a person to read."""
    units = _UNITS[language]
    parts = [
        f"{n} {units[name][0] if n == 1 else units[name][1]}"
        for name, n in (("years", years), ("months", months), ("days", days))
        if n
    ]
    if not parts:
        return f"0 {units['days'][1]}"
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} {_AND[language]} {parts[-1]}"


def month_name(month: int, language: Language) -> str:
    return MONTHS[language].split()[month - 1]
