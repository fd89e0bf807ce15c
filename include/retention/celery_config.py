"""The Celery workers' configuration: Airflow's defaults, and the retention tasks' heavy
libraries imported in the worker before it forks its pool.

Configure it as ``[celery] celery_config_options`` =
``include.retention.celery_config.CELERY_CONFIG``.
A Celery worker forks its pool processes from the main process and each of them forks a process
per task, so what the main process has imported every task process has: the same saving as
:mod:`include.retention.executors` gives the LocalExecutor. ``worker_init`` only fires in
``airflow celery worker``; the scheduler, which reads the same configuration to send tasks,
imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_init

from include.retention import preload

CELERY_CONFIG: dict[str, Any] = dict(DEFAULT_CELERY_CONFIG)


@worker_init.connect
def _preload_task_libraries(**_: Any) -> None:
    preload.task_libraries()
