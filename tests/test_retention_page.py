"""The Retention page in a real Airflow, after a real run: over HTTP and in headless Chromium.

One Airflow stack (API server, scheduler, DAG processor, triggerer; LocalExecutor; PostgreSQL
metadata DB) on the seeded demo runs the recruitment DAG once. Then:

- anonymous and forged requests are refused (401/403) on every route of the plugin app;
- logged-in users (JWT from ``/auth/token``, simple auth manager) see the page, with the
  counts the demo was designed to produce (from the demo manifest, never from the page code);
- lookup needs read access to the pseudonym key's connection;
- no seeded personal value (e-mail, phone, name, personnummer) appears in any page;
- Chromium (Debian's, driven by Playwright) logs in through Airflow's login form, opens the
  DAG list, the Retention page and the DAG's Retention tab, and saves screenshots to
  ``build/test-artifacts/``.
"""

from __future__ import annotations

import csv as csv_module
import datetime as dt
import io
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import unquote

import httpx
import pytest
import sqlalchemy as sa

from include.demo.airflow_stack import AirflowStack, StackConfig
from include.demo.embedded_s3 import EmbeddedS3
from include.demo.manifest import Expectation, Manifest
from include.demo.run import DEPLOYMENT_SETUP, ROOT, DemoPaths, environment
from include.demo.seed import place_holds, seed_demo
from include.retention.dag_factory import dag_id_for
from include.retention.evidence import EvidenceReader
from include.retention.identifiers import normalise
from include.retention.runs import Control
from tests.dbs import fresh_pg_database
from tests.demo_checks import edited_catalogue, strict_safety

pytestmark = pytest.mark.scheduler

AS_OF = dt.datetime(2026, 11, 24, 1, 30, tzinfo=dt.UTC)
ACTIVITY = "recruitment"
DAG_ID = dag_id_for(ACTIVITY)
GAP_ACTIVITY = "customer_support"  # its policy states no period for some records
GATED = "demo_process"  # at most one record per run here: its run waits for an approval
USERS = {"admin": "admin", "auditor": "viewer", "dpo": "op"}
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
PERSONAL_COLUMNS = re.compile(
    r"(^|_)(e?mail|phone|mobile|first_name|last_name|full_name|personnummer|ssn)$"
)
ROUTES = (
    "/retention/",
    f"/retention/dags/{DAG_ID}",
    "/retention/report",
    "/retention/certificates/x",
)


@dataclass
class Deployed:
    stack: AirflowStack
    manifest: Manifest
    urls: dict[str, str]
    control: Control
    key: bytes
    dag_run_id: str

    def client(self, user: str | None = None) -> httpx.Client:
        """An HTTP client of the API server, logged in as ``user`` (a bearer JWT)."""
        client = httpx.Client(base_url=self.stack.url, timeout=120)
        if user is not None:
            answer = client.post(
                "/auth/token", json={"username": user, "password": self.stack.passwords[user]}
            )
            assert answer.status_code == 201, answer.text
            client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        return client

    def designed(self, expectation: Expectation) -> list:
        return [
            e for e in self.manifest.for_activity(ACTIVITY, kind="row")
            if e.expectation == expectation
        ]  # fmt: skip


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    root = tmp_path_factory.mktemp("retention-page")
    key = secrets.token_urlsafe(32)
    paths = DemoPaths(root)
    with EmbeddedS3() as s3, fresh_pg_database("rt_ui_af") as metadata_url:
        seeded = seed_demo(AS_OF, paths.demo, s3_client=s3.client())
        control = Control.open(paths.control_url, key.encode())
        place_holds(control.holds, seeded.hold_requests())
        env = environment(paths, key, s3.endpoint_url)
        env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW_") or "_CONN_" in k}
        catalogue = edited_catalogue(root / "policies", {GATED: strict_safety})
        env["RETENTION_CATALOGUE_DIR"] = str(catalogue)
        config = StackConfig(
            home=root / "airflow",
            metadata_url=metadata_url,
            dags_folder=ROOT / "dags",
            project_root=ROOT,
            env=env,
            users=USERS,
            parallelism=4,
            setup_commands=(DEPLOYMENT_SETUP,),
        )
        with AirflowStack(config) as stack:
            api = stack.api()
            conf = {"as_of": AS_OF.isoformat(), "dry_run": False}
            runs = {}
            api.wait_for_dags([DAG_ID, dag_id_for(GATED)])
            for dag_id in (DAG_ID, dag_id_for(GATED)):
                api.unpause(dag_id)
                runs[dag_id] = api.trigger(dag_id, conf)
            run_id = runs[DAG_ID]
            assert api.wait_for_runs([(DAG_ID, run_id)], timeout=300)[(DAG_ID, run_id)] == "success"
            api.wait_for_task_state(dag_id_for(GATED), runs[dag_id_for(GATED)], "approve",
                                    "awaiting_input", timeout=300)  # fmt: skip
            yield Deployed(stack, seeded.manifest, seeded.urls, control, key.encode(), run_id)
            api.close()


# ------------------------------------------------------------------------ reading the HTML


class _Cells(HTMLParser):
    """The text of every ``<td data-col=…>`` per ``<tr data-activity=…>`` (or per table)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self._row = "page"
        self._col: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "tr" and named.get("data-activity"):
            self._row = str(named["data-activity"])
        if tag == "td" and named.get("data-col"):
            self._col = str(named["data-col"])
            self.rows.setdefault(self._row, {})[self._col] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._col = None

    def handle_data(self, data: str) -> None:
        if self._col is not None:
            cells = self.rows[self._row]
            cells[self._col] = " ".join(f"{cells[self._col]} {data}".split())


def cells(html: str) -> dict[str, dict[str, str]]:
    parser = _Cells()
    parser.feed(html)
    return parser.rows


def seeded_personal_values(urls: dict[str, str]) -> set[str]:
    """Every e-mail, phone number, name and personnummer in the seeded source systems."""
    values: set[str] = set()
    for url in urls.values():
        engine = sa.create_engine(url)
        metadata = sa.MetaData()
        metadata.reflect(engine)
        with engine.connect() as conn:
            for table in metadata.tables.values():
                columns = [c for c in table.columns if PERSONAL_COLUMNS.search(c.name)]
                for column in columns:
                    found = conn.execute(sa.select(column).where(column.is_not(None))).scalars()
                    values.update(str(v) for v in found if len(str(v)) >= 5)
        engine.dispose()
    return values


# ---------------------------------------------------------------------------------- tests


def test_anonymous_and_forged_requests_are_refused(deployed: Deployed) -> None:
    anonymous = deployed.client()
    for route in ROUTES:
        assert anonymous.get(route).status_code == 401, route
    form = {"dataset": "ats/candidates", "key": "1"}
    for kind in ("record", "person"):
        assert anonymous.post(f"/retention/lookup/{kind}", data=form).status_code == 401
    forged = {"Authorization": "Bearer not-a-token"}
    assert anonymous.get("/retention/", headers=forged).status_code == 403
    anonymous.cookies.set("_token", "not-a-token")
    assert anonymous.get("/retention/").status_code == 403


def test_viewer_sees_every_activity_with_the_designed_counts(deployed: Deployed) -> None:
    answer = deployed.client("auditor").get("/retention/")
    assert answer.status_code == 200, answer.text[:500]
    assert answer.headers["cache-control"] == "no-store"
    rows = cells(answer.text)
    catalogue = {p.stem for p in (ROOT / "include" / "policies").glob("*.yaml")}
    assert set(rows) - {"page"} == catalogue
    row = rows[ACTIVITY]
    due = [e for e in deployed.manifest.for_activity(ACTIVITY, kind="row") if e.due]
    assert len(due) > 0
    assert row["deleted-last"] == row["deleted-total"] == str(len(due))
    assert row["held"] == str(len(deployed.designed(Expectation.held)))
    assert row["unknown-anchor"] == str(len(deployed.designed(Expectation.unknown_anchor)))
    assert row["pending"] == "0" and rows[GATED]["pending"] == "1"
    assert row["verified"] == "verified"
    assert row["policy-gap"] == "none" and rows[GAP_ACTIVITY]["policy-gap"] == "gap"
    assert "completed" in row["last-run"]
    assert rows["chatbot"]["last-run"] == "never run" and rows["chatbot"]["deleted-total"] == "0"
    assert "ledger intact" in answer.text
    assert f"/dags/{DAG_ID}/runs/{deployed.dag_run_id}" in unquote(answer.text)
    assert "<script" not in answer.text  # nothing runs, nothing is fetched from elsewhere
    assert re.findall(r'(?:src|href|action)="(?:https?:)?//', answer.text) == []


def test_dag_tab_shows_the_activity_and_its_ledger_run(deployed: Deployed) -> None:
    client = deployed.client("auditor")
    answer = client.get(f"/retention/dags/{DAG_ID}")
    assert answer.status_code == 200, answer.text[:500]
    ledger_run = deployed.control.ledger.runs(ACTIVITY)[-1]
    assert ledger_run.run_id in answer.text
    due = sum(e.due for e in deployed.manifest.for_activity(ACTIVITY, kind="row"))
    assert cells(answer.text)["page"]["deleted-last"] == str(due)
    assert client.get("/retention/dags/not_a_retention_dag").status_code == 404


def test_certificates_and_the_report_are_served_to_readers(deployed: Deployed) -> None:
    client = deployed.client("auditor")
    run_id = deployed.control.ledger.runs(ACTIVITY)[-1].run_id
    html = client.get(f"/retention/certificates/{run_id}")
    assert html.status_code == 200, html.text[:500]
    assert run_id in html.text and html.headers["content-type"].startswith("text/html")
    swedish = client.get(f"/retention/certificates/{run_id}", params={"lang": "sv"})
    assert swedish.status_code == 200 and 'lang="sv"' in swedish.text
    pdf = client.get(f"/retention/certificates/{run_id}", params={"format": "pdf"})
    assert pdf.content.startswith(b"%PDF") and "attachment" in pdf.headers["content-disposition"]
    assert client.get("/retention/certificates/0000-no-such-run").status_code == 404
    assert client.get("/retention/certificates/x", params={"format": "doc"}).status_code == 422
    period = {"from": "2026-11-01", "to": "2026-12-31"}
    csv = client.get("/retention/report", params={**period, "format": "csv"})
    assert csv.status_code == 200, csv.text[:500]
    line = next(row for row in csv_module.reader(io.StringIO(csv.text)) if row[0] == ACTIVITY)
    due = sum(e.due for e in deployed.manifest.for_activity(ACTIVITY, kind="row"))
    assert (line[4], line[-1]) == (str(due), run_id)  # deleted, last run
    report = client.get("/retention/report", params=period)
    assert report.status_code == 200 and "Recruitment process" in report.text
    backwards = client.get("/retention/report", params={"from": "2026-12-31", "to": "2026-11-01"})
    assert backwards.status_code == 400


def test_record_lookup_needs_the_key_connection_and_answers_from_the_ledger(
    deployed: Deployed,
) -> None:
    deleted = next(e for e in deployed.manifest.for_activity(ACTIVITY, kind="row") if e.due)
    kept = deployed.designed(Expectation.kept)[0]
    form = {"dataset": f"{deleted.system}/{deleted.dataset}", "key": str(deleted.pk)}
    assert "lookup-denied" in deployed.client("auditor").get("/retention/").text
    assert deployed.client("auditor").post("/retention/lookup/record", data=form).status_code == 403
    dpo = deployed.client("dpo")
    answer = dpo.post("/retention/lookup/record", data=form)
    assert answer.status_code == 200, answer.text[:500]
    assert deployed.control.ledger.runs(ACTIVITY)[-1].run_id in answer.text
    assert ">delete<" in answer.text.replace(" ", "")
    not_deleted = dpo.post("/retention/lookup/record", data={**form, "key": str(kept.pk)})
    assert 'id="no-evidence"' in not_deleted.text
    foreign = dpo.post(
        "/retention/lookup/record", data=form, headers={"Origin": "http://evil.example"}
    )
    assert foreign.status_code == 403
    unknown = dpo.post("/retention/lookup/record", data={**form, "dataset": "ats/nope"})
    assert unknown.status_code == 400


def test_person_lookup_answers_what_the_ledger_holds_without_echoing_the_person(
    deployed: Deployed,
) -> None:
    deleted = next(e for e in deployed.manifest.for_activity(ACTIVITY, kind="row") if e.due)
    email = str(deleted.subject)
    assert "@" in email
    reader = EvidenceReader(deployed.control.ledger.engine, deployed.key)
    expected = reader.lookup_person([normalise("email", email).value])
    assert deployed.client("auditor").post(
        "/retention/lookup/person", data={"email": email}
    ).status_code == 403  # fmt: skip
    dpo = deployed.client("dpo")
    answer = dpo.post("/retention/lookup/person", data={"email": f"  {email.upper()} "})
    assert answer.status_code == 200, answer.text[:500]
    assert email.casefold() not in answer.text.casefold()
    assert ('id="no-evidence"' in answer.text) == (not expected)
    assert all(e.run_id in answer.text for e in expected)
    bad = dpo.post("/retention/lookup/person", data={"email": "not-an-address"})
    assert bad.status_code == 400 and "email" in bad.text and "not-an-address" not in bad.text
    assert dpo.post("/retention/lookup/person", data={}).status_code == 400


def test_no_personal_data_on_any_page(deployed: Deployed) -> None:
    personal = seeded_personal_values(deployed.urls)
    assert len(personal) > 100 and any("@" in v for v in personal)  # the scan has teeth
    admin = deployed.client("admin")
    deleted = next(e for e in deployed.manifest.for_activity(ACTIVITY, kind="row") if e.due)
    record = {"dataset": f"{deleted.system}/{deleted.dataset}", "key": str(deleted.pk)}
    answers = [
        admin.get("/retention/"),
        admin.get(f"/retention/dags/{DAG_ID}"),
        admin.post("/retention/lookup/record", data=record),
        admin.post("/retention/lookup/person", data={"email": str(deleted.subject)}),
        admin.get(f"/retention/certificates/{deployed.control.ledger.runs(ACTIVITY)[-1].run_id}"),
        admin.get("/retention/report", params={"from": "2026-11-01", "to": "2026-12-31"}),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.url
        html = answer.text
        leaked = [v for v in personal if re.search(rf"(?<!\w){re.escape(v)}(?!\w)", html, re.I)]
        assert leaked == [], answer.url


def test_browser_logs_in_and_sees_the_dag_list_and_the_retention_page(deployed: Deployed) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    due = sum(e.due for e in deployed.manifest.for_activity(ACTIVITY, kind="row"))
    url = deployed.stack.url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)  # a loaded machine renders slowly
        try:
            page.goto(f"{url}/")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", deployed.stack.passwords["admin"])
            page.click("button[type=submit]")
            page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"))

            page.goto(f"{url}/dags")
            page.get_by_placeholder("Search Dags").fill("Rekrytering")
            expect(page.get_by_text("1 Dag", exact=True)).to_be_visible()
            expect(page.get_by_text("Rekryteringsprocess (Recruitment process)")).to_be_visible()
            run_link = page.locator(f'a[href*="/dags/{DAG_ID}/runs/"]').first
            expect(run_link).to_be_visible()  # the card shows its latest run
            page.screenshot(path=ARTIFACTS / "dag-list.png")

            page.goto(f"{url}/plugin/retention")
            frame = page.frame_locator("iframe").first
            row = frame.locator(f"tr[data-activity={ACTIVITY}]")
            expect(row.locator("td[data-col=deleted-last]")).to_have_text(str(due))
            expect(row.locator("td[data-col=verified]")).to_have_text("verified")
            expect(frame.locator("#ledger-status")).to_contain_text("ledger intact")
            page.screenshot(path=ARTIFACTS / "retention-page.png")

            page.goto(f"{url}/dags/{DAG_ID}/plugin/retention_dag")
            tab = page.frame_locator("iframe").first
            expect(tab.locator("#activity td[data-col=deleted-last]")).to_have_text(str(due))
            page.screenshot(path=ARTIFACTS / "retention-dag-tab.png")
        finally:
            page.screenshot(path=ARTIFACTS / "last-browser-state.png")
            browser.close()
    for name in ("dag-list.png", "retention-page.png", "retention-dag-tab.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000, name
