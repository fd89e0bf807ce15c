"""Benchmark: looking a person up in a ledger holding ``--refs`` subject references (10 million).

Builds a ledger on local PostgreSQL (its own schema, dropped afterwards) through the real
writer: ``--refs / --batch`` runs of one batch each, every batch written by
`Ledger.prepare_batch(subject_refs_blob=...)` (one bulk insert of at most 1024 bucket rows
per batch) with random references, and a few known people placed in given batches. Then
times, alternating, ``--repeats`` lookups of:

  (a) the baseline: one indexed single-row SELECT on the ledger (a database round trip);
  (b) `EvidenceReader.lookup_person` of a person in the ledger (found in 2 batches);
  (c) the same for a person who is not in it (the full index seek, nothing found).

Prints the build time, the median and 95th percentile of each, and the ratios (b)/(a),
(c)/(a). Target: (b) and (c) at most 100 ms. Not a test: run it by hand::

    PYTHONPATH=. .venv/bin/python bench/bench_ledger_lookup.py [--refs 10000000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import time
import uuid
from collections.abc import Callable

import sqlalchemy as sa

from include.retention.evidence import EvidenceReader
from include.retention.ledger import Ledger, RunHeader, ledger_table
from include.retention.pseudonym import REF_SIZE, SubjectRefHasher

PG_URL = os.environ.get("RETENTION_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
KNOWN, ABSENT = "anna.berg@example.se", "nobody@example.se"


def _engine(schema: str) -> sa.Engine:
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return sa.create_engine(url)


def build(ledger: Ledger, refs: int, batch: int) -> float:
    """Write ``refs`` subject references in batches of ``batch``; KNOWN in two batches."""
    known = SubjectRefHasher(ledger._key).ref(KNOWN)
    batches = max(1, refs // batch)
    at = {batches // 3, (2 * batches) // 3}
    start = time.perf_counter()
    for n in range(batches):
        header = RunHeader(
            activity_id=f"a{n % 27}", system="crm", dataset="contacts", action="delete",
            rules=["P2Y"], as_of="2026-06-15T03:00:00+00:00", cutoffs=[None], dry_run=False,
            catalogue_version="bench", code_version="bench", approved_by="bench",
        )  # fmt: skip
        run_id = ledger.start_run(header)
        blob = os.urandom(batch * REF_SIZE)
        if n in at:
            blob = known + blob[REF_SIZE:]
        seq = ledger.prepare_batch(
            run_id, header.activity_id, "crm", "contacts", batch_no=1, action="delete",
            refs_blob=b"", counts={"records": batch}, subject_refs_blob=blob,
        )  # fmt: skip
        ledger.resolve_batch(seq, outcome="committed")
        ledger.finish_run(run_id, header.activity_id, outcome="completed", counts={}, message="")
        if (n + 1) % 20 == 0:
            done = (n + 1) * batch
            rate = done / (time.perf_counter() - start)
            print(f"  built {done:,} refs ({rate:,.0f}/s)", flush=True)
    with ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - start


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--refs", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=50_000, help="references per batch")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    schema = f"bench_lookup_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.schema.CreateSchema(schema))
    try:
        engine = _engine(schema)
        key = secrets.token_bytes(32)
        ledger = Ledger(engine, key)
        ledger.create_tables()
        print(f"building a ledger of {args.refs:,} subject references ({args.batch:,} a batch)")
        built = build(ledger, args.refs, args.batch)
        reader = EvidenceReader(engine, key)
        found = reader.lookup_person([KNOWN])
        assert len(found) == 2, found
        assert reader.lookup_person([ABSENT]) == []

        def baseline() -> None:
            with engine.connect() as conn:
                conn.execute(sa.select(ledger_table.c.kind).where(ledger_table.c.seq == 1)).one()

        results: dict[str, list[float]] = {"baseline": [], "found": [], "absent": []}
        for _ in range(args.repeats):  # alternating, so load changes hit all three alike
            results["baseline"] += timed(baseline, 1)
            results["found"] += timed(lambda: reader.lookup_person([KNOWN]), 1)
            results["absent"] += timed(lambda: reader.lookup_person([ABSENT]), 1)
        print(f"built in {built:.1f} s ({args.refs / built:,.0f} refs/s)")
        base = statistics.median(results["baseline"])
        for name, times in results.items():
            p95 = sorted(times)[int(0.95 * (len(times) - 1))]
            med = statistics.median(times)
            print(
                f"{name:9s} median {med * 1000:7.2f} ms  p95 {p95 * 1000:7.2f} ms"
                f"  ratio to baseline {med / base:6.1f}"
            )
        worst = max(statistics.median(results["found"]), statistics.median(results["absent"]))
        print(f"lookup of one identifier in {args.refs:,} references: median {worst * 1000:.1f} ms"
              f" (target <= 100 ms): {'ok' if worst <= 0.1 else 'MISSED'}")  # fmt: skip
    finally:
        with admin.connect() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True))


if __name__ == "__main__":
    main()
