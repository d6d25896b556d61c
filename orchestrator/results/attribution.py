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
    Column,
    ColumnElement,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    type_coerce,
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


# Each report fills three temporary tables (private to its connection, gone with its transaction) and reads them
# several times: joined to one another without an index, the same statements as CTEs took minutes on 185,000
# members; indexed, seconds.
_TEMP = MetaData()
EXPOSURES = Table(
    "results_exposures",
    _TEMP,
    Column("run_pk", Integer, nullable=False),
    Column("campaign_pk", Integer, nullable=False),
    Column("customer_pk", Integer, nullable=False),
    Column("step", String(128)),
    Column("variant", String(64)),
    Column("start", UTCDateTime(), nullable=False),
    Column("window_micros", BigInteger, nullable=False),
    Column("grp", String(16), nullable=False),
    Index("ix_results_exposures_customer", "customer_pk", "start"),
    Index("ix_results_exposures_run", "run_pk", "customer_pk"),
    prefixes=["TEMPORARY"],
)
OUTCOMES = Table(
    "results_outcomes",
    _TEMP,
    Column("run_pk", Integer, nullable=False),
    Column("customer_pk", Integer, nullable=False),
    Column("step", String(128)),
    Column("variant", String(64)),
    Column("grp", String(16), nullable=False),
    Column("converted", Integer, nullable=False),
    Column("revenue", BigInteger, nullable=False),  # minor units
    Column("first_order", UTCDateTime()),
    Index("ix_results_outcomes_run", "run_pk", "customer_pk"),
    prefixes=["TEMPORARY"],
)
ATTRIBUTED = Table(
    "results_attributed",
    _TEMP,
    Column("order_pk", Integer, nullable=False),
    Column("run_pk", Integer, nullable=False),
    Column("customer_pk", Integer, nullable=False),
    Column("amount", BigInteger, nullable=False),  # minor units
    Index("ix_results_attributed_order", "order_pk", unique=True),
    Index("ix_results_attributed_run", "run_pk", "customer_pk"),
    prefixes=["TEMPORARY"],
)


def fill_tables(conn: Connection, at: datetime, run_pks: list[int], windows: Windows, model: str) -> None:
    """Exposures of every run scheduled by ``at`` (overlapping campaigns need them all), the outcomes of the given
    runs' exposures, and every attributed order."""
    _TEMP.drop_all(conn, checkfirst=True)
    _TEMP.create_all(conn)
    _fill_exposures(conn, at, windows)
    _fill_outcomes(conn, at, run_pks)
    _fill_attributed(conn, at, model)


def drop_tables(conn: Connection) -> None:
    _TEMP.drop_all(conn, checkfirst=True)


def paid_in_window(at: datetime, exposure) -> ColumnElement[bool]:
    """The join of an exposure to its member's paid orders in its window (served by ix_orders_customer_status_time)."""
    return and_(
        Order.customer_pk == exposure.c.customer_pk,
        Order.status == "paid",
        Order.ordered_at <= literal(at, UTCDateTime()),
        in_window(exposure.c.start, Order.ordered_at, exposure.c.window_micros),
    )


def _fill_exposures(conn: Connection, at: datetime, windows: Windows) -> None:
    """A member held out and contacted in one run cannot happen (the control group is decided once per member and
    run); a member with both would count as contacted."""
    # the ledger as it stands: a backtest (a run --at in the past) sends at the wall-clock time, after its --at
    contacted = Delivery.state == "sent"
    held_out = Delivery.state == "held_out"
    query = (
        select(
            Delivery.run_pk,
            CampaignRun.campaign_pk,
            Delivery.customer_pk,
            func.max(Delivery.step),
            func.max(Delivery.variant),
            func.min(func.coalesce(Delivery.deferred_until, CampaignRun.scheduled_at)),
            windows.micros_of(CampaignRun.campaign_pk),
            case((func.max(case((contacted, 1), else_=0)) == 1, literal(TREATMENT)), else_=literal(CONTROL)),
        )
        .join(CampaignRun, CampaignRun.id == Delivery.run_pk)
        .where(
            CampaignRun.scheduled_at <= literal(at, UTCDateTime()),
            or_(contacted, held_out),
            Delivery.follow_up == "",  # a member's exposure to a run starts with its own message, not a follow-up
        )
        .group_by(Delivery.run_pk, CampaignRun.campaign_pk, Delivery.customer_pk)
    )
    names = ["run_pk", "campaign_pk", "customer_pk", "step", "variant", "start", "window_micros", "grp"]
    conn.execute(EXPOSURES.insert().from_select(names, query))


def _fill_outcomes(conn: Connection, at: datetime, run_pks: list[int]) -> None:
    e = EXPOSURES
    query = (
        select(
            e.c.run_pk,
            e.c.customer_pk,
            e.c.step,
            e.c.variant,
            e.c.grp,
            case((func.count(Order.id) > 0, 1), else_=0),
            func.coalesce(func.sum(amount_minor()), 0),
            func.min(Order.ordered_at),
        )
        .select_from(e)
        .outerjoin(Order, paid_in_window(at, e))
        .where(e.c.run_pk.in_(run_pks))
        .group_by(e.c.run_pk, e.c.customer_pk, e.c.step, e.c.variant, e.c.grp)
    )
    names = ["run_pk", "customer_pk", "step", "variant", "grp", "converted", "revenue", "first_order"]
    conn.execute(OUTCOMES.insert().from_select(names, query))


def _fill_attributed(conn: Connection, at: datetime, model: str) -> None:
    at_lit = literal(at, UTCDateTime())
    names = ["order_pk", "run_pk", "customer_pk", "amount"]
    # 1. by coupon: a recorded redemption is the proof (an order's coupon_code that the coupon's rules refused is
    # not one); late redemptions count
    by_coupon = (
        select(Order.id, func.max(Coupon.run_pk), Order.customer_pk, amount_minor())
        .join(CouponRedemption, CouponRedemption.order_pk == Order.id)
        .join(Coupon, Coupon.id == CouponRedemption.coupon_pk)
        .where(
            CouponRedemption.redeemed_at <= at_lit,
            Coupon.run_pk.is_not(None),
            Order.status == "paid",
            Order.ordered_at <= at_lit,
        )
        .group_by(Order.id, Order.customer_pk, Order.amount)
    )
    conn.execute(ATTRIBUTED.insert().from_select(names, by_coupon))
    # 2. by window: the last (or first) touch among the contacted exposures whose window covers the order
    e = EXPOSURES
    order_by = (e.c.start.desc(), e.c.run_pk.desc()) if model == "last_touch" else (e.c.start, e.c.run_pk)
    ranked = (
        select(
            Order.id.label("order_pk"),
            e.c.run_pk,
            Order.customer_pk,
            amount_minor().label("amount"),
            func.row_number().over(partition_by=Order.id, order_by=order_by).label("rank"),
        )
        .select_from(e)
        .join(Order, paid_in_window(at, e))
        .where(
            e.c.grp == TREATMENT,
            ~select(ATTRIBUTED.c.order_pk).where(ATTRIBUTED.c.order_pk == Order.id).exists(),
        )
        .subquery("ranked_touches")
    )
    by_window = select(ranked.c.order_pk, ranked.c.run_pk, ranked.c.customer_pk, ranked.c.amount).where(
        ranked.c.rank == 1
    )
    conn.execute(ATTRIBUTED.insert().from_select(names, by_window))


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


def follow_up_groups(at: datetime, run_pks: list[int], windows: Windows, *, by_channel: bool = False) -> Select:
    """Per (run, follow-up, group) - and channel, ``by_channel`` - members, converters, Σ revenue and Σ revenue²,
    by the rule of the run's own exposures with the window starting at the follow-up's due time (its quiet-hours
    deferral's end when it was deferred): the members it contacted against those it held out as control. By
    channel, a member reached on two channels is in both rows, as for a run's channel rows."""
    contacted = func.max(case((Delivery.state == "sent", 1), else_=0))
    channel = [Delivery.channel.label("channel")] if by_channel else []
    member = (
        select(
            Delivery.run_pk.label("run_pk"),
            Delivery.follow_up.label("follow_up"),
            *channel,
            Delivery.customer_pk.label("customer_pk"),
            func.min(func.coalesce(Delivery.deferred_until, Delivery.due_at)).label("start"),
            windows.micros_of(CampaignRun.campaign_pk).label("window_micros"),
            case((contacted == 1, literal(TREATMENT)), else_=literal(CONTROL)).label("grp"),
        )
        .join(CampaignRun, CampaignRun.id == Delivery.run_pk)
        .where(
            Delivery.run_pk.in_(run_pks),
            Delivery.follow_up != "",
            Delivery.state.in_(("sent", "held_out")),
        )
        .group_by(Delivery.run_pk, Delivery.follow_up, *channel, Delivery.customer_pk, CampaignRun.campaign_pk)
        .subquery("follow_up_members")
    )
    keys = [member.c.run_pk, member.c.follow_up] + ([member.c.channel] if by_channel else [])
    outcome = (
        select(
            *keys,
            member.c.grp,
            case((func.count(Order.id) > 0, 1), else_=0).label("converted"),
            func.coalesce(func.sum(amount_minor()), 0).label("revenue"),
        )
        .select_from(member)
        .outerjoin(Order, paid_in_window(at, member))
        .group_by(*keys, member.c.customer_pk, member.c.grp)
        .subquery("follow_up_outcomes")
    )
    return group_sums(outcome, [outcome.c[k.name] for k in keys])
