"""Publishing the audit report: the weekly ``retention_audit_report`` DAG's work.

The report of the period (by default the previous week, Monday to Sunday in Stockholm) is
written in every language and format to the configured location: a folder (files 0600, the
folder 0700) or an S3 prefix ``s3://bucket/prefix`` (through the Airflow connection
``retention_s3``). Never into Airflow's metadata database: ``airflow db clean`` would purge it.
The location is the Airflow Variable ``retention_audit_report_location``, default
``$AIRFLOW_HOME/retention_reports``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pendulum
import sqlalchemy as sa

from include.retention import connections
from include.retention.audit_report import FORMATS, AuditReport, build_report, report_bytes
from include.retention.catalogue import Catalogue, load_valid
from include.retention.certificate import LedgerState
from include.retention.chain import ledger_table
from include.retention.errors import RetentionError
from include.retention.evidence import EvidenceReader
from include.retention.object_store import S3_CONN_ID, s3_client
from include.retention.run_record import TIMEZONE
from include.retention.texts import LANGUAGES

log = logging.getLogger(__name__)

LOCATION_VARIABLE = "retention_audit_report_location"
DEFAULT_FOLDER = "retention_reports"  # under $AIRFLOW_HOME


def open_ledger(url: str | None = None) -> EvidenceReader:
    """The ledger for reading: whoever prints a certificate or a report needs no secret key."""
    return EvidenceReader(ledger_engine(url))


def ledger_engine(url: str | None = None) -> sa.Engine:
    """The control database holding the ledger (``url``, else where tasks find it); refuses a
    SQLite file that does not exist (connecting would create an empty one) and a database
    without the ledger, naming what to give."""
    target = sa.make_url(url or connections.control_url())
    shown = target.render_as_string(hide_password=True)
    if target.get_backend_name() == "sqlite" and not Path(target.database or "").is_file():
        raise RetentionError(
            f"no control database at {shown}: give --control-db or set"
            f" {connections.CONTROL_DB_ENV} to the database holding the ledger"
        )
    engine = connections.control_engine(url)
    if not sa.inspect(engine).has_table(ledger_table.name):
        engine.dispose()
        raise RetentionError(f"{shown} holds no ledger ({ledger_table.name} is missing)")
    return engine


def write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` readable by its owner only (0600), replacing any file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o600)  # whatever the umask; the old file, if any, is replaced
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def previous_week(run_after: dt.datetime) -> tuple[dt.date, dt.date]:
    """Monday to Sunday of the week before the one ``run_after`` falls in (Stockholm)."""
    day = pendulum.instance(run_after).in_timezone(TIMEZONE).date()
    monday = day - dt.timedelta(days=day.weekday())
    return monday - dt.timedelta(days=7), monday - dt.timedelta(days=1)


def resolve_period(params: dict[str, Any], run_after: dt.datetime) -> tuple[dt.date, dt.date]:
    """The DAG params ``from``/``to`` (YYYY-MM-DD, both or neither), else the previous week."""
    raw_from, raw_to = params.get("from"), params.get("to")
    if not raw_from and not raw_to:
        return previous_week(run_after)
    if not raw_from or not raw_to:
        raise RetentionError("give both 'from' and 'to' (YYYY-MM-DD), or neither for last week")
    try:
        first, last = dt.date.fromisoformat(str(raw_from)), dt.date.fromisoformat(str(raw_to))
    except ValueError:
        raise RetentionError(
            f"'from' {raw_from!r} / 'to' {raw_to!r}: give dates as YYYY-MM-DD"
        ) from None
    if last < first:
        raise RetentionError(f"'to' {last} is before 'from' {first}")
    return first, last


@dataclass(frozen=True)
class Location:
    """Where reports go: a folder, or an S3 bucket and key prefix."""

    folder: Path | None = None
    bucket: str | None = None
    prefix: str = ""

    @classmethod
    def parse(cls, raw: str | None) -> Location:
        raw = (raw or "").strip()
        if not raw:
            home = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
            return cls(folder=home / DEFAULT_FOLDER)
        if raw.startswith("s3://"):
            bucket, _, prefix = raw[len("s3://") :].partition("/")
            if not bucket:
                raise RetentionError(f"{LOCATION_VARIABLE} {raw!r}: no bucket (s3://bucket/prefix)")
            return cls(bucket=bucket, prefix=prefix.strip("/"))
        if "://" in raw:
            raise RetentionError(
                f"{LOCATION_VARIABLE} {raw!r}: give a folder or s3://bucket/prefix"
            )
        return cls(folder=Path(raw).expanduser())

    def describe(self, name: str) -> str:
        if self.folder is not None:
            return str(self.folder / name)
        return f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}{name}"


def _put(location: Location, name: str, data: bytes, client: Callable[[], Any]) -> str:
    if location.folder is not None:
        return str(write_private(location.folder / name, data))
    key = f"{location.prefix}/{name}" if location.prefix else name
    content_type = {"html": "text/html; charset=utf-8", "pdf": "application/pdf",
                    "csv": "text/csv; charset=utf-8"}[name.rsplit(".", 1)[1]]  # fmt: skip
    client().put_object(Bucket=location.bucket, Key=key, Body=data, ContentType=content_type)
    return location.describe(name)


def publish(
    first: dt.date,
    last: dt.date,
    location: Location,
    *,
    ledger: EvidenceReader,
    catalogue: Catalogue,
    client: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Write the period's report in every language and format; returns what was written and
    the ledger's chain check (no personal data)."""
    state = LedgerState.of(ledger)
    get_client = client or (lambda: s3_client(S3_CONN_ID))
    reports = [
        build_report(ledger, first, last, language, catalogue=catalogue, state=state)
        for language in LANGUAGES
    ]
    written = []
    for report in reports:
        for fmt in FORMATS:
            name = f"retention-report-{first}-{last}.{report.language}.{fmt}"
            written.append(_put(location, name, report_bytes(report, fmt), get_client))
            log.info("wrote %s", written[-1])
    return _summary(reports[0], written)


def _summary(report: AuditReport, written: list[str]) -> dict[str, Any]:
    return {
        "from": report.first.isoformat(),
        "to": report.last.isoformat(),
        "files": written,
        "runs": sum(len(line.runs) for line in report.lines),
        "exceptions": sum(sum(line.exceptions().values()) for line in report.lines),
        "ledger_ok": report.ledger.ok,
        "ledger_problem": report.ledger.problem,
    }


def publish_task(params: dict[str, Any], run_after: dt.datetime, location: str) -> dict[str, Any]:
    """The DAG task: resolve the period, publish, and fail (after writing the report) when
    the ledger's chain is broken, so someone is alerted."""
    first, last = resolve_period(params, run_after)
    target = Location.parse(location)
    summary = publish(first, last, target, ledger=open_ledger(), catalogue=load_valid()[0])
    if not summary["ledger_ok"]:
        raise RetentionError(
            f"the deletion ledger's chain is broken: {summary['ledger_problem']}. The report"
            f" was written ({target.describe('')}) and says where; investigate before trusting"
            " the evidence"
        )
    return summary
