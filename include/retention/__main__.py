"""Command line: ``python -m include.retention {validate,register,setup,check} ...``.

``setup`` and ``check`` are deployment commands: they use Airflow's metadata database, so they
run on the set-up/scheduler side (``make demo``, ``make ui``, the container's init step),
never inside a task.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from include.retention.catalogue import POLICY_DIR, load_catalogue
from include.retention.errors import RetentionError
from include.retention.register import write_register


def _validate(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(args.catalogue)
    gaps = [a.id for a in catalogue if a.policy_gap]
    print(f"catalogue {args.catalogue or POLICY_DIR}: {len(catalogue)} activities valid")
    print(f"catalogue version: {catalogue.version}")
    print(f"policy gaps (report only, never deleted by an invented period): {', '.join(gaps)}")
    return 0


def _register(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(args.catalogue)
    for path in write_register(catalogue, args.out):
        print(f"wrote {path}")
    return 0


def _setup(args: argparse.Namespace) -> int:
    from include.retention.deployment import ENFORCEMENT_POOL, ensure_pool

    slots = ensure_pool(args.slots)
    print(f"pool {ENFORCEMENT_POOL!r}: {slots} slots (concurrent enforcement tasks)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from include.retention.dag_factory import dag_id_for
    from include.retention.deployment import check

    report = check([dag_id_for(a.id) for a in load_catalogue(args.catalogue)])
    for note in report.notes:
        print(note)
    for warning in report.warnings:
        print(f"WARNING: {warning}")
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    if report.ok and not report.warnings:
        print("deployment check: ok")
    return 0 if report.ok else 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.retention")
    parser.add_argument(
        "--catalogue", type=Path, default=None, help=f"catalogue folder ({POLICY_DIR})"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("validate", help="validate the catalogue").set_defaults(run=_validate)
    register = commands.add_parser("register", help="render the Art. 30 record")
    register.add_argument("--out", type=Path, default=Path("build/register"))
    register.set_defaults(run=_register)
    setup = commands.add_parser("setup", help="create the enforcement pool (deployment side)")
    setup.add_argument("--slots", type=int, default=None, help="default $RETENTION_POOL_SLOTS or 4")
    setup.set_defaults(run=_setup)
    commands.add_parser(
        "check", help="control DB is not Airflow's metadata DB; paused retention DAGs; the pool"
    ).set_defaults(run=_check)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except RetentionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
