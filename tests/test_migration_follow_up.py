"""Migration 0011 gives deliveries a follow-up name (and due time) and makes the unique key (run, customer,
channel, follow-up), keeping every row written before it as the run's own message, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from orchestrator.db.engine import alembic_config
from orchestrator.db.models import Campaign, CampaignRun, Customer, Delivery

NOW = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)


def _delivery(conn, run: int, customer: int, channel: str, **extra) -> None:
    conn.execute(
        insert(Delivery.__table__).values(
            run_pk=run,
            customer_pk=customer,
            channel=channel,
            step="main",
            state="sent",
            attempts=1,
            created_at=NOW,
            updated_at=NOW,
            sent_at=NOW,
            **extra,
        )
    )


def test_migration_0011_keeps_existing_deliveries_as_the_runs_own(engine: Engine):
    cfg = alembic_config(engine)
    command.downgrade(cfg, "0010")
    try:
        with engine.begin() as conn:
            campaign = conn.execute(
                insert(Campaign.__table__).values(
                    name="c", definition={}, content_hash="x", created_at=NOW, updated_at=NOW
                )
            ).inserted_primary_key[0]
            run = conn.execute(
                insert(CampaignRun.__table__).values(
                    campaign_pk=campaign, scheduled_at=NOW, state="done", summary={}, started_at=NOW
                )
            ).inserted_primary_key[0]
            customer = conn.execute(
                insert(Customer.__table__).values(customer_id="C1", attributes={}, created_at=NOW, updated_at=NOW)
            ).inserted_primary_key[0]
            for channel in ("email", "sms"):  # the columns 0011 adds do not exist yet: insert what 0010 has
                conn.exec_driver_sql(
                    "INSERT INTO deliveries (run_pk, customer_pk, channel, step, state, attempts, created_at,"
                    f" updated_at) VALUES ({run}, {customer}, '{channel}', 'main', 'sent', 1,"
                    " '2026-11-02 02:00:00', '2026-11-02 02:00:00')"
                )
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            rows = conn.execute(select(Delivery.channel, Delivery.follow_up, Delivery.due_at)).all()
        assert sorted(rows) == [("email", "", None), ("sms", "", None)]
        with engine.begin() as conn:  # a follow-up's row beside the run's own on the same channel
            _delivery(conn, run, customer, "email", follow_up="reminder", due_at=NOW)
        with pytest.raises(IntegrityError), engine.begin() as conn:
            _delivery(conn, run, customer, "email", follow_up="reminder", due_at=NOW)
        with pytest.raises(IntegrityError), engine.begin() as conn:
            _delivery(conn, run, customer, "sms")
        command.downgrade(cfg, "0010")  # the follow-up's row goes with the column; the run's own rows stay
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM deliveries").scalar_one() == 2
    finally:
        command.upgrade(cfg, "head")
