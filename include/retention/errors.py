"""The one error type of the product: every message names what is wrong and where."""

from __future__ import annotations


class RetentionError(Exception):
    """A problem a user can fix: bad catalogue, bad request parameters, bad connection.

    Raised before anything is changed. The message says which file, field or object is wrong
    and why, so it can be shown as-is in a terminal or an Airflow task log.
    """


class Unavailable(RetentionError):
    """A database or object store the run needs could not be reached (a transient fault).

    Unlike other retention errors the task is retried; the message names the connection.
    """
