"""Migration 0007 on SQLite and PostgreSQL: e-mail suppression addresses are lower-cased, the duplicates this
makes are merged keeping the oldest entry, phones and WeChat openids are left as they are."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from orchestrator.db.engine import alembic_config, create_db_engine, migrate
from orchestrator.db.models import Suppression
from orchestrator.timeutil import utcnow
from tests import dataset
from tests.test_suppressions_unique import fresh_url  # noqa: F401 (a fixture: an empty database per backend)


def test_migration_0007_lower_cases_email_addresses_and_merges_duplicates(fresh_url: str):  # noqa: F811
    engine = create_db_engine(fresh_url)
    try:
        migrate(engine)
        command.downgrade(alembic_config(engine), "0006")
        keys = dataset.load(engine)
        t0 = utcnow() - timedelta(days=3)
        rows = [
            # (customer_pk, address, channel, reason, age in hours)
            (None, "Alice@Example.com", "email", "bounced", 1),  # the oldest of the three: kept
            (None, "alice@example.com", "email", "unsubscribed", 2),
            (None, "ALICE@example.com", "email", "complained", 3),
            (None, "Alice@example.com", None, "do_not_contact", 0),  # another channel: its own entry
            (None, "Bob@example.com", "email", "bounced", 4),
            (None, "+8613800000001", "sms", "bounced", 5),
            (None, "oAbC_Open-Id", "wechat", "bounced", 6),  # an openid is case-sensitive
            (keys["C01"], None, None, "do_not_contact", 7),
        ]
        with engine.begin() as conn:
            for pk, address, channel, reason, hours in rows:
                conn.execute(
                    insert(Suppression).values(
                        customer_pk=pk,
                        address=address,
                        channel=channel,
                        reason=reason,
                        created_at=t0 + timedelta(hours=hours),
                    )
                )
        migrate(engine)
        with engine.connect() as conn:
            kept = conn.execute(
                select(Suppression.customer_pk, Suppression.address, Suppression.channel, Suppression.reason).order_by(
                    Suppression.id
                )
            ).all()
        assert kept == [
            (None, "alice@example.com", "email", "bounced"),
            (None, "alice@example.com", None, "do_not_contact"),
            (None, "bob@example.com", "email", "bounced"),
            (None, "+8613800000001", "sms", "bounced"),
            (None, "oAbC_Open-Id", "wechat", "bounced"),
            (keys["C01"], None, None, "do_not_contact"),
        ]
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(
                insert(Suppression).values(
                    address="alice@example.com", channel="email", reason="bounced", created_at=t0
                )
            )
        command.downgrade(alembic_config(engine), "0006")  # a no-op: the addresses stay lower-cased
        with engine.connect() as conn:
            assert len(conn.execute(select(Suppression.id)).all()) == len(kept)
        migrate(engine)
    finally:
        engine.dispose()
