"""How a demo member buys: order amounts, times of day, categories, channels and payment methods.

Amounts are whole jiao (0.10 yuan) so that every sum is an exact integer and prices end like a shop's do
(128.00, 99.50). Times are integer epoch seconds in shop time (Asia/Shanghai, UTC+8 all year), which keeps the
recency arithmetic exact: an order placed ``r`` whole days before the reference time has recency ``r``.
"""

from __future__ import annotations

import random
from datetime import date

from orchestrator.demo.people import Picker
from orchestrator.demo.plan import (
    DINNER_REGULAR,
    HIGH_TICKET,
    LOW_TICKET,
    LUNCH_REGULAR,
    MemberPlan,
)

DAY = 86_400
SHOP_OFFSET = 8 * 3600  # Asia/Shanghai has had no daylight saving time since 1991
REGULAR_CAP_JIAO = 9000  # a regular member never reaches the 1,000-yuan big-spender threshold
MIN_PRICE_YUAN, MAX_PRICE_YUAN = 30, 600

MORNING, LUNCH, AFTERNOON, DINNER, EVENING = range(5)
# (start, end, peak) in seconds after local midnight; lunch and dinner match the daypart facts (11–14, 17–21)
DAYPART_HOURS = {
    MORNING: (7.5 * 3600, 11 * 3600, 9.5 * 3600),
    LUNCH: (11 * 3600, 14 * 3600, 12.25 * 3600),
    AFTERNOON: (14 * 3600, 17 * 3600, 15.5 * 3600),
    DINNER: (17 * 3600, 21 * 3600, 18.75 * 3600),
    EVENING: (21 * 3600, 23.99 * 3600, 21.5 * 3600),
}
_ANY_DAYPART = Picker([MORNING, LUNCH, AFTERNOON, DINNER, EVENING], [14, 36, 14, 28, 8])
_REGULAR_SHARE = 0.85  # share of a lunch (dinner) regular's orders placed at lunch (dinner)

CATEGORIES = ("coffee", "tea", "bakery", "cakes", "set_meals", "snacks", "gift_boxes", "merchandise", "mooncakes")
SEASONAL_CATEGORY = "mooncakes"
# the season of the seasonal best-seller, in days before the reference time (Mid-Autumn for the default one)
SEASON_DAYS = (20, 85)
_CATEGORY_WEIGHTS = {
    MORNING: (35, 10, 30, 4, 6, 8, 4, 3),
    LUNCH: (12, 12, 10, 5, 45, 8, 4, 4),
    AFTERNOON: (18, 25, 12, 18, 5, 14, 5, 3),
    DINNER: (5, 12, 8, 12, 45, 10, 5, 3),
    EVENING: (4, 15, 10, 15, 15, 25, 10, 6),
}
_SEASONAL_WEIGHT = 60
_CATEGORY = {
    (part, season): Picker(CATEGORIES, [*weights, _SEASONAL_WEIGHT if season else 0])
    for part, weights in _CATEGORY_WEIGHTS.items()
    for season in (False, True)
}
_CHANNEL = Picker(("store", "online", "mini_program"), (45, 25, 30))
_CHANNEL_REGULAR = Picker(("store", "online", "mini_program"), (60, 8, 32))
_PAYMENT = Picker(("wechat_pay", "alipay", "bank_card", "cash", "stored_value"), (52, 33, 9, 5, 1))
_PAYMENT_CARD_HOLDER = Picker(("stored_value", "wechat_pay", "alipay"), (70, 20, 10))


# ---- amounts -------------------------------------------------------------------------------------------------


def paid_amounts(rng: random.Random, member: MemberPlan) -> list[int]:
    """The member's paid order amounts in jiao, before the shop-wide correction that makes revenue exact.

    Draws from ``rng`` depend only on the plan, so replaying them gives the same amounts (the generator sums them
    in a first pass to compute the correction).
    """
    if member.big:
        return _split(rng, member.big_total, member.orders)
    ticket = _ticket(rng, member.ticket)
    if member.orders == 1:
        return [_price(rng, ticket)]
    amounts = [_price(rng, ticket * rng.uniform(0.8, 1.2)) for _ in range(member.orders)]
    total = sum(amounts)
    if total > REGULAR_CAP_JIAO:
        amounts = [a * REGULAR_CAP_JIAO // total for a in amounts]
    return amounts


def _ticket(rng: random.Random, ticket_class: int) -> float:
    """A member's typical order value in yuan: most 100–200, some 30–99, a few 200–600."""
    if ticket_class == LOW_TICKET:
        return 30 + 69 * rng.betavariate(1.2, 2.5)
    if ticket_class == HIGH_TICKET:
        return 200 + 400 * rng.betavariate(1.0, 3.0)
    return 100 + 100 * rng.betavariate(1.1, 3.2)


def _price(rng: random.Random, yuan: float) -> int:
    yuan = min(max(yuan, MIN_PRICE_YUAN), MAX_PRICE_YUAN)
    return round(yuan) * 10 if rng.random() < 0.6 else round(yuan * 10)


def _split(rng: random.Random, total: int, parts: int) -> list[int]:
    """``parts`` amounts of similar size summing to exactly ``total``."""
    weights = [rng.uniform(0.6, 1.4) for _ in range(parts)]
    whole = sum(weights)
    amounts = [int(total * w / whole) for w in weights]
    for i in range(total - sum(amounts)):
        amounts[i % parts] += 1
    return amounts


def unpaid_amount(rng: random.Random) -> int:
    return _price(rng, 100 + 100 * rng.betavariate(1.1, 3.4) if rng.random() < 0.7 else 30 + 69 * rng.random())


def format_jiao(jiao: int) -> str:
    return f"{jiao // 10}.{jiao % 10}0"


# ---- times ---------------------------------------------------------------------------------------------------


def daypart(rng: random.Random, persona: int) -> int:
    if persona == LUNCH_REGULAR and rng.random() < _REGULAR_SHARE:
        return LUNCH
    if persona == DINNER_REGULAR and rng.random() < _REGULAR_SHARE:
        return DINNER
    return _ANY_DAYPART(rng)


def time_of_day(rng: random.Random, part: int) -> int:
    """Seconds after local midnight, peaking inside the daypart (12:15 at lunch, 18:45 at dinner)."""
    low, high, peak = DAYPART_HOURS[part]
    return min(int(rng.triangular(low, high, peak)), int(high) - 1)


def place(at: int, recency: int, seconds_of_day: int) -> int:
    """The instant with the given local time of day whose recency as of ``at`` is exactly ``recency`` days.

    The instants with recency ``r`` form the 24 hours (at - (r+1) days, at - r days]; every local time of day
    occurs exactly once in them.
    """
    latest = at - recency * DAY
    midnight = latest - (latest + SHOP_OFFSET) % DAY
    instant = midnight + seconds_of_day
    return instant - DAY if instant > latest else instant


class IsoClock:
    """Formats epoch seconds as ISO 8601 in shop time, caching the date part (much faster than datetime)."""

    def __init__(self) -> None:
        self._dates: dict[int, str] = {}
        self._epoch_ordinal = date(1970, 1, 1).toordinal()

    def __call__(self, instant: int) -> str:
        days, seconds = divmod(instant + SHOP_OFFSET, DAY)
        text = self._dates.get(days)
        if text is None:
            text = self._dates[days] = date.fromordinal(self._epoch_ordinal + days).isoformat()
        hours, rest = divmod(seconds, 3600)
        return f"{text}T{hours:02d}:{rest // 60:02d}:{rest % 60:02d}+08:00"


# ---- what, where, how ----------------------------------------------------------------------------------------


def category(rng: random.Random, part: int, recency: int) -> str:
    return _CATEGORY[part, SEASON_DAYS[0] <= recency < SEASON_DAYS[1]](rng)


def channel(rng: random.Random, persona: int) -> str:
    return (_CHANNEL_REGULAR if persona in (LUNCH_REGULAR, DINNER_REGULAR) else _CHANNEL)(rng)


def payment_method(rng: random.Random, card_holder: bool, order_channel: str) -> str:
    method = (_PAYMENT_CARD_HOLDER if card_holder else _PAYMENT)(rng)
    return "wechat_pay" if method == "cash" and order_channel != "store" else method
