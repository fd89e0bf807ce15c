"""The HTTP API source against the demo's real SaaS server on loopback.

The client: pages, retries on 429 (honouring Retry-After) and 5xx, errors naming the
connection, idempotent deletes. The adapter: selections, holds, batches, presence, partitions.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from include.demo.saas_server import SaasServer
from include.retention.catalogue import AnonymiseAction, DeleteAction, HttpSource, RuleCase
from include.retention.errors import RetentionError, Unavailable
from include.retention.holds import ActiveHolds
from include.retention.pseudonym import record_ref, subject_ref
from include.retention.sources import http as http_source
from include.retention.sources.base import DueAt, KeyRange, OfSubject, adapter_for
from include.retention.sources.http import ApiClient, ApiSettings, HttpAdapter, retry_after

TOKEN = secrets.token_urlsafe(24)
CONN_ID = "retention_test_saas"


def _records(count: int) -> list[tuple[str, str]]:
    return [
        (f"lead-{n:04d}", json.dumps({"email": f"p{n}@example.org", "received_at": "2026-01-01"}))
        for n in range(count)
    ]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SaasServer]:
    with SaasServer(tmp_path / "saas.db", TOKEN) as running:
        yield running


class Sleeps(list[float]):
    """Records the pauses the client asks for, and really pauses (the server's clock runs)."""

    def __call__(self, seconds: float) -> None:
        import time

        self.append(seconds)
        time.sleep(seconds)


def _client(server: SaasServer, token: str = TOKEN, **options: float) -> tuple[ApiClient, Sleeps]:
    settings = ApiSettings(server.base_url, token, **{"backoff": 0.05, **options})  # type: ignore[arg-type]
    sleeps = Sleeps()
    return ApiClient(settings, CONN_ID, sleep=sleeps), sleeps


def test_lists_every_record_across_pages_in_id_order(server: SaasServer) -> None:
    server.store.upsert("leads", _records(23))
    server.store.upsert("other", _records(2))
    client, _ = _client(server, page_size=5)
    got = list(client.records("leads"))
    assert [r.id for r in got] == [f"lead-{n:04d}" for n in range(23)]
    assert got[7].fields == {"email": "p7@example.org", "received_at": "2026-01-01"}
    assert list(client.records("empty")) == []


def test_a_long_listing_logs_its_progress_without_personal_data(
    server: SaasServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.store.upsert("leads", _records(23))
    client, _ = _client(server, page_size=5)
    monkeypatch.setattr(http_source, "PROGRESS_EVERY", 0.0)  # a line after every page
    with caplog.at_level(logging.INFO, logger=http_source.__name__):
        assert len(list(client.records("leads"))) == 23
    lines = [r.getMessage() for r in caplog.records if "listed" in r.getMessage()]
    shape = re.compile(r"collection leads: (\d+) records listed in (\d+) pages so far \(\d+/s\)")
    matches = [shape.fullmatch(line) for line in lines]
    assert all(matches)
    assert [(int(m[1]), int(m[2])) for m in matches if m] == [
        (5, 1), (10, 2), (15, 3), (20, 4), (23, 5)
    ]  # fmt: skip
    assert not any("example.org" in r.getMessage() for r in caplog.records)


def test_a_page_exactly_full_ends_without_an_empty_extra_page(server: SaasServer) -> None:
    server.store.upsert("leads", _records(10))
    client, _ = _client(server, page_size=5)
    assert len(list(client.records("leads"))) == 10


def test_429_waits_as_long_as_retry_after_asks_and_then_succeeds(tmp_path: Path) -> None:
    with SaasServer(tmp_path / "saas.db", TOKEN, rate=2.0, burst=2) as server:
        server.store.upsert("leads", _records(6))
        client, sleeps = _client(server, page_size=1)
        got = [r.id for r in client.records("leads")]
    assert got == [f"lead-{n:04d}" for n in range(6)]  # nothing lost or repeated
    assert sleeps, "the server's rate limit was never hit"
    assert all(s == 1.0 for s in sleeps)  # the server's Retry-After: 1 (seconds), exactly


def test_5xx_is_retried_with_growing_backoff(server: SaasServer) -> None:
    server.store.upsert("leads", _records(1))
    server.fail_next(3, status=503)
    client, sleeps = _client(server)
    assert client.get("leads", "lead-0000") is not None
    assert len(sleeps) == 3
    assert sleeps[0] < sleeps[2]  # exponential: 0.05-0.1, then 0.1-0.15, then 0.2-0.25


def test_a_persistent_outage_is_unavailable_naming_the_connection(server: SaasServer) -> None:
    server.fail_next(10, status=502)
    client, sleeps = _client(server, max_retries=2)
    with pytest.raises(Unavailable, match=rf"connection '{CONN_ID}'.*3 times.*HTTP 502"):
        list(client.records("leads"))
    assert len(sleeps) == 2


def test_an_unreachable_api_is_unavailable(tmp_path: Path) -> None:
    server = SaasServer(tmp_path / "saas.db", TOKEN).start()
    server.stop()  # the port is free again: nothing listens
    client, sleeps = _client(server, max_retries=1)
    with pytest.raises(Unavailable, match=r"NewConnectionError|MaxRetryError|ProtocolError"):
        client.get("leads", "x")
    assert len(sleeps) == 1


def test_a_retry_after_beyond_max_wait_is_not_waited_for(tmp_path: Path) -> None:
    with SaasServer(tmp_path / "saas.db", TOKEN, rate=0.01, burst=1) as server:
        client, sleeps = _client(server, max_wait=5)
        client.get("leads", "x")  # the one token of the bucket
        with pytest.raises(Unavailable, match=r"asking to wait 100 s.*max_wait \(5 s\)"):
            client.get("leads", "x")
    assert sleeps == []


def test_a_wrong_token_names_the_connection_and_never_shows_a_token(
    server: SaasServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = secrets.token_urlsafe(24)
    client, sleeps = _client(server, token=wrong)
    with caplog.at_level(logging.DEBUG), pytest.raises(RetentionError) as failure:
        list(client.records("leads"))
    message = str(failure.value)
    assert f"connection '{CONN_ID}'" in message and "(401)" in message and "password" in message
    assert not isinstance(failure.value, Unavailable)  # not retried: a retry cannot fix it
    assert sleeps == []
    for text in (message, repr(client.settings), caplog.text):
        assert wrong not in text and TOKEN not in text


def test_delete_is_idempotent(server: SaasServer) -> None:
    server.store.upsert("leads", _records(3))
    client, _ = _client(server)
    assert client.delete("leads", "lead-0001") == "deleted"
    assert client.delete("leads", "lead-0001") == "gone"  # already gone: not an error
    assert [r.id for r in client.records("leads")] == ["lead-0000", "lead-0002"]
    assert client.get("leads", "lead-0001") is None


def test_a_conditional_delete_names_the_version_it_deletes(server: SaasServer) -> None:
    server.store.upsert("leads", [("a", json.dumps({"email": "a@x.se", "status": "lead"}))])
    client, _ = _client(server)
    listed = client.get("leads", "a")
    assert listed is not None and listed.etag and listed.etag.startswith('"')
    server.store.upsert("leads", [("a", json.dumps({"email": "a@x.se", "status": "customer"}))])
    assert client.delete("leads", "a", if_match=listed.etag) == "changed"
    current = client.get("leads", "a")
    assert current is not None and current.fields["status"] == "customer"
    assert current.etag != listed.etag
    assert client.delete("leads", "a", if_match=current.etag) == "deleted"
    assert client.delete("leads", "a", if_match=current.etag) == "gone"


def test_a_conditional_patch_changes_only_the_version_it_names(server: SaasServer) -> None:
    server.store.upsert("leads", [("a", json.dumps({"email": "a@x.se", "name": "A"}))])
    client, _ = _client(server)
    read = client.get("leads", "a")
    assert read is not None and read.etag
    server.store.upsert("leads", [("a", json.dumps({"email": "b@x.se", "name": "A"}))])
    assert client.patch("leads", "a", {"name": "Anna"}, if_match=read.etag) == "changed"
    current = client.get("leads", "a")
    assert current is not None and current.fields == {"email": "b@x.se", "name": "A"}
    assert client.patch("leads", "a", {"name": "Bea"}, if_match=current.etag) == "patched"
    after = client.get("leads", "a")
    assert after is not None and after.fields == {"email": "b@x.se", "name": "Bea"}
    assert client.patch("leads", "nobody", {"name": "X"}) == "gone"


def test_a_delete_retried_after_an_outage_deletes_once(server: SaasServer) -> None:
    server.store.upsert("leads", _records(2))
    server.fail_next(2, status=500)
    client, sleeps = _client(server)
    assert client.delete("leads", "lead-0000") == "deleted"
    assert len(sleeps) == 2
    assert [r.id for r in client.records("leads")] == ["lead-0001"]


def test_ids_with_reserved_characters_are_quoted(server: SaasServer) -> None:
    odd = "a/b?c#d e"
    server.store.upsert("leads", [(odd, "{}"), ("a", "{}")])
    client, _ = _client(server)
    assert client.get("leads", "a/b") is None
    assert client.delete("leads", odd) == "deleted"
    assert [r.id for r in client.records("leads")] == ["a"]


def test_records_survive_a_restart(tmp_path: Path) -> None:
    with SaasServer(tmp_path / "saas.db", TOKEN) as first:
        first.store.upsert("leads", _records(4))
        client, _ = _client(first)
        client.delete("leads", "lead-0002")
    assert oct((tmp_path / "saas.db").stat().st_mode & 0o777) == "0o600"
    with SaasServer(tmp_path / "saas.db", TOKEN) as second:
        client, _ = _client(second)
        assert [r.id for r in client.records("leads")] == ["lead-0000", "lead-0001", "lead-0003"]


def test_unexpected_answers_are_named(server: SaasServer) -> None:
    client, _ = _client(server)
    with pytest.raises(RetentionError, match=rf"connection '{CONN_ID}'.*HTTP 404"):
        list(client.records("Not-A-Collection"))


def test_settings_come_from_the_airflow_connection(
    server: SaasServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = server.connection() | {"extra": {"page_size": 7, "timeout": 3}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    settings = ApiSettings.from_connection(CONN_ID)
    assert (settings.base_url, settings.page_size, settings.timeout) == (server.base_url, 7, 3.0)
    server.store.upsert("leads", _records(8))
    assert len(list(ApiClient.for_connection(CONN_ID).records("leads"))) == 8


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"password": None}, "no password: put the API token there"),
        ({"host": None}, "no host"),
        ({"extra": {"page_size": "many"}}, "extra 'page_size' must be a number from 1 to 1000"),
        ({"extra": {"timeout": 0}}, "extra 'timeout' must be a number"),
    ],
)
def test_a_misconfigured_connection_is_named(
    monkeypatch: pytest.MonkeyPatch, change: dict[str, object], problem: str
) -> None:
    conn = {"conn_type": "http", "host": "127.0.0.1", "port": 1, "password": "t"} | change
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    with pytest.raises(RetentionError, match=rf"connection '{CONN_ID}'.*{problem}"):
        ApiSettings.from_connection(CONN_ID)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after("3") == 3.0
    assert retry_after("Wed, 25 Nov 2026 12:00:10 GMT", now=1795608000.0) == 10.0
    assert retry_after("soon") is None and retry_after(None) is None


# ------------------------------------------------------------------------------ the adapter

AS_OF = dt.datetime(2026, 11, 24, 1, 30, tzinfo=dt.UTC)
KEY = b"test-pseudonym-key-0123456789abcdef"
RULES = tuple(
    RuleCase.model_validate(case)
    for case in (
        {"rule": {"kind": "period", "period": "P180D", "anchor": {"sv": "inkom", "en": "received"}},
         "anchor_column": "received_at", "when": {"column": "status", "one_of": ["lead", "lost"]}},
        {"rule": {"kind": "consent"}, "anchor_column": "consent_withdrawn_at",
         "when": {"column": "consented", "equals": True}},
    )
)  # fmt: skip
OLD, RECENT = "2025-06-01", "2026-11-01"
# id -> (fields, designed fate); "due" ones are deleted unless held
DESIGN: dict[str, tuple[dict[str, object], str]] = {
    "a01": ({"email": "a01@x.se", "status": "lead", "received_at": OLD}, "due"),
    "a02": ({"email": "a02@x.se", "status": "lost", "received_at": "2025-06-01T10:00:00"}, "due"),
    "a03": ({"email": "a03@x.se", "status": "lead", "received_at": RECENT}, "kept"),
    "a04": ({"email": "a04@x.se", "status": "lead", "received_at": None}, "unknown_anchor"),
    "a05": ({"email": "a05@x.se", "status": "lead", "received_at": "spring"}, "unknown_anchor"),
    "a06": ({"email": "a06@x.se", "status": "customer", "received_at": OLD}, "out_of_scope"),
    "a07": ({"email": "a07@x.se", "status": "customer", "consented": True,
             "consent_withdrawn_at": "2026-10-01T08:00:00+02:00"}, "due"),
    "a12": ({"email": "a12@x.se", "status": "customer", "consented": True}, "kept"),
    "a08": ({"email": "a08@x.se", "status": "lead", "received_at": OLD}, "held"),  # record hold
    "a09": ({"email": "Held@X.se", "status": "lead", "received_at": OLD}, "held"),  # subject hold
    "a10": ({"email": "a10@x.se", "status": "lead", "received_at": OLD}, "due"),
    # JSON compares by type: true is not "lead", 1 is not true
    "a11": ({"email": "a11@x.se", "status": True, "consented": 1, "received_at": OLD},
            "out_of_scope"),
}  # fmt: skip
DUE = sorted(k for k, (_, fate) in DESIGN.items() if fate == "due")
BINDING = HttpSource(
    system="lead_crm", conn_id=CONN_ID, collection="leads", lookup={"email": "email"}
)


def _holds() -> ActiveHolds:
    return ActiveHolds(
        subjects={subject_ref(KEY, "held@x.se"): frozenset({"legal_hold"})},
        records={record_ref(KEY, "lead_crm", "leads", "a08"): frozenset({"restriction"})},
    )


@pytest.fixture
def adapter(server: SaasServer) -> Iterator[HttpAdapter]:
    server.store.upsert("leads", [(rid, json.dumps(f)) for rid, (f, _) in DESIGN.items()])
    client, _ = _client(server, page_size=4)
    made = adapter_for(BINDING, KEY, client)
    assert isinstance(made, HttpAdapter)
    yield made
    made.close()


def _ids(server: SaasServer) -> list[str]:
    return [rid for rid, _ in server.store.page("leads", "", 1000)]


def test_count_classifies_like_the_design(adapter: HttpAdapter) -> None:
    counts = adapter.count(DueAt(AS_OF, RULES), DeleteAction(), _holds())
    fates = [fate for _, fate in DESIGN.values()]
    assert counts.total == len(DESIGN)
    assert counts.selected == fates.count("due") + fates.count("held")
    assert (counts.held, counts.restricted) == (1, 1)  # a09 by its subject, a08 by its record
    assert counts.anchor_unknown == fates.count("unknown_anchor")
    assert counts.out_of_scope == fates.count("out_of_scope")
    assert counts.kept == fates.count("kept")
    # P180D: 2026-05-27 + 180 days = 2026-11-23, due from midnight on the 24th (as_of's day)
    assert counts.cutoffs[0] == "2026-05-27"


def test_batches_delete_exactly_the_due_records_and_leave_the_held(
    adapter: HttpAdapter, server: SaasServer
) -> None:
    applied: list[bytes] = []
    skipped = 0
    for batch in adapter.batches(DueAt(AS_OF, RULES), DeleteAction(), _holds, size=2):
        skipped += batch.held_skipped + batch.restricted_skipped
        result = adapter.apply(batch)
        assert list(result.refs) == list(batch.refs) and result.failed == 0
        applied += result.refs
    assert skipped == 2
    assert sorted(applied) == sorted(record_ref(KEY, "lead_crm", "leads", k) for k in DUE)
    assert _ids(server) == sorted(set(DESIGN) - set(DUE))
    everything = {record_ref(KEY, "lead_crm", "leads", k) for k in DESIGN}
    assert adapter.present(everything, DeleteAction()) == everything - set(applied)


def test_a_hold_placed_after_staging_is_honoured_by_redo(
    adapter: HttpAdapter, server: SaasServer
) -> None:
    batch = next(adapter.batches(DueAt(AS_OF, RULES), DeleteAction(), ActiveHolds, size=10))
    assert len(batch.refs) == len(DUE) + 2  # no holds at staging
    adapter.abandon(batch)
    again = adapter.redo(batch, _holds)
    assert again.no == batch.no and len(again.refs) == len(DUE)
    assert again.subjects == {subject_ref(KEY, DESIGN[k][0]["email"]) for k in DUE}
    adapter.apply(again)
    assert {"a08", "a09"} <= set(_ids(server))


def test_a_record_someone_else_deleted_meanwhile_is_counted_not_claimed(
    adapter: HttpAdapter, server: SaasServer
) -> None:
    batch = next(adapter.batches(DueAt(AS_OF, RULES), DeleteAction(), _holds, size=10))
    server.store.delete("leads", "a01")  # deleted by someone else between staging and applying
    result = adapter.apply(batch)
    assert result.counts == {"already_gone": 1} and result.failed == 0
    expected = {record_ref(KEY, "lead_crm", "leads", pk) for pk in DUE if pk != "a01"}
    assert set(result.refs) == expected


def test_a_record_changed_after_it_was_listed_is_kept_and_not_claimed(
    adapter: HttpAdapter, server: SaasServer
) -> None:
    """a01 renews (a new received_at: not due any more) between the listing and the delete."""
    batch = next(adapter.batches(DueAt(AS_OF, RULES), DeleteAction(), _holds, size=10))
    renewed = {**DESIGN["a01"][0], "received_at": RECENT}
    server.store.upsert("leads", [("a01", json.dumps(renewed))])
    result = adapter.apply(batch)
    assert result.counts == {"changed_meanwhile": 1} and result.failed == 0
    assert record_ref(KEY, "lead_crm", "leads", "a01") not in set(result.refs)
    assert len(result.refs) == len(DUE) - 1
    assert _ids(server) == sorted(set(DESIGN) - set(DUE) | {"a01"})


def test_a_change_that_decides_nothing_does_not_keep_a_record_a_new_subject_does(
    adapter: HttpAdapter, server: SaasServer
) -> None:
    """a01 gets a note (still due, same person): deleted. a10's e-mail becomes another
    person's: its holds were checked for the old one, so it is kept for the next run."""
    batch = next(adapter.batches(DueAt(AS_OF, RULES), DeleteAction(), _holds, size=10))
    noted = {**DESIGN["a01"][0], "notes": "called back"}
    moved = {**DESIGN["a10"][0], "email": "someone.else@x.se"}
    server.store.upsert("leads", [("a01", json.dumps(noted)), ("a10", json.dumps(moved))])
    result = adapter.apply(batch)
    assert result.counts == {"changed_meanwhile": 1}
    refs = set(result.refs)
    assert record_ref(KEY, "lead_crm", "leads", "a01") in refs
    assert record_ref(KEY, "lead_crm", "leads", "a10") not in refs
    assert _ids(server) == sorted(set(DESIGN) - set(DUE) | {"a10"})


def test_a_record_changed_between_its_read_and_its_delete_is_kept(
    adapter: HttpAdapter, server: SaasServer
) -> None:
    """The change lands after apply's fresh read: the API refuses the delete (If-Match)."""
    batch = next(adapter.batches(DueAt(AS_OF, RULES), DeleteAction(), _holds, size=10))
    read = adapter.client.get

    def read_then_renew(collection: str, record_id: str) -> Any:
        record = read(collection, record_id)
        if record_id == "a10":
            renewed = {**DESIGN["a10"][0], "received_at": RECENT}
            server.store.upsert("leads", [("a10", json.dumps(renewed))])
        return record

    adapter.client.get = read_then_renew  # type: ignore[method-assign]
    result = adapter.apply(batch)
    assert result.counts == {"changed_meanwhile": 1}
    assert record_ref(KEY, "lead_crm", "leads", "a10") not in set(result.refs)
    assert "a10" in _ids(server)
    assert len(result.refs) == len(DUE) - 1


def test_partitions_cover_every_record_once(adapter: HttpAdapter) -> None:
    whole = DueAt(AS_OF, RULES)
    parts = adapter.partitions(whole, 3)
    assert [p.index for p in parts] == [0, 1, 2, 3]
    assert (parts[0].lower, parts[-1].upper) == (None, None)
    counts = [adapter.count(p, DeleteAction(), _holds()) for p in parts]
    assert [c.total for c in counts] == [3, 3, 3, 3]
    assert (
        sum(c.selected for c in counts) == adapter.count(whole, DeleteAction(), _holds()).selected
    )
    read = [r["id"] for p in parts for r in adapter.read(p)]
    assert read == sorted([*DUE, "a08", "a09"])
    assert adapter.partitions(whole, 100) == [KeyRange(whole, None, None, 0)]


def test_a_subjects_records_are_read_and_deleted(adapter: HttpAdapter, server: SaasServer) -> None:
    mine = OfSubject({subject_ref(KEY, "a03@x.se")})
    assert [r["id"] for r in adapter.read(mine)] == ["a03"]
    assert next(adapter.read(mine))["received_at"] == RECENT
    for batch in adapter.batches(mine, DeleteAction(), ActiveHolds, size=10):
        adapter.apply(batch)
    assert "a03" not in _ids(server) and len(_ids(server)) == len(DESIGN) - 1


def test_resolve_refuses_what_the_api_cannot_do(adapter: HttpAdapter, server: SaasServer) -> None:
    adapter.resolve(DeleteAction())
    with pytest.raises(RetentionError, match="can only delete records"):
        adapter.resolve(_anonymise())
    wrong = BINDING.model_copy(update={"lookup": {"email": "e_mail"}})
    with pytest.raises(RetentionError, match=r"lookup field 'e_mail' \(email\).*'lookup'"):
        adapter_for(wrong, KEY, adapter.client).resolve()


def _anonymise() -> AnonymiseAction:
    return AnonymiseAction.model_validate(
        {"columns": {"email": {"strategy": "null"}}, "marker_column": "anonymised_at",
         "direct_identifiers": ["email"], "k_anonymity": 2}
    )  # fmt: skip
