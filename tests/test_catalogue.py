"""The catalogue covers every activity of activities.md and rejects bad input clearly."""

from __future__ import annotations

import html
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from include.retention.catalogue import (
    POLICY_DIR,
    SYSTEMS,
    Catalogue,
    LookupColumn,
    load_catalogue,
    load_valid,
)
from include.retention.errors import RetentionError
from include.retention.holds import Binding, bindings_of, subject_columns_of
from include.retention.operations import Runtime
from include.retention.register import build_register, write_register
from include.retention.runs import Control

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS_DIR = POLICY_DIR / SYSTEMS
ACTIVITIES_MD = POLICY_DIR / "text" / "activities.md"  # the repository's copy of the policy reading
BASES = ("consent", "contract", "legal_obligation", "legitimate_interest")
NUMBERS = {"one": 1, "two": 2, "three": 3, "six": 6, "seven": 7, "twelve": 12}
UNITS = {"year": "Y", "month": "M", "day": "D"}


def _policy_rows() -> dict[str, dict[str, str]]:
    if not ACTIVITIES_MD.exists():
        pytest.fail(f"{ACTIVITIES_MD} is missing: the catalogue must keep its copy of the policy")
    rows = {}
    for line in ACTIVITIES_MD.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 8 and re.fullmatch(r"[a-z_]+", cells[0]) and cells[0] != "id":
            rows[cells[0]] = {"bases": cells[3], "rule": cells[6]}
    return rows


POLICY = _policy_rows()


def _expected_rule_traits(text: str) -> set[str]:
    traits = set()
    for number, unit in re.findall(r"\b(\d+|one|two|three|six|twelve) (year|month|day)s?\b", text):
        traits.add(f"P{NUMBERS.get(number, number)}{UNITS[unit]}")
    checks = {
        "fiscal_year": r"fiscal",
        "unspecified": r"unspecified",
        "indefinite": r"indefinitely",
        "consent": r"consent",
        "event": r"immediately when|purged at once|at contract termination",
        "deadline": r"no later than",
    }
    traits |= {trait for trait, pattern in checks.items() if re.search(pattern, text)}
    return traits


def _catalogue_rule_traits(activity) -> set[str]:
    traits = set()
    for case in activity.retention:
        rule = case.rule
        traits.add(f"{rule.period}" if rule.kind in ("period", "deadline") else rule.kind)
        if rule.kind == "deadline":
            traits.add("deadline")
    return traits


def test_activities_md_is_read():
    assert len(POLICY) == 27


def test_every_activity_is_catalogued_and_nothing_else():
    assert {a.id for a in load_catalogue()} == set(POLICY)


@pytest.mark.parametrize("activity_id", sorted(POLICY))
def test_legal_bases_match_the_policy_reading(activity_id):
    expected = {basis for basis in BASES if basis in POLICY[activity_id]["bases"]}
    assert {b.value for b in load_catalogue()[activity_id].legal_bases} == expected


@pytest.mark.parametrize("activity_id", sorted(POLICY))
def test_rule_matches_the_policy_reading(activity_id):
    expected = _expected_rule_traits(POLICY[activity_id]["rule"])
    assert _catalogue_rule_traits(load_catalogue()[activity_id]) == expected


def test_policy_gaps_are_report_only_or_partial():
    catalogue = load_catalogue()
    gaps = {a.id for a in catalogue if a.policy_gap}
    assert gaps == {i for i, row in POLICY.items() if "unspecified" in row["rule"]}
    for activity in catalogue:
        if not activity.enforceable:
            assert activity.action.kind == "report_only"


# --- malformed catalogues: each gets an error naming the file, the field and the problem ---


def _write_catalogue(tmp_path: Path, mutate, mutate_system=lambda raw: None) -> Path:
    """The newsletter activity (changed by ``mutate``), its system file (by ``mutate_system``)
    and the policy text."""
    raw = yaml.safe_load((POLICY_DIR / "newsletter.yaml").read_text(encoding="utf-8"))
    mutate(raw)
    _dump(raw, tmp_path / f"{raw.get('id', 'newsletter')}.yaml")
    system = yaml.safe_load((SYSTEMS_DIR / "newsletter.yaml").read_text(encoding="utf-8"))
    mutate_system(system)
    _dump(system, tmp_path / "systems" / "newsletter.yaml")
    shutil.copytree(POLICY_DIR / "text", tmp_path / "text", dirs_exist_ok=True)
    return tmp_path


def _dump(raw, path: Path) -> None:
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")


def test_policy_text_is_part_of_the_catalogue_version(tmp_path):
    folder = _write_catalogue(tmp_path, lambda raw: None)
    before = load_catalogue(folder).version
    assert load_catalogue(folder).version == before  # stable for the same files
    text = folder / "text" / "integritetspolicy.sv.md"
    text.write_text(text.read_text(encoding="utf-8") + "\nÄndrad mening.\n", encoding="utf-8")
    assert load_catalogue(folder).version != before


def test_removing_the_policy_text_changes_the_version(tmp_path):
    folder = _write_catalogue(tmp_path, lambda raw: None)
    before = load_catalogue(folder).version
    (folder / "text" / "integritetspolicy.sv.md").unlink()
    assert load_catalogue(folder).version != before


def _set(path: str, value):
    def mutate(raw):
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value

    return mutate


def _anonymise(columns: dict, direct: list[str] | None = None) -> dict:
    return {
        "kind": "anonymise",
        "marker_column": "anonymised_at",
        "direct_identifiers": direct or ["email"],
        "quasi_identifiers": ["city"],
        "k_anonymity": 5,
        "columns": columns,
    }


BAD_CASES = {
    "unknown rule kind": (_set("retention.0.rule.kind", "forever"), "retention.0.rule", "forever"),
    "malformed period": (
        _set("retention.0.rule.period", "P6X"),
        "retention.0.rule.period.period",
        "ISO-8601 period",
    ),
    "missing legal basis": (_set("legal_bases", []), "legal_bases", "at least 1"),
    "unknown legal basis": (_set("legal_bases", ["because"]), "legal_bases.0", "consent"),
    "no withdrawal handling": (
        lambda raw: raw["retention"].pop(1),
        "(top level)",
        "withdrawal handling",
    ),
    "unknown field": (
        _set("retension_days", 30),
        "retension_days",
        "Extra inputs are not permitted",
    ),
    "unknown masking strategy": (
        _set(
            "action",
            {
                "kind": "anonymise",
                "marker_column": "m",
                "columns": {"email": {"strategy": "rot13"}},
            },
        ),
        "action.anonymise.columns.email",
        "unknown masking strategy",
    ),
    "pseudonymising anonymise (the removed keyed strategy)": (
        _set("action", _anonymise({"email": {"strategy": "hmac"}})),
        "action.anonymise.columns.email",
        "unknown masking strategy 'hmac'",
    ),
    "generalised direct identifier": (
        _set("action", _anonymise({"email": {"strategy": "year"}})),
        "action.anonymise",
        "direct identifier 'email' has strategy 'year'",
    ),
    "undeclared masked column": (
        _set("action", _anonymise({"email": {"strategy": "null"}, "zip": {"strategy": "null"}})),
        "action.anonymise",
        "'zip' is masked but not declared",
    ),
    "lookup column kept by anonymisation": (
        _set("action", _anonymise({"name": {"strategy": "null"}}, direct=["name"])),
        "(top level)",
        "lookup column 'email' (email) must be a direct identifier",
    ),
    "a binding written in the activity": (
        _set("source", {"kind": "sql", "system": "newsletter", "table": "recipients"}),
        "source",
        "dict is not a reference 'system/dataset' to a dataset of systems/<system>.yaml",
    ),
    "a reference without a dataset": (
        _set("source", "newsletter"),
        "source",
        "'newsletter' is not a reference 'system/dataset'",
    ),
    "a reference to an unknown dataset": (
        _set("source", "newsletter/subscribers"),
        "source",
        "'newsletter/subscribers' is not a bound dataset (it binds ['newsletter/recipients'])",
    ),
    "a reference to an unknown system": (
        _set("source", "mailchimp/recipients"),
        "source",
        "'mailchimp/recipients' is not a bound dataset (no such system; known: ['newsletter'])",
    ),
    "processor without the controller's name in Swedish": (
        _set("processor_for", {"en": "the employer"}),
        "processor_for.sv",
        "Field required",
    ),
    "schedule cannot meet a deadline": (
        _set("schedule", "0 2 1 * *"),
        "retention.1.rule.consent",
        "cannot meet the deadline",
    ),
    "malformed schedule": (_set("schedule", "nightly"), "schedule", "not a cron expression"),
    "label without Swedish": (
        lambda raw: raw["retention"][0].pop("label_sv"),
        "retention.0",
        "'label_sv'",
    ),
    "English-only rule text": (
        _set("retention.0.rule.anchor", "the send-out"),
        "retention.0.rule.period.anchor",
        "valid dictionary",
    ),
    "enforceable rule without action": (
        _set("action", {"kind": "report_only"}),
        "(top level)",
        "needs a delete",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_catalogue_gets_a_clear_error(tmp_path, case):
    mutate, field, problem = BAD_CASES[case]
    folder = _write_catalogue(tmp_path, mutate)
    with pytest.raises(RetentionError) as error:
        load_catalogue(folder)
    message = str(error.value)
    assert "newsletter.yaml" in message
    assert field in message
    assert problem in message


def _dataset(field: str, value):
    """Set ``field`` of the dataset ``recipients`` in systems/newsletter.yaml."""

    def mutate(raw):
        raw["datasets"]["recipients"][field] = value

    return mutate


def _rename_dataset(raw):
    raw["datasets"]["recipients; drop table x"] = raw["datasets"].pop("recipients")


BINDING = "systems/newsletter.yaml"
# name -> (change of the system file, the file refused, the field, the problem)
BAD_BINDINGS = {
    "unsafe table name": (
        _rename_dataset,
        BINDING,
        "datasets.recipients; drop table x.sql.table",
        "not a safe SQL identifier",
    ),
    "lookup of an unknown identifier kind": (
        _dataset("lookup", {"email": "email", "passport": "passport_no"}),
        BINDING,
        "datasets.recipients.sql.lookup.passport",
        "'email', 'phone', 'personnummer' or 'customer_id'",
    ),
    "lookup column that is no identifier": (
        _dataset("lookup", {"phone": "Mobile"}),
        BINDING,
        "datasets.recipients.sql.lookup.phone",
        "not a safe SQL identifier",
    ),
    "one column for two kinds": (
        _dataset("lookup", {"email": "email", "customer_id": "email"}),
        BINDING,
        "datasets.recipients.sql",
        "['email'] are declared for more than one kind",
    ),
    "the old subject_column": (
        _dataset("subject_column", "email"),
        BINDING,
        "datasets.recipients.sql.subject_column",
        "Extra inputs are not permitted",
    ),
    "no lookup column (refused for the activity)": (
        _dataset("lookup", {}),
        "newsletter.yaml",
        "(top level)",
        "source.lookup: name at least one column holding an identifier of the person",
    ),
    "connection repeated on a dataset": (
        _dataset("conn_id", "retention_other"),
        BINDING,
        "(top level)",
        "datasets.recipients: conn_id set on the dataset; the system gives kind, system,"
        " conn_id and the dataset's name is its table",
    ),
    "table repeated on a dataset": (
        _dataset("table", "recipients"),
        BINDING,
        "(top level)",
        "datasets.recipients: table set on the dataset",
    ),
    "unknown source kind": (
        _set("kind", "ftp"),
        BINDING,
        "(top level)",
        "kind: 'ftp' is not a source kind (one of ['http', 's3', 'sql'])",
    ),
    "system name differs from the file name": (
        _set("system", "mailer"),
        BINDING,
        "system",
        "'mailer' must match the file name",
    ),
    "system that is no id": (_set("system", "News letter"), BINDING, "system", "is not an id"),
    "connection id with a space": (
        _set("conn_id", "retention newsletter"),
        BINDING,
        "conn_id",
        "not a connection id",
    ),
    "no datasets": (_set("datasets", {}), BINDING, "datasets", "at least 1 item"),
    "a list of datasets": (
        _set("datasets", ["recipients"]),
        BINDING,
        "datasets",
        "valid dictionary",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BINDINGS))
def test_bad_binding_gets_a_clear_error_and_costs_its_activity(tmp_path, case):
    mutate, refused, field, problem = BAD_BINDINGS[case]
    folder = _write_catalogue(tmp_path, lambda raw: None, mutate)
    catalogue, errors = load_valid(folder)
    assert catalogue.activities == {}  # the newsletter activity is not built
    assert errors[refused].startswith(f"{refused}: {field}"), errors[refused]
    assert problem in errors[refused]
    if refused == BINDING:
        assert errors["newsletter.yaml"] == (
            "newsletter.yaml: source: 'newsletter/recipients': systems/newsletter.yaml is"
            " invalid (see its error)"
        )
    assert set(errors) <= {BINDING, "newsletter.yaml"}


@pytest.mark.parametrize(
    ("field", "value", "reached"),
    [
        ("children", [{"table": "sends", "foreign_key": "recipient_id"}], "child table 'sends'"),
        ("objects", [{"column": "cv_key", "conn_id": "retention_s3", "bucket": "cvs"}],
         "linked files (column 'cv_key')"),
    ],
)  # fmt: skip
def test_anonymise_is_refused_where_it_would_leave_linked_personal_data(
    tmp_path, field, value, reached
):
    """Anonymising changes the row alone: child rows and linked files would stay, linked to
    it (and the files crashed the run)."""
    anonymise = _set("action", _anonymise({"email": {"strategy": "null"}}))
    folder = _write_catalogue(tmp_path, anonymise, _dataset(field, value))
    catalogue, errors = load_valid(folder)
    assert catalogue.activities == {}
    assert errors == {
        "newsletter.yaml": f"newsletter.yaml: (top level): Value error, anonymise does not"
        f" reach {reached} of 'recipients': the personal data there would stay linked to the"
        " anonymised row. Bind a dataset without children and objects for this activity, or"
        " delete them with a rule of their own"
    }
    assert load_valid(_write_catalogue(tmp_path / "ok", anonymise))[1] == {}


def test_duplicate_id_is_rejected(tmp_path):
    folder = _write_catalogue(tmp_path, lambda raw: None)
    (folder / "newsletter_copy.yaml").write_text(
        (folder / "newsletter.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    with pytest.raises(
        RetentionError, match=r"newsletter_copy.yaml: id: duplicate id 'newsletter'"
    ):
        load_catalogue(folder)


def test_id_must_match_file_name(tmp_path):
    folder = _write_catalogue(tmp_path, lambda raw: None)
    (folder / "newsletter.yaml").rename(folder / "mailing.yaml")
    with pytest.raises(
        RetentionError, match=r"mailing.yaml: id: 'newsletter' must match the file name"
    ):
        load_catalogue(folder)


def test_an_activity_gets_the_binding_it_refers_to(tmp_path):
    folder = _write_catalogue(tmp_path, lambda raw: None)
    catalogue = load_catalogue(folder)
    source = catalogue["newsletter"].source
    assert source is catalogue.bindings["newsletter/recipients"]
    # the system's facts and the dataset's name, as systems/newsletter.yaml states them
    assert (source.kind, source.system, source.conn_id) == (
        "sql",
        "newsletter",
        "retention_newsletter",
    )
    assert (source.table, source.primary_key, source.lookup) == (
        "recipients",
        "id",
        {"email": "email"},
    )
    assert source.reference == "newsletter/recipients"


def test_every_product_activity_refers_to_a_binding_of_a_system_file():
    catalogue = load_catalogue()
    files = {p.stem for p in SYSTEMS_DIR.glob("*.yaml")}
    assert {a.source.system for a in catalogue} == files  # no system file without activity
    for activity in catalogue:
        raw = yaml.safe_load((POLICY_DIR / f"{activity.id}.yaml").read_text(encoding="utf-8"))
        assert raw["source"] == activity.source.reference
        assert catalogue.bindings[raw["source"]] is activity.source


def _add_dataset(raw):
    raw["datasets"]["unsubscribed"] = {"lookup": {"email": "address"}}


def test_a_dataset_no_activity_refers_to_is_bound(tmp_path):
    folder = _write_catalogue(tmp_path, lambda raw: None, _add_dataset)
    catalogue = load_catalogue(folder)
    assert sorted(catalogue.bindings) == ["newsletter/recipients", "newsletter/unsubscribed"]
    extra = catalogue.bindings["newsletter/unsubscribed"]
    assert (extra.table, extra.conn_id, extra.lookup) == (
        "unsubscribed",
        "retention_newsletter",
        {"email": "address"},
    )
    assert list(catalogue.activities) == ["newsletter"]
    assert catalogue.unreferenced() == [extra]
    # holds see it: a record hold may name it, a subject hold records its lookup column
    assert bindings_of(catalogue)[("newsletter", "unsubscribed")] == {
        Binding(("id",), (LookupColumn("email", "address"),))
    }
    assert subject_columns_of(catalogue)["newsletter/unsubscribed"] == ["email:address"]


def test_a_changed_or_added_binding_is_a_new_catalogue_version(tmp_path):
    folder = _write_catalogue(tmp_path, lambda raw: None)
    before = load_catalogue(folder).version
    assert load_catalogue(folder).version == before
    _write_catalogue(tmp_path, lambda raw: None, _dataset("primary_key", "recipient_id"))
    changed = load_catalogue(folder).version
    _write_catalogue(tmp_path, lambda raw: None, _add_dataset)
    added = load_catalogue(folder).version
    assert len({before, changed, added}) == 3


def test_a_dataset_bound_twice_in_one_file_is_refused(tmp_path):
    folder = _write_catalogue(tmp_path, lambda raw: None)
    text = (SYSTEMS_DIR / "newsletter.yaml").read_text(encoding="utf-8")  # datasets: last
    assert text.endswith("datasets:\n  recipients:\n    primary_key: id\n    lookup:\n"
                         "      email: email\n    anchor_timezone: UTC\n")  # fmt: skip
    (folder / BINDING).write_text(
        text + "  recipients:\n    lookup:\n      email: email\n", encoding="utf-8"
    )
    catalogue, errors = load_valid(folder)
    assert "duplicate key 'recipients'" in errors[BINDING]
    assert errors[BINDING].startswith(f"{BINDING}: not valid YAML")
    assert "newsletter.yaml" in errors and not catalogue.activities


def test_a_system_in_two_files_is_refused(tmp_path):
    folder = _write_catalogue(tmp_path, lambda raw: None)
    shutil.copy(folder / "systems" / "newsletter.yaml", folder / "systems" / "newsletter.yml")
    catalogue, errors = load_valid(folder)
    assert errors == {
        "systems/newsletter.yml": "systems/newsletter.yml: system: duplicate system"
        " 'newsletter' (defined twice)"
    }
    assert list(catalogue.activities) == ["newsletter"]  # the first file's binding


def test_a_run_refuses_the_activity_of_an_invalid_system_file_only(tmp_path):
    folder = _write_catalogue(tmp_path, lambda raw: None, _set("conn_id", "bad id"))
    refused = r"newsletter\.yaml: source: 'newsletter/recipients': systems/newsletter\.yaml is"
    with pytest.raises(RetentionError, match=f"invalid catalogue file {refused} invalid"):
        Runtime(*load_valid(folder)).activity("newsletter")
    # an invalid system file named like an activity bound elsewhere does not stop that one
    _write_catalogue(tmp_path, lambda raw: None)
    shutil.copy(folder / BINDING, folder / "systems" / "newsletter.yml")  # a duplicate system
    control = Control.open(f"sqlite:///{tmp_path / 'control.db'}", secrets.token_bytes(32))
    runtime = Runtime(*load_valid(folder), given_control=control)
    assert list(runtime.invalid) == ["systems/newsletter.yml"]
    assert runtime.activity("newsletter") is runtime.catalogue["newsletter"]


def test_activities_given_in_code_bind_their_sources(tmp_path):
    newsletter = load_catalogue(_write_catalogue(tmp_path, lambda raw: None))["newsletter"]
    catalogue = Catalogue(activities={"newsletter": newsletter}, version="code")
    assert catalogue.bindings == {"newsletter/recipients": newsletter.source}
    other = newsletter.model_copy(
        update={"id": "other", "source": newsletter.source.model_copy(update={"primary_key": "no"})}
    )
    both = Catalogue(activities={"newsletter": newsletter, "other": other}, version="code")
    assert both.bindings == {"newsletter/recipients": newsletter.source}  # the first
    # holds see both: a record hold on the dataset is refused until they agree
    assert {b.key_columns for b in bindings_of(both)[("newsletter", "recipients")]} == {
        ("id",),
        ("no",),
    }


def test_invalid_yaml_is_named(tmp_path):
    (tmp_path / "broken.yaml").write_text("id: [unclosed", encoding="utf-8")
    with pytest.raises(RetentionError, match=r"broken\.yaml: not valid YAML"):
        load_catalogue(tmp_path)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "include.retention", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )


def test_cli_validates_the_real_catalogue():
    result = _cli("validate")
    assert result.returncode == 0, result.stderr
    assert "27 activities valid" in result.stdout
    assert "bound datasets: 27; no activity refers to: none" in result.stdout


def test_cli_exits_non_zero_on_a_bad_catalogue(tmp_path):
    _write_catalogue(tmp_path, BAD_CASES["malformed period"][0])
    result = _cli("--catalogue", str(tmp_path), "validate")
    assert result.returncode == 2
    assert "newsletter.yaml: retention.0.rule.period.period" in result.stderr
    assert "P6X" in result.stderr


def test_register_in_both_languages_and_all_formats(tmp_path):
    catalogue = load_catalogue()
    files = write_register(catalogue, tmp_path)
    assert sorted(p.name for p in files) == sorted(
        f"art30_register.{lang}.{fmt}"
        for lang in ("sv", "en")
        for fmt in ("md", "html", "csv", "pdf")
    )
    for path in files:
        if path.suffix == ".pdf":
            continue
        text = path.read_text(encoding="utf-8")
        for activity in catalogue:
            assert activity.id in text
    swedish = (tmp_path / "art30_register.sv.md").read_text(encoding="utf-8")
    assert "Rekryteringsprocess" in swedish and "Intresseavvägning (art. 6.1 f)" in swedish
    assert "Vid ej tillsättning raderas personuppgifter efter två år." in swedish
    english_csv = (tmp_path / "art30_register.en.csv").read_text(encoding="utf-8").splitlines()
    assert len(english_csv) == 28  # header + one row per activity


@pytest.mark.parametrize("language", ["sv", "en"])
def test_register_names_the_controller_and_the_security_measures(tmp_path, language):
    text = _rendered(tmp_path, language, "md")
    for fact in ("Assessio Sverige AB", "support@assessio.se", "dataskydd@assessio.se"):
        assert fact in text
    heading = {"sv": "art. 30.1 g", "en": "Art. 30(1)(g)"}[language]
    measures = text.split(heading, 1)[1]
    assert measures.count("\n- ") >= 5
    controller = {"sv": "Personuppgiftsansvarig (art. 30.1 a)", "en": "Controller (Art. 30(1)(a))"}
    assert controller[language] in text


def _rendered(tmp_path: Path, language: str, suffix: str) -> str:
    path = tmp_path / f"art30_register.{language}.{suffix}"
    if not path.exists():
        write_register(load_catalogue(), tmp_path)
    return path.read_text(encoding="utf-8")


# Removed before reading words, in order: CSS, code, tags, identifiers (ids, e-mail, paths).
_NOT_PROSE = [
    re.compile(p, re.S)
    for p in (r"<style>.*?</style>", r"<code>.*?</code>", r"<[^>]+>", r"`[^`]*`", r"\S*[_@/.]\S*\w")
]
_WORD = re.compile(r"[A-Za-zÅÄÖåäöÉé]{3,}")
# Names the Swedish version keeps as they are: products, companies, acronyms, the time zone.
_NAMES = {"Assessio", "Sverige", "IMY", "LinkedIn", "YouTube", "MBTI", "USA", "Europe", "Stockholm"}
# Swedish words spelt like English ones.
_SWEDISH_TOO = {"register", "per", "standard", "video"}


def _words(text: str) -> set[str]:
    for pattern in _NOT_PROSE:
        text = pattern.sub(" ", text)
    text = html.unescape(text)
    return set(_WORD.findall(text))


def test_no_english_leaks_into_the_swedish_register(tmp_path):
    """Every word of the Swedish record that also occurs in the English one must be a word the
    Swedish policy itself uses (e.g. "leads", "Customer success") or a name."""
    policy = _words((POLICY_DIR / "text" / "integritetspolicy.sv.md").read_text(encoding="utf-8"))
    ids = {activity.id for activity in load_catalogue()}  # stable technical identifiers
    allowed = {w.lower() for w in policy | _NAMES | _SWEDISH_TOO | ids}
    for suffix in ("md", "html", "csv"):
        swedish = _words(_rendered(tmp_path, "sv", suffix))
        english = _words(_rendered(tmp_path, "en", suffix))
        leaked = {w for w in swedish & english if w.lower() not in allowed}
        assert leaked == set(), f"English in art30_register.sv.{suffix}: {sorted(leaked)}"
    assert "P2Y" not in _rendered(tmp_path, "sv", "md")
    for raw in ("delete", "report_only", "legitimate_interest", "anonymise"):
        assert raw not in _words(_rendered(tmp_path, "sv", "md"))


def test_the_english_register_is_english(tmp_path):
    english = _rendered(tmp_path, "en", "md")
    assert "2 years after the customer's contract was terminated" in english
    assert "Art. 6(1)(f) legitimate interest" in english
    assert "Behandlingar" not in english and "Ändamål" not in english


def test_the_register_pdf_is_a_document(tmp_path):
    import zlib

    pdf = (write_register(load_catalogue(), tmp_path), tmp_path / "art30_register.sv.pdf")[1]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type\s*/Page\b", data)) >= 10
    # fpdf2 ends lines with \n; a compressed stream may itself end in \r: keep that byte
    streams = re.findall(rb"stream\n(.*?)\nendstream", data, re.S)
    text = b"".join(zlib.decompress(s) for s in streams if s[:1] == b"x").decode("latin-1")
    assert "Assessio Sverige AB" in text and "Nykundsbearbetning" in text
    assert "dataskydd@assessio.se" in text


@pytest.mark.parametrize("suffix", ["html"])
def test_the_register_html_is_styled_for_print(tmp_path, suffix):
    page = _rendered(tmp_path, "sv", suffix)
    assert '<html lang="sv">' in page and "@page" in page and "size: A4" in page
    assert "table-layout: fixed" in page and "overflow-wrap: anywhere" in page
    # one two-column table per activity: no wide table runs off the page
    assert max(row.count("<td>") for row in page.split("<tr>")) == 1


def test_each_assumption_is_in_the_register(tmp_path):
    catalogue = load_catalogue()
    assumptions = [(a, x) for a in catalogue for x in a.assumptions]
    names = {x.name for _, x in assumptions}
    assert {"fiscal_year_end_month", "never_active_users", "declined_without_date"} <= names
    for language in ("sv", "en"):
        text = _rendered(tmp_path, language, "md")
        section = text.split(
            {"sv": "Antaganden att bekräfta", "en": "Assumptions to confirm"}[language]
        )[-1]
        for activity, assumption in assumptions:
            assert assumption.statement[language] in section
            assert assumption.reason[language] in section
            assert activity.id in section


def test_register_lists_exactly_the_policy_gaps():
    register = build_register(load_catalogue(), "en")
    listed = {gap.split(" ")[0] for gap in register.gaps}
    assert listed == {i for i, row in POLICY.items() if "unspecified" in row["rule"]}


def test_lookup_columns_and_the_processor_role_are_read_from_the_catalogue():
    catalogue = load_catalogue()
    recruitment = catalogue["recruitment"].source
    assert recruitment.lookup_columns() == (
        ("email", "email"), ("phone", "phone"), ("personnummer", "personnummer"),
    )  # fmt: skip
    assert [k.lookup for k in recruitment.hold_keys()][1] == ()  # the CV files: by record
    assert catalogue["answering_service"].source.lookup == {"phone": "caller_phone"}
    processors = {a.id: a.processor_for.en for a in catalogue if a.processor_for}
    assert processors == {"booking_system": "the recruiting employer (Assessio's customer in"
                                            " the recruitment)"}  # fmt: skip
    assert catalogue["booking_system"].role == "processor"
    assert catalogue["crm"].role == "controller"


def test_the_register_names_the_controller_a_processor_activity_is_run_for(tmp_path):
    write_register(load_catalogue(), tmp_path)
    text = (tmp_path / "art30_register.sv.md").read_text(encoding="utf-8")
    booking = text.split("Inbokningssystem", 1)[1].split("\n## ", 1)[0]
    assert "Personuppgiftsbiträde åt (art. 30.2" in booking
    assert "den rekryterande arbetsgivaren (Assessios kund i rekryteringen)" in booking
    assert text.count("Personuppgiftsbiträde åt (art. 30.2") == 1
