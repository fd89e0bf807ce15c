"""Retention runs honour the suppression list: an activity on consent removes the records of
people who withdrew their consent or objected to direct marketing (brought back by another
tool), a direct-marketing activity those who objected to it, others nobody. Through the run
lifecycle on real PostgreSQL, MariaDB and SQLite sources: held and restricted records stay,
and the ledger run names the suppression as its rule."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from include.retention import operations
from include.retention.catalogue import Activity, Catalogue
from include.retention.pseudonym import record_ref, subject_ref, unpack_refs
from include.retention.runs import Control
from include.retention.sources.base import adapter_for
from include.retention.suppression import SuppressionList
from tests.dbs import (  # noqa: F401
    activity,
    control_fixture,
    ids,
    key_fixture,
    person,
    recent,
    seed,
    source_db_fixture,
)

ANNA, BO, CARL, DORA = (f"{n}@example.se" for n in ("anna", "bo", "carl", "dora"))
WITHDRAWN = "consent withdrawn (Art. 7(3))"
OBJECTED = "objection to direct marketing (Art. 21(3))"


def _on(activity_id: str, bases: list[str], *, direct_marketing: bool = False) -> Activity:
    raw = activity(activity_id=activity_id, children=False).model_dump(
        mode="json", exclude_none=True
    )
    raw |= {"legal_bases": bases, "direct_marketing": direct_marketing}
    if "consent" in bases:
        raw["retention"].append({"rule": {"kind": "consent"}, "anchor_column": "withdrawn_on"})
    return Activity.model_validate(raw)


def _seed(engine: sa.Engine) -> None:
    """20 people, none due; ANNA twice (one spelled differently), BO, CARL, DORA once."""
    emails = {1: ANNA, 3: " Anna@Example.SE", 5: BO, 7: CARL, 9: DORA}
    seed(engine, [person(i, recent(), email=emails.get(i, f"p{i}@example.se"))
                  for i in range(1, 21)], children=False)  # fmt: skip


def _suppress(control: Control, key: bytes) -> None:
    suppressions = SuppressionList(control.ledger.engine, key)
    suppressions.create_tables()
    suppressions.add([subject_ref(key, ANNA), subject_ref(key, CARL), subject_ref(key, DORA)],
                     "consent", added_by="dsr")  # fmt: skip
    suppressions.add([subject_ref(key, BO)], "direct_marketing", added_by="dsr")
    control.holds.place_subject_hold(CARL, kind="restriction", reason="r", placed_by="dpo")
    control.holds.place_record_hold("ats", "people", 9, kind="legal_hold", reason="d",
                                    placed_by="legal")  # fmt: skip


def _remove(activity_: Activity, control: Control, engine: sa.Engine, dry_run: bool = False):
    catalogue = Catalogue(activities={activity_.id: activity_}, version="t")
    runtime = operations.Runtime.of(catalogue, control)
    runtime.adapter = lambda a: adapter_for(a.source, control.key, engine)  # type: ignore[method-assign]
    return operations.remove_suppressed(
        activity_, runtime, dry_run=dry_run, origin={"dag_id": "retention_x"}
    )


def _holds_catalogue(control: Control, *activities: Activity) -> None:
    control.holds._catalogue = Catalogue(  # the bindings holds are placed against
        activities={a.id: a for a in activities}, version="t"
    )


def _applied(control: Control, run_id: str) -> set[bytes]:
    return set(control.ledger.applied_refs(run_id, "ats", "people"))


def test_a_consent_activity_removes_the_withdrawn_consents(source_db, control, key) -> None:
    consent = _on("newsletter", ["consent"])  # on consent, not direct marketing: BO stays
    _holds_catalogue(control, consent)
    _seed(source_db.engine)
    _suppress(control, key)

    result: Any = _remove(consent, control, source_db.engine)

    assert ids(source_db.engine) == set(range(1, 21)) - {1, 3}  # CARL, DORA: held
    assert result["people"] == 3 and result["outcome"] == "completed"
    assert result["counts"]["applied"] == 2
    assert (result["counts"]["restricted"], result["counts"]["held"]) == (1, 1)
    (run,) = control.ledger.runs("newsletter")
    assert run.header["rules"] == [f"suppression list: {WITHDRAWN}"]
    assert run.header["origin"] == {"dag_id": "retention_x", "reason": "suppression"}
    assert _applied(control, result["run_id"]) == {
        record_ref(key, "ats", "people", pk) for pk in (1, 3)
    }
    (verified,) = [e for e in control.ledger.entries() if e.kind == "run_verified"]
    assert verified.run_id == result["run_id"] and result["verified"] is True
    assert verified.document["body"]["success"] is True
    assert (verified.document["body"]["remaining"], verified.document["body"]["held"]) == (0, 1)
    again: Any = _remove(consent, control, source_db.engine)
    assert again["outcome"] == "nothing_to_do"
    assert ids(source_db.engine) == set(range(1, 21)) - {1, 3}


def test_a_direct_marketing_activity_on_consent_removes_both(source_db, control, key) -> None:
    newsletter = _on("newsletter", ["consent"], direct_marketing=True)
    _holds_catalogue(control, newsletter)
    _seed(source_db.engine)
    _suppress(control, key)

    result: Any = _remove(newsletter, control, source_db.engine)

    assert ids(source_db.engine) == set(range(1, 21)) - {1, 3, 5}  # CARL, DORA: held
    assert result["people"] == 4 and result["counts"]["applied"] == 3
    (run,) = control.ledger.runs("newsletter")
    assert run.header["rules"] == [f"suppression list: {WITHDRAWN} or {OBJECTED}"]


def test_a_direct_marketing_activity_removes_the_objections_only(source_db, control, key):
    marketing = _on("prospecting", ["legitimate_interest"], direct_marketing=True)
    _holds_catalogue(control, marketing)
    _seed(source_db.engine)
    _suppress(control, key)

    result: Any = _remove(marketing, control, source_db.engine)

    assert ids(source_db.engine) == set(range(1, 21)) - {5}
    assert result["people"] == 1
    (run,) = control.ledger.runs("prospecting")
    assert run.header["rules"] == [f"suppression list: {OBJECTED}"]
    assert _applied(control, result["run_id"]) == {record_ref(key, "ats", "people", 5)}


def test_other_activities_and_dry_runs_remove_nobody(source_db, control, key) -> None:
    other = _on("recruitment", ["legitimate_interest"])
    consent = _on("newsletter", ["consent"])
    _holds_catalogue(control, other, consent)
    _seed(source_db.engine)
    _suppress(control, key)

    assert _remove(other, control, source_db.engine) is None
    dry: Any = _remove(consent, control, source_db.engine, dry_run=True)

    assert ids(source_db.engine) == set(range(1, 21))
    assert dry["outcome"] == "dry_run" and dry["counts"]["expired"] == 4  # ANNA twice, CARL, DORA
    assert control.ledger.runs("recruitment") == []


@pytest.mark.parametrize("lifted", [True, False])
def test_a_lifted_suppression_removes_nobody(tmp_path, key, lifted) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'source.db'}")
    control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", key)
    consent = _on("newsletter", ["consent"])
    _holds_catalogue(control, consent)
    _seed(engine)
    suppressions = SuppressionList(control.ledger.engine, key)
    suppressions.create_tables()
    suppressions.add([subject_ref(key, ANNA)], "consent", added_by="dsr")
    if lifted:
        suppressions.lift(subject_ref(key, ANNA), "consent", by="crm", reason="new consent")
    result: Any = _remove(consent, control, engine)
    gone = set(range(1, 21)) - ids(engine)
    assert gone == (set() if lifted else {1, 3})
    assert result["people"] == (0 if lifted else 1)
    if not lifted:
        assert len(control.ledger.runs("newsletter")) == 1
        batches = [e for e in control.ledger.entries() if e.kind == "batch_prepared"]
        assert {r for b in batches for r in unpack_refs(b.blob or b"")} == {
            record_ref(key, "ats", "people", pk) for pk in (1, 3)
        }


def test_the_retention_page_shows_the_retention_run_not_the_suppression_run(tmp_path, key) -> None:
    from include.retention import lifecycle
    from include.retention.retention_status import activity_statuses
    from tests.dbs import AS_OF

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'source.db'}")
    control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", key)
    consent = _on("newsletter", ["consent"])
    _holds_catalogue(control, consent)
    _seed(engine)
    _suppress(control, key)
    retention = lifecycle.enforce(
        consent, AS_OF, control=control, catalogue_version="t",
        adapter=adapter_for(consent.source, key, engine),
    )  # fmt: skip
    suppression: Any = _remove(consent, control, engine)
    assert suppression["counts"]["applied"] == 2  # a later run that changed records
    catalogue = Catalogue(activities={"newsletter": consent}, version="t")
    (status,) = activity_statuses(catalogue, control.ledger, {}, AS_OF.date())
    assert status.runs == 2 and status.total_applied == 2
    assert status.last_run is not None
    assert status.last_run.ledger_run_id == retention.run_id != suppression["run_id"]
