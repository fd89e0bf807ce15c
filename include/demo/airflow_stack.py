"""Airflow's real components as local processes, and a REST client to drive them.

:class:`AirflowStack` starts ``airflow api-server`` (on 127.0.0.1), ``scheduler``,
``dag-processor`` and ``triggerer`` — plus ``airflow celery worker`` for the CeleryExecutor —
each in its own process group with its own log file, waits until they report healthy, and stops
everything it started (descendants included). It is how the main job and the end-to-end tests
run DAGs: through the scheduler, an executor and the task runner's execution API, never
``dag.test()``.

:class:`AirflowApi` is the REST client a person's script would use: a token from
``/auth/token``, then trigger runs with conf, poll them, list task instances, answer an
approval (``PATCH …/hitlDetails``) and unpause DAGs.

Every stack has its own home, users and passwords (a 0600 file for the simple auth manager),
and JWT/secret/Fernet keys generated for it, so stacks of different people never share state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from include.retention.dsr import SENSITIVE_FORM_FIELDS
from include.retention.errors import RetentionError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
RUNS_PAGE = 100  # the API's default page size
ADMIN = "admin"
START_TIMEOUT = 180.0
STOP_TIMEOUT = 15.0  # then whatever is left of a component is killed
LOCAL_EXECUTOR = "include.retention.executors.LocalExecutor"
# A data-subject request's identifiers (the dsr_* trigger forms' fields), masked like passwords
# wherever Airflow masks secrets: the audit log keeps every trigger request's body.
SENSITIVE_NAMES = ",".join(SENSITIVE_FORM_FIELDS)
# The Celery worker's configuration: Airflow's, with the task libraries preloaded.
CELERY_CONFIG = "include.retention.celery_config.CELERY_CONFIG"
_HEALTHY_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
# A metadata DB on SQLite: every component writes to one file. Writers wait for each other
# (instead of failing with "database is locked" after 5 s) and readers don't block them (WAL).
SQLITE_CONNECT_ARGS = {"timeout": 60.0}
_SQLITE_CONNECT_ARGS_PATH = f"{__name__}.SQLITE_CONNECT_ARGS"


# A stop asked for by a signal handler (`request_stop`), honoured by the next wait.
_stop_requested = threading.Event()


def request_stop() -> None:
    """Make the next wait of this process's stacks (each calls `AirflowStack.check_running`)
    end in KeyboardInterrupt, once. For a signal handler that raises KeyboardInterrupt: its
    exception is lost when the signal lands while a garbage-collection callback runs (Python
    only prints it), and the process would go on, deaf to the signal it took."""
    _stop_requested.set()


def stop_honoured() -> None:
    """The KeyboardInterrupt arrived: nothing is left to ask for."""
    _stop_requested.clear()


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(port: int, host: str = HOST) -> None:
    """Fail with a clear message when ``port`` is already taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise RetentionError(
                f"port {port} on {host} is in use ({exc.strerror}): stop what listens there"
                " or choose another port (0 picks a free one)"
            ) from None


@dataclass(frozen=True)
class CeleryConfig:
    """The CeleryExecutor's broker and the queue this stack's tasks go to.

    A Redis database number and a queue name of its own keep concurrent stacks apart on a
    shared Redis. The result backend is the metadata DB (Airflow's default).
    """

    broker_url: str
    queue: str
    concurrency: int = 4

    def check_broker(self) -> None:
        """Fail at once, naming the broker, when Redis does not answer."""
        import redis

        try:
            redis.Redis.from_url(self.broker_url, socket_connect_timeout=3).ping()
        except redis.RedisError as exc:
            raise RetentionError(
                f"the Celery broker {self.broker_url} does not answer ({exc}): start Redis"
            ) from None

    @classmethod
    def on_local_redis(cls, db: int | None = None, concurrency: int = 4) -> CeleryConfig:
        number = secrets.randbelow(15) + 1 if db is None else db
        return cls(
            broker_url=f"redis://{HOST}:6379/{number}",
            queue=f"retention_{secrets.token_hex(4)}",
            concurrency=concurrency,
        )


@dataclass(frozen=True)
class StackConfig:
    """What an :class:`AirflowStack` runs on.

    ``env`` carries the project's own settings (connections ``AIRFLOW_CONN_*``, the control
    DB, …); the stack adds Airflow's. ``users`` maps user names to simple-auth-manager roles
    (``viewer``, ``user``, ``op``, ``admin``); passwords are generated. With ``celery`` set the
    stack uses the CeleryExecutor and starts a worker, else the LocalExecutor. Scheduled (cron)
    runs are off unless ``schedule_runs``: the caller triggers what it wants to run.
    ``setup_commands`` run with the stack's environment after ``airflow db migrate`` (the
    project's deployment set-up, e.g. its pools).
    """

    home: Path
    metadata_url: str
    dags_folder: Path
    project_root: Path
    env: Mapping[str, str] = field(default_factory=dict)
    api_port: int = 0
    celery: CeleryConfig | None = None
    parallelism: int = 8
    users: Mapping[str, str] = field(default_factory=lambda: {ADMIN: "admin"})
    schedule_runs: bool = False
    setup_commands: Sequence[Sequence[str]] = ()

    @property
    def executor(self) -> str:
        """Celery, or the LocalExecutor that forks task processes with Great Expectations
        already imported (:mod:`include.retention.executors`)."""
        return "CeleryExecutor" if self.celery else LOCAL_EXECUTOR


# The long-running Airflow components of a stack: name -> the `airflow` sub-command it runs
# (options come from the config); the Celery worker only with the CeleryExecutor. The
# production docker-compose.yaml runs the same set (tests/test_compose.py derives it from here).
COMPONENTS: dict[str, tuple[str, ...]] = {
    "api-server": ("api-server",),
    "dag-processor": ("dag-processor",),
    "triggerer": ("triggerer",),
    "scheduler": ("scheduler",),
    "celery-worker": ("celery", "worker"),
}


@dataclass
class _Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class AirflowStack:
    """Airflow's components as local processes (a context manager)."""

    def __init__(self, config: StackConfig):
        self.config = config
        self.port = config.api_port or free_port()
        self.passwords: dict[str, str] = {}
        self._components: list[_Component] = []
        self._env: dict[str, str] = {}

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> AirflowStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def logs(self) -> Path:
        return self.config.home / "stack-logs"

    def start(self, timeout: float = START_TIMEOUT) -> AirflowStack:
        """Migrate the metadata DB, start every component and wait until they are healthy."""
        check_port_free(self.port)
        if self.config.celery:
            self.config.celery.check_broker()
        self.config.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.logs.mkdir(exist_ok=True)
        self._env = self.environment()
        _sqlite_wal(self.config.metadata_url)
        started = time.monotonic()
        self.run(_airflow_bin(), "db", "migrate")
        for command in self.config.setup_commands:
            self.run(*command)
        migrated = time.monotonic()
        try:
            for name, args in self._commands():
                self._spawn(name, args)
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        log.info(
            "Airflow (%s) is up at %s (metadata DB migrated and set up in %.0f s, components"
            " healthy %.0f s later)",
            self.config.executor, self.url, migrated - started, time.monotonic() - migrated,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        """Stop every started component and whatever it started; idempotent."""
        components, self._components = self._components, []
        for component in reversed(components):  # workers and scheduler before the API server
            with contextlib.suppress(ProcessLookupError):
                os.killpg(component.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for component in components:
            try:
                component.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("Airflow %s did not stop in time: killing it", component.name)
            _kill_session(component.process)

    def check_running(self) -> None:
        """Raise, with the log tail, if a component has exited; KeyboardInterrupt if a stop
        was asked for (`request_stop`)."""
        if _stop_requested.is_set():
            stop_honoured()
            raise KeyboardInterrupt
        for component in self._components:
            code = component.process.poll()
            if code is not None:
                raise RetentionError(
                    f"Airflow {component.name} exited with code {code}; its log"
                    f" ({component.log_path}) ends with:\n{component.tail()}"
                )

    # -- configuration ---------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The environment of every component: the caller's settings plus Airflow's."""
        cfg = self.config
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
        env.update(cfg.env)
        env.update(
            {
                "AIRFLOW_HOME": str(cfg.home),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
                "PYTHONPATH": str(cfg.project_root),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": cfg.metadata_url,
                "AIRFLOW__CORE__EXECUTOR": cfg.executor,
                "AIRFLOW__CORE__PARALLELISM": str(cfg.parallelism),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(cfg.dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(cfg.project_root / "plugins"),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__CORE__FERNET_KEY": self._fernet_key(),
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                    f"{user}:{role}" for user, role in cfg.users.items()
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self._password_file()),
                "AIRFLOW__API__HOST": HOST,
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                # HS512 wants a key of 64 bytes or more (PyJWT warns on every token below).
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(cfg.schedule_runs),
                "AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES": SENSITIVE_NAMES,
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                # A stack runs for minutes on a fixed DAG folder: parse it once, not every 30 s.
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            }
        )
        if cfg.metadata_url.startswith("sqlite"):
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] = _SQLITE_CONNECT_ARGS_PATH
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC"] = _SQLITE_CONNECT_ARGS_PATH
        if cfg.celery:
            env["AIRFLOW__CELERY__BROKER_URL"] = cfg.celery.broker_url
            env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] = cfg.celery.queue
            env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] = str(cfg.celery.concurrency)
            env["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] = CELERY_CONFIG
        return env

    def _password_file(self) -> Path:
        """The simple auth manager's passwords (JSON), generated per stack, owner-only."""
        path = self.config.home / "simple_auth_manager_passwords.json"
        if not self.passwords:
            self.passwords = {user: secrets.token_urlsafe(16) for user in self.config.users}
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(self.passwords, file)
            path.chmod(0o600)
        return path

    def _fernet_key(self) -> str:
        """Encrypts secrets in the metadata DB: kept with it, so a reused home stays readable."""
        path = self.config.home / "fernet_key"
        if not path.exists():
            from cryptography.fernet import Fernet

            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as file:
                file.write(Fernet.generate_key().decode("ascii"))
        return path.read_text(encoding="ascii").strip()

    def _commands(self) -> Iterator[tuple[str, list[str]]]:
        run = COMPONENTS
        yield "api-server", [*run["api-server"], "--host", HOST, "--port", str(self.port)]
        yield "dag-processor", [*run["dag-processor"]]
        yield "triggerer", [*run["triggerer"], "--skip-serve-logs"]
        yield "scheduler", [*run["scheduler"], "--skip-serve-logs"]
        if self.config.celery:
            yield "celery-worker", [
                *run["celery-worker"], "--queues", self.config.celery.queue,
                "--concurrency", str(self.config.celery.concurrency),
                "--celery-hostname", f"{self.config.celery.queue}@%h", "--skip-serve-logs",
            ]  # fmt: skip

    # -- processes -------------------------------------------------------------------------

    def run(self, *argv: str) -> str:
        """Run a command with the stack's environment (e.g. an ``airflow`` CLI command);
        returns its output, raises with the output's end if it fails."""
        done = subprocess.run(
            list(argv), env=self._env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise RetentionError(f"`{' '.join(argv)}` failed (exit {done.returncode}):\n{tail}")
        return done.stdout

    def _spawn(self, name: str, args: list[str]) -> None:
        log_path = self.logs / f"{name}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                [_airflow_bin(), *args],
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        self._components.append(_Component(name, process, log_path))

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                self.check_running()
                try:
                    last = client.get("/api/v2/monitor/health").json()
                except (httpx.HTTPError, ValueError) as exc:
                    last = exc
                else:
                    if _all_healthy(last):
                        return
                time.sleep(1)
        raise RetentionError(
            f"Airflow at {self.url} was not healthy within {timeout:.0f}s (last answer: {last});"
            f" see the component logs in {self.logs}"
        )

    # -- REST ------------------------------------------------------------------------------

    def api(self, user: str = ADMIN) -> AirflowApi:
        """A REST client logged in as ``user`` (one of the configured users)."""
        return AirflowApi(self.url, user, self.passwords[user], stack=self)


def _all_healthy(health: Any) -> bool:
    return isinstance(health, dict) and all(
        (health.get(name) or {}).get("status") == "healthy" for name in _HEALTHY_COMPONENTS
    )


def _log_line(line: Any) -> str:
    """A structured task log line (Airflow 3) as text: its event, then its exceptions."""
    if not isinstance(line, dict):
        return str(line)
    errors = [f"{e.get('exc_type')}: {e.get('exc_value')}" for e in line.get("error_detail") or []]
    return "\n".join([str(line.get("event", "")), *errors])


def _sqlite_wal(url: str) -> None:
    """Switch a SQLite metadata DB to write-ahead logging (a property of the file)."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return
    engine = sa.create_engine(parsed)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    engine.dispose()


def _airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def _kill_session(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left of a component's session.

    Each component is a session leader (``start_new_session``); task processes move to process
    groups of their own but stay in the session, so the session id finds every descendant,
    even those started while the component was shutting down.
    """
    for _ in range(3):
        left = _session_members(process.pid)
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    process.poll()


def _session_members(session_id: int) -> list[int]:
    import psutil

    members = []
    for pid in psutil.pids():
        with contextlib.suppress(OSError):
            if os.getsid(pid) == session_id:
                members.append(pid)
    return members


@dataclass
class AirflowApi:
    """Airflow's public REST API (``/api/v2``) as one user, with a token from ``/auth/token``."""

    base_url: str
    username: str
    password: str
    stack: AirflowStack | None = None
    timeout: float = 120.0  # a busy API server on a SQLite metadata DB can take a while
    _client: httpx.Client | None = field(default=None, repr=False)

    def _http(self) -> httpx.Client:
        if self._client is None:
            client = httpx.Client(base_url=self.base_url, timeout=self.timeout)
            answer = client.post(
                "/auth/token", json={"username": self.username, "password": self.password}
            )
            if answer.status_code != 201:
                raise RetentionError(
                    f"login as {self.username!r} at {self.base_url} failed:"
                    f" HTTP {answer.status_code} {answer.text[:300]}"
                )
            client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
            self._client = client
        return self._client

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self._http().request(method, "/api/v2" + path, **kwargs)
        if answer.is_error:
            raise RetentionError(
                f"{method} /api/v2{path} as {self.username!r}: HTTP {answer.status_code}"
                f" {answer.text[:500]}"
            )
        return answer.json() if answer.content else None

    # -- DAGs ------------------------------------------------------------------------------

    def dags(self, pattern: str = "") -> list[dict[str, Any]]:
        """The DAGs whose id contains ``pattern`` (SQL LIKE syntax)."""
        found = self.request("GET", "/dags", params={"dag_id_pattern": pattern, "limit": 1000})
        return list(found["dags"])

    def import_errors(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/importErrors", params={"limit": 100})["import_errors"])

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 120) -> None:
        """Wait until the DAG processor has parsed every DAG in ``dag_ids``."""
        wanted = set(dag_ids)
        deadline = time.monotonic() + timeout
        while True:
            self._check_stack()
            missing = wanted - {dag["dag_id"] for dag in self.dags()}
            if not missing:
                return
            errors = self.import_errors()
            if errors:
                raise RetentionError(f"the DAG folder has import errors: {errors}")
            if time.monotonic() > deadline:
                raise RetentionError(
                    f"{len(missing)} DAGs were not parsed within {timeout:.0f}s:"
                    f" {', '.join(sorted(missing)[:5])}…"
                )
            time.sleep(1)

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{quote(dag_id)}", json={"is_paused": False})

    # -- runs ------------------------------------------------------------------------------

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Trigger a run with ``conf`` (as the UI's Trigger button does); returns its run id."""
        run = self.request(
            "POST",
            f"/dags/{quote(dag_id)}/dagRuns",
            json={"logical_date": None, "conf": conf or {}},
        )
        return str(run["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}"))

    def run_states(self, runs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The state of each ``(dag_id, run_id)``, from one listing of the DAGs' runs (a page
        per 100 runs) instead of a request per run."""
        wanted = set(runs)
        states: dict[tuple[str, str], str] = {}
        body: dict[str, Any] = {"dag_ids": sorted({dag_id for dag_id, _ in wanted})}
        offset = 0
        while True:
            page = self.request(
                "POST", "/dags/~/dagRuns/list", json=body | {"page_offset": offset}
            )["dag_runs"]
            for run in page:
                key = (run["dag_id"], run["dag_run_id"])
                if key in wanted:
                    states[key] = run["state"]
            if len(page) < RUNS_PAGE:
                return states
            offset += len(page)

    def wait_for_runs(
        self, runs: Iterable[tuple[str, str]], timeout: float = 300, poll: float = 2
    ) -> dict[tuple[str, str], str]:
        """Wait until every ``(dag_id, run_id)`` has finished; returns the final states."""
        pending = set(runs)
        states: dict[tuple[str, str], str] = {}
        deadline = time.monotonic() + timeout
        reported = -1
        while pending:
            self._check_stack()
            for key, state in self.run_states(pending).items():
                if state in TERMINAL_RUN_STATES:
                    states[key] = state
                    pending.discard(key)
            if pending and time.monotonic() > deadline:
                raise RetentionError(
                    f"{len(pending)} runs did not finish within {timeout:.0f}s:"
                    f" {sorted(pending)[:3]}"
                )
            if pending and len(states) != reported:
                reported = len(states)
                log.info("%d runs finished, %d still running", len(states), len(pending))
            if pending:
                time.sleep(poll)
        return states

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """The run's task instances by task id."""
        found = self.request("GET", f"/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}/taskInstances")
        return {ti["task_id"]: ti for ti in found["task_instances"]}

    def mapped_instances(self, dag_id: str, run_id: str, task_id: str) -> dict[int, dict[str, Any]]:
        """The task instances of a mapped task, by map index."""
        found = self.request(
            "GET", f"/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}/taskInstances",
            params={"task_id": task_id, "limit": 1000},
        )  # fmt: skip
        return {
            ti["map_index"]: ti for ti in found["task_instances"] if ti["task_id"] == task_id
        }  # fmt: skip

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        """One try's log of a task instance as the UI's Logs tab shows it: each line's message,
        and for a failure the exception's type and message."""
        path = (
            f"/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}"
            f"/taskInstances/{quote(task_id)}/logs/{try_number}"
        )
        found = self.request("GET", path, params={"map_index": map_index, "full_content": True})
        return "\n".join(_log_line(line) for line in found.get("content") or [])

    def clear_task(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> None:
        """Clear one task instance (one map index of a mapped task), as the UI's Clear button:
        it runs again now, as its next try."""
        target: Any = task_id if map_index < 0 else [task_id, map_index]
        self.request(
            "POST", f"/dags/{quote(dag_id)}/clearTaskInstances",
            json={"dag_run_id": run_id, "task_ids": [target], "dry_run": False,
                  "only_failed": False, "reset_dag_runs": False},
        )  # fmt: skip

    def mark_task(
        self, dag_id: str, run_id: str, task_id: str, state: str, map_index: int = -1
    ) -> None:
        """Set one task instance's state, as the UI's "Mark as" menu (e.g. an operator giving
        up on a task awaiting its retry: ``failed``)."""
        path = f"/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}/taskInstances/{quote(task_id)}"
        self.request("PATCH", f"{path}/{map_index}" if map_index >= 0 else path,
                     json={"new_state": state})  # fmt: skip

    def wait_for_task_state(
        self, dag_id: str, run_id: str, task_id: str, state: str, timeout: float = 120
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_stack()
            ti = self.task_instances(dag_id, run_id).get(task_id, {})
            if ti.get("state") == state:
                return
            run_state = self.run(dag_id, run_id)["state"]
            if run_state in TERMINAL_RUN_STATES or time.monotonic() > deadline:
                raise RetentionError(
                    f"{dag_id}/{task_id} did not reach {state!r} (task: {ti.get('state')!r},"
                    f" run: {run_state!r})"
                )
            time.sleep(1)

    def wait_for_approval(
        self, dag_id: str, run_id: str, task_id: str, timeout: float = 120, settle: float = 5
    ) -> None:
        """Wait until the approval task waits for a person, then ``settle`` seconds more.

        Airflow 3.3 fails the approval task when the answer arrives before the scheduler has
        processed the exit of the worker that parked it (about a second, longer under load);
        a person never answers that fast, a script must wait.
        """
        self.wait_for_task_state(dag_id, run_id, task_id, "awaiting_input", timeout)
        time.sleep(settle)

    def answer_approval(
        self, dag_id: str, run_id: str, task_id: str, chosen: str, map_index: int = -1
    ) -> dict[str, Any]:
        """Answer a human-in-the-loop task (Approve/Reject) as this user."""
        path = (
            f"/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}"
            f"/taskInstances/{quote(task_id)}/{map_index}/hitlDetails"
        )
        return dict(self.request("PATCH", path, json={"chosen_options": [chosen]}))

    def _check_stack(self) -> None:
        if self.stack is not None:
            self.stack.check_running()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
