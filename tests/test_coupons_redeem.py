"""Redeeming and looking up coupons: ``orchestrator coupons redeem|show|list``, ``import redemptions`` and the
pickup of coupon codes by ``import orders``, on SQLite and PostgreSQL.

Coupons come from the real pipeline (``orchestrator run`` of a campaign with a coupon offer) in the end-to-end
test, and otherwise are inserted as the coupon offer issues them: terms validated by ``CouponTerms``, validity
from ``plugins.coupon.validity``, the stored terms as the offer writes them. The shop's time zone is the default,
Asia/Shanghai (no daylight saving), and lunch is the default daypart 11:00-14:00.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, insert, select

from orchestrator.config import Settings
from orchestrator.coupons import codes
from orchestrator.coupons.offer import CouponTerms, validity
from orchestrator.coupons.redemption import Redemption, RedemptionRefused, redeem
from orchestrator.data.importing import ImportResult, import_orders
from orchestrator.data.records import ORDER_COLUMNS
from orchestrator.db.engine import create_db_engine
from orchestrator.db.models import Coupon, CouponRedemption, Customer, Order

SHOP_TZ = ZoneInfo("Asia/Shanghai")
SETTINGS = Settings()
NOW = datetime(2025, 6, 1, tzinfo=UTC)
ISSUED = "2025-07-01T10:00:00"  # a Tuesday; 14 valid days end at 2025-07-15 00:00 shop time
LUNCH = "2025-07-02T12:30:00"  # Wednesday lunch


def local(text: str) -> datetime:
    """A shop-local time written without offset, as an aware datetime."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=SHOP_TZ)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No orchestrator.yaml from the checkout: the built-in settings apply."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)


# --- a small shop, written as the importer and the coupon offer write it ----------------------------------------


@dataclass
class Shop:
    engine: Engine
    keys: dict[str, int] = field(default_factory=dict)

    def customers(self, *customer_ids: str) -> None:
        with self.engine.begin() as conn:
            for customer_id in customer_ids:
                self.keys[customer_id] = conn.execute(
                    insert(Customer)
                    .values(customer_id=customer_id, attributes={}, created_at=NOW, updated_at=NOW)
                    .returning(Customer.id)
                ).scalar_one()

    def order(self, order_id: str, customer_id: str = "C1", at: str = LUNCH, amount="120.00", status="paid") -> str:
        with self.engine.begin() as conn:
            conn.execute(
                insert(Order).values(
                    order_id=order_id,
                    customer_pk=self.keys[customer_id],
                    ordered_at=local(at),
                    amount=Decimal(amount),
                    status=status,
                    attributes={},
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
        return order_id

    def coupon(self, customer_id: str = "C1", *, issued: str = ISSUED, state: str = "issued", **terms: Any) -> str:
        """A coupon as the offer issues it; by default 满100减20, valid 14 days, exclusive."""
        options = {"kind": "amount_off", "value": 20, "min_spend": 100, "valid_days": 14, **terms}
        if "valid_until" in terms:
            options.pop("valid_days")
        parsed = CouponTerms.model_validate(options)
        valid_from, valid_until = validity(parsed, local(issued), SHOP_TZ)
        code = codes.new_code()
        with self.engine.begin() as conn:
            conn.execute(
                insert(Coupon).values(
                    code=code,
                    customer_pk=self.keys[customer_id],
                    step="main",
                    offer_kind=parsed.kind,
                    group=parsed.group,
                    value=parsed.value,
                    min_spend=parsed.min_spend,
                    terms={
                        "cap": None,
                        "item": parsed.item,
                        "face_value": str(parsed.unit_face_value or 0),
                        "dayparts": parsed.dayparts,
                        "weekdays": parsed.weekdays,
                        "stacking": parsed.stacking,
                        "bundle_with": parsed.bundle_with,
                        "description": parsed.describe(),
                    },
                    valid_from=valid_from,
                    valid_until=valid_until,
                    state=state,
                    issued_at=local(issued),
                )
            )
        return code

    def redeem(self, code: str, order_id: str, **options: Any) -> Redemption:
        with self.engine.begin() as conn:
            return redeem(conn, SETTINGS, code, order_id, source="test", **options)

    def refusal(self, code: str, order_id: str, **options: Any) -> RedemptionRefused:
        with pytest.raises(RedemptionRefused) as caught:
            self.redeem(code, order_id, **options)
        return caught.value

    def state(self, code: str) -> tuple[str, datetime | None]:
        with self.engine.connect() as conn:
            row = conn.execute(select(Coupon.state, Coupon.redeemed_at).where(Coupon.code == code)).one()
        return row.state, row.redeemed_at

    def redemptions(self, code: str | None = None) -> list[tuple]:
        """(code, order_id, amount, redeemed_at, source) of every redemption, or of one coupon's."""
        query = (
            select(Coupon.code, Order.order_id, CouponRedemption.amount, CouponRedemption.redeemed_at)
            .add_columns(CouponRedemption.source)
            .join(Coupon, Coupon.id == CouponRedemption.coupon_pk)
            .outerjoin(Order, Order.id == CouponRedemption.order_pk)
            .order_by(CouponRedemption.id)
        )
        if code is not None:
            query = query.where(Coupon.code == code)
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]


@pytest.fixture
def shop(engine: Engine) -> Shop:
    shop = Shop(engine)
    shop.customers("C1", "C2")
    return shop


def one_char_changed(code: str) -> str:
    """The code with its third character replaced by another character of the alphabet: a typo."""
    replacement = next(ch for ch in codes.ALPHABET if ch != code[2])
    return code[:2] + replacement + code[3:]


def cli_json(run_cli, *args: str, exit_code: int = 0) -> Any:
    result = run_cli(*args, "--json")
    assert result.exit_code == exit_code, result.output
    return json.loads(result.stdout)


# --- refusals, each with its reason ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    reason: str
    detail: str
    coupon: dict[str, Any] = field(default_factory=dict)  # Shop.coupon arguments
    order: dict[str, Any] = field(default_factory=dict)  # Shop.order arguments
    options: tuple[str, ...] = ()  # more command-line options


REFUSALS = {
    "another member's coupon": Case(
        "wrong_customer", "the coupon belongs to another member, not to C2", order={"customer_id": "C2"}
    ),
    "expired at the end of validity": Case(
        "expired",
        "expired on 2025-07-15 00:00 (Asia/Shanghai); the order was placed at 2025-07-15 00:00 (Asia/Shanghai)",
        order={"at": "2025-07-15T00:00:00"},
    ),
    "expired, order written in UTC": Case(
        "expired",
        "expired on 2025-07-15 00:00 (Asia/Shanghai); the order was placed at 2025-07-15 08:00 (Asia/Shanghai)",
        order={"at": "2025-07-15T00:00:00+00:00"},
    ),
    "not valid yet": Case(
        "not_yet_valid",
        "not valid before 2025-07-05 00:00 (Asia/Shanghai); the order was placed at 2025-07-04 23:59:59 "
        "(Asia/Shanghai)",
        coupon={"valid_from": "2025-07-05"},
        order={"at": "2025-07-04T23:59:59"},
    ),
    "lunch coupon on a 19:00 dinner": Case(
        "daypart",
        "only valid at lunch (11:00-14:00); the order was placed at 2025-07-02 19:00 (Asia/Shanghai)",
        coupon={"dayparts": ["lunch"]},
        order={"at": "2025-07-02T19:00:00"},
    ),
    "lunch coupon at exactly 14:00": Case(
        "daypart",
        "only valid at lunch (11:00-14:00); the order was placed at 2025-07-02 14:00 (Asia/Shanghai)",
        coupon={"dayparts": ["lunch"]},
        order={"at": "2025-07-02T14:00:00"},
    ),
    "lunch coupon at 12:30 UTC (20:30 in the shop)": Case(
        "daypart",
        "the order was placed at 2025-07-02 20:30 (Asia/Shanghai)",
        coupon={"dayparts": ["lunch"]},
        order={"at": "2025-07-02T12:30:00+00:00"},
    ),
    "late-night coupon at 06:00 (window wraps midnight)": Case(
        "daypart",
        "only valid at late (21:00-06:00)",
        coupon={"dayparts": ["late"]},
        order={"at": "2025-07-03T06:00:00"},
    ),
    "weekend coupon on a Wednesday": Case(
        "weekday",
        "only valid on sat, sun; the order was placed at 2025-07-02 12:30 (Asia/Shanghai), a Wednesday",
        coupon={"weekdays": ["sat", "sun"]},
    ),
    "minimum spend not met": Case(
        "min_spend", "the minimum spend is 100.00; the order's amount is 99.99", order={"amount": "99.99"}
    ),
    "minimum spend not met by the amount given": Case(
        "min_spend",
        "the minimum spend is 100.00; the amount given is 80.00",
        order={"amount": "150.00"},
        options=("--amount", "80"),
    ),
    "amount given above the order's": Case(
        "amount", "the amount 200.00 is more than the order's amount 120.00", options=("--amount", "200")
    ),
    "void coupon": Case("void", "the coupon was voided", coupon={"state": "void"}),
    "coupon marked expired": Case(
        "expired", "expired on 2025-07-15 00:00 (Asia/Shanghai)", coupon={"state": "expired"}
    ),
    "refunded order": Case("not_paid", "the order is refunded, not paid", order={"status": "refunded"}),
    "cancelled order": Case("not_paid", "the order is cancelled, not paid", order={"status": "cancelled"}),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_exit_2_with_the_reason_and_change_nothing(run_cli, shop: Shop, case: str):
    spec = REFUSALS[case]
    code = shop.coupon(**spec.coupon)
    order_id = shop.order("O1", **spec.order)
    data = cli_json(run_cli, "coupons", "redeem", codes.display(code), "--order", order_id, *spec.options, exit_code=2)
    assert data == {
        "status": "refused",
        "code": codes.display(code),
        "order_id": "O1",
        "reason": spec.reason,
        "detail": data["detail"],
    }
    assert spec.detail in data["detail"]
    result = run_cli("coupons", "redeem", code, "--order", order_id, *spec.options)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: coupon {codes.display(code)} cannot be redeemed on order O1: ")
    assert spec.detail in result.stderr
    assert shop.redemptions() == []
    assert shop.state(code) == (spec.coupon.get("state", "issued"), None)


ACCEPTED = {
    "lunch coupon at 13:59": ({"dayparts": ["lunch"]}, {"at": "2025-07-02T13:59:00"}),
    "lunch coupon at 11:00": ({"dayparts": ["lunch"]}, {"at": "2025-07-02T11:00:00"}),
    "lunch or dinner coupon at 19:00": ({"dayparts": ["lunch", "dinner"]}, {"at": "2025-07-02T19:00:00"}),
    "late-night coupon at 01:30": ({"dayparts": ["late"]}, {"at": "2025-07-03T01:30:00"}),
    "late-night coupon at 21:00": ({"dayparts": ["late"]}, {"at": "2025-07-02T21:00:00"}),
    "last second of validity": ({}, {"at": "2025-07-14T23:59:59"}),
    "first second of validity": ({}, {"at": ISSUED}),
    "weekday coupon on its weekday": ({"weekdays": ["wed"]}, {}),
    "weekday in shop time, not UTC": ({"weekdays": ["thu"]}, {"at": "2025-07-02T16:30:00+00:00"}),
    "minimum spend exactly met": ({}, {"amount": "100.00"}),
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_redeemed_at_the_edges(shop: Shop, case: str):
    coupon, order = ACCEPTED[case]
    code = shop.coupon(**coupon)
    shop.order("O1", **order)
    redemption = shop.redeem(code, "O1")
    assert redemption.new
    assert shop.state(code) == ("redeemed", local(order.get("at", LUNCH)))


def test_dayparts_and_weekdays_are_read_in_the_shop_time_zone(shop: Shop):
    """12:30 in Berlin is lunch for a Berlin shop and 18:30 (dinner) for a Shanghai shop."""
    berlin = Settings(timezone="Europe/Berlin")
    code = shop.coupon(dayparts=["lunch"], issued="2025-07-01T00:00:00")
    shop.order("O1", at="2025-07-02T12:30:00+02:00")
    with shop.engine.begin() as conn, pytest.raises(RedemptionRefused) as caught:
        redeem(conn, SETTINGS, code, "O1", source="test")
    assert caught.value.reason == "daypart"
    assert "2025-07-02 18:30 (Asia/Shanghai)" in caught.value.detail
    with shop.engine.begin() as conn:
        assert redeem(conn, berlin, code, "O1", source="test").new


def test_a_mistyped_code_is_refused_before_any_lookup(shop: Shop):
    code = shop.coupon()
    shop.order("O1")
    typo = one_char_changed(code)
    assert typo != code
    # no connection at all: the check character alone catches the typo
    with pytest.raises(RedemptionRefused) as caught:
        redeem(None, SETTINGS, codes.display(typo), "O1", source="test")  # type: ignore[arg-type]
    assert caught.value.reason == "mistyped"
    assert "check character" in caught.value.detail
    swapped = code[:4] + code[5] + code[4] + code[6:]
    if swapped != code and {code[4], code[5]} != {"2", "Z"}:  # Luhn mod N misses only that one swap
        assert shop.refusal(swapped, "O1").reason == "mistyped"
    for text, says in [
        ("SPRING-20", "a coupon code has 12 characters, this one has 8"),
        (code[:-1] + "0", "0 cannot occur in a coupon code"),
        ("", "the code is empty"),
    ]:
        refused = shop.refusal(text, "O1")
        assert (refused.reason, says in refused.detail) == ("mistyped", True), refused.detail
    assert shop.redemptions() == []


def test_mistyped_and_unknown_codes_and_orders_on_the_command_line(run_cli, shop: Shop):
    code = shop.coupon()
    shop.order("O1")
    typo = codes.display(one_char_changed(code))
    result = run_cli("coupons", "redeem", typo, "--order", "O1")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: coupon {typo} cannot be redeemed on order O1: the code is mistyped")
    assert "check character" in result.stderr
    unknown = codes.new_code()
    data = cli_json(run_cli, "coupons", "redeem", unknown, "--order", "O1", exit_code=2)
    assert (data["reason"], data["detail"]) == ("unknown_code", "no coupon has this code")
    data = cli_json(run_cli, "coupons", "redeem", code, "--order", "O404", exit_code=2)
    assert (data["reason"], data["detail"]) == ("unknown_order", "there is no such order")
    for bad in (["--amount", "12.345"], ["--amount", "-5"], ["--at", "yesterday"]):
        result = run_cli("coupons", "redeem", code, "--order", "O1", *bad)
        assert result.exit_code == 2 and result.stderr.startswith(f"error: {bad[0]}: "), result.stderr
    assert shop.redemptions() == []


# --- success, idempotency and double redemption -------------------------------------------------------------------


def test_redeem_on_the_command_line_records_one_redemption(run_cli, shop: Shop):
    code = shop.coupon()
    shop.order("O1", amount="135.50")
    typed = "  " + codes.display(code).lower().replace("-", " ") + " "
    data = cli_json(run_cli, "coupons", "redeem", typed, "--order", "O1")
    assert data == {
        "status": "redeemed",
        "code": codes.display(code),
        "order_id": "O1",
        "customer_id": "C1",
        "amount": 135.5,
        "redeemed_at": "2025-07-02T12:30:00+08:00",
        "source": "cli",
    }
    assert shop.state(code) == ("redeemed", local(LUNCH))
    assert shop.redemptions() == [(code, "O1", Decimal("135.50"), local(LUNCH), "cli")]

    # the same coupon on the same order again: the same answer, exit 0, nothing new
    again = cli_json(run_cli, "coupons", "redeem", code, "--order", "O1")
    assert again == {**data, "status": "already_redeemed"}
    result = run_cli("coupons", "redeem", code, "--order", "O1")
    assert result.exit_code == 0
    assert "already redeemed on order O1" in result.stdout and "nothing changed" in result.stdout
    assert len(shop.redemptions()) == 1


def test_redeem_with_amount_and_time(run_cli, shop: Shop):
    code = shop.coupon()
    shop.order("O1", amount="300.00")
    result = run_cli("coupons", "redeem", code, "--order", "O1", "--amount", "120", "--at", "2025-07-02T12:45:00")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"redeemed {codes.display(code)} on order O1 (C1), amount 120.00")
    at = local("2025-07-02T12:45:00")
    assert shop.state(code) == ("redeemed", at)
    assert shop.redemptions() == [(code, "O1", Decimal("120.00"), at, "cli")]


def test_a_second_order_is_refused_and_the_first_kept(run_cli, shop: Shop):
    code = shop.coupon()
    shop.order("O1")
    shop.order("O2", at="2025-07-03T12:00:00")
    assert shop.redeem(code, "O1").new
    data = cli_json(run_cli, "coupons", "redeem", code, "--order", "O2", exit_code=2)
    assert data["reason"] == "already_redeemed"
    assert data["detail"] == "already redeemed on order O1 at 2025-07-02 12:30 (Asia/Shanghai)"
    again = shop.redeem(code, "O1")
    assert (again.new, again.order_id, again.source) == (False, "O1", "test")
    assert shop.redemptions() == [(code, "O1", Decimal("120.00"), local(LUNCH), "test")]


def test_a_coupon_marked_redeemed_without_a_redemption_row_is_refused(shop: Shop):
    code = shop.coupon(state="redeemed")
    shop.order("O1")
    refused = shop.refusal(code, "O1")
    assert (refused.reason, refused.detail) == ("already_redeemed", "already redeemed")


# --- stacking -----------------------------------------------------------------------------------------------------


def test_an_exclusive_coupon_is_not_combined(shop: Shop):
    combinable = shop.coupon(stacking="combinable")
    exclusive = shop.coupon()
    shop.order("O1", amount="250.00")
    shop.redeem(combinable, "O1")
    refused = shop.refusal(exclusive, "O1")
    assert refused.reason == "stacking"
    assert refused.detail == (
        f"the order already redeemed coupon {codes.display(combinable)} and this coupon is exclusive: "
        "it cannot be combined with another coupon"
    )


def test_a_combinable_coupon_is_not_added_to_an_exclusive_one(shop: Shop):
    exclusive = shop.coupon()
    combinable = shop.coupon(stacking="combinable")
    shop.order("O1", amount="250.00")
    shop.redeem(exclusive, "O1")
    refused = shop.refusal(combinable, "O1")
    assert refused.reason == "stacking"
    assert refused.detail.endswith("that coupon is exclusive: it cannot be combined with another coupon")
    assert [r[0] for r in shop.redemptions()] == [exclusive]


def test_combinable_coupons_stack(shop: Shop):
    first, second = shop.coupon(stacking="combinable"), shop.coupon(stacking="combinable", kind="gift", item="tea")
    shop.order("O1", amount="250.00")
    assert shop.redeem(first, "O1").new and shop.redeem(second, "O1").new
    assert [(r[0], r[1]) for r in shop.redemptions()] == [(first, "O1"), (second, "O1")]


def test_a_bundled_coupon_needs_its_group_on_the_same_order(shop: Shop):
    dish = shop.coupon(group="main-dish")  # exclusive towards anything but its bundle
    drink = shop.coupon(kind="free_item", item="饮料", min_spend=0, stacking="bundled", bundle_with="main-dish")
    other_dish = shop.coupon(group="main-dish")
    extra = shop.coupon(stacking="combinable", min_spend=0)
    shop.order("O1", amount="150.00")
    shop.order("O2", amount="150.00", at="2025-07-02T12:40:00")

    refused = shop.refusal(drink, "O1")  # no main dish redeemed yet
    assert refused.reason == "bundle"
    assert refused.detail == "this coupon is bundled: it needs a coupon of group main-dish redeemed on the same order"
    shop.redeem(other_dish, "O2")
    assert shop.refusal(drink, "O1").reason == "bundle"  # its partner on another order does not count

    shop.redeem(dish, "O1")
    assert shop.redeem(drink, "O1").new
    refused = shop.refusal(extra, "O1")
    assert refused.reason == "stacking"
    assert "that coupon is exclusive" in refused.detail
    assert [(r[0], r[1]) for r in shop.redemptions()] == [(other_dish, "O2"), (dish, "O1"), (drink, "O1")]


# --- show and list ------------------------------------------------------------------------------------------------


def test_show_and_list_coupons_without_a_campaign(run_cli, shop: Shop):
    code = shop.coupon(dayparts=["lunch"], weekdays=["tue", "wed"], group="winback", stacking="combinable")
    shop.order("O1")
    data = cli_json(run_cli, "coupons", "show", code.lower(), "--at", LUNCH)
    assert data["code"] == codes.display(code)
    assert (data["state"], data["customer_id"], data["campaign"], data["run_scheduled_at"]) == (
        "issued",
        "C1",
        None,
        None,
    )
    assert data["description"] == "满100减20元，仅限午市，周二、三"
    assert (data["dayparts"], data["weekdays"], data["group"], data["stacking"]) == (
        ["lunch"],
        ["tue", "wed"],
        "winback",
        "combinable",
    )
    assert (data["valid_from"], data["valid_until"]) == ("2025-07-01T10:00:00+08:00", "2025-07-15T00:00:00+08:00")
    assert data["redemptions"] == [] and data["redeemed_at"] is None
    for bad, message in [(one_char_changed(code), "check character"), (codes.new_code(), "no coupon has this code")]:
        result = run_cli("coupons", "show", bad)
        assert result.exit_code == 2 and message in result.stderr
    result = run_cli("coupons", "list", "--campaign", "nope")
    assert result.exit_code == 2
    assert "no campaign named 'nope'" in result.stderr


def test_an_issued_coupon_past_its_validity_reads_as_expired(run_cli, shop: Shop):
    """Nothing ever wrote 'expired': a coupon valid until July 2025 still showed 'issued' in December 2026, and
    `list --state expired` found nothing. Time makes the change; `--at` shows any moment."""
    code = shop.coupon()  # valid 2025-07-01 10:00 to 2025-07-15 00:00 shop time
    shop.coupon("C2", issued="2025-07-10T10:00:00")  # valid to 2025-07-24
    assert cli_json(run_cli, "coupons", "show", code, "--at", "2025-07-14T23:59:59")["state"] == "issued"
    assert cli_json(run_cli, "coupons", "show", code, "--at", "2025-07-15T00:00:00")["state"] == "expired"
    assert cli_json(run_cli, "coupons", "show", code)["state"] == "expired"  # now, long after
    assert "state       expired" in run_cli("coupons", "show", code).stdout


# --- the closing loop through the real pipeline ------------------------------------------------------------------

CUSTOMERS_CSV = """\
customer_id,name,email,phone,province,city,gender,birthday,signup_at,tags,email_opt_in,sms_opt_in,wechat_openid,timezone
C1,王一,c1@example.com,,浙江,杭州,F,,2025-01-01,,yes,no,,
C2,李二,c2@example.com,,四川,成都,M,,2025-01-01,,yes,no,,
C3,张三,c3@example.com,,山东,济南,F,,2025-01-01,,no,no,,
"""
HISTORY_CSV = """\
order_id,customer_id,ordered_at,amount,status,channel,payment_method,coupon_code,category
H1,C1,2025-05-03T19:10:00,180.00,paid,store,card,,dinner
H2,C2,2025-05-04T19:30:00,220.00,paid,store,card,,dinner
H3,C3,2025-05-05T20:00:00,160.00,paid,store,card,,dinner
"""
CAMPAIGN = """\
name: dinner-to-lunch
description: frequent dinner guests get a free signature dish, redeemable only at lunch
segment: {frequency: {gte: 1}}
steps:
  - name: signature-dish
    offer: {coupon: {kind: free_item, item: 招牌菜, min_spend: 50, valid_days: 14, dayparts: [lunch]}}
    message:
      coupon: {}
"""
RUN_AT = "2025-07-01T10:00:00+08:00"


def test_the_closing_loop_through_the_pipeline(run_cli, engine: Engine, tmp_path: Path):
    (tmp_path / "customers.csv").write_text(CUSTOMERS_CSV, encoding="utf-8")
    (tmp_path / "history.csv").write_text(HISTORY_CSV, encoding="utf-8")
    (tmp_path / "campaign.yaml").write_text(CAMPAIGN, encoding="utf-8")
    assert cli_json(run_cli, "import", "customers", "customers.csv")["loaded"] == 3
    history = cli_json(run_cli, "import", "orders", "history.csv")
    assert (history["loaded"], history["coupons_redeemed"], history["coupon_refusals"]) == (3, 0, 0)
    assert history["coupon_refusals_file"] is None
    run = cli_json(run_cli, "run", "campaign.yaml", "--at", RUN_AT)
    assert run["offers"]["issued"] == 3 and run["outcomes"] == {"sent": 3}

    listed = cli_json(run_cli, "coupons", "list", "--campaign", "dinner-to-lunch", "--at", RUN_AT)
    assert [c["customer_id"] for c in listed] == ["C1", "C2", "C3"]
    assert set(listed[0]) == {
        *("code", "state", "customer_id", "step", "kind", "value", "min_spend"),
        *("issued_at", "valid_from", "valid_until", "redeemed_at", "order_id"),
    }
    assert {(c["state"], c["step"], c["kind"], c["min_spend"]) for c in listed} == {
        ("issued", "signature-dish", "free_item", 50.0)
    }
    assert {(c["valid_from"], c["valid_until"]) for c in listed} == {
        ("2025-07-01T10:00:00+08:00", "2025-07-15T00:00:00+08:00")
    }
    code = {c["customer_id"]: c["code"] for c in listed}

    # the members come back: their orders carry the codes, as the till typed them
    orders = [
        ("N1", "C1", "2025-07-03T12:20:00", "88.00", "paid", code["C1"].lower().replace("-", " ")),  # redeemed
        ("N2", "C2", "2025-07-03T19:05:00", "150.00", "paid", code["C2"]),  # dinner: refused
        ("N3", "C3", "2025-07-04T12:00:00", "95.00", "paid", code["C2"]),  # another member's coupon: refused
        ("N4", "C3", "2025-07-04T12:30:00", "60.00", "refunded", code["C3"]),  # not paid: not picked up
        ("N5", "C3", "2025-07-05T11:45:00", "75.00", "paid", ""),
    ]
    path = tmp_path / "july.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ORDER_COLUMNS)
        writer.writerows(
            [
                [o, c, at, amount, status, "store", "card", coupon, "lunch"]
                for o, c, at, amount, status, coupon in orders
            ]
        )
    refusals_path = tmp_path / "july.coupon-refusals.csv"
    first = cli_json(run_cli, "import", "orders", str(path))
    assert {k: first[k] for k in ("read", "loaded", "rejected", "coupons_redeemed", "coupon_refusals")} == {
        "read": 5,
        "loaded": 5,
        "rejected": 0,
        "coupons_redeemed": 1,
        "coupon_refusals": 2,
    }
    assert first["coupon_refusals_file"] == str(refusals_path) and first["reject_file"] is None
    refusals = list(csv.DictReader(refusals_path.open(encoding="utf-8")))
    assert [(r["line"], r["code"], r["order_id"]) for r in refusals] == [
        ("3", code["C2"], "N2"),
        ("4", code["C2"], "N3"),
    ]
    assert refusals[0]["reason"].startswith(
        "only valid at lunch (11:00-14:00); the order was placed at 2025-07-03 19:05"
    )
    assert refusals[1]["reason"] == "the coupon belongs to another member, not to C3"
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Order)) == 8  # refusals reject no order

    # importing the same file again changes nothing and reports the same
    content = refusals_path.read_bytes()
    again = cli_json(run_cli, "import", "orders", str(path))
    assert (again["unchanged"], again["coupons_redeemed"], again["coupon_refusals"]) == (5, 0, 2)
    assert refusals_path.read_bytes() == content
    result = run_cli("import", "orders", str(path))
    assert "coupons on paid orders: 0 redeemed, 2 refused" in result.stdout
    assert f"refused coupons and reasons: {refusals_path}" in result.stdout

    # C3 redeems at the till on a lunch order
    assert cli_json(run_cli, "coupons", "redeem", code["C3"], "--order", "N5")["status"] == "redeemed"

    shown = cli_json(run_cli, "coupons", "show", code["C1"])
    assert set(shown) == {
        *("code", "state", "customer_id", "campaign", "run_scheduled_at", "step", "kind", "value", "min_spend"),
        *("description", "group", "stacking", "bundle_with", "dayparts", "weekdays", "issued_at", "valid_from"),
        *("valid_until", "timezone", "redeemed_at", "redemptions"),
    }
    assert {k: shown[k] for k in ("state", "customer_id", "campaign", "run_scheduled_at", "step", "kind")} == {
        "state": "redeemed",
        "customer_id": "C1",
        "campaign": "dinner-to-lunch",
        "run_scheduled_at": RUN_AT,
        "step": "signature-dish",
        "kind": "free_item",
    }
    assert shown["description"] == "满50免费招牌菜，仅限午市"
    assert (shown["valid_from"], shown["valid_until"], shown["timezone"]) == (
        "2025-07-01T10:00:00+08:00",
        "2025-07-15T00:00:00+08:00",
        "Asia/Shanghai",
    )
    assert shown["redemptions"] == [
        {"order_id": "N1", "amount": 88.0, "redeemed_at": "2025-07-03T12:20:00+08:00", "source": "orders_import"}
    ]
    text = run_cli("coupons", "show", code["C1"]).stdout
    assert "dinner-to-lunch" in text and "order N1, amount 88.00" in text and "(orders_import)" in text

    redeemed = cli_json(run_cli, "coupons", "list", "--campaign", "dinner-to-lunch", "--state", "redeemed")
    assert [(c["customer_id"], c["order_id"]) for c in redeemed] == [("C1", "N1"), ("C3", "N5")]
    lines = run_cli("coupons", "list", "--campaign", "dinner-to-lunch").stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"{code['C1']}  redeemed") and "order N1" in lines[0]
    assert cli_json(run_cli, "coupons", "list", "--campaign", "dinner-to-lunch", "--state", "void") == []
    # valid 14 days from 2025-07-01: today the one never redeemed has expired, and none is still issued
    expired = cli_json(run_cli, "coupons", "list", "--campaign", "dinner-to-lunch", "--state", "expired")
    assert [c["customer_id"] for c in expired] == ["C2"]
    assert cli_json(run_cli, "coupons", "list", "--campaign", "dinner-to-lunch", "--state", "issued") == []


def test_orders_import_result_through_the_python_api(shop: Shop, tmp_path: Path):
    code = shop.coupon("C1")
    path = tmp_path / "o.csv"
    path.write_text(
        ",".join(ORDER_COLUMNS) + "\n"
        f"O1,C1,{LUNCH},120.00,paid,,,{code},\n"
        f"O2,C1,{LUNCH},120.00,paid,,,{code},\n"
        f"O1,C1,{LUNCH},120.00,paid,,,{code},\n",  # the same order twice in one file: rejected, one redemption
        encoding="utf-8",
    )
    result = import_orders(shop.engine, SETTINGS, path)
    assert result == ImportResult(
        "orders",
        str(path),
        3,
        2,
        0,
        0,
        1,
        str(tmp_path / "o.rejects.csv"),
        1,
        1,
        str(tmp_path / "o.coupon-refusals.csv"),
    )
    assert shop.redemptions() == [(code, "O1", Decimal("120.00"), local(LUNCH), "orders_import")]
    assert "already redeemed on order O1" in (tmp_path / "o.coupon-refusals.csv").read_text(encoding="utf-8")
    customers = ImportResult("customers", "c.csv").to_dict()
    assert "coupon_refusals" not in customers and "coupons_redeemed" not in customers


def test_a_clean_orders_import_removes_a_stale_refusals_file(shop: Shop, tmp_path: Path):
    code = shop.coupon("C1")
    path = tmp_path / "o.csv"
    stale = tmp_path / "o.coupon-refusals.csv"
    path.write_text(",".join(ORDER_COLUMNS) + f"\nO1,C1,{LUNCH},20.00,paid,,,{code},\n", encoding="utf-8")
    assert import_orders(shop.engine, SETTINGS, path).coupon_refusals == 1  # below the minimum spend
    assert "the minimum spend is 100.00" in stale.read_text(encoding="utf-8")
    path.write_text(",".join(ORDER_COLUMNS) + f"\nO1,C1,{LUNCH},120.00,paid,,,{code},\n", encoding="utf-8")
    result = import_orders(shop.engine, SETTINGS, path)  # the amount is corrected
    assert (result.updated, result.coupons_redeemed, result.coupon_refusals) == (1, 1, 0)
    assert result.coupon_refusals_file is None and not stale.exists()


# --- import redemptions -------------------------------------------------------------------------------------------


def test_import_redemptions_rejects_reconciles_and_is_idempotent(run_cli, shop: Shop, tmp_path: Path):
    k1, k2, k3 = shop.coupon("C1"), shop.coupon("C1"), shop.coupon("C2")
    void = shop.coupon("C1", state="void")
    shop.order("O1", "C1")
    shop.order("O2", "C1", at="2025-07-02T13:00:00", amount="150.00")
    shop.order("O3", "C2", at="2025-07-03T12:00:00", amount="200.00")
    rows = [
        (k1, "O1", "", ""),  # 2 loaded
        (codes.display(k1).lower(), "O1", "", ""),  # 3 unchanged: already redeemed on this order
        (k1, "O2", "", ""),  # 4 already redeemed on O1
        (k2, "O2", "100.00", "2025-07-02T13:05:00"),  # 5 loaded, with amount and time
        (one_char_changed(k3), "O3", "", ""),  # 6 mistyped
        (k3, "O9", "", ""),  # 7 unknown order
        (k3, "O3", "abc", ""),  # 8 bad amount
        (void, "O1", "", ""),  # 9 void
        (k3, "O3", "", ""),  # 10 loaded
    ]
    path = tmp_path / "redemptions.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["code", "order_id", "amount", "redeemed_at", "till"])
        writer.writerows([[*row, "till-1"] for row in rows])

    data = cli_json(run_cli, "import", "redemptions", str(path))
    reject_file = tmp_path / "redemptions.rejects.csv"
    assert data == {
        "kind": "redemptions",
        "file": str(path),
        "read": 9,
        "loaded": 3,
        "updated": 0,
        "unchanged": 1,
        "rejected": 5,
        "reject_file": str(reject_file),
    }
    assert data["read"] == data["loaded"] + data["unchanged"] + data["rejected"]
    rejects = list(csv.DictReader(reject_file.open(encoding="utf-8")))
    assert [(r["line"], r["code"], r["order_id"], r["till"]) for r in rejects] == [
        ("4", k1, "O2", "till-1"),
        ("6", one_char_changed(k3), "O3", "till-1"),
        ("7", k3, "O9", "till-1"),
        ("8", k3, "O3", "till-1"),
        ("9", void, "O1", "till-1"),
    ]
    reasons = [r["reason"] for r in rejects]
    assert reasons[0] == "already redeemed on order O1 at 2025-07-02 12:30 (Asia/Shanghai)"
    assert "check character" in reasons[1]
    assert reasons[2] == "there is no such order"
    assert reasons[3].startswith("amount: 'abc' is not a decimal amount")
    assert reasons[4] == "the coupon was voided"
    assert shop.redemptions() == [
        (k1, "O1", Decimal("120.00"), local(LUNCH), "import"),
        (k2, "O2", Decimal("100.00"), local("2025-07-02T13:05:00"), "import"),
        (k3, "O3", Decimal("200.00"), local("2025-07-03T12:00:00"), "import"),
    ]
    assert shop.state(k2) == ("redeemed", local("2025-07-02T13:05:00"))

    content = reject_file.read_bytes()
    again = cli_json(run_cli, "import", "redemptions", str(path))
    assert (again["read"], again["loaded"], again["unchanged"], again["rejected"]) == (9, 0, 4, 5)
    assert reject_file.read_bytes() == content
    assert len(shop.redemptions()) == 3
    result = run_cli("import", "redemptions", str(path))
    assert "9 rows read: 0 loaded, 0 updated, 4 unchanged, 5 rejected" in result.stdout


def test_import_redemptions_with_only_the_required_columns(run_cli, shop: Shop, tmp_path: Path):
    code = shop.coupon("C2", dayparts=["dinner"])
    shop.order("O1", "C2", at="2025-07-02T18:00:00")
    path = tmp_path / "r.csv"
    path.write_text(f"Order_ID,Code\r\nO1,{codes.display(code)}\r\n", encoding="utf-8")
    data = cli_json(run_cli, "import", "redemptions", str(path))
    assert (data["read"], data["loaded"], data["rejected"]) == (1, 1, 0)
    assert shop.redemptions() == [(code, "O1", Decimal("120.00"), local("2025-07-02T18:00:00"), "import")]


def test_import_redemptions_file_errors_exit_2(run_cli, shop: Shop, tmp_path: Path):
    path = tmp_path / "r.csv"
    path.write_text("code,order\nX,O1\n", encoding="utf-8")
    result = run_cli("import", "redemptions", str(path))
    assert result.exit_code == 2
    assert f"error: {path}:1: missing required column: order_id" in result.stderr
    assert shop.redemptions() == []


# --- two processes at once ----------------------------------------------------------------------------------------


def _race(url: str, attempts: list[tuple[str, str]], barrier, results) -> None:
    """Redeem each (code, order) as soon as the other process is ready to redeem the same coupon."""
    engine = create_db_engine(url)
    try:
        for code, order_id in attempts:
            barrier.wait(timeout=60)
            try:
                with engine.begin() as conn:
                    redemption = redeem(conn, SETTINGS, code, order_id, source="race")
                    time.sleep(0.05)  # hold the transaction open a little, so that the two overlap
                results.put((code, order_id, "redeemed" if redemption.new else "again"))
            except RedemptionRefused as refused:
                results.put((code, order_id, refused.reason))
            except Exception as exc:  # reported to the test, which fails on it
                results.put((code, order_id, f"error: {exc!r}"))
    finally:
        engine.dispose()


def test_two_processes_redeeming_one_coupon_on_two_orders_one_wins(db_url: str, shop: Shop):
    rounds = 3
    coupons = [shop.coupon("C1") for _ in range(rounds)]
    for i in range(rounds):
        shop.order(f"A{i}", at="2025-07-02T12:00:00")
        shop.order(f"B{i}", at="2025-07-02T12:10:00")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    workers = [
        context.Process(
            target=_race, args=(db_url, [(c, f"{side}{i}") for i, c in enumerate(coupons)], barrier, results)
        )
        for side in "AB"
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * rounds)]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    for code in coupons:
        mine = sorted(outcome for c, _, outcome in outcomes if c == code)
        assert mine == ["already_redeemed", "redeemed"], outcomes
        winner = next(order for c, order, outcome in outcomes if c == code and outcome == "redeemed")
        assert [(r[0], r[1]) for r in shop.redemptions(code)] == [(code, winner)]
        assert shop.state(code) == (
            "redeemed",
            local("2025-07-02T12:00:00" if winner[0] == "A" else "2025-07-02T12:10:00"),
        )


def test_redeeming_does_not_disturb_the_callers_transaction(shop: Shop):
    """A refusal after a conflict leaves the caller's transaction usable (savepoint), on both engines."""
    code = shop.coupon()
    shop.order("O1")
    shop.order("O2", at="2025-07-02T12:40:00")
    with shop.engine.begin() as conn:
        first = redeem(conn, SETTINGS, code, "O1", source="test")
        with pytest.raises(RedemptionRefused):
            redeem(conn, SETTINGS, code, "O2", source="test")
        assert conn.scalar(select(func.count()).select_from(CouponRedemption)) == 1
    assert first.new and shop.redemptions(code)[0][1] == "O1"
    assert timedelta(0) == first.redeemed_at - local(LUNCH)
