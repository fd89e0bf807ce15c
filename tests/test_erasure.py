"""Art. 17 erasure across bindings and its re-application after a restore, on real databases
(the control database and the sources: SQLite and PostgreSQL): what is erased, what is kept
and why, the ledger's evidence, Art. 19 recipients, idempotence, holds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pendulum
import pytest
import sqlalchemy as sa

from include.retention import dsr, erasure
from include.retention.catalogue import Activity, Catalogue, LegalBasis
from include.retention.errors import RetentionError
from include.retention.pseudonym import RecordRefHasher, subject_ref
from include.retention.run_record import read_run
from include.retention.sources.base import OfSubject, adapter_for
from include.retention.texts import Localised
from tests.dbs import activity, create_db, ids, key_fixture, old, person, recent, seed  # noqa: F401

NOW = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
TARGET = "person3@example.com"  # due (old decision), in both systems
PEOPLE = [person(i, old() if i % 2 else recent()) for i in range(1, 11)]
RECIPIENTS = [Localised(sv="rekryteringsbyrå", en="recruitment agency")]


def _binding(activity_id: str, system: str, **changes: Any) -> Activity:
    base = activity(activity_id=activity_id, children=False)
    source = base.source.model_copy(update={"system": system, "conn_id": f"{system}_db"})
    return base.model_copy(update={"source": source, **changes})


@pytest.fixture(name="world", params=["sqlite", "postgresql"])
def world_fixture(request: pytest.FixtureRequest, tmp_path: Path, key: bytes) -> Any:
    control_db, drop_control = create_db(request.param, tmp_path)
    ats, drop_ats = create_db(request.param, tmp_path)
    books, drop_books = create_db(request.param, tmp_path)
    try:
        seed(ats.engine, PEOPLE, children=False)
        seed(books.engine, PEOPLE, children=False)
        activities = [
            _binding("recruitment", "ats", recipients=RECIPIENTS),
            _binding("suppliers", "accounting",
                     legal_bases=[LegalBasis.contract, LegalBasis.legal_obligation]),
        ]  # fmt: skip
        catalogue = Catalogue(activities={a.id: a for a in activities}, version="test")
        runtime = dsr.DsrRuntime.of(control_db.engine, key)
        yield {
            "runtime": runtime, "catalogue": catalogue, "ats": ats.engine,
            "books": books.engine, "conns": {"recruitment": ats.engine, "suppliers": books.engine},
        }  # fmt: skip
    finally:
        drop_books()
        drop_ats()
        drop_control()


def _request(world: dict[str, Any], email: str = TARGET, run_id: str = "manual__1") -> Any:
    return dsr.receive(
        "erasure", {"email": email}, user="dpo.anna", dag_id="dsr_erasure", run_id=run_id,
        runtime=world["runtime"], now=NOW,
    )  # fmt: skip


def _erase(world: dict[str, Any], received: Any) -> dict[str, Any]:
    return dsr.erase(
        received, user="dpo.anna", runtime=world["runtime"], catalogue=world["catalogue"],
        connections=world["conns"],
    )  # fmt: skip


def test_erasure_removes_the_person_keeps_the_legal_obligation_and_says_why(
    world: dict[str, Any], key: bytes
) -> None:
    received = _request(world)
    result = _erase(world, received)
    everyone = {p["id"] for p in PEOPLE}
    assert ids(world["ats"]) == everyone - {3}  # erased although not due by retention
    assert ids(world["books"]) == everyone  # the bookkeeping obligation keeps it
    assert (result["erased"], result["found"], result["bindings_searched"]) == (1, 2, 2)
    [kept] = result["kept"]
    assert (kept["reason"], kept["records"], kept["activities"]) == (
        "legal_obligation", 1, ["suppliers"],
    )  # fmt: skip
    assert "17(3)(b)" in kept["en"] and "bokföringslagen" in kept["sv"]
    assert result["recipients_to_notify"] == [
        {"sv": "rekryteringsbyrå", "en": "recruitment agency"}
    ]

    # Evidence like retention: the run's header says erasure and names the request; the
    # batch names the record and the person by keyed references.
    control = world["runtime"].control
    [binding] = [b for b in result["bindings"] if b["activity"] == "recruitment"]
    [run_id] = binding["ledger_runs"]
    run = read_run(control.ledger, run_id)
    assert run.action == "erasure" and run.applied == 1
    assert run.verification is not None and run.verification["success"] is True
    assert run.header["origin"]["request"] == received["request"]
    assert run.header["approved_by"] == "dpo.anna"
    applied = control.ledger.applied_refs(run_id, "ats", "people")
    assert applied == [RecordRefHasher(key, "ats", "people").ref(3)]
    found = control.ledger.subject_batches(subject_ref(key, TARGET))
    assert [e.run_id for e in found] == [run_id]
    assert control.ledger.verify().ok
    assert TARGET not in str([e.document for e in control.ledger.entries()])


def test_a_second_erasure_finds_nothing_and_records_nothing_more(world: dict[str, Any]) -> None:
    _erase(world, _request(world))
    ledger = world["runtime"].control.ledger
    before = len(ledger.runs())
    again = _erase(world, _request(world, run_id="manual__2"))
    assert (again["erased"], again["recipients_to_notify"]) == (0, [])
    assert [k["reason"] for k in again["kept"]] == ["legal_obligation"]
    assert len(ledger.runs()) == before  # nothing found: no run


def test_holds_and_restrictions_keep_records_with_their_reason(world: dict[str, Any]) -> None:
    holds = world["runtime"].control.holds
    holds.place_subject_hold(TARGET, kind="restriction", reason="DSR-9", placed_by="dpo")
    result = _erase(world, _request(world))
    assert 3 in ids(world["ats"])
    assert {k["reason"]: k["records"] for k in result["kept"]} == {
        "legal_obligation": 1, "restriction": 1,
    }  # fmt: skip
    assert result["erased"] == 0 and result["recipients_to_notify"] == []
    holds.place_record_hold("ats", "people", 5, kind="legal_hold", reason="claim", placed_by="l")
    other = _erase(world, _request(world, "person5@example.com", run_id="manual__3"))
    assert 5 in ids(world["ats"]) and "legal_hold" in {k["reason"] for k in other["kept"]}


def test_a_processor_binding_is_untouched_and_refers_to_the_employer(
    world: dict[str, Any],
) -> None:
    employer = Localised(sv="Kundens arbetsgivare", en="the customer's employer")
    processed = world["catalogue"]["recruitment"].model_copy(update={"processor_for": employer})
    catalogue = Catalogue(activities={"recruitment": processed}, version="test")
    result = dsr.erase(
        _request(world), user="dpo.anna", runtime=world["runtime"], catalogue=catalogue,
        connections={},  # (never connected to: a processor's records are not searched)
    )  # fmt: skip
    assert 3 in ids(world["ats"])
    assert (result["erased"], result["found"], result["kept"]) == (0, 0, [])
    [referral] = result["refer_to_controller"]
    assert (referral["activity"], referral["controller_en"]) == ("recruitment", employer.en)


def test_erasure_keeps_what_another_activity_of_the_dataset_must_keep(
    world: dict[str, Any],
) -> None:
    # ats/people is bound by recruitment (legitimate interest) and by invoicing (a legal
    # obligation, e.g. the Bookkeeping Act): Art. 17(3)(b) keeps the record, whichever
    # activity reaches it, and the response names invoicing as keeping it.
    invoicing = _binding(
        "invoicing", "ats", legal_bases=[LegalBasis.contract, LegalBasis.legal_obligation]
    )
    catalogue = Catalogue(
        activities={"invoicing": invoicing, "recruitment": world["catalogue"]["recruitment"]},
        version="test",
    )
    connections = {"invoicing": world["ats"], "recruitment": world["ats"]}
    received = _request(world)
    result = dsr.erase(received, user="dpo.anna", runtime=world["runtime"], catalogue=catalogue,
                       connections=connections)  # fmt: skip
    assert 3 in ids(world["ats"])
    assert (result["erased"], result["recipients_to_notify"]) == (0, [])
    [kept] = result["kept"]
    assert (kept["reason"], kept["activities"]) == ("legal_obligation", ["invoicing"])
    bindings = {b["activity"]: b for b in result["bindings"]}
    assert bindings["recruitment"]["kept"] == {"legal_obligation": 1}
    assert bindings["recruitment"]["kept_for"] == "invoicing"
    assert world["runtime"].control.ledger.runs() == []  # no run: nothing erased anywhere
    # nor after a restore
    _complete(world, received)
    again = dsr.reapply("ats", user="ops", origin={}, runtime=world["runtime"],
                        catalogue=catalogue, connections=connections)  # fmt: skip
    assert 3 in ids(world["ats"]) and again["erased"] == 0


def _complete(world: dict[str, Any], received: Any) -> None:
    world["runtime"].requests.set_status(int(received["request_id"]), "completed", by="dpo")


def _restore(engine: sa.Engine, pks: list[int]) -> None:
    people = sa.Table("people", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(people.insert(), [p for p in PEOPLE if p["id"] in pks])


def test_reapply_after_a_restore_erases_again_and_is_idempotent(world: dict[str, Any]) -> None:
    received = _request(world)
    _erase(world, received)
    _complete(world, received)
    refused = _request(world, "person4@example.com", run_id="manual__4")  # not completed
    world["runtime"].requests.set_status(int(refused["request_id"]), "refused", by="dpo")
    _restore(world["ats"], [3])
    assert 3 in ids(world["ats"])

    def reapply() -> dict[str, Any]:
        return dsr.reapply(
            "ats", user="ops.olle", origin={"dag_id": "dsr_reapply"}, runtime=world["runtime"],
            catalogue=world["catalogue"], connections=world["conns"],
        )  # fmt: skip

    result = reapply()
    assert ids(world["ats"]) == {p["id"] for p in PEOPLE} - {3}  # 4 was refused: kept
    assert (result["erased"], result["erasures_recorded"], result["system"]) == (1, 1, "ats")
    [run_id] = result["bindings"][0]["ledger_runs"]
    run = read_run(world["runtime"].control.ledger, run_id)
    assert run.action == "erasure" and run.header["origin"]["reapply"] == "ats"
    assert reapply()["erased"] == 0
    for system in ("nowhere", None):
        with pytest.raises(RetentionError, match="choose one of accounting, ats"):
            dsr.reapply(system, user="o", origin={}, runtime=world["runtime"],
                        catalogue=world["catalogue"], connections=world["conns"])  # fmt: skip


def test_reapply_applies_the_suppression_list_as_the_nightly_runs_do(
    world: dict[str, Any], key: bytes
) -> None:
    consent = world["catalogue"]["recruitment"].model_copy(
        update={"legal_bases": [LegalBasis.consent]}
    )
    marketing = world["catalogue"]["suppliers"].model_copy(
        update={"legal_bases": [LegalBasis.legitimate_interest], "direct_marketing": True}
    )
    # (not validated: the catalogue would want a consent rule; only the bases matter here)
    activities = {"recruitment": consent, "suppliers": marketing}
    catalogue = Catalogue.model_construct(activities=activities, version="test")
    suppressions = world["runtime"].suppressions
    suppressions.add([subject_ref(key, "person6@example.com")], "consent", added_by="dpo")
    suppressions.add([subject_ref(key, "person7@example.com")], "direct_marketing", added_by="d")
    for system in ("ats", "accounting"):
        dsr.reapply(system, user="ops", origin={}, runtime=world["runtime"],
                    catalogue=catalogue, connections=world["conns"])  # fmt: skip
    everyone = {p["id"] for p in PEOPLE}
    # consent-based, not direct marketing: the withdrawal only (7 objected to direct
    # marketing and withdrew no consent given for this purpose)
    assert ids(world["ats"]) == everyone - {6}
    assert ids(world["books"]) == everyone - {7}  # direct marketing: the objection only


def test_reapply_removes_the_scopes_the_nightly_suppression_runs_remove() -> None:
    withdrew, objected, erased = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
    suppressed = {"consent": {withdrew}, "direct_marketing": {objected}}
    base = activity(activity_id="talent_pool", children=False)
    on = {
        "consent only": ([LegalBasis.consent], False, [withdrew]),
        "newsletter": ([LegalBasis.consent], True, [withdrew, objected]),
        "prospecting": ([LegalBasis.legitimate_interest], True, [objected]),
        "contract": ([LegalBasis.contract], False, []),
    }
    for name, (bases, marketing, expected) in on.items():
        bound = base.model_copy(update={"legal_bases": bases, "direct_marketing": marketing})
        assert erasure.reapply_refs(bound, [], suppressed) == expected, name
        assert erasure.reapply_refs(bound, [erased], suppressed) == sorted([erased, *expected])


def test_reapply_keeps_suppressed_people_another_activity_of_the_dataset_needs(
    world: dict[str, Any], key: bytes
) -> None:
    # As the nightly suppression runs: a withdrawn consent ends the consent-based activity,
    # not a contract another activity binding the same table performs.
    talent_pool = world["catalogue"]["recruitment"].model_copy(
        update={"legal_bases": [LegalBasis.consent]}
    )
    customers = _binding("customers", "ats", legal_bases=[LegalBasis.contract])
    catalogue = Catalogue.model_construct(
        activities={"recruitment": talent_pool, "customers": customers}, version="test"
    )
    world["runtime"].suppressions.add([subject_ref(key, "person6@example.com")], "consent",
                                      added_by="dpo")  # fmt: skip
    result = dsr.reapply("ats", user="ops", origin={}, runtime=world["runtime"],
                         catalogue=catalogue, connections={"recruitment": world["ats"],
                                                           "customers": world["ats"]})  # fmt: skip
    assert ids(world["ats"]) == {p["id"] for p in PEOPLE} and result["erased"] == 0


def test_a_restriction_lists_the_recipients_of_the_activities_holding_the_person(
    world: dict[str, Any],
) -> None:
    form = {"email": TARGET, "action": "place", "ground": "accuracy_contested"}
    received = dsr.receive(
        "restriction", form, user="dpo", dag_id="dsr_restriction", run_id="r1",
        runtime=world["runtime"], now=NOW,
    )  # fmt: skip
    placed = dsr.restrict(
        received, form, user="dpo", runtime=world["runtime"], catalogue=world["catalogue"],
        connections=world["conns"],
    )  # fmt: skip
    assert len(placed["holds_placed"]) == 1
    assert placed["recipients_to_notify"] == [
        {"sv": "rekryteringsbyrå", "en": "recruitment agency"}
    ]
    nobody = {"email": "nobody@example.com", "action": "place", "ground": "legal_claims"}
    other = dsr.receive("restriction", nobody, user="dpo", dag_id="dsr_restriction",
                        run_id="r2", runtime=world["runtime"], now=NOW)  # fmt: skip
    assert dsr.restrict(other, nobody, user="dpo", runtime=world["runtime"],
                        catalogue=world["catalogue"], connections=world["conns"]
                        )["recipients_to_notify"] == []  # fmt: skip


def test_verification_fails_when_an_erased_record_is_back(
    world: dict[str, Any], key: bytes
) -> None:
    result = _erase(world, _request(world))
    [run_id] = next(b for b in result["bindings"] if b["erased"])["ledger_runs"]
    _restore(world["ats"], [3])  # e.g. a sync wrote it back behind the erasure's back
    recruitment = world["catalogue"]["recruitment"]
    control = world["runtime"].control
    adapter = adapter_for(recruitment.source, key, world["ats"])
    selection = OfSubject(frozenset([subject_ref(key, TARGET)]))
    with pytest.raises(RetentionError, match=r"1 record\(s\) the evidence claims are not erased"):
        erasure.verify(recruitment, adapter, selection, control, run_id)
    verified = read_run(control.ledger, run_id).verification
    assert verified is not None and verified["success"] is False


def test_the_audit_report_counts_an_erasure_as_a_verified_run_not_as_the_state(
    world: dict[str, Any],
) -> None:
    from include.retention.audit_report import build_report
    from include.retention.lifecycle import enforce
    from tests.dbs import AS_OF

    control = world["runtime"].control
    recruitment = world["catalogue"]["recruitment"]
    enforce(recruitment, AS_OF, control=control, catalogue_version="test", source=world["ats"])
    _erase(world, _request(world, "person2@example.com"))  # not due: erased on request
    today = pendulum.now("Europe/Stockholm").date()
    report = build_report(control.ledger, today - dt.timedelta(days=1), today, "en",
                          catalogue=world["catalogue"])  # fmt: skip
    line = next(x for x in report.lines if x.activity_id == "recruitment")
    assert [r.action for r in line.runs] == ["delete", "erasure"]
    assert line.last is not None and line.last.action == "delete"
    assert line.exceptions()["not_verified"] == 1  # the retention run here was not verified
