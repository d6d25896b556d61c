"""Refusing a replayed webhook: a provider's one-time token (Mailgun's ``signature.token``) is remembered in the
database, in the ``shared_values`` table every server process shares, until the request it came with is too old
to pass the timestamp check anyway; the same token again within that time is a replay.

The token is claimed in the transaction that applies the request's events, so a request that fails is not
remembered and the provider's retry of it is accepted.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import Connection, delete, update
from sqlalchemy.dialects import postgresql, sqlite

from orchestrator.db.models import SharedValue
from orchestrator.timeutil import utcnow

PREFIX = "webhook-token:"


def _key(provider: str, token: str) -> str:
    # hashed: the key column is bounded, and a token is the provider's, not ours to keep
    return f"{PREFIX}{provider}:{hashlib.sha256(token.encode()).hexdigest()}"


def claim_once(conn: Connection, provider: str, token: str, remember_until: datetime) -> bool:
    """True the first time ``token`` is seen from ``provider`` (or after its memory expired); False for a replay."""
    now = utcnow()
    conn.execute(delete(SharedValue).where(SharedValue.key.startswith(PREFIX), SharedValue.expires_at < now))
    key = _key(provider, token)
    dialect = {"sqlite": sqlite, "postgresql": postgresql}[conn.dialect.name]
    inserted = conn.execute(
        dialect.insert(SharedValue)
        .values(key=key, value="", expires_at=remember_until, updated_at=now)
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(SharedValue.key)
    ).first()
    if inserted is not None:
        return True
    # still there: a replay, unless it expired between the clean-up above and now
    renewed = conn.execute(
        update(SharedValue)
        .where(SharedValue.key == key, SharedValue.expires_at < now)
        .values(expires_at=remember_until, updated_at=now)
        .returning(SharedValue.key)
    ).first()
    return renewed is not None
