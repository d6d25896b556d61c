"""The per-customer facts in SQL equal an independent Python computation, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from sqlalchemy import Engine, and_, func, insert, literal, select

from orchestrator.config import LifecycleConfig, Settings, TierRule
from orchestrator.facts import (
    FACTS,
    RFM_SEGMENTS,
    CustomerFacts,
    FactContext,
    customers,
    days_between,
    facts_select,
    order_stats,
    orders,
    rfm_segment_case,
    store_aov,
)
from tests import dataset
from tests.dataset import AT, AT_BEFORE_ORDERS, AT_PAST

DEFAULT = Settings()
CUSTOM = Settings(
    lifecycle=LifecycleConfig(new_days=14, dormant_days=60, lost_days=120),
    tiers=[
        TierRule(name="gold", min_spend=Decimal("900"), min_orders=3),
        TierRule(name="silver", min_spend=Decimal("300.00")),
        TierRule(name="bronze", min_orders=1),
    ],
    clv={"margin": "0.35", "expected_lifetime_years": "2.5", "min_tenure_days": 30},
)
TIMES = {"at": AT, "past": AT_PAST, "before-orders": AT_BEFORE_ORDERS}


@pytest.fixture
def loaded(engine: Engine) -> Engine:
    dataset.load(engine)
    return engine


def fetch_facts(engine: Engine, at: datetime, settings: Settings) -> dict[str, dict]:
    with engine.connect() as conn:
        rows = conn.execute(facts_select(FactContext(at, settings))).mappings().all()
    return {row["customer_id"]: dict(row) for row in rows}


@pytest.mark.parametrize("settings", [DEFAULT, CUSTOM], ids=["default", "custom"])
@pytest.mark.parametrize("when", list(TIMES))
def test_every_fact_of_every_member_matches_the_reference(loaded: Engine, when: str, settings: Settings):
    at = TIMES[when]
    actual = fetch_facts(loaded, at, settings)
    expected = dataset.expected_facts(at, settings)
    assert set(actual) == set(expected)
    for customer_id, facts in expected.items():
        row = actual[customer_id]
        for name, value in asdict(facts).items():
            assert row[name] == value, f"{customer_id}.{name} as of {at}: {row[name]!r} != {value!r}"


def test_the_data_set_exercises_every_fact(loaded: Engine):
    """Guards the data set itself: the edge cases it promises are there as of AT."""
    facts = dataset.expected_facts(AT, DEFAULT)
    assert {f.lifecycle_stage for f in facts.values()} == set(dataset.LIFECYCLE_STAGES)
    assert len({f.rfm_segment for f in facts.values()} - {None}) >= 8
    assert {facts[c].recency_days for c in ("C05", "C06", "C07", "C08")} == {90, 89, 180, 179}
    assert facts["C02"].monetary == Decimal("1000.01") and facts["C03"].monetary == Decimal("1000.00")
    assert "C11" not in facts and "C26" not in facts and "C25" in facts
    assert max(f.orders_above_store_aov for f in facts.values()) >= 3


def test_money_facts_are_decimal_and_times_aware(loaded: Engine):
    row = fetch_facts(loaded, AT, DEFAULT)["C01"]
    for name in ("monetary", "aov", "clv"):
        assert isinstance(row[name], Decimal), name
        assert row[name] == row[name].quantize(Decimal("0.01"))
    assert row["last_order_at"].tzinfo is not None
    assert row["last_order_at"] == max(o.ordered_at for o in dataset.ORDERS if o.customer_id == "C01")


PAIRS = [
    ("2025-04-02T02:00:00+00:00", "2025-07-01T10:00:00+08:00"),  # exactly 90 days
    ("2025-04-02T02:00:01+00:00", "2025-07-01T10:00:00+08:00"),  # a second less
    ("2025-04-02T02:00:00.001+00:00", "2025-07-01T02:00:00+00:00"),  # a millisecond less
    ("2025-04-02T02:00:00.000001+00:00", "2025-07-01T02:00:00+00:00"),  # a microsecond less
    ("2025-04-02T02:00:00.999600+00:00", "2025-07-01T02:00:00.999599+00:00"),  # fractions near a second
    ("2025-04-02T02:00:00.999600+00:00", "2025-07-01T02:00:00.999600+00:00"),
    ("2025-04-02T02:00:00.500000+00:00", "2025-07-01T02:00:01+00:00"),
    ("2024-02-28T12:00:00+00:00", "2024-03-01T11:59:59+00:00"),  # over a leap day
    ("2025-03-29T12:00:00+01:00", "2025-03-31T12:00:00+02:00"),  # over a DST change written as offsets
    ("2025-07-01T10:00:00+08:00", "2025-06-30T10:00:01+08:00"),  # backwards: just under -1 day
    ("2025-07-01T10:00:00+08:00", "2025-06-30T10:00:00+08:00"),  # backwards: exactly -1 day
    ("2025-07-01T00:00:00+00:00", "2025-07-01T00:00:00+00:00"),  # zero
    ("2000-01-01T00:00:00+00:00", "2025-07-01T00:00:00+00:00"),  # decades
    ("1969-12-31T23:59:59.999999+00:00", "1970-01-01T00:00:00+00:00"),  # across the epoch
    ("1900-03-01T00:00:00+00:00", "2099-12-31T23:59:59.999999+00:00"),  # two centuries
]


@pytest.mark.parametrize(("start", "end"), PAIRS)
def test_days_between_counts_whole_days_like_python(engine: Engine, start: str, end: str):
    start_at, end_at = datetime.fromisoformat(start), datetime.fromisoformat(end)
    with engine.connect() as conn:
        days = conn.execute(select(days_between(start_at, end_at))).scalar_one()
    assert days == (end_at - start_at) // timedelta(days=1)


def test_every_rfm_score_combination_has_a_named_segment(engine: Engine):
    combos = [(r, f, m) for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)]
    with engine.connect() as conn:
        for r, f, m in combos:
            segment = conn.execute(select(rfm_segment_case(literal(r), literal(f), literal(m)))).scalar_one()
            assert segment == dataset.rfm_segment(r, f, m), (r, f, m)
    assert {dataset.rfm_segment(*c) for c in combos} == set(RFM_SEGMENTS)


def test_orders_above_store_aov_compares_exactly(engine: Engine):
    """Shop AOV is exactly 100.00 here: an order of 100.00 is not above it, one of 100.01 is."""
    now = datetime(2025, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(insert(customers), [_customer(c, now) for c in ("A", "B")])
        keys = dict(conn.execute(select(customers.c.customer_id, customers.c.id)).all())
        amounts = [("A", "100.00"), ("A", "100.01"), ("B", "99.99"), ("B", "100.00")]
        conn.execute(insert(orders), [_order(i, keys[c], a, now) for i, (c, a) in enumerate(amounts)])
    ctx = FactContext(now, DEFAULT)
    facts = CustomerFacts(ctx)
    statement = facts.select(customers.c.customer_id, facts.orders_above_store_aov, store_aov(ctx))
    with engine.connect() as conn:
        rows = conn.execute(statement.order_by(customers.c.customer_id)).all()
    assert rows == [("A", 1, Decimal("100.00")), ("B", 0, Decimal("100.00"))]


def _customer(customer_id: str, now: datetime) -> dict:
    return {"customer_id": customer_id, "attributes": {}, "created_at": now, "updated_at": now}


def _order(i: int, customer_pk: int, amount: str, now: datetime) -> dict:
    when = now - timedelta(days=i + 1)
    return {
        "order_id": f"o{i}",
        "customer_pk": customer_pk,
        "ordered_at": when,
        "amount": Decimal(amount),
        "status": "paid",
        "attributes": {},
        "created_at": now,
        "updated_at": now,
    }


@pytest.mark.parametrize("when", ["at", "past"])
def test_store_aov_is_revenue_over_orders(loaded: Engine, when: str):
    at = TIMES[when]
    count, revenue = dataset.store_totals(at)
    with loaded.connect() as conn:
        aov = conn.execute(select(store_aov(FactContext(at, DEFAULT)))).scalar_one()
    assert aov == dataset.round_cents(Fraction(revenue) / count)


def test_conditions_compose_into_one_statement_joining_only_what_they_use(loaded: Engine):
    """The segment compiler's use: build conditions from facts, then one select over members."""
    facts = CustomerFacts(FactContext(AT, DEFAULT))
    condition = and_(facts.recency_days >= 90, facts.recency_days < 180)
    statement = facts.select(customers.c.customer_id, where=[condition])
    sql = str(statement.compile(loaded))
    assert "rank()" not in sql and "store_totals" not in sql
    with loaded.connect() as conn:
        actual = set(conn.execute(statement).scalars())
    expected = dataset.expected_facts(AT, DEFAULT)
    assert actual == {c for c, f in expected.items() if f.recency_days is not None and 90 <= f.recency_days < 180}


def test_rfm_and_above_aov_conditions_in_one_statement(loaded: Engine):
    facts = CustomerFacts(FactContext(AT, DEFAULT))
    condition = and_(facts.rfm_segment.in_(["champions", "loyal"]), facts.orders_above_store_aov >= 1)
    statement = facts.select(customers.c.customer_id, where=[condition])
    with loaded.connect() as conn:
        actual = set(conn.execute(statement).scalars())
    expected = dataset.expected_facts(AT, DEFAULT)
    wanted = {c for c, f in expected.items() if f.rfm_segment in ("champions", "loyal") and f.orders_above_store_aov}
    assert actual == wanted and actual


def test_money_facts_compare_with_decimals(loaded: Engine):
    facts = CustomerFacts(FactContext(AT, DEFAULT))
    statement = facts.select(customers.c.customer_id, where=[facts.monetary > Decimal("1000")])
    with loaded.connect() as conn:
        actual = set(conn.execute(statement).scalars())
    expected = dataset.expected_facts(AT, DEFAULT)
    assert actual == {c for c, f in expected.items() if f.monetary > Decimal("1000")}
    assert "C02" in actual and "C03" not in actual


def test_windowed_order_stats_join_like_any_fact(loaded: Engine):
    """Frequency and spend within a window (since a time), joined through ``join_source`` and combined with a
    built-in fact in one statement."""
    ctx = FactContext(AT, DEFAULT)
    since = AT - timedelta(days=60)
    facts = CustomerFacts(ctx)
    window = facts.join_source("last_60_days", order_stats(ctx, since=since).subquery())
    statement = facts.select(
        customers.c.customer_id,
        func.coalesce(window.c.orders, 0),
        func.coalesce(window.c.monetary_minor, 0),
        where=[facts.frequency >= 2],
    )
    with loaded.connect() as conn:
        actual = {c: (n, m) for c, n, m in conn.execute(statement)}
    reference = dataset.expected_facts(AT, DEFAULT)
    expected = {c: (0, 0) for c, f in reference.items() if f.frequency >= 2}
    for o in dataset.counted_orders(AT):
        if o.ordered_at >= since and o.customer_id in expected:
            n, m = expected[o.customer_id]
            expected[o.customer_id] = (n + 1, m + int(o.amount * 100))
    assert actual == expected
    assert any(n == 0 for n, _ in actual.values()) and any(n > 0 for n, _ in actual.values())


def test_fact_lookup_by_name():
    facts = CustomerFacts(FactContext(AT, DEFAULT))
    for name in FACTS:
        assert facts.fact(name) is not None
    with pytest.raises(KeyError):
        facts.fact("shoe_size")


def test_context_rejects_naive_times():
    with pytest.raises(ValueError, match="aware"):
        FactContext(datetime(2025, 1, 1), DEFAULT)
