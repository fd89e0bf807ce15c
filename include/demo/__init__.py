"""The demo: deterministic synthetic source systems (SQLite files or any SQLAlchemy URL) and
buckets on an embedded S3, with a manifest of what each record was designed to test."""

from __future__ import annotations

from include.demo.manifest import Expectation, HoldRequest, Manifest, ManifestEntry
from include.demo.schema import SYSTEMS, system_metadata
from include.demo.seed import (
    DEFAULT_DIR,
    DEFAULT_SEED,
    SeedResult,
    place_holds,
    seed_demo,
    seed_sql,
    seed_system,
    sqlite_urls,
)

__all__ = [
    "DEFAULT_DIR",
    "DEFAULT_SEED",
    "SYSTEMS",
    "Expectation",
    "HoldRequest",
    "Manifest",
    "ManifestEntry",
    "SeedResult",
    "place_holds",
    "seed_demo",
    "seed_sql",
    "seed_system",
    "sqlite_urls",
    "system_metadata",
]
