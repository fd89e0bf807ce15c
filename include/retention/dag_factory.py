"""Builds one Airflow DAG per catalogue activity. Wiring only: the work is in ``operations``.

plan → safety_gate ─┬─ approve (only when the volume limit trips) ─┐
                    └─ enforce ◄──────────────────────────────────┘ → verify → report

``enforce`` writes the ledger run (also for dry runs and report-only activities, which change
nothing). ``approve`` defaults to Reject on timeout, so silence deletes nothing. ``report``
always runs (``all_done``): it records the verification (or the rejection) in the ledger and
emits an asset event with the counts.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pendulum
from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, Asset, CronTriggerTimetable, Param, TriggerRule, task

from include.retention.catalogue import Activity, Catalogue

TIMEZONE = "Europe/Stockholm"
APPROVAL_TIMEOUT = dt.timedelta(hours=24)
START_DATE = pendulum.datetime(2026, 1, 1, tz=TIMEZONE)
ALERT_TO = "{{ var.value.get('retention_alert_email', 'dataskydd@example.com') }}"


def dag_id_for(activity_id: str) -> str:
    return f"retention_{activity_id}"


def asset_for(activity: Activity) -> Asset:
    return Asset(name=f"retention_{activity.id}", group="gdpr-retention")


def doc_md(activity: Activity) -> str:
    bases = ", ".join(basis.value for basis in activity.legal_bases)
    lines = [
        f"# {activity.name.sv} ({activity.name.en})",
        "",
        f"**Purpose:** {activity.purpose.en} — *{activity.purpose.sv}*",
        "",
        f"**Legal basis (GDPR Art. 6(1)):** {bases}",
        "",
        f"**Rule enforced:** {activity.describe_rule()}",
        "",
        f"**Policy (sv):** > {activity.policy_text_sv}",
        "",
        f"**Action:** {activity.action.kind} · **Source:** `{activity.source.system}`"
        f" via connection `{activity.source.conn_id}`",
        "",
        f"**Safety limit:** {activity.safety.max_rows} rows / {activity.safety.max_fraction}"
        " of the dataset per run; above it a person must approve (silence rejects).",
    ]
    if activity.policy_gap:
        lines += [
            "",
            "**Policy gap:** the policy states no retention period for some records;"
            " they are counted and reported, never deleted.",
        ]
    return "\n".join(lines)


def tags_for(activity: Activity) -> list[str]:
    tags = ["gdpr", "retention", f"system:{activity.source.system}"]
    tags += [f"basis:{basis.value}" for basis in activity.legal_bases]
    if activity.policy_gap:
        tags.append("policy-gap")
    return tags


def _params() -> dict[str, Param]:
    return {
        "dry_run": Param(False, type="boolean", description="Plan and report only; change nothing"),
        "as_of": Param(
            "",
            type="string",
            pattern=r"^(|\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2})?.*)?)$",
            description="Evaluate the rules at this time (ISO-8601); empty: the run's time",
        ),
    }


def build_dag(activity: Activity) -> DAG:
    """The retention DAG of one activity."""
    activity_id = activity.id
    with DAG(
        dag_id=dag_id_for(activity_id),
        description=f"Retention: {activity.name.en} — {activity.describe_rule()}"[:250],
        doc_md=doc_md(activity),
        schedule=CronTriggerTimetable(activity.schedule, timezone=TIMEZONE),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=tags_for(activity),
        params=_params(),
        default_args={
            "owner": activity.owner,
            "retries": 2,
            "retry_delay": dt.timedelta(minutes=5),
            "retry_exponential_backoff": True,
            "max_retry_delay": dt.timedelta(hours=1),
        },
        on_failure_callback=SmtpNotifier(
            to=ALERT_TO,
            smtp_conn_id="retention_smtp",
            subject=f"[retention] {dag_id_for(activity_id)} failed",
        ),
    ) as dag:
        _wire(activity)
    return dag


def _wire(activity: Activity) -> None:
    activity_id = activity.id

    @task(task_id="plan")
    def plan(params: dict[str, Any] | None = None, dag_run: Any = None) -> dict[str, Any]:
        from include.retention import operations

        return operations.plan(activity_id, params or {}, dag_run.run_after)

    @task.branch(task_id="safety_gate")
    def safety_gate(planned: dict[str, Any]) -> str:
        from include.retention import operations

        return operations.next_step(planned)

    @task(task_id="enforce", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def enforce(planned: dict[str, Any], ti: Any = None) -> dict[str, Any]:
        from include.retention import operations

        approval = ti.xcom_pull(task_ids="approve") if planned["needs_approval"] else None
        return operations.enforce(activity_id, planned, approval)

    @task(task_id="verify")
    def verify(planned: dict[str, Any], enforced: dict[str, Any]) -> dict[str, Any]:
        from include.retention import operations

        return operations.verify(activity_id, planned, enforced)

    @task(task_id="report", trigger_rule=TriggerRule.ALL_DONE, outlets=[asset_for(activity)])
    def report(ti: Any = None, outlet_events: Any = None) -> dict[str, Any]:
        from include.retention import operations

        results = {step: ti.xcom_pull(task_ids=step) for step in ("plan", "enforce", "verify")}
        summary = operations.report(activity_id, results)
        outlet_events[asset_for(activity)].extra = summary
        return summary

    approve = ApprovalOperator(
        task_id="approve",
        subject=f"Approve retention run for {activity.name.en}?",
        body="{{ ti.xcom_pull(task_ids='plan')['approval_text'] }}",
        defaults="Reject",
        response_timeout=APPROVAL_TIMEOUT,
    )

    # TaskFlow passes XComArgs where the functions declare the values they resolve to.
    planned: Any = plan()
    enforced: Any = enforce(planned)
    safety_gate(planned) >> [approve, enforced]
    approve >> enforced
    verify(planned, enforced) >> report()


def build_all(catalogue: Catalogue) -> dict[str, DAG]:
    """Every retention DAG, by DAG id."""
    return {dag_id_for(activity.id): build_dag(activity) for activity in catalogue}
