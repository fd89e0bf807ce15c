"""Benchmark: parsing the DAG folder, against parsing a folder with one trivial DAG.

Both are parsed by Airflow's DagBag in a fresh interpreter (as the DAG processor does), so the
baseline carries Airflow's own import and start-up cost and the ratio shows what the project's
DAG files add. Alternates ``--repeats`` times and prints the medians and the ratio. Not a
test: run it by hand::

    PYTHONPATH=. .venv/bin/python bench/bench_dag_parse.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
import json, sys, time
start = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start, "dags": len(bag.dags),
                  "errors": len(bag.import_errors)}))
"""
TRIVIAL_DAG = """
import pendulum
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("baseline", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):
    EmptyOperator(task_id="noop")
"""


def _parse(folder: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder)], cwd=ROOT, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        baseline_dir = Path(tmp)
        (baseline_dir / "baseline.py").write_text(TRIVIAL_DAG)
        base, ours = [], []
        for _ in range(args.repeats):
            base.append(_parse(baseline_dir)["seconds"])
            result = _parse(ROOT / "dags")
            ours.append(result["seconds"])
    b, o = statistics.median(base), statistics.median(ours)
    print(f"baseline (1 trivial DAG): median {b:.2f} s")
    print(f"dags/ ({result['dags']} DAGs, {result['errors']} import errors): median {o:.2f} s")
    print(f"ratio dags/ / baseline: {o / b:.2f}")


if __name__ == "__main__":
    main()
