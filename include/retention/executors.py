"""Airflow's LocalExecutor, with the retention tasks' heavy libraries imported before it forks.

Configure it as ``AIRFLOW__CORE__EXECUTOR=include.retention.executors.LocalExecutor``. On
Linux the executor forks its workers from the scheduler and each worker forks a process per
task, so whatever the scheduler has imported when the workers start, every task process has
without importing it: Great Expectations alone saves ~8 s of CPU per plan and verify task
(see :mod:`include.retention.preload`, and ``bench/bench_verify.py --preloaded``).
"""

from __future__ import annotations

from airflow.executors.local_executor import LocalExecutor as AirflowLocalExecutor

from include.retention import preload


class LocalExecutor(AirflowLocalExecutor):
    """The LocalExecutor, started after :func:`preload.task_libraries`."""

    def start(self) -> None:
        preload.task_libraries()
        super().start()
