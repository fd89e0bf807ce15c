"""The nightly burst: many OS processes append to one ledger at once, on every supported control
database; the appends serialise, the chain stays intact and no entry is lost."""

from __future__ import annotations

import multiprocessing
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from include.retention.ledger import Ledger, RunHeader
from tests.dbs import DIALECTS, create_db

PROCESSES = 8
RUNS_PER_PROCESS = 6  # each run: run_started, 1 batch prepared + resolved, run_finished


def _header(activity_id: str) -> RunHeader:
    return RunHeader(
        activity_id=activity_id, system="crm", dataset="people", action="delete",
        rules=["P2Y"], as_of="2026-11-24T02:00:00+01:00", cutoffs=[None], dry_run=False,
        catalogue_version="test", code_version="test",
        origin={"dag_id": f"retention_{activity_id}", "run_id": "burst", "run_type": "scheduled"},
    )  # fmt: skip


def _append_runs(url: str, key: bytes, worker: int, start: Any) -> None:
    ledger = Ledger.from_url(url, key)
    start.wait(timeout=60)
    for n in range(RUNS_PER_PROCESS):
        activity_id = f"activity_{worker}"
        run_id = ledger.start_run(_header(activity_id))
        seq = ledger.prepare_batch(
            run_id, activity_id, "crm", "people", batch_no=1, action="delete",
            refs_blob=secrets.token_bytes(16 * (n + 1)), counts={"rows": n + 1},
        )  # fmt: skip
        ledger.resolve_batch(seq, outcome="committed")
        ledger.finish_run(run_id, activity_id, outcome="completed", counts={}, message="ok")


@pytest.mark.parametrize("kind", DIALECTS)
def test_concurrent_appends_from_processes_keep_the_chain(kind: str, tmp_path: Path) -> None:
    db, cleanup = create_db(kind, tmp_path)
    key = secrets.token_bytes(32)
    try:
        Ledger(db.engine, key).create_tables()
        db.engine.dispose()  # the children open their own connections
        context = multiprocessing.get_context("fork")
        start = context.Barrier(PROCESSES)
        workers = [
            context.Process(target=_append_runs, args=(db.url, key, worker, start))
            for worker in range(PROCESSES)
        ]
        for process in workers:
            process.start()
        for process in workers:
            process.join(timeout=180)
        assert [p.exitcode for p in workers] == [0] * PROCESSES, "an appending process failed"
        ledger = Ledger(db.engine, key)
        report = ledger.verify()
        assert report.ok, report
        assert report.entries == PROCESSES * RUNS_PER_PROCESS * 4
        per_activity = Counter(run.activity_id for run in ledger.runs())
        assert per_activity == {f"activity_{w}": RUNS_PER_PROCESS for w in range(PROCESSES)}
        assert all(run.finished and run.batches for run in ledger.runs())
    finally:
        cleanup()
