"""campaigns/journeys/new_member_journey.yaml replayed by the scheduler over 60 days of the seed-shop demo data,
on SQLite and PostgreSQL; every stage's audience recomputed in plain Python from the members, their orders and
the welcome messages the ledger holds.

Welcome: the members who joined in the day before each daily 10:00 check (not employees). Each follow-up: the
members the welcome reached or held out, once their welcome's due time plus ``after`` has passed; skipped
``unless`` when, at that time, the 7-day nudge's member has a paid order since the welcome was due, or the 30-day
offer's member has two paid orders; held out when the welcome held them out; otherwise decided by the contact
policies (sent, deferred or skipped with a policy's reason), never anything else.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from orchestrator.db.models import CampaignRun, Coupon, Customer, CustomerTag, Delivery, Order
from tests.clitools import Cli

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 9, 1, 2, 0, tzinfo=UTC)  # the first check: 10:00 in Shanghai
END = datetime(2026, 10, 31, 16, 0, tzinfo=UTC)  # 2026-11-01 00:00 in Shanghai: the replay's --until
POLICY_REASONS = {"no_consent", "suppressed", "no_contact", "frequency_cap", "no_channel"}


@pytest.fixture
def demo(engine: Engine, db_url: str, tmp_path: Path, monkeypatch) -> Cli:
    text = (ROOT / "config" / "orchestrator.yaml").read_text(encoding="utf-8")
    text = text.replace("../demo/outbox", str(tmp_path / "outbox")).replace("../templates", str(ROOT / "templates"))
    text = text.replace("../campaigns", str(ROOT / "campaigns"))
    config = tmp_path / "orchestrator.yaml"
    config.write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    cli = Cli(db_url, config=str(config))
    result = cli("demo-data", "--preset", "seed-shop")
    assert result.exit_code == 0, result.output
    return cli


@pytest.mark.slow
def test_a_60_day_replay_of_the_journey_matches_an_independent_count_of_each_stage(demo: Cli, engine: Engine):
    result = demo(
        "scheduler",
        "--campaigns",
        str(ROOT / "campaigns" / "journeys"),
        "--from",
        "2026-09-01",
        "--until",
        "2026-11-01",
    )
    assert result.exit_code == 0, result.output

    with engine.connect() as conn:
        signups = dict(conn.execute(select(Customer.id, Customer.signup_at)).all())
        employees = set(conn.execute(select(CustomerTag.customer_pk).where(CustomerTag.tag == "employee")).scalars())
        paid = defaultdict(list)
        for pk, at in conn.execute(select(Order.customer_pk, Order.ordered_at).where(Order.status == "paid")):
            paid[pk].append(at)
        rows = conn.execute(
            select(
                Delivery.customer_pk,
                Delivery.follow_up,
                Delivery.state,
                Delivery.reason,
                Delivery.deferred_until,
                CampaignRun.scheduled_at,
            ).join(CampaignRun, CampaignRun.id == Delivery.run_pk)
        ).all()

    # welcome: who joined in the day before each check, from the first check to the last before the end
    checks = []
    check = START
    while check < END:
        checks.append(check)
        check += timedelta(days=1)
    expected_welcomed = {
        pk
        for pk, at in signups.items()
        if at is not None and pk not in employees and any(c - timedelta(days=1) < at <= c for c in checks)
    }
    welcome = [r for r in rows if r.follow_up == ""]
    assert {r.customer_pk for r in welcome} == expected_welcomed and len(expected_welcomed) > 500

    # each follow-up, from the welcome the ledger holds
    due_of: dict[int, datetime] = {}
    control: set[int] = set()
    for r in welcome:
        if r.state in ("sent", "held_out"):
            due = r.deferred_until or r.scheduled_at
            due_of[r.customer_pk] = min(due, due_of.get(r.customer_pk, due))
            if r.state == "held_out":
                control.add(r.customer_pk)

    def stage(name: str, after: timedelta, exits) -> dict[str, int]:
        followed = {pk for pk, due in due_of.items() if due + after < END}
        leaving = {pk for pk in followed if exits(pk, due_of[pk], due_of[pk] + after)}
        decided = defaultdict(set)
        for r in rows:
            if r.follow_up == name:
                decided[(r.state, r.reason)].add(r.customer_pk)
        everyone = set().union(*decided.values()) if decided else set()
        assert everyone == followed, name
        assert decided[("skipped", "unless")] == leaving, name
        assert decided[("held_out", "control_group")] <= control - leaving, name
        others = {key for key in decided if key not in {("skipped", "unless"), ("held_out", "control_group")}}
        assert all(state in ("sent", "pending", "deferred") or reason in POLICY_REASONS for state, reason in others)
        contacted = set().union(*(decided[k] for k in others if k[0] in ("sent", "pending", "deferred")))
        assert not contacted & control, name  # control members are never contacted
        return {"followed": len(followed), "unless": len(leaving), "contacted": len(contacted)}

    nudge = stage("nudge-7d", timedelta(days=7), lambda pk, since, at: any(since <= o <= at for o in paid[pk]))
    offer = stage("second-order-30d", timedelta(days=30), lambda pk, since, at: sum(o <= at for o in paid[pk]) >= 2)
    with engine.connect() as conn:
        coupons = conn.execute(select(func.count()).where(Coupon.step == "second-order-30d")).scalar_one()
    assert coupons == offer["contacted"]  # one coupon with each second-order message, none without
    print(f"\nwelcomed {len(expected_welcomed)}, nudge {nudge}, offer {offer}")
    assert nudge["followed"] > offer["followed"] > 0
    assert 0 < nudge["unless"] < nudge["followed"] and 0 < offer["unless"] < offer["followed"]
    assert nudge["contacted"] > 0 and offer["contacted"] > 0
