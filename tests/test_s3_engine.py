"""S3 sources through the run lifecycle, against a real moto server on loopback (tests/s3.py)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from include.demo.embedded_s3 import EmbeddedS3, connection_uri
from include.retention.catalogue import Activity, DeleteAction, S3Source, Safety, load_catalogue
from include.retention.certificate import build_certificate, render
from include.retention.errors import RetentionError
from include.retention.lifecycle import Hooks, enforce, plan, recover
from include.retention.object_store import counted_calls
from include.retention.runs import Control
from include.retention.sources import s3 as s3_source
from include.retention.sources.s3 import S3Adapter, batches, classify
from include.retention.verification import verify_adapter
from tests.s3 import (  # noqa: F401  (the *_fixture names register fixtures)
    AS_OF,
    CallCounter,
    control_fixture,
    keys,
    new_bucket,
    next_second,
    put,
    put_many,
    s3_fixture,
    s3_server_fixture,
    versions,
)

CATALOGUE = load_catalogue()
# image_bank: customer cases 5 years, spontaneous images 1 year after capture_date.
CUSTOMER_CUT = CATALOGUE["image_bank"].retention[0].rule.cutoff_date(AS_OF)
SPONT_CUT = CATALOGUE["image_bank"].retention[1].rule.cutoff_date(AS_OF)
OLD = "2019-05-01"
NEW = AS_OF.date().isoformat()


def image_bank(bucket: str, **safety: Any) -> Activity:
    base = CATALOGUE["image_bank"]
    src = base.source.model_copy(update={"bucket": bucket})
    update: dict[str, Any] = {"source": src}
    if safety:
        update["safety"] = Safety(**safety)
    return base.model_copy(update=update)


def run(activity: Activity, client: Any, control: Control, **kwargs: Any) -> Any:
    kwargs.setdefault("approved_by", "tester")
    return enforce(
        activity, AS_OF, source=client, control=control, catalogue_version="test", **kwargs
    )


def spont(day: dt.date | str, subject: str = "person-1@example.se") -> dict[str, str]:
    return {"category": "spontaneous", "capture_date": str(day), "subject": subject}


def test_cutoffs_are_what_the_tests_assume() -> None:
    assert dt.date(2025, 11, 23) == SPONT_CUT
    assert dt.date(2021, 11, 23) == CUSTOMER_CUT


def test_every_version_and_delete_marker_of_an_expired_object_is_removed(
    s3: Any, control: Control
) -> None:
    bucket = new_bucket(s3, "versions")
    for _ in range(3):
        put(s3, bucket, "media/old.jpg", **spont(OLD))
    for _ in range(2):
        put(s3, bucket, "media/soft-deleted.jpg", **spont(OLD))
    s3.delete_object(Bucket=bucket, Key="media/soft-deleted.jpg")  # delete marker on top
    for _ in range(2):
        put(s3, bucket, "media/new.jpg", **spont(NEW))
    result = run(image_bank(bucket), s3, control)
    assert result.outcome == "completed", result.message
    assert result.applied == 2
    assert result.counts()["versions_deleted"] == 6  # 3 + 2 versions + 1 delete marker
    assert keys(s3, bucket) == {"media/new.jpg"}
    assert len(versions(s3, bucket)) == 2  # the kept object keeps its history


def test_holds_record_and_subject_scoped(s3: Any, control: Control) -> None:
    bucket = new_bucket(s3, "holds")
    put(s3, bucket, "media/record-held.jpg", **spont(OLD, "person-1@example.se"))
    put(s3, bucket, "media/subject-held.jpg", **spont(OLD, "person-2@example.se"))
    put(s3, bucket, "media/free.jpg", **spont(OLD, "person-3@example.se"))
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(9)], **spont(NEW))
    record_hold = control.holds.place_record_hold(
        "image_bank", bucket, "media/record-held.jpg", kind="legal_hold", reason="case 1",
        placed_by="legal",
    )  # fmt: skip
    control.holds.place_subject_hold("person-2@example.se", kind="restriction", reason="Art. 18",
                                     placed_by="dpo")  # fmt: skip
    activity = image_bank(bucket)
    planned = plan(activity, AS_OF, source=s3, control=control)
    assert (planned.expired, planned.held, planned.restricted) == (3, 1, 1)
    assert planned.to_apply == 1
    run(activity, s3, control)
    assert {"media/record-held.jpg", "media/subject-held.jpg"} <= keys(s3, bucket)
    assert "media/free.jpg" not in keys(s3, bucket)
    [by_person] = control.ledger.subject_batches(control.holds.subject_ref("person-3@example.se"))
    assert by_person.activity_id == "image_bank"
    assert control.ledger.subject_batches(control.holds.subject_ref("person-2@example.se")) == []
    control.holds.release(record_hold, released_by="legal")
    run(activity, s3, control)
    assert "media/record-held.jpg" not in keys(s3, bucket)
    assert "media/subject-held.jpg" in keys(s3, bucket)


def test_a_long_metadata_read_logs_its_progress_without_personal_data(
    s3: Any, control: Control, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = new_bucket(s3, "progress")
    put_many(s3, bucket, [f"media/p-{i:02d}.jpg" for i in range(12)], **spont(OLD, "eva@x.se"))
    monkeypatch.setattr(s3_source, "PROGRESS_EVERY", 0.0)  # a line after every object
    with caplog.at_level(logging.INFO, logger=s3_source.__name__):
        planned = plan(image_bank(bucket), AS_OF, source=s3, control=control)
    assert planned.expired == 12
    lines = [r.getMessage() for r in caplog.records if "read the metadata" in r.getMessage()]
    shape = re.compile(
        rf"bucket {bucket}: read the metadata of (\d+) of 12 objects \(\d+/s, about \d+ s left\)"
    )
    matches = [shape.fullmatch(line) for line in lines]
    assert all(matches) and [int(m[1]) for m in matches if m] == list(range(1, 12))
    assert not any("eva" in r.getMessage() for r in caplog.records)


def test_hold_placed_after_planning_is_respected(s3: Any, control: Control) -> None:
    bucket = new_bucket(s3, "late-hold")
    put(s3, bucket, "media/a.jpg", **spont(OLD, "person-9@example.se"))
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(5)], **spont(NEW))
    activity = image_bank(bucket)
    planned = plan(activity, AS_OF, source=s3, control=control)
    assert planned.to_apply == 1
    control.holds.place_subject_hold("person-9@example.se", kind="legal_hold", reason="late",
                                     placed_by="legal")  # fmt: skip
    result = run(activity, s3, control)
    assert result.outcome == "nothing_to_do"
    assert "media/a.jpg" in keys(s3, bucket)


def test_staging_reads_again_only_the_subjects_that_come_from_tags(
    s3: Any, control: Control
) -> None:
    bucket = new_bucket(s3, "tag-subject")
    put(s3, bucket, "media/by-metadata.jpg", **spont(OLD, "person-1@example.se"))
    s3.put_object(Bucket=bucket, Key="media/by-tag.jpg", Body=b"x",
                  Metadata={"category": "spontaneous", "capture_date": OLD},
                  Tagging="subject=person-2@example.se")  # fmt: skip
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(10)], **spont(NEW))
    control.holds.place_subject_hold("person-3@example.se", kind="legal_hold", reason="a case",
                                     placed_by="legal")  # fmt: skip

    def retag(_: Any) -> None:  # counted; then the tag names the held person
        tags = {"TagSet": [{"Key": "subject", "Value": "person-3@example.se"}]}
        s3.put_object_tagging(Bucket=bucket, Key="media/by-tag.jpg", Tagging=tags)

    with counted_calls(s3) as calls:
        result = run(image_bank(bucket), s3, control, hooks=Hooks(after_plan=retag))
    assert (result.applied, result.held_skipped) == (1, 1)
    assert "media/by-tag.jpg" in keys(s3, bucket)
    assert "media/by-metadata.jpg" not in keys(s3, bucket)
    # every object's metadata when counting; when staging, the tagged object's alone
    assert (calls["HeadObject"], calls["GetObjectTagging"]) == (12 + 1, 1 + 1)


def test_an_older_version_naming_a_held_or_restricted_person_keeps_the_key(
    s3: Any, control: Control
) -> None:
    """Every version of a key is deleted, so every version's person counts for holds: read
    (a HEAD per older version of a due object) only while subject holds exist."""
    bucket = new_bucket(s3, "oldversion")
    for key, first in (("held", "held@example.se"), ("restricted", "dpo@example.se"),
                       ("free", "free@example.se")):  # fmt: skip
        put(s3, bucket, f"media/{key}.jpg", **spont(OLD, first))  # that person's version
        put(s3, bucket, f"media/{key}.jpg", **spont(OLD, "other@example.se"))  # replaced later
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(9)], **spont(NEW))
    control.holds.place_subject_hold(
        "held@example.se", kind="legal_hold", reason="litigation", placed_by="legal"
    )
    control.holds.place_subject_hold(
        "dpo@example.se", kind="restriction", reason="Art. 18", placed_by="dpo"
    )
    activity = image_bank(bucket)
    planned = plan(activity, AS_OF, source=s3, control=control)
    assert (planned.expired, planned.held, planned.restricted) == (3, 1, 1)
    with counted_calls(s3) as calls:
        result = run(activity, s3, control)
    assert (result.applied, result.held_skipped, result.restricted_skipped) == (1, 1, 1)
    left = keys(s3, bucket)
    assert {"media/held.jpg", "media/restricted.jpg"} <= left and "media/free.jpg" not in left
    assert len(versions(s3, bucket, "media/held.jpg")) == 2  # the held person's version too
    assert calls["HeadObject"] == 12 + 3  # every object, then the 3 due ones' older versions
    # the people the deleted versions named are its evidence
    [by_person] = control.ledger.subject_batches(control.holds.subject_ref("free@example.se"))
    assert by_person.activity_id == "image_bank"


def test_a_subject_hold_on_an_older_versions_person_placed_after_staging_redoes_the_batch(
    s3: Any, control: Control
) -> None:
    """Without subject holds the older versions are not read; a subject hold placed before
    the batch's delete has the batch staged again, and then they are."""
    bucket = new_bucket(s3, "oldversion-late")
    put(s3, bucket, "media/photo.jpg", **spont(OLD, "held@example.se"))
    put(s3, bucket, "media/photo.jpg", **spont(OLD, "other@example.se"))
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(9)], **spont(NEW))

    placing = threading.Thread(
        target=control.holds.place_subject_hold, args=("held@example.se",),
        kwargs={"kind": "legal_hold", "reason": "late", "placed_by": "legal"},
    )  # fmt: skip

    def place(_: int) -> None:  # the evidence is written; another thread places the hold
        if placing.ident is None:
            placing.start()
            deadline = time.monotonic() + 10
            while not control.holds.active("image_bank", bucket).subjects:
                assert time.monotonic() < deadline, "the hold was not placed"
                time.sleep(0.01)

    result = run(image_bank(bucket), s3, control, hooks=Hooks(after_prepare=place))
    placing.join(10)
    assert not placing.is_alive()
    assert (result.applied, result.held_skipped) == (0, 1), result.message
    assert len(versions(s3, bucket, "media/photo.jpg")) == 2
    assert control.ledger.lookup("image_bank", bucket, "media/photo.jpg") == []


def test_boundary_objects(s3: Any, control: Control) -> None:
    bucket = new_bucket(s3, "boundary")
    day = dt.timedelta(days=1)
    put(s3, bucket, "media/spont-due.jpg", **spont(SPONT_CUT))
    put(s3, bucket, "media/spont-kept.jpg", **spont(SPONT_CUT + day))
    case = {"category": "customer_case", "subject": "p"}
    put(s3, bucket, "media/case-due.jpg", capture_date=str(CUSTOMER_CUT), **case)
    put(s3, bucket, "media/case-kept.jpg", capture_date=str(CUSTOMER_CUT + day), **case)
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(6)], **spont(NEW))
    run(image_bank(bucket), s3, control)
    left = keys(s3, bucket)
    assert {"media/spont-kept.jpg", "media/case-kept.jpg"} <= left
    assert not {"media/spont-due.jpg", "media/case-due.jpg"} & left


def test_missing_or_unreadable_capture_date_is_unknown_and_kept(s3: Any, control: Control) -> None:
    bucket = new_bucket(s3, "unknown")
    put(s3, bucket, "media/no-date.jpg", category="spontaneous", subject="p")
    put(s3, bucket, "media/bad-date.jpg", **spont("2021-13-40"))
    put(s3, bucket, "media/brand.jpg", category="brand", capture_date=OLD)
    put(s3, bucket, "outside/old.jpg", **spont(OLD))
    activity = image_bank(bucket)
    activity = activity.model_copy(
        update={"source": activity.source.model_copy(update={"prefix": "media/"})}
    )
    planned = plan(activity, AS_OF, source=s3, control=control)
    assert (planned.total, planned.anchor_unknown, planned.out_of_scope) == (3, 2, 1)
    assert planned.to_apply == 0
    result = run(activity, s3, control)
    assert result.outcome == "nothing_to_do"
    assert len(keys(s3, bucket)) == 4


def test_a_date_time_anchor_is_judged_by_its_stockholm_date() -> None:
    rules = CATALOGUE["image_bank"].retention
    cases = {
        f"{SPONT_CUT}T23:30:00Z": "kept",  # 00:30 the next day in Stockholm
        f"{SPONT_CUT}T22:59:59Z": "due",  # 23:59:59 on the cutoff day in Stockholm
        f"{SPONT_CUT}T23:30:00+01:00": "due",  # Stockholm's own (winter) offset
        f"{SPONT_CUT}T20:00:00-05:00": "kept",  # 02:00 the next day in Stockholm
        f"{SPONT_CUT}T23:30:00": "kept",  # naive: UTC, as an HTTP source without a zone
        f"{SPONT_CUT}T22:30:00": "due",  # naive: 23:30 in Stockholm
        str(SPONT_CUT): "due",
        f"{SPONT_CUT}Tlate evening": "unknown_anchor",  # unreadable: not its first 10 characters
    }
    judged = {
        anchor: classify(rules, {"category": "spontaneous", "capture_date": anchor}, AS_OF)[0]
        for anchor in cases
    }
    assert judged == cases


def test_a_date_time_anchor_not_yet_due_in_stockholm_is_kept(s3: Any, control: Control) -> None:
    bucket = new_bucket(s3, "tzanchor")
    put(s3, bucket, "media/late-evening.jpg", **spont(f"{SPONT_CUT}T23:30:00Z"))  # 00:30, 24th
    put(s3, bucket, "media/evening.jpg", **spont(f"{SPONT_CUT}T22:59:59Z"))  # 23:59:59, 23rd
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(9)], **spont(NEW))
    result = run(image_bank(bucket), s3, control)
    assert (result.outcome, result.applied) == ("completed", 1), result.message
    left = keys(s3, bucket)
    assert "media/late-evening.jpg" in left and "media/evening.jpg" not in left


def test_capture_date_from_tags_when_metadata_lacks_it(s3: Any, control: Control) -> None:
    bucket = new_bucket(s3, "tags")
    s3.put_object(Bucket=bucket, Key="media/tagged.jpg", Body=b"x",
                  Tagging=f"category=spontaneous&capture_date={OLD}")  # fmt: skip
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(4)], **spont(NEW))
    run(image_bank(bucket), s3, control)
    assert "media/tagged.jpg" not in keys(s3, bucket)


def test_tag_keys_differing_in_case_keep_every_value(s3: Any, control: Control) -> None:
    """S3 tag keys are case-sensitive: ``subject`` and ``Subject`` both name a person (either
    held: held), and a capture date given twice with different values is unknown. Each in
    both orders, so that neither can be the one read first."""
    bucket = new_bucket(s3, "tagcase")
    them = ("subject=other@example.se", "Subject=held@example.se")
    dates = (f"capture_date={OLD}", f"Capture_Date={NEW}")
    for name, pair in (("a", them), ("b", them[::-1])):
        tagging = "&".join(("category=spontaneous", f"capture_date={OLD}", *pair))
        s3.put_object(Bucket=bucket, Key=f"media/two-people-{name}.jpg", Body=b"x",
                      Tagging=tagging)  # fmt: skip
    for name, pair in (("a", dates), ("b", dates[::-1])):
        tagging = "&".join(("category=spontaneous", "subject=p@example.se", *pair))
        s3.put_object(Bucket=bucket, Key=f"media/two-dates-{name}.jpg", Body=b"x",
                      Tagging=tagging)  # fmt: skip
    agreeing = f"category=spontaneous&subject=p@example.se&capture_date={OLD}&Capture_Date={OLD}"
    s3.put_object(Bucket=bucket, Key="media/agreeing.jpg", Body=b"x", Tagging=agreeing)
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(15)], **spont(NEW))
    control.holds.place_subject_hold(
        "held@example.se", kind="legal_hold", reason="litigation", placed_by="legal"
    )
    activity = image_bank(bucket)
    planned = plan(activity, AS_OF, source=s3, control=control)
    assert (planned.expired, planned.held, planned.anchor_unknown) == (3, 2, 2)
    result = run(activity, s3, control)
    assert (result.applied, result.held_skipped) == (1, 2), result.message
    left = keys(s3, bucket)
    assert {f"media/two-{what}-{n}.jpg" for what in ("people", "dates") for n in "ab"} <= left
    assert "media/agreeing.jpg" not in left


def test_an_object_whose_tags_change_before_its_delete_is_judged_again(
    s3: Any, control: Control
) -> None:
    """Tags change without a new version or ETag: the object judged by its tagged capture
    date is read again just before its batch goes, and kept when the date moved."""
    bucket = new_bucket(s3, "retagged")
    tagging = f"category=spontaneous&capture_date={OLD}&subject=p@x.se"
    for name in ("media/retagged.jpg", "media/tagged.jpg"):
        s3.put_object(Bucket=bucket, Key=name, Body=b"x", Tagging=tagging)
    put(s3, bucket, "media/by-metadata.jpg", **spont(OLD))
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(6)], **spont(NEW))

    def retag(_: int) -> None:
        tags = [{"Key": "category", "Value": "spontaneous"}, {"Key": "capture_date", "Value": NEW},
                {"Key": "subject", "Value": "p@x.se"}]  # fmt: skip
        s3.put_object_tagging(Bucket=bucket, Key="media/retagged.jpg", Tagging={"TagSet": tags})

    with counted_calls(s3) as calls:
        result = run(image_bank(bucket), s3, control, hooks=Hooks(before_commit=retag))
    assert (result.outcome, result.applied) == ("completed", 2), result.message
    assert result.counts()["changed_meanwhile"] == 1
    left = keys(s3, bucket)
    assert "media/retagged.jpg" in left and not {"media/tagged.jpg", "media/by-metadata.jpg"} & left
    assert control.ledger.lookup("image_bank", bucket, "media/retagged.jpg") == []
    # the two tagged objects are read again before the delete; the one by metadata is not
    assert calls["GetObjectTagging"] == 2 + 2


def test_a_tag_judged_object_deleted_by_someone_else_meanwhile_is_not_claimed(
    s3: Any, control: Control
) -> None:
    bucket = new_bucket(s3, "vanished")
    tagging = f"category=spontaneous&capture_date={OLD}&subject=p@x.se"
    for name in ("media/vanished.jpg", "media/tagged.jpg"):
        s3.put_object(Bucket=bucket, Key=name, Body=b"x", Tagging=tagging)
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(6)], **spont(NEW))

    def delete_elsewhere(_: int) -> None:  # every version: the object is gone
        for _key, version, _marker in versions(s3, bucket, "media/vanished.jpg"):
            s3.delete_object(Bucket=bucket, Key="media/vanished.jpg", VersionId=version)

    result = run(image_bank(bucket), s3, control, hooks=Hooks(before_commit=delete_elsewhere))
    assert (result.outcome, result.applied, result.failed) == ("completed", 1, 0), result.message
    assert result.counts()["changed_meanwhile"] == 1
    assert control.ledger.lookup("image_bank", bucket, "media/vanished.jpg") == []
    assert len(control.ledger.lookup("image_bank", bucket, "media/tagged.jpg")) == 1


def test_dry_run_changes_nothing(s3: Any, control: Control) -> None:
    bucket = new_bucket(s3, "dry")
    for _ in range(2):
        put(s3, bucket, "media/old.jpg", **spont(OLD))
    put(s3, bucket, "media/new.jpg", **spont(NEW))
    before = versions(s3, bucket)
    result = run(image_bank(bucket), s3, control, dry_run=True)
    assert result.outcome == "dry_run"
    assert result.plan.to_apply == 1
    assert versions(s3, bucket) == before
    assert control.ledger.pending_batches() == []
    assert control.ledger.lookup("image_bank", bucket, "media/old.jpg") == []


def test_safety_gate_needs_approval(s3: Any, control: Control) -> None:
    bucket = new_bucket(s3, "gate")
    put_many(s3, bucket, [f"media/old-{i}.jpg" for i in range(3)], **spont(OLD))
    put(s3, bucket, "media/new.jpg", **spont(NEW))
    activity = image_bank(bucket)
    result = run(activity, s3, control, approved_by=None)
    assert result.outcome == "approval_required"
    assert len(keys(s3, bucket)) == 4
    assert run(activity, s3, control, approved_by="lead").applied == 3


def test_ledger_evidence_is_recorded_and_verifiable(s3: Any, control: Control) -> None:
    bucket = new_bucket(s3, "ledger")
    put(s3, bucket, "media/old.jpg", **spont(OLD))
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(4)], **spont(NEW))
    result = run(image_bank(bucket), s3, control)
    evidence = control.ledger.lookup("image_bank", bucket, "media/old.jpg")
    assert len(evidence) == 1
    assert evidence[0].run_id == result.run_id and evidence[0].action == "delete"
    assert control.ledger.lookup("image_bank", bucket, "media/new-0.jpg") == []
    assert control.ledger.verify().ok
    kinds = [e.kind for e in control.ledger.entries(with_blob=False)]
    assert kinds == ["run_started", "batch_prepared", "batch_resolved", "run_finished"]
    text = " ".join(str(e.document) for e in control.ledger.entries(with_blob=False))
    assert "media/old.jpg" not in text and "person-1" not in text  # pseudonymous only


def test_failed_delete_leaves_prepared_evidence_that_recovery_rolls_back(
    s3: Any, control: Control
) -> None:
    bucket = new_bucket(s3, "crash-before")
    put(s3, bucket, "media/old.jpg", **spont(OLD))
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(4)], **spont(NEW))
    activity = image_bank(bucket)
    failing = CallCounter(s3, fail_delete=ConnectionError("network down"))
    with pytest.raises(ConnectionError):
        run(activity, failing, control)
    assert len(control.ledger.pending_batches(activity.id)) == 1  # written before deleting
    recovery = recover(activity, source=s3, control=control)
    assert (recovery.rolled_back, recovery.committed) == (1, 0)
    assert control.ledger.lookup("image_bank", bucket, "media/old.jpg") == []
    assert run(activity, s3, control).applied == 1  # the next run deletes it
    assert control.ledger.verify().ok


def test_crash_after_delete_is_recovered_as_committed(s3: Any, control: Control) -> None:
    bucket = new_bucket(s3, "crash-after")
    put(s3, bucket, "media/old.jpg", **spont(OLD))
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(4)], **spont(NEW))
    activity = image_bank(bucket)
    crashing = CallCounter(s3, fail_delete=ConnectionError("lost"), crash_after=True)
    with pytest.raises(ConnectionError):
        run(activity, crashing, control)
    assert "media/old.jpg" not in keys(s3, bucket)
    result = run(activity, s3, control)  # recovery runs first
    assert result.recovery is not None and result.recovery.committed == 1
    assert len(control.ledger.lookup("image_bank", bucket, "media/old.jpg")) == 1
    assert control.ledger.pending_batches() == []


def test_more_than_1000_keys_use_several_delete_objects_calls(s3: Any, control: Control) -> None:
    bucket = new_bucket(s3, "bulk")
    put_many(s3, bucket, [f"media/bulk/{i:05d}.jpg" for i in range(1500)], **spont(OLD))
    counter = CallCounter(s3)
    activity = image_bank(bucket, max_fraction=1.0)
    result = run(activity, counter, control)
    assert result.applied == 1500
    assert len(counter.delete_calls) == 2 and max(counter.delete_calls) <= 1000
    assert result.batches == 2
    assert not keys(s3, bucket, "media/bulk/")
    assert control.ledger.verify().ok


def test_batches_split_by_versions() -> None:
    from include.retention.sources.s3 import S3Object

    objs = [S3Object(f"k{i}", ("v",) * n, 0, "v") for i, n in enumerate([400, 400, 400, 1500, 1])]
    groups = [[o.key for o in g] for g in batches(objs)]
    assert groups == [["k0", "k1"], ["k2"], ["k3"], ["k4"]]


def test_linked_files_are_staged_by_key_with_every_version(s3: Any, control: Control) -> None:
    bucket = new_bucket(s3, "cv")
    link = CATALOGUE["recruitment"].source.objects[0].model_copy(update={"bucket": bucket})
    for _ in range(2):
        put(s3, bucket, "candidates/00001/cv.pdf")
    put(s3, bucket, "candidates/00002/cv.pdf")
    put(s3, bucket, "candidates/00003/cv.pdf")
    control.holds.place_record_hold("ats", bucket, "candidates/00002/cv.pdf", kind="legal_hold",
                                    reason="dispute", placed_by="legal")  # fmt: skip
    files = S3Adapter(link.binding("ats"), control.key, s3)
    wanted = ["candidates/00001/cv.pdf", "candidates/00002/cv.pdf", "gone.pdf"]
    [batch] = files.stage_keys(wanted, lambda: control.holds.active("ats", bucket), 7)
    assert (batch.no, batch.held_skipped, batch.counts) == (7, 1, {"versions": 2, "missing": 1})
    applied = files.apply(batch)
    assert (len(applied.refs), applied.failed, applied.counts["versions_deleted"]) == (1, 0, 2)
    assert applied.refs == [files.hasher.ref("candidates/00001/cv.pdf")]
    assert keys(s3, bucket) == {"candidates/00002/cv.pdf", "candidates/00003/cv.pdf"}


def test_the_s3_adapter_needs_an_s3_binding(s3: Any, control: Control) -> None:
    with pytest.raises(RetentionError, match="needs an 's3' source"):
        S3Adapter(CATALOGUE["crm"].source, control.key, s3)  # type: ignore[arg-type]


def test_missing_bucket_is_named(s3: Any, control: Control) -> None:
    with pytest.raises(RetentionError, match="does-not-exist"):
        plan(image_bank("does-not-exist"), AS_OF, source=s3, control=control)


def test_embedded_s3_busy_port_fails_loudly(s3_server: EmbeddedS3) -> None:
    with pytest.raises(RetentionError, match="cannot start"):
        EmbeddedS3(port=s3_server.port).start()


def test_s3_client_through_the_airflow_connection(
    s3_server: EmbeddedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    from include.retention.object_store import s3_client

    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_S3", connection_uri(s3_server.endpoint_url))
    client = s3_client("retention_s3")
    bucket = new_bucket(client, "via-airflow")
    assert bucket in {b["Name"] for b in client.list_buckets()["Buckets"]}
    assert client.meta.config.max_pool_connections == 16  # the adapter's 16 threads fit


def test_a_connection_sets_its_own_pool_size(
    s3_server: EmbeddedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    from include.retention.object_store import s3_client

    extra = {"endpoint_url": s3_server.endpoint_url, "region_name": "eu-north-1",
             "config_kwargs": {"max_pool_connections": 4}}  # fmt: skip
    conn = {"conn_type": "aws", "login": "k", "password": "s", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_POOLED", json.dumps(conn))
    client = s3_client("pooled")
    assert client.meta.config.max_pool_connections == 4
    assert new_bucket(client, "pooled") in {b["Name"] for b in client.list_buckets()["Buckets"]}


def test_source_type_is_s3source() -> None:
    assert isinstance(CATALOGUE["image_bank"].source, S3Source)


class UploadingAgain(CallCounter):
    """Uploads ``key`` again (a photo that is not due) right after the run's first delete call
    of any kind; with ``hide``, then deletes it (a delete marker over the new upload)."""

    def __init__(self, client: Any, bucket: str, key: str, *, hide: bool = False) -> None:
        super().__init__(client)
        self.bucket, self.key, self.hide, self.done = bucket, key, hide, False

    def delete_objects(self, **kwargs: Any) -> Any:
        return self._again(self._client.delete_objects(**kwargs))

    def delete_object(self, **kwargs: Any) -> Any:
        return self._again(self._client.delete_object(**kwargs))

    def _again(self, response: Any) -> Any:
        if not self.done:
            self.done = True
            put(self._client, self.bucket, self.key, b"new photo", **spont(NEW))
            if self.hide:
                self._client.delete_object(Bucket=self.bucket, Key=self.key)
        return response


@pytest.mark.parametrize(
    ("versioned", "hide"), [(True, False), (True, True), (False, False)],
    ids=["versioned", "versioned-then-hidden", "unversioned"],
)  # fmt: skip
def test_a_key_uploaded_again_while_deleted_is_claimed_for_what_was_judged(
    s3: Any, control: Control, versioned: bool, hide: bool
) -> None:
    """The judged versions are deleted by their ids; an upload under the same key after the
    listing is a new object: it stays, the deletion is claimed (every deletion has evidence),
    and the claim stays true for verification."""
    bucket = new_bucket(s3, "again", versioned=versioned)
    put(s3, bucket, "media/old.jpg", **spont(OLD))
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(4)], **spont(NEW))
    next_second()
    activity = image_bank(bucket)
    result = run(activity, UploadingAgain(s3, bucket, "media/old.jpg", hide=hide), control)
    assert (result.outcome, result.applied, result.failed) == ("completed", 1, 0), result.message
    assert result.counts()["uploaded_meanwhile"] == 1
    left = [marker for key, _, marker in versions(s3, bucket) if key == "media/old.jpg"]
    assert sorted(left) == ([False, True] if hide else [False])  # only what came after
    if not hide:
        new = s3.head_object(Bucket=bucket, Key="media/old.jpg")["Metadata"]
        assert new["capture_date"] == NEW
    assert len(control.ledger.lookup("image_bank", bucket, "media/old.jpg")) == 1
    adapter = S3Adapter(activity.source, control.key, s3)
    checked = verify_adapter(activity, AS_OF, result.run_id, adapter=adapter, control=control)
    assert (checked.success, checked.claims_checked, checked.false_claims) == (True, 1, 0)
    assert control.ledger.verify().ok
    for language, words in (
        ("en", "1 objects were uploaded again (or marked deleted again) under their key"),
        ("sv", "1 objekt laddades upp på nytt (eller markerades som raderade på nytt)"),
    ):
        run_id = str(result.run_id)
        certificate = build_certificate(control.ledger, run_id, language, catalogue=CATALOGUE)
        assert words in render(certificate, "html").decode()


def test_an_upload_in_the_same_second_as_the_judged_version_is_not_claimed(
    s3: Any, control: Control
) -> None:
    """S3 tells the time of a write in whole seconds: a version written in the same second as
    the newest judged one could be either, so it counts as the judged record (not claimed)."""
    bucket = new_bucket(s3, "same-second")
    put(s3, bucket, "media/old.jpg", **spont(OLD))
    activity = image_bank(bucket)
    adapter = S3Adapter(activity.source, control.key, s3)
    ref = adapter.hasher.ref("media/old.jpg")
    written = s3.head_object(Bucket=bucket, Key="media/old.jpg")["LastModified"]
    second = dt.timedelta(seconds=1)

    def present(**through: dt.datetime) -> bool:
        found = adapter.present({ref}, DeleteAction(), judged_through={ref: through["at"]})
        return found == {ref}

    assert adapter.present({ref}, DeleteAction()) == {ref}
    assert (present(at=written - second), present(at=written), present(at=written + second)) == (
        False, True, True,
    )  # fmt: skip


def test_recovery_claims_a_batch_whose_key_was_uploaded_again_before_the_crash(
    s3: Any, control: Control
) -> None:
    bucket = new_bucket(s3, "again-crash")
    put(s3, bucket, "media/old.jpg", **spont(OLD))
    next_second()
    activity = image_bank(bucket)

    class Crashing(UploadingAgain):
        def delete_objects(self, **kwargs: Any) -> Any:
            super().delete_objects(**kwargs)
            raise ConnectionError("lost")  # deleted, then crashed before the ledger was told

    with pytest.raises(ConnectionError):
        run(activity, Crashing(s3, bucket, "media/old.jpg"), control)
    recovery = recover(activity, source=s3, control=control)
    assert (recovery.committed, recovery.rolled_back) == (1, 0)
    assert len(control.ledger.lookup("image_bank", bucket, "media/old.jpg")) == 1
    assert [marker for _, _, marker in versions(s3, bucket)] == [False]  # the new upload


class Dropping(CallCounter):
    """Leaves ``key``'s versions out of every DeleteObjects call; with ``report`` it answers
    with a per-key error for them, as S3 does (e.g. AccessDenied), else it stays silent."""

    def __init__(self, client: Any, key: str, *, report: bool) -> None:
        super().__init__(client)
        self.key, self.report = key, report

    def delete_objects(self, **kwargs: Any) -> Any:
        entries = kwargs["Delete"]["Objects"]
        dropped = [e for e in entries if e["Key"] == self.key]
        kwargs["Delete"] = {**kwargs["Delete"], "Objects": [e for e in entries if e not in dropped]}
        response = super().delete_objects(**kwargs)
        if self.report:
            errors = [{**e, "Code": "AccessDenied", "Message": "denied"} for e in dropped]
            response = {**response, "Errors": errors}
        return response


@pytest.mark.parametrize("report", [True, False], ids=["error-reported", "silently-kept"])
def test_an_object_delete_objects_did_not_remove_is_not_claimed(
    s3: Any, control: Control, report: bool
) -> None:
    bucket = new_bucket(s3, "refused")
    put_many(s3, bucket, ["media/old-1.jpg", "media/old-2.jpg", "media/old-3.jpg"], **spont(OLD))
    result = run(image_bank(bucket), Dropping(s3, "media/old-2.jpg", report=report), control)
    assert (result.outcome, result.applied, result.failed) == ("partial", 2, 1)
    assert keys(s3, bucket) == {"media/old-2.jpg"}
    assert control.ledger.lookup("image_bank", bucket, "media/old-2.jpg") == []
    assert len(control.ledger.lookup("image_bank", bucket, "media/old-1.jpg")) == 1
    assert control.ledger.verify().ok


def test_a_run_reads_metadata_once_and_confirms_each_batch_with_one_listing(
    s3: Any, control: Control
) -> None:
    bucket = new_bucket(s3, "calls")
    for _ in range(2):
        put_many(s3, bucket, [f"media/old-{i:02d}.jpg" for i in range(12)], **spont(OLD))
    put_many(s3, bucket, [f"media/new-{i:02d}.jpg" for i in range(5)], **spont(NEW))
    with counted_calls(s3) as calls:
        result = run(image_bank(bucket, max_fraction=1.0), s3, control, batch_size=8)
    assert (result.applied, result.batches, result.counts()["versions_deleted"]) == (12, 3, 24)
    assert keys(s3, bucket) == {f"media/new-{i:02d}.jpg" for i in range(5)}
    # batches of 8 versions; a HEAD per object for its metadata; per batch one DeleteObjects
    # and one listing
    assert calls == {
        "HeadBucket": 1, "ListObjectVersions": 1 + 3, "HeadObject": 17, "DeleteObjects": 3,
    }  # fmt: skip


def test_keys_the_confirming_listing_does_not_reach_are_listed_one_by_one(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from include.retention.sources import s3 as module

    bucket = new_bucket(s3, "sparse")
    put_many(s3, bucket, [f"k/a{i:04d}" for i in range(1001)])  # a page of keys before the batch
    put_many(s3, bucket, ["k/b-left", "k/c-left"])
    monkeypatch.setattr(module, "CONFIRM_PAGES", 1)
    wanted = ["k/b-left", "k/b-gone", "k/c-gone", "k/c-left"]
    written = {k: s3.head_object(Bucket=bucket, Key=k)["LastModified"] for k in wanted[::3]}
    with counted_calls(s3) as calls:
        assert module._remaining(s3, bucket, wanted) == written  # each with when it was written
    assert calls == {"ListObjectVersions": 1 + 4}  # the page, then each key it did not reach
    monkeypatch.setattr(module, "CONFIRM_PAGES", 2)
    with counted_calls(s3) as calls:
        assert module._remaining(s3, bucket, wanted) == written
    assert calls == {"ListObjectVersions": 2}  # the second page reaches past the last key


def test_seeded_image_bank_end_to_end(s3: Any, control: Control) -> None:
    from include.demo.manifest import Manifest
    from include.demo.objects import seed_objects
    from include.demo.seed import place_holds

    entries = seed_objects(s3, AS_OF, Manifest(as_of=AS_OF.isoformat()), seed=7)
    images = [e for e in entries if e.activity == "image_bank"]
    place_holds(control.holds, [r for e in images if (r := e.hold_request())])
    activity = CATALOGUE["image_bank"]
    result = run(activity, s3, control, approved_by=None)  # within the safety limits
    assert result.outcome == "completed", result.message
    left = keys(s3, "image-bank")
    assert {e.pk for e in images if not e.due} == left
    assert result.applied == sum(e.due for e in images)
    for entry in images:
        assert bool(control.ledger.lookup("image_bank", "image-bank", entry.pk)) == entry.due
    assert run(activity, s3, control).outcome == "nothing_to_do"


@pytest.mark.parametrize("versioning", [None, "Suspended"], ids=["unversioned", "suspended"])
def test_an_object_replaced_meanwhile_in_a_bucket_without_versions_is_kept(
    s3: Any, control: Control, versioning: str | None
) -> None:
    """Without versions, a new upload replaces the object under the same version id ("null"):
    deleting that id would delete the new object, judged by nobody. The delete is conditional
    on the listed object's ETag, so the replaced object stays, unclaimed, and is judged by the
    next run; the other objects go."""
    bucket = new_bucket(s3, "replaced", versioned=versioning is not None)
    if versioning:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": versioning})
    put_many(s3, bucket, ["media/old-1.jpg", "media/old-2.jpg"], **spont(OLD))
    put_many(s3, bucket, [f"media/new-{i}.jpg" for i in range(8)], **spont(NEW))

    class Racing(CallCounter):
        replaced = False

        def delete_object(self, **kwargs: Any) -> Any:
            if not self.replaced:  # a new photo uploaded under the old key meanwhile
                self.replaced = True
                put(s3, bucket, "media/old-1.jpg", b"new photo", **spont(NEW))
            return self._client.delete_object(**kwargs)

    result = run(image_bank(bucket), Racing(s3), control)
    assert (result.outcome, result.applied, result.failed) == ("completed", 1, 0), result.message
    assert result.counts()["changed_meanwhile"] == 1
    kept = s3.head_object(Bucket=bucket, Key="media/old-1.jpg")
    assert kept["Metadata"]["capture_date"] == NEW
    assert "media/old-2.jpg" not in keys(s3, bucket)
    assert control.ledger.lookup("image_bank", bucket, "media/old-1.jpg") == []
    assert len(control.ledger.lookup("image_bank", bucket, "media/old-2.jpg")) == 1
    assert control.ledger.verify().ok
    again = run(image_bank(bucket), s3, control)  # the new photo is not due
    assert (again.applied, "media/old-1.jpg" in keys(s3, bucket)) == (0, True)


def test_a_null_version_under_newer_ones_is_deleted_only_unchanged(s3: Any) -> None:
    """Versioning suspended, enabled again, suspended again: each key's oldest version is
    the "null" one, under a newer one, and an upload now replaces that null version in place.
    So it too is deleted only if unchanged: the key whose null version was replaced meanwhile
    is left whole, the other goes with every version. (Deletion only: moto refuses the
    version id of a metadata read while versioning is suspended, which AWS accepts.)"""
    bucket = new_bucket(s3, "history")

    def versioning(status: str) -> None:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": status})

    versioning("Suspended")
    put_many(s3, bucket, ["media/old-1.jpg", "media/old-2.jpg"], **spont(OLD))
    versioning("Enabled")
    put_many(s3, bucket, ["media/old-1.jpg", "media/old-2.jpg"], **spont(OLD))
    versioning("Suspended")
    listed = s3_source.list_objects(s3, bucket)
    assert [(o.versions[-1], o.current_is_null, o.replaceable) for o in listed] == [
        ("null", False, True), ("null", False, True),
    ]  # fmt: skip
    put(s3, bucket, "media/old-1.jpg", b"new photo", **spont(NEW))  # replaces its null version

    done = s3_source._delete_versions(s3, bucket, listed, if_unchanged=True)

    assert (done.changed, done.failed) == ({"media/old-1.jpg"}, set())
    assert keys(s3, bucket) == {"media/old-1.jpg"}
    assert s3.head_object(Bucket=bucket, Key="media/old-1.jpg")["Metadata"]["capture_date"] == NEW


def test_an_object_a_conditional_delete_is_refused_for_is_left_whole_and_not_claimed(
    s3: Any, control: Control
) -> None:
    bucket = new_bucket(s3, "denied", versioned=False)
    put_many(s3, bucket, ["media/old-1.jpg", "media/old-2.jpg"], **spont(OLD))

    class Denying(CallCounter):
        def delete_object(self, **kwargs: Any) -> Any:
            if kwargs["Key"] == "media/old-1.jpg":
                error = {"Error": {"Code": "AccessDenied", "Message": "denied"}}
                raise ClientError(error, "DeleteObject")
            return self._client.delete_object(**kwargs)

    result = run(image_bank(bucket), Denying(s3), control)
    assert (result.outcome, result.applied, result.failed) == ("partial", 1, 1)
    assert keys(s3, bucket) == {"media/old-1.jpg"}
    assert control.ledger.lookup("image_bank", bucket, "media/old-1.jpg") == []
    assert len(control.ledger.lookup("image_bank", bucket, "media/old-2.jpg")) == 1
