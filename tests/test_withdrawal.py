"""A consent withdrawal or an objection takes effect at once: the request's ``suppress`` step
removes the person's records from every activity the suppression reaches, through the run
lifecycle, on real databases (the control database and one source per system: SQLite and
PostgreSQL). Other activities are untouched, held and restricted records are kept with the
reason, the ledger runs name the suppression and the request, the result holds no personal
data, and a failure in one activity fails the step without hiding the others."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.retention import dsr, operations
from include.retention.catalogue import Activity, Catalogue
from include.retention.errors import PartlyDone, PartlyUnavailable
from include.retention.holds import HoldRegister
from include.retention.pseudonym import record_ref, subject_ref
from include.retention.run_record import read_run
from tests.dbs import activity, create_db, ids, key_fixture, person, recent, seed  # noqa: F401

ANNA, BO, CARL = "anna.berg@example.se", "bo.ek@example.se", "carl.lund@example.se"
EMAILS = {1: ANNA, 2: " Anna.Berg@Example.SE", 5: BO, 7: CARL}  # ANNA twice: two spellings
EVERYONE = set(range(1, 21))
SUPPRESSED_RULE = (
    "suppression list: consent withdrawn (Art. 7(3)) or objection to direct marketing (Art. 21(3))"
)
OBJECTION_RULE = "suppression list: objection to direct marketing (Art. 21(3))"
WITHDRAWN_RULE = "suppression list: consent withdrawn (Art. 7(3))"
EMPLOYER = {"sv": "arbetsgivaren", "en": "the employer"}
# activity id -> (system, legal bases, direct marketing, other changes)
ACTIVITIES: dict[str, tuple[str, list[str], bool, dict[str, Any]]] = {
    "newsletter": ("news", ["consent"], True, {}),
    "webinars": ("learning", ["legitimate_interest", "consent"], False, {}),
    "prospecting": ("crm", ["legitimate_interest"], True, {}),
    "suppliers": ("books", ["contract", "legal_obligation"], False, {}),
    "recruitment": ("ats", ["legitimate_interest"], False, {}),
    "callbacks": ("phones", ["consent"], False, {"lookup": {"phone": "mobile"}}),
    "bookings": ("booking", ["consent"], False, {"processor_for": EMPLOYER}),
}


def _activity(activity_id: str, **changes: Any) -> Activity:
    system, bases, direct_marketing, extra = ACTIVITIES[activity_id]
    raw = activity(activity_id=activity_id, children=False).model_dump(
        mode="json", exclude_none=True
    )
    raw |= {"legal_bases": bases, "direct_marketing": direct_marketing}
    raw["source"] |= {"system": system, "conn_id": f"{system}_db"}
    if "lookup" in extra:
        raw["source"]["lookup"] = extra["lookup"]
    if "processor_for" in extra:
        raw["processor_for"] = extra["processor_for"]
    if "consent" in bases:
        raw["retention"].append({"rule": {"kind": "consent"}, "anchor_column": "withdrawn_on"})
    for name, value in changes.items():
        (raw["source"] if name in ("table", "system") else raw)[name] = value
    return Activity.model_validate(raw)


@pytest.fixture(name="world", params=["sqlite", "postgresql"])
def world_fixture(request: pytest.FixtureRequest, tmp_path: Path, key: bytes) -> Iterator[Any]:
    control_db, drop_control = create_db(request.param, tmp_path)
    drops, engines = [drop_control], {}
    try:
        for activity_id in ACTIVITIES:
            db, drop = create_db(request.param, tmp_path)
            drops.append(drop)
            engines[activity_id] = db.engine
            seed(db.engine, [person(i, recent(), email=EMAILS.get(i, f"p{i}@example.se"),
                                    mobile="070-123 45 67" if i == 1 else None)
                             for i in EVERYONE], children=False)  # fmt: skip
        yield World(dsr.DsrRuntime.of(control_db.engine, key), engines, key)
    finally:
        for drop in reversed(drops):
            drop()


class World:
    """The control database, one source per activity, and the catalogue in force."""

    def __init__(self, runtime: dsr.DsrRuntime, engines: dict[str, sa.Engine], key: bytes):
        self.runtime, self.engines, self.key = runtime, engines, key
        self.catalogue = Catalogue(activities={a: _activity(a) for a in ACTIVITIES}, version="test")
        self.holds = HoldRegister(runtime.control.ledger.engine, key, self.catalogue)
        self.requests = 0

    def request(self, kind: str, email: str, **options: Any) -> dict[str, Any]:
        self.requests += 1
        return dsr.receive(
            kind, {"email": email, **options}, user="dpo.anna", dag_id=f"dsr_{kind}",
            run_id=f"manual__{self.requests}", runtime=self.runtime,
        )  # fmt: skip

    def suppress(self, kind: str, received: dict[str, Any]) -> dict[str, Any]:
        return dsr.suppress(
            kind, received, user="dpo.anna", runtime=self.runtime, catalogue=self.catalogue,
            connections=self.engines,
        )  # fmt: skip

    def withdraw(self, email: str) -> tuple[dict[str, Any], dict[str, Any]]:
        received = self.request("consent_withdrawal", email)
        return received, self.suppress("consent_withdrawal", received)

    def left(self) -> dict[str, set[int]]:
        """activity -> the people (ids) not in its source any more."""
        return {a: EVERYONE - ids(engine) for a, engine in self.engines.items()}

    def runs(self) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        for run in self.runtime.control.ledger.runs():
            found.setdefault(run.activity_id, []).append(run)
        return found


def _by_activity(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["activity"]: a for a in result["activities"]}


def test_a_withdrawal_removes_the_person_from_consent_based_activities_at_once(
    world: World, key: bytes
) -> None:
    received, result = world.withdraw(ANNA)

    assert world.left() == {
        "newsletter": {1, 2}, "webinars": {1, 2}, "prospecting": set(), "suppliers": set(),
        "recruitment": set(), "callbacks": set(), "bookings": set(),
    }  # fmt: skip
    assert (result["suppression_scope"], result["suppressed"]) == ("consent", 1)
    assert result["removed"] == 4 and result["removed_from"] == ["newsletter", "webinars"]
    assert (result["kept"], result["nothing_found_in"], result["failed_in"]) == ([], [], [])
    # The answering line is searched by phone: not claimed as searched, and what it needs.
    assert result["not_searched"] == [{"activity": "callbacks", "give_one_of": ["phone"]}]
    per_activity = _by_activity(result)
    assert sorted(per_activity) == ["newsletter", "webinars"]
    runs = world.runs()
    assert sorted(runs) == ["newsletter", "webinars"]  # nothing recorded anywhere else
    # The newsletter (consent, direct marketing) removes both; webinars (consent) withdrawals.
    rules = {"newsletter": SUPPRESSED_RULE, "webinars": WITHDRAWN_RULE}
    for activity_id, system in (("newsletter", "news"), ("webinars", "learning")):
        done = per_activity[activity_id]
        assert (done["outcome"], done["found"], done["removed"], done["kept"]) == (
            "completed", 2, 2, {},
        )  # fmt: skip
        (run,) = runs[activity_id]
        assert run.run_id == done["ledger_run_id"]
        assert run.header["rules"] == [rules[activity_id]]
        assert run.header["origin"] == {
            "dag_id": "dsr_consent_withdrawal", "run_id": "manual__1", "request": "DSR-1",
            "triggered_by": "dpo.anna", "reason": "suppression",
        }  # fmt: skip
        applied = world.runtime.control.ledger.applied_refs(run.run_id, system, "people")
        assert set(applied) == {record_ref(key, system, "people", pk) for pk in (1, 2)}
        verified = read_run(world.runtime.control.ledger, run.run_id).verification
        assert verified is not None and verified["success"] is True
    found = world.runtime.control.ledger.subject_batches(subject_ref(key, ANNA))
    assert sorted(e.activity_id for e in found) == ["newsletter", "webinars"]

    # The result is an XCom and the response: JSON, counts and ids, no identifier.
    text = json.dumps(result)
    assert "anna" not in text.lower() and subject_ref(key, ANNA).hex() not in text
    assert received["request"] == "DSR-1"


def test_a_second_withdrawal_finds_nothing_more_and_the_list_still_holds(world: World) -> None:
    world.withdraw(ANNA)
    _, again = world.withdraw(ANNA)
    assert (again["suppressed"], again["already_suppressed"]) == (0, 1)
    assert again["removed"] == 0 and again["removed_from"] == []
    assert again["nothing_found_in"] == ["newsletter", "webinars"]
    assert {a["outcome"] for a in again["activities"]} == {"nothing_to_do"}
    assert world.left()["newsletter"] == {1, 2}


def test_only_this_persons_records_go_others_on_the_list_wait_for_the_nightly_run(
    world: World, key: bytes
) -> None:
    world.runtime.suppressions.add([subject_ref(key, CARL)], "consent", added_by="crm")
    _, result = world.withdraw(ANNA)
    assert world.left()["newsletter"] == {1, 2}  # CARL (7), re-imported, stays till tonight
    assert result["removed"] == 4
    (run,) = world.runs()["newsletter"]
    assert set(world.runtime.control.ledger.applied_refs(run.run_id, "news", "people")) == {
        record_ref(key, "news", "people", pk) for pk in (1, 2)
    }


def test_held_and_restricted_records_are_kept_with_the_reason(world: World) -> None:
    world.holds.place_subject_hold(ANNA, kind="restriction", reason="DSR-9", placed_by="dpo")
    world.holds.place_record_hold("learning", "people", 7, kind="legal_hold", reason="claim",
                                  placed_by="legal")  # fmt: skip

    _, anna = world.withdraw(ANNA)
    _, carl = world.withdraw(CARL)

    assert world.left()["newsletter"] == {7} and world.left()["webinars"] == set()
    assert anna["removed"] == 0 and anna["failed_in"] == []
    [restricted] = anna["kept"]
    assert (restricted["reason"], restricted["records"], restricted["activities"]) == (
        "restriction", 4, ["newsletter", "webinars"],
    )  # fmt: skip
    assert "Art. 18" in restricted["en"] and "begränsad" in restricted["sv"]
    assert _by_activity(anna)["newsletter"]["kept"] == {"restriction": 2}
    assert carl["removed_from"] == ["newsletter"] and carl["removed"] == 1
    [held] = carl["kept"]
    assert (held["reason"], held["records"], held["activities"]) == (
        "legal_hold", 1, ["webinars"],
    )  # fmt: skip
    webinars = _by_activity(carl)["webinars"]
    assert webinars.pop("ledger_run_id") == world.runs()["webinars"][-1].run_id
    assert webinars == {
        "activity": "webinars", "outcome": "nothing_to_do", "found": 1, "removed": 0,
        "kept": {"legal_hold": 1},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("bases", "reason"),
    [(["contract", "legal_obligation"], "legal_obligation"), (["contract"], "contract")],
)
def test_a_withdrawal_keeps_records_another_activity_of_the_dataset_needs(
    world: World, bases: list[str], reason: str
) -> None:
    # The newsletter's table is also bound by invoicing (a contract; the Bookkeeping Act): a
    # withdrawn newsletter consent ends the newsletter, not the invoicing (Art. 17(1)(b)).
    world.catalogue.activities["invoicing"] = _activity(
        "suppliers", id="invoicing", system="news", legal_bases=bases
    )
    world.engines["invoicing"] = world.engines["newsletter"]
    _, result = world.withdraw(ANNA)
    assert world.left()["newsletter"] == set() and world.left()["webinars"] == {1, 2}
    assert result["removed_from"] == ["webinars"] and "newsletter" not in world.runs()
    [kept] = result["kept"]
    assert (kept["reason"], kept["records"], kept["activities"]) == (reason, 2, ["invoicing"])
    newsletter = _by_activity(result)["newsletter"]
    assert (newsletter["found"], newsletter["removed"], newsletter["kept_for"]) == (
        2, 0, "invoicing",
    )  # fmt: skip
    # nor do the nightly suppression runs remove them
    runtime = operations.Runtime.of(world.catalogue, world.runtime.control, world.engines)
    nightly = operations.remove_suppressed(
        world.catalogue["newsletter"], runtime, dry_run=False, origin=None
    )
    assert nightly is not None and nightly["kept_for"]["activity"] == "invoicing"
    assert world.left()["newsletter"] == set() and "newsletter" not in world.runs()


def test_a_direct_marketing_objection_reaches_direct_marketing_activities_only(
    world: World, key: bytes
) -> None:
    # As the nightly runs (`suppression.scopes_for`): the activities marked direct marketing,
    # whatever their basis; not webinars (on consent, not marketing: no consent withdrawn).
    received = world.request("objection", BO, scope="direct_marketing")
    result = world.suppress("objection", received)

    reached = ("newsletter", "prospecting")
    assert world.left() == {a: {5} if a in reached else set() for a in ACTIVITIES}
    assert result["suppression_scope"] == "direct_marketing"
    assert result["removed_from"] == list(reached) and result["removed"] == 2
    runs = world.runs()
    assert sorted(runs) == list(reached)
    assert runs["prospecting"][0].header["rules"] == [OBJECTION_RULE]
    assert runs["newsletter"][0].header["rules"] == [SUPPRESSED_RULE]
    origin = runs["prospecting"][0].header["origin"]
    assert (origin["dag_id"], origin["request"], origin["reason"]) == (
        "dsr_objection", received["request"], "suppression",
    )  # fmt: skip
    applied = world.runtime.control.ledger.applied_refs(
        runs["prospecting"][0].run_id, "crm", "people"
    )
    assert applied == [record_ref(key, "crm", "people", 5)]


def test_a_withdrawal_does_not_reach_direct_marketing_on_legitimate_interest(
    world: World,
) -> None:
    _, result = world.withdraw(BO)
    assert world.left()["prospecting"] == set() and "prospecting" not in world.runs()
    assert result["removed_from"] == ["newsletter", "webinars"]


def test_a_failure_in_one_activity_fails_the_step_after_the_others_are_done(
    world: World, key: bytes
) -> None:
    world.catalogue.activities["newsletter"] = _activity("newsletter", table="missing")
    world.catalogue.activities["webinars"] = _activity("webinars", table="gone")
    world.catalogue.activities["social"] = _activity("newsletter", id="social", system="cms")
    world.engines["social"] = world.engines.pop("recruitment")  # (a source of its own)

    received = world.request("consent_withdrawal", ANNA)
    with pytest.raises(PartlyDone) as caught:
        world.suppress("consent_withdrawal", received)

    assert not isinstance(caught.value, PartlyUnavailable)  # (not retried: someone must look)
    message = str(caught.value)
    assert "DSR-1: on the suppression list" in message and "failed in 2 of 3" in message
    assert "newsletter: failed" in message and "'missing'" in message
    assert "webinars: failed" in message and "'gone'" in message
    assert "anna" not in message.lower()
    result = caught.value.result
    assert result["failed_in"] == ["newsletter", "webinars"]
    assert result["removed_from"] == ["social"] and EVERYONE - ids(world.engines["social"]) == {
        1, 2,
    }  # fmt: skip
    assert world.left()["webinars"] == set()  # its binding is wrong: nothing changed
    refs = {subject_ref(key, ANNA)}
    assert world.runtime.suppressions.suppressed(refs, "consent") == refs
    assert "anna" not in json.dumps(result).lower()


def test_the_request_is_the_approval_a_safety_limit_keeps_nothing_of_a_person_who_withdrew(
    world: World, key: bytes
) -> None:
    # ANNA's 2 records are 10 % of the 20: over the limit, a retention run would wait for an
    # approval that a withdrawal has no step for.
    limited = _activity("webinars", safety={"max_rows": 1, "max_fraction": 0.01})
    world.catalogue.activities["webinars"] = limited

    _, result = world.withdraw(ANNA)

    assert world.left()["webinars"] == {1, 2} and result["failed_in"] == []
    (run,) = world.runs()["webinars"]
    assert run.header["approved_by"] == "dpo.anna"  # who filed the request
    # The nightly suppression run, reaching everyone on the list, keeps the limit.
    world.runtime.suppressions.add(
        [subject_ref(key, BO), subject_ref(key, CARL)], "consent", added_by="crm"
    )
    runtime = operations.Runtime.of(world.catalogue, world.runtime.control, world.engines)
    nightly = operations.remove_suppressed(limited, runtime, dry_run=False, origin={})
    assert nightly is not None and nightly["outcome"] == "approval_required"
    assert world.left()["webinars"] == {1, 2}  # BO (5) and CARL (7) are still there


def test_an_unreachable_source_fails_the_step_so_that_it_is_retried(
    world: World, tmp_path: Path
) -> None:
    world.engines["webinars"] = sa.create_engine(f"sqlite:///{tmp_path / 'gone' / 'x.db'}")
    received = world.request("consent_withdrawal", ANNA)
    with pytest.raises(PartlyUnavailable, match="webinars: failed") as caught:
        world.suppress("consent_withdrawal", received)
    assert caught.value.result["removed_from"] == ["newsletter"]
    assert caught.value.result["failed_in"] == ["webinars"]
    assert EVERYONE - ids(world.engines["newsletter"]) == {1, 2}


def test_the_response_records_what_was_removed(world: World) -> None:
    received, result = world.withdraw(ANNA)
    summary = dsr.respond(received, {"suppress": result}, [], user="u", runtime=world.runtime)
    stored = world.runtime.requests.get(int(received["request_id"]))
    assert stored.status == "completed"
    assert stored.outcome["steps"]["suppress"]["removed_from"] == ["newsletter", "webinars"]
    assert summary["outcome"]["suppress"]["removed"] == 4
