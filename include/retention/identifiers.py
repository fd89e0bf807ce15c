"""Identify a data subject from what a request gives: validate and normalise identifiers.

A request names the person by one or more of these kinds (the fields of the trigger forms and
of ``ledger lookup``):

============  ===============================================  =========================
kind          accepted                                         normal form
============  ===============================================  =========================
email         ``Anna.Berg@Example.se`` (surrounding spaces)    ``anna.berg@example.se``
phone         ``070-123 45 67``, ``+46 (0)70 123 45 67``,      E.164: ``+46701234567``
              ``0046 70 123 45 67``, ``+44 20 7946 0958``
personnummer  personnummer or samordningsnummer (day + 60):     12 digits:
              ``YYMMDD-NNNN``, ``YYMMDD+NNNN`` (100 years or    ``YYYYMMDDNNNN``
              older), ``YYYYMMDD-NNNN``, with or without ``-``
customer_id   ``k 10012``                                      ``K10012``
============  ===============================================  =========================

Invalid input raises :class:`InvalidIdentifier` naming the field and what to fix. The
messages never repeat the value: they end up in task logs, which must hold no personal data.
The normal form is what :func:`include.retention.pseudonym.subject_ref` is computed from, so
the same person given in different spellings gets the same keyed reference.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from include.retention.errors import RetentionError

KINDS: tuple[str, ...] = ("email", "phone", "personnummer", "customer_id")
LABELS = {
    "email": "e-mail address",
    "phone": "phone number",
    "personnummer": "personnummer or samordningsnummer",
    "customer_id": "customer id",
}
MAX_INPUT = 320  # longer than any identifier of these kinds: refused before parsing

_EMAIL_MAX, _LOCAL_MAX, _LABEL_MAX = 254, 64, 63
_LOCAL = re.compile(r"[\w!#$%&'*+/=?^`{|}~-]+(\.[\w!#$%&'*+/=?^`{|}~-]+)*")
_LABEL = re.compile(r"[^\W_]([\w-]*[^\W_])?")  # letters/digits, inner hyphens (IDN allowed)
_PHONE_PUNCTUATION = re.compile(r"[\s\-./()\u00a0]")
_TRUNK_ZERO = re.compile(r"^\+(\d{1,3})\s*\(0\)")  # "+46 (0)70 …": the (0) is not dialled
_PNR = re.compile(r"([0-9]{2})?([0-9]{2})([0-9]{2})([0-9]{2})([-+]?)([0-9]{4})")
_CUSTOMER_ID = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,63}")
SWEDEN = "46"
SAMORDNING_OFFSET = 60  # a samordningsnummer's day of birth plus 60


class InvalidIdentifier(RetentionError):
    """An identifier that cannot be used; ``field`` names the form field it came from."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class SubjectId:
    """One normalised identifier of a data subject. ``value`` is personal data: its repr
    hides it, so a logged object shows only the kind."""

    kind: str
    value: str = field(repr=False)
    variant: str | None = None  # "samordningsnummer" for a coordination number

    def __str__(self) -> str:
        return f"{self.variant or self.kind} (value withheld)"


# ------------------------------------------------------------------------------ e-mail


# The common case, plain ASCII, accepted in one regex: exactly what the full check below
# accepts of ASCII text (its \w is [A-Za-z0-9_]); anything else takes the full check. Source
# values of a lookup column are normalised by the million (`include.retention.lookup`).
_ATEXT = r"[A-Za-z0-9_!#$%&'*+/=?^`{|}~-]"
_ASCII_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_ASCII_EMAIL = re.compile(
    rf"(?=[^@]{{1,{_LOCAL_MAX}}}@){_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_ASCII_LABEL}\.)+{_ASCII_LABEL}"
)


def normalise_email(raw: Any, field: str = "email") -> str:
    """``local@domain`` lower-cased (case-folded); spaces around it dropped."""
    if isinstance(raw, str):
        text = raw.strip()
        if (
            len(text) <= _EMAIL_MAX
            and _ASCII_EMAIL.fullmatch(text)
            and not text.rsplit(".", 1)[1].isdigit()
        ):
            return text.lower()  # ASCII: lower() is casefold() and NFC changes nothing
    return _normalise_email(raw, field)


def _normalise_email(raw: Any, field: str) -> str:
    text = _text(raw, field)
    if any(c.isspace() for c in text):
        raise InvalidIdentifier(field, "an e-mail address has no spaces inside it")
    if text.count("@") != 1:
        found = "no '@'" if "@" not in text else "more than one '@'"
        raise InvalidIdentifier(field, f"not an e-mail address: it has {found} (name@domain.se)")
    local, domain = text.split("@")
    if not local or len(local) > _LOCAL_MAX or not _LOCAL.fullmatch(local):
        raise InvalidIdentifier(
            field,
            f"the part before '@' must be 1-{_LOCAL_MAX} letters, digits or . _ + - (no leading,"
            " trailing or double dots)",
        )
    _check_domain(domain, field)
    value = unicodedata.normalize("NFC", text).casefold()
    if len(value) > _EMAIL_MAX:
        raise InvalidIdentifier(field, f"an e-mail address has at most {_EMAIL_MAX} characters")
    return value


def _check_domain(domain: str, field: str) -> None:
    labels = domain.split(".")
    if len(labels) < 2 or not all(labels):
        raise InvalidIdentifier(
            field, "the domain after '@' needs a dot and no empty parts (e.g. example.se)"
        )
    for label in labels:
        if len(label) > _LABEL_MAX or not _LABEL.fullmatch(label):
            raise InvalidIdentifier(
                field,
                f"each part of the domain must be 1-{_LABEL_MAX} letters or digits, hyphens only"
                " inside",
            )
    if labels[-1].isdigit():
        raise InvalidIdentifier(field, "the domain must end in a name such as .se, not a number")


# ------------------------------------------------------------------------------ phone


def normalise_phone(raw: Any, field: str = "phone") -> str:
    """E.164 (``+`` country code and number, digits only). A number starting with a single
    ``0`` is Swedish; ``00`` is the international prefix."""
    text = _TRUNK_ZERO.sub(r"+\1", _text(raw, field))
    compact = _PHONE_PUNCTUATION.sub("", text)
    if compact.startswith("+"):
        digits = compact[1:]
    elif compact.startswith("00"):
        digits = compact[2:]
    elif compact.startswith("0"):
        digits = SWEDEN + compact[1:]
    else:
        raise InvalidIdentifier(
            field,
            "start with + and the country code (+46 70 123 45 67) or with 0 for a Swedish"
            " number (070-123 45 67)",
        )
    if not digits.isascii() or not digits.isdigit():
        raise InvalidIdentifier(
            field, "a phone number has only digits, spaces, '-', '(', ')' and a leading '+'"
        )
    if digits.startswith(SWEDEN + "0"):  # "+46 070…": the trunk 0 is dropped after +46
        digits = SWEDEN + digits[3:]
    _check_phone_length(digits, field)
    return "+" + digits


def _check_phone_length(digits: str, field: str) -> None:
    if digits.startswith("0"):
        raise InvalidIdentifier(field, "a country code never starts with 0")
    if digits.startswith(SWEDEN):
        if not 7 <= len(digits) - len(SWEDEN) <= 9:
            raise InvalidIdentifier(
                field, "a Swedish number has 7-9 digits after +46 (or 8-10 with the leading 0)"
            )
    elif not 8 <= len(digits) <= 15:
        raise InvalidIdentifier(
            field, "an international number has 8-15 digits including the country code"
        )


# ------------------------------------------------------------------------------ personnummer


def luhn_check_digit(nine_digits: str) -> int:
    """The control digit of a personnummer's first nine digits (YYMMDDNNN): the Luhn
    algorithm with weights 2, 1, 2, …"""
    total = 0
    for i, char in enumerate(nine_digits):
        product = int(char) * (2 if i % 2 == 0 else 1)
        total += product - 9 if product > 9 else product
    return (10 - total % 10) % 10


def normalise_personnummer(
    raw: Any, field: str = "personnummer", today: dt.date | None = None
) -> SubjectId:
    """A personnummer or samordningsnummer as 12 digits ``YYYYMMDDNNNN``.

    With 10 digits the century is the latest one that puts the birth date on or before
    ``today``; ``+`` instead of ``-`` means the person is 100 or older (one century earlier).
    """
    text = _text(raw, field).replace(" ", "")
    if not text.isascii():  # full-width or other scripts' digits: their normal form differs
        raise InvalidIdentifier(
            field,
            "a personnummer has only the digits 0-9 and '-' or '+' (no full-width or other"
            " non-ASCII characters): write it as YYYYMMDD-NNNN or YYMMDD-NNNN",
        )
    match = _PNR.fullmatch(text)
    if match is None:
        raise InvalidIdentifier(
            field,
            "write it as YYYYMMDD-NNNN or YYMMDD-NNNN (10 or 12 digits; '+' instead of '-'"
            " for someone 100 or older)",
        )
    century, yy, mm, dd, separator, tail = match.groups()
    if century is not None and separator == "+":
        raise InvalidIdentifier(
            field, "'+' is only used with the 10-digit form (YYMMDD+NNNN); write YYYYMMDD-NNNN"
        )
    day = int(dd)
    variant = "samordningsnummer" if day > SAMORDNING_OFFSET else "personnummer"
    if variant == "samordningsnummer":
        day -= SAMORDNING_OFFSET
    if int(tail[3]) != luhn_check_digit(yy + mm + dd + tail[:3]):
        raise InvalidIdentifier(
            field, f"the check digit (the last digit) does not match: not a valid {variant}"
        )
    today = today or dt.date.today()
    year = _year(century, yy, (int(mm), day), separator, today)
    try:
        born = dt.date(year, int(mm), day)
    except ValueError:
        raise InvalidIdentifier(
            field, f"the date of birth in the {variant} does not exist"
        ) from None
    if born > today:
        raise InvalidIdentifier(field, f"the date of birth in the {variant} is in the future")
    return SubjectId("personnummer", f"{year:04d}{mm}{dd}{tail}", variant)


def _year(
    century: str | None, yy: str, month_day: tuple[int, int], separator: str, today: dt.date
) -> int:
    """The year of birth: explicit with 12 digits; else the latest year ending in ``yy`` whose
    birthday is not after ``today``, a century earlier with ``+``."""
    if century is not None:
        return int(century + yy)
    year = today.year - (today.year - int(yy)) % 100
    if year == today.year and month_day > (today.month, today.day):
        year -= 100
    return year - 100 if separator == "+" else year


# ------------------------------------------------------------------------------ customer id


def normalise_customer_id(raw: Any, field: str = "customer_id") -> str:
    """Upper case, spaces removed (``k 10012`` -> ``K10012``)."""
    value = "".join(_text(raw, field).split()).upper()
    if not _CUSTOMER_ID.fullmatch(value):
        raise InvalidIdentifier(
            field, "a customer id is 1-64 letters A-Z, digits, '.', '_' or '-' (e.g. K10012)"
        )
    return value


# ------------------------------------------------------------------------------ entry points


def _text(raw: Any, field: str) -> str:
    if not isinstance(raw, str):
        raise InvalidIdentifier(field, f"must be text, not {type(raw).__name__}")
    text = raw.strip()
    if not text:
        raise InvalidIdentifier(field, "is empty")
    if len(text) > MAX_INPUT:
        raise InvalidIdentifier(field, f"is longer than {MAX_INPUT} characters")
    # isprintable() is False for every control character (C speed; the rare rest is checked)
    if not text.isprintable() and any(unicodedata.category(c) == "Cc" for c in text):
        raise InvalidIdentifier(field, "contains control characters (line breaks, tabs)")
    return text


def normalise(
    kind: str, raw: Any, *, field: str | None = None, today: dt.date | None = None
) -> SubjectId:
    """Validate ``raw`` as an identifier of ``kind`` and return its normal form."""
    name = field or kind
    if kind == "email":
        return SubjectId(kind, normalise_email(raw, name))
    if kind == "phone":
        return SubjectId(kind, normalise_phone(raw, name))
    if kind == "personnummer":
        return normalise_personnummer(raw, name, today)
    if kind == "customer_id":
        return SubjectId(kind, normalise_customer_id(raw, name))
    raise InvalidIdentifier(name, f"unknown identifier kind {kind!r} (one of {', '.join(KINDS)})")


def identify(form: Mapping[str, Any], *, today: dt.date | None = None) -> list[SubjectId]:
    """Every identifier a request form gives (fields named as :data:`KINDS`; empty ones are
    skipped). Refuses an empty form, and names every invalid field at once."""
    given = {k: form.get(k) for k in KINDS if form.get(k) not in (None, "")}
    if not given:
        raise RetentionError(
            "the request names no person: fill in at least one of "
            + ", ".join(f"{k} ({LABELS[k]})" for k in KINDS)
        )
    found, problems = [], []
    for kind, raw in given.items():
        try:
            found.append(normalise(kind, raw, today=today))
        except InvalidIdentifier as exc:
            problems.append(str(exc))
    if problems:
        raise RetentionError(
            "the request cannot identify the person; fix these fields: " + "; ".join(problems)
        )
    return found
