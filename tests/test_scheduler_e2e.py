"""End to end through Airflow's real components, the way the DAGs are operated.

One stack per executor (LocalExecutor; CeleryExecutor with a real ``airflow celery worker`` on
Redis): API server, scheduler, DAG processor and triggerer as separate processes, PostgreSQL as
Airflow's metadata DB and as the control DB (fresh databases, dropped afterwards), and an S3
server on loopback. The LocalExecutor stack runs on the demo's SQLite sources, the Celery one on
the layout of ``make demo DB=postgres`` (sources on PostgreSQL and MariaDB, reached through
``postgres``/``mysql`` connections; fresh databases, dropped afterwards). Runs are triggered
through the REST API, the approval is answered through the HITL REST endpoint, and failure mail
goes to an SMTP server on loopback. Expected survivors come from the demo manifest (how each
record was designed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pendulum
import pytest
import sqlalchemy as sa

from include.demo import databases
from include.demo.airflow_stack import (
    AirflowApi,
    AirflowStack,
    CeleryConfig,
    StackConfig,
    free_port,
)
from include.demo.embedded_s3 import EmbeddedS3
from include.demo.manifest import ManifestEntry
from include.demo.run import DEPLOYMENT_SETUP, ROOT, DemoPaths, environment
from include.demo.saas_server import SaasServer
from include.demo.seed import place_holds, seed_demo
from include.retention.audit_dag import DAG_ID as AUDIT_DAG_ID
from include.retention.dag_factory import dag_id_for
from include.retention.manifest import BUCKET_ENV as MANIFEST_BUCKET_ENV
from include.retention.runs import KILL_ENV, KILL_ONCE_ENV, Control
from tests.dbs import fresh_pg_database
from tests.demo_checks import Demo, edited_catalogue, readable_mail, strict_safety, survivors

pytestmark = pytest.mark.scheduler

AS_OF = dt.datetime(2026, 11, 24, 1, 30, tzinfo=dt.UTC)  # the 02:30 nightly run, Stockholm
CONF = {"as_of": AS_OF.isoformat(), "dry_run": False}
SQL, S3, BROKEN = "recruitment", "image_bank", "chatbot"
APPROVED, REJECTED = "demo_process", "event_registration"  # gated: a person answers
OUTGROWN = "training_registration"  # gated; a hold is released while the approval is awaited
SELF_APPROVED = "booking_system"  # gated; the user who triggered it approves it
API = "sales_leads"  # an http source: the demo's SaaS lead CRM
MAPPED, PART_SIZE = "contract_management", 4  # 25 rows, due ones first: 7 key ranges
GIVEN_UP = "certification"  # mapped too; one partition dies and an operator marks it failed
ACTIVITIES = (SQL, S3, BROKEN, APPROVED, REJECTED, OUTGROWN, SELF_APPROVED, API, MAPPED, GIVEN_UP)
ALERT_TO = "retention-alerts@example.com"
APPROVER = "dpo.anna"
RUN_TIMEOUT = 240.0


def _drop_source_tables(url: str) -> None:
    """The broken activity's source table is gone (the catalogue is unchanged, so the legal
    holds on it still match): its run must fail, and say so."""
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    metadata.reflect(engine, only=["chat_messages", "conversations"])
    metadata.drop_all(engine)
    engine.dispose()


@dataclass
class Mailbox:
    """An aiosmtpd handler keeping every delivered message."""

    port: int = 0
    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def wait_for(self, subject_part: str, run_id: str = "", timeout: float = 90) -> Message:
        """The first mail with ``subject_part`` in its subject (and ``run_id`` in its text:
        the stacks of this module share the mailbox)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if subject_part in str(message["Subject"]) and run_id in readable_mail(message):
                    return message
            time.sleep(0.5)
        raise AssertionError(f"no mail with {subject_part!r} in its subject within {timeout}s")


@dataclass
class Scheduled:
    """A running stack on the seeded demo, and the runs triggered at its start."""

    executor: str
    stack: AirflowStack
    api: AirflowApi
    demo: Demo
    mailbox: Mailbox
    runs: dict[str, str]  # activity id -> run id
    killed: dict[str, int]  # mapped activity -> its partition whose task process is killed
    holds: dict[tuple[str, str, Any], int]  # (activity, scope, pk) -> the demo hold's id

    def finished(self, activity_id: str) -> str:
        key = (dag_id_for(activity_id), self.runs[activity_id])
        return self.api.wait_for_runs([key], timeout=RUN_TIMEOUT)[key]


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    from aiosmtpd.controller import Controller

    handler = Mailbox(port=free_port())
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port)
    controller.start()
    yield handler
    controller.stop()


def _environment(
    paths: DemoPaths, key: str, s3: EmbeddedS3, saas: SaasServer, control_url: str, smtp_port: int
) -> dict:
    root = paths.var
    env = environment(paths, key, s3.endpoint_url, saas.connection())
    env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW_") or "_CONN_" in k}
    edits = dict.fromkeys((APPROVED, REJECTED, OUTGROWN, SELF_APPROVED), strict_safety)
    edits |= dict.fromkeys((MAPPED, GIVEN_UP), _partitioned)
    catalogue = edited_catalogue(root / "policies", edits)
    smtp = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": smtp_port,
        "extra": {"from_email": "airflow@example.com", "disable_tls": True, "disable_ssl": True},
    }
    return env | {
        "RETENTION_CONTROL_DB_URL": control_url,
        "RETENTION_CATALOGUE_DIR": str(catalogue),
        "AIRFLOW_CONN_RETENTION_SMTP": json.dumps(smtp),
        "AIRFLOW_VAR_RETENTION_ALERT_EMAIL": ALERT_TO,
        "AIRFLOW_VAR_RETENTION_AUDIT_REPORT_LOCATION": str(root / "audit-reports"),
        MANIFEST_BUCKET_ENV: _manifest_bucket(root),
    }


def _partitioned(raw: dict[str, Any]) -> None:
    raw["partitioning"] = {"records_per_partition": PART_SIZE}


def _mapped_rows(manifest: Any, activity: str = MAPPED) -> list[ManifestEntry]:
    """A mapped activity's rows in key order: partition i is rows [i*PART_SIZE, ...)."""
    return sorted(manifest.for_activity(activity, kind="row"), key=lambda e: e.pk)


def _crash_one_partition(manifest: Any, root: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Per mapped activity, the partition to kill (the second one with a record to delete),
    and the settings that make its task process SIGKILL itself once, after its first batch's
    evidence is written."""
    killed = {}
    for activity in (MAPPED, GIVEN_UP):
        rows = _mapped_rows(manifest, activity)
        due = sorted({i // PART_SIZE for i, e in enumerate(rows) if e.due})
        assert len(due) > 1, f"{activity} needs due records in two partitions"
        killed[activity] = due[1]
    points = ",".join(f"after_prepare:1@{a}#{p}" for a, p in killed.items())
    return killed, {KILL_ENV: points, KILL_ONCE_ENV: str(root / "partition-killed")}


def _manifest_bucket(root: Path) -> str:
    """A manifest bucket per stack: moto keeps every in-process S3 server's objects in one
    store, and Object Lock keeps an earlier stack's manifests (signed by its own key)."""
    return f"ledger-manifests-{root.name}"


@contextlib.contextmanager
def _sources(paths: DemoPaths) -> Iterator[dict[str, str] | None]:
    """The layout's server databases, fresh and dropped afterwards (None: SQLite files)."""
    if paths.db == "sqlite":
        yield None
        return
    urls = paths.source_urls
    databases.recreate_databases(urls.values())
    try:
        yield urls
    finally:
        databases.drop_databases(urls.values())


@pytest.fixture(scope="module", params=[("local", "sqlite"), ("celery", "postgres")],
                ids=["local-sqlite", "celery-postgres"])  # fmt: skip
def airflow(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    mailbox: Mailbox,
) -> Iterator[Scheduled]:
    executor, layout = request.param
    root = tmp_path_factory.mktemp(f"scheduler-{executor}")
    paths = DemoPaths(root, layout)
    key = secrets.token_urlsafe(32)
    saas = SaasServer(root / "saas.db", secrets.token_urlsafe(24))
    with (
        EmbeddedS3() as s3,
        saas,
        fresh_pg_database("rt_af") as metadata_url,  # each stack its own: no run leaks across
        fresh_pg_database("rt_ctl") as control_url,
        _sources(paths) as urls,
    ):
        seeded = seed_demo(
            AS_OF, root / "demo", s3_client=s3.client(), saas_store=saas.store_path, urls=urls
        )
        _drop_source_tables(seeded.urls[BROKEN])
        control = Control.open(control_url, key.encode())
        requests = list(seeded.hold_requests())
        placed = place_holds(control.holds, requests)
        holds = {(r.activity, r.scope, r.pk): h for r, h in zip(requests, placed, strict=True)}
        killed, crash = _crash_one_partition(seeded.manifest, root)
        config = StackConfig(
            home=root / "airflow",
            metadata_url=metadata_url,
            dags_folder=ROOT / "dags",
            project_root=ROOT,
            env=_environment(paths, key, s3, saas, control_url, mailbox.port) | crash,
            celery=CeleryConfig.on_local_redis() if executor == "celery" else None,
            users={"admin": "admin", APPROVER: "user"},
            parallelism=6,
            setup_commands=(DEPLOYMENT_SETUP,),
        )
        with AirflowStack(config) as stack:
            api = stack.api()
            api.wait_for_dags([dag_id_for(a) for a in ACTIVITIES] + [AUDIT_DAG_ID])
            for activity_id in ACTIVITIES:
                api.unpause(dag_id_for(activity_id))
            runs = {a: api.trigger(dag_id_for(a), CONF) for a in ACTIVITIES}
            demo = Demo(root, seeded.manifest, seeded.urls, control, s3.client(), saas.store)
            yield Scheduled(executor, stack, api, demo, mailbox, runs, killed, holds)
            api.close()


def test_sql_run_deletes_exactly_the_due_rows_children_and_files(airflow: Scheduled) -> None:
    assert airflow.finished(SQL) == "success"
    entries, alive = survivors(airflow.demo, SQL)
    assert {e.pk for e in alive} == {e.pk for e in entries if not e.due}
    assert any(e.due for e in entries) and alive
    for entry in airflow.demo.manifest.for_activity(SQL, kind="row"):
        for cv in entry.objects:
            assert (airflow.demo.object_versions("cv-files", cv) > 0) == (not entry.due)
    finished = airflow.demo.last_run(SQL)
    assert finished["outcome"] == "completed"
    assert finished["counts"]["applied"] == sum(e.due for e in entries if e.kind == "row")
    due = next(e for e in entries if e.due and e.kind == "row")
    evidence = airflow.demo.control.ledger.lookup("ats", "candidates", due.pk)
    assert [e.action for e in evidence] == ["delete"]
    origin = airflow.demo.control.ledger.runs(SQL)[-1].header["origin"]
    assert origin == {
        "dag_id": dag_id_for(SQL), "run_id": airflow.runs[SQL], "run_type": "manual",
        "triggered_by": "admin",
    }  # fmt: skip
    assert airflow.demo.control.ledger.verify().ok


def test_s3_run_removes_every_version_of_the_due_objects(airflow: Scheduled) -> None:
    assert airflow.finished(S3) == "success"
    entries, alive = survivors(airflow.demo, S3)
    assert {e.pk for e in alive} == {e.pk for e in entries if not e.due}
    assert airflow.demo.last_run(S3)["counts"]["applied"] == sum(e.due for e in entries)


def test_api_run_deletes_exactly_the_due_records_through_the_saas_api(airflow: Scheduled) -> None:
    assert airflow.finished(API) == "success"
    entries, alive = survivors(airflow.demo, API)
    assert entries and {e.pk for e in alive} == {e.pk for e in entries if not e.due}
    assert airflow.demo.last_run(API)["counts"]["applied"] == sum(e.due for e in entries)


def test_tasks_ran_in_the_executor_as_separate_processes(airflow: Scheduled) -> None:
    assert airflow.finished(SQL) == "success"
    tis = airflow.api.task_instances(dag_id_for(SQL), airflow.runs[SQL])
    states = {task_id: ti["state"] for task_id, ti in tis.items()}
    assert states == {
        "plan": "success", "safety_gate": "success", "approve": "skipped",
        "partition": "success", "enforce": "success", "finish": "success", "verify": "success",
        "report": "success",
    }  # fmt: skip
    assert tis["enforce"]["map_index"] == 0  # a small dataset: one partition, the whole of it
    assert tis["enforce"]["rendered_map_index"] == "whole dataset"
    ran = [ti for ti in tis.values() if ti["state"] == "success"]
    assert len({ti["pid"] for ti in ran}) == len(ran)  # one task process each
    celery = airflow.stack.config.celery
    expected_queue = celery.queue if celery else "default"
    assert {ti["queue"] for ti in ran} == {expected_queue}
    # The process that forks the task processes imported their heavy libraries first.
    forking = "celery-worker" if celery else "scheduler"
    log = (airflow.stack.logs / f"{forking}.log").read_text(encoding="utf-8", errors="replace")
    assert "task libraries preloaded for the task processes" in log


def _answer(
    airflow: Scheduled, activity_id: str, chosen: str, user: str = APPROVER
) -> list[ManifestEntry]:
    """Answer the run's approval as ``user`` once it waits; returns the records that existed
    while it waited (nothing may change before the answer)."""
    dag_id, run_id = dag_id_for(activity_id), airflow.runs[activity_id]
    airflow.api.wait_for_approval(dag_id, run_id, "approve")
    waiting = survivors(airflow.demo, activity_id)[1]
    approver = airflow.stack.api(user)
    answer = approver.answer_approval(dag_id, run_id, "approve", chosen)
    approver.close()
    assert answer["responded_by"]["name"] == user and answer["chosen_options"] == [chosen]
    return waiting


def test_gated_run_deletes_nothing_while_waiting_and_all_due_once_approved(airflow) -> None:
    entries = airflow.demo.manifest.for_activity(APPROVED)
    assert sum(e.due for e in entries) > 1  # over the strict limit of one row per run
    assert _answer(airflow, APPROVED, "Approve") == entries
    assert airflow.finished(APPROVED) == "success"
    run = airflow.demo.control.ledger.runs(APPROVED)[-1]
    assert run.header["approved_by"] == APPROVER
    assert run.finished["outcome"] == "completed"
    alive = survivors(airflow.demo, APPROVED)[1]
    assert {e.pk for e in alive} == {e.pk for e in entries if not e.due}


def test_rejected_run_changes_nothing(airflow: Scheduled) -> None:
    entries = airflow.demo.manifest.for_activity(REJECTED)
    assert sum(e.due for e in entries) > 1
    assert _answer(airflow, REJECTED, "Reject") == entries
    assert airflow.finished(REJECTED) == "success"
    assert airflow.demo.last_run(REJECTED)["outcome"] == "approval_required"
    assert survivors(airflow.demo, REJECTED)[1] == entries


def test_the_user_who_triggered_a_run_cannot_approve_it(airflow: Scheduled) -> None:
    dag_id, run_id = dag_id_for(SELF_APPROVED), airflow.runs[SELF_APPROVED]
    assert sum(e.due for e in airflow.demo.manifest.for_activity(SELF_APPROVED)) > 1

    waiting = _answer(airflow, SELF_APPROVED, "Approve", user="admin")  # who triggered it

    assert airflow.finished(SELF_APPROVED) == "failed"
    tis = airflow.api.task_instances(dag_id, run_id)
    assert (tis["enforce"]["state"], tis["enforce"]["try_number"]) == ("failed", 1)
    assert survivors(airflow.demo, SELF_APPROVED)[1] == waiting
    assert airflow.demo.control.ledger.runs(SELF_APPROVED) == []  # refused before it started
    assert airflow.mailbox.wait_for(dag_id, run_id)["To"] == ALERT_TO
    log = airflow.api.task_log(dag_id, run_id, "enforce", map_index=0)
    assert "admin triggered this run and approved it" in log and "someone else" in log


def test_an_approval_covers_no_record_released_while_it_was_awaited(airflow: Scheduled) -> None:
    dag_id, run_id = dag_id_for(OUTGROWN), airflow.runs[OUTGROWN]
    airflow.api.wait_for_approval(dag_id, run_id, "approve")
    # The demo holds an expired record: released, it is due, one more than the approver saw.
    [held] = [e for e in airflow.demo.manifest.for_activity(OUTGROWN) if e.hold == "record"]
    airflow.demo.control.holds.release(
        airflow.holds[(OUTGROWN, "record", held.pk)], released_by="legal"
    )

    waiting = _answer(airflow, OUTGROWN, "Approve")

    assert airflow.finished(OUTGROWN) == "failed"
    tis = airflow.api.task_instances(dag_id, run_id)
    assert (tis["enforce"]["state"], tis["enforce"]["try_number"]) == ("failed", 1)
    assert tis["report"]["state"] == "failed"
    assert survivors(airflow.demo, OUTGROWN)[1] == waiting  # the released record too
    assert airflow.demo.control.ledger.runs(OUTGROWN) == []  # refused before it started
    mail = airflow.mailbox.wait_for(dag_id, run_id)
    assert mail["To"] == ALERT_TO
    log = airflow.api.task_log(dag_id, run_id, "enforce", map_index=0)
    assert "the approval covered" in log and "Trigger the run again" in log


def test_failed_run_is_failed_and_alerts_without_personal_data(airflow: Scheduled) -> None:
    assert airflow.finished(BROKEN) == "failed"
    tis = airflow.api.task_instances(dag_id_for(BROKEN), airflow.runs[BROKEN])
    assert tis["plan"]["state"] == "failed"
    assert tis["enforce"]["state"] in ("upstream_failed", None)
    assert tis["plan"]["try_number"] == 1  # bad input is not retried

    mail = airflow.mailbox.wait_for(dag_id_for(BROKEN), airflow.runs[BROKEN])
    assert mail["To"] == ALERT_TO
    text = readable_mail(mail)  # bodies travel base64-encoded: scan what a person reads
    personal = [e.subject for e in airflow.demo.manifest.for_activity(BROKEN) if e.subject]
    assert personal, "the demo records must name their data subjects"
    assert not [subject for subject in personal if subject in text]
    assert airflow.demo.control.ledger.runs(BROKEN) == []  # nothing recorded as if it ran


def test_weekly_audit_report_runs_in_the_executor_and_writes_owner_only_files(airflow):
    import stat

    assert airflow.finished(SQL) == "success"
    today = pendulum.now("Europe/Stockholm").date()
    period = {"from": (today - dt.timedelta(days=1)).isoformat(), "to": today.isoformat()}
    airflow.api.unpause(AUDIT_DAG_ID)
    run_id = airflow.api.trigger(AUDIT_DAG_ID, period)
    key = (AUDIT_DAG_ID, run_id)
    assert airflow.api.wait_for_runs([key], timeout=RUN_TIMEOUT)[key] == "success"
    folder = airflow.demo.root / "audit-reports"
    files = sorted(folder.iterdir())
    assert len(files) == 6 and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}
    csv_file = next(p for p in files if p.name.endswith(".en.csv"))
    row = next(line for line in csv_file.read_text().splitlines() if line.startswith(f"{SQL},"))
    deleted = sum(r.finished["counts"]["applied"] for r in airflow.demo.control.ledger.runs(SQL))
    assert row.split(",")[4] == str(deleted) != "0"


def test_the_daily_manifest_is_published_under_object_lock(airflow: Scheduled) -> None:
    """retention_ledger_manifest through the scheduler: a signed manifest of the ledger head
    lands in the bucket under compliance-mode Object Lock, and the ledger matches it."""
    from include.retention import manifest

    dag_id = "retention_ledger_manifest"
    airflow.api.wait_for_dags([dag_id])
    airflow.api.unpause(dag_id)
    key = (dag_id, airflow.api.trigger(dag_id, {}))
    assert airflow.api.wait_for_runs([key], timeout=RUN_TIMEOUT)[key] == "success"
    s3, bucket = airflow.demo.s3, _manifest_bucket(airflow.demo.root)
    [published] = manifest.fetch_all(s3, bucket)
    head = s3.head_object(Bucket=bucket, Key=published.key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert published.document["body"]["ledger"]["head_seq"] > 0
    signing = manifest.SigningKey.from_text(
        DemoPaths(airflow.demo.root).signing_key_file.read_text()
    )
    assert manifest.check(airflow.demo.control.ledger, [published], [signing.public()]) == []


def test_mapped_partitions_delete_exactly_the_due_rows_and_a_killed_one_recovers(airflow):
    """MAPPED is split into key ranges, one mapped enforce task each, within one ledger run.
    One partition's task process is SIGKILLed after its first batch's evidence is written (its
    transaction never commits); its next try (cleared, as an operator would) settles that batch
    and only that one, and the run ends with exactly the due rows gone, each with one piece of
    evidence, the ledger run finished once."""
    dag_id, run_id = dag_id_for(MAPPED), airflow.runs[MAPPED]
    rows = _mapped_rows(airflow.demo.manifest)
    count = -(-len(rows) // PART_SIZE)
    killed = _wait_for_mapped(airflow, MAPPED, count)
    assert airflow.demo.control.ledger.pending_batches(MAPPED) != []  # the dead one's batch
    airflow.api.clear_task(dag_id, run_id, "enforce", killed)
    assert airflow.finished(MAPPED) == "success"

    tis = airflow.api.mapped_instances(dag_id, run_id, "enforce")
    assert sorted(tis) == list(range(count))
    assert {i: ti["state"] for i, ti in tis.items()} == dict.fromkeys(range(count), "success")
    assert {i: ti["try_number"] for i, ti in tis.items() if i != killed} == dict.fromkeys(
        (i for i in range(count) if i != killed), 1
    )
    assert tis[killed]["try_number"] == 2
    assert tis[1]["rendered_map_index"] == f"partition 2 of {count}"
    entries, alive = survivors(airflow.demo, MAPPED)
    assert {e.pk for e in alive} == {e.pk for e in entries if not e.due}  # from the seed
    for entry in rows:
        evidence = airflow.demo.control.ledger.lookup("contracts", "contracts", entry.pk)
        assert len(evidence) == entry.due, entry.pk

    ledger = airflow.demo.control.ledger
    [run] = ledger.runs(MAPPED)  # started once (partition), finished once (finish)
    assert run.header["origin"]["run_id"] == run_id
    assert run.header["origin"]["partitions"] == str(count)
    assert run.finished is not None and run.finished["outcome"] == "completed"
    assert run.finished["counts"]["applied"] == sum(e.due for e in rows)
    batches = ledger.batch_rows(activity_id=MAPPED)
    assert {b["run_id"] for b in batches} == {run.run_id}
    recovered = [b for b in batches if b["recovered"]]
    assert [b["outcome"] for b in recovered] == ["rolled_back"]
    assert all(b["outcome"] == "committed" for b in batches if not b["recovered"])
    assert ledger.pending_batches(MAPPED) == [] and ledger.verify().ok
    logs = "".join(p.read_text(errors="replace") for p in airflow.stack.logs.glob("*.log"))
    noise = [line for line in logs.splitlines() if "XCom not found" in line and dag_id in line]
    assert noise == []  # finish reads the partitions' results without asking past their end


def _wait_for_mapped(
    airflow: Scheduled, activity: str, count: int, timeout: float = RUN_TIMEOUT
) -> int:
    """Wait until the killed partition's task has failed (awaiting its retry) while the
    others succeed; returns its map index."""
    dag_id, run_id, killed = dag_id_for(activity), airflow.runs[activity], airflow.killed[activity]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tis = airflow.api.mapped_instances(dag_id, run_id, "enforce")
        states = {i: ti["state"] for i, ti in tis.items()}
        if states.get(killed) in ("up_for_retry", "failed"):
            assert len(states) == count, states
            return killed
        time.sleep(1)
    raise AssertionError(f"partition {killed} of {activity} was not killed: {states}")


def test_a_partition_given_up_fails_the_run_alerts_and_keeps_its_records(airflow) -> None:
    """GIVEN_UP is mapped like MAPPED and one partition's task dies the same way, but an
    operator gives up on it (marks it failed instead of letting it retry). ``finish`` still
    runs (all_done): it settles the dead partition's batch from the source (rolled back: its
    records are all there) and closes the one ledger run as failed; the DAG run is failed, not
    green, and the alert names no person. The other partitions' due rows are gone, evidenced."""
    dag_id, run_id = dag_id_for(GIVEN_UP), airflow.runs[GIVEN_UP]
    rows = _mapped_rows(airflow.demo.manifest, GIVEN_UP)
    count = -(-len(rows) // PART_SIZE)
    killed = _wait_for_mapped(airflow, GIVEN_UP, count)
    airflow.api.mark_task(dag_id, run_id, "enforce", "failed", killed)
    assert airflow.finished(GIVEN_UP) == "failed"

    tis = airflow.api.mapped_instances(dag_id, run_id, "enforce")
    assert {i: ti["state"] for i, ti in tis.items()} == {
        i: "failed" if i == killed else "success" for i in range(count)
    }
    steps = airflow.api.task_instances(dag_id, run_id)
    assert steps["finish"]["state"] == "success" and steps["report"]["state"] == "failed"

    in_killed = {e.pk for i, e in enumerate(rows) if i // PART_SIZE == killed}
    gone = {e.pk for e in rows if e.due and e.pk not in in_killed}
    entries, alive = survivors(airflow.demo, GIVEN_UP)
    assert {e.pk for e in alive} == {e.pk for e in entries} - gone  # the killed range: all kept
    assert in_killed & {e.pk for e in rows if e.due}, "the killed partition had due records"
    ledger = airflow.demo.control.ledger
    [run] = ledger.runs(GIVEN_UP)
    assert run.finished is not None and run.finished["outcome"] == "failed"
    assert f"partition(s) {killed + 1} of {count}" in run.finished["message"]
    assert run.finished["counts"]["applied"] == len(gone)
    for entry in rows:
        system, dataset = entry.system, entry.dataset
        assert len(ledger.lookup(system, dataset, entry.pk)) == (entry.pk in gone), entry.pk
    batches = ledger.batch_rows(activity_id=GIVEN_UP)
    assert [b["outcome"] for b in batches if b["recovered"]] == ["rolled_back"]
    assert ledger.pending_batches(GIVEN_UP) == [] and ledger.verify().ok

    mail = airflow.mailbox.wait_for(dag_id, run_id)
    text = readable_mail(mail)
    assert mail["To"] == ALERT_TO and "failed" in str(mail["Subject"])
    assert not [e.subject for e in rows if e.subject and e.subject in text]
