"""Several prefixes of one bucket as several datasets: each named apart in its system file,
each enforced within its own prefix, its objects held and evidenced under its own name; and
bindings that would put one object in two datasets are refused."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from include.retention.catalogue import (
    POLICY_DIR,
    SYSTEMS,
    Activity,
    Catalogue,
    S3Source,
    load_catalogue,
    load_valid,
)
from include.retention.certificate import build_certificate, render
from include.retention.errors import RetentionError
from include.retention.holds import Binding, HoldRegister, bindings_of
from include.retention.lifecycle import enforce
from include.retention.pseudonym import record_ref
from include.retention.runs import Control
from tests.s3 import (  # noqa: F401  (the *_fixture names register fixtures)
    AS_OF,
    KEY,
    control_fixture,
    keys,
    new_bucket,
    put,
    s3_fixture,
    s3_server_fixture,
)

SYSTEM_FILE = f"{SYSTEMS}/image_bank.yaml"
OLD = {"category": "spontaneous", "capture_date": "2019-05-01", "subject": "p1@example.se"}
NEW = {"category": "spontaneous", "capture_date": AS_OF.date().isoformat(), "subject": "p2@a.se"}


def _catalogue(tmp_path: Path, datasets: dict[str, Any], *more: tuple[str, dict]) -> Path:
    """The image bank's activity, its system file with ``datasets``, and further system
    files (name, content)."""
    shutil.copy(POLICY_DIR / "image_bank.yaml", tmp_path / "image_bank.yaml")
    shutil.copytree(POLICY_DIR / "text", tmp_path / "text")
    system = {"system": "image_bank", "kind": "s3", "conn_id": "retention_s3"}
    files = [("image_bank", {**system, "datasets": datasets}), *more]
    (tmp_path / SYSTEMS).mkdir()
    for name, content in files:
        text = yaml.safe_dump(content)
        (tmp_path / SYSTEMS / f"{name}.yaml").write_text(text, encoding="utf-8")
    return tmp_path


def _archive(prefix: str, bucket: str = "image-bank") -> dict[str, Any]:
    return {"bucket": bucket, "prefix": prefix, "lookup": {"email": "subject"}}


MEDIA = {"prefix": "media/", "lookup": {"email": "subject"}}


def test_two_prefixes_of_one_bucket_are_two_datasets(tmp_path: Path) -> None:
    folder = _catalogue(tmp_path, {"image-bank": MEDIA, "image-archive": _archive("archive/")})
    catalogue = load_catalogue(folder)
    media = catalogue.bindings["image_bank/image-bank"]
    archive = catalogue.bindings["image_bank/image-archive"]
    assert isinstance(archive, S3Source) and isinstance(media, S3Source)
    assert (archive.bucket, archive.prefix, archive.dataset) == (
        "image-bank",
        "archive/",
        "image-archive",
    )
    assert (media.bucket, media.name, media.dataset) == ("image-bank", None, "image-bank")
    assert catalogue["image_bank"].source is media
    assert archive.describe() == (  # the DAG's documentation
        "system `image_bank`, dataset `image-archive` (bucket `image-bank/archive/`),"
        " connection `retention_s3`"
    )
    assert (
        media.describe()
        == "system `image_bank`, bucket `image-bank/media/`, connection `retention_s3`"
    )
    holds_see = bindings_of(catalogue)
    assert ("image_bank", "image-archive") in holds_see
    assert holds_see[("image_bank", "image-bank")] == {
        Binding(("<object key>",), tuple(media.lookup_columns()))
    }


def test_a_name_equal_to_its_bucket_is_the_bucket_alone() -> None:
    given = {"system": "photos", "conn_id": "retention_s3", "bucket": "photos"}
    assert S3Source.model_validate({**given, "name": "photos"}) == S3Source.model_validate(given)
    assert S3Source.model_validate({**given, "name": "photos"}).name is None


@pytest.mark.parametrize(
    ("first", "second"),
    [("media/", "media/old/"), ("", "archive/"), ("media/", "media/"), ("med", "media/")],
)
def test_prefixes_that_share_objects_are_refused(tmp_path: Path, first: str, second: str) -> None:
    folder = _catalogue(
        tmp_path, {"image-bank": {**MEDIA, "prefix": first}, "image-archive": _archive(second)}
    )
    catalogue, errors = load_valid(folder)
    assert catalogue.activities == {}  # the system file is invalid: its activity too
    error = errors[SYSTEM_FILE]  # the file lists its datasets in name order
    assert "datasets image_bank/image-archive and image_bank/image-bank both bind" in error
    assert f"prefixes {second!r} and {first!r}" in error
    assert "give each dataset a prefix that neither begins nor is begun" in error


def test_two_systems_on_the_same_objects_are_both_refused_another_connection_is_not(
    tmp_path: Path,
) -> None:
    other = {"system": "archive", "kind": "s3", "conn_id": "retention_s3"}
    overlapping = ("archive", {**other, "datasets": {"old-media": _archive("media/2019/")}})
    folder = _catalogue(tmp_path, {"image-bank": MEDIA}, overlapping)
    catalogue, errors = load_valid(folder)
    assert sorted(errors) == ["image_bank.yaml", f"{SYSTEMS}/archive.yaml", SYSTEM_FILE]
    for name in (f"{SYSTEMS}/archive.yaml", SYSTEM_FILE):
        assert errors[name].startswith(f"{name}: datasets: ")
        assert (
            "archive/old-media and image_bank/image-bank both bind s3://image-bank/"
            in (errors[name])
        )
    assert "is invalid (see its error)" in errors["image_bank.yaml"]
    assert catalogue.bindings == {}
    assert catalogue.activities == {}

    elsewhere = ("archive", {**overlapping[1], "conn_id": "retention_other_account"})
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    catalogue, errors = load_valid(_catalogue(tmp_path, {"image-bank": MEDIA}, elsewhere))
    assert errors == {}
    assert catalogue.bindings["archive/old-media"].dataset == "old-media"
    assert list(catalogue.activities) == ["image_bank"]


def test_a_dataset_over_files_that_records_link_to_is_refused(tmp_path: Path) -> None:
    ats = yaml.safe_load((POLICY_DIR / SYSTEMS / "ats.yaml").read_text(encoding="utf-8"))
    [link] = ats["datasets"]["candidates"]["objects"]
    assert (link["bucket"], link["conn_id"]) == ("cv-files", "retention_s3")
    sweep = {"cv-sweep": _archive("archive/", bucket="cv-files")}
    catalogue, errors = load_valid(
        _catalogue(tmp_path, {"image-bank": MEDIA, **sweep}, ("ats", ats))
    )
    for name in (f"{SYSTEMS}/ats.yaml", SYSTEM_FILE):
        assert errors[name] == (
            f"{name}: datasets: dataset image_bank/cv-sweep binds s3://cv-files/archive/, where"
            " ats/candidates links files (cv_object_key, connection 'retention_s3'): a file of a"
            " held record could be deleted as an object of image_bank/cv-sweep; keep the linked"
            " files in a bucket no dataset binds"
        )
    assert catalogue.bindings == {}

    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    catalogue, errors = load_valid(_catalogue(tmp_path, {"image-bank": MEDIA}, ("ats", ats)))
    assert errors == {}  # the same link beside a dataset of another bucket
    assert sorted(catalogue.bindings) == ["ats/candidates", "image_bank/image-bank"]


def test_a_record_hold_outside_its_datasets_prefix_is_refused(tmp_path: Path) -> None:
    folder = _catalogue(tmp_path, {"image-bank": MEDIA, "image-archive": _archive("archive/")})
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'control.db'}")
    register = HoldRegister(engine, KEY, catalogue=load_catalogue(folder))
    register.create_tables()
    held = {"kind": "legal_hold", "reason": "case 9", "placed_by": "legal"}
    with pytest.raises(RetentionError) as refused:
        register.place_record_hold("image_bank", "image-bank", "archive/anna.jpg", **held)
    assert str(refused.value) == (
        "the object key given is not under the prefix 'media/' of image_bank/image-bank, so a"
        " hold there would keep nothing; it is an object of image_bank/image-archive: hold it"
        " there"
    )
    with pytest.raises(RetentionError, match=r"; no dataset has it$"):
        register.place_record_hold("image_bank", "image-archive", "private/anna.jpg", **held)
    assert register.active("image_bank", "image-bank").empty  # nothing was placed
    assert register.active("image_bank", "image-archive").empty
    register.place_record_hold("image_bank", "image-archive", "archive/anna.jpg", **held)
    ref = record_ref(KEY, "image_bank", "image-archive", "archive/anna.jpg")
    assert register.active("image_bank", "image-archive").kind_for(ref) == "legal_hold"


def test_the_name_is_the_key_not_a_field(tmp_path: Path) -> None:
    folder = _catalogue(tmp_path, {"image-bank": {**MEDIA, "name": "other"}})
    _, errors = load_valid(folder)
    assert "datasets.image-bank: name set on the dataset" in errors[SYSTEM_FILE]


# ------------------------------------------------------------------------------ enforcement


def _activity(bucket: str, prefix: str, name: str | None) -> Activity:
    base = load_catalogue()["image_bank"]
    update = {"bucket": bucket, "prefix": prefix, "name": name}
    return base.model_copy(update={"source": base.source.model_copy(update=update)})


def _run(activity: Activity, client: Any, control: Control) -> Any:
    return enforce(
        activity, AS_OF, source=client, control=control, catalogue_version="test",
        approved_by="tester",
    )  # fmt: skip


def test_each_dataset_deletes_within_its_prefix_under_its_own_name(
    s3: Any, control: Control
) -> None:
    bucket = new_bucket(s3, "shared")
    for key in ("media/a.jpg", "media/b.jpg", "archive/a.jpg", "archive/held.jpg"):
        put(s3, bucket, key, **OLD)
    put(s3, bucket, "archive/new.jpg", **NEW)
    media = _activity(bucket, "media/", None)
    archive = _activity(bucket, "archive/", "image-archive")
    hold = control.holds.place_record_hold(
        "image_bank", "image-archive", "archive/held.jpg", kind="legal_hold", reason="case 7",
        placed_by="legal",
    )  # fmt: skip

    first = _run(media, s3, control)
    assert (first.outcome, first.applied) == ("completed", 2), first.message
    assert keys(s3, bucket) == {"archive/a.jpg", "archive/held.jpg", "archive/new.jpg"}
    [evidence] = control.ledger.lookup("image_bank", bucket, "media/a.jpg")
    assert (evidence.dataset, evidence.run_id) == (bucket, first.run_id)

    second = _run(archive, s3, control)
    assert (second.outcome, second.applied) == ("completed", 1), second.message
    assert keys(s3, bucket) == {"archive/held.jpg", "archive/new.jpg"}
    [evidence] = control.ledger.lookup("image_bank", "image-archive", "archive/a.jpg")
    assert (evidence.dataset, evidence.run_id) == ("image-archive", second.run_id)
    assert control.ledger.lookup("image_bank", bucket, "archive/a.jpg") == []

    certificate = build_certificate(
        control.ledger, second.run_id, "en",
        catalogue=Catalogue(activities={archive.id: archive}, version="test"),
    )  # fmt: skip
    page = render(certificate, "html").decode("utf-8")
    assert "<td><code>image-archive</code></td>" in page
    assert f"<td><code>s3://{bucket}/archive/</code></td>" in page

    control.holds.release(hold, released_by="legal")
    third = _run(archive, s3, control)
    assert third.applied == 1
    assert keys(s3, bucket) == {"archive/new.jpg"}
