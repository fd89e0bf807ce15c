"""The main job (``make demo``): seed the demo systems and run every retention DAG through
Airflow once, then print what happened per activity and verify the ledger.

Everything lives under ``var/`` (git-ignored): the SQLite source systems, the control
database (ledger + holds), Airflow's home and metadata DB, the pseudonym key and ``demo.env``
(the connections as environment variables, for ``airflow dags test`` and ``make ui``).
``--db postgres`` (``make demo DB=postgres``) puts the source systems on PostgreSQL and
MariaDB and the control database on PostgreSQL instead (see :mod:`include.demo.databases`).
The demo is evaluated at the time it was seeded, so a second run deletes nothing new.
Everything under ``var/`` holds personal data or secrets: it is created owner-only (umask 077:
files 0600, folders 0700), and files an earlier version left readable are tightened.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.demo import databases, saas_server
from include.demo.airflow_stack import check_port_free, free_port, request_stop, stop_honoured
from include.demo.embedded_s3 import local_client, spawn, wait_until_up
from include.retention.errors import RetentionError

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 600.0  # seconds for the whole burst of runs
PARALLELISM = 6  # task processes at once (a 2-core machine gains nothing from more)
# Airflow's metadata DB for the main job. Not SQLite: with the API server, scheduler, DAG
# processor, triggerer and task runs writing at once (27 DAGs triggered together), Airflow
# 3.3 on SQLite fails requests with "database is locked" even with WAL and a 60 s busy
# timeout, and failed task-state updates fail the tasks.
METADATA_ENV = "RETENTION_DEMO_AIRFLOW_DB"
DEFAULT_METADATA_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/retention_demo_airflow"
# The project's deployment set-up (the enforcement pool), run after `airflow db migrate`.
DEPLOYMENT_SETUP = (sys.executable, "-m", "include.retention", "setup")
PRIVATE_UMASK = 0o077  # files 0600, folders 0700
S3_MODULE = "include.demo.embedded_s3"  # the embedded S3 server's command line names it
SAAS_MODULE = "include.demo.saas_server"


def make_private(root: Path) -> None:
    """Owner-only access to ``root`` and everything below it (symlinks are left alone)."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(0o700 if path.is_dir() else 0o600)


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo keeps its state; ``db``: where its databases live (a layout of
    :mod:`include.demo.databases`)."""

    var: Path
    db: str = "sqlite"

    @property
    def demo(self) -> Path:
        return self.var / "demo"

    @property
    def state(self) -> Path:
        return self.demo / "state.json"

    @property
    def airflow_home(self) -> Path:
        return self.var / "airflow"

    @property
    def control_url(self) -> str:
        if self.db == "sqlite":
            return f"sqlite:///{self.var / 'control.db'}"
        return databases.control_url(databases.prefix_for(self.var))

    @property
    def source_urls(self) -> dict[str, str]:
        """The demo systems' databases, by system."""
        if self.db == "sqlite":
            from include.demo.seed import sqlite_urls

            return sqlite_urls(self.demo)
        return databases.source_urls(databases.prefix_for(self.var))

    @property
    def key_file(self) -> Path:
        return self.var / "secrets" / "pseudonym_key"

    @property
    def signing_key_file(self) -> Path:
        return self.var / "secrets" / "manifest_signing_key"

    @property
    def env_file(self) -> Path:
        return self.var / "demo.env"

    @property
    def saas_store(self) -> Path:
        """The SaaS tool's records (kept outside ``demo/``: the server keeps it open)."""
        return self.var / "saas" / "records.db"

    @property
    def saas_token(self) -> Path:
        return self.var / "secrets" / "saas_token"


def ensure_key(paths: DemoPaths) -> str:
    """The demo's secret pseudonym key: generated once, readable by the owner only."""
    if not paths.key_file.exists():
        paths.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        paths.key_file.write_text(secrets.token_urlsafe(48), encoding="ascii")
        paths.key_file.chmod(0o600)
    return paths.key_file.read_text(encoding="ascii").strip()


def ensure_signing_key(paths: DemoPaths) -> str:
    """The demo's ledger-manifest signing key (Ed25519 seed, base64): generated once, 0600."""
    from include.retention.manifest import SigningKey

    if not paths.signing_key_file.exists():
        paths.signing_key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        paths.signing_key_file.write_text(SigningKey.new().text(), encoding="ascii")
        paths.signing_key_file.chmod(0o600)
    return paths.signing_key_file.read_text(encoding="ascii").strip()


@dataclass(frozen=True)
class DemoServer:
    """A demo server (the embedded S3, the SaaS API): its endpoint, and the process if this
    run started it."""

    endpoint: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def fresh(self) -> bool:
        """Started by this run: it holds no objects yet."""
        return self.process is not None

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)  # its own session, and only it
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)


def _running_server(paths: DemoPaths, name: str, *markers: str) -> int | None:
    """The port of the ``name`` server (``s3``, ``saas``) an earlier run of this checkout
    started, if that very process (its command line names ``markers`` and the port) still
    runs and answers; never just whatever listens on a port."""
    import psutil

    try:
        pid = int((paths.var / f"{name}.pid").read_text(encoding="ascii"))
        port = int((paths.var / f"{name}.port").read_text(encoding="ascii"))
        command = psutil.Process(pid).cmdline()
    except (OSError, ValueError, psutil.Error):
        return None
    if not all(marker in command for marker in (*markers, str(port))):
        return None
    try:
        wait_until_up(f"http://127.0.0.1:{port}", timeout=0.5)
    except RetentionError:
        return None
    return port


def _reusable_port(paths: DemoPaths, name: str, wanted: int | None, *markers: str) -> int | None:
    """The running server's port if it may serve this run; an error if ``wanted`` differs."""
    running = _running_server(paths, name, *markers)
    if running is not None and wanted not in (None, running):
        raise RetentionError(
            f"the demo's {name} server already runs on port {running} (pid in"
            f" {paths.var / (name + '.pid')}): stop it first, or leave out --{name}-port"
        )
    return running


def ensure_s3(paths: DemoPaths, port: int | None) -> DemoServer:
    """The embedded S3: the one this checkout started earlier while it runs (it keeps the
    seeded objects), else a new one in the background on ``port`` (default: a free port).
    A port something else listens on is an error naming it."""
    running = _reusable_port(paths, "s3", port, S3_MODULE)
    if running is not None:
        return DemoServer(f"http://127.0.0.1:{running}")
    port = port or free_port()
    check_port_free(port)
    log = (paths.var / "s3.log").open("ab")
    proc = spawn(port=port, stdout=log, detach=True)
    (paths.var / "s3.pid").write_text(str(proc.pid), encoding="ascii")
    (paths.var / "s3.port").write_text(str(port), encoding="ascii")
    return DemoServer(f"http://127.0.0.1:{port}", proc)


def ensure_saas(paths: DemoPaths, port: int | None) -> tuple[DemoServer, dict[str, Any]]:
    """The SaaS API (the demo's lead CRM): the one this checkout started earlier while it
    runs, else a new one in the background on ``port`` (default: a free port). Returns its
    server and its Airflow connection. Its records live in a file and survive a restart."""
    from include.demo.saas import ensure_token

    token = ensure_token(paths.saas_token)
    running = _reusable_port(paths, "saas", port, SAAS_MODULE, str(paths.saas_store))
    proc = None
    if running is None:
        running = port or free_port()
        check_port_free(running)
        log = (paths.var / "saas.log").open("ab")
        proc = saas_server.spawn(
            paths.saas_store, paths.saas_token, port=running, stdout=log, detach=True
        )
        (paths.var / "saas.pid").write_text(str(proc.pid), encoding="ascii")
        (paths.var / "saas.port").write_text(str(running), encoding="ascii")
    server = DemoServer(f"http://127.0.0.1:{running}", proc)
    return server, saas_server.connection("127.0.0.1", running, token)


def environment(
    paths: DemoPaths, key: str, s3_endpoint: str, saas: dict[str, Any] | None = None
) -> dict[str, str]:
    """The Airflow settings and connections of the embedded default."""
    env = {
        "AIRFLOW_HOME": str(paths.airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "PYTHONPATH": str(ROOT),
        "RETENTION_CONTROL_DB_URL": paths.control_url,
        "AIRFLOW_CONN_RETENTION_PSEUDONYM_KEY": json.dumps(
            {"conn_type": "generic", "password": key}
        ),
        "AIRFLOW_CONN_RETENTION_MANIFEST_SIGNING_KEY": json.dumps(
            {"conn_type": "generic", "password": ensure_signing_key(paths)}
        ),
        "AIRFLOW_CONN_RETENTION_S3": json.dumps(
            {
                "conn_type": "aws",
                "login": "retention-demo",
                "password": "retention-demo",
                "extra": {"endpoint_url": s3_endpoint, "region_name": "eu-north-1"},
            }
        ),
    }
    for system, url in sorted(paths.source_urls.items()):
        env[f"AIRFLOW_CONN_RETENTION_{system.upper()}"] = databases.airflow_connection(url)
    if saas is not None:
        from include.demo.saas import http_activities
        from include.retention.catalogue import load_catalogue

        for activity in http_activities(load_catalogue()):
            env[f"AIRFLOW_CONN_{activity.source.conn_id.upper()}"] = json.dumps(saas)
    return env


def write_env_file(paths: DemoPaths, env: dict[str, str]) -> None:
    lines = [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]
    paths.env_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths.env_file.chmod(0o600)


def seed(paths: DemoPaths, key: str, s3_endpoint: str, as_of: dt.datetime) -> None:
    """Seed the SQL systems and the buckets, and place the designed holds."""
    from include.demo.seed import place_holds, seed_demo
    from include.retention.runs import Control

    shutil.rmtree(paths.demo, ignore_errors=True)
    (paths.var / "control.db").unlink(missing_ok=True)
    servers = None if paths.db == "sqlite" else paths.source_urls
    if servers:
        databases.recreate_databases([*servers.values(), paths.control_url])
    result = seed_demo(
        as_of,
        paths.demo,
        s3_client=local_client(s3_endpoint),
        saas_store=paths.saas_store,
        urls=servers,
    )
    # The ledger and hold tables exist before the DAGs run, so no run races to create them.
    control = Control.open(paths.control_url, key.encode())
    holds = place_holds(control.holds, result.hold_requests())
    paths.state.write_text(
        json.dumps({"as_of": as_of.isoformat(), "db": paths.db}), encoding="utf-8"
    )
    print(
        f"seeded {len(result.manifest)} records in 13 systems ({paths.db}), 2 buckets and a"
        " SaaS API;"
        f" placed {len(holds)} legal holds (as of {as_of.isoformat()})"
    )


def seeded_as_of(paths: DemoPaths) -> dt.datetime | None:
    """When the demo was seeded, if it was seeded for this layout (``paths.db``)."""
    if not paths.state.exists():
        return None
    state = json.loads(paths.state.read_text(encoding="utf-8"))
    if state.get("db", "sqlite") != paths.db:
        return None
    return dt.datetime.fromisoformat(state["as_of"])


def migrate_airflow(env: dict[str, str]) -> None:
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        env={**os.environ, **env},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def default_metadata_url(paths: DemoPaths) -> str:
    """One metadata database per checkout, so two checkouts' demos never share runs."""
    suffix = hashlib.sha256(str(paths.var).encode()).hexdigest()[:8]
    return f"{DEFAULT_METADATA_URL}_{suffix}"


def ensure_metadata_db(url: str) -> str:
    """A fresh PostgreSQL database for Airflow's metadata: the main job runs every DAG once,
    so runs an interrupted job left queued must not resume (the evidence is in the control
    database, not here)."""
    import sqlalchemy as sa

    target = sa.make_url(url)
    if target.get_backend_name() != "postgresql":
        return url
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", target.database or ""):
        raise RetentionError(
            f"{METADATA_ENV}: database name {target.database!r} must be lower-case letters,"
            " digits and underscores"
        )
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
    except sa.exc.OperationalError as exc:
        raise RetentionError(
            f"the main job keeps Airflow's metadata in PostgreSQL"
            f" ({target.render_as_string()}), which does not answer: start PostgreSQL or set"
            f" {METADATA_ENV} to another database URL ({type(exc).__name__})"
        ) from None
    finally:
        admin.dispose()
    return url


def run_all_dags(
    paths: DemoPaths, env: dict[str, str], as_of: dt.datetime, api_port: int
) -> dict[str, str]:
    """Start Airflow's scheduler, executor and API server, trigger every retention DAG at once
    through the REST API (the nightly burst), wait for the runs and stop Airflow again.
    Returns the run state per DAG."""
    from include.demo.airflow_stack import AirflowStack, StackConfig
    from include.retention.catalogue import load_catalogue
    from include.retention.dag_factory import dag_id_for

    dag_ids = sorted(dag_id_for(activity.id) for activity in load_catalogue())
    metadata_url = os.environ.get(METADATA_ENV) or default_metadata_url(paths)
    config = StackConfig(
        home=paths.airflow_home,
        metadata_url=ensure_metadata_db(metadata_url),
        dags_folder=ROOT / "dags",
        project_root=ROOT,
        env={k: v for k, v in env.items() if not k.startswith("AIRFLOW_") or "_CONN_" in k},
        api_port=api_port,
        parallelism=PARALLELISM,
        setup_commands=(DEPLOYMENT_SETUP,),
    )
    print(
        f"starting Airflow (scheduler, dag-processor, triggerer, API server; logs in"
        f" {paths.airflow_home / 'stack-logs'})"
    )
    clock = Phases()
    with AirflowStack(config) as stack:
        clock.lap("Airflow start")
        api = stack.api()
        api.wait_for_dags(dag_ids)
        clock.lap("DAGs parsed")
        conf = {"as_of": as_of.isoformat(), "dry_run": False}
        for dag in api.dags("retention_"):  # deployed unpaused; unpause any paused by hand
            if dag["dag_id"] in dag_ids and dag["is_paused"]:
                api.unpause(dag["dag_id"])
        runs = [(dag_id, api.trigger(dag_id, conf)) for dag_id in dag_ids]
        print(f"triggered {len(runs)} DAG runs through {stack.url}/api/v2; waiting for them")
        clock.lap("triggered")
        states = api.wait_for_runs(runs, timeout=RUN_TIMEOUT)
        clock.lap("DAG runs")
    clock.lap("Airflow stop")
    print(f"phases: {clock}")
    return {dag_id: state for (dag_id, _), state in states.items()}


class Phases:
    """Wall-clock seconds per phase of the main job, as laps."""

    def __init__(self) -> None:
        self.laps: list[tuple[str, float]] = []
        self._last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps.append((name, now - self._last))
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.laps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.demo.run")
    parser.add_argument("--var", type=Path, default=ROOT / "var", help="state directory")
    parser.add_argument(
        "--s3-port", type=int, help="embedded S3 port (default: a free one, kept while it runs)"
    )
    parser.add_argument(
        "--saas-port", type=int, help="demo SaaS API port (default: a free one, kept while it runs)"
    )
    parser.add_argument(
        "--api-port", type=int, default=0, help="Airflow API server port (default: a free one)"
    )
    parser.add_argument("--reset", action="store_true", help="reseed the demo from scratch")
    parser.add_argument(
        "--db",
        choices=databases.LAYOUTS,
        default="sqlite",
        help="sqlite: SQLite files; postgres: sources on PostgreSQL and MariaDB, control DB"
        " on PostgreSQL",
    )
    parser.add_argument(
        "--setup-only", action="store_true", help="seed and configure, but run no DAG"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # One line per designed hold is noise here: the seed's summary counts them.
    logging.getLogger("include.retention.holds").setLevel(logging.WARNING)
    started = time.monotonic()
    paths = DemoPaths(args.var.resolve(), args.db)
    os.umask(PRIVATE_UMASK)
    make_private(paths.var)
    key = ensure_key(paths)
    stop_on_signals()
    s3 = ensure_s3(paths, args.s3_port)
    saas: DemoServer | None = None
    try:
        saas, saas_conn = ensure_saas(paths, args.saas_port)
        return _main_job(args, paths, key, s3, saas_conn, started)
    except KeyboardInterrupt:
        stop_honoured()
        s3.stop()  # an S3 this run started holds nothing worth keeping
        if saas is not None:
            saas.stop()
        print("interrupted: stopped everything the main job had started", file=sys.stderr)
        return 130


def stop_on_signals() -> None:
    """SIGTERM unwinds like Ctrl-C (KeyboardInterrupt), so every ``with`` block stops what it
    started; a second signal cannot cut that clean-up short. Should the exception be lost
    (raised inside a garbage-collection callback), the stack's next wait raises it again."""

    def interrupted(signum: int, frame: Any) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
        request_stop()
        raise KeyboardInterrupt

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, interrupted)


def _main_job(
    args: argparse.Namespace,
    paths: DemoPaths,
    key: str,
    s3: DemoServer,
    saas: dict[str, Any],
    started: float,
) -> int:
    as_of = seeded_as_of(paths)
    if as_of is not None and s3.fresh and not args.reset:
        print("the embedded S3 was not running, so its objects are gone: reseeding the demo")
    if as_of is None or s3.fresh or args.reset:
        as_of = dt.datetime.now(dt.UTC).replace(microsecond=0)
        seed(paths, key, s3.endpoint, as_of)
    from include.retention.manifest import bucket_name, ensure_manifest_bucket

    # the ledger manifests' bucket: Object Lock can only be enabled when a bucket is created
    ensure_manifest_bucket(local_client(s3.endpoint), bucket_name())
    env = environment(paths, key, s3.endpoint, saas)
    write_env_file(paths, env)
    os.environ.update(env)
    if args.setup_only:
        migrate_airflow(env)  # the metadata DB of `make ui` (airflow standalone, SQLite)
        print(f"demo set up in {paths.var}: source it with '. {paths.env_file}'")
        return 0
    states = run_all_dags(paths, env, as_of, args.api_port)
    from include.demo.report import print_report

    ok = print_report(paths.control_url, key.encode(), states)
    print(f"main job finished in {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


def _run() -> Any:
    try:
        return main()
    except RetentionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_run())
