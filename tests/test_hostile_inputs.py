"""A corpus of hostile and careless inputs, plus property-based fuzzing (issue 8).

Catalogue files, DAG run parameters and hold requests: each gets a RetentionError that names
the problem (and for a catalogue file, the file and the field), and nothing changes: the other
catalogue files still load, no run is recorded, no hold is placed.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pendulum
import pytest
import sqlalchemy as sa
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.retention.catalogue import (
    POLICY_DIR,
    SYSTEMS,
    Catalogue,
    load_catalogue,
    load_valid,
)
from include.retention.errors import RetentionError
from include.retention.holds import holds_table
from include.retention.operations import AS_OF_YEARS, Runtime, enforce, plan, resolve_as_of
from include.retention.runs import Control
from tests.dbs import activity as recruitment
from tests.dbs import key_fixture, person, seed  # noqa: F401 - fixtures

NEWSLETTER = (POLICY_DIR / "newsletter.yaml").read_text(encoding="utf-8")
RUN_AFTER = dt.datetime(2026, 11, 24, 1, 0, tzinfo=dt.UTC)


def _swap(old: str, new: str) -> str:
    assert old in NEWSLETTER, old  # the corpus must really mutate the file
    return NEWSLETTER.replace(old, new, 1)


PERIOD = "    period: P180D\n"
PERIOD_RULE = "    kind: period\n" + PERIOD
SCHEDULE = "schedule: 0 2 * * *"
SAFETY = "\nsafety:\n  max_rows: {}\n"
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)

# name -> (file content, a fragment the error must contain). Each names newsletter.yaml.
CATALOGUE_CORPUS: dict[str, tuple[str | bytes, str]] = {
    "duplicate key silently winning": (
        _swap(PERIOD, PERIOD + "    period: P0D\n"),
        "duplicate key 'period'",
    ),
    "duplicate top-level key": (NEWSLETTER + "schedule: 0 3 * * *\n", "duplicate key 'schedule'"),
    "P0D on a period rule": (_swap("P180D", "P0D"), "use rule kind 'event'"),
    "P0Y0M0W0D on a period rule": (_swap("P180D", "P0Y0M0W0D"), "use rule kind 'event'"),
    "P9999Y": (_swap("P180D", "P9999Y"), "longer than 100 years"),
    "P100Y1D": (_swap("P180D", "P100Y1D"), "longer than 100 years"),
    "P2000M": (_swap("P180D", "P1201M"), "longer than 100 years"),
    "20-digit days": (_swap("P180D", "P99999999999999999999D"), "ISO-8601 period"),
    "period with a trailing newline": (_swap("P180D", '"P180D\\n"'), "ISO-8601 period"),
    "lower-case period": (_swap("P180D", "p180d"), "ISO-8601 period"),
    "time period": (_swap("P180D", "PT4320H"), "ISO-8601 period"),
    "period as a number": (_swap("P180D", "180"), "ISO-8601 period"),
    "cron of four fields": (_swap(SCHEDULE, "schedule: 0 2 * *"), "not a cron expression"),
    "cron minute 61": (_swap(SCHEDULE, "schedule: 61 2 * * *"), "not a cron expression"),
    "cron that never fires": (_swap(SCHEDULE, "schedule: 0 0 31 2 *"), "never fires"),
    "cron with seconds": (_swap(SCHEDULE, "schedule: 0 0 2 * * *"), "not a cron expression"),
    "cron as prose": (_swap(SCHEDULE, "schedule: every night"), "not a cron expression"),
    "max_rows 1e30": (NEWSLETTER + SAFETY.format("1e30"), "safety.max_rows"),
    "max_rows 1.0e+30": (NEWSLETTER + SAFETY.format("1.0e+30"), "safety.max_rows"),
    "max_rows 1e10 as an integer": (NEWSLETTER + SAFETY.format("10000000000"), "safety.max_rows"),
    "max_rows true": (NEWSLETTER + SAFETY.format("true"), "safety.max_rows"),
    "max_rows negative": (NEWSLETTER + SAFETY.format("-1"), "safety.max_rows"),
    "max_rows as text": (NEWSLETTER + SAFETY.format('"100"'), "safety.max_rows"),
    "max_fraction NaN": (NEWSLETTER + "\nsafety:\n  max_fraction: .nan\n", "max_fraction"),
    "max_fraction infinite": (NEWSLETTER + "\nsafety:\n  max_fraction: .inf\n", "max_fraction"),
    "max_fraction above 1": (NEWSLETTER + "\nsafety:\n  max_fraction: 1.5\n", "max_fraction"),
    "fiscal years 1000": (
        _swap(PERIOD_RULE, "    kind: fiscal_year\n    years: 1000\n"),
        "retention.0.rule.fiscal_year.years",
    ),
    "Latin-1 file": (NEWSLETTER.replace("Nyhetsbrev", "Nyhetsbrev å").encode("latin-1"), "UTF-8"),
    "binary file": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not UTF-8"),
    "NUL character": (NEWSLETTER + "\x00\n", "not valid YAML"),
    "100k-deep flow nesting": ("id: " + "[" * 100_000, "nesting depth"),
    "100k-deep mapping nesting": ("id: " + "{" * 100_000, "nesting depth"),
    "60k-deep mapping nesting": ("id: " + "{a: " * 60_000, "nesting depth"),
    "deep block nesting": (
        "".join(f"{' ' * i}k{i}:\n" for i in range(200)) + " " * 200 + "v",
        "nesting depth",
    ),
    "billion laughs": (BILLION_LAUGHS, "aliases"),
    "merge key alias": (
        "base: &base {kind: delete}\n" + _swap("action:\n  kind: delete", "action:\n  <<: *base"),
        "aliases",
    ),
    "python object tag": (
        '!!python/object/apply:os.system ["touch /tmp/retention-pwned"]\n',
        "not valid YAML",
    ),
    "impossible date": (NEWSLETTER + "created: 2026-02-30\n", "not valid YAML"),
    "huge file": (NEWSLETTER + "#" * 300_000 + "\n", "more than"),
    "empty file": ("", "expected a mapping"),
    "top-level list": ("- id: newsletter\n", "expected a mapping"),
    "tab-indented YAML": (NEWSLETTER.replace("  sv: Nyhetsbrev", "\tsv: Nyhetsbrev"), "YAML"),
    "a binding written in the activity": (
        _swap("source: newsletter/recipients", "source:\n  kind: sql\n  table: recipients"),
        "source: dict is not a reference 'system/dataset'",
    ),
    "reference with SQL": (
        _swap("source: newsletter/recipients", 'source: "newsletter/x; DROP TABLE y"'),
        "is not a reference 'system/dataset'",
    ),
    "reference to an unbound dataset": (
        _swap("source: newsletter/recipients", "source: newsletter/subscribers"),
        "'newsletter/subscribers' is not a bound dataset",
    ),
    "anchor column with a quote": (
        _swap("anchor_column: last_sent_at", 'anchor_column: last_sent_at"'),
        "anchor_column",
    ),
    "id differs from the file name": (_swap("id: newsletter", "id: mailing"), "file name"),
    "upper-case id": (_swap("id: newsletter", "id: Newsletter"), "is not an id"),
    "typo in a field name": (NEWSLETTER + "retension: P1D\n", "retension"),
    "missing rule kind": (_swap("    kind: period\n", ""), "retention.0.rule"),
    "fiscal year month 13": (
        _swap(PERIOD_RULE, "    kind: fiscal_year\n    fiscal_year_end_month: 13\n"),
        "fiscal_year_end_month",
    ),
}


BINDING = (POLICY_DIR / SYSTEMS / "newsletter.yaml").read_text(encoding="utf-8")


def _swap_binding(old: str, new: str) -> str:
    assert old in BINDING, old
    return BINDING.replace(old, new, 1)


# name -> (content of systems/newsletter.yaml, a fragment the error must contain)
BINDING_CORPUS: dict[str, tuple[str | bytes, str]] = {
    "system with a trailing newline": (
        _swap_binding("system: newsletter", 'system: "newsletter\n"'),
        "systems/newsletter.yaml: system",
    ),
    "system named unlike its file": (
        _swap_binding("system: newsletter", "system: mailing"),
        "systems/newsletter.yaml: system: 'mailing' must match the file name",
    ),
    "upper-case table": (
        _swap_binding("  recipients:", "  RECIPIENTS:"),
        "datasets.RECIPIENTS.sql.table",
    ),
    "table with SQL": (
        _swap_binding("  recipients:", '  "recipients; DROP TABLE x":'),
        ".sql.table",
    ),
    "homoglyph table": (_swap_binding("  recipients:", "  recіpients:"), ".sql.table"),
    "dataset bound twice": (BINDING + "  recipients: {}\n", "duplicate key 'recipients'"),
    "primary key with a space": (
        _swap_binding("primary_key: id", 'primary_key: "id "'),
        "datasets.recipients.sql.primary_key",
    ),
    "lookup column with a newline": (
        _swap_binding("      email: email", '      email: "email\n"'),
        "datasets.recipients.sql.lookup.email",
    ),
    "lookup of an unknown kind": (
        _swap_binding("      email: email", "      email: email\n      passport: pass_no"),
        "datasets.recipients.sql.lookup.passport",
    ),
    "no lookup column (refused for the activity)": (
        _swap_binding("    lookup:\n      email: email\n", ""),
        "newsletter.yaml: (top level): Value error, source.lookup",
    ),
    "connection id with a space": (
        _swap_binding("conn_id: retention_newsletter", "conn_id: retention newsletter"),
        "systems/newsletter.yaml: conn_id",
    ),
    "connection set again on a dataset": (
        _swap_binding("    primary_key: id", "    primary_key: id\n    conn_id: other"),
        "datasets.recipients: conn_id set on the dataset",
    ),
    "unknown time zone": (
        _swap_binding("anchor_timezone: UTC", "anchor_timezone: Mars/Olympus"),
        "datasets.recipients.sql.anchor_timezone",
    ),
    "unknown source kind": (
        _swap_binding("kind: sql", "kind: [sql]"),
        "kind: ['sql'] is not a source kind",
    ),
    "billion laughs": (BILLION_LAUGHS, "systems/newsletter.yaml: not valid YAML: aliases"),
    "100k-deep nesting": ("system: " + "[" * 100_000, "nesting depth"),
    "binary file": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "systems/newsletter.yaml: not UTF-8"),
    "huge file": (BINDING + "#" * 300_000 + "\n", "systems/newsletter.yaml: 3"),
    "top-level list": ("- system: newsletter\n", "expected a mapping"),
}


@pytest.fixture(autouse=True)
def _policy_text(tmp_path: Path) -> None:
    """Every test's catalogue folder (tmp_path) carries the policy text it implements and the
    product's system files."""
    shutil.copytree(POLICY_DIR / "text", tmp_path / "text", dirs_exist_ok=True)
    shutil.copytree(POLICY_DIR / SYSTEMS, tmp_path / SYSTEMS, dirs_exist_ok=True)


def _folder_with(tmp_path: Path, content: str | bytes, binding: str | bytes = BINDING) -> Path:
    """The newsletter file replaced by ``content`` and its system file by ``binding``, next to
    a valid copy of the crm file."""
    (tmp_path / "crm.yaml").write_text(
        (POLICY_DIR / "crm.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    for path, text in ((tmp_path / "newsletter.yaml", content),
                       (tmp_path / SYSTEMS / "newsletter.yaml", binding)):  # fmt: skip
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
    return tmp_path


def test_the_corpus_is_large_enough():
    corpora = (CATALOGUE_CORPUS, BINDING_CORPUS, PARAM_CORPUS, HOLD_CORPUS)
    assert sum(map(len, corpora)) >= 40


def test_the_unmutated_file_loads(tmp_path):
    assert load_catalogue(_folder_with(tmp_path, NEWSLETTER))["newsletter"].schedule == "0 2 * * *"


@pytest.mark.parametrize("case", sorted(CATALOGUE_CORPUS))
def test_hostile_catalogue_file(tmp_path, case):
    content, problem = CATALOGUE_CORPUS[case]
    folder = _folder_with(tmp_path, content)
    with pytest.raises(RetentionError) as error:
        load_catalogue(folder)
    message = str(error.value)
    assert "newsletter.yaml" in message
    assert problem in message, message[:2000]
    assert len(message) < 5000  # a clear message, not a dump of the input
    catalogue, errors = load_valid(folder)  # the other file is unaffected
    assert list(catalogue.activities) == ["crm"]
    assert list(errors) == ["newsletter.yaml"]
    assert not Path("/tmp/retention-pwned").exists()


@pytest.mark.parametrize("case", sorted(BINDING_CORPUS))
def test_hostile_system_file(tmp_path, case):
    content, problem = BINDING_CORPUS[case]
    folder = _folder_with(tmp_path, NEWSLETTER, content)
    with pytest.raises(RetentionError) as error:
        load_catalogue(folder)
    message = str(error.value)
    assert problem in message, message[:2000]
    assert len(message) < 5000
    catalogue, errors = load_valid(folder)  # costs the activity bound to it, nothing else
    assert list(catalogue.activities) == ["crm"]
    assert "newsletter.yaml" in errors
    assert set(errors) <= {"newsletter.yaml", "systems/newsletter.yaml"}


# ----------------------------------------------------------------------- DAG run parameters

PARAM_CORPUS: dict[str, tuple[dict, str]] = {
    "as_of in year 1": ({"as_of": "0001-01-01"}, "outside the years"),
    "as_of in year 9999": ({"as_of": "9999-12-31T23:59:59"}, "outside the years"),
    "as_of 30 February": ({"as_of": "2026-02-30"}, "not an ISO-8601"),
    "as_of hour 25": ({"as_of": "2026-11-24T25:00"}, "not an ISO-8601"),
    "as_of with SQL": ({"as_of": "2026-11-24'; DROP TABLE recipients; --"}, "not an ISO-8601"),
    "as_of with a trailing newline": ({"as_of": "2026-11-24\n"}, "not an ISO-8601"),
    "as_of with a leading space": ({"as_of": " 2026-11-24"}, "not an ISO-8601"),
    "as_of in Arabic-Indic digits": ({"as_of": "٢٠٢٦-١١-٢٤"}, "not an ISO-8601"),
    "as_of offset +99:00": ({"as_of": "2026-11-24T00:00:00+99:00"}, "not an ISO-8601"),
    "as_of as a number": ({"as_of": 20261124}, "not an ISO-8601"),
    "as_of as a list": ({"as_of": ["2026-11-24"]}, "not an ISO-8601"),
    "as_of as an object": ({"as_of": {"$gt": ""}}, "not an ISO-8601"),
    "as_of a bare time": ({"as_of": "12:00"}, "not an ISO-8601"),
    "dry_run as text false": ({"dry_run": "false"}, "dry_run must be true or false"),
    "dry_run as 0": ({"dry_run": 0}, "dry_run must be true or false"),
    "dry_run null": ({"dry_run": None}, "dry_run must be true or false"),
    "dry_run as a list": ({"dry_run": []}, "dry_run must be true or false"),
}


@pytest.fixture(name="runtime")
def runtime_fixture(tmp_path, key, monkeypatch):
    """A recruitment activity on a seeded SQLite source, with its control DB."""
    source = sa.create_engine(f"sqlite:///{tmp_path / 'ats.db'}")
    seed(source, [person(i, dt.datetime(2020, 1, 10, 12)) for i in range(1, 6)])
    monkeypatch.setenv(
        "AIRFLOW_CONN_ATS_DB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ats.db")})
    )
    act = recruitment()
    control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", key)
    catalogue = Catalogue(activities={act.id: act}, version="hostile-inputs")
    return Runtime.of(catalogue, control), source


def _people(source: sa.Engine) -> int:
    with source.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM people")).scalar_one())


def test_valid_params_reach_the_source(runtime):
    rt, _ = runtime
    planned = plan("recruitment", {"as_of": "2026-11-24", "dry_run": True}, RUN_AFTER, rt)
    assert planned["counts"]["expired"] == 5  # the control case: the corpus fails on params only


@pytest.mark.parametrize("case", sorted(PARAM_CORPUS))
def test_hostile_dag_params(runtime, case):
    rt, source = runtime
    params, problem = PARAM_CORPUS[case]
    head = rt.control.ledger.head()
    with pytest.raises(RetentionError, match=problem):
        plan("recruitment", params, RUN_AFTER, rt)
    if "as_of" in params:  # enforce re-reads as_of from the plan's XCom
        with pytest.raises(RetentionError, match=problem):
            enforce("recruitment", {"as_of": params["as_of"], "dry_run": False}, None, rt)
    assert _people(source) == 5
    assert rt.control.ledger.head() == head


# ----------------------------------------------------------------------------- hold requests

HOLD_CORPUS: dict[str, tuple[dict, str]] = {
    "unknown kind": ({"kind": "permanent"}, "hold kind 'permanent'"),
    "empty reason": ({"reason": ""}, "needs a reason"),
    "blank reason": ({"reason": "   "}, "needs a reason"),
    "reason of 5000 characters": ({"reason": "x" * 5000}, "at most 2000"),
    "reason with a NUL": ({"reason": "court\x00order"}, "without control codes"),
    "empty placed_by": ({"placed_by": ""}, "who placed it"),
    "placed_by of 300 characters": ({"placed_by": "p" * 300}, "at most 200"),
    "placed_by as a number": ({"placed_by": 7}, "who placed it"),
    "system with a newline": ({"system": "newsletter\n"}, "is not a catalogue system id"),
    "upper-case dataset": ({"dataset": "RECIPIENTS"}, "is neither a table name"),
    "dataset with SQL": ({"dataset": "recipients' OR 1=1"}, "is neither a table name"),
    "null primary key": ({"pk": None}, "needs the primary key"),
    "empty subject": ({"subject": ""}, "needs the subject identifier"),
    "null subject": ({"subject": None}, "needs the subject identifier"),
    "time without a zone": ({"placed_at": dt.datetime(2026, 1, 1)}, "has no time zone"),
}
_HOLD_DEFAULTS = {"system": "newsletter", "dataset": "recipients", "pk": 3, "kind": "legal_hold",
                  "reason": "dispute", "placed_by": "legal.eva", "placed_at": None}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOLD_CORPUS))
def test_hostile_hold_request(tmp_path, key, case):
    control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", key)
    change, problem = HOLD_CORPUS[case]
    request = _HOLD_DEFAULTS | change
    head = control.ledger.head()
    with pytest.raises(RetentionError, match=problem):
        if "subject" in request:
            control.holds.place_subject_hold(
                request["subject"], kind=request["kind"], reason=request["reason"],
                placed_by=request["placed_by"], placed_at=request["placed_at"],
            )  # fmt: skip
        else:
            control.holds.place_record_hold(
                request["system"], request["dataset"], request["pk"], kind=request["kind"],
                reason=request["reason"], placed_by=request["placed_by"],
                placed_at=request["placed_at"],
            )  # fmt: skip
    assert control.ledger.head() == head
    with control.holds.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(holds_table)).scalar() == 0


@pytest.mark.parametrize(
    ("released_by", "problem"),
    [("", "who released it"), ("x" * 201, "at most 200"), ("ok", "already released")],
)
def test_hostile_release(tmp_path, key, released_by, problem):
    control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", key)
    hold = control.holds.place_record_hold(
        "newsletter", "recipients", 3, kind="legal_hold", reason="dispute", placed_by="eva"
    )
    control.holds.release(hold, released_by="eva")
    head = control.ledger.head()
    with pytest.raises(RetentionError, match=problem):
        control.holds.release(hold, released_by=released_by)
    with pytest.raises(RetentionError, match="does not exist"):
        control.holds.release(hold + 100, released_by="eva")
    assert control.ledger.head() == head
    assert control.holds.verify().ok


# ------------------------------------------------------------------------- property-based

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_RAW = yaml.safe_load(NEWSLETTER)


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for name, child in node.items():
            found += _paths(child, (*prefix, name))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


_FIELD_PATHS = _paths(_RAW)


_BINDING_PATHS = _paths(yaml.safe_load(BINDING))


def _mutated(path: tuple, value: object, text: str = NEWSLETTER) -> dict:
    raw = yaml.safe_load(text)
    node = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return raw


def _loads_or_names_the_file(folder: Path) -> None:
    try:
        load_catalogue(folder)
    except RetentionError as exc:
        assert "newsletter.yaml" in str(exc)


_FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_FUZZ
@given(path=st.sampled_from(_FIELD_PATHS), value=_VALUES)
def test_fuzzed_field_values(tmp_path, path, value):
    text = yaml.safe_dump(_mutated(path, value), allow_unicode=True)
    (tmp_path / "newsletter.yaml").write_text(text, encoding="utf-8")
    _loads_or_names_the_file(tmp_path)


@_FUZZ
@given(path=st.sampled_from(_BINDING_PATHS), value=_VALUES)
def test_fuzzed_system_file_values(tmp_path, path, value):
    text = yaml.safe_dump(_mutated(path, value, BINDING), allow_unicode=True)
    _loads_or_names_the_file(_folder_with(tmp_path, NEWSLETTER, text))


@_FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_fuzzed_file_bytes(tmp_path, data):
    (tmp_path / "newsletter.yaml").write_bytes(data)
    with pytest.raises(RetentionError, match=r"newsletter\.yaml"):
        load_catalogue(tmp_path)


@_FUZZ
@given(cut=st.integers(0, len(NEWSLETTER)), junk=st.text(max_size=12))
def test_fuzzed_edits_of_the_real_file(tmp_path, cut, junk):
    (tmp_path / "newsletter.yaml").write_text(
        NEWSLETTER[:cut] + junk + NEWSLETTER[cut:], encoding="utf-8"
    )
    _loads_or_names_the_file(tmp_path)


@_FUZZ
@given(cut=st.integers(0, len(BINDING)), junk=st.text(max_size=12))
def test_fuzzed_edits_of_the_real_system_file(tmp_path, cut, junk):
    _folder_with(tmp_path, NEWSLETTER, BINDING[:cut] + junk + BINDING[cut:])
    _loads_or_names_the_file(tmp_path)


@settings(max_examples=400, deadline=None)
@given(
    raw=st.text(max_size=40)
    | st.from_regex(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2})?.{0,8})?", fullmatch=True)
    | st.integers()
    | st.none()
)
def test_fuzzed_as_of(raw):
    try:
        as_of = resolve_as_of(raw, RUN_AFTER)
    except RetentionError as exc:
        assert "as_of" in str(exc)
    else:
        assert isinstance(as_of, pendulum.DateTime) and as_of.tzinfo is not None
        assert AS_OF_YEARS[0] <= as_of.year <= AS_OF_YEARS[1]
