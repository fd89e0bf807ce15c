"""Data portability (Art. 20): the person's records of the activities on consent or contract,
as JSON and CSV, written owner-only to a folder or encrypted to an S3 prefix (moto on
loopback); activities on other bases are left out."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import stat
from typing import Any

import pytest
import sqlalchemy as sa

from include.retention import dsr, responses
from include.retention.catalogue import Activity
from include.retention.errors import RetentionError
from tests.dbs import activity, create_db, key_fixture, old, person, recent, seed  # noqa: F401
from tests.s3 import new_bucket, s3_fixture, s3_server_fixture  # noqa: F401

NOW = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
ANNA = "person1@example.com"


def _on(activity_id: str, bases: list[str]) -> Activity:
    raw = activity(activity_id=activity_id, children=False).model_dump(
        mode="json", exclude_none=True
    )
    raw["legal_bases"] = bases
    if "consent" in bases:
        raw["retention"].append({"rule": {"kind": "consent"}, "anchor_column": "withdrawn_on"})
    return Activity.model_validate(raw)


CATALOGUE = [
    _on("newsletter", ["consent"]),
    _on("customers", ["contract", "legitimate_interest"]),
    _on("prospects", ["legitimate_interest"]),
    _on("bookkeeping", ["legal_obligation"]),
]


def _export(tmp_path, key, store: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    source, drop_source = create_db("sqlite", tmp_path)
    seed(source.engine, [
        person(1, old(), city="Malmö"), person(2, recent()),
        person(3, recent(), email="Person1@Example.com ", city=None),
    ], children=False)  # fmt: skip
    control = sa.create_engine(f"sqlite:///{tmp_path / 'control.db'}")
    try:
        runtime = dsr.DsrRuntime.of(control, key)
        received = dsr.receive("portability", {"email": ANNA}, user="u", dag_id="dsr_portability",
                               run_id="r", runtime=runtime, now=NOW)  # fmt: skip
        result = dsr.portability(
            received, runtime=runtime, catalogue=CATALOGUE, now=NOW,
            connections={a.id: source.engine for a in CATALOGUE},
            store=store(received["request"]) if store else None,
        )  # fmt: skip
    finally:
        drop_source()
    return received, result


def test_the_export_holds_the_consent_and_contract_records_only(tmp_path, key, monkeypatch):
    monkeypatch.setenv(responses.OUTPUT_DIR_ENV, str(tmp_path / "out"))
    received, result = _export(tmp_path, key)
    folder = tmp_path / "out" / "DSR-1"
    assert result["location"] == str(folder)
    assert result["activities_with_records"] == ["newsletter", "customers"]
    assert result["activities_searched"] == 2 and result["records"] == 4
    assert ANNA not in json.dumps([received, result]).lower()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(p.name for p in folder.iterdir())
    assert files == [
        "dataportabilitet-customers-ats.csv", "dataportabilitet-newsletter-ats.csv",
        "dataportabilitet.json",
    ]  # fmt: skip
    assert sorted(result["files"]) == files
    assert all(stat.S_IMODE((folder / f).stat().st_mode) == 0o600 for f in files)

    doc = json.loads((folder / "dataportabilitet.json").read_text(encoding="utf-8"))
    assert [(a["activity"], a["legal_bases"]) for a in doc["activities"]] == [
        ("newsletter", ["consent"]), ("customers", ["contract"]),
    ]  # fmt: skip
    for item in doc["activities"]:
        assert sorted(r["id"] for r in item["records"]) == [1, 3]
        assert {r["email"] for r in item["records"]} == {ANNA, "Person1@Example.com "}
    with (folder / "dataportabilitet-newsletter-ats.csv").open(encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [(r["id"], r["email"], r["city"]) for r in rows] == [
        ("1", ANNA, "Malmö"), ("3", "Person1@Example.com ", ""),
    ]  # fmt: skip
    assert rows[0]["decided_at"].startswith(str(old().date()))


def test_the_answer_goes_to_an_s3_prefix_encrypted(tmp_path, key, s3) -> None:
    bucket = new_bucket(s3, "answers")

    def store(ref: str) -> Any:
        return responses.store_for(ref, f"s3://{bucket}/dsr/exports/", client=s3)

    _, result = _export(tmp_path, key, store)
    assert result["location"] == f"s3://{bucket}/dsr/exports/DSR-1/"
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        "dsr/exports/DSR-1/dataportabilitet-customers-ats.csv",
        "dsr/exports/DSR-1/dataportabilitet-newsletter-ats.csv",
        "dsr/exports/DSR-1/dataportabilitet.json",
    ]
    for o in listed:
        assert s3.head_object(Bucket=bucket, Key=o["Key"])["ServerSideEncryption"] == "AES256"
    body = s3.get_object(Bucket=bucket, Key="dsr/exports/DSR-1/dataportabilitet-customers-ats.csv")
    rows = list(csv.DictReader(io.StringIO(body["Body"].read().decode("utf-8"))))
    assert [r["id"] for r in rows] == ["1", "3"]
    assert not (tmp_path / "out").exists()


def test_the_access_extract_goes_to_an_s3_prefix_too(tmp_path, key, s3) -> None:
    bucket = new_bucket(s3, "answers")
    source, drop_source = create_db("sqlite", tmp_path)
    seed(source.engine, [person(1, old())], children=False)
    runtime = dsr.DsrRuntime.of(sa.create_engine(f"sqlite:///{tmp_path / 'c.db'}"), key)
    try:
        received = dsr.receive("access", {"email": ANNA}, user="u", dag_id="dsr_access",
                               run_id="r", runtime=runtime, now=NOW)  # fmt: skip
        result = dsr.access(
            received, runtime=runtime, catalogue=CATALOGUE[2:3], now=NOW,
            connections={"prospects": source.engine},
            store=responses.store_for(received["request"], f"s3://{bucket}", client=s3),
        )  # fmt: skip
    finally:
        drop_source()
    assert result["extract"] == f"s3://{bucket}/DSR-1/"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["DSR-1/registerutdrag.html", "DSR-1/registerutdrag.json",
                    "DSR-1/registerutdrag.pdf"]  # fmt: skip
    doc = json.loads(s3.get_object(Bucket=bucket, Key=keys[1])["Body"].read())
    assert [r["id"] for r in doc["behandlingar"][0]["uppgifter"]] == [1]


def test_a_bad_output_location_is_refused(tmp_path) -> None:
    with pytest.raises(RetentionError, match="write s3://bucket/prefix"):
        responses.store_for("DSR-1", "s3:///x")
    with pytest.raises(RetentionError, match="plain name"):
        responses.FolderStore(tmp_path).write("../escape", b"x")
