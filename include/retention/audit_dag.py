"""The weekly ``retention_audit_report`` DAG. Wiring only: the work is in ``audit_publish``.

Every Monday at 06:00 (Stockholm) it writes the previous week's audit report, in Swedish and
English, as HTML, PDF and CSV, to the location in the Variable
``retention_audit_report_location`` (a folder or ``s3://bucket/prefix``). Trigger it with
``{"from": "2026-10-01", "to": "2026-12-31"}`` for another period. A broken ledger chain fails
the run (after the report is written) and e-mails the alert recipient.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import DAG, CronTriggerTimetable, Param, task

from include.retention.dag_factory import START_DATE, TIMEZONE, run_step
from include.retention.escalation import ALERT_TO, SMTP_CONN_ID

DAG_ID = "retention_audit_report"
SCHEDULE = "0 6 * * 1"
LOCATION = "{{ var.value.get('retention_audit_report_location', '') }}"

DOC = """
# Retention audit report (weekly)

Writes the audit report of the previous week (Monday–Sunday, Swedish time) from the deletion
ledger: per activity the runs, records deleted and anonymised, records held, restricted, with
an unknown anchor and not yet due, exceptions, verification outcomes, the ledger's chain check
and policy gaps, with a chart of deletions per activity. Swedish and English; HTML, PDF and
CSV; files readable by their owner only.

**Where:** the Variable `retention_audit_report_location`: a folder, or `s3://bucket/prefix`
(connection `retention_s3`). Default: `$AIRFLOW_HOME/retention_reports`.

**Another period:** trigger with `{"from": "YYYY-MM-DD", "to": "YYYY-MM-DD"}` (inclusive).

**Fails when** the ledger's chain is broken (the report is still written and names the entry),
or the control database cannot be read; failures e-mail the alert recipient.

The same report on the command line: `python -m include.retention report --from … --to …`.
"""


def build_audit_dag() -> DAG:
    with DAG(
        dag_id=DAG_ID,
        dag_display_name="Granskningsrapport (Retention audit report)",
        description="Weekly audit report of the retention runs, from the deletion ledger",
        doc_md=DOC,
        schedule=CronTriggerTimetable(SCHEDULE, timezone=TIMEZONE),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=False,
        tags=["gdpr", "retention", "audit"],
        params={
            "from": Param(None, type=["null", "string"], description="First day, YYYY-MM-DD"),
            "to": Param(None, type=["null", "string"], description="Last day, YYYY-MM-DD"),
        },
        default_args={
            "owner": "data-engineering",
            "retries": 2,
            "retry_delay": dt.timedelta(minutes=5),
        },
        on_failure_callback=SmtpNotifier(
            to=ALERT_TO, smtp_conn_id=SMTP_CONN_ID, subject=f"[retention] {DAG_ID} failed"
        ),
    ) as dag:

        @task(task_id="write_report")
        def write_report(
            location: str, params: dict[str, Any] | None = None, dag_run: Any = None
        ) -> dict[str, Any]:
            from include.retention import audit_publish

            return run_step(audit_publish.publish_task, params or {}, dag_run.run_after, location)

        write_report(LOCATION)
    return dag
