"""After enforcement, prove the result with Great Expectations against the real source.

Two expectations per run, both evaluated by GX (imported inside the functions: it is heavy):

1. *Nothing due remains*: the rows that are expired, in scope and not under a hold or
   restriction, queried from the source itself, number exactly zero.
2. *Every claim is true*: each record the run's ledger evidence says was deleted is absent
   from the source (for anonymisation: present and marked anonymised).

For anonymisation, :mod:`include.retention.anonymity` also checks that no anonymised row can be
linked back (a failure) and reports groups of quasi-identifiers smaller than k.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.engine import Engine

from include.retention.catalogue import Activity, DeleteAction, ReportOnlyAction
from include.retention.runs import Control
from include.retention.sources.base import Action, DueAt, SourceAdapter
from include.retention.sources.sql import SqlAdapter

log = logging.getLogger(__name__)


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quiet_context() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return gx, context


def _sql_remaining_query(
    activity: Activity, as_of: dt.datetime, source: Engine, control: Control
) -> tuple[str, int]:
    """SQL text (rendered by SQLAlchemy for the source's dialect) of the due, unheld rows."""
    adapter = SqlAdapter(activity.source, control.key, source)  # type: ignore[arg-type]
    holds = control.holds.active(adapter.system, adapter.dataset)
    query, held = adapter.due_and_unheld(_due(activity, as_of), _action(activity), holds)
    compiled = query.compile(dialect=source.dialect, compile_kwargs={"literal_binds": True})
    return str(compiled), held


def _sql_claims(
    activity: Activity, run_id: str | None, source: Engine, control: Control
) -> list[bool]:
    """Per record the run claims: is the claim true in the source now?"""
    return _claims(activity, run_id, SqlAdapter(activity.source, control.key, source), control)  # type: ignore[arg-type]


def _due(activity: Activity, as_of: dt.datetime) -> DueAt:
    return DueAt(as_of, tuple(activity.retention))


def _action(activity: Activity) -> Action:
    action = activity.action
    return DeleteAction() if isinstance(action, ReportOnlyAction) else action


def _claims(
    activity: Activity, run_id: str | None, adapter: SourceAdapter, control: Control
) -> list[bool]:
    """Per record the run claims: is the claim true in the source now?"""
    claimed = set(
        control.ledger.applied_refs(run_id, adapter.system, adapter.dataset) if run_id else []
    )
    action = _action(activity)
    present = adapter.present(claimed, action)
    # delete: a claimed record must be gone; anonymise: it must be there, marked anonymised.
    anonymise = action.kind == "anonymise"
    return [(ref in present) == anonymise for ref in sorted(claimed)]


def verify(
    activity: Activity, as_of: dt.datetime, run_id: str | None, *, adapter: SourceAdapter,
    control: Control,
) -> Verification:  # fmt: skip
    """Check a finished run of any source: in the database itself for SQL sources, else
    through the source's adapter."""
    if isinstance(adapter, SqlAdapter):
        return verify_sql(activity, as_of, run_id, source=adapter.engine, control=control)
    return verify_adapter(activity, as_of, run_id, adapter=adapter, control=control)


def verify_sql(
    activity: Activity,
    as_of: dt.datetime,
    run_id: str | None,
    *,
    source: Engine,
    control: Control,
) -> Verification:
    """Check a finished SQL run; ``success`` is False when either expectation fails."""
    gx, context = _quiet_context()
    query, held = _sql_remaining_query(activity, as_of, source, control)
    url = source.url.render_as_string(hide_password=False)
    datasource = context.data_sources.add_sql(name="source", connection_string=url)
    batch = (
        datasource.add_query_asset(name="due_and_unheld", query=query)
        .add_batch_definition_whole_table("all").get_batch()
    )  # fmt: skip
    remaining = batch.validate(gx.expectations.ExpectTableRowCountToEqual(value=0))
    claims = _sql_claims(activity, run_id, source, control)
    truthful = _validate_frame(
        gx, context, "claims", _frame("claim_true", claims),
        gx.expectations.ExpectColumnValuesToBeInSet(column="claim_true", value_set=[True]),
    )  # fmt: skip
    anonymity = _anonymity(activity, source, control.key)
    result = Verification(
        success=bool(remaining.success and truthful.success) and not anonymity.get("linkable_rows"),
        remaining_due=int(remaining.result["observed_value"]),
        held_remaining=held,
        claims_checked=len(claims),
        false_claims=int(truthful.result.get("unexpected_count") or 0),
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


def _frame(column: str, values: list[Any]) -> Any:
    import pandas as pd

    return pd.DataFrame({column: pd.Series(values, dtype=object if values else bool)})


def _validate_frame(gx: Any, context: Any, name: str, frame: Any, expectation: Any) -> Any:
    batch = (
        context.data_sources.add_pandas(name=name).add_dataframe_asset(name=name)
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )  # fmt: skip
    return batch.validate(expectation)


def verify_adapter(
    activity: Activity, as_of: dt.datetime, run_id: str | None, *, adapter: SourceAdapter,
    control: Control,
) -> Verification:  # fmt: skip
    """Check a finished run through the source's adapter: counted afresh, no due, unheld record
    remains (for objects: any version), and every record the evidence claims is applied."""
    gx, context = _quiet_context()
    holds = control.holds.active(adapter.system, adapter.dataset)
    counts = adapter.count(_due(activity, as_of), _action(activity), holds)
    remaining = _validate_frame(
        gx, context, "due_and_unheld", _frame("due", [True] * counts.to_apply),
        gx.expectations.ExpectTableRowCountToEqual(value=0),
    )  # fmt: skip
    claims = _claims(activity, run_id, adapter, control)
    truthful = _validate_frame(
        gx, context, "claims", _frame("claim_true", claims),
        gx.expectations.ExpectColumnValuesToBeInSet(column="claim_true", value_set=[True]),
    )  # fmt: skip
    result = Verification(
        success=bool(remaining.success and truthful.success),
        remaining_due=int(remaining.result["observed_value"]),
        held_remaining=counts.held + counts.restricted,
        claims_checked=len(claims),
        false_claims=int(truthful.result.get("unexpected_count") or 0),
    )
    log.info("verification of %s: %s", activity.id, result.as_dict())
    return result
