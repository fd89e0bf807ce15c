"""``python -m include.retention requests list|extend|status|notified|recipients|reapply``:
the data-subject request register (Art. 12(3)) for the people who answer requests.

Requests are registered by the ``dsr_*`` DAGs; here a person lists them with their deadlines,
extends one (by up to two more months, with the reason the person is told, while the first
month runs), closes one by hand (e.g. refused as manifestly unfounded) and records that a
recipient was told of an erasure, rectification or restriction (Art. 19; ``recipients`` lists
who must be told and who was), and after a backup restore re-applies every recorded erasure
and the suppression list to the restored system (``reapply``). Requests are named
``DSR-N`` (or just N). Control database and key as for ``holds`` (see `holds_cli`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from include.retention import connections, request_runs
from include.retention.holds_cli import command_group
from include.retention.subject_requests import (
    REQUEST_KINDS,
    STATUSES,
    Request,
    RequestRegister,
    local_date,
)


def register_for(args: argparse.Namespace) -> RequestRegister:
    engine = connections.control_engine(args.control_db)
    register = RequestRegister(engine, connections.pseudonym_key())
    register.create_tables()
    return register


def request_id(value: str) -> int:
    """``DSR-12`` or ``12``."""
    text = value.strip().upper().removeprefix("DSR-")
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a request number such as DSR-12")
    return int(text)


def _line(request: Request, today: dt.date) -> str:
    left = request.days_left(today)
    when = f"{-left} days OVERDUE" if left < 0 and request.open else f"{left} days left"
    extended = f", extended {request.extended_months} month(s)" if request.extended_months else ""
    return (
        f"{request.ref:<8} {request.kind:<19} {REQUEST_KINDS[request.kind][0]:<10}"
        f" received {local_date(request.received_at)}  due {request.due_on}"
        f" ({when if request.open else 'closed'}{extended})  {request.status}"
        f"  filed by {request.filed_by}"
    )


def _list(args: argparse.Namespace) -> int:
    requests = register_for(args).requests(open_only=not args.all)
    today = local_date(dt.datetime.now(dt.UTC))
    if args.json:
        rows = [r.summary() | {"days_left": r.days_left(today), "filed_by": r.filed_by,
                               "outcome": r.outcome} for r in requests]  # fmt: skip
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    elif not requests:
        print("no open requests" if not args.all else "no requests")
    for request in [] if args.json else requests:
        print(_line(request, today))
    return 0


def _extend(args: argparse.Namespace) -> int:
    request = register_for(args).extend(
        args.request, months=args.months, reason=args.reason, by=args.by
    )
    print(
        f"{request.ref} now due {request.due_on} (extended {request.extended_months} month(s));"
        " tell the person about the extension and its reason now (Art. 12(3))"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    outcome = {"note": "set by hand", "reason_code": args.reason_code} if args.reason_code else None
    request = register_for(args).set_status(args.request, args.status, by=args.by, outcome=outcome)
    print(f"{request.ref} is now {request.status}")
    return 0


def _notified(args: argparse.Namespace) -> int:
    register = register_for(args)
    register.record_notified(args.request, args.recipient, by=args.by)
    told = [n["recipient"] for n in register.notices(args.request)]
    print(f"DSR-{args.request}: recipients told so far: {'; '.join(told)}")
    return 0


def _forget_runs(args: argparse.Namespace) -> int:
    before = args.before or request_runs.cutoff(args.older_than_days)
    count = request_runs.forget_runs(before, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{verb} {count} finished run(s) of the dsr_* DAGs started before {before.isoformat()}"
        " from Airflow's metadata database (their conf held the identifiers); the request"
        " register keeps every request"
    )
    return 0


def _recipients(args: argparse.Namespace) -> int:
    """The recipients an erasure or restriction must be told of (Art. 19), and who was told."""
    register = register_for(args)
    request = register.get(args.request)
    steps = (request.outcome or {}).get("steps", {})
    wanted = {r["en"]: r for step in steps.values() for r in step.get("recipients_to_notify", [])}
    told = {n["recipient"]: n for n in register.notices(args.request)}
    if not wanted and not told:
        print(f"{request.ref}: no recipient to tell (nothing erased or restricted was shared)")
    for name in sorted(wanted.keys() | told.keys()):
        notice = told.get(name)
        done = (f"told {notice['notified_at']:%Y-%m-%d %H:%M} by {notice['notified_by']}"
                if notice else "NOT TOLD YET")  # fmt: skip
        print(f"{request.ref}  {name} ({wanted.get(name, {}).get('sv', '-')}): {done}")
    return 0


def _reapply(args: argparse.Namespace) -> int:
    from include.retention import dsr
    from include.retention.catalogue import load_valid
    from include.retention.holds import check_catalogue

    engine = connections.control_engine(args.control_db)
    runtime = dsr.DsrRuntime.of(engine, connections.pseudonym_key())
    catalogue, invalid = load_valid(args.catalogue)
    check_catalogue(engine, catalogue, invalid)
    result = dsr.reapply(
        args.system, user=args.by, runtime=runtime, catalogue=catalogue,
        origin={"command": "requests reapply", "run_type": "manual"},
    )  # fmt: skip
    kept = ", ".join(f"{k['records']} {k['reason']}" for k in result["kept"]) or "nothing"
    print(
        f"{args.system}: {result['erasures_recorded']} recorded erasure(s) and the suppression"
        f" list ({result['suppressed']}) re-applied to {result['bindings_searched']} dataset(s):"
        f" {result['erased']} record(s) erased; kept {kept}"
    )
    for b in result["bindings"]:
        runs = ", ".join(b["ledger_runs"]) or "none"
        print(f"  {b['activity']} ({b['system']}/{b['dataset']}): {b['erased']} erased,"
              f" ledger runs {runs}")  # fmt: skip
    return 0


def add_commands(commands: Any) -> None:
    """Register ``requests`` and its verbs on the main parser's subcommands."""
    verbs = command_group(commands, "requests", "data-subject requests: deadlines, extensions")

    listing = verbs.add_parser("list", help="open requests by due date (--all: closed too)")
    listing.add_argument("--all", action="store_true")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_list)

    extend = verbs.add_parser("extend", help="extend the deadline by 1-2 months (Art. 12(3))")
    extend.add_argument("request", type=request_id, help="DSR-N")
    extend.add_argument("--months", type=int, choices=(1, 2), required=True)
    extend.add_argument("--reason", required=True, help="the reason the person is told")
    extend.add_argument("--by", required=True, help="who decides the extension")
    extend.set_defaults(run=_extend)

    status = verbs.add_parser("status", help="set a request's status by hand")
    status.add_argument("request", type=request_id)
    status.add_argument("status", choices=STATUSES)
    status.add_argument("--by", required=True)
    status.add_argument(
        "--reason-code", type=reason_code,
        help="a short code, no personal data (e.g. manifestly_unfounded)",
    )  # fmt: skip
    status.set_defaults(run=_status)

    notified = verbs.add_parser("notified", help="record that a recipient was told (Art. 19)")
    notified.add_argument("request", type=request_id)
    notified.add_argument("--recipient", required=True, help="as the register names it")
    notified.add_argument("--by", required=True)
    notified.set_defaults(run=_notified)

    forget = verbs.add_parser(
        "forget-runs",
        help="delete finished dsr_* runs (their conf holds identifiers) from Airflow's DB",
    )
    when = forget.add_mutually_exclusive_group()
    when.add_argument(
        "--older-than-days", type=int, default=request_runs.DEFAULT_DAYS,
        help=f"runs started this many days ago or earlier (default {request_runs.DEFAULT_DAYS})",
    )  # fmt: skip
    when.add_argument("--before", type=aware_time, help="ISO time with zone; default: now - days")
    forget.add_argument("--dry-run", action="store_true", help="say what, change nothing")
    forget.set_defaults(run=_forget_runs)

    recipients = verbs.add_parser(
        "recipients", help="the recipients to tell of an erasure (Art. 19) and who was told"
    )
    recipients.add_argument("request", type=request_id)
    recipients.set_defaults(run=_recipients)

    reapply = verbs.add_parser(
        "reapply",
        help="after a backup restore: erase again from SYSTEM every recorded erasure and apply"
        " the suppression list (evidence in the ledger; idempotent)",
    )
    reapply.add_argument("--system", required=True, help="the restored system, as the catalogue"
                         " names it (e.g. crm)")  # fmt: skip
    reapply.add_argument("--by", required=True, help="who re-applies (the run's approver)")
    reapply.set_defaults(run=_reapply)


def reason_code(value: str) -> str:
    if not value.replace("_", "").isascii() or not value.replace("_", "").isalnum():
        raise argparse.ArgumentTypeError("a reason code is letters, digits and '_' only")
    return value


def aware_time(value: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO time") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no time zone (add +00:00)")
    return parsed
