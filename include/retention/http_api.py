"""A client for SaaS HTTP APIs (newsletter and CRM tools): list records page by page, read
one, delete one by id.

The API is reached through an Airflow connection of type ``http``: ``host`` (with or without
a scheme), ``port``, ``schema`` (``https`` unless given), and the API token as ``password``
(sent as ``Authorization: Bearer``). Optional extras: ``timeout`` (seconds per request,
default 10), ``page_size`` (default 100), ``max_retries`` (default 5), ``max_wait`` (the
longest pause in seconds a retry may take, default 60).

A ``429`` waits as long as its ``Retry-After`` asks; a 5xx or a network failure backs off
exponentially (0.5 s, 1 s, 2 s … with jitter). When the retries are spent, or the API asks for
a longer pause than ``max_wait``, :class:`Unavailable` names the connection (the task is
retried later). A refused token is a :class:`RetentionError` saying which connection to fix.
Logs and errors carry the method, collection and status only: paths hold record ids and the
token is never shown.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import urllib3

from include.retention.connections import _get_connection
from include.retention.errors import RetentionError, Unavailable

log = logging.getLogger(__name__)

RETRIED = frozenset({429, 500, 502, 503, 504})
_EXTRAS: dict[str, tuple[type, float, float]] = {  # name -> (type, min, max)
    "timeout": (float, 0.1, 600),
    "page_size": (int, 1, 1000),
    "max_retries": (int, 0, 20),
    "max_wait": (float, 0, 3600),
}


@dataclass(frozen=True)
class ApiRecord:
    """One record of a collection: its id and its fields as the API returns them."""

    id: str
    fields: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class ApiSettings:
    """Where the API is and how patiently to talk to it."""

    base_url: str
    token: str = field(repr=False)
    timeout: float = 10.0
    page_size: int = 100
    max_retries: int = 5
    max_wait: float = 60.0
    backoff: float = 0.5

    @classmethod
    def from_connection(cls, conn_id: str) -> ApiSettings:
        conn = _get_connection(conn_id)
        if not conn.host:
            raise RetentionError(f"connection {conn_id!r} has no host: set the API's address")
        if not conn.password:
            raise RetentionError(f"connection {conn_id!r} has no password: put the API token there")
        host = str(conn.host).rstrip("/")
        if "://" not in host:
            port = f":{conn.port}" if conn.port else ""
            host = f"{conn.schema or 'https'}://{host}{port}"
        return cls(host, conn.password, **_extras(conn_id, conn.extra_dejson))


def _extras(conn_id: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, (kind, low, high) in _EXTRAS.items():
        if name not in extra:
            continue
        try:
            value = kind(extra[name])
        except (TypeError, ValueError):
            value = None
        if value is None or not low <= value <= high:
            raise RetentionError(
                f"connection {conn_id!r}: extra {name!r} must be a number from {low:g} to"
                f" {high:g}, not {extra[name]!r}"
            )
        options[name] = value
    return options


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class ApiClient:
    """Requests to one SaaS API with retries, timeouts and errors naming the connection."""

    def __init__(
        self, settings: ApiSettings, conn_id: str, *, sleep: Callable[[float], None] = time.sleep
    ):
        self.settings = settings
        self.label = f"the API of connection {conn_id!r} ({settings.base_url})"
        self._sleep = sleep
        self._pool = urllib3.PoolManager(
            retries=False, timeout=urllib3.Timeout(total=settings.timeout), maxsize=4
        )
        self._headers = {
            "Authorization": f"Bearer {settings.token}",
            "Accept": "application/json",
            "User-Agent": "retention-enforcement",
        }

    @classmethod
    def for_connection(cls, conn_id: str) -> ApiClient:
        return cls(ApiSettings.from_connection(conn_id), conn_id)

    # -------------------------------------------------------------------------- operations

    def records(self, collection: str) -> Iterator[ApiRecord]:
        """Every record of ``collection``, following the pages' cursors."""
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            query = {"limit": str(self.settings.page_size)} | ({"cursor": cursor} if cursor else {})
            page = self._json("GET", collection, "", query)
            if not isinstance(page, dict) or not isinstance(page.get("records"), list):
                raise self._unexpected("GET", collection, "no 'records' list")
            yield from (self._record(collection, item) for item in page["records"])
            cursor = page.get("next_cursor")
            if not cursor:
                return
            if cursor in seen:
                raise self._unexpected("GET", collection, "a page cursor repeated")
            seen.add(cursor)

    def get(self, collection: str, record_id: str) -> ApiRecord | None:
        """The record, or None when the API has no such record."""
        response = self._request("GET", collection, _item(record_id), expected=(200, 404))
        if response.status == 404:
            return None
        return self._record(collection, self._decode("GET", collection, response))

    def delete(self, collection: str, record_id: str) -> bool:
        """Delete one record: True if it was deleted now, False if it was already gone
        (so a retried delete, e.g. after a timeout, is not an error)."""
        response = self._request(
            "DELETE", collection, _item(record_id), expected=(200, 202, 204, 404)
        )
        return response.status != 404

    def present(self, collection: str, record_ids: list[str]) -> set[str]:
        """The ids that still exist."""
        return {rid for rid in record_ids if self.get(collection, rid) is not None}

    # -------------------------------------------------------------------------- transport

    def _json(self, method: str, collection: str, item: str, query: dict[str, str]) -> Any:
        response = self._request(method, collection, item, query=query, expected=(200,))
        return self._decode(method, collection, response)

    def _request(
        self, method: str, collection: str, item: str = "", *,
        query: dict[str, str] | None = None, expected: tuple[int, ...],
    ) -> urllib3.BaseHTTPResponse:  # fmt: skip
        url = f"{self.settings.base_url}/v1/{quote(collection, safe='')}{item}"
        what = f"{method} {collection}"
        for attempt in range(self.settings.max_retries + 1):
            try:
                response = self._pool.request(method, url, fields=query, headers=self._headers)
            except urllib3.exceptions.HTTPError as exc:
                problem, wait = type(exc).__name__, self._backoff(attempt)
            else:
                if response.status in expected:
                    return response
                self._refuse(what, response)
                problem = f"HTTP {response.status}"
                wait = retry_after(response.headers.get("Retry-After")) or self._backoff(attempt)
                if wait > self.settings.max_wait:
                    raise Unavailable(
                        f"{self.label}: {what} answered {problem} asking to wait {wait:.0f} s,"
                        f" longer than the connection's max_wait ({self.settings.max_wait:g} s);"
                        " the task is retried later"
                    )
            if attempt < self.settings.max_retries:
                log.warning(
                    "%s: %s gave %s; retrying in %.1f s (retry %s of %s)",
                    self.label, what, problem, wait, attempt + 1, self.settings.max_retries,
                )  # fmt: skip
                self._sleep(wait)
        raise Unavailable(
            f"{self.label}: {what} failed {self.settings.max_retries + 1} times (last: {problem});"
            " the task is retried — check that the service is up and the connection's host"
        )

    def _refuse(self, what: str, response: urllib3.BaseHTTPResponse) -> None:
        """Raise for an answer that a retry cannot change."""
        if response.status in (401, 403):
            raise RetentionError(
                f"{self.label}: {what} was refused ({response.status}): the API token is"
                " missing, wrong or lacks permission; put a valid token in the connection's"
                " password"
            )
        if response.status not in RETRIED:
            raise RetentionError(
                f"{self.label}: {what} answered HTTP {response.status} ({_api_message(response)})"
            )

    def _backoff(self, attempt: int) -> float:
        base = self.settings.backoff * 2**attempt
        return float(min(self.settings.max_wait, base + random.uniform(0, self.settings.backoff)))

    def _decode(self, method: str, collection: str, response: urllib3.BaseHTTPResponse) -> Any:
        try:
            return json.loads(response.data)
        except ValueError:
            raise self._unexpected(method, collection, "not JSON") from None

    def _record(self, collection: str, item: Any) -> ApiRecord:
        if not isinstance(item, dict) or not isinstance(item.get("fields"), dict):
            raise self._unexpected("GET", collection, "a record without 'fields'")
        if not isinstance(item.get("id"), str | int) or isinstance(item["id"], bool):
            raise self._unexpected("GET", collection, "a record without an 'id'")
        return ApiRecord(str(item["id"]), item["fields"])

    def _unexpected(self, method: str, collection: str, problem: str) -> RetentionError:
        return RetentionError(
            f"{self.label}: unexpected answer to {method} {collection} ({problem}); is the"
            " connection pointing at the right API?"
        )


def _item(record_id: str) -> str:
    if not record_id:
        raise RetentionError("a record id must not be empty")
    return "/" + quote(record_id, safe="")


def _api_message(response: urllib3.BaseHTTPResponse) -> str:
    try:
        message = json.loads(response.data).get("error")
    except (ValueError, AttributeError):
        message = None
    return str(message)[:200] if message else "no error message"
