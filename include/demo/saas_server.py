"""A small SaaS-style HTTP API (the shape of a newsletter or CRM tool) for the demo and tests.

Records live in named collections in a SQLite file, so they survive a restart. Every request
needs ``Authorization: Bearer <token>``; a client sending more than ``rate`` requests per
second (a token bucket of ``burst``) gets ``429 Too Many Requests`` with ``Retry-After``.

    GET    /v1/<collection>?limit=N&cursor=C  {"records": [{"id", "fields"}], "next_cursor"}
    GET    /v1/<collection>/<id>              one record with its ETag, or 404
    DELETE /v1/<collection>/<id>              204, 404 when there is no such record, 412 when
                                              If-Match names another version (ETag) of it
    POST   /v1/<collection>                   {"records": [{"id", "fields"}]}: import (upsert)
    PATCH  /v1/<collection>/<id>              {"fields": {...}}: change those fields; 404 if none,
                                              412 when If-Match names another version of it

Pages are ordered by id (keyset); the cursor is opaque. Nothing is logged per request (paths
carry record ids). :meth:`SaasServer.fail_next` makes the next requests answer 5xx, so tests
can show what a client does when the service has an outage.

``python -m include.demo.saas_server --store FILE --token-file FILE [--port N]`` runs it as a
long-running process (the demo; the docker-compose demo profile passes the token in
``$SAAS_API_TOKEN``); :func:`spawn` starts that process.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from include.demo.embedded_s3 import ServedInThread, spawn_server, wait_until_up
from include.retention.errors import RetentionError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5056
TOKEN_ENV = "SAAS_API_TOKEN"  # the token when no --token-file is given (containers)
MAX_PAGE = 100
MAX_BODY = 4 * 1024 * 1024
_COLLECTION = re.compile(r"[a-z][a-z0-9_]{0,62}")
_PATH = re.compile(r"/v1/(?P<collection>[^/]+)(?:/(?P<id>[^/]+))?")
_SCHEMA = """CREATE TABLE IF NOT EXISTS records (
    collection TEXT NOT NULL, id TEXT NOT NULL, fields TEXT NOT NULL,
    PRIMARY KEY (collection, id))"""


class _Refused(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


@dataclass
class RateLimit:
    """A token bucket: ``rate`` requests per second on average, bursts of ``burst``."""

    rate: float
    burst: int
    _tokens: float = field(init=False)
    _stamp: float = field(init=False, default_factory=time.monotonic)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._tokens = float(self.burst)

    def wait_needed(self) -> float:
        """0 when the request may go now (a token is taken), else seconds until one is free."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate


class Store:
    """The records, in a SQLite file (owner-only: it holds personal data)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def page(self, collection: str, after: str, limit: int) -> list[tuple[str, str]]:
        with self._connect() as db:
            return db.execute(
                "SELECT id, fields FROM records WHERE collection = ? AND id > ?"
                " ORDER BY id LIMIT ?",
                (collection, after, limit),
            ).fetchall()

    def get(self, collection: str, record_id: str) -> str | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT fields FROM records WHERE collection = ? AND id = ?",
                (collection, record_id),
            ).fetchone()
        return None if row is None else str(row[0])

    def delete(self, collection: str, record_id: str, if_match: str | None = None) -> str:
        """Delete the record, if ``if_match`` only in that version: ``deleted``, ``gone``
        (there is none) or ``changed`` (it is in another version)."""
        with self._connect() as db:
            fields = self._matching(db, collection, record_id, if_match)
            if fields in ("gone", "changed"):
                return fields
            db.execute(
                "DELETE FROM records WHERE collection = ? AND id = ?", (collection, record_id)
            )
            return "deleted"

    def patch(
        self, collection: str, record_id: str, changes: dict[str, Any], if_match: str | None = None
    ) -> tuple[str, str | None]:
        """Change some fields of the record, if ``if_match`` only in that version: (``patched``
        and the stored fields, ``gone`` or ``changed``), the check and the change as one."""
        with self._connect() as db:
            fields = self._matching(db, collection, record_id, if_match)
            if fields in ("gone", "changed"):
                return fields, None
            fields = json.dumps(json.loads(fields) | changes)
            db.execute(
                "UPDATE records SET fields = ? WHERE collection = ? AND id = ?",
                (fields, collection, record_id),
            )
            return "patched", fields

    @staticmethod
    def _matching(
        db: sqlite3.Connection, collection: str, record_id: str, if_match: str | None
    ) -> str:
        """In a write transaction begun here: the record's stored fields, or ``gone`` (there
        is none) or ``changed`` (``if_match`` names another version of it)."""
        db.execute("BEGIN IMMEDIATE")  # the check and the write as one
        row = db.execute(
            "SELECT fields FROM records WHERE collection = ? AND id = ?", (collection, record_id)
        ).fetchone()
        if row is None:
            return "gone"
        if if_match not in (None, "*") and etag(str(row[0])) != if_match:
            return "changed"
        return str(row[0])

    def upsert(self, collection: str, records: list[tuple[str, str]]) -> int:
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO records (collection, id, fields) VALUES (?, ?, ?)",
                [(collection, rid, fields) for rid, fields in records],
            )
        return len(records)

    def clear(self, collection: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM records WHERE collection = ?", (collection,))


def etag(fields: str) -> str:
    """A record version's ETag (RFC 9110 strong validator): a digest of its stored fields."""
    return '"' + hashlib.sha256(fields.encode()).hexdigest()[:32] + '"'


def _cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode()


def _after(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise _Refused(HTTPStatus.BAD_REQUEST, "invalid cursor") from None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: request lines carry record ids."""

    def do_GET(self) -> None:
        self._serve(self._get)

    def do_DELETE(self) -> None:
        self._serve(self._delete)

    def do_POST(self) -> None:
        self._serve(self._post)

    def do_PATCH(self) -> None:
        self._serve(self._patch)

    def _serve(self, handle: Any) -> None:
        try:
            body = self._read_body()
            self.server.admit(self.headers.get("Authorization", ""))
            collection, record_id = self._route()
            reply = handle(collection, record_id, body)
        except _Refused as refused:
            self._answer(refused.status, {"error": str(refused)}, refused.headers)
        else:
            self._answer(*reply)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
        return self.rfile.read(length) if length else b""

    def _route(self) -> tuple[str, str | None]:
        match = _PATH.fullmatch(urlsplit(self.path).path)
        if match is None or not _COLLECTION.fullmatch(match["collection"]):
            raise _Refused(HTTPStatus.NOT_FOUND, "no such resource")
        return match["collection"], None if match["id"] is None else unquote(match["id"])

    def _get(self, collection: str, record_id: str | None, _body: bytes) -> tuple[Any, ...]:
        store = self.server.store
        if record_id is not None:
            fields = store.get(collection, record_id)
            if fields is None:
                raise _Refused(HTTPStatus.NOT_FOUND, "no such record")
            return (
                HTTPStatus.OK,
                {"id": record_id, "fields": json.loads(fields)},
                {"ETag": etag(fields)},
            )
        query = parse_qs(urlsplit(self.path).query)
        try:
            limit = int(query.get("limit", [str(MAX_PAGE)])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            raise _Refused(HTTPStatus.BAD_REQUEST, f"limit must be 1..{MAX_PAGE}")
        rows = store.page(collection, _after(query.get("cursor", [""])[0]), limit)
        records = [{"id": rid, "fields": json.loads(fields)} for rid, fields in rows]
        more = len(rows) == limit and store.page(collection, rows[-1][0], 1)
        return HTTPStatus.OK, {
            "records": records,
            "next_cursor": _cursor(rows[-1][0]) if more else None,
        }

    def _delete(self, collection: str, record_id: str | None, _body: bytes) -> tuple[int, Any]:
        if record_id is None:
            raise _Refused(HTTPStatus.METHOD_NOT_ALLOWED, "DELETE needs a record id")
        outcome = self.server.store.delete(collection, record_id, self.headers.get("If-Match"))
        if outcome == "gone":
            raise _Refused(HTTPStatus.NOT_FOUND, "no such record")
        if outcome == "changed":
            raise _Refused(HTTPStatus.PRECONDITION_FAILED, "the record has changed (If-Match)")
        return HTTPStatus.NO_CONTENT, None

    def _post(self, collection: str, record_id: str | None, body: bytes) -> tuple[int, Any]:
        if record_id is not None:
            raise _Refused(HTTPStatus.METHOD_NOT_ALLOWED, "POST to the collection")
        try:
            records = [(str(r["id"]), json.dumps(r["fields"])) for r in json.loads(body)["records"]]
        except (ValueError, KeyError, TypeError):
            raise _Refused(
                HTTPStatus.BAD_REQUEST, 'expected {"records": [{"id", "fields"}]}'
            ) from None
        return HTTPStatus.CREATED, {"imported": self.server.store.upsert(collection, records)}

    def _patch(self, collection: str, record_id: str | None, body: bytes) -> tuple[Any, ...]:
        if record_id is None:
            raise _Refused(HTTPStatus.METHOD_NOT_ALLOWED, "PATCH needs a record id")
        try:
            changes = json.loads(body)["fields"]
            if not isinstance(changes, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise _Refused(HTTPStatus.BAD_REQUEST, 'expected {"fields": {...}}') from None
        outcome, fields = self.server.store.patch(
            collection, record_id, changes, self.headers.get("If-Match")
        )
        if outcome == "changed":
            raise _Refused(HTTPStatus.PRECONDITION_FAILED, "the record has changed (If-Match)")
        if fields is None:
            raise _Refused(HTTPStatus.NOT_FOUND, "no such record")
        payload = {"id": record_id, "fields": json.loads(fields)}
        return HTTPStatus.OK, payload, {"ETag": etag(fields)}

    def _answer(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    store: Store
    token: bytes
    limit: RateLimit | None
    failures: list[int | None]  # per coming request: None (served) or the status to fail with
    lock: threading.Lock

    def admit(self, authorization: str) -> None:
        """Refuse the request (401, 5xx injected, 429) or let it through."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.token):
            raise _Refused(
                HTTPStatus.UNAUTHORIZED, "missing or invalid API token",
                {"WWW-Authenticate": 'Bearer realm="saas"'},
            )  # fmt: skip
        with self.lock:
            failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            raise _Refused(HTTPStatus(failure), "the service is unavailable, try again")
        wait = self.limit.wait_needed() if self.limit else 0.0
        if wait:
            raise _Refused(
                HTTPStatus.TOO_MANY_REQUESTS, "rate limit exceeded",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )  # fmt: skip


@dataclass
class SaasServer(ServedInThread):
    """The API on ``host``:``port`` (0: a free port) in a daemon thread; a context manager.

    ``rate`` requests per second (bursts of ``burst``) before 429s; ``None``: unlimited."""

    store_path: Path
    token: str = field(repr=False)
    host: str = DEFAULT_HOST
    port: int = 0
    rate: float | None = None
    burst: int = 20
    _server: _Server | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> SaasServer:
        if self._server is not None:
            return self
        if not self.token:
            raise RetentionError("the SaaS API needs a non-empty token")
        try:
            server = _Server((self.host, self.port), _Handler)
        except OSError as exc:
            raise RetentionError(
                f"cannot start the SaaS API on {self.host}:{self.port}: {exc}"
            ) from None
        server.store = Store(self.store_path)
        server.token = self.token.encode()
        server.limit = RateLimit(self.rate, self.burst) if self.rate else None
        server.failures, server.lock = [], threading.Lock()
        self._server, self.port = server, int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, name="saas-api", daemon=True)
        self._thread.start()
        wait_until_up(self.base_url)
        return self

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def store(self) -> Store:
        return Store(self.store_path)

    def fail_next(
        self, count: int, status: int = HTTPStatus.SERVICE_UNAVAILABLE, *, after: int = 0
    ) -> None:
        """An outage: after ``after`` more authenticated requests, answer ``count`` with
        ``status``. Replaces any outage still pending (``fail_next(0)`` ends it)."""
        assert self._server is not None, "start the server first"
        with self._server.lock:
            self._server.failures[:] = [None] * after + [int(status)] * count

    def connection(self) -> dict[str, Any]:
        """The Airflow connection (as JSON for ``AIRFLOW_CONN_…``) that reaches this API."""
        return connection(self.host, self.port, self.token)


def connection(host: str, port: int, token: str, **extra: Any) -> dict[str, Any]:
    """An Airflow connection (JSON form) for a SaaS API on ``host``:``port``."""
    return {
        "conn_type": "http", "host": host, "port": port, "schema": "http",
        "password": token, "extra": extra,
    }  # fmt: skip


# ---------------------------------------------------------------------------- standalone


def spawn(
    store: Path, token_file: Path, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST, *,
    stdout: Any = None, detach: bool = False,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start the API as a separate long-running process; returns once it answers."""
    argv = ["-m", "include.demo.saas_server", "--host", host, "--port", str(port),
            "--store", str(store), "--token-file", str(token_file)]  # fmt: skip
    return spawn_server("SaaS API", argv, f"http://{host}:{port}", stdout=stdout, detach=detach)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.demo.saas_server", description="Run the demo's SaaS API."
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--store", type=Path, required=True, help="the SQLite file of records")
    parser.add_argument(
        "--token-file", type=Path, help=f"the API token (0600); default: ${TOKEN_ENV}"
    )
    parser.add_argument("--rate", type=float, default=None, help="requests per second (429 above)")
    parser.add_argument("--burst", type=int, default=20)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        if args.token_file is not None:
            token = args.token_file.read_text(encoding="ascii").strip()
        else:
            token = os.environ.get(TOKEN_ENV, "")
        server = SaasServer(args.store, token, args.host, args.port, args.rate, args.burst)
        with server:
            print(f"SaaS API on {server.base_url}", flush=True)
            stop.wait()
    except (RetentionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
