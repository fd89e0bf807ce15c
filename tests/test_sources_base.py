"""The source adapter protocol's selections and registry (no source needed)."""

from __future__ import annotations

import datetime as dt

import pytest

from include.retention.errors import RetentionError
from include.retention.sources import base
from include.retention.sources.base import (
    DueAt,
    KeyRange,
    OfSubject,
    adapter_class,
    judged_through_of,
    register,
)
from tests.dbs import activity


def test_selections_refuse_what_they_cannot_mean() -> None:
    rules = tuple(activity().retention)
    with pytest.raises(RetentionError, match="time-zone-aware"):
        DueAt(dt.datetime(2026, 1, 1), rules)
    with pytest.raises(RetentionError, match="at least one rule"):
        DueAt(dt.datetime(2026, 1, 1, tzinfo=dt.UTC), ())
    with pytest.raises(RetentionError, match="keyed reference"):
        OfSubject(b"")  # type: ignore[arg-type]
    with pytest.raises(RetentionError, match="non-empty bytes"):
        OfSubject(frozenset({b""}))
    assert OfSubject({b"a", b"b"}).matches({b"b", b"c"})  # type: ignore[arg-type]
    assert not OfSubject(frozenset({b"a"})).matches({b"c"})
    due = DueAt(dt.datetime(2026, 1, 1, tzinfo=dt.UTC), rules)
    with pytest.raises(RetentionError, match="not another key range"):
        KeyRange(KeyRange(due, 1, 2), 1, 2)  # type: ignore[arg-type]
    part = KeyRange(due, 10, 20, index=1)
    assert base.base_selection(part) is due and base.key_bounds(part) == (10, 20)
    assert base.key_bounds(due) == (None, None)


def test_registry_names_the_module_a_missing_kind_needs() -> None:
    assert adapter_class("sql").kind == "sql"  # type: ignore[attr-defined]
    assert adapter_class("s3").kind == "s3"  # type: ignore[attr-defined]
    with pytest.raises(RetentionError, match=r"sources/ftp\.py"):
        adapter_class("ftp")


def test_a_kind_registered_twice_is_an_error() -> None:
    @register("twice_test")
    class One:
        pass

    with pytest.raises(RetentionError, match="two adapters"):

        @register("twice_test")
        class Two:
            pass

    base._ADAPTERS.pop("twice_test")


def test_a_reference_claimed_twice_is_judged_through_the_safer_moment() -> None:
    """More of what is found counts as the claimed record: the later moment, or none."""
    early, late = (dt.datetime(2026, 11, 24, 1, m, tzinfo=dt.UTC) for m in (0, 5))
    claims = [{b"a": early, b"b": late, b"c": early, b"d": None}, {b"a": late, b"b": early},
              {b"c": None}]  # fmt: skip
    assert judged_through_of(claims) == {b"a": late, b"b": late}
