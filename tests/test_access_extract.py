"""Art. 15 register extract: every record of the person, with the activity's facts, written
owner-only as JSON, HTML and PDF (SQLite source through the SQL adapter)."""

from __future__ import annotations

import datetime as dt
import json
import stat

from include.retention import dsr
from include.retention.pseudonym import subject_ref
from tests.dbs import activity, create_db, key_fixture, old, person, recent, seed  # noqa: F401

NOW = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)


def test_the_extract_lists_every_record_of_the_person(tmp_path, key, monkeypatch) -> None:
    source, drop_source = create_db("sqlite", tmp_path)
    control, drop_control = create_db("sqlite", tmp_path)
    seed(
        source.engine,
        [person(1, old()), person(2, recent()), person(3, recent(), email="PERSON1@example.com")],
    )
    monkeypatch.setenv("RETENTION_DSR_OUTPUT_DIR", str(tmp_path / "out"))
    try:
        runtime = dsr.DsrRuntime.of(control.engine, key)
        received = dsr.receive(
            "access",
            {"email": "person1@example.com"},
            user="u",
            dag_id="dsr_access",
            run_id="r",
            runtime=runtime,
            now=NOW,
        )
        result = dsr.access(
            received,
            runtime=runtime,
            catalogue=[activity()],
            connections={"recruitment": source.engine},
            now=NOW,
        )
    finally:
        drop_source()
        drop_control()
    assert result["records"] == 2 and result["activities_with_records"] == ["recruitment"]
    assert "person1" not in json.dumps(result).lower()
    folder = tmp_path / "out" / "DSR-1"
    assert result["extract"] == str(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["registerutdrag.html", "registerutdrag.json", "registerutdrag.pdf"]
    assert all(stat.S_IMODE((folder / f).stat().st_mode) == 0o600 for f in files)
    doc = json.loads((folder / "registerutdrag.json").read_text(encoding="utf-8"))
    (item,) = doc["behandlingar"]
    assert item["behandling"] == "Rekrytering" and item["källsystem"] == "ats"
    assert item["rättslig grund"] == ["Intresseavvägning (art. 6.1 f)"]
    assert sorted(r["id"] for r in item["uppgifter"]) == [1, 3]
    assert "PERSON1@example.com" in (folder / "registerutdrag.html").read_text(encoding="utf-8")
    assert (folder / "registerutdrag.pdf").read_bytes().startswith(b"%PDF")
    assert received["subject_refs"] == [subject_ref(key, "person1@example.com").hex()]


def test_child_rows_reach_the_json_as_plain_values() -> None:
    from decimal import Decimal

    from include.retention.access_extract import plain

    record = {
        "id": 7,
        "applied_on": dt.date(2026, 3, 1),
        "interviews": [
            {"at": dt.datetime(2026, 3, 9, 10, 30, tzinfo=dt.UTC), "score": Decimal("4.5"),
             "notes": [{"added": dt.date(2026, 3, 10), "photo": b"\x01\xff"}]},
        ],
    }  # fmt: skip
    assert plain(record) == {
        "id": 7,
        "applied_on": "2026-03-01",
        "interviews": [
            {"at": "2026-03-09T10:30:00+00:00", "score": "4.5",
             "notes": [{"added": "2026-03-10", "photo": "01ff"}]},
        ],
    }  # fmt: skip
