"""Small values shared by every process that uses the same database, each under a key and with an expiry.

The case in point is a provider's access token that the provider invalidates whenever a new one is fetched
(WeChat's ``/cgi-bin/token``): processes that each fetched their own would keep revoking each other's. With
``SharedValues.get_or_refresh`` one token per key lives in the ``shared_values`` table; a process reuses it while
it is fresh, and when it is missing, about to expire or known to be refused, exactly one process fetches a new
one while holding the row's lock (PostgreSQL: ``SELECT … FOR UPDATE``; SQLite: the write lock the first statement
takes), and the others, waiting for that lock, find the new value and reuse it. Provider quotas
(``orchestrator.dispatch.quotas``) are shared the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, select, update

from orchestrator.db.models import SharedValue as SharedValueRow
from orchestrator.ledger import insert_ignoring_duplicates
from orchestrator.timeutil import utcnow


@dataclass(frozen=True)
class SharedValue:
    value: str
    expires_at: datetime | None  # aware (UTC); None: does not expire

    def fresh(self, now: datetime, margin: timedelta) -> bool:
        return self.expires_at is None or now + margin < self.expires_at


class SharedValues:
    """The ``shared_values`` table of one database. Values are plain text (serialise anything else)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def get(self, key: str) -> SharedValue | None:
        """The value under ``key`` if there is one that has not expired."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(SharedValueRow.value, SharedValueRow.expires_at).where(SharedValueRow.key == key)
            ).first()
        if row is None or row.value is None:
            return None
        value = SharedValue(row.value, row.expires_at)
        return value if value.fresh(utcnow(), timedelta(0)) else None

    def get_or_refresh(
        self,
        key: str,
        fetch: Callable[[], tuple[str, datetime | None]],
        *,
        margin: timedelta = timedelta(0),
        refused: str | None = None,
    ) -> SharedValue:
        """The value under ``key`` if it stays fresh for ``margin`` longer and is not ``refused`` (a value the
        provider turned down); otherwise ``fetch()`` → ``(value, expires_at)``, called by one process at a time
        with the row locked, stored and returned. An exception from ``fetch`` leaves the stored value as it was."""
        current = self.get(key)
        if current is not None and current.value != refused and current.fresh(utcnow(), margin):
            return current
        with self.engine.begin() as conn:
            # the INSERT takes SQLite's write lock even when the row exists; FOR UPDATE locks it on PostgreSQL
            insert_ignoring_duplicates(conn, SharedValueRow.__table__, [{"key": key}], ["key"])
            row = conn.execute(
                select(SharedValueRow.value, SharedValueRow.expires_at)
                .where(SharedValueRow.key == key)
                .with_for_update()
            ).one()
            if row.value is not None and row.value != refused:
                stored = SharedValue(row.value, row.expires_at)
                if stored.fresh(utcnow(), margin):  # another process refreshed it while this one waited
                    return stored
            value, expires_at = fetch()
            conn.execute(
                update(SharedValueRow)
                .where(SharedValueRow.key == key)
                .values(value=value, expires_at=expires_at, updated_at=utcnow())
            )
        return SharedValue(value, expires_at)
