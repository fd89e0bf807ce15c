"""The DAG folder: one DAG per catalogue activity, cheap to parse, wired as designed."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from include.retention.catalogue import POLICY_DIR, SYSTEMS, load_catalogue

ROOT = Path(__file__).resolve().parent.parent
_PARSE_SCRIPT = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="dags")
heavy = ("great_expectations", "boto3", "pandas", "faker", "moto")
print(json.dumps({
    "dags": sorted(bag.dags),
    "errors": {path: str(error) for path, error in bag.import_errors.items()},
    "heavy": [name for name in heavy if name in sys.modules],
}))
"""


def _parse(env: dict[str, str] | None = None) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PARSE_SCRIPT], cwd=ROOT, capture_output=True, text=True,
        check=True, env={**os.environ, **(env or {})},
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


# DAGs in the folder that are not generated from a catalogue activity.
SERVICE_DAGS = {"retention_audit_report", "retention_ledger_manifest"}


def _activity_dags(dag_ids) -> list[str]:
    return sorted(d for d in dag_ids if d.startswith("retention_") and d not in SERVICE_DAGS)


@pytest.fixture(scope="module")
def parsed() -> dict:
    return _parse()


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_dag_folder_has_no_import_errors(parsed):
    assert parsed["errors"] == {}


def test_exactly_one_dag_per_activity(parsed):
    activity_dags = sorted(f"retention_{a.id}" for a in load_catalogue())
    assert _activity_dags(parsed["dags"]) == activity_dags
    assert set(parsed["dags"]) >= SERVICE_DAGS


def test_parsing_imports_nothing_heavy(parsed):
    assert parsed["heavy"] == []


def test_dag_shape_and_ui_metadata(dagbag):
    catalogue = load_catalogue()
    for activity in catalogue:
        dag = dagbag.dags[f"retention_{activity.id}"]
        assert {t.task_id for t in dag.tasks} == {
            "plan",
            "safety_gate",
            "approve",
            "partition",
            "enforce",
            "finish",
            "verify",
            "report",
        }
        assert dag.max_active_runs == 1
        assert dag.catchup is False
        assert "gdpr" in dag.tags and f"system:{activity.source.system}" in dag.tags
        for basis in activity.legal_bases:
            assert f"basis:{basis.value}" in dag.tags
        assert activity.policy_text_sv in dag.doc_md
        assert dag.timetable.expression == activity.schedule
        assert str(dag.timetable.timezone) == "Europe/Stockholm"
        assert set(dag.params.keys()) == {"dry_run", "as_of"}
        assert dag.default_args["owner"] == activity.owner
        assert dag.default_args["retries"] >= 1
        assert dag.on_failure_callback
        approve = dag.get_task("approve")
        assert approve.defaults == ["Reject"] and approve.response_timeout
        assert dag.get_task("report").trigger_rule == "all_done"
        assert len(dag.get_task("report").outlets) == 1
        assert dag.get_task("enforce").pool == "retention"
        # one enforce per partition; finish closes the run after all of them, however they
        # ended, and a failed one is recorded there and fails the run (report)
        assert dag.get_task("enforce").is_mapped
        assert dag.get_task("finish").trigger_rule == "all_done"
        assert dag.get_task("enforce").downstream_task_ids == {"finish"}
        assert dag.get_task("verify").upstream_task_ids == {"plan", "finish"}
        assert dag.get_task("partition").downstream_task_ids == {"enforce", "finish"}
        assert {t.pool for t in dag.tasks if t.task_id != "enforce"} == {"default_pool"}
        assert dag.is_paused_upon_creation is False
        assert "python -m include.retention check" in dag.doc_md


def test_policy_gaps_are_tagged(dagbag):
    for activity in load_catalogue():
        tags = dagbag.dags[f"retention_{activity.id}"].tags
        assert ("policy-gap" in tags) == activity.policy_gap


def test_trigger_form_submits_with_defaults_and_leaves_dates_to_the_plan(dagbag):
    params = copy.deepcopy(dagbag.dags["retention_newsletter"].params)
    assert params.validate() == {"dry_run": False, "as_of": None}
    for value in ("", "2026-11-24", "next tuesday"):  # the plan task explains bad dates
        params["as_of"] = value
        assert params.validate()["as_of"] == value


def test_trigger_form_rejects_a_non_boolean_dry_run(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["retention_newsletter"].params)
    with pytest.raises(ParamValidationError, match="Invalid input for param"):
        params["dry_run"] = "yes"
        params.validate()


_RAW = ("P2Y", "P1M", "P6M", "P180D", "P0D", "legitimate_interest", "legal_obligation", "0.25")


def test_dag_documentation_is_written_for_a_person(dagbag):
    for activity in load_catalogue():
        dag = dagbag.dags[f"retention_{activity.id}"]
        doc = dag.doc_md
        assert activity.name.sv in dag.dag_display_name
        assert activity.name.en in dag.dag_display_name
        assert activity.name.sv in doc and activity.name.en in doc
        assert [raw for raw in _RAW if raw in doc] == []
        assert re.search(r"(^|\s)>\s", doc) is None  # no stray quote markers
        assert "25 % of the records" in doc
        assert "### How approval works" in doc and "### Where the evidence is" in doc
        assert "evidence ledger" in doc and "Approve" in doc and "someone else (four" in doc
        if "legitimate_interest" in activity.legal_bases:
            assert "Art. 6(1)(f) legitimate interest" in doc
    crm = dagbag.dags["retention_crm"].doc_md
    assert "2 years after the customer's contract was terminated" in crm
    prospecting = dagbag.dags["retention_prospecting"]
    assert prospecting.dag_display_name == "Nykundsbearbetning (Prospecting)"


def test_each_assumption_and_gap_is_on_the_dag_documentation(dagbag):
    catalogue = load_catalogue()
    assert sum(len(a.assumptions) for a in catalogue) >= 4
    for activity in catalogue:
        doc = dagbag.dags[f"retention_{activity.id}"].doc_md
        for assumption in activity.assumptions:
            assert f"Assumption to confirm – `{assumption.name}`" in doc
            assert assumption.statement.en in doc and assumption.reason.en in doc
        assert ("### Policy gap" in doc) == activity.policy_gap
        assert ("### Policy deadlines" in doc) == bool(activity.deadlines)


def _catalogue_with_bad_cron(folder: Path) -> Path:
    folder.mkdir()
    for path in POLICY_DIR.glob("*.yaml"):
        shutil.copy(path, folder)
    shutil.copytree(POLICY_DIR / SYSTEMS, folder / SYSTEMS)
    newsletter = folder / "newsletter.yaml"
    text = newsletter.read_text(encoding="utf-8")
    newsletter.write_text(text.replace("schedule: 0 2 * * *", "schedule: 0 2 * *"), "utf-8")
    return folder


def test_one_bad_catalogue_file_costs_one_dag(tmp_path):
    folder = _catalogue_with_bad_cron(tmp_path / "catalogue")
    result = _parse({"RETENTION_CATALOGUE_DIR": str(folder)})
    expected = sorted(f"retention_{a.id}" for a in load_catalogue() if a.id != "newsletter")
    assert len(expected) == 26
    assert _activity_dags(result["dags"]) == expected
    assert list(result["errors"]) == ["dags/retention_catalogue_check.py"]
    error = result["errors"]["dags/retention_catalogue_check.py"]
    assert "newsletter.yaml: schedule" in error and "'0 2 * *' is not a cron expression" in error


def test_a_bad_system_file_costs_the_dags_of_its_datasets(tmp_path):
    folder = _catalogue_with_bad_cron(tmp_path / "catalogue")
    (folder / "newsletter.yaml").write_text(
        (POLICY_DIR / "newsletter.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )  # the activity file is fine again
    cms = folder / SYSTEMS / "cms.yaml"
    cms.write_text(cms.read_text(encoding="utf-8").replace("primary_key: id", "primary_key: I D"))
    result = _parse({"RETENTION_CATALOGUE_DIR": str(folder)})
    bound_to_cms = {a.id for a in load_catalogue() if a.source.system == "cms"}
    assert bound_to_cms == {"event_registration", "social_media", "website"}
    expected = sorted(f"retention_{a.id}" for a in load_catalogue() if a.id not in bound_to_cms)
    assert _activity_dags(result["dags"]) == expected
    error = result["errors"]["dags/retention_catalogue_check.py"]
    assert "systems/cms.yaml: datasets.event_registrations.sql.primary_key" in error
    for activity_id in bound_to_cms:
        assert f"{activity_id}.yaml: source: 'cms/" in error


def test_airflow_lists_the_bad_file_as_an_import_error(tmp_path):
    """Through Airflow's own parse-and-store path (the CLI, its metadata DB), as the UI sees it."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "RETENTION_CATALOGUE_DIR": str(_catalogue_with_bad_cron(tmp_path / "catalogue")),
    }
    airflow = str(Path(sys.executable).parent / "airflow")

    def cli(*args: str, status: int = 0) -> str:
        done = subprocess.run([airflow, *args], cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == status, done.stderr[-2000:]
        return done.stdout

    def json_out(*args: str, status: int = 0) -> list:
        lines = cli(*args, "-o", "json", status=status).splitlines()
        return json.loads(next(line for line in reversed(lines) if line.startswith("[")))

    cli("db", "migrate")
    cli("dags", "reserialize")
    errors = json_out("dags", "list-import-errors", status=1)  # it exits 1 when errors exist
    dags = json_out("dags", "list")
    assert [e["filepath"] for e in errors] == ["retention_catalogue_check.py"]
    assert "newsletter.yaml: schedule" in errors[0]["error"]
    listed = _activity_dags(d["dag_id"] for d in dags)
    assert len(listed) == 26 and "retention_newsletter" not in listed
