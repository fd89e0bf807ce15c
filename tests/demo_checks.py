"""Checks on the seeded demo systems shared by the end-to-end tests: which designed records
still exist (rows, S3 object versions, SaaS API records), and what the ledger says about an
activity's runs."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from include.demo.manifest import HoldRequest, Manifest, ManifestEntry
from include.demo.seed import place_holds
from include.retention.catalogue import POLICY_DIR
from include.retention.object_store import iter_versions
from include.retention.runs import Control


@dataclass
class Demo:
    root: Path
    manifest: Manifest
    urls: dict[str, str]
    control: Control
    s3: Any
    saas: Any = None  # the SaaS API's Store (include.demo.saas_server), for ``record`` entries

    def row_exists(self, entry: ManifestEntry) -> bool:
        engine = sa.create_engine(self.urls[entry.system])
        table = sa.Table(entry.dataset, sa.MetaData(), autoload_with=engine)
        pk = next(iter(table.primary_key.columns))
        with engine.connect() as conn:
            return conn.execute(sa.select(pk).where(pk == entry.pk)).first() is not None

    def exists(self, entry: ManifestEntry) -> bool:
        if entry.kind == "object":
            return self.object_versions(entry.dataset, str(entry.pk)) > 0
        if entry.kind == "record":
            return self.saas.get(entry.dataset, str(entry.pk)) is not None
        return self.row_exists(entry)

    def row(self, entry: ManifestEntry) -> dict[str, Any]:
        engine = sa.create_engine(self.urls[entry.system])
        table = sa.Table(entry.dataset, sa.MetaData(), autoload_with=engine)
        pk = next(iter(table.primary_key.columns))
        with engine.connect() as conn:
            return dict(conn.execute(sa.select(table).where(pk == entry.pk)).mappings().one())

    def object_versions(self, bucket: str, key: str) -> int:
        return sum(1 for v in iter_versions(self.s3, bucket, key) if v["Key"] == key)

    def last_run(self, activity_id: str) -> dict[str, Any]:
        return self.control.ledger.runs(activity_id)[-1].finished or {}


@contextlib.contextmanager
def demo_environment(
    env: dict[str, str], key: str, holds: Iterable[HoldRequest]
) -> Iterator[Control]:
    """The demo's environment (without its Airflow home and DAG folder: the test's own are
    kept) set for the block, with ``holds`` placed; yields the control database."""
    for name in ("AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER"):
        env.pop(name)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        control = Control.open(env["RETENTION_CONTROL_DB_URL"], key.encode())
        place_holds(control.holds, holds)
        yield control


def survivors(demo: Demo, activity_id: str) -> tuple[list[ManifestEntry], list[ManifestEntry]]:
    entries = demo.manifest.for_activity(activity_id)
    alive = [e for e in entries if demo.exists(e)]
    return entries, alive


def edited_catalogue(folder: Path, edits: Mapping[str, Callable[[dict[str, Any]], None]]) -> Path:
    """A copy of the catalogue in ``folder`` with some entries changed (activity id -> a
    function editing its YAML document); point RETENTION_CATALOGUE_DIR at it."""
    shutil.copytree(POLICY_DIR, folder)
    for activity_id, edit in edits.items():
        path = folder / f"{activity_id}.yaml"
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        edit(raw)
        path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return folder


def strict_safety(raw: dict[str, Any]) -> None:
    """At most one record per run: an enforcing run of the demo's data needs approval."""
    raw["safety"] = {"max_rows": 1, "max_fraction": None}


def readable_mail(mail: Message) -> str:
    """The subject and every part decoded (bodies are sent base64-encoded)."""
    parts = [
        part.get_payload(decode=True).decode("utf-8", "replace")  # type: ignore[union-attr]
        for part in mail.walk()
        if not part.is_multipart()
    ]
    return "\n".join([str(mail["Subject"]), *parts])
