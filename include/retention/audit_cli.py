"""The auditors' documents on the command line: ``certificate RUN_ID`` and ``report --from --to``.

Both read the ledger in the control database ($RETENTION_CONTROL_DB_URL, ``--control-db``, or
the Airflow connection ``retention_control_db``) and write a file, owner-only (0600), or
standard output with ``--out -``. Reading evidence needs no pseudonym key.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from include.retention import connections
from include.retention.audit_publish import open_ledger, write_private
from include.retention.audit_report import FORMATS as REPORT_FORMATS
from include.retention.audit_report import build_report, report_bytes
from include.retention.catalogue import load_catalogue
from include.retention.certificate import FORMATS as CERTIFICATE_FORMATS
from include.retention.certificate import certificate_bytes
from include.retention.errors import RetentionError
from include.retention.texts import LANGUAGES

DEFAULT_DIR = Path("build/audit")


def _emit(data: bytes, out: str | None, default_name: str) -> int:
    if out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    path = Path(out) if out else DEFAULT_DIR / default_name
    print(f"wrote {write_private(path, data)}")
    return 0


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _certificate(args: argparse.Namespace) -> int:
    data = certificate_bytes(
        open_ledger(args.control_db), args.run_id, language=args.lang, fmt=args.format,
        catalogue=load_catalogue(args.catalogue),
    )  # fmt: skip
    return _emit(data, args.out, f"certificate-{args.run_id}.{args.lang}.{args.format}")


def _report(args: argparse.Namespace) -> int:
    if args.to < args.from_:
        raise RetentionError(f"--to {args.to} is before --from {args.from_}")
    report = build_report(
        open_ledger(args.control_db), args.from_, args.to, args.lang,
        catalogue=load_catalogue(args.catalogue),
    )  # fmt: skip
    name = f"retention-report-{args.from_}-{args.to}.{args.lang}.{args.format}"
    return _emit(report_bytes(report, args.format), args.out, name)


def _common(parser: argparse.ArgumentParser, formats: tuple[str, ...]) -> None:
    parser.add_argument("--lang", choices=LANGUAGES, default="en", help="sv or en (default en)")
    parser.add_argument("--format", choices=formats, default="html")
    parser.add_argument(
        "--out", help=f"file to write (0600; default under {DEFAULT_DIR}/), or - for stdout"
    )
    parser.add_argument(
        "--control-db",
        help=f"control DB URL (default ${connections.CONTROL_DB_ENV}, else the Airflow"
        f" connection {connections.CONTROL_DB_CONN_ID})",
    )


def add_commands(commands: Any) -> None:
    """Register ``certificate`` and ``report`` on the CLI's sub-parsers."""
    certificate = commands.add_parser(
        "certificate", help="the deletion certificate of one ledger run (HTML or PDF)"
    )
    certificate.add_argument("run_id", metavar="RUN_ID", help="the ledger run id (a UUID)")
    _common(certificate, CERTIFICATE_FORMATS)
    certificate.set_defaults(run=_certificate)
    report = commands.add_parser("report", help="the audit report of a period (HTML, PDF or CSV)")
    report.add_argument("--from", dest="from_", type=_date, required=True, metavar="DATE")
    report.add_argument("--to", type=_date, required=True, metavar="DATE", help="inclusive")
    _common(report, REPORT_FORMATS)
    report.set_defaults(run=_report)
