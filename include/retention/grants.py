"""Least privilege for the worker: the SQL that creates its role and grants only what the
catalogue binds, for PostgreSQL and MariaDB/MySQL (``python -m include.retention grants``).

Two roles use the control database: the worker (below) and the holds admin. Placing or
releasing a hold writes the hold register and chains the change into the ledger, so only the
holds admin may: it may insert holds, set a hold's release (``released_at``/``released_by``,
nothing else), append to the ledger and move its head, and read the run leases (a placement
waits for in-flight batches). It may not delete or edit a hold; the worker only reads them, so
a compromised worker cannot release the hold that stops it.

Per bound table the worker gets SELECT, plus DELETE where the activity deletes (child tables
included) or UPDATE on exactly the masked columns and the marker where it anonymises. Given
the tables' columns (read from the source: ``grants --source-url-env``), it also gets UPDATE
on exactly the columns a data-subject rectification (Art. 16) may set
(`rectification.rectifiable_columns`: not the key, file-link or rule columns); without
them the script names the tables whose rectification it does not grant. In the
control database it may read and append to the ledger, move the head row forward and read
the hold register, and take, renew and release run leases (``retention_leases``): no UPDATE
or DELETE on ``retention_ledger``, and triggers refuse them for
every role (and refuse moving the head anywhere but to the ledger's newest entry).

PostgreSQL takes row locks (``SELECT ... FOR SHARE``, used by recovery and verification to
wait for in-flight transactions; ``FOR UPDATE``, a batch's lock on the records it deletes with
their child rows or anonymises) only with UPDATE on at least one column, so a table without
masked columns gets UPDATE on its primary key alone, a change the engine never makes.

Identifiers are validated exactly and quoted by SQLAlchemy's dialect; no value is ever
interpolated. The role's password is never in the script: set it separately.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Engine

from include.retention.catalogue import Activity, SqlChild, SqlSource
from include.retention.errors import RetentionError
from include.retention.holds import holds_table
from include.retention.leases import leases_table
from include.retention.ledger import head_table, ledger_table, subject_table
from include.retention.runs import Control

DIALECTS = ("postgresql", "mysql")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_HOST = re.compile(r"^[A-Za-z0-9_.%:\-]{1,255}$")
APPEND_ONLY = "retention_ledger is append-only"
HEAD_FORWARD = "retention_ledger_head only moves forward to the newest ledger entry"


def _name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise RetentionError(
            f"{what} {value!r} is not a safe SQL identifier (letters, digits, underscore; max 63)"
        )
    return value


@dataclass
class TableGrant:
    """What the worker may do on one table: privileges, and UPDATE limited to columns."""

    table: str
    privileges: set[str] = field(default_factory=set)
    update_columns: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Target:
    """Where the script applies: the dialect, the role, and the schema (MySQL: database)."""

    dialect: str
    role: str
    schema: str
    host: str = "%"  # MySQL/MariaDB account host

    def __post_init__(self) -> None:
        if self.dialect not in DIALECTS:
            raise RetentionError(f"dialect {self.dialect!r}: choose one of {', '.join(DIALECTS)}")
        _name(self.role, "role")
        _name(self.schema, "schema")
        if not _HOST.match(self.host):
            raise RetentionError(f"account host {self.host!r} is not a valid host pattern")

    @property
    def pg(self) -> bool:
        return self.dialect == "postgresql"

    def q(self, name: str) -> str:
        dialect = postgresql.dialect() if self.pg else mysql.dialect()
        return str(dialect.identifier_preparer.quote_identifier(_name(name, "identifier")))

    def table(self, name: str) -> str:
        return f"{self.q(self.schema)}.{self.q(name)}"

    @property
    def grantee(self) -> str:
        return self.q(self.role) if self.pg else f"{self.q(self.role)}@'{self.host}'"


# ------------------------------------------------------------------------------ what to grant


def _add(grants: dict[str, TableGrant], table: str, *privileges: str) -> TableGrant:
    grant = grants.setdefault(table, TableGrant(table))
    grant.privileges.update(privileges)
    return grant


def _children(grants: dict[str, TableGrant], children: Iterable[SqlChild], delete: bool) -> None:
    for child in children:
        _add(grants, child.table, "SELECT", *(["DELETE"] if delete else []))
        _children(grants, child.children, delete)


def source_grants(
    activities: Iterable[Activity], pg_lock_column: bool,
    columns: Mapping[str, Sequence[str]] | None = None,
) -> list[TableGrant]:  # fmt: skip
    """The grants on the SQL sources of ``activities`` (merged per table, sorted); with the
    tables' ``columns`` (table -> column names), UPDATE on those rectification may set."""
    from include.retention.rectification import rectifiable_columns

    activities = list(activities)
    grants = _retention_grants(activities, pg_lock_column)
    for table, bound in _by_table(activities).items():
        if columns is not None and table in columns:
            named = [c for c in columns[table] if _NAME.match(c)]  # (the form's field names)
            grants[table].update_columns |= rectifiable_columns(bound, named)
    return [grants[name] for name in sorted(grants)]


def _by_table(activities: Iterable[Activity]) -> dict[str, list[Activity]]:
    tables: dict[str, list[Activity]] = {}
    for activity in activities:
        if isinstance(activity.source, SqlSource):
            tables.setdefault(activity.source.table, []).append(activity)
    return tables


def unreflected(activities: Iterable[Activity], columns: Mapping[str, Sequence[str]] | None
                ) -> list[str]:  # fmt: skip
    """The tables a rectification can reach whose columns were not given (no UPDATE granted
    for it)."""
    from include.retention.rectification import finds_people

    return [
        table for table, bound in sorted(_by_table(activities).items())
        if (columns is None or table not in columns) and finds_people(bound)
    ]  # fmt: skip


def _retention_grants(
    activities: Iterable[Activity], pg_lock_column: bool
) -> dict[str, TableGrant]:
    grants: dict[str, TableGrant] = {}
    for activity in activities:
        source = activity.source
        if not isinstance(source, SqlSource):
            continue
        action = activity.action
        main = _add(grants, source.table, "SELECT")
        if action.kind == "delete":
            main.privileges.add("DELETE")
        elif action.kind == "anonymise":
            main.update_columns.update([*action.columns, action.marker_column])
        _children(grants, source.children, delete=action.kind == "delete")
        if pg_lock_column and not main.update_columns:
            main.update_columns.add(source.primary_key)
    return grants


def holds_admin_grants() -> list[TableGrant]:
    """Place holds and release them, with their ledger evidence: nothing else."""
    return [
        TableGrant(holds_table.name, {"SELECT", "INSERT"}, {"released_at", "released_by"}),
        TableGrant(ledger_table.name, {"SELECT", "INSERT"}),
        TableGrant(subject_table.name, {"SELECT"}),  # reading the ledger checks its index
        TableGrant(head_table.name, {"SELECT"}, {"seq", "entry_hash"}),
        TableGrant(leases_table.name, {"SELECT"}),  # a placement waits for batches in flight
    ]


def _holds_id_sequence(t: Target) -> list[str]:
    """PostgreSQL: new hold ids come from the serial column's sequence."""
    if not t.pg:
        return []
    sequence = t.table(f"{holds_table.name}_id_seq")
    return [f"GRANT USAGE ON SEQUENCE {sequence} TO {t.grantee}"]


def control_grants() -> list[TableGrant]:
    """Append to the ledger, move its head, read the holds and the suppression list, take and
    give back run leases: nothing else."""
    from include.retention.suppression import suppressions_table

    return [
        TableGrant(ledger_table.name, {"SELECT", "INSERT"}),
        TableGrant(subject_table.name, {"SELECT", "INSERT"}),
        TableGrant(head_table.name, {"SELECT"}, {"seq", "entry_hash"}),
        TableGrant(holds_table.name, {"SELECT"}),
        TableGrant(suppressions_table.name, {"SELECT"}),
        TableGrant(leases_table.name, {"SELECT", "INSERT", "UPDATE", "DELETE"}),
    ]


def dsr_grants() -> list[TableGrant]:
    """The data-subject-request DAGs' role (connection ``retention_dsr_control_db``): append to
    the ledger, place and release holds (never edit or delete one) as the holds admin does,
    write the request register and the suppression list. The retention workers' role keeps
    read-only holds."""
    from include.retention.subject_requests import notices_table, requests_table
    from include.retention.suppression import suppressions_table

    register_updates = {"due_on", "extended_months", "extension_reason", "status", "status_at",
                        "updated_by", "outcome", "closed_at"}  # fmt: skip
    return [
        *holds_admin_grants(),
        TableGrant(requests_table.name, {"SELECT", "INSERT"}, register_updates),
        TableGrant(notices_table.name, {"SELECT", "INSERT"}),
        TableGrant(suppressions_table.name, {"SELECT", "INSERT"},
                   {"lifted_at", "lifted_by", "lift_reason"}),
    ]  # fmt: skip


def sequence_grants(t: Target, grants: Iterable[TableGrant]) -> list[str]:
    """PostgreSQL: INSERT into a table with a serial id also needs its sequence."""
    if not t.pg:
        return []
    serial = {holds_table.name, "dsr_requests", "dsr_recipient_notices", "dsr_suppressions"}
    return [
        f"GRANT USAGE ON SEQUENCE {t.table(g.table + '_id_seq')} TO {t.grantee}"
        for g in grants
        if g.table in serial and "INSERT" in g.privileges
    ]


# ------------------------------------------------------------------------------ statements


def create_role(t: Target) -> list[str]:
    if t.pg:
        return [
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{t.role}') THEN"
            f" CREATE ROLE {t.q(t.role)} LOGIN; END IF; END $$",
        ]
    # Locked until the DBA sets its password (ALTER USER … IDENTIFIED BY … ACCOUNT UNLOCK).
    return [f"CREATE USER IF NOT EXISTS {t.grantee} ACCOUNT LOCK"]


def grant_statements(t: Target, grants: Iterable[TableGrant]) -> list[str]:
    statements = [f"GRANT USAGE ON SCHEMA {t.q(t.schema)} TO {t.grantee}"] if t.pg else []
    for grant in grants:
        privileges = sorted(grant.privileges)
        if grant.update_columns:
            columns = ", ".join(t.q(c) for c in sorted(grant.update_columns))
            privileges.append(f"UPDATE ({columns})")
        statements.append(f"GRANT {', '.join(privileges)} ON {t.table(grant.table)} TO {t.grantee}")
    return statements


def append_only_triggers(t: Target) -> list[str]:
    """Refuse UPDATE/DELETE (and TRUNCATE) on the ledger, and a head that does not move
    forward to the newest ledger entry, for every role."""
    ledger, head = t.table(ledger_table.name), t.table(head_table.name)
    subjects = t.table(subject_table.name)
    check = (  # a no-op update (appenders lock the head with one) or one step to the newest entry
        "NEW.id <> OLD.id OR NOT ((NEW.seq = OLD.seq AND NEW.entry_hash = OLD.entry_hash) OR"
        f" (NEW.seq = OLD.seq + 1 AND EXISTS (SELECT 1 FROM {ledger}"
        " WHERE seq = NEW.seq AND entry_hash = NEW.entry_hash)))"
    )
    if not t.pg:
        refuse_row = f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{APPEND_ONLY}'"
        return [
            f"DROP TRIGGER IF EXISTS {t.table('retention_ledger_no_update')}",
            f"CREATE TRIGGER {t.table('retention_ledger_no_update')} BEFORE UPDATE ON {ledger}"
            f" FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{APPEND_ONLY}'",
            f"DROP TRIGGER IF EXISTS {t.table('retention_ledger_no_delete')}",
            f"CREATE TRIGGER {t.table('retention_ledger_no_delete')} BEFORE DELETE ON {ledger}"
            f" FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{APPEND_ONLY}'",
            f"DROP TRIGGER IF EXISTS {t.table('retention_ledger_subject_no_update')}",
            f"CREATE TRIGGER {t.table('retention_ledger_subject_no_update')} BEFORE UPDATE"
            f" ON {subjects} FOR EACH ROW {refuse_row}",
            f"DROP TRIGGER IF EXISTS {t.table('retention_ledger_subject_no_delete')}",
            f"CREATE TRIGGER {t.table('retention_ledger_subject_no_delete')} BEFORE DELETE"
            f" ON {subjects} FOR EACH ROW {refuse_row}",
            f"DROP TRIGGER IF EXISTS {t.table('retention_ledger_head_forward')}",
            f"CREATE TRIGGER {t.table('retention_ledger_head_forward')} BEFORE UPDATE ON {head}"
            f" FOR EACH ROW BEGIN IF {check} THEN SIGNAL SQLSTATE '45000'"
            f" SET MESSAGE_TEXT = '{HEAD_FORWARD}'; END IF; END",
            f"DROP TRIGGER IF EXISTS {t.table('retention_ledger_head_no_delete')}",
            f"CREATE TRIGGER {t.table('retention_ledger_head_no_delete')} BEFORE DELETE ON {head}"
            f" FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{HEAD_FORWARD}'",
        ]
    refuse, forward = t.table("retention_ledger_refuse"), t.table("retention_ledger_head_check")
    return [
        f"CREATE OR REPLACE FUNCTION {refuse}() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN RAISE EXCEPTION USING MESSAGE = '{APPEND_ONLY}: ' || TG_OP || ' refused'; END $$",
        f"CREATE OR REPLACE FUNCTION {forward}() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN IF TG_OP = 'DELETE' OR {check} THEN RAISE EXCEPTION '{HEAD_FORWARD}'; END IF;"
        " RETURN NEW; END $$",
        f"DROP TRIGGER IF EXISTS retention_ledger_append_only ON {ledger}",
        f"CREATE TRIGGER retention_ledger_append_only BEFORE UPDATE OR DELETE ON {ledger}"
        f" FOR EACH ROW EXECUTE FUNCTION {refuse}()",
        f"DROP TRIGGER IF EXISTS retention_ledger_no_truncate ON {ledger}",
        f"CREATE TRIGGER retention_ledger_no_truncate BEFORE TRUNCATE ON {ledger}"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {refuse}()",
        f"DROP TRIGGER IF EXISTS retention_ledger_subject_append_only ON {subjects}",
        f"CREATE TRIGGER retention_ledger_subject_append_only BEFORE UPDATE OR DELETE"
        f" ON {subjects} FOR EACH ROW EXECUTE FUNCTION {refuse}()",
        f"DROP TRIGGER IF EXISTS retention_ledger_subject_no_truncate ON {subjects}",
        f"CREATE TRIGGER retention_ledger_subject_no_truncate BEFORE TRUNCATE ON {subjects}"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {refuse}()",
        f"DROP TRIGGER IF EXISTS retention_ledger_head_forward ON {head}",
        f"CREATE TRIGGER retention_ledger_head_forward BEFORE UPDATE OR DELETE ON {head}"
        f" FOR EACH ROW EXECUTE FUNCTION {forward}()",
    ]


def source_script(
    t: Target, activities: Iterable[Activity], columns: Mapping[str, Sequence[str]] | None = None
) -> list[str]:
    """Create the role and grant it what ``activities`` need on their SQL sources (with the
    tables' ``columns``: rectification too)."""
    return create_role(t) + grant_statements(t, source_grants(activities, t.pg, columns))


def table_columns(engine: Engine, schema: str, tables: Iterable[str]) -> dict[str, list[str]]:
    """The columns of ``tables`` in ``schema`` as the database has them (a table it lacks is
    an error naming it: the grants would not match the catalogue)."""
    inspector = sa.inspect(engine)
    found: dict[str, list[str]] = {}
    for table in sorted(set(tables)):
        if not inspector.has_table(table, schema=schema):
            raise RetentionError(f"table {table!r} is not in schema {schema!r} of the source")
        found[table] = [str(c["name"]) for c in inspector.get_columns(table, schema=schema)]
    return found


def control_script(t: Target) -> list[str]:
    """Create the role, grant it the ledger and holds, and make the ledger append-only.
    Run it after the control tables exist (``airflow-init`` creates them)."""
    return create_role(t) + grant_statements(t, control_grants()) + append_only_triggers(t)


def dsr_script(t: Target) -> list[str]:
    """Create the data-subject-request DAGs' role and grant it :func:`dsr_grants`."""
    grants = dsr_grants()
    return create_role(t) + grant_statements(t, grants) + sequence_grants(t, grants)


def holds_admin_script(t: Target) -> list[str]:
    """Create the holds admin's role and grant it the hold register and its evidence."""
    return create_role(t) + grant_statements(t, holds_admin_grants()) + _holds_id_sequence(t)


def source_text(t: Target, activities: Sequence[Activity], source: Engine | None) -> str:
    """The sources' script; with ``source`` (a connection able to read the tables' columns)
    UPDATE on the columns a rectification may set, else a note naming the tables without."""
    tables = _by_table(activities)
    columns = table_columns(source, t.schema, tables) if source is not None else None
    notes = [
        f"rectification (Art. 16): no UPDATE granted on {table}: its columns were not read"
        " (give the source's URL: --source-url-env)"
        for table in unreflected(activities, columns)
    ]
    title = "sources: " + ", ".join(sorted({a.source.conn_id for a in activities}))
    return render(t, source_script(t, activities, columns), title, notes)


def render(t: Target, statements: list[str], title: str, notes: Sequence[str] = ()) -> str:
    """A script for psql (``-v ON_ERROR_STOP=1 -f``) or the mysql/mariadb client."""
    how = (
        f"\\password {t.role}"
        if t.pg
        else f"ALTER USER {t.grantee} IDENTIFIED BY '…' ACCOUNT UNLOCK"
    )
    lines = [f"-- {title}", f"-- role {t.role}: then set its password ({how}), never in a file."]
    lines += [f"-- {note}" for note in notes]
    if t.pg:
        lines += [f"{s};" for s in statements]
    else:  # compound trigger bodies contain ';'
        lines += ["DELIMITER //", *(f"{s} //" for s in statements), "DELIMITER ;"]
    return "\n".join(lines) + "\n"


def apply(engine: Engine, statements: list[str]) -> None:
    """Run a script's statements as they are, one by one, on a raw cursor (so the ``'%'`` of a
    MySQL account host is not taken for a placeholder)."""
    with engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            for statement in statements:
                cursor.execute(statement)
            conn.connection.dbapi_connection.commit()  # type: ignore[union-attr]
        finally:
            cursor.close()


def init_control(
    engine: Engine, key: bytes, role: str | None, host: str = "%", holds_admin: str | None = None
) -> list[str]:
    """Create the control tables (as their owner) and, given a role, grant it the worker's
    privileges and make the ledger append-only; given ``holds_admin``, grant that role the
    hold register. Returns the statements applied."""
    Control.open(engine, key)
    create_dsr_tables(engine, key)
    if role is None and holds_admin is None:
        return []
    pg = engine.dialect.name == "postgresql"
    if not pg and engine.dialect.name not in ("mysql", "mariadb"):
        raise RetentionError(f"grants need PostgreSQL or MariaDB/MySQL, not {engine.dialect.name}")
    with engine.connect() as conn:  # where the tables are: search_path or the URL's database
        schema = str(
            conn.exec_driver_sql(
                "SELECT DATABASE()" if not pg else "SELECT current_schema()"
            ).scalar()
        )
    dialect = "postgresql" if pg else "mysql"
    statements = control_script(Target(dialect, role, schema, host)) if role else []
    if holds_admin:
        statements += holds_admin_script(Target(dialect, holds_admin, schema, host))
    apply(engine, statements)
    return statements


def create_dsr_tables(engine: Engine, key: bytes) -> None:
    """The request register and the suppression list (created by their owner, like the rest)."""
    from include.retention.subject_requests import RequestRegister
    from include.retention.suppression import SuppressionList

    RequestRegister(engine, key).create_tables()
    SuppressionList(engine, key).create_tables()
