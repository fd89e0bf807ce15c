"""Outages mid-run: inside batch 2 the connections of the source or of the control database
are terminated (PostgreSQL ``pg_terminate_backend``, MariaDB ``KILL``). The run fails with a
RetentionError naming that database; nothing is half-done; a rerun recovers and completes
with exactly one evidence entry per deleted record."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.retention.errors import RetentionError, Unavailable
from include.retention.lifecycle import enforce
from include.retention.runs import Control
from include.retention.sources.sql import SqlAdapter
from tests.crash import check_people
from tests.dbs import (
    AS_OF,
    MARIADB_ADMIN_URL,
    PG_ADMIN_URL,
    Db,
    activity,
    create_db,
    old,
    person,
    recent,
    seed,
)

pytestmark = pytest.mark.reliability
PEOPLE = [person(i, old() if i % 10 < 7 else recent()) for i in range(1, 41)]
DUE = {p["id"] for p in PEOPLE if p["decided_at"] == old()}
NOT_DUE = {p["id"] for p in PEOPLE} - DUE
LABELS = {
    "source": "the source database of system 'ats' (ats_db) at ",
    "control": "the control database (ledger, holds, leases) at ",
}


def _tagged(db: Db) -> tuple[sa.Engine, str]:
    """An engine on ``db`` whose server connections the admin can find, and the tag."""
    if db.kind == "postgresql":
        tag = f"rt-{uuid.uuid4().hex[:12]}"
        url = sa.make_url(db.url).update_query_dict({"application_name": tag})
        return sa.create_engine(url), tag
    return sa.create_engine(db.url), str(sa.make_url(db.url).database)


def _terminate(kind: str, tag: str) -> int:
    """Terminate every server connection carrying ``tag``; how many."""
    admin = sa.create_engine(PG_ADMIN_URL if kind == "postgresql" else MARIADB_ADMIN_URL)
    try:
        with admin.begin() as conn:
            if kind == "postgresql":
                query = sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = :tag"
                )
                return len(conn.execute(query, {"tag": tag}).all())
            query = sa.text("SELECT id FROM information_schema.processlist WHERE db = :tag")
            killed = [row[0] for row in conn.execute(query, {"tag": tag})]
            for thread_id in killed:
                conn.execute(sa.text("KILL :id"), {"id": int(thread_id)})
            return len(killed)
    finally:
        admin.dispose()


@pytest.mark.parametrize("which", ["source", "control"])
@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_an_outage_mid_run_names_the_database_and_a_rerun_recovers(
    kind: str, which: str, tmp_path: Path
) -> None:
    source_db, drop_source = create_db(kind, tmp_path)
    control_db, drop_control = create_db(kind, tmp_path)
    try:
        seed(source_db.engine, PEOPLE)
        source, source_tag = _tagged(source_db)
        control_engine, control_tag = _tagged(control_db)
        control = Control.open(control_engine, b"outage-test-key-0123456789abcdef")
        terminated: list[int] = []

        def after_lock(batch_no: int) -> None:
            if batch_no == 2 and not terminated:
                tag = source_tag if which == "source" else control_tag
                terminated.append(_terminate(kind, tag))

        with pytest.raises(RetentionError) as err:
            act = activity()
            enforce(
                act, AS_OF, control=control, catalogue_version="v1", batch_size=4,
                adapter=SqlAdapter(act.source, control.key, source, after_lock=after_lock),
            )  # fmt: skip
        message = str(err.value)
        print(f"{kind} {which} outage: {message}")
        assert terminated and terminated[0] >= 1
        assert LABELS[which] in message and "failed mid-run" in message, message
        assert "run the task again" in message
        assert isinstance(err.value, Unavailable)  # transient: the task is retried
        assert "password" not in message.lower()
        # Consistent after the outage: a rerun recovers what was in flight and completes.
        result = enforce(
            activity(), AS_OF, source=source, control=control, catalogue_version="v1",
            batch_size=4,
        )  # fmt: skip
        assert result.outcome == "completed", result.message
        assert check_people(control, source, DUE, NOT_DUE) == NOT_DUE
        outcomes = [r.finished["outcome"] for r in control.ledger.runs() if r.finished]
        assert outcomes[-1] == "completed" and outcomes[0] in ("failed", "interrupted")
        source.dispose()
        control_engine.dispose()
    finally:
        drop_source()
        drop_control()
