"""API keys for the service's point-of-sale endpoints: created, listed, revoked and checked.

A key is ``ok_<prefix>_<secret>``: 8 random characters that find its row, then 43 (256 bits) that prove it. Only
the SHA-256 of the whole key is stored and compared in constant time; the key is printed once, at creation. A key
holds scopes (``SCOPES``); ``coupons:redeem`` includes ``coupons:check``. Revoking is immediate for every server
process, since each request reads the row; the revoked row stays (for the record) and its name may be given to a
new key. Who may call the service is decided here and in the database only:
nothing in a campaign or config file grants a key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from orchestrator.db.models import ApiKey
from orchestrator.errors import InputError
from orchestrator.timeutil import utcnow

SCOPES = ("coupons:check", "coupons:redeem")
IMPLIED = {"coupons:redeem": ("coupons:check",)}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEY = re.compile(r"ok_([A-Za-z0-9]{8})_([A-Za-z0-9_-]{43})")
PREFIX_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


@dataclass(frozen=True)
class Caller:
    """Who a valid key belongs to."""

    key_id: int
    name: str
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return scope in self.scopes or any(scope in IMPLIED.get(held, ()) for held in self.scopes)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(values: Iterable[str]) -> list[str]:
    scopes = sorted({v.strip() for value in values for v in value.split(",") if v.strip()})
    if not scopes:
        raise InputError("give at least one --scope", hint=f"the scopes are {', '.join(SCOPES)}")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise InputError(f"--scope: {', '.join(unknown)} is not a scope", hint=f"the scopes are {', '.join(SCOPES)}")
    return scopes


def create(conn: Connection, name: str, scopes: list[str], now: datetime | None = None) -> str:
    """Store a new key's hash; returns the key (shown once, never stored)."""
    if not _NAME.fullmatch(name):
        raise InputError(
            f"{name!r} is not a key name", hint="letters, digits, '.', '_' and '-', up to 64, e.g. till-shop-12"
        )
    # unique among live keys only (the database's uq_api_keys_live_name): a revoked key's name may be reused
    if conn.execute(select(ApiKey.id).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))).first():
        raise InputError(f"an API key named {name!r} exists", hint="revoke it first, or choose another name")
    prefix = "".join(secrets.choice(PREFIX_ALPHABET) for _ in range(8))
    key = f"ok_{prefix}_{secrets.token_urlsafe(32)}"
    conn.execute(
        insert(ApiKey).values(name=name, prefix=prefix, key_hash=_hash(key), scopes=scopes, created_at=now or utcnow())
    )
    return key


def revoke(conn: Connection, name: str, now: datetime | None = None) -> None:
    done = conn.execute(
        update(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)).values(revoked_at=now or utcnow())
    )
    if done.rowcount != 1:
        known = conn.execute(select(ApiKey.revoked_at).where(ApiKey.name == name)).first()
        if known is None:
            raise InputError(f"no API key named {name!r}", hint="see 'orchestrator api-keys list'")
        # already revoked: nothing to do, and saying so is not an error


def listing(conn: Connection) -> list[dict[str, Any]]:
    columns = (ApiKey.name, ApiKey.prefix, ApiKey.scopes, ApiKey.created_at, ApiKey.last_used_at, ApiKey.revoked_at)
    rows = conn.execute(select(*columns).order_by(ApiKey.name, ApiKey.id))
    return [
        {
            "name": row.name,
            "prefix": f"ok_{row.prefix}_…",
            "scopes": list(row.scopes),
            "created_at": row.created_at,
            "last_used_at": row.last_used_at,
            "revoked_at": row.revoked_at,
        }
        for row in rows
    ]


def authenticate(conn: Connection, key: str) -> tuple[Caller, datetime | None] | None:
    """The caller a presented key belongs to and when the key was last used, or None (malformed, unknown, wrong
    or revoked: not told apart)."""
    match = _KEY.fullmatch(key)
    if not match:
        return None
    row = conn.execute(
        select(ApiKey.id, ApiKey.name, ApiKey.key_hash, ApiKey.scopes, ApiKey.revoked_at, ApiKey.last_used_at).where(
            ApiKey.prefix == match[1]
        )
    ).first()
    if row is None or not hmac.compare_digest(row.key_hash, _hash(key)) or row.revoked_at is not None:
        return None
    return Caller(row.id, row.name, frozenset(row.scopes)), row.last_used_at


def touch(conn: Connection, caller: Caller, now: datetime | None = None) -> None:
    conn.execute(update(ApiKey).where(ApiKey.id == caller.key_id).values(last_used_at=now or utcnow()))
