"""The one error type of the product: every message names what is wrong and where."""

from __future__ import annotations

from typing import Any


class RetentionError(Exception):
    """A problem a user can fix: bad catalogue, bad request parameters, bad connection.

    Raised before anything is changed. The message says which file, field or object is wrong
    and why, so it can be shown as-is in a terminal or an Airflow task log.
    """


class Unavailable(RetentionError):
    """A database or object store the run needs could not be reached (a transient fault).

    Unlike other retention errors the task is retried; the message names the connection.
    """


class PartlyDone(RetentionError):
    """A step did part of its work and failed at the rest (e.g. one system of several).

    ``result`` says what was done, without personal data: kept as the step's result so the
    response still tells it. The step fails at once (someone must look);
    :class:`PartlyUnavailable` when a fault was transient (the step is retried).
    """

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


class PartlyUnavailable(PartlyDone, Unavailable):
    """A step did part of its work; the rest met a transient fault: it is retried."""
