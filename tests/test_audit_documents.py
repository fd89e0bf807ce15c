"""Deletion certificates and audit reports: what they state matches the ledger's raw rows
(read here with plain SQL), in Swedish and English, HTML, PDF and CSV; no personal data; the
command-line verbs."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import re
import stat
import zlib
from collections.abc import Iterator

import pytest

from include.retention.__main__ import main
from include.retention.audit_report import build_report, report_bytes
from include.retention.catalogue import POLICY_DIR
from include.retention.certificate import build_certificate, certificate_bytes, render
from include.retention.controller import load_controller
from tests.audit_ledger import (
    APPROVER,
    DAYS,
    HOLD_REASON,
    ORIGIN,
    Built,
    applied_from_rows,
    build,
    head_row,
    of_run,
    raw_rows,
)

NOVEMBER = (dt.date(2026, 11, 1), dt.date(2026, 11, 30))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    with pytest.MonkeyPatch.context() as patch:
        yield build(tmp_path_factory.mktemp("audit"), patch)


@pytest.fixture(scope="module")
def rows(built: Built) -> list[dict]:
    return raw_rows(built.control_url)


def _facts(page: str) -> dict[str, str]:
    """label -> value of every two-column row of an HTML document."""
    found = re.findall(r'<tr><th scope="row">(.*?)</th><td>(.*?)</td></tr>', page, re.S)
    return {html.unescape(k): html.unescape(re.sub(r"<[^>]+>", "", v)) for k, v in found}


def _certificate(built: Built, name: str, language: str = "en") -> str:
    document = build_certificate(
        built.control.ledger, built.runs[name], language, catalogue=built.catalogue
    )
    return render(document, "html").decode("utf-8")


def _pdf_text(data: bytes) -> str:
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    # fpdf2 ends lines with \n; a compressed stream may itself end in \r: keep that byte
    streams = re.findall(rb"stream\n(.*?)\nendstream", data, re.S)
    return b"".join(zlib.decompress(s) for s in streams if s[:1] == b"x").decode("latin-1")


# ------------------------------------------------------------------------------ certificate


def test_certificate_states_what_the_ledger_rows_say(built, rows):
    run_id = built.runs["approved"]
    started = of_run(rows, run_id, "run_started")
    finished = of_run(rows, run_id, "run_finished")["doc"]
    verified = of_run(rows, run_id, "run_verified")["doc"]
    own = [r for r in rows if r["run_id"] == run_id]
    facts = _facts(_certificate(built, "approved"))

    assert facts["Ledger run id"] == run_id
    assert facts["System"] == started["system"] == "ats"
    assert facts["Dataset"] == started["dataset"] == "people"
    assert facts["Location"] == "ats.people"  # the binding, as the run's catalogue version had it
    assert facts["Evaluated as of (as_of)"] == started["doc"]["as_of"]
    assert facts["Cut-offs (records whose start date is before these were expired)"] == ", ".join(
        c for c in started["doc"]["cutoffs"] if c
    )
    assert facts["Catalogue version at the run"] == started["doc"]["catalogue_version"]
    assert facts["Code version"] == started["doc"]["code_version"]
    assert facts["Airflow DAG"] == ORIGIN["dag_id"] == started["doc"]["origin"]["dag_id"]
    assert facts["Airflow run"] == started["doc"]["origin"]["run_id"]
    assert facts["Triggered by"] == started["doc"]["origin"]["triggered_by"]
    assert facts["Decision"] == f"approved by {started['doc']['approved_by']}"
    assert facts["Deleted"] == str(applied_from_rows(rows, run_id)) != "0"
    counts = finished["counts"]
    assert facts["Records checked"] == str(counts["total"])
    assert facts["Expired (candidates)"] == str(counts["expired"])
    assert facts["Kept: legal hold"] == str(counts["held"]) == "1"
    assert facts["Kept: start date missing (never deleted)"] == str(counts["anchor_unknown"]) == "1"
    assert facts["Not yet expired (kept)"] == str(counts["kept"])
    assert facts["Result"] == ("passed" if verified["success"] else "FAILED") == "passed"
    assert facts["Deletions in the ledger checked"] == str(verified["claims_checked"])
    assert facts["The run's entries in the ledger"] == f"{own[0]['seq']}–{own[-1]['seq']}"
    assert facts["Hash of the run's last entry"] == own[-1]["hash"]
    assert facts["The ledger's last entry when this certificate was issued"] == " ".join(
        str(part) for part in head_row(built.control_url)
    )
    assert facts["Chain check when this certificate was issued"] == f"intact ({len(rows)} entries)"


def test_certificate_under_a_changed_catalogue_names_no_location_it_cannot_vouch_for(built):
    since = built.catalogue.model_copy(update={"version": "edited-since"})
    document = build_certificate(
        built.control.ledger, built.runs["approved"], "en", catalogue=since
    )
    facts = _facts(render(document, "html").decode("utf-8"))
    assert facts["Dataset"] == "people"
    assert "Location" not in facts
    assert (
        "the catalogue has changed since; now edited-since" in facts["Catalogue version at the run"]
    )


def test_certificate_of_a_run_stopped_for_approval_says_nothing_changed(built, rows):
    run_id = built.runs["gated"]
    finished = of_run(rows, run_id, "run_finished")["doc"]
    assert finished["outcome"] == "approval_required"
    facts = _facts(_certificate(built, "gated"))
    assert facts["Decision"].startswith("rejected or not answered")
    assert facts["Deleted"] == "0" and facts["Expired (candidates)"] == str(
        finished["counts"]["expired"]
    )
    assert facts["Result"].startswith("not verified")
    page = _certificate(built, "gated")
    assert "None: the run changed no records." in page


def test_certificate_names_the_backups_that_still_hold_copies(built, rows):
    run_id = built.runs["approved"]
    ended = dt.datetime.fromisoformat(of_run(rows, run_id, "run_finished")["recorded_at"])
    days = load_controller().residual_copies.days_for("ats")
    expiry = (ended + dt.timedelta(days=days)).date().isoformat()
    page = _certificate(built, "approved")
    assert "Backups of ats taken before" in page and f"until {expiry} ({days} days)" in page


def test_certificate_of_an_anonymisation_with_a_failed_verification(built, rows):
    run_id = built.runs["anonymised"]
    verified = of_run(rows, run_id, "run_verified")["doc"]
    assert verified["success"] is False and verified["false_claims"] == 1
    page = _certificate(built, "anonymised")
    facts = _facts(page)
    assert "Certificate of anonymisation" in page
    assert facts["Anonymised"] == str(applied_from_rows(rows, run_id)) == "6"
    assert facts["Result"] == "FAILED"
    assert facts["Deletions in the ledger found untrue"] == "1"


def test_swedish_certificate_in_swedish(built):
    facts = _facts(_certificate(built, "approved", "sv"))
    assert facts["Körnings-id i gallringsloggen"] == built.runs["approved"]
    assert facts["Beslut"] == f"godkänd av {APPROVER}"
    assert facts["Behölls: rättslig spärr (legal hold)"] == "1"
    assert facts["Gallringsregel"].startswith("status: 2 år efter beslutet")


def test_certificate_pdf_carries_the_same_values(built, rows):
    run_id = built.runs["approved"]
    data = certificate_bytes(
        built.control.ledger, run_id, language="sv", fmt="pdf", catalogue=built.catalogue
    )
    text = _pdf_text(data)
    last = [r for r in rows if r["run_id"] == run_id][-1]
    for value in (run_id, last["hash"][:40], "Raderingsintyg", f"godk\xe4nd av {APPROVER}"):
        assert value in text, value


def test_certificate_of_an_unknown_run_is_a_clear_error(built):
    from include.retention.errors import RetentionError

    with pytest.raises(RetentionError, match="no run 'no-such-run'"):
        build_certificate(built.control.ledger, "no-such-run", "en", catalogue=built.catalogue)


# ------------------------------------------------------------------------------ report


def _report(built: Built, language: str, fmt: str, period=NOVEMBER) -> str:
    report = build_report(built.control.ledger, *period, language, catalogue=built.catalogue)
    return report_bytes(report, fmt).decode("utf-8")


def _csv(built: Built, period=NOVEMBER) -> dict[str, dict[str, str]]:
    reader = csv.DictReader(io.StringIO(_report(built, "en", "csv", period)))
    return {row["activity_id"]: row for row in reader}


def _expected(rows: list[dict], activity_id: str) -> dict[str, int]:
    started = [r for r in rows if r["kind"] == "run_started" and r["activity_id"] == activity_id]
    finished = {r["run_id"]: r["doc"] for r in rows if r["kind"] == "run_finished"}
    verified = {r["run_id"]: r["doc"] for r in rows if r["kind"] == "run_verified"}
    ids = [r["run_id"] for r in started]
    outcomes = [finished[i]["outcome"] for i in ids]
    last = finished[ids[-1]]["counts"]
    return {
        "runs": len(ids),
        "completed": outcomes.count("completed"),
        "applied": sum(applied_from_rows(rows, i) for i in ids),
        "failed": outcomes.count("failed"),
        "rejected": outcomes.count("approval_required"),
        "verification_passed": sum(1 for i in ids if verified.get(i, {}).get("success")),
        "verification_failed": sum(1 for i in ids if i in verified and not verified[i]["success"]),
        "held": last["held"],
        "kept": last["kept"],
        "anchor_unknown": last["anchor_unknown"],
    }


def test_report_csv_matches_the_ledger_rows(built, rows):
    table = _csv(built)
    for activity_id, deleted_column in (("recruitment", "deleted"), ("alumni", "anonymised")):
        expected, row = _expected(rows, activity_id), table[activity_id]
        assert int(row["runs"]) == expected["runs"]
        assert int(row["completed"]) == expected["completed"]
        assert int(row[deleted_column]) == expected["applied"]
        assert int(row["failed_runs"]) == expected["failed"]
        assert int(row["approvals_rejected_or_not_given"]) == expected["rejected"]
        assert int(row["verification_passed"]) == expected["verification_passed"]
        assert int(row["verifications_failed"]) == expected["verification_failed"]
        assert int(row["held_last_run"]) == expected["held"]
        assert int(row["not_yet_due_last_run"]) == expected["kept"]
        assert int(row["unknown_anchor_last_run"]) == expected["anchor_unknown"]
    recruitment = table["recruitment"]
    assert (int(recruitment["runs"]), int(recruitment["failed_runs"])) == (4, 1)
    assert int(recruitment["approvals_rejected_or_not_given"]) == 1
    assert int(recruitment["batches_settled_after_an_interruption"]) == 1
    assert int(table["alumni"]["verifications_failed"]) == 1


def test_report_trend_chart_has_the_deletions_per_day(built, rows):
    page = _report(built, "en", "html")
    assert "<svg" in page and 'role="img"' in page
    bars = dict(re.findall(r"<title>([^<]+ \d\d-\d\d): (\d+)</title>", page))
    expected: dict[str, int] = {}
    names = {"recruitment": "Recruitment", "alumni": "Alumni"}
    started = [r for r in rows if r["kind"] == "run_started"]
    for r in started:
        day = dt.date.fromisoformat(r["recorded_at"][:10]).strftime("%m-%d")
        label = f"{names[r['activity_id']]} {day}"
        expected[label] = expected.get(label, 0) + applied_from_rows(rows, r["run_id"])
    assert {k: int(v) for k, v in bars.items()} == {k: v for k, v in expected.items() if v}


def test_report_period_is_inclusive_and_excludes_other_days(built, rows):
    day = DAYS["gated"]
    table = _csv(built, (day, day))
    assert int(table["recruitment"]["runs"]) == 1
    assert int(table["recruitment"]["approvals_rejected_or_not_given"]) == 1
    assert int(table["alumni"]["runs"]) == 0


def test_report_shows_the_ledger_check_and_the_exceptions(built, rows):
    page = _report(built, "en", "html")
    facts = _facts(page)
    assert facts["Chain check of the deletion ledger"] == (
        f"intact ({len(rows)} entries, last entry {rows[-1]['seq']})"
    )
    assert facts["Runs"] == str(sum(1 for r in rows if r["kind"] == "run_started"))
    assert "Recruitment (recruitment): 1 failed runs; 1 approvals rejected" in page


def test_report_pdf_draws_the_chart(built):
    report = build_report(built.control.ledger, *NOVEMBER, "sv", catalogue=built.catalogue)
    text = _pdf_text(report_bytes(report, "pdf"))
    assert "Granskningsrapport" in text and "Per behandling" in text
    bars = re.findall(r"-?[\d.]+ -?[\d.]+ -?[\d.]+ -?[\d.]+ re f", text)
    assert len(bars) >= 5, "3 bars (2 days of recruitment, 1 of alumni) and 2 legend keys"


# ------------------------------------------------------------------------------ language, privacy

_NOT_PROSE = [
    re.compile(p, re.S)
    for p in (
        r"<style>.*?</style>",
        r"<svg.*?</svg>",
        r"<code>.*?</code>",
        r"<[^>]+>",
        r"\S*[_@/.:-]\S*\w",
    )
]
_WORD = re.compile(r"[A-Za-zÅÄÖåäöÉé]{3,}")
_NAMES = {"Assessio", "Sverige", "CET", "CEST", "GX", "Airflow", "DAG", "legal", "hold"}
# Swedish words spelt like English ones; "status" is the test rule's column.
_SWEDISH_TOO = {"policy", "system", "status", "per", "period"}


def _words(text: str) -> set[str]:
    for pattern in _NOT_PROSE:
        text = pattern.sub(" ", text)
    return set(_WORD.findall(html.unescape(text)))


def test_no_english_in_the_swedish_documents(built):
    policy = _words((POLICY_DIR / "text" / "integritetspolicy.sv.md").read_text(encoding="utf-8"))
    ids = {*built.catalogue.activities, "ats", "people"}  # activity, system, table
    allowed = {w.lower() for w in policy | _NAMES | _SWEDISH_TOO | ids}
    pairs = [
        (_certificate(built, name, "sv"), _certificate(built, name, "en"))
        for name in ("approved", "gated", "anonymised")
    ]
    pairs.append((_report(built, "sv", "html"), _report(built, "en", "html")))
    for swedish, english in pairs:
        leaked = {w for w in _words(swedish) & _words(english) if w.lower() not in allowed}
        assert leaked == set(), f"English in the Swedish document: {sorted(leaked)}"
    assert "Certificate" not in pairs[0][0] and "Raderingsintyg" in pairs[0][0]


def test_no_personal_data_in_any_output(built):
    outputs = [
        certificate_bytes(
            built.control.ledger, run_id, language=lang, fmt=fmt, catalogue=built.catalogue
        )
        for run_id in built.runs.values()
        for lang in ("sv", "en")
        for fmt in ("html", "pdf")
    ]
    for lang in ("sv", "en"):
        report = build_report(built.control.ledger, *NOVEMBER, lang, catalogue=built.catalogue)
        outputs += [report_bytes(report, fmt) for fmt in ("html", "pdf", "csv")]
    assert built.emails
    for data in outputs:
        text = _pdf_text(data) if data.startswith(b"%PDF") else data.decode("utf-8")
        for secret in [*built.emails, HOLD_REASON, "Greta", "example.com"]:
            assert secret not in text


# ------------------------------------------------------------------------------ command line


def test_cli_certificate_writes_an_owner_only_file(built, tmp_path, capsys):
    out = tmp_path / "c.pdf"
    code = main(["certificate", built.runs["approved"], "--lang", "sv", "--format", "pdf",
                 "--out", str(out), "--control-db", built.control_url])  # fmt: skip
    assert code == 0 and f"wrote {out}" in capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert built.runs["approved"] in _pdf_text(out.read_bytes())


def test_cli_certificate_html_to_stdout(built, capsysbinary):
    code = main(["certificate", built.runs["gated"], "--out", "-", "--control-db",
                 built.control_url])  # fmt: skip
    page = capsysbinary.readouterr().out.decode("utf-8")
    assert code == 0 and page.startswith("<!doctype html>")
    assert _facts(page)["Ledger run id"] == built.runs["gated"]


def test_cli_report_csv_html_pdf(built, tmp_path, capsysbinary):
    args = ["report", "--from", "2026-11-01", "--to", "2026-11-30", "--control-db",
            built.control_url]  # fmt: skip
    assert main([*args, "--format", "csv", "--out", "-"]) == 0
    table = {r["activity_id"]: r for r in csv.DictReader(
        io.StringIO(capsysbinary.readouterr().out.decode("utf-8")))}  # fmt: skip
    assert "recruitment" in table and int(table["recruitment"]["runs"]) == 4
    for fmt in ("html", "pdf"):
        out = tmp_path / f"r.sv.{fmt}"
        assert main([*args, "--lang", "sv", "--format", fmt, "--out", str(out)]) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.stat().st_size > 1000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["certificate", "no-such-run"], "the ledger has no run 'no-such-run'"),
        (["report", "--from", "2026-11-30", "--to", "2026-11-01"], "is before --from"),
    ],
)
def test_cli_errors_are_clear(built, capsys, argv, message):
    assert main([*argv, "--control-db", built.control_url]) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_missing_control_database(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'nothing.db'}"
    assert main(["report", "--from", "2026-11-01", "--to", "2026-11-02", "--control-db", url]) == 2
    assert "no control database" in capsys.readouterr().err
    assert not (tmp_path / "nothing.db").exists()
