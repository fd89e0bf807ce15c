"""``python -m include.retention ledger …``: the ledger for auditors and operators.

- ``verify``: recompute the hash chain, the subject index and the head, check the hold register
  against its history and the ledger against every published manifest; exit 1 naming the
  first broken entry or manifest.
- ``lookup``: by a person's identifier (``--email``, ``--phone``, ``--personnummer``,
  ``--customer-id``) or by ``--system/--dataset/--key``: what was deleted or anonymised, when,
  by which run, rule and approval, or that nothing was. Needs the pseudonym key (the Airflow
  connection ``retention_pseudonym_key``, as tasks do). The identifier is never printed.
- ``export``: the runs or batches of a period (and activity) as CSV or JSON: counts, times,
  rules, run identities; no references, no personal data.
- ``publish``: publish a signed manifest now (as the daily DAG does); ``manifest-key``: the
  signing key's public key (``--new``: a new key).
- ``keys``: which pseudonym key versions made the evidence, until when retained ones are needed.

The control database is ``--control-db``, else where tasks find it (``connections.control_url``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from include.retention import connections, manifest, object_store
from include.retention.audit_publish import ledger_engine, write_private
from include.retention.errors import RetentionError
from include.retention.evidence import Evidence, EvidenceReader, VerifyReport
from include.retention.identifiers import KINDS, LABELS, normalise
from include.retention.pseudonym import key_id

EXIT_BROKEN = 1


def _reader(args: argparse.Namespace, *, with_key: bool = False) -> EvidenceReader:
    engine = ledger_engine(args.control_db)  # (a mistyped SQLite path: refused, not created)
    if not with_key:
        return EvidenceReader(engine)
    return EvidenceReader(engine, keyring=connections.pseudonym_keyring())


# ------------------------------------------------------------------------------ verify


def _verify(args: argparse.Namespace) -> int:
    reader = _reader(args)
    report = reader.verify()
    _print_verify(report)
    if not report.ok:
        return EXIT_BROKEN
    problems = _hold_problems(reader) + _manifest_problems(args, reader)
    for problem in problems:
        print(f"LEDGER BROKEN: {problem}", file=sys.stderr)
    return EXIT_BROKEN if problems else 0


def _hold_problems(reader: EvidenceReader) -> list[str]:
    import sqlalchemy as sa

    from include.retention.holds import HoldRegister, holds_table

    if not sa.inspect(reader.engine).has_table(holds_table.name):
        print("hold register not checked: this database has none")
        return []
    try:
        key = connections.pseudonym_key()
    except RetentionError as exc:
        print(f"hold register not checked: {exc}")
        return []
    report = HoldRegister(reader.engine, key).verify()
    if report.ok:
        print(f"hold register ok: {report.holds} holds match their chained history")
    return [f"hold register: {p}" for p in report.problems]


def _manifest_problems(args: argparse.Namespace, reader: EvidenceReader) -> list[str]:
    if args.no_manifests:
        print("published manifests not checked (--no-manifests)")
        return []
    bucket = args.bucket or manifest.bucket_name()
    try:
        client = object_store.s3_client()
        public_keys = args.public_key or [manifest.signing_key().public()]
        published = manifest.fetch_all(client, bucket)
    except Exception as exc:  # a missing connection, key or bucket: said plainly
        message = f"published manifests not checked ({type(exc).__name__}: {exc})"
        if args.require_manifests:
            return [message]
        print(f"WARNING: {message}; the chain is only shown to be self-consistent")
        return []
    problems = manifest.check(reader, published, public_keys)
    if not problems:
        print(f"published manifests ok: the ledger matches all {len(published)} in s3://{bucket}")
    return problems


def _print_verify(report: VerifyReport) -> None:
    if report.ok:
        print(f"ledger ok: {report.entries} entries, head seq {report.head_seq} {report.head_hash}")
        return
    print(
        f"LEDGER BROKEN at entry seq {report.bad_seq}: {report.problem}\n"
        f"the chain verified up to seq {report.entries} ({report.head_hash}); keep the database"
        " as it is and compare it with a backup and the published manifests",
        file=sys.stderr,
    )


def _publish(args: argparse.Namespace) -> int:
    reader = _reader(args)
    key = manifest.publish(
        reader, object_store.s3_client(), manifest.signing_key(), bucket=args.bucket
    )
    print(f"published s3://{args.bucket or manifest.bucket_name()}/{key}")
    return 0


def _manifest_key(args: argparse.Namespace) -> int:
    if args.new:
        key = manifest.SigningKey.new()
        print(
            f"private (store it as the password of the Airflow connection"
            f" {manifest.SIGNING_KEY_CONN_ID!r}, nowhere else):\n{key.text()}"
        )
    else:
        key = manifest.signing_key()
    print(f"public (give it to auditors: ledger verify --public-key …):\n{key.public()}")
    return 0


def _keys(args: argparse.Namespace) -> int:
    """Which pseudonym key versions made the evidence, and which retained ones may go."""
    reader = _reader(args, with_key=True)
    ring = connections.pseudonym_keyring()
    current, retained = key_id(ring.current), [key_id(k) for k in ring.retained]
    usage, holds = reader.key_usage(), reader.active_hold_keys()
    keep = dt.timedelta(days=args.evidence_days)
    print(f"current key {current}; retained: {', '.join(retained) or 'none'}")
    for kid, use in sorted(usage.items(), key=lambda item: item[1]["first"]):
        label = kid or "unrecorded (before key ids were recorded: the first key)"
        active = sum(1 for k in holds.values() if k == kid)
        print(
            f"- {label}: {use['entries']} evidence entries, {use['first'][:10]} to"
            f" {use['last'][:10]}; {active} active hold(s)"
        )
    for kid in retained:
        last = usage.get(kid, {}).get("last")
        if last is None:
            print(f"retained key {kid} made no evidence here: it can be destroyed")
            continue
        until = (dt.datetime.fromisoformat(last) + keep).date()
        print(f"retained key {kid}: keep it for lookups until {until}, then destroy it")
    stale = sorted(hold for hold, kid in holds.items() if kid not in (None, current))
    if stale:
        print(f"place again under the current key, then release: {', '.join(stale)}")
        return EXIT_BROKEN
    return 0


# ------------------------------------------------------------------------------ lookup


def _lookup(args: argparse.Namespace) -> int:
    reader = _reader(args, with_key=True)
    by_record = (args.system, args.dataset, args.key)
    given = {kind: getattr(args, kind) for kind in KINDS if getattr(args, kind)}
    if any(by_record) and given:
        raise RetentionError("look up either a person or a record (--system/--dataset/--key)")
    if any(by_record):
        if not all(by_record):
            raise RetentionError("a record lookup needs --system, --dataset and --key")
        key = args.key[0] if len(args.key) == 1 else tuple(args.key)
        what = f"the given record of {args.system}/{args.dataset}"
        found = reader.lookup(args.system, args.dataset, key)
    elif given:
        ids = [
            normalise(kind, raw, field=f"--{kind.replace('_', '-')}") for kind, raw in given.items()
        ]
        what = "the person (" + ", ".join(LABELS[i.kind] for i in ids) + ")"
        found = reader.lookup_person([i.value for i in ids])
    else:
        raise RetentionError(
            "say whom to look up: --email, --phone, --personnummer or --customer-id,"
            " or a record by --system, --dataset and --key"
        )
    if args.json:
        json.dump([e.as_dict() for e in found], sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        _print_findings(what, found)
    return 0


def _print_findings(what: str, found: Sequence[Evidence]) -> None:
    if not found:
        print(f"nothing in the ledger: no run deleted or anonymised records of {what}")
        return
    print(f"{len(found)} batch(es) deleted or anonymised records of {what}:")
    for e in found:
        verb = {"delete": "deleted", "anonymise": "anonymised"}.get(e.action, e.action)
        partial = " (batch partially applied)" if e.outcome == "partial" else ""
        print(
            f"- {verb}{partial} at {e.at} in {e.system}/{e.dataset} by activity {e.activity_id}"
            f"\n  run {e.run_id} (Airflow {e.origin.get('dag_id') or '-'}"
            f" {e.origin.get('run_id') or '-'}), ledger entry {e.batch_seq}"
            f"\n  rule: {'; '.join(e.rules) or '-'}; as of {e.as_of}"
            f"\n  approved by: {e.approved_by or 'no approval recorded'}"
            + ("\n  (recorded on recovery after a crash)" if e.recovered else "")
        )


# ------------------------------------------------------------------------------ export


def _export(args: argparse.Namespace) -> int:
    reader = _reader(args)
    start, end = _day(args.start, "--from"), _day(args.end, "--to", next_day=True)
    if start and end and start >= end:
        raise RetentionError("--from must be on or before --to")
    rows_of = reader.run_rows if args.what == "runs" else reader.batch_rows
    rows = rows_of(start, end, args.activity)
    out = io.StringIO(newline="")
    if args.format == "json":
        json.dump(rows, out, indent=2, sort_keys=True)
        out.write("\n")
    else:
        _write_csv(out, rows)
    if args.out is None:
        sys.stdout.write(out.getvalue())
        return 0
    # approvers and triggering users are named: owner-only, like certificates and reports
    write_private(args.out, out.getvalue().encode("utf-8"))
    print(f"wrote {len(rows)} {args.what} to {args.out}", file=sys.stderr)
    return 0


def _write_csv(out: TextIO, rows: list[dict[str, Any]]) -> None:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def _day(raw: str | None, option: str, *, next_day: bool = False) -> str | None:
    """An ISO date (UTC day) as the ledger's ISO timestamp bound; --to includes its day."""
    if raw is None:
        return None
    try:
        day = dt.date.fromisoformat(raw)
    except ValueError:
        raise RetentionError(f"{option}: give a date as YYYY-MM-DD") from None
    day += dt.timedelta(days=1 if next_day else 0)
    return dt.datetime.combine(day, dt.time(), dt.UTC).isoformat(timespec="microseconds")


# ------------------------------------------------------------------------------ registration


def _option(kind: str) -> str:
    return "--" + kind.replace("_", "-")


def add_commands(commands: Any) -> None:
    """Register ``ledger verify|lookup|export`` on the main command line's subparsers."""
    ledger = commands.add_parser("ledger", help="verify, look up and export the deletion ledger")
    verbs = ledger.add_subparsers(dest="verb", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--control-db", help="control database URL (default: where tasks find it)")
    verify = verbs.add_parser(
        "verify", parents=[common], help="recompute the chain; exit 1 naming a broken entry"
    )
    verify.add_argument("--bucket", help=f"manifest bucket (default ${manifest.BUCKET_ENV})")
    verify.add_argument(
        "--public-key", action="append",
        help="an Ed25519 public key (base64) manifests may be signed with (default: the"
        " configured signing key's); repeat for old keys",
    )  # fmt: skip
    verify.add_argument("--no-manifests", action="store_true", help="check the database only")
    verify.add_argument(
        "--require-manifests", action="store_true", help="fail if manifests cannot be read"
    )
    verify.set_defaults(run=_verify)

    publish = verbs.add_parser(
        "publish", parents=[common], help="publish a signed manifest now (as the daily DAG does)"
    )
    publish.add_argument("--bucket", help=f"manifest bucket (default ${manifest.BUCKET_ENV})")
    publish.set_defaults(run=_publish)

    keys = verbs.add_parser(
        "keys", parents=[common], help="pseudonym key versions in the evidence; which may go"
    )
    keys.add_argument(
        "--evidence-days", type=int, default=manifest.DEFAULT_RETAIN_DAYS,
        help="how long evidence is kept (days; default that of the manifests)",
    )  # fmt: skip
    keys.set_defaults(run=_keys)

    key = verbs.add_parser("manifest-key", help="the manifest signing key's public key")
    key.add_argument("--new", action="store_true", help="generate a new signing key")
    key.set_defaults(run=_manifest_key)

    lookup = verbs.add_parser(
        "lookup", parents=[common], help="what was deleted or anonymised of a person or record"
    )
    for kind in KINDS:
        lookup.add_argument(_option(kind), dest=kind, help=LABELS[kind])
    lookup.add_argument("--system", help="a record: its system (as in the catalogue)")
    lookup.add_argument("--dataset", help="a record: its dataset (table or bucket)")
    lookup.add_argument(
        "--key", action="append", help="a record: its primary key (repeat for a composite key)"
    )
    lookup.add_argument("--json", action="store_true", help="print JSON")
    lookup.set_defaults(run=_lookup)

    export = verbs.add_parser(
        "export",
        parents=[common],
        help="runs or batches of a period as CSV/JSON (no personal data)",
    )
    export.add_argument("what", choices=("runs", "batches"), nargs="?", default="runs")
    export.add_argument("--from", dest="start", metavar="YYYY-MM-DD", help="first day (UTC)")
    export.add_argument("--to", dest="end", metavar="YYYY-MM-DD", help="last day (UTC), included")
    export.add_argument("--activity", help="only this activity")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("--out", type=Path, help="write to this file instead of stdout")
    export.set_defaults(run=_export)
