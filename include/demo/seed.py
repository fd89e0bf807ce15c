"""Seed the demo source systems, deterministically, relative to an ``as_of`` instant.

Every SQL-backed activity of the catalogue gets a dataset in its system's database: one
SQLite file per system under a directory (default ``var/demo/``), or any SQLAlchemy URL
(PostgreSQL, MariaDB) for tests. The same ``as_of`` and ``seed`` give identical data.
Each dataset holds expired, not-yet-expired, boundary, held, NULL-anchor, consent-withdrawn
and out-of-scope records (see :mod:`include.demo.design`), listed in a :class:`Manifest`.

Object storage (image bank, CV files) is seeded by :mod:`include.demo.objects`.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from faker import Faker
from sqlalchemy.engine import Engine

from include.demo.design import AnchorKind, Design, Designer, OutOfScope
from include.demo.fill import FILLERS, Children, Row, RowContext, make_person
from include.demo.manifest import HoldRequest, Manifest, ManifestEntry
from include.demo.schema import SYSTEMS, system_metadata
from include.retention.catalogue import Activity, Catalogue, SqlSource, load_catalogue
from include.retention.errors import RetentionError
from include.retention.lookup import first_identifier

log = logging.getLogger(__name__)

DEFAULT_SEED = 20_260_401
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "var" / "demo"
MANIFEST_FILE = "manifest.json"

# Records that no enforceable case applies to, per activity (anchors expired unless "none").
OUT_OF_SCOPE: dict[str, tuple[OutOfScope, ...]] = {
    "recruitment": (
        OutOfScope({"hired": True}, note="hired candidate"),
        OutOfScope({"hired": True}, note="hired candidate"),
        OutOfScope({"hired": None}, "none", note="no hiring decision yet"),
    ),
    "contract_management": (
        OutOfScope({"status": "active"}, "none", note="active contract"),
        OutOfScope({"status": "active"}, note="active contract with an old end date (renewed)"),
        OutOfScope({"status": "active"}, "none", note="active contract"),
    ),
    "certification": (
        OutOfScope({"customer_requested_deletion": False}, note="kept as certification"),
        OutOfScope({"customer_requested_deletion": False}, note="kept as certification"),
        OutOfScope({"customer_requested_deletion": False}, "none", note="contract running"),
    ),
    "prospecting": (
        OutOfScope({"status": "open"}, "none", note="open lead"),
        OutOfScope({"status": "qualified"}, "none", note="qualified lead"),
        OutOfScope({"status": "customer"}, note="declined once, later became a customer"),
    ),
    "competence_development": (
        OutOfScope({"role": "listener"}, note="listener: consent is not the legal basis"),
        OutOfScope({"role": "listener"}, "none", note="listener"),
        OutOfScope({"role": "listener"}, "none", note="listener"),
    ),
    "service_development": (
        OutOfScope({"anonymised_at": "EARLIER"}, note="anonymised by an earlier run"),
    ),
}

# Values for condition columns of records the designer leaves open (e.g. report-only rows).
DEFAULTS: dict[str, dict[str, Any]] = {
    "prospecting": {"status": "open"},
    "contract_management": {"status": "active"},
}


@dataclass(frozen=True)
class DatasetRows:
    """The rows of one dataset: parent rows, child rows by table, manifest entries."""

    table: str
    rows: list[Row]
    children: dict[str, list[Row]]
    entries: list[ManifestEntry]


@dataclass(frozen=True)
class SeedResult:
    """Where the demo lives and what was seeded."""

    as_of: dt.datetime
    urls: dict[str, str]
    manifest: Manifest
    manifest_path: Path | None = None

    def hold_requests(self) -> list[HoldRequest]:
        return self.manifest.hold_requests()


# ------------------------------------------------------------------------------ design rows


def sql_activities(catalogue: Catalogue) -> list[Activity]:
    """The catalogue's activities with a SQL source, in catalogue order."""
    return [a for a in catalogue if isinstance(a.source, SqlSource)]


def _anchor_kinds(table: sa.Table) -> dict[str, AnchorKind]:
    kinds: dict[str, AnchorKind] = {}
    for column in table.columns:
        if isinstance(column.type, sa.DateTime):
            kinds[column.name] = "datetime"
        elif isinstance(column.type, sa.Date):
            kinds[column.name] = "date"
    return kinds


def _stable_seed(seed: int, name: str) -> int:
    return seed ^ zlib.crc32(name.encode("utf-8"))


def _table_for(activity: Activity) -> sa.Table:
    src = activity.source
    assert isinstance(src, SqlSource)
    md = system_metadata(src.system)
    if src.table not in md.tables:
        raise RetentionError(
            f"activity {activity.id!r}: the demo system {src.system!r} has no table {src.table!r}"
        )
    return md.tables[src.table]


def design_dataset(
    activity: Activity, as_of: dt.datetime, *, seed: int = DEFAULT_SEED, uid_base: int = 0
) -> DatasetRows:
    """The rows and manifest entries of one activity's dataset (nothing written yet)."""
    src = activity.source
    assert isinstance(src, SqlSource)
    filler = FILLERS.get(src.table)
    if filler is None:
        raise RetentionError(f"activity {activity.id!r}: no demo data filler for {src.table!r}")
    table = _table_for(activity)
    rng = random.Random(_stable_seed(seed, activity.id))
    fake = Faker("sv_SE")
    fake.seed_instance(_stable_seed(seed, activity.id + "/faker"))
    designer = Designer(activity, as_of, _anchor_kinds(table), rng)
    designs = designer.designs(OUT_OF_SCOPE.get(activity.id, ()))
    child_ids: dict[str, int] = {}
    rows: list[Row] = []
    children: dict[str, list[Row]] = {}
    entries: list[ManifestEntry] = []
    for pk, design in enumerate(designs, start=1):
        values = _resolve(design, activity, designer)
        ctx = RowContext(
            fake, rng, as_of, pk, uid_base + pk, values, make_person(fake, uid_base + pk), child_ids
        )
        extra, kids = filler(ctx)
        row = {"id": pk, **extra, **values}
        rows.append(row)
        for child_table, child in kids:
            children.setdefault(child_table, []).append(child)
        entries.append(_entry(activity, row, design, kids))
    return DatasetRows(src.table, rows, children, entries)


def _resolve(design: Design, activity: Activity, designer: Designer) -> Row:
    values = {**DEFAULTS.get(activity.id, {}), **design.values}
    for column, value in values.items():
        if value == "EARLIER":
            values[column] = designer.past(column, 30)
    return values


def _entry(activity: Activity, row: Row, design: Design, kids: Children) -> ManifestEntry:
    src = activity.source
    assert isinstance(src, SqlSource)
    subject = first_identifier(src.lookup_columns(), row)
    objects = tuple(row[link.column] for link in src.objects if row.get(link.column))
    return ManifestEntry(
        activity=activity.id,
        system=src.system,
        dataset=src.table,
        pk=row["id"],
        expectation=design.expectation,
        subject=None if subject is None else str(subject),
        hold=design.hold,
        note=design.note,
        children=tuple((table, child["id"]) for table, child in kids),
        objects=objects,
    )


# ------------------------------------------------------------------------------ writing


def _engine(target: str | Engine) -> Engine:
    return sa.create_engine(target) if isinstance(target, str) else target


def seed_system(
    target: str | Engine,
    system: str,
    as_of: dt.datetime,
    *,
    catalogue: Catalogue | None = None,
    seed: int = DEFAULT_SEED,
) -> list[ManifestEntry]:
    """(Re)create one system's tables in ``target`` and fill them; returns its manifest."""
    _check_as_of(as_of)
    catalogue = catalogue or load_catalogue()
    activities = [a for a in sql_activities(catalogue) if a.source.system == system]
    metadata = system_metadata(system)
    engine = _engine(target)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    entries: list[ManifestEntry] = []
    with engine.begin() as conn:
        for activity in activities:
            dataset = design_dataset(
                activity, as_of, seed=seed, uid_base=_uid_base(catalogue, activity)
            )
            _insert(conn, metadata, dataset)
            entries.extend(dataset.entries)
    if isinstance(target, str):
        engine.dispose()
    log.info("seeded demo system %s: %s records", system, len(entries))
    return entries


def _uid_base(catalogue: Catalogue, activity: Activity) -> int:
    return 1000 * (1 + sorted(catalogue.activities).index(activity.id))


def _insert(conn: sa.Connection, metadata: sa.MetaData, dataset: DatasetRows) -> None:
    conn.execute(sa.insert(metadata.tables[dataset.table]), dataset.rows)
    for table in metadata.sorted_tables:  # parents before children
        rows = dataset.children.get(table.name)
        if rows:
            conn.execute(sa.insert(table), rows)


def sqlite_urls(directory: Path = DEFAULT_DIR) -> dict[str, str]:
    """One SQLite file per demo system under ``directory``."""
    return {
        system: f"sqlite:///{Path(directory).resolve() / f'{system}.sqlite'}" for system in SYSTEMS
    }


def seed_sql(
    as_of: dt.datetime,
    targets: Mapping[str, str | Engine],
    *,
    catalogue: Catalogue | None = None,
    seed: int = DEFAULT_SEED,
) -> Manifest:
    """Seed every system named in ``targets`` (system -> URL or engine; may all be one DB)."""
    catalogue = catalogue or load_catalogue()
    _check_systems(catalogue, targets)
    manifest = Manifest(as_of=as_of.isoformat())
    for system in SYSTEMS:
        if system in targets:
            manifest.extend(
                seed_system(targets[system], system, as_of, catalogue=catalogue, seed=seed)
            )
    return manifest


def _check_systems(catalogue: Catalogue, targets: Iterable[str]) -> None:
    unknown = sorted(set(targets) - set(SYSTEMS))
    if unknown:
        raise RetentionError(f"no demo system(s) {unknown}; known: {', '.join(SYSTEMS)}")
    for activity in sql_activities(catalogue):
        if activity.source.system not in SYSTEMS:
            raise RetentionError(
                f"activity {activity.id!r}: source system {activity.source.system!r} has no"
                " demo schema"
            )


def seed_demo(
    as_of: dt.datetime,
    directory: Path = DEFAULT_DIR,
    *,
    s3_client: Any = None,
    saas_store: Path | None = None,
    catalogue: Catalogue | None = None,
    seed: int = DEFAULT_SEED,
    urls: Mapping[str, str] | None = None,
) -> SeedResult:
    """Seed every demo system as SQLite files under ``directory`` (replacing them), or in
    the existing databases ``urls`` (system -> URL; their tables are replaced), the buckets
    too when ``s3_client`` is given, and the SaaS API's collections when its store file
    ``saas_store`` is given; writes ``manifest.json`` under ``directory``."""
    catalogue = catalogue or load_catalogue()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if urls is None:
        urls = sqlite_urls(directory)
        for system in SYSTEMS:
            (directory / f"{system}.sqlite").unlink(missing_ok=True)
    urls = dict(urls)
    manifest = seed_sql(as_of, urls, catalogue=catalogue, seed=seed)
    if s3_client is not None:
        from include.demo.objects import seed_objects

        manifest.extend(seed_objects(s3_client, as_of, manifest, catalogue=catalogue, seed=seed))
    if saas_store is not None:
        from include.demo.saas import seed_saas

        manifest.extend(seed_saas(saas_store, as_of, catalogue, seed))
    path = manifest.write(directory / MANIFEST_FILE)
    return SeedResult(as_of=as_of, urls=urls, manifest=manifest, manifest_path=path)


def place_holds(
    register: Any, requests: Iterable[HoldRequest], *, placed_by: str = "demo-seed"
) -> list[int]:
    """Place the designed holds with helper's :class:`~include.retention.holds.HoldRegister`."""
    ids = []
    for req in requests:
        reason = f"demo: designed hold for {req.activity}"
        if req.scope == "subject":
            if req.subject is None:
                raise RetentionError(f"{req.activity}: a subject hold needs a subject identifier")
            ids.append(
                register.place_subject_hold(
                    req.subject, kind="legal_hold", reason=reason, placed_by=placed_by
                )
            )
        else:
            ids.append(
                register.place_record_hold(
                    req.system,
                    req.dataset,
                    req.pk,
                    kind="legal_hold",
                    reason=reason,
                    placed_by=placed_by,
                )
            )
    return ids


def _check_as_of(as_of: dt.datetime) -> None:
    if not isinstance(as_of, dt.datetime) or as_of.tzinfo is None:
        raise RetentionError("as_of must be a time-zone-aware datetime")


# ------------------------------------------------------------------------------ command line


def _parse_as_of(raw: str | None) -> dt.datetime:
    if not raw:
        return dt.datetime.now(dt.UTC).replace(microsecond=0)
    value = dt.datetime.fromisoformat(raw)
    if value.tzinfo is None:
        raise RetentionError(f"--as-of {raw!r} needs a time zone (e.g. 2026-11-24T02:00+01:00)")
    return value


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m include.demo")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the SQLite files go")
    parser.add_argument("--as-of", help="ISO-8601 instant with zone (default: now)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--s3-endpoint", help="also seed the buckets on this S3 endpoint")
    parser.add_argument("--control-url", help="place the designed holds in this control DB")
    parser.add_argument("--key-file", type=Path, help="the pseudonym key (for --control-url)")
    args = parser.parse_args(argv)
    try:
        client = None
        if args.s3_endpoint:
            from include.demo.embedded_s3 import local_client

            client = local_client(args.s3_endpoint)
        result = seed_demo(_parse_as_of(args.as_of), args.dir, s3_client=client, seed=args.seed)
        if args.control_url:
            from include.retention.holds import HoldRegister

            if args.key_file is None:
                raise RetentionError("--control-url needs --key-file (the pseudonym key)")
            register = HoldRegister(sa.create_engine(args.control_url), args.key_file.read_bytes())
            register.create_tables()
            print(f"placed {len(place_holds(register, result.hold_requests()))} holds")
    except RetentionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"seeded {len(result.manifest)} records as of {result.as_of.isoformat()}")
    print(f"manifest: {result.manifest_path}")
    return 0
