"""What each data-subject-request DAG task does, in plain functions (``dsr_dags`` only wires).

The trigger form (the DAG run's params) is the only place the person's identifiers exist:
:func:`receive` validates the form, pseudonymises the identifiers and registers the request,
and returns only the request's number and keyed references. Tasks that need an identifier
again read it from the params, never from an XCom; nothing here logs one. Every function
returns JSON-serialisable dicts without personal data (they are XComs and asset events).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pendulum
import sqlalchemy as sa

from include.retention import connections
from include.retention.catalogue import Catalogue
from include.retention.errors import RetentionError
from include.retention.holds import HoldRegister
from include.retention.identifiers import KINDS, SubjectId, identify
from include.retention.lookup import Reach, reach
from include.retention.runs import Control
from include.retention.subject_requests import (
    REQUEST_KINDS,
    TIMEZONE,
    Request,
    RequestRegister,
    local_date,
)
from include.retention.suppression import SuppressionList

log = logging.getLogger(__name__)

# Art. 18(1)(a)-(d): why processing is restricted.
RESTRICTION_GROUNDS = {
    "accuracy_contested": "Art. 18(1)(a): the person contests the accuracy of the data",
    "unlawful_processing": "Art. 18(1)(b): unlawful processing; the person opposes erasure",
    "legal_claims": "Art. 18(1)(c): the person needs the data for legal claims",
    "objection_pending": "Art. 18(1)(d): objection pending verification of legitimate grounds",
}
OBJECTION_SCOPES = {
    "direct_marketing": "Art. 21(2)-(3): direct marketing (absolute)",
    "legitimate_interest": "Art. 21(1): processing based on legitimate interest",
}
SYSTEM_USER = "airflow"
MAX_RECTIFIED_FIELDS = 20
MAX_RECTIFIED_TEXT = 2000
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
CORRECTIONS = "corrections"  # the rectification form's field: field name -> new value
# The form fields holding personal data: Airflow masks them like passwords in its audit log,
# which keeps every trigger request's body ([core] sensitive_var_conn_names).
SENSITIVE_FORM_FIELDS = (*KINDS, CORRECTIONS)
MAX_RECEIVED_AGE_DAYS = 92  # a request older than three months cannot be on time any more


@dataclass
class DsrRuntime:
    """The control database's registers for one task, each opened on first use: on the
    configured connections, or on what `of` gives (tests, the CLI)."""

    given_engine: sa.Engine | None = field(default=None, repr=False)
    given_key: bytes | None = field(default=None, repr=False)
    # the ledger's database when the lifecycle reaches it otherwise than the register's
    given_control_engine: sa.Engine | None = field(default=None, repr=False)
    catalogue: Catalogue | None = None  # what the hold register checks placements against

    @classmethod
    def of(
        cls,
        engine: sa.Engine,
        key: bytes,
        *,
        control_engine: sa.Engine | None = None,
        catalogue: Catalogue | None = None,
    ) -> DsrRuntime:
        """A runtime on a given control database and key; the ledger on ``control_engine``
        (default: the same database)."""
        return cls(engine, key, control_engine or engine, catalogue)

    @cached_property
    def engine(self) -> sa.Engine:
        return self.given_engine or connections.dsr_control_engine()

    @cached_property
    def key(self) -> bytes:
        return self.given_key if self.given_key is not None else connections.pseudonym_key()

    @cached_property
    def requests(self) -> RequestRegister:
        register = RequestRegister(self.engine, self.key)
        register.create_tables()
        return register

    @cached_property
    def holds(self) -> HoldRegister:
        register = HoldRegister(self.engine, self.key, self.catalogue)
        register.create_tables()
        return register

    @cached_property
    def control(self) -> Control:
        """The control database as the retention workers use it (ledger, holds, leases):
        erasure runs through the run lifecycle."""
        return Control.open(self.control_engine, self.key)

    @cached_property
    def control_engine(self) -> sa.Engine:
        return self.given_control_engine or connections.control_engine()

    @cached_property
    def suppressions(self) -> SuppressionList:
        register = SuppressionList(self.engine, self.key)
        register.create_tables()
        return register


# ------------------------------------------------------------------------------ the form


def _choice(params: Mapping[str, Any], name: str, allowed: Mapping[str, str]) -> str:
    value = params.get(name)
    if value not in allowed:
        raise RetentionError(f"{name}: choose one of {', '.join(allowed)} (got {value!r})")
    return str(value)


def received_at(raw: Any, now: dt.datetime) -> dt.datetime:
    """The ``received_on`` field (YYYY-MM-DD, the day the request arrived) as the start of that
    day in Stockholm, or ``now`` when empty. Not in the future, not more than three months ago."""
    if raw in (None, ""):
        return now
    try:
        day = dt.date.fromisoformat(str(raw))
    except ValueError:
        raise RetentionError(
            "received_on: write the day the request arrived as YYYY-MM-DD, or leave it empty"
            " for today"
        ) from None
    today = local_date(now)
    if day > today:
        raise RetentionError(f"received_on: {day} is in the future (today is {today})")
    if (today - day).days > MAX_RECEIVED_AGE_DAYS:
        raise RetentionError(
            f"received_on: {day} is more than {MAX_RECEIVED_AGE_DAYS} days ago; check the date"
        )
    return pendulum.datetime(day.year, day.month, day.day, tz=TIMEZONE)


def kind_options(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The request kind's own choices, validated (no free text: it could hold personal data)."""
    if kind == "restriction":
        action = _choice(params, "action", {"place": "", "lift": ""})
        options: dict[str, Any] = {"action": action}
        if action == "place":
            options["ground"] = _choice(params, "ground", RESTRICTION_GROUNDS)
        return options
    if kind == "objection":
        return {"scope": _choice(params, "scope", OBJECTION_SCOPES)}
    if kind == "rectification":
        return {"fields": sorted(rectified_fields(params))}  # the names only: values are data
    return {}


def rectified_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``corrections`` form field: field name -> new value (text, number, true/false or
    null). Refused, naming every problem but never a value, unless every entry fits."""
    raw = params.get(CORRECTIONS)
    if not isinstance(raw, Mapping) or not raw:
        raise RetentionError(
            "corrections: give the fields to correct and their new values, e.g."
            ' {"last_name": "Berg"}'
        )
    if len(raw) > MAX_RECTIFIED_FIELDS:
        raise RetentionError(f"corrections: at most {MAX_RECTIFIED_FIELDS} fields per request")
    problems = []
    for name, value in raw.items():
        if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
            problems.append(f"corrections: {str(name)[:64]!r} is not a field name")
        elif isinstance(value, dict | list):
            problems.append(f"corrections: {name!r} must be text, a number, true/false or null")
        elif isinstance(value, str) and len(value) > MAX_RECTIFIED_TEXT:
            problems.append(f"corrections: {name!r} is longer than {MAX_RECTIFIED_TEXT} characters")
    if problems:
        raise RetentionError("; ".join(problems))
    return dict(raw)


def subjects_of(params: Mapping[str, Any], now: dt.datetime | None = None) -> list[SubjectId]:
    """The person's identifiers from the form, normalised (refused with every bad field)."""
    today = local_date(now or dt.datetime.now(dt.UTC))
    return identify({k: params.get(k) for k in KINDS}, today=today)


def filed_by(dag_run: Any) -> str:
    """Who filed the request: the user who triggered the run, else the system."""
    return str(getattr(dag_run, "triggering_user_name", None) or SYSTEM_USER)


# ------------------------------------------------------------------------------ tasks


def receive(
    kind: str,
    params: Mapping[str, Any],
    *,
    user: str,
    dag_id: str | None,
    run_id: str | None,
    runtime: DsrRuntime | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Validate the form, pseudonymise, register the request. Nothing is written when any
    field is wrong."""
    now = now or dt.datetime.now(dt.UTC)
    options = kind_options(kind, params)
    arrived = received_at(params.get("received_on"), now)
    subjects = subjects_of(params, now)
    runtime = runtime or DsrRuntime()
    request = runtime.requests.receive(
        kind, subjects, filed_by=user, received_at=arrived, dag_id=dag_id, run_id=run_id, now=now
    )
    log.info(
        "%s: %s request (%s) for a person given by %s; due %s",
        request.ref, kind, REQUEST_KINDS[kind][0], ", ".join(request.identifier_kinds),
        request.due_on,
    )  # fmt: skip
    return {
        **request.summary(),
        "request_id": request.id,
        "subject_refs": [ref.hex() for ref in request.subject_refs],
        "identifier_kinds": sorted(request.identifier_kinds),
        "options": options,
    }


def _active_restrictions(runtime: DsrRuntime, refs: set[bytes]) -> dict[bytes, list[int]]:
    found: dict[bytes, list[int]] = {}
    for hold_id, kind, ref in runtime.holds.active_subject_holds(refs):
        if kind == "restriction":
            found.setdefault(ref, []).append(hold_id)
    return found


def identifier_kinds(received: Mapping[str, Any], runtime: DsrRuntime) -> list[str]:
    """The kinds of identifier the request gave (from ``receive``; a request received before
    the kinds were passed on: from the register)."""
    if "identifier_kinds" in received:
        return list(received["identifier_kinds"])
    return sorted(runtime.requests.get(int(received["request_id"])).identifier_kinds)


def _reach(received: Mapping[str, Any], runtime: DsrRuntime, catalogue: Any) -> Reach:
    """Which systems the request's identifier kinds can reach (the catalogue's valid
    activities by default); logged by name, never by identifier."""
    from include.retention.catalogue import load_valid

    catalogue = catalogue if catalogue is not None else load_valid()[0]
    found = reach(catalogue, identifier_kinds(received, runtime))
    for system, kinds in sorted(found.needed().items()):
        log.warning("%s: system %s cannot be searched by the identifiers given; needs %s",
                    received["request"], system, " or ".join(kinds))  # fmt: skip
    for item in found.refer:
        log.info("%s: %s is processed for another controller (%s): refer the person",
                 received["request"], item["activity"], item["controller_en"])  # fmt: skip
    for system, datasets in sorted(found.undeclared.items()):
        log.warning("%s: system %s has datasets no activity declares (%s): not searched",
                    received["request"], system, ", ".join(sorted(datasets)))  # fmt: skip
    return found


def restrict(
    received: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    user: str,
    runtime: DsrRuntime | None = None,
    catalogue: Any = None,
    connections: Any = None,
) -> dict[str, Any]:
    """Art. 18: place a restriction hold on the person (every retention run keeps their
    records), or lift it (its own logged action: the release is chained into the ledger).

    The hold protects the records whose lookup columns hold one of the person's identifiers;
    the result names the systems that can be matched that way (``systems_searched``), those
    that cannot with the identifiers given and what they need (``systems_not_covered``: ask
    the person for it and file again), and the activities run as a processor for another
    controller (``refer_to_controller``: not claimed as protected; refer the person). Either
    way it lists the recipients of the activities holding the person's records, who must be
    told (Art. 19)."""
    runtime = runtime or DsrRuntime()
    catalogue = _catalogue(runtime, catalogue)
    result = _restrict(received, params, user=user, runtime=runtime, catalogue=catalogue)
    return result | {"recipients_to_notify": _recipients(runtime, received, catalogue, connections)}


def _recipients(
    runtime: DsrRuntime, received: Mapping[str, Any], catalogue: Any, connections: Any
) -> list[dict[str, str]]:
    from include.retention import erasure

    refs = [bytes.fromhex(r) for r in received["subject_refs"]]
    activities = erasure.subject_bindings(catalogue, kinds=received["identifier_kinds"])
    return erasure.recipients_of(erasure.holding(activities, refs, runtime.key, connections))


def _restrict(
    received: Mapping[str, Any], params: Mapping[str, Any], *, user: str, runtime: DsrRuntime,
    catalogue: Any,
) -> dict[str, Any]:  # fmt: skip
    options = received["options"]
    refs = {bytes.fromhex(r) for r in received["subject_refs"]}
    active = _active_restrictions(runtime, refs)
    if options["action"] == "lift":
        lifted = [hold for holds in active.values() for hold in holds]
        for hold_id in lifted:
            runtime.holds.release(hold_id, released_by=user)
        log.info("%s: lifted restriction holds %s", received["request"], lifted)
        return {"action": "lift", "holds_released": lifted, "holds_placed": []}
    coverage = _reach(received, runtime, catalogue).summary()
    placed = []
    reason = f"{received['request']}: {RESTRICTION_GROUNDS[options['ground']]}"
    for subject in subjects_of(params):
        if runtime.holds.subject_ref(subject.value) in active:
            continue  # already restricted (a retried task, or an earlier request)
        placed.append(
            runtime.holds.place_subject_hold(
                subject.value, kind="restriction", reason=reason, placed_by=user
            )
        )
    log.info("%s: placed restriction holds %s", received["request"], placed)
    return {"action": "place", "holds_placed": placed, "holds_released": [], **coverage}


def suppress(
    kind: str,
    received: Mapping[str, Any],
    *,
    user: str,
    runtime: DsrRuntime | None = None,
    catalogue: Any = None,
    connections: Any = None,
) -> dict[str, Any]:
    """Art. 7(3) and 21: put the person on the suppression list, so imports and retention runs
    do not bring them back into consent-based processing (or direct marketing); then remove
    their records at once from every activity that reaches (`withdrawal`): counts, activities
    and ledger run ids per activity. Raises :class:`PartlyDone`, carrying that result, when
    the removal failed in an activity (the entry is recorded, the others are done)."""
    from include.retention import operations, withdrawal

    runtime = runtime or DsrRuntime()
    direct = kind == "objection" and received["options"]["scope"] == "direct_marketing"
    scope = "direct_marketing" if direct else "consent"
    refs = [bytes.fromhex(r) for r in received["subject_refs"]]
    request = runtime.requests.get(int(received["request_id"]))
    added = runtime.suppressions.add(refs, scope, added_by=user, request_id=request.id)
    catalogue = _catalogue(runtime, catalogue)
    removals, not_searched = withdrawal.remove(
        withdrawal.reached(catalogue, scope), refs, identifier_kinds(received, runtime),
        operations.Runtime.of(catalogue, runtime.control, connections), _origin(request, user),
        by=user,
    )  # fmt: skip
    result: dict[str, Any] = {
        "suppression_scope": scope, "suppressed": added, "already_suppressed": len(refs) - added,
    } | withdrawal.response(removals, not_searched)  # fmt: skip
    log.info(
        "%s: suppressed (%s); removed %s record(s) from %s, kept %s, nothing found in %s"
        " activities, failed in %s",
        request.ref, scope, result["removed"], result["removed_from"] or "none",
        {k["reason"]: k["records"] for k in result["kept"]} or "none",
        len(result["nothing_found_in"]), result["failed_in"] or "none",
    )  # fmt: skip
    return withdrawal.check(request.ref, removals, result)


def _origin(request: Request, user: str) -> dict[str, str | None]:
    """The ledger runs' origin of a request's work: its DAG run and the request."""
    return {"dag_id": request.dag_id, "run_id": request.run_id, "request": request.ref,
            "triggered_by": user}  # fmt: skip


def access(received: Mapping[str, Any], **context: Any) -> dict[str, Any]:
    """Art. 15: find the person's records in every system and write the register extract
    (JSON, HTML, PDF in Swedish) to the configured place; counts and the place. ``context``:
    see :func:`_export`."""
    from include.retention import access_extract

    def write(ref: str, found: list[Any], store: Any, at: dt.datetime, reach: Any) -> dict:
        return {"extract": access_extract.write(ref, found, store, at, reach)}

    return _export(received, access_extract.searchable, write, **context)


def portability(received: Mapping[str, Any], **context: Any) -> dict[str, Any]:
    """Art. 20: the person's records of the activities on consent or contract, as JSON and
    one CSV per activity and system, written to the configured place; counts, the place and
    the file names. ``context``: see :func:`_export`."""
    from include.retention import portability as art20

    def write(ref: str, found: list[Any], store: Any, at: dt.datetime, reach: Any) -> dict:
        return {"location": store.location, "files": art20.write(ref, found, store, at, reach)}

    return _export(received, art20.portable, write, **context)


def _export(
    received: Mapping[str, Any],
    select: Any,
    write: Any,
    *,
    runtime: DsrRuntime | None = None,
    catalogue: Any = None,
    connections: Any = None,
    now: dt.datetime | None = None,
    store: Any = None,
) -> dict[str, Any]:
    """Read the person's records in the activities ``select`` picks (by the identifier kinds
    given) and ``write`` them to the request's place (``store``; default the configured one).
    ``catalogue``, ``connections`` (activity id -> engine or client), ``runtime``: tests."""
    from include.retention import access_extract, responses

    runtime = runtime or DsrRuntime()
    catalogue = _catalogue(runtime, catalogue)
    refs = [bytes.fromhex(r) for r in received["subject_refs"]]
    found_reach = _reach(received, runtime, catalogue)
    activities = select(catalogue, identifier_kinds(received, runtime))
    found = access_extract.collect(activities, refs, runtime.key, connections)
    store = store or responses.store_for(received["request"])
    where = write(received["request"], found, store, now or dt.datetime.now(dt.UTC), found_reach)
    result: dict[str, Any] = {
        "records": sum(len(f.records) for f in found),
        "activities_with_records": [f.activity.id for f in found if f.records],
        "activities_searched": len(activities),
        **where,
        **found_reach.summary(),
    }
    log.info("%s: %s records in %s activities; written to %s", received["request"],
             result["records"], len(result["activities_with_records"]), store.location)  # fmt: skip
    return result


def rectify(
    received: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    user: str = SYSTEM_USER,
    runtime: DsrRuntime | None = None,
    catalogue: Any = None,
    connections: Any = None,
) -> dict[str, Any]:
    """Art. 16: set the corrected fields on the person's records in every system that holds
    them (held or restricted records are left as they are); the ledger records which fields
    changed where and how many records, never the values. A corrected identifier keeps the
    person's holds and suppressions (placed on it too, by ``user``)."""
    from include.retention import rectification

    runtime = runtime or DsrRuntime()
    catalogue = _catalogue(runtime, catalogue)
    plan = rectification.Rectification(
        request_id=int(received["request_id"]), request_ref=received["request"],
        refs=frozenset(bytes.fromhex(r) for r in received["subject_refs"]),
        kinds=list(identifier_kinds(received, runtime)),
        values=rectified_fields(params), key=runtime.key, connections=connections or {},
        catalogue_version=getattr(catalogue, "version", ""), by=user,
    )  # fmt: skip
    registers = rectification.Registers(
        runtime.holds, runtime.requests, runtime.suppressions, runtime.control
    )
    result = plan.run(catalogue, registers)
    return result | _reach(received, runtime, catalogue).summary()


def _catalogue(runtime: DsrRuntime, catalogue: Any) -> Any:
    """The valid catalogue, once it is known to match the active holds."""
    from include.retention.catalogue import load_valid
    from include.retention.holds import check_catalogue

    if catalogue is not None:
        return catalogue
    valid, invalid = load_valid()
    check_catalogue(runtime.control.ledger.engine, valid, invalid)
    return valid


def erase(
    received: Mapping[str, Any],
    *,
    user: str,
    runtime: DsrRuntime | None = None,
    catalogue: Any = None,
    connections: Any = None,
) -> dict[str, Any]:
    """Art. 17: erase the person from every system through the run lifecycle (evidence in the
    ledger, action ``erasure``, the request in the run's origin), except what Art. 17(3), a
    restriction or the processor role keeps; returns what was erased and kept, why, and the
    recipients to tell (Art. 19). Idempotent: a retried task finds what is gone gone."""
    from include.retention import erasure

    runtime = runtime or DsrRuntime()
    catalogue = _catalogue(runtime, catalogue)
    request = runtime.requests.get(int(received["request_id"]))
    how = erasure.Erasure(by=user, catalogue_version=catalogue.version,
                          origin=_origin(request, user))  # fmt: skip
    refs = [bytes.fromhex(r) for r in received["subject_refs"]]
    kinds = identifier_kinds(received, runtime)
    outcomes = erasure.erase(
        erasure.subject_bindings(catalogue, kinds=kinds), refs, runtime.control, how, connections,
        catalogue=catalogue,
    )  # fmt: skip
    result = erasure.response(outcomes) | _reach(received, runtime, catalogue).summary()
    log.info(
        "%s: erased %s record(s) in %s of %s datasets; kept %s; recipients to tell: %s",
        request.ref, result["erased"], sum(1 for o in outcomes if o.erased), len(outcomes),
        {k["reason"]: k["records"] for k in result["kept"]} or "none",
        len(result["recipients_to_notify"]),
    )  # fmt: skip
    return result


def reapply(
    system: str,
    *,
    user: str,
    origin: Mapping[str, str | None],
    runtime: DsrRuntime | None = None,
    catalogue: Any = None,
    connections: Any = None,
) -> dict[str, Any]:
    """After a backup restore of ``system``: erase again every person whose erasure the ledger
    records and apply the suppression list, with the same exceptions and evidence."""
    from include.retention import erasure

    runtime = runtime or DsrRuntime()
    catalogue = _catalogue(runtime, catalogue)
    how = erasure.Erasure(
        by=user, catalogue_version=catalogue.version,
        origin={**origin, "reapply": system, "triggered_by": user},
    )  # fmt: skip
    return erasure.reapply(
        catalogue, system, runtime.control, how, runtime.suppressions.active(), connections
    )


def respond(
    received: Mapping[str, Any] | None,
    results: Mapping[str, Mapping[str, Any] | None],
    failed_steps: list[str],
    *,
    user: str,
    runtime: DsrRuntime | None = None,
) -> dict[str, Any]:
    """Close the request in the register (completed, or failed: it stays open and due) with
    what was done; raise after recording a failure, so the run fails and alerts someone."""
    if received is None:
        raise RetentionError(
            "the request was not registered (see the receive task's log for what to fix);"
            " nothing was changed"
        )
    runtime = runtime or DsrRuntime()
    outcome = {step: dict(result) for step, result in results.items() if result is not None}
    status = "failed" if failed_steps else "completed"
    request: Request = runtime.requests.set_status(
        int(received["request_id"]), status, by=user,
        outcome={"steps": outcome, "failed_steps": failed_steps},
    )  # fmt: skip
    summary = {**request.summary(), "outcome": outcome}
    if failed_steps:
        raise RetentionError(
            f"{request.ref} ({request.kind}) failed at {', '.join(failed_steps)}; it stays open,"
            f" due {request.due_on}: fix the cause, then clear the failed task in the Airflow UI"
            " (the same request runs again)"
        )
    log.info("%s %s: %s", request.ref, status, outcome)
    return summary


# ------------------------------------------------------------------------------ deadlines


def deadlines(
    within_days: int, *, now: dt.datetime | None = None, runtime: DsrRuntime | None = None
) -> dict[str, Any]:
    """Open requests due within ``within_days`` days, and overdue ones (no personal data)."""
    today = local_date(now or dt.datetime.now(dt.UTC))
    runtime = runtime or DsrRuntime()
    near = runtime.requests.near_deadline(today, within_days)
    listed = [r.summary() | {"days_left": r.days_left(today)} for r in near]
    overdue = sum(item["days_left"] < 0 for item in listed)
    log.info(
        "%s open requests due within %s days (%s overdue) as of %s",
        len(listed), within_days, overdue, today,
    )  # fmt: skip
    return {"today": today.isoformat(), "within_days": within_days, "near": listed,
            "overdue": overdue}  # fmt: skip


def deadline_mail(report: Mapping[str, Any]) -> tuple[str, str]:
    """Subject and HTML body of the daily deadline mail: request numbers, kinds and dates."""
    near = report["near"]
    subject = (
        f"[dsr] {len(near)} data-subject request(s) due within {report['within_days']} days"
        + (f", {report['overdue']} OVERDUE" if report["overdue"] else "")
    )
    rows = "".join(
        f"<tr><td>{item['request']}</td><td>{item['kind']} ({item['article']})</td>"
        f"<td>{item['due_on']}</td><td>{_left(item['days_left'])}</td>"
        f"<td>{item['status']}</td><td>{item['extended_months']}</td></tr>"
        for item in near
    )
    body = (
        f"<p>Open data-subject requests as of {report['today']} (Europe/Stockholm) that are due"
        f" within {report['within_days']} days or overdue. Art. 12(3): answer within one month"
        " of receipt.</p><table border='1' cellpadding='4'><tr><th>Request</th><th>Kind</th>"
        "<th>Due</th><th>Days left</th><th>Status</th><th>Extended (months)</th></tr>"
        f"{rows}</table><p>Open the request's DAG run in the Airflow UI to finish it. If it"
        " needs more time and the first month still runs, extend it and tell the person why:"
        " <code>python -m include.retention requests extend DSR-N --months 1 --reason …"
        " --by …</code></p>"
    )
    return subject, body


def _left(days: int) -> str:
    return f"<b>{-days} days overdue</b>" if days < 0 else "due today" if days == 0 else str(days)
