"""Command line: ``python -m include.retention COMMAND``: validate, register, grants, setup,
check, ledger, certificate, report, holds, requests.

``setup`` and ``check`` are deployment commands: they use Airflow's metadata database, so they
run on the set-up/scheduler side (``make demo``, ``make ui``, the container's init step),
never inside a task. ``setup`` is the one way to set a deployment up (idempotent): the
catalogue is validated, the enforcement pool created or resized, the control database's
tables created (as their owner) with the worker's and the holds admin's grants, and the
catalogue checked against the active holds.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from include.retention import audit_cli, connections, holds_cli, ledger_cli, requests_cli
from include.retention.catalogue import POLICY_DIR, load_catalogue
from include.retention.connections import CONTROL_DB_ENV
from include.retention.errors import RetentionError
from include.retention.grants import (
    DIALECTS,
    Target,
    control_script,
    dsr_script,
    holds_admin_script,
    init_control,
    render,
    source_text,
)
from include.retention.register import write_register


def _validate(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(args.catalogue)
    gaps = [a.id for a in catalogue if a.policy_gap]
    print(f"catalogue {args.catalogue or POLICY_DIR}: {len(catalogue)} activities valid")
    print(f"catalogue version: {catalogue.version}")
    unused = ", ".join(b.reference for b in catalogue.unreferenced()) or "none"
    print(f"bound datasets: {len(catalogue.bindings)}; no activity refers to: {unused}")
    print(f"policy gaps (report only, never deleted by an invented period): {', '.join(gaps)}")
    assumptions = [f"{a.id}.{x.name}={x.value}" for a in catalogue for x in a.assumptions]
    print(f"assumptions to confirm (the policy does not state them): {', '.join(assumptions)}")
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
        print("hold register: every active hold matches the catalogue's bindings")
    else:
        print(f"hold register not checked (give --control-db or set {CONTROL_DB_ENV})")
    return 0


def _register(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(args.catalogue)
    for path in write_register(catalogue, args.out):
        print(f"wrote {path}")
    return 0


def _setup(args: argparse.Namespace) -> int:
    from include.retention.deployment import ENFORCEMENT_POOL, ensure_pool
    from include.retention.holds import check_catalogue

    catalogue = load_catalogue(args.catalogue)
    print(f"catalogue: {len(catalogue)} activities valid (version {catalogue.version})")
    slots = ensure_pool(args.slots)
    print(f"pool {ENFORCEMENT_POOL!r}: {slots} slots (concurrent enforcement tasks)")
    engine = connections.control_engine()
    roles = {"worker": args.grant_to, "holds_admin": args.holds_admin}
    applied = init_control(engine, connections.pseudonym_key(), args.grant_to, args.host,
                           holds_admin=args.holds_admin)  # fmt: skip
    print(f"control database {engine.url.render_as_string()}: ledger and hold tables ready")
    for what, role in roles.items():
        if role:
            print(f"role {role} ({what}): grants applied")
    if applied:
        print(f"{len(applied)} statements applied (grants, append-only triggers)")
    check_catalogue(engine, catalogue)
    print("hold register: every active hold matches the catalogue's bindings")
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


def _grants(args: argparse.Namespace) -> int:
    if args.dialect == "mysql" and not args.schema:
        raise RetentionError("--schema is required for mysql: the database holding the tables")
    target = Target(args.dialect, args.role, args.schema or "public", args.host)
    if args.control:
        print(render(target, control_script(target), "control database: ledger and holds"))
        return 0
    if args.dsr:
        title = "control database: the data-subject-request DAGs' role"
        print(render(target, dsr_script(target), title))
        return 0
    if args.holds_admin:
        print(render(target, holds_admin_script(target), "control database: the holds admin"))
        return 0
    activities = [
        a
        for a in load_catalogue(args.catalogue)
        if a.source.kind == "sql" and (not args.conn_id or a.source.conn_id in args.conn_id)
    ]
    if not activities:
        raise RetentionError(f"no SQL activity in the catalogue uses connection(s) {args.conn_id}")
    print(source_text(target, activities, _source_engine(args.source_url_env)))
    return 0


def _source_engine(env: str | None) -> Any:
    """The source database named by the URL in environment variable ``env`` (never on the
    command line: it may hold a password), or None."""
    if env is None:
        return None
    url = os.environ.get(env)
    if not url:
        raise RetentionError(f"--source-url-env {env}: the environment variable is not set")
    import sqlalchemy as sa

    return sa.create_engine(url)


def _add_grants(commands: Any) -> None:
    grants = commands.add_parser(
        "grants", help="SQL creating the worker's role with least privilege (stdout)"
    )
    grants.add_argument("--dialect", choices=DIALECTS, required=True)
    grants.add_argument("--role", default="retention_worker")
    grants.add_argument(
        "--schema", help="schema (PostgreSQL, default public) or database (MySQL) of the tables"
    )
    grants.add_argument(
        "--conn-id", action="append", help="only the sources behind this connection (repeatable)"
    )
    grants.add_argument(
        "--control", action="store_true", help="the control database (ledger, holds) instead"
    )
    grants.add_argument(
        "--dsr", action="store_true",
        help="the data-subject-request DAGs' role in the control database (places holds)",
    )  # fmt: skip
    grants.add_argument(
        "--holds-admin",
        action="store_true",
        help="the role placing and releasing holds (control database) instead",
    )
    grants.add_argument("--host", default="%", help="MySQL/MariaDB account host (default %%)")
    grants.add_argument(
        "--source-url-env", metavar="VAR",
        help="environment variable holding the source database's URL (an account that can"
        " read its tables' columns): grants UPDATE on the columns a rectification may set",
    )  # fmt: skip
    grants.set_defaults(run=_grants)


def _add_setup(commands: Any) -> None:
    setup = commands.add_parser(
        "setup",
        help="set a deployment up: validate, the pool, the control tables"
        f" (${connections.CONTROL_DB_ENV}, as their owner) and roles, the holds check",
    )
    setup.add_argument("--slots", type=int, default=None, help="default $RETENTION_POOL_SLOTS or 4")
    setup.add_argument("--grant-to", metavar="ROLE", help="the worker's database role")
    setup.add_argument(
        "--holds-admin", metavar="ROLE", help="the role that places and releases holds"
    )
    setup.add_argument("--host", default="%", help="MySQL/MariaDB account host (default %%)")
    setup.set_defaults(run=_setup)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.retention")
    parser.add_argument(
        "--catalogue", type=Path, default=None, help=f"catalogue folder ({POLICY_DIR})"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="validate the catalogue")
    validate.add_argument(
        "--control-db", help="control DB URL: refuse if active holds no longer match the catalogue"
    )
    validate.set_defaults(run=_validate)
    register = commands.add_parser("register", help="render the Art. 30 record")
    register.add_argument("--out", type=Path, default=Path("build/register"))
    register.set_defaults(run=_register)
    _add_grants(commands)
    _add_setup(commands)
    ledger_cli.add_commands(commands)
    audit_cli.add_commands(commands)
    commands.add_parser(
        "check", help="control DB is not Airflow's metadata DB; paused retention DAGs; the pool"
    ).set_defaults(run=_check)
    holds_cli.add_commands(commands)
    requests_cli.add_commands(commands)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except RetentionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
