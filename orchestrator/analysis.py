"""The member-base report (``orchestrator analyze``): the seed shop's figures for any shop, as of any time.

Everything is counted in SQL over the facts of ``orchestrator.facts`` (members, their paid orders at or before
``at``) in four aggregate queries, whatever the number of customers: the headline figures, the figures per
province, the members per RFM segment × R and FM score × lifecycle stage × tier × month of dormancy (the dormancy
curve), and the paid orders per band of amount (spend per order). Python only adds up and divides the totals.

Rounding, once, at the end: money to the fen, rates and shares to 4 places, purchase frequency to 2 places, all
half up. A ratio whose denominator is zero (no members, no orders) is ``None``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from itertools import pairwise
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, case, func, select

from orchestrator.config import Settings
from orchestrator.facts import (
    LIFECYCLE_STAGES,
    RFM_SEGMENT_RULES,
    RFM_SEGMENTS,
    CustomerFacts,
    FactContext,
    amount_minor,
    count_where,
    customers,
    fm_score,
    integer_sum,
    paid_orders,
)
from orchestrator.money import from_minor, quantize, to_minor

# Buying members by their own average order value: [0, 100), [100, 200), [200, ∞) in the shop's currency.
AOV_BANDS: tuple[Decimal, ...] = (Decimal("100"), Decimal("200"))
UNKNOWN_PROVINCE = "(unknown)"
RATE_PLACES = "0.0001"
# The dormancy curve counts buying members per this many days since their last paid order.
DORMANCY_STEP_DAYS = 30
# The spend per order distribution counts paid orders per band of this width in the shop's currency.
ORDER_AMOUNT_STEP = Decimal("20")
FREQUENCY_PLACES = "0.01"


def ratio(numerator: int | Decimal, denominator: int | Decimal, places: str) -> Decimal | None:
    """``numerator ÷ denominator`` rounded half up to ``places``; None when the denominator is zero."""
    if not denominator:
        return None
    return quantize(Decimal(numerator) / Decimal(denominator), places)


def band_labels(bounds: tuple[Decimal, ...] = AOV_BANDS) -> list[str]:
    """``<100``, ``100-200``, ``200+`` for bounds (100, 200)."""
    edges = [f"{bound:g}" for bound in bounds]
    middle = [f"{low}-{high}" for low, high in pairwise(edges)]
    return [f"<{edges[0]}", *middle, f"{edges[-1]}+"]


@dataclass(frozen=True)
class BigSpenders:
    """Members whose cumulative paid spend is strictly over the threshold, and their part of the revenue."""

    threshold: Decimal
    count: int
    revenue: Decimal
    total_revenue: Decimal

    @property
    def sales_share(self) -> Decimal | None:
        return ratio(self.revenue, self.total_revenue, RATE_PLACES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": quantize(self.threshold),
            "count": self.count,
            "revenue": self.revenue,
            "sales_share": self.sales_share,
        }


@dataclass(frozen=True)
class ProvinceFigures:
    province: str
    members: int
    buying_members: int
    revenue: Decimal

    @property
    def buying_rate(self) -> Decimal | None:
        return ratio(self.buying_members, self.members, RATE_PLACES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "province": self.province,
            "members": self.members,
            "buying_members": self.buying_members,
            "buying_rate": self.buying_rate,
            "revenue": self.revenue,
        }


@dataclass(frozen=True)
class MemberReport:
    """The counts and sums of the member base as of ``at``; rates are derived from them on demand."""

    at: datetime
    currency: str
    members: int
    buying_members: int
    orders: int
    revenue: Decimal
    dormant_days: int
    lost_days: int
    dormant_90d: int
    dormant_180d: int
    high_value_min_orders: int
    high_value_members: int
    big_spenders: BigSpenders
    avg_order_distribution: dict[str, int]
    provinces: list[ProvinceFigures] = field(default_factory=list)
    rfm: dict[str, int] = field(default_factory=dict)
    lifecycle: dict[str, int] = field(default_factory=dict)
    tiers: dict[str, int] = field(default_factory=dict)
    rfm_grid: list[dict[str, Any]] = field(default_factory=list)
    dormancy: list[dict[str, int]] = field(default_factory=list)
    order_amounts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def never_bought(self) -> int:
        return self.members - self.buying_members

    @property
    def buying_rate(self) -> Decimal | None:
        """Buying members ÷ members (成功交易会员占比)."""
        return ratio(self.buying_members, self.members, RATE_PLACES)

    @property
    def purchase_frequency(self) -> Decimal | None:
        """Paid orders ÷ buying members (有效购买频次)."""
        return ratio(self.orders, self.buying_members, FREQUENCY_PLACES)

    @property
    def aov(self) -> Decimal | None:
        """Paid revenue ÷ paid orders (客单价), to the fen."""
        return ratio(self.revenue, self.orders, "0.01")

    @property
    def conversion_by_province(self) -> dict[str, Decimal | None]:
        """Province → buying rate, best converting first (ties: more members first, then by name)."""
        return {p.province: p.buying_rate for p in self.provinces}

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of ``orchestrator analyze --json``."""
        return {
            "at": self.at,
            "currency": self.currency,
            "members": self.members,
            "buying_members": self.buying_members,
            "never_bought": self.never_bought,
            "buying_rate": self.buying_rate,
            "orders": self.orders,
            "revenue": self.revenue,
            "purchase_frequency": self.purchase_frequency,
            "aov": self.aov,
            "dormant_days": self.dormant_days,
            "lost_days": self.lost_days,
            "dormant_90d": self.dormant_90d,
            "dormant_180d": self.dormant_180d,
            "high_value_min_orders": self.high_value_min_orders,
            "high_value_members": self.high_value_members,
            "big_spenders": self.big_spenders.to_dict(),
            "avg_order_distribution": dict(self.avg_order_distribution),
            "conversion_by_province": self.conversion_by_province,
            "provinces": [p.to_dict() for p in self.provinces],
            "rfm": dict(self.rfm),
            "lifecycle": dict(self.lifecycle),
            "tiers": dict(self.tiers),
            "rfm_grid": list(self.rfm_grid),
            "dormancy": list(self.dormancy),
            "order_amounts": list(self.order_amounts),
        }


def member_report(engine: Engine, settings: Settings, at: datetime) -> MemberReport:
    """The member-base report as of ``at`` (aware), from one consistent snapshot of the database."""
    ctx = FactContext(at, settings)
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # the three queries must see the same orders even while imports run
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        headline = _headline(conn, ctx)
        provinces = _provinces(conn, ctx)
        labels = _labels(conn, ctx)
        amounts = _order_amounts(conn, ctx)
    return replace(_assemble(ctx, headline, provinces, labels), order_amounts=amounts)


# --- the queries ----------------------------------------------------------------------------------------------


def _headline(conn: Connection, ctx: FactContext) -> dict[str, int]:
    """Members, buyers, orders, revenue, dormancy, high value, big spenders and AOV bands: one row."""
    facts = CustomerFacts(ctx)
    analysis, lifecycle = ctx.settings.analysis, ctx.settings.lifecycle
    big = facts.monetary_minor > to_minor(analysis.big_spender_threshold)
    columns = [
        func.count().label("members"),
        count_where(facts.is_buyer).label("buying_members"),
        integer_sum(facts.frequency).label("orders"),
        integer_sum(facts.monetary_minor).label("revenue_minor"),
        count_where(facts.recency_days >= lifecycle.dormant_days).label("dormant"),
        count_where(facts.recency_days >= lifecycle.lost_days).label("lost"),
        count_where(and_(facts.is_buyer, facts.frequency >= analysis.high_value_min_orders)).label("high_value"),
        count_where(big).label("big_count"),
        integer_sum(case((big, facts.monetary_minor), else_=0)).label("big_revenue_minor"),
        *_band_columns(facts),
    ]
    return dict(conn.execute(facts.select(*columns)).one()._mapping)


def _band_columns(facts: CustomerFacts) -> list[ColumnElement[int]]:
    """Buying members per band of their own average order value (``band_0``, ``band_1``, …)."""
    bounds: list[int | None] = [None, *(to_minor(b) for b in AOV_BANDS), None]
    return [
        count_where(_in_band(facts, low, high)).label(f"band_{i}") for i, (low, high) in enumerate(pairwise(bounds))
    ]


def _in_band(facts: CustomerFacts, low: int | None, high: int | None) -> ColumnElement[bool]:
    """low ≤ spend ÷ orders < high, compared exactly in fen as low·orders ≤ spend < high·orders."""
    conditions = [facts.is_buyer]
    if low is not None:
        conditions.append(facts.monetary_minor >= low * facts.frequency)
    if high is not None:
        conditions.append(facts.monetary_minor < high * facts.frequency)
    return and_(*conditions)


def _provinces(conn: Connection, ctx: FactContext) -> list[dict[str, Any]]:
    """Members, buyers and revenue per province."""
    facts = CustomerFacts(ctx)
    statement = facts.select(
        customers.c.province,
        func.count().label("members"),
        count_where(facts.is_buyer).label("buying_members"),
        integer_sum(facts.monetary_minor).label("revenue_minor"),
    ).group_by(customers.c.province)
    return [dict(row._mapping) for row in conn.execute(statement)]


def _labels(conn: Connection, ctx: FactContext) -> list[dict[str, Any]]:
    """Members per (RFM segment, lifecycle stage, tier, R score, FM score, month of dormancy): one grouped query
    for five distributions. The segment follows from the scores and the stage largely from the month, so the groups
    stay in the thousands however many members there are."""
    facts = CustomerFacts(ctx)
    labelled = facts.select(
        facts.rfm_segment.label("rfm_segment"),
        facts.lifecycle_stage.label("lifecycle_stage"),
        facts.tier.label("tier"),
        facts.r_score.label("r_score"),
        fm_score(facts.f_score, facts.m_score).label("fm_score"),
        (facts.recency_days // DORMANCY_STEP_DAYS).label("dormancy_step"),
    ).subquery("labelled")
    dimensions = [
        labelled.c.rfm_segment,
        labelled.c.lifecycle_stage,
        labelled.c.tier,
        labelled.c.r_score,
        labelled.c.fm_score,
        labelled.c.dormancy_step,
    ]
    statement = select(*dimensions, func.count().label("members")).group_by(*dimensions)
    return [dict(row._mapping) for row in conn.execute(statement)]


def _order_amounts(conn: Connection, ctx: FactContext) -> list[dict[str, Any]]:
    """Members' paid orders per ``ORDER_AMOUNT_STEP`` of amount: ``from`` (inclusive), ``to``, ``orders``."""
    width = to_minor(ORDER_AMOUNT_STEP)
    inner = paid_orders(ctx, amount_minor().label("amount_minor")).subquery("amounts")
    band = (inner.c.amount_minor // width).label("band")
    statement = select(band, func.count().label("orders")).group_by(band).order_by(band)
    return [
        {
            "from": from_minor(int(row.band) * width),
            "to": from_minor((int(row.band) + 1) * width),
            "orders": row.orders,
        }
        for row in conn.execute(statement)
    ]


# --- from totals to the report --------------------------------------------------------------------------------


def _assemble(
    ctx: FactContext, headline: dict[str, int], provinces: list[dict[str, Any]], labels: list[dict[str, Any]]
) -> MemberReport:
    settings = ctx.settings
    revenue = from_minor(headline["revenue_minor"])
    return MemberReport(
        at=ctx.at,
        currency=settings.currency,
        members=headline["members"],
        buying_members=headline["buying_members"],
        orders=int(headline["orders"]),
        revenue=revenue,
        dormant_days=settings.lifecycle.dormant_days,
        lost_days=settings.lifecycle.lost_days,
        dormant_90d=headline["dormant"],
        dormant_180d=headline["lost"],
        high_value_min_orders=settings.analysis.high_value_min_orders,
        high_value_members=headline["high_value"],
        big_spenders=BigSpenders(
            threshold=settings.analysis.big_spender_threshold,
            count=headline["big_count"],
            revenue=from_minor(headline["big_revenue_minor"]),
            total_revenue=revenue,
        ),
        avg_order_distribution={label: headline[f"band_{i}"] for i, label in enumerate(band_labels())},
        provinces=_province_figures(provinces),
        rfm=_distribution(labels, "rfm_segment", RFM_SEGMENTS),
        lifecycle=_distribution(labels, "lifecycle_stage", LIFECYCLE_STAGES),
        tiers=_distribution(labels, "tier", [rule.name for rule in settings.tiers]),
        rfm_grid=_rfm_grid(labels),
        dormancy=_dormancy(labels),
    )


def _province_figures(rows: list[dict[str, Any]]) -> list[ProvinceFigures]:
    figures = [
        ProvinceFigures(
            province=row["province"] or UNKNOWN_PROVINCE,
            members=row["members"],
            buying_members=row["buying_members"],
            revenue=from_minor(row["revenue_minor"]),
        )
        for row in rows
    ]
    return sorted(figures, key=lambda p: (-(p.buying_rate or 0), -p.members, p.province))


def _rfm_grid(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Buying members per cell of the R × FM grid (scores 1–5 each) with the cell's segment, every cell present."""
    counts: Counter[tuple[int, int]] = Counter()
    for row in rows:
        if row["r_score"] is not None and row["fm_score"] is not None:
            counts[int(row["r_score"]), int(row["fm_score"])] += row["members"]
    return [
        {"r_score": r, "fm_score": fm, "segment": _segment_of(r, fm), "members": counts[r, fm]}
        for r in range(1, 6)
        for fm in range(1, 6)
    ]


def _dormancy(rows: list[dict[str, Any]]) -> list[dict[str, int]]:
    """Buying members per ``DORMANCY_STEP_DAYS`` days since their last paid order (``days_from``, ``members``),
    only the steps someone is in; members who never bought have no recency and are not counted."""
    counts: Counter[int] = Counter()
    for row in rows:
        if row["dormancy_step"] is not None:
            counts[int(row["dormancy_step"])] += row["members"]
    return [{"days_from": step * DORMANCY_STEP_DAYS, "members": counts[step]} for step in sorted(counts)]


def _segment_of(r: int, fm: int) -> str | None:
    for rule in RFM_SEGMENT_RULES:
        if rule.r[0] <= r <= rule.r[1] and rule.fm[0] <= fm <= rule.fm[1]:
            return rule.segment
    return None


def _distribution(rows: list[dict[str, Any]], key: str, names: Any) -> dict[str, int]:
    """Members per value of ``key``, every known name present (0 if none); NULL values are not counted."""
    counts: Counter[str] = Counter()
    for row in rows:
        if row[key] is not None:
            counts[row[key]] += row["members"]
    return {name: counts[name] for name in names} | dict(counts)
