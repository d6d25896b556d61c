"""Segments: a condition tree compiled to one SQL statement that runs where the data lives.

Every fact becomes a SQLAlchemy expression over ``customers`` (most come from ``orchestrator.facts``; windowed
and filtered ones are correlated subqueries on the orders index); every comparison is two-valued: a fact that
is NULL (recency of a member who never ordered) never matches a comparison, and so ``not:`` of such a
comparison does match. The audience streams from the database in batches ordered by customer key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from copy import copy
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Integer,
    Select,
    and_,
    case,
    exists,
    extract,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
    type_coerce,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from orchestrator.campaign.catalog import FactSpec
from orchestrator.campaign.conditions import All, Any_, Compare, Node, Not, Predicate, Tags
from orchestrator.config import Settings
from orchestrator.db.models import Coupon, CustomerConsent, CustomerTag
from orchestrator.db.types import Money
from orchestrator.facts import CustomerFacts, FactContext, amount_minor, customers, integer_sum, orders
from orchestrator.timeutil import DailyWindow, zone

# --- the facts of the condition language ---------------------------------------------------------------------


class LocalMinuteOfDay(FunctionElement[int]):
    """Minute of the day (0–1439) of a UTC timestamp shifted by a fixed offset in minutes."""

    name = "local_minute_of_day"
    type = Integer()
    inherit_cache = True


@compiles(LocalMinuteOfDay, "sqlite")
def _minute_sqlite(element, compiler, **kw):
    column, offset = (compiler.process(c, **kw) for c in element.clauses.clauses)
    shifted = f"datetime({column}, ({offset}) || ' minutes')"
    return f"(CAST(strftime('%H', {shifted}) AS INTEGER) * 60 + CAST(strftime('%M', {shifted}) AS INTEGER))"


@compiles(LocalMinuteOfDay, "postgresql")
def _minute_postgresql(element, compiler, **kw):
    column, offset = (compiler.process(c, **kw) for c in element.clauses.clauses)
    shifted = f"({column} + make_interval(mins => CAST({offset} AS INTEGER)))"
    return f"CAST(EXTRACT(HOUR FROM {shifted}) * 60 + EXTRACT(MINUTE FROM {shifted}) AS INTEGER)"


@lru_cache(maxsize=32)
def offset_history(zone_name: str, until_year: int) -> tuple[tuple[datetime | None, int], ...]:
    """``((since, offset minutes), …)`` for a zone from 2000 to ``until_year``; the first ``since`` is None.

    Orders before 2000 take the zone's offset of 1 January 2000 (for Asia/Shanghai: its daylight saving time of
    1986–1991 is left out, so the usual case is a single offset and no CASE at all).

    Found by sampling every 6 hours and bisecting each change to the second: zone rules change at most a few
    times a year, so the table stays short (one row for zones without daylight saving time).
    """
    tz = zone(zone_name)

    def offset(moment: datetime) -> int:
        return int(moment.astimezone(tz).utcoffset().total_seconds() // 60)

    moment = datetime(2000, 1, 1, tzinfo=UTC)
    end = datetime(until_year + 1, 1, 1, tzinfo=UTC)
    history: list[tuple[datetime | None, int]] = [(None, offset(moment))]
    step = timedelta(hours=6)
    while moment < end:
        following = moment + step
        if offset(following) != history[-1][1]:
            low, high = moment, following
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                low, high = (middle, high) if offset(middle) == history[-1][1] else (low, middle)
            history.append((high.replace(microsecond=0), offset(high)))
        moment = following
    return tuple(history)


def _local_date(ctx: FactContext) -> date:
    return ctx.at.astimezone(ctx.settings.tz).date()


def birthday_in_year(birthday: date, year: int) -> date:
    """The birthday's date in ``year``; 29 February falls on 28 February in other years."""
    try:
        return birthday.replace(year=year)
    except ValueError:
        return date(year, 2, 28)


def days_to_birthday(birthday: date | None, today: date) -> int | None:
    """Days from ``today`` to the next birthday, 0 on the day."""
    if birthday is None:
        return None
    upcoming = birthday_in_year(birthday, today.year)
    if upcoming < today:
        upcoming = birthday_in_year(birthday, today.year + 1)
    return (upcoming - today).days


def age_on(birthday: date | None, today: date) -> int | None:
    if birthday is None:
        return None
    return today.year - birthday.year - ((today.month, today.day) < (birthday.month, birthday.day))


class SegmentCompiler:
    """Compiles condition nodes against one evaluation time into SQLAlchemy boolean expressions."""

    def __init__(self, ctx: FactContext, catalog: Mapping[str, FactSpec]):
        self.ctx = ctx
        self.catalog = catalog
        self.facts = CustomerFacts(ctx)
        self._builders: dict[str, Callable[[Compare], Any]] = {
            "recency_days": lambda c: self.facts.recency_days,
            "frequency": self._frequency,
            "monetary": self._monetary,
            "aov": lambda c: self.facts.aov,
            "first_order_days": lambda c: self.facts.first_order_days,
            "orders_above_store_aov": lambda c: self.facts.orders_above_store_aov,
            "rfm_r": lambda c: self.facts.r_score,
            "rfm_f": lambda c: self.facts.f_score,
            "rfm_m": lambda c: self.facts.m_score,
            "rfm_segment": lambda c: self.facts.rfm_segment,
            "lifecycle": lambda c: self.facts.lifecycle_stage,
            "tier": lambda c: self.facts.tier,
            "clv": lambda c: self.facts.clv,
            "province": lambda c: customers.c.province,
            "city": lambda c: customers.c.city,
            "gender": lambda c: customers.c.gender,
            "age": self._age,
            "signup_days": lambda c: self.facts.tenure_days,
            "consent_email": lambda c: self._consent("email"),
            "consent_sms": lambda c: self._consent("sms"),
            "daypart_orders": self._daypart_orders,
            "bought_category": self._bought_category,
        }
        # whole days since a moment: compared as a range on the moment itself (see _days_since)
        self._day_counts: dict[str, Callable[[], ColumnElement[datetime]]] = {
            "recency_days": lambda: self.facts.last_order_at,
            "first_order_days": lambda: self.facts.first_order_at,
            "signup_days": lambda: customers.c.signup_at,
        }
        # facts compared by a predicate of their own rather than an expression and an operator
        self._predicates: dict[str, Callable[[Compare], ColumnElement[bool]]] = {
            "days_to_birthday": self._days_to_birthday,
            "coupon_redemption_rate": self._redemption_rate,
            "payment_share": self._payment_share,
        }

    # -- the tree ---------------------------------------------------------------------------------------------
    def compile(self, node: Node) -> ColumnElement[bool]:
        if isinstance(node, All):
            return and_(true(), *(self.compile(n) for n in node.items))
        if isinstance(node, Any_):
            return or_(false(), *(self.compile(n) for n in node.items))
        if isinstance(node, Not):
            return not_(or_(false(), *(self.compile(n) for n in node.items)))
        if isinstance(node, Tags):
            return self._tags(node)
        if isinstance(node, Predicate):
            return node.build()
        return self._compare(node)

    def _tags(self, node: Tags) -> ColumnElement[bool]:
        def has(tags: Sequence[str]) -> ColumnElement[bool]:
            return exists().where(CustomerTag.customer_pk == customers.c.id, CustomerTag.tag.in_(tags))

        if node.mode == "any":
            return has(node.tags)
        return and_(*(has([tag]) for tag in node.tags))

    def _compare(self, node: Compare) -> ColumnElement[bool]:
        if node.fact in self._predicates:
            return self._predicates[node.fact](node)
        if node.fact in self._day_counts:
            return self._days_since(self._day_counts[node.fact](), node)
        spec = self.catalog[node.fact]
        build = self._builders.get(node.fact) or (lambda n: spec.build(self, n))
        expression = build(node)
        tests = [apply_operator(expression, op, value) for op, value in node.ops]
        # two-valued logic: NULL matches no comparison, so NOT of it matches
        return and_(expression.is_not(None), *tests)

    def _days_since(self, moment: ColumnElement[datetime], node: Compare) -> ColumnElement[bool]:
        """``whole days from moment to at  OP  n``, rewritten exactly as a range on ``moment``.

        floor((at − moment) / 1 day) ≥ n  ⟺  moment ≤ at − n days, and < n ⟺ moment > at − n days; the other
        operators follow. The database then compares a timestamp column with a constant (an index range, or a
        HAVING on max(ordered_at)) instead of computing a day count for every row.
        """
        at = self.ctx.at.astimezone(UTC)

        def days_ago(n: int) -> datetime:
            return at - timedelta(days=n)

        def equals(n: int) -> ColumnElement[bool]:
            return and_(moment <= days_ago(n), moment > days_ago(n + 1))

        tests = []
        for op, value in node.ops:
            if op == "gte":
                tests.append(moment <= days_ago(value))
            elif op == "gt":
                tests.append(moment <= days_ago(value + 1))
            elif op == "lt":
                tests.append(moment > days_ago(value))
            elif op == "lte":
                tests.append(moment > days_ago(value + 1))
            elif op == "eq":
                tests.append(equals(value))
            elif op == "ne":
                tests.append(not_(equals(value)))
            elif op == "between":
                tests.append(and_(moment <= days_ago(value[0]), moment > days_ago(value[1] + 1)))
            elif op == "in":
                tests.append(or_(*(equals(v) for v in value)))
            elif op == "not_in":
                tests.append(not_(or_(*(equals(v) for v in value))))
        return and_(moment.is_not(None), *tests)

    # -- facts needing more than a column ---------------------------------------------------------------------
    def since(self, node: Compare) -> datetime | None:
        """The start of a ``within`` window: elapsed time, so computed in UTC (in a zone with daylight saving
        time, local arithmetic would make "30d" an hour longer or shorter)."""
        within: timedelta | None = node.param("within")
        return self.ctx.at.astimezone(UTC) - within if within else None

    def paid_orders_of_customer(self, node: Compare, *where: ColumnElement[bool]) -> list[ColumnElement[bool]]:
        """The correlated conditions of "this customer's paid orders up to ``at`` (within the window)"."""
        conditions = [
            orders.c.customer_pk == customers.c.id,
            orders.c.status == "paid",
            orders.c.ordered_at <= self.ctx.at,
        ]
        since = self.since(node)
        if since is not None:
            conditions.append(orders.c.ordered_at >= since)
        return [*conditions, *where]

    def _count_orders(self, node: Compare, *where: ColumnElement[bool]) -> ColumnElement[int]:
        return select(func.count()).where(*self.paid_orders_of_customer(node, *where)).scalar_subquery()

    def _frequency(self, node: Compare) -> ColumnElement[int]:
        return self._count_orders(node) if node.param("within") else self.facts.frequency

    def _monetary(self, node: Compare) -> ColumnElement[Decimal]:
        if not node.param("within"):
            return self.facts.monetary
        spend = select(integer_sum(amount_minor())).where(*self.paid_orders_of_customer(node)).scalar_subquery()
        return _as_money(spend)

    def _daypart_orders(self, node: Compare) -> ColumnElement[int]:
        window = DailyWindow.parse(self.ctx.settings.dayparts[node.param("daypart")])
        start, end = window.start_minute, window.end_minute
        minute = LocalMinuteOfDay(orders.c.ordered_at, self._utc_offset_minutes(orders.c.ordered_at))
        in_part = or_(minute >= start, minute < end) if window.wraps else and_(minute >= start, minute < end)
        return self._count_orders(node, in_part)

    def _utc_offset_minutes(self, column: ColumnElement[datetime]) -> ColumnElement[int]:
        """The shop zone's UTC offset at each row's own time: a CASE over the zone's offset history, so that a
        winter order seen in summer keeps its winter clock, identically on every engine."""
        periods = offset_history(self.ctx.settings.timezone, self.ctx.at.astimezone(UTC).year + 1)
        if len(periods) == 1:
            return literal(periods[0][1])
        whens = [(column >= since, minutes) for since, minutes in reversed(periods[1:])]
        return case(*whens, else_=periods[0][1])

    def _bought_category(self, node: Compare) -> ColumnElement[bool]:
        found = exists().where(*self.paid_orders_of_customer(node, orders.c.category == node.param("category")))
        return case((found, True), else_=False)

    def _consent(self, channel: str) -> ColumnElement[bool]:
        found = exists().where(
            CustomerConsent.customer_pk == customers.c.id,
            CustomerConsent.channel == channel,
            CustomerConsent.opted_in.is_(True),
        )
        return case((found, True), else_=False)

    def _age(self, node: Compare) -> ColumnElement[int]:
        today = _local_date(self.ctx)
        birthday = customers.c.birthday
        month_day = extract("month", birthday) * 100 + extract("day", birthday)
        not_yet = case((month_day > today.month * 100 + today.day, 1), else_=0)
        return today.year - extract("year", birthday) - not_yet

    def _days_to_birthday(self, node: Compare) -> ColumnElement[bool]:
        """Compiled to the set of birthdays (month, day) whose distance matches: exact on every engine without
        date arithmetic in SQL, and an IN list the database evaluates quickly."""
        today = _local_date(self.ctx)
        matching = []
        for day_of_leap_year in range(366):
            birthday = date(2000, 1, 1) + timedelta(days=day_of_leap_year)
            distance = days_to_birthday(birthday, today)
            if all(python_operator(distance, op, value) for op, value in node.ops):
                matching.append(birthday.month * 100 + birthday.day)
        if not matching:
            return false()
        birthday = customers.c.birthday
        return and_(birthday.is_not(None), (extract("month", birthday) * 100 + extract("day", birthday)).in_(matching))

    def _ratio(self, numerator, denominator, node: Compare) -> ColumnElement[bool]:
        """``numerator ÷ denominator OP value`` compared exactly by cross-multiplying; false when the
        denominator is 0 (the ratio is undefined)."""
        tests = []
        for op, value in node.ops:
            values = value if isinstance(value, tuple) else (value,)
            pairs = [Decimal(v).as_integer_ratio() for v in values]
            if op in ("in", "not_in"):
                matches = [numerator * d == n * denominator for n, d in pairs]
                test = or_(*matches) if op == "in" else not_(or_(*matches))
            elif op == "between":
                (ln, ld), (hn, hd) = pairs
                test = and_(numerator * ld >= ln * denominator, numerator * hd <= hn * denominator)
            else:
                n, d = pairs[0]
                test = apply_operator(numerator * d, op, n * denominator)
            tests.append(test)
        return and_(denominator > 0, *tests)

    def _payment_share(self, node: Compare) -> ColumnElement[bool]:
        method = self._count_orders(node, orders.c.payment_method == node.param("method"))
        return self._ratio(method, self._count_orders(node), node)

    def _redemption_rate(self, node: Compare) -> ColumnElement[bool]:
        issued = (
            select(func.count())
            .where(Coupon.customer_pk == customers.c.id, Coupon.issued_at <= self.ctx.at)
            .scalar_subquery()
        )
        redeemed = (
            select(func.count())
            .where(
                Coupon.customer_pk == customers.c.id,
                Coupon.issued_at <= self.ctx.at,
                Coupon.redeemed_at.is_not(None),
                Coupon.redeemed_at <= self.ctx.at,
            )
            .scalar_subquery()
        )
        return self._ratio(redeemed, issued, node)


def _as_money(minor: ColumnElement[int]) -> ColumnElement[Decimal]:
    return type_coerce(minor, Money())


def apply_operator(expression: Any, op: str, value: Any) -> ColumnElement[bool]:
    if op == "eq":
        return expression == value
    if op == "ne":
        return expression != value
    if op == "gt":
        return expression > value
    if op == "gte":
        return expression >= value
    if op == "lt":
        return expression < value
    if op == "lte":
        return expression <= value
    if op == "in":
        return expression.in_(list(value))
    if op == "not_in":
        return expression.not_in(list(value))
    if op == "between":
        return expression.between(value[0], value[1])
    raise ValueError(f"unknown operator {op!r}")


def python_operator(actual: Any, op: str, value: Any) -> bool:
    """The same operators over Python values (NULL matches nothing), for facts computed outside SQL."""
    if actual is None:
        return False
    return {
        "eq": lambda: actual == value,
        "ne": lambda: actual != value,
        "gt": lambda: actual > value,
        "gte": lambda: actual >= value,
        "lt": lambda: actual < value,
        "lte": lambda: actual <= value,
        "in": lambda: actual in value,
        "not_in": lambda: actual not in value,
        "between": lambda: value[0] <= actual <= value[1],
    }[op]()


# --- the audience of a campaign ------------------------------------------------------------------------------

CUSTOMER_FIELDS = (
    "customer_id",
    "name",
    "email",
    "phone",
    "province",
    "city",
    "gender",
    "birthday",
    "signup_at",
    "wechat_openid",
    "timezone",
    "attributes",
)

# the facts an audience row carries for templates and offers, each built from the statement's CustomerFacts
ROW_FACTS: dict[str, Callable[[CustomerFacts], ColumnElement[Any]]] = {
    "recency_days": lambda f: f.recency_days,
    "frequency": lambda f: f.frequency,
    "monetary": lambda f: f.monetary,
    "aov": lambda f: f.aov,
    "first_order_days": lambda f: f.first_order_days,
    "orders_above_store_aov": lambda f: f.orders_above_store_aov,
    "rfm_r": lambda f: f.r_score,
    "rfm_f": lambda f: f.f_score,
    "rfm_m": lambda f: f.m_score,
    "rfm_segment": lambda f: f.rfm_segment,
    "lifecycle": lambda f: f.lifecycle_stage,
    "tier": lambda f: f.tier,
    "clv": lambda f: f.clv,
    "signup_days": lambda f: f.tenure_days,
}


WINDOW_KEYS = 10_000  # customer keys per window of a large audience read on PostgreSQL (``Audience.windows``)


def facts_read(plan, channels: Mapping[str, Any], offers: Iterable[Any]) -> frozenset[str] | None:
    """The ``ROW_FACTS`` a run of ``plan`` reads: those its steps' compiled messages read (each channel says,
    ``Channel.customer_names``) and those its offer kinds read (``OfferKind.facts_read``); None when any of them
    cannot tell, and then every fact is computed."""
    read: set[str] = set()
    for step in plan.steps:
        # a step's A/B variants replace some of its messages: what they read counts too
        messages = [*step.messages.items(), *(m for v in step.variants for m in v.messages.items())]
        for name, compiled in messages:
            names = channels[name].customer_names(compiled)
            if names is None:
                return None
            read |= names
    for offer in offers:
        if offer.facts_read is None:
            return None
        read |= offer.facts_read
    return frozenset(read & ROW_FACTS.keys())


def customer_columns(facts: CustomerFacts, only: frozenset[str] | None = None) -> list[Any]:
    """What a member's row carries to the offer, the policies and the templates: the customer and their facts
    (``only`` those ``ROW_FACTS``, when given: a fact's sources, e.g. RFM window functions over every member,
    cost even when nobody reads it)."""
    return [
        customers.c.id.label("pk"),
        *(getattr(customers.c, name) for name in CUSTOMER_FIELDS),
        *(build(facts).label(name) for name, build in ROW_FACTS.items() if only is None or name in only),
    ]


class Audience:
    """A campaign's audience as of ``at``: counts, the per-condition funnel, and batches of customers with the
    facts templates use and the index of the step each belongs to (the first whose ``when`` holds)."""

    read_in_windows = True  # whether ``batches`` may read a large audience window by window (``windows``)

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        plan,
        at: datetime,
        catalog,
        facts: frozenset[str] | None = None,
        *,
        pk_range: tuple[int | None, int | None] | None = None,
    ):
        """``catalog``: the facts of the condition language, from the registry of the Orchestrator in use;
        ``facts``: the ``ROW_FACTS`` the batches must carry (``facts_read``), None for all of them;
        ``pk_range``: only customers whose key is within these bounds (inclusive; None: unbounded), one
        partition of the audience."""
        self.engine = engine
        self.plan = plan
        self.facts = facts
        self.ctx = FactContext(at=at, settings=settings, members=plan.members, pk_range=pk_range)
        self.catalog = catalog

    @property
    def pk_range(self) -> tuple[int | None, int | None] | None:
        return self.ctx.pk_range

    def _compiler(self) -> SegmentCompiler:
        return SegmentCompiler(self.ctx, self.catalog)

    def ids_statement(self) -> Select:
        """Just the matching customer keys: the statement the benchmark times."""
        compiler = self._compiler()
        condition = compiler.compile(self.plan.segment)
        return compiler.facts.select(customers.c.id, where=[condition])

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(self.ids_statement().subquery())).scalar_one()

    def funnel(self) -> list[dict[str, Any]]:
        """Each top-level condition with how many members it keeps on its own and cumulatively, in one query."""
        if not self.plan.conditions:
            return []
        compiler = self._compiler()
        columns = []
        cumulative = []
        for i, (_, node) in enumerate(self.plan.conditions):
            condition = compiler.compile(node)
            cumulative.append(condition)
            columns.append(func.sum(case((condition, 1), else_=0)).label(f"alone_{i}"))
            columns.append(func.sum(case((and_(*cumulative), 1), else_=0)).label(f"cumulative_{i}"))
        statement = compiler.facts.select(*columns)
        with self.engine.connect() as conn:
            row = conn.execute(statement).one()
        return [
            {"condition": label, "alone": int(row[2 * i] or 0), "cumulative": int(row[2 * i + 1] or 0)}
            for i, (label, _) in enumerate(self.plan.conditions)
        ]

    def statement(self) -> Select:
        compiler = self._compiler()
        facts = compiler.facts
        segment = compiler.compile(self.plan.segment)
        steps = [(compiler.compile(s.when) if s.when is not None else true(), s.index) for s in self.plan.steps]
        step_index = case(*steps, else_=None)
        columns = [
            *customer_columns(facts, self.facts),
            step_index.label("step_index"),
        ]
        # an offer guard per step: whether the member may receive that step's offer
        columns += [
            case((compiler.compile(s.guard), True), else_=False).label(f"guard_{s.index}")
            for s in self.plan.steps
            if s.guard is not None
        ]
        columns += [  # and per variant with an offer of its own
            case((compiler.compile(v.guard), True), else_=False).label(v.site.guard_column)
            for s in self.plan.steps
            for v in s.variants
            if v.guard is not None
        ]
        return facts.select(*columns, where=[segment]).order_by(customers.c.id)

    def batches(self, size: int) -> Iterator[list[dict[str, Any]]]:
        """The audience in batches of ``size`` customers, streamed (a server-side cursor on PostgreSQL), in
        customer-key order; a large audience on PostgreSQL one window of keys at a time (``windows``)."""
        today = _local_date(self.ctx)
        for window in self.windows():
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=size).execute(window.statement())
                for partition in result.mappings().partitions(size):
                    batch = [dict(row) for row in partition]
                    self._add_tags(batch)
                    for customer in batch:
                        customer["age"] = age_on(customer["birthday"], today)
                        customer["days_to_birthday"] = days_to_birthday(customer["birthday"], today)
                    yield batch

    def windows(self) -> Iterator[Audience]:
        """This audience, or on PostgreSQL the same audience over consecutive windows of ``WINDOW_KEYS`` customer
        keys. A cursor holds its transaction's snapshot while the run plans and sends; on PostgreSQL that keeps
        every row the run updates since (a delivery sent is a new row version) from being cleaned up, and the
        claims' index walks ever more dead entries: a run of a million slowed to a crawl. A window's snapshot
        lasts only while its members are planned. Per-customer facts of a window aggregate its own orders; a
        statement with shop-wide window functions (RFM ranks) would recompute them per window, so it is read
        in one go."""
        whole = self.pk_range is not None or self.plan.members is not None or not self.read_in_windows
        if self.engine.dialect.name != "postgresql" or whole:
            yield self
            return
        statement = self.statement()
        if " OVER " in str(statement.compile(dialect=self.engine.dialect)).upper():
            yield self
            return
        with self.engine.connect() as conn:
            low, high = conn.execute(select(func.min(customers.c.id), func.max(customers.c.id))).one()
        if low is None or high - low < WINDOW_KEYS:
            yield self
            return
        for start in range(low, high + 1, WINDOW_KEYS):
            window = copy(self)
            window.ctx = replace(self.ctx, pk_range=(start, start + WINDOW_KEYS - 1))
            yield window

    def _add_tags(self, batch: list[dict[str, Any]]) -> None:
        by_pk = {c["pk"]: c for c in batch}
        for customer in batch:
            customer["tags"] = []
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(CustomerTag.customer_pk, CustomerTag.tag)
                .where(CustomerTag.customer_pk.in_(list(by_pk)))
                .order_by(CustomerTag.customer_pk, CustomerTag.tag)
            )
            for pk, tag in rows:
                by_pk[pk]["tags"].append(tag)
