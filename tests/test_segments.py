"""The segment compiler against an independent computation: every fact and operator of the condition language.

Each condition is written as a marketer writes it (YAML), compiled by ``SegmentCompiler`` into one statement and
run on SQLite and PostgreSQL; the expected audience comes from this file's own evaluator of the same YAML over
the plain-Python facts of ``tests.dataset.FactModel`` (no product code). Thresholds are taken from the data so that
each condition keeps some members and drops others; the edge cases are named with the members that sit on them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from sqlalchemy import Connection, Engine

from orchestrator.campaign.catalog import BUILTIN_FACTS
from orchestrator.campaign.conditions import ConditionParser
from orchestrator.config import LifecycleConfig, Settings, TierRule
from orchestrator.facts import FactContext, customers
from orchestrator.segments import SegmentCompiler
from orchestrator.yamlfile import parse_yaml
from tests import dataset
from tests.dataset import AT, AT_BEFORE_ORDERS, AT_PAST, CUSTOMER_BY_ID, DAY, SECOND, SHANGHAI, FactModel

CATALOG = {spec.name: spec for spec in BUILTIN_FACTS}
KINDS = {spec.name: spec.kind for spec in BUILTIN_FACTS}
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
NAMED = Settings(
    segments={
        "dormant": {"recency_days": {"gte": 90}},
        "big_spenders": {"monetary": {"gt": 1000}},
        "reachable": {"any": [{"consent_sms": True}, {"consent_email": True}]},
        "dormant_big_spenders": {"all": [{"segment": "dormant"}, {"segment": "big_spenders"}]},
        "lunch_regulars": {"daypart_orders": {"daypart": "lunch", "within": "180d", "gte": 2}},
    }
)
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "between")
PARAMS = ("within", "method", "daypart", "category")

# --- the reference evaluator: the condition grammar over the plain-Python facts ------------------------------


def duration(text: str) -> timedelta:
    units = {"d": "days", "w": "weeks", "h": "hours", "m": "minutes", "s": "seconds"}
    return timedelta(**{units[text[-1]]: int(text[:-1])})


def number(value: Any) -> Any:
    """Numbers as exact fractions (a YAML 0.1 is one tenth); text and booleans unchanged."""
    if isinstance(value, bool | str) or value is None:
        return value
    return Fraction(str(value)) if isinstance(value, float) else Fraction(value)


def compare(actual: Any, op: str, operand: Any) -> bool:
    if actual is None:  # NULL matches no comparison
        return False
    actual = number(actual)
    operand = [number(v) for v in operand] if op in ("in", "not_in", "between") else number(operand)
    if op == "eq":
        return actual == operand
    if op == "ne":
        return actual != operand
    if op == "gt":
        return actual > operand
    if op == "gte":
        return actual >= operand
    if op == "lt":
        return actual < operand
    if op == "lte":
        return actual <= operand
    if op == "in":
        return actual in operand
    if op == "not_in":
        return actual not in operand
    if op == "between":
        return operand[0] <= actual <= operand[1]
    raise AssertionError(op)


def holds(condition: Any, model: FactModel, customer_id: str, named: dict) -> bool:
    if isinstance(condition, list):
        return all(holds(c, model, customer_id, named) for c in condition)
    return all(_key_holds(key, value, model, customer_id, named) for key, value in condition.items())


def _key_holds(key: str, value: Any, model: FactModel, customer_id: str, named: dict) -> bool:
    items = value if isinstance(value, list) else [value]
    tags = set(CUSTOMER_BY_ID[customer_id].tags)
    if key == "all":
        return all(holds(c, model, customer_id, named) for c in items)
    if key == "any":
        return any(holds(c, model, customer_id, named) for c in items)
    if key == "not":
        return not any(holds(c, model, customer_id, named) for c in items)
    if key == "tag":
        return value in tags
    if key == "tags_any":
        return bool(tags & set(value))
    if key == "tags_all":
        return set(value) <= tags
    if key == "segment":
        return holds(named[value], model, customer_id, named)
    spec = value if isinstance(value, dict) else {"eq": value}
    ops = {k: v for k, v in spec.items() if k in OPERATORS} or {"eq": True}
    params = {k: duration(v) if k == "within" else v for k, v in spec.items() if k in PARAMS}
    actual = model.value(customer_id, key, params)
    return all(compare(actual, op, operand) for op, operand in ops.items())


# --- running a condition both ways ---------------------------------------------------------------------------


def compile_audience(conn: Connection, at: datetime, settings: Settings, text: str) -> set[str]:
    doc = parse_yaml(text, "test.yaml")
    node = ConditionParser(doc, CATALOG, settings.segments).parse(doc.data, ())
    compiler = SegmentCompiler(FactContext(at, settings), CATALOG)
    condition = compiler.compile(node)
    return set(conn.scalars(compiler.facts.select(customers.c.customer_id, where=[condition])))


class Checker:
    """Runs conditions as of one time on a loaded database and records every difference from the reference."""

    def __init__(self, conn: Connection, at: datetime, settings: Settings = DEFAULT):
        self.conn = conn
        self.at = at
        self.settings = settings
        self.model = FactModel(at, settings)
        self.problems: list[str] = []

    def expected(self, text: str) -> set[str]:
        data = yaml.safe_load(text)
        return {c for c in self.model.member_ids if holds(data, self.model, c, self.settings.segments)}

    def check(self, text: str, includes: str = "", excludes: str = "", trivial: bool = False) -> set[str]:
        """``includes`` / ``excludes``: members (space-separated) the condition must keep / drop, per the
        reference too, naming the edge a case is about. Unless ``trivial``, the condition must keep some
        members and drop others."""
        expected = self.expected(text)
        actual = compile_audience(self.conn, self.at, self.settings, text)
        where = f"{text!r} as of {self.at.isoformat()}"
        if actual != expected:
            missing, extra = sorted(expected - actual), sorted(actual - expected)
            self.problems.append(f"{where}: missing {missing}, unexpected {extra}")
        for customer_id in includes.split():
            assert customer_id in expected, f"reference: {customer_id} should match {where}"
        for customer_id in excludes.split():
            assert customer_id not in expected, f"reference: {customer_id} should not match {where}"
        if not trivial:
            assert expected, f"vacuous case: nobody matches {where}"
            assert expected != self.model.member_ids, f"vacuous case: every member matches {where}"
        return actual

    def assert_clean(self) -> None:
        assert not self.problems, "\n".join(self.problems)


@pytest.fixture
def loaded(engine: Engine) -> Engine:
    dataset.load(engine)
    return engine


@pytest.fixture
def conn(loaded: Engine):
    with loaded.connect() as connection:
        yield connection


def y(value: Any) -> str:
    """A value as YAML (flow style)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Fraction):
        return str(Decimal(value.numerator) / Decimal(value.denominator))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(y(v) for v in value) + "]"
    return str(value)


def condition(fact: str, params: dict[str, str], **ops: Any) -> str:
    body = [f"{k}: {y(v)}" for k, v in params.items()] + [f"{k}: {y(v)}" for k, v in ops.items()]
    return f"{fact}: {{{', '.join(body)}}}"


# --- every fact with every operator ------------------------------------------------------------------------

MATRIX: list[tuple[str, dict[str, str], str]] = [
    ("recency_days", {}, "default"),
    ("frequency", {}, "default"),
    ("frequency", {"within": "30d"}, "default"),
    ("frequency", {"within": "2160h"}, "default"),
    ("monetary", {}, "default"),
    ("monetary", {"within": "13w"}, "default"),
    ("aov", {}, "default"),
    ("first_order_days", {}, "default"),
    ("orders_above_store_aov", {}, "default"),
    ("rfm_r", {}, "default"),
    ("rfm_f", {}, "default"),
    ("rfm_m", {}, "default"),
    ("rfm_segment", {}, "default"),
    ("lifecycle", {}, "default"),
    ("lifecycle", {}, "custom"),
    ("tier", {}, "default"),
    ("tier", {}, "custom"),
    ("clv", {}, "default"),
    ("clv", {}, "custom"),
    ("province", {}, "default"),
    ("city", {}, "default"),
    ("gender", {}, "default"),
    ("age", {}, "default"),
    ("days_to_birthday", {}, "default"),
    ("signup_days", {}, "default"),
    ("consent_email", {}, "default"),
    ("consent_sms", {}, "default"),
    ("coupon_redemption_rate", {}, "default"),
    ("payment_share", {"method": "stored_value"}, "default"),
    ("payment_share", {"method": "alipay", "within": "90d"}, "default"),
    ("daypart_orders", {"daypart": "lunch"}, "default"),
    ("daypart_orders", {"daypart": "dinner", "within": "90d"}, "default"),
    ("daypart_orders", {"daypart": "late"}, "default"),
    ("bought_category", {"category": "coffee"}, "default"),
    ("bought_category", {"category": "merch", "within": "90d"}, "default"),
]
SETTINGS = {"default": DEFAULT, "custom": CUSTOM}


def _matrix_id(case: tuple) -> str:
    fact, params, settings = case
    return "-".join([fact, *(f"{k}={v}" for k, v in params.items()), *([settings] if settings != "default" else [])])


def test_the_matrix_covers_every_builtin_fact():
    assert {fact for fact, _, _ in MATRIX} == set(CATALOG)


def _expressible(value: Any) -> bool:
    """A ratio a condition can write exactly as a decimal (1/4 yes, 1/3 no)."""
    if not isinstance(value, Fraction):
        return True
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def operator_cases(fact: str, params: dict[str, str], values: list[Any]) -> list[str]:
    """Every operator of the fact's kind, with thresholds picked among the values members have."""
    kind = KINDS[fact]
    distinct = sorted({v for v in values if v is not None and _expressible(v)})
    if kind == "bool":
        return [
            condition(fact, params),  # no operator: eq true
            condition(fact, params, eq=True),
            condition(fact, params, eq=False),
            condition(fact, params, ne=True),
            condition(fact, params, **{"in": [False]}),
            condition(fact, params, not_in=[False]),
            f"not: [{condition(fact, params)}]",
            *([f"{fact}: true", f"{fact}: false"] if not params else []),
        ]
    assert len(distinct) >= 2, f"{fact}: the data needs at least two distinct values"
    t = distinct[(len(distinct) - 1) // 2]
    low, high = distinct[0], distinct[-1]
    if kind == "string":
        return [
            condition(fact, params, eq=t),
            condition(fact, params, ne=t),
            condition(fact, params, **{"in": [low, t]}),
            condition(fact, params, not_in=[low, t]),
            f"not: [{condition(fact, params, ne=t)}]",
            f"not: [{condition(fact, params, not_in=[low])}]",
            *([f"{fact}: {y(t)}"] if not params else []),
        ]
    # inner quartiles; below the maximum, so that `between` keeps some and drops some
    lo, hi = distinct[len(distinct) // 4], distinct[max(0, min(len(distinct) - 2, (3 * len(distinct)) // 4))]
    return [
        condition(fact, params, eq=t),
        condition(fact, params, ne=t),
        condition(fact, params, gt=t),
        condition(fact, params, gte=t),
        condition(fact, params, lt=t),
        condition(fact, params, lte=t),
        condition(fact, params, **{"in": [low, t]}),
        condition(fact, params, not_in=[low, t]),
        condition(fact, params, between=[lo, hi]),  # both ends are values members have: inclusive
        condition(fact, params, between=[t, t]),
        condition(fact, params, gte=lo, lt=hi),  # several operators: all must hold
        condition(fact, params, gt=low, ne=t, lte=high),
        f"not: [{condition(fact, params, ne=t)}]",
        f"not: [{condition(fact, params, between=[lo, hi])}]",
        *([f"{fact}: {y(t)}"] if not params else []),
    ]


@pytest.mark.parametrize("case", MATRIX, ids=_matrix_id)
def test_every_operator_of_every_fact(conn: Connection, case):
    """Each fact × each operator of its kind, as of AT and as of a past time, equals the reference; as of AT no
    case is vacuous."""
    fact, params, settings_name = case
    settings = SETTINGS[settings_name]
    reference_params = {k: duration(v) if k == "within" else v for k, v in params.items()}
    checks = []
    for at in (AT, AT_PAST):
        checker = Checker(conn, at, settings)
        values = list(checker.model.values(fact, reference_params).values())
        for text in operator_cases(fact, params, values):
            checker.check(text, trivial=at != AT)
        checks.append(checker)
    for checker in checks:
        checker.assert_clean()


# --- two-valued logic: NULL never matches, so `not` of a comparison does ------------------------------------

# (fact, params, a member for whom the fact is NULL as of AT, a value members have)
NULLS = [
    ("recency_days", {}, "C09", 90),  # never ordered
    ("aov", {}, "C12", Decimal("100.00")),  # only a refunded and a cancelled order
    ("first_order_days", {}, "C25", 30),
    ("rfm_r", {}, "C09", 3),
    ("rfm_segment", {}, "C10", "loyal"),
    ("clv", {}, "C09", Decimal("0")),
    ("age", {}, "C03", 25),  # no birthday
    ("days_to_birthday", {}, "C03", 7),
    ("signup_days", {}, "C10", 31),  # no signup time
    ("province", {}, "C13", "浙江"),
    ("city", {}, "C13", "杭州"),
    ("gender", {}, "C10", "female"),
    ("payment_share", {"method": "card"}, "C09", Fraction(1, 4)),  # no orders
    ("payment_share", {"method": "stored_value", "within": "30d"}, "C24", 1),  # none in the window
    ("coupon_redemption_rate", {}, "C04", Fraction(1, 2)),  # no coupons
    ("coupon_redemption_rate", {}, "C11", 1),  # not a member: in no audience at all
    ("tier", {}, "C09", "bronze"),  # CUSTOM tiers: a prospect meets none
]


@pytest.mark.parametrize(("fact", "params", "member", "value"), NULLS, ids=[f"{n[0]}-{n[2]}" for n in NULLS])
def test_null_facts_match_no_comparison_and_so_match_not(conn: Connection, fact, params, member, value):
    checker = Checker(conn, AT, CUSTOM if fact == "tier" else DEFAULT)
    reference_params = {k: duration(v) if k == "within" else v for k, v in params.items()}
    if member in checker.model.member_ids:
        assert checker.model.value(member, fact, reference_params) is None
    ops: dict[str, Any] = {"eq": value, "ne": value, "in": [value], "not_in": [value]}
    if KINDS[fact] not in ("string", "bool"):
        ops |= {"gt": value, "gte": value, "lt": value, "lte": value, "between": [value, value]}
    if member in checker.model.member_ids:
        for op, operand in ops.items():
            text = condition(fact, params, **{op: operand})
            checker.check(text, excludes=member, trivial=True)
            checker.check(f"not: [{text}]", includes=member, trivial=True)
    else:  # not a member at all: in no audience, whatever the condition
        for op, operand in ops.items():
            text = condition(fact, params, **{op: operand})
            assert member not in checker.check(text, trivial=True) | checker.check(f"not: [{text}]", trivial=True)
    # NULL on both sides of an `any`: neither the comparison nor its complement keeps the member
    checker.check(f"any: [{condition(fact, params, eq=value)}, {condition(fact, params, ne=value)}]", excludes=member)
    checker.assert_clean()


# --- boundaries: thresholds, window edges, `at` --------------------------------------------------------------


def test_thresholds_exactly_on_the_value(conn: Connection):
    checker = Checker(conn, AT)
    check = checker.check
    # recency: C05 exactly 90 days, C06 a second less (89); C07 exactly 180, C08 a second less (179)
    check("recency_days: {gte: 90}", includes="C05 C07 C08", excludes="C06 C09")
    check("recency_days: {gt: 90}", includes="C07 C08", excludes="C05 C06")
    check("recency_days: {lte: 89}", includes="C06", excludes="C05")
    check("recency_days: {lt: 90}", includes="C06", excludes="C05")
    check("recency_days: {between: [90, 179]}", includes="C05 C08", excludes="C06 C07")
    check("recency_days: {between: [180, 180]}", includes="C07", excludes="C08")
    check("recency_days: {gte: 90, lt: 180}", includes="C05 C08", excludes="C06 C07")
    # money: C03 exactly 1000.00, C02 1000.01, C04 900 (+300 after AT, ignored)
    check("monetary: {gte: 1000}", includes="C02 C03", excludes="C04")
    check("monetary: {gt: 1000}", includes="C02", excludes="C03 C04")
    check("monetary: {gt: 1000.00}", includes="C02", excludes="C03")
    check("monetary: {lte: 1000}", includes="C03", excludes="C02")
    check("monetary: {lt: 1000.01}", includes="C03", excludes="C02")
    check("monetary: {between: [1000, 1000.01]}", includes="C02 C03", excludes="C04")
    check("monetary: {eq: 1000.01}", includes="C02", excludes="C03")
    check("monetary: {in: [0, 1000]}", includes="C03 C09", excludes="C02")
    # AOV: C27 exactly 100.00, C28 200.00, C29 199.99, C30 99.99
    check("aov: {gte: 100}", includes="C27 C28 C29", excludes="C30")
    check("aov: {gt: 100}", includes="C28 C29", excludes="C27 C30")
    check("aov: {lt: 200}", includes="C27 C29 C30", excludes="C28")
    check("aov: {lte: 200.00}", includes="C28")
    check("aov: {between: [100, 200]}", includes="C27 C28 C29", excludes="C30")
    check("aov: {between: [99.99, 99.99]}", includes="C30", excludes="C27")
    # first order exactly new_days (30) ago and a day more
    check("first_order_days: {lte: 30}", includes="C22", excludes="C23")
    check("first_order_days: {gt: 30}", includes="C23", excludes="C22")
    # signup exactly at AT: 0 days; no signup time: NULL
    check("signup_days: {eq: 0}", includes="C25", excludes="C10 C34")
    check("signup_days: {lte: 0}", includes="C25", excludes="C26")
    check("signup_days: {between: [31, 32]}", includes="C22 C23")
    # lifecycle and tier on their edges (tier "advanced" is spend >= 1000: C03 is in)
    check("lifecycle: dormant", includes="C05 C08", excludes="C06 C07")
    check("lifecycle: {in: [new]}", includes="C22", excludes="C23")
    check("tier: advanced", includes="C02 C03 C24 C34", excludes="C04")
    check("tier: {ne: advanced}", includes="C04 C09", excludes="C03")
    # ratios compare exactly: C01 pays 1/3 of its orders from stored value, C20 redeemed 2/3 of its coupons
    check("payment_share: {method: stored_value, gt: 0.3333}", includes="C01", excludes="C02")
    check("payment_share: {method: stored_value, lt: 0.3334, gt: 0.3333}", includes="C01 C14 C20")
    check("payment_share: {method: stored_value, eq: 0.25}", includes="C02 C24 C33", excludes="C01")
    check("payment_share: {method: stored_value, gte: 0.5}", includes="C05 C06", excludes="C01")
    check("payment_share: {method: stored_value, between: [0.25, 0.5]}", includes="C01 C02 C05", excludes="C06")
    check("payment_share: {method: stored_value, in: [0.25, 1]}", includes="C02 C06", excludes="C05")
    check("payment_share: {method: stored_value, not_in: [0.25, 1]}", includes="C05 C01", excludes="C02 C06 C09")
    check("coupon_redemption_rate: {gt: 0.6666, lt: 0.6667}", includes="C20", excludes="C01")
    check("coupon_redemption_rate: {gte: 0.75}", includes="C01 C03", excludes="C20")
    check("coupon_redemption_rate: {between: [0.5, 0.75]}", includes="C01 C15 C20 C47", excludes="C03 C17")
    check("coupon_redemption_rate: {eq: 0}", includes="C02 C09 C17", excludes="C04")
    check("coupon_redemption_rate: {in: [0, 1]}", includes="C03 C09 C36", excludes="C01 C04")
    check("coupon_redemption_rate: {not_in: [0, 1]}", includes="C01", excludes="C03 C09 C04")
    checker.assert_clean()


def test_windows_include_their_edge_and_nothing_before_it(conn: Connection):
    checker = Checker(conn, AT)
    check = checker.check
    # C47: orders exactly 30 days before AT (40.00, stored value, bakery) and a second before that (20.00, card,
    # merch); C22's only order is exactly 30 days before AT; C15 has one exactly at AT and one after it
    check("frequency: {within: 30d, eq: 2}", includes="C47", excludes="C15")
    check("frequency: {within: 30d, gte: 1}", includes="C22 C47 C15", excludes="C23")
    check("frequency: {within: 720h, gte: 1}", includes="C22 C47", excludes="C23")
    check("frequency: {within: 2592001s, eq: 3}", includes="C47")  # a second wider: the 20.00 order too
    check("frequency: {within: 2591999s, eq: 1}", includes="C47", excludes="C22")  # a second narrower
    check("monetary: {within: 30d, eq: 100.00}", includes="C47")
    check("monetary: {within: 1d, eq: 233.30}", includes="C15")  # at AT: counts; after AT: not
    check("payment_share: {method: stored_value, within: 30d, eq: 1}", includes="C47 C22")
    check("payment_share: {method: stored_value, eq: 0.5}", includes="C47")
    check("payment_share: {method: card, within: 30d, eq: 0}", includes="C47", excludes="C24")
    check("bought_category: {category: bakery, within: 30d}", includes="C47")
    check("bought_category: {category: merch, within: 30d}", excludes="C47")
    check("bought_category: {category: merch}", includes="C47")
    check("bought_category: {category: merch, within: 30d, eq: false}", includes="C47 C09")
    check("bought_category: {category: coffee, ne: true}", includes="C09")
    check("daypart_orders: {daypart: lunch, within: 30d, eq: 1}", includes="C47")  # 10:00 is no daypart
    check("daypart_orders: {daypart: lunch, eq: 2}", includes="C47")
    # C05's last order is exactly 90 days before AT, C08's 180 days less a second
    check("frequency: {within: 90d, gte: 1}", includes="C05 C06", excludes="C08 C07")
    check("frequency: {within: 90d, eq: 0}", includes="C07 C08 C09", excludes="C05")
    check("monetary: {within: 90d, eq: 132.00}", includes="C05")
    check("frequency: {within: 180d, gte: 1}", includes="C07 C08")
    check("frequency: {within: 180d, eq: 1}", includes="C07 C08", excludes="C24")
    check("frequency: {within: 179d, eq: 0}", includes="C07 C08 C24")
    checker.assert_clean()


def test_dayparts_in_shop_local_time_start_inclusive_end_exclusive(conn: Connection):
    """C46's orders sit on the daypart edges in Shanghai time, some written in UTC or -05:00 on another date."""
    checker = Checker(conn, AT)
    check = checker.check
    check("daypart_orders: {daypart: lunch, eq: 2}", includes="C46")  # 11:00:00 and 13:59:59
    check("daypart_orders: {daypart: afternoon, eq: 1}", includes="C46")  # 14:00:00
    check("daypart_orders: {daypart: breakfast, eq: 1}", includes="C46")  # 06:00:00; 10:59:59 is in no daypart
    check("daypart_orders: {daypart: dinner, eq: 2}", includes="C46")  # 17:00:00 and 20:59:59
    check("daypart_orders: {daypart: late, eq: 2}", includes="C46")  # 21:00:00 and 05:59:59 (wraps midnight)
    check("daypart_orders: {daypart: late, gte: 1}", includes="C02 C31 C46")  # 00:05, 23:59:59 and 00:00
    check("daypart_orders: {daypart: breakfast, gte: 1}", includes="C14 C46")  # 07:59:59, written in UTC
    check("daypart_orders: {daypart: lunch, gte: 3}", includes="C01 C33 C24", excludes="C46")
    check("daypart_orders: {daypart: dinner, gte: 2, within: 90d}", includes="C46")
    check("not: [{daypart_orders: {daypart: lunch, gte: 1}}]", includes="C09", excludes="C46")
    checker.assert_clean()


def test_backtesting_ignores_later_orders_coupons_and_members(conn: Connection):
    """As of AT_PAST (2025-03-01 00:00 Shanghai): C30's order is exactly at it, C29's a second before, C37's a
    second after; C27 signed up exactly at it, C28 and C36 later; C32 last bought exactly 90 days before."""
    checker = Checker(conn, AT_PAST)
    check = checker.check
    assert {"C28", "C36", "C11", "C26"}.isdisjoint(checker.model.member_ids)
    check("recency_days: {eq: 0}", includes="C29 C30", excludes="C37")
    check("recency_days: {gte: 0}", includes="C30", excludes="C37 C27 C28 C36")
    check("not: [{recency_days: {gte: 0}}]", includes="C37 C27", excludes="C28 C36 C30")
    check("frequency: {eq: 0}", includes="C27 C37 C04", excludes="C28 C36")
    check("frequency: {gte: 1}", includes="C29 C30", excludes="C37 C28")
    check("monetary: {eq: 600}", includes="C03")  # the later 400.00 not yet
    check("monetary: {gt: 1000}", excludes="C02 C03")
    check("frequency: {within: 90d, gte: 1}", includes="C32 C30", excludes="C37")
    check("frequency: {within: 89d, eq: 0}", includes="C32")
    check("recency_days: {eq: 90}", includes="C32")
    check("lifecycle: dormant", includes="C32")
    check("lifecycle: new", includes="C30 C29")
    check("signup_days: {eq: 0}", includes="C27")
    check("signup_days: {lte: 30}", includes="C27 C33", excludes="C28")
    check("coupon_redemption_rate: {eq: 0.5}", includes="C01", excludes="C15")
    check("coupon_redemption_rate: {eq: 0}", includes="C16 C47", excludes="C02 C17")
    check("coupon_redemption_rate: {eq: 1}", includes="C03 C20", excludes="C36")
    check("not: [{coupon_redemption_rate: {gte: 0}}]", includes="C02 C17 C15", excludes="C36 C01")
    check("payment_share: {method: stored_value, gte: 0}", includes="C30", excludes="C37 C36")
    check("daypart_orders: {daypart: late, gte: 1}", includes="C30 C29")  # 00:00:00 and 23:59:59 local
    check("bought_category: {category: coffee, within: 30d}", excludes="C37")
    check("any: [{tier: advanced}, {rfm_segment: champions}]", excludes="C04")
    checker.assert_clean()


def test_before_any_order_everyone_is_a_prospect(conn: Connection):
    checker = Checker(conn, AT_BEFORE_ORDERS)
    check = checker.check
    for text in ("recency_days: {gte: 0}", "aov: {gt: 0}", "rfm_r: {in: [1, 2, 3, 4, 5]}", "clv: {gte: 0}"):
        assert check(text, trivial=True) == set()
        assert check(f"not: [{text}]", trivial=True) == checker.model.member_ids
    assert check("lifecycle: prospect", trivial=True) == checker.model.member_ids
    check("frequency: {eq: 0}", trivial=True)
    check("age: {gte: 30}")
    check("days_to_birthday: {lte: 60}")
    checker.assert_clean()


# --- birthdays and age: 29 February, the year's end, the shop's calendar date --------------------------------

BIRTHDAYS = [
    # (as of, condition, includes, excludes)
    (AT, "days_to_birthday: {eq: 0}", "C41", "C42 C43"),  # born 1 July
    (AT, "days_to_birthday: {eq: 1}", "C43", "C41"),
    (AT, "days_to_birthday: {eq: 364}", "C42", "C41"),  # 30 June: yesterday
    (AT, "days_to_birthday: {eq: 242}", "C02 C40 C44", "C45"),  # 29 Feb falls on 28 Feb 2026
    (AT, "days_to_birthday: {eq: 243}", "C45", "C02"),
    (AT, "days_to_birthday: {between: [0, 7]}", "C41 C43 C14 C01", "C21 C42"),
    (AT, "days_to_birthday: {lte: 9, gt: 0}", "C43 C21", "C41"),
    (AT, "days_to_birthday: {in: [0, 364]}", "C41 C42", "C43"),
    (AT, "days_to_birthday: {not_in: [0, 364]}", "C43", "C41 C42 C03"),
    (AT, "days_to_birthday: {ne: 0}", "C42", "C41 C03"),
    (AT, "days_to_birthday: {gte: 364}", "C42", "C41"),
    (AT, "age: {eq: 25}", "C41 C38", "C43 C21"),  # C41 turns 25 on the day, C43 tomorrow
    (AT, "age: {eq: 35}", "C42 C45", "C01"),  # C42 turned 35 yesterday
    (AT, "age: {between: [24, 25]}", "C21 C41 C43 C38", "C14"),
    (AT, "age: {lt: 25}", "C43 C21", "C41 C03"),
    # 30 December 02:00 in Shanghai is still 29 December in UTC: the shop's date counts
    (datetime(2024, 12, 29, 18, 0, tzinfo=UTC), "days_to_birthday: {eq: 3}", "C38", "C39"),  # 2 January
    (datetime(2024, 12, 29, 18, 0, tzinfo=UTC), "days_to_birthday: {eq: 0}", "C39", "C38"),  # 30 December
    (datetime(2024, 12, 29, 18, 0, tzinfo=UTC), "days_to_birthday: {lte: 3}", "C38 C39", "C47"),  # C47 joins later
    (datetime(2024, 12, 29, 18, 0, tzinfo=UTC), "age: {eq: 39}", "C39", "C38"),
    (datetime(2024, 12, 29, 18, 0, tzinfo=UTC), "age: {eq: 24}", "C38", "C39"),
    # AT_PAST is 1 March in Shanghai, 28 February in UTC
    (AT_PAST, "days_to_birthday: {eq: 0}", "C45", "C02 C40 C44"),
    (AT_PAST, "days_to_birthday: {eq: 364}", "C02 C40 C44", "C45"),
    (AT_PAST, "age: {eq: 41}", "C02", "C44"),
    # 28 February of a common year: 29 February birthdays are today
    (datetime(2025, 2, 28, 12, 0, tzinfo=SHANGHAI), "days_to_birthday: {eq: 0}", "C02 C40 C44", "C45"),
    (datetime(2025, 2, 28, 12, 0, tzinfo=SHANGHAI), "days_to_birthday: {eq: 1}", "C45", "C02"),
    # a leap year: 28 February, 29 February, 1 March
    (datetime(2024, 2, 28, 12, 0, tzinfo=SHANGHAI), "days_to_birthday: {eq: 1}", "C44", "C40 C02"),
    (datetime(2024, 2, 28, 12, 0, tzinfo=SHANGHAI), "days_to_birthday: {eq: 0}", "C40", "C44"),
    (datetime(2024, 2, 29, 12, 0, tzinfo=SHANGHAI), "days_to_birthday: {eq: 0}", "C44", "C40 C45"),
    (datetime(2024, 2, 29, 12, 0, tzinfo=SHANGHAI), "days_to_birthday: {eq: 365}", "C40", "C44"),
    (datetime(2024, 2, 29, 12, 0, tzinfo=SHANGHAI), "age: {eq: 32}", "C44", "C40"),
    (datetime(2024, 3, 1, 12, 0, tzinfo=SHANGHAI), "days_to_birthday: {eq: 364}", "C44 C40", "C45"),
    (datetime(2024, 3, 1, 12, 0, tzinfo=SHANGHAI), "days_to_birthday: {eq: 0}", "C45", "C44"),
]


def test_birthdays_and_age(conn: Connection):
    checkers: dict[datetime, Checker] = {}
    for at, text, includes, excludes in BIRTHDAYS:
        checker = checkers.setdefault(at, Checker(conn, at))
        checker.check(text, includes=includes, excludes=excludes)
    for checker in checkers.values():
        checker.assert_clean()


# --- combinators, tags, named segments -----------------------------------------------------------------------

DORMANT = "{recency_days: {gte: 90}}"
BIG = "{monetary: {gte: 300}}"
SMS = "{consent_sms: true}"


def test_all_any_not_and_several_keys(conn: Connection):
    checker = Checker(conn, AT)
    check = checker.check
    dormant, big, sms = (checker.expected(x) for x in (DORMANT, BIG, SMS))
    assert dormant & big and dormant - big and big - dormant and sms & dormant
    assert check(f"all: [{DORMANT}, {BIG}]") == dormant & big
    assert check(f"any: [{DORMANT}, {BIG}]") == dormant | big
    assert check(f"not: [{DORMANT}]") == checker.model.member_ids - dormant
    assert check(f"not: [{DORMANT}, {BIG}]") == checker.model.member_ids - dormant - big  # none of them
    assert check(f"[{DORMANT}, {BIG}]") == dormant & big  # a list is all
    assert check("{recency_days: {gte: 90}, monetary: {gte: 300}}") == dormant & big  # several keys: all
    assert check(f"all: {DORMANT}") == dormant  # a single mapping where a list is expected
    assert check(f"not: {DORMANT}") == checker.model.member_ids - dormant
    check(f"all: [{DORMANT}, {BIG}, {SMS}]")
    check(f"any: [{{all: [{DORMANT}, {SMS}]}}, {{not: [{BIG}, {SMS}]}}]")
    check(f"not: [{{any: [{DORMANT}, {{all: [{BIG}, {SMS}]}}]}}]")
    check(f"all: [{{not: [{{not: [{DORMANT}]}}]}}, {BIG}]")
    check("{lifecycle: {in: [dormant, lost]}, consent_sms: true, orders_above_store_aov: {gte: 1}}")
    check("any: [{recency_days: {gte: 180}}, {not: [{recency_days: {gte: 0}}]}]", includes="C07 C09")
    check("province: 浙江", includes="C01", excludes="C13")
    check("not: [{province: 浙江}, {gender: female}]", includes="C04 C13", excludes="C01 C03")
    check("any: [{province: 浙江}, {gender: female}]", includes="C01 C03", excludes="C04 C13 C10")
    checker.assert_clean()


def test_tags(conn: Connection):
    checker = Checker(conn, AT)
    check = checker.check
    check("tag: vip", includes="C01 C38 C46", excludes="C03")
    check("tags_any: [vip, wechat_fan]", includes="C01 C18 C38", excludes="C07")
    check("tags_all: [vip, wechat_fan]", includes="C38", excludes="C01 C18")
    check("tags_all: [complained, vip]", includes="C46", excludes="C07 C01")
    check("not: [{tag: complained}]", includes="C01", excludes="C07 C12 C46")
    check("{tag: vip, recency_days: {lt: 90}}", includes="C01 C46", excludes="C24 C38")
    check("tag: no_such_tag", trivial=True)
    check("tags_any: [vip]", excludes="C11")  # C11 has no tags and is no member anyway
    checker.assert_clean()


def test_named_segments(conn: Connection):
    checker = Checker(conn, AT, NAMED)
    check = checker.check
    assert check("segment: dormant") == checker.expected(DORMANT)
    check("segment: big_spenders", includes="C02", excludes="C03")
    check("segment: dormant_big_spenders", includes="C24", excludes="C02 C05")
    check("not: [{segment: reachable}]", includes="C08 C13", excludes="C01")
    check("{segment: reachable, recency_days: {lt: 90}}")
    check("any: [{segment: big_spenders}, {segment: lunch_regulars}]", includes="C02 C33")
    check("all: [{segment: lunch_regulars}, {not: [{segment: dormant}]}]", includes="C33 C01")
    checker.assert_clean()


def test_every_fact_in_one_statement(conn: Connection):
    """All facts compose into one statement: their joins and correlated subqueries do not disturb each other."""
    parts = [
        "{recency_days: {lt: 200}}",
        "{frequency: {gte: 1}}",
        "{frequency: {within: 180d, gte: 1}}",
        "{monetary: {gt: 50}}",
        "{monetary: {within: 180d, gt: 0}}",
        "{aov: {gte: 40}}",
        "{first_order_days: {gte: 10}}",
        "{orders_above_store_aov: {gte: 0}}",
        "{rfm_r: {gte: 1}}",
        "{rfm_f: {gte: 1}}",
        "{rfm_m: {lte: 5}}",
        "{rfm_segment: {ne: lost}}",
        "{lifecycle: {ne: prospect}}",
        "{tier: {in: [regular, advanced]}}",
        "{clv: {gt: 0}}",
        "{province: {ne: 北京}}",
        "{city: {ne: 深圳}}",
        "{gender: {in: [female, male]}}",
        "{signup_days: {gte: 0}}",
        "{not: [{consent_email: false}, {consent_sms: false}]}",
        "{payment_share: {method: wechat_pay, lt: 1}}",
        "{daypart_orders: {daypart: afternoon, eq: 0}}",
        "{bought_category: {category: coffee, within: 365d}}",
    ]
    checker = Checker(conn, AT)
    checker.check("all: [" + ", ".join(parts) + "]")
    checker.check("any: [" + ", ".join(f"{{not: [{p}]}}" for p in parts) + "]")
    checker.check(
        "any: [{age: {gte: 30}}, {days_to_birthday: {lte: 10}}, {coupon_redemption_rate: {gte: 0.5}}, "
        "{tag: complained}]"
    )
    checker.assert_clean()


# --- time zones with daylight saving time ---------------------------------------------------------------------

BERLIN = ZoneInfo("Europe/Berlin")


def test_dayparts_use_each_orders_own_utc_offset_under_daylight_saving_time(conn: Connection):
    """A shop in Berlin, evaluated in summer: C01's order of 15 January at 04:00 UTC is 05:00 local (CET), late
    night, not breakfast; the product may not shift winter orders by the summer offset."""
    settings = Settings(timezone="Europe/Berlin")
    checker = Checker(conn, AT, settings)
    for daypart in settings.dayparts:
        checker.check(f"daypart_orders: {{daypart: {daypart}, gte: 1}}")
        checker.check(f"daypart_orders: {{daypart: {daypart}, eq: 1}}")
    checker.check("daypart_orders: {daypart: late, eq: 1}", includes="C01")
    checker.check("daypart_orders: {daypart: breakfast, eq: 2}", includes="C01")  # 06:05 CET, 06:45 CEST
    checker.assert_clean()


# C01 ordered on 2025-03-18 at 05:05 UTC; 30 days of 24 hours later, less half an hour, the order is inside a
# 30-day window (recency 29 days). In Berlin the window spans the switch to summer time on 30 March.
DST_AT = datetime(2025, 3, 18, 5, 5, tzinfo=UTC) + 30 * DAY - timedelta(minutes=30)


@pytest.mark.parametrize(
    "zone",
    [
        pytest.param(UTC, id="utc"),
        pytest.param(SHANGHAI, id="shanghai"),
        pytest.param(BERLIN, id="berlin"),
    ],
)
def test_windows_are_elapsed_time_whatever_the_zone_at_is_written_in(conn: Connection, zone):
    """The same instant written in any zone selects the same members: ``within: 30d`` is 30 × 24 hours, as
    recency_days counts days."""
    at = DST_AT.astimezone(zone)
    checker = Checker(conn, at)
    check = checker.check
    assert checker.model.value("C01", "recency_days", {}) == 29
    check("frequency: {within: 30d, gte: 1}", includes="C01")
    check("monetary: {within: 30d, eq: 210.00}", includes="C01")
    check("payment_share: {method: card, within: 30d, eq: 1}", includes="C01")
    check("daypart_orders: {daypart: lunch, within: 30d, eq: 1}", includes="C01")
    check("bought_category: {category: merch, within: 30d}", includes="C01")
    checker.assert_clean()


def test_window_edge_one_second(conn: Connection):
    """An order exactly ``within`` before ``at`` counts, one a second earlier does not, for every windowed fact."""
    order = next(o for o in dataset.ORDERS if o.order_id == "C47-03")  # 40.00, stored value, bakery
    assert order.ordered_at == AT - 30 * DAY
    for at, inside in ((AT, True), (AT + SECOND, False)):
        checker = Checker(conn, at)
        for text in (
            "bought_category: {category: bakery, within: 30d}",
            "monetary: {within: 30d, gte: 100}",
            "frequency: {within: 30d, eq: 2}",
            "payment_share: {method: card, within: 2592001s, gt: 0}",  # the card order: 30 days + 1 s before AT
        ):
            assert ("C47" in checker.check(text, trivial=True)) is inside, (text, at)
        checker.assert_clean()
