"""Great Expectations on the source, before and after enforcement.

**Before** (:func:`precheck`, in the ``plan`` task): per enforceable rule case of a SQL source,
the anchor column exists and holds dates or date-times, and among the records the case applies
to, the share of NULL anchors (where NULL means *unknown*, not *not yet happened*) and of
anchors later than now stay within the activity's ``source_checks`` limits. A failed
expectation stops the run before anything is deleted, naming the expectation and the limit.

**After** (:func:`verify`): two expectations per run.

1. *Nothing due remains*: the rows that are expired, in scope and not under a hold or
   restriction, queried from the source itself, number exactly zero.
2. *Every claim is true*: each record the run's ledger evidence says was deleted is absent
   from the source (for anonymisation: present and marked anonymised).

For anonymisation, :mod:`include.retention.anonymity` also checks that no anonymised row can be
linked back (a failure) and reports groups of quasi-identifiers smaller than k.

SQL sources are read through GX's datasource for their dialect (SQLite, PostgreSQL; GX 1.x has
none for MySQL/MariaDB, which use its generic SQL datasource), so the expectations are computed
by the database. Claims (computed from keyed references) and other sources' counts (through
their adapter) are data frames.
Results keep counts and shares only, never values (they could be personal data).

GX is expensive to import (~8 s of CPU): it is imported on first use, or before an executor
forks its task processes (:mod:`include.retention.preload`), and each process keeps one
ephemeral context without data docs, progress bars or usage statistics.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import itertools
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pendulum
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from include.retention import preload
from include.retention.catalogue import (
    Activity,
    AnonymiseAction,
    DeleteAction,
    ReportOnlyAction,
    RuleCase,
    SqlSource,
)
from include.retention.errors import RetentionError
from include.retention.runs import Control
from include.retention.sources.base import Action, DueAt, SourceAdapter, judged_through_of
from include.retention.sources.sql import SqlAdapter

log = logging.getLogger(__name__)

# GX's datasource per SQLAlchemy backend; the others use its generic SQL datasource.
DATASOURCES = {"sqlite": "add_sqlite", "postgresql": "add_postgres"}
# The anchor's type is judged by SQLAlchemy's type affinity: GX 1.x compares the reflected type
# with its dialect module's classes, and SQLite reflects DATE as a type no such class matches.
ANCHOR_TYPES = (sa.Date, sa.DateTime)  # DATE, DATETIME, TIMESTAMP [WITH TIME ZONE], …
RunIds = str | Sequence[str] | None  # a ledger run, or the runs of a mapped run's partitions
# What a stored expectation result keeps: counts and shares, never values.
RESULT_KEYS = ("observed_value", "element_count", "unexpected_count", "unexpected_percent")
_names = itertools.count(1)  # datasources are named uniquely within the process's context


@dataclass(frozen=True)
class Verification:
    """Counts only: what was checked and what GX observed."""

    success: bool
    remaining_due: int
    held_remaining: int
    claims_checked: int
    false_claims: int
    linkable_rows: int = 0  # anonymised rows that still link to a person (must be 0)
    small_groups: int = 0  # groups of quasi-identifiers smaller than k (reported)
    rows_in_small_groups: int = 0
    expectations: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ GX, cheaply


@functools.cache
def _gx() -> tuple[Any, Any]:
    """GX and this process's one ephemeral context (in-memory stores, no data docs)."""
    gx = preload.great_expectations()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx, gx.get_context(project_config=config, mode="ephemeral")


@contextlib.contextmanager
def _sql_batches(source: Engine, assets: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One GX batch per asset (a table, or a query) of ``source``, through the datasource type
    of its dialect; the datasource is removed from the context afterwards."""
    _, context = _gx()
    add = getattr(context.data_sources, DATASOURCES.get(source.dialect.name, "add_sql"))
    url = source.url.render_as_string(hide_password=False)
    datasource = add(name=f"source-{next(_names)}", connection_string=url)
    try:
        batches = {}
        for asset_name, what in assets.items():
            asset = (
                datasource.add_table_asset(name=asset_name, table_name=what.name)
                if isinstance(what, sa.Table)
                else datasource.add_query_asset(name=asset_name, query=_sql_text(what, source))
            )
            batches[asset_name] = asset.add_batch_definition_whole_table("all").get_batch()
        yield batches
    finally:
        context.data_sources.delete(datasource.name)
        datasource.get_execution_engine().engine.dispose()


def _sql_text(query: sa.Select[Any], source: Engine) -> str:
    """The query as SQL text for the source's dialect, literals rendered by SQLAlchemy."""
    return str(query.compile(dialect=source.dialect, compile_kwargs={"literal_binds": True}))


@contextlib.contextmanager
def _frame_batch(name: str, frame: Any) -> Iterator[Any]:
    _, context = _gx()
    datasource = context.data_sources.add_pandas(name=f"{name}-{next(_names)}")
    try:
        yield (
            datasource.add_dataframe_asset(name=name)
            .add_batch_definition_whole_dataframe("all")
            .get_batch(batch_parameters={"dataframe": frame})
        )  # fmt: skip
    finally:
        context.data_sources.delete(datasource.name)


def _frame(column: str, values: list[Any]) -> Any:
    import pandas as pd

    return pd.DataFrame({column: pd.Series(values, dtype=object if values else bool)})


def _validate(batch: Any, *expectations: Any) -> list[Any]:
    """Each expectation's result on ``batch`` (one suite: GX computes shared metrics once)."""
    gx, _ = _gx()
    suite = gx.ExpectationSuite(name="retention", expectations=list(expectations))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)  # pandas, via GX's metrics
        return list(batch.validate(suite, result_format="SUMMARY").results)


def summary(result: Any, **context: Any) -> dict[str, Any]:
    """One expectation result as stored with the evidence: its type, arguments, outcome and
    counts; an exception during validation is a failure naming its type."""
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "value_set")}
    found = {k: v for k, v in (result.result or {}).items() if k in RESULT_KEYS}
    raised = (result.exception_info or {}).get("raised_exception")
    stored = {
        "expectation": config.type,
        **kwargs,
        **context,
        "success": bool(result.success),
        **found,
        **({"error": "the expectation could not be evaluated"} if raised else {}),
    }
    return {k: v.isoformat() if isinstance(v, dt.date) else v for k, v in stored.items()}


# ------------------------------------------------------------------------------ before


def precheck(
    activity: Activity, adapter: SourceAdapter, *, dry_run: bool, now: dt.datetime | None = None
) -> dict[str, Any]:
    """The expectations on the source before enforcement; raises :class:`RetentionError`
    naming what failed (a dry run only reports it). Returns what was checked. Only SQL sources
    have typed anchor columns; other sources' anchors are parsed (and counted as unknown when
    unreadable) by their adapter."""
    if not isinstance(adapter, SqlAdapter) or not activity.enforceable:
        return {"checked": False, "passed": True, "expectations": []}
    results = _anchor_checks(activity, adapter.engine, now or dt.datetime.now(dt.UTC))
    problems = [_problem(activity, r) for r in results if not r["success"]]
    checked = {"checked": True, "passed": not problems, "expectations": results}
    if problems and not dry_run:
        src = activity.source
        raise RetentionError(
            f"source check of {activity.id} failed on {src.system}.{getattr(src, 'table', '')};"
            f" nothing was deleted: {'; '.join(problems)}. Fix the source, or if the data is"
            f" right, raise the limit under 'source_checks' in the catalogue file"
            f" {activity.id}.yaml"
        )
    for problem in problems:
        log.warning("source check of %s (dry run, so not stopping): %s", activity.id, problem)
    log.info("source check of %s: %s", activity.id, "passed" if not problems else "FAILED")
    return checked


def _anchor_cases(activity: Activity) -> list[tuple[int, RuleCase, str]]:
    return [
        (n, case, case.anchor_column)
        for n, case in enumerate(activity.retention)
        if case.rule.enforceable and case.anchor_column
    ]


def _anchor_checks(activity: Activity, source: Engine, now: dt.datetime) -> list[dict[str, Any]]:
    gx, _ = _gx()
    src = activity.source
    assert isinstance(src, SqlSource)
    table = _reflect(activity, source)
    columns = sorted({column for _, _, column in _anchor_cases(activity)})
    with _sql_batches(source, {"table": table}) as batches:
        batch = batches["table"]
        exists = _validate(batch, *(gx.expectations.ExpectColumnToExist(column=c) for c in columns))
    results = [summary(r) for r in exists]
    present = [c for c, r in zip(columns, exists, strict=True) if r.success]
    typed = [_type_check(table.c[column]) for column in present]
    results += typed
    usable = {check["column"] for check in typed if check["success"]}
    cases = [(n, case, column) for n, case, column in _anchor_cases(activity) if column in usable]
    queries = {f"case_{n}": _in_scope_anchors(activity, table, case) for n, case, _ in cases}
    if queries:
        with _sql_batches(source, queries) as batches:
            results += _share_checks(activity, table, cases, batches, now)
    return results


def _share_checks(
    activity: Activity,
    table: sa.Table,
    cases: list[tuple[int, RuleCase, str]],
    batches: dict[str, Any],
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Per case: the shares of NULL and of future anchors among the records it applies to."""
    gx, _ = _gx()
    zone = activity.source.anchor_timezone  # type: ignore[union-attr]
    limits = activity.source_checks
    results = []
    for n, case, column in cases:
        anchor = table.c[column]
        expect = []
        if not case.rule.null_anchor_is_pending:
            expect.append(gx.expectations.ExpectColumnValuesToNotBeNull(
                column="anchor", mostly=1 - limits.max_null_anchor_fraction))  # fmt: skip
        expect.append(gx.expectations.ExpectColumnValuesToBeBetween(
            column="anchor", max_value=_in_column_terms(now, anchor, zone),
            mostly=1 - limits.max_future_anchor_fraction))  # fmt: skip
        results += [
            summary(r, column=column, rule_case=n) for r in _validate(batches[f"case_{n}"], *expect)
        ]
    return results


def _type_check(column: sa.Column[Any]) -> dict[str, Any]:
    return {
        "expectation": "anchor_column_is_date_typed",
        "column": column.name,
        "success": isinstance(column.type, ANCHOR_TYPES),
        "observed_value": str(column.type),
    }


def _reflect(activity: Activity, source: Engine) -> sa.Table:
    src = activity.source
    assert isinstance(src, SqlSource)
    try:
        return sa.Table(src.table, sa.MetaData(), autoload_with=source)
    except sa.exc.NoSuchTableError:
        raise RetentionError(
            f"activity {activity.id!r}: table {src.table!r} does not exist in system"
            f" {src.system!r} (connection {src.conn_id!r})"
        ) from None


def _in_scope_anchors(activity: Activity, table: sa.Table, case: RuleCase) -> sa.Select[Any]:
    """The anchors of the records ``case`` applies to (anonymised rows are out of scope)."""
    query = sa.select(table.c[case.anchor_column].label("anchor"))  # type: ignore[index]
    if case.when is not None:
        query = query.where(table.c[case.when.column].in_(case.when.values))
    if isinstance(activity.action, AnonymiseAction):
        query = query.where(table.c[activity.action.marker_column].is_(None))
    return query


def _in_column_terms(moment: dt.datetime, column: sa.Column[Any], zone: str) -> Any:
    """``moment`` as the column stores it: a date, an aware or a naive local datetime."""
    local = pendulum.instance(moment).in_timezone(zone)
    if isinstance(column.type, sa.Date) and not isinstance(column.type, sa.DateTime):
        return local.date().isoformat()
    if getattr(column.type, "timezone", False):
        return pendulum.instance(moment).in_timezone("UTC").isoformat()
    return local.naive().isoformat(sep=" ")


_WHAT = {
    "expect_column_to_exist": "anchor column {where} does not exist",
    "anchor_column_is_date_typed": (
        "anchor column {where} is of type {observed_value}, not a date or date-time"
    ),
    "expect_column_values_to_not_be_null": (
        "anchor column {where} is NULL (unknown) in {unexpected_percent:.0f}% of the"
        " {element_count} records its rule applies to, more than"
        " source_checks.max_null_anchor_fraction allows ({limit:.0%})"
    ),
    "expect_column_values_to_be_between": (
        "anchor column {where} lies in the future in {unexpected_percent:.0f}% of the"
        " records with a known anchor, more than source_checks.max_future_anchor_fraction"
        " allows ({limit:.0%})"
    ),
}


def _problem(activity: Activity, result: dict[str, Any]) -> str:
    if "error" in result:
        return f"{result['expectation']} on {result.get('column')!r} could not be evaluated"
    facts = {"unexpected_percent": 0.0, "element_count": 0, "observed_value": "?", **result}
    facts["limit"] = 1 - float(result.get("mostly") or 1)
    facts["where"] = f"{getattr(activity.source, 'table', '')}.{result.get('column')}"
    return _WHAT[result["expectation"]].format(**facts)


# ------------------------------------------------------------------------------ after


def _sql_remaining_query(
    activity: Activity, as_of: dt.datetime, source: Engine, control: Control
) -> tuple[sa.Select[Any], int]:
    """The query of the due, unheld rows, and how many due rows are held."""
    adapter = SqlAdapter(activity.source, control.key, source)  # type: ignore[arg-type]
    holds = control.holds.active(adapter.system, adapter.dataset)
    return adapter.due_and_unheld(_due(activity, as_of), _action(activity), holds)


def _sql_claims(activity: Activity, run_id: RunIds, source: Engine, control: Control) -> list[bool]:
    """Per record the run claims: is the claim true in the source now?"""
    return _claims(activity, run_id, SqlAdapter(activity.source, control.key, source), control)  # type: ignore[arg-type]


def _due(activity: Activity, as_of: dt.datetime) -> DueAt:
    return DueAt(as_of, tuple(activity.retention))


def _action(activity: Activity) -> Action:
    action = activity.action
    return DeleteAction() if isinstance(action, ReportOnlyAction) else action


def _claims(
    activity: Activity, run_id: RunIds, adapter: SourceAdapter, control: Control
) -> list[bool]:
    """Per record the run (every partition's run) claims: is the claim true in the source now?"""
    runs = [run_id] if isinstance(run_id, str) else list(run_id or ())
    system, dataset = adapter.system, adapter.dataset
    claims = [control.ledger.claims(run, system, dataset) for run in runs]
    claimed = {ref for claim in claims for ref in claim}
    action = _action(activity)
    present = adapter.present(claimed, action, judged_through=judged_through_of(claims))
    # delete: a claimed record must be gone; anonymise: it must be there, marked anonymised.
    anonymise = action.kind == "anonymise"
    return [(ref in present) == anonymise for ref in sorted(claimed)]


def verify(
    activity: Activity, as_of: dt.datetime, run_id: RunIds, *, adapter: SourceAdapter,
    control: Control,
) -> Verification:  # fmt: skip
    """Check a finished run of any source: in the database itself for SQL sources, else
    through the source's adapter. ``run_id``: the ledger run, or the runs of a mapped run's
    partitions (their claims are checked together)."""
    if isinstance(adapter, SqlAdapter):
        return verify_sql(activity, as_of, run_id, source=adapter.engine, control=control)
    return verify_adapter(activity, as_of, run_id, adapter=adapter, control=control)


def verify_sql(
    activity: Activity,
    as_of: dt.datetime,
    run_id: RunIds,
    *,
    source: Engine,
    control: Control,
) -> Verification:
    """Check a finished SQL run; ``success`` is False when either expectation fails."""
    gx, _ = _gx()
    query, held = _sql_remaining_query(activity, as_of, source, control)
    with _sql_batches(source, {"due_and_unheld": query}) as batches:
        (remaining,) = _validate(
            batches["due_and_unheld"], gx.expectations.ExpectTableRowCountToEqual(value=0)
        )
    claims = _sql_claims(activity, run_id, source, control)
    truthful = _claims_true(claims)
    anonymity = _anonymity(activity, source, control.key)
    result = Verification(
        success=bool(remaining.success and truthful.success) and not anonymity.get("linkable_rows"),
        remaining_due=int(remaining.result["observed_value"]),
        held_remaining=held,
        claims_checked=len(claims),
        false_claims=int(truthful.result.get("unexpected_count") or 0),
        expectations=[summary(remaining), summary(truthful)],
        **anonymity,
    )
    log.info("verification of %s: %s", activity.id, result.as_dict())
    return result


def _anonymity(activity: Activity, source: Engine, key: bytes) -> dict[str, int]:
    """The anonymity checks' counts for an anonymising activity, else nothing."""
    if activity.action.kind != "anonymise":
        return {}
    from include.retention.anonymity import check_anonymity

    report = check_anonymity(activity, source, key)
    return {
        "linkable_rows": report.linkable_rows,
        "small_groups": report.small_groups,
        "rows_in_small_groups": report.rows_in_small_groups,
    }


def _claims_true(claims: list[bool]) -> Any:
    """GX's result for "every claim is true" (one boolean per claimed record)."""
    gx, _ = _gx()
    with _frame_batch("claims", _frame("claim_true", claims)) as batch:
        (truthful,) = _validate(
            batch,
            gx.expectations.ExpectColumnValuesToBeInSet(column="claim_true", value_set=[True]),
        )
    return truthful


def verify_adapter(
    activity: Activity, as_of: dt.datetime, run_id: RunIds, *, adapter: SourceAdapter,
    control: Control,
) -> Verification:  # fmt: skip
    """Check a finished run through the source's adapter: counted afresh, no due, unheld record
    remains (for objects: any version), and every record the evidence claims is applied."""
    gx, _ = _gx()
    holds = control.holds.active(adapter.system, adapter.dataset)
    counts = adapter.count(_due(activity, as_of), _action(activity), holds)
    with _frame_batch("due_and_unheld", _frame("due", [True] * counts.to_apply)) as batch:
        (remaining,) = _validate(batch, gx.expectations.ExpectTableRowCountToEqual(value=0))
    claims = _claims(activity, run_id, adapter, control)
    truthful = _claims_true(claims)
    result = Verification(
        success=bool(remaining.success and truthful.success),
        remaining_due=int(remaining.result["observed_value"]),
        held_remaining=counts.held + counts.restricted,
        claims_checked=len(claims),
        false_claims=int(truthful.result.get("unexpected_count") or 0),
        expectations=[summary(remaining), summary(truthful)],
    )
    log.info("verification of %s: %s", activity.id, result.as_dict())
    return result
