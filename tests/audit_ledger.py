"""A ledger built by real enforcement runs over several days, for the certificate and report
tests, and readers of its raw rows that share no code with the documents under test.

Days are set by replacing the ledger's clock (``ledger._now_iso``); everything else is the
real engine on SQLite sources: a completed, approved and verified deletion with a legal hold
and an unknown anchor; a run stopped for approval; a run failing mid-batch; the next run
settling its batch; an anonymisation whose verification fails (a row was restored behind the
run's back).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.retention import ledger as ledger_module
from include.retention import lifecycle, verification
from include.retention.catalogue import Activity, Catalogue
from include.retention.lifecycle import Hooks
from include.retention.runs import Control
from include.retention.texts import Localised
from tests.dbs import ANONYMISE, AS_OF, activity, old, person, recent, seed

CATALOGUE_VERSION = "test-catalogue-v1"
HOLD_REASON = "tvist med kandidat Greta Garbo"  # personal data: must never be shown
ORIGIN = {
    "dag_id": "retention_recruitment", "run_id": "manual__2026-11-02T09:00:00+00:00",
    "run_type": "manual", "triggered_by": "admin",
}  # fmt: skip
APPROVER = "dpo.anna"
DAYS = {  # what ran when (Stockholm dates)
    "approved": dt.date(2026, 11, 2),
    "gated": dt.date(2026, 11, 3),
    "failed": dt.date(2026, 11, 4),
    "recovered": dt.date(2026, 11, 5),
    "anonymised": dt.date(2026, 11, 5),
}


def anonymising() -> Activity:
    alumni = activity(activity_id="alumni", action=ANONYMISE, children=False)
    return alumni.model_copy(update={"name": Localised(sv="Alumner", en="Alumni")})


@dataclass
class Built:
    control: Control
    control_url: str
    catalogue: Catalogue
    runs: dict[str, str]  # name -> ledger run id
    emails: list[str] = field(default_factory=list)


class _Clock:
    """The ledger's clock, set to a day (10:00 Stockholm = 09:00 UTC, ticking)."""

    def __init__(self) -> None:
        self.day = DAYS["approved"]
        self._tick = itertools.count()

    def __call__(self) -> str:
        at = dt.datetime(self.day.year, self.day.month, self.day.day, 9, 0, tzinfo=dt.UTC)
        return (at + dt.timedelta(milliseconds=next(self._tick))).isoformat(timespec="microseconds")


class _Boom(RuntimeError):
    pass


def _fail(batch_no: int) -> None:
    raise _Boom(f"source lost in batch {batch_no}")


def build(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Built:
    clock = _Clock()
    monkeypatch.setattr(ledger_module, "_now_iso", clock)
    key = secrets.token_bytes(32)
    control_url = f"sqlite:///{tmp / 'control.db'}"
    control = Control.open(control_url, key)
    people = [person(i, old() if i <= 8 else recent()) for i in range(1, 13)]
    people.append(person(20, None))  # unknown anchor: never deleted
    source = sa.create_engine(f"sqlite:///{tmp / 'ats.db'}")
    seed(source, people)
    control.holds.place_record_hold(
        "ats", "people", 3, kind="legal_hold", reason=HOLD_REASON, placed_by="legal"
    )
    recruitment = activity()
    alumni = anonymising()
    catalogue = Catalogue(
        activities={recruitment.id: recruitment, alumni.id: alumni}, version=CATALOGUE_VERSION
    )
    runs: dict[str, str] = {}

    def enforce(name: str, act: Activity, engine: sa.Engine, **kwargs: Any) -> Any:
        clock.day = DAYS[name]
        kwargs.setdefault("origin", ORIGIN)
        result = lifecycle.enforce(
            act, AS_OF, source=engine, control=control, catalogue_version=CATALOGUE_VERSION,
            **kwargs,
        )  # fmt: skip
        runs[name] = result.run_id
        return result

    result = enforce("approved", recruitment, source, approved_by=APPROVER)
    checked = verification.verify_sql(recruitment, AS_OF, result.run_id, source=source,
                                      control=control)  # fmt: skip
    control.ledger.record_verification(result.run_id, recruitment.id, checked.as_dict())

    _add_people(source, [person(i, old()) for i in range(30, 34)])
    gated = activity(safety={"max_rows": 1, "max_fraction": None})
    enforce("gated", gated, source)

    with pytest.raises(_Boom):
        enforce("failed", recruitment, source, hooks=Hooks(before_commit=_fail), batch_size=2)
    runs["failed"] = control.ledger.runs("recruitment")[-1].run_id
    enforce("recovered", recruitment, source)

    alumni_db = sa.create_engine(f"sqlite:///{tmp / 'alumni.db'}")
    seed(alumni_db, [person(i, old(), city="Lund") for i in range(40, 46)], children=False)
    result = enforce("anonymised", alumni, alumni_db)
    _restore(alumni_db, 41)  # behind the run's back: its claim for 41 is now untrue
    checked = verification.verify_sql(alumni, AS_OF, result.run_id, source=alumni_db,
                                      control=control)  # fmt: skip
    control.ledger.record_verification(result.run_id, alumni.id, checked.as_dict())
    emails = [f"person{i}@example.com" for i in [*range(1, 13), 20, *range(30, 34), *range(40, 46)]]
    return Built(control, control_url, catalogue, runs, emails)


def _add_people(engine: sa.Engine, people: list[dict[str, Any]]) -> None:
    table = sa.Table("people", sa.MetaData(), autoload_with=engine)
    defaults = {c.name: None for c in table.c}
    with engine.begin() as conn:
        conn.execute(table.insert(), [defaults | p for p in people])


def _restore(engine: sa.Engine, pid: int) -> None:
    table = sa.Table("people", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(
            table.update().where(table.c.id == pid)
            .values(anonymised_at=None, email=f"person{pid}@example.com")
        )  # fmt: skip


# ------------------------------------------------------------------ raw rows, read independently


def raw_rows(control_url: str) -> list[dict[str, Any]]:
    """Every ledger row as stored: columns, the parsed document and the hash in hex."""
    engine = sa.create_engine(control_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT seq, kind, run_id, activity_id, system, dataset, ref_seq, recorded_at,"
                " document, entry_hash FROM retention_ledger ORDER BY seq"
            )
        ).mappings()
        out = [
            dict(r)
            | {"doc": json.loads(r["document"])["body"], "hash": bytes(r["entry_hash"]).hex()}
            for r in rows
        ]
    engine.dispose()
    return out


def head_row(control_url: str) -> tuple[int, str]:
    engine = sa.create_engine(control_url)
    with engine.connect() as conn:
        seq, digest = conn.execute(
            sa.text("SELECT seq, entry_hash FROM retention_ledger_head")
        ).one()
    engine.dispose()
    return int(seq), bytes(digest).hex()


def applied_from_rows(rows: list[dict[str, Any]], run_id: str, dataset: str = "people") -> int:
    """Records the run's committed batches of ``dataset`` applied, from the raw rows."""
    prepared = {
        r["seq"]: r for r in rows
        if r["run_id"] == run_id and r["kind"] == "batch_prepared" and r["dataset"] == dataset
    }  # fmt: skip
    total = 0
    for r in rows:
        if r["kind"] == "batch_resolved" and r["ref_seq"] in prepared:
            if r["doc"]["outcome"] == "committed":
                total += prepared[r["ref_seq"]]["doc"]["counts"]["records"]
            elif r["doc"]["outcome"] == "partial":
                total += r["doc"]["applied"]
    return total


def of_run(rows: list[dict[str, Any]], run_id: str, kind: str) -> dict[str, Any]:
    matches = [r for r in rows if r["run_id"] == run_id and r["kind"] == kind]
    assert len(matches) == 1, (run_id, kind, len(matches))
    return matches[0]
