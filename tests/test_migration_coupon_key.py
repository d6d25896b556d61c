"""Migration 0004 puts a unique key (run, customer, step) on coupons, resolving the duplicates that parallel runs
of one campaign left behind, on SQLite and PostgreSQL.

The database is taken back to 0003, given the state the incident left (a member with an orphan coupon beside
the one their delivery carries, a member whose two channels carry two coupons, an orphan that was redeemed all
the same), and migrated: orphans are deleted and given back to the budget, coupons carried or redeemed are kept
but detached from the run, and the key holds from then on.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from alembic import command
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from orchestrator.db.engine import alembic_config
from orchestrator.db.models import (
    Campaign,
    CampaignRun,
    Coupon,
    CouponRedemption,
    Customer,
    Delivery,
    OfferBudget,
)

NOW = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)


def _coupon(conn, code: str, campaign: int, run: int, customer: int, state: str = "issued") -> int:
    return conn.execute(
        insert(Coupon.__table__).values(
            code=code,
            campaign_pk=campaign,
            run_pk=run,
            customer_pk=customer,
            step="main",
            offer_kind="amount_off",
            value=Decimal(5),
            min_spend=Decimal(0),
            terms={"face_value": "5"},
            valid_from=NOW,
            valid_until=NOW + timedelta(days=7),
            state=state,
            issued_at=NOW,
        )
    ).inserted_primary_key[0]


def _delivery(conn, run: int, customer: int, channel: str, coupon: int | None) -> None:
    conn.execute(
        insert(Delivery.__table__).values(
            run_pk=run,
            customer_pk=customer,
            channel=channel,
            step="main",
            state="sent",
            coupon_pk=coupon,
            attempts=1,
            created_at=NOW,
            updated_at=NOW,
            sent_at=NOW,
        )
    )


def test_migration_0004_resolves_duplicates_and_adds_the_key(engine: Engine):
    cfg = alembic_config(engine)
    command.downgrade(cfg, "0003")
    try:
        with engine.begin() as conn:
            campaign = conn.execute(
                insert(Campaign.__table__).values(
                    name="c", definition={}, content_hash="x", created_at=NOW, updated_at=NOW
                )
            ).inserted_primary_key[0]
            run = conn.execute(
                insert(CampaignRun.__table__).values(campaign_pk=campaign, scheduled_at=NOW, state="done", summary={})
            ).inserted_primary_key[0]
            members = [
                conn.execute(
                    insert(Customer.__table__).values(
                        customer_id=f"M{i}", attributes={}, created_at=NOW, updated_at=NOW
                    )
                ).inserted_primary_key[0]
                for i in range(3)
            ]
            a, b, c = members
            # A: the carried coupon and two orphans (one already void)
            kept_a = _coupon(conn, "A1", campaign, run, a)
            orphan_a = _coupon(conn, "A0", campaign, run, a)
            void_a = _coupon(conn, "A2", campaign, run, a, state="void")
            _delivery(conn, run, a, "email", kept_a)
            # B: two channels, each carrying its own coupon
            first_b, second_b = _coupon(conn, "B1", campaign, run, b), _coupon(conn, "B2", campaign, run, b)
            _delivery(conn, run, b, "email", first_b)
            _delivery(conn, run, b, "sms", second_b)
            # C: an orphan that was redeemed, and the carried one
            redeemed_c = _coupon(conn, "C0", campaign, run, c, state="redeemed")
            carried_c = _coupon(conn, "C1", campaign, run, c)
            _delivery(conn, run, c, "email", carried_c)
            conn.execute(
                insert(CouponRedemption.__table__).values(coupon_pk=redeemed_c, redeemed_at=NOW, source="till")
            )
            # the budget counted every coupon not void: 6
            conn.execute(
                insert(OfferBudget.__table__).values(
                    campaign_pk=campaign, step="main", offer_kind="coupon", issued=6, face_value=Decimal(30)
                )
            )
    finally:
        command.upgrade(cfg, "head")
    with engine.connect() as conn:
        rows = {row.id: row for row in conn.execute(select(Coupon.id, Coupon.run_pk, Coupon.state))}
        budget = conn.execute(select(OfferBudget.issued, OfferBudget.face_value)).one()
    assert orphan_a not in rows and void_a not in rows  # orphans deleted
    assert rows[kept_a].run_pk == run
    assert rows[first_b].run_pk == run and rows[second_b].run_pk is None  # carried: kept, detached
    assert rows[redeemed_c].run_pk == run and rows[carried_c].run_pk is None  # the redeemed one is the run's
    assert tuple(budget) == (5, Decimal(25))  # the deleted orphan that was not void is given back
    with pytest.raises(IntegrityError), engine.begin() as conn:
        _coupon(conn, "A9", campaign, run, a)  # the key holds
