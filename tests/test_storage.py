"""Schema creation and upgrade, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import insert, inspect, select

from orchestrator.db.engine import MIGRATIONS
from orchestrator.db.models import Base, Customer, Order
from tests.clitools import Cli

HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()


def test_migrations_match_the_models(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_tables_and_indexes_exist(engine):
    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    assert {"customers", "orders", "customer_tags", "customer_consents", "suppressions"} <= tables
    assert {"campaigns", "campaign_runs", "deliveries", "coupons", "coupon_redemptions"} <= tables
    order_indexes = {i["name"] for i in inspector.get_indexes("orders")}
    assert "ix_orders_customer_status_time" in order_indexes
    delivery_uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("deliveries")}
    assert ("run_pk", "customer_pk", "channel", "follow_up") in delivery_uniques


def test_money_is_exact_and_times_are_aware(engine):
    now = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=8)))
    with engine.begin() as conn:
        pk = conn.execute(
            insert(Customer).returning(Customer.id),
            {"customer_id": "C1", "attributes": {}, "created_at": now, "updated_at": now},
        ).scalar_one()
        rows = [
            {"order_id": f"O{i}", "customer_pk": pk, "ordered_at": now, "amount": Decimal("0.10"), "status": "paid"}
            for i in range(10)
        ]
        conn.execute(insert(Order), [{**r, "attributes": {}, "created_at": now, "updated_at": now} for r in rows])
    from sqlalchemy import func

    with engine.connect() as conn:
        total = conn.execute(select(func.sum(Order.amount))).scalar_one()
        stored = conn.execute(select(Order.ordered_at).limit(1)).scalar_one()
    assert total == Decimal("1.00")  # 10 × 0.10 in floating point would not be exactly 1
    assert stored.tzinfo is not None
    assert stored == datetime(2026, 3, 1, 4, 0, tzinfo=UTC)


def test_naive_datetimes_are_refused(engine):
    with pytest.raises(Exception, match="naive"), engine.begin() as conn:
        conn.execute(
            insert(Customer),
            {
                "customer_id": "C1",
                "attributes": {},
                "created_at": datetime(2026, 1, 1),
                "updated_at": datetime.now(UTC),
            },
        )


def test_init_creates_and_upgrades(db_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = Cli(db_url)
    first = run("init", "--json")
    assert first.exit_code == 0, first.output
    data = json.loads(first.output)
    assert data["revision"] == HEAD
    assert data["config"] == "orchestrator.yaml"
    assert (tmp_path / "orchestrator.yaml").is_file()
    again = run("init", "--json")  # an up-to-date database is left as it is
    assert again.exit_code == 0
    assert json.loads(again.output)["revision"] == HEAD


def test_an_older_database_is_upgraded_with_its_data(db_url, tmp_path, monkeypatch):
    """A database created by the first release keeps its members when ``init`` upgrades it."""
    monkeypatch.chdir(tmp_path)  # init writes orchestrator.yaml into the working directory
    from alembic import command

    from orchestrator.db.engine import alembic_config, create_db_engine

    engine = create_db_engine(db_url)
    command.downgrade(alembic_config(engine), "0001")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(Customer), {"customer_id": "C1", "attributes": {}, "created_at": now, "updated_at": now})
    engine.dispose()
    result = Cli(db_url)("init", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["revision"] == HEAD
    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(select(Customer.customer_id)).scalars().all() == ["C1"]
        assert "offer_budgets" in inspect(conn).get_table_names()
    engine.dispose()
