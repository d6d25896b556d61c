"""The seed shop's plan: who buys, how often, how recently, by construction.

The figures of docs/domain.md ("The seed shop") must come out exactly, so every counted figure is assigned as a
count first (so many buyers per province, so many members with 3 orders, so many dormant) and only then randomised
over members. Probabilities are used only for traits no figure depends on (personas, ticket classes). The plan is one
small record per member; the orders themselves are generated later, member by member, and streamed to disk.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from orchestrator.demo.people import Picker, province_name, province_weights

# the seed shop at scale 1; every count multiplies by the scale
MEMBERS = 9252
BUYERS = 8280
PAID_ORDERS = 10764
AOV_YUAN = 112
DORMANT_90 = 6500
DORMANT_180 = 6100
BIG_SPENDERS = 31
BIG_SPENDER_THRESHOLD_YUAN = 1000
BIG_SHARE = 0.04
COMPLAINED = 92
EMPLOYEES = 6
REFUNDED = 150
CANCELLED = 65

# regular (not big-spender) buyers with more than two paid orders, per unit of scale; two-order buyers take up the
# rest of the order count and everyone else orders once
MULTI_ORDER_SHAPE = {8: 4, 7: 8, 6: 18, 5: 35, 4: 85, 3: 250}
BIG_SPENDER_BANDS = (14, 5, 12)  # active, dormant 90–179, lost 180+
BIG_SPENDER_ORDERS = (6, 11)
BIG_SPENDER_MIN_YUAN = 1080
# how much likelier a k-order member is to be among the recent ones (frequent buyers stay active longer)
ACTIVITY_WEIGHT = {1: 1.0, 2: 2.5}
ACTIVITY_WEIGHT_FREQUENT = 4.0

TOP_PROVINCES = {"浙江": 0.955, "四川": 0.95, "山东": 0.945}
OTHER_PROVINCE_SPREAD = (-0.025, 0.01)

NEVER, ACTIVE, DORMANT, LOST = -1, 0, 1, 2
BANDS = {ACTIVE: (0, 90), DORMANT: (90, 180), LOST: (180, None)}  # recency of the last paid order, in days
ANY_TIME, LUNCH_REGULAR, DINNER_REGULAR = 0, 1, 2
LOW_TICKET, MID_TICKET, HIGH_TICKET = 0, 1, 2


@dataclass(slots=True)
class MemberPlan:
    province: int
    band: int = NEVER
    orders: int = 0  # paid orders
    big_total: int = 0  # a big spender's cumulative spend, in jiao (0.10 yuan); 0 for everyone else
    ticket: int = MID_TICKET
    persona: int = ANY_TIME
    stored_value: bool = False
    unpaid: str = ""  # "refunded" or "cancelled": one extra order that is not paid
    complained: bool = False
    employee: bool = False

    @property
    def big(self) -> bool:
        return self.big_total > 0


@dataclass(frozen=True, slots=True)
class Targets:
    """The figures the plan guarantees (money in jiao, so every sum is an exact integer)."""

    members: int
    buying: int
    paid_orders: int
    revenue_jiao: int
    dormant_90: int
    dormant_180: int
    big_spenders: int
    big_revenue_jiao: int
    unpaid_orders: int

    @property
    def aov(self) -> float:
        return self.revenue_jiao / 10 / self.paid_orders


def targets(scale: int) -> Targets:
    paid = PAID_ORDERS * scale
    revenue_jiao = AOV_YUAN * paid * 10
    return Targets(
        members=MEMBERS * scale,
        buying=BUYERS * scale,
        paid_orders=paid,
        revenue_jiao=revenue_jiao,
        dormant_90=DORMANT_90 * scale,
        dormant_180=DORMANT_180 * scale,
        big_spenders=BIG_SPENDERS * scale,
        big_revenue_jiao=round(BIG_SHARE * revenue_jiao / 10) * 10,
        unpaid_orders=(REFUNDED + CANCELLED) * scale,
    )


def build_plan(rng: random.Random, scale: int) -> list[MemberPlan]:
    """One record per member, in customer-id order, with every counted figure fixed by construction."""
    goal = targets(scale)
    members = [MemberPlan(province=p) for p in _province_labels(rng, goal.members)]
    buyers = _choose_buyers(rng, members, goal.buying)
    big = set(rng.sample(range(len(buyers)), goal.big_spenders))
    big_buyers = [m for i, m in enumerate(buyers) if i in big]
    regular = [m for i, m in enumerate(buyers) if i not in big]
    _plan_big_spenders(rng, big_buyers, scale, goal.big_revenue_jiao)
    big_orders = sum(m.orders for m in big_buyers)
    _plan_order_counts(rng, regular, goal.paid_orders - big_orders, scale)
    _plan_bands(rng, regular, scale)
    for member in buyers:
        _plan_traits(rng, member)
    for i, index in enumerate(rng.sample(range(len(buyers)), goal.unpaid_orders)):
        buyers[index].unpaid = "refunded" if i < REFUNDED * scale else "cancelled"
    for index in rng.sample(range(len(members)), COMPLAINED * scale):
        members[index].complained = True
    for index in rng.sample(range(len(members)), EMPLOYEES * scale):
        members[index].employee = True
    return members


def _largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Integer shares of ``total`` proportional to ``weights`` that sum to exactly ``total``."""
    whole = sum(weights)
    raw = [total * w / whole for w in weights]
    counts = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _province_labels(rng: random.Random, total: int) -> list[int]:
    labels = [p for p, n in enumerate(_largest_remainder(total, province_weights())) for _ in range(n)]
    rng.shuffle(labels)
    return labels


def _buyers_per_province(rng: random.Random, sizes: list[int], buying: int) -> list[int]:
    """Buyers per province: the top three convert best, the others near the rate that makes the total exact."""
    names = [province_name(p) for p in range(len(sizes))]
    top = [p for p, name in enumerate(names) if name in TOP_PROVINCES]
    counts = [round(TOP_PROVINCES[names[p]] * sizes[p]) if p in top else 0 for p in range(len(sizes))]
    others = [p for p in range(len(sizes)) if p not in top]
    base = (buying - sum(counts)) / sum(sizes[p] for p in others)
    low, high = OTHER_PROVINCE_SPREAD
    for p in others:
        counts[p] = min(sizes[p], round((base + rng.uniform(low, high)) * sizes[p]))
    others.sort(key=lambda p: -sizes[p])
    for step in range(len(others) * max(sizes)):
        gap = buying - sum(counts)
        if gap == 0:
            return counts
        p = others[step % len(others)]
        counts[p] += 1 if gap > 0 and counts[p] < sizes[p] else -1 if gap < 0 and counts[p] > 0 else 0
    raise AssertionError("cannot place the seed shop's buyers in its provinces")


def _choose_buyers(rng: random.Random, members: list[MemberPlan], buying: int) -> list[MemberPlan]:
    sizes = [0] * len(province_weights())
    for member in members:
        sizes[member.province] += 1
    per_province: list[list[int]] = [[] for _ in sizes]
    for index, member in enumerate(members):
        per_province[member.province].append(index)
    chosen: list[int] = []
    for indices, count in zip(per_province, _buyers_per_province(rng, sizes, buying), strict=True):
        chosen.extend(rng.sample(indices, count))
    chosen.sort()
    for index in chosen:
        members[index].band = ACTIVE  # provisional: a buyer; the real band is set below
    return [members[i] for i in chosen]


def _plan_big_spenders(rng: random.Random, big: list[MemberPlan], scale: int, revenue_jiao: int) -> None:
    """Big spenders' totals: each above the threshold, together exactly the planned share of revenue."""
    bands = [band for band, n in zip((ACTIVE, DORMANT, LOST), BIG_SPENDER_BANDS, strict=True) for _ in range(n * scale)]
    rng.shuffle(bands)
    floor_jiao = BIG_SPENDER_MIN_YUAN * 10
    extra = _largest_remainder(revenue_jiao - floor_jiao * len(big), [rng.expovariate(1.0) for _ in big])
    for member, band, more in zip(big, bands, extra, strict=True):
        member.band = band
        member.orders = rng.randint(*BIG_SPENDER_ORDERS)
        member.big_total = floor_jiao + more
        member.ticket = HIGH_TICKET


def _plan_order_counts(rng: random.Random, regular: list[MemberPlan], orders: int, scale: int) -> None:
    counts = [k for k, n in MULTI_ORDER_SHAPE.items() for _ in range(n * scale)]
    twice = orders - len(regular) - sum(k - 1 for k in counts)
    if twice < 0 or len(counts) + twice > len(regular):
        raise AssertionError("the multi-order shape does not fit the seed shop's order count")
    counts += [2] * twice
    counts += [1] * (len(regular) - len(counts))
    rng.shuffle(counts)
    for member, k in zip(regular, counts, strict=True):
        member.orders = k


def _plan_bands(rng: random.Random, regular: list[MemberPlan], scale: int) -> None:
    """Exactly so many active, dormant and lost regulars; frequent buyers are likelier to be the active ones.

    A weighted sample without replacement (Efraimidis–Spirakis keys) keeps the counts exact and the bias soft.
    """
    active = (BUYERS - DORMANT_90 - BIG_SPENDER_BANDS[0]) * scale
    dormant = (DORMANT_90 - DORMANT_180 - BIG_SPENDER_BANDS[1]) * scale
    keys = [rng.random() ** (1.0 / ACTIVITY_WEIGHT.get(m.orders, ACTIVITY_WEIGHT_FREQUENT)) for m in regular]
    order = sorted(range(len(regular)), key=lambda i: -keys[i])
    for rank, index in enumerate(order):
        regular[index].band = ACTIVE if rank < active else DORMANT if rank < active + dormant else LOST


_TICKET_BY_ORDERS = {
    1: Picker([LOW_TICKET, MID_TICKET, HIGH_TICKET], [27, 70, 3]),
    2: Picker([LOW_TICKET, MID_TICKET, HIGH_TICKET], [25, 72, 3]),
}
_TICKET_FREQUENT = Picker([LOW_TICKET, MID_TICKET], [32, 68])
_PERSONA_BY_ORDERS = {1: Picker([ANY_TIME], [1]), 2: Picker([ANY_TIME, LUNCH_REGULAR, DINNER_REGULAR], [70, 15, 15])}
_PERSONA_FREQUENT = Picker([ANY_TIME, LUNCH_REGULAR, DINNER_REGULAR], [35, 35, 30])
_STORED_VALUE_SHARE = {1: 0.02, 2: 0.12}


def _plan_traits(rng: random.Random, member: MemberPlan) -> None:
    """Traits no figure depends on: ticket class, daypart persona, stored-value card."""
    k = member.orders
    if not member.big:
        member.ticket = _TICKET_BY_ORDERS.get(k, _TICKET_FREQUENT)(rng)
    member.persona = _PERSONA_BY_ORDERS.get(k, _PERSONA_FREQUENT)(rng)
    share = 0.5 if member.big else _STORED_VALUE_SHARE.get(k, 0.3)
    member.stored_value = rng.random() < share
