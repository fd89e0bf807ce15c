"""The deployment side: set-up and checks that run with Airflow's metadata DB, never in tasks.

``python -m include.retention setup`` creates the ``retention`` pool that bounds how many
enforcement tasks run at once (run it after ``airflow db migrate``: ``make demo``, ``make ui``
and the container's init step do). ``python -m include.retention check`` verifies that the
control database is not Airflow's metadata database and warns about paused retention DAGs:
a paused retention DAG is a policy obligation that silently never runs.

Task processes have no metadata-DB access (Airflow sets the placeholder
``airflow-db-not-allowed:///``), which is why these checks live here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

ENFORCEMENT_POOL = "retention"
POOL_SLOTS_ENV = "RETENTION_POOL_SLOTS"
DEFAULT_POOL_SLOTS = 4
POOL_DESCRIPTION = "GDPR retention: enforcement tasks that may delete at the same time"
DAG_PREFIX = "retention_"


def pool_slots() -> int:
    return int(os.environ.get(POOL_SLOTS_ENV) or DEFAULT_POOL_SLOTS)


def ensure_pool(slots: int | None = None) -> int:
    """Create (or resize) the enforcement pool; returns its slots. Same as
    ``airflow pools set retention N "…"``."""
    from airflow.models.pool import Pool

    slots = slots or pool_slots()
    Pool.create_or_update_pool(
        ENFORCEMENT_POOL, slots=slots, description=POOL_DESCRIPTION, include_deferred=False
    )
    return slots


@dataclass
class CheckReport:
    """What ``check`` found: errors stop a deployment, warnings need a person's attention."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _same_database(a: sa.URL, b: sa.URL) -> bool:
    if a.get_backend_name() != b.get_backend_name():
        return False
    if a.get_backend_name() == "sqlite":
        return Path(a.database or "").resolve() == Path(b.database or "").resolve()
    return (a.host, a.port, a.database) == (b.host, b.port, b.database)


def check_control_db(control_url: str, metadata_url: str) -> list[str]:
    """An error if the retention control database is Airflow's metadata database."""
    if _same_database(sa.make_url(control_url), sa.make_url(metadata_url)):
        return [
            "the retention control database (ledger + holds) is Airflow's metadata database:"
            " `airflow db clean` and migrations would touch the evidence. Point"
            " RETENTION_CONTROL_DB_URL or the connection retention_control_db elsewhere"
        ]
    return []


def paused_retention_dags() -> tuple[list[str], list[str]]:
    """(paused, known) retention DAG ids in the metadata DB."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(
            sa.select(DagModel.dag_id, DagModel.is_paused).where(
                DagModel.dag_id.startswith(DAG_PREFIX), DagModel.is_stale.is_(False)
            )
        ).all()
    return sorted(d for d, paused in rows if paused), sorted(d for d, _ in rows)


def pool_exists() -> bool:
    from airflow.models.pool import Pool

    return Pool.get_pool(ENFORCEMENT_POOL) is not None


def check(expected_dags: list[str]) -> CheckReport:
    """The deployment check (outside tasks): control DB, paused DAGs, the pool."""
    from airflow.configuration import conf

    from include.retention.connections import control_url

    report = CheckReport()
    metadata_url = conf.get("database", "sql_alchemy_conn")
    control = control_url()
    report.errors += check_control_db(control, metadata_url)
    report.notes.append(f"control database: {sa.make_url(control).render_as_string()}")
    paused, known = paused_retention_dags()
    for dag_id in paused:
        report.warnings.append(
            f"{dag_id} is paused: its retention obligations are not enforced. Unpause it"
            f" (airflow dags unpause {dag_id}) unless that is intended and documented"
        )
    missing = sorted(set(expected_dags) - set(known))
    if missing:
        report.warnings.append(
            f"{len(missing)} retention DAGs are not registered yet (the DAG processor has not"
            f" parsed them): {', '.join(missing)}"
        )
    if not pool_exists():
        report.warnings.append(
            f"pool {ENFORCEMENT_POOL!r} is missing: enforce tasks cannot be scheduled."
            " Run `python -m include.retention setup`"
        )
    return report
