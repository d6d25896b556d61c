"""``orchestrator deliveries`` after a real run, on SQLite and PostgreSQL: filters, order, masking, summary."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, select, update

from orchestrator.cli.deliveries import mask_contact
from orchestrator.db.models import Customer, Delivery
from tests import dataset
from tests.clitools import Cli, email_outbox_config
from tests.dataset import AT

NAME = "ledger-check"
CAMPAIGN = f"""\
name: {NAME}
segment: {{frequency: {{gte: 1}}}}
message:
  email:
    subject: "Hi {{{{ customer.name }}}}"
    text: "Hello {{{{ customer.name }}}}"
"""
ROW_KEYS = {
    "id",
    "run_id",
    "campaign",
    "scheduled_at",
    "customer_id",
    "channel",
    "step",
    "follow_up",
    "state",
    "reason",
    "contact",
    "attempts",
    "provider_id",
    "last_error",
    "sent_at",
    "next_attempt_at",
    "deferred_until",
    "outcome",
}
LATER = "2025-07-08T10:00:00+08:00"


class Env:
    def __init__(self, cli: Cli, engine: Engine):
        self.cli = cli
        self.engine = engine

    def json(self, *args: str):
        result = self.cli(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def ledger(self) -> list:
        with self.engine.connect() as conn:
            return conn.execute(
                select(*Delivery.__table__.c, Customer.customer_id, Customer.email)
                .join(Customer, Customer.id == Delivery.customer_pk)
                .order_by(Delivery.id)
            ).all()


@pytest.fixture
def env(engine: Engine, db_url: str, tmp_path: Path, monkeypatch) -> Env:
    dataset.load(engine)
    config = email_outbox_config(tmp_path)
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    env = Env(Cli(db_url, config=str(config)), engine)
    env.campaign = campaign
    return env


def run(env: Env, at: str = AT.isoformat()) -> dict:
    return env.json("run", str(env.campaign), "--at", at)


def test_masking():
    assert mask_contact("alice@example.com") == "a***@example.com"
    assert mask_contact("+8613812345678") == "+86 138****5678"
    assert mask_contact(None) is None
    assert "openid-123456" not in mask_contact("openid-123456")


def test_listing_after_a_run(env: Env):
    data = run(env)
    ledger = env.ledger()
    rows = env.json("deliveries")
    assert len(rows) == len(ledger) > 0
    assert all(set(r) == ROW_KEYS for r in rows)
    assert [r["id"] for r in rows] == sorted((d.id for d in ledger), reverse=True)  # newest first
    by_id = {d.id: d for d in ledger}
    for r in rows:
        d = by_id[r["id"]]
        assert (r["run_id"], r["campaign"], r["customer_id"]) == (data["run_id"], NAME, d.customer_id)
        assert (r["channel"], r["state"], r["reason"], r["attempts"]) == (d.channel, d.state, d.reason, d.attempts)
        if d.contact:
            local, domain = d.contact.split("@")
            assert r["contact"] == f"{local[0]}***@{domain}"
    sent = [r for r in rows if r["state"] == "sent"]
    assert sent and all(r["sent_at"] for r in sent)
    # no full address anywhere in the listing, in either form
    addresses = {d.contact for d in ledger if d.contact}
    text = env.cli("deliveries").output + json.dumps(rows)
    assert addresses and not any(a in text for a in addresses)
    assert "***@example.com" in text


def test_filters(env: Env):
    first = run(env)
    second = run(env, LATER)
    assert first["run_id"] != second["run_id"]
    ledger = env.ledger()
    with env.engine.begin() as conn:
        victim = next(d for d in ledger if d.state == "sent" and d.run_pk == first["run_id"])
        conn.execute(
            update(Delivery)
            .where(Delivery.id == victim.id)
            .values(state="failed", last_error="550 mailbox unavailable", attempts=3, sent_at=None)
        )
    failed = env.json("deliveries", "--state", "failed")
    assert [(r["id"], r["state"], r["last_error"], r["attempts"]) for r in failed] == [
        (victim.id, "failed", "550 mailbox unavailable", 3)
    ]
    assert str(victim.id) in env.cli("deliveries", "--state", "failed").output

    only_first = env.json("deliveries", "--run", str(first["run_id"]))
    assert {r["run_id"] for r in only_first} == {first["run_id"]}
    assert len(only_first) == sum(1 for d in ledger if d.run_pk == first["run_id"])
    assert len(env.json("deliveries", "--campaign", NAME)) == len(ledger)
    assert env.json("deliveries", "--campaign", "nope") == []

    skipped = [d for d in ledger if d.state == "skipped"]
    reason = skipped[0].reason
    by_reason = env.json("deliveries", "--reason", reason)
    assert len(by_reason) == sum(1 for d in skipped if d.reason == reason)
    assert {r["reason"] for r in by_reason} == {reason}

    mine = env.json("deliveries", "--customer", victim.customer_id)
    assert {r["customer_id"] for r in mine} == {victim.customer_id} and len(mine) == 2
    assert mine[0]["run_id"] == second["run_id"]  # newest first

    limited = env.json("deliveries", "--limit", "3")
    assert [r["id"] for r in limited] == sorted((d.id for d in ledger), reverse=True)[:3]

    assert env.cli("deliveries", "--state", "lost").exit_code == 2
    assert env.cli("deliveries", "--limit", "0").exit_code == 2


def test_summary(env: Env):
    first = run(env)
    second = run(env, LATER)
    ledger = env.ledger()
    summary = env.json("deliveries", "--summary")
    assert [s["run_id"] for s in summary] == [first["run_id"], second["run_id"]]
    for s in summary:
        mine = [d for d in ledger if d.run_pk == s["run_id"]]
        assert set(s) == {"campaign", "run_id", "scheduled_at", "total", "states", "skipped", "control"}
        assert s["campaign"] == NAME and s["total"] == len(mine)
        assert s["states"] == dict(Counter(d.state for d in mine))
        assert s["skipped"] == dict(Counter(d.reason for d in mine if d.state == "skipped"))
    assert summary[0]["skipped"] == first["skipped"]
    only = env.json("deliveries", "--summary", "--run", str(second["run_id"]))
    assert [s["run_id"] for s in only] == [second["run_id"]]
    assert NAME in env.cli("deliveries", "--summary").output


def test_summary_counts_the_control_group_in_members_as_run_does(env: Env):
    """A held-out member has a row per channel they would have had; the summary printed those rows as the
    control group (held_out 12 where run said control 6)."""
    env.campaign.write_text(
        CAMPAIGN.replace("message:\n", "control_group: 40%\ndispatch: {strategy: all}\nmessage:\n")
        + "  sms:\n    text: 'Hello {{ customer.name }}'\n",
        encoding="utf-8",
    )
    ran = run(env)
    assert ran["control"] > 0
    [summary] = env.json("deliveries", "--summary")
    assert summary["control"] == ran["control"]
    assert summary["states"]["held_out"] > ran["control"]  # rows: one per channel a member would have had
    assert f"control group {ran['control']} members" in env.cli("deliveries", "--summary").output


def test_text_listing_has_a_header_and_shows_times_in_the_shop_zone(env: Env):
    run(env)
    lines = env.cli("deliveries").stdout.splitlines()
    header = lines[0].split("\t")
    assert header[:3] == ["id", "campaign", "run"] and "state" in header and "sent_at (Asia/Shanghai)" in header
    rows = [line.split("\t") for line in lines[1:]]
    assert rows and all(len(row) == len(header) for row in rows)
    sent_at = [row[header.index("sent_at (Asia/Shanghai)")] for row in rows if row[header.index("state")] == "sent"]
    assert sent_at and all(value.endswith("+08:00") for value in sent_at), sent_at[:3]

    summary = env.cli("deliveries", "--summary").stdout.splitlines()
    assert summary and all(f"{AT.astimezone(ZoneInfo('Asia/Shanghai')).isoformat()}" in line for line in summary)


def test_an_empty_listing_prints_its_header_only(env: Env):
    lines = env.cli("deliveries", "--campaign", "nope").stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("id\tcampaign\trun\t")
