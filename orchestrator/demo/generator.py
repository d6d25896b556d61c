"""The seed shop (某网店): a deterministic demo member base that reproduces docs/domain.md ("The seed shop").

9,252 members over the ten months before ``SEED_SHOP_AT``; 8,280 of them bought; 10,764 paid orders (frequency
1.30) worth exactly 112 yuan each on average; 6,500 dormant for 90+ days, 6,100 for 180+; 31 big spenders over
1,000 yuan holding 4 % of revenue; 浙江, 四川 and 山东 converting best; most buyers' orders worth 100–200 yuan.
Every count multiplies by ``scale``. Another ``at`` shifts the whole window, so the figures hold as of that time.

How the figures come out exactly:

* counts are assigned first and randomised over members afterwards (``demo_plan``);
* revenue: amounts are drawn in whole jiao; a first pass replays only the amount draws to sum them, and the
  second pass spreads the difference to the target over the regular members' orders (a few jiao each), while the
  big spenders' amounts are split from totals that already sum to their share;
* recency: every paid order is placed at a chosen whole number of days before ``at`` (``demo_orders.place``).

Output is streamed member by member; nothing but the one-record-per-member plan is held in memory.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Iterator
from datetime import date, datetime
from functools import cached_property
from math import floor
from pathlib import Path
from zoneinfo import ZoneInfo

from orchestrator.data.records import CUSTOMER_COLUMNS, ORDER_COLUMNS
from orchestrator.demo import orders as orders
from orchestrator.demo import people as people
from orchestrator.demo.plan import BANDS, NEVER, MemberPlan, Targets, build_plan, targets

SHOP_TZ = ZoneInfo("Asia/Shanghai")
SEED_SHOP_AT = datetime(2026, 11, 1, tzinfo=SHOP_TZ)
WINDOW_MONTHS = 10

CUSTOMERS_FILE = "customers.csv"
ORDERS_FILE = "orders.csv"

VIP_SPEND_JIAO = 6000  # regular members with 600+ yuan carry the vip tag too, besides the big spenders
CHECKOUT_SIGNUP_SHARE = 0.45  # 支付即会员: these members signed up minutes before their first payment

Row = list[str]


def months_before(at: datetime, months: int) -> datetime:
    """The same wall-clock time ``months`` calendar months earlier (the day clamped to the month's length)."""
    year, month = divmod(at.year * 12 + at.month - 1 - months, 12)
    month += 1
    days_in_month = (date(year + month // 12, month % 12 + 1, 1) - date(year, month, 1)).days
    return at.replace(year=year, month=month, day=min(at.day, days_in_month))


class SeedShop:
    """The seed-shop preset: ``rows()`` yields each member with their orders, ``write_csv`` streams both files."""

    def __init__(self, seed: int = 42, scale: int = 1, at: datetime = SEED_SHOP_AT):
        if scale < 1:
            raise ValueError("scale must be a positive whole number")
        if at.tzinfo is None:
            raise ValueError("the reference time must carry a time zone")
        self.seed = seed
        self.scale = scale
        self.at = at.astimezone(SHOP_TZ)
        self.start = months_before(self.at, WINDOW_MONTHS)
        self.targets: Targets = targets(scale)
        self.window_days = (floor(self.at.timestamp()) - floor(self.start.timestamp())) // orders.DAY

    def _rng(self, stream: str) -> random.Random:
        """Independent random streams, so replaying the amounts never disturbs the other draws."""
        return random.Random(f"seed-shop/{self.seed}/{stream}")

    @cached_property
    def plan(self) -> list[MemberPlan]:
        return build_plan(self._rng("plan"), self.scale)

    @property
    def member_count(self) -> int:
        return self.targets.members

    @property
    def order_count(self) -> int:
        return self.targets.paid_orders + self.targets.unpaid_orders

    def write_csv(self, folder: Path) -> tuple[Path, Path]:
        """Write ``customers.csv`` and ``orders.csv`` into ``folder`` (created if missing), streaming rows."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        customers_path, orders_path = folder / CUSTOMERS_FILE, folder / ORDERS_FILE
        with (
            customers_path.open("w", encoding="utf-8", newline="") as customers_file,
            orders_path.open("w", encoding="utf-8", newline="") as orders_file,
        ):
            customers_csv = csv.writer(customers_file, lineterminator="\n")
            orders_csv = csv.writer(orders_file, lineterminator="\n")
            customers_csv.writerow(CUSTOMER_COLUMNS)
            orders_csv.writerow(ORDER_COLUMNS)
            for customer, member_orders in self.rows():
                customers_csv.writerow(customer)
                orders_csv.writerows(member_orders)
        return customers_path, orders_path

    def rows(self) -> Iterator[tuple[Row, list[Row]]]:
        """Each member's customer row and order rows (chronological), in customer-id order, as CSV strings."""
        plan = self.plan
        correction = self._correction()
        amounts_rng, rng = self._rng("amounts"), self._rng("details")
        writer = _MemberWriter(rng, floor(self.at.timestamp()), self.window_days, self.at.date())
        regular_orders_seen = 0
        for index, member in enumerate(plan):
            amounts: list[int] = []
            if member.band != NEVER:
                amounts = orders.paid_amounts(amounts_rng, member)
                if not member.big:
                    amounts = [a + correction(regular_orders_seen + i) for i, a in enumerate(amounts)]
                    regular_orders_seen += len(amounts)
            yield writer.member(index, member, amounts)

    def _correction(self) -> Callable[[int], int]:
        """Per regular order, the jiao to add so that paid revenue is exactly AOV × paid orders."""
        rng = self._rng("amounts")
        raw = count = 0
        for member in self.plan:
            if member.band != NEVER:
                amounts = orders.paid_amounts(rng, member)
                if not member.big:
                    raw += sum(amounts)
                    count += len(amounts)
        goal = self.targets.revenue_jiao - self.targets.big_revenue_jiao
        each, extra = divmod(goal - raw, count)
        if abs(each) > 100:  # more than 10 yuan an order would bend the shape; the draws are calibrated to ~0
            raise AssertionError(f"the seed shop's amount draws are off by {each / 10:.1f} yuan an order")
        return lambda position: each + 1 if position < extra else each


class _MemberWriter:
    """Turns one planned member (and their paid amounts) into CSV rows; holds the uniqueness sets and id counter."""

    def __init__(self, rng: random.Random, at: int, window_days: int, today: date):
        self.rng = rng
        self.at = at  # epoch seconds
        self.start = at - window_days * orders.DAY
        self.window_days = window_days
        self.today = today
        self.iso = orders.IsoClock()
        self.phones: set[str] = set()
        self.emails: set[str] = set()
        self.next_order = 1

    def member(self, index: int, member: MemberPlan, amounts: list[int]) -> tuple[Row, list[Row]]:
        rng = self.rng
        customer_id = f"C{index + 1:07d}"
        who = people.person(rng, self.today)
        phone = people.unique_phone(rng, self.phones) if rng.random() < 0.97 else ""
        email = people.unique_email(rng, who, self.emails) if rng.random() < 0.91 else ""
        openid = people.wechat_openid(rng) if rng.random() < 0.4 else ""
        paid = self._paid_orders(member, amounts)
        signup = self._signup(paid[0][0] if paid else None)
        unpaid = self._unpaid_order(member, paid[0][0]) if member.unpaid else []
        all_orders = sorted(paid + unpaid, key=lambda o: o[0])
        order_rows = [self._order_row(customer_id, member, o) for o in all_orders]
        email_opt_in = bool(email) and rng.random() < (0.2 if member.complained else 0.6)
        sms_opt_in = bool(phone) and rng.random() < (0.3 if member.complained else 0.83)
        tags = self._tags(member, sum(amounts), bool(openid), email_opt_in)
        customer = [
            customer_id,
            who.name,
            email,
            phone,
            people.province_name(member.province),
            people.city(rng, member.province),
            who.gender,
            who.birthday.isoformat() if who.birthday else "",
            self.iso(signup),
            ";".join(tags),
            "true" if email_opt_in else "false",
            "true" if sms_opt_in else "false",
            openid,
            people.timezone(rng),
        ]
        return customer, order_rows

    # each order is (instant, amount in jiao, status, daypart, recency)
    def _paid_orders(self, member: MemberPlan, amounts: list[int]) -> list[tuple[int, int, str, int, int]]:
        if not amounts:
            return []
        rng = self.rng
        low, high = BANDS[member.band]
        k = len(amounts)
        last = rng.randrange(low, (high if high is not None else self.window_days - k + 1))
        earlier = rng.sample(range(last + 1, self.window_days), k - 1)
        recencies = sorted([last, *earlier], reverse=True)
        placed = []
        for recency, amount in zip(recencies, amounts, strict=True):
            part = orders.daypart(rng, member.persona)
            instant = orders.place(self.at, recency, orders.time_of_day(rng, part))
            placed.append((instant, amount, "paid", part, recency))
        return placed

    def _unpaid_order(self, member: MemberPlan, first_paid: int) -> list[tuple[int, int, str, int, int]]:
        """One refunded or cancelled order after the first payment; it must never count as a purchase."""
        rng = self.rng
        first_recency = (self.at - first_paid) // orders.DAY
        recency = rng.randint(0, first_recency)
        part = orders.daypart(rng, member.persona)
        instant = orders.place(self.at, recency, orders.time_of_day(rng, part))
        if instant <= first_paid:
            instant = min(first_paid + rng.randint(60, 7200), self.at)
            recency = (self.at - instant) // orders.DAY
        return [(instant, orders.unpaid_amount(rng), member.unpaid, part, recency)]

    def _signup(self, first_order: int | None) -> int:
        """Buyers sign up before their first order (often at the checkout); the others any time in the window."""
        rng = self.rng
        if first_order is None:
            return self.start + rng.randrange(self.at - self.start)
        gap = rng.randint(60, 900) if rng.random() < CHECKOUT_SIGNUP_SHARE else rng.randint(3600, 45 * orders.DAY)
        signup = first_order - gap
        return signup if signup >= self.start else self.start + rng.randrange(first_order - self.start)

    def _order_row(self, customer_id: str, member: MemberPlan, order: tuple[int, int, str, int, int]) -> Row:
        rng = self.rng
        instant, amount, status, part, recency = order
        member_channel = orders.channel(rng, member.persona)
        row = [
            f"O{self.next_order:08d}",
            customer_id,
            self.iso(instant),
            orders.format_jiao(amount),
            status,
            member_channel,
            orders.payment_method(rng, member.stored_value, member_channel),
            "",
            orders.category(rng, part, recency),
        ]
        self.next_order += 1
        return row

    def _tags(self, member: MemberPlan, spend_jiao: int, has_openid: bool, email_opt_in: bool) -> list[str]:
        rng = self.rng
        tags = []
        if member.big or spend_jiao >= VIP_SPEND_JIAO:
            tags.append("vip")
        if has_openid and rng.random() < 0.9:
            tags.append("wechat_follower")
        if email_opt_in and rng.random() < 0.5:
            tags.append("newsletter")
        if member.stored_value:
            tags.append("stored_value_card")
        if member.complained:
            tags.append("complained")
        if member.employee:
            tags.append("employee")
        return tags
