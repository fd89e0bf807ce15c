"""The 18 tampering cases: an attacker with write access to the control database edits,
deletes, inserts, reorders, backdates, truncates or empties the evidence, often recomputing
every hash and the head row so the chain is self-consistent again. Each one must make
``python -m include.retention ledger verify`` fail, through the chain, the head row, the
subject index, the hold register, or the signed manifests published to S3 under Object Lock
(on the real moto server)."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.demo.embedded_s3 import EmbeddedS3
from include.retention import manifest
from include.retention.__main__ import main
from include.retention.chain import (
    GENESIS,
    canonical_json,
    entry_hash,
    head_table,
    ledger_table,
    subject_table,
)
from include.retention.holds import holds_table
from include.retention.ledger import RunHeader
from include.retention.pseudonym import RecordRefHasher, SubjectRefHasher, pack_refs
from include.retention.runs import Control
from tests.s3 import s3_server_fixture

__all__ = ["s3_server_fixture"]

KEY = secrets.token_hex(24)


@dataclass
class Setup:
    control: Control
    client: Any
    bucket: str
    signing: manifest.SigningKey
    runs: list[str]

    @property
    def engine(self) -> sa.Engine:
        return self.control.ledger.engine


def _run(control: Control, pks: list[int], people: list[str]) -> str:
    ledger = control.ledger
    run_id = ledger.start_run(
        RunHeader(
            activity_id="crm", system="crm", dataset="contacts", action="delete",
            rules=["P2Y after the contract ended"], as_of="2026-06-15T03:00:00+00:00",
            cutoffs=[None], dry_run=False, catalogue_version="v1", code_version="t",
            approved_by="dpo@corp",
        )
    )  # fmt: skip
    seq = ledger.prepare_batch(
        run_id, "crm", "crm", "contacts", batch_no=1, action="delete",
        refs_blob=pack_refs(RecordRefHasher(control.key, "crm", "contacts").refs(pks)),
        counts={"records": len(pks)},
        subject_refs_blob=pack_refs(SubjectRefHasher(control.key).refs(people)),
    )  # fmt: skip
    ledger.resolve_batch(seq, outcome="committed")
    ledger.finish_run(run_id, "crm", outcome="completed", counts={"applied": 2}, message="ok")
    return run_id


@pytest.fixture
def setup(
    s3_server: EmbeddedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    control = Control.open(sa.create_engine(url), KEY.encode())
    signing = manifest.SigningKey.new()
    bucket = f"manifests-{secrets.token_hex(4)}"
    for name, value in {
        "RETENTION_CONTROL_DB_URL": url,
        "AIRFLOW_CONN_RETENTION_PSEUDONYM_KEY": {"conn_type": "generic", "password": KEY},
        "AIRFLOW_CONN_RETENTION_MANIFEST_SIGNING_KEY": {
            "conn_type": "generic", "password": signing.text(),
        },
        "AIRFLOW_CONN_RETENTION_S3": {
            "conn_type": "aws", "login": "test", "password": "test",
            "extra": {"endpoint_url": s3_server.endpoint_url, "region_name": "eu-north-1"},
        },
        manifest.BUCKET_ENV: bucket,
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value if isinstance(value, str) else json.dumps(value))
    client = s3_server.client()
    runs = [_run(control, [1, 2], ["anna@example.se", "bo@example.se"])]
    held = control.holds.place_subject_hold(
        "carl@example.se", kind="legal_hold", reason="case 17", placed_by="legal@corp"
    )
    runs.append(_run(control, [3, 4], ["dora@example.se", "eva@example.se"]))
    control.holds.release(held, released_by="legal@corp")
    runs.append(_run(control, [5, 6], ["fia@example.se", "gun@example.se"]))
    manifest.publish(control.ledger, client, signing, bucket=bucket, retain_days=1)
    yield Setup(control, client, bucket, signing, runs)
    control.ledger.engine.dispose()


def _verify(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["ledger", "verify", "--require-manifests"])
    out, err = capsys.readouterr()
    return code, out + err


def test_an_untouched_ledger_verifies_against_its_manifest(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = _verify(capsys)
    assert code == 0, text
    assert "ledger ok: 14 entries" in text
    assert "hold register ok: 1 holds" in text
    assert "the ledger matches all 1 in s3://" in text


def test_published_manifests_are_locked_and_hold_no_personal_data(setup: Setup) -> None:
    [item] = setup.client.list_objects_v2(Bucket=setup.bucket)["Contents"]
    head = setup.client.head_object(Bucket=setup.bucket, Key=item["Key"])
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > dt.datetime.now(dt.UTC)
    version = setup.client.list_object_versions(Bucket=setup.bucket)["Versions"][0]["VersionId"]
    with pytest.raises(setup.client.exceptions.ClientError, match="AccessDenied"):
        setup.client.delete_object(Bucket=setup.bucket, Key=item["Key"], VersionId=version)
    body = setup.client.get_object(Bucket=setup.bucket, Key=item["Key"])["Body"].read()
    document = json.loads(body)
    assert document["body"]["run_ids"] == setup.runs
    assert document["body"]["ledger"]["head_seq"] == 14
    assert document["body"]["activities"] == {"crm": {"records_delete": 6, "runs": 3}}
    assert document["body"]["holds"] == {"events": 2, "last_seq": 10}
    assert b"example.se" not in body and b"case 17" not in body


# ------------------------------------------------------------------------------ forging


def _rows(engine: sa.Engine) -> list[dict[str, Any]]:
    t = ledger_table
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t).order_by(t.c.seq)).mappings().all()
    return [
        dict(row) | {"body": json.loads(row["document"])["body"], "old_seq": row["seq"]}
        for row in rows
    ]


def _reforge(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` back as a self-consistent chain: renumbered, every reference to a seq
    remapped, every hash recomputed, the subject index moved along and the head row set."""
    renumber = {row["old_seq"]: n for n, row in enumerate(rows, start=1)}
    prev = GENESIS
    with engine.begin() as conn:
        subjects = conn.execute(sa.select(subject_table)).mappings().all()
        conn.execute(sa.delete(ledger_table))
        conn.execute(sa.delete(subject_table))
        for n, row in enumerate(rows, start=1):
            cols = {
                "seq": n, "kind": row["kind"], "run_id": row["run_id"],
                "activity_id": row["activity_id"], "system": row["system"],
                "dataset": row["dataset"], "ref_seq": renumber.get(row["ref_seq"]),
                "recorded_at": row["recorded_at"],
            }  # fmt: skip
            document = canonical_json({**cols, "body": row["body"]})
            digest = entry_hash(prev, document, row["blob"])
            conn.execute(
                sa.insert(ledger_table).values(
                    **cols,
                    document=document.decode(),
                    blob=row["blob"],
                    prev_hash=prev,
                    entry_hash=digest,
                )
            )
            prev = digest
        for s in subjects:
            if s["seq"] in renumber:
                conn.execute(sa.insert(subject_table).values(dict(s) | {"seq": renumber[s["seq"]]}))
        conn.execute(sa.update(head_table).values(seq=len(rows), entry_hash=prev))


def _execute(engine: sa.Engine, *statements: sa.Executable) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)


def _of_run(rows: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["run_id"] == run_id]


def edit_body(s: Setup) -> None:
    t = ledger_table
    row = _rows(s.engine)[3]
    document = row["document"].replace('"applied":2', '"applied":0')
    _execute(s.engine, sa.update(t).where(t.c.seq == 4).values(document=document))


def edit_body_recomputed(s: Setup) -> None:
    rows = _rows(s.engine)
    rows[3]["body"]["counts"]["applied"] = 0
    _reforge(s.engine, rows)


def edit_column(s: Setup) -> None:
    t = ledger_table
    _execute(s.engine, sa.update(t).where(t.c.seq == 2).values(dataset="orders"))


def edit_blob(s: Setup) -> None:
    t = ledger_table
    _execute(s.engine, sa.update(t).where(t.c.seq == 2).values(blob=secrets.token_bytes(32)))


def edit_blob_recomputed(s: Setup) -> None:
    rows = _rows(s.engine)
    rows[1]["blob"] = secrets.token_bytes(32)
    _reforge(s.engine, rows)


def rewrite_whole_chain(s: Setup) -> None:
    rows = _rows(s.engine)
    for row in rows:
        if row["kind"] == "run_started":
            row["body"]["rules"] = ["P1Y after the contract ended"]
    _reforge(s.engine, rows)


def delete_run(s: Setup) -> None:
    t = ledger_table
    _execute(s.engine, sa.delete(t).where(t.c.run_id == s.runs[1]))


def delete_run_recomputed(s: Setup) -> None:
    rows = _rows(s.engine)
    _reforge(s.engine, [r for r in rows if r["run_id"] != s.runs[1]])


def backdate(s: Setup) -> None:
    rows = _rows(s.engine)
    for row in _of_run(rows, s.runs[2]):
        row["recorded_at"] = "2025-01-01" + row["recorded_at"][10:]
    _reforge(s.engine, rows)


def truncate_end(s: Setup) -> None:
    t, subjects = ledger_table, subject_table
    _execute(
        s.engine, sa.delete(t).where(t.c.seq > 11), sa.delete(subjects).where(subjects.c.seq > 11)
    )


def truncate_with_head(s: Setup) -> None:
    _reforge(s.engine, _rows(s.engine)[:11])


def empty(s: Setup) -> None:
    _execute(s.engine, sa.delete(subject_table), sa.delete(ledger_table))
    _execute(s.engine, sa.update(head_table).values(seq=0, entry_hash=GENESIS))


def reorder(s: Setup) -> None:
    rows = _rows(s.engine)
    rows[0], rows[4] = rows[4], rows[0]
    _reforge(s.engine, rows)


def reorder_in_place(s: Setup) -> None:
    t = ledger_table
    _execute(
        s.engine,
        sa.update(t).where(t.c.seq == 3).values(seq=-3),
        sa.update(t).where(t.c.seq == 4).values(seq=3),
        sa.update(t).where(t.c.seq == -3).values(seq=4),
    )


def insert_entry(s: Setup) -> None:
    rows = _rows(s.engine)
    body = {k: v for k, v in rows[1]["body"].items() if k != "subjects"} | {"batch_no": 2}
    fake = dict(rows[1]) | {"old_seq": -1, "body": body}
    rows.insert(2, fake)
    _reforge(s.engine, rows)


def edit_hold_event(s: Setup) -> None:
    rows = _rows(s.engine)
    placed = next(r for r in rows if r["kind"] == "hold_placed")
    placed["body"]["kind"] = "restriction"
    _reforge(s.engine, rows)
    _execute(s.engine, sa.update(holds_table).values(kind="restriction"))


def delete_hold_release(s: Setup) -> None:
    """Make a released hold look as if it had never been placed: both events and the row."""
    rows = _rows(s.engine)
    _reforge(s.engine, [r for r in rows if r["kind"] not in ("hold_placed", "hold_released")])
    _execute(s.engine, sa.delete(holds_table))


def delete_subject_row(s: Setup) -> None:
    t = subject_table
    with s.engine.connect() as conn:
        bucket = conn.execute(sa.select(t.c.bucket).where(t.c.seq == 2)).scalars().first()
    _execute(s.engine, sa.delete(t).where(t.c.seq == 2, t.c.bucket == bucket))


def forge_manifest(s: Setup) -> None:
    """Rewrite the chain, and publish a manifest of it signed with another key."""
    rewrite_whole_chain(s)
    other = manifest.SigningKey.new()
    document = manifest.sign(manifest.build(s.control.ledger), other)
    document["key_id"] = manifest.key_id(s.signing.public())  # claim the real key
    s.client.put_object(
        Bucket=s.bucket, Key=f"{manifest.PREFIX}9999/forged.json",
        Body=json.dumps(document).encode(),
    )  # fmt: skip


CASES: dict[str, tuple[Callable[[Setup], None], str]] = {
    "edit_body": (edit_body, "LEDGER BROKEN at entry seq 4"),
    "edit_body_recomputed": (edit_body_recomputed, "the chain up to it was rewritten"),
    "edit_column": (edit_column, "LEDGER BROKEN at entry seq 2"),
    "edit_blob": (edit_blob, "LEDGER BROKEN at entry seq 2"),
    "edit_blob_recomputed": (edit_blob_recomputed, "the chain up to it was rewritten"),
    "rewrite_whole_chain": (rewrite_whole_chain, "the chain up to it was rewritten"),
    "delete_run": (delete_run, "LEDGER BROKEN at entry seq 6"),
    "delete_run_recomputed": (delete_run_recomputed, "entries removed (truncated)"),
    "backdate": (backdate, "the chain up to it was rewritten"),
    "truncate_end": (truncate_end, "entries missing at the end"),
    "truncate_with_head": (truncate_with_head, "entries removed (truncated)"),
    "empty": (empty, "entries removed (truncated)"),
    "reorder": (reorder, "the chain up to it was rewritten"),
    "reorder_in_place": (reorder_in_place, "LEDGER BROKEN at entry seq 3"),
    "insert_entry": (insert_entry, "the chain up to it was rewritten"),
    "edit_hold_event": (edit_hold_event, "the chain up to it was rewritten"),
    "delete_hold_events": (delete_hold_release, "entries removed (truncated)"),
    "delete_subject_row": (delete_subject_row, "subject references differ"),
    "forge_manifest": (forge_manifest, "forged or altered"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tampering_is_detected(setup: Setup, capsys: pytest.CaptureFixture[str], case: str) -> None:
    tamper, expected = CASES[case]
    assert _verify(capsys)[0] == 0
    tamper(setup)
    code, text = _verify(capsys)
    assert code == 1, text
    assert expected in text, text


def test_every_recomputed_case_passes_the_database_checks_alone(setup: Setup) -> None:
    """What the manifests add: these rewrites fool the chain, head and subject checks."""
    for case in ("rewrite_whole_chain", "backdate", "truncate_with_head", "empty"):
        CASES[case][0](setup)
        assert setup.control.ledger.verify().ok, case
