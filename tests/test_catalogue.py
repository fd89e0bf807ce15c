"""The catalogue covers every activity of activities.md and rejects bad input clearly."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from include.retention.catalogue import POLICY_DIR, load_catalogue
from include.retention.errors import RetentionError
from include.retention.register import build_register, write_register

ROOT = Path(__file__).resolve().parent.parent
ACTIVITIES_MD = POLICY_DIR / "text" / "activities.md"  # the repository's copy of the policy reading
BASES = ("consent", "contract", "legal_obligation", "legitimate_interest")
NUMBERS = {"one": 1, "two": 2, "three": 3, "six": 6, "seven": 7, "twelve": 12}
UNITS = {"year": "Y", "month": "M", "day": "D"}


def _policy_rows() -> dict[str, dict[str, str]]:
    if not ACTIVITIES_MD.exists():
        pytest.fail(
            f"{ACTIVITIES_MD} is missing: the catalogue must keep its copy of the policy"
        )
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
    }
    traits |= {trait for trait, pattern in checks.items() if re.search(pattern, text)}
    return traits


def _catalogue_rule_traits(activity) -> set[str]:
    traits = set()
    for case in activity.retention:
        rule = case.rule
        traits.add(f"{rule.period}" if rule.kind == "period" else rule.kind)
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


def _write_catalogue(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((POLICY_DIR / "newsletter.yaml").read_text(encoding="utf-8"))
    mutate(raw)
    (tmp_path / f"{raw.get('id', 'newsletter')}.yaml").write_text(
        yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8"
    )
    shutil.copytree(POLICY_DIR / "text", tmp_path / "text", dirs_exist_ok=True)
    return tmp_path


def test_policy_text_is_part_of_the_catalogue_version(tmp_path):
    folder = _write_catalogue(tmp_path, lambda raw: None)
    before = load_catalogue(folder).version
    assert load_catalogue(folder).version == before  # stable for the same files
    text = folder / "text" / "integritetspolicy.sv.md"
    text.write_text(text.read_text(encoding="utf-8") + "\nÄndrad mening.\n", encoding="utf-8")
    assert load_catalogue(folder).version != before


def test_catalogue_without_its_policy_text_is_rejected(tmp_path):
    folder = _write_catalogue(tmp_path, lambda raw: None)
    (folder / "text" / "integritetspolicy.sv.md").unlink()
    with pytest.raises(RetentionError, match=r"sv.md: the policy text .* is missing"):
        load_catalogue(folder)


def _set(path: str, value):
    def mutate(raw):
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value

    return mutate


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
    "unsafe identifier": (
        _set("source.table", "recipients; drop table x"),
        "source.sql.table",
        "safe SQL identifier",
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
        f"art30_register.{lang}.{fmt}" for lang in ("sv", "en") for fmt in ("md", "html", "csv")
    )
    for path in files:
        text = path.read_text(encoding="utf-8")
        for activity in catalogue:
            assert activity.id in text
    swedish = (tmp_path / "art30_register.sv.md").read_text(encoding="utf-8")
    assert "Rekryteringsprocess" in swedish and "Intresseavvägning (art. 6.1 f)" in swedish
    assert "Vid ej tillsättning raderas personuppgifter efter två år." in swedish
    english_csv = (tmp_path / "art30_register.en.csv").read_text(encoding="utf-8").splitlines()
    assert len(english_csv) == 28  # header + one row per activity


def test_register_lists_exactly_the_policy_gaps():
    register = build_register(load_catalogue(), "en")
    listed = {gap.split(" ")[0] for gap in register.gaps}
    assert listed == {i for i, row in POLICY.items() if "unspecified" in row["rule"]}
