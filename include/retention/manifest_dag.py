"""The ``retention_ledger_manifest`` DAG: once a day, after the night's retention runs, verify
the ledger against every published manifest and publish a new signed one (see ``manifest``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import DAG, CronTriggerTimetable, task

from include.retention.dag_factory import START_DATE, TIMEZONE, run_step
from include.retention.escalation import ALERT_TO, SMTP_CONN_ID

DAG_ID = "retention_ledger_manifest"
SCHEDULE = "30 6 * * *"  # 06:30 Stockholm: after the night's enforcement runs


def publish_task() -> dict[str, Any]:
    """Open the control database, the S3 client and the signing key as tasks do; publish."""
    from include.retention import connections, manifest, object_store
    from include.retention.evidence import EvidenceReader

    reader = EvidenceReader(connections.control_engine())
    key = manifest.publish(reader, object_store.s3_client(), manifest.signing_key())
    head_seq, head_hash = reader.head()
    return {"object_key": key, "head_seq": head_seq, "head_hash": head_hash}


def build_manifest_dag() -> DAG:
    with DAG(
        dag_id=DAG_ID,
        dag_display_name="Retention: ledger manifest (evidence outside the database)",
        description="Daily signed manifest of the deletion ledger's head, to S3 under Object Lock",
        doc_md=__doc__,
        schedule=CronTriggerTimetable(SCHEDULE, timezone=TIMEZONE),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=False,
        tags=["retention", "audit"],
        default_args={
            "owner": "privacy",
            "retries": 2,
            "retry_delay": dt.timedelta(minutes=10),
        },
        on_failure_callback=SmtpNotifier(
            to=ALERT_TO, smtp_conn_id=SMTP_CONN_ID, subject=f"[retention] {DAG_ID} failed"
        ),
    ) as dag:

        @task(task_id="publish")
        def publish() -> dict[str, Any]:
            return run_step(publish_task)

        publish()
    return dag
