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

from include.retention import sql_engine
from include.retention.catalogue import Activity
from include.retention.pseudonym import RecordRefHasher
from include.retention.runs import Control

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
    query, held = sql_engine.due_and_unheld(activity, as_of, source=source, control=control)
    compiled = query.compile(dialect=source.dialect, compile_kwargs={"literal_binds": True})
    return str(compiled), held


def _sql_claims(
    activity: Activity, run_id: str | None, source: Engine, control: Control
) -> list[bool]:
    """Per record the run claims: is the claim true in the source now?"""
    schema = sql_engine.resolve_schema(activity, source)
    claimed = set(
        control.ledger.applied_refs(run_id, schema.system, schema.dataset) if run_id else []
    )
    anonymise = schema.marker is not None
    present = sql_engine.present_refs(source, schema, control.key, anonymise, claimed)
    # delete: a claimed record must be gone; anonymise: it must be there, marked anonymised.
    return [(ref in present) == anonymise for ref in sorted(claimed)]


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


def verify_s3(
    activity: Activity, as_of: dt.datetime, run_id: str | None, *, client: Any, control: Control
) -> Verification:
    """Check a finished S3 run: no due, unheld object remains (any version), and every object
    the evidence claims is gone has no version left."""
    from include.retention import s3_engine

    gx, context = _quiet_context()
    src = activity.source
    replan = s3_engine.plan_s3(activity, as_of, client=client, control=control)
    refs = RecordRefHasher(control.key, src.system, src.bucket)  # type: ignore[union-attr]
    remaining = _validate_frame(
        gx,
        context,
        "due_and_unheld",
        _frame("ref", [r.hex() for r in refs.refs(o.key for o in replan.due)]),
        gx.expectations.ExpectTableRowCountToEqual(value=0),
    )
    claimed = set(control.ledger.applied_refs(run_id, src.system, src.bucket) if run_id else [])  # type: ignore[union-attr]
    present = s3_engine.present_refs(client, control, src.system, src.bucket, src.prefix, claimed)  # type: ignore[union-attr]
    truthful = _validate_frame(
        gx,
        context,
        "claims",
        _frame("claim_true", [ref not in present for ref in sorted(claimed)]),
        gx.expectations.ExpectColumnValuesToBeInSet(column="claim_true", value_set=[True]),
    )
    result = Verification(
        success=bool(remaining.success and truthful.success),
        remaining_due=int(remaining.result["observed_value"]),
        held_remaining=replan.result.held + replan.result.restricted,
        claims_checked=len(claimed),
        false_claims=int(truthful.result.get("unexpected_count") or 0),
    )
    log.info("verification of %s: %s", activity.id, result.as_dict())
    return result
