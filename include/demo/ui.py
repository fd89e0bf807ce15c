"""``make ui``: Airflow on the demo systems, private and on the loopback interface.

Runs ``airflow standalone`` (or the Airflow command given) with umask 077, so the metadata DB
and the generated admin password file are owner-only, and with the API server bound to
127.0.0.1 unless ``AIRFLOW__API__HOST`` says otherwise. Source ``var/demo.env`` first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from include.demo.run import PRIVATE_UMASK, make_private

LOOPBACK = "127.0.0.1"
WILDCARDS = ("0.0.0.0", "::", "")


def ui_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus the API server's bind address and the URL task runners reach it on."""
    host = env.get("AIRFLOW__API__HOST", LOOPBACK)
    port = env.get("AIRFLOW__API__PORT", "8080")
    reach = LOOPBACK if host in WILDCARDS else host
    return {
        **env,
        "AIRFLOW__API__HOST": host,
        "AIRFLOW__API__PORT": port,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": env.get(
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://{reach}:{port}/execution/"
        ),
    }


def main(argv: list[str] | None = None) -> None:
    command = list(argv if argv is not None else sys.argv[1:]) or ["standalone"]
    env = ui_environment(os.environ)
    os.umask(PRIVATE_UMASK)
    if "AIRFLOW_HOME" in env:
        make_private(Path(env["AIRFLOW_HOME"]))
    airflow = Path(sys.executable).parent / "airflow"
    address = f"{env['AIRFLOW__API__HOST']}:{env['AIRFLOW__API__PORT']}"
    print(f"airflow {' '.join(command)}; API server and UI on http://{address}", flush=True)
    os.execve(airflow, [str(airflow), *command], env)


if __name__ == "__main__":
    main()
