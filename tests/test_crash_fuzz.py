"""Crash fuzzing: SIGKILL a real SQL enforcement (PostgreSQL) and a real S3 enforcement (moto)
at random moments and at every S3 checkpoint, then recover and check the invariants.

After recovery: every deleted record has exactly one evidence entry, no evidence names a
surviving record, nothing not due or held is gone, nothing is left pending, the ledger
verifies; then a normal run finishes the job. Each kill is its own test case. The moments are
drawn from a seeded generator (seed printed; set RETENTION_FUZZ_SEED to replay another) over
90% of the duration of an unkilled run measured first (so most kills land mid-run; each case
prints whether the child was killed or had finished). About 2.5 min on a loaded 2-core machine.
"""

from __future__ import annotations

import os
import random
import secrets
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.demo.embedded_s3 import EmbeddedS3, local_client
from include.retention.lifecycle import CHECKPOINTS as S3_CHECKPOINTS
from include.retention.lifecycle import enforce, recover
from include.retention.runs import Control
from tests.crash import check_evidence, check_people, fork_run
from tests.dbs import AS_OF, activity, create_db, old, person, recent, seed
from tests.s3 import AS_OF as S3_AS_OF
from tests.s3 import keys, new_bucket, put_many, s3_fixture, s3_server_fixture  # noqa: F401
from tests.test_s3_engine import NEW, OLD, image_bank, spont

FUZZ_SEED = int(os.environ.get("RETENTION_FUZZ_SEED", "20261125"))
RANDOM_KILLS = 50
pytestmark = pytest.mark.reliability

# SQL: 60 candidates, 42 due, one of them under a legal hold; batches of 4.
PEOPLE = [person(i, old() if i % 10 < 7 else recent()) for i in range(1, 61)]
DUE = {p["id"] for p in PEOPLE if p["decided_at"] == old()}
HELD_PK = 5
SQL_BATCH = 4
# S3: 30 images, 21 due, one held; batches of 3 objects.
OBJECTS = {f"media/{i:04d}.jpg": OLD if i % 10 < 7 else NEW for i in range(30)}
DUE_KEYS = {k for k, day in OBJECTS.items() if day == OLD}
HELD_KEY = "media/0005.jpg"
S3_BATCH = 3


def _delays(seed: int, longest: float) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.uniform(0.0, longest), 4) for _ in range(RANDOM_KILLS)]


# ------------------------------------------------------------------------------------ SQL


def _sql_child(source_url: str, control_url: str, key: bytes) -> None:
    enforce(
        activity(), AS_OF, source=sa.create_engine(source_url),
        control=Control.open(control_url, key, create=False), catalogue_version="test",
        batch_size=SQL_BATCH,
    )  # fmt: skip


def _sql_setup(tmp_path: Path) -> tuple[Any, Any, str, Control, bytes]:
    db, cleanup = create_db("postgresql", tmp_path)
    seed(db.engine, PEOPLE)
    key = secrets.token_bytes(32)
    control_url = f"sqlite:///{tmp_path / 'control.db'}"
    control = Control.open(control_url, key)
    control.holds.place_record_hold(
        "ats", "people", HELD_PK, kind="legal_hold", reason="claim", placed_by="legal"
    )
    db.engine.dispose()  # the child must not share the parent's connections
    return db, cleanup, control_url, control, key


@pytest.fixture(scope="module")
def sql_run_seconds(tmp_path_factory: pytest.TempPathFactory) -> float:
    """How long an unkilled SQL run takes here (the random kills fall within it)."""
    db, cleanup, control_url, _, key = _sql_setup(tmp_path_factory.mktemp("calibrate"))
    try:
        started = time.monotonic()
        assert fork_run(partial(_sql_child, db.url, control_url, key)) == "finished"
        return time.monotonic() - started
    finally:
        cleanup()


@pytest.mark.parametrize("case", range(RANDOM_KILLS))
def test_sql_kill_at_a_random_moment(case: int, sql_run_seconds: float, tmp_path: Path) -> None:
    delay = _delays(FUZZ_SEED, sql_run_seconds * 0.9)[case]
    db, cleanup, control_url, control, key = _sql_setup(tmp_path)
    try:
        ended = fork_run(partial(_sql_child, db.url, control_url, key), kill_after=delay)
        print(f"seed {FUZZ_SEED} case {case}: SIGKILL after {delay:.4f} s ({ended})")
        recover(activity(), source=db.engine, control=control)
        must_stay = {p["id"] for p in PEOPLE} - DUE | {HELD_PK}
        check_people(control, db.engine, DUE, must_stay)
        result = enforce(
            activity(), AS_OF, source=db.engine, control=control, catalogue_version="test",
            batch_size=SQL_BATCH,
        )  # fmt: skip
        assert result.outcome in ("completed", "nothing_to_do"), result.message
        assert check_people(control, db.engine, DUE, must_stay) == must_stay
        outcomes = {r.finished["outcome"] for r in control.ledger.runs() if r.finished}
        assert outcomes <= {"completed", "nothing_to_do", "interrupted"}
    finally:
        cleanup()


# ------------------------------------------------------------------------------------ S3


def _s3_child(endpoint: str, bucket: str, control_url: str) -> None:
    enforce(
        image_bank(bucket), S3_AS_OF, source=local_client(endpoint),
        control=Control.open(control_url, KEY, create=False), catalogue_version="test",
        approved_by="tester", batch_size=S3_BATCH,
    )  # fmt: skip


KEY = b"fuzz-pseudonym-key-0123456789abcdef"


@pytest.fixture(name="s3_case")
def s3_case_fixture(s3: Any, tmp_path: Path) -> Iterator[tuple[str, str, Control]]:
    bucket = new_bucket(s3, "fuzz")
    for day in (OLD, NEW):
        put_many(s3, bucket, [k for k, d in OBJECTS.items() if d == day], **spont(day))
    control_url = f"sqlite:///{tmp_path / 'control.db'}"
    control = Control.open(control_url, KEY)
    control.holds.place_record_hold(
        "image_bank", bucket, HELD_KEY, kind="legal_hold", reason="claim", placed_by="legal"
    )
    yield bucket, control_url, control


def _s3_recover_and_check(s3: Any, bucket: str, control: Control) -> None:
    # A normal run recovers first; check the state it recovered to, then that it finished.
    must_stay = set(OBJECTS) - DUE_KEYS | {HELD_KEY}
    result = enforce(
        image_bank(bucket), S3_AS_OF, source=s3, control=control, catalogue_version="test",
        approved_by="tester", batch_size=S3_BATCH,
    )  # fmt: skip
    assert result.outcome in ("completed", "nothing_to_do"), result.message
    assert result.recovery is not None
    assert keys(s3, bucket) == must_stay
    check_evidence(control, "image_bank", bucket, keys(s3, bucket), sorted(DUE_KEYS), must_stay)


@pytest.fixture(scope="module")
def s3_run_seconds(s3_server: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory) -> float:
    s3 = s3_server.client()
    bucket = new_bucket(s3, "calibrate")
    for day in (OLD, NEW):
        put_many(s3, bucket, [k for k, d in OBJECTS.items() if d == day], **spont(day))
    control_url = f"sqlite:///{tmp_path_factory.mktemp('s3cal') / 'control.db'}"
    Control.open(control_url, KEY)
    started = time.monotonic()
    assert fork_run(partial(_s3_child, s3_server.endpoint_url, bucket, control_url)) == "finished"
    return time.monotonic() - started


@pytest.mark.parametrize("case", range(RANDOM_KILLS))
def test_s3_kill_at_a_random_moment(
    case: int, s3_run_seconds: float, s3_server: EmbeddedS3, s3: Any, s3_case: Any
) -> None:
    bucket, control_url, control = s3_case
    delay = _delays(FUZZ_SEED + 1, s3_run_seconds * 0.9)[case]
    child = partial(_s3_child, s3_server.endpoint_url, bucket, control_url)
    ended = fork_run(child, kill_after=delay)
    print(f"seed {FUZZ_SEED + 1} case {case}: SIGKILL after {delay:.4f} s ({ended})")
    _s3_recover_and_check(s3, bucket, control)


S3_KILL_POINTS = [f"{S3_CHECKPOINTS[0]}:0"] + [
    f"{name}:{batch}" for name in S3_CHECKPOINTS[1:] for batch in (1, 4)
]


@pytest.mark.parametrize("kill_at", S3_KILL_POINTS)
def test_s3_kill_at_every_checkpoint(
    kill_at: str, s3_server: EmbeddedS3, s3: Any, s3_case: Any
) -> None:
    bucket, control_url, control = s3_case
    child = partial(_s3_child, s3_server.endpoint_url, bucket, control_url)
    assert fork_run(child, kill_at=kill_at) == "killed"
    _s3_recover_and_check(s3, bucket, control)
