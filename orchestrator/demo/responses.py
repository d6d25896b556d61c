"""How the demo's members answer its campaigns: orders and coupon redemptions after the runs, from a seeded model.

For each member a run contacted or held out, the chance of a paid order within 14 days of the run is

    base rate of the campaign's audience  +  (contacted only) the campaign's lift

(``RESPONSES`` below; a campaign not listed gets ``DEFAULT_BASE`` and a lift by its offer kind). So the lift over
the control group is real, varies by segment (the base rate of dormant, lapsed or regular guests differs) and
by offer, and is zero for ``wake-dormant-members``: its report shows no clear effect. A contacted member who
orders uses the run's coupon with ``REDEEM_SHARE`` probability (the order carries its code; the importer redeems
it, checking every rule of the coupon); ``REFUND_SHARE`` of the new orders are refunded afterwards. Orders are
placed at lunchtime on a weekday, at or above the coupon's minimum spend, so that the coupons' own rules
(dayparts, weekdays, minimum spend) rarely refuse them.

The orders go through the same CSV importer as a shop's export: first the paid orders (which redeems the codes),
then the refunded ones again with status ``refunded``, as a later export would. Everything is drawn from one
``random.Random(seed)`` in a fixed order (runs, then members by id), so the same seed gives the same orders.
Deliveries are streamed from the database; nothing holds the whole audience.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import Engine, case, func, select

from orchestrator.config import Settings
from orchestrator.data.records import ORDER_COLUMNS
from orchestrator.db.models import Campaign, CampaignRun, Coupon, Customer, Delivery

WINDOW_DAYS = 14
REDEEM_SHARE = 0.75
REFUND_SHARE = 0.04
DEFAULT_BASE = 0.05
#: campaign → (base rate of its audience, lift for the contacted)
RESPONSES: dict[str, tuple[float, float]] = {
    "winback-lapsed-diners": (0.04, 0.20),  # lapsed diners: rarely come back alone, a 30-yuan coupon works
    "vip-retention": (0.15, 0.25),  # VIPs buy often anyway; a gift still moves many
    "lunch-regulars": (0.35, 0.10),  # regulars already come: a small coupon adds a little
    "dinner-to-lunch": (0.10, 0.15),
    "wake-dormant-members": (0.03, 0.0),  # a preview without a reason to come: no effect
    "after-purchase-parking": (0.20, 0.05),
}
LIFT_BY_OFFER = {"amount_off": 0.08, "percent_off": 0.08, "free_item": 0.10, "gift": 0.06, None: 0.02}


@dataclass(frozen=True)
class Exposed:
    run_pk: int
    campaign: str
    customer_id: str
    contacted: bool
    start: datetime
    code: str | None
    offer_kind: str | None
    min_spend: Decimal | None


def exposed(engine: Engine) -> Iterator[Exposed]:
    """Every member each run contacted or held out, in run and customer-id order, streamed."""
    query = (
        select(
            Delivery.run_pk,
            Campaign.name,
            Customer.customer_id,
            func.max(case((Delivery.state == "sent", 1), else_=0)).label("contacted"),
            func.min(func.coalesce(Delivery.deferred_until, CampaignRun.scheduled_at)).label("start"),
            func.max(Coupon.code).label("code"),
            func.max(Coupon.offer_kind).label("offer_kind"),
            func.max(Coupon.min_spend).label("min_spend"),
        )
        .join(CampaignRun, CampaignRun.id == Delivery.run_pk)
        .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
        .join(Customer, Customer.id == Delivery.customer_pk)
        .outerjoin(Coupon, Coupon.id == Delivery.coupon_pk)
        .where(Delivery.state.in_(("sent", "held_out")))
        .group_by(Delivery.run_pk, Campaign.name, Customer.customer_id)
        .order_by(Delivery.run_pk, Customer.customer_id)
    )
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=2000).execute(query):
            yield Exposed(
                row.run_pk,
                row.name,
                row.customer_id,
                bool(row.contacted),
                row.start,
                row.code,
                row.offer_kind,
                row.min_spend,
            )


def probability(member: Exposed) -> float:
    base, lift = RESPONSES.get(member.campaign, (DEFAULT_BASE, LIFT_BY_OFFER.get(member.offer_kind, 0.02)))
    return base + (lift if member.contacted else 0.0)


def write_responses(engine: Engine, settings: Settings, folder: Path, seed: int) -> tuple[Path, Path, int, int]:
    """Write ``responses.csv`` (paid orders) and ``refunds.csv`` (some of them, refunded) into ``folder``;
    returns the two paths, the orders written and the refunds."""
    rng = random.Random(seed)
    tz = settings.tz
    paid_path, refunds_path = folder / "responses.csv", folder / "refunds.csv"
    orders = refunds = 0
    with (
        paid_path.open("w", encoding="utf-8", newline="") as paid_file,
        refunds_path.open("w", encoding="utf-8", newline="") as refunds_file,
    ):
        paid, refunded = csv.writer(paid_file), csv.writer(refunds_file)
        paid.writerow(ORDER_COLUMNS)
        refunded.writerow(ORDER_COLUMNS)
        for member in exposed(engine):
            if rng.random() >= probability(member):
                continue
            when = _lunchtime(member.start.astimezone(tz), rng)
            floor_amount = member.min_spend or Decimal(0)
            amount = max(floor_amount, Decimal(40)) + Decimal(rng.randrange(0, 12_000)) / 100
            code = member.code if member.contacted and member.code and rng.random() < REDEEM_SHARE else ""
            orders += 1
            row = [
                f"R{member.run_pk:03d}-{member.customer_id}",
                member.customer_id,
                when.isoformat(),
                f"{amount:.2f}",
                "paid",
                "online",
                "wechat_pay",
                code,
                "response",
            ]
            paid.writerow(row)
            if rng.random() < REFUND_SHARE:
                refunds += 1
                refunded.writerow([*row[:4], "refunded", *row[5:]])
    return paid_path, refunds_path, orders, refunds


def _lunchtime(start: datetime, rng: random.Random) -> datetime:
    """A weekday lunchtime (11:30–13:30 local) within the window after ``start``."""
    for _ in range(50):
        day = start.date() + timedelta(days=rng.randrange(0, WINDOW_DAYS))
        moment = datetime.combine(day, time(11, 30), start.tzinfo) + timedelta(minutes=rng.randrange(0, 120))
        if moment.weekday() < 5 and start <= moment < start + timedelta(days=WINDOW_DAYS):
            return moment
    return start + timedelta(hours=1)
