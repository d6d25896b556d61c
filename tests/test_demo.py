"""The seed-shop demo data: the figures of docs/domain.md ("The seed shop"), determinism, valid contacts, and the CLI.

The figure tests read the generated CSV files back with the csv module and compute every figure in plain Python,
independently of the generator's internals and of the database, so they check what a user would import.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import phonenumbers
import pytest
from click.testing import CliRunner
from email_validator import validate_email

from orchestrator.demo.generator import CUSTOMER_COLUMNS, ORDER_COLUMNS, SEED_SHOP_AT, SeedShop, months_before

DAY = timedelta(days=1)
TOP_PROVINCES = {"浙江", "四川", "山东"}
MUNICIPALITIES = {"北京", "上海", "天津", "重庆"}


@dataclass
class Shop:
    """The two files read back, as plain rows."""

    customers: list[dict[str, str]]
    orders: list[dict[str, str]]


@dataclass
class Figures:
    members: int = 0
    buying: int = 0
    paid_orders: int = 0
    revenue_cents: int = 0
    unpaid_orders: int = 0
    dormant_90: int = 0
    dormant_180: int = 0
    big_spenders: int = 0
    big_spend_cents: int = 0
    conversion: dict[str, float] = field(default_factory=dict)
    buyer_aov: list[float] = field(default_factory=list)

    @property
    def frequency(self) -> float:
        return self.paid_orders / self.buying

    @property
    def aov(self) -> Decimal:
        return Decimal(self.revenue_cents) / 100 / self.paid_orders

    @property
    def big_share(self) -> float:
        return self.big_spend_cents / self.revenue_cents

    def share_of_buyers(self, low: float, high: float) -> float:
        return sum(low <= a <= high for a in self.buyer_aov) / len(self.buyer_aov)


def read_shop(folder: Path) -> Shop:
    with (folder / "customers.csv").open(encoding="utf-8", newline="") as f:
        customers = list(csv.DictReader(f))
    with (folder / "orders.csv").open(encoding="utf-8", newline="") as f:
        orders = list(csv.DictReader(f))
    return Shop(customers, orders)


def cents(amount: str) -> int:
    assert re.fullmatch(r"\d+\.\d\d", amount), amount
    return int(amount.replace(".", ""))


def figures(shop: Shop, at: datetime) -> Figures:
    """Section 2's definitions: only paid orders at or before ``at`` count."""
    result = Figures(members=len(shop.customers))
    spend: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    last: dict[str, datetime] = {}
    for order in shop.orders:
        ordered_at = datetime.fromisoformat(order["ordered_at"])
        if order["status"] != "paid" or ordered_at > at:
            result.unpaid_orders += order["status"] != "paid"
            continue
        who = order["customer_id"]
        spend[who] += cents(order["amount"])
        count[who] += 1
        last[who] = max(last.get(who, ordered_at), ordered_at)
    result.buying = len(count)
    result.paid_orders = sum(count.values())
    result.revenue_cents = sum(spend.values())
    recency = {who: (at - when) // DAY for who, when in last.items()}
    result.dormant_90 = sum(days >= 90 for days in recency.values())
    result.dormant_180 = sum(days >= 180 for days in recency.values())
    big = [who for who, total in spend.items() if total > 1000_00]
    result.big_spenders = len(big)
    result.big_spend_cents = sum(spend[who] for who in big)
    members: Counter[str] = Counter()
    buyers: Counter[str] = Counter()
    for customer in shop.customers:
        members[customer["province"]] += 1
        buyers[customer["province"]] += customer["customer_id"] in count
    result.conversion = {province: buyers[province] / n for province, n in members.items()}
    result.buyer_aov = [spend[who] / 100 / count[who] for who in count]
    return result


def assert_seed_shop_figures(fig: Figures, scale: int) -> None:
    assert fig.members == 9252 * scale
    assert fig.buying == 8280 * scale
    assert fig.members - fig.buying == 972 * scale
    assert fig.paid_orders == 10764 * scale
    assert round(fig.frequency, 2) == 1.30
    assert fig.revenue_cents == 112 * 10764 * scale * 100
    assert fig.aov.quantize(Decimal("0.01")) == Decimal("112.00")
    assert fig.dormant_90 == 6500 * scale
    assert 5800 * scale <= fig.dormant_180 <= 6500 * scale
    assert fig.big_spenders == 31 * scale
    assert 0.035 <= fig.big_share <= 0.045
    assert fig.unpaid_orders > 0

    ranked = sorted(fig.conversion, key=lambda p: -fig.conversion[p])
    assert set(ranked[:3]) == TOP_PROVINCES
    assert fig.conversion[ranked[2]] - fig.conversion[ranked[3]] >= 0.02, "the top three must stand out"
    assert 15 <= len(fig.conversion) <= 25

    assert fig.share_of_buyers(100, 200) > 0.5
    assert 0.6 <= fig.share_of_buyers(100, 200) <= 0.8
    assert fig.share_of_buyers(30, 99.99) >= 0.1
    assert 0.005 <= fig.share_of_buyers(200.01, 600) <= 0.1
    assert min(fig.buyer_aov) >= 25 and max(fig.buyer_aov) <= 650


@pytest.fixture(scope="module")
def seed_shop_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("seed-shop")
    SeedShop().write_csv(folder)
    return folder


@pytest.fixture(scope="module")
def seed_shop(seed_shop_dir: Path) -> Shop:
    return read_shop(seed_shop_dir)


def test_seed_shop_reproduces_the_seed_figures(seed_shop: Shop) -> None:
    fig = figures(seed_shop, SEED_SHOP_AT)
    assert_seed_shop_figures(fig, scale=1)
    print(
        f"members {fig.members}, buying {fig.buying}, paid orders {fig.paid_orders}, frequency {fig.frequency:.4f}, "
        f"AOV {fig.aov:.4f}, dormant 90/180 {fig.dormant_90}/{fig.dormant_180}, "
        f"big spenders {fig.big_spenders} with {fig.big_share:.4%}, 100–200 share {fig.share_of_buyers(100, 200):.3f}"
    )


def test_three_times_the_shop_with_another_seed(tmp_path: Path) -> None:
    SeedShop(seed=7, scale=3).write_csv(tmp_path)
    assert_seed_shop_figures(figures(read_shop(tmp_path), SEED_SHOP_AT), scale=3)


def test_another_reference_time_shifts_the_window_and_keeps_the_figures(tmp_path: Path) -> None:
    at = datetime(2025, 3, 15, 5, 37, 21, 500000, tzinfo=UTC)
    SeedShop(seed=5, at=at).write_csv(tmp_path)
    shop = read_shop(tmp_path)
    assert_seed_shop_figures(figures(shop, at), scale=1)
    start = months_before(at.astimezone(SEED_SHOP_AT.tzinfo), 10)
    times = [datetime.fromisoformat(o["ordered_at"]) for o in shop.orders]
    times += [datetime.fromisoformat(c["signup_at"]) for c in shop.customers]
    assert start <= min(times) and max(times) <= at


def test_the_same_seed_gives_the_same_bytes(seed_shop_dir: Path, tmp_path: Path) -> None:
    again = SeedShop(seed=42).write_csv(tmp_path / "again")
    other = SeedShop(seed=43).write_csv(tmp_path / "other")
    for first, second in zip((seed_shop_dir / "customers.csv", seed_shop_dir / "orders.csv"), again, strict=True):
        assert first.read_bytes() == second.read_bytes()
    assert (seed_shop_dir / "customers.csv").read_bytes() != other[0].read_bytes()
    assert (seed_shop_dir / "orders.csv").read_bytes() != other[1].read_bytes()


def test_files_have_the_import_columns_and_stable_unique_ids(seed_shop_dir: Path, seed_shop: Shop) -> None:
    for name, columns in (("customers.csv", CUSTOMER_COLUMNS), ("orders.csv", ORDER_COLUMNS)):
        header = (seed_shop_dir / name).read_bytes().split(b"\n", 1)[0].decode("utf-8")
        assert header == ",".join(columns)
    customer_ids = [c["customer_id"] for c in seed_shop.customers]
    assert customer_ids == [f"C{i:07d}" for i in range(1, len(customer_ids) + 1)]
    order_ids = [o["order_id"] for o in seed_shop.orders]
    assert order_ids == [f"O{i:08d}" for i in range(1, len(order_ids) + 1)]
    assert {o["customer_id"] for o in seed_shop.orders} <= set(customer_ids)


def test_contacts_are_valid_and_unique(seed_shop: Shop) -> None:
    phones = [c["phone"] for c in seed_shop.customers if c["phone"]]
    emails = [c["email"] for c in seed_shop.customers if c["email"]]
    openids = [c["wechat_openid"] for c in seed_shop.customers if c["wechat_openid"]]
    n = len(seed_shop.customers)
    assert len(phones) > 0.9 * n and len(emails) > 0.8 * n and 0.35 * n < len(openids) < 0.45 * n
    for phone in phones:
        number = phonenumbers.parse(phone, "CN")
        assert phonenumbers.is_valid_number(number), phone
        assert phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) == "+86" + phone
    for email in emails:
        validate_email(email, check_deliverability=False)
    assert all(re.fullmatch(r"o[A-Za-z0-9_-]{27}", openid) for openid in openids)
    for values in (phones, emails, openids):
        assert len(set(values)) == len(values)


def test_members_look_like_a_real_member_base(seed_shop: Shop) -> None:
    customers = seed_shop.customers
    n = len(customers)
    assert all(re.fullmatch(r"[\u4e00-\u9fff]{2,4}", c["name"]) for c in customers)
    assert {c["gender"] for c in customers} == {"female", "male", ""}
    ages = [
        (SEED_SHOP_AT.date() - datetime.fromisoformat(c["birthday"]).date()).days / 365.25
        for c in customers
        if c["birthday"]
    ]
    assert min(ages) >= 18 and max(ages) < 71 and 0.85 * n < len(ages) < n
    assert 0.5 < sum(c["email_opt_in"] == "true" for c in customers) / n < 0.6
    assert 0.75 < sum(c["sms_opt_in"] == "true" for c in customers) / n < 0.85
    tags = Counter(tag for c in customers for tag in c["tags"].split(";") if tag)
    assert 0.009 * n <= tags["complained"] <= 0.011 * n and 0 < tags["employee"] < 20 and tags["vip"] >= 31
    assert tags["wechat_follower"] > 0 and tags["newsletter"] > 0
    zones = Counter(c["timezone"] for c in customers)
    assert zones["Asia/Shanghai"] > 0.95 * n and {"Asia/Hong_Kong", "America/Los_Angeles"} <= set(zones)
    cities = defaultdict(set)
    for c in customers:
        cities[c["province"]].add(c["city"])
    assert all(len(names) >= 3 for province, names in cities.items() if province not in MUNICIPALITIES)

    first_order: dict[str, datetime] = {}
    for o in seed_shop.orders:
        when = datetime.fromisoformat(o["ordered_at"])
        first_order[o["customer_id"]] = min(first_order.get(o["customer_id"], when), when)
    for c in customers:
        signup = datetime.fromisoformat(c["signup_at"])
        assert signup.utcoffset() is not None
        if c["customer_id"] in first_order:
            assert signup < first_order[c["customer_id"]]


def test_orders_give_the_campaigns_something_to_find(seed_shop: Shop) -> None:
    orders = seed_shop.orders
    statuses = Counter(o["status"] for o in orders)
    assert statuses["refunded"] > 0 and statuses["cancelled"] > 0
    assert 0.01 < (statuses["refunded"] + statuses["cancelled"]) / statuses["paid"] < 0.03
    assert all(o["coupon_code"] == "" for o in orders)
    assert {o["channel"] for o in orders} == {"store", "online", "mini_program"}
    assert {o["payment_method"] for o in orders} == {"wechat_pay", "alipay", "bank_card", "stored_value", "cash"}
    assert 6 <= len({o["category"] for o in orders}) <= 10

    hours = Counter(int(o["ordered_at"][11:13]) for o in orders)
    lunch, dinner = sum(hours[h] for h in (11, 12, 13)), sum(hours[h] for h in (17, 18, 19, 20))
    assert lunch > 0.3 * len(orders) and dinner > 0.2 * len(orders) and hours[9] > 0 and hours[22] > 0

    lunches: Counter[str] = Counter()
    dinners: Counter[str] = Counter()
    stored_value: Counter[str] = Counter()
    for o in orders:
        if o["status"] != "paid":
            continue
        hour = int(o["ordered_at"][11:13])
        lunches[o["customer_id"]] += 11 <= hour < 14
        dinners[o["customer_id"]] += 17 <= hour < 21
        stored_value[o["customer_id"]] += o["payment_method"] == "stored_value"
    assert sum(n >= 3 for n in lunches.values()) >= 50, "frequent lunch guests"
    assert sum(n >= 3 for n in dinners.values()) >= 50, "frequent dinner guests"
    assert sum(n >= 1 for n in stored_value.values()) >= 200, "stored-value card users"

    season_start, season_end = SEED_SHOP_AT - 85 * DAY, SEED_SHOP_AT - 20 * DAY
    in_season = Counter(
        o["category"] for o in orders if season_start <= datetime.fromisoformat(o["ordered_at"]) < season_end
    )
    before = Counter(o["category"] for o in orders if datetime.fromisoformat(o["ordered_at"]) < season_start)
    seasonal = in_season.most_common(1)[0][0]
    assert before[seasonal] == 0, "the seasonal best-seller sells only in its season"


# ---- the command line --------------------------------------------------------------------------------------


def test_demo_data_writes_csv_only_without_a_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    args = ["--db", f"sqlite:///{tmp_path / 'never.db'}", "demo-data", "--preset", "seed-shop", "--seed", "9"]
    result = CliRunner().invoke(cli, [*args, "--at", "2026-06-01", "--csv-dir", "out", "--csv-only", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["at"] == "2026-06-01T00:00:00+08:00" and report["csv_dir"] == "out" and report["seed"] == 9
    assert report["customers"]["written"] == 9252 and report["orders"]["written"] == 10764 + 215
    assert len((tmp_path / "out" / "customers.csv").read_text(encoding="utf-8").splitlines()) == 9252 + 1
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize(
    "args",
    [["--csv-only"], ["--at", "next tuesday"], ["--scale", "0"], ["--preset", "big-mall"]],
)
def test_demo_data_rejects_bad_options(tmp_path: Path, args: list[str]) -> None:
    from orchestrator.cli import cli

    result = CliRunner().invoke(cli, ["--db", f"sqlite:///{tmp_path / 'x.db'}", "demo-data", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_demo_data_loads_the_seed_shop_and_analyze_reports_the_readme_figures(
    run_cli, engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import func, select

    from orchestrator.db.models import Customer, Order

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    result = run_cli("demo-data", "--preset", "seed-shop", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["preset"] == "seed-shop" and report["scale"] == 1 and report["csv_dir"] is None
    assert report["at"] == SEED_SHOP_AT.isoformat()
    assert report["customers"]["loaded"] == 9252 and report["customers"]["rejected"] == 0
    assert report["orders"]["loaded"] == 10764 + 215 and report["orders"]["rejected"] == 0
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Customer)) == 9252
        paid = select(func.count()).select_from(Order).where(Order.status == "paid")
        assert conn.scalar(paid) == 10764

    # the figures README.md states, as `orchestrator analyze` reports them at midnight and at `make demo`'s time
    readme = readme_seed_shop()
    midnight = json.loads(run_cli("analyze", "--at", "2026-11-01", "--json").stdout)
    assert midnight["members"] == readme["members"]
    assert midnight["buying_members"] == readme["buying"]
    assert round(midnight["buying_rate"] * 100, 1) == readme["buying_percent"]
    assert midnight["orders"] == readme["paid_orders"]
    assert f"{midnight['purchase_frequency']:.2f}" == readme["frequency"]
    assert midnight["aov"] == readme["aov"]
    assert midnight["dormant_90d"] == readme["dormant"]
    assert midnight["big_spenders"]["threshold"] == readme["big_threshold"]
    assert midnight["big_spenders"]["count"] == readme["big_spenders"]
    assert round(midnight["big_spenders"]["sales_share"] * 100) == readme["big_share_percent"]
    assert [p["province"] for p in midnight["provinces"][:3]] == readme["top_provinces"]
    at_demo_time = json.loads(run_cli("analyze", "--at", makefile_demo_at(), "--json").stdout)
    assert at_demo_time["dormant_90d"] == readme["dormant_at_demo_time"]


ROOT = Path(__file__).resolve().parent.parent
README_SEED_SHOP = re.compile(
    r"\(某网店\): (?P<members>[\d,]+) members over ten months, (?P<buying>[\d,]+) of them buying "
    r"\((?P<buying_percent>[\d.]+) %\), (?P<paid_orders>[\d,]+) paid orders, purchase frequency (?P<frequency>[\d.]+), "
    r"average order value (?P<aov>\d+) yuan, (?P<dormant>[\d,]+) members dormant three months, "
    r"(?P<big_spenders>\d+) members over (?P<big_threshold>[\d,]+) yuan holding (?P<big_share_percent>\d+) % of "
    r"sales, (?P<p1>\w+), (?P<p2>\w+) and (?P<p3>\w+) converting best\. `orchestrator analyze --at 2026-11-01` "
    r"reports exactly these figures; `make demo` analyses as of 10:00 that morning, "
    r".*? \((?P<dormant_at_demo_time>[\d,]+)\)\."
)


def readme_seed_shop() -> dict:
    """The seed shop's figures as README.md states them (its lines unwrapped)."""
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    match = README_SEED_SHOP.search(text)
    assert match, "README.md's seed-shop paragraph has changed shape: update README_SEED_SHOP with it"
    number = {k: int(v.replace(",", "")) for k, v in match.groupdict().items() if re.fullmatch(r"[\d,]+", v)}
    return {
        **number,
        "buying_percent": float(match["buying_percent"]),
        "frequency": match["frequency"],
        "top_provinces": [match["p1"], match["p2"], match["p3"]],
    }


def makefile_demo_at() -> str:
    match = re.search(r"^DEMO_AT \?= (\S+)$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "Makefile: DEMO_AT not found"
    return match[1]
