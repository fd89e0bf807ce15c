"""Benchmark: the engine's evidence-keeping delete against a bare DELETE, on local PostgreSQL
or MariaDB (``--db``).

Seeds a table of ``--rows`` rows (default 2,000,000) of which every other one is expired, in a
schema (PostgreSQL) or database (MariaDB) of its own that is dropped at the end, then times,
reseeding before each and repeating ``--repeats`` times:

  (a) a bare ``DELETE FROM bench_records WHERE decided_at <= cutoff``;
  (r) the same ``DELETE … RETURNING id``, every key fetched to the client: the floor of any
      delete that keeps evidence of what it deleted;
  (b) `enforce`: recovery check, plan (counts + holds), range batches of ``--batch-size``,
      write-ahead ledger entries with one blob of pseudonymous refs per batch, in a separate
      ledger database (a SQLite file by default, ``--ledger-url`` for another), and the
      ledger's person index (a keyed subject reference of each record's e-mail);
  (n) the same without the person index (no lookup column): what the index costs.

Prints rows, seconds, the median ratios (b)/(a), (b)/(r) and (n)/(a), the floor (r)/(a), and
(PostgreSQL, unless ``--skip-memory``) the engine's peak memory at 100k and 1M expired rows (in
a child process: ru_maxrss, and the Python heap peak during `enforce` from tracemalloc). Not a
test::

    PYTHONPATH=. .venv/bin/python bench/bench_sql_delete.py [--db mariadb] [--rows N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from include.retention.catalogue import Activity
from include.retention.lifecycle import enforce
from include.retention.runs import Control

SERVERS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/",
}
SCHEMA = f"retention_bench_{os.getpid()}"  # one per run: runs on a shared server never collide
AS_OF = dt.datetime(2026, 6, 15, 3, 0, tzinfo=dt.UTC)
OLD = dt.datetime(2020, 1, 1)
RECENT = dt.datetime(2026, 1, 1)
CUTOFF = dt.datetime(2024, 6, 14, 23, 59, 59)  # what the P2Y rule yields at AS_OF (UTC source)

metadata = sa.MetaData()
records = sa.Table(
    "bench_records",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("decided_at", sa.DateTime, nullable=True),
)


def bench_activity(subjects: bool = True) -> Activity:
    """The benchmark's activity; ``subjects``: with the e-mail as lookup column (the ledger's
    person index is written), else records only."""
    activity = Activity.model_validate(
        {
            "id": "bench",
            "name": {"sv": "Bänk", "en": "Bench"},
            "purpose": {"sv": "Mätning", "en": "Measuring"},
            "legal_bases": ["legitimate_interest"],
            "data_subjects": [{"sv": "sökande", "en": "applicants"}],
            "data_categories": [{"sv": "kontaktuppgifter", "en": "contact details"}],
            "policy_text_sv": "Raderas efter två år.",
            "retention": [
                {
                    "when": {"column": "status", "equals": "rejected"},
                    "rule": {
                        "kind": "period",
                        "period": "P2Y",
                        "anchor": {"sv": "beslutet", "en": "the decision"},
                    },
                    "anchor_column": "decided_at",
                }
            ],
            "action": {"kind": "delete"},
            "source": {
                "kind": "sql",
                "system": "bench",
                "conn_id": "bench",
                "table": "bench_records",
                "lookup": {"email": "email"},
            },
            "safety": {"max_rows": None, "max_fraction": None},
        }
    )
    if subjects:
        return activity
    source = activity.source.model_copy(update={"lookup": {}})
    return activity.model_copy(update={"source": source})


def source_engine(db: str = "postgresql") -> sa.Engine:
    """An engine on the benchmark's own schema (PostgreSQL) or database (MariaDB), created."""
    url = sa.make_url(SERVERS[db])
    with sa.create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.schema.CreateSchema(SCHEMA, if_not_exists=True))  # MariaDB: a database
    if db == "postgresql":
        return sa.create_engine(url.update_query_dict({"options": f"-csearch_path={SCHEMA}"}))
    return sa.create_engine(url.set(database=SCHEMA))


def drop(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.schema.DropSchema(SCHEMA, cascade=engine.dialect.name == "postgresql"))


def _numbers(engine: sa.Engine, rows: int) -> sa.ColumnElement[int]:
    if engine.dialect.name == "postgresql":
        return sa.func.generate_series(1, rows).column_valued("n")
    return sa.table(f"seq_1_to_{rows}", sa.column("seq")).c.seq  # MariaDB's Sequence engine


def seed(engine: sa.Engine, rows: int) -> int:
    """(Re)create the table with ``rows`` rows, every other one expired; returns the expired."""
    with engine.begin() as conn:
        metadata.drop_all(conn)
        metadata.create_all(conn)
        value = _numbers(engine, rows)
        expired = value % 2 == 0
        conn.execute(
            records.insert().from_select(
                ["id", "email", "status", "decided_at"],
                sa.select(
                    value,
                    sa.func.concat("person", value, "@example.com"),
                    sa.literal("rejected"),
                    sa.case((expired, sa.literal(OLD)), else_=sa.literal(RECENT)),
                ),
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text(f"VACUUM ANALYZE {SCHEMA}.bench_records"))
        else:
            conn.execute(sa.text("ANALYZE TABLE bench_records")).all()
    return rows // 2


def bare_delete(engine: sa.Engine, returning: bool = False) -> tuple[int, float]:
    """(a) a bare DELETE, or (r) with ``returning``: DELETE … RETURNING id, keys fetched."""
    stmt = sa.delete(records).where(records.c.status == "rejected", records.c.decided_at <= CUTOFF)
    start = time.perf_counter()
    with engine.begin() as conn:
        if returning:
            deleted = len(conn.execute(stmt.returning(records.c.id)).scalars().all())
        else:
            deleted = conn.execute(stmt).rowcount
    return deleted, time.perf_counter() - start


def engine_delete(
    engine: sa.Engine, control: Control, batch_size: int, subjects: bool = True
) -> tuple[int, float]:
    start = time.perf_counter()
    result = enforce(
        bench_activity(subjects), AS_OF, source=engine, control=control, catalogue_version="bench",
        batch_size=batch_size, approved_by="bench",
    )  # fmt: skip
    return result.applied, time.perf_counter() - start


def child_memory(rows: int, ledger_url: str, batch_size: int) -> None:
    """In a child process: seed, enforce, print its peak RSS and the enforcement's peak Python
    heap (tracemalloc slows the run down, so the timings come from the parent, not from here)."""
    engine = source_engine()
    try:
        seed(engine, rows)
        control = Control.open(ledger_url, secrets.token_bytes(32))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        applied = enforce(
            bench_activity(), AS_OF, source=engine, control=control, catalogue_version="bench",
            batch_size=batch_size, approved_by="bench",
        ).applied  # fmt: skip
        heap = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        drop(engine)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = {"applied": applied, "heap_mib": heap / 2**20}
    print(json.dumps(summary | {"peak_mib": peak / 1024, "base_mib": base / 1024}))


def measure_memory(rows: int, tmp: Path, batch_size: int) -> dict[str, float]:
    ledger_url = f"sqlite:///{tmp / f'mem{rows}.db'}"
    out = subprocess.run(
        [sys.executable, __file__, "--child-memory", str(rows), "--ledger-url", ledger_url,
         "--batch-size", str(batch_size)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=sorted(SERVERS), default="postgresql")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument("--ledger-url", default=None, help="ledger DB (default: a SQLite file)")
    parser.add_argument("--child-memory", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if args.child_memory:
            child_memory(args.child_memory, args.ledger_url, args.batch_size)
            return
        engine = source_engine(args.db)
        try:
            _compare(engine, args, tmp)
            if not args.skip_memory and args.db == "postgresql":
                _memory(tmp, args.batch_size)
        finally:
            drop(engine)


def _compare(engine: sa.Engine, args: argparse.Namespace, tmp: Path) -> None:
    names = ("bare", "returning", "engine", "no index")
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.repeats):
        expected = seed(engine, args.rows)
        ledger_url = args.ledger_url or f"sqlite:///{tmp / f'ledger{i}.db'}"
        control = Control.open(ledger_url, secrets.token_bytes(32))
        runs = {
            "bare": lambda e: bare_delete(e),
            "returning": lambda e: bare_delete(e, returning=True),
            "engine": lambda e, c=control: engine_delete(e, c, args.batch_size),
            "no index": lambda e, c=control: engine_delete(e, c, args.batch_size, False),
        }
        line = []
        for n, (name, run) in enumerate(runs.items()):
            if n:
                seed(engine, args.rows)
            with CpuMeter(engine) as meter:
                deleted, wall = run(meter.engine)
            assert deleted == expected, (name, deleted, expected)
            assert not name.startswith(("engine", "no")) or control.ledger.verify().ok
            walls[name].append(wall)
            cpus[name].append(meter.total)
            line.append(f"{name} {wall:.2f} s ({meter})")
        print(f"rep {i + 1}: rows {expected:,}  " + "  ".join(line)
              + f"  load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    mb, mr, mo, mn = (statistics.median(walls[k]) for k in names)
    print(f"median ({args.db}): table {args.rows:,} rows, deleted {expected:,}; bare DELETE"
          f" {mb:.2f} s, DELETE RETURNING keys {mr:.2f} s, engine {mo:.2f} s, engine without"
          f" the person index {mn:.2f} s; ratio engine/bare {mo / mb:.2f} (target <= 3),"
          f" engine/RETURNING {mo / mr:.2f}, without the index/bare {mn / mb:.2f}; floor:"
          f" RETURNING/bare {mr / mb:.2f} (no delete that keeps evidence of each record gets"
          f" below it)")  # fmt: skip
    if all(cpus["bare"]):
        cb, cr, co, cn = (statistics.median(cpus[k]) for k in names)
        print(f"median CPU seconds (client + database server): bare DELETE {cb:.2f},"
              f" DELETE RETURNING {cr:.2f}, engine {co:.2f}, without the index {cn:.2f};"
              f" CPU ratio engine/bare {co / cb:.2f}, engine/RETURNING {co / cr:.2f},"
              f" without the index/bare {cn / cb:.2f}")  # fmt: skip


class CpuMeter:
    """CPU seconds a measurement costs on this machine, which a loaded machine distorts far
    less than wall time: this process's (every thread) plus, on PostgreSQL, that of the
    server backends of ``engine``'s connections (read from /proc: the server is local).
    ``engine`` inside the block: a fresh engine on the same URL, so every connection is seen.
    """

    def __init__(self, template: sa.Engine) -> None:
        self.engine = sa.create_engine(template.url)
        self.pids: set[int] = set()
        self.client = self.server = 0.0
        if self.engine.dialect.name == "postgresql":
            sa.event.listen(self.engine, "connect", self._record_pid)

    def _record_pid(self, dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            self.pids.add(int(cursor.fetchone()[0]))

    def _server_cpu(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        return total

    def __enter__(self) -> CpuMeter:
        self.engine.connect().close()  # the first backend exists before the clock starts
        self.server = -self._server_cpu()
        self.client = -time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client += time.process_time()
        self.server += self._server_cpu()
        self.engine.dispose()

    @property
    def total(self) -> float:
        return self.client + self.server if self.pids else 0.0

    def __str__(self) -> str:
        if not self.pids:
            return f"CPU client {self.client:.2f} s"
        return f"CPU {self.total:.2f} s = client {self.client:.2f} + server {self.server:.2f}"


def _memory(tmp: Path, batch_size: int) -> None:
    small = measure_memory(200_000, tmp, batch_size)
    large = measure_memory(2_000_000, tmp, batch_size)
    for m in (small, large):
        print(
            f"peak memory at {m['applied']:,} rows: RSS {m['peak_mib']:.0f} MiB"
            f" (process start {m['base_mib']:.0f} MiB), Python heap during enforce"
            f" {m['heap_mib']:.1f} MiB"
        )
    rss, heap = large["peak_mib"] / small["peak_mib"], large["heap_mib"] / small["heap_mib"]
    print(f"memory ratio 1M/100k: RSS {rss:.2f}, heap {heap:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
