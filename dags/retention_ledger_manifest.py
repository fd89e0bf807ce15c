"""Airflow DAG: the daily signed ledger manifest, published to S3 under Object Lock.

Wiring only: the work is ``include.retention.manifest_dag.publish_task``. A broken chain, or one
that no longer matches what was published before, fails the run (and alerts) instead of
publishing.
"""

from include.retention.manifest_dag import build_manifest_dag

dag = build_manifest_dag()
