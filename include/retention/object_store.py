"""Object storage for the library: boto3 S3 clients through Airflow connections, listing every
version of a key, and naming an unreachable store.

:func:`s3_client` builds a client through the Airflow amazon provider's connection
(``retention_s3``; extra ``endpoint_url`` for an S3-compatible endpoint such as the demo's
embedded server, `include.demo.embedded_s3`), so pointing at real S3 is a configuration change.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from include.retention.errors import RetentionError, Unavailable

S3_CONN_ID = "retention_s3"
POOL_CONNECTIONS = 16  # per client: the S3 adapter makes per-object calls this many at a time


def s3_client(conn_id: str = S3_CONN_ID) -> Any:
    """A boto3 S3 client for the Airflow connection ``conn_id`` (amazon provider), with
    ``POOL_CONNECTIONS`` connections unless the connection's ``config_kwargs`` say otherwise."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook  # lazy: optional
    from botocore.config import Config

    try:
        hook = AwsBaseHook(aws_conn_id=conn_id, client_type="s3")
        pooled = Config(max_pool_connections=POOL_CONNECTIONS).merge(hook.config)
        return hook.get_client_type(config=pooled)
    except Exception as exc:  # AirflowNotFoundException, botocore errors
        raise RetentionError(
            f"cannot build an S3 client for connection {conn_id!r}: {exc}"
        ) from None


def storage_fault(exc: BaseException) -> Unavailable | None:
    """A named, retried error when object storage could not be reached (else None)."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    if not isinstance(exc, BotoConnectionError | HTTPClientError):
        return None
    where = getattr(exc, "kwargs", {}).get("endpoint_url") or "its endpoint"
    return Unavailable(
        f"object storage at {where} is unreachable ({type(exc).__name__}); the task is"
        " retried — check the S3 service and the connection's endpoint_url and credentials"
    )


def iter_versions(client: Any, bucket: str, prefix: str = "") -> Iterator[dict[str, Any]]:
    """Every version and delete marker under ``prefix`` (``IsDeleteMarker`` tells which)."""
    paginator = client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for version in page.get("Versions", []):
            yield {**version, "IsDeleteMarker": False}
        for marker in page.get("DeleteMarkers", []):
            yield {**marker, "IsDeleteMarker": True}


@contextmanager
def counted_calls(client: Any) -> Iterator[Counter[str]]:
    """The calls ``client`` makes inside the ``with`` block, by operation (benches, tests)."""
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def count(model: Any, **_: Any) -> None:
        with lock:
            calls[model.name] += 1

    client.meta.events.register("before-call", count)
    try:
        yield calls
    finally:
        client.meta.events.unregister("before-call", count)
