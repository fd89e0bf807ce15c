"""Write .env (and connections.env) for docker-compose.yaml with fresh secrets: ``make env``.

Every variable that .env.example leaves empty gets a random value (hex, so it is safe inside
a connection URL; a Fernet key for AIRFLOW_FERNET_KEY; ``admin:<hex>`` for flower's basic
auth). connections.env is connections.env.example with ``${NAME}`` replaced from .env. Both
files are created with mode 0600 and never overwritten: delete one to regenerate it. Standard
library only: any Python 3 runs it.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")
_REFERENCE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def secret_for(name: str) -> str:
    if name == "AIRFLOW_FERNET_KEY":  # what cryptography's Fernet.generate_key() returns
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    if name == "RETENTION_MANIFEST_SIGNING_KEY":  # an Ed25519 seed, as manifest.SigningKey reads it
        return base64.b64encode(secrets.token_bytes(32)).decode()
    if name == "FLOWER_BASIC_AUTH":
        return f"admin:{secrets.token_hex(16)}"
    return secrets.token_hex(32)


def fill_env(template: str) -> tuple[str, dict[str, str]]:
    """The template with empty values filled; and every variable's value."""
    values: dict[str, str] = {}
    lines = []
    for line in template.splitlines():
        match = _LINE.match(line)
        if match:
            name, value = match.group(1), match.group(2) or secret_for(match.group(1))
            values[name] = value
            line = f"{name}={value}"
        lines.append(line)
    return "\n".join(lines) + "\n", values


def fill_connections(template: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise SystemExit(f"error: connections template uses ${{{match.group(1)}}}: not in .env")
        return values[match.group(1)]

    return _REFERENCE.sub(replace, template)


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    print(f"wrote {path} (mode 0600)")


def read_values(path: Path) -> dict[str, str]:
    found = (_LINE.match(line) for line in path.read_text().splitlines())
    return {m.group(1): m.group(2) for m in found if m}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT, help="where .env is written")
    args = parser.parse_args(argv)
    env, connections = args.dir / ".env", args.dir / "connections.env"
    if env.exists():
        print(f"{env} exists: kept (delete it to generate new secrets)")
        values = read_values(env)
    else:
        text, values = fill_env((ROOT / ".env.example").read_text())
        write_private(env, text)
    if connections.exists():
        print(f"{connections} exists: kept")
    else:
        template = (ROOT / "connections.env.example").read_text()
        write_private(connections, fill_connections(template, values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
