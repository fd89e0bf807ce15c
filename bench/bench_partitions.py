"""Benchmark: one enforcement split into 1, 2 and 4 key-range partitions run in parallel
processes (as mapped Airflow tasks would run them), on local PostgreSQL.

For each partition count, seeds the table of `bench_sql_delete` (``--rows`` rows, half expired),
splits it with `lifecycle.partitions`, starts the one ledger run they share and runs
`lifecycle.run` on every key range at once, one forked process each, then finishes the run, all
in one PostgreSQL ledger database (created for the run and dropped at the end). A bare
``DELETE`` of the same rows, timed in the same run, is the baseline. Prints seconds, throughput
(deleted rows per second), the ratio to the bare DELETE and the speed-up over one partition. On
a 2-core machine more than two partitions cannot gain::

    PYTHONPATH=. .venv/bin/python bench/bench_partitions.py [--rows N] [--counts 1 2 4]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import secrets
import time

import sqlalchemy as sa
from bench_sql_delete import AS_OF, SERVERS, bare_delete, bench_activity, drop, seed, source_engine

from include.retention.lifecycle import (
    RunOptions,
    finish_partitioned,
    partitions,
    plan,
    run,
    start_partitioned,
)
from include.retention.runs import Control
from include.retention.sources.base import DueAt, KeyRange, adapter_for

KEY = secrets.token_bytes(32)
LEDGER_DB = f"retention_bench_ledger_{os.getpid()}"


def ledger_url() -> str:
    return sa.make_url(SERVERS["postgresql"]).set(database=LEDGER_DB).render_as_string(False)


def _ledger_database(create: bool) -> None:
    admin = sa.create_engine(SERVERS["postgresql"], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{LEDGER_DB}" WITH (FORCE)'))
        if create:
            conn.execute(sa.text(f'CREATE DATABASE "{LEDGER_DB}"'))
    admin.dispose()


def _partition(
    part: tuple[int, int | str | None, int | str | None], batch_size: int, run_id: str
) -> int:
    """In a forked process: enforce one key range of run ``run_id``; the rows it deleted."""
    index, lower, upper = part
    activity = bench_activity()
    engine = source_engine()
    selection = KeyRange(DueAt(AS_OF, tuple(activity.retention)), lower, upper, index)
    adapter = adapter_for(activity.source, KEY, engine)
    options = RunOptions("bench", approved_by="bench", batch_size=batch_size, run_id=run_id)
    report = run(activity, selection, adapter, Control.open(ledger_url(), KEY), options)
    engine.dispose()
    return report.applied


def enforce_partitioned(rows: int, count: int, batch_size: int) -> tuple[int, float]:
    activity = bench_activity()
    engine = source_engine()
    control = Control.open(ledger_url(), KEY)
    start = time.perf_counter()
    ranges = partitions(
        activity, AS_OF, control=control, size=math.ceil(rows / count), source=engine
    )
    adapter = adapter_for(activity.source, KEY, engine)
    whole = plan(activity, AS_OF, control=control, adapter=adapter)
    options = RunOptions("bench", approved_by="bench")
    run_id = start_partitioned(
        activity, whole, len(ranges), control=control, adapter=adapter, options=options
    )
    parts = [(r.index, r.lower, r.upper) for r in ranges]
    with multiprocessing.get_context("fork").Pool(len(parts)) as pool:
        applied = pool.starmap(_partition, [(part, batch_size, run_id) for part in parts])
    finish_partitioned(
        activity, run_id, ranges, control=control, adapter=adapter, outcome="completed",
        message="", counts={},
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    assert control.ledger.verify().ok
    return sum(applied), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch-size", type=int, default=50_000)
    args = parser.parse_args()
    engine = source_engine()
    _ledger_database(create=True)
    try:
        expected = seed(engine, args.rows)
        n_bare, t_bare = bare_delete(engine)
        assert n_bare == expected
        print(f"bare DELETE: {n_bare:,} rows in {t_bare:.2f} s", flush=True)
        first = None
        for count in args.counts:
            seed(engine, args.rows)
            applied, elapsed = enforce_partitioned(args.rows, count, args.batch_size)
            assert applied == expected, (applied, expected)
            first = first or elapsed
            print(f"{count} partition(s): {applied:,} rows in {elapsed:.2f} s,"
                  f" {applied / elapsed:,.0f} rows/s; ratio to bare DELETE"
                  f" {elapsed / t_bare:.2f}; speed-up over the first {first / elapsed:.2f}",
                  flush=True)  # fmt: skip
    finally:
        drop(engine)
        _ledger_database(create=False)


if __name__ == "__main__":
    main()
