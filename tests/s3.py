"""Test helpers: a real moto S3 server on loopback, buckets, a control database.

Fixtures ``s3_server``, ``s3`` (a client) and ``control`` (ledger + holds): import
``s3_server_fixture``, ``s3_fixture``, ``control_fixture`` into a test module.
The server is started once per session; if it cannot start, the tests fail (never skip).
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.demo.embedded_s3 import EmbeddedS3, ensure_bucket
from include.retention.errors import RetentionError
from include.retention.object_store import iter_versions
from include.retention.runs import Control

KEY = b"test-pseudonym-key-0123456789abcdef"
AS_OF = dt.datetime(2026, 11, 24, 1, 30, tzinfo=dt.UTC)  # 02:30 in Stockholm
_names = itertools.count(1)


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture() -> Iterator[EmbeddedS3]:
    try:
        server = EmbeddedS3().start()
    except RetentionError as exc:
        pytest.fail(f"the embedded S3 (moto server) could not start: {exc}")
    yield server
    server.stop()


@pytest.fixture(name="s3")
def s3_fixture(s3_server: EmbeddedS3) -> Any:
    return s3_server.client()


@pytest.fixture(name="control")
def control_fixture(tmp_path: Path) -> Control:
    return Control.open(sa.create_engine(f"sqlite:///{tmp_path / 'control.db'}"), KEY)


def new_bucket(client: Any, stem: str = "test", *, versioned: bool = True) -> str:
    """A fresh, uniquely named bucket (tests share one server)."""
    name = f"{stem}-{next(_names):04d}"
    ensure_bucket(client, name, versioned=versioned)
    return name


def put(client: Any, bucket: str, key: str, body: bytes = b"x", **metadata: str) -> str:
    response = client.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)
    return str(response.get("VersionId"))


def next_second() -> None:
    """Wait until S3's clock (LastModified, whole seconds) has moved past what was written."""
    time.sleep(1.05 - time.time() % 1)


def put_many(client: Any, bucket: str, keys: list[str], **metadata: str) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda k: put(client, bucket, k, **metadata), keys))


def versions(client: Any, bucket: str, prefix: str = "") -> list[tuple[str, str, bool]]:
    """(key, version id, is delete marker) of everything in the bucket, sorted."""
    return sorted(
        (v["Key"], v["VersionId"], v["IsDeleteMarker"])
        for v in iter_versions(client, bucket, prefix)
    )


def keys(client: Any, bucket: str, prefix: str = "") -> set[str]:
    return {key for key, _, _ in versions(client, bucket, prefix)}


class CallCounter:
    """Wraps a boto3 client and records DeleteObjects calls (and can fail them)."""

    def __init__(
        self, client: Any, fail_delete: Exception | None = None, crash_after: bool = False
    ):
        self._client = client
        self.delete_calls: list[int] = []
        self.fail_delete = fail_delete
        self.crash_after = crash_after

    def delete_objects(self, **kwargs: Any) -> Any:
        if self.fail_delete is not None and not self.crash_after:
            raise self.fail_delete
        self.delete_calls.append(len(kwargs["Delete"]["Objects"]))
        response = self._client.delete_objects(**kwargs)
        if self.fail_delete is not None:
            raise self.fail_delete  # deleted, then "crashed" before the ledger was told
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)
