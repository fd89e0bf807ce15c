"""Where the answers to data-subject requests are written (register extracts, portability
files): a folder or an S3 prefix, never Airflow's metadata DB, XComs or logs.

``RETENTION_DSR_OUTPUT_DIR`` names it: a folder (default ``$AIRFLOW_HOME/dsr_responses``) or
``s3://bucket/prefix``. Each request gets its own place, ``<location>/DSR-N/``:

- a folder: created owner-only (0700), every file 0600;
- an S3 prefix: objects written through the connection ``RETENTION_DSR_OUTPUT_CONN`` (default
  ``retention_s3``) with server-side encryption (``AES256``); a store that does not support it
  gets the object unencrypted and the task log says so (use a bucket with default encryption
  and a policy denying unencrypted uploads where it matters).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from include.retention.errors import RetentionError

log = logging.getLogger(__name__)

OUTPUT_DIR_ENV = "RETENTION_DSR_OUTPUT_DIR"
OUTPUT_CONN_ENV = "RETENTION_DSR_OUTPUT_CONN"
SSE = "AES256"
# Answers of stores without server-side encryption (moto answers them all; MinIO without KMS
# answers NotImplemented).
NO_SSE_CODES = ("NotImplemented", "InvalidArgument", "InvalidRequest", "KMS.NotFoundException")


class ResponseStore(Protocol):
    """One request's place for its answer files."""

    location: str  # shown to the operator (folder path or s3://bucket/prefix/DSR-N/)

    def write(self, name: str, data: bytes) -> None:
        """Write one file (owner-only / encrypted), replacing an earlier one of that name."""


@dataclass
class FolderStore:
    folder: Path
    location: str = ""

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder.chmod(0o700)
        self.location = str(self.folder)

    def write(self, name: str, data: bytes) -> None:
        path = self.folder / _file_name(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        path.chmod(0o600)


@dataclass
class S3Store:
    client: Any
    bucket: str
    prefix: str
    location: str = ""
    unencrypted: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.location = f"s3://{self.bucket}/{self.prefix}"

    def write(self, name: str, data: bytes) -> None:
        key = self.prefix + _file_name(name)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ServerSideEncryption=SSE)
            return
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in NO_SSE_CODES:
                raise RetentionError(
                    f"cannot write the answer to {self.location}: {exc}; check the bucket and"
                    f" the connection's rights (s3:PutObject)"
                ) from None
        log.warning("%s: the store has no server-side encryption; written unencrypted", key)
        self.unencrypted.append(name)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)


def _file_name(name: str) -> str:
    if not name or "/" in name or name.startswith("."):
        raise RetentionError(f"an answer file name must be a plain name, not {name!r}")
    return name


def configured() -> str:
    value = os.environ.get(OUTPUT_DIR_ENV)
    if value:
        return value
    return str(Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "dsr_responses")


def store_for(request_ref: str, location: str | None = None, client: Any = None) -> ResponseStore:
    """The place for ``request_ref``'s answer under ``location`` (default: the configured
    one). ``client``: a boto3 S3 client (tests); None: from the output connection."""
    location = location or configured()
    if not location.startswith("s3://"):
        return FolderStore(Path(location) / _file_name(request_ref))
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    if not bucket:
        raise RetentionError(f"{OUTPUT_DIR_ENV}={location!r}: write s3://bucket/prefix")
    if client is None:
        from include.retention.object_store import S3_CONN_ID, s3_client

        client = s3_client(os.environ.get(OUTPUT_CONN_ENV) or S3_CONN_ID)
    prefix = prefix.strip("/")
    return S3Store(client, bucket, f"{prefix}/{request_ref}/" if prefix else f"{request_ref}/")
