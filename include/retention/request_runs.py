"""Forget the identifiers that data-subject requests leave in Airflow's metadata database.

A request filed through a ``dsr_*`` DAG's form keeps the person's identifier in the run's
``conf`` for as long as Airflow keeps the run. Everything the product needs afterwards is in
the control database under keyed references (the request register, holds, suppression list,
ledger), so finished request runs older than a retention period are deleted:
``python -m include.retention requests forget-runs``. Their task instances and XComs go with
them (the metadata schema cascades). It needs the metadata database, so it runs on the
scheduler side like ``setup`` (e.g. daily from cron), never inside a task.

Not ``airflow db clean --dag-ids``: it keeps archive copies unless told otherwise, cannot be
limited to finished runs, and in Airflow 3.3 it fails on the ``deadline`` table when given DAG
ids (and exits 0 without ``--error-on-cleanup-failure``).
"""

from __future__ import annotations

import datetime as dt

from include.retention.errors import RetentionError
from include.retention.subject_requests import REQUEST_KINDS

DEFAULT_DAYS = 30
DAG_PREFIX = "dsr_"
FINISHED = ("success", "failed")


def request_dag_ids() -> list[str]:
    """The DAGs whose runs carry a person's identifier: one per request kind."""
    return [f"{DAG_PREFIX}{kind}" for kind in REQUEST_KINDS]


def cutoff(older_than_days: int, now: dt.datetime | None = None) -> dt.datetime:
    if older_than_days < 0:
        raise RetentionError(f"--older-than-days must be 0 or more, not {older_than_days}")
    return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=older_than_days)


def forget_runs(before: dt.datetime, *, dry_run: bool = False) -> int:
    """Delete the finished request runs that started before ``before``; returns how many
    (with ``dry_run``: how many would be deleted, and nothing changes)."""
    if before.tzinfo is None:
        raise RetentionError("the cut-off needs a time zone (e.g. 2026-11-01T00:00:00+00:00)")
    import sqlalchemy as sa
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    which = (
        DagRun.dag_id.in_(request_dag_ids()),
        DagRun.state.in_(FINISHED),
        DagRun.start_date < before,
    )
    with create_session() as session:
        if dry_run:
            return int(session.scalar(sa.select(sa.func.count()).where(*which)) or 0)
        deleted = session.execute(sa.delete(DagRun).where(*which).returning(DagRun.id))
        return len(deleted.all())
