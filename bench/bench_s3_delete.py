"""Benchmark: the engine's evidence-keeping delete of versioned objects against bare
``DeleteObjects`` of the same versions, on the local S3 server (moto, a separate process).

Seeds a versioned bucket with ``--objects`` keys (default 2,000) of ``--versions`` versions
each (default 3), every object due, then times, reseeding before each:

  (l) list every version, then bare ``DeleteObjects`` of them (1,000 versions a call);
  (a) the ``DeleteObjects`` calls of (l) alone: the floor of deleting those versions at all;
  (b) the engine: list, read each object's metadata (a HEAD each: the anchor and the data
      subject), check holds, write-ahead ledger entries, DeleteObjects, confirm with one
      listing per batch that its keys are gone, resolve.

With ``--unversioned`` the bucket keeps no versions (one per key): the engine then deletes
each object with a conditional ``DeleteObject`` (``If-Match`` on its listed ETag, so an upload
that replaced it meanwhile stays) instead of in ``DeleteObjects`` calls.

Prints the engine's S3 calls by operation, the median seconds, the ratios (b)/(a) and (b)/(l),
and the floor: the listing of (l) alone over (a), which no engine that must find what is due
gets below. moto deep-copies the whole bucket for every listing call, so (l) and the engine's own
listing grow with the square of the versions; (a) does not list at all. The default of 2,000 objects
runs in about three minutes here (moto stores about 150 versions a second); the issue's size
is ``--objects 10000`` (about 15 minutes). Not a test::

    PYTHONPATH=. .venv/bin/python bench/bench_s3_delete.py [--objects N] [--repeats N]
        [--unversioned]
"""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import socket
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from include.demo.embedded_s3 import ensure_bucket, local_client, purge_bucket, spawn
from include.retention.catalogue import Activity
from include.retention.lifecycle import enforce
from include.retention.object_store import counted_calls, iter_versions
from include.retention.runs import Control

AS_OF = dt.datetime(2026, 6, 15, 3, 0, tzinfo=dt.UTC)
BUCKET = "bench-objects"
DELETE_LIMIT = 1000
PUT_WORKERS = 16


def bench_activity() -> Activity:
    return Activity.model_validate(
        {
            "id": "bench_s3",
            "name": {"sv": "Bänk", "en": "Bench"},
            "purpose": {"sv": "Mätning", "en": "Measuring"},
            "legal_bases": ["legitimate_interest"],
            "data_subjects": [{"sv": "personer", "en": "people"}],
            "data_categories": [{"sv": "bilder", "en": "images"}],
            "policy_text_sv": "Raderas efter två år.",
            "retention": [
                {
                    "rule": {
                        "kind": "period",
                        "period": "P2Y",
                        "anchor": {"sv": "fotograferingen", "en": "the photo shoot"},
                    },
                    "anchor_column": "taken_on",
                }
            ],
            "action": {"kind": "delete"},
            "source": {
                "kind": "s3",
                "system": "bench",
                "conn_id": "bench",
                "bucket": BUCKET,
                "lookup": {"email": "email"},  # each object names its person (seed)
            },
            "safety": {"max_rows": None, "max_fraction": None},
        }
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed(client: Any, objects: int, versions: int, *, versioned: bool = True) -> int:
    """Empty the bucket and put ``versions`` versions of each key; returns the versions."""
    ensure_bucket(client, BUCKET, versioned=versioned)
    purge_bucket(client, BUCKET)
    keys = [f"photos/{n:06d}.jpg" for n in range(objects)]

    def put(n: int) -> None:
        metadata = {"taken_on": "2020-01-01", "email": f"person{n}@example.com"}
        for _ in range(versions):
            client.put_object(Bucket=BUCKET, Key=keys[n], Body=b"x" * 64, Metadata=metadata)

    with ThreadPoolExecutor(max_workers=PUT_WORKERS) as pool:
        list(pool.map(put, range(objects)))
    return objects * versions


def listed(client: Any) -> list[dict[str, str]]:
    return [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in iter_versions(client, BUCKET)]


def bare_delete(client: Any) -> tuple[int, float, float]:
    """List every version, then DeleteObjects them: (versions, listing s, deleting s)."""
    start = time.perf_counter()
    entries = listed(client)
    deleting = time.perf_counter()
    for at in range(0, len(entries), DELETE_LIMIT):
        chunk = entries[at : at + DELETE_LIMIT]
        response = client.delete_objects(Bucket=BUCKET, Delete={"Objects": chunk, "Quiet": True})
        assert not response.get("Errors"), response["Errors"][:3]
    end = time.perf_counter()
    return len(entries), deleting - start, end - deleting


def engine_delete(client: Any, ledger_url: str) -> tuple[int, float]:
    control = Control.open(ledger_url, secrets.token_bytes(32))
    with counted_calls(client) as calls:
        start = time.perf_counter()
        result = enforce(
            bench_activity(), AS_OF, control=control, catalogue_version="bench", source=client,
            approved_by="bench",
        )  # fmt: skip
        elapsed = time.perf_counter() - start
    print(f"  engine's S3 calls: {dict(sorted(calls.items()))}", flush=True)
    assert control.ledger.verify().ok and result.failed == 0
    return int(result.extra.get("versions_deleted", 0)), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=2_000)
    parser.add_argument("--versions", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--unversioned", action="store_true", help="a bucket without versions")
    args = parser.parse_args()
    if args.unversioned:
        args.versions = 1  # each put replaces the object
    port = free_port()
    server = spawn(port=port)
    client = local_client(f"http://127.0.0.1:{port}")
    times: dict[str, list[float]] = {"bare": [], "listing": [], "listed": [], "engine": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for rep in range(args.repeats):
                _repeat(client, args, f"sqlite:///{Path(tmp) / f'l{rep}.db'}", times)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    mb, mf, ml, mo = (statistics.median(times[k]) for k in ("bare", "listing", "listed", "engine"))
    print(f"median: {args.objects:,} objects x {args.versions} versions; bare DeleteObjects"
          f" {mb:.2f} s, list+DeleteObjects {ml:.2f} s, engine {mo:.2f} s; ratio"
          f" engine/DeleteObjects {mo / mb:.2f} (target <= 1.5), engine/list+DeleteObjects"
          f" {mo / ml:.2f}; floor: listing the bucket alone/DeleteObjects {mf / mb:.2f} (any"
          f" engine lists to find what is due, so no engine gets below it here)")  # fmt: skip


def _repeat(
    client: Any, args: argparse.Namespace, ledger: str, times: dict[str, list[float]]
) -> None:
    seeded = _timed_seed(client, args)
    n_bare, t_listing, t_bare = bare_delete(client)
    t_list = t_listing + t_bare
    _timed_seed(client, args)
    n_ours, t_ours = engine_delete(client, ledger)
    assert n_bare == n_ours == seeded, (n_bare, n_ours, seeded)
    assert not listed(client), "the engine left versions behind"
    runs = (("bare", t_bare), ("listing", t_listing), ("listed", t_list), ("engine", t_ours))
    for name, value in runs:
        times[name].append(value)
    print(f"rep {len(times['bare'])}: versions {seeded:,}  DeleteObjects {t_bare:.2f} s"
          f"  list+DeleteObjects {t_list:.2f} s  engine {t_ours:.2f} s", flush=True)  # fmt: skip


def _timed_seed(client: Any, args: argparse.Namespace) -> int:
    start = time.perf_counter()
    seeded = seed(client, args.objects, args.versions, versioned=not args.unversioned)
    print(f"  seeded {seeded:,} versions in {time.perf_counter() - start:.0f} s", flush=True)
    return seeded


if __name__ == "__main__":
    main()
