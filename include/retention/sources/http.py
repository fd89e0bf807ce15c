"""HTTP API sources: records of a SaaS tool (a newsletter or CRM tool) reached over its API.

The adapter (:class:`HttpAdapter`, source kind ``http``) lists a collection's records with their
fields, selects them like any source (retention rules read the fields the catalogue names;
anchors are ISO-8601 dates or date-times), deletes by id and finds out which records are still
there. The API has no transactions: staging a batch changes nothing, ``apply`` deletes. A record
can change between the listing and its delete (a subscriber confirms consent again): ``apply``
reads each record again first and deletes it only if the selection still selects it and its
subjects (which the holds were checked against) are the same, with ``If-Match`` on the record's
ETag where the API gives one, so a change in between is refused by the API (``412``). A changed
record is kept, not claimed, counted ``changed_meanwhile`` and judged afresh by the next run.
A record already gone when read again was deleted by someone else: counted ``already_gone``,
not claimed (the run did not delete it). One the ``DELETE`` answers ``404`` for, after the
read found it, is claimed: a retried ``DELETE`` whose first answer was lost sees that too.
Rectification (``update``) goes the same way: each ``PATCH`` after a fresh read, only while
the record is still the person's, with ``If-Match``. A retried ``PATCH`` answered ``412`` may
have been refused for the ETag its own lost first attempt moved: the record is read once more
and counted rectified if it holds exactly the corrected values (see ``_patched_already``).

The client (:class:`ApiClient`) reaches the API through an Airflow connection of type
``http``: ``host`` (with or without a scheme), ``port``, ``schema`` (``https`` unless given),
and the API token as ``password`` (sent as ``Authorization: Bearer``). Optional extras:
``timeout`` (seconds per request, default 10), ``page_size`` (default 100), ``max_retries``
(default 5), ``max_wait`` (the longest pause in seconds a retry may take, default 60).

A ``429`` waits as long as its ``Retry-After`` asks; a 5xx or a network failure backs off
exponentially (0.5 s, 1 s, 2 s … with jitter). When the retries are spent, or the API asks for
a longer pause than ``max_wait``, :class:`Unavailable` names the connection (the task is
retried later). A refused token is a :class:`RetentionError` saying which connection to fix.
Logs and errors carry the method, collection and status only: paths hold record ids and the
token is never shown.

The API's shape (the demo's SaaS server, ``include/demo/saas_server.py``, serves it)::

    GET    /v1/<collection>?limit=N&cursor=C  {"records": [{"id", "fields"}], "next_cursor"}
    GET    /v1/<collection>/<id>              one record (and its ETag, if any), or 404
    DELETE /v1/<collection>/<id>              204, 404 when there is no such record, or 412
                                              when If-Match names another ETag
    PATCH  /v1/<collection>/<id>              {"fields": {...}}: change those fields (rectification)
"""

from __future__ import annotations

import datetime as dt
import email.utils
import itertools
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo

import urllib3

from include.retention.catalogue import DeleteAction, HttpSource
from include.retention.connections import _get_connection
from include.retention.errors import RetentionError, Unavailable
from include.retention.field_values import for_lookup, like
from include.retention.holds import ActiveHolds
from include.retention.lookup import SubjectMatcher
from include.retention.pseudonym import RecordRefHasher
from include.retention.sources.base import (
    Action,
    Applied,
    Batch,
    Counts,
    DueAt,
    HoldReader,
    JudgedThrough,
    Key,
    KeyRange,
    OfSubject,
    Prepare,
    Record,
    Selection,
    Updated,
    base_selection,
    key_bounds,
    key_ranges,
    register,
)

log = logging.getLogger(__name__)

RETRIED = frozenset({429, 500, 502, 503, 504})
Deleted = Literal["deleted", "gone", "changed"]
Outcome = Deleted | Literal["absent"]  # absent: gone before this run read it again
Patched = Literal["patched", "gone", "changed"]
PatchAnswer = Patched | Literal["unsure"]  # unsure: 412 to a retried PATCH (see ApiClient.patch)
PROGRESS_EVERY = 10.0  # seconds between progress lines while a collection is listed


class Refused(RetentionError):
    """The API refused a request for a reason a retry cannot change (a 4xx answer)."""


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
    etag: str | None = None  # the version of the record an ``If-Match`` can name (GET by id)


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
        listed, started = 0, time.monotonic()
        shown = started
        while True:
            query = {"limit": str(self.settings.page_size)} | ({"cursor": cursor} if cursor else {})
            page = self._json("GET", collection, "", query)
            if not isinstance(page, dict) or not isinstance(page.get("records"), list):
                raise self._unexpected("GET", collection, "no 'records' list")
            yield from (self._record(collection, item) for item in page["records"])
            listed += len(page["records"])
            if time.monotonic() - shown >= PROGRESS_EVERY:  # the total is not known ahead
                shown = time.monotonic()
                log.info(
                    "collection %s: %s records listed in %s pages so far (%.0f/s)",
                    collection, listed, len(seen) + 1, listed / max(shown - started, 1e-6),
                )  # fmt: skip
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
        record = self._record(collection, self._decode("GET", collection, response))
        return replace(record, etag=response.headers.get("ETag"))

    def delete(self, collection: str, record_id: str, *, if_match: str | None = None) -> Deleted:
        """Delete one record (if ``if_match``, only in that version): ``deleted``, ``gone``
        when it was already gone (so a retried delete, e.g. after a timeout, is not an error),
        or ``changed`` when the API refused because the record is in another version now."""
        condition = {"If-Match": if_match} if if_match else {}
        response = self._request(
            "DELETE", collection, _item(record_id), headers=condition,
            expected=(200, 202, 204, 404, 412),
        )  # fmt: skip
        if response.status == 404:
            return "gone"
        return "changed" if response.status == 412 else "deleted"

    def patch(
        self, collection: str, record_id: str, fields: Mapping[str, Any], *,
        if_match: str | None = None,
    ) -> PatchAnswer:  # fmt: skip
        """Change some fields of one record (if ``if_match``, only in that version):
        ``patched``, ``gone`` (there is no such record) or ``changed`` (412). ``unsure``: a
        412 after an earlier attempt that may have reached the API (its answer lost): that
        attempt's own change may be what moved the ETag; only a fresh read can tell."""
        body = json.dumps({"fields": dict(fields)}).encode()
        condition = {"If-Match": if_match} if if_match else {}
        response, retried = self._attempts(
            "PATCH", collection, _item(record_id), body=body, headers=condition,
            expected=(200, 204, 404, 412),
        )  # fmt: skip
        if response.status == 404:
            return "gone"
        if response.status == 412:
            return "unsure" if retried and if_match else "changed"
        return "patched"

    def close(self) -> None:
        self._pool.clear()

    # -------------------------------------------------------------------------- transport

    def _json(self, method: str, collection: str, item: str, query: dict[str, str]) -> Any:
        response = self._request(method, collection, item, query=query, expected=(200,))
        return self._decode(method, collection, response)

    def _request(
        self, method: str, collection: str, item: str = "", *,
        query: dict[str, str] | None = None, body: bytes | None = None,
        headers: Mapping[str, str] | None = None, expected: tuple[int, ...],
    ) -> urllib3.BaseHTTPResponse:  # fmt: skip
        return self._attempts(
            method, collection, item, query=query, body=body, headers=headers, expected=expected
        )[0]

    def _attempts(
        self, method: str, collection: str, item: str = "", *,
        query: dict[str, str] | None = None, body: bytes | None = None,
        headers: Mapping[str, str] | None = None, expected: tuple[int, ...],
    ) -> tuple[urllib3.BaseHTTPResponse, bool]:  # fmt: skip
        """The answer, and whether an earlier attempt failed (it may have reached the API)."""
        url = f"{self.settings.base_url}/v1/{quote(collection, safe='')}{item}"
        what = f"{method} {collection}"
        headers = {**self._headers, **(headers or {})}
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(self.settings.max_retries + 1):
            try:
                response = self._pool.request(method, url, fields=query, body=body, headers=headers)
            except urllib3.exceptions.HTTPError as exc:
                problem, wait = type(exc).__name__, self._backoff(attempt)
            else:
                if response.status in expected:
                    return response, attempt > 0
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
            raise Refused(
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


# ------------------------------------------------------------------------------ the adapter


def _in_range(record_id: str, lower: Key | None, upper: Key | None) -> bool:
    return (lower is None or record_id > str(lower)) and (upper is None or record_id <= str(upper))


def _holding(fields: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    """Does a record hold exactly ``values`` (a rectification's corrected fields)?"""
    return all(fields.get(name) == value for name, value in values.items())


def _matches(value: Any, wanted: Sequence[Any]) -> bool:
    """JSON values compare by type too: ``true`` is not ``1``."""
    return any(value == w and isinstance(value, bool) == isinstance(w, bool) for w in wanted)


@dataclass(frozen=True)
class _Item:
    id: str
    ref: bytes
    subjects: frozenset[bytes]


@dataclass(frozen=True)
class _Staged:
    """A batch's records as listed, those it deletes (held ones dropped) and its selection."""

    records: list[ApiRecord]
    selection: Selection
    items: list[_Item] = field(default_factory=list)


@register("http")
class HttpAdapter:
    """One collection of a SaaS API (:class:`HttpSource`); ``connection``: an
    :class:`ApiClient` (None: made from the binding's Airflow connection)."""

    kind: ClassVar[str]

    def __init__(self, binding: HttpSource, key: bytes, connection: ApiClient | None = None):
        if not isinstance(binding, HttpSource):
            raise RetentionError(f"the http adapter needs an 'http' source, not {binding!r}")
        self.binding = binding
        self.system, self.dataset = binding.system, binding.collection
        self.client = connection or ApiClient.for_connection(binding.conn_id)
        self._records = RecordRefHasher(key, binding.system, binding.collection)
        self._matcher = SubjectMatcher(key, binding.lookup_columns())
        self._zone = ZoneInfo(binding.anchor_timezone)
        self._where = f"collection {binding.collection!r} of system {binding.system!r}"
        self._listed: tuple[Selection, list[ApiRecord]] | None = None

    def resolve(self, action: Action | None = None) -> None:
        if action is not None and not isinstance(action, DeleteAction):
            raise RetentionError(
                f"{self._where}: an http source can only delete records ({action.kind!r} is"
                " not supported through the API); use action 'delete'"
            )
        sample = list(itertools.islice(self._listing(), 100))
        for kind, field_name in self.binding.lookup.items():
            if sample and all(field_name not in r.fields for r in sample):
                raise RetentionError(
                    f"{self._where}: no record has the lookup field {field_name!r} ({kind});"
                    " check the catalogue's 'lookup' against the API's field names"
                )

    def count(self, selection: Selection, action: Action, holds: ActiveHolds) -> Counts:
        tally: Counter[str] = Counter()
        chosen: list[ApiRecord] = []
        for record, status in self._statuses(selection):
            if status == "due":
                chosen.append(record)
                hold = holds.kind_for(*self._refs(record)) if not holds.empty else None
                status = {"legal_hold": "held", "restriction": "restricted"}.get(hold or "", status)
            tally[status] += 1
        self._listed = (selection, chosen)  # a run stages what it just planned: one listing
        return Counts(
            total=tally.total(), selected=tally["due"] + tally["held"] + tally["restricted"],
            held=tally["held"], restricted=tally["restricted"],
            anchor_unknown=tally["unknown_anchor"], kept=tally["kept"],
            out_of_scope=tally["out_of_scope"], subject_unknown=tally["subject_unknown"],
            cutoffs=_cutoffs(base_selection(selection)),
        )  # fmt: skip

    def partitions(self, selection: Selection, size: int) -> list[KeyRange]:
        if size < 1:
            raise RetentionError(f"a partition size must be at least 1, not {size}")
        lower, upper = key_bounds(selection)
        ids = sorted(r.id for r in self._listing() if _in_range(r.id, lower, upper))
        return key_ranges(selection, ids[size - 1 : -1 : size])

    def batches(
        self, selection: Selection, action: Action, holds: HoldReader, size: int
    ) -> Iterator[Batch]:
        self.resolve(action)
        # The whole selection is listed before the first delete: an API paging by offset would
        # otherwise skip records as earlier pages shrink.
        listed, self._listed = self._listed, None
        if listed is not None and listed[0] == selection:
            due = listed[1]
        else:
            due = [record for record, status in self._statuses(selection) if status == "due"]
        for start in range(0, len(due), size):
            yield self._stage(
                start // size + 1, _Staged(due[start : start + size], selection), holds
            )

    def redo(self, batch: Batch, holds: HoldReader) -> Batch:
        return self._stage(batch.no, batch.state, holds)

    def apply(self, batch: Batch) -> Applied:
        applied: list[bytes] = []
        outcomes: Counter[str] = Counter()
        staged: _Staged = batch.state
        for item in staged.items:
            outcome: str
            try:
                outcome = self._delete_if_still_selected(item, staged.selection)
            except Refused:
                outcome = "failed"
            outcomes[outcome] += 1
            if outcome in ("deleted", "gone"):
                applied.append(item.ref)
        if outcomes["failed"]:
            log.warning(
                "batch %s: the API refused to delete %s record(s)", batch.no, outcomes["failed"]
            )
        if outcomes["changed"]:
            log.info("batch %s: %s record(s) changed since they were listed: left for the next"
                     " run", batch.no, outcomes["changed"])  # fmt: skip
        counts = {"already_gone": outcomes["absent"], "changed_meanwhile": outcomes["changed"]}
        return Applied(applied, outcomes["failed"], {k: n for k, n in counts.items() if n})

    def abandon(self, batch: Batch) -> None:
        """Staging changed nothing at the API: nothing to undo."""

    def present(
        self, refs: AbstractSet[bytes], action: Action, within: Selection | None = None,
        judged_through: JudgedThrough | None = None,
    ) -> set[bytes]:  # fmt: skip
        """``judged_through`` is ignored: an API record does not say when it was written."""
        lower, upper = key_bounds(within) if within is not None else (None, None)
        ids = [r.id for r in self._listing() if _in_range(r.id, lower, upper)]
        return {ref for ref in self._records.refs(ids) if ref in refs}

    def read(self, selection: Selection) -> Iterator[Record]:
        for record, status in self._statuses(selection):
            if status == "due":
                yield {"id": record.id, **record.fields}

    def fields_to_update(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Fields are those the collection's records have (the first 100 looked at); a value
        takes the JSON type the field holds now; a lookup field's must be a valid identifier."""
        examples: dict[str, Any] = {}
        for record in itertools.islice(self._listing(), 100):
            for name, value in record.fields.items():
                if examples.get(name) is None:
                    examples[name] = value
        lookups = {column: kind for kind, column in self.binding.lookup_columns()}
        checked: dict[str, Any] = {}
        problems = []
        for name in sorted(set(values) & examples.keys()):
            try:
                if name in lookups:
                    for_lookup(name, lookups[name], values[name])
                checked[name] = like(name, values[name], examples[name])
            except RetentionError as exc:
                problems.append(str(exc))
        if problems:
            raise RetentionError(f"{self._where}: " + "; ".join(problems))
        return checked

    def update(
        self, selection: Selection, values: Mapping[str, Any], holds: HoldReader,
        prepare: Prepare,
    ) -> Updated:  # fmt: skip
        """PATCH each selected record that is not held (the API cannot lock: the holds are read
        once the records are listed), after ``prepare``. Like a delete, each PATCH first reads
        the record again and goes only if it is still the person's, as its holds were checked
        (``If-Match`` on its ETag); a record changed meanwhile is left, counted
        ``changed_meanwhile``."""
        statuses = list(self._statuses(selection))
        records = [record for record, status in statuses if status == "due"]
        active = holds()
        chosen: list[_Item] = []
        skipped: Counter[str] = Counter(s for _, s in statuses if s == "subject_unknown")
        old: set[bytes] = set()
        for record in records:
            ref, subjects = self._refs(record)
            kind = active.kind_for(ref, subjects) if not active.empty else None
            if kind:
                skipped[kind] += 1
            else:
                chosen.append(_Item(record.id, ref, subjects))
                old |= subjects
        subjects_before = frozenset(old)
        prepare(
            Updated(refs=[i.ref for i in chosen], skipped=dict(skipped), subjects=subjects_before)
        )
        updated: list[bytes] = []
        for item in chosen if values else ():
            outcome = self._patch_if_still_selected(item, selection, values)
            if outcome == "patched":
                updated.append(item.ref)
            elif outcome == "changed":
                skipped["changed_meanwhile"] += 1
        return Updated(refs=updated, skipped=dict(skipped), subjects=subjects_before)

    def holding(self, refs: AbstractSet[bytes], values: Mapping[str, Any]) -> set[bytes]:
        return {
            ref for record in self._listing()
            if (ref := self._records.ref(record.id)) in refs
            and _holding(record.fields, values)
        }  # fmt: skip

    def kept_files(self) -> dict[str, dict[str, bool]]:
        return {}  # API records link to no files

    def close(self) -> None:
        self.client.close()

    def _patch_if_still_selected(
        self, item: _Item, selection: Selection, values: Mapping[str, Any]
    ) -> Patched:
        """Change the record if it is still as it was selected (see :meth:`update`)."""
        now = self._as_selected(item, selection)
        if isinstance(now, str):
            return now
        answer = self.client.patch(self.dataset, item.id, values, if_match=now.etag)
        return self._patched_already(item, now, values) if answer == "unsure" else answer

    def _patched_already(
        self, item: _Item, before: ApiRecord, values: Mapping[str, Any]
    ) -> Patched:
        """After a ``412`` to a retried ``PATCH``: ``patched`` when the record now holds exactly
        the corrected values (as crash recovery's :meth:`holding` judges) and its lookup
        fields name the people the change would leave them naming (our own lost attempt
        applied); else ``changed`` (someone else changed it)."""
        now = self.client.get(self.dataset, item.id)
        if now is None:
            return "gone"
        expected = self._matcher.record_refs({**before.fields, **values})
        same = self._refs(now)[1] == expected and not self._matcher.unreadable(now.fields)
        return "patched" if same and _holding(now.fields, values) else "changed"

    def _delete_if_still_selected(self, item: _Item, selection: Selection) -> Outcome:
        """Delete the record if it is still as it was judged (see the module doc)."""
        now = self._as_selected(item, selection)
        if isinstance(now, str):
            return "absent" if now == "gone" else now
        return self.client.delete(self.dataset, item.id, if_match=now.etag)

    def _as_selected(
        self, item: _Item, selection: Selection
    ) -> ApiRecord | Literal["gone", "changed"]:
        """The record read again, if the selection still selects it and its lookup fields
        still name the people whose holds were checked; else why not."""
        now = self.client.get(self.dataset, item.id)
        if now is None:
            return "gone"
        base = base_selection(selection)
        if self._refs(now)[1] != item.subjects or self._status(base, now) != "due":
            return "changed"
        return now

    # -------------------------------------------------------------------------- selecting

    def _statuses(self, selection: Selection) -> Iterator[tuple[ApiRecord, str]]:
        """Each record in the selection's key range with its status (``due``: selected)."""
        base = base_selection(selection)
        lower, upper = key_bounds(selection)
        if isinstance(base, OfSubject) and not self._matcher.columns:
            raise RetentionError(f"{self._where}: no 'lookup' field to find a subject's records")
        unreadable: Counter[str] = Counter()
        for record in self._listing():
            if _in_range(record.id, lower, upper):
                status = self._status(base, record)
                if status == "subject_unknown":
                    unreadable.update(self._matcher.unreadable(record.fields))
                yield record, status
        if unreadable:
            log.warning(
                "%s: kept %s selected record(s) whose lookup field(s) hold a value no identifier"
                " has (per field: %s): whose they are, and so their holds, cannot be told;"
                " correct the field in the tool", self._where, sum(unreadable.values()),
                dict(sorted(unreadable.items())),
            )  # fmt: skip

    def _listing(self) -> Iterator[ApiRecord]:
        """The collection's records, each once: a cursor API whose order moves while it is
        listed (a record updated meanwhile) can give a record on two pages; the first is kept
        (every change re-reads it anyway)."""
        seen: set[str] = set()
        repeated = 0
        for record in self.client.records(self.dataset):
            if record.id in seen:
                repeated += 1
                continue
            seen.add(record.id)
            yield record
        if repeated:
            log.warning(
                "%s: the API listed %s record(s) more than once (its order moved while it was"
                " listed); each was judged once", self._where, repeated,
            )  # fmt: skip

    def _status(self, base: DueAt | OfSubject, record: ApiRecord) -> str:
        """``subject_unknown``: selected, but a lookup field holds a value no identifier has
        (`SubjectMatcher.unreadable`), so no hold can be checked: kept, never changed."""
        if isinstance(base, OfSubject):
            status = "due" if base.matches(self._refs(record)[1]) else "other"
        else:
            status = self._classify(base, record.fields)
        if status == "due" and self._matcher.unreadable(record.fields):
            return "subject_unknown"
        return status

    def _classify(self, selection: DueAt, fields: Mapping[str, Any]) -> str:
        applicable = [
            case for case in selection.rules
            if case.when is None or _matches(fields.get(case.when.column), case.when.values)
        ]  # fmt: skip
        if not applicable:
            return "out_of_scope"
        unknown = False
        for case in applicable:
            if not case.rule.enforceable or case.anchor_column is None:
                continue
            raw = fields.get(case.anchor_column)
            anchor = self._anchor(raw)
            if anchor is None:
                unknown |= raw not in (None, "") or not case.rule.null_anchor_is_pending
                continue
            due = case.rule.due_at(anchor)
            if due is not None and due <= selection.as_of:
                return "due"
        return "unknown_anchor" if unknown else "kept"

    def _anchor(self, raw: Any) -> dt.date | dt.datetime | None:
        """An ISO-8601 date, or a date-time (naive ones are in the binding's zone)."""
        if not isinstance(raw, str):
            return None
        text = raw.strip()
        try:
            if len(text) == 10:
                return dt.date.fromisoformat(text)
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=self._zone)

    def _refs(self, record: ApiRecord) -> tuple[bytes, frozenset[bytes]]:
        """The record's reference and those of its lookup fields."""
        return self._records.ref(record.id), self._matcher.record_refs(record.fields)

    def _stage(self, no: int, staged: _Staged, holds: HoldReader) -> Batch:
        active = holds()
        items: list[_Item] = []
        skipped: Counter[str] = Counter()
        for record in staged.records:
            item = _Item(record.id, *self._refs(record))
            kind = active.kind_for(item.ref, item.subjects) if not active.empty else None
            if kind:
                skipped[kind] += 1
            else:
                items.append(item)
        subjects = frozenset(ref for i in items for ref in i.subjects)
        return Batch(
            no, [i.ref for i in items], active, subjects=subjects,
            skipped=dict(skipped), state=replace(staged, items=items),
        )  # fmt: skip


def _cutoffs(selection: DueAt | OfSubject) -> tuple[str | None, ...]:
    if not isinstance(selection, DueAt):
        return ()
    cuts = (
        c.rule.cutoff_date(selection.as_of) if c.rule.enforceable else None for c in selection.rules
    )
    return tuple(None if cut is None else cut.isoformat() for cut in cuts)
