"""Benchmark: keying source values through lookup columns (normalised by their identifier kind,
`include.retention.lookup.SubjectMatcher`) against keying them as they are (the subject HMAC
alone, `SubjectRefHasher.refs`), per kind, alternating, in one process. Not a test::

    PYTHONPATH=. .venv/bin/python bench/bench_lookup.py [--values N] [--repeats R]

Prints microseconds per value (medians) and the ratio lookup / HMAC alone per kind.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
from collections.abc import Callable

from include.demo.fill import personnummer
from include.retention.catalogue import LookupColumn
from include.retention.lookup import SubjectMatcher
from include.retention.pseudonym import SubjectRefHasher

SAMPLES: dict[str, Callable[[int], str]] = {
    "email": lambda i: f"Person.{i}@Example.se",
    "phone": lambda i: f"070-{i % 1000:03d} {i // 1000 % 100:02d} {i % 97:02d}",
    "personnummer": personnummer,  # valid ones (the check digit right)
    "customer_id": lambda i: f"k {10000 + i}",
}


def _median_us(run: Callable[[], object], values: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / values * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--values", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    key = secrets.token_bytes(32)
    hasher = SubjectRefHasher(key)
    for kind, make in SAMPLES.items():
        values = [make(i) for i in range(args.values)]
        matcher = SubjectMatcher(key, [LookupColumn(kind, "c")])
        bare = _median_us(lambda v=values: hasher.refs(v), args.values, args.repeats)
        keyed = _median_us(lambda v=values, m=matcher, k=kind: m.refs(k, v), args.values,
                           args.repeats)  # fmt: skip
        print(f"{kind:13} HMAC alone {bare:6.2f} us/value, lookup {keyed:6.2f} us/value,"
              f" ratio {keyed / bare:5.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
