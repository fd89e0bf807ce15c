"""Helpers of the crash and reliability tests: run an enforcement in a forked process and
SIGKILL it (at a checkpoint or after a delay), and the invariants checked after recovery.

Forking (not a fresh interpreter) keeps each kill cheap: the child has everything imported
and only opens its own connections (never the parent's engines: pass URLs).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from include.retention.pseudonym import RecordRefHasher
from include.retention.runs import KILL_ENV, Control
from tests.dbs import ids


def fork_run(
    target: Callable[[], Any],
    *,
    kill_at: str | None = None,
    kill_after: float | None = None,
    timeout: float = 120.0,
) -> str:
    """Run ``target`` in a forked child; "killed" if it died by SIGKILL, "finished" if it
    returned. ``kill_at``: a checkpoint "<name>:<batch>" where the child kills itself;
    ``kill_after``: seconds after which the parent kills it."""

    def child() -> None:
        if kill_at is not None:
            os.environ[KILL_ENV] = kill_at
        target()

    process = multiprocessing.get_context("fork").Process(target=child, daemon=True)
    process.start()
    if kill_after is not None:
        process.join(kill_after)
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)  # type: ignore[arg-type]
    process.join(timeout)
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)  # type: ignore[arg-type]
        process.join()
        raise AssertionError(f"the enforcement did not end within {timeout} s (hung)")
    if process.exitcode == -signal.SIGKILL:
        return "killed"
    assert process.exitcode == 0, f"the enforcement failed (exit code {process.exitcode})"
    return "finished"


def check_evidence(
    control: Control,
    system: str,
    dataset: str,
    present: set[Any],
    due: Iterable[Any],
    must_stay: set[Any],
    activity_id: str | None = None,
) -> None:
    """Nothing in ``must_stay`` is gone; every due record that is gone has exactly one
    evidence entry and none that is present has any; nothing is pending; the chain verifies."""
    missing = must_stay - present
    assert not missing, f"records that were not due or were held are gone: {sorted(missing)}"
    claimed = Counter(
        ref
        for run in control.ledger.runs(activity_id)
        for ref in control.ledger.applied_refs(run.run_id, system, dataset)
    )
    hasher = RecordRefHasher(control.key, system, dataset)
    for pk in due:
        evidence = claimed[hasher.ref(pk)]
        if pk in present:
            assert evidence == 0, f"evidence names record {pk!r}, which still exists"
        else:
            assert evidence == 1, f"{pk!r} deleted with {evidence} evidence entries"
    assert sum(claimed.values()) == len(set(due) - present), "evidence names other records"
    assert control.ledger.pending_batches() == [], "prepared batches left unresolved"
    report = control.ledger.verify()
    assert report.ok, report.problem


def check_people(
    control: Control,
    engine: Any,
    due: set[int],
    must_stay: set[int],
    children: bool = True,
    activity_id: str | None = None,
) -> set[int]:
    """`check_evidence` for the ``people`` table of tests/dbs.py, plus no orphaned children."""
    present = ids(engine)
    check_evidence(control, "ats", "people", present, sorted(due), must_stay, activity_id)
    if children:
        parents = {pk // 10 for pk in ids(engine, "applications")}
        assert parents <= present, "orphaned child rows"
    return present
