"""Least privilege for rectification (Art. 16) on real PostgreSQL and MariaDB: the worker's
role, given the columns the generated script grants from the source's real columns, corrects a
person's fields and can change no key, lookup or rule column; without the columns the script
grants no UPDATE for rectification and says so."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from include.retention import dsr
from include.retention.catalogue import Activity, Catalogue
from include.retention.errors import RetentionError
from include.retention.grants import init_control, source_grants, table_columns
from include.retention.grants import source_script as make_source_script
from tests.dbs import activity, key_fixture, seed  # noqa: F401 - fixtures
from tests.test_grants import (  # noqa: F401 - fixtures
    DENIED,
    DIALECT,
    PEOPLE,
    Setup,
    _refused,
    _set_password,
    setup_fixture,
)

ANNA = "person1@example.com"
# people's columns but the key (id) and the rule columns (status, decided_at): written out
# by hand from tests.dbs.people_schema
RECTIFIABLE = {"email", "mobile", "personnummer", "withdrawn_on", "birth_date", "age", "city",
               "anonymised_at"}  # fmt: skip


def _people(engine: sa.Engine) -> dict[int, tuple[str, int, str]]:
    table = sa.Table("people", sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.id, table.c.city, table.c.age, table.c.email))
        return {r.id: (r.city, r.age, r.email) for r in rows}


def test_rectification_runs_as_the_worker_on_exactly_the_rectifiable_columns(
    setup: Setup, key: bytes
) -> None:
    seed(setup.source.engine, PEOPLE)
    init_control(setup.control.engine, key, setup.role)
    target = setup.target(setup.source)
    columns = table_columns(setup.source.engine, target.schema, ["people"])
    setup.apply(make_source_script(target, [activity()], columns))
    _set_password(setup)
    catalogue = Catalogue(activities={"recruitment": activity()}, version="t")
    runtime = dsr.DsrRuntime.of(  # the register: the DSR role's; the ledger: the worker's
        setup.control.engine, key, control_engine=setup.as_role(setup.control), catalogue=catalogue
    )
    form = {"email": ANNA, "corrections": {"city": "Ystad", "age": 41}}
    received = dsr.receive("rectification", form, user="u", dag_id="d", run_id="r",
                           runtime=runtime)  # fmt: skip
    worker = setup.as_role(setup.source)

    result = dsr.rectify(received, form, runtime=runtime, catalogue=catalogue,
                         connections={"recruitment": worker})  # fmt: skip

    assert result["changed"][0]["records"] == 1
    people = _people(setup.source.engine)
    assert people[1] == ("Ystad", 41, ANNA)
    assert all(people[i] == ("Lund", 30, f"person{i}@example.com") for i in range(2, 11))
    assert runtime.control.ledger.verify().ok
    assert runtime.control.ledger.pending_batches() == []
    for statement in (
        "UPDATE people SET decided_at = NULL WHERE id = 1",  # the anchor
        "UPDATE people SET status = 'hired' WHERE id = 1",  # a rule's condition
        "UPDATE applications SET title = 'x'",  # a child table: deleted, never rectified
    ):
        _refused(worker, statement, DENIED[setup.kind])
    assert _people(setup.source.engine)[1] == ("Ystad", 41, ANNA)


def test_the_command_grants_the_rectifiable_columns_read_from_the_source(
    setup: Setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from include.retention import __main__ as cli

    seed(setup.source.engine, PEOPLE)
    catalogue = Catalogue(activities={"recruitment": activity()}, version="t")
    monkeypatch.setattr(cli, "load_catalogue", lambda path=None: catalogue)
    monkeypatch.setenv("RT_TEST_SOURCE_URL", setup.source.url)
    args = ["grants", "--dialect", DIALECT[setup.kind], "--schema",
            setup.target(setup.source).schema]  # fmt: skip
    assert cli.main([*args, "--source-url-env", "RT_TEST_SOURCE_URL"]) == 0
    with_columns = capsys.readouterr().out
    assert cli.main(args) == 0
    without = capsys.readouterr().out

    q = '"' if setup.kind == "postgresql" else "`"
    (line,) = [line for line in with_columns.splitlines() if f".{q}people{q} TO" in line]
    granted = set(re.findall(rf"{q}(\w+){q}", line.split("UPDATE (")[1].split(")")[0]))
    lock = {"id"} if setup.kind == "postgresql" else set()  # (PostgreSQL's row-lock column)
    assert granted == RECTIFIABLE | lock
    assert "no UPDATE granted" not in with_columns
    (bare,) = [line for line in without.splitlines() if f".{q}people{q} TO" in line]
    assert ("UPDATE" in bare) == (setup.kind == "postgresql") and "city" not in bare
    assert "rectification (Art. 16): no UPDATE granted on people" in without


def test_an_unset_source_url_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.retention import __main__ as cli

    monkeypatch.delenv("RT_TEST_UNSET_URL", raising=False)
    with pytest.raises(RetentionError, match="RT_TEST_UNSET_URL: the environment variable is not"):
        cli._source_engine("RT_TEST_UNSET_URL")


def test_a_table_only_a_processor_activity_binds_gets_no_rectification_grant() -> None:
    bound = activity().model_dump(mode="json", exclude_none=True)
    bound["processor_for"] = {"sv": "Kunden AB", "en": "Customer Ltd"}
    grants = source_grants([Activity.model_validate(bound)], False, {"people": ["id", "city"]})
    (people,) = [g for g in grants if g.table == "people"]
    assert people.update_columns == set()
    (searched,) = [g for g in source_grants([activity()], False, {"people": ["id", "city"]})
                   if g.table == "people"]  # fmt: skip
    assert searched.update_columns == {"city"}


def test_the_anonymisation_marker_is_never_rectifiable() -> None:
    from include.retention.rectification import rectifiable_columns
    from tests.dbs import crash_activity

    columns = ["id", "email", "city", "anonymised_at", "decided_at", "status", "age"]
    assert rectifiable_columns([crash_activity("anonymise")], columns) == {"email", "city", "age"}
    assert rectifiable_columns([crash_activity("delete")], columns) == {
        "email", "city", "age", "anonymised_at",
    }  # fmt: skip
