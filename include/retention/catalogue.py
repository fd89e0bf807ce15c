"""The policy catalogue: one YAML file per processing activity and one per source system,
validated by these models.

The catalogue is data: ``include/policies/<activity id>.yaml`` (the Art. 30 facts, retention,
action and a reference ``system/dataset`` to its source) and
``include/policies/systems/<system>.yaml`` (the system's kind and connection, and the datasets
bound in it: tables, buckets or collections with their keys, lookup columns, child tables and
linked files). :func:`load_catalogue` reads and validates every file, resolves each activity's
reference to its binding (``Activity.source``) and raises :class:`RetentionError` naming the
file, the field and the problem for anything wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, get_args

import pendulum
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from include.retention.errors import RetentionError
from include.retention.identifiers import KINDS as IDENTIFIER_KINDS
from include.retention.masking import MaskStrategy, parse_mask
from include.retention.rules import DEADLINE_KINDS, DEFAULT_SCHEDULE, Rule, check_schedule
from include.retention.texts import Language, Localised

POLICY_DIR = Path(__file__).resolve().parent.parent / "policies"
CATALOGUE_ENV = "RETENTION_CATALOGUE_DIR"  # another catalogue folder (tests, staging)
POLICY_TEXT = Path("text") / "integritetspolicy.sv.md"  # the policy, relative to the catalogue
SYSTEMS = "systems"  # the system files (dataset bindings), in the catalogue folder
# Patterns are matched whole (fullmatch): "$" would let a trailing newline through. SQL
# identifiers are lower-case only, so a case-insensitive database (SQLite, MariaDB) and the
# hold register, which compares exactly, can never disagree about which table is meant.
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SLUG = re.compile(r"[a-z][a-z0-9_]{1,62}")
_CONN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REFERENCE = re.compile(r"[a-z][a-z0-9_]{1,62}/[a-z0-9_][a-z0-9_.-]{0,62}")  # system/dataset
MAX_FILE_BYTES = 256 * 1024  # a catalogue file is a page of YAML
MAX_DEPTH = 20  # nesting levels of a catalogue file (the deepest real one has 6)
MAX_ROWS_LIMIT = 1_000_000_000


def _identifier(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a safe SQL identifier (lower-case letters, digits, underscore;"
            " max 63; no spaces or line breaks)"
        )
    return value


def _slug(value: str) -> str:
    if not _SLUG.fullmatch(value):
        raise ValueError(f"{value!r} is not an id (lower-case letters, digits, underscore)")
    return value


def _conn_id(value: str) -> str:
    if not _CONN_ID.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a connection id (letters, digits, '_', '.', '-'; no spaces)"
        )
    return value


def _bucket(value: str) -> str:
    if not _BUCKET.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not an S3 bucket name (3-63 lower-case letters, digits, '.', '-')"
        )
    return value


def _timezone(value: str) -> str:
    try:
        pendulum.timezone(value)
    except (ValueError, pendulum.tz.exceptions.InvalidTimezone):
        raise ValueError(
            f"{value!r} is not an IANA time zone such as UTC or Europe/Stockholm"
        ) from None
    return value


def check_system_name(value: Any) -> str:
    """A system name exactly as the catalogue accepts it (for hold requests)."""
    if not isinstance(value, str) or not _SLUG.fullmatch(value):
        raise RetentionError(
            f"system {value!r} is not a catalogue system id (lower-case letters, digits, '_')"
        )
    return value


def check_dataset_name(value: Any) -> str:
    """A dataset name (a table or a bucket) exactly as the catalogue accepts it."""
    if not isinstance(value, str) or not (_IDENTIFIER.fullmatch(value) or _BUCKET.fullmatch(value)):
        raise RetentionError(
            f"dataset {value!r} is neither a table name (lower-case letters, digits, '_') nor"
            " a bucket name, exactly as the catalogue names it"
        )
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]
Slug = Annotated[str, AfterValidator(_slug)]
ConnId = Annotated[str, AfterValidator(_conn_id)]
Bucket = Annotated[str, AfterValidator(_bucket)]
TimeZoneName = Annotated[str, AfterValidator(_timezone)]
Cron = Annotated[str, AfterValidator(check_schedule)]
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

    label: str | None = Field(default=None, description="The record class, e.g. customer case")
    label_sv: str | None = Field(default=None, description="The record class in Swedish")
    when: Condition | None = None
    rule: Rule
    anchor_column: Identifier | None = Field(
        default=None, description="The column (or object metadata key) holding the anchor"
    )

    def describe(self, language: Language = "en") -> str:
        scope = (self.label_sv if language == "sv" else self.label) or (
            self.when.column if self.when else None
        )
        return (f"{scope}: " if scope else "") + self.rule.describe(language)

    @model_validator(mode="after")
    def _anchor_needed(self) -> RuleCase:
        if self.rule.enforceable and self.anchor_column is None:
            raise ValueError(f"a {self.rule.kind!r} rule needs an 'anchor_column'")
        if (self.label is None) != (self.label_sv is None):
            raise ValueError("give a case's 'label' in both English and Swedish ('label_sv')")
        return self


class DeleteAction(_Model):
    """Delete the record and the child rows the source declares."""

    kind: Literal["delete"] = "delete"


class AnonymiseAction(_Model):
    """Anonymise in place, keeping the row (e.g. for statistics): direct identifiers are removed
    (nulled or replaced by one constant), quasi-identifiers generalised or released as they are.

    A keyed or per-value replacement would be pseudonymisation, not anonymisation (GDPR recital
    26: whoever holds the key can link the row back): no strategy offers one.
    """

    kind: Literal["anonymise"] = "anonymise"
    columns: dict[Identifier, Mask] = Field(min_length=1)
    marker_column: Identifier = Field(
        description="Set to the run time when anonymised; marked rows are never matched again"
    )
    direct_identifiers: list[Identifier] = Field(
        min_length=1, description="Columns that identify a person alone (e-mail, name)"
    )
    quasi_identifiers: list[Identifier] = Field(
        default_factory=list,
        description="Columns that identify in combination (birth date, city, job level)",
    )
    k_anonymity: int = Field(
        ge=2, description="Every released combination of quasi-identifiers must cover k rows"
    )

    @model_validator(mode="after")
    def _removes_the_link(self) -> AnonymiseAction:
        both = set(self.direct_identifiers) & set(self.quasi_identifiers)
        if both:
            raise ValueError(f"{sorted(both)} cannot be both direct and quasi-identifiers")
        for column in self.direct_identifiers:
            mask = self.columns.get(column)
            if mask is None or not mask.removes_value:
                used = f"strategy {mask.name!r}" if mask else "no strategy"
                raise ValueError(
                    f"direct identifier {column!r} has {used}: anonymisation must remove it"
                    " (strategy 'null' or 'fixed'); a keyed or generalised value still identifies"
                )
        for column in self.columns:
            if column not in self.direct_identifiers and column not in self.quasi_identifiers:
                raise ValueError(
                    f"column {column!r} is masked but not declared: list it under"
                    " 'direct_identifiers' or 'quasi_identifiers'"
                )
        return self


class ReportOnlyAction(_Model):
    """Change nothing; count and report (policy gaps, rules kept indefinitely)."""

    kind: Literal["report_only"] = "report_only"


class Assumption(_Model):
    """A reading the policy does not state, made a named setting to confirm with its owner."""

    name: Slug
    value: Scalar = Field(description="The setting in effect (e.g. 6 for a July-June year)")
    statement: Localised = Field(description="What the catalogue assumes")
    reason: Localised = Field(description="Why, and what changes if it is wrong")


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
    conn_id: ConnId
    bucket: Bucket

    def binding(self, system: str) -> S3Source:
        """The bucket as a dataset of ``system`` (holds and evidence are keyed by it)."""
        return S3Source(system=system, conn_id=self.conn_id, bucket=self.bucket)


OBJECT_KEY = "<object key>"  # what identifies an object in a bucket
RECORD_ID = "<record id>"  # what identifies a record in a SaaS API's collection


IdentifierKind = Literal["email", "phone", "personnummer", "customer_id"]


class LookupColumn(NamedTuple):
    """A column (an object metadata key, an API field) holding identifiers of one kind."""

    kind: str  # one of `identifiers.KINDS`
    column: str


class HoldKey(NamedTuple):
    """How holds name the records of one dataset a binding changes: the dataset, the key
    column(s) identifying a record, and the lookup columns naming its subject (none: ())."""

    dataset: str
    key_columns: tuple[str, ...]
    lookup: tuple[LookupColumn, ...]


class _Bound(_Model):
    """A dataset binding: the system and connection it is reached through, and which of its
    columns hold which kind of identifier of the person (``lookup: {email: email, phone:
    mobile}``). Data-subject requests and subject holds find a person's records through these
    columns only, each value normalised by its kind (`identifiers.normalise`)."""

    dataset_field: ClassVar[str]  # the field naming the dataset: its name in a system file
    system: Slug = Field(description="The source system, e.g. ats, crm")
    conn_id: ConnId
    lookup: dict[IdentifierKind, Identifier] = Field(
        default_factory=dict,
        description="Identifier kind -> the column holding it (email, phone, personnummer,"
        " customer_id); an activity's source needs at least one (it holds personal data)",
    )

    @model_validator(mode="after")
    def _one_kind_per_column(self) -> _Bound:
        columns = list(self.lookup.values())
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:
            raise ValueError(f"lookup column(s) {twice} are declared for more than one kind")
        return self

    @property
    def dataset(self) -> str:
        """The name holds and evidence key its records by (a table, a bucket, a collection)."""
        return str(getattr(self, self.dataset_field))

    @property
    def reference(self) -> str:
        """How an activity names the binding: ``system/dataset``."""
        return f"{self.system}/{self.dataset}"

    def lookup_columns(self) -> tuple[LookupColumn, ...]:
        """The lookup columns, in the order of `identifiers.KINDS` (e-mail first)."""
        return tuple(
            LookupColumn(kind, column) for kind in IDENTIFIER_KINDS
            if (column := self.lookup.get(kind)) is not None  # type: ignore[call-overload]
        )  # fmt: skip


class SqlSource(_Bound):
    """A table in a SQL database reached through an Airflow connection."""

    dataset_field: ClassVar[str] = "table"
    kind: Literal["sql"] = "sql"
    table: Identifier
    primary_key: Identifier = "id"
    anchor_timezone: TimeZoneName = Field(default="UTC", description="Zone of naive timestamps")
    children: list[SqlChild] = Field(default_factory=list)
    objects: list[ObjectLink] = Field(default_factory=list)
    # (conn_id, bucket) -> (table, column) of the system's other tables linking files there;
    # set when the system file is read (not a field: the enforcement digest stays the same)
    _linked_elsewhere: dict[tuple[str, str], tuple[tuple[str, str], ...]] = PrivateAttr(
        default_factory=dict
    )

    def linked_elsewhere(self, link: ObjectLink) -> tuple[tuple[str, str], ...]:
        """The other tables of the system, with their column, whose records link files in
        ``link``'s bucket: such a file goes only once no record of any of them links it."""
        return self._linked_elsewhere.get((link.conn_id, link.bucket), ())

    def datasets(self) -> list[str]:
        """Every dataset the binding changes: the table and its linked buckets."""
        return [self.table, *(link.bucket for link in self.objects)]

    def describe(self) -> str:
        return f"system `{self.system}`, table `{self.table}`, connection `{self.conn_id}`"

    def hold_keys(self) -> list[HoldKey]:
        pk = self.primary_key  # a tuple where a composite key was built in code
        columns = (pk,) if isinstance(pk, str) else tuple(pk)
        keys = [HoldKey(self.table, columns, self.lookup_columns())]
        # linked files go with their record (its subject holds)
        return keys + [HoldKey(link.bucket, (OBJECT_KEY,), ()) for link in self.objects]

    def location(self) -> str:
        """Where the records are, in one short line (the Art. 30 register)."""
        return f"{self.system}.{self.table}"


class S3Source(_Bound):
    """Objects in a bucket, under a prefix; anchors, classes and lookup identifiers come from
    object metadata or tags (``lookup`` names metadata keys).

    The dataset is named by its bucket, unless ``name`` says otherwise: several prefixes of
    one bucket are several datasets, each named apart (in a system file: the dataset's name,
    with ``bucket`` given). Holds and evidence key the objects by the dataset's name."""

    dataset_field: ClassVar[str] = "name"
    kind: Literal["s3"] = "s3"
    bucket: Bucket
    prefix: str = ""
    name: Bucket | None = Field(
        default=None,
        description="The dataset's name, where it is not the bucket's (a prefix of a bucket"
        " that holds other datasets)",
    )

    @model_validator(mode="before")
    @classmethod
    def _named_by_bucket(cls, raw: Any) -> Any:
        """A name alone is the bucket's; a name equal to the bucket says nothing more."""
        if not isinstance(raw, dict) or raw.get("name") is None:
            return raw
        if raw.get("bucket") in (None, raw["name"]):
            return {**{k: v for k, v in raw.items() if k != "name"}, "bucket": raw["name"]}
        return raw

    @property
    def dataset(self) -> str:
        return self.name or self.bucket

    def covers(self, other: S3Source) -> bool:
        """Whether some object could belong to both (the same bucket of the same connection,
        one prefix within the other): holds on one would not be seen by the other."""
        return (
            (self.conn_id, self.bucket) == (other.conn_id, other.bucket)
            and (self.prefix.startswith(other.prefix) or other.prefix.startswith(self.prefix))
        )  # fmt: skip

    def datasets(self) -> list[str]:
        return [self.dataset]

    def describe(self) -> str:
        where = f"bucket `{self.bucket}/{self.prefix}`"
        if self.name:
            where = f"dataset `{self.name}` ({where})"
        return f"system `{self.system}`, {where}, connection `{self.conn_id}`"

    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def hold_keys(self) -> list[HoldKey]:
        return [HoldKey(self.dataset, (OBJECT_KEY,), self.lookup_columns())]


class HttpSource(_Bound):
    """A collection of records in a SaaS tool's HTTP API (a newsletter or CRM tool), reached
    through an Airflow connection of type ``http`` whose password is the API token. Rules
    read the records' fields (``anchor_column`` names a field holding an ISO-8601 date or
    date-time); records are deleted by id (see `include.retention.sources.http`)."""

    dataset_field: ClassVar[str] = "collection"
    kind: Literal["http"] = "http"
    collection: Identifier = Field(description="The API's collection, e.g. contacts or leads")
    anchor_timezone: TimeZoneName = Field(default="UTC", description="Zone of naive date-times")

    def datasets(self) -> list[str]:
        return [self.collection]

    def describe(self) -> str:
        where = f"API collection `{self.collection}`"
        return f"system `{self.system}`, {where}, connection `{self.conn_id}`"

    def location(self) -> str:
        return f"{self.system}/{self.collection}"

    def hold_keys(self) -> list[HoldKey]:
        return [HoldKey(self.collection, (RECORD_ID,), self.lookup_columns())]


Source = Annotated[SqlSource | S3Source | HttpSource, Field(discriminator="kind")]
SOURCE_KINDS: dict[str, type[_Bound]] = {
    model.model_fields["kind"].default: model for model in get_args(get_args(Source)[0])
}
_SET_ON_SYSTEM = ("kind", "system", "conn_id")


class System(_Model):
    """One system's file, ``systems/<system>.yaml``: its source kind and connection, and the
    datasets bound in it, each by its name (a table, bucket or collection). An activity refers
    to one as ``system/dataset``; a dataset no activity refers to is bound all the same (holds
    and the catalogue's `bindings` see it)."""

    system: Slug
    kind: str
    conn_id: ConnId
    datasets: dict[str, Source] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _complete_datasets(cls, raw: Any) -> Any:
        """Each dataset gets the system's kind, name and connection, and its own name as its
        table (bucket, collection): each is said once."""
        if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), dict):
            return raw
        kind = raw.get("kind")
        model = SOURCE_KINDS.get(kind) if isinstance(kind, str) else None
        if model is None:
            raise ValueError(f"kind: {kind!r} is not a source kind (one of {sorted(SOURCE_KINDS)})")
        shared = {field: raw.get(field) for field in _SET_ON_SYSTEM}
        datasets = {}
        for name, fields in raw["datasets"].items():
            fields = {} if fields is None else fields
            if isinstance(fields, dict):
                repeated = sorted(set(fields) & {*shared, model.dataset_field})
                if repeated:
                    raise ValueError(
                        f"datasets.{name:.80}: {', '.join(repeated)} set on the dataset; the system"
                        f" gives {', '.join(_SET_ON_SYSTEM)} and the dataset's name is its"
                        f" {model.dataset_field}"
                    )
                fields = {**fields, **shared, model.dataset_field: name}
            datasets[name] = fields
        return {**raw, "datasets": datasets}

    @model_validator(mode="after")
    def _objects_in_one_dataset(self) -> System:
        pairs = shared_objects(list(self.datasets.values()))
        if pairs:
            raise ValueError(pairs[0][2])
        return self

    @model_validator(mode="after")
    def _tables_linking_one_bucket(self) -> System:
        """Each table learns which other tables of the system link files in its buckets."""
        tables = [d for d in self.datasets.values() if isinstance(d, SqlSource)]
        for table in tables:
            table._linked_elsewhere = {
                (link.conn_id, link.bucket): tuple(
                    (other.table, theirs.column) for other in tables if other is not table
                    for theirs in other.objects
                    if (theirs.conn_id, theirs.bucket) == (link.conn_id, link.bucket)
                )
                for link in table.objects
            }  # fmt: skip
        return self


def shared_objects(bindings: Sequence[Source]) -> list[tuple[Source, Source, str]]:
    """The pairs of bindings that could both delete one object, each with the problem: two
    bucket datasets whose prefixes overlap, or a bucket dataset over files that SQL records
    link to (a link covers its whole bucket). Either way a hold that keeps the object through
    one would not keep it from the other."""
    s3 = [b for b in bindings if isinstance(b, S3Source)]
    pairs: list[tuple[Source, Source, str]] = [
        (a, b, _datasets_problem(a, b)) for i, a in enumerate(s3) for b in s3[i + 1 :]
        if a.covers(b)
    ]  # fmt: skip
    for sql in (b for b in bindings if isinstance(b, SqlSource)):
        for link in sql.objects:
            files = link.binding(sql.system)
            pairs += [(d, sql, _linked_problem(d, sql, link)) for d in s3 if d.covers(files)]
    return pairs


def _datasets_problem(a: S3Source, b: S3Source) -> str:
    return (
        f"datasets {a.reference} and {b.reference} both bind s3://{a.bucket}/ (prefixes"
        f" {a.prefix!r} and {b.prefix!r}, connection {a.conn_id!r}): an object could belong to"
        " both, and a hold on it in one would not keep it in the other; give each dataset a"
        " prefix that neither begins nor is begun by the other's"
    )


def _linked_problem(dataset: S3Source, sql: SqlSource, link: ObjectLink) -> str:
    return (
        f"dataset {dataset.reference} binds s3://{dataset.bucket}/{dataset.prefix}, where"
        f" {sql.reference} links files ({link.column}, connection {link.conn_id!r}): a file"
        f" of a held record could be deleted as an object of {dataset.reference}; keep the"
        " linked files in a bucket no dataset binds"
    )


class Safety(_Model):
    """Volume limits per run; beyond them nothing is deleted until a person approves."""

    max_rows: int | None = Field(default=10_000, ge=1, le=MAX_ROWS_LIMIT, strict=True)
    max_fraction: float | None = Field(default=0.25, gt=0, le=1)


class Partitioning(_Model):
    """How a large dataset is enforced in parallel: a run over more than
    ``records_per_partition`` records is split into key ranges, each enforced by its own
    mapped ``enforce`` task (at most ``max_partitions``: beyond that the ranges grow)."""

    records_per_partition: int = Field(default=1_000_000, ge=1, strict=True)
    max_partitions: int = Field(default=8, ge=1, le=64, strict=True)


class SourceChecks(_Model):
    """Expectations on the source checked before anything is deleted (Great Expectations, see
    :mod:`include.retention.verification`). Shares are of the records a rule case applies to;
    beyond a limit the run stops, deletes nothing and says why."""

    max_null_anchor_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="NULL anchors (unknown: counted, never deleted); a column gone mostly NULL"
        " means the source changed and its records would silently never be deleted",
    )
    max_future_anchor_fraction: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Anchors later than now (of the known ones): a clock, time-zone or format"
        " fault in the source; raise it where the anchor is a planned date",
    )


class Activity(_Model):
    """One processing activity of the privacy policy and how its retention is enforced."""

    id: Slug
    name: Localised
    purpose: Localised
    legal_bases: list[LegalBasis] = Field(min_length=1)
    data_subjects: list[Localised] = Field(min_length=1)
    data_categories: list[Localised] = Field(min_length=1)
    recipients: list[Localised] = Field(default_factory=list)
    transfers: list[Transfer] = Field(default_factory=list)
    direct_marketing: bool = Field(
        default=False,
        description="The purpose is direct marketing: an Art. 21(2) objection stops it",
    )
    policy_text_sv: str = Field(min_length=3, description="The policy sentence implemented")
    retention: list[RuleCase] = Field(min_length=1)
    action: Action
    source: Source
    schedule: Cron = Field(default=DEFAULT_SCHEDULE, description="Cron, Europe/Stockholm")
    safety: Safety = Field(default_factory=Safety)
    source_checks: SourceChecks = Field(default_factory=SourceChecks)
    partitioning: Partitioning = Field(default_factory=Partitioning)
    owner: str = "data-engineering"
    assumptions: list[Assumption] = Field(
        default_factory=list, description="Readings the policy does not state, to confirm"
    )
    processor_for: Localised | None = Field(
        default=None,
        description="Set where the company processes these records as a processor (Art. 28)"
        " for another controller, e.g. an employer: who that is. Data-subject requests never"
        " touch such records; the person is referred to this controller",
    )

    @property
    def role(self) -> Literal["controller", "processor"]:
        return "controller" if self.processor_for is None else "processor"

    @model_validator(mode="before")
    @classmethod
    def _deadlines_use_the_schedule(cls, raw: Any) -> Any:
        """Deadline rules are met by the activity's schedule: give it to them."""
        if not isinstance(raw, dict) or not isinstance(raw.get("retention"), list):
            return raw
        schedule = raw.get("schedule", DEFAULT_SCHEDULE)
        try:
            check_schedule(schedule)
        except ValueError:
            return raw  # reported once, on 'schedule'
        cases = []
        for case in raw["retention"]:
            rule = case.get("rule") if isinstance(case, dict) else None
            if isinstance(rule, dict) and rule.get("kind") in DEADLINE_KINDS:
                if "schedule" in rule:
                    raise ValueError("set 'schedule' on the activity, not on a rule")
                case = {**case, "rule": {**rule, "schedule": schedule}}
            cases.append(case)
        return {**raw, "retention": cases}

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
        if not self.source.lookup:
            raise ValueError(
                "source.lookup: name at least one column holding an identifier of the person"
                f" ({', '.join(IDENTIFIER_KINDS)}), e.g. 'lookup: {{email: email}}': an"
                " activity's records are personal data, and requests and holds find them there"
            )
        self._check_anonymisation()
        self._check_assumptions()
        return self

    def _check_anonymisation(self) -> None:
        if self.action.kind != "anonymise":
            return
        if isinstance(self.source, SqlSource) and (self.source.children or self.source.objects):
            reached = [f"child table {c.table!r}" for c in self.source.children] + [
                f"linked files (column {link.column!r})" for link in self.source.objects
            ]
            raise ValueError(
                f"anonymise does not reach {', '.join(reached)} of {self.source.table!r}: the"
                " personal data there would stay linked to the anonymised row. Bind a dataset"
                " without children and objects for this activity, or delete them with a rule"
                " of their own"
            )
        for kind, column in self.source.lookup.items():
            if column not in self.action.direct_identifiers:
                raise ValueError(
                    f"the lookup column {column!r} ({kind}) must be a direct identifier"
                )

    def _check_assumptions(self) -> None:
        for assumption in self.assumptions:
            for case in self.retention:
                value = getattr(case.rule, assumption.name, assumption.value)
                if value != assumption.value:
                    raise ValueError(
                        f"assumption {assumption.name!r} is {assumption.value!r} but the"
                        f" {case.rule.kind!r} rule says {value!r}"
                    )

    @property
    def enforceable(self) -> bool:
        return any(case.rule.enforceable for case in self.retention)

    @property
    def policy_gap(self) -> bool:
        """The policy states no period for (some of) these records."""
        return any(case.rule.kind == "unspecified" for case in self.retention)

    @property
    def deadlines(self) -> list[RuleCase]:
        """The cases that promise deletion no later than a deadline ("inom", "direkt")."""
        return [case for case in self.retention if case.rule.deadline]

    def rule_descriptions(self, language: Language = "en") -> list[str]:
        """One line per rule case, e.g. ``"not hired: 2 years after the hiring decision"``."""
        return [case.describe(language) for case in self.retention]

    def describe_rule(self, language: Language = "en") -> str:
        return "; ".join(self.rule_descriptions(language))

    def enforcement_digest(self) -> str:
        """What decides which records a run changes, and how: the retention cases, the action
        and the dataset binding, hashed (16 hex digits). An approval binds to it: a run
        approved under one digest refuses to run under another."""
        decisive = self.model_dump(mode="json", include={"retention", "action", "source"})
        text = json.dumps(decisive, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Catalogue(_Model):
    """Every activity, by id; every bound dataset, by reference (``system/dataset``): each of
    the system files, whether or not an activity refers to it (an activity read from a file
    gets that very binding), and the source of an activity given in code (tests, tools) whose
    reference no system file binds; and a version hash of the files they came from."""

    activities: dict[str, Activity]
    version: str
    bindings: dict[str, Source] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sources_are_bound(self) -> Catalogue:
        for activity in self.activities.values():
            self.bindings.setdefault(activity.source.reference, activity.source)
        return self

    def unreferenced(self) -> list[Source]:
        """The bindings no activity refers to (nothing enforces retention there, and
        data-subject requests do not act on them: no purpose or legal basis is declared)."""
        used = {activity.source.reference for activity in self}
        return [b for ref, b in sorted(self.bindings.items()) if ref not in used]

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
        field = ".".join(str(part)[:80] for part in item["loc"]) or "(top level)"
        lines.append(f"{field}: {item['msg']}")
    return "; ".join(lines)


class _StrictLoader(yaml.CSafeLoader):
    """YAML's safe loader (libyaml), stricter: a duplicate key is an error instead of
    silently winning. Run :func:`_check_shape` first: libyaml composes recursively."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: list[Any] = []
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {key!r} (a key may appear once per mapping)",
                    problem_mark=key_node.start_mark,
                )
            seen.append(key)
        return super().construct_mapping(node, deep=deep)


_OPENS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSES = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _check_shape(text: str) -> None:
    """Refuse aliases (``*name``: exponential expansion) and nesting deeper than MAX_DEPTH,
    streaming the parser's events before anything is built."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise _refused("aliases (*name) are not allowed in a catalogue file", event)
        depth += isinstance(event, _OPENS) - isinstance(event, _CLOSES)
        if depth > MAX_DEPTH:
            raise _refused(f"nesting depth over {MAX_DEPTH} levels", event)


def _refused(problem: str, event: yaml.Event) -> yaml.YAMLError:
    mark = event.start_mark
    return yaml.YAMLError(problem + (f" (line {mark.line + 1})" if mark else ""))


def _read_yaml(path: Path, name: str) -> Any:
    """The parsed content of one catalogue file; every failure names the file (``name``)."""
    data = path.read_bytes()
    if len(data) > MAX_FILE_BYTES:
        raise RetentionError(
            f"{name}: {len(data)} bytes, more than a catalogue file may have ({MAX_FILE_BYTES})"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RetentionError(
            f"{name}: not UTF-8 text (invalid byte at offset {exc.start}): save it as UTF-8"
        ) from None
    try:
        _check_shape(text)
        return yaml.load(text, Loader=_StrictLoader)  # a safe loader
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
        raise RetentionError(f"{name}: not valid YAML: {exc}") from None


def _read_mapping(path: Path, name: str) -> dict[Any, Any]:
    raw = _read_yaml(path, name)
    if not isinstance(raw, dict):
        raise RetentionError(f"{name}: expected a mapping of fields at the top level")
    return raw


class Bindings(NamedTuple):
    """The datasets of the valid system files by reference (``system/dataset``), and the
    invalid system files by the system their name gives."""

    datasets: dict[str, Source]
    invalid: dict[str, str]


def load_system(path: Path) -> System:
    """Read and validate one system file, ``systems/<system>.yaml``."""
    name = f"{SYSTEMS}/{path.name}"
    try:
        system = System.model_validate(_read_mapping(path, name))
    except ValidationError as exc:
        raise RetentionError(f"{name}: {_describe(exc)}") from None
    if system.system != path.stem:
        raise RetentionError(f"{name}: system: {system.system!r} must match the file name")
    return system


def _resolved(raw: dict[Any, Any], name: str, bindings: Bindings) -> dict[Any, Any]:
    """The activity's fields with its ``source`` reference replaced by the binding."""
    if "source" not in raw:
        return raw  # reported by the model: a missing field
    reference = raw["source"]
    if not isinstance(reference, str) or not _REFERENCE.fullmatch(reference):
        shown = repr(reference)[:80] if isinstance(reference, str) else type(reference).__name__
        raise RetentionError(
            f"{name}: source: {shown} is not a reference 'system/dataset' to a dataset of"
            f" {SYSTEMS}/<system>.yaml (datasets are bound there, not in an activity)"
        )
    binding = bindings.datasets.get(reference)
    if binding is not None:
        return {**raw, "source": binding}
    system = reference.split("/", 1)[0]
    if system in bindings.invalid:
        raise RetentionError(
            f"{name}: source: {reference!r}: {bindings.invalid[system]} is invalid (see its error)"
        )
    known = sorted(r for r in bindings.datasets if r.startswith(f"{system}/"))
    systems = sorted({b.system for b in bindings.datasets.values()})
    where = f"it binds {known}" if known else f"no such system; known: {systems}"
    raise RetentionError(f"{name}: source: {reference!r} is not a bound dataset ({where})")


def load_activity(path: Path, bindings: Bindings) -> Activity:
    """Read and validate one activity file, its ``source`` resolved in ``bindings``."""
    raw = _resolved(_read_mapping(path, path.name), path.name, bindings)
    try:
        activity = Activity.model_validate(raw)
    except ValidationError as exc:
        raise RetentionError(f"{path.name}: {_describe(exc)}") from None
    return activity


def catalogue_paths(directory: Path | None = None) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` file of the catalogue folder (default:
    ``$RETENTION_CATALOGUE_DIR``, else ``include/policies``)."""
    directory = directory or Path(os.environ.get(CATALOGUE_ENV) or POLICY_DIR)
    paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not paths:
        raise RetentionError(f"{directory}: no catalogue files (*.yaml) found")
    return paths


def load_valid(directory: Path | None = None) -> tuple[Catalogue, dict[str, str]]:
    """The activities of every valid catalogue file, and the error of each invalid one (by
    file name). One bad file costs its own activity only; see :func:`load_catalogue`.

    An invalid system file costs the activities bound to its datasets. The version hashes the
    activity and system files and the policy text they implement (``text/`` beside them), so
    an edit of any is a new catalogue version in the ledger."""
    digest = hashlib.sha256()
    activities: dict[str, Activity] = {}
    paths = catalogue_paths(directory)
    bindings, errors = _load_bindings(paths[0].parent / SYSTEMS, digest)
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        try:
            activity = load_activity(path, bindings)
        except RetentionError as exc:
            errors[path.name] = str(exc)
            continue
        if activity.id in activities:
            errors[path.name] = f"{path.name}: id: duplicate id {activity.id!r} (defined twice)"
            continue
        if path.stem != activity.id:
            errors[path.name] = f"{path.name}: id: {activity.id!r} must match the file name"
            continue
        activities[activity.id] = activity
    policy_text = paths[0].parent / POLICY_TEXT  # a scratch catalogue may have none
    digest.update(b"policy-text\0" + (policy_text.read_bytes() if policy_text.is_file() else b""))
    version = digest.hexdigest()[:16]
    return Catalogue(activities=activities, version=version, bindings=bindings.datasets), errors


def _load_bindings(folder: Path, digest: Any) -> tuple[Bindings, dict[str, str]]:
    """The datasets of every valid system file in ``folder`` (hashed into ``digest``), and
    the error of each invalid one (by ``systems/<file name>``)."""
    bindings = Bindings({}, {})
    errors: dict[str, str] = {}
    loaded: dict[str, tuple[str, System]] = {}  # file name -> (its stem, its system)
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        name = f"{SYSTEMS}/{path.name}"
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
        try:
            system = load_system(path)
        except RetentionError as exc:
            errors[name] = str(exc)
            bindings.invalid[path.stem] = name
            continue
        if any(other.system == system.system for _, other in loaded.values()):
            errors[name] = f"{name}: system: duplicate system {system.system!r} (defined twice)"
            continue
        loaded[name] = (path.stem, system)
    for name, problem in _shared_between(loaded).items():
        errors[name] = problem
        bindings.invalid[loaded.pop(name)[0]] = name
    for _, system in loaded.values():
        bindings.datasets.update({b.reference: b for b in system.datasets.values()})
    return bindings, errors


def _shared_between(files: Mapping[str, tuple[str, System]]) -> dict[str, str]:
    """Per system file with a dataset that shares objects with another file's, the problem
    (both files are refused: neither binding can be taken for the right one)."""
    owner = {id(d): name for name, (_, s) in files.items() for d in s.datasets.values()}
    problems: dict[str, str] = {}
    everything = [d for _, system in files.values() for d in system.datasets.values()]
    for a, b, problem in shared_objects(everything):
        for name in (owner[id(a)], owner[id(b)]):
            problems.setdefault(name, f"{name}: datasets: {problem}")
    return problems


def load_catalogue(directory: Path | None = None) -> Catalogue:
    """Read, validate and version every catalogue file in ``directory`` (default:
    ``$RETENTION_CATALOGUE_DIR``, else ``include/policies``); any invalid file is an error."""
    catalogue, errors = load_valid(directory)
    if errors:
        raise RetentionError("invalid catalogue:\n  " + "\n  ".join(errors.values()))
    return catalogue
