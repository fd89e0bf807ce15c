"""Builds one Airflow DAG per catalogue activity. Wiring only: the work is in ``operations``.

plan → safety_gate ─┬─ approve (only when the volume limit trips) ─┐
                    └─ partition ◄────────────────────────────────┘
partition → enforce [mapped: one per partition] → finish → verify → report

Every retention DAG has this one shape. ``partition`` (once) splits a SQL dataset of more than
the activity's ``partitioning.records_per_partition`` records into primary-key ranges and
starts the one ledger run they share; ``enforce`` is mapped over them, one task instance per
range running in parallel (each with its own lease and recovery scope, named "partition i of
n" in the UI); a smaller dataset is one instance named "whole dataset", which writes its own
ledger run (also for dry runs and report-only activities, which change nothing). ``finish``
(``all_done``, once) closes a partitioned run after every partition ended, settling first
what a dead partition left prepared. ``verify`` (once) checks the whole dataset and the run's
evidence. Each ``enforce`` instance takes a slot of the ``retention`` pool. ``approve``
defaults to Reject on timeout, so silence deletes nothing. ``report`` always runs
(``all_done``): it records the rejection in the ledger and logs the summary; when a step
failed it then fails itself, so the DAG run is failed and the failure notification goes out,
else it emits an asset event. A failed partition makes ``finish`` record the run as failed,
and ``report`` fails the DAG run.

Bad input (parameters, catalogue, connections: :class:`RetentionError`) fails a task at once;
a database or object store that cannot be reached (:class:`Unavailable`) is retried.
Retention DAGs are created unpaused: a paused one is an obligation that never runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

import pendulum
from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, Asset, CronTriggerTimetable, Param, TriggerRule, task
from airflow.sdk.exceptions import AirflowFailException

from include.retention.catalogue import Activity, Catalogue
from include.retention.deployment import ENFORCEMENT_POOL
from include.retention.errors import RetentionError, Unavailable
from include.retention.escalation import ALERT_TO, SMTP_CONN_ID, DeadlineEscalation
from include.retention.register import ACTIONS, BASIS_LABELS

TIMEZONE = "Europe/Stockholm"
APPROVAL_TIMEOUT = dt.timedelta(hours=24)
START_DATE = pendulum.datetime(2026, 1, 1, tz=TIMEZONE)
STEPS = ("plan", "safety_gate", "approve", "partition", "enforce", "finish", "verify")
FAILED_STATES = ("failed", "upstream_failed")
T = TypeVar("T")


def run_step(step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a task's work with the retry policy: a :class:`RetentionError` (bad input, nothing
    changed) fails the task at once; :class:`Unavailable` and unexpected errors are retried."""
    from include.retention.operations import named_faults

    try:
        return named_faults(step, *args, **kwargs)
    except Unavailable:
        raise
    except RetentionError as exc:
        raise AirflowFailException(str(exc)) from None


def dag_id_for(activity_id: str) -> str:
    return f"retention_{activity_id}"


def asset_for(activity: Activity) -> Asset:
    return Asset(name=f"retention_{activity.id}", group="gdpr-retention")


def display_name(activity: Activity) -> str:
    """The name a person knows the DAG by: the activity's Swedish (and English) name."""
    name = activity.name
    return name.sv if name.sv == name.en else f"{name.sv} ({name.en})"


def _safety(activity: Activity) -> str:
    limits = []
    if activity.safety.max_rows is not None:
        limits.append(f"{activity.safety.max_rows:,} records")
    if activity.safety.max_fraction is not None:
        limits.append(f"{activity.safety.max_fraction * 100:g} % of the records")
    return " and ".join(limits) or "none"


def _facts(activity: Activity) -> list[str]:
    rules = "<br>".join(activity.rule_descriptions("en"))
    rows = [
        ("Purpose", f"{activity.purpose.en} (*{activity.purpose.sv}*)"),
        ("Legal basis", "; ".join(BASIS_LABELS["en"][b] for b in activity.legal_bases)),
        ("Policy (Swedish original)", f"“{activity.policy_text_sv}”"),
        ("Rule enforced", rules),
        ("Action", ACTIONS["en"][activity.action.kind]),
        ("Source", activity.source.describe()),
        ("Schedule", f"cron `{activity.schedule}`, Europe/Stockholm time"),
        ("Safety limit per run", _safety(activity)),
    ]
    return ["| | |", "|---|---|", *[f"| **{k}** | {v.replace('|', '/')} |" for k, v in rows]]


def _caveats(activity: Activity) -> list[str]:
    lines: list[str] = []
    if activity.deadlines:
        lines += ["", "### Policy deadlines", ""]
        lines += [f"- {case.describe('en')}" for case in activity.deadlines]
        lines.append(
            "- If the safety limit holds back records whose deadline is passing, the alert"
            " recipient is e-mailed at once, naming the deadline (see *How approval works*)."
        )
    if activity.policy_gap:
        lines += ["", "### Policy gap", ""]
        lines.append(
            "- The policy states no retention period for some of these records: they are counted"
            " and reported, never deleted, until the policy owner decides a period."
        )
    if activity.assumptions:
        lines += ["", "### Assumptions to confirm", ""]
        lines += [
            f"- **Assumption to confirm – `{a.name}` = `{a.value}`:** {a.statement.en}"
            f" *Why:* {a.reason.en}"
            for a in activity.assumptions
        ]
    return lines


_HOW = """
### How approval works

`plan` counts what is due. If the run would delete more than the safety limit, it stops at the
`approve` task: open the run in the Airflow UI (*Required actions*) and choose **Approve** or
**Reject**. No answer within 24 hours counts as Reject. A rejected run changes nothing; the
records wait for the next run. A run you triggered must be approved by someone else (four
eyes): approved by the same user, it fails before it changes anything. Trigger with
`{"dry_run": true}` to see the counts without changing anything.

### Paused?

Retention DAGs are deployed unpaused. While this DAG is paused the policy's deletions for this
activity do not happen: `python -m include.retention check` lists paused retention DAGs as
warnings.

### Where the evidence is

Every deletion or anonymisation is written, before it is committed, to the evidence ledger in
the control database (connection `retention_control_db`): a hash-chained log that holds no
personal data (records and people appear only as keyed hashes). After the run, `verify` checks
the source with Great Expectations — nothing due remains, every claimed deletion really
happened — and records the result in the ledger. `report` emits the run's counts as an event of
the asset `{asset}`. Failures e-mail the alert recipient (connection `retention_smtp`, Variable
`retention_alert_email`).
"""


def doc_md(activity: Activity) -> str:
    """The DAG's documentation, written for the person who operates or audits it."""
    lines = [
        f"# {activity.name.sv} — {activity.name.en}",
        "",
        f"Makes the privacy policy's retention rule for **{activity.name.en}**"
        f" (*{activity.name.sv}*) true in the source system.",
        "",
        *_facts(activity),
        *_caveats(activity),
        _HOW.replace("{asset}", asset_for(activity).name),
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
            None,
            type=["null", "string"],
            description=(
                "Evaluate the rules at this time: YYYY-MM-DD (Stockholm midnight) or"
                " YYYY-MM-DDTHH:MM[:SS][±HH:MM]; empty: the run's own time. A future time is"
                " allowed for dry runs only."
            ),
        ),
    }


def build_dag(activity: Activity) -> DAG:
    """The retention DAG of one activity."""
    activity_id = activity.id
    with DAG(
        dag_id=dag_id_for(activity_id),
        dag_display_name=display_name(activity),
        description=f"Retention: {activity.name.en} — {activity.describe_rule()}"[:250],
        doc_md=doc_md(activity),
        schedule=CronTriggerTimetable(activity.schedule, timezone=TIMEZONE),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=False,
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
            smtp_conn_id=SMTP_CONN_ID,
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

        return run_step(
            operations.plan, activity_id, params or {}, dag_run.run_after,
            origin=operations.origin_of(dag_run),
        )  # fmt: skip

    @task.branch(task_id="safety_gate")
    def safety_gate(planned: dict[str, Any]) -> str:
        from include.retention import operations

        return operations.next_step(planned)

    @task(task_id="partition", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def partition(planned: dict[str, Any], ti: Any = None) -> list[dict[str, Any]]:
        from include.retention import operations

        return run_step(operations.partition, activity_id, planned, _approval(ti, planned))

    @task(task_id="enforce", pool=ENFORCEMENT_POOL, map_index_template="{{ partition_label }}")
    def enforce(planned: dict[str, Any], part: dict[str, Any], ti: Any = None) -> dict[str, Any]:
        from airflow.sdk import get_current_context

        from include.retention import operations

        get_current_context()["partition_label"] = operations.partition_label(part)  # type: ignore[typeddict-unknown-key]
        approval = _approval(ti, planned)
        return run_step(operations.enforce, activity_id, planned, approval, part=part)

    @task(task_id="finish", trigger_rule=TriggerRule.ALL_DONE)
    def finish(planned: dict[str, Any], parts: Any, enforced: Any) -> dict[str, Any] | None:
        from include.retention import operations

        return run_step(operations.finish, activity_id, planned, parts, enforced)

    @task(task_id="verify")
    def verify(planned: dict[str, Any], finished: Any) -> dict[str, Any]:
        from include.retention import operations

        return run_step(operations.verify, activity_id, planned, finished)

    @task(task_id="report", trigger_rule=TriggerRule.ALL_DONE, outlets=[asset_for(activity)])
    def report(ti: Any = None, dag_run: Any = None, outlet_events: Any = None) -> dict[str, Any]:
        from include.retention import operations

        results = {
            "plan": ti.xcom_pull(task_ids="plan"), "enforce": ti.xcom_pull(task_ids="finish"),
            "verify": ti.xcom_pull(task_ids="verify"),
        }  # fmt: skip
        states = ti.get_task_states(
            dag_id=dag_run.dag_id, task_ids=list(STEPS), run_ids=[dag_run.run_id]
        ).get(dag_run.run_id, {})
        failed = sorted(step for step, state in states.items() if state in FAILED_STATES)
        summary = run_step(operations.report, activity_id, results, failed_steps=failed)
        outlet_events[asset_for(activity)].extra = summary
        return summary

    approve = ApprovalOperator(
        task_id="approve",
        subject=f"Approve retention run for {activity.name.en}?",
        body="{{ ti.xcom_pull(task_ids='plan')['approval_text'] }}",
        defaults="Reject",
        response_timeout=APPROVAL_TIMEOUT,
        notifiers=[DeadlineEscalation(activity.name.en, dag_id_for(activity.id))],
    )

    # TaskFlow passes XComArgs where the functions declare the values they resolve to.
    planned: Any = plan()
    parts: Any = partition(planned)
    enforced: Any = enforce.partial(planned=planned).expand(part=parts)
    safety_gate(planned) >> [approve, parts]
    approve >> parts
    verify(planned, finish(planned, parts, enforced)) >> report()


def _approval(ti: Any, planned: dict[str, Any]) -> dict[str, Any] | None:
    """The approval task's answer, when the run needed one."""
    return ti.xcom_pull(task_ids="approve", map_indexes=-1) if planned["needs_approval"] else None


def build_all(catalogue: Catalogue, only: str | None = None) -> dict[str, DAG]:
    """Every retention DAG, by DAG id; with ``only`` (a DAG id) just that one, when the
    catalogue has it (a task process needs only its own DAG)."""
    wanted = [a for a in catalogue if only is None or dag_id_for(a.id) == only]
    return {dag_id_for(activity.id): build_dag(activity) for activity in wanted or catalogue}
