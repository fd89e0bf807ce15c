"""Rectification (Art. 16) through the source adapters, on real PostgreSQL, MariaDB and SQLite
sources and the demo's real SaaS API: the person's records get the corrected fields, nobody
else's; held and restricted records stay as they are; a field name or value that does not fit
changes nothing anywhere and the error names the field, never the value; the ledger records
the fields and counts, never the values."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import urllib3

from include.demo.saas_server import SaasServer
from include.retention import dsr, rectification
from include.retention.catalogue import Activity, Catalogue, HttpSource, S3Source
from include.retention.errors import RetentionError
from include.retention.holds import ActiveHolds
from include.retention.pseudonym import record_ref, subject_ref
from include.retention.sources.base import NotUpdatable, OfSubject, adapter_for
from include.retention.sources.http import ApiClient, ApiSettings
from tests.dbs import (  # noqa: F401
    activity,
    create_db,
    key_fixture,
    old,
    person,
    recent,
    seed,
    source_db_fixture,
)
from tests.s3 import new_bucket, put, s3_fixture, s3_server_fixture  # noqa: F401

NOW = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
ANNA = "person1@example.com"
NEW_CITY = "Lund-" + secrets.token_hex(4)  # a value no code could produce by itself


def _people(engine: sa.Engine) -> dict[int, dict[str, Any]]:
    table = sa.Table("people", sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return {row.id: dict(row._mapping) for row in conn.execute(sa.select(table))}


def _setup(source_db, tmp_path: Path, key: bytes) -> tuple[dsr.DsrRuntime, Any]:
    seed(source_db.engine, [
        person(1, old(), city="Malmö", age=40), person(2, recent(), city="Umeå", age=30),
        person(3, recent(), email=" PERSON1@example.com", city="Malmö", age=40),
    ], children=False)  # fmt: skip
    control = sa.create_engine(f"sqlite:///{tmp_path / 'control.db'}")
    catalogue = Catalogue(activities={"recruitment": activity(children=False)}, version="t")
    runtime = dsr.DsrRuntime.of(control, key, catalogue=catalogue)
    return runtime, catalogue


def _rectify(runtime, catalogue, source_db, fields: dict[str, Any]) -> tuple[dict, dict]:
    params = {"email": ANNA, "corrections": fields}
    received = dsr.receive(
        "rectification", params, user="u", dag_id="dsr_rectification",
        run_id=secrets.token_hex(4), runtime=runtime, now=NOW,
    )  # fmt: skip
    result = dsr.rectify(
        received, params, runtime=runtime, catalogue=list(catalogue),
        connections={"recruitment": source_db.engine},
    )  # fmt: skip
    return received, result


def _ledger_text(runtime: dsr.DsrRuntime) -> str:
    entries = runtime.requests._ledger.entries()
    return " ".join(json.dumps(e.document, default=str) for e in entries)


def test_the_persons_records_get_the_corrected_fields(source_db, tmp_path, key) -> None:
    runtime, catalogue = _setup(source_db, tmp_path, key)
    before = _people(source_db.engine)
    received, result = _rectify(runtime, catalogue, source_db, {"city": NEW_CITY, "age": "41"})

    after = _people(source_db.engine)
    assert {pid: (r["city"], r["age"]) for pid, r in after.items()} == {
        1: (NEW_CITY, 41), 2: ("Umeå", 30), 3: (NEW_CITY, 41),
    }  # fmt: skip
    assert (
        after[1]["email"] == before[1]["email"]
        and after[3]["decided_at"] == before[3]["decided_at"]
    )
    assert result["changed"] == [{
        "system": "ats", "dataset": "people", "activities": ["recruitment"],
        "fields": ["age", "city"], "records": 2,
    }]  # fmt: skip
    assert result["kept"] == [] and result["not_rectifiable"] == []
    assert result["systems_searched"] == {"ats": ["people"]}
    assert result["systems_not_covered"] == {} and result["refer_to_controller"] == []
    assert received["options"] == {"fields": ["age", "city"]}
    (event,) = [e for e in runtime.requests.events(received["request_id"])
                if e.kind == "dsr_rectified"]  # fmt: skip
    body = event.document["body"]
    assert (body["system"], body["dataset"], body["fields"], body["records"]) == (
        "ats", "people", ["age", "city"], 2,
    )  # fmt: skip
    assert body["record_refs"] == sorted(
        record_ref(key, "ats", "people", pk).hex() for pk in (1, 3)
    )
    assert (body["held_skipped"], body["restricted_skipped"]) == (0, 0)
    ledger = runtime.control.ledger  # the write-ahead evidence of the change: a ledger run
    (run,) = ledger.runs("dsr_rectification")
    assert body["run_id"] == run.run_id and run.finished["outcome"] == "completed"
    assert run.header["origin"]["request"] == received["request"]
    (prepared,) = [e for e in ledger.entries() if e.kind == "batch_prepared"]
    assert prepared.document["body"]["action"] == "rectify"
    assert prepared.document["body"]["fields"] == ["age", "city"]
    assert sorted(ledger.applied_refs(run.run_id, "ats", "people")) == sorted(
        record_ref(key, "ats", "people", pk) for pk in (1, 3)
    )
    assert ledger.pending_batches() == [] and ledger.verify().ok
    everything = json.dumps([received, result]) + _ledger_text(runtime)
    assert NEW_CITY not in everything and ANNA not in everything.lower()


def test_restricted_and_held_records_are_left_as_they_are(source_db, tmp_path, key) -> None:
    runtime, catalogue = _setup(source_db, tmp_path, key)
    runtime.holds.place_record_hold(
        "ats", "people", 3, kind="legal_hold", reason="dispute", placed_by="legal"
    )
    _, result = _rectify(runtime, catalogue, source_db, {"city": NEW_CITY})
    assert [r["city"] for _, r in sorted(_people(source_db.engine).items())] == [
        NEW_CITY, "Umeå", "Malmö",
    ]  # fmt: skip
    assert result["kept"] == [{"system": "ats", "dataset": "people", "records": 1,
                               "reason": "under a legal hold: kept as it is"}]  # fmt: skip

    runtime.holds.place_subject_hold(ANNA, kind="restriction", reason="r", placed_by="dpo")
    _, again = _rectify(runtime, catalogue, source_db, {"city": "Ystad"})
    assert [r["city"] for _, r in sorted(_people(source_db.engine).items())] == [
        NEW_CITY, "Umeå", "Malmö",
    ]  # fmt: skip
    assert again["changed"] == []
    kept = {k["reason"]: k["records"] for k in again["kept"]}
    assert kept == {
        "under a legal hold: kept as it is": 1,  # record 3: the legal hold wins
        "restricted (Art. 18): lift the restriction and tell the person, then file the"
        " rectification again": 1,
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nickname": "x"}, "'nickname' is not a field of any system"),
        ({"age": "forty"}, "field 'age' takes a whole number"),
        ({"city": "x" * 101}, "field 'city' takes text of at most 100 characters"),
        (
            {"email": "not-an-address"},
            "field 'email' holds the person's email, by which requests,"
            " holds and the suppression list find them: the new value must be a valid email",
        ),
        ({"email": None}, "the new value must be a valid email"),
        ({"id": 9}, "field 'id' keys the record or names its person"),
        ({"decided_at": "2020-01-01T10:00:00"}, "decided_at decide when its records are deleted"),
        ({"status": "hired"}, "status decide when its records are deleted"),
        ({"city": NEW_CITY, "age": True}, "field 'age' takes a whole number"),
    ],
)
def test_a_field_or_value_that_does_not_fit_changes_nothing(
    source_db, tmp_path, key, fields, message
) -> None:
    runtime, catalogue = _setup(source_db, tmp_path, key)
    before = _people(source_db.engine)
    with pytest.raises(RetentionError, match=message) as refused:
        _rectify(runtime, catalogue, source_db, fields)
    assert "nothing was changed" in str(refused.value)
    assert _people(source_db.engine) == before
    assert "dsr_rectified" not in _ledger_text(runtime)
    assert all(str(v) not in str(refused.value) for v in fields.values() if len(str(v)) > 4)


@pytest.mark.parametrize(
    "fields",
    [None, {}, {"bad name": "x"}, {"city": {"nested": 1}}, {"city": "x" * 2001},
     {f"f{i}": 1 for i in range(21)}],
)  # fmt: skip
def test_a_malformed_form_is_refused_before_anything_is_registered(tmp_path, key, fields) -> None:
    runtime = dsr.DsrRuntime.of(sa.create_engine(f"sqlite:///{tmp_path / 'c.db'}"), key)
    with pytest.raises(RetentionError, match="corrections"):
        dsr.receive("rectification", {"email": ANNA, "corrections": fields}, user="u",
                    dag_id="d", run_id="r", runtime=runtime, now=NOW)  # fmt: skip
    assert runtime.requests.requests() == []


# ------------------------------------------------------------------------------ API and bucket

TOKEN = secrets.token_urlsafe(24)


def test_an_api_source_is_rectified_through_patch(tmp_path, key) -> None:
    with SaasServer(tmp_path / "saas.db", TOKEN) as server:
        server.store.upsert("leads", [
            ("l1", json.dumps({"email": "anna@x.se", "name": "Ana", "score": 3})),
            ("l2", json.dumps({"email": "bo@x.se", "name": "Bo", "score": 4})),
            ("l3", json.dumps({"email": "ANNA@x.se ", "name": "Ana", "score": 3})),
        ])  # fmt: skip
        client = ApiClient(ApiSettings(server.base_url, TOKEN), "saas")
        binding = HttpSource(system="crm_saas", conn_id="saas", collection="leads",
                             lookup={"email": "email"})  # fmt: skip
        adapter = adapter_for(binding, key, client)
        with pytest.raises(RetentionError, match="field 'score' takes a number"):
            adapter.fields_to_update({"score": "high"})
        with pytest.raises(RetentionError, match="'email' holds the person's email, by which"):
            adapter.fields_to_update({"email": "new at x.se"})
        assert adapter.fields_to_update({"email": " New@X.se"}) == {"email": " New@X.se"}
        assert adapter.fields_to_update({"name": "Anna", "nope": 1}) == {"name": "Anna"}
        anna = subject_ref(key, "anna@x.se")
        restricted = ActiveHolds(records={record_ref(key, "crm_saas", "leads", "l3"):
                                          frozenset({"restriction"})})  # fmt: skip
        seen_when_prepared: list[tuple[list[bytes], dict[str, str]]] = []

        def prepare(staged) -> None:  # the evidence is written before the first PATCH
            names = {r.id: r.fields["name"] for r in client.records("leads")}
            seen_when_prepared.append((list(staged.refs), names))

        updated = adapter.update(
            OfSubject(frozenset({anna})), {"name": "Anna"}, lambda: restricted, prepare
        )
        names = {r.id: r.fields["name"] for r in client.records("leads")}
        refs = {pk: record_ref(key, "crm_saas", "leads", pk) for pk in ("l1", "l2", "l3")}
        holding = adapter.holding(set(refs.values()), {"name": "Anna"})
        holding_old = adapter.holding(set(refs.values()), {"name": "Ana"})
    assert names == {"l1": "Anna", "l2": "Bo", "l3": "Ana"}
    assert list(updated.refs) == [refs["l1"]]
    assert updated.skipped == {"restriction": 1}
    assert seen_when_prepared == [([refs["l1"]], {"l1": "Ana", "l2": "Bo", "l3": "Ana"})]
    assert (holding, holding_old) == ({refs["l1"]}, {refs["l3"]})


def test_an_api_record_changed_during_the_rectification_is_left_as_it_is(tmp_path, key) -> None:
    """The API cannot lock: l2 passes to another person after the listing (its holds were
    checked for Anna), and l1 is edited between the fresh read and the PATCH (If-Match). Both
    are left as they are now, counted changed_meanwhile; l3, still Anna's, is rectified."""
    with SaasServer(tmp_path / "saas.db", TOKEN) as server:
        server.store.upsert("leads", [
            (pk, json.dumps({"email": "anna@x.se", "name": "Ana"})) for pk in ("l1", "l2", "l3")
        ])  # fmt: skip
        client = ApiClient(ApiSettings(server.base_url, TOKEN), "saas")
        binding = HttpSource(system="crm_saas", conn_id="saas", collection="leads",
                             lookup={"email": "email"})  # fmt: skip
        adapter = adapter_for(binding, key, client)
        read = client.get

        def holds() -> ActiveHolds:  # read once the records are listed
            server.store.upsert("leads", [("l2", json.dumps({"email": "bo@x.se", "name": "Bo"}))])
            return ActiveHolds()

        def read_then_edit(collection: str, record_id: str) -> Any:
            record = read(collection, record_id)
            if record_id == "l1":
                edited = {"email": "anna@x.se", "name": "Ana", "note": "called"}
                server.store.upsert("leads", [("l1", json.dumps(edited))])
            return record

        client.get = read_then_edit  # type: ignore[method-assign]
        anna = subject_ref(key, "anna@x.se")
        updated = adapter.update(
            OfSubject(frozenset({anna})), {"name": "Anna"}, holds, lambda staged: None
        )
        client.get = read  # type: ignore[method-assign]
        now = {r.id: r.fields for r in client.records("leads")}
    assert list(updated.refs) == [record_ref(key, "crm_saas", "leads", "l3")]
    assert updated.skipped == {"changed_meanwhile": 2}
    assert now == {
        "l1": {"email": "anna@x.se", "name": "Ana", "note": "called"},
        "l2": {"email": "bo@x.se", "name": "Bo"},
        "l3": {"email": "anna@x.se", "name": "Anna"},
    }


def test_an_api_record_whose_identifier_cannot_be_read_is_left_and_the_answer_says_why(
    tmp_path, key
) -> None:
    """l1 is Anna's (the list's first address), but another item of its e-mail field is an
    object: whose else it is, and so its holds, cannot be told. It is left as it is."""
    listed = {"email": ["anna@x.se", {"work": "bo@x.se"}], "name": "Ana"}
    with SaasServer(tmp_path / "saas.db", TOKEN) as server:
        server.store.upsert("leads", [
            ("l1", json.dumps(listed)), ("l2", json.dumps({"email": ["anna@x.se"], "name": "Ana"})),
        ])  # fmt: skip
        client = ApiClient(ApiSettings(server.base_url, TOKEN), "saas")
        binding = HttpSource(system="crm_saas", conn_id="saas", collection="leads",
                             lookup={"email": "email"})  # fmt: skip
        adapter = adapter_for(binding, key, client)
        anna = subject_ref(key, "anna@x.se")
        updated = adapter.update(
            OfSubject(frozenset({anna})), {"name": "Anna"}, ActiveHolds, lambda staged: None
        )
        now = {r.id: r.fields for r in client.records("leads")}
    assert list(updated.refs) == [record_ref(key, "crm_saas", "leads", "l2")]
    assert updated.skipped == {"subject_unknown": 1}
    assert now == {"l1": listed, "l2": {"email": ["anna@x.se"], "name": "Anna"}}
    assert "cannot be read as an identifier" in rectification.KEPT_REASONS["subject_unknown"]


def _losing_the_first_patch_answer(client: ApiClient, meanwhile: Callable[[], None]) -> None:
    """The first PATCH reaches the API and is applied, but its answer is lost (the connection
    drops); ``meanwhile`` runs before the client retries it with the same If-Match."""
    send = client._pool.request

    def request(method: str, url: str, **kwargs: Any) -> Any:
        response = send(method, url, **kwargs)
        if method == "PATCH" and not lost:
            lost.append(url)
            meanwhile()
            raise urllib3.exceptions.ProtocolError("Connection aborted")
        return response

    lost: list[str] = []
    client._pool.request = request  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("corrected", "edited_meanwhile"),
    [({"name": "Anna"}, None), ({"email": "anna.new@x.se"}, None), ({"name": "Anna"}, "Annie")],
)
def test_a_patch_whose_answer_was_lost_is_judged_by_the_record_as_it_is_now(
    tmp_path, key, corrected: dict[str, str], edited_meanwhile: str | None
) -> None:
    """The retried PATCH is refused (412: our own first attempt moved the ETag). The record
    read again holds the corrected values (a corrected e-mail: for the person it now names):
    rectified, as crash recovery judges it. Had someone else set the name since, it is
    changed_meanwhile."""
    first = {"email": "anna@x.se", "name": "Ana"}
    with SaasServer(tmp_path / "saas.db", TOKEN) as server:
        server.store.upsert("leads", [("l1", json.dumps(first))])
        client = ApiClient(ApiSettings(server.base_url, TOKEN, backoff=0.01), "saas")
        binding = HttpSource(system="crm_saas", conn_id="saas", collection="leads",
                             lookup={"email": "email"})  # fmt: skip
        adapter = adapter_for(binding, key, client)

        def edit() -> None:
            if edited_meanwhile:
                edited = first | {"name": edited_meanwhile}
                server.store.upsert("leads", [("l1", json.dumps(edited))])

        _losing_the_first_patch_answer(client, edit)
        anna = subject_ref(key, "anna@x.se")
        updated = adapter.update(
            OfSubject(frozenset({anna})), corrected, ActiveHolds, lambda staged: None
        )
        now = json.loads(server.store.get("leads", "l1") or "{}")
        ref = record_ref(key, "crm_saas", "leads", "l1")
        holding = adapter.holding({ref}, corrected)
    if edited_meanwhile:
        assert now == first | {"name": edited_meanwhile}
        assert (list(updated.refs), updated.skipped) == ([], {"changed_meanwhile": 1})
        assert holding == set()
    else:
        assert now == first | corrected
        assert (list(updated.refs), updated.skipped) == ([ref], {})
        assert holding == {ref}  # crash recovery judges it the same


def test_a_bucket_cannot_be_rectified_and_the_answer_says_so(tmp_path, key, s3) -> None:
    bucket = new_bucket(s3, "rect")
    put(s3, bucket, "img/1.jpg", subject=ANNA)
    binding = S3Source(
        system="image_bank", conn_id="s3", bucket=bucket, lookup={"email": "subject"}
    )
    adapter = adapter_for(binding, key, s3)
    with pytest.raises(NotUpdatable, match="cannot be changed without rewriting"):
        adapter.fields_to_update({"subject": "x"})
    source, drop = create_db("sqlite", tmp_path)
    try:
        runtime, catalogue = _setup(source, tmp_path, key)
        images = Activity.model_validate(
            activity().model_dump(mode="json", exclude_none=True)
            | {"id": "image_bank", "source": binding.model_dump(mode="json")}
            | {"retention": [{"rule": {"kind": "indefinite",
                                       "reason": {"sv": "bilder", "en": "images"}}}],
               "action": {"kind": "report_only"}}
        )  # fmt: skip
        params = {"email": ANNA, "corrections": {"city": NEW_CITY}}
        received = dsr.receive("rectification", params, user="u", dag_id="d", run_id="r",
                               runtime=runtime, now=NOW)  # fmt: skip
        result = dsr.rectify(
            received, params, runtime=runtime, catalogue=[*catalogue, images],
            connections={"recruitment": source.engine, "image_bank": s3},
        )  # fmt: skip
        cities = [r["city"] for _, r in sorted(_people(source.engine).items())]
    finally:
        drop()
    assert cities == [NEW_CITY, "Umeå", NEW_CITY]
    assert [c["records"] for c in result["changed"]] == [2]
    (cannot,) = result["not_rectifiable"]
    assert (cannot["system"], cannot["dataset"]) == ("image_bank", bucket)
    assert "rectify it in the system itself" in cannot["reason"]
