"""Anonymised rows cannot be linked back, and small groups of quasi-identifiers are reported."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.retention.anonymity import check_anonymity
from include.retention.catalogue import load_catalogue
from include.retention.errors import RetentionError

ACTIVITY = load_catalogue()["service_development"]
KEY = secrets.token_bytes(32)
LIVE_EMAIL = "anna.svensson@example.se"
DONE = dt.datetime(2026, 11, 24, 2, 0)


def _source(tmp_path: Path, rows: list[dict]) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'analytics.db'}")
    md = sa.MetaData()
    table = sa.Table(
        "survey_responses",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(200)),
        sa.Column("full_name", sa.String(200)),
        sa.Column("birth_date", sa.Date),
        sa.Column("age", sa.Integer),
        sa.Column("city", sa.String(100)),
        sa.Column("gender", sa.String(20)),
        sa.Column("job_level", sa.String(40)),
        sa.Column("answers", sa.Text),
        sa.Column("anonymised_at", sa.DateTime),
    )
    md.create_all(engine)
    live = {"email": LIVE_EMAIL, "full_name": "Anna Svensson", "anonymised_at": None}
    with engine.begin() as conn:
        for row in [live, *rows]:  # one by one: executemany takes its columns from the first row
            conn.execute(sa.insert(table).values(**row))
    return engine


def _anonymised(**values: object) -> dict:
    row = {
        "email": None,
        "full_name": None,
        "birth_date": dt.date(1980, 1, 1),
        "age": 40,
        "city": "anonymised",
        "gender": "kvinna",
        "job_level": "chef",
        "answers": "svar",
        "anonymised_at": DONE,
    }
    return row | values


def test_nulled_identifiers_cannot_be_joined_back(tmp_path):
    report = check_anonymity(ACTIVITY, _source(tmp_path, [_anonymised()] * 5), KEY)
    assert (report.anonymised_rows, report.linkable_rows) == (5, 0)
    assert (report.small_groups, report.rows_in_small_groups) == (0, 0)


@pytest.mark.parametrize("length", [16, 32, 64])
def test_a_keyed_hash_of_a_live_identifier_is_caught(tmp_path, length):
    """What the old catalogue's 'hmac' strategy left behind: pseudonymisation."""
    mask_key = hmac.new(KEY, b"retention-mask-pseudonym", hashlib.sha256).digest()
    pseudonym = hmac.new(mask_key, LIVE_EMAIL.encode(), hashlib.sha256).hexdigest()[:length]
    rows = [_anonymised(), _anonymised(email=pseudonym)]
    report = check_anonymity(ACTIVITY, _source(tmp_path, rows), KEY)
    assert report.linkable_rows == 1


def test_a_hash_under_another_key_is_not_a_link(tmp_path):
    other = hmac.new(b"another key", LIVE_EMAIL.encode(), hashlib.sha256).hexdigest()
    report = check_anonymity(ACTIVITY, _source(tmp_path, [_anonymised(email=other)]), KEY)
    assert report.linkable_rows == 0


def test_a_live_identifier_in_any_released_column_is_caught(tmp_path):
    rows = [_anonymised(answers=LIVE_EMAIL), _anonymised(job_level="Anna Svensson")]
    report = check_anonymity(ACTIVITY, _source(tmp_path, rows), KEY)
    assert report.linkable_rows == 2


def test_groups_smaller_than_k_are_reported(tmp_path):
    assert ACTIVITY.action.k_anonymity == 5
    rows = [_anonymised()] * 5 + [_anonymised(age=60)] * 2 + [_anonymised(city=None)]
    report = check_anonymity(ACTIVITY, _source(tmp_path, rows), KEY)
    assert (report.anonymised_rows, report.linkable_rows) == (8, 0)
    assert (report.small_groups, report.rows_in_small_groups) == (2, 3)


def test_only_anonymising_activities_are_checked(tmp_path):
    from include.retention.errors import RetentionError

    with pytest.raises(RetentionError, match="does not anonymise"):
        check_anonymity(load_catalogue()["newsletter"], _source(tmp_path, []), KEY)


def test_strategies_mask_values_in_python_and_describe_themselves() -> None:
    from decimal import Decimal

    from include.retention.masking import STRATEGIES, describe_strategies, parse_mask

    band = parse_mask({"strategy": "band", "width": 10})
    assert [band.mask(v) for v in (37, -7, 40, Decimal("-7"), 12.5, None)] == [
        30, -10, 40, Decimal("-10"), 10.0, None,
    ]  # fmt: skip
    year = parse_mask({"strategy": "year"})
    assert year.mask(dt.date(1984, 7, 3)) == dt.date(1984, 1, 1)
    assert year.mask("1984-07-03") == dt.date(1984, 1, 1)
    assert year.mask(dt.datetime(1984, 7, 3, 12, 5)) == dt.datetime(1984, 1, 1)
    assert parse_mask({"strategy": "null"}).mask("a@b.se") is None
    assert parse_mask({"strategy": "fixed", "value": "x"}).mask("a@b.se") == "x"
    with pytest.raises(RetentionError, match="cannot mask a str"):
        band.mask("37")
    described = {d["strategy"]: d for d in describe_strategies()}
    assert set(described) == set(STRATEGIES) == {"null", "fixed", "year", "band"}
    assert described["band"]["column_types"] == ["Integer", "Numeric"]
    assert described["null"]["column_types"] == ["any"] and described["null"]["removes_value"]
    assert "lower bound" in described["band"]["summary"]


def test_a_duplicate_strategy_name_is_an_error() -> None:
    from typing import Literal

    from include.retention.masking import MaskStrategy

    with pytest.raises(TypeError, match="'null' is taken by NullMask"):

        class AnotherNull(MaskStrategy):
            name = "null"
            strategy: Literal["null"] = "null"


def test_a_strategy_refuses_a_column_type_it_cannot_replace() -> None:
    from include.retention.masking import parse_mask

    parse_mask({"strategy": "year"}).check_type("born", sa.Date())
    with pytest.raises(RetentionError, match=r"column 'email' is VARCHAR.*'year' works on Date"):
        parse_mask({"strategy": "year"}).check_type("email", sa.String(100))
