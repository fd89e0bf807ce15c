"""The data-subject-request DAGs' role in the control database: it can do a request's work
and nothing more (PostgreSQL and MariaDB, real roles)."""

from __future__ import annotations

import pytest

from include.retention import dsr
from include.retention.catalogue import Catalogue
from include.retention.grants import dsr_script, init_control
from tests.dbs import key_fixture  # noqa: F401 - fixtures
from tests.test_grants import DENIED, Setup, _refused, _set_password, setup_fixture  # noqa: F401

NONE = Catalogue(activities={}, version="none")  # no systems to search
FORM = {"email": "anna.berg@example.se", "action": "place", "ground": "legal_claims"}


def test_the_dsr_role_does_a_requests_work_and_nothing_else(setup: Setup, key: bytes) -> None:
    init_control(setup.control.engine, key, None)  # the owner creates every control table
    setup.apply(dsr_script(setup.target(setup.control)))
    _set_password(setup)
    runtime = dsr.DsrRuntime.of(setup.as_role(setup.control), key)

    received = dsr.receive("restriction", FORM, user="u", dag_id="d", run_id="r", runtime=runtime)
    placed = dsr.restrict(received, FORM, user="u", runtime=runtime, catalogue=NONE)
    assert len(placed["holds_placed"]) == 1
    lifting = dsr.receive(
        "restriction", {**FORM, "action": "lift"}, user="u", dag_id="d", run_id="r2",
        runtime=runtime,
    )  # fmt: skip
    lift = dsr.restrict(
        lifting, {**FORM, "action": "lift"}, user="u", runtime=runtime, catalogue=NONE
    )
    assert lift["holds_released"] == placed["holds_placed"]
    withdrawal = dsr.receive("consent_withdrawal", FORM, user="u", dag_id="w", run_id="r",
                             runtime=runtime)  # fmt: skip
    suppressed = dsr.suppress("consent_withdrawal", withdrawal, user="u", runtime=runtime,
                              catalogue=NONE)  # fmt: skip
    assert suppressed["suppressed"]
    assert dsr.respond(received, {}, [], user="u", runtime=runtime)["status"] == "completed"
    runtime.requests.extend(int(withdrawal["request_id"]), months=1, reason="r", by="u")
    runtime.requests.record_notified(int(received["request_id"]), "Mailchimp", by="u")
    assert runtime.holds.verify().ok

    denied = DENIED[setup.kind]
    for statement in (
        "DELETE FROM retention_holds",
        "UPDATE retention_holds SET kind = 'legal_hold'",
        "UPDATE retention_holds SET reason = 'edited'",
        "DELETE FROM dsr_requests",
        "UPDATE dsr_requests SET kind = 'access'",
        "UPDATE dsr_requests SET subject_refs = NULL",
        "DELETE FROM dsr_suppressions",
        "UPDATE retention_ledger SET kind = 'edited'",
        "DELETE FROM retention_leases",
    ):
        _refused(runtime.engine, statement, denied)


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_the_command_prints_the_dsr_roles_grants(dialect: str, capsys) -> None:
    from include.retention.__main__ import main

    args = ["grants", "--dialect", dialect, "--role", "retention_dsr", "--dsr"]
    assert main([*args, "--schema", "control"]) == 0
    out = capsys.readouterr().out
    assert "the data-subject-request DAGs' role" in out
    assert "INSERT" in out and "dsr_requests" in out and "DELETE" not in out
    assert ("USAGE ON SEQUENCE" in out) == (dialect == "postgresql")
