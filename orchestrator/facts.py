"""Per-customer facts as SQLAlchemy Core expressions, evaluated "as of" a time.

Every fact is computed in SQL over one base: the **paid orders of members, placed at or before ``at``**.
Refunded and cancelled orders never count, orders after ``at`` are ignored (so any past time can be replayed,
i.e. backtested), and a member is a customer whose ``signup_at`` is NULL or at or before ``at``. Orders of a
customer who is not yet a member at ``at`` are left out of the shop-wide figures too, so that the report's
identities hold (orders = purchase frequency × buying members).

Building blocks, from the bottom up (the segment compiler composes them into one statement per audience):

``FactContext(at, settings)``
    the evaluation time and the configuration; dialect-independent.
``days_between(start, end)``
    whole elapsed days, identical on SQLite and PostgreSQL.
``member_condition(ctx)``, ``paid_order_conditions(ctx)``, ``paid_orders(ctx, *columns, since=, where=)``
    the base above, as conditions or as a select over members' paid orders; ``amount_minor()``,
    ``integer_sum()``, ``count_where()`` and ``rounded_quotient()`` for exact arithmetic on them.
``order_stats(ctx, since=, where=)``
    per customer: paid ``orders``, ``monetary_minor``, ``first_order_at``, ``last_order_at``.
``store_totals(ctx)``, ``store_aov(ctx)``, ``above_store_aov_counts(ctx)``
    shop-wide paid orders and revenue, the shop's AOV, and each member's orders above it.
``rfm_scores(ctx, stats)``, ``rfm_segments(scores)``, ``quintile_score``, ``rfm_segment_case(r, f, m)``
    RFM scores by percent rank among buying members, and named segments by the rule table
    ``RFM_SEGMENT_RULES``.
``CustomerFacts(ctx)``
    every fact as an expression over ``customers``, with the sources a fact needs joined on first use
    (``join_source`` adds your own, e.g. windowed statistics); ``facts.select(..., where=[...])`` wraps it as
    one select over members.
``facts_select(ctx)``
    one row per member with every fact (dry-run samples, tests).
``FACTS``
    the catalogue: name → kind, definition and, for labels, the allowed values.

Facts that need a paid order (recency, AOV, RFM, CLV, …) are NULL for members without one, so that a comparison
never matches them by accident; counts and sums (frequency, monetary, orders above AOV) are 0.

Money stays exact: amounts are integer minor units (fen) in the database, sums are integers, comparisons with
the shop's AOV are cross-multiplied integers, and derived money (AOV, CLV) is rounded half up to the fen in
integer arithmetic before it is returned as ``Decimal``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    FromClause,
    Integer,
    Select,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    null,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from orchestrator.config import Settings
from orchestrator.db.models import Customer, Order
from orchestrator.db.types import Money, UTCDateTime
from orchestrator.money import to_minor

customers = Customer.__table__
orders = Order.__table__

DAYS_PER_YEAR = 365
LIFECYCLE_STAGES = ("prospect", "new", "active", "dormant", "lost")


# --- evaluation context -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FactContext:
    """When facts are evaluated and under which configuration; the same for every dialect."""

    at: datetime
    settings: Settings
    # only these customers are asked about (a scheduler tick's members): per-customer sources aggregate just
    # their orders; shop-wide figures (store AOV, RFM ranks) still come from every member. None: everyone.
    members: tuple[int, ...] | None = None
    # only customers whose key lies in [low, high] (None: unbounded), with the same effect: one window or
    # partition of an audience read a part at a time
    pk_range: tuple[int | None, int | None] | None = None

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("FactContext.at must be time-zone aware")

    def at_value(self) -> ColumnElement[datetime]:
        """``at`` as a SQL value stored like the timestamp columns (naive UTC), for arithmetic in SQL."""
        return literal(self.at, UTCDateTime())


# --- whole days between two times -----------------------------------------------------------------------------


class DaysBetween(FunctionElement[int]):
    """``floor((end − start) / 24 h)``: compiled per dialect so SQLite and PostgreSQL agree to the day."""

    name = "days_between"
    type = Integer()
    inherit_cache = True


def days_between(start: Any, end: Any) -> ColumnElement[int]:
    """Whole elapsed days from ``start`` to ``end`` (negative if ``end`` is earlier), like ``timeutil.whole_days``.

    Either argument may be a timestamp column or expression, or an aware ``datetime``.
    """
    return DaysBetween(_as_timestamp(start), _as_timestamp(end))


def _as_timestamp(value: Any) -> Any:
    return literal(value, UTCDateTime()) if isinstance(value, datetime) else value


def _arguments(element: DaysBetween, compiler, **kw) -> list[str]:
    return [compiler.process(clause, **kw) for clause in element.clauses.clauses]


# Shifts SQLite's truncating integer division into non-negative territory so that it floors; exact for
# differences up to 1,000,000 days (2,700 years) either way.
_SQLITE_SHIFT_DAYS = 1_000_000
_MICROS_PER_DAY = 86_400_000_000


@compiles(DaysBetween)
def _days_between_unsupported(element: DaysBetween, compiler, **kw) -> str:
    raise CompileError(f"days_between() has no implementation for the {compiler.dialect.name} dialect")


@compiles(DaysBetween, "sqlite")
def _days_between_sqlite(element: DaysBetween, compiler, **kw) -> str:
    """Exact integer microseconds between the two stored times, floored to days.

    Not julianday(): its floating-point days make exactly 90 days come out as 89.99999999…, and it keeps only
    milliseconds, where Python (and PostgreSQL) keep microseconds.
    """
    start, end = _arguments(element, compiler, **kw)
    micros = f"({_sqlite_micros(end)} - {_sqlite_micros(start)})"
    shift = _SQLITE_SHIFT_DAYS
    return f"(({micros} + {shift * _MICROS_PER_DAY}) / {_MICROS_PER_DAY} - {shift})"


def _sqlite_micros(value: str) -> str:
    """A stored time (``YYYY-MM-DD HH:MM:SS.ffffff``, as SQLAlchemy writes it) as integer microseconds since
    1970: whole seconds from strftime() over the first 19 characters (given the fraction, it would round it to
    milliseconds and possibly into the next second) plus the fraction's digits, zero-padded to six."""
    seconds = f"CAST(strftime('%s', substr({value}, 1, 19)) AS INTEGER)"
    fraction = f"CAST(substr({value} || '000000', 21, 6) AS INTEGER)"
    return f"({seconds} * 1000000 + {fraction})"


@compiles(DaysBetween, "postgresql")
def _days_between_postgresql(element: DaysBetween, compiler, **kw) -> str:
    """The interval's exact seconds (numeric on PostgreSQL 14+), floored to days."""
    start, end = _arguments(element, compiler, **kw)
    return f"CAST(floor(EXTRACT(EPOCH FROM ({end} - {start})) / 86400) AS INTEGER)"


# --- the base: members' paid orders up to `at` ----------------------------------------------------------------


def member_condition(ctx: FactContext) -> ColumnElement[bool]:
    """A member as of ``at``: signed up at or before it, or with no recorded signup time."""
    return or_(customers.c.signup_at.is_(None), customers.c.signup_at <= ctx.at)


def paid_order_conditions(ctx: FactContext, since: datetime | None = None) -> list[ColumnElement[bool]]:
    """An order that counts: paid, placed at or before ``at`` (and at or after ``since``, for windowed facts)."""
    conditions = [orders.c.status == "paid", orders.c.ordered_at <= ctx.at]
    if since is not None:
        conditions.append(orders.c.ordered_at >= since)
    return conditions


def amount_minor() -> ColumnElement[int]:
    """An order's amount in integer minor units, for exact arithmetic (the column's Money type would
    re-scale every literal it meets)."""
    return type_coerce(orders.c.amount, BigInteger())


def paid_orders(
    ctx: FactContext,
    *columns: Any,
    since: datetime | None = None,
    where: Iterable[ColumnElement[bool]] = (),
    members_only: bool = True,
) -> Select:
    """``select(*columns)`` over members' paid orders at or before ``at``; extra conditions in ``where``
    (a category, a payment method, a daypart …) make windowed or filtered facts.

    ``members_only=False`` leaves out the join to ``customers``: for per-customer figures that are joined back
    to members anyway, the join inside the aggregate is work without effect.
    """
    statement = select(*columns).where(*paid_order_conditions(ctx, since), *where)
    if not members_only:
        return statement.select_from(orders)
    return statement.select_from(orders.join(customers, customers.c.id == orders.c.customer_pk)).where(
        member_condition(ctx)
    )


def integer_sum(expression: ColumnElement[int]) -> ColumnElement[int]:
    """An integer sum, 0 when there are no rows (PostgreSQL's sum(bigint) is numeric: cast it back)."""
    return cast(func.coalesce(func.sum(expression), 0), BigInteger)


def count_where(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """How many rows of a group meet ``condition`` (portable: no FILTER clause on older SQLite)."""
    return func.count(case((condition, 1)))


# --- per-customer order statistics ----------------------------------------------------------------------------


def order_stats(
    ctx: FactContext,
    *,
    since: datetime | None = None,
    where: Iterable[ColumnElement[bool]] = (),
    members_only: bool = True,
) -> Select:
    """One row per buying member: ``customer_pk``, paid ``orders``, ``monetary_minor`` (spend in fen),
    ``first_order_at`` and ``last_order_at``. With ``since``/``where`` it is the windowed / filtered variant."""
    return paid_orders(
        ctx,
        orders.c.customer_pk,
        func.count().label("orders"),
        integer_sum(amount_minor()).label("monetary_minor"),
        func.min(orders.c.ordered_at).label("first_order_at"),
        func.max(orders.c.ordered_at).label("last_order_at"),
        since=since,
        where=where,
        members_only=members_only,
    ).group_by(orders.c.customer_pk)


# --- the shop as a whole --------------------------------------------------------------------------------------


def store_totals(ctx: FactContext) -> Select:
    """One row: the shop's paid ``orders`` and ``revenue_minor`` as of ``at``."""
    return paid_orders(ctx, func.count().label("orders"), integer_sum(amount_minor()).label("revenue_minor"))


def rounded_quotient(numerator: ColumnElement[int], denominator: ColumnElement[int]) -> ColumnElement[int]:
    """``numerator ÷ denominator`` rounded half up, in integers (both ≥ 0); NULL when dividing by zero."""
    denominator = func.nullif(denominator, 0)
    return (2 * numerator + denominator) // (2 * denominator)


def store_aov(ctx: FactContext) -> ColumnElement[Decimal]:
    """Shop-wide AOV (客单价) as of ``at``: paid revenue ÷ paid orders, to the fen; NULL before the first order."""
    totals = store_totals(ctx).subquery("store_totals")
    aov_minor = select(rounded_quotient(totals.c.revenue_minor, totals.c.orders)).scalar_subquery()
    return type_coerce(aov_minor, Money())


def above_store_aov_counts(ctx: FactContext, where: Iterable[ColumnElement[bool]] = ()) -> Select:
    """Per member, paid orders whose amount exceeds the shop-wide AOV (``orders_above_store_aov``).

    Compared exactly, without dividing: amount × shop orders > shop revenue.
    """
    totals = store_totals(ctx).subquery("store_totals")
    above = amount_minor() * totals.c.orders > totals.c.revenue_minor
    return (
        paid_orders(ctx, orders.c.customer_pk, func.count().label("orders_above_store_aov"), where=[above, *where])
        .select_from(totals)
        .group_by(orders.c.customer_pk)
    )


# --- RFM ------------------------------------------------------------------------------------------------------


def rfm_scores(ctx: FactContext, stats: FromClause) -> Select:
    """Per buying member (a row of ``stats``): ``r_score``, ``f_score`` and ``m_score`` among all buying members.

    Each is ``quintile_score`` of the member's ``rank()`` with the worst value first (most days since the last
    order, fewest orders, least spend) among ``count() OVER ()`` buyers.
    """
    recency = days_between(stats.c.last_order_at, ctx.at_value())
    buyers = func.count().over()
    return select(
        stats.c.customer_pk,
        quintile_score(func.rank().over(order_by=recency.desc()), buyers).label("r_score"),
        quintile_score(func.rank().over(order_by=stats.c.orders), buyers).label("f_score"),
        quintile_score(func.rank().over(order_by=stats.c.monetary_minor), buyers).label("m_score"),
    )


def rfm_segments(scores: FromClause) -> Select:
    """The rows of ``rfm_scores`` with their named ``rfm_segment`` added.

    The GROUP BY changes nothing (one row per customer already) but matters for speed: SQLite never indexes a
    subquery computed with window functions, so joining it to ``customers`` would scan it once per customer;
    over a grouped layer it builds an automatic index. PostgreSQL hashes the join either way.
    """
    columns = [scores.c.customer_pk, scores.c.r_score, scores.c.f_score, scores.c.m_score]
    segment = rfm_segment_case(scores.c.r_score, scores.c.f_score, scores.c.m_score)
    return select(*columns, segment.label("rfm_segment")).group_by(*columns)


def quintile_score(rank: ColumnElement[int], population: ColumnElement[int]) -> ColumnElement[int]:
    """1 + floor(5 · percent_rank), capped at 5, in integers.

    percent_rank = (rank − 1) ÷ (population − 1), 0 for a single buyer. Unlike NTILE, equal values always get
    the same score. The cap only bites for rank = population (the best value, unshared), where it would be 6.
    """
    return case(
        (population <= 1, 1),
        (rank >= population, 5),
        else_=1 + (5 * (rank - 1)) // (population - 1),
    )


@dataclass(frozen=True)
class RFMRule:
    """A named RFM segment: recency score and FM score (mean of F and M, rounded half up) in closed ranges."""

    segment: str
    r: tuple[int, int]
    fm: tuple[int, int]


# The classic RFM grid (R against the combined FM score), which names every one of the 25 R × FM cells and so
# every one of the 125 (r, f, m) combinations; "lost" is the hibernating corner with the oldest recency.
# Rules are tried in order and the first match wins; the grid does not overlap, so the order only documents
# priority (most valuable first).
#
#          FM=1            FM=2                FM=3                FM=4        FM=5
#   R=5    new_customers   potential_loyalist  potential_loyalist  champions   champions
#   R=4    promising       potential_loyalist  potential_loyalist  loyal       loyal
#   R=3    about_to_sleep  about_to_sleep      need_attention      loyal       loyal
#   R=2    hibernating     hibernating         at_risk             at_risk     cant_lose
#   R=1    lost            lost                at_risk             at_risk     cant_lose
RFM_SEGMENT_RULES: tuple[RFMRule, ...] = (
    RFMRule("champions", r=(5, 5), fm=(4, 5)),
    RFMRule("loyal", r=(3, 4), fm=(4, 5)),
    RFMRule("cant_lose", r=(1, 2), fm=(5, 5)),
    RFMRule("at_risk", r=(1, 2), fm=(3, 4)),
    RFMRule("potential_loyalist", r=(4, 5), fm=(2, 3)),
    RFMRule("need_attention", r=(3, 3), fm=(3, 3)),
    RFMRule("new_customers", r=(5, 5), fm=(1, 1)),
    RFMRule("promising", r=(4, 4), fm=(1, 1)),
    RFMRule("about_to_sleep", r=(3, 3), fm=(1, 2)),
    RFMRule("hibernating", r=(2, 2), fm=(1, 2)),
    RFMRule("lost", r=(1, 1), fm=(1, 2)),
)
RFM_SEGMENTS: tuple[str, ...] = tuple(rule.segment for rule in RFM_SEGMENT_RULES)


def fm_score(f: ColumnElement[int], m: ColumnElement[int]) -> ColumnElement[int]:
    """The combined frequency-monetary score: mean of F and M, rounded half up (1–5)."""
    return (f + m + 1) // 2


def rfm_segment_case(r: ColumnElement[int], f: ColumnElement[int], m: ColumnElement[int]) -> ColumnElement[str]:
    """The named RFM segment for scores ``r``, ``f``, ``m`` by ``RFM_SEGMENT_RULES``; NULL if a score is NULL."""
    fm = fm_score(f, m)
    whens = [(and_(r.between(*rule.r), fm.between(*rule.fm)), rule.segment) for rule in RFM_SEGMENT_RULES]
    return case(*whens, else_=null())


# --- the facts of one customer --------------------------------------------------------------------------------


FactKind = Literal["count", "money", "days", "score", "label", "time"]


@dataclass(frozen=True)
class FactDescription:
    """What a fact is, for validation and documentation: its kind, definition and, for labels, its values."""

    name: str
    kind: FactKind
    definition: str
    choices: tuple[str, ...] | None = None


FACTS: dict[str, FactDescription] = {
    fact.name: fact
    for fact in (
        FactDescription("frequency", "count", "paid orders (0 for prospects)"),
        FactDescription("monetary", "money", "cumulative paid spend (0 for prospects)"),
        FactDescription("aov", "money", "the member's average order value: monetary ÷ frequency, to the fen"),
        FactDescription("recency_days", "days", "whole days from the last paid order to at"),
        FactDescription("first_order_days", "days", "whole days from the first paid order to at"),
        FactDescription("tenure_days", "days", "whole days from signup to at (NULL without a signup time)"),
        FactDescription("first_order_at", "time", "time of the first paid order"),
        FactDescription("last_order_at", "time", "time of the last paid order"),
        FactDescription("orders_above_store_aov", "count", "paid orders whose amount exceeds the shop-wide AOV"),
        FactDescription("r_score", "score", "recency score 1–5 among buying members (fewer days scores higher)"),
        FactDescription("f_score", "score", "frequency score 1–5 among buying members"),
        FactDescription("m_score", "score", "monetary score 1–5 among buying members"),
        FactDescription("rfm_segment", "label", "named RFM segment from the scores", RFM_SEGMENTS),
        FactDescription("lifecycle_stage", "label", "prospect → new → active → dormant → lost", LIFECYCLE_STAGES),
        FactDescription("tier", "label", "first tier in settings.tiers whose thresholds are met"),
        FactDescription("clv", "money", "AOV × yearly purchase rate × expected lifetime × margin"),
    )
}


def asked_about(ctx: FactContext, key: ColumnElement[int]) -> list[ColumnElement[bool]]:
    """Conditions on a customer key column: the customers ``ctx`` asks about (``members``, ``pk_range``)."""
    conditions = [] if ctx.members is None else [key.in_(ctx.members)]
    low, high = ctx.pk_range or (None, None)
    if low is not None:
        conditions.append(key >= low)
    if high is not None:
        conditions.append(key <= high)
    return conditions


class CustomerFacts:
    """Every fact of one evaluation time as an expression over ``customers``.

    The sources a fact needs (order statistics, orders above the shop's AOV, RFM scores) are outer-joined to
    ``customers`` on ``customer_pk`` the first time a fact using them is built, so a statement joins only what
    its conditions use; ``join_source()`` adds sources of your own the same way. Build every expression first,
    then call ``from_clause()`` or ``select()`` (a source first used after that would be missing from it)::

        facts = CustomerFacts(ctx)
        condition = and_(facts.recency_days >= 90, facts.orders_above_store_aov >= 3)
        statement = facts.select(customers.c.id, where=[condition])
    """

    def __init__(self, ctx: FactContext):
        self.ctx = ctx
        self._joined: dict[str, FromClause] = {}

    # sources ------------------------------------------------------------------------------------------------

    @cached_property
    def _order_stats(self) -> FromClause:
        # joined to member rows, so it need not filter members itself (see paid_orders)
        return order_stats(self.ctx, members_only=False, where=self._asked()).subquery("order_stats")

    @cached_property
    def _above_store_aov(self) -> FromClause:
        return above_store_aov_counts(self.ctx, where=self._asked()).subquery("above_store_aov")

    def _asked(self) -> list[ColumnElement[bool]]:
        """The orders of the customers asked about (``FactContext.members``, ``pk_range``), for per-customer
        sources."""
        return asked_about(self.ctx, orders.c.customer_pk)

    @cached_property
    def _rfm(self) -> FromClause:
        # ranks are among buying *members*: the statistics behind them must leave non-members out
        scores = rfm_scores(self.ctx, order_stats(self.ctx).subquery("member_stats")).subquery("rfm_scores")
        return rfm_segments(scores).subquery("rfm")

    def join_source(self, name: str, source: FromClause) -> FromClause:
        """Outer-join ``source`` (any per-customer subquery with a unique ``customer_pk`` column, e.g. a windowed
        ``order_stats(ctx, since=…).subquery()``) once under ``name``; returns the source joined first."""
        return self._joined.setdefault(name, source)

    @property
    def stats(self) -> FromClause:
        """Per-customer paid order statistics (see ``order_stats``), joined."""
        return self.join_source("order_stats", self._order_stats)

    @property
    def rfm(self) -> FromClause:
        """Per-buyer RFM scores and segment (see ``rfm_scores``, ``rfm_segments``), joined."""
        return self.join_source("rfm", self._rfm)

    def from_clause(self) -> FromClause:
        """``customers`` outer-joined to every source used so far."""
        clause: FromClause = customers
        for source in self._joined.values():
            clause = clause.outerjoin(source, source.c.customer_pk == customers.c.id)
        return clause

    def select(self, *columns: Any, where: Sequence[ColumnElement[bool]] = ()) -> Select:
        """``select(*columns)`` over members (those asked about, ``FactContext.members``) with the joins their
        facts (and ``where``) need."""
        asked = asked_about(self.ctx, customers.c.id)
        return select(*columns).select_from(self.from_clause()).where(self.is_member, *asked, *where)

    def fact(self, name: str) -> ColumnElement[Any]:
        """A fact by its catalogue name (``FACTS``)."""
        if name not in FACTS:
            raise KeyError(f"unknown fact {name!r}")
        return getattr(self, name)

    # membership ---------------------------------------------------------------------------------------------

    @property
    def is_member(self) -> ColumnElement[bool]:
        """A customer who has signed up by ``at`` (or has no signup time)."""
        return member_condition(self.ctx)

    @property
    def is_buyer(self) -> ColumnElement[bool]:
        """A buying member (成功交易会员): at least one paid order by ``at``."""
        return self.stats.c.customer_pk.is_not(None)

    # order statistics ---------------------------------------------------------------------------------------

    @property
    def frequency(self) -> ColumnElement[int]:
        """Paid orders by ``at``; 0 for prospects."""
        return func.coalesce(self.stats.c.orders, 0)

    @property
    def monetary_minor(self) -> ColumnElement[int]:
        """Cumulative paid spend in fen; 0 for prospects. For exact integer comparisons."""
        return func.coalesce(self.stats.c.monetary_minor, 0)

    @property
    def monetary(self) -> ColumnElement[Decimal]:
        """Cumulative paid spend (Money: compares with and returns ``Decimal``); 0 for prospects."""
        return type_coerce(self.monetary_minor, Money())

    @property
    def first_order_at(self) -> ColumnElement[datetime]:
        """Time of the first paid order."""
        return self.stats.c.first_order_at

    @property
    def last_order_at(self) -> ColumnElement[datetime]:
        """Time of the last paid order."""
        return self.stats.c.last_order_at

    @property
    def recency_days(self) -> ColumnElement[int]:
        """Whole days from the last paid order to ``at``; NULL for prospects."""
        return days_between(self.stats.c.last_order_at, self.ctx.at_value())

    @property
    def first_order_days(self) -> ColumnElement[int]:
        """Whole days from the first paid order to ``at`` (tenure as a buyer); NULL for prospects."""
        return days_between(self.stats.c.first_order_at, self.ctx.at_value())

    @property
    def tenure_days(self) -> ColumnElement[int]:
        """Whole days from signup to ``at`` (tenure as a member); NULL without a signup time."""
        return days_between(customers.c.signup_at, self.ctx.at_value())

    @property
    def aov_minor(self) -> ColumnElement[int]:
        """The member's average order value in fen, rounded half up; NULL for prospects."""
        return rounded_quotient(self.stats.c.monetary_minor, self.stats.c.orders)

    @property
    def aov(self) -> ColumnElement[Decimal]:
        """The member's average order value (monetary ÷ frequency) to the fen; NULL for prospects."""
        return type_coerce(self.aov_minor, Money())

    @property
    def orders_above_store_aov(self) -> ColumnElement[int]:
        """Paid orders whose amount exceeds the shop-wide AOV as of ``at`` (唤醒休眠会员 grading); 0 if none."""
        above = self.join_source("above_store_aov", self._above_store_aov)
        return func.coalesce(above.c.orders_above_store_aov, 0)

    # RFM ----------------------------------------------------------------------------------------------------

    @property
    def r_score(self) -> ColumnElement[int]:
        """Recency score 1–5 among buying members (fewer days scores higher); NULL for prospects."""
        return self.rfm.c.r_score

    @property
    def f_score(self) -> ColumnElement[int]:
        """Frequency score 1–5 among buying members; NULL for prospects."""
        return self.rfm.c.f_score

    @property
    def m_score(self) -> ColumnElement[int]:
        """Monetary score 1–5 among buying members; NULL for prospects."""
        return self.rfm.c.m_score

    @property
    def rfm_segment(self) -> ColumnElement[str]:
        """Named RFM segment (``RFM_SEGMENT_RULES``); NULL for prospects."""
        return self.rfm.c.rfm_segment

    # derived labels and values ------------------------------------------------------------------------------

    @property
    def lifecycle_stage(self) -> ColumnElement[str]:
        """prospect (no paid order) → lost (recency ≥ lost_days) → dormant (≥ dormant_days) → new (first paid
        order at most new_days ago) → active; the first that applies."""
        lifecycle = self.ctx.settings.lifecycle
        recency = self.recency_days
        return case(
            (self.stats.c.customer_pk.is_(None), "prospect"),
            (recency >= lifecycle.lost_days, "lost"),
            (recency >= lifecycle.dormant_days, "dormant"),
            (self.first_order_days <= lifecycle.new_days, "new"),
            else_="active",
        )

    @property
    def tier(self) -> ColumnElement[str]:
        """The first rule of ``settings.tiers`` with monetary ≥ min_spend and frequency ≥ min_orders; NULL if
        none applies (prospects included: they meet a rule with zero thresholds)."""
        whens = [
            (and_(self.monetary_minor >= to_minor(rule.min_spend), self.frequency >= rule.min_orders), rule.name)
            for rule in self.ctx.settings.tiers
        ]
        return case(*whens, else_=null()) if whens else null().cast(String)

    @property
    def clv_minor(self) -> ColumnElement[int]:
        """CLV in fen (see ``clv``), rounded half up in integers; NULL for prospects."""
        clv = self.ctx.settings.clv
        factor_num, factor_den = (clv.margin * clv.expected_lifetime_years).as_integer_ratio()
        first_days = self.first_order_days
        tenure = case((first_days < clv.min_tenure_days, clv.min_tenure_days), else_=first_days)
        # AOV × (orders ÷ tenure years) = monetary × 365 ÷ tenure days
        numerator = self.stats.c.monetary_minor * (DAYS_PER_YEAR * factor_num)
        return rounded_quotient(numerator, tenure * factor_den)

    @property
    def clv(self) -> ColumnElement[Decimal]:
        """Customer lifetime value = AOV × yearly purchase rate × expected lifetime (years) × margin.

        The yearly rate is paid orders ÷ tenure in years (365 days), tenure counted in whole days from the first
        paid order and never below ``clv.min_tenure_days``; so CLV = monetary × 365 ÷ tenure × lifetime × margin.
        NULL for prospects, whose value cannot be estimated from orders.
        """
        return type_coerce(self.clv_minor, Money())


def facts_select(ctx: FactContext) -> Select:
    """One row per member with every fact in ``FACTS`` plus identity and location, ordered by customer key."""
    facts = CustomerFacts(ctx)
    columns = [facts.fact(name).label(name) for name in FACTS]
    return facts.select(
        customers.c.id.label("customer_pk"),
        customers.c.customer_id,
        customers.c.province,
        customers.c.city,
        *columns,
    ).order_by(customers.c.id)
