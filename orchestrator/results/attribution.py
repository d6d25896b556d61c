"""Which paid orders a campaign run earned, and who converted in each run's window: SQL, recomputed every time.

Every statement here aggregates in the database; nothing returns a row per member.

* An **exposure** is a member in a run: contacted (a message or wallet coupon sent) or held out (the
  control group). It starts when the member's message was due: the end of a quiet-hours deferral, else the run's
  scheduled time (held-out members are never deferred: theirs is the scheduled time).
* An order **converts** an exposure when it is paid, placed at or before ``at``, at or after the start and before
  the start plus the campaign's attribution window. The same rule holds for contacted and held-out members, so
  the two groups are measured over the same window.
* An order is **attributed** to a run when it redeemed that run's coupon (whenever it was placed: late
  redemptions count), or else when it falls in the window of a contacted member's exposure; where several
  exposures' windows cover it (overlapping campaigns), the latest wins (``last_touch``) or the earliest
  (``first_touch``). An order refunded or cancelled since is no longer paid, so it counts nowhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Select,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from orchestrator.db.models import CampaignRun, Coupon, CouponRedemption, Delivery, Order
from orchestrator.db.types import UTCDateTime

TREATMENT, CONTROL = "treatment", "control"


# --- elapsed time between two stored times, exact on both engines --------------------------------------------


class MicrosBetween(FunctionElement[int]):
    """``end − start`` in whole microseconds, compiled per dialect."""

    name = "micros_between"
    type = BigInteger()
    inherit_cache = True


@compiles(MicrosBetween, "sqlite")
def _micros_sqlite(element: MicrosBetween, compiler, **kw) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses.clauses)
    return f"({_sqlite_micros(end)} - {_sqlite_micros(start)})"


def _sqlite_micros(value: str) -> str:
    # stored as 'YYYY-MM-DD HH:MM:SS.ffffff': whole seconds from strftime, plus the fraction's digits
    seconds = f"CAST(strftime('%s', substr({value}, 1, 19)) AS INTEGER)"
    fraction = f"CAST(substr({value} || '000000', 21, 6) AS INTEGER)"
    return f"({seconds} * 1000000 + {fraction})"


@compiles(MicrosBetween, "postgresql")
def _micros_postgresql(element: MicrosBetween, compiler, **kw) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses.clauses)
    return f"CAST(EXTRACT(EPOCH FROM ({end} - {start})) * 1000000 AS BIGINT)"


def micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def amount_minor(column=Order.amount) -> ColumnElement[int]:
    """Money in integer minor units, for exact sums (the Money type would re-scale every literal it meets)."""
    return type_coerce(column, BigInteger())


# --- the building blocks ------------------------------------------------------------------------------------


class Windows:
    """Each campaign's attribution window (campaign pk → window), the config's default for the others."""

    def __init__(self, default: timedelta, per_campaign: Mapping[int, timedelta]):
        self.default = default
        self.per_campaign = dict(per_campaign)

    def micros_of(self, campaign_pk: ColumnElement[int]) -> ColumnElement[int]:
        special = {pk: micros(w) for pk, w in self.per_campaign.items() if w != self.default}
        if not special:
            return literal(micros(self.default), BigInteger())
        return case(
            *((campaign_pk == pk, literal(m, BigInteger())) for pk, m in sorted(special.items())),
            else_=literal(micros(self.default), BigInteger()),
        )


def in_window(start, ordered_at, window_micros) -> ColumnElement[bool]:
    return and_(ordered_at >= start, MicrosBetween(start, ordered_at) < window_micros)


def exposures(at: datetime):
    """(run_pk, campaign_pk, customer_pk, step, variant, start, grp) for every member contacted or held out by ``at``.

    A member held out and contacted in one run cannot happen (the control group is decided once per member and
    run); a member with both would count as contacted."""
    at_lit = literal(at, UTCDateTime())
    # the ledger as it stands: a backtest (a run --at in the past) sends at the wall-clock time, after its --at
    contacted = Delivery.state == "sent"
    held_out = Delivery.state == "held_out"
    return (
        select(
            Delivery.run_pk.label("run_pk"),
            CampaignRun.campaign_pk.label("campaign_pk"),
            Delivery.customer_pk.label("customer_pk"),
            func.max(Delivery.step).label("step"),
            func.max(Delivery.variant).label("variant"),
            func.min(func.coalesce(Delivery.deferred_until, CampaignRun.scheduled_at)).label("start"),
            case(
                (func.max(case((contacted, 1), else_=0)) == 1, literal(TREATMENT)),
                else_=literal(CONTROL),
            ).label("grp"),
        )
        .join(CampaignRun, CampaignRun.id == Delivery.run_pk)
        .where(CampaignRun.scheduled_at <= at_lit, or_(contacted, held_out))
        .group_by(Delivery.run_pk, CampaignRun.campaign_pk, Delivery.customer_pk)
        .cte("exposures")
    )


def paid_orders(at: datetime):
    return (
        select(Order.id, Order.customer_pk, Order.ordered_at, amount_minor().label("amount"), Order.coupon_code)
        .where(Order.status == "paid", Order.ordered_at <= literal(at, UTCDateTime()))
        .cte("paid_orders")
    )


def attributed_orders(at: datetime, exposure, paid, windows: Windows, model: str):
    """(order_pk, run_pk, customer_pk, amount): each paid order a run earned, at most one run per order."""
    at_lit = literal(at, UTCDateTime())
    by_redemption = (
        select(CouponRedemption.order_pk.label("order_pk"), Coupon.run_pk.label("run_pk"))
        .join(Coupon, Coupon.id == CouponRedemption.coupon_pk)
        .where(
            CouponRedemption.redeemed_at <= at_lit, Coupon.run_pk.is_not(None), CouponRedemption.order_pk.is_not(None)
        )
    )
    # a redemption is the proof: an order's coupon_code that the coupon's rules refused is not one
    linked = by_redemption.subquery("coupon_links")
    by_coupon = (
        select(linked.c.order_pk, func.max(linked.c.run_pk).label("run_pk"))
        .group_by(linked.c.order_pk)
        .cte("by_coupon")
    )
    touch = exposure.alias("touch")
    order_by = (
        (touch.c.start.desc(), touch.c.run_pk.desc()) if model == "last_touch" else (touch.c.start, touch.c.run_pk)
    )
    ranked = (
        select(
            paid.c.id.label("order_pk"),
            touch.c.run_pk,
            func.row_number().over(partition_by=paid.c.id, order_by=order_by).label("rank"),
        )
        .join(touch, touch.c.customer_pk == paid.c.customer_pk)
        .where(
            touch.c.grp == TREATMENT,
            in_window(touch.c.start, paid.c.ordered_at, windows.micros_of(touch.c.campaign_pk)),
            paid.c.id.not_in(select(by_coupon.c.order_pk)),
        )
        .subquery("ranked_touches")
    )
    by_window = select(ranked.c.order_pk, ranked.c.run_pk).where(ranked.c.rank == 1)
    both = union_all(select(by_coupon.c.order_pk, by_coupon.c.run_pk), by_window).subquery("attributed_links")
    return (
        select(both.c.order_pk, both.c.run_pk, paid.c.customer_pk, paid.c.amount, paid.c.ordered_at)
        .join(paid, paid.c.id == both.c.order_pk)
        .cte("attributed")
    )


def member_outcomes(exposure, paid, windows: Windows, run_pks: list[int]):
    """Per exposure of the given runs: converted (0/1), revenue in its window (minor units), and the time of its
    first order in the window."""
    window = windows.micros_of(exposure.c.campaign_pk)
    return (
        select(
            exposure.c.run_pk,
            exposure.c.customer_pk,
            exposure.c.step,
            exposure.c.variant,
            exposure.c.grp,
            case((func.count(paid.c.id) > 0, 1), else_=0).label("converted"),
            func.coalesce(func.sum(paid.c.amount), 0).label("revenue"),
            func.min(paid.c.ordered_at).label("first_order"),
        )
        .select_from(exposure)
        .outerjoin(
            paid,
            and_(paid.c.customer_pk == exposure.c.customer_pk, in_window(exposure.c.start, paid.c.ordered_at, window)),
        )
        .where(exposure.c.run_pk.in_(run_pks))
        .group_by(exposure.c.run_pk, exposure.c.customer_pk, exposure.c.step, exposure.c.variant, exposure.c.grp)
        .cte("outcomes")
    )


def group_sums(outcomes, keys: list, *, where=()) -> Select:
    """Members, converters, Σ revenue and Σ revenue² per ``keys`` and group."""
    revenue = cast(outcomes.c.revenue, Float)
    return (
        select(
            *keys,
            outcomes.c.grp,
            func.count().label("members"),
            func.sum(outcomes.c.converted).label("converted"),
            func.sum(outcomes.c.revenue).label("revenue"),
            func.sum(revenue * revenue).label("revenue_squares"),
        )
        .select_from(outcomes)
        .where(*where)
        .group_by(*keys, outcomes.c.grp)
    )
