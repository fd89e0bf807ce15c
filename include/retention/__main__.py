"""Command line: ``python -m include.retention {validate,register} ...``."""

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
    assumptions = [f"{a.id}.{x.name}={x.value}" for a in catalogue for x in a.assumptions]
    print(f"assumptions to confirm (the policy does not state them): {', '.join(assumptions)}")
    return 0


def _register(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(args.catalogue)
    for path in write_register(catalogue, args.out):
        print(f"wrote {path}")
    return 0


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
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except RetentionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
