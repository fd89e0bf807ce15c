"""The policy catalogue: one YAML file per processing activity, validated by these models.

The catalogue is data: ``include/policies/<activity id>.yaml``. :func:`load_catalogue` reads
and validates every file and raises :class:`RetentionError` naming the file, the field and the
problem for anything wrong.
"""

from __future__ import annotations

import hashlib
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from include.retention.errors import RetentionError
from include.retention.masking import MaskStrategy, parse_mask
from include.retention.rules import Rule

POLICY_DIR = Path(__file__).resolve().parent.parent / "policies"
CATALOGUE_ENV = "RETENTION_CATALOGUE_DIR"  # another catalogue folder (tests, staging)
POLICY_TEXT = Path("text") / "integritetspolicy.sv.md"  # the policy, relative to the catalogue
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SLUG = re.compile(r"^[a-z][a-z0-9_]{1,62}$")


def _identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError(
            f"{value!r} is not a safe SQL identifier (letters, digits, underscore; max 63)"
        )
    return value


def _slug(value: str) -> str:
    if not _SLUG.match(value):
        raise ValueError(f"{value!r} is not an id (lower-case letters, digits, underscore)")
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]
Slug = Annotated[str, AfterValidator(_slug)]
Mask = Annotated[MaskStrategy, BeforeValidator(parse_mask)]
Scalar = bool | int | float | str


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LegalBasis(StrEnum):
    """GDPR Art. 6(1) legal bases."""

    consent = "consent"  # (a) samtycke
    contract = "contract"  # (b) avtal
    legal_obligation = "legal_obligation"  # (c) rättslig förpliktelse
    vital_interest = "vital_interest"  # (d)
    public_task = "public_task"  # (e)
    legitimate_interest = "legitimate_interest"  # (f) intresseavvägning


class Localised(_Model):
    """A text in Swedish and English."""

    sv: str = Field(min_length=2)
    en: str = Field(min_length=2)


class Transfer(_Model):
    """A transfer of personal data outside the EU/EEA and its Chapter V safeguard."""

    country: str = Field(min_length=2)
    mechanism: Literal["standard_contractual_clauses", "adequacy_decision"]


class Condition(_Model):
    """Which records a rule case applies to: ``column`` equals a value or is one of several."""

    column: Identifier
    equals: Scalar | None = None
    one_of: list[Scalar] | None = None

    @model_validator(mode="after")
    def _exactly_one_test(self) -> Condition:
        if (self.equals is None) == (self.one_of is None):
            raise ValueError("a condition needs exactly one of 'equals' or 'one_of'")
        return self

    @property
    def values(self) -> list[Scalar]:
        return [self.equals] if self.one_of is None else list(self.one_of)  # type: ignore[list-item]


class RuleCase(_Model):
    """One retention rule, for the records matching ``when`` (all records when omitted).

    A record is due when any enforceable case that applies to it is due; a record that no
    case applies to is out of scope and kept.
    """

    label: str | None = Field(default=None, description="The record class, e.g. customer_case")
    when: Condition | None = None
    rule: Rule
    anchor_column: Identifier | None = Field(
        default=None, description="The column (or object metadata key) holding the anchor"
    )

    def describe(self) -> str:
        scope = self.label or (self.when.column if self.when else None)
        return (f"{scope}: " if scope else "") + self.rule.describe()

    @model_validator(mode="after")
    def _anchor_needed(self) -> RuleCase:
        if self.rule.enforceable and self.anchor_column is None:
            raise ValueError(f"a {self.rule.kind!r} rule needs an 'anchor_column'")
        return self


class DeleteAction(_Model):
    """Delete the record and the child rows the source declares."""

    kind: Literal["delete"] = "delete"


class AnonymiseAction(_Model):
    """Overwrite personal columns in place, keeping the row (e.g. for statistics)."""

    kind: Literal["anonymise"] = "anonymise"
    columns: dict[Identifier, Mask] = Field(min_length=1)
    marker_column: Identifier = Field(
        description="Set to the run time when anonymised; marked rows are never matched again"
    )


class ReportOnlyAction(_Model):
    """Change nothing; count and report (policy gaps, rules kept indefinitely)."""

    kind: Literal["report_only"] = "report_only"


Action = Annotated[DeleteAction | AnonymiseAction | ReportOnlyAction, Field(discriminator="kind")]


class SqlChild(_Model):
    """Rows in another table that belong to a record and go with it (children first)."""

    table: Identifier
    foreign_key: Identifier
    primary_key: Identifier = "id"
    children: list[SqlChild] = Field(default_factory=list)


class ObjectLink(_Model):
    """Files in object storage that a record points to (e.g. a candidate's CV)."""

    column: Identifier = Field(description="The column holding the object key")
    conn_id: str = Field(min_length=1)
    bucket: str = Field(min_length=3)


class SqlSource(_Model):
    """A table in a SQL database reached through an Airflow connection."""

    kind: Literal["sql"] = "sql"
    system: Slug = Field(description="The source system, e.g. ats, crm")
    conn_id: str = Field(min_length=1)
    table: Identifier
    primary_key: Identifier = "id"
    subject_column: Identifier | None = Field(
        default=None, description="Identifies the data subject (e.g. email) for requests and holds"
    )
    anchor_timezone: str = Field(default="UTC", description="Zone of naive timestamps")
    children: list[SqlChild] = Field(default_factory=list)
    objects: list[ObjectLink] = Field(default_factory=list)


class S3Source(_Model):
    """Objects in a bucket; anchors and classes come from object metadata or tags."""

    kind: Literal["s3"] = "s3"
    system: Slug
    conn_id: str = Field(min_length=1)
    bucket: str = Field(min_length=3)
    prefix: str = ""
    subject_key: str | None = Field(default=None, description="Metadata key naming the subject")


Source = Annotated[SqlSource | S3Source, Field(discriminator="kind")]


class Safety(_Model):
    """Volume limits per run; beyond them nothing is deleted until a person approves."""

    max_rows: int | None = Field(default=10_000, ge=1)
    max_fraction: float | None = Field(default=0.25, gt=0, le=1)


class Activity(_Model):
    """One processing activity of the privacy policy and how its retention is enforced."""

    id: Slug
    name: Localised
    purpose: Localised
    legal_bases: list[LegalBasis] = Field(min_length=1)
    data_subjects: list[str] = Field(min_length=1)
    data_categories: list[str] = Field(min_length=1)
    recipients: list[str] = Field(default_factory=list)
    transfers: list[Transfer] = Field(default_factory=list)
    policy_text_sv: str = Field(min_length=3, description="The policy sentence implemented")
    retention: list[RuleCase] = Field(min_length=1)
    action: Action
    source: Source
    schedule: str = Field(default="0 2 * * *", description="Cron, Europe/Stockholm")
    safety: Safety = Field(default_factory=Safety)
    owner: str = "data-engineering"

    @model_validator(mode="after")
    def _consistent(self) -> Activity:
        kinds = {case.rule.kind for case in self.retention}
        if LegalBasis.consent in self.legal_bases and "consent" not in kinds:
            raise ValueError(
                "legal basis 'consent' needs withdrawal handling: add a retention case with"
                " rule kind 'consent' anchored on the withdrawal time"
            )
        if self.enforceable and self.action.kind == "report_only":
            raise ValueError("an enforceable retention rule needs a delete or anonymise action")
        if not self.enforceable and self.action.kind != "report_only":
            raise ValueError("no retention case is enforceable: the action must be report_only")
        return self

    @property
    def enforceable(self) -> bool:
        return any(case.rule.enforceable for case in self.retention)

    @property
    def policy_gap(self) -> bool:
        """The policy states no period for (some of) these records."""
        return any(case.rule.kind == "unspecified" for case in self.retention)

    def rule_descriptions(self) -> list[str]:
        """One line per rule case, e.g. ``"not hired: P2Y after the hiring decision"``."""
        return [case.describe() for case in self.retention]

    def describe_rule(self) -> str:
        return "; ".join(self.rule_descriptions())


class Catalogue(_Model):
    """Every activity, by id, and a version hash of the files they came from."""

    activities: dict[str, Activity]
    version: str

    def __getitem__(self, activity_id: str) -> Activity:
        try:
            return self.activities[activity_id]
        except KeyError:
            raise RetentionError(
                f"no activity {activity_id!r} in the catalogue; known: {sorted(self.activities)}"
            ) from None

    def __iter__(self) -> Any:
        return iter(self.activities.values())

    def __len__(self) -> int:
        return len(self.activities)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{field}: {item['msg']}")
    return "; ".join(lines)


# libyaml's safe loader when available: the same documents, ~10x faster (every task parses
# the DAG file, so every task reads the catalogue).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_activity(path: Path) -> Activity:
    """Read and validate one catalogue file."""
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise RetentionError(f"{path.name}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RetentionError(f"{path.name}: expected a mapping of fields at the top level")
    try:
        activity = Activity.model_validate(raw)
    except ValidationError as exc:
        raise RetentionError(f"{path.name}: {_describe(exc)}") from None
    return activity


def load_catalogue(directory: Path | None = None) -> Catalogue:
    """Read, validate and version every ``*.yaml``/``*.yml`` file in ``directory`` (default:
    ``$RETENTION_CATALOGUE_DIR``, else ``include/policies``).

    The version hashes the files and the policy text they implement (``text/`` beside them),
    so an edit of either is a new catalogue version in the ledger."""
    directory = directory or Path(os.environ.get(CATALOGUE_ENV) or POLICY_DIR)
    paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not paths:
        raise RetentionError(f"{directory}: no catalogue files (*.yaml) found")
    digest = hashlib.sha256()
    activities: dict[str, Activity] = {}
    errors = []
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        try:
            activity = load_activity(path)
        except RetentionError as exc:
            errors.append(str(exc))
            continue
        if activity.id in activities:
            errors.append(f"{path.name}: id: duplicate id {activity.id!r} (defined twice)")
        elif path.stem != activity.id:
            errors.append(f"{path.name}: id: {activity.id!r} must match the file name")
        activities[activity.id] = activity
    policy_text = directory / POLICY_TEXT
    if policy_text.is_file():
        digest.update(b"policy-text\0" + policy_text.read_bytes())
    else:
        errors.append(f"{POLICY_TEXT}: the policy text the catalogue implements is missing")
    if errors:
        raise RetentionError("invalid catalogue:\n  " + "\n  ".join(errors))
    return Catalogue(activities=activities, version=digest.hexdigest()[:16])
