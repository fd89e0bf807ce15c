"""The embedded S3 (moto's server) for the demo and the tests, and helpers that fill buckets.

- :class:`EmbeddedS3`: moto's S3 server on loopback, in a thread (a context manager);
  bind errors surface at once, and ``start`` fails loudly if the server does not answer.
- :func:`spawn` / ``python -m include.demo.embedded_s3 --port N``: the same server as a
  standalone long-running process for the demo.
- :func:`local_client` and :func:`connection_uri`: a client and an Airflow connection URI for
  such an endpoint (dummy credentials; moto accepts any).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote

from include.retention.errors import RetentionError
from include.retention.object_store import POOL_CONNECTIONS, iter_versions

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5055
DEFAULT_REGION = "eu-north-1"
DUMMY_KEY = "retention-demo"  # moto accepts any credentials
START_TIMEOUT = 15.0


def _moto_server(host: str, port: int) -> Any:
    """A bound (not yet serving) werkzeug server running moto's dispatcher app."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    return make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)


def wait_until_up(endpoint_url: str, timeout: float = START_TIMEOUT) -> None:
    """Poll the endpoint until it answers HTTP; RetentionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(endpoint_url + "/", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except OSError as exc:
            last = exc
            time.sleep(0.1)
    raise RetentionError(
        f"embedded S3 at {endpoint_url} did not answer within {timeout:.0f}s ({last})"
    )


class ServedInThread:
    """A loopback server running in a daemon thread of this process (``_server``,
    ``_thread``, set by the subclass's ``start``); stopped on leaving a ``with`` block."""

    _server: Any
    _thread: threading.Thread | None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server, self._thread = None, None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class EmbeddedS3(ServedInThread):
    """moto's S3 server on ``host``:``port`` (port 0: a free port) in a daemon thread."""

    host: str = DEFAULT_HOST
    port: int = 0
    region: str = DEFAULT_REGION
    _server: Any = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> EmbeddedS3:
        if self._server is not None:
            return self
        try:
            self._server = _moto_server(self.host, self.port)
        except (OSError, SystemExit) as exc:
            raise RetentionError(
                f"cannot start the embedded S3 on {self.host}:{self.port}: {exc}"
            ) from None
        self.port = int(self._server.server_port)
        # werkzeug logs every request line (bucket and key): keep object keys out of logs.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="embedded-s3", daemon=True
        )
        self._thread.start()
        wait_until_up(self.endpoint_url)
        log.info("embedded S3 listening on %s", self.endpoint_url)
        return self

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self) -> Any:
        return local_client(self.endpoint_url, self.region)

    def connection_uri(self) -> str:
        return connection_uri(self.endpoint_url, self.region)


def local_client(endpoint_url: str, region: str = DEFAULT_REGION) -> Any:
    """A boto3 S3 client for an S3-compatible endpoint with dummy credentials (no Airflow)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=DUMMY_KEY,
        aws_secret_access_key=DUMMY_KEY,
        config=Config(
            retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=POOL_CONNECTIONS
        ),
    )


def connection_uri(endpoint_url: str, region: str = DEFAULT_REGION) -> str:
    """An Airflow connection URI (``AIRFLOW_CONN_RETENTION_S3``) for an S3 endpoint."""
    extra = quote(json.dumps({"endpoint_url": endpoint_url, "region_name": region}), safe="")
    return f"aws://{DUMMY_KEY}:{DUMMY_KEY}@/?__extra__={extra}"


# ---------------------------------------------------------------------------- bucket helpers


def ensure_bucket(client: Any, bucket: str, *, versioned: bool = True) -> None:
    """Create ``bucket`` if missing and (re)apply versioning."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        region = client.meta.region_name
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        client.create_bucket(**kwargs)
    if versioned:
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def purge_bucket(client: Any, bucket: str, prefix: str = "") -> int:
    """Remove every version and delete marker under ``prefix`` (demo re-seeding only)."""
    items = [
        {"Key": v["Key"], "VersionId": v["VersionId"]}
        for v in iter_versions(client, bucket, prefix)
    ]
    for start in range(0, len(items), 1000):
        client.delete_objects(
            Bucket=bucket, Delete={"Objects": items[start : start + 1000], "Quiet": True}
        )
    return len(items)


# ---------------------------------------------------------------------------- standalone


def spawn_server(
    name: str, argv: list[str], url: str, *, stdout: Any = None, detach: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``python argv…`` (a demo server) as its own process; returns once ``url`` answers.

    ``detach`` puts it in its own session, so it outlives the command that started it.
    """
    proc = subprocess.Popen(
        [sys.executable, *argv], env={**os.environ}, stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None, start_new_session=detach,
    )  # fmt: skip
    try:
        wait_until_up(url)
    except RetentionError:
        proc.terminate()
        raise
    if proc.poll() is not None:
        raise RetentionError(f"{name} process exited at once (code {proc.returncode})")
    return proc


def spawn(
    port: int = DEFAULT_PORT, host: str = DEFAULT_HOST, *, stdout: Any = None, detach: bool = False
) -> subprocess.Popen[bytes]:
    """Start the embedded S3 as a separate long-running process; returns once it answers."""
    argv = ["-m", "include.demo.embedded_s3", "--host", host, "--port", str(port)]
    return spawn_server("embedded S3", argv, f"http://{host}:{port}", stdout=stdout, detach=detach)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.demo.embedded_s3", description="Run the embedded S3."
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with EmbeddedS3(host=args.host, port=args.port) as server:
            print(f"embedded S3 on {server.endpoint_url}", flush=True)
            print(f"AIRFLOW_CONN_RETENTION_S3='{server.connection_uri()}'", flush=True)
            stop.wait()
    except RetentionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
