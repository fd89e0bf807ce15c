"""Benchmark: the ``verify`` step (Great Expectations) as a task process pays for it.

Seeds the demo systems (SQLite sources, an embedded S3) in a temporary folder, enforces every
enforceable activity once, then in a fresh Python process — as an Airflow task process starts —
times, per activity, the engine's ``plan`` (the baseline: a read of the same source by the same
engine), the source pre-check and ``verify``. The first Great Expectations call in the process
pays its import and context; the others show the steady cost. Prints seconds and the ratios
verify/plan. Not a test: run it by hand (add ``--preloaded`` to import Great Expectations
before the clock starts, as the demo's executor does before it forks task processes)::

    PYTHONPATH=. .venv/bin/python bench/bench_verify.py
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
from functools import partial
from pathlib import Path
from typing import Any

AS_OF = dt.datetime(2026, 11, 24, 1, 30, tzinfo=dt.UTC)
APPROVAL = {"chosen_options": ["Approve"], "responded_by_user": {"name": "bench"}}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prepare(root: Path, s3_endpoint: str, s3_client: Any) -> tuple[dict[str, str], list[Any]]:
    """Seed, place the holds, enforce every enforceable activity; returns the environment of
    the connections and what each run's verify needs (planned, enforced)."""
    from include.demo.run import DemoPaths, environment
    from include.demo.seed import place_holds, seed_demo
    from include.retention import operations
    from include.retention.catalogue import load_catalogue
    from include.retention.runs import Control

    key = secrets.token_urlsafe(32)
    seeded = seed_demo(AS_OF, root / "demo", s3_client=s3_client)
    env = environment(DemoPaths(root), key, s3_endpoint)
    os.environ.update(env)
    place_holds(Control.open(env["RETENTION_CONTROL_DB_URL"], key.encode()).holds,
                seeded.hold_requests())  # fmt: skip
    runs = []
    for activity in load_catalogue():
        if not activity.enforceable:
            continue
        planned = operations.plan(activity.id, {"as_of": AS_OF.isoformat()}, None)
        approval = APPROVAL if planned["needs_approval"] else None
        runs.append([activity.id, planned, operations.enforce(activity.id, planned, approval)])
    return env, runs


def child(state: Path, preloaded: bool) -> None:
    """One fresh process: time plan, the source pre-check and verify per activity (JSON lines
    on stdout)."""
    if preloaded:
        from include.retention import preload

        preload.task_libraries()
    from include.retention import lifecycle, operations, verification

    runtime = operations.Runtime.load()
    for activity_id, planned, enforced in json.loads(state.read_text()):
        activity = runtime.catalogue[activity_id]
        adapter = runtime.adapter(activity)
        as_of = operations.resolve_as_of(planned["as_of"], None)
        steps = {
            "plan": partial(
                lifecycle.plan, activity, as_of, control=runtime.control, adapter=adapter
            ),
            "precheck": partial(verification.precheck, activity, adapter, dry_run=True),
            "verify": partial(operations.verify, activity_id, planned, enforced, runtime),
        }
        times: dict[str, Any] = {"activity": activity_id, "ok": True}
        for step, work in steps.items():
            started, cpu = time.perf_counter(), _cpu()
            done = work()
            times[f"{step}_s"], times[f"{step}_cpu"] = time.perf_counter() - started, _cpu() - cpu
            if isinstance(done, dict):
                times["ok"] = times["ok"] and done.get("success", done.get("passed", True))
        print(json.dumps(times), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--preloaded", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.preloaded)
        return
    from include.demo.embedded_s3 import EmbeddedS3

    with tempfile.TemporaryDirectory() as tmp, EmbeddedS3() as s3:
        env, runs = prepare(Path(tmp), s3.endpoint_url, s3.client())
        state = Path(tmp) / "runs.json"
        state.write_text(json.dumps(runs))
        argv = [sys.executable, __file__, "--child", str(state)]
        argv += ["--preloaded"] if args.preloaded else []
        started = time.perf_counter()
        done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode:
            sys.exit(f"child failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    report(rows, wall, noisy=[line for line in done.stderr.splitlines() if "arning" in line])


def report(rows: list[dict[str, Any]], wall: float, noisy: list[str]) -> None:
    print(f"{'activity':<26}{'plan s':>8}{'precheck s':>12}{'verify s':>10}{'ratio':>8}  ok")
    for row in rows:
        ratio = row["verify_s"] / row["plan_s"]
        print(f"{row['activity']:<26}{row['plan_s']:8.3f}{row.get('precheck_s', 0):12.3f}"
              f"{row['verify_s']:10.3f}{ratio:8.1f}  {row['ok']}")  # fmt: skip
    first, rest = rows[0], rows[1:]
    gx_first = first.get("precheck_s", 0) + first["verify_s"]
    gx_cpu = first.get("precheck_cpu", 0) + first["verify_cpu"]
    plan = statistics.median(r["plan_s"] for r in rows)
    warm = statistics.median(r["verify_s"] for r in rest)
    pre = statistics.median(r.get("precheck_s", 0) for r in rest)
    print(
        f"\nGX work of the first activity in a fresh process (what a task pays):"
        f" {gx_first:.2f} s, {gx_cpu:.2f} s CPU = {gx_first / first['plan_s']:.0f}x its plan"
    )
    print(f"steady verify: median {warm:.3f} s = {warm / plan:.1f}x the median plan ({plan:.3f} s)")
    print(f"steady pre-check: median {pre:.3f} s = {pre / plan:.1f}x the median plan")
    print(f"whole child process: {wall:.1f} s for {len(rows)} activities")
    print(f"warning lines on the child's stderr: {len(noisy)}")  # fmt: skip


if __name__ == "__main__":
    main()
