"""Finding a person through the bindings' lookup columns: source values normalised by their
column's identifier kind, restrictions filed by phone or personnummer honoured by retention
runs (PostgreSQL, MariaDB, SQLite), requests told which systems they cannot search, and
activities run as a processor never touched."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest

from include.retention import dsr
from include.retention.catalogue import LookupColumn
from include.retention.erasure import subject_bindings
from include.retention.lifecycle import enforce
from include.retention.lookup import SubjectMatcher, reach
from include.retention.pseudonym import subject_ref
from include.retention.runs import Control
from include.retention.sources.base import OfSubject
from include.retention.sources.sql import SqlAdapter
from include.retention.texts import Localised
from tests.dbs import (  # noqa: F401 - fixtures
    AS_OF,
    Db,
    activity,
    control_fixture,
    create_db,
    ids,
    key_fixture,
    old,
    person,
    recent,
    seed,
    source_db_fixture,
)

NOW = dt.datetime(2026, 6, 15, 9, 0, tzinfo=dt.UTC)
ALL_KINDS = {"email": "email", "phone": "mobile", "personnummer": "personnummer"}
EMPLOYER = Localised(sv="den rekryterande arbetsgivaren", en="the recruiting employer")


def _people() -> list[dict]:
    """Five expired candidates; 2 and 4 are known by phone or personnummer only in
    another spelling than a request gives."""
    return [
        person(1, old()),
        person(2, old(), mobile="+46 (0)70-123 45 67"),  # filed as 070-123 45 67
        person(3, old(), mobile="not a number"),  # never matches anybody
        person(4, old(), personnummer="811218-9876"),  # filed as 19811218-9876
        person(5, old(), mobile="08-123 456 78"),
    ]


def test_source_values_are_normalised_by_their_column_kind(key) -> None:
    matcher = SubjectMatcher(key, [LookupColumn("email", "e"), LookupColumn("phone", "p"),
                                   LookupColumn("personnummer", "n")])  # fmt: skip
    rows = [
        (1, " Anna.Berg@Example.SE", "0046 70 123 45 67", "19811218-9876"),
        (2, "anna.berg@example.se", "+46701234567", "8112189876"),
        (3, "n/a", "070-123", "811218-9875"),  # none of them an identifier: no reference
        (4, None, None, None),
    ]
    expected = frozenset(
        subject_ref(key, v) for v in ("anna.berg@example.se", "+46701234567", "198112189876")
    )
    assert matcher.row_refs(rows, 1) == [expected, expected, frozenset(), frozenset()]
    phone = subject_ref(key, "+46701234567")
    assert matcher.record_refs({"p": "070-123 45 67", "e": 17}) == {phone}


def test_a_list_of_values_is_each_value_and_a_value_of_no_identifier_type_is_unreadable(
    key,
) -> None:
    matcher = SubjectMatcher(key, [LookupColumn("email", "e"), LookupColumn("phone", "p")])
    listed = {"e": [" Anna.Berg@Example.SE", "bo@x.se", None], "p": ("070-123 45 67",)}
    people = ("anna.berg@example.se", "bo@x.se", "+46701234567")
    assert matcher.record_refs(listed) == {subject_ref(key, value) for value in people}
    assert matcher.unreadable(listed) == []
    # no value, an empty list and text that is no identifier: nobody's, as before
    assert matcher.unreadable({"e": None, "p": []}) == matcher.unreadable({"e": "n/a"}) == []
    # a value no identifier has cannot be told to be nobody's
    assert matcher.unreadable({"e": {"work": "anna@x.se"}, "p": True}) == ["e", "p"]
    assert matcher.unreadable({"e": ["anna@x.se", ["bo@x.se"]], "p": 46701234567.0}) == ["e", "p"]


def _restrict(control: Control, act, source: Db | None = None, **form: str) -> dict:
    """File a restriction against ``act``; ``source``: the database its binding reads (the
    restriction searches it for the recipients to tell), else no source is searched."""
    runtime = dsr.DsrRuntime.of(control.holds.engine, control.key)
    params = {"action": "place", "ground": "legal_claims", **form}
    received = dsr.receive("restriction", params, user="dpo", dag_id="dsr_restriction",
                           run_id=f"manual__{len(form)}{sorted(form)}", runtime=runtime,
                           now=NOW)  # fmt: skip
    connections = {act.id: source.engine} if source else None
    return dsr.restrict(received, params, user="dpo", runtime=runtime, catalogue=[act],
                        connections=connections)  # fmt: skip


def test_a_restriction_filed_by_phone_or_personnummer_keeps_the_records_in_a_retention_run(
    source_db: Db, control: Control
) -> None:
    seed(source_db.engine, _people(), children=False)
    act = activity(children=False, lookup=ALL_KINDS)
    by_phone = _restrict(control, act, source_db, phone="070-123 45 67")
    by_pnr = _restrict(control, act, source_db, personnummer="19811218-9876")
    for placed in (by_phone, by_pnr):
        assert placed["systems_searched"] == {"ats": ["people"]}
        assert placed["systems_not_covered"] == {} and len(placed["holds_placed"]) == 1
    report = enforce(act, AS_OF, adapter=SqlAdapter(act.source, control.key, source_db.engine),
                     control=control, catalogue_version="v1", approved_by="t")  # fmt: skip
    assert report.outcome == "completed"
    assert (report.applied, report.restricted_skipped) == (3, 2)
    assert ids(source_db.engine) == {2, 4}
    # the evidence names the deleted records' people by every lookup column
    [deleted] = control.ledger.subject_batches(subject_ref(control.key, "+46812345678"))
    assert deleted.run_id == report.run_id


def test_a_restriction_by_phone_does_not_claim_a_system_without_a_phone_column(
    source_db: Db, control: Control
) -> None:
    seed(source_db.engine, _people(), children=False)
    act = activity(children=False)  # looked up by e-mail only
    placed = _restrict(control, act, phone="070-123 45 67")
    assert placed["systems_searched"] == {}
    assert placed["systems_not_covered"]["ats"]["give_one_of"] == ["email"]
    assert "e-mail address" in placed["systems_not_covered"]["ats"]["note"]
    report = enforce(act, AS_OF, adapter=SqlAdapter(act.source, control.key, source_db.engine),
                     control=control, catalogue_version="v1", approved_by="t")  # fmt: skip
    assert (report.applied, report.restricted_skipped) == (5, 0)  # honestly: not protected


def test_access_by_personnummer_searches_the_systems_holding_it_and_names_the_others(
    tmp_path, key, monkeypatch
) -> None:
    ats, drop_ats = create_db("sqlite", tmp_path)
    crm, drop_crm = create_db("sqlite", tmp_path)
    control, drop_control = create_db("sqlite", tmp_path)
    seed(ats.engine, _people(), children=False)
    seed(crm.engine, _people(), children=False)
    recruitment = activity(children=False, lookup=ALL_KINDS)
    contacts = activity(children=False, activity_id="crm")
    contacts = contacts.model_copy(
        update={"source": contacts.source.model_copy(update={"system": "crm"})}
    )
    booking = activity(children=False, activity_id="booking_system", lookup=ALL_KINDS)
    booking = booking.model_copy(update={
        "processor_for": EMPLOYER,
        "source": booking.source.model_copy(update={"system": "booking"}),
    })  # fmt: skip
    monkeypatch.setenv("RETENTION_DSR_OUTPUT_DIR", str(tmp_path / "out"))
    try:
        runtime = dsr.DsrRuntime.of(control.engine, key)
        received = dsr.receive("access", {"personnummer": "198112189876"}, user="u",
                               dag_id="dsr_access", run_id="r", runtime=runtime,
                               now=NOW)  # fmt: skip
        # no connection for crm and booking: reading them would fail the test
        result = dsr.access(received, runtime=runtime, catalogue=[recruitment, contacts, booking],
                            connections={"recruitment": ats.engine}, now=NOW)  # fmt: skip
    finally:
        drop_ats(), drop_crm(), drop_control()
    assert received["identifier_kinds"] == ["personnummer"]
    assert (result["records"], result["activities_with_records"]) == (1, ["recruitment"])
    assert result["systems_searched"] == {"ats": ["people"]}
    assert result["systems_not_covered"]["crm"]["give_one_of"] == ["email"]
    [refer] = result["refer_to_controller"]
    assert (refer["activity"], refer["controller_en"]) == ("booking_system", EMPLOYER.en)
    doc = json.loads((tmp_path / "out" / "DSR-1" / "registerutdrag.json").read_text("utf-8"))
    assert [r["id"] for r in doc["behandlingar"][0]["uppgifter"]] == [4]
    assert doc["ej genomsökta system"] == [
        "crm: kan inte sökas med de uppgifter du lämnat; ange e-postadress"
    ]
    assert doc["personuppgiftsbiträde"] == [
        f"booking: vi behandlar uppgifterna som personuppgiftsbiträde åt {EMPLOYER.sv};"
        f" kontakta {EMPLOYER.sv} för att utöva dina rättigheter"
    ]
    assert "9876" not in json.dumps(result)


def test_reach_of_the_real_catalogue_refers_the_processor_activity() -> None:
    from include.retention.catalogue import load_catalogue

    found = reach(load_catalogue(), ["personnummer"])
    assert sorted(found.searched) == ["access_control", "ats", "learning"]
    assert found.needed()["support_desk"] == ["email", "phone"]
    assert [r["activity"] for r in found.refer] == ["booking_system"]
    assert "booking" not in found.searched and "booking" not in found.not_searchable


def test_a_dataset_no_activity_declares_is_named_as_not_searched(tmp_path) -> None:
    from include.retention.access_extract import document
    from include.retention.catalogue import POLICY_DIR, load_catalogue

    folder = shutil.copytree(POLICY_DIR, tmp_path / "policies")
    crm = folder / "systems" / "crm.yaml"
    crm.write_text(
        crm.read_text("utf-8") + "  archive:\n    lookup:\n      email: email\n", "utf-8"
    )
    catalogue = load_catalogue(folder)
    assert "crm/archive" in catalogue.bindings  # bound, though no activity refers to it
    found = reach(catalogue, ["email"])
    assert found.undeclared == {"crm": ["archive"]}
    assert sorted(found.searched["crm"]) == ["contacts", "customer_admins", "prospects",
                                             "web_inquiries"]  # fmt: skip
    assert found.summary()["systems_without_activity"] == {
        "crm": {
            "datasets": ["archive"],
            "note": "bound in the catalogue, but no activity declares the purpose and legal"
            " basis of these records: not searched; declare their activity",
        }
    }
    extract = document("DSR-1", [], NOW, found)
    assert extract["ej genomsökta system"][-1] == (
        "crm: har inte genomsökts; uppgifterna ingår ännu inte i någon registrerad behandling"
    )
    # erasure acts on the activities: never on a dataset without a purpose and legal basis
    assert "archive" not in {a.source.dataset for a in subject_bindings(catalogue)}
    assert reach(load_catalogue(), ["email"]).undeclared == {}  # the product's: none


def test_a_subject_selection_takes_every_reference_of_the_person(
    source_db: Db, control: Control
) -> None:
    seed(source_db.engine, [*_people(), person(6, recent(), email="other@example.com",
                                                 personnummer="19811218-9876")],
         children=False)  # fmt: skip
    act = activity(children=False, lookup=ALL_KINDS)
    adapter = SqlAdapter(act.source, control.key, source_db.engine)
    person_refs = OfSubject({subject_ref(control.key, "person2@example.com"),
                             subject_ref(control.key, "198112189876")})  # fmt: skip
    assert sorted(r["id"] for r in adapter.read(person_refs)) == [2, 4, 6]


@pytest.mark.parametrize("value", ["+46 70 123 45 67", "0701234567", "070-123 45 67"])
def test_every_spelling_of_a_phone_number_has_one_reference(key, value) -> None:
    matcher = SubjectMatcher(key, [LookupColumn("phone", "p")])
    assert matcher.record_refs({"p": value}) == {subject_ref(key, "+46701234567")}


def test_a_request_received_before_the_kinds_were_passed_on_reads_them_from_the_register(
    tmp_path, key
) -> None:
    control, drop = create_db("sqlite", tmp_path)
    try:
        runtime = dsr.DsrRuntime.of(control.engine, key)
        received = dsr.receive("access", {"phone": "070-123 45 67", "email": "a@b.se"},
                               user="u", dag_id="dsr_access", run_id="r", runtime=runtime,
                               now=NOW)  # fmt: skip
        older = {k: v for k, v in received.items() if k != "identifier_kinds"}
        assert dsr.identifier_kinds(older, runtime) == ["email", "phone"]
    finally:
        drop()
