"""``python -m include.retention holds place|list|release|verify``: legal holds and Art. 18
restrictions for the people who handle disputes.

A hold on a person is placed by one identifier (e-mail, phone, personnummer or customer id,
normalised as in `identifiers`); the register keeps only its keyed reference. Give ``-`` as
the value to type it on standard input instead, so it stays out of the shell history and the
process list. A hold on one record names the system, dataset and primary key exactly as the
catalogue does. Every placement and release is chained into the ledger (see `holds`).

The control database is ``--control-db`` or the one the workers use
(``$RETENTION_CONTROL_DB_URL`` or the Airflow connection ``retention_control_db``); the
pseudonym key is the Airflow connection ``retention_pseudonym_key``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import sqlalchemy as sa

from include.retention import connections
from include.retention.errors import RetentionError
from include.retention.holds import HOLD_KINDS, HoldRegister, holds_table
from include.retention.identifiers import KINDS, LABELS, normalise

OPTION = {kind: "--" + kind.replace("_", "-") for kind in KINDS}


def command_group(commands: Any, name: str, help_text: str) -> Any:
    """A command with verbs and the ``--control-db`` option (``holds``, ``requests``)."""
    group = commands.add_parser(name, help=help_text)
    group.add_argument(
        "--control-db", help="control DB URL (default: the workers' control database)"
    )
    return group.add_subparsers(dest="verb", required=True)


def register_for(args: argparse.Namespace) -> HoldRegister:
    engine = connections.control_engine(args.control_db)
    register = HoldRegister(engine, connections.pseudonym_key())
    register.create_tables()
    return register


def _read_value(kind: str, value: str) -> str:
    if value != "-":
        return value
    if sys.stdin.isatty():
        print(f"{LABELS[kind]}: ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().rstrip("\n")


def _subject(args: argparse.Namespace) -> tuple[str, str] | None:
    given = [(kind, getattr(args, kind)) for kind in KINDS if getattr(args, kind) is not None]
    if len(given) > 1:
        raise RetentionError(
            "give one identifier per hold: " + ", ".join(OPTION[k] for k, _ in given)
        )
    if not given:
        return None
    kind, value = given[0]
    return kind, normalise(kind, _read_value(kind, value), field=OPTION[kind]).value


def _place(args: argparse.Namespace) -> int:
    subject = _subject(args)
    record = (args.system, args.dataset, args.pk)
    if subject is None and None in record:
        raise RetentionError(
            "say what to hold: a person (" + " | ".join(OPTION.values()) + ") or one record"
            " (--system, --dataset and --pk, as the catalogue names them)"
        )
    if subject is not None and any(part is not None for part in record):
        raise RetentionError("hold either a person or one record, not both in one command")
    register = register_for(args)
    common = {"kind": args.kind, "reason": args.reason, "placed_by": args.by}
    if subject is not None:
        hold_id = register.place_subject_hold(subject[1], **common)
        what = f"every record of the person given by {subject[0]}"
    else:
        hold_id = register.place_record_hold(args.system, args.dataset, args.pk, **common)
        what = f"record {args.pk!r} of {args.system}/{args.dataset}"
    print(f"placed {args.kind} {hold_id} on {what}; retention runs will keep it until released")
    return 0


def _rows(register: HoldRegister, show_all: bool) -> list[dict[str, Any]]:
    t = holds_table
    query = sa.select(t).order_by(t.c.id)
    if not show_all:
        query = query.where(t.c.released_at.is_(None))
    with register.engine.connect() as conn:
        return [row._asdict() for row in conn.execute(query)]


def _target(row: dict[str, Any]) -> str:
    if row["scope"] == "subject":
        return f"person {bytes(row['subject_ref']).hex()[:12]}…"
    return f"{row['system']}/{row['dataset']} record {bytes(row['record_ref']).hex()[:12]}…"


def _when(value: Any) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def _list(args: argparse.Namespace) -> int:
    rows = _rows(register_for(args), args.all)
    if args.json:
        print(json.dumps([_json_row(row) for row in rows], indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("no active holds" if not args.all else "no holds")
        return 0
    for row in rows:
        state = (
            f"released {_when(row['released_at'])} by {row['released_by']}"
            if row["released_at"] is not None
            else "active"
        )
        print(
            f"{row['id']:>5}  {row['kind']:<11} {_target(row)}  placed {_when(row['placed_at'])}"
            f" by {row['placed_by']}  [{state}]\n       reason: {row['reason']}"
        )
    return 0


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in ("subject_ref", "record_ref")}
    for name in ("subject_ref", "record_ref"):
        out[name] = bytes(row[name]).hex() if row[name] is not None else None
    for name in ("placed_at", "released_at"):
        out[name] = _when(row[name])
    return out


def _release(args: argparse.Namespace) -> int:
    register_for(args).release(args.hold_id, released_by=args.by)
    print(f"released hold {args.hold_id}; the release is recorded in the ledger")
    return 0


def _verify(args: argparse.Namespace) -> int:
    report = register_for(args).verify()
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"hold register: {report.holds} holds, {'ok' if report.ok else 'NOT OK'}")
    return 0 if report.ok else 1


def add_commands(commands: Any) -> None:
    """Register ``holds`` and its verbs on the main parser's subcommands."""
    verbs = command_group(commands, "holds", "legal holds and restrictions: place, list, release")

    place = verbs.add_parser("place", help="hold a person or one record (with reason and who)")
    for kind, option in OPTION.items():
        place.add_argument(option, dest=kind, metavar="VALUE", help=f"{LABELS[kind]} ('-': stdin)")
    place.add_argument("--system", help="a record's system, as the catalogue names it")
    place.add_argument("--dataset", help="its table or bucket")
    place.add_argument("--pk", help="its primary key")
    place.add_argument("--kind", choices=HOLD_KINDS, default="legal_hold")
    place.add_argument("--reason", required=True, help="why (the dispute, case number, ground)")
    place.add_argument("--by", required=True, help="who places it (your name or user id)")
    place.set_defaults(run=_place)

    listing = verbs.add_parser("list", help="active holds (with --all also released ones)")
    listing.add_argument("--all", action="store_true")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=_list)

    release = verbs.add_parser("release", help="release (lift) a hold: its own logged action")
    release.add_argument("hold_id", type=int)
    release.add_argument("--by", required=True, help="who releases it")
    release.set_defaults(run=_release)

    verbs.add_parser(
        "verify", help="check the register against its chained evidence in the ledger"
    ).set_defaults(run=_verify)
