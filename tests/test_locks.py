"""The three dependency sets: runtime ⊆ demo ⊆ dev, same versions, no excluded drivers.

`make lock` regenerates the locks; these tests catch a lock edited by hand or regenerated
without the excludes (mysqlclient would bring back the compile step).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;#]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            found[_norm(match.group(1))] = match.group(3)
    return found


def names(path: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {_norm(line) for line in lines if line}


RUNTIME = pins(ROOT / "requirements.lock")
DEMO = pins(ROOT / "requirements-demo.lock")
DEV = pins(ROOT / "requirements-dev.lock")


@pytest.mark.parametrize(
    ("smaller", "larger", "label"), [(RUNTIME, DEMO, "runtime/demo"), (DEMO, DEV, "demo/dev")]
)
def test_each_set_contains_the_one_below_with_the_same_versions(
    smaller: dict[str, str], larger: dict[str, str], label: str
) -> None:
    assert smaller, label
    differing = {n: (v, larger.get(n)) for n, v in smaller.items() if larger.get(n) != v}
    assert differing == {}, label


@pytest.mark.parametrize(
    ("source", "lock"),
    [
        ("requirements.txt", RUNTIME),
        ("requirements-demo.txt", DEMO),
        ("requirements-dev.txt", DEV),
    ],
)
def test_every_direct_pin_is_locked_at_its_version(source: str, lock: dict[str, str]) -> None:
    direct = pins(ROOT / source)
    assert direct
    assert {n: v for n, v in direct.items() if lock.get(n) != v} == {}


def test_excluded_drivers_are_in_no_lock() -> None:
    excluded = names(ROOT / "requirements-excludes.txt")
    assert {"mysqlclient", "psycopg2-binary", "mysql-connector-python"} <= excluded
    for lock in (RUNTIME, DEMO, DEV):
        assert excluded.isdisjoint(lock)


def test_runtime_has_one_driver_per_database_and_no_demo_or_dev_tools() -> None:
    assert {"psycopg", "psycopg-binary", "pymysql"} <= RUNTIME.keys()
    for tool in ("moto", "faker", "pytest", "hypothesis", "ruff", "mypy", "aiosmtpd"):
        assert tool not in RUNTIME, tool
        assert tool in DEV, tool
    for heavy in ("docker", "cfn-lint", "aws-xray-sdk"):  # moto[server]'s, not needed for S3
        assert heavy not in DEV, heavy
