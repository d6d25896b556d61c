"""A/B variants per step: assigned by a stable hash of campaign, step and member (the same in every process),
in proportion to their weights, recorded in the ledger and reported by variant (docs/domain.md, "Results")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import Engine, func, insert, select

from orchestrator.campaign.loader import VariantPlan
from orchestrator.db.models import CampaignRun, Customer, Delivery, Order
from orchestrator.variants import assign
from tests.clitools import Cli
from tests.test_dispatch import write_world

VARIANTS = [VariantPlan("a", Decimal(1), {}), VariantPlan("b", Decimal(3), {})]
MEMBERS = [f"M{i:05d}" for i in range(4000)]

CAMPAIGN = """name: ab-test
segment: {consent_email: true}
recontact: always  # later runs reach the same members: the winner rule sends them the winner
control_group: 20%
steps:
  - name: hello
    message:
      webhook: {payload: {text: "plain"}}
    variants:
      - {name: warm, weight: 1, message: {webhook: {payload: {text: "warm {{ customer.name }}"}}}}
      - {name: short, weight: 1, message: {webhook: {payload: {text: "short"}}}}
"""


def test_weights_share_the_members():
    counts = Counter(assign("spring", "main", m, VARIANTS).name for m in MEMBERS)
    assert abs(counts["b"] / len(MEMBERS) - 0.75) < 0.03


def test_the_same_member_gets_the_same_variant_in_another_process():
    here = [assign("spring", "main", m, VARIANTS).name for m in MEMBERS[:500]]
    code = (
        "import json, sys; from decimal import Decimal; from orchestrator.variants import assign;"
        "from orchestrator.campaign.loader import VariantPlan;"
        "v = [VariantPlan('a', Decimal(1), {}), VariantPlan('b', Decimal(3), {})];"
        "print(json.dumps([assign('spring', 'main', f'M{i:05d}', v).name for i in range(500)]))"
    )
    for seed in ("1", "2"):  # Python's own hash() differs with PYTHONHASHSEED; the assignment must not
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert json.loads(out.stdout) == here
    # another step (or campaign) shuffles members independently
    assert here != [assign("spring", "other", m, VARIANTS).name for m in MEMBERS[:500]]


def test_variants_are_recorded_rendered_and_reported(engine: Engine, db_url: str, tmp_path: Path):
    config, campaign = write_world(tmp_path, engine, 60, None, "  linger_seconds: 0\n")
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    cli = Cli(db_url, str(config))
    result = cli("run", campaign, "--at", "2026-11-02T10:00:00+08:00", "--json")
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        rows = conn.execute(
            select(Customer.customer_id, Delivery.variant, Delivery.state).join(
                Customer, Customer.id == Delivery.customer_pk
            )
        ).all()
    assert {r.variant for r in rows} == {"warm", "short"}
    plans = [VariantPlan("warm", Decimal(1), {}), VariantPlan("short", Decimal(1), {})]
    assert all(r.variant == assign("ab-test", "hello", r.customer_id, plans).name for r in rows)
    assert {r.state for r in rows} == {"sent", "held_out"}  # held-out members carry their would-be variant too
    bodies = [p.read_text(encoding="utf-8") for p in (tmp_path / "out").iterdir()]
    warm = sum(1 for r in rows if r.variant == "warm" and r.state == "sent")
    assert sum("warm Member" in b for b in bodies) == warm and sum('"short"' in b for b in bodies) == len(bodies) - warm
    report = json.loads(cli("report", "ab-test", "--at", "2026-11-30T10:00:00+08:00", "--json").output)
    by_variant = {row["variant"]: row for row in report["by_variant"]}
    assert set(by_variant) == {"warm", "short"}
    assert by_variant["warm"]["contacted"] == warm
    assert sum(row["control"] for row in by_variant.values()) == report["control"]
    assert {r["variant"] for r in report["rows"]} == {"warm", "short"}


def test_a_variant_may_only_reword_the_steps_channels(engine: Engine, db_url: str, tmp_path: Path):
    config, campaign = write_world(tmp_path, engine, 2, None, "  linger_seconds: 0\n")
    campaign.write_text(
        CAMPAIGN.replace('message: {webhook: {payload: {text: "short"}}}', 'message: {email: {subject: "x"}}'),
        encoding="utf-8",
    )
    result = Cli(db_url, str(config))("validate", campaign)
    assert result.exit_code == 2
    assert "campaign.yaml" in result.output and "variant 'short' names channel 'email'" in result.output


def test_the_winner_rule_sends_the_clear_winner_to_everyone_once_judged(engine: Engine, db_url: str, tmp_path: Path):
    config, campaign = write_world(tmp_path, engine, 80, None, "  linger_seconds: 0\n")
    campaign.write_text(
        CAMPAIGN.replace("    variants:\n", "    winner: {metric: conversion, after: 3d}\n    variants:\n")
    )
    cli = Cli(db_url, str(config))
    first = json.loads(cli("run", campaign, "--at", "2026-11-02T10:00:00+08:00", "--json").output)
    assert "winners" not in first
    # every member who got the warm message orders the next day; nobody who got the short one does
    with engine.begin() as conn:
        warm = (
            conn.execute(select(Delivery.customer_pk).where(Delivery.variant == "warm", Delivery.state == "sent"))
            .scalars()
            .all()
        )
        now = datetime(2026, 12, 1, tzinfo=UTC)
        conn.execute(
            insert(Order),
            [
                {
                    "order_id": f"W{pk}",
                    "customer_pk": pk,
                    "ordered_at": datetime(2026, 11, 3, 2, tzinfo=UTC),
                    "amount": Decimal("50.00"),
                    "status": "paid",
                    "created_at": now,
                    "updated_at": now,
                    "attributes": {},
                }
                for pk in warm
            ],
        )
    # two days on: not yet judged (after: 3d), the variants still share the step
    early = json.loads(cli("run", campaign, "--at", "2026-11-04T10:00:00+08:00", "--json").output)
    assert "winners" not in early
    # five days on: the first run is judged, warm wins clearly, and everyone of the step gets it
    later = json.loads(cli("run", campaign, "--at", "2026-11-07T10:00:00+08:00", "--json").output)
    decision = later["winners"]["hello"]
    assert decision["variant"] == "warm" and decision["judged_runs"] == [first["run_id"], early["run_id"]]
    assert decision["uplift_ci95_vs_next"][0] > 0
    with engine.connect() as conn:
        variants_by_run = dict(
            conn.execute(
                select(Delivery.run_pk, func.count(func.distinct(Delivery.variant))).group_by(Delivery.run_pk)
            ).all()
        )
        summary = conn.execute(select(CampaignRun.summary).where(CampaignRun.id == later["run_id"])).scalar_one()
        later_variants = set(conn.execute(select(Delivery.variant).where(Delivery.run_pk == later["run_id"])).scalars())
    assert variants_by_run[first["run_id"]] == 2 and variants_by_run[early["run_id"]] == 2
    assert later_variants == {"warm"}
    assert summary["winners"]["hello"]["variant"] == "warm"  # the decision is recorded with the run


def test_a_winner_rule_needs_variants(engine: Engine, db_url: str, tmp_path: Path):
    config, campaign = write_world(tmp_path, engine, 2, None, "  linger_seconds: 0\n")
    text = CAMPAIGN.split("    variants:\n")[0] + "    winner: {after: 3d}\n"
    campaign.write_text(text, encoding="utf-8")
    result = Cli(db_url, str(config))("validate", campaign)
    assert result.exit_code == 2 and "winner: needs variants" in result.output
