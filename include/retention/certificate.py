"""The deletion certificate of one enforcement run, in Swedish or English, as HTML or PDF.

Everything the certificate states about the run is read from the ledger (see
:mod:`include.retention.run_record`): the rule and cut-offs in force, the counts, the batches
applied, the approval, the verification and the run's place in the hash chain. The catalogue
adds what the ledger does not repeat (the activity's name, Art. 30 facts, legal basis, the
policy sentence) and the controller file the backup retention (residual copies). No personal
data: records appear only as counts; a legal hold's free-text reason is not shown.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pendulum

from include.retention.catalogue import Activity, Catalogue
from include.retention.controller import Controller, load_controller
from include.retention.documents import Block, Document, Facts, Notes, to_html, to_pdf
from include.retention.errors import RetentionError
from include.retention.evidence import EvidenceReader
from include.retention.register import ACTIONS, BASIS_LABELS, Item
from include.retention.run_record import TIMEZONE, RunRecord, entry_hash_at, read_run
from include.retention.texts import LANGUAGES, Language

FORMATS = ("html", "pdf")

OUTCOMES: dict[str, dict[str, str]] = {
    "sv": {
        "completed": "genomförd",
        "nothing_to_do": "inget att göra – inga förfallna uppgifter",
        "approval_required": "väntade på godkännande som avslogs eller uteblev – ingenting"
        " ändrades",
        "dry_run": "provkörning – ingenting ändrades",
        "report_only": "endast rapport – ingenting ändrades",
        "failed": "misslyckades",
        "interrupted": "avbröts – påbörjade omgångar avslutades av nästa körning",
        "unfinished": "pågår eller avslutades inte",
    },
    "en": {
        "completed": "completed",
        "nothing_to_do": "nothing to do – no expired records",
        "approval_required": "waited for an approval that was rejected or not given – nothing"
        " changed",
        "dry_run": "dry run – nothing changed",
        "report_only": "report only – nothing changed",
        "failed": "failed",
        "interrupted": "interrupted – its batches in flight were settled by the next run",
        "unfinished": "running or never finished",
    },
}

_W: dict[str, dict[str, str]] = {
    "sv": {
        "title": "Raderingsintyg",
        "title_anonymise": "Intyg om anonymisering",
        "issued": "Utfärdat {at} av {controller} ur gallringsloggen. Körning",
        "page": "Sida",
        "none": "inga",
        "yes": "ja",
        "no": "nej",
        "activity_h": "Behandling",
        "activity": "Behandling",
        "art30": "Hänvisning till registret (art. 30)",
        "art30_value": "registrets avsnitt {id}, katalogversion {version}",
        "basis": "Rättslig grund",
        "purpose": "Ändamål",
        "policy_h": "Policy och regel",
        "policy": "Policyns lydelse",
        "rule": "Gallringsregel",
        "catalogue": "Katalogversion vid körningen",
        "catalogue_changed": "{run} (katalogen har ändrats sedan dess; nu {now})",
        "scope_h": "Omfattning",
        "system": "System",
        "dataset": "Datamängd",
        "location": "Plats",
        "linked": "Tillhörande uppgifter som också togs bort",
        "method": "Metod",
        "dry": "Provkörning",
        "time_h": "Tidpunkter",
        "as_of": "Bedömningstidpunkt (as_of)",
        "cutoffs": "Brytpunkter (uppgifter med startdatum före dessa var förfallna)",
        "started": "Körningen startade",
        "ended": "Körningen avslutades",
        "counts_h": "Antal",
        "total": "Granskade uppgifter",
        "expired": "Förfallna (kandidater)",
        "applied_delete": "Raderade",
        "applied_anonymise": "Anonymiserade",
        "held": "Behölls: rättslig spärr (legal hold)",
        "restricted": "Behölls: begränsad behandling (art. 18)",
        "unknown": "Behölls: startdatum saknas (raderas aldrig)",
        "kept": "Ej förfallna (behålls)",
        "out_of_scope": "Utanför regelns tillämpningsområde",
        "batches": "Omgångar (genomförda / delvis / återställda / öppna)",
        "recovered": "varav avslutade efter ett avbrott",
        "children": "Tillhörande rader som raderades",
        "reasons_h": "Skäl till att uppgifter behölls",
        "reason_held": "{n} uppgifter omfattas av en rättslig spärr, till exempel under en"
        " tvist; de raderas när spärren hävs och de fortfarande är förfallna.",
        "reason_restricted": "{n} uppgifter har begränsad behandling enligt art. 18 på den"
        " registrerades begäran; de raderas inte medan begränsningen gäller.",
        "reason_unknown": "{n} uppgifter saknar det startdatum som lagringstiden räknas från;"
        " de raderas aldrig på en gissning utan rapporteras för rättning.",
        "reason_changed": "{n} uppgifter ändrades i källsystemet efter att de bedömts, till"
        " exempel ett nytt samtycke eller en ny uppladdning; de behölls och bedöms på nytt vid"
        " nästa körning.",
        "reason_subject_unknown": "{n} förfallna uppgifter har ett identifieringsfält (till"
        " exempel e-post) vars värde inte kan läsas som en identitet; vems de är, och därmed"
        " om en spärr gäller dem, kan inte avgöras, så de raderades inte utan rapporteras för"
        " rättning.",
        "reason_gone": "{n} uppgifter var redan borta ur källsystemet när körningen skulle"
        " radera dem (någon annan hade raderat dem); körningen anger inte att den raderade dem.",
        "reason_uploaded": "{n} objekt laddades upp på nytt (eller markerades som raderade på"
        " nytt) under samma nyckel medan de raderades: de bedömda versionerna raderades (de"
        " räknas ovan); det nya behölls och bedöms vid nästa körning.",
        "residual_h": "Kvarvarande kopior",
        "residual": "Säkerhetskopior av {system} som togs före {ended} kan innehålla uppgifterna"
        " till och med {expiry} ({days} dagar).",
        "no_backups": "Inga säkerhetskopior av {system} sparas.",
        "no_residual": "Inga: körningen ändrade inga uppgifter.",
        "identity_h": "Körningens identitet",
        "run_id": "Körnings-id i gallringsloggen",
        "dag": "Airflow-DAG",
        "dag_run": "Airflow-körning",
        "run_type": "Typ av körning",
        "partitions": "Parallella delkörningar (nyckelintervall)",
        "triggered_by": "Startad av",
        "code": "Programversion",
        "outcome": "Utfall",
        "decision_h": "Godkännande",
        "decision": "Beslut",
        "approved": "godkänd av {who}",
        "rejected": "avslagen eller obesvarad (utebliven åtgärd innebär avslag)",
        "not_needed": "behövdes inte (inom säkerhetsgränserna)",
        "not_applicable": "behövdes inte (ingenting skulle ändras)",
        "verification_h": "Kontroll efter körningen",
        "verified": "Resultat",
        "passed": "godkänd",
        "failed_check": "underkänd",
        "not_verified": "ej kontrollerad (körningen ändrade ingenting eller kontrollen kördes"
        " inte)",
        "remaining_due": "Förfallna uppgifter kvar utan spärr",
        "held_remaining": "Förfallna uppgifter kvar med spärr",
        "claims_checked": "Kontrollerade raderingar enligt loggen",
        "false_claims": "Raderingar enligt loggen som inte stämde",
        "linkable_rows": "Anonymiserade rader som går att koppla till en person",
        "small_groups": "Grupper mindre än k (k-anonymitet)",
        "ledger_h": "Gallringsloggen",
        "position": "Körningens poster i loggen",
        "last_hash": "Kontrollsumma för körningens sista post",
        "head": "Loggens senaste post när intyget utfärdades",
        "chain": "Kedjekontroll när intyget utfärdades",
        "chain_ok": "hel ({n} poster)",
        "chain_broken": "BRUTEN vid post {seq}: {problem}",
        "chain_skipped": "ej utförd",
        "notes_h": "Så läses intyget",
        "note_ledger": "Alla uppgifter om körningen är hämtade ur gallringsloggen, en kedjad logg"
        " utan personuppgifter; antalet raderade räknas ur loggens omgångar.",
        "note_hash": "Kontrollsummorna låter en granskare kontrollera att loggen inte har"
        " ändrats sedan intyget utfärdades.",
    },
    "en": {
        "title": "Certificate of deletion",
        "title_anonymise": "Certificate of anonymisation",
        "issued": "Issued {at} by {controller} from the deletion ledger. Run",
        "page": "Page",
        "none": "none",
        "yes": "yes",
        "no": "no",
        "activity_h": "Processing activity",
        "activity": "Activity",
        "art30": "Reference in the record of processing (Art. 30)",
        "art30_value": "the record's entry {id}, catalogue version {version}",
        "basis": "Legal basis",
        "purpose": "Purpose",
        "policy_h": "Policy and rule",
        "policy": "The policy's words (Swedish original)",
        "rule": "Retention rule",
        "catalogue": "Catalogue version at the run",
        "catalogue_changed": "{run} (the catalogue has changed since; now {now})",
        "scope_h": "Scope",
        "system": "System",
        "dataset": "Dataset",
        "location": "Location",
        "linked": "Data belonging to the records, also removed",
        "method": "Method",
        "dry": "Dry run",
        "time_h": "Times",
        "as_of": "Evaluated as of (as_of)",
        "cutoffs": "Cut-offs (records whose start date is before these were expired)",
        "started": "Run started",
        "ended": "Run ended",
        "counts_h": "Counts",
        "total": "Records checked",
        "expired": "Expired (candidates)",
        "applied_delete": "Deleted",
        "applied_anonymise": "Anonymised",
        "held": "Kept: legal hold",
        "restricted": "Kept: restriction of processing (Art. 18)",
        "unknown": "Kept: start date missing (never deleted)",
        "kept": "Not yet expired (kept)",
        "out_of_scope": "Outside the rule's scope",
        "batches": "Batches (committed / partial / rolled back / open)",
        "recovered": "of which settled after an interruption",
        "children": "Rows belonging to the records, deleted",
        "reasons_h": "Why records were kept",
        "reason_held": "{n} records are under a legal hold, for example during a dispute; they"
        " are deleted once the hold is released if they are still expired.",
        "reason_restricted": "{n} records are restricted under Art. 18 at the data subject's"
        " request; they are not deleted while the restriction applies.",
        "reason_unknown": "{n} records lack the start date their retention is counted from;"
        " they are never deleted on a guess but reported for correction.",
        "reason_changed": "{n} records changed in the source system after they were judged,"
        " for example a renewed consent or a new upload; they were kept and are judged again"
        " by the next run.",
        "reason_subject_unknown": "{n} expired records have an identifier field (such as the"
        " e-mail) whose value cannot be read as an identifier; whose they are, and so whether"
        " a hold covers them, cannot be told, so they were not deleted but are reported for"
        " correction.",
        "reason_gone": "{n} records were already gone from the source system when the run"
        " came to delete them (someone else had deleted them); the run does not claim them.",
        "reason_uploaded": "{n} objects were uploaded again (or marked deleted again) under"
        " their key while they were deleted: the judged versions were deleted (they are counted"
        " above); what is new was kept and is judged by the next run.",
        "residual_h": "Residual copies",
        "residual": "Backups of {system} taken before {ended} may hold the records until"
        " {expiry} ({days} days).",
        "no_backups": "No backups of {system} are kept.",
        "no_residual": "None: the run changed no records.",
        "identity_h": "Run identity",
        "run_id": "Ledger run id",
        "dag": "Airflow DAG",
        "dag_run": "Airflow run",
        "run_type": "Run type",
        "partitions": "Parallel partitions (key ranges)",
        "triggered_by": "Triggered by",
        "code": "Code version",
        "outcome": "Outcome",
        "decision_h": "Approval",
        "decision": "Decision",
        "approved": "approved by {who}",
        "rejected": "rejected or not answered (no answer means rejection)",
        "not_needed": "not needed (within the safety limits)",
        "not_applicable": "not needed (nothing was to be changed)",
        "verification_h": "Verification after the run",
        "verified": "Result",
        "passed": "passed",
        "failed_check": "FAILED",
        "not_verified": "not verified (the run changed nothing, or the check did not run)",
        "remaining_due": "Expired records left without a hold",
        "held_remaining": "Expired records left under a hold",
        "claims_checked": "Deletions in the ledger checked",
        "false_claims": "Deletions in the ledger found untrue",
        "linkable_rows": "Anonymised rows still linkable to a person",
        "small_groups": "Groups smaller than k (k-anonymity)",
        "ledger_h": "Deletion ledger",
        "position": "The run's entries in the ledger",
        "last_hash": "Hash of the run's last entry",
        "head": "The ledger's last entry when this certificate was issued",
        "chain": "Chain check when this certificate was issued",
        "chain_ok": "intact ({n} entries)",
        "chain_broken": "BROKEN at entry {seq}: {problem}",
        "chain_skipped": "not performed",
        "notes_h": "How to read this certificate",
        "note_ledger": "Everything about the run is read from the deletion ledger, a hash-chained"
        " log holding no personal data; the records deleted are counted from its batches.",
        "note_hash": "The hashes let an auditor check that the ledger has not changed since"
        " this certificate was issued.",
    },
}
_NO_VALUE = "–"


@dataclass(frozen=True)
class LedgerState:
    """The chain when the certificate is issued: its head and the result of ``verify()``."""

    head_seq: int
    head_hash: str
    ok: bool | None  # None: not checked
    entries: int = 0
    bad_seq: int | None = None
    problem: str | None = None

    @classmethod
    def of(cls, ledger: EvidenceReader, verify: bool = True) -> LedgerState:
        if not verify:
            seq, digest = ledger.head()
            return cls(seq, digest, None)
        report = ledger.verify()
        return cls(
            report.head_seq, report.head_hash, report.ok, report.entries, report.bad_seq,
            report.problem,
        )  # fmt: skip


def outcome_label(outcome: str | None, lang: Language) -> str:
    """A run outcome in words (an unknown one as it is recorded)."""
    return OUTCOMES[lang].get(outcome or "unfinished", str(outcome))


def check_language(language: str) -> Language:
    if language not in LANGUAGES:
        raise RetentionError(f"language must be one of {', '.join(LANGUAGES)}, not {language!r}")
    return "sv" if language == "sv" else "en"


def local_time(stamp: str | None) -> str:
    """A ledger time stamp in Stockholm time, to the second."""
    if not stamp:
        return _NO_VALUE
    local = pendulum.instance(dt.datetime.fromisoformat(stamp)).in_timezone(TIMEZONE)
    return local.strftime("%Y-%m-%d %H:%M:%S %Z")


def _activity_facts(run: RunRecord, activity: Activity | None, catalogue: Catalogue,
                    lang: Language) -> list[Facts]:  # fmt: skip
    w = _W[lang]
    run_version = str(run.header.get("catalogue_version", _NO_VALUE))
    version = (
        run_version
        if run_version == catalogue.version
        else w["catalogue_changed"].format(run=run_version, now=catalogue.version)
    )
    rules = run.header.get("rules") or []
    if activity is not None and run_version == catalogue.version:
        rules = activity.rule_descriptions(lang)  # the same rules, in the document's language
    items = [Item(w["activity"], activity.name[lang] if activity else run.activity_id)]
    items.append(Item(w["art30"], w["art30_value"].format(id=run.activity_id, version=run_version)))
    if activity is not None:
        bases = "; ".join(BASIS_LABELS[lang][b] for b in activity.legal_bases)
        items.append(Item(w["basis"], bases))
        items.append(Item(w["purpose"], activity.purpose[lang]))
    policy = [Item(w["rule"], "; ".join(str(r) for r in rules) or _NO_VALUE)]
    if activity is not None:
        policy.insert(0, Item(w["policy"], activity.policy_text_sv))
    policy.append(Item(w["catalogue"], version, code=True))
    return [Facts(w["activity_h"], items), Facts(w["policy_h"], policy)]


def _scope(run: RunRecord, catalogue: Catalogue, lang: Language) -> Facts:
    w = _W[lang]
    items = [
        Item(w["system"], run.system, code=True),
        Item(w["dataset"], run.dataset, code=True),
        Item(w["method"], ACTIONS[lang].get(run.action, run.action)),
        Item(w["dry"], w["yes"] if run.header.get("dry_run") else w["no"]),
    ]
    binding = catalogue.bindings.get(f"{run.system}/{run.dataset}")
    if binding is not None and run.header.get("catalogue_version") == catalogue.version:
        items.insert(2, Item(w["location"], binding.location(), code=True))  # as bound then
    if run.linked:
        linked = ", ".join(f"{name}: {n}" for name, n in sorted(run.linked.items()))
        items.insert(2, Item(w["linked"], linked, code=True))
    return Facts(w["scope_h"], items)


def _times(run: RunRecord, lang: Language) -> Facts:
    w = _W[lang]
    cutoffs = [str(c) for c in run.header.get("cutoffs") or [] if c]
    return Facts(w["time_h"], [
        Item(w["as_of"], str(run.header.get("as_of", _NO_VALUE)), code=True),
        Item(w["cutoffs"], ", ".join(cutoffs) or w["none"], code=bool(cutoffs)),
        Item(w["started"], local_time(run.started_at)),
        Item(w["ended"], local_time(run.finished_at)),
    ])  # fmt: skip


def _counts(run: RunRecord, lang: Language) -> Facts:
    w = _W[lang]
    applied = w["applied_anonymise"] if run.action == "anonymise" else w["applied_delete"]
    outcomes = run.batch_outcomes()
    batches = " / ".join(
        str(outcomes.get(k, 0)) for k in ("committed", "partial", "rolled_back", "unresolved")
    )
    items = [
        Item(w["total"], str(run.count("total"))),
        Item(w["expired"], str(run.count("expired"))),
        Item(applied, str(run.applied)),
        Item(w["held"], str(run.count("held"))),
        Item(w["restricted"], str(run.count("restricted"))),
        Item(w["unknown"], str(run.count("anchor_unknown"))),
        Item(w["kept"], str(run.count("kept"))),
        Item(w["out_of_scope"], str(run.count("out_of_scope"))),
        Item(w["batches"], batches),
    ]
    if run.recovered:
        items.append(Item(w["recovered"], str(run.recovered)))
    children = run.counts.get("children") or {}
    if children:
        text = ", ".join(f"{table}: {n}" for table, n in sorted(children.items()))
        items.append(Item(w["children"], text, code=True))
    return Facts(w["counts_h"], items)


def _reasons(run: RunRecord, lang: Language) -> Notes:
    w = _W[lang]
    lines = [
        w[key].format(n=n)
        for key, n in (
            ("reason_held", run.count("held")),
            ("reason_restricted", run.count("restricted")),
            ("reason_unknown", run.count("anchor_unknown")),
            ("reason_subject_unknown", run.count("subject_unknown")),
            ("reason_changed", run.count("changed_meanwhile")),
            ("reason_uploaded", run.count("uploaded_meanwhile")),
            ("reason_gone", run.count("already_gone")),
        )
        if n
    ]
    return Notes(w["reasons_h"], lines)


def _residual(run: RunRecord, controller: Controller, lang: Language) -> Notes:
    w, copies = _W[lang], controller.residual_copies
    changed = run.applied + sum(run.linked.values())
    if not changed:
        return Notes(w["residual_h"], [w["no_residual"]])
    ended = dt.datetime.fromisoformat(run.finished_at or run.started_at)
    lines = []
    for system in sorted({run.system, *(name.split(".")[0] for name in run.linked)}):
        days = copies.days_for(system)
        if days == 0:
            lines.append(w["no_backups"].format(system=system))
            continue
        expiry = (ended + dt.timedelta(days=days)).date().isoformat()
        when = local_time(ended.isoformat())
        lines.append(w["residual"].format(system=system, ended=when, expiry=expiry, days=days))
    return Notes(w["residual_h"], [*lines, copies.statement[lang]])


def _identity(run: RunRecord, lang: Language) -> list[Facts]:
    w = _W[lang]
    origin = run.header.get("origin") or {}
    outcome = outcome_label(run.outcome, lang)
    identity = Facts(w["identity_h"], [
        Item(w["run_id"], run.run_id, code=True),
        Item(w["dag"], str(origin.get("dag_id") or _NO_VALUE), code=True),
        Item(w["dag_run"], str(origin.get("run_id") or _NO_VALUE), code=True),
        Item(w["run_type"], str(origin.get("run_type") or _NO_VALUE), code=True),
        Item(w["partitions"], str(origin.get("partitions") or 1)),
        Item(w["triggered_by"], str(origin.get("triggered_by") or _NO_VALUE), code=True),
        Item(w["code"], str(run.header.get("code_version", _NO_VALUE)), code=True),
        Item(w["outcome"], outcome),
    ])  # fmt: skip
    return [identity, Facts(w["decision_h"], [Item(w["decision"], _decision(run, lang))])]


def _decision(run: RunRecord, lang: Language) -> str:
    w = _W[lang]
    approver = run.header.get("approved_by")
    if approver:
        return w["approved"].format(who=approver)
    if run.outcome == "approval_required":
        return w["rejected"]
    if run.outcome in ("dry_run", "report_only", "nothing_to_do"):
        return w["not_applicable"]
    return w["not_needed"]


def _verification(run: RunRecord, lang: Language) -> Facts:
    w, checked = _W[lang], run.verification
    if checked is None:
        return Facts(w["verification_h"], [Item(w["verified"], w["not_verified"])])
    items = [Item(w["verified"], w["passed"] if checked.get("success") else w["failed_check"])]
    for key in ("remaining_due", "held_remaining", "claims_checked", "false_claims",
                "linkable_rows", "small_groups"):  # fmt: skip
        if key in checked:
            items.append(Item(w[key], str(checked[key])))
    known = {"success", "remaining_due", "held_remaining", "claims_checked", "false_claims",
             "linkable_rows", "small_groups", "rows_in_small_groups"}  # fmt: skip
    extra = [f"{k}={v}" for k, v in sorted(checked.items()) if k not in known
             and isinstance(v, str | int | float | bool)]  # fmt: skip
    if extra:
        items.append(Item("GX", ", ".join(extra), code=True))
    return Facts(w["verification_h"], items)


def _ledger(run: RunRecord, ledger: EvidenceReader, state: LedgerState, lang: Language) -> Facts:
    w = _W[lang]
    if state.ok is None:
        chain = w["chain_skipped"]
    elif state.ok:
        chain = w["chain_ok"].format(n=state.entries)
    else:
        chain = w["chain_broken"].format(seq=state.bad_seq, problem=state.problem)
    return Facts(w["ledger_h"], [
        Item(w["position"], f"{run.first_seq}–{run.last_seq}", code=True),
        Item(w["last_hash"], entry_hash_at(ledger, run.last_seq), code=True),
        Item(w["head"], f"{state.head_seq} {state.head_hash}", code=True),
        Item(w["chain"], chain),
    ])  # fmt: skip


def build_certificate(
    ledger: EvidenceReader,
    run_id: str,
    language: str,
    *,
    catalogue: Catalogue,
    controller: Controller | None = None,
    state: LedgerState | None = None,
    issued_at: dt.datetime | None = None,
) -> Document:
    """The certificate of ledger run ``run_id`` in ``language`` (sv or en)."""
    lang = check_language(language)
    run = read_run(ledger, run_id)
    controller = controller or load_controller()
    state = state or LedgerState.of(ledger)
    activity = catalogue.activities.get(run.activity_id)
    w = _W[lang]
    title = w["title_anonymise"] if run.action == "anonymise" else w["title"]
    issued = (issued_at or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    meta = [
        f"{w['issued'].format(at=local_time(issued), controller=controller.name)} {run.run_id}."
    ]
    blocks: list[Block] = [
        *_activity_facts(run, activity, catalogue, lang),
        _scope(run, catalogue, lang),
        _times(run, lang),
        _counts(run, lang),
        _reasons(run, lang),
        _residual(run, controller, lang),
        *_identity(run, lang),
        _verification(run, lang),
        _ledger(run, ledger, state, lang),
        Notes(w["notes_h"], [w["note_ledger"], w["note_hash"]]),
    ]
    return Document(lang, title, meta, blocks, {"page": w["page"], "none": w["none"]})


def render(document: Document, fmt: str) -> bytes:
    """The document as ``html`` (UTF-8) or ``pdf`` bytes."""
    if fmt == "html":
        return to_html(document).encode("utf-8")
    if fmt == "pdf":
        return to_pdf(document)
    raise RetentionError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def certificate_bytes(
    ledger: EvidenceReader, run_id: str, *, language: str = "en", fmt: str = "html",
    catalogue: Catalogue, controller: Controller | None = None, verify_chain: bool = True,
) -> bytes:  # fmt: skip
    """The certificate, rendered: what the Retention page serves (``fmt`` html or pdf)."""
    state = LedgerState.of(ledger, verify=verify_chain)
    document = build_certificate(
        ledger, run_id, language, catalogue=catalogue, controller=controller, state=state
    )
    return render(document, fmt)
