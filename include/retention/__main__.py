"""Command line: ``python -m include.retention {validate,register} ...``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from include.retention.catalogue import POLICY_DIR, load_catalogue
from include.retention.connections import CONTROL_DB_ENV
from include.retention.errors import RetentionError
from include.retention.register import write_register


def _validate(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(args.catalogue)
    gaps = [a.id for a in catalogue if a.policy_gap]
    print(f"catalogue {args.catalogue or POLICY_DIR}: {len(catalogue)} activities valid")
    print(f"catalogue version: {catalogue.version}")
    print(f"policy gaps (report only, never deleted by an invented period): {', '.join(gaps)}")
    control_db = args.control_db or os.environ.get(CONTROL_DB_ENV)
    if control_db:
        import sqlalchemy as sa

        from include.retention.holds import check_catalogue

        engine = sa.create_engine(control_db)
        try:
            check_catalogue(engine, catalogue)
        except sa.exc.SQLAlchemyError as exc:
            shown = engine.url.render_as_string(hide_password=True)
            raise RetentionError(f"cannot read the hold register at {shown}: {exc}") from None
        print("hold register: every active record hold matches a dataset of the catalogue")
    else:
        print(f"hold register not checked (give --control-db or set {CONTROL_DB_ENV})")
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
    validate = commands.add_parser("validate", help="validate the catalogue")
    validate.add_argument(
        "--control-db", help="control DB URL: refuse if active record holds match no dataset"
    )
    validate.set_defaults(run=_validate)
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
