"""Escalation when the safety gate holds back records whose policy deadline is passing.

Every record due under a deadline rule ("inom en månad", "direkt", consent withdrawal) is due at
the last scheduled run before its deadline: if a person does not approve this run, the next
scheduled run is too late. The plan lists those deadlines (counts and rule texts only), the
approval text names them, and :class:`DeadlineEscalation` — a notifier of the approval task —
e-mails the alert recipient (connection ``retention_smtp``, Variable ``retention_alert_email``)
as soon as the approval is requested.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
from typing import Any

from airflow.providers.smtp.notifications.smtp import SmtpNotifier

from include.retention.rules import TIMEZONE, next_run_day, start_of_day

log = logging.getLogger(__name__)

SMTP_CONN_ID = "retention_smtp"
ALERT_TO = "{{ var.value.get('retention_alert_email', 'dataskydd@example.com') }}"


def deadline_at_stake(schedule: str, as_of: dt.datetime) -> dt.datetime:
    """The latest instant by which records due now under a deadline rule must be gone: the
    start of the next scheduled run's day (their deadline falls before that run)."""
    today = as_of.astimezone(TIMEZONE).date()
    return start_of_day(next_run_day(schedule, today))


def deadline_text(stakes: list[dict[str, Any]]) -> str:
    """The sentence the approval text gains when deadlines are at stake ('' when none are)."""
    if not stakes:
        return ""
    parts = [
        f"{s['records']} records under '{s['rule']}' must be deleted before {s['deadline']}"
        for s in stakes
    ]
    return (
        " Policy deadlines at stake: " + "; ".join(parts) + " (Europe/Stockholm); the next"
        " scheduled run is too late, so rejecting or not answering misses them."
    )


class DeadlineEscalation(SmtpNotifier):
    """E-mails the alert recipient when an approval is requested while policy deadlines are at
    stake; sends nothing otherwise."""

    def __init__(self, activity_name: str, dag_id: str) -> None:
        super().__init__(to=ALERT_TO, smtp_conn_id=SMTP_CONN_ID)
        self.activity_name = activity_name
        self.dag_id = dag_id

    def notify(self, context: Any) -> None:
        planned = context["ti"].xcom_pull(task_ids="plan") or {}
        stakes = planned.get("deadlines_at_stake") or []
        if not stakes:
            log.info("no policy deadline at stake: no escalation")
            return
        self.subject = (
            f"[retention] ESCALATION: approval pending for {self.activity_name},"
            f" policy deadline {stakes[0]['deadline']}"
        )
        self.html_content = _body(self.activity_name, self.dag_id, planned, stakes)
        log.warning("escalating: %s", self.subject)
        super().notify(context)


def _body(name: str, dag_id: str, planned: dict[str, Any], stakes: list[dict[str, Any]]) -> str:
    items = "".join(
        f"<li>{s['records']} records: {html.escape(s['rule'])} — deadline"
        f" <b>{html.escape(s['deadline'])}</b></li>"
        for s in stakes
    )
    return (
        f"<p>The retention run of <b>{html.escape(name)}</b> (DAG <code>{dag_id}</code>,"
        f" as of {html.escape(planned.get('as_of', ''))}) tripped its volume limit and waits for"
        f" approval. Records whose policy deadline passes before the next scheduled run:</p>"
        f"<ul>{items}</ul><p>{html.escape(planned.get('approval_text', ''))}</p>"
        "<p>Answer the <code>approve</code> task in the Airflow UI (Required actions) now:"
        " rejecting or not answering within the timeout misses these deadlines.</p>"
    )
