"""The demo seeder: deterministic, complete for the catalogue, every designed category."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.demo.manifest import Expectation, Manifest
from include.demo.objects import seed_objects
from include.demo.schema import SYSTEMS
from include.demo.seed import MANIFEST_FILE, place_holds, seed_demo, seed_sql, sql_activities
from include.retention.catalogue import Activity, SqlChild, load_catalogue
from include.retention.holds import HoldRegister
from include.retention.identifiers import normalise
from include.retention.rules import TIMEZONE
from tests.s3 import (  # noqa: F401  (the *_fixture names register fixtures)
    AS_OF,
    KEY,
    s3_fixture,
    s3_server_fixture,
    versions,
)

CATALOGUE = load_catalogue()
E = Expectation


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return seed_demo(AS_OF, tmp_path_factory.mktemp("demo"))


def _engine(demo: Any, activity: Activity) -> sa.Engine:
    return sa.create_engine(demo.urls[activity.source.system])


def _table(engine: sa.Engine, name: str) -> sa.Table:
    return sa.Table(name, sa.MetaData(), autoload_with=engine)


def test_seeding_is_deterministic(tmp_path: Path) -> None:
    first = seed_demo(AS_OF, tmp_path / "a")
    seed_demo(AS_OF, tmp_path / "b")
    seed_demo(AS_OF, tmp_path / "b")  # re-seeding replaces, never appends
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted([f"{s}.sqlite" for s in SYSTEMS] + [MANIFEST_FILE])
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert Manifest.read(first.manifest_path).to_dict() == first.manifest.to_dict()


def test_other_as_of_gives_other_data(tmp_path: Path) -> None:
    seed_demo(AS_OF, tmp_path / "a")
    seed_demo(AS_OF + dt.timedelta(days=1), tmp_path / "b")
    assert (tmp_path / "a" / "crm.sqlite").read_bytes() != (
        tmp_path / "b" / "crm.sqlite"
    ).read_bytes()


def _check_children(engine: sa.Engine, parent: sa.Table, children: list[SqlChild]) -> None:
    for child in children:
        table = _table(engine, child.table)
        assert child.foreign_key in table.c and child.primary_key in table.c
        fks = {(fk.parent.name, fk.column.table.name) for fk in table.foreign_keys}
        assert (child.foreign_key, parent.name) in fks
        _check_children(engine, table, child.children)


@pytest.mark.parametrize("activity", sql_activities(CATALOGUE), ids=lambda a: a.id)
def test_every_catalogue_binding_exists(demo: Any, activity: Activity) -> None:
    src = activity.source
    engine = _engine(demo, activity)
    table = _table(engine, src.table)
    names = {src.primary_key, *src.lookup.values()}
    names |= {c.anchor_column for c in activity.retention if c.anchor_column}
    names |= {c.when.column for c in activity.retention if c.when}
    names |= {link.column for link in src.objects}
    if activity.action.kind == "anonymise":
        names |= set(activity.action.columns) | {activity.action.marker_column}
    assert names <= set(table.c.keys())
    assert [c.name for c in table.primary_key.columns] == [src.primary_key]
    for case in activity.retention:
        if case.anchor_column and case.anchor_column.endswith("_on"):
            assert isinstance(table.c[case.anchor_column].type, sa.Date)
        elif case.anchor_column:
            assert isinstance(table.c[case.anchor_column].type, sa.DateTime)
    _check_children(engine, table, src.children)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    assert 12 <= rows <= 60
    assert len(table.c) >= len(names) + 2  # realistic extra columns


def _expected_categories(activity: Activity) -> set[Expectation]:
    kinds = {c.rule.kind for c in activity.retention if c.rule.enforceable}
    if not kinds:
        return {E.kept, E.unknown_anchor}
    found = {E.kept, E.boundary_due, E.boundary_kept, E.held}
    if kinds - {"consent"}:
        found |= {E.expired, E.unknown_anchor}
    if "consent" in kinds:
        found.add(E.consent_withdrawn)
    if any(c.when for c in activity.retention) or activity.action.kind == "anonymise":
        found.add(E.out_of_scope)
    return found


@pytest.mark.parametrize("activity", sql_activities(CATALOGUE), ids=lambda a: a.id)
def test_each_dataset_has_every_designed_category(demo: Any, activity: Activity) -> None:
    got = set(demo.manifest.by_expectation(activity.id))
    assert got == _expected_categories(activity)
    entries = demo.manifest.for_activity(activity.id)
    due = sum(e.due for e in entries)
    assert due <= 0.25 * len(entries)  # a demo run passes the default safety gate


def _local(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC)
    return value


def _due_by_calculus(activity: Activity, row: Any) -> bool:
    """Independent of the engine: any applicable enforceable case with due_at <= as_of."""
    for case in activity.retention:
        if not case.rule.enforceable or row[case.anchor_column] is None:
            continue
        if case.when and row[case.when.column] not in case.when.values:
            continue
        if case.rule.due_at(_local(row[case.anchor_column])) <= AS_OF:
            return True
    return False


@pytest.mark.parametrize("activity", sql_activities(CATALOGUE), ids=lambda a: a.id)
def test_expectations_agree_with_the_rule_calculus(demo: Any, activity: Activity) -> None:
    engine = _engine(demo, activity)
    table = _table(engine, activity.source.table)
    with engine.connect() as conn:
        rows = {r.id: r._mapping for r in conn.execute(sa.select(table))}
    marker = getattr(activity.action, "marker_column", None)
    for entry in demo.manifest.for_activity(activity.id):
        row = rows[entry.pk]
        by_anchor = _due_by_calculus(activity, row) and not (marker and row[marker])
        designed = entry.due or entry.expectation == E.held
        assert by_anchor == designed, (activity.id, entry.pk, entry.expectation)
        if entry.hold == "subject":
            kind, column = activity.source.lookup_columns()[0]
            assert entry.subject == normalise(kind, row[column]).value


@pytest.mark.parametrize("activity", sql_activities(CATALOGUE), ids=lambda a: a.id)
def test_boundary_records_sit_on_the_cutoff(demo: Any, activity: Activity) -> None:
    engine = _engine(demo, activity)
    table = _table(engine, activity.source.table)
    for entry in demo.manifest.for_activity(activity.id):
        if entry.expectation not in (E.boundary_due, E.boundary_kept):
            continue
        with engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c.id == entry.pk)).one()._mapping
        days = []
        for case in activity.retention:
            anchor = row[case.anchor_column] if case.anchor_column else None
            if case.rule.enforceable and anchor is not None:
                local = _local(anchor)
                local = (
                    local.astimezone(TIMEZONE).date() if isinstance(local, dt.datetime) else local
                )
                days.append((local - case.rule.cutoff_date(AS_OF)).days)
        assert (0 if entry.expectation == E.boundary_due else 1) in days


def test_children_for_parents(demo: Any) -> None:
    for activity in sql_activities(CATALOGUE):
        entries = demo.manifest.for_activity(activity.id)
        if activity.source.children:
            assert all(e.children for e in entries), activity.id
            engine = _engine(demo, activity)
            child = activity.source.children[0]
            with engine.connect() as conn:
                n = conn.execute(
                    sa.select(sa.func.count()).select_from(_table(engine, child.table))
                )
                assert n.scalar_one() == sum(
                    1 for e in entries for t, _ in e.children if t == child.table
                )


def test_subjects_are_unique_so_subject_holds_hit_one_record(demo: Any) -> None:
    subjects = [e.subject for e in demo.manifest if e.kind == "row" and e.subject]
    assert len(subjects) == len(set(subjects))


def test_holds_can_be_placed(demo: Any, tmp_path: Path) -> None:
    register = HoldRegister(sa.create_engine(f"sqlite:///{tmp_path / 'c.db'}"), KEY)
    register.create_tables()
    requests = demo.manifest.hold_requests()
    assert {r.scope for r in requests} == {"record", "subject"}
    ids = place_holds(register, requests)
    assert len(ids) == len(requests)
    crm = register.active("crm", "contacts")
    assert crm.records and crm.subjects


def test_objects_are_seeded_with_histories(s3: Any) -> None:
    manifest = Manifest(as_of=AS_OF.isoformat())
    manifest.extend(seed_sql(AS_OF, {"ats": "sqlite://"}))
    entries = seed_objects(s3, AS_OF, manifest, seed=1)
    images = [e for e in entries if e.activity == "image_bank" and e.kind == "object"]
    cvs = [e for e in entries if e.activity == "recruitment"]
    assert {e.expectation for e in images} == set(Expectation) - {E.consent_withdrawn}
    assert {e.pk for e in cvs} == {
        k for e in manifest.for_activity("recruitment") for k in e.objects
    }
    image_versions = versions(s3, "image-bank")
    per_key: dict[str, list[bool]] = {}
    for key, _, marker in image_versions:
        per_key.setdefault(key, []).append(marker)
    assert any(len(v) == 3 and not any(v) for v in per_key.values())  # old versions
    assert any(len(v) == 3 and sum(v) == 1 for v in per_key.values())  # 2 + delete marker
    head = s3.head_object(Bucket="image-bank", Key=images[0].pk)
    assert set(head["Metadata"]) >= {"category", "subject"}
    status = s3.get_bucket_versioning(Bucket="cv-files")["Status"]
    assert status == "Enabled"


@pytest.fixture(params=["postgresql", "mariadb"])
def server_db(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"demo_seed_{uuid.uuid4().hex[:12]}"  # its own database: test runs may overlap
    admin, url = {
        "postgresql": (
            "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
            f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
        ),
        "mariadb": (
            "mysql+pymysql://root@127.0.0.1:3306/",
            f"mysql+pymysql://root@127.0.0.1:3306/{name}",
        ),
    }[request.param]
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except sa.exc.OperationalError as exc:
        pytest.fail(f"{request.param} at {admin} is not reachable: {exc}")
    yield url
    with engine.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
    engine.dispose()


def test_seeds_the_same_into_server_databases(server_db: str, demo: Any) -> None:
    engine = sa.create_engine(server_db)
    manifest = seed_sql(AS_OF, dict.fromkeys(SYSTEMS, engine))
    assert manifest.to_dict()["entries"] == demo.manifest.to_dict()["entries"]
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT decision_at, hired FROM candidates WHERE id = 1")).one()
    lite = sa.create_engine(demo.urls["ats"])
    with lite.connect() as conn:
        expected = conn.execute(sa.text("SELECT decision_at, hired FROM candidates WHERE id = 1"))
        want = expected.one()
    assert row[0] == dt.datetime.fromisoformat(str(want[0])) and bool(row[1]) == bool(want[1])
    engine.dispose()
