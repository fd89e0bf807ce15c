"""Files linked to SQL records (source ``objects``, e.g. candidates' CVs) are deleted with them.

Real moto S3 server (tests/s3.py) and real SQLite and PostgreSQL sources (tests/dbs.py): the
SQL engine deletes every version and delete marker of an expired record's file before the
source commits, never touches held or not-expired records' files, leaves everything alone on a
dry run, rolls the batch back when the files cannot be deleted, and recovers from a SIGKILL
between the file deletion and the source commit without false evidence.

Also the crash child: ``python -m tests.test_linked_objects DB CONTROL KEY_HEX ENDPOINT BUCKET``
runs one enforcement (the parent sets RETENTION_TEST_KILL_AT).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from include.demo.embedded_s3 import EmbeddedS3, local_client
from include.retention.catalogue import Activity, ObjectLink, SqlSource, System
from include.retention.errors import RetentionError
from include.retention.lifecycle import OBJECT_CHECKPOINT, Hooks, RunReport, enforce, recover
from include.retention.runs import KILL_ENV, Control
from tests.dbs import AS_OF, Db, create_db, ids, old, people_schema, person, recent
from tests.dbs import activity as base_activity
from tests.s3 import (  # noqa: F401  (the *_fixture names register fixtures)
    KEY,
    CallCounter,
    new_bucket,
    next_second,
    put,
    s3_fixture,
    s3_server_fixture,
    versions,
)

ROOT = Path(__file__).resolve().parent.parent
CONN_ID = "test_s3"
HELD_PK, SUBJECT_HELD_PK = 2, 7


def cv(pk: int) -> str:
    return f"candidates/{pk:05d}/cv.pdf"


# id -> (decided_at, has a CV key). 1: expired, 2 versions; 2: expired, record hold; 3: not
# expired; 4: expired, no CV (NULL); 5: expired, CV soft-deleted (version + delete marker);
# 6: expired, key with no file; 7: expired, subject hold; 8..11: expired (several batches).
PEOPLE = {1: old(), 2: old(), 3: recent(), 4: old(), 5: old(), 6: old(), 7: old()} | {
    pk: old() for pk in range(8, 12)
}
EXPIRED = {pk for pk, decided in PEOPLE.items() if decided == old()}
NO_CV, NO_FILE = 4, 6


def linked_activity(bucket: str) -> Activity:
    act = base_activity()
    link = ObjectLink(column="cv_object_key", conn_id=CONN_ID, bucket=bucket)
    return act.model_copy(update={"source": act.source.model_copy(update={"objects": [link]})})


def seed(engine: Engine) -> None:
    md = people_schema()
    md.tables["people"].append_column(sa.Column("cv_object_key", sa.String(200)))
    md.create_all(engine)
    defaults = {c.name: None for c in md.tables["people"].c}
    rows = [
        defaults | person(pk, decided, cv_object_key=None if pk == NO_CV else cv(pk))
        for pk, decided in PEOPLE.items()
    ]
    apps = [{"id": pk * 10, "person_id": pk, "title": "job"} for pk in PEOPLE]
    with engine.begin() as conn:
        conn.execute(md.tables["people"].insert(), rows)
        conn.execute(md.tables["applications"].insert(), apps)
        conn.execute(
            md.tables["attachments"].insert(),
            [{"id": a["id"], "application_id": a["id"], "filename": "cv.pdf"} for a in apps],
        )


def upload(client: Any, bucket: str) -> None:
    for pk in PEOPLE:
        if pk in (NO_CV, NO_FILE):
            continue
        put(client, bucket, cv(pk), b"v1")
        if pk == 1:
            put(client, bucket, cv(pk), b"v2")
        if pk == 5:
            client.delete_object(Bucket=bucket, Key=cv(pk))  # a delete marker on top


def files(client: Any, bucket: str) -> dict[str, int]:
    """key -> number of versions and delete markers."""
    out: dict[str, int] = {}
    for key, _, _ in versions(client, bucket):
        out[key] = out.get(key, 0) + 1
    return out


@pytest.fixture(name="db", params=("sqlite", "postgresql"))
def db_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    db, cleanup = create_db(request.param, tmp_path)
    try:
        seed(db.engine)
        yield db
    finally:
        cleanup()


@pytest.fixture(name="control")
def control_fixture(tmp_path: Path) -> Control:
    return Control.open(f"sqlite:///{tmp_path / 'control.db'}", KEY)


def place_holds(control: Control) -> None:
    control.holds.place_record_hold("ats", "people", HELD_PK, kind="legal_hold",
                                    reason="dispute", placed_by="legal")  # fmt: skip
    control.holds.place_subject_hold(person(SUBJECT_HELD_PK, None)["email"], kind="restriction",
                                     reason="Art. 18", placed_by="dpo")  # fmt: skip


def run(act: Activity, db: Db, control: Control, client: Any, **kw: Any) -> RunReport:
    return enforce(act, AS_OF, source=db.engine, control=control, catalogue_version="test",
                   clients=lambda _: client, batch_size=3, **kw)  # fmt: skip


def check_invariants(db: Db, control: Control, s3: Any, bucket: str) -> set[int]:
    """No change without evidence, no evidence for what is still there, nothing twice."""
    present = ids(db.engine)
    assert present >= set(PEOPLE) - EXPIRED
    remaining = files(s3, bucket)
    for pk in EXPIRED:
        assert len(control.ledger.lookup("ats", "people", pk)) == (pk not in present), pk
        if pk in (NO_CV, NO_FILE):
            continue
        evidence = control.ledger.lookup("ats", bucket, cv(pk))
        assert len(evidence) == (cv(pk) not in remaining), cv(pk)
        # (A file may be gone while its record stays: deleted before a source commit that
        # failed or never came; the next run deletes the record.)
    assert control.ledger.pending_batches() == []
    assert control.ledger.verify().ok
    return present


def test_expired_records_files_go_with_every_version(db: Db, control: Control, s3: Any) -> None:
    bucket = new_bucket(s3, "cv")
    upload(s3, bucket)
    before = files(s3, bucket)
    assert (before[cv(1)], before[cv(5)]) == (2, 2)
    place_holds(control)
    result = run(linked_activity(bucket), db, control, s3)
    assert result.outcome == "completed"
    gone = EXPIRED - {HELD_PK, SUBJECT_HELD_PK}
    assert ids(db.engine) == set(PEOPLE) - gone
    remaining = files(s3, bucket)
    assert remaining == {cv(pk): 1 for pk in (HELD_PK, 3, SUBJECT_HELD_PK)}
    counts = result.counts()
    with_files = gone - {NO_CV, NO_FILE}
    assert counts["objects_deleted"] == len(with_files)
    assert counts["object_versions_deleted"] == len(with_files) + 2  # cv 1: 2, cv 5: 2
    assert (counts["objects_missing"], counts["applied"], counts["batches"]) == (1, len(gone), 4)
    assert counts["objects_still_linked"] == 0  # no two records link one file here
    for pk in with_files:
        [evidence] = control.ledger.lookup("ats", bucket, cv(pk))
        assert evidence.run_id == result.run_id
    for pk in (HELD_PK, 3, SUBJECT_HELD_PK):
        assert control.ledger.lookup("ats", bucket, cv(pk)) == []
    check_invariants(db, control, s3, bucket)


def test_without_versions_a_file_goes_with_its_record_even_if_replaced_meanwhile(
    db: Db, control: Control, s3: Any
) -> None:
    """A linked file is not judged by what it holds but by its record: replaced under its key
    while the run runs (a bucket without versions keeps no old copy), it still goes with the
    record; only objects judged by their metadata are left when changed (test_s3_engine)."""
    bucket = new_bucket(s3, "cv-flat", versioned=False)
    upload(s3, bucket)  # cv 5's "soft delete" removes it here: no versions, no marker

    class Replacing(CallCounter):
        """Uploads cv 1 again just before the first call that would delete it."""

        def delete_objects(self, **kwargs: Any) -> Any:
            self.replace({entry["Key"] for entry in kwargs["Delete"]["Objects"]})
            return super().delete_objects(**kwargs)

        def delete_object(self, **kwargs: Any) -> Any:
            self.replace({kwargs["Key"]})
            return self._client.delete_object(**kwargs)

        def replace(self, keys: set[str]) -> None:
            if cv(1) in keys and not getattr(self, "replaced", False):
                self.replaced = True
                put(s3, bucket, cv(1), b"a cv uploaded again")

    result = run(linked_activity(bucket), db, control, Replacing(s3))
    assert result.outcome == "completed", result.message
    assert ids(db.engine) == set(PEOPLE) - EXPIRED
    assert files(s3, bucket) == {cv(3): 1}
    with_files = EXPIRED - {NO_CV, NO_FILE, 5}
    counts = result.counts()
    assert (counts["objects_deleted"], counts["objects_missing"]) == (len(with_files), 2)
    assert "changed_meanwhile" not in counts
    for pk in with_files:
        assert len(control.ledger.lookup("ats", bucket, cv(pk))) == 1, pk
    assert control.ledger.verify().ok


def test_a_file_uploaded_again_while_deleted_keeps_its_record_for_the_next_run(
    db: Db, control: Control, s3: Any
) -> None:
    """Unlike an object judged by its metadata (test_s3_engine), a linked file uploaded again
    under its key during the run is not a new object to leave for the next run: no run would
    find it once its record is gone. Its batch fails and rolls back, the record stays, and
    the next run deletes the record with every version of the file."""
    bucket = new_bucket(s3, "cv-again")
    upload(s3, bucket)
    next_second()

    class UploadingAgain(CallCounter):
        def delete_objects(self, **kwargs: Any) -> Any:
            response = super().delete_objects(**kwargs)
            if cv(1) in {entry["Key"] for entry in kwargs["Delete"]["Objects"]}:
                put(s3, bucket, cv(1), b"a cv uploaded again")
            return response

    with pytest.raises(RetentionError, match="linked file"):
        run(linked_activity(bucket), db, control, UploadingAgain(s3))
    assert 1 in ids(db.engine)
    assert control.ledger.lookup("ats", "people", 1) == []
    assert files(s3, bucket)[cv(1)] == 1  # the new upload
    result = run(linked_activity(bucket), db, control, s3)
    assert result.outcome == "completed", result.message
    assert ids(db.engine) == set(PEOPLE) - EXPIRED
    assert files(s3, bucket) == {cv(3): 1}
    assert control.ledger.verify().ok


SHARED = {  # pk -> (decided_at, the file its record links); several records link one file
    20: (old(), "shared/held.pdf"), 21: (old(), "shared/held.pdf"),  # 21 under a record hold
    22: (old(), "shared/not-due.pdf"), 23: (recent(), "shared/not-due.pdf"),
    24: (old(), "shared/both-due.pdf"), 25: (old(), "shared/both-due.pdf"),
    26: (old(), "shared/both-due.pdf"),
}  # fmt: skip


def test_a_file_goes_with_the_last_record_that_links_it(db: Db, control: Control, s3: Any) -> None:
    people = sa.Table("people", sa.MetaData(), autoload_with=db.engine)
    defaults = {c.name: None for c in people.c}
    rows = [defaults | person(pk, day, cv_object_key=key) for pk, (day, key) in SHARED.items()]
    with db.engine.begin() as conn:
        conn.execute(people.insert(), rows)
    bucket = new_bucket(s3, "cv-shared")
    upload(s3, bucket)
    for key in {key for _, key in SHARED.values()}:
        put(s3, bucket, key, b"v1")
    place_holds(control)
    control.holds.place_record_hold("ats", "people", 21, kind="legal_hold", reason="dispute",
                                    placed_by="legal")  # fmt: skip

    result = run(linked_activity(bucket), db, control, s3)  # batches of 3: 24-26 span two
    assert result.outcome == "completed", result.message
    assert ids(db.engine) & set(SHARED) == {21, 23}
    remaining = files(s3, bucket)
    assert {"shared/held.pdf", "shared/not-due.pdf"} <= remaining.keys()  # still linked
    assert "shared/both-due.pdf" not in remaining  # its last record went
    assert len(control.ledger.lookup("ats", bucket, "shared/both-due.pdf")) == 1
    for kept in ("shared/held.pdf", "shared/not-due.pdf"):
        assert control.ledger.lookup("ats", bucket, kept) == []
    # held.pdf and not-due.pdf stay linked; both-due.pdf, kept by a first batch when 24-26
    # fall in two, went with the second
    assert result.counts()["objects_still_linked"] == 2
    assert result.counts()["objects_missing"] == 1  # 6's key (no file), as before

    again = run(linked_activity(bucket), db, control, s3)
    assert (again.outcome, again.applied) == ("nothing_to_do", 0)
    assert files(s3, bucket) == remaining


def _with_alumni(bucket: str) -> SqlSource:
    """The people binding as a system file gives it when the system also binds an alumni
    table whose records link files in the same bucket."""
    people = linked_activity(bucket).source
    assert isinstance(people, SqlSource)
    own = people.model_dump(exclude={"kind", "system", "conn_id", "table"})
    alumni = {"lookup": {"email": "email"}, "objects": own["objects"]}
    system = System.model_validate(
        {"system": "ats", "kind": "sql", "conn_id": people.conn_id,
         "datasets": {"people": own, "alumni": alumni}}
    )  # fmt: skip
    binding = system.datasets["people"]
    assert isinstance(binding, SqlSource)
    return binding


def test_a_file_another_table_still_links_is_kept(db: Db, control: Control, s3: Any) -> None:
    alumni = sa.Table(
        "alumni", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(200)), sa.Column("cv_object_key", sa.String(200)),
    )  # fmt: skip
    people = sa.Table("people", sa.MetaData(), autoload_with=db.engine)
    shared = "shared/alumni.pdf"
    with db.engine.begin() as conn:
        alumni.create(conn)
        conn.execute(alumni.insert(), [{"id": 1, "email": "a@x.se", "cv_object_key": shared}])
        row = person(40, old(), cv_object_key=shared)
        conn.execute(people.insert(), [{c.name: None for c in people.c} | row])
    bucket = new_bucket(s3, "cv-alumni")
    upload(s3, bucket)
    put(s3, bucket, shared, b"v1")
    binding = _with_alumni(bucket)
    assert binding.linked_elsewhere(binding.objects[0]) == (("alumni", "cv_object_key"),)
    act = linked_activity(bucket).model_copy(update={"source": binding})

    result = run(act, db, control, s3)
    assert result.outcome == "completed", result.message
    assert 40 not in ids(db.engine)
    assert files(s3, bucket)[shared] == 1  # the alumni record still links it
    assert control.ledger.lookup("ats", bucket, shared) == []
    assert result.counts()["objects_still_linked"] == 1
    assert cv(1) not in files(s3, bucket)  # unshared files went as before


def test_another_linking_table_that_is_missing_stops_the_run_before_any_change(
    db: Db, control: Control, s3: Any
) -> None:
    bucket = new_bucket(s3, "cv-no-alumni")
    upload(s3, bucket)
    before = files(s3, bucket)
    act = linked_activity(bucket).model_copy(update={"source": _with_alumni(bucket)})
    with pytest.raises(RetentionError, match="table 'alumni' does not exist in system 'ats'"):
        run(act, db, control, s3)
    assert ids(db.engine) == set(PEOPLE) and files(s3, bucket) == before


@pytest.fixture(name="pg")
def pg_fixture(tmp_path: Path) -> Iterator[Db]:
    db, cleanup = create_db("postgresql", tmp_path)
    try:
        seed(db.engine)
        yield db
    finally:
        cleanup()


@pytest.mark.parametrize("other", ["commits", "rolls back"])
def test_a_file_kept_for_a_record_deleted_meanwhile_goes_once_that_deletion_commits(
    pg: Db, control: Control, s3: Any, other: str
) -> None:
    """Another transaction (an erasure, another partition) is deleting the other record that
    links the file while the run's batch looks: the batch keeps the file; once every batch
    has committed, the run deletes it if that deletion committed, and keeps it if not."""
    people = sa.Table("people", sa.MetaData(), autoload_with=pg.engine)
    shared = "shared/race.pdf"
    rows = [person(30, old(), cv_object_key=shared), person(31, recent(), cv_object_key=shared)]
    with pg.engine.begin() as conn:
        conn.execute(people.insert(), [{c.name: None for c in people.c} | r for r in rows])
    bucket = new_bucket(s3, "cv-race")
    upload(s3, bucket)
    put(s3, bucket, shared, b"v1")
    erasure = pg.engine.connect()  # deletes 31 (not due), uncommitted while the run looks
    erasure.execute(people.delete().where(people.c.id == 31))

    def end_the_erasure(batch_no: int) -> None:  # after the batches looked at the table
        if erasure.in_transaction():
            (erasure.commit if other == "commits" else erasure.rollback)()

    try:
        result = enforce(
            linked_activity(bucket), AS_OF, source=pg.engine, control=control,
            catalogue_version="test", clients=lambda _: s3, batch_size=100,  # one batch
            hooks=Hooks(before_commit=end_the_erasure),
        )  # fmt: skip
    finally:
        erasure.close()
    assert result.outcome == "completed", result.message
    assert 30 not in ids(pg.engine)
    evidence = control.ledger.lookup("ats", bucket, shared)
    counts = result.counts()
    if other == "commits":
        assert shared not in files(s3, bucket)
        assert [e.run_id for e in evidence] == [result.run_id]
        assert counts["objects_still_linked"] == 0
    else:
        assert 31 in ids(pg.engine) and files(s3, bucket)[shared] == 1
        assert evidence == []
        assert counts["objects_still_linked"] == 1
    assert control.ledger.pending_batches() == [] and control.ledger.verify().ok


def test_dry_run_and_unlinked_activity_touch_no_file(db: Db, control: Control, s3: Any) -> None:
    bucket = new_bucket(s3, "cv-dry")
    upload(s3, bucket)
    before = versions(s3, bucket)
    made: list[str] = []

    def clients(conn_id: str) -> Any:
        made.append(conn_id)
        return s3

    act = linked_activity(bucket)
    result = enforce(act, AS_OF, source=db.engine, control=control, catalogue_version="test",
                     clients=clients, dry_run=True)  # fmt: skip
    assert result.outcome == "dry_run" and result.counts()["objects_deleted"] == 0
    assert versions(s3, bucket) == before and ids(db.engine) == set(PEOPLE)
    # Without ``objects`` the engine never asks for an S3 client.
    result = enforce(base_activity(), AS_OF, source=db.engine, control=control,
                     catalogue_version="test", clients=clients)  # fmt: skip
    assert result.outcome == "completed" and made == []
    assert versions(s3, bucket) == before


@pytest.mark.parametrize("failure", ["no_bucket", "delete_raises", "raises_after_delete"])
def test_failed_file_deletion_rolls_the_batch_back(
    db: Db, control: Control, s3: Any, failure: str
) -> None:
    bucket = new_bucket(s3, "cv-fail")
    upload(s3, bucket)
    act = linked_activity(f"{bucket}-missing" if failure == "no_bucket" else bucket)
    client = s3
    if failure != "no_bucket":
        client = CallCounter(s3, fail_delete=ConnectionError("S3 down"),
                             crash_after=failure == "raises_after_delete")  # fmt: skip
    with pytest.raises(Exception) as exc_info:
        run(act, db, control, client)
    assert isinstance(exc_info.value, ConnectionError) == (failure != "no_bucket")
    assert ids(db.engine) == set(PEOPLE), "the batch's rows must stay"
    for pk in EXPIRED:
        assert control.ledger.lookup("ats", "people", pk) == []
    # The first batch (1, 2, 3) holds one expired record with a CV: 1.
    assert (cv(1) in files(s3, bucket)) == (failure != "raises_after_delete")
    [finished] = [e for e in control.ledger.entries(with_blob=False) if e.kind == "run_finished"]
    assert finished.document["body"]["outcome"] == "failed"
    # The next run settles what is pending (S3 by existence) and completes the job.
    result = run(linked_activity(bucket), db, control, s3)
    assert result.outcome == "completed"
    assert ids(db.engine) == set(PEOPLE) - EXPIRED
    assert files(s3, bucket) == {cv(3): 1}
    check_invariants(db, control, s3, bucket)


def _kill_child(db: Db, control_url: str, endpoint: str, bucket: str, kill_at: str) -> None:
    child = subprocess.run(
        [sys.executable, "-m", "tests.test_linked_objects", db.url, control_url, KEY.hex(),
         endpoint, bucket],
        cwd=ROOT, env=os.environ | {KILL_ENV: kill_at, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


@pytest.mark.parametrize("kill_at", ["after_prepare:1", f"{OBJECT_CHECKPOINT}:1", "after_apply:2"])
def test_crash_around_the_file_deletion_is_recovered(
    db: Db, s3_server: EmbeddedS3, s3: Any, tmp_path: Path, kill_at: str
) -> None:
    bucket = new_bucket(s3, "cv-crash")
    upload(s3, bucket)
    control_url = f"sqlite:///{tmp_path / 'crash-control.db'}"
    control = Control.open(control_url, KEY)
    _kill_child(db, control_url, s3_server.endpoint_url, bucket, kill_at)
    act = linked_activity(bucket)
    pending = control.ledger.pending_batches(act.id)
    assert [(b.system, b.dataset) for b in pending] == [("ats", "people")]
    recovery = recover(act, source=db.engine, control=control, clients=lambda _: s3)
    committed = kill_at.startswith("after_apply")
    assert (recovery.committed, recovery.rolled_back, recovery.runs_closed) == (
        committed, not committed, 1,
    )  # fmt: skip
    present = check_invariants(db, control, s3, bucket)
    if kill_at.startswith(OBJECT_CHECKPOINT):
        # The files are gone (with their evidence), the records are not (and have none).
        assert 1 in present and cv(1) not in files(s3, bucket)
    elif kill_at.startswith("after_prepare"):
        assert 1 in present and files(s3, bucket)[cv(1)] == 2  # not reached: untouched
    result = run(act, db, control, s3)
    assert result.outcome == "completed"
    assert check_invariants(db, control, s3, bucket) == set(PEOPLE) - EXPIRED
    assert files(s3, bucket) == {cv(3): 1}


def _child_main(argv: list[str]) -> None:
    source_url, control_url, key_hex, endpoint, bucket = argv
    control = Control.open(control_url, bytes.fromhex(key_hex), create=False)
    client = local_client(endpoint)
    enforce(
        linked_activity(bucket), AS_OF, source=sa.create_engine(source_url), control=control,
        catalogue_version="test", batch_size=3, clients=lambda _: client,
    )  # fmt: skip


if __name__ == "__main__":
    _child_main(sys.argv[1:])
