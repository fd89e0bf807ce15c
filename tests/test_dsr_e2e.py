"""Data-subject requests end to end through Airflow's real scheduler (LocalExecutor), triggered
through the REST API as the UI's form does, on the seeded demo systems (SQL, S3, the SaaS API).

A person with a due recruitment record asks for restriction: the next retention run keeps
their records and deletes the others that are due. A consent withdrawal puts them on the
suppression list (and searches the consent-based activities at once: they are in none) and a
re-import of them is refused. Malformed requests are refused (by the
form's schema at trigger time, or by ``receive``'s checks at once, without retries) and change
nothing. A person put in many systems asks for erasure: they are erased everywhere except
where the bookkeeping obligation or a legal hold keeps them (recorded with the reason); then a
backup of one system is restored (their rows come back) and ``dsr_reapply`` erases them again.
A newsletter subscriber asks for a portability export (their consent-based records only; the
recruitment person's export is empty: legitimate interest) and a rectification of their last
name (a value of the wrong type first: refused, nothing changed), then withdraws their
consent: the withdrawal itself removes them from the newsletter at once, and the newsletter's
next retention run finds nothing more of them. The identifiers and the corrected
value are then searched for in every XCom, asset event, task log file, the audit log and the
ledger: they are in none of them.
"""

from __future__ import annotations

import csv
import datetime as dt
import email
import json
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import pytest
import sqlalchemy as sa

from include.demo.airflow_stack import AirflowApi, AirflowStack, StackConfig, free_port
from include.demo.embedded_s3 import EmbeddedS3
from include.demo.manifest import Expectation, ManifestEntry
from include.demo.run import DEPLOYMENT_SETUP, ROOT, DemoPaths, environment
from include.demo.saas_server import SaasServer
from include.demo.seed import place_holds, seed_demo
from include.retention.catalogue import load_catalogue
from include.retention.dag_factory import dag_id_for
from include.retention.errors import RetentionError
from include.retention.identifiers import normalise
from include.retention.pseudonym import record_ref, subject_ref
from include.retention.run_record import read_run
from include.retention.runs import Control
from include.retention.subject_requests import RequestRegister, local_date
from include.retention.suppression import SuppressionList
from tests.dbs import fresh_pg_database
from tests.demo_checks import Demo, readable_mail

pytestmark = pytest.mark.scheduler

AS_OF = dt.datetime(2026, 11, 24, 1, 30, tzinfo=dt.UTC)
ACTIVITY = "recruitment"
RUN_TIMEOUT = 240.0
ALERT_TO = "dsr-alerts@example.com"
DAG_IDS = {  # the runs the tests look at, by name
    "restriction": "dsr_restriction",
    "retention": dag_id_for(ACTIVITY),
    "withdrawal": "dsr_consent_withdrawal",
    "malformed": "dsr_objection",
    "access": "dsr_access",
    "deadlines": "dsr_deadlines",
    "export": "dsr_portability",
    "export_li": "dsr_portability",
    "rectify_bad": "dsr_rectification",
    "rectify": "dsr_rectification",
    "withdrawal_subscriber": "dsr_consent_withdrawal",
    "newsletter": dag_id_for("newsletter"),
    "erasure": "dsr_erasure",
    "reapply": "dsr_reapply",
}
# The subscriber's new last name (ASCII, so an escaped JSON copy could not hide from the scan).
CORRECTED = "Corrected-" + secrets.token_hex(4)
ERASED = "erik.manga-system@example.se"  # the erasure's person, put in many systems
# activity -> what the erasure should do with the person's record there
PLACES = {
    "crm": "erased", "marketing": "erased", "newsletter": "erased",
    "customer_support": "erased",  # report only by retention: still erased on request
    "sales_leads": "erased",  # the SaaS API
    "supplier_register": "legal_obligation",  # bookkeeping: kept, with the reason
    "event_registration": "legal_hold",  # a record hold on it: kept
}  # fmt: skip
RESTORED = "crm"  # the system restored from a backup: its rows of the person come back
ARRIVED_DAYS_AGO = 28  # due within the deadline mail's 7 days


@dataclass
class Mailbox:
    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@dataclass
class Stack:
    stack: AirflowStack
    api: AirflowApi
    demo: Demo
    key: bytes
    metadata_url: str
    mailbox: Mailbox
    person: ManifestEntry
    saas: Any = None  # the SaaS API's Store
    copies: dict[str, ManifestEntry] = field(default_factory=dict)  # the erased person's rows
    runs: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (run id, state)
    subscriber: Any = None  # a newsletter recipient (ManifestEntry) not yet due
    rows: dict[str, Any] = field(default_factory=dict)  # their row as it was, by moment

    def trigger(self, name: str, conf: dict[str, Any]) -> None:
        self.runs[name] = (self.api.trigger(DAG_IDS[name], conf), "")

    def wait(self, *names: str) -> None:
        keys = {name: (DAG_IDS[name], self.runs[name][0]) for name in names}
        states = self.api.wait_for_runs(keys.values(), timeout=RUN_TIMEOUT)
        self.runs |= {name: (key[1], states[key]) for name, key in keys.items()}


def _requests(airflow: Stack) -> None:
    """The runs the tests look at: a restriction, then (once it holds) the retention run, a
    consent withdrawal that arrived four weeks ago and a malformed objection."""
    subject = airflow.person.subject
    airflow.trigger("restriction", {
        "email": _spelled_differently(subject), "action": "place",
        "ground": "accuracy_contested",
    })  # fmt: skip
    airflow.wait("restriction")
    airflow.trigger("retention", {"as_of": AS_OF.isoformat(), "dry_run": False})
    arrived = dt.date.today() - dt.timedelta(days=ARRIVED_DAYS_AGO)
    airflow.trigger("withdrawal", {"email": subject, "received_on": arrived.isoformat()})
    airflow.trigger("access", {"email": _spelled_differently(subject)})
    airflow.trigger("malformed", {
        "personnummer": "811218-9875", "email": "anna(at)example.se",
        "scope": "direct_marketing",
    })  # fmt: skip
    airflow.wait("retention", "withdrawal", "malformed", "access")
    _erasure_and_restore(airflow)  # first: it copies seeded rows the newsletter run deletes
    _portability_and_rectification(airflow)


def _portability_and_rectification(airflow: Stack) -> None:
    """The subscriber's export and corrections, then their consent withdrawal (which removes
    their row) and the newsletter's retention run (their row is looked at before it goes)."""
    subscriber = airflow.subscriber
    airflow.trigger("export", {"email": _spelled_differently(subscriber.subject)})
    airflow.trigger("export_li", {"email": airflow.person.subject})
    airflow.trigger("rectify_bad", {"email": subscriber.subject,
                                    "corrections": {"last_name": 12345}})  # fmt: skip
    airflow.wait("export", "export_li", "rectify_bad")
    airflow.rows["before"] = airflow.demo.row(subscriber)
    airflow.trigger("rectify", {"email": _spelled_differently(subscriber.subject),
                                "corrections": {"last_name": CORRECTED}})  # fmt: skip
    airflow.wait("rectify")
    airflow.rows["rectified"] = airflow.demo.row(subscriber)
    airflow.trigger("withdrawal_subscriber", {"email": subscriber.subject})
    airflow.wait("withdrawal_subscriber")
    airflow.trigger("newsletter", {"as_of": AS_OF.isoformat(), "dry_run": False})
    airflow.wait("newsletter")


def _subscriber(entries: list[ManifestEntry], held: set[str | None]) -> ManifestEntry:
    """A newsletter recipient not yet due whose person is under no hold."""
    return next(
        e for e in entries
        if e.expectation == Expectation.kept and e.kind == "row" and e.subject
        and e.hold is None and e.subject not in held
    )  # fmt: skip


def _subject_field(activity_id: str) -> str:
    return load_catalogue()[activity_id].source.lookup["email"]


def _copy_for(airflow: Stack, activity_id: str) -> ManifestEntry:
    """A copy of a seeded record of ``activity_id`` that belongs to ``ERASED`` (new key)."""
    seeded = next(e for e in airflow.demo.manifest.for_activity(activity_id) if e.hold is None)
    column = _subject_field(activity_id)
    if seeded.kind == "record":
        fields = json.loads(airflow.saas.get(seeded.dataset, str(seeded.pk)) or "{}")
        copy_id = f"{seeded.pk}-erasure"
        airflow.saas.upsert(seeded.dataset, [(copy_id, json.dumps(fields | {column: ERASED}))])
        return ManifestEntry(activity_id, seeded.system, seeded.dataset, copy_id,
                             seeded.expectation, kind="record", subject=ERASED)  # fmt: skip
    copy = ManifestEntry(activity_id, seeded.system, seeded.dataset, int(seeded.pk) + 100_000,
                         seeded.expectation, subject=ERASED)  # fmt: skip
    _insert(airflow, copy, airflow.demo.row(seeded) | {column: ERASED})
    return copy


def _insert(airflow: Stack, entry: ManifestEntry, row: dict[str, Any]) -> None:
    engine = sa.create_engine(airflow.demo.urls[entry.system])
    table = sa.Table(entry.dataset, sa.MetaData(), autoload_with=engine)
    pk = next(iter(table.primary_key.columns)).name
    with engine.begin() as conn:
        conn.execute(table.insert().values(row | {pk: entry.pk}))
    engine.dispose()


def _erasure_and_restore(airflow: Stack) -> None:
    """The person in many systems asks for erasure; then a backup of one system is restored
    (their rows there come back) and the erasures are re-applied to it."""
    rows = {}
    for activity_id in PLACES:
        copy = _copy_for(airflow, activity_id)
        airflow.copies[activity_id] = copy
        if copy.kind == "row" and copy.system == RESTORED:
            rows[activity_id] = airflow.demo.row(copy)
    held = airflow.copies["event_registration"]
    airflow.demo.control.holds.place_record_hold(
        held.system, held.dataset, held.pk, kind="legal_hold", reason="dispute", placed_by="legal"
    )
    airflow.trigger("erasure", {"email": _spelled_differently(ERASED)})
    airflow.wait("erasure")
    for activity_id, row in rows.items():  # the restore brings their rows back
        _insert(airflow, airflow.copies[activity_id], row)
    airflow.trigger("reapply", {"system": RESTORED})
    airflow.wait("reapply")


def _person(entries: list[ManifestEntry]) -> ManifestEntry:
    """A due, unheld recruitment record whose person has no other due record held."""
    held = {e.subject for e in entries if e.hold is not None}
    return next(
        e for e in entries
        if e.due and e.kind == "row" and e.subject and e.hold is None and e.subject not in held
    )  # fmt: skip


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from aiosmtpd.controller import Controller

    root = tmp_path_factory.mktemp("dsr-e2e")
    key = secrets.token_urlsafe(32)
    mailbox, smtp_port = Mailbox(), free_port()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    saas = SaasServer(root / "saas.db", secrets.token_urlsafe(24))
    with (
        EmbeddedS3() as s3,
        saas,
        fresh_pg_database("rt_ctl") as control_url,
        fresh_pg_database("rt_af") as metadata_url,
    ):
        seeded = seed_demo(AS_OF, root / "demo", s3_client=s3.client(), saas_store=saas.store_path)
        control = Control.open(control_url, key.encode())
        place_holds(control.holds, seeded.hold_requests())
        env = environment(DemoPaths(root), key, s3.endpoint_url, saas.connection())
        env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW_") or "_CONN_" in k}
        env |= {
            "RETENTION_CONTROL_DB_URL": control_url,
            "AIRFLOW_CONN_RETENTION_SMTP": json.dumps({
                "conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
                "extra": {"from_email": "airflow@example.com", "disable_tls": True,
                          "disable_ssl": True},
            }),
            "AIRFLOW_VAR_RETENTION_ALERT_EMAIL": ALERT_TO,
            "RETENTION_DSR_OUTPUT_DIR": str(root / "responses"),
        }  # fmt: skip
        config = StackConfig(
            home=root / "airflow",
            metadata_url=metadata_url,
            dags_folder=ROOT / "dags",
            project_root=ROOT,
            env=env,
            users={"admin": "admin"},
            parallelism=4,
            setup_commands=(DEPLOYMENT_SETUP,),
        )
        with AirflowStack(config) as stack:
            api = stack.api()
            api.wait_for_dags(DAG_IDS.values())
            for dag_id in DAG_IDS.values():
                api.unpause(dag_id)
            demo = Demo(root, seeded.manifest, seeded.urls, control, s3.client(), saas.store)
            person = _person(seeded.manifest.for_activity(ACTIVITY))
            running = Stack(stack, api, demo, key.encode(), metadata_url, mailbox, person,
                            saas.store)  # fmt: skip
            running.subscriber = _subscriber(
                seeded.manifest.for_activity("newsletter"),
                {e.subject for e in seeded.manifest.entries if e.hold is not None},
            )
            _requests(running)
            yield running
            api.close()
    smtp.stop()


def _spelled_differently(address: str) -> str:
    return f"  {address.upper()} "


def test_a_restriction_blocks_the_next_retention_run(airflow: Stack) -> None:
    person = airflow.person
    assert airflow.runs["restriction"][1] == "success"
    ref = subject_ref(airflow.key, normalise("email", person.subject).value)
    active = airflow.demo.control.holds.active("ats", "candidates").subjects
    assert active.get(ref) == frozenset({"restriction"})

    assert airflow.runs["retention"][1] == "success"
    entries = airflow.demo.manifest.for_activity(ACTIVITY)
    theirs = [e for e in entries if e.subject == person.subject]
    others_due = [e for e in entries if e.due and e.hold is None and e.subject != person.subject]
    assert theirs and all(airflow.demo.exists(e) for e in theirs)
    assert others_due and not any(airflow.demo.exists(e) for e in others_due)
    assert airflow.demo.last_run(ACTIVITY)["counts"]["restricted"] >= 1

    register = RequestRegister(airflow.demo.control.ledger.engine, airflow.key)
    run_id = airflow.runs["restriction"][0]
    request = next(r for r in register.requests() if r.run_id == run_id)
    assert (request.kind, request.status, request.filed_by) == ("restriction", "completed", "admin")
    assert ref in request.subject_refs


def test_consent_withdrawal_suppresses_a_reimport(airflow: Stack) -> None:
    assert airflow.runs["withdrawal"][1] == "success"
    suppressions = SuppressionList(airflow.demo.control.ledger.engine, airflow.key)
    rows = [{"email": _spelled_differently(airflow.person.subject)}, {"email": "ny@example.se"}]
    assert suppressions.admit(rows, "email", "email") == [{"email": "ny@example.se"}]
    # At once, every activity on consent was searched (all by e-mail): the person (a candidate)
    # is in none of them; each search is a ledger run naming the request.
    request = _request_of(airflow, "withdrawal")
    done = request.outcome["steps"]["suppress"]
    on_consent = sorted(a.id for a in load_catalogue() if "consent" in a.legal_bases)
    assert len(on_consent) == 6 and done["nothing_found_in"] == on_consent
    assert (done["removed"], done["kept"], done["failed_in"], done["not_searched"]) == (
        0, [], [], [],
    )  # fmt: skip
    runs = [r for r in airflow.demo.control.ledger.runs()
            if r.header["origin"].get("request") == request.ref]  # fmt: skip
    assert sorted(r.activity_id for r in runs) == on_consent
    assert [r.finished and r.finished["outcome"] for r in runs] == ["nothing_to_do"] * 6


def test_the_access_extract_lists_the_persons_records_everywhere(airflow: Stack) -> None:
    run_id, state = airflow.runs["access"]
    assert state == "success"
    register = RequestRegister(airflow.demo.control.ledger.engine, airflow.key)
    request = next(r for r in register.requests() if r.run_id == run_id)
    folder = airflow.demo.root / "responses" / request.ref
    doc = json.loads((folder / "registerutdrag.json").read_text(encoding="utf-8"))
    rows = {
        (item["källsystem"], str(record.get("id")))
        for item in doc["behandlingar"]
        for record in item["uppgifter"]
    }
    # Every designed row of the person that exists now (the retention run kept theirs: the
    # restriction) is in the extract, with its activity's legal basis.
    person = airflow.person.subject
    expected = {
        (e.system, str(e.pk)) for e in airflow.demo.manifest.entries
        if e.subject == person and e.kind == "row" and airflow.demo.exists(e)
    }  # fmt: skip
    assert expected and expected <= rows
    assert all(item["rättslig grund"] for item in doc["behandlingar"])
    # An e-mail cannot search the answering service (phone only): said, not silently skipped;
    # the booking system is run for the employer: referred there, never read.
    assert [line.split(":")[0] for line in doc["ej genomsökta system"]] == ["support_desk"]
    assert [line.split(":")[0] for line in doc["personuppgiftsbiträde"]] == ["booking"]
    assert "booking" not in {item["källsystem"] for item in doc["behandlingar"]}
    assert (folder / "registerutdrag.pdf").read_bytes().startswith(b"%PDF")
    assert oct((folder / "registerutdrag.json").stat().st_mode & 0o777) == "0o600"


def test_a_malformed_request_fails_at_once_changes_nothing_and_alerts(airflow: Stack) -> None:
    register = RequestRegister(airflow.demo.control.ledger.engine, airflow.key)
    before = register.requests()
    # The form's schema refuses what it can check at trigger time: no run is created.
    with pytest.raises(RetentionError, match="HTTP 400"):
        airflow.api.trigger("dsr_objection", {"personnummer": "12-34", "scope": "direct_marketing"})
    # A wrong check digit passes the schema; receive refuses it at once, without retries.
    run_id, state = airflow.runs["malformed"]
    assert state == "failed"
    tis = airflow.api.task_instances("dsr_objection", run_id)
    assert tis["receive"]["state"] == "failed" and tis["receive"]["try_number"] == 1
    assert tis["suppress"]["state"] == "upstream_failed"
    assert [r for r in register.requests() if r.run_id == run_id] == []
    assert register.requests() == before
    log = _task_log(airflow, "dsr_objection", run_id, "receive")
    assert "personnummer: the check digit" in log and "email: not an e-mail address" in log
    assert "811218" not in log and "anna(at)" not in log
    mails = [m for m in airflow.mailbox.messages if "dsr_objection failed" in str(m["Subject"])]
    assert mails and mails[0]["To"] == ALERT_TO
    text = readable_mail(mails[0])
    assert "dsr_objection" in text
    assert "811218" not in text and "anna(at)" not in text


def test_the_deadline_mail_names_the_request_not_the_person(airflow: Stack) -> None:
    register = RequestRegister(airflow.demo.control.ledger.engine, airflow.key)
    withdrawal = next(r for r in register.requests() if r.run_id == airflow.runs["withdrawal"][0])
    assert withdrawal.status == "completed"  # closed: not listed
    arrived = dt.date.today() - dt.timedelta(days=ARRIVED_DAYS_AGO)  # the form's received_on
    assert local_date(withdrawal.received_at) == arrived
    assert 28 <= (withdrawal.due_on - arrived).days <= 31  # one calendar month
    open_request = register.receive(
        "erasure", [normalise("email", airflow.person.subject)], filed_by="test",
        received_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=ARRIVED_DAYS_AGO),
    )  # fmt: skip
    run_id = airflow.api.trigger("dsr_deadlines", {})
    assert airflow.api.wait_for_runs([("dsr_deadlines", run_id)])[("dsr_deadlines", run_id)] == (
        "success"
    )
    mails = [m for m in airflow.mailbox.messages if "[dsr]" in str(m["Subject"])
             and "due within 7 days" in str(m["Subject"])]  # fmt: skip
    assert mails, "no deadline mail"
    text = readable_mail(mails[-1])
    assert open_request.ref in text and mails[-1]["To"] == ALERT_TO
    assert airflow.person.subject not in text and airflow.person.subject.upper() not in text


def _task_log(airflow: Stack, dag_id: str, run_id: str, task_id: str) -> str:
    logs = airflow.api.request(
        "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/1",
        params={"full_content": True},
    )  # fmt: skip
    return json.dumps(logs)


def test_the_identifier_is_in_no_xcom_asset_event_log_or_ledger(airflow: Stack) -> None:
    people = (airflow.person.subject, airflow.subscriber.subject)
    spellings = {s for p in people for s in (p, p.upper(), normalise("email", p).value)}
    spellings |= {CORRECTED, ERASED, ERASED.upper()}
    engine = sa.create_engine(airflow.metadata_url)
    with engine.connect() as conn:
        xcoms = [str(v) for (v,) in conn.execute(sa.text("SELECT value FROM xcom"))]
        events = [str(v) for (v,) in conn.execute(sa.text("SELECT extra FROM asset_event"))]
        audit_rows = conn.execute(sa.text("SELECT dag_id, extra FROM log")).all()
    engine.dispose()
    audit = [str(extra) for (_, extra) in audit_rows]
    triggers = [str(e) for (d, e) in audit_rows
                if d in ("dsr_restriction", "dsr_rectification") and "conf" in str(e)]  # fmt: skip
    assert triggers and all("***" in a for a in triggers)  # trigger bodies, identifiers masked
    assert any("dsr_rectification" in str(row) for row in audit_rows)
    assert any("subject_refs" in x for x in xcoms)  # the DSR runs' XComs are there
    assert any("DSR-" in e for e in events)  # and their asset events
    logs = [p for p in airflow.stack.config.home.rglob("*.log") if p.is_file()]
    assert any("dag_id=dsr_restriction" in str(p) for p in logs)  # the task logs are there
    assert any("dag_id=dsr_rectification" in str(p) for p in logs)
    assert any("dag_id=dsr_erasure" in str(p) for p in logs)
    assert any("dag_id=dsr_reapply" in str(p) for p in logs)
    texts = {
        "xcom": " ".join(xcoms),
        "asset events": " ".join(events),
        "audit log": " ".join(audit),
        "ledger": " ".join(str(e.document) for e in airflow.demo.control.ledger.entries()),
        **{str(p): p.read_text(errors="replace") for p in logs},
    }
    leaks = {where for where, text in texts.items() if any(s in text for s in spellings)}
    assert leaks == set()


# ------------------------------------------------------------------------------ Art. 20, 16, 7(3)


def _request_of(airflow: Stack, name: str) -> Any:
    register = RequestRegister(airflow.demo.control.ledger.engine, airflow.key)
    return next(r for r in register.requests() if r.run_id == airflow.runs[name][0])


def test_the_export_holds_the_consent_and_contract_records_only(airflow: Stack) -> None:
    assert airflow.runs["export"][1] == "success" and airflow.runs["export_li"][1] == "success"
    request = _request_of(airflow, "export")
    assert (request.kind, request.status) == ("portability", "completed")
    folder = airflow.demo.root / "responses" / request.ref
    doc = json.loads((folder / "dataportabilitet.json").read_text(encoding="utf-8"))
    subscriber = airflow.subscriber
    (newsletter,) = doc["activities"]  # the subscriber is in no other activity
    assert (newsletter["activity"], newsletter["legal_bases"]) == ("newsletter", ["consent"])
    assert [r["id"] for r in newsletter["records"]] == [subscriber.pk]
    assert newsletter["records"][0]["email"] == subscriber.subject
    with (folder / newsletter["csv"]).open(encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [(r["id"], r["email"]) for r in rows] == [(str(subscriber.pk), subscriber.subject)]
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}
    # The recruitment person's records are processed on legitimate interest: not portable
    # (the access extract lists them).
    empty = _request_of(airflow, "export_li")
    doc = json.loads((airflow.demo.root / "responses" / empty.ref / "dataportabilitet.json")
                     .read_text(encoding="utf-8"))  # fmt: skip
    assert doc["activities"] == [] and empty.status == "completed"


def test_a_value_that_does_not_fit_is_refused_and_changes_nothing(airflow: Stack) -> None:
    run_id, state = airflow.runs["rectify_bad"]
    assert state == "failed"
    tis = airflow.api.task_instances("dsr_rectification", run_id)
    assert tis["receive"]["state"] == "success"
    assert tis["rectify"]["state"] == "failed" and tis["rectify"]["try_number"] == 1
    request = _request_of(airflow, "rectify_bad")
    assert request.status == "failed"
    assert [e.kind for e in RequestRegister(airflow.demo.control.ledger.engine, airflow.key)
            .events(request.id)] == ["dsr_received", "dsr_status"]  # fmt: skip
    log = _task_log(airflow, "dsr_rectification", run_id, "rectify")
    assert "field 'last_name' takes text" in log and "nothing was changed" in log
    assert "12345" not in log
    assert airflow.rows["before"]["last_name"] not in (None, "12345", CORRECTED)
    # The form's schema refuses what it can check at trigger time (no run is created).
    with pytest.raises(RetentionError, match="HTTP 400"):
        airflow.api.trigger("dsr_rectification", {
            "email": airflow.subscriber.subject, "corrections": {"last_name": {"a": 1}},
        })  # fmt: skip


def test_the_rectification_changes_the_field_and_the_ledger_names_it(airflow: Stack) -> None:
    assert airflow.runs["rectify"][1] == "success"
    before, after = airflow.rows["before"], airflow.rows["rectified"]
    assert after["last_name"] == CORRECTED
    assert {k: v for k, v in after.items() if k != "last_name"} == {
        k: v for k, v in before.items() if k != "last_name"
    }
    request = _request_of(airflow, "rectify")
    assert request.status == "completed"
    events = RequestRegister(airflow.demo.control.ledger.engine, airflow.key).events(request.id)
    (rectified,) = [e.document["body"] for e in events if e.kind == "dsr_rectified"]
    subscriber = airflow.subscriber
    # The write-ahead ledger run of the change: the request in its origin.
    [run] = [r for r in airflow.demo.control.ledger.runs("dsr_rectification")
             if r.header["origin"] == {"reason": "rectification", "request": f"DSR-{request.id}",
                                       "dataset": "newsletter/recipients"}]  # fmt: skip
    assert run.finished is not None and run.finished["outcome"] == "completed"
    assert rectified == {
        "system": "newsletter", "dataset": "recipients", "activities": ["newsletter"],
        "fields": ["last_name"], "records": 1, "held_skipped": 0, "restricted_skipped": 0,
        "record_refs": [record_ref(airflow.key, "newsletter", "recipients", subscriber.pk).hex()],
        "run_id": run.run_id,
    }  # fmt: skip
    assert request.outcome["steps"]["rectify"]["recipients_to_notify"]  # Art. 19


def test_the_withdrawal_removes_the_subscriber_at_once_and_the_newsletter_run_finds_no_more(
    airflow: Stack,
) -> None:
    assert airflow.runs["withdrawal_subscriber"][1] == "success"
    assert airflow.runs["newsletter"][1] == "success"
    subscriber = airflow.subscriber
    assert not airflow.demo.exists(subscriber)
    kept = [e for e in airflow.demo.manifest.for_activity("newsletter")
            if not e.due and e.subject != subscriber.subject]  # fmt: skip
    assert kept and all(airflow.demo.exists(e) for e in kept)
    ledger = airflow.demo.control.ledger
    runs = [
        r for r in ledger.runs("newsletter") if r.header["origin"].get("reason") == "suppression"
    ]
    # The withdrawal's own run removed them: its origin is the dsr_consent_withdrawal DAG run.
    request = _request_of(airflow, "withdrawal_subscriber")
    (withdrawn,) = [r for r in runs if r.header["origin"]["run_id"] == request.run_id]
    assert withdrawn.header["origin"]["dag_id"] == "dsr_consent_withdrawal"
    assert withdrawn.header["origin"]["request"] == request.ref
    assert withdrawn.header["rules"] == [
        "suppression list: consent withdrawn (Art. 7(3)) or objection to direct marketing"
        " (Art. 21(3))"
    ]
    record = record_ref(airflow.key, "newsletter", "recipients", subscriber.pk)
    assert ledger.applied_refs(withdrawn.run_id, "newsletter", "recipients") == [record]
    # The response says where: removed from the newsletter, found nowhere else.
    done = request.outcome["steps"]["suppress"]
    assert (request.status, done["removed"], done["removed_from"]) == (
        "completed", 1, ["newsletter"],
    )  # fmt: skip
    (newsletter,) = [a for a in done["activities"] if a["activity"] == "newsletter"]
    assert newsletter["ledger_run_id"] == withdrawn.run_id and newsletter["removed"] == 1
    assert done["failed_in"] == [] and "newsletter" not in done["nothing_found_in"]
    # The newsletter's next retention run still runs the suppression list: nothing more left.
    (nightly,) = [r for r in runs if r.header["origin"]["run_id"] == airflow.runs["newsletter"][0]]
    assert nightly.header["origin"]["dag_id"] == "retention_newsletter"
    assert ledger.applied_refs(nightly.run_id, "newsletter", "recipients") == []
    assert nightly.finished is not None and nightly.finished["counts"]["applied"] == 0


def test_erasure_removes_the_person_everywhere_except_recorded_exceptions(airflow: Stack) -> None:
    assert airflow.runs["erasure"][1] == "success"
    request = _request_of(airflow, "erasure")
    assert (request.kind, request.status) == ("erasure", "completed")
    result = request.outcome["steps"]["erase"]
    for activity_id, fate in PLACES.items():
        # (the restored system's rows came back and were erased again: gone now as well)
        assert airflow.demo.exists(airflow.copies[activity_id]) == (fate != "erased"), activity_id
    kept = {k["reason"]: (k["records"], k["activities"]) for k in result["kept"]}
    assert kept == {
        "legal_obligation": (1, ["supplier_register"]),
        "legal_hold": (1, ["event_registration"]),
    }
    erased = sorted(a for a, fate in PLACES.items() if fate == "erased")
    assert result["erased"] == len(erased)
    assert sorted(b["activity"] for b in result["bindings"] if b["erased"]) == erased
    # Art. 19: the recipients of the activities the person was erased from
    catalogue = load_catalogue()
    expected = {r.en for a in erased for r in catalogue[a].recipients}
    assert {r["en"] for r in result["recipients_to_notify"]} == expected

    # Evidence like retention: erasure runs naming the request, the person's keyed reference
    ref = subject_ref(airflow.key, normalise("email", ERASED).value)
    evidence = airflow.demo.control.ledger.subject_batches(ref)
    runs = {r.run_id: r for r in airflow.demo.control.ledger.runs()}
    first = [e for e in evidence if e.origin.get("request") == request.ref]
    assert sorted({e.activity_id for e in first}) == erased
    assert all(runs[e.run_id].header["action"] == "erasure" for e in evidence)
    for run_id in {e.run_id for e in evidence}:  # each checked against its source
        verified = read_run(airflow.demo.control.ledger, run_id).verification
        assert verified is not None and verified["success"] is True
    assert airflow.demo.control.ledger.verify().ok


def test_reapply_after_a_restore_erases_them_again(airflow: Stack) -> None:
    run_id, state = airflow.runs["reapply"]
    assert state == "success"
    restored = [e for a, e in airflow.copies.items() if e.system == RESTORED]
    assert len(restored) == 2 and not any(airflow.demo.exists(e) for e in restored)
    ledger = airflow.demo.control.ledger
    again = [r for r in ledger.runs() if r.header["origin"].get("reapply") == RESTORED]
    assert {r.activity_id for r in again} == {"crm", "marketing"}
    assert all(r.header["origin"]["run_id"] == run_id for r in again)
    assert sum(r.finished["counts"]["applied"] for r in again if r.finished) == 2
    tis = airflow.api.task_instances("dsr_reapply", run_id)
    assert tis["reapply"]["state"] == "success" and tis["reapply"]["try_number"] == 1
