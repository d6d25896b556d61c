"""A/B variants with an offer of their own: each member's coupon is their variant's, budgets are the variant's own
or the step's shared one, held-out members get none, and the report prices each variant's coupons
(docs/domain.md, "Results")."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import Engine, func, insert, select, update

from orchestrator.campaign.loader import VariantPlan
from orchestrator.coupons.offer import give_back_unsent
from orchestrator.db.models import Coupon, CouponRedemption, Customer, Delivery, OfferBudget, Order
from orchestrator.variants import assign
from tests.clitools import Cli
from tests.test_dispatch import write_world

AT = "2026-11-02T10:00:00+08:00"
CAMPAIGN = """name: ab-offer
segment: {consent_email: true}
control_group: 20%
steps:
  - name: hello
    offer:
      coupon: {kind: amount_off, value: 5, valid_days: 7, budget: {max_issued: 1000}}
    message:
      webhook: {payload: {text: "{{ offer.description }} {{ offer.code }}"}}
    variants:
      - {name: small, weight: 1, message: {webhook: {payload: {text: "small {{ offer.code }}"}}}}
      - name: big
        weight: 1
        offer:
          coupon: {kind: amount_off, value: 20, min_spend: 100, valid_days: 7, BUDGET}
"""
PLANS = [VariantPlan("small", Decimal(1), {}), VariantPlan("big", Decimal(1), {})]


def _run(engine: Engine, db_url: str, tmp_path: Path, members: int, budget: str) -> tuple[Cli, list]:
    config, campaign = write_world(tmp_path, engine, members, None, "  linger_seconds: 0\n")
    campaign.write_text(CAMPAIGN.replace(", BUDGET", budget), encoding="utf-8")
    cli = Cli(db_url, str(config))
    result = cli("run", campaign, "--at", AT, "--json")
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Customer.customer_id,
                Delivery.variant,
                Delivery.state,
                Delivery.reason,
                Coupon.value,
                Coupon.min_spend,
                Coupon.id,
            )
            .join(Customer, Customer.id == Delivery.customer_pk)
            .outerjoin(Coupon, Coupon.id == Delivery.coupon_pk)
        ).all()
    return cli, rows


def test_each_member_gets_their_variants_coupon_and_the_report_prices_each_variant(
    engine: Engine, db_url: str, tmp_path: Path
):
    cli, rows = _run(engine, db_url, tmp_path, 60, "")
    assert all(r.variant == assign("ab-offer", "hello", r.customer_id, PLANS).name for r in rows)
    sent = [r for r in rows if r.state == "sent"]
    assert {r.variant for r in sent} == {"small", "big"}
    for r in sent:  # the big variant's own offer replaces the step's; the small one keeps the step's
        assert (r.value, r.min_spend) == ((Decimal(20), Decimal(100)) if r.variant == "big" else (Decimal(5), 0))
    held = [r for r in rows if r.state == "held_out"]
    assert held and all(r.id is None for r in held)  # held-out members: their variant recorded, no coupon
    bodies = [p.read_text(encoding="utf-8") for p in (tmp_path / "out").iterdir()]
    assert sum('"small ' in b for b in bodies) == sum(r.variant == "small" for r in sent)
    assert sum("满100减20元" in b for b in bodies) == sum(r.variant == "big" for r in sent)
    # redeem every other coupon of each variant; the report's per-variant cost is the face value of those
    coupons = sorted({(r.id, r.variant, r.value) for r in sent})
    redeemed = coupons[::2]
    with engine.begin() as conn:
        conn.execute(
            insert(CouponRedemption),
            [
                {"coupon_pk": pk, "redeemed_at": datetime(2026, 11, 3, 4, tzinfo=UTC), "source": "pos"}
                for pk, _, _ in redeemed
            ],
        )
    report = json.loads(cli("report", "ab-offer", "--at", "2026-11-30T10:00:00+08:00", "--json").output)
    by_variant = {row["variant"]: row["offers"] for row in report["by_variant"]}
    for name in ("small", "big"):
        mine = [c for c in coupons if c[1] == name]
        mine_redeemed = [c for c in redeemed if c[1] == name]
        assert by_variant[name]["issued"] == len(mine)
        assert by_variant[name]["redeemed"] == len(mine_redeemed)
        assert Decimal(str(by_variant[name]["cost"])) == sum((c[2] for c in mine_redeemed), Decimal(0))


def test_a_variant_without_a_budget_of_its_own_draws_on_the_steps(engine: Engine, db_url: str, tmp_path: Path):
    shared = CAMPAIGN.replace("max_issued: 1000", "max_issued: 10")
    config, campaign = write_world(tmp_path, engine, 60, None, "  linger_seconds: 0\n")
    campaign.write_text(shared.replace(", BUDGET", ""), encoding="utf-8")
    result = Cli(db_url, str(config))("run", campaign, "--at", AT, "--json")
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        issued = Counter(
            conn.execute(select(Delivery.variant).where(Delivery.coupon_pk.is_not(None), Delivery.state == "sent"))
            .scalars()
            .all()
        )
        budgets = dict(conn.execute(select(OfferBudget.step, OfferBudget.issued)).all())
    assert sum(issued.values()) == 10 and set(issued) == {"small", "big"}  # ten in all, over both variants
    assert budgets == {"hello": 10}


def test_a_variant_with_a_budget_of_its_own_spends_only_that(engine: Engine, db_url: str, tmp_path: Path):
    _cli, rows = _run(engine, db_url, tmp_path, 60, ", budget: {max_issued: 3}")
    sent = [r for r in rows if r.state == "sent"]
    withheld = [r for r in rows if r.state == "skipped"]
    assert len([r for r in sent if r.variant == "big"]) == 3  # the rest of big's members: withheld, budget
    assert withheld and all(assign("ab-offer", "hello", r.customer_id, PLANS).name == "big" for r in withheld)
    assert {r.reason for r in withheld} == {"offer_budget"}
    assert all(r.id is not None for r in sent if r.variant == "small")  # the step's budget (1000) is untouched
    with engine.connect() as conn:
        budgets = dict(conn.execute(select(OfferBudget.step, OfferBudget.issued)).all())
    assert budgets == {"hello": sum(r.variant == "small" for r in sent), "hello/big": 3}
    # a big coupon whose message is skipped before sending (the member opted out) goes back to big's own budget
    big_coupon = next(r.id for r in sent if r.variant == "big")
    with engine.begin() as conn:
        conn.execute(update(Delivery).where(Delivery.coupon_pk == big_coupon).values(state="skipped"))
        assert give_back_unsent(conn, [big_coupon]) == 1
        budgets = dict(conn.execute(select(OfferBudget.step, OfferBudget.issued)).all())
    assert budgets == {"hello": sum(r.variant == "small" for r in sent), "hello/big": 2}


def test_an_unknown_offer_kind_in_a_variant_is_reported_at_its_line(engine: Engine, db_url: str, tmp_path: Path):
    config, campaign = write_world(tmp_path, engine, 2, None, "  linger_seconds: 0\n")
    text = CAMPAIGN.replace(", BUDGET", "").replace(
        "coupon: {kind: amount_off, value: 20", "cupon: {kind: amount_off, value: 20"
    )
    campaign.write_text(text, encoding="utf-8")
    result = Cli(db_url, str(config))("validate", campaign)
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = text.splitlines().index("          cupon: {kind: amount_off, value: 20, min_spend: 100, valid_days: 7}") + 1
    assert f"campaign.yaml:{line}" in result.output and "unknown offer kind 'cupon'" in result.output


def test_a_variant_must_change_something(engine: Engine, db_url: str, tmp_path: Path):
    config, campaign = write_world(tmp_path, engine, 2, None, "  linger_seconds: 0\n")
    text = CAMPAIGN.replace(", BUDGET", "").replace(
        '{name: small, weight: 1, message: {webhook: {payload: {text: "small {{ offer.code }}"}}}}',
        "{name: small, weight: 1}",
    )
    campaign.write_text(text, encoding="utf-8")
    result = Cli(db_url, str(config))("validate", campaign)
    assert result.exit_code == 2 and "changes nothing" in result.output


def test_a_variants_offer_guard_withholds_only_that_variants_coupons(engine: Engine, db_url: str, tmp_path: Path):
    _cli, rows = _run(engine, db_url, tmp_path, 40, ", guard: {consent_email: false}")
    big = [r for r in rows if assign("ab-offer", "hello", r.customer_id, PLANS).name == "big" and r.state != "held_out"]
    assert big and {(r.state, r.reason) for r in big} == {("skipped", "offer_guard")}
    small = [r for r in rows if r.variant == "small" and r.state == "sent"]
    assert small and all(r.id is not None for r in small)  # the step's offer has no guard


def test_a_variants_exclusivity_group_holds_back_a_second_coupon(engine: Engine, db_url: str, tmp_path: Path):
    config, campaign = write_world(tmp_path, engine, 40, None, "  linger_seconds: 0\n")
    text = CAMPAIGN.replace(", BUDGET", ", group: winback, per_customer: 5").replace(
        "control_group: 20%", "control_group: 20%\nrecontact: always"
    )
    campaign.write_text(text, encoding="utf-8")
    cli = Cli(db_url, str(config))
    assert cli("run", campaign, "--at", AT, "--json").exit_code == 0
    again = json.loads(cli("run", campaign, "--at", "2026-11-03T10:00:00+08:00", "--json").output)
    withheld = again["offers"]["withheld"]
    with engine.connect() as conn:
        issued_big = conn.scalar(
            select(func.count())
            .select_from(Coupon)
            .where(Coupon.value == Decimal(20), Coupon.run_pk == again["run_id"])
        )
    assert issued_big == 0  # every big member still holds the live winback coupon of the first run
    assert withheld.get("exclusivity", 0) > 0 and "per_customer" in withheld  # small: the step's per_customer 1


def test_a_resumed_run_renders_each_members_variant_coupon_again(engine: Engine, db_url: str, tmp_path: Path):
    config, campaign = write_world(tmp_path, engine, 30, None, "  linger_seconds: 0\n")
    campaign.write_text(CAMPAIGN.replace(", BUDGET", ""), encoding="utf-8")
    cli = Cli(db_url, str(config))
    first = json.loads(cli("run", campaign, "--at", AT, "--json").output)
    again = json.loads(cli("run", campaign, "--at", AT, "--json").output)
    assert again["resumed"] is True and again["run_id"] == first["run_id"]
    assert again["offers"]["issued"] == first["offers"]["issued"] > 0
    assert Decimal(str(again["offers"]["face_value"])) == Decimal(str(first["offers"]["face_value"]))
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Coupon)) == first["offers"]["issued"]


def test_a_dry_run_predicts_the_shared_budget_once_for_the_step_and_its_variants(
    engine: Engine, db_url: str, tmp_path: Path
):
    config, campaign = write_world(tmp_path, engine, 60, None, "  linger_seconds: 0\n")
    campaign.write_text(CAMPAIGN.replace("max_issued: 1000", "max_issued: 10").replace(", BUDGET", ""), "utf-8")
    result = Cli(db_url, str(config))("dry-run", campaign, "--at", AT, "--json")
    assert result.exit_code == 0, result.output
    offers = json.loads(result.output)["offers"]
    assert offers["issued"] == 10 and offers["withheld"]["budget"] > 0


def test_the_winner_rule_sends_the_winning_variants_offer_to_everyone(engine: Engine, db_url: str, tmp_path: Path):
    config, campaign = write_world(tmp_path, engine, 80, None, "  linger_seconds: 0\n")
    text = (
        CAMPAIGN.replace(", BUDGET", ", per_customer: 5")
        .replace("valid_days: 7, budget", "valid_days: 7, per_customer: 5, budget")
        .replace("control_group: 20%", "control_group: 20%\nrecontact: always")
        .replace("    variants:\n", "    winner: {metric: conversion, after: 3d}\n    variants:\n")
    )
    campaign.write_text(text, encoding="utf-8")
    cli = Cli(db_url, str(config))
    assert cli("run", campaign, "--at", AT, "--json").exit_code == 0
    # every member who got the big coupon orders the next day; nobody who got the small one does
    with engine.begin() as conn:
        big = conn.scalars(select(Delivery.customer_pk).where(Delivery.variant == "big", Delivery.state == "sent"))
        now = datetime(2026, 12, 1, tzinfo=UTC)
        conn.execute(
            insert(Order),
            [
                {
                    "order_id": f"B{pk}",
                    "customer_pk": pk,
                    "ordered_at": datetime(2026, 11, 3, 2, tzinfo=UTC),
                    "amount": Decimal("150.00"),
                    "status": "paid",
                    "created_at": now,
                    "updated_at": now,
                    "attributes": {},
                }
                for pk in big.all()
            ],
        )
    later = json.loads(cli("run", campaign, "--at", "2026-11-07T10:00:00+08:00", "--json").output)
    assert later["winners"]["hello"]["variant"] == "big"
    with engine.connect() as conn:
        values = conn.execute(
            select(Delivery.variant, Coupon.value)
            .join(Coupon, Coupon.id == Delivery.coupon_pk)
            .where(Delivery.run_pk == later["run_id"])
        ).all()
    assert values and set(values) == {("big", Decimal(20))}  # the winner's own 20-yuan coupon, to everyone


def test_a_step_budget_that_does_not_fit_a_variants_offer_is_reported(engine: Engine, db_url: str, tmp_path: Path):
    config, campaign = write_world(tmp_path, engine, 2, None, "  linger_seconds: 0\n")
    text = CAMPAIGN.replace("budget: {max_issued: 1000}", "budget: {max_face_value: 500}").replace(
        "coupon: {kind: amount_off, value: 20, min_spend: 100, valid_days: 7, BUDGET}",
        "coupon: {kind: gift, item: tea, valid_days: 7}",
    )
    campaign.write_text(text, encoding="utf-8")
    result = Cli(db_url, str(config))("validate", campaign)
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = text.splitlines().index("          coupon: {kind: gift, item: tea, valid_days: 7}") + 1
    assert f"campaign.yaml:{line}" in result.output and "the step's budget does not fit this offer" in result.output
