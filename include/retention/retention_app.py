"""The Retention page: a FastAPI app mounted in Airflow's API server at ``/retention``.

Airflow does not authenticate plugin apps, so every route depends on Airflow's own security
dependencies (``airflow.api_fastapi.core_api.security``): the JWT of the logged-in user (the
UI's cookie, or a bearer token) and the auth manager's permissions.

- ``GET /`` — every retention activity whose DAG the user may read: rule, last and next run,
  records deleted (or anonymised) in the last run and in total, held, unknown anchors,
  approvals waiting, policy gap, the run's verification, the ledger's chain status, and the
  deletions per day as charts.
- ``GET /dags/{dag_id}`` — one activity (the DAG's *Retention* tab); needs read access to the
  DAG's runs.
- ``POST /lookup`` — was a record deleted or anonymised: when, by which run and rule. It
  needs read access to the connection holding the pseudonym key (whoever may read the key
  can compute the references anyway); the identifier never appears in a URL, a log or the
  answer.
- ``GET /certificates/{run_id}``, ``GET /report`` — the deletion certificate of a run and the
  audit report (404 with an explanation while this version has none).

No personal data is shown: counts, rules, times and ids only.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Iterable
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import (
    AccessView,
    ConnectionDetails,
    DagAccessEntity,
    DagDetails,
)
from airflow.api_fastapi.core_api.security import (
    GetUserDep,
    requires_access_dag,
    requires_access_view,
)
from fastapi import Depends, FastAPI, Form, HTTPException, Path, Query, Request, status
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from include.retention import charts, connections, retention_status
from include.retention.audit_report import render_report
from include.retention.catalogue import Catalogue, load_valid
from include.retention.certificate import certificate_bytes
from include.retention.dag_factory import dag_id_for
from include.retention.errors import RetentionError
from include.retention.evidence import Evidence, EvidenceReader
from include.retention.identifiers import LABELS, identify
from include.retention.retention_status import CHART_DAYS, ActivityStatus, DagFacts, LedgerChecker
from include.retention.rules import local_date
from include.retention.run_record import read_run

log = logging.getLogger(__name__)

TEMPLATES = FilePath(__file__).parent / "templates" / "retention"
RUN_ROWS = 20  # runs listed on a DAG's tab
CHART_SERIES = 6  # activities drawn one by one in the chart; the rest are summed
Language = Literal["en", "sv"]
DocumentFormat = Literal["html", "pdf"]
ReportFormat = Literal["html", "pdf", "csv"]
# Sent with every page: no caching (the lookup's answer is about a person), framed only by
# Airflow's own UI, no scripts, no requests to anywhere else.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:;"
        " form-action 'self'; frame-ancestors 'self'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
}
OUTCOME_LABELS = {
    "completed": "completed",
    "nothing_to_do": "nothing due",
    "approval_required": "approval needed / rejected",
    "dry_run": "dry run",
    "report_only": "report only",
    "failed": "failed",
    "interrupted": "interrupted",
    "running": "running",
}

_checker = LedgerChecker()


# ------------------------------------------------------------------------- data sources


@functools.cache
def _reader(url: str, with_key: bool) -> EvidenceReader:
    key = connections.pseudonym_key() if with_key else None
    return EvidenceReader(connections.control_engine(url), key)


def open_evidence(*, with_key: bool = False) -> EvidenceReader:
    """The evidence ledger, read-only (the control database as the DAGs find it); with the
    pseudonym key only for a lookup by identifier."""
    return _reader(connections.control_url(), with_key)


def catalogue() -> tuple[Catalogue, dict[str, str]]:
    return load_valid()


def dag_facts(dag_ids: Iterable[str]) -> dict[str, DagFacts]:
    """Paused, next run and approvals waiting, from Airflow's metadata DB."""
    from airflow.configuration import conf
    from airflow.models.dag import DagModel
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    wanted = list(dag_ids)
    with create_session() as session:
        dags = session.execute(
            sa.select(DagModel.dag_id, DagModel.is_paused, DagModel.next_dagrun_create_after)
            .where(DagModel.dag_id.in_(wanted))
        ).all()  # fmt: skip
        waiting = dict(
            session.execute(
                sa.select(TaskInstance.dag_id, sa.func.count())
                .where(
                    TaskInstance.dag_id.in_(wanted),
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                )
                .group_by(TaskInstance.dag_id)
            ).all()
        )
    scheduling = conf.getboolean("scheduler", "use_job_schedule", fallback=True)
    now = dt.datetime.now(dt.UTC) if scheduling else None
    return {
        row.dag_id: DagFacts.of(
            row.is_paused, row.next_dagrun_create_after, int(waiting.get(row.dag_id, 0)), now
        )
        for row in dags
    }


# ----------------------------------------------------------------------------- access


def readable_dag_ids(user: Any) -> set[str]:
    """The DAGs whose runs the user may read (the auth manager decides)."""
    manager = get_auth_manager()
    return {
        dag_id
        for dag_id in manager.get_authorized_dag_ids(user=user, method="GET")
        if manager.is_authorized_dag(
            method="GET",
            access_entity=DagAccessEntity.RUN,
            details=DagDetails(id=dag_id),
            user=user,
        )
    }


def may_look_up(user: Any) -> bool:
    """Lookup computes references with the pseudonym key: only for users who may read the
    connection that holds it."""
    return get_auth_manager().is_authorized_connection(
        method="GET",
        details=ConnectionDetails(conn_id=connections.PSEUDONYM_KEY_CONN_ID),
        user=user,
    )


def require_lookup(user: GetUserDep) -> Any:
    if not may_look_up(user):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "Lookup needs read access to the connection"
            f" {connections.PSEUDONYM_KEY_CONN_ID!r} (the pseudonym key)",
        )
    return user


def require_same_origin(request: Request) -> None:
    """A form post must come from a page of this server (the cookie is the credential)."""
    origin = request.headers.get("origin")
    if origin and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-origin form post refused")


# ----------------------------------------------------------------------------- render


@functools.cache
def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True)
    )
    env.filters["when"] = _when
    env.globals["outcome_label"] = lambda outcome: OUTCOME_LABELS.get(outcome, outcome)
    return env


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")


def render(request: Request, template: str, code: int = 200, **context: Any) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = (
        _templates()
        .get_template(template)
        .render(page=root, airflow=root.removesuffix("/retention"), **context)
    )
    return HTMLResponse(page, status_code=code, headers=SECURITY_HEADERS)


def trend(rows: list[ActivityStatus], today: dt.date, description: str) -> Markup:
    """Records deleted or anonymised per activity per day (the largest activities one by one,
    the rest summed), as inline SVG."""
    days = retention_status.chart_days(today)
    series = [charts.Series(r.label, r.daily_applied) for r in rows]
    chart = charts.TrendChart(
        buckets=[day.strftime("%m-%d") for day in days],
        series=charts.top_series(series, CHART_SERIES, "other activities"),
        empty_text=f"nothing deleted or anonymised in the last {len(days)} days",
        description=description,
    )
    return Markup(charts.to_svg(chart))


def _unavailable(request: Request, exc: Exception) -> HTMLResponse:
    if isinstance(exc, sa.exc.SQLAlchemyError):
        problem = connections.database_fault(exc) or RetentionError(type(exc).__name__)
        message = str(problem)
    else:
        message = str(exc)
    log.warning("Retention page: evidence unavailable: %s", message)
    return render(request, "message.html", 503, title="Evidence unavailable", message=message)


# ----------------------------------------------------------------------------- routes


def overview(request: Request, user: GetUserDep) -> HTMLResponse:
    try:
        cat, invalid = catalogue()
        readable = readable_dag_ids(user) & {dag_id_for(a.id) for a in cat}
        ledger = open_evidence()
        today = local_date(dt.datetime.now(dt.UTC))
        rows = retention_status.activity_statuses(
            cat, ledger, dag_facts(readable), today, only=readable
        )
        chain, checked_at = _checker.status(ledger)
    except (RetentionError, sa.exc.SQLAlchemyError) as exc:
        return _unavailable(request, exc)
    description = f"Records deleted or anonymised per activity per day, last {CHART_DAYS} days"
    return render(
        request, "overview.html", rows=rows, chain=chain, checked_at=checked_at,
        invalid=sorted(invalid), lookup=lookup_form(cat, readable) if may_look_up(user) else None,
        chart=trend(rows, today, description), report_period=report_period(today),
    )  # fmt: skip


def dag_tab(request: Request, dag_id: str) -> HTMLResponse:
    try:
        cat, _ = catalogue()
        activity = next((a for a in cat if dag_id_for(a.id) == dag_id), None)
        if activity is None:
            return render(
                request, "message.html", 404, title="Not a retention DAG",
                message=f"{dag_id} enforces no activity of the policy catalogue.",
            )  # fmt: skip
        ledger = open_evidence()
        runs = ledger.runs(activity.id)
        verified = retention_status.verification_results(ledger)
        today = local_date(dt.datetime.now(dt.UTC))
        days = retention_status.chart_days(today)
        row = retention_status.activity_status(
            activity, runs, verified, days, dag_facts([dag_id]).get(dag_id)
        )
        recent = [retention_status.run_row(r, verified) for r in reversed(runs[-RUN_ROWS:])]
    except (RetentionError, sa.exc.SQLAlchemyError) as exc:
        return _unavailable(request, exc)
    chart = trend([row], today, f"{activity.name.en}: records deleted or anonymised per day")
    return render(request, "dag.html", row=row, runs=recent, chart=chart, activity=activity)


def lookup_form(cat: Catalogue, readable: set[str]) -> list[tuple[str, str]]:
    """The (system, dataset) pairs a record lookup can name: the sources of readable
    activities."""
    pairs = {(a.source.system, a.source.dataset) for a in cat if dag_id_for(a.id) in readable}
    return sorted(pairs)


def _answer(request: Request, user: Any, what: str, found: list[Evidence]) -> HTMLResponse:
    readable = readable_dag_ids(user)
    visible = sorted(
        (e for e in found if dag_id_for(e.activity_id) in readable), key=lambda e: e.batch_seq
    )
    log.info("Retention page: lookup of %s: %d answers", what, len(visible))
    return render(request, "lookup.html", what=what, evidence=visible)


def lookup_person(
    request: Request,
    user: Annotated[Any, Depends(require_lookup)],
    email: Annotated[str, Form(max_length=320)] = "",
    phone: Annotated[str, Form(max_length=320)] = "",
    personnummer: Annotated[str, Form(max_length=320)] = "",
    customer_id: Annotated[str, Form(max_length=320)] = "",
) -> HTMLResponse:
    """What was deleted or anonymised of a person, by any of their identifiers."""
    form = {"email": email, "phone": phone, "personnummer": personnummer}
    try:
        ids = identify(form | {"customer_id": customer_id})
    except RetentionError as exc:  # names the field, never repeats the value
        return render(request, "message.html", 400, title="Cannot look up", message=str(exc))
    what = "the person (" + ", ".join(LABELS[i.kind] for i in ids) + ")"
    try:
        found = open_evidence(with_key=True).lookup_person([i.value for i in ids])
    except (RetentionError, sa.exc.SQLAlchemyError) as exc:
        return _unavailable(request, exc)
    return _answer(request, user, what, found)


def lookup_record(
    request: Request,
    user: Annotated[Any, Depends(require_lookup)],
    dataset: Annotated[str, Form(max_length=500)],
    key: Annotated[str, Form(min_length=1, max_length=500)],
) -> HTMLResponse:
    """Was one record (by its primary key or object key) deleted or anonymised."""
    system, _, name = dataset.partition("/")
    try:
        if (system, name) not in lookup_form(catalogue()[0], readable_dag_ids(user)):
            return render(
                request, "message.html", 400, title="Cannot look up",
                message=f"{dataset!r} is not the system/dataset of an activity you may read",
            )  # fmt: skip
        found = open_evidence(with_key=True).lookup(system, name, key.strip())
    except (RetentionError, sa.exc.SQLAlchemyError) as exc:
        return _unavailable(request, exc)
    return _answer(request, user, f"the given record of {system}/{name}", found)


def _document(body: bytes, fmt: str, name: str) -> Response:
    media = {"html": "text/html; charset=utf-8", "pdf": "application/pdf", "csv": "text/csv"}
    headers = dict(SECURITY_HEADERS)
    if fmt != "html":
        headers["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return Response(body, media_type=media[fmt], headers=headers)


def certificate(
    request: Request,
    user: GetUserDep,
    run_id: Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9-]+$")],
    lang: Language = "en",
    format: DocumentFormat = "html",
) -> Response:
    """The deletion certificate of one ledger run (read access to the activity's runs)."""
    try:
        reader = open_evidence()
        run = read_run(reader, run_id)
        if dag_id_for(run.activity_id) not in readable_dag_ids(user):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")
        body = certificate_bytes(
            reader, run_id, language=lang, fmt=format, catalogue=catalogue()[0]
        )
    except RetentionError as exc:
        if "has no run" in str(exc):
            return render(request, "message.html", 404, title="No such run", message=str(exc))
        return _unavailable(request, exc)
    except sa.exc.SQLAlchemyError as exc:
        return _unavailable(request, exc)
    return _document(body, format, f"deletion-certificate-{run_id}-{lang}")


def report_period(today: dt.date) -> tuple[dt.date, dt.date]:
    """The report's default period: the last 30 days, today included."""
    return today - dt.timedelta(days=CHART_DAYS - 1), today


def report(
    request: Request,
    user: GetUserDep,
    start: Annotated[dt.date | None, Query(alias="from")] = None,
    end: Annotated[dt.date | None, Query(alias="to")] = None,
    lang: Language = "en",
    format: ReportFormat = "html",
) -> Response:
    """The audit report for a period (read access to the runs of every retention DAG: it
    covers them all)."""
    first, last = report_period(local_date(dt.datetime.now(dt.UTC)))
    first, last = start or first, end or last
    try:
        cat = catalogue()[0]
        hidden = {dag_id_for(a.id) for a in cat} - readable_dag_ids(user)
        if hidden:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"the audit report covers every activity; you may not read {len(hidden)} of"
                " the retention DAGs",
            )
        body = render_report(open_evidence(), first, last, language=lang, fmt=format,
                             catalogue=cat)  # fmt: skip
    except RetentionError as exc:  # e.g. a period that ends before it starts
        return render(request, "message.html", 400, title="No audit report", message=str(exc))
    except sa.exc.SQLAlchemyError as exc:
        return _unavailable(request, exc)
    return _document(body, format, f"retention-audit-report-{first}-{last}-{lang}")


def create_app() -> FastAPI:
    """The app the plugin mounts at ``/retention`` (see ``retention_page``)."""
    app = FastAPI(title="Retention", docs_url=None, redoc_url=None, openapi_url=None)
    website = [Depends(requires_access_view(AccessView.WEBSITE))]
    runs = [Depends(requires_access_dag("GET", DagAccessEntity.RUN))]
    app.get("/", dependencies=website, response_class=HTMLResponse)(overview)
    app.get("/dags/{dag_id}", dependencies=runs, response_class=HTMLResponse)(dag_tab)
    posted = [*website, Depends(require_same_origin)]
    app.post("/lookup/person", dependencies=posted, response_class=HTMLResponse)(lookup_person)
    app.post("/lookup/record", dependencies=posted, response_class=HTMLResponse)(lookup_record)
    app.get("/certificates/{run_id}", dependencies=website)(certificate)
    app.get("/report", dependencies=website)(report)
    return app
