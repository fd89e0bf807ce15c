"""Secrets and personal data are owner-only; the UI binds to loopback (issue 8, point 6).

The demo is really set up (seeded SQLite systems, embedded S3, pseudonym key, demo.env,
Airflow's metadata DB) and ``make ui``'s launcher really starts Airflow's API server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from include.demo.ui import ui_environment

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)  # the session this test started, and only it


@pytest.fixture(scope="module")
def demo_var(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    var = tmp_path_factory.mktemp("private") / "var"
    (var / "old").mkdir(parents=True)
    (var / "old" / "leftover.db").write_text("from an earlier version", encoding="utf-8")
    (var / "old" / "leftover.db").chmod(0o644)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "include.demo.run", "--var", str(var), "--s3-port",
         str(_free_port()), "--setup-only"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    try:
        assert result.returncode == 0, result.stderr[-2000:]
        yield var
    finally:
        for server in ("s3", "saas"):  # the embedded S3 and SaaS API this fixture's demo started
            pid_file = var / f"{server}.pid"
            if pid_file.exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid_file.read_text(encoding="ascii")), signal.SIGTERM)


def test_demo_state_is_owner_only(demo_var):
    expected = {
        demo_var / "control.db",
        demo_var / "secrets" / "pseudonym_key",
        demo_var / "demo.env",
        demo_var / "airflow" / "airflow.db",
        demo_var / "old" / "leftover.db",
    }
    databases = set((demo_var / "demo").glob("*.sqlite"))
    assert len(databases) == 13  # one per demo source system
    for path in expected | databases:
        assert _mode(path) == 0o600, f"{path} is {oct(_mode(path))}"
    for path in [demo_var, *demo_var.rglob("*")]:
        if path.is_dir():
            assert _mode(path) == 0o700, f"{path} is {oct(_mode(path))}"
        else:
            assert _mode(path) & 0o077 == 0, f"{path} is {oct(_mode(path))}"


def test_ui_binds_to_loopback_by_default():
    env = ui_environment({"AIRFLOW__API__PORT": "9123"})
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:9123/execution/"


def test_ui_host_can_be_configured():
    env = ui_environment({"AIRFLOW__API__HOST": "0.0.0.0"})
    assert env["AIRFLOW__API__HOST"] == "0.0.0.0"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8080/execution/"


def test_make_ui_runs_the_private_loopback_launcher():
    commands = subprocess.run(
        ["make", "-n", "ui"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    launch = [line for line in commands if "demo.env" in line and not line.startswith("test")]
    assert len(launch) == 1, commands
    assert launch[0].startswith("umask 077 && ") and "-m include.demo.ui" in launch[0]


def _listening(port: int) -> list[str]:
    return [
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]


def test_ui_launcher_serves_on_loopback_with_a_private_password_file(demo_var):
    home = demo_var / "airflow"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIRFLOW_HOME": str(home),
           "AIRFLOW__API__PORT": str(port)}  # fmt: skip
    env.pop("AIRFLOW__API__HOST", None)
    log = (demo_var / "api-server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "include.demo.ui", "api-server"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _listening(port) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        addresses = _listening(port)
        assert addresses, (demo_var / "api-server.log").read_text(errors="replace")[-3000:]
        assert set(addresses) == {"127.0.0.1"}
        passwords = home / "simple_auth_manager_passwords.json.generated"
        while not passwords.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _mode(passwords) == 0o600
    finally:
        _stop(proc.pid)
        proc.wait(timeout=60)
        log.close()
