"""Providers' rate limits, shared by every process dispatching through the same database.

Messages per second use GCRA (the generic cell rate algorithm): one row per provider holds the theoretical
arrival time ``tat`` of the next message; taking ``n`` messages moves it ``n / rate`` seconds on, and is allowed
while it stays within ``burst`` messages of now, so in any one second at most ``per_second + burst`` go out. The
daily cap counts messages per day in the configured time zone. Both are read and written under the row's lock in
one short transaction, so two processes can never both take the last tokens (PostgreSQL: ``SELECT … FOR
UPDATE``; SQLite: the write lock the first statement takes).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select, update

from orchestrator.config import RateLimitConfig
from orchestrator.db.models import ProviderQuota
from orchestrator.ledger import insert_ignoring_duplicates
from orchestrator.timeutil import utcnow


class Quota:
    def __init__(self, engine: Engine, key: str, config: RateLimitConfig, tz: ZoneInfo, *, durable: bool = True):
        self.engine = engine
        self.key = key
        self.config = config
        self.tz = tz
        # not durable: on PostgreSQL the commit does not wait for the WAL flush. For a counter of requests (the web
        # service's rate limits) losing the last few milliseconds of counts in a crash is harmless, and the flush
        # would otherwise be most of a request's time.
        self.durable = durable

    @property
    def limited(self) -> bool:
        return bool(self.config.per_second or self.config.per_day)

    def acquire(self, want: int) -> tuple[int, float]:
        """Take up to ``want`` messages: (how many may go now, seconds to wait before asking again if none)."""
        if not self.limited or want <= 0:
            return want, 0.0
        with self.engine.begin() as conn:
            if not self.durable and conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            insert_ignoring_duplicates(conn, ProviderQuota.__table__, [{"key": self.key, "day_count": 0}], ["key"])
            row = conn.execute(
                select(ProviderQuota.tat, ProviderQuota.day, ProviderQuota.day_count)
                .where(ProviderQuota.key == self.key)
                .with_for_update()
            ).one()
            now = utcnow()
            granted, wait = want, 0.0
            today = now.astimezone(self.tz).date()
            day_count = row.day_count if row.day == today else 0
            if self.config.per_day:
                granted = min(granted, self.config.per_day - day_count)
                if granted <= 0:
                    midnight = datetime.combine(today + timedelta(days=1), datetime.min.time(), self.tz)
                    return 0, (midnight - now).total_seconds()
            tat = row.tat
            if self.config.per_second:
                interval = 1.0 / self.config.per_second
                burst = float(self.config.burst or max(1, round(self.config.per_second / 10)))
                tat = max(tat or now, now)
                room = math.floor(((now - tat).total_seconds() + burst * interval) / interval + 1e-9)
                granted = max(0, min(granted, room))
                if granted == 0:
                    return 0, max(interval / 4, (tat - now).total_seconds() + interval - burst * interval)
                tat = tat + timedelta(seconds=granted * interval)
            conn.execute(
                update(ProviderQuota)
                .where(ProviderQuota.key == self.key)
                .values(tat=tat, day=today, day_count=day_count + granted)
            )
        return granted, wait

    def give_back(self, unused: int) -> None:
        """Return tokens taken for messages that were not sent after all (fewer rows were due than expected)."""
        if not self.limited or unused <= 0:
            return
        mine = ProviderQuota.key == self.key
        with self.engine.begin() as conn:  # the UPDATE first: it takes the row's (SQLite: the database's) lock
            conn.execute(update(ProviderQuota).where(mine).values(day_count=ProviderQuota.day_count - unused))
            tat = conn.execute(select(ProviderQuota.tat).where(mine)).scalar_one()
            if self.config.per_second and tat is not None:
                tat -= timedelta(seconds=unused / self.config.per_second)
                conn.execute(update(ProviderQuota).where(mine).values(tat=tat))
