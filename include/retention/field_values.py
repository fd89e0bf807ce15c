"""New field values of a rectification (Art. 16), checked against the field they replace.

The form gives JSON values (text, numbers, true/false, null). A SQL column takes a value of its
reflected type (text within its length, an integer, a decimal, a date or date-time in ISO
8601, a boolean, one of an enum's values; null only where the column allows it); an API
field takes a value of the JSON type it holds now. Errors name the field and what it takes,
never the value (it is personal data).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

from include.retention.errors import RetentionError


def _refuse(name: str, takes: str) -> RetentionError:
    return RetentionError(f"field {name!r} takes {takes}; the value given does not fit")


def _text(name: str, value: Any, length: int | None) -> str:
    if not isinstance(value, str):
        raise _refuse(name, "text")
    if length is not None and len(value) > length:
        raise _refuse(name, f"text of at most {length} characters")
    return value


def _integer(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise _refuse(name, "a whole number")


def _decimal(name: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _refuse(name, "a number")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise _refuse(name, "a number") from None
    if not number.is_finite():
        raise _refuse(name, "a finite number")
    return number


def _datetime(name: str, value: Any, aware: bool) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(str(value).strip()) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise _refuse(name, "a date and time in ISO 8601 (YYYY-MM-DDTHH:MM[:SS][+HH:MM])")
    if aware and moment.tzinfo is None:
        raise _refuse(name, "a date and time with its UTC offset (e.g. +01:00)")
    if not aware and moment.tzinfo is not None:
        return moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


def _date(name: str, value: Any) -> dt.date:
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise _refuse(name, "a date (YYYY-MM-DD)")


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _refuse(name, "true or false")
    return value


def _converter(name: str, type_: sa.types.TypeEngine[Any]) -> Any:
    """The function turning a form value into ``type_``'s Python value (order matters:
    DateTime is a Date, Enum is a String, Float is a Numeric)."""
    if isinstance(type_, sa.Boolean):
        return _boolean
    if isinstance(type_, sa.Enum):
        enums = type_.enums
        return lambda n, v: v if v in enums else _fail(_refuse(n, f"one of {', '.join(enums)}"))
    if isinstance(type_, sa.Integer):
        return _integer
    if isinstance(type_, sa.Float):
        return lambda n, v: float(_decimal(n, v))
    if isinstance(type_, sa.Numeric):
        return _decimal
    if isinstance(type_, sa.DateTime):
        aware = bool(getattr(type_, "timezone", False))
        return lambda n, v: _datetime(n, v, aware)
    if isinstance(type_, sa.Date):
        return _date
    if isinstance(type_, sa.String):
        length = type_.length
        return lambda n, v: _text(n, v, length)
    raise RetentionError(
        f"field {name!r} is {type_}: it cannot be rectified through the form; change it in"
        " the source system"
    )


def _fail(error: RetentionError) -> Any:
    raise error


def for_lookup(name: str, kind: str, value: Any) -> None:
    """A lookup column's new value must be a valid identifier of its kind: a record whose value
    is none could no longer be found by requests, holds and the suppression list."""
    from include.retention.lookup import normal_value

    if normal_value(kind, value) is None:
        raise RetentionError(
            f"field {name!r} holds the person's {kind}, by which requests, holds and the"
            f" suppression list find them: the new value must be a valid {kind}"
        )


def for_column(name: str, value: Any, column: sa.Column[Any]) -> Any:
    """``value`` as the column's Python value, or a :class:`RetentionError` naming the field."""
    convert = _converter(name, column.type)
    if value is None:
        if not column.nullable:
            raise _refuse(name, "a value (it cannot be empty)")
        return None
    return convert(name, value)


def like(name: str, value: Any, current: Any) -> Any:
    """``value`` for an API field whose present value is ``current``: the same JSON type."""
    if value is None or current is None:
        return value
    for kind, takes in ((bool, "true or false"), (str, "text")):
        if isinstance(current, kind):
            if not isinstance(value, kind):
                raise _refuse(name, takes)
            return value
    if isinstance(current, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _refuse(name, "a number")
        return value
    raise RetentionError(f"field {name!r} holds a structure: it cannot be rectified here")
