"""A separate process that runs SQL enforcements on command (the concurrency tests).

``python -m tests.workers`` reads one JSON command per line on stdin, runs `enforce` (or, with
``erase``: a list of e-mails, an Art. 17 erasure of those people) on the ``people`` activity of
tests/dbs.py and answers one JSON line: ``{"ok": true, "outcome":
..., "applied": ...}`` or ``{"ok": false, "error": "..."}``. A command may carry
``start_at`` (epoch seconds) so that two workers start at the same moment.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: dict[str, Any]) -> dict[str, Any]:
    from include.retention.errors import RetentionError
    from include.retention.lifecycle import enforce
    from include.retention.runs import Control
    from tests.dbs import AS_OF, activity

    source = sa.create_engine(cmd["source"])
    control_engine = sa.create_engine(cmd["control"])
    try:
        control = Control.open(control_engine, bytes.fromhex(cmd["key"]), create=False)
        time.sleep(max(0.0, cmd.get("start_at", 0) - time.time()))
        act = activity(
            children=cmd.get("children", True), activity_id=cmd.get("activity_id", "recruitment")
        )
        if cmd.get("erase"):
            return _erase(cmd, act, source, control)
        result = enforce(
            act, AS_OF, source=source,
            control=control, catalogue_version="test", batch_size=cmd["batch_size"],
            lease_wait=cmd.get("lease_wait"),
        )  # fmt: skip
        return {"ok": True, "outcome": result.outcome, "applied": result.applied}
    except RetentionError as exc:
        return {"ok": False, "error": str(exc)}
    finally:
        source.dispose()
        control_engine.dispose()


def _erase(cmd: dict[str, Any], act: Any, source: Any, control: Any) -> dict[str, Any]:
    """An Art. 17 erasure of the people whose e-mails ``cmd["erase"]`` lists."""
    from include.retention import erasure
    from include.retention.pseudonym import subject_ref

    refs = [subject_ref(control.key, email) for email in cmd["erase"]]
    how = erasure.Erasure(
        by="dpo", origin={"request": "DSR-1"}, catalogue_version="test",
        batch_size=cmd["batch_size"], lease_wait=cmd.get("lease_wait"),
    )  # fmt: skip
    [done] = erasure.erase([act], refs, control, how, connections={act.id: source})
    return {"ok": True, "outcome": "erasure", "applied": done.erased, "kept": dict(done.kept)}


def main() -> None:
    from include.retention import lifecycle  # noqa: F401  (import before the first command)

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(_run(json.loads(line))), flush=True)


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.workers"], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert self.answer(60) == {"ready": True}

    def send(self, **cmd: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(cmd) + "\n")
        self.process.stdin.flush()

    def answer(self, timeout: float) -> dict[str, Any] | None:
        """The next answer, or None if none came within ``timeout`` seconds."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        assert line, f"worker exited (code {self.process.poll()})"
        return dict(json.loads(line))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    main()
