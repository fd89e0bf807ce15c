"""One enforcement per (activity, dataset) at a time, across processes and machines.

A lease is a row of ``retention_leases`` in the control database (so it works the same on
SQLite, PostgreSQL and MariaDB): who holds it (a random token, host, pid, the ledger run),
and until when. The holder renews it from a heartbeat thread and before every batch; a run
that cannot renew stops before its next batch. A lease is taken over only when it has
lapsed: expired, or held by a process on this host that no longer exists (e.g. killed with
SIGKILL), so a crashed run's successor need not wait for the expiry.

Start-up recovery runs under the lease, so it only settles runs that are not live. Hold
placement uses :func:`wait_for_in_flight` to wait for batches of live runs (see holds.py).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from include.retention.errors import RetentionError
from include.retention.ledger import Ledger, PendingBatch, ledger_table
from include.retention.pseudonym import PackedRefs

log = logging.getLogger(__name__)

DEFAULT_TTL = 60.0  # seconds a lease lives without renewal
# Seconds a second run waits for the lease before it refuses: longer than the ttl, so a retry
# on another machine after a crash (the lease lapses by expiry there) gets through.
DEFAULT_WAIT = 90.0
POLL = 0.2
WAIT_ENV = "RETENTION_LEASE_WAIT_S"
TTL_ENV = "RETENTION_LEASE_TTL_S"

metadata = sa.MetaData()

leases_table = sa.Table(
    "retention_leases",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),  # activity/system/dataset
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(36), nullable=True),
    sa.Column("acquired_at", sa.Float, nullable=False),  # epoch seconds
    sa.Column("expires_at", sa.Float, nullable=False),
)

# Tokens of the leases this process holds right now: a lease row naming this host and pid
# but a token not in here was left by an earlier run of this process (e.g. after an outage).
_LIVE: set[str] = set()


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RetentionError(f"{name}={raw!r} is not a number of seconds") from None
    if not 0 <= value <= 86_400:
        raise RetentionError(f"{name}={raw!r} must be between 0 and 86400 seconds")
    return value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Holder:
    """Who holds a lease (as read from its row)."""

    owner: str
    host: str
    pid: int
    run_id: str | None
    acquired_at: float
    expires_at: float

    def lapsed(self, now: float) -> bool:
        if self.expires_at <= now:
            return True
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return self.owner not in _LIVE
        return not _pid_alive(self.pid)

    def describe(self) -> str:
        run = f"run {self.run_id}" if self.run_id else "a run that is starting"
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.acquired_at))
        return f"{run} (host {self.host}, pid {self.pid}, since {since})"


def _holder(row: Any) -> Holder:
    return Holder(
        row.owner, row.host, int(row.pid), row.run_id, float(row.acquired_at),
        float(row.expires_at),
    )  # fmt: skip


def lease_name(activity_id: str, system: str, dataset: str) -> str:
    return f"{activity_id}/{system}/{dataset}"[:255]


class Lease:
    """A held lease; renew it from the heartbeat and before each batch, release it at the end."""

    def __init__(self, engine: Engine, name: str, owner: str, ttl: float) -> None:
        self.engine, self.name, self.owner, self.ttl = engine, name, owner, ttl
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _where(self) -> Any:
        t = leases_table
        return sa.and_(t.c.name == self.name, t.c.owner == self.owner)

    def bind_run(self, run_id: str) -> None:
        """Name the ledger run in the lease (for hold placement and for messages)."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(leases_table).where(self._where()).values(run_id=run_id))

    def renew(self) -> None:
        """Extend the lease; raise if it was lost (taken over after lapsing, or unreachable)."""
        if self.lost:
            raise RetentionError(self.lost)
        with self.engine.begin() as conn:
            renewed = conn.execute(
                sa.update(leases_table)
                .where(self._where())
                .values(expires_at=time.time() + self.ttl)
            ).rowcount
        if renewed != 1:
            self.lost = (
                f"lease {self.name!r} was lost (it lapsed and another run took it over):"
                " this run stops before its next batch; its prepared batches are settled by"
                " the next run's recovery"
            )
            raise RetentionError(self.lost)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.renew()
            except RetentionError:
                log.error("%s", self.lost)
                return
            except sa.exc.SQLAlchemyError as exc:  # control DB briefly unreachable: retry
                log.warning("lease %s: heartbeat failed (%s); retrying", self.name, exc)

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)  # a heartbeat stuck on an unreachable database is a daemon
        _LIVE.discard(self.owner)
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.delete(leases_table).where(self._where()))
        except sa.exc.SQLAlchemyError as exc:  # it lapses by itself after its ttl
            log.warning("lease %s: could not release (%s); it expires by itself", self.name, exc)


class Leases:
    """The lease table of one control database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_tables(self) -> None:
        metadata.create_all(self.engine)

    def holder(self, name: str) -> Holder | None:
        t = leases_table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.name == name)).first()
        return None if row is None else _holder(row)

    def _try(self, name: str, owner: str, ttl: float) -> Holder | None:
        """Take the lease if free or lapsed; None when taken, else the live holder."""
        t = leases_table
        now = time.time()
        values = {
            "owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "run_id": None,
            "acquired_at": now, "expires_at": now + ttl,
        }  # fmt: skip
        current = self.holder(name)
        try:
            with self.engine.begin() as conn:
                if current is None:
                    conn.execute(sa.insert(t).values(name=name, **values))
                    return None
                if not current.lapsed(now):
                    return current
                # Compare-and-set on the lapsed owner: of two runs taking over, one wins.
                taken = conn.execute(
                    sa.update(t).where(t.c.name == name, t.c.owner == current.owner).values(values)
                ).rowcount
        except sa.exc.IntegrityError:  # inserted concurrently by another run
            return self.holder(name) or current
        if taken == 1:
            log.warning("lease %s: took over from %s, which had lapsed", name, current.describe())
            return None
        return self.holder(name) or current

    def acquire(self, name: str, *, wait: float | None = None, ttl: float | None = None) -> Lease:
        """Take the lease, waiting up to ``wait`` seconds; raise naming the holder if busy."""
        wait = _env_seconds(WAIT_ENV, DEFAULT_WAIT) if wait is None else wait
        ttl = _env_seconds(TTL_ENV, DEFAULT_TTL) if ttl is None else ttl
        if ttl < 1:
            raise RetentionError(f"lease ttl must be at least 1 second, not {ttl}")
        owner = secrets.token_hex(16)
        deadline = time.monotonic() + wait
        while True:
            holder = self._try(name, owner, ttl)
            if holder is None:
                _LIVE.add(owner)
                lease = Lease(self.engine, name, owner, ttl)
                lease.start_heartbeat()
                return lease
            if time.monotonic() >= deadline:
                raise RetentionError(
                    f"{name!r} is being enforced by {holder.describe()}; waited {wait:.0f} s."
                    " Only one enforcement per activity and dataset runs at a time: let it"
                    " finish (or, if that process is gone, its lease lapses at"
                    f" {time.strftime('%H:%M:%S', time.gmtime(holder.expires_at))} UTC)"
                    " and run again"
                )
            time.sleep(POLL)

    def live_runs(self) -> set[str]:
        """Ledger run ids of the leases held by live runs."""
        t = leases_table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t)).all()
        now = time.time()
        return {h.run_id for h in map(_holder, rows) if h.run_id and not h.lapsed(now)}


# ------------------------------------------------------------------------- hold placement


@dataclass(frozen=True)
class InFlight:
    """What a new hold found in flight: the batches of live runs it waited for."""

    waited: tuple[int, ...]  # ledger seqs of the prepared batches waited for
    applied: tuple[int, ...]  # of those, the ones that committed (with the record, if known)


def wait_for_in_flight(
    ledger: Ledger, system: str | None, dataset: str | None, ref: bytes | None,
    *, timeout: float = 600.0,
) -> InFlight:  # fmt: skip
    """Wait until the prepared batches of live runs that the new hold may cover are resolved.

    Call it after the hold is committed. Every batch re-reads the holds after its
    ``batch_prepared`` entry is committed and before its changes commit, so a batch prepared
    after this call's read of the pending batches sees the hold; the ones prepared before are
    waited for here. A record hold (``ref`` in ``system``/``dataset``) waits only for the
    batches holding that record; a subject hold (``ref`` None) for all of them.
    """
    inspector = sa.inspect(ledger.engine)
    if not (inspector.has_table(ledger_table.name) and inspector.has_table(leases_table.name)):
        return InFlight((), ())  # no enforcement has ever run against this control database
    pending = [b for b in ledger.pending_batches() if _covers(b, system, dataset, ref)]
    leases = Leases(ledger.engine)
    live = leases.live_runs() if pending else set()
    waiting = {b.seq: b for b in pending if b.run_id in live}
    waited = tuple(sorted(waiting))
    deadline = time.monotonic() + timeout
    while waiting:
        if time.monotonic() >= deadline:
            raise RetentionError(
                "the hold is placed and binds every batch prepared from now on, but ledger"
                f" batch(es) {sorted(waiting)} of a running enforcement were still in flight"
                f" after {timeout:.0f} s: check with the ledger's lookup whether the record"
                " was in them"
            )
        time.sleep(POLL / 4)
        still = {b.seq for b in ledger.pending_batches()}
        live = leases.live_runs()
        waiting = {s: b for s, b in waiting.items() if s in still and b.run_id in live}
    return InFlight(waited, _applied(ledger, waited, ref))


def _covers(
    batch: PendingBatch, system: str | None, dataset: str | None, ref: bytes | None
) -> bool:
    if ref is None:
        return True
    return (batch.system, batch.dataset) == (system, dataset) and ref in PackedRefs(batch.refs)


def _applied(ledger: Ledger, seqs: tuple[int, ...], ref: bytes | None) -> tuple[int, ...]:
    if not seqs:
        return ()
    t = ledger_table
    applied = []
    for entry in ledger.entries(where=sa.and_(t.c.kind == "batch_resolved", t.c.ref_seq.in_(seqs))):
        outcome = entry.document["body"]["outcome"]
        partial_hit = outcome == "partial" and (ref is None or ref in PackedRefs(entry.blob))
        if outcome == "committed" or partial_hit:
            applied.append(int(entry.ref_seq or 0))
    return tuple(sorted(applied))


@contextmanager
def leased(
    engine: Engine, name: str, *, wait: float | None = None, ttl: float | None = None
) -> Iterator[Lease]:
    """Hold the lease ``name`` for the duration of the block (released even on failure)."""
    lease = Leases(engine).acquire(name, wait=wait, ttl=ttl)
    try:
        yield lease
    finally:
        lease.release()
