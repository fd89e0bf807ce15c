"""End to end: retention DAGs run through Airflow (``dag.test``) against the seeded demo
systems (moto S3), and exactly the designed records survive.

The retention outcomes run with the sources on each SQL dialect (SQLite files, PostgreSQL,
MariaDB: every system on that server, reached through its Airflow connection type); the
expected survivors come from the demo's manifest (how each record was designed), never from
the engine. The approval, alerting and parameter tests run on SQLite only (``ON_SQLITE``)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import html
import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.demo import databases
from include.demo.embedded_s3 import EmbeddedS3
from include.demo.run import DemoPaths, environment
from include.demo.saas_server import SaasServer
from include.demo.seed import seed_demo
from include.retention.catalogue import load_catalogue
from include.retention.dag_factory import build_dag
from tests.demo_checks import Demo, demo_environment, edited_catalogue, strict_safety, survivors
from tests.s3 import s3_server_fixture  # noqa: F401

AS_OF = dt.datetime(2026, 11, 24, 1, 30, tzinfo=dt.UTC)  # the 02:30 nightly run, Stockholm


SOURCE_DIALECTS = ("sqlite", "postgresql", "mariadb")
ON_SQLITE = pytest.mark.parametrize("demo", ["sqlite"], indirect=True)
# What the tests on every dialect run: deletion with children and files, consent, boundaries,
# anonymisation, a second run, verification, a dry run. Only their systems go on the servers.
ON_EVERY_DIALECT = ("recruitment", "newsletter", "service_development", "chatbot")


def _server_sources(root: Path, dialect: str) -> dict[str, str] | None:
    """The systems of ``ON_EVERY_DIALECT``, each in its own fresh database on the ``dialect``
    server (None: every system as SQLite files)."""
    if dialect == "sqlite":
        return None
    systems = {load_catalogue()[a].source.system for a in ON_EVERY_DIALECT}
    placement = dict.fromkeys(databases.PLACEMENT, dialect)
    urls = databases.source_urls(databases.prefix_for(root), placement)
    urls = {system: url for system, url in urls.items() if system in systems}
    databases.recreate_databases(urls.values())
    return urls


@pytest.fixture(scope="module")
def saas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaasServer]:
    store = tmp_path_factory.mktemp("saas") / "records.db"
    with SaasServer(store, secrets.token_urlsafe(24)) as server:
        yield server


@pytest.fixture(scope="module")
def airflow_db() -> None:
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)


@pytest.fixture(scope="module", params=SOURCE_DIALECTS)
def demo(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: EmbeddedS3,
    saas: SaasServer,
    airflow_db: None,
) -> Iterator[Demo]:
    root = tmp_path_factory.mktemp(f"e2e-{request.param}")
    key = secrets.token_urlsafe(32)
    servers = _server_sources(root, request.param)
    try:
        result = seed_demo(
            AS_OF,
            root / "demo",
            s3_client=s3_server.client(),
            saas_store=saas.store_path,
            urls=servers,
        )
        env = environment(DemoPaths(root), key, s3_server.endpoint_url, saas.connection())
        for system, url in result.urls.items():  # the connections reach the seeded systems
            env[f"AIRFLOW_CONN_RETENTION_{system.upper()}"] = databases.airflow_connection(url)
        with demo_environment(env, key, result.hold_requests()) as control:
            yield Demo(root, result.manifest, result.urls, control, s3_server.client(), saas.store)
    finally:
        if servers:
            databases.drop_databases(servers.values())


def run_dag(activity_id: str, **kwargs: Any) -> Any:
    dag = build_dag(load_catalogue()[activity_id])
    for task in dag.tasks:
        task.retries = 0
    conf = {"as_of": AS_OF.isoformat(), "dry_run": False} | kwargs.pop("conf", {})
    return dag.test(run_conf=conf, **kwargs)


def test_recruitment_deletes_exactly_the_expired_candidates_with_children_and_cvs(demo):
    entries = demo.manifest.for_activity("recruitment", kind="row")
    expectations = {e.expectation.value for e in entries}
    assert {"expired", "boundary_due", "boundary_kept", "held", "unknown_anchor"} <= expectations
    assert run_dag("recruitment").state == "success"
    _, alive = survivors(demo, "recruitment")
    assert {e.pk for e in alive} == {
        e.pk for e in demo.manifest.for_activity("recruitment") if not e.due
    }
    for entry in entries:
        for cv in entry.objects:
            assert (demo.object_versions("cv-files", cv) > 0) == (not entry.due), (entry, cv)
    finished = demo.last_run("recruitment")
    assert finished["outcome"] == "completed"
    assert finished["counts"]["applied"] == sum(e.due for e in entries)
    due = next(e for e in entries if e.due)
    evidence = demo.control.ledger.lookup("ats", "candidates", due.pk)
    assert len(evidence) == 1 and evidence[0].action == "delete"


@ON_SQLITE
def test_image_bank_removes_every_version_of_expired_objects(demo):
    entries = demo.manifest.for_activity("image_bank")
    with_history = [e for e in entries if e.due and demo.object_versions(e.dataset, str(e.pk)) > 1]
    assert with_history, "the demo must hold an expired object with old versions"
    assert run_dag("image_bank").state == "success"
    _, alive = survivors(demo, "image_bank")
    assert {e.pk for e in alive} == {e.pk for e in entries if not e.due}
    assert all(demo.object_versions(e.dataset, str(e.pk)) == 0 for e in with_history)


def test_consent_withdrawal_and_boundaries_in_the_newsletter(demo):
    entries = demo.manifest.for_activity("newsletter")
    assert any(e.expectation == "consent_withdrawn" for e in entries)
    assert run_dag("newsletter").state == "success"
    _, alive = survivors(demo, "newsletter")
    assert {e.pk for e in alive} == {e.pk for e in entries if not e.due}


def test_sales_leads_are_deleted_through_the_saas_api(demo):
    entries = demo.manifest.for_activity("sales_leads")
    assert entries and all(e.kind == "record" for e in entries)
    assert {"expired", "consent_withdrawn", "held"} <= {e.expectation.value for e in entries}
    assert run_dag("sales_leads").state == "success"
    _, alive = survivors(demo, "sales_leads")
    assert {e.pk for e in alive} == {e.pk for e in entries if not e.due}
    finished = demo.last_run("sales_leads")
    assert finished["outcome"] == "completed"
    assert finished["counts"]["applied"] == sum(e.due for e in entries)
    due = next(e for e in entries if e.due)
    evidence = demo.control.ledger.lookup("lead_crm", "leads", due.pk)
    assert len(evidence) == 1 and evidence[0].action == "delete"


def test_service_development_anonymises_in_place(demo):
    entries = demo.manifest.for_activity("service_development")
    before = {e.pk: demo.row(e) for e in entries}
    assert run_dag("service_development").state == "success"
    for entry in entries:
        row = demo.row(entry)
        if entry.due:
            assert before[entry.pk]["anonymised_at"] is None
            assert row["anonymised_at"] is not None and row["full_name"] is None
            assert row["city"] == "anonymised" and row["email"] is None  # removed, not hashed
            assert row["birth_date"].month == 1 and row["birth_date"].day == 1
            assert row["age"] % 10 == 0
        else:
            assert row == before[entry.pk]


def test_anonymised_demo_rows_cannot_be_joined_back(demo):
    from include.retention.anonymity import check_anonymity

    activity = load_catalogue()["service_development"]
    assert run_dag("service_development").state == "success"
    source = sa.create_engine(demo.urls[activity.source.system])
    report = check_anonymity(activity, source, demo.control.key)
    anonymised = [e for e in demo.manifest.for_activity("service_development") if e.due]
    assert report.anonymised_rows >= len(anonymised) > 0
    assert report.linkable_rows == 0
    run_id = demo.control.ledger.runs("service_development")[-1].run_id
    [verified] = [
        e.document["body"]
        for e in demo.control.ledger.entries(with_blob=False)
        if e.kind == "run_verified" and e.run_id == run_id
    ]
    assert verified["success"] is True and verified["linkable_rows"] == 0
    assert verified["small_groups"] >= 1  # the demo's few anonymised rows are reported, not hidden


def test_second_run_deletes_nothing_new(demo):
    assert run_dag("recruitment").state == "success"  # the first run, if no test ran it yet
    before = demo.control.ledger.head()
    assert run_dag("recruitment").state == "success"
    finished = demo.last_run("recruitment")
    assert finished["outcome"] == "nothing_to_do"
    assert finished["counts"]["applied"] == 0
    assert demo.control.ledger.head()[0] > before[0]  # the run itself is still recorded
    assert demo.control.ledger.verify().ok


def test_verification_catches_remaining_and_falsely_claimed_records(demo):
    from include.retention import connections, verification

    chatbot = load_catalogue()["chatbot"]  # not enforced yet: due records remain
    source = connections.source_engine(chatbot.source.conn_id)
    before = verification.verify_sql(chatbot, AS_OF, None, source=source, control=demo.control)
    assert not before.success
    assert before.remaining_due == sum(e.due for e in demo.manifest.for_activity("chatbot"))

    recruitment = load_catalogue()["recruitment"]
    run = next(
        r for r in demo.control.ledger.runs("recruitment") if r.finished["outcome"] == "completed"
    )
    source = connections.source_engine(recruitment.source.conn_id)
    honest = verification.verify_sql(
        recruitment, AS_OF, run.run_id, source=source, control=demo.control
    )
    assert honest.success and honest.claims_checked > 0 and honest.false_claims == 0
    deleted = next(e for e in demo.manifest.for_activity("recruitment", kind="row") if e.due)
    table = sa.Table("candidates", sa.MetaData(), autoload_with=source)
    with source.begin() as conn:  # the record comes back: the evidence is now false
        columns = {
            c.name: AS_OF.replace(tzinfo=None) if isinstance(c.type, sa.DateTime) else "restored"
            for c in table.columns
            if not c.nullable
        }
        conn.execute(sa.insert(table).values(columns | {"id": deleted.pk, "hired": True}))
    try:
        caught = verification.verify_sql(
            recruitment, AS_OF, run.run_id, source=source, control=demo.control
        )
        assert not caught.success and caught.false_claims == 1
    finally:
        with source.begin() as conn:
            conn.execute(sa.delete(table).where(table.c.id == deleted.pk))


def test_dry_run_changes_nothing(demo):
    entries, alive_before = survivors(demo, "chatbot")
    assert run_dag("chatbot", conf={"dry_run": True}).state == "success"
    assert demo.last_run("chatbot")["outcome"] == "dry_run"
    assert survivors(demo, "chatbot")[1] == alive_before == entries


# --- the safety gate: nothing is deleted until a person approves -------------------------


@pytest.fixture
def strict_catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # a period and a deadline rule
    edits = dict.fromkeys(("demo_process", "building_access"), strict_safety)
    folder = edited_catalogue(tmp_path / "policies", edits)
    monkeypatch.setenv("RETENTION_CATALOGUE_DIR", str(folder))
    return folder


class _Inbox:
    """An SMTP server's handler (aiosmtpd) that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 Message accepted"


@pytest.fixture
def smtp_inbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """A real SMTP server on a free loopback port, configured as ``retention_smtp``."""
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = _Inbox()
    server = Controller(inbox, hostname="127.0.0.1", port=port)
    server.start()
    extra = {"disable_ssl": True, "disable_tls": True, "from_email": "retention@example.com"}
    connection = {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_SMTP", json.dumps(connection))
    monkeypatch.setenv("AIRFLOW_VAR_RETENTION_ALERT_EMAIL", "dpo@example.com")
    try:
        yield inbox.messages
    finally:
        server.stop()


def _mail(envelope: Any) -> tuple[str, str]:
    message = email.message_from_bytes(envelope.content, policy=email.policy.default)
    body = next(p for p in message.walk() if p.get_content_type() == "text/html")
    return str(message["Subject"]), html.unescape(body.get_content())


def _answer_approval(dag_id: str, chosen: str, user: str, stop: threading.Event) -> None:
    """Respond to the approval task the way the UI's API does, once it waits for input."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import handle_event_submit
    from airflow.sdk import timezone
    from airflow.triggers.base import TriggerEvent
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    while not stop.is_set():
        with create_session() as session:
            ti = session.scalars(
                sa.select(TaskInstance).where(
                    TaskInstance.dag_id == dag_id,
                    TaskInstance.task_id == "approve",
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                )
            ).first()
            detail = (
                ti
                and session.scalars(sa.select(HITLDetail).where(HITLDetail.ti_id == ti.id)).first()
            )
            if ti is not None and detail is not None:
                detail.responded_by = {"id": user, "name": user}
                detail.responded_at = timezone.utcnow()
                detail.chosen_options = [chosen]
                detail.params_input = {}
                event = TriggerEvent(detail.as_resume_event_payload())
                handle_event_submit(event, task_instance=ti, session=session)
                return
        time.sleep(0.5)


def _run_answered(activity_id: str, chosen: str, user: str) -> Any:
    stop = threading.Event()
    answer = threading.Thread(
        target=_answer_approval, args=(f"retention_{activity_id}", chosen, user, stop)
    )
    answer.start()
    try:
        return run_dag(activity_id)
    finally:
        stop.set()
        answer.join()


@ON_SQLITE
def test_gated_run_deletes_nothing_until_approved(demo, strict_catalogue):
    entries, alive_before = survivors(demo, "demo_process")
    assert sum(e.due for e in entries) > 1  # over the strict limit of one row per run

    unanswered = run_dag("demo_process", mark_success_pattern="approve")
    assert unanswered.state == "success"
    assert demo.last_run("demo_process")["outcome"] == "approval_required"
    assert survivors(demo, "demo_process")[1] == alive_before

    rejected = _run_answered("demo_process", "Reject", "dpo.anna")
    assert rejected.state == "success"
    assert demo.last_run("demo_process")["outcome"] == "approval_required"
    assert survivors(demo, "demo_process")[1] == alive_before

    approved = _run_answered("demo_process", "Approve", "dpo.anna")
    assert approved.state == "success"
    run = demo.control.ledger.runs("demo_process")[-1]
    assert run.header["approved_by"] == "dpo.anna"
    assert run.finished["outcome"] == "completed"
    _, alive = survivors(demo, "demo_process")
    assert {e.pk for e in alive} == {e.pk for e in entries if not e.due}


@ON_SQLITE
def test_no_escalation_when_no_policy_deadline_is_at_stake(demo, strict_catalogue, smtp_inbox):
    assert run_dag("demo_process", mark_success_pattern="approve").state == "success"
    assert not load_catalogue()["demo_process"].deadlines
    assert smtp_inbox == []


@ON_SQLITE
def test_a_gated_run_with_a_deadline_at_stake_escalates(demo, strict_catalogue, smtp_inbox):
    """building_access deletes "direkt": held back by the gate, the records miss the deadline."""
    entries = demo.manifest.for_activity("building_access")
    due = sum(e.due for e in entries)
    assert due > 1  # over the strict limit of one row per run
    approved = _run_answered("building_access", "Approve", "dpo.anna")
    assert approved.state == "success"
    [envelope] = smtp_inbox
    assert envelope.rcpt_tos == ["dpo@example.com"]
    subject, body = _mail(envelope)
    assert "ESCALATION" in subject and "Building access" in subject
    assert "2026-11-25 00:00" in subject  # the nightly run of 24 Nov is the last before it
    assert f"{due} records: immediately when the badge holder's service relationship ends" in body
    assert "Policy deadlines at stake:" in body  # the approval text names them too
    _, alive = survivors(demo, "building_access")
    assert {e.pk for e in alive} == {e.pk for e in entries if not e.due}


@ON_SQLITE
def test_runs_leave_an_asset_event_with_counts_and_no_personal_data_in_xcoms(demo):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    run = run_dag("booking_system")
    assert run.state == "success"
    subjects = [e.subject for e in demo.manifest.for_activity("booking_system") if e.subject]
    assert subjects, "the demo records must name their data subjects"
    with create_session() as session:
        event = session.scalars(
            sa.select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "retention_booking_system")
            .order_by(AssetEvent.id.desc())
        ).first()
        xcoms = session.scalars(
            sa.select(XComModel.value).where(
                XComModel.dag_id == "retention_booking_system", XComModel.run_id == run.run_id
            )
        ).all()
    assert event is not None and event.extra["outcome"] == "completed"
    assert event.extra["counts"]["applied"] == sum(
        e.due for e in demo.manifest.for_activity("booking_system")
    )
    stored = " ".join(str(value) for value in xcoms)
    assert "applied" in stored  # the XComs were found and carry the counts
    for subject in subjects:
        assert subject not in stored


# --- failure semantics: a failed step is a failed run, and someone is told -----------------


def _wait_for(inbox: list[Any], timeout: float = 20.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while not inbox and time.monotonic() < deadline:
        time.sleep(0.2)
    return inbox


def _task_states(run: Any) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.scalars(
            sa.select(TaskInstance).where(
                TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id
            )
        ).all()
        return {ti.task_id: (str(ti.state), ti.try_number) for ti in tis}


@ON_SQLITE
def test_future_as_of_is_refused_as_a_failed_run(demo):
    alive_before = survivors(demo, "newsletter")[1]
    head_before = demo.control.ledger.head()
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=15)).date().isoformat()
    run = run_dag("newsletter", conf={"as_of": future})
    assert run.state == "failed"
    states = _task_states(run)
    assert states["plan"][0] == "failed" and states["report"][0] == "failed"
    assert survivors(demo, "newsletter")[1] == alive_before  # nothing deleted
    assert demo.control.ledger.head() == head_before  # nor recorded as if it ran


@ON_SQLITE
def test_failure_notification_is_delivered_without_personal_data(demo, smtp_inbox):
    # dag.test() cannot render a DAG callback (it holds the serialized DAG); the scheduler's
    # DAG processor calls the same notifier with the failed run's context, as done here.
    dag = build_dag(load_catalogue()["newsletter"])
    run = run_dag("newsletter", conf={"as_of": "not a date"})
    assert run.state == "failed"

    class Variables:
        @staticmethod
        def get(name: str, default: str) -> str:
            return "dpo@example.com" if name == "retention_alert_email" else default

    notifier = dag.on_failure_callback
    notifier = notifier[0] if isinstance(notifier, list) else notifier
    notifier({"dag": dag, "dag_run": run, "run_id": run.run_id, "var": {"value": Variables()}})
    mails = [
        email.message_from_bytes(envelope.content, policy=email.policy.default)
        for envelope in _wait_for(smtp_inbox)
    ]
    assert len(mails) == 1, "the failure notification was not delivered"
    assert mails[0]["Subject"] == "[retention] retention_newsletter failed"
    assert mails[0]["To"] == "dpo@example.com"
    text = mails[0].as_string()
    for entry in demo.manifest.for_activity("newsletter"):
        if entry.subject:
            assert entry.subject not in text


@ON_SQLITE
def test_offset_trick_is_refused_too(demo):
    # Today's date with the last offset on earth is already tomorrow in UTC.
    today = dt.datetime.now(dt.UTC).date().isoformat()
    alive_before = survivors(demo, "marketing")[1]
    run = run_dag("marketing", conf={"as_of": f"{today}T23:59:59-12:00"})
    assert run.state == "failed"
    assert survivors(demo, "marketing")[1] == alive_before


@ON_SQLITE
def test_bad_as_of_fails_at_once_without_retries(demo):
    dag = build_dag(load_catalogue()["crm"])
    assert dag.get_task("plan").retries >= 1  # retried if it were a transient fault
    started = time.monotonic()
    run = dag.test(run_conf={"as_of": "next tuesday", "dry_run": False})
    assert run.state == "failed"
    assert _task_states(run)["plan"] == ("failed", 1)  # one try, no retry wait
    assert time.monotonic() - started < 120


@ON_SQLITE
def test_a_dry_run_may_look_ahead_and_records_who_asked(demo):
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).date().isoformat()
    entries, alive_before = survivors(demo, "customer_success")
    run = run_dag("customer_success", conf={"as_of": future, "dry_run": True})
    assert run.state == "success"
    assert survivors(demo, "customer_success")[1] == alive_before == entries
    header = demo.control.ledger.runs("customer_success")[-1].header
    assert header["dry_run"] is True and header["as_of"].startswith(future)
    assert header["origin"]["dag_id"] == "retention_customer_success"
    assert header["origin"]["run_id"] == run.run_id
    assert header["origin"]["run_type"] == "manual"  # dag.test() triggers a manual run
    assert "triggered_by" in header["origin"]
