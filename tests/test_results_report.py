"""Campaign results on a constructed ledger whose answers a plain-Python model of docs/domain.md ("Results")
computes here, independently of the SQL: attribution by coupon and by window, overlapping campaigns (last and
first touch), refunds, late redemptions, the control comparison, money and ROI, the command line."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert, select

from orchestrator.config import AttributionConfig, ResultsConfig, Settings
from orchestrator.db.models import Campaign, CampaignRun, Coupon, CouponRedemption, Customer, Delivery, Order
from orchestrator.results.report import Scope, Tally, build_report, verdict
from orchestrator.results.stats import GroupSums, newcombe_interval, welch_interval

SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=SHANGHAI)  # campaign "spring": run 1
T1 = T0 + timedelta(days=5)  # campaign "autumn": run 2, window 7 days, overlapping spring's 14
AT = T0 + timedelta(days=30)
DAY = timedelta(days=1)
SMS_PRICE = Decimal("0.05")
FACE = Decimal("20.00")  # spring's coupon: 20 off


@dataclass
class Exposure:
    run: int
    member: str
    group: str  # treatment | control
    step: str
    channel: str
    deferred_until: datetime | None = None


@dataclass
class Sale:
    order_id: str
    member: str
    at: datetime
    amount: Decimal
    status: str = "paid"
    coupon_of_run: int | None = None  # redeemed the member's coupon of this run
    redeemed_at: datetime | None = None


RUNS = {1: ("spring", T0, timedelta(days=14)), 2: ("autumn", T1, timedelta(days=7))}


def build_case() -> tuple[list[Exposure], list[Sale]]:
    exposures: list[Exposure] = []
    sales: list[Sale] = []
    # spring, step main: 60 contacted by SMS, 40 held out; step vip: 12 by e-mail; a pattern of orders
    for i in range(60):
        exposures.append(Exposure(1, f"T{i:03}", "treatment", "main", "sms"))
        if i % 3 == 0:  # a fifth of them inside the window, on different days
            sales.append(
                Sale(f"o-T{i}", f"T{i:03}", T0 + timedelta(days=i % 13, hours=2), Decimal(50 + i) + Decimal("0.35"))
            )
    for i in range(40):
        exposures.append(Exposure(1, f"C{i:03}", "control", "main", "sms"))
        if i % 8 == 0:
            sales.append(Sale(f"o-C{i}", f"C{i:03}", T0 + timedelta(days=i % 11, hours=5), Decimal(40 + i)))
    for i in range(12):
        exposures.append(Exposure(1, f"V{i:03}", "treatment", "vip", "email"))
    # the edge cases, each on its own member
    sales += [
        # a late redemption: the coupon used three weeks later, outside the window: attributed, not a conversion
        Sale("late", "T001", T0 + timedelta(days=21), Decimal("120.00"), coupon_of_run=1, redeemed_at=T0 + 21 * DAY),
        # refunded since: counts nowhere, and its redemption no longer counts
        Sale(
            "refunded",
            "T002",
            T0 + 2 * DAY,
            Decimal("70.00"),
            status="refunded",
            coupon_of_run=1,
            redeemed_at=T0 + 2 * DAY,
        ),
        Sale("cancelled", "C001", T0 + 2 * DAY, Decimal("33.00"), status="cancelled"),
        # before the message was due, and after --at
        Sale("before", "T004", T0 - timedelta(hours=1), Decimal("15.00")),
        Sale("after-at", "T005", AT + DAY, Decimal("99.00")),
        # the window's ends: the last second inside, the first outside
        Sale("edge-in", "T007", T0 + 14 * DAY - timedelta(seconds=1), Decimal("11.00")),
        Sale("edge-out", "T008", T0 + 14 * DAY, Decimal("12.00")),
        # a coupon redeemed in the window: attributed by coupon
        Sale("coupon", "T010", T0 + 3 * DAY, Decimal("88.80"), coupon_of_run=1, redeemed_at=T0 + 3 * DAY),
        # deferred by quiet hours to a day later: an order before that is not in its window, one 14½ days on is
        Sale("deferred-early", "V001", T0 + timedelta(hours=12), Decimal("25.00")),
        Sale("deferred-late", "V001", T0 + timedelta(days=14, hours=12), Decimal("26.00")),
        # overlapping campaigns: T011 contacted by both; 6 days in, both windows cover the order
        Sale("overlap", "T011", T0 + 6 * DAY, Decimal("80.00")),
        # and 13 days in only spring's covers it (autumn's 7 days are over)
        Sale("overlap-late", "T013", T0 + 13 * DAY, Decimal("60.00")),
    ]
    exposures[[e.member for e in exposures].index("V001")].deferred_until = T0 + DAY
    # autumn: two of spring's contacted members, and a small control group
    exposures += [Exposure(2, "T011", "treatment", "main", "sms"), Exposure(2, "T013", "treatment", "main", "sms")]
    exposures += [Exposure(2, f"A{i:03}", "control", "main", "sms") for i in range(3)]
    return exposures, sales


# --- the reference model ------------------------------------------------------------------------------------


def start_of(e: Exposure) -> datetime:
    return e.deferred_until or RUNS[e.run][1]


def covers(e: Exposure, sale: Sale) -> bool:
    start = start_of(e)
    return sale.status == "paid" and sale.at <= AT and start <= sale.at < start + RUNS[e.run][2]


def expected_attribution(exposures, sales, model="last_touch") -> dict[str, int]:
    """order id → run"""
    out = {}
    for sale in sales:
        if sale.status != "paid" or sale.at > AT:
            continue
        if sale.coupon_of_run is not None:
            out[sale.order_id] = sale.coupon_of_run
            continue
        touches = [e for e in exposures if e.member == sale.member and e.group == "treatment" and covers(e, sale)]
        if touches:
            pick = max if model == "last_touch" else min
            out[sale.order_id] = pick(touches, key=lambda e: (start_of(e), e.run)).run
    return out


def expected_groups(exposures, sales, run: int, step: str | None = None) -> dict[str, GroupSums]:
    groups = {"treatment": GroupSums(), "control": GroupSums()}
    for e in exposures:
        if e.run != run or (step is not None and e.step != step):
            continue
        revenue = sum((s.amount * 100 for s in sales if s.member == e.member and covers(e, s)), Decimal(0))
        converted = any(s.member == e.member and covers(e, s) for s in sales)
        groups[e.group] += GroupSums(1, int(converted), float(revenue), float(revenue * revenue))
    return groups


# --- loading the case ---------------------------------------------------------------------------------------


def load(engine, exposures, sales) -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    members = sorted({e.member for e in exposures} | {s.member for s in sales})
    with engine.begin() as conn:
        conn.execute(
            insert(Customer),
            [{"customer_id": m, "created_at": now, "updated_at": now, "attributes": {}} for m in members],
        )
        pk = dict(conn.execute(select(Customer.customer_id, Customer.id)).all())
        definitions = {"spring": {}, "autumn": {"attribution": {"window": "P7D"}}}
        for run, (name, at, _window) in RUNS.items():
            conn.execute(
                insert(Campaign),
                [{"id": run, "name": name, "definition": definitions[name], "created_at": now, "updated_at": now}],
            )
            conn.execute(
                insert(CampaignRun),
                [{"id": run, "campaign_pk": run, "scheduled_at": at, "state": "done", "summary": {}}],
            )
        coupons = {}
        for n, e in enumerate(exposures):
            coupon_pk = None
            if e.run == 1 and e.group == "treatment":
                coupon_pk = conn.execute(
                    insert(Coupon)
                    .values(
                        code=f"CODE{n:05}",
                        campaign_pk=1,
                        run_pk=1,
                        customer_pk=pk[e.member],
                        step=e.step,
                        offer_kind="amount_off",
                        value=FACE,
                        terms={"face_value": str(FACE)},
                        valid_from=T0,
                        valid_until=T0 + 60 * DAY,
                        state="issued",
                        issued_at=T0,
                    )
                    .returning(Coupon.id)
                ).scalar_one()
                coupons[e.member] = coupon_pk
            conn.execute(
                insert(Delivery),
                [
                    {
                        "run_pk": e.run,
                        "customer_pk": pk[e.member],
                        "channel": e.channel,
                        "step": e.step,
                        "state": "sent" if e.group == "treatment" else "held_out",
                        "reason": None if e.group == "treatment" else "control_group",
                        "deferred_until": e.deferred_until,
                        "coupon_pk": coupon_pk,
                        "created_at": now,
                        "updated_at": now,
                        "sent_at": now if e.group == "treatment" else None,
                    }
                ],
            )
        # two members the runs skipped, one send that failed
        conn.execute(
            insert(Delivery),
            [
                {
                    "run_pk": 1,
                    "customer_pk": pk["T000"],
                    "channel": "email",
                    "step": "main",
                    "state": "failed",
                    "created_at": now,
                    "updated_at": now,
                },
            ],
        )
        for s in sales:
            order_pk = conn.execute(
                insert(Order)
                .values(
                    order_id=s.order_id,
                    customer_pk=pk[s.member],
                    ordered_at=s.at,
                    amount=s.amount,
                    status=s.status,
                    created_at=now,
                    updated_at=now,
                    attributes={},
                )
                .returning(Order.id)
            ).scalar_one()
            if s.coupon_of_run is not None:
                conn.execute(
                    insert(CouponRedemption).values(
                        coupon_pk=coupons[s.member],
                        order_pk=order_pk,
                        amount=s.amount,
                        redeemed_at=s.redeemed_at,
                        source="test",
                    )
                )


def settings(margin: Decimal | None = None, model: str = "last_touch") -> Settings:
    return Settings(
        channels={"sms": {"cost_per_message": SMS_PRICE}},
        results=ResultsConfig(margin=margin, attribution=AttributionConfig(model=model)),
    )


@pytest.fixture
def case(engine):
    exposures, sales = build_case()
    load(engine, exposures, sales)
    return engine, exposures, sales


def money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01")))


def attributed_revenue(exposures, sales, run: int, model="last_touch", step=None, channel=None) -> Decimal:
    owner = expected_attribution(exposures, sales, model)
    contacted = {
        e.member
        for e in exposures
        if e.run == run
        and e.group == "treatment"
        and (step is None or e.step == step)
        and (channel is None or e.channel == channel)
    }
    return sum((s.amount for s in sales if owner.get(s.order_id) == run and s.member in contacted), Decimal(0))


# --- the tests ----------------------------------------------------------------------------------------------


def test_attribution_by_coupon_window_and_last_touch(case):
    engine, exposures, sales = case
    owner = expected_attribution(exposures, sales)
    # the model itself, on the cases named above
    assert owner["late"] == 1 and owner["coupon"] == 1 and owner["overlap"] == 2 and owner["overlap-late"] == 1
    assert "refunded" not in owner and "before" not in owner and "after-at" not in owner
    assert owner["edge-in"] == 1 and "edge-out" not in owner
    assert owner["deferred-late"] == 1 and "deferred-early" not in owner

    spring = build_report(engine, settings(), Scope("spring", None, AT))
    autumn = build_report(engine, settings(), Scope("autumn", None, AT))
    assert spring["revenue"]["attributed"] == money(attributed_revenue(exposures, sales, 1))
    assert autumn["revenue"]["attributed"] == money(Decimal("80.00"))  # the overlapping order, last touch
    everything = build_report(engine, settings(), Scope(None, None, AT))
    assert Decimal(everything["revenue"]["attributed"]) == Decimal(spring["revenue"]["attributed"]) + Decimal("80.00")


def test_first_touch_gives_the_overlapping_order_to_the_earlier_campaign(case):
    engine, exposures, sales = case
    spring = build_report(engine, settings(model="first_touch"), Scope("spring", None, AT))
    autumn = build_report(engine, settings(model="first_touch"), Scope("autumn", None, AT))
    assert spring["revenue"]["attributed"] == money(attributed_revenue(exposures, sales, 1, "first_touch"))
    assert autumn["revenue"]["attributed"] == "0.00"
    assert Decimal(spring["revenue"]["attributed"]) - Decimal("80.00") == attributed_revenue(exposures, sales, 1)


def test_control_comparison_matches_the_reference(case):
    engine, exposures, sales = case
    doc = build_report(engine, settings(), Scope("spring", None, AT))
    groups = expected_groups(exposures, sales, 1)
    t, c = groups["treatment"], groups["control"]
    conv = doc["conversions"]
    assert (doc["contacted"], doc["control"]) == (t.members, c.members) == (72, 40)
    assert (conv["treatment"], conv["control"]) == (t.converted, c.converted)
    assert conv["rate_treatment"] == pytest.approx(t.converted / t.members)
    assert conv["uplift"] == pytest.approx(t.converted / t.members - c.converted / c.members)
    assert conv["uplift_ci95"] == pytest.approx(list(newcombe_interval(t.converted, t.members, c.converted, c.members)))
    per_t = Decimal(int(t.total)) / t.members / 100
    per_c = Decimal(int(c.total)) / c.members / 100
    assert doc["revenue"]["per_member_treatment"] == money(per_t)
    assert doc["revenue"]["incremental"] == money((per_t - per_c) * t.members)
    low, high = welch_interval(t, c)
    assert doc["revenue"]["incremental_ci95"] == [
        money(Decimal(repr(low)) * t.members / 100),
        money(Decimal(repr(high)) * t.members / 100),
    ]
    assert doc["cannibalisation"] == pytest.approx((c.converted / c.members) / (t.converted / t.members))
    # by step: main has both groups, vip none held out
    steps = {row["step"]: row for row in doc["by_step"]}
    main = expected_groups(exposures, sales, 1, "main")
    assert steps["main"]["conversions"]["treatment"] == main["treatment"].converted
    assert steps["vip"]["control"] == 0
    assert steps["vip"]["verdict"].startswith("No control group")
    # by channel: the held-out members were planned on SMS, so SMS compares; e-mail reached the vip step
    channels = {row["channel"]: row for row in doc["by_channel"]}
    assert channels["sms"]["contacted"] == 60 and channels["sms"]["control"] == 40
    assert channels["email"]["contacted"] == 12 and channels["email"]["failed"] == 1
    assert doc["verdict"].startswith(("Clear positive effect", "Not distinguishable from no effect"))


def test_refunds_and_late_redemptions_in_the_offer_figures(case):
    engine, _exposures, _sales = case
    doc = build_report(engine, settings(), Scope("spring", None, AT))
    # 72 coupons issued; redeemed: the late one and the one in the window (the refunded order's no longer counts)
    assert doc["offers"]["issued"] == 72
    assert doc["offers"]["redeemed"] == 2
    assert doc["offers"]["cost"] == money(2 * FACE)
    # before the late redemption, only one
    early = build_report(engine, settings(), Scope("spring", None, T0 + 20 * DAY))
    assert early["offers"]["redeemed"] == 1
    assert Decimal(early["revenue"]["attributed"]) == Decimal(doc["revenue"]["attributed"]) - Decimal("120.00")


def test_roi_with_and_without_margin(case):
    engine, exposures, sales = case
    plain = build_report(engine, settings(), Scope("spring", None, AT))
    with_margin = build_report(engine, settings(margin=Decimal("0.30")), Scope("spring", None, AT))
    send_cost = SMS_PRICE * 60  # 60 SMS sent; e-mail has no price
    offer_cost = 2 * FACE
    cost = send_cost + offer_cost
    assert plain["send_cost"] == money(send_cost)
    attributed = attributed_revenue(exposures, sales, 1)
    incremental = Decimal(plain["revenue"]["incremental"])
    assert plain["roi"] == pytest.approx(float((attributed - cost) / cost), abs=1e-4)
    assert with_margin["roi"] == pytest.approx(float((attributed * Decimal("0.30") - cost) / cost), abs=1e-4)
    assert with_margin["roi_incremental"] == pytest.approx(
        float((incremental * Decimal("0.30") - cost) / cost), abs=1e-4
    )
    assert plain["margin"] is None and with_margin["margin"] == "0.30"


def test_too_small_a_control_group_says_so(case):
    engine, _exposures, _sales = case
    doc = build_report(engine, settings(), Scope("autumn", None, AT))
    assert doc["control"] == 3
    assert doc["verdict"].startswith("Too small a sample to tell")


def test_daily_series_adds_up(case):
    engine, _exposures, _sales = case
    doc = build_report(engine, settings(), Scope("spring", None, AT))
    assert sum(d["conversions_treatment"] for d in doc["daily"]) == doc["conversions"]["treatment"]
    assert sum(d["conversions_control"] for d in doc["daily"]) == doc["conversions"]["control"]
    assert doc["daily"][0]["date"] == "2026-11-01"


def test_report_command_json_csv_and_bad_input(case, run_cli, tmp_path):
    out = tmp_path / "rows.csv"
    result = run_cli("report", "spring", "--at", AT.isoformat(), "--json", "--csv", str(out))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    for key in (
        "campaign",
        "runs",
        "targeted",
        "control",
        "sent",
        "delivered",
        "failed",
        "skipped",
        "offers",
        "conversions",
        "revenue",
        "send_cost",
        "roi",
        "roi_incremental",
        "cannibalisation",
        "by_step",
        "by_variant",
        "by_channel",
        "verdict",
        "funnel",
        "daily",
    ):
        assert key in doc
    assert isinstance(doc["revenue"]["attributed"], str) and isinstance(doc["offers"]["cost"], str)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert {(r["run_id"], r["step"], r["channel"]) for r in rows} == {
        ("1", "main", "sms"),
        ("1", "main", "email"),
        ("1", "vip", "email"),
    }
    table = run_cli("report", "spring", "--at", AT.isoformat())
    assert table.exit_code == 0 and "Against the control group" in table.output
    missing = run_cli("report", "no-such-campaign", "--at", AT.isoformat())
    assert missing.exit_code == 2 and "no campaign named" in missing.output
    assert run_cli("report", "--run", "99", "--at", AT.isoformat()).exit_code == 2


def test_verdict_when_every_member_was_skipped():
    """A campaign with a control group whose whole audience was skipped (caps, consent) has neither group: the
    verdict says so instead of asking for a control group the campaign already has."""
    tally = Tally(targeted=706, skipped=Counter({"frequency_cap": 706}))
    sentence = verdict(tally, 10, None, None)
    assert sentence.startswith("Nobody was contacted or held out") and "706 members skipped" in sentence
    assert "control_group:" not in sentence
