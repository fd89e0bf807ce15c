"""Builds the data-subject-request DAGs and the daily ``dsr_deadlines`` DAG. Wiring only: the
work is in ``dsr``.

    receive ──► <the request's work> ──► respond (all_done)

``receive`` validates the trigger form, pseudonymises the identifiers and registers the request
(Art. 12(3) deadline); a malformed form fails it at once, without retries, and nothing is
written. ``respond`` always runs: it records the outcome in the register and fails the run when
a step failed, so the failure mail goes out. The DAGs are triggered by people (no schedule).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pendulum
from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import DAG, Asset, BaseXCom, CronTriggerTimetable, Param, TriggerRule, task

from include.retention.dag_factory import FAILED_STATES, run_step
from include.retention.escalation import ALERT_TO, SMTP_CONN_ID
from include.retention.subject_requests import REQUEST_KINDS

TIMEZONE = "Europe/Stockholm"
START_DATE = pendulum.datetime(2026, 1, 1, tz=TIMEZONE)
DEADLINE_DAG_ID = "dsr_deadlines"
REAPPLY_DAG_ID = "dsr_reapply"
DEADLINE_SCHEDULE = "0 7 * * *"  # every morning, Stockholm time
WARNING_DAYS = "{{ var.value.get('dsr_deadline_warning_days', '7') }}"
# A personnummer as people write it; the check digit and the date are checked by `receive`.
# [0-9], not \d: Python's \d takes any script's digits, which `receive` refuses.
PNR_PATTERN = r"^(\s*([0-9]{2})?[0-9]{6}[-+]?[0-9]{4}\s*)?$"
PHONE_PATTERN = r"^[\s\d+\-()./]*$"


def dag_id_for(kind: str) -> str:
    return f"dsr_{kind}"


def asset_for(kind: str) -> Asset:
    return Asset(name=dag_id_for(kind), group="gdpr-dsr")


def identifier_params() -> dict[str, Param]:
    """The person: at least one identifier (checked by ``receive``; the form checks shapes)."""
    optional = ["null", "string"]
    return {
        "email": Param(None, type=optional, maxLength=320, title="E-post / e-mail",
                       description="e.g. anna.berg@example.se (case and spaces do not matter)"),
        "phone": Param(None, type=optional, maxLength=40, pattern=PHONE_PATTERN,
                       title="Telefon / phone",
                       description="e.g. 070-123 45 67 or +46 70 123 45 67"),
        "personnummer": Param(None, type=optional, maxLength=20, pattern=PNR_PATTERN,
                              title="Personnummer / samordningsnummer",
                              description="YYYYMMDD-NNNN or YYMMDD-NNNN (checksum is checked)"),
        "customer_id": Param(None, type=optional, maxLength=64, title="Kundnummer / customer id",
                             description="e.g. K10012"),
        "received_on": Param(None, type=optional, format="date",
                             title="Mottagen / received on",
                             description="The day the request arrived (YYYY-MM-DD); empty:"
                             " today. The one-month deadline counts from it."),
    }  # fmt: skip


def kind_params(kind: str) -> dict[str, Param]:
    from include.retention.dsr import OBJECTION_SCOPES, RESTRICTION_GROUNDS

    if kind == "restriction":
        return {
            "action": Param("place", enum=["place", "lift"], title="Place or lift",
                            description="lift: release the person's restriction holds (tell"
                            " them first, Art. 18(3))"),
            "ground": Param("accuracy_contested", enum=list(RESTRICTION_GROUNDS),
                            title="Ground (Art. 18(1))",
                            values_display=RESTRICTION_GROUNDS),
        }  # fmt: skip
    if kind == "objection":
        return {
            "scope": Param("direct_marketing", enum=list(OBJECTION_SCOPES),
                           title="Objection to", values_display=OBJECTION_SCOPES),
        }  # fmt: skip
    if kind == "rectification":
        return rectification_params()
    return {}


def rectification_params() -> dict[str, Param]:
    """Art. 16: the fields to correct, by their exact names in the systems, and new values."""
    from include.retention.dsr import CORRECTIONS, FIELD_NAME, MAX_RECTIFIED_FIELDS

    return {
        CORRECTIONS: Param(
            None, type=["null", "object"], maxProperties=MAX_RECTIFIED_FIELDS,
            propertyNames={"pattern": f"^{FIELD_NAME.pattern}$"},
            additionalProperties={"type": ["string", "number", "boolean", "null"]},
            title="Rättade uppgifter / corrected fields",
            description='JSON: field name -> new value, e.g. {"last_name": "Berg"}; names as'
            " the systems have them (the register extract shows them). Every system holding"
            " the field is corrected; values are checked against the field's type.",
        ),
    }  # fmt: skip


def doc_md(kind: str) -> str:
    article, sv, en = REQUEST_KINDS[kind]
    return (
        f"# Data-subject request: {en} ({article}) — {sv}\n\n"
        "Trigger with the form (*Trigger DAG* ▸ the form): give at least one identifier of the"
        " person. `receive` checks the form (e-mail syntax, phone number, the personnummer's"
        " check digit) and refuses a malformed request at once, changing nothing. It then"
        " pseudonymises the identifiers: from there on the person is known only by keyed"
        " references, in the request register (control database), the ledger, XComs and logs."
        "\n\nThe request is registered with its Art. 12(3) deadline (one month from receipt);"
        " `dsr_deadlines` mails the open requests close to it every morning."
    )


def _common(kind: str) -> dict[str, Any]:
    return {
        "dag_id": dag_id_for(kind),
        "dag_display_name": f"DSR: {REQUEST_KINDS[kind][2]} ({REQUEST_KINDS[kind][0]})",
        "description": f"Data-subject request: {REQUEST_KINDS[kind][2]} ({REQUEST_KINDS[kind][0]})",
        "doc_md": doc_md(kind),
        "start_date": START_DATE,
        "catchup": False,
        "is_paused_upon_creation": False,
        "tags": ["gdpr", "dsr", f"dsr:{kind}"],
        "params": identifier_params() | kind_params(kind),
        "default_args": {"owner": "dataskydd", "retries": 2,
                         "retry_delay": dt.timedelta(minutes=2)},
        "on_failure_callback": SmtpNotifier(
            to=ALERT_TO, smtp_conn_id=SMTP_CONN_ID, subject=f"[dsr] {dag_id_for(kind)} failed"
        ),
    }  # fmt: skip


# What each kind does after `receive`: a function (received, params, user) -> result.
Work = Callable[[str, dict[str, Any], dict[str, Any], str], dict[str, Any]]


def _restrict(kind: str, received: dict[str, Any], params: dict[str, Any], user: str) -> Any:
    from include.retention import dsr

    return dsr.restrict(received, params, user=user)


def _suppress(kind: str, received: dict[str, Any], params: dict[str, Any], user: str) -> Any:
    from include.retention import dsr

    return dsr.suppress(kind, received, user=user)


def _access(kind: str, received: dict[str, Any], params: dict[str, Any], user: str) -> Any:
    from include.retention import dsr

    return dsr.access(received)


def _portability(kind: str, received: dict[str, Any], params: dict[str, Any], user: str) -> Any:
    from include.retention import dsr

    return dsr.portability(received)


def _rectify(kind: str, received: dict[str, Any], params: dict[str, Any], user: str) -> Any:
    from include.retention import dsr

    return dsr.rectify(received, params, user=user)


def _erase(kind: str, received: dict[str, Any], params: dict[str, Any], user: str) -> Any:
    from include.retention import dsr

    return dsr.erase(received, user=user)


def keeping_partial(work: Work, ti: Any) -> Work:
    """``work``; when it did part of its work and failed (:class:`PartlyDone`), what it did is
    kept as the task's result before it fails, so ``respond`` records and tells it."""

    def step(kind: str, received: dict[str, Any], params: dict[str, Any], user: str) -> Any:
        from include.retention.errors import PartlyDone

        try:
            return work(kind, received, params, user)
        except PartlyDone as exc:
            ti.xcom_push(BaseXCom.XCOM_RETURN_KEY, exc.result)
            raise

    return step


WORK: dict[str, tuple[str, Work]] = {
    "access": ("extract", _access),
    "portability": ("export", _portability),
    "rectification": ("rectify", _rectify),
    "erasure": ("erase", _erase),
    "restriction": ("restrict", _restrict),
    "objection": ("suppress", _suppress),
    "consent_withdrawal": ("suppress", _suppress),
}


def build_dag(kind: str) -> DAG:
    """The DAG of one request kind."""
    with DAG(schedule=None, **_common(kind)) as dag:
        _wire(kind)
    return dag


def _wire(kind: str) -> None:
    step_id, work = WORK[kind]

    @task(task_id="receive")
    def receive(params: dict[str, Any] | None = None, dag_run: Any = None) -> dict[str, Any]:
        from include.retention import dsr

        return run_step(
            dsr.receive, kind, params or {}, user=dsr.filed_by(dag_run), dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
        )  # fmt: skip

    @task(task_id=step_id)
    def act(
        received: dict[str, Any], params: dict[str, Any] | None = None, dag_run: Any = None,
        ti: Any = None,
    ) -> dict[str, Any]:  # fmt: skip
        from include.retention import dsr

        return run_step(keeping_partial(work, ti), kind, received, params or {},
                        dsr.filed_by(dag_run))  # fmt: skip

    @task(task_id="respond", trigger_rule=TriggerRule.ALL_DONE, outlets=[asset_for(kind)])
    def respond(ti: Any = None, dag_run: Any = None, outlet_events: Any = None) -> dict[str, Any]:
        from include.retention import dsr

        steps = ["receive", step_id]
        states = ti.get_task_states(
            dag_id=dag_run.dag_id, task_ids=steps, run_ids=[dag_run.run_id]
        ).get(dag_run.run_id, {})
        failed = sorted(step for step, state in states.items() if state in FAILED_STATES)
        received = ti.xcom_pull(task_ids="receive")
        summary = run_step(
            dsr.respond, received, {step_id: ti.xcom_pull(task_ids=step_id)}, failed,
            user=dsr.filed_by(dag_run),
        )  # fmt: skip
        outlet_events[asset_for(kind)].extra = summary
        return summary

    received: Any = receive()
    act(received) >> respond()


def build_deadlines() -> DAG:
    """``dsr_deadlines``: every morning, mail the open requests close to their deadline."""
    with DAG(
        dag_id=DEADLINE_DAG_ID,
        dag_display_name="DSR: deadlines (Art. 12(3))",
        description="Mails the data-subject requests due within a week, and overdue ones",
        doc_md=(
            "# Data-subject request deadlines\n\nEvery morning (07:00 Stockholm) lists the open"
            " requests of the request register due within `dsr_deadline_warning_days` days"
            " (Variable, default 7) or overdue, and mails them to the alert recipient"
            " (connection `retention_smtp`, Variable `retention_alert_email`). The mail names"
            " requests by number (DSR-N), kind and dates only: no personal data."
        ),
        schedule=CronTriggerTimetable(DEADLINE_SCHEDULE, timezone=TIMEZONE),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=False,
        tags=["gdpr", "dsr"],
        default_args={"owner": "dataskydd", "retries": 2, "retry_delay": dt.timedelta(minutes=5)},
    ) as dag:

        @task(task_id="notify")
        def notify(warning_days: str) -> dict[str, Any]:
            from airflow.sdk import get_current_context

            from include.retention import dsr

            report = run_step(dsr.deadlines, int(warning_days))
            if report["near"]:
                subject, body = dsr.deadline_mail(report)
                SmtpNotifier(
                    to=ALERT_TO, smtp_conn_id=SMTP_CONN_ID, subject=subject, html_content=body
                )(get_current_context())
            return report

        notify(WARNING_DAYS)
    return dag


def reapply_params() -> dict[str, Param]:
    from include.retention.catalogue import load_valid
    from include.retention.erasure import systems

    return {
        "system": Param(None, type="string", enum=systems(load_valid()[0]),
                        title="Restored system / återställt system",
                        description="The system restored from a backup: every recorded erasure"
                        " and the suppression list are applied to it again"),
    }  # fmt: skip


def build_reapply() -> DAG:
    """``dsr_reapply``: after a backup restore, erase again from the restored system everyone
    the ledger records as erased, and apply the suppression list (triggered with the system)."""
    with DAG(
        dag_id=REAPPLY_DAG_ID,
        dag_display_name="DSR: re-apply erasures after a restore",
        description="Re-applies recorded erasures and the suppression list to a restored system",
        doc_md=(
            "# Re-apply erasures after a backup restore\n\nTrigger with the restored system."
            " Every erasure the ledger records as completed (by keyed subject reference) and"
            " the suppression list (consent-scope entries to consent-based activities,"
            " direct-marketing objections to those and to direct-marketing activities) are"
            " applied again to each dataset of that system, through the run lifecycle: evidence"
            " in the ledger (action `erasure`, origin `reapply`), holds honoured, the Art."
            " 17(3) exceptions kept. Idempotent: run it again and it finds nothing."
        ),
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=False,
        tags=["gdpr", "dsr"],
        params=reapply_params(),
        default_args={"owner": "dataskydd", "retries": 2,
                      "retry_delay": dt.timedelta(minutes=2)},
        on_failure_callback=SmtpNotifier(
            to=ALERT_TO, smtp_conn_id=SMTP_CONN_ID, subject=f"[dsr] {REAPPLY_DAG_ID} failed"
        ),
    ) as dag:  # fmt: skip

        @task(task_id="reapply", outlets=[Asset(name=REAPPLY_DAG_ID, group="gdpr-dsr")])
        def reapply(
            params: dict[str, Any] | None = None, dag_run: Any = None, outlet_events: Any = None
        ) -> dict[str, Any]:
            from include.retention import dsr

            origin = {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id,
                      "run_type": str(getattr(dag_run, "run_type", "") or "") or None}  # fmt: skip
            result = run_step(
                dsr.reapply, (params or {}).get("system"), user=dsr.filed_by(dag_run),
                origin=origin,
            )  # fmt: skip
            outlet_events[Asset(name=REAPPLY_DAG_ID, group="gdpr-dsr")].extra = {
                k: result[k] for k in ("system", "erased", "found", "erasures_recorded")
            }
            return result

        reapply()
    return dag


def build_all(only: str | None = None) -> dict[str, DAG]:
    """Every DSR DAG by id (with ``only``: just that one, when it is one of them)."""
    kinds = {dag_id_for(kind): kind for kind in WORK}
    builders = {DEADLINE_DAG_ID: build_deadlines, REAPPLY_DAG_ID: build_reapply}
    wanted = [only] if only in kinds or only in builders else [*kinds, *builders]
    return {
        dag_id: builders[dag_id]() if dag_id in builders else build_dag(kinds[dag_id])
        for dag_id in wanted
    }
