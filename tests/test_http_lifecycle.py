"""Retention of an HTTP API source through the one run lifecycle, against the demo's SaaS
server on loopback: exactly the designed due records go, held and not-due ones stay, the
ledger names each deleted record once, and a crash anywhere in a batch settles correctly."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from include.demo.manifest import ManifestEntry
from include.demo.saas import design_collection
from include.demo.saas_server import SaasServer, Store
from include.demo.seed import place_holds
from include.retention import erasure
from include.retention.audit_report import build_report, report_bytes
from include.retention.catalogue import Activity, HttpSource, load_catalogue
from include.retention.certificate import build_certificate, render
from include.retention.identifiers import normalise_email
from include.retention.lifecycle import Hooks, enforce
from include.retention.pseudonym import subject_ref
from include.retention.runs import Control
from include.retention.sources.base import adapter_for
from include.retention.sources.http import ApiClient, ApiSettings
from tests.crash import check_evidence, fork_run
from tests.s3 import AS_OF, KEY

SYSTEM, COLLECTION = "lead_crm", "leads"


def lead_crm() -> Activity:
    """The catalogue's lead activity bound to the SaaS API (whatever the catalogue binds)."""
    activity = load_catalogue()["sales_leads"]
    source = HttpSource(
        system=SYSTEM,
        conn_id="retention_lead_crm",
        collection=COLLECTION,
        lookup={"email": "email"},
    )
    return activity.model_copy(update={"source": source})


@dataclass
class Saas:
    server: SaasServer
    entries: list[ManifestEntry]
    control_url: str

    def client(self) -> ApiClient:
        return ApiClient(ApiSettings(self.server.base_url, self.server.token, page_size=9), "t")

    def control(self) -> Control:
        return Control.open(self.control_url, KEY)

    def present(self) -> set[str]:
        return {rid for rid, _ in self.server.store.page(COLLECTION, "", 10_000)}

    def enforce(self, batch_size: int = 4) -> object:
        return enforce(
            lead_crm(), AS_OF, control=self.control(), catalogue_version="test",
            source=self.client(), batch_size=batch_size, approved_by="test",
        )  # fmt: skip

    def check(self) -> set[str]:
        present = self.present()
        due = [e.pk for e in self.entries if e.due]
        stay = {e.pk for e in self.entries if not e.due}
        check_evidence(self.control(), SYSTEM, COLLECTION, present, due, stay)
        return present


@pytest.fixture
def saas(tmp_path: Path) -> Iterator[Saas]:
    records, entries = design_collection(lead_crm(), AS_OF, seed=3)
    Store(tmp_path / "saas.db").upsert(COLLECTION, [(i, json.dumps(f)) for i, f in records])
    url = f"sqlite:///{tmp_path / 'control.db'}"
    place_holds(Control.open(url, KEY).holds, [e.hold_request() for e in entries if e.hold])
    with SaasServer(tmp_path / "saas.db", secrets.token_urlsafe(16)) as server:
        yield Saas(server, entries, url)


def test_a_run_deletes_the_due_records_and_records_each_once(saas: Saas) -> None:
    report = saas.enforce()
    due = {e.pk for e in saas.entries if e.due}
    assert saas.check() == {e.pk for e in saas.entries} - due
    assert report.applied == len(due) and report.outcome == "completed"  # type: ignore[attr-defined]
    assert report.held_skipped == sum(e.hold is not None for e in saas.entries)  # type: ignore[attr-defined]
    assert report.batches == -(-len(due) // 4)  # type: ignore[attr-defined]
    again = saas.enforce()
    assert again.applied == 0 and again.outcome == "nothing_to_do"  # type: ignore[attr-defined]


def _enforce_with(
    saas: Saas, before_commit: Callable[[int], None], client: ApiClient | None = None
) -> tuple[Any, Control]:
    """A run of the lead CRM in batches of 4, ``before_commit`` called before each applies."""
    control = saas.control()
    report = enforce(
        lead_crm(), AS_OF, control=control, catalogue_version="test",
        source=client or saas.client(),
        batch_size=4, approved_by="test", hooks=Hooks(before_commit=before_commit),
    )  # fmt: skip
    return report, control


def _certificate_says(control: Control, run_id: str, **words: str) -> None:
    """The run's certificate in each language (``en=``, ``sv=``) holds those words."""
    catalogue = load_catalogue()
    for language, text in words.items():
        document = build_certificate(control.ledger, run_id, language, catalogue=catalogue)
        assert text in render(document, "html").decode(), language


def _set_email(saas: Saas, pk: str, value: Any) -> None:
    """In the tool itself, the lead's e-mail field is set to ``value``."""
    fields = json.loads(saas.server.store.get(COLLECTION, pk) or "{}")
    fields["email"] = value
    saas.server.store.upsert(COLLECTION, [(pk, json.dumps(fields))])


def _correct_email(saas: Saas, pk: str) -> None:
    """In the tool itself, the lead's e-mail is corrected (it becomes another person's)."""
    _set_email(saas, pk, "corrected.address@example.org")


def test_a_record_changed_during_the_run_is_kept_and_the_certificate_says_why(saas: Saas) -> None:
    """Just before batch 1 is applied, the e-mail of one of its leads is corrected: the
    holds were checked for the old one, so the lead is kept, and nothing claims it."""
    free = sorted(e.pk for e in saas.entries if e.due and e.hold is None)
    corrected = free[0]

    def correct(batch_no: int) -> None:
        if batch_no == 1:
            _correct_email(saas, corrected)

    report, control = _enforce_with(saas, correct)
    assert report.outcome == "completed" and report.counts()["changed_meanwhile"] == 1
    assert report.applied == len(free) - 1
    assert saas.present() & set(free) == {corrected}
    assert control.ledger.lookup(SYSTEM, COLLECTION, corrected) == []
    _certificate_says(
        control, str(report.run_id),
        en="1 records changed in the source system after they were",
        sv="1 uppgifter ändrades i källsystemet efter att de bedömts",
    )  # fmt: skip


def test_a_record_deleted_by_someone_else_during_the_run_is_not_claimed(saas: Saas) -> None:
    """Just before batch 1 is applied, someone deletes one of its leads in the tool itself:
    the run did not delete it, so no evidence says it did; the certificate says what happened."""
    free = sorted(e.pk for e in saas.entries if e.due and e.hold is None)
    gone = free[0]

    def delete_elsewhere(batch_no: int) -> None:
        if batch_no == 1:
            assert saas.server.store.delete(COLLECTION, gone) == "deleted"

    report, control = _enforce_with(saas, delete_elsewhere)
    assert report.outcome == "completed" and report.counts()["already_gone"] == 1
    assert report.applied == len(free) - 1
    assert saas.present() & set(free) == set()
    assert control.ledger.lookup(SYSTEM, COLLECTION, gone) == []
    assert len(control.ledger.lookup(SYSTEM, COLLECTION, free[1])) == 1
    _certificate_says(
        control, str(report.run_id),
        en="1 records were already gone from the source system when the run came",
        sv="1 uppgifter var redan borta ur källsystemet när körningen skulle",
    )  # fmt: skip


def test_the_period_report_shows_what_others_changed_during_the_run(saas: Saas) -> None:
    """One lead corrected and one deleted in the tool while batch 1 waits: the audit report
    lists both for the activity (CSV columns and a section of their own), not as exceptions."""
    free = sorted(e.pk for e in saas.entries if e.due and e.hold is None)
    corrected, gone = free[0], free[1]

    def change_two(batch_no: int) -> None:
        if batch_no == 1:
            _correct_email(saas, corrected)
            assert saas.server.store.delete(COLLECTION, gone) == "deleted"

    _enforce_with(saas, change_two)
    today = dt.datetime.now(ZoneInfo("Europe/Stockholm")).date()
    period = (today - dt.timedelta(days=1), today + dt.timedelta(days=1))
    ledger = saas.control().ledger
    report = {
        lang: build_report(ledger, *period, lang, catalogue=load_catalogue())
        for lang in ("en", "sv")
    }
    row = next(
        r
        for r in csv.DictReader(io.StringIO(report_bytes(report["en"], "csv").decode()))
        if r["activity_id"] == "sales_leads"
    )
    assert (row["changed_during_run"], row["already_deleted_by_others"]) == ("1", "1")
    assert row["uploaded_again_during_run"] == "0" and row["failed_runs"] == "0"
    english = html.unescape(report_bytes(report["en"], "html").decode())
    before, heading, section = english.partition("Changed by others while the runs worked")
    assert heading and "already deleted by someone else" not in before  # not an exception
    assert "1 records changed in the source system during the run" in section
    assert "1 records already deleted by someone else" in section
    swedish = html.unescape(report_bytes(report["sv"], "html").decode())
    assert "1 uppgifter hade redan raderats av någon annan" in swedish


class _RepeatingClient(ApiClient):
    """A cursor API whose order moved while it was listed: one record comes on two pages."""

    def __init__(self, saas: Saas, again: str) -> None:
        super().__init__(ApiSettings(saas.server.base_url, saas.server.token, page_size=9), "t")
        self.again = again

    def records(self, collection: str) -> Iterator[Any]:
        yield from super().records(collection)
        yield from (r for r in super().records(collection) if r.id == self.again)


def test_a_record_listed_twice_is_judged_and_deleted_once(saas: Saas) -> None:
    """Counted twice it would swell the plan the approval gate reads, and the run's own delete
    would come back as "deleted by someone else"."""
    due = [e.pk for e in saas.entries if e.due]
    held = [e.pk for e in saas.entries if e.hold is not None]
    twice = sorted(due)[0]
    report, control = _enforce_with(saas, lambda _: None, _RepeatingClient(saas, twice))
    counts = report.counts()
    assert twice not in saas.present()
    assert counts.get("already_gone", 0) == 0, counts
    assert (counts["expired"], report.applied) == (len(due) + len(held), len(due))
    assert len(control.ledger.lookup(SYSTEM, COLLECTION, twice)) == 1


def test_a_held_persons_record_whose_email_field_is_a_list_is_kept(saas: Saas) -> None:
    entry = next(e for e in saas.entries if e.hold == "subject")
    fields = json.loads(saas.server.store.get(COLLECTION, str(entry.pk)) or "{}")
    _set_email(saas, str(entry.pk), [fields["email"]])  # the API gives addresses as a list
    report = saas.enforce()
    assert entry.pk in saas.present()
    assert report.held_skipped == sum(e.hold is not None for e in saas.entries)  # type: ignore[attr-defined]


def test_a_due_record_whose_email_cannot_be_read_is_kept_and_the_certificate_says_why(
    saas: Saas,
) -> None:
    """An e-mail field holding an object or a boolean names nobody anyone can tell: its
    holds cannot be checked, so the record is not deleted on a guess."""
    free = sorted(e.pk for e in saas.entries if e.due and e.hold is None)
    _set_email(saas, free[0], {"work": "someone@example.se"})
    _set_email(saas, free[1], True)
    report, control = _enforce_with(saas, lambda _: None)
    assert saas.present() & set(free) == {free[0], free[1]}
    assert report.applied == len(free) - 2 and report.counts()["subject_unknown"] == 2
    _certificate_says(
        control, str(report.run_id),
        en="2 expired records have an identifier field (such as the e-mail) whose value",
        sv="2 förfallna uppgifter har ett identifieringsfält",
    )  # fmt: skip


def test_an_erasure_keeps_the_persons_record_whose_other_identifier_cannot_be_read(
    saas: Saas,
) -> None:
    """The record is the person's (the list's first address), but another item of the field
    is an object: whose else it is, and so its holds, cannot be told. Kept, and said why."""
    entry = next(e for e in saas.entries if e.due and e.hold is None)
    fields = json.loads(saas.server.store.get(COLLECTION, str(entry.pk)) or "{}")
    _set_email(saas, str(entry.pk), [fields["email"], {"work": "someone@example.se"}])
    control = saas.control()
    how = erasure.Erasure(by="dpo", origin={"request": "DSR-1"}, catalogue_version="test")
    adapter = adapter_for(lead_crm().source, KEY, saas.client())
    refs = [subject_ref(KEY, normalise_email(fields["email"]))]
    outcome = erasure.erase_in(lead_crm(), adapter, refs, control, how)
    assert str(entry.pk) in saas.present()
    assert (outcome.erased, dict(outcome.kept)) == (0, {"subject_unknown": 1})
    said = erasure.kept_reasons([(outcome.activity, outcome.kept)])
    assert "cannot be read as an identifier" in said[0]["en"]


@pytest.mark.parametrize("checkpoint", ["after_prepare:1", "after_apply:2", "after_resolve:1"])
def test_a_crash_in_a_batch_settles_on_the_next_run(saas: Saas, checkpoint: str) -> None:
    assert fork_run(saas.enforce, kill_at=checkpoint) == "killed"
    saas.enforce()  # recovers the killed run's batch first, then finishes the work
    present = saas.check()
    assert present == {e.pk for e in saas.entries if not e.due}


def test_an_api_outage_mid_run_fails_the_run_and_loses_nothing(saas: Saas) -> None:
    saas.server.fail_next(200, status=503, after=7)  # 3 listings, 2 reads and deletes, then out
    with pytest.raises(Exception, match=r"retention_lead_crm.*failed 2 times"):
        enforce(
            lead_crm(), AS_OF, control=saas.control(), catalogue_version="test",
            source=ApiClient(ApiSettings(saas.server.base_url, saas.server.token, max_retries=1,
                                         backoff=0.01), "retention_lead_crm"),
            approved_by="test",
        )  # fmt: skip
    due = {e.pk for e in saas.entries if e.due}
    assert due - saas.present() and due & saas.present()  # the batch was cut off midway
    saas.server.fail_next(0)
    report = saas.enforce()  # settles the cut-off batch (partial) first, then the rest
    assert report.recovery is not None and report.recovery.partial == 1  # type: ignore[attr-defined]
    saas.check()
