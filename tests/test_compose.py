"""docker-compose.yaml without a Docker engine: valid against the Compose Specification's JSON
schema (tests/data/compose-spec.json), every path, variable and image it names exists or is
defined, and its Airflow services are the local topology the end-to-end tests run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa
import yaml

from deploy import new_env
from include.demo.airflow_stack import CELERY_CONFIG, COMPONENTS
from include.retention.catalogue import load_catalogue
from include.retention.identifiers import KINDS
from include.retention.pseudonym import check_key
from tests.dbs import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILES = ("docker-compose.yaml", "docker-compose.dev.yaml")
SCHEMA = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
# What the local topology (the CeleryExecutor end-to-end test) starts: the airflow commands.
TOPOLOGY = {" ".join(command) for command in COMPONENTS.values()}
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}; $${...} is an escaped '$'.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])[^}]*)?\}")


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


COMPOSE = load("docker-compose.yaml")
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# The Airflow services: the product image, outside the demo profile (the demo's SaaS API
# stand-in runs from the same image).
AIRFLOW = {
    name: s
    for name, s in SERVICES.items()
    if s.get("image", "").startswith("${RETENTION") and "demo" not in s.get("profiles", [])
}


def env_example() -> dict[str, str]:
    return new_env.read_values(ROOT / ".env.example")


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_valid_against_the_compose_specification(name: str) -> None:
    validator = jsonschema.Draft7Validator(SCHEMA)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(load(name))]
    assert errors == []


def test_the_schema_check_catches_a_broken_file() -> None:
    broken = {"services": {"x": {"image": "redis:7", "healthcheck": {"interval": 5}}}}
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(broken))


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_variable_is_defined_or_has_a_default(name: str) -> None:
    defined = env_example()
    for match in VARIABLE.finditer((ROOT / name).read_text()):
        variable, operator = match.group(1), match.group(2)
        if operator in (":-", "-"):
            continue
        assert variable in defined, f"{name}: ${{{variable}}} is not in .env.example"


def test_every_env_example_variable_is_used() -> None:
    used = set(VARIABLE.findall((ROOT / "docker-compose.yaml").read_text()))
    used = {name for name, _ in used}
    template = (ROOT / "connections.env.example").read_text()
    used |= set(new_env._REFERENCE.findall(template))
    assert set(env_example()) - used == set()


def _bind_sources(compose: dict[str, Any]) -> list[str]:
    sources = []
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                sources.append(source)
    return sources


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_mounted_path_exists(name: str) -> None:
    sources = _bind_sources(load(name))
    assert sources or name == "docker-compose.yaml"
    for source in sources:
        assert (ROOT / source).exists(), f"{name}: mounted path {source} does not exist"
    if name == "docker-compose.dev.yaml":
        assert set(sources) == {"./dags", "./plugins", "./include"}


def test_named_volumes_are_declared_and_init_script_is_executable() -> None:
    declared = set(COMPOSE["volumes"])
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("/", ".")):
                assert source in declared
    script = ROOT / "deploy/control-db/10-roles.sh"
    assert os.access(script, os.X_OK)


def test_every_service_has_a_pinned_image_and_a_health_check() -> None:
    for name, service in SERVICES.items():
        assert "healthcheck" in service and service["healthcheck"]["test"], name
        image = service["image"]
        if image.startswith("${RETENTION"):  # the product image, built from this checkout
            assert service["build"] == "."
            continue
        assert re.match(r"^[a-z0-9./-]+:[0-9][\w.-]*$", image), f"{name}: {image} is not pinned"


def test_the_image_extends_airflow_3_3_2_and_copies_existing_paths() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11" in dockerfile
    assert "FROM ${AIRFLOW_IMAGE}" in dockerfile
    copied = re.findall(r"^COPY (?:--\S+ )*(\S+) ", dockerfile, flags=re.M)
    assert sorted(copied) == ["dags/", "include/", "plugins/", "requirements.lock"]
    for path in copied:
        assert (ROOT / path).exists(), path
    assert "ENV PYTHONPATH=/opt/airflow" in dockerfile
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_services_and_executor_match_the_local_topology() -> None:
    running = {  # the long-running Airflow services of a plain `docker compose up`
        name: s["command"]
        for name, s in AIRFLOW.items()
        if isinstance(s.get("command"), str) and "profiles" not in s
    }
    assert sorted(running.values()) == sorted(TOPOLOGY)  # each component once, nothing else
    assert running["airflow-worker"] == "celery worker"
    assert {"redis", "postgres", "control-db"} <= set(SERVICES)
    for name in AIRFLOW:
        env = SERVICES[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:@redis:6379/"), name
        assert env["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] == CELERY_CONFIG, name
        assert set(env["AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES"].split(",")) == set(KINDS), name
        assert "@postgres/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert "@control-db:5432/" in env["AIRFLOW_CONN_RETENTION_CONTROL_DB"], name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            "http://airflow-apiserver:8080/execution/"
        )
        assert env["PYTHONPATH"] == "/opt/airflow"
    assert SERVICES["airflow-apiserver"]["ports"] == ["${AIRFLOW_API_BIND:-127.0.0.1}:8080:8080"]
    assert SERVICES["flower"]["profiles"] == ["flower"]


def test_the_demo_saas_api_serves_the_lead_crm_connection(tmp_path: Path) -> None:
    saas = SERVICES["saas"]
    assert saas["profiles"] == ["demo"]
    assert saas["entrypoint"][-1] == "include.demo.saas_server"
    port = saas["command"][saas["command"].index("--port") + 1]
    store = saas["command"][saas["command"].index("--store") + 1]
    volume = next(v for v in saas["volumes"] if v.startswith("saas-volume:"))
    assert store.startswith(volume.split(":")[1] + "/")
    assert saas["environment"]["SAAS_API_TOKEN"] == "${LEAD_CRM_API_TOKEN:?run make env}"
    new_env.main(["--dir", str(tmp_path)])
    values = new_env.read_values(tmp_path / "connections.env")
    lead_crm = json.loads(values["AIRFLOW_CONN_RETENTION_LEAD_CRM"])
    token = new_env.read_values(tmp_path / ".env")["LEAD_CRM_API_TOKEN"]
    assert (lead_crm["host"], str(lead_crm["port"]), lead_crm["password"]) == ("saas", port, token)


def test_dependencies_point_at_services_with_health_checks() -> None:
    for name, service in SERVICES.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dependency]
    assert SERVICES["airflow-scheduler"]["depends_on"]["airflow-init"] == {
        "condition": "service_completed_successfully"
    }


def test_airflow_init_prepares_everything_the_workers_need() -> None:
    init = SERVICES["airflow-init"]
    script = init["command"][1]
    assert "/entrypoint airflow version" in script  # migrates and creates the admin user
    assert init["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"
    assert init["environment"]["_AIRFLOW_WWW_USER_CREATE"] == "true"
    retention = [
        line.split("#")[0].strip() for line in script.splitlines() if "include.retention" in line
    ]
    assert retention == [  # one set-up command: validation, pool, control tables, roles, holds
        'python -m include.retention setup --grant-to "$${RETENTION_WORKER_DB_USER}"'
        ' --holds-admin "$${RETENTION_HOLDS_ADMIN_DB_USER}"'
    ]
    assert "airflow pools" not in script
    assert "retention_owner" in init["environment"]["RETENTION_CONTROL_DB_URL"]


def test_secrets_come_from_env_and_env_is_never_committed() -> None:
    env = SERVICES["airflow-worker"]["environment"]
    for key, variable in (
        ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW_FERNET_KEY"),
        ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW_JWT_SECRET"),
    ):
        assert env[key] == f"${{{variable}:?run make env}}"
    assert "${RETENTION_PSEUDONYM_KEY:?run make env}" in env["AIRFLOW_CONN_RETENTION_PSEUDONYM_KEY"]
    signing = env["AIRFLOW_CONN_RETENTION_MANIFEST_SIGNING_KEY"]
    assert "${RETENTION_MANIFEST_SIGNING_KEY:?run make env}" in signing
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".env" in ignored and "connections.env" in ignored
    tracked = subprocess.run(
        ["git", "ls-files", ".env", "connections.env"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert tracked == ""


def test_make_env_writes_private_complete_files(tmp_path: Path) -> None:
    assert new_env.main(["--dir", str(tmp_path)]) == 0
    env = tmp_path / ".env"
    values = new_env.read_values(env)
    assert set(values) == set(env_example())
    assert all(values.values())
    assert env.stat().st_mode & 0o777 == 0o600
    check_key(values["RETENTION_PSEUDONYM_KEY"].encode())
    from include.retention.manifest import SigningKey

    assert SigningKey.from_text(values["RETENTION_MANIFEST_SIGNING_KEY"]).public()
    from cryptography.fernet import Fernet

    Fernet(values["AIRFLOW_FERNET_KEY"].encode())
    connections = (tmp_path / "connections.env").read_text()
    assert "${" not in connections and values["DEMO_SOURCE_DB_PASSWORD"] in connections
    assert (tmp_path / "connections.env").stat().st_mode & 0o777 == 0o600
    before = env.read_text()
    new_env.main(["--dir", str(tmp_path)])
    assert env.read_text() == before  # never overwritten


def test_connections_cover_the_catalogue_and_parse_as_airflow_connections(
    tmp_path: Path,
) -> None:
    from airflow.models.connection import Connection

    new_env.main(["--dir", str(tmp_path)])
    values = new_env.read_values(tmp_path / "connections.env")
    conns = {k.removeprefix("AIRFLOW_CONN_").lower(): v for k, v in values.items()
             if k.startswith("AIRFLOW_CONN_")}  # fmt: skip
    needed = {a.source.conn_id for a in load_catalogue()}
    needed |= {o.conn_id for a in load_catalogue() if a.source.kind == "sql"
               for o in a.source.objects}  # type: ignore[union-attr]  # fmt: skip
    assert needed - set(conns) == set()
    types = {}
    for conn_id, value in conns.items():
        conn = (
            Connection.from_json(value, conn_id=conn_id)
            if value.startswith("{")
            else Connection(conn_id=conn_id, uri=value)
        )
        types[conn_id] = conn.conn_type
    assert {types[c] for c in needed} <= {"postgres", "mysql", "aws", "http"}
    assert {"postgres", "mysql"} <= set(types.values())


def test_the_control_db_init_script_creates_the_logins(tmp_path: Path) -> None:
    """Run deploy/control-db/10-roles.sh as the postgres image would, in a fresh DB."""
    name = f"rt_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    url = sa.make_url(PG_ADMIN_URL)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    env = os.environ | {
        "PGHOST": url.host or "127.0.0.1", "PGPORT": str(url.port or 5432),
        "POSTGRES_USER": url.username or "postgres", "POSTGRES_DB": name,
        "RETENTION_WORKER_DB_USER": f"{name}_worker", "RETENTION_WORKER_DB_PASSWORD": "p'w\"x",
        "RETENTION_HOLDS_ADMIN_DB_USER": f"{name}_holds", "RETENTION_HOLDS_ADMIN_DB_PASSWORD": "h'",
    }  # fmt: skip
    try:
        subprocess.run(
            [str(ROOT / "deploy/control-db/10-roles.sh")], env=env, check=True,
            capture_output=True, text=True,
        )  # fmt: skip
        with admin.connect() as conn:
            logins = conn.execute(
                sa.text("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN (:w, :h)"),
                {"w": f"{name}_worker", "h": f"{name}_holds"},
            ).all()
        assert sorted(logins) == [(f"{name}_holds", True), (f"{name}_worker", True)]
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{name}_worker"')
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{name}_holds"')
        admin.dispose()
