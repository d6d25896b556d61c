"""A small hand-made shop with the edge cases of docs/domain.md, and a plain-Python model of its facts.

The data (``CUSTOMERS``, ``ORDERS``) is written so that each case is visible where it is defined; ``load(engine)``
inserts it with SQLAlchemy Core. ``expected_facts(at, settings)`` recomputes every per-customer fact from these
Python objects alone (no SQL), so tests of the facts, the report and the segment compiler compare the database
with an independent computation.

Evaluation times:

* ``AT`` (2025-07-01 10:00 Shanghai) — the main "now";
* ``AT_PAST`` (2025-03-01 00:00 Shanghai) — a backtest, with orders exactly at and one second after it;
* ``AT_BEFORE_ORDERS`` — before the first order: members exist, nobody has bought.

Edge cases (customer ids in brackets):

* refunded and cancelled orders never count [C03, C12, C31, C32]; a member with only such orders [C12];
* orders after ``AT`` are ignored [C04, C15]; an order exactly at ``AT``, written at -03:00, counts [C15];
* recency exactly 90 days [C05] and 90 days less a second [C06]; exactly 180 days [C07] and 180 less a second [C08];
* members without orders [C09, C10, C25]; signup NULL [C10, C34]; signup exactly at ``AT`` [C25];
* signed up after ``AT`` (not a member, even with an earlier order) [C11, C26]; joined between the two times [C36];
* orders written with different UTC offsets around midnight [C14, C15, C29, C30, C31];
* big spenders: just over 1000 [C02], exactly 1000 [C03], over only if a future order counted [C04], one order [C34];
* ties in frequency and monetary [C16, C17, C18] and [C19, C20], the latter also tied in recency days;
* average order value on band edges: exactly 100.00 [C27], 200.00 [C28], 199.99 [C29], 99.99 [C30];
* first order exactly ``new_days`` ago [C22] and a day more [C23];
* several provinces, one member without a province [C13]; amounts with fen throughout;
* birthdays: 2 January and 30 December (the year's end) [C38, C39], 28 and 29 February [C40; C02, C44], 1 March
  [C45], on ``AT``'s date, the day before and the day after [C41, C42, C43], 31 December [C47];
* orders on the edges of the dayparts, some written in offsets whose date differs from Shanghai's [C46];
* orders exactly 30 days before ``AT`` and a second more, with chosen payment methods and categories [C47];
* coupons (``COUPONS``) issued and redeemed before, exactly at and after ``AT`` and ``AT_PAST``.

``FactModel(at, settings)`` extends the reference to every fact of the condition language (windows, payment
shares, dayparts, categories, birthdays, age, consent, coupon redemption).
"""

from __future__ import annotations

from calendar import isleap
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, insert, select

from orchestrator.config import Settings
from orchestrator.db.models import Coupon, Customer, CustomerConsent, CustomerTag, Order

SHANGHAI = ZoneInfo("Asia/Shanghai")
AT = datetime(2025, 7, 1, 10, 0, tzinfo=SHANGHAI)
AT_PAST = datetime(2025, 3, 1, 0, 0, tzinfo=SHANGHAI)
AT_BEFORE_ORDERS = datetime(2024, 1, 1, 0, 0, tzinfo=UTC)
LOADED_AT = datetime(2025, 7, 2, tzinfo=UTC)


def t(text: str) -> datetime:
    """An ISO 8601 time with its offset, as a shop's export would write it."""
    value = datetime.fromisoformat(text)
    assert value.tzinfo is not None, text
    return value


def offset(hours: int) -> timezone:
    """A fixed UTC offset, as in ``-05:00``."""
    return timezone(timedelta(hours=hours))


@dataclass(frozen=True)
class CustomerRow:
    customer_id: str
    province: str | None
    city: str | None
    signup_at: datetime | None
    gender: str | None = None
    birthday: date | None = None
    email: str | None = None
    phone: str | None = None
    tags: tuple[str, ...] = ()
    consents: dict[str, bool] = field(default_factory=dict)

    def is_member(self, at: datetime) -> bool:
        return self.signup_at is None or self.signup_at <= at


@dataclass(frozen=True)
class OrderRow:
    order_id: str
    customer_id: str
    ordered_at: datetime
    amount: Decimal
    status: str = "paid"
    channel: str | None = None
    payment_method: str | None = None
    category: str | None = None


def _c(customer_id: str, province: str | None, city: str | None, signup: str | None, **extra) -> CustomerRow:
    return CustomerRow(customer_id, province, city, t(signup) if signup else None, **extra)


CUSTOMERS: tuple[CustomerRow, ...] = (
    _c("C01", "浙江", "杭州", "2024-03-05T09:00:00+08:00", gender="female", birthday=date(1990, 7, 8),
       email="c01@example.com", phone="+8613800000001", tags=("vip",), consents={"email": True, "sms": True}),
    _c("C02", "浙江", "宁波", "2024-10-01T12:00:00+08:00", gender="male", birthday=date(1984, 2, 29),
       phone="+8613800000002", tags=("vip",), consents={"sms": True}),
    _c("C03", "四川", "成都", "2024-06-18T08:30:00+08:00", gender="female", email="c03@example.com",
       consents={"email": True, "sms": False}),
    _c("C04", "四川", "成都", "2024-09-09T09:09:09+08:00", gender="male", phone="+8613800000004",
       consents={"sms": True}),
    _c("C05", "山东", "济南", "2024-12-01T10:00:00+08:00", gender="female", phone="+8613800000005",
       consents={"sms": True}),
    _c("C06", "山东", "青岛", "2024-12-15T10:00:00+08:00", gender="male", email="c06@example.com",
       consents={"email": True}),
    _c("C07", "广东", "广州", "2024-11-30T23:00:00+08:00", gender="female", phone="+8613800000007",
       tags=("complained",), consents={"sms": True}),
    _c("C08", "广东", "深圳", "2024-12-20T20:00:00+08:00", gender="male"),
    _c("C09", "江苏", "南京", "2024-08-01T09:00:00+08:00", gender="female", email="c09@example.com",
       consents={"email": True}),
    _c("C10", "江苏", "苏州", None, gender=None, phone="+8613800000010", consents={"sms": True}),
    _c("C11", "北京", "北京", "2025-07-15T09:00:00+08:00", gender="male", phone="+8613800000011",
       consents={"sms": True}),
    _c("C12", "北京", "北京", "2024-05-20T14:00:00+08:00", gender="female", email="c12@example.com",
       tags=("complained",), consents={"email": False}),
    _c("C13", None, None, "2025-01-10T10:00:00+00:00", gender=None),
    _c("C14", "浙江", "温州", "2025-02-01T00:00:00-05:00", gender="female", birthday=date(1995, 7, 3),
       email="c14@example.com", consents={"email": True, "sms": True}),
    _c("C15", "四川", "绵阳", "2024-12-01T00:00:00-03:00", gender="male", phone="+8613800000015",
       consents={"sms": True}),
    _c("C16", "山东", "烟台", "2025-01-01T00:00:00+08:00", gender="female", phone="+8613800000016"),
    _c("C17", "山东", "威海", "2025-01-15T00:00:00+08:00", gender="male", email="c17@example.com",
       consents={"email": True}),
    _c("C18", "浙江", "嘉兴", "2024-12-01T00:00:00+08:00", gender="female", phone="+8613800000018",
       tags=("wechat_fan",), consents={"sms": True, "wechat": True}),
    _c("C19", "江苏", "无锡", "2024-12-25T00:00:00+08:00", gender="male", phone="+8613800000019",
       consents={"sms": True}),
    _c("C20", "广东", "东莞", "2025-01-20T00:00:00+08:00", gender="female", email="c20@example.com",
       consents={"email": True}),
    _c("C21", "浙江", "杭州", "2025-06-20T09:00:00+08:00", gender="female", birthday=date(2000, 7, 10),
       phone="+8613800000021", consents={"sms": True}),
    _c("C22", "四川", "成都", "2025-05-31T00:00:00+08:00", gender="male", email="c22@example.com"),
    _c("C23", "山东", "济南", "2025-05-30T00:00:00+08:00", gender="female", phone="+8613800000023",
       consents={"sms": True}),
    _c("C24", "广东", "广州", "2024-02-01T00:00:00+08:00", gender="male", phone="+8613800000024",
       tags=("vip",), consents={"sms": True}),
    _c("C25", "江苏", "南京", "2025-07-01T02:00:00+00:00", gender="female", email="c25@example.com",
       consents={"email": True}),
    _c("C26", "北京", "北京", "2025-07-01T10:00:01+08:00", gender="male"),
    _c("C27", "浙江", "杭州", "2025-03-01T00:00:00+08:00", gender="male", phone="+8613800000027",
       consents={"sms": True}),
    _c("C28", "四川", "成都", "2025-05-01T00:00:00+08:00", gender="female", email="c28@example.com"),
    _c("C29", "江苏", "苏州", "2025-02-01T00:00:00+08:00", gender="male", phone="+8613800000029"),
    _c("C30", "北京", "北京", "2025-02-01T00:00:00+08:00", gender="female", email="c30@example.com",
       consents={"email": True}),
    _c("C31", "广东", "深圳", "2025-04-01T00:00:00+08:00", gender="male", phone="+8613800000031",
       consents={"sms": True}),
    _c("C32", "浙江", "台州", "2024-09-01T00:00:00+08:00", gender="female", email="c32@example.com",
       consents={"email": True}),
    _c("C33", "山东", "青岛", "2025-02-20T00:00:00+08:00", gender="male", phone="+8613800000033",
       tags=("wechat_fan",), consents={"sms": True, "wechat": True}),
    _c("C34", "四川", "成都", None, gender="female", email="c34@example.com", consents={"email": True}),
    _c("C35", "江苏", "南京", "2024-12-30T00:00:00+08:00", gender="male"),
    _c("C36", "广东", "佛山", "2025-04-01T00:00:00+08:00", gender="female", phone="+8613800000036",
       consents={"sms": False}),
    _c("C37", "浙江", "湖州", "2025-01-05T00:00:00+08:00", gender="male", email="c37@example.com"),
    # birthdays on the edges of the calendar (prospects: they change no order fact)
    _c("C38", "江苏", "南京", "2023-05-01T09:00:00+08:00", gender="female", birthday=date(2000, 1, 2),
       tags=("vip", "wechat_fan")),
    _c("C39", "山东", "济南", "2023-06-01T09:00:00+08:00", gender="male", birthday=date(1985, 12, 30)),
    _c("C40", "浙江", "杭州", "2023-07-01T09:00:00+08:00", gender="female", birthday=date(1996, 2, 28)),
    _c("C41", "四川", "成都", "2023-08-01T09:00:00+08:00", gender="male", birthday=date(2000, 7, 1)),
    _c("C42", "广东", "广州", "2023-09-01T09:00:00+08:00", gender="female", birthday=date(1990, 6, 30)),
    _c("C43", "北京", "北京", "2023-10-01T09:00:00+08:00", gender="male", birthday=date(2000, 7, 2)),
    _c("C44", "江苏", "苏州", None, gender="female", birthday=date(1992, 2, 29),
       consents={"email": True, "sms": False}),
    _c("C45", "浙江", "宁波", "2023-11-01T09:00:00+08:00", gender="male", birthday=date(1990, 3, 1)),
    # dayparts on their edges, some written in offsets whose date differs from the shop's
    _c("C46", "广东", "佛山", "2025-05-01T00:00:00+08:00", gender="male", phone="+8613800000046",
       tags=("complained", "vip"), consents={"sms": True}),
    # window edges, with payment methods and categories chosen rather than rotated
    _c("C47", "四川", "绵阳", "2025-01-01T00:00:00+08:00", gender="female", birthday=date(1988, 12, 31),
       email="c47@example.com", consents={"email": True, "sms": True}),
)  # fmt: skip

_CHANNELS = ("store", "online", "store")
_PAYMENTS = ("wechat_pay", "alipay", "stored_value", "card")
_CATEGORIES = ("coffee", "tea", "bakery", "merch", "coffee")


def _orders(customer_id: str, *entries: tuple) -> list[OrderRow]:
    """One customer's orders: (time, amount[, status]); channel, payment and category rotate by position."""
    rows = []
    for entry in entries:
        ordered_at, amount, *status = entry
        n = int(customer_id[1:]) + len(rows)
        rows.append(
            OrderRow(
                order_id=f"{customer_id}-{len(rows) + 1:02d}",
                customer_id=customer_id,
                ordered_at=ordered_at if isinstance(ordered_at, datetime) else t(ordered_at),
                amount=Decimal(amount),
                status=status[0] if status else "paid",
                channel=_CHANNELS[n % len(_CHANNELS)],
                payment_method=_PAYMENTS[n % len(_PAYMENTS)],
                category=_CATEGORIES[n % len(_CATEGORIES)],
            )
        )
    return rows


def _orders_paid_with(customer_id: str, *entries: tuple) -> list[OrderRow]:
    """One customer's paid orders: (time, amount, payment method, category); channel "store"."""
    return [
        OrderRow(
            order_id=f"{customer_id}-{i:02d}",
            customer_id=customer_id,
            ordered_at=ordered_at if isinstance(ordered_at, datetime) else t(ordered_at),
            amount=Decimal(amount),
            channel="store",
            payment_method=payment_method,
            category=category,
        )
        for i, (ordered_at, amount, payment_method, category) in enumerate(entries, start=1)
    ]


DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)

ORDERS: tuple[OrderRow, ...] = tuple(
    # the champion: six orders this half-year, lunch and dinner
    _orders(
        "C01",
        ("2025-01-15T12:00:00+08:00", "128.50"),
        ("2025-02-20T19:30:00+08:00", "99.90"),
        ("2025-03-18T13:05:00+08:00", "210.00"),
        ("2025-04-22T20:10:00+08:00", "156.30"),
        ("2025-05-30T12:45:00+08:00", "88.88"),
        ("2025-06-25T18:20:00+08:00", "305.20"),
    )
    # big spender just over the threshold: 1000.01
    + _orders(
        "C02",
        ("2024-11-11T00:05:00+08:00", "250.00"),
        ("2025-01-01T23:59:59+08:00", "250.00"),
        ("2025-03-08T10:00:00+08:00", "250.00"),
        ("2025-06-18T21:00:00+08:00", "250.01"),
    )
    # exactly at the threshold (not over it); a refund would have pushed it over
    + _orders(
        "C03",
        ("2025-02-14T19:00:00+08:00", "600.00"),
        ("2025-05-20T13:14:00+08:00", "400.00"),
        ("2025-06-01T10:00:00+08:00", "500.00", "refunded"),
    )
    # over the threshold only with an order after AT
    + _orders("C04", ("2025-04-10T15:00:00+08:00", "900.00"), ("2025-07-05T15:00:00+08:00", "300.00"))
    # last order exactly 90 days before AT (written in UTC): dormant
    + _orders("C05", ("2025-01-20T11:00:00+08:00", "66.60"), ((AT - 90 * DAY).astimezone(UTC), "132.00"))
    # last order 90 days less a second before AT, written at -05:00: recency 89
    + _orders("C06", ((AT - 90 * DAY + SECOND).astimezone(offset(-5)), "75.50"))
    # last order exactly 180 days before AT, written at +09:00: lost
    + _orders("C07", ("2024-12-12T12:12:00+08:00", "380.00"), ((AT - 180 * DAY).astimezone(offset(9)), "420.00"))
    # 180 days less a second: recency 179, dormant
    + _orders("C08", ((AT - 180 * DAY + SECOND).astimezone(UTC), "58.00"))
    # C09, C10: members who never ordered
    # not a member at AT (signs up later), although it ordered before AT
    + _orders("C11", ("2025-06-20T10:00:00+08:00", "188.00"), ("2025-07-16T10:00:00+08:00", "99.00"))
    # only a refunded and a cancelled order: a member who never bought
    + _orders(
        "C12",
        ("2025-03-03T12:00:00+08:00", "250.00", "refunded"),
        ("2025-04-04T12:00:00+08:00", "80.00", "cancelled"),
    )
    # no province
    + _orders("C13", ("2025-06-10T08:00:00+00:00", "45.67"))
    # around midnight in different offsets: 05-31 23:30 at -05:00 is 06-01 in UTC, 06-01 00:15 at +08:00 is 05-31
    + _orders(
        "C14",
        ("2025-05-31T23:30:00-05:00", "123.45"),
        ("2025-06-01T00:15:00+08:00", "54.32"),
        ("2025-06-30T23:59:59+00:00", "10.01"),
    )
    # an order exactly at AT written at -03:00 (counts), one a second after AT written at +09:00 (ignored)
    + _orders(
        "C15",
        ("2024-12-31T23:59:59-08:00", "111.11"),
        ("2025-06-30T23:00:00-03:00", "233.30"),
        ("2025-07-01T11:00:01+09:00", "999.99"),
    )
    # C16, C17, C18: tied at 2 orders and 300.00
    + _orders("C16", ("2025-03-03T12:00:00+08:00", "150.00"), ("2025-05-05T12:00:00+08:00", "150.00"))
    + _orders("C17", ("2025-02-02T19:00:00+08:00", "100.00"), ("2025-06-06T19:00:00+08:00", "200.00"))
    + _orders("C18", ("2024-12-24T20:00:00+08:00", "120.50"), ("2025-04-04T20:00:00+08:00", "179.50"))
    # C19, C20: tied at 3 orders and 450.45, last orders on the same day (same recency days)
    + _orders(
        "C19",
        ("2025-01-10T12:00:00+08:00", "150.15"),
        ("2025-03-10T12:00:00+08:00", "150.15"),
        ("2025-06-10T12:00:00+08:00", "150.15"),
    )
    + _orders(
        "C20",
        ("2025-02-10T18:30:00+08:00", "100.00"),
        ("2025-04-10T18:30:00+08:00", "200.00"),
        ("2025-06-10T18:30:00+08:00", "150.45"),
    )
    # new customer: first order 10 days ago
    + _orders("C21", ("2025-06-21T10:00:00+08:00", "520.00"))
    # first order exactly 30 days before AT: still new
    + _orders("C22", ((AT - 30 * DAY).astimezone(UTC), "66.00"))
    # first order 31 days before AT: active
    + _orders("C23", ("2025-05-31T10:00:00+08:00", "88.00"))
    # used to buy often and much; silent for 200 days
    + _orders(
        "C24",
        ("2024-03-08T12:00:00+08:00", "168.00"),
        ("2024-04-18T19:00:00+08:00", "210.50"),
        ("2024-05-20T12:30:00+08:00", "99.00"),
        ("2024-06-18T20:00:00+08:00", "305.00"),
        ("2024-08-08T12:00:00+08:00", "188.80"),
        ("2024-09-09T19:30:00+08:00", "142.20"),
        ("2024-11-11T11:11:00+08:00", "260.00"),
        ("2024-12-13T20:00:00+08:00", "175.50"),
    )
    # C25 signs up exactly at AT, C26 a second after it: neither ordered
    # average order value exactly 100.00
    + _orders("C27", ("2025-03-15T12:00:00+08:00", "99.99"), ("2025-05-15T12:00:00+08:00", "100.01"))
    # exactly 200.00
    + _orders("C28", ("2025-05-25T20:00:00+08:00", "200.00"))
    # 199.99, a second before AT_PAST (written in UTC, the day before in UTC terms)
    + _orders("C29", ("2025-02-28T15:59:59+00:00", "199.99"))
    # 99.99, exactly at AT_PAST written in UTC
    + _orders("C30", ("2025-02-28T16:00:00+00:00", "99.99"))
    # either side of midnight in Shanghai, and a cancelled order
    + _orders(
        "C31",
        ("2025-04-30T23:59:59+08:00", "35.00"),
        ("2025-05-01T00:00:00+08:00", "36.50"),
        ("2025-05-02T12:00:00+08:00", "500.00", "cancelled"),
    )
    # last paid order exactly 90 days before AT_PAST; a refund
    + _orders(
        "C32",
        ("2024-10-01T10:00:00+08:00", "880.00"),
        ("2024-11-30T16:00:00+00:00", "42.00"),
        ("2024-10-15T10:00:00+08:00", "300.00", "refunded"),
    )
    # a regular at lunch
    + _orders(
        "C33",
        ("2025-03-01T12:00:00+08:00", "95.00"),
        ("2025-04-01T12:00:00+08:00", "105.00"),
        ("2025-05-01T12:00:00+08:00", "110.10"),
        ("2025-06-28T12:00:00+08:00", "89.90"),
    )
    # one big order two days ago, no signup time
    + _orders("C34", ("2025-06-29T21:00:00+08:00", "1500.00"))
    # two small orders in January
    + _orders("C35", ("2025-01-05T12:00:00+08:00", "49.90"), ("2025-01-25T12:00:00+08:00", "59.90"))
    # joined between AT_PAST and AT
    + _orders("C36", ("2025-04-02T10:00:00+08:00", "256.00"), ("2025-06-15T19:00:00+08:00", "128.00"))
    # a second after AT_PAST
    + _orders("C37", ("2025-03-01T00:00:01+08:00", "166.60"))
    # C38-C45: no orders
    # dayparts in Shanghai (breakfast 06:00-10:00, lunch 11:00-14:00, late 21:00-06:00); local times in the comments
    + _orders_paid_with(
        "C46",
        ("2025-06-03T03:00:00+00:00", "40.00", "wechat_pay", "coffee"),  # 06-03 11:00:00, lunch starts
        ("2025-06-04T01:00:00-05:00", "41.00", "wechat_pay", "tea"),  # 06-04 14:00:00, afternoon (lunch ended)
        ("2025-06-05T10:59:59+08:00", "42.00", "alipay", "coffee"),  # in no daypart, a second before lunch
        ("2025-06-06T13:59:59+08:00", "43.00", "wechat_pay", "bakery"),  # lunch, its last second
        ("2025-06-06T13:00:00+00:00", "44.00", "stored_value", "coffee"),  # 06-06 21:00:00, late starts
        ("2025-06-06T21:59:59+00:00", "45.00", "stored_value", "coffee"),  # 06-07 05:59:59, late (UTC: 06-06)
        ("2025-06-07T22:00:00+00:00", "46.00", "card", "tea"),  # 06-08 06:00:00, breakfast (UTC: 06-07)
        ("2025-06-09T17:00:00+08:00", "47.00", "wechat_pay", "coffee"),  # dinner starts
        ("2025-06-09T12:59:59+00:00", "48.00", "wechat_pay", "coffee"),  # 06-09 20:59:59, dinner's last second
    )
    # window edges: exactly 30 days before AT and a second more; the method and category change with the window
    + _orders_paid_with(
        "C47",
        ("2025-03-20T12:00:00+08:00", "80.00", "alipay", "tea"),
        ((AT - 30 * DAY - SECOND).astimezone(UTC), "20.00", "card", "merch"),
        ((AT - 30 * DAY).astimezone(offset(-5)), "40.00", "stored_value", "bakery"),
        ("2025-06-01T12:00:00+08:00", "60.00", "stored_value", "coffee"),
    )
)

CUSTOMER_BY_ID = {c.customer_id: c for c in CUSTOMERS}


@dataclass(frozen=True)
class CouponRow:
    code: str
    customer_id: str
    issued_at: datetime
    redeemed_at: datetime | None = None


def _k(code: str, customer_id: str, issued: str | datetime, redeemed: str | datetime | None = None) -> CouponRow:
    def when(value):
        return value if isinstance(value, datetime) or value is None else t(value)

    return CouponRow(code, customer_id, when(issued), when(redeemed))


# Issued coupons: redemption rate = redeemed ÷ issued, both counted at or before the evaluation time.
COUPONS: tuple[CouponRow, ...] = (
    # C01: 3 of 4 by AT; 1 of 2 by AT_PAST (the second is redeemed after it)
    _k("K01A", "C01", "2025-01-10T10:00:00+08:00", "2025-01-15T12:00:00+08:00"),
    _k("K01B", "C01", "2025-02-01T10:00:00+08:00", "2025-03-18T13:05:00+08:00"),
    _k("K01C", "C01", "2025-04-01T10:00:00+08:00"),
    _k("K01D", "C01", "2025-05-01T10:00:00+08:00", "2025-05-30T12:45:00+08:00"),
    # C02: 0 of 1 by AT, none issued by AT_PAST
    _k("K02A", "C02", "2025-06-01T10:00:00+08:00"),
    # C03: 1 of 1
    _k("K03A", "C03", "2025-02-01T10:00:00+08:00", "2025-02-14T19:00:00+08:00"),
    # C09: a prospect with an unused coupon
    _k("K09A", "C09", "2025-05-01T10:00:00+08:00"),
    # C15: issued and redeemed exactly at AT (counts, written at -03:00); issued a second after AT (ignored)
    _k("K15A", "C15", "2025-06-01T10:00:00+08:00"),
    _k("K15B", "C15", AT.astimezone(offset(-3)), AT.astimezone(offset(-3))),
    _k("K15C", "C15", AT + SECOND, AT + 2 * SECOND),
    # C16: 2 of 2 by AT; 0 of 1 by AT_PAST
    _k("K16A", "C16", "2025-02-15T10:00:00+08:00", "2025-03-03T12:00:00+08:00"),
    _k("K16B", "C16", "2025-04-20T10:00:00+08:00", "2025-05-05T12:00:00+08:00"),
    # C17: redeemed a second after AT: 0 of 1
    _k("K17A", "C17", "2025-03-10T10:00:00+08:00", AT + SECOND),
    # C20: 2 of 3 by AT, 1 of 1 by AT_PAST
    _k("K20A", "C20", "2025-01-20T10:00:00+08:00", "2025-02-10T18:30:00+08:00"),
    _k("K20B", "C20", "2025-03-20T10:00:00+08:00", "2025-04-10T18:30:00+08:00"),
    _k("K20C", "C20", "2025-05-20T10:00:00+08:00"),
    # C11 is no member at AT; C36 joined after AT_PAST
    _k("K11A", "C11", "2025-06-21T10:00:00+08:00", "2025-06-22T10:00:00+08:00"),
    _k("K36A", "C36", "2025-04-05T10:00:00+08:00", "2025-06-15T19:00:00+08:00"),
    # C47: issued exactly at AT_PAST (written in UTC), redeemed a second later: 0 of 1 then, 1 of 2 by AT
    _k("K47A", "C47", AT_PAST.astimezone(UTC), AT_PAST + SECOND),
    _k("K47B", "C47", "2025-06-20T10:00:00+08:00"),
)


# --- loading ------------------------------------------------------------------------------------------------


def load(engine: Engine) -> dict[str, int]:
    """Insert the data set; returns customer_id → internal key (``customers.id``)."""
    with engine.begin() as conn:
        conn.execute(insert(Customer.__table__), [_customer_values(c) for c in CUSTOMERS])
        keys = dict(conn.execute(select(Customer.customer_id, Customer.id)).all())
        tags = [{"customer_pk": keys[c.customer_id], "tag": tag} for c in CUSTOMERS for tag in c.tags]
        consents = [
            {"customer_pk": keys[c.customer_id], "channel": ch, "opted_in": ok, "updated_at": LOADED_AT}
            for c in CUSTOMERS
            for ch, ok in c.consents.items()
        ]
        _insert(conn, CustomerTag, tags)
        _insert(conn, CustomerConsent, consents)
        _insert(conn, Order, [_order_values(o, keys) for o in ORDERS])
        _insert(conn, Coupon, [_coupon_values(k, keys) for k in COUPONS])
    return keys


def _insert(conn, model, rows: list[dict]) -> None:
    if rows:
        conn.execute(insert(model.__table__), rows)


def _customer_values(c: CustomerRow) -> dict:
    return {
        "customer_id": c.customer_id,
        "name": f"会员{c.customer_id}",
        "email": c.email,
        "phone": c.phone,
        "province": c.province,
        "city": c.city,
        "gender": c.gender,
        "birthday": c.birthday,
        "signup_at": c.signup_at,
        "attributes": {},
        "created_at": LOADED_AT,
        "updated_at": LOADED_AT,
    }


def _order_values(o: OrderRow, keys: dict[str, int]) -> dict:
    return {
        "order_id": o.order_id,
        "customer_pk": keys[o.customer_id],
        "ordered_at": o.ordered_at,
        "amount": o.amount,
        "status": o.status,
        "channel": o.channel,
        "payment_method": o.payment_method,
        "category": o.category,
        "attributes": {},
        "created_at": LOADED_AT,
        "updated_at": LOADED_AT,
    }


def _coupon_values(k: CouponRow, keys: dict[str, int]) -> dict:
    return {
        "code": k.code,
        "customer_pk": keys[k.customer_id],
        "offer_kind": "amount_off",
        "value": Decimal("10.00"),
        "terms": {},
        "valid_from": k.issued_at,
        "valid_until": k.issued_at + 60 * DAY,
        "state": "issued" if k.redeemed_at is None else "redeemed",
        "issued_at": k.issued_at,
        "redeemed_at": k.redeemed_at,
    }


# --- the reference model: every fact recomputed in plain Python -----------------------------------------------

LIFECYCLE_STAGES = ("prospect", "new", "active", "dormant", "lost")

# The RFM grid, written out cell by cell: RFM_GRID[r][fm - 1], fm = (f + m) / 2 rounded half up.
RFM_GRID = {
    5: ("new_customers", "potential_loyalist", "potential_loyalist", "champions", "champions"),
    4: ("promising", "potential_loyalist", "potential_loyalist", "loyal", "loyal"),
    3: ("about_to_sleep", "about_to_sleep", "need_attention", "loyal", "loyal"),
    2: ("hibernating", "hibernating", "at_risk", "at_risk", "cant_lose"),
    1: ("lost", "lost", "at_risk", "at_risk", "cant_lose"),
}


def members(at: datetime) -> list[CustomerRow]:
    return [c for c in CUSTOMERS if c.is_member(at)]


def counted_orders(at: datetime) -> list[OrderRow]:
    """Paid orders at or before ``at`` of customers who are members at ``at``."""
    return [
        o for o in ORDERS if o.status == "paid" and o.ordered_at <= at and CUSTOMER_BY_ID[o.customer_id].is_member(at)
    ]


def whole_days(start: datetime, end: datetime) -> int:
    """Elapsed 24-hour periods, counted by seconds so as not to reuse the product's helper."""
    seconds = (end - start).total_seconds()
    return int(seconds // 86400)


def round_cents(value: Fraction) -> Decimal:
    """Round a non-negative exact value half up to the fen."""
    cents = (value * 100 + Fraction(1, 2)).__floor__()
    return (Decimal(cents) / 100).quantize(Decimal("0.01"))


@dataclass
class ExpectedFacts:
    customer_id: str
    province: str | None
    frequency: int = 0
    monetary: Decimal = Decimal("0.00")
    aov: Decimal | None = None
    recency_days: int | None = None
    first_order_days: int | None = None
    tenure_days: int | None = None
    first_order_at: datetime | None = None
    last_order_at: datetime | None = None
    orders_above_store_aov: int = 0
    r_score: int | None = None
    f_score: int | None = None
    m_score: int | None = None
    rfm_segment: str | None = None
    lifecycle_stage: str = "prospect"
    tier: str | None = None
    clv: Decimal | None = None


def store_totals(at: datetime) -> tuple[int, Decimal]:
    paid = counted_orders(at)
    return len(paid), sum((o.amount for o in paid), Decimal("0"))


def expected_facts(at: datetime, settings: Settings) -> dict[str, ExpectedFacts]:
    """Every member's facts as of ``at``, keyed by customer_id."""
    paid = counted_orders(at)
    n_orders, revenue = store_totals(at)
    facts = {c.customer_id: ExpectedFacts(c.customer_id, c.province) for c in members(at)}
    for c in members(at):
        f = facts[c.customer_id]
        if c.signup_at is not None:
            f.tenure_days = whole_days(c.signup_at, at)
        mine = [o for o in paid if o.customer_id == c.customer_id]
        if mine:
            _order_facts(f, mine, at, n_orders, revenue)
            f.clv = _clv(f, settings)
        f.lifecycle_stage = _stage(f, settings)
        f.tier = _tier(f, settings)
    _rfm(list(f for f in facts.values() if f.frequency))
    return facts


def _order_facts(f: ExpectedFacts, mine: list[OrderRow], at: datetime, n_orders: int, revenue: Decimal) -> None:
    f.frequency = len(mine)
    f.monetary = sum((o.amount for o in mine), Decimal("0"))
    f.aov = round_cents(Fraction(f.monetary) / f.frequency)
    f.first_order_at = min(o.ordered_at for o in mine)
    f.last_order_at = max(o.ordered_at for o in mine)
    f.recency_days = whole_days(f.last_order_at, at)
    f.first_order_days = whole_days(f.first_order_at, at)
    store_aov = Fraction(revenue) / n_orders
    f.orders_above_store_aov = sum(1 for o in mine if Fraction(o.amount) > store_aov)


def _clv(f: ExpectedFacts, settings: Settings) -> Decimal:
    clv = settings.clv
    assert f.first_order_days is not None
    tenure_years = Fraction(max(f.first_order_days, clv.min_tenure_days), 365)
    aov = Fraction(f.monetary) / f.frequency
    yearly_rate = f.frequency / tenure_years
    value = aov * yearly_rate * Fraction(clv.expected_lifetime_years) * Fraction(clv.margin)
    return round_cents(value)


def _stage(f: ExpectedFacts, settings: Settings) -> str:
    lifecycle = settings.lifecycle
    if f.recency_days is None or f.first_order_days is None:
        return "prospect"
    if f.recency_days >= lifecycle.lost_days:
        return "lost"
    if f.recency_days >= lifecycle.dormant_days:
        return "dormant"
    if f.first_order_days <= lifecycle.new_days:
        return "new"
    return "active"


def _tier(f: ExpectedFacts, settings: Settings) -> str | None:
    for rule in settings.tiers:
        if f.monetary >= rule.min_spend and f.frequency >= rule.min_orders:
            return rule.name
    return None


def quintile(value, population: Iterable, better_is_higher: bool) -> int:
    """1 + floor(5 × share of the population strictly worse than ``value``, relative to n − 1), at most 5."""
    values = list(population)
    worse = sum(1 for v in values if (v < value if better_is_higher else v > value))
    if len(values) == 1:
        return 1
    return min(5, 1 + (5 * worse) // (len(values) - 1))


def rfm_segment(r: int, f: int, m: int) -> str:
    fm = int((Decimal(f + m) / 2).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return RFM_GRID[r][fm - 1]


def _rfm(buyers: list[ExpectedFacts]) -> None:
    recencies = [b.recency_days for b in buyers]
    frequencies = [b.frequency for b in buyers]
    spends = [b.monetary for b in buyers]
    for b in buyers:
        b.r_score = quintile(b.recency_days, recencies, better_is_higher=False)
        b.f_score = quintile(b.frequency, frequencies, better_is_higher=True)
        b.m_score = quintile(b.monetary, spends, better_is_higher=True)
        b.rfm_segment = rfm_segment(b.r_score, b.f_score, b.m_score)


# --- the facts of the condition language (orchestrator/campaign/catalog.py), in plain Python ------------------


def local_date(at: datetime, settings: Settings) -> date:
    """The shop's calendar date at ``at``."""
    return at.astimezone(settings.tz).date()


def days_until_birthday(birthday: date | None, today: date) -> int | None:
    """Days from ``today`` to the next birthday, 0 on the day: walks the calendar a day at a time. Someone born
    on 29 February celebrates on 28 February in common years."""
    if birthday is None:
        return None
    for n in range(367):
        day = today + n * DAY
        if (day.month, day.day) == (birthday.month, birthday.day):
            return n
        if (birthday.month, birthday.day) == (2, 29) and (day.month, day.day) == (2, 28) and not isleap(day.year):
            return n
    raise AssertionError(f"no birthday within a year of {today} for {birthday}")


def age_in_years(birthday: date | None, today: date) -> int | None:
    """Whole years lived: the year difference, less one before this year's (month, day) is reached."""
    if birthday is None:
        return None
    years = today.year - birthday.year
    return years - 1 if (today.month, today.day) < (birthday.month, birthday.day) else years


def _in_daypart(ordered_at: datetime, settings: Settings, daypart: str) -> bool:
    """The order's shop-local clock time is in the daypart (start inclusive, end exclusive, may wrap midnight)."""
    start, end = (datetime.strptime(p.strip(), "%H:%M").time() for p in settings.dayparts[daypart].split("-"))
    clock = ordered_at.astimezone(settings.tz).time()
    return start <= clock < end if start < end else clock >= start or clock < end


class FactModel:
    """Every fact of ``orchestrator.campaign.catalog.BUILTIN_FACTS`` for every member as of ``at``.

    ``value(customer_id, fact, params)`` takes the parameters as a condition writes them (``within`` as a
    ``timedelta``); windows are elapsed time: an order at exactly ``at - within`` counts.
    """

    def __init__(self, at: datetime, settings: Settings):
        self.at = at
        self.settings = settings
        self.base = expected_facts(at, settings)
        self.today = local_date(at, settings)
        self.paid = counted_orders(at)

    @property
    def member_ids(self) -> set[str]:
        return set(self.base)

    def _orders(self, customer_id: str, within: timedelta | None) -> list[OrderRow]:
        since = self.at.astimezone(UTC) - within if within is not None else None
        return [o for o in self.paid if o.customer_id == customer_id and (since is None or o.ordered_at >= since)]

    def values(self, fact: str, params: dict | None = None) -> dict[str, object]:
        return {c: self.value(c, fact, params or {}) for c in self.base}

    def value(self, customer_id: str, fact: str, params: dict) -> object:
        f = self.base[customer_id]
        c = CUSTOMER_BY_ID[customer_id]
        within = params.get("within")
        mine = self._orders(customer_id, within)
        simple = {
            "recency_days": f.recency_days,
            "aov": f.aov,
            "first_order_days": f.first_order_days,
            "orders_above_store_aov": f.orders_above_store_aov,
            "rfm_r": f.r_score,
            "rfm_f": f.f_score,
            "rfm_m": f.m_score,
            "rfm_segment": f.rfm_segment,
            "lifecycle": f.lifecycle_stage,
            "tier": f.tier,
            "clv": f.clv,
            "province": c.province,
            "city": c.city,
            "gender": c.gender,
            "signup_days": f.tenure_days,
        }
        if fact in simple:
            return simple[fact]
        if fact == "frequency":
            return len(mine)
        if fact == "monetary":
            return sum((o.amount for o in mine), Decimal("0.00"))
        if fact == "age":
            return age_in_years(c.birthday, self.today)
        if fact == "days_to_birthday":
            return days_until_birthday(c.birthday, self.today)
        if fact in ("consent_email", "consent_sms"):
            return c.consents.get(fact.removeprefix("consent_")) is True
        if fact == "coupon_redemption_rate":
            issued = [k for k in COUPONS if k.customer_id == customer_id and k.issued_at <= self.at]
            redeemed = [k for k in issued if k.redeemed_at is not None and k.redeemed_at <= self.at]
            return Fraction(len(redeemed), len(issued)) if issued else None
        if fact == "payment_share":
            paid_with = [o for o in mine if o.payment_method == params["method"]]
            return Fraction(len(paid_with), len(mine)) if mine else None
        if fact == "daypart_orders":
            return sum(1 for o in mine if _in_daypart(o.ordered_at, self.settings, params["daypart"]))
        if fact == "bought_category":
            return any(o.category == params["category"] for o in mine)
        raise KeyError(f"no reference for fact {fact!r}")
