"""The main job's summary: one line per activity from the ledger, and its verification."""

from __future__ import annotations

from typing import Any

from include.retention.catalogue import load_catalogue
from include.retention.runs import Control

COLUMNS = (
    "activity", "outcome", "checked", "expired", "deleted", "anonymised", "held",
    "unknown anchor", "kept", "gap", "dag run",
)  # fmt: skip


def _row(activity: Any, run: Any, state: str) -> list[str]:
    finished = (run.finished or {}) if run else {}
    counts = finished.get("counts") or {}
    applied = int(counts.get("applied", 0))
    anonymise = activity.action.kind == "anonymise"
    held = int(counts.get("held", 0)) + int(counts.get("restricted", 0))
    kept = int(counts.get("kept", 0)) + int(counts.get("out_of_scope", 0))
    return [
        activity.id,
        finished.get("outcome", "no run"),
        str(counts.get("total", "")),
        str(counts.get("expired", "")),
        "0" if anonymise else str(applied),
        str(applied) if anonymise else "0",
        str(held),
        str(counts.get("anchor_unknown", "")),
        str(kept),
        "yes" if activity.policy_gap else "",
        state,
    ]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [list(COLUMNS), *rows]) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(list(COLUMNS)), line(["-" * w for w in widths]), *map(line, rows)])


def print_report(control_url: str, key: bytes, states: dict[str, str]) -> bool:
    """Print the per-activity table and the ledger verification; True if all is well."""
    control = Control.open(control_url, key)
    rows = []
    for activity in sorted(load_catalogue(), key=lambda a: a.id):
        runs = control.ledger.runs(activity.id)
        rows.append(
            _row(activity, runs[-1] if runs else None, states.get(f"retention_{activity.id}", "-"))
        )
    print(_table(rows))
    verified = control.ledger.verify()
    print(
        f"\nledger: {verified.entries} entries, chain {'intact' if verified.ok else 'BROKEN'}"
        f" (head seq {verified.head_seq}, hash {verified.head_hash})"
        + ("" if verified.ok else f": {verified.problem} at seq {verified.bad_seq}")
    )
    holds = control.holds.verify()
    print(
        f"hold register: {holds.holds} holds, evidence {'matches' if holds.ok else 'VIOLATED'}"
        + "".join(f"\n  {problem}" for problem in holds.problems)
    )
    failed = [dag_id for dag_id, state in states.items() if state != "success"]
    if failed:
        print(f"DAG runs not successful: {', '.join(failed)}")
    return verified.ok and holds.ok and not failed
