"""The data-subject-request DAGs: shape, trigger forms, and cheap parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk.definitions.param import ParamsDict

from include.retention.dsr_dags import DEADLINE_DAG_ID, REAPPLY_DAG_ID, WORK, build_all, dag_id_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dags():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "dsr_dags.py"))
    assert bag.import_errors == {}
    return bag.dags


def test_one_dag_per_request_kind_and_the_deadline_dag(dags) -> None:
    assert sorted(dags) == sorted([*(dag_id_for(k) for k in WORK), DEADLINE_DAG_ID, REAPPLY_DAG_ID])
    assert build_all(only=REAPPLY_DAG_ID).keys() == {REAPPLY_DAG_ID}
    assert build_all(only="dsr_restriction").keys() == {"dsr_restriction"}
    assert build_all(only="retention_crm").keys() == set(dags)  # not ours: all of them


def test_request_dags_are_triggered_by_people_and_always_respond(dags) -> None:
    for kind in WORK:
        dag = dags[dag_id_for(kind)]
        assert type(dag.timetable).__name__ == "NullTimetable"  # no schedule
        assert dag.is_paused_upon_creation is False
        assert dag.get_task("receive").upstream_task_ids == set()
        respond = dag.get_task("respond")
        assert respond.trigger_rule == "all_done" and len(respond.outlets) == 1
        assert dag.on_failure_callback and dag.default_args["retries"] >= 1
        assert {"email", "phone", "personnummer", "customer_id", "received_on"} <= set(
            dag.params.keys()
        )
        assert "pseudonymises" in dag.doc_md


def test_the_deadline_dag_runs_every_morning(dags) -> None:
    dag = dags[DEADLINE_DAG_ID]
    assert dag.timetable.expression == "0 7 * * *"
    assert str(dag.timetable.timezone) == "Europe/Stockholm"


def _form(dag, **values) -> dict:
    params = ParamsDict(dag.params)
    for name, value in values.items():
        params[name] = value
    return params.validate()


def test_the_form_refuses_shapes_it_can_check(dags) -> None:
    dag = dags["dsr_restriction"]
    ok = _form(dag, email="anna@example.se", personnummer="811218-9876", received_on="2026-11-20")
    assert ok["action"] == "place" and ok["ground"] == "accuracy_contested"
    assert _form(dag, personnummer="")["personnummer"] == ""
    for bad in (
        {"personnummer": "81-12-18"},
        {"personnummer": "８１１２１８-９８７６"},  # full-width digits: `receive` would refuse
        {"phone": "070 ABC"},
        {"action": "pause"},
        {"ground": "because"},
        {"received_on": "24/11/2026"},
        {"email": "x" * 321},
    ):
        with pytest.raises(Exception, match=r"Invalid input|validat"):
            _form(dag, **bad)


def test_the_rectification_form_checks_the_corrections_shape(dags) -> None:
    dag = dags["dsr_rectification"]
    ok = _form(dag, email="anna@example.se", corrections={"last_name": "Berg", "age": 41})
    assert ok["corrections"] == {"last_name": "Berg", "age": 41}
    for bad in (
        {"corrections": {"last name": "Berg"}},  # not a field name
        {"corrections": {"last_name": {"first": "Berg"}}},  # not a scalar
        {"corrections": {f"f{i}": 1 for i in range(21)}},  # too many
        {"corrections": ["last_name", "Berg"]},
    ):
        with pytest.raises(Exception, match=r"Invalid input|validat"):
            _form(dag, email="anna@example.se", **bad)


def test_portability_and_rectification_are_request_dags(dags) -> None:
    assert dags["dsr_portability"].get_task("export").upstream_task_ids == {"receive"}
    assert dags["dsr_rectification"].get_task("rectify").upstream_task_ids == {"receive"}


def test_the_erasure_dag_erases_between_receive_and_respond(dags) -> None:
    dag = dags["dsr_erasure"]
    assert dag.get_task("erase").upstream_task_ids == {"receive"}
    assert dag.get_task("respond").upstream_task_ids == {"erase"}
    assert _form(dag, email="anna@example.se")["email"] == "anna@example.se"


def test_the_reapply_form_offers_the_catalogues_systems_only(dags) -> None:
    dag = dags[REAPPLY_DAG_ID]
    assert type(dag.timetable).__name__ == "NullTimetable" and dag.max_active_runs == 1
    assert dag.on_failure_callback and list(dag.task_dict) == ["reapply"]
    assert _form(dag, system="crm")["system"] == "crm"
    assert "accounting" in dag.params.get_param("system").schema["enum"]
    with pytest.raises(Exception, match=r"Invalid input|validat"):
        _form(dag, system="nowhere")  # (an empty form is refused by the task: test_erasure)


class _TaskInstance:
    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def test_a_partly_done_step_keeps_what_it_did_as_its_result_and_fails() -> None:
    from include.retention.dsr_dags import keeping_partial
    from include.retention.errors import PartlyDone

    def work(kind, received, params, user):
        if received.get("fail"):
            raise PartlyDone("one system failed", {"removed_from": ["newsletter"]})
        return {"removed_from": []}

    ti = _TaskInstance()
    assert keeping_partial(work, ti)("objection", {}, {}, "u") == {"removed_from": []}
    assert ti.pushed == {}
    with pytest.raises(PartlyDone, match="one system failed"):
        keeping_partial(work, ti)("objection", {"fail": True}, {}, "u")
    assert ti.pushed == {"return_value": {"removed_from": ["newsletter"]}}
