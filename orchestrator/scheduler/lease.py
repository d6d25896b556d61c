"""Leader election among scheduler processes that share one database: a lease row in ``scheduler_leases``.

Every scheduler process calls ``try_acquire()`` now and then; the one that gets ``True`` leads and calls
``renew()`` well within the time to live (every ``ttl / 3``, say) and stops leading as soon as ``renew()`` says
``False`` or ``held`` turns false. ``release()`` on a clean stop lets a standby take over at once instead of
after the ttl.

Atomicity. Taking the lease is one conditional statement, never a read followed by a write:
``UPDATE … SET holder = me … WHERE name = :name AND (expires_at <= :now OR holder = me)``, and when no row exists
``INSERT … ON CONFLICT DO NOTHING``. Of two processes racing, on PostgreSQL the second UPDATE waits for the first's
row lock and re-checks its WHERE against the row the first wrote (now live, someone else's), so it changes nothing;
of two INSERTs one conflicts. On SQLite every write takes the database's single write lock, so the statements
are serialised outright.

Clocks. The expiry written to the row comes from the database's clock on PostgreSQL (``clock_timestamp()``), so
scheduler machines whose clocks disagree still agree on when a lease has expired. SQLite has no clock of its own
worth the name (``CURRENT_TIMESTAMP`` is the process's clock to the second), so there the process clock (UTC) is
used: every process on a SQLite file runs on the same machine, hence the same clock. A holder's own belief that
it leads is measured on its monotonic clock from *before* it sent the statement (``held``), so it always ends no
later than the expiry any other process will see; what remains assumed is that the clocks involved do not run at
visibly different rates within one ttl and that the wall clock on a SQLite machine is not stepped back by more
than a fraction of the ttl (NTP slewing is fine, a manual reset by minutes is not).

SQLite: only one scheduler may run against a SQLite file (one machine; there is nothing to fail over to). Telling a
live scheduler from a dead one is left to the operating system: the command line first takes an exclusive file lock
next to the database (``sqlite_lock.SchedulerFileLock``), which the kernel drops when its process dies, however it
dies. Not getting it means another scheduler is alive: the command says which (``holder_info().describe(tz)``) and
exits with status 2 instead of waiting as a standby. Getting it means whoever the lease row names is dead (killed,
crashed), so the lease is taken over at once (``try_acquire(holder_is_dead=True)``) rather than after its ttl.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from sqlalchemy import Connection, Engine, case, literal, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from orchestrator.db.models import SchedulerLease
from orchestrator.db.types import UTCDateTime

DEFAULT_NAME = "scheduler"
DEFAULT_TTL = timedelta(seconds=30)


def is_sqlite(engine: Engine) -> bool:
    """True when ``engine`` is a SQLite database, where only one scheduler may run (see the module's notes)."""
    return engine.dialect.name == "sqlite"


def default_holder() -> str:
    """An id naming this process to whoever reads the lease: host, process id and a random part (a pid is
    reused after a restart; the random part tells the new process from the old one)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds a lease, as the row says."""

    name: str
    holder: str
    acquired_at: datetime  # aware, UTC
    renewed_at: datetime  # the holder's last heartbeat
    expires_at: datetime
    live: bool  # not expired at the time of reading (database clock on PostgreSQL)

    def describe(self, tz: tzinfo = UTC) -> str:
        def at(value: datetime) -> str:
            return value.astimezone(tz).isoformat(timespec="seconds")

        if not self.live:
            return f"lease {self.name!r} is free (last held by {self.holder}, expired {at(self.expires_at)})"
        return (
            f"lease {self.name!r} is held by {self.holder} since {at(self.acquired_at)}, "
            f"last heartbeat {at(self.renewed_at)}, expires {at(self.expires_at)} unless renewed"
        )


class Lease:
    """One named lease in ``scheduler_leases``, seen from one process (``holder``)."""

    def __init__(
        self,
        engine: Engine,
        name: str = DEFAULT_NAME,
        holder: str | None = None,
        ttl: timedelta = DEFAULT_TTL,
    ):
        if ttl <= timedelta(0):
            raise ValueError(f"a lease's ttl must be positive, not {ttl}")
        self.engine = engine
        self.name = name
        self.holder = holder or default_holder()
        self.ttl = ttl
        self._held_until: float | None = None  # time.monotonic() after which this process must not lead

    @property
    def held(self) -> bool:
        """Whether this process may act as the leader now: it took or renewed the lease less than a ttl ago
        (measured from before the statement was sent)."""
        return self._held_until is not None and time.monotonic() < self._held_until

    @property
    def held_until(self) -> float | None:
        """The ``time.monotonic()`` at which this process's leadership ends unless renewed; None when it does
        not lead."""
        return self._held_until

    def seconds_left(self) -> float:
        """How long this process may still lead without renewing; 0 when it does not lead."""
        return max(0.0, self._held_until - time.monotonic()) if self._held_until is not None else 0.0

    def try_acquire(self, *, holder_is_dead: bool = False) -> bool:
        """Take the lease if it is free or expired, or keep it if this process holds it. True: this process leads
        for the next ttl.

        ``holder_is_dead``: take it even while another holder's lease is live, for a caller that knows that holder
        is dead (on SQLite, the scheduler file lock: see ``sqlite_lock``); never on a mere guess."""
        started = time.monotonic()
        table = SchedulerLease.__table__
        with self.engine.begin() as conn:
            now = _now(conn)
            free = or_(table.c.expires_at <= now, table.c.holder == self.holder)
            taken = conn.execute(
                update(table)
                .where(table.c.name == self.name, *([] if holder_is_dead else [free]))
                .values(
                    # a holder taking its own lease again keeps the time it first took it
                    acquired_at=case(
                        (table.c.holder == self.holder, table.c.acquired_at), else_=literal(now, UTCDateTime())
                    ),
                    holder=self.holder,
                    renewed_at=now,
                    expires_at=now + self.ttl,
                )
                .returning(table.c.name)
            ).first()
            if taken is None:
                dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
                values = dict(name=self.name, holder=self.holder, acquired_at=now, renewed_at=now)
                insert = dialect.insert(table).values(**values, expires_at=now + self.ttl)
                insert = insert.on_conflict_do_nothing(index_elements=["name"]).returning(table.c.name)
                taken = conn.execute(insert).first()  # (rowcount is not reported for it by every driver)
        return self._settle(taken is not None, started)

    def renew(self) -> bool:
        """Extend the lease by a ttl from now. False when this process no longer holds it (another took it over
        after it expired): stop leading at once."""
        started = time.monotonic()
        table = SchedulerLease.__table__
        with self.engine.begin() as conn:
            now = _now(conn)
            renewed = conn.execute(
                update(table)
                .where(table.c.name == self.name, table.c.holder == self.holder)
                .values(renewed_at=now, expires_at=now + self.ttl)
                .returning(table.c.name)
            ).first()
        return self._settle(renewed is not None, started)

    def release(self) -> None:
        """Give the lease up: it expires now, so another process takes it at its next attempt. The row stays, so
        ``holder_info`` still tells who led last. Does nothing when another process holds it."""
        self._held_until = None
        table = SchedulerLease.__table__
        with self.engine.begin() as conn:
            now = _now(conn)
            conn.execute(
                update(table)
                .where(table.c.name == self.name, table.c.holder == self.holder, table.c.expires_at > now)
                .values(expires_at=now)
            )

    def holder_info(self) -> LeaseInfo | None:
        """Who holds the lease and their last heartbeat; None when nobody ever took it."""
        table = SchedulerLease.__table__
        with self.engine.connect() as conn:
            now = _now(conn)
            row = conn.execute(select(table).where(table.c.name == self.name)).first()
        if row is None:
            return None
        return LeaseInfo(
            name=row.name,
            holder=row.holder,
            acquired_at=row.acquired_at,
            renewed_at=row.renewed_at,
            expires_at=row.expires_at,
            live=row.expires_at > now,
        )

    def _settle(self, ok: bool, started: float) -> bool:
        self._held_until = started + self.ttl.total_seconds() if ok else None
        return ok


def _now(conn: Connection) -> datetime:
    """Now, as every process sharing the database should see it: the database server's clock on PostgreSQL
    (``clock_timestamp()``, the real time, not the transaction's start), the process's UTC clock on SQLite."""
    if conn.dialect.name == "postgresql":
        return conn.execute(text("SELECT clock_timestamp()")).scalar_one().astimezone(UTC)
    return datetime.now(UTC)
