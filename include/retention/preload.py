"""Heavy third-party libraries of the retention tasks, imported once and quietly.

Great Expectations costs ~8 s of CPU to import. A task process that imports it itself pays that
every time (27 verify and 27 plan tasks per nightly burst); an executor that imports it before it
forks its task processes pays it once (:mod:`include.retention.executors`). Only libraries are
preloaded, never the project's own modules: a deployed code change must reach the next task
without restarting the scheduler.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from types import ModuleType

log = logging.getLogger(__name__)


def great_expectations() -> ModuleType:
    """GX, imported without usage statistics, without its INFO chatter and without the
    deprecation warnings its own imports raise (nothing an operator can act on)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import great_expectations as gx

    return gx


def task_libraries() -> None:
    """Everything heavy a retention task imports: GX (with pandas and SQLAlchemy) and boto3."""
    started = time.monotonic()
    great_expectations()
    import boto3  # noqa: F401

    log.info(
        "task libraries preloaded for the task processes (Great Expectations, boto3) in %.1f s",
        time.monotonic() - started,
    )
