"""API keys in the database, on SQLite and PostgreSQL: a revoked key's name may be given to a new key (the revoked
row stays for the record), while two live keys never share a name, not even when created at the same moment."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError

from orchestrator import api_keys
from orchestrator.db.models import ApiKey
from orchestrator.errors import InputError
from orchestrator.timeutil import utcnow


def test_a_revoked_name_may_be_reused_and_the_revoked_row_is_kept(engine: Engine):
    with engine.begin() as conn:
        old = api_keys.create(conn, "till-1", ["coupons:redeem"])
        api_keys.revoke(conn, "till-1")
        new = api_keys.create(conn, "till-1", ["coupons:check"])
        with pytest.raises(InputError, match="exists"):
            api_keys.create(conn, "till-1", ["coupons:check"])  # the live one: still refused
        assert api_keys.authenticate(conn, old) is None
        caller, _ = api_keys.authenticate(conn, new)
        assert caller.name == "till-1" and caller.scopes == {"coupons:check"}
        rows = api_keys.listing(conn)
        assert [(r["name"], r["revoked_at"] is not None) for r in rows] == [("till-1", True), ("till-1", False)]
        api_keys.revoke(conn, "till-1")  # revokes the live one
        assert api_keys.authenticate(conn, new) is None
        api_keys.revoke(conn, "till-1")  # nothing live: not an error


def test_the_database_refuses_two_live_keys_with_one_name(engine: Engine):
    row = {"name": "till-2", "scopes": [], "created_at": utcnow()}
    with engine.begin() as conn:
        conn.execute(insert(ApiKey).values(prefix="aaaaaaaa", key_hash="x" * 64, **row))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(ApiKey).values(prefix="bbbbbbbb", key_hash="y" * 64, **row))
    with engine.begin() as conn:  # a revoked one beside the live one is fine
        conn.execute(insert(ApiKey).values(prefix="cccccccc", key_hash="z" * 64, revoked_at=utcnow(), **row))


def test_migration_0012_round_trip_keeps_every_key(engine: Engine):
    from alembic import command
    from sqlalchemy import select

    from orchestrator.db.engine import alembic_config

    with engine.begin() as conn:
        api_keys.create(conn, "till-3", ["coupons:redeem"])
        api_keys.revoke(conn, "till-3")
        live = api_keys.create(conn, "till-3", ["coupons:redeem"])
    cfg = alembic_config(engine)
    command.downgrade(cfg, "0011")  # the old rule, a name once: the revoked row keeps its record renamed
    try:
        with engine.connect() as conn:
            names = conn.execute(select(ApiKey.name, ApiKey.revoked_at.is_(None)).order_by(ApiKey.id)).all()
        assert [tuple(n) for n in names][1] == ("till-3", True) and names[0][0].startswith("till-3~")
    finally:
        command.upgrade(cfg, "head")
    with engine.begin() as conn:
        assert api_keys.authenticate(conn, live) is not None
