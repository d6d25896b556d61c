"""When ``orchestrator run`` starts a new run, continues one, or refuses, on SQLite and PostgreSQL.

- Two runs of one campaign a second apart, each deferring the same members by quiet hours, must not both send:
  the second one's frequency cap counts the first one's deferred messages.
- ``run`` without ``--at`` does not start a second run while the campaign has an open one (running or waiting).
- ``run`` at the ``--at`` of an existing run continues it only if the campaign file is the one it started with.

Refusals exit 2, name the run and what to do, and write nothing.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, func, select, update

from orchestrator.db.models import Campaign, CampaignRun, Delivery
from tests.test_runs_cli import AT, QUIET, one_line, sent_files, world

# recontact: always - the second run must be stopped by the cap, which is what this file tests
CAPPED = QUIET + 'recontact: always\ndispatch: {quiet_hours: "21:00-09:00", frequency_cap: {max: 1, per: 7d}}\n'
MORNING = "2026-11-03T09:00:00+08:00"


def counts(engine: Engine) -> dict[str, object]:
    """What a refused command must leave as it was."""
    with engine.connect() as conn:
        return {
            "runs": conn.execute(select(CampaignRun.id, CampaignRun.state).order_by(CampaignRun.id)).all(),
            "deliveries": conn.execute(select(func.count()).select_from(Delivery)).scalar_one(),
            "campaign": conn.execute(select(Campaign.content_hash, Campaign.updated_at)).all(),
        }


def test_two_runs_a_second_apart_send_each_deferred_member_one_message(engine: Engine, db_url: str, tmp_path: Path):
    cli, campaign = world(tmp_path, engine, db_url, CAPPED)
    first = json.loads(cli("run", campaign, "--at", AT, "--json").stdout)
    assert first["deferred"] == 12 and first["state"] == "waiting"
    a_second_later = (datetime.fromisoformat(AT) + timedelta(seconds=1)).isoformat()
    second = json.loads(cli("run", campaign, "--at", a_second_later, "--json").stdout)
    assert second["run_id"] != first["run_id"]
    assert second["deferred"] == 0 and second["skipped"] == {"frequency_cap": 12}, second
    morning = json.loads(cli("dispatch", "--at", MORNING, "--json").stdout)
    assert sum(r["outcomes"].get("sent", 0) for r in morning["runs"]) == 12
    assert len(sent_files(tmp_path)) == 12
    with engine.connect() as conn:
        per_member = conn.execute(
            select(Delivery.customer_pk, func.count()).where(Delivery.state == "sent").group_by(Delivery.customer_pk)
        ).all()
    assert len(per_member) == 12 and {n for _, n in per_member} == {1}


def test_run_without_at_refuses_while_the_campaign_has_a_waiting_run(engine: Engine, db_url: str, tmp_path: Path):
    cli, campaign = world(tmp_path, engine, db_url, QUIET)
    planned = json.loads(cli("run", campaign, "--at", AT, "--plan-only", "--json").stdout)
    assert planned["state"] == "waiting"
    run_id = planned["run_id"]
    before = counts(engine)
    for extra in ((), ("--json",), ("--plan-only",)):
        result = cli("run", campaign, *extra)
        assert result.exit_code == 2, result.output
        text = one_line(result.output)
        assert f"run {run_id} of quiet-check" in text and "is still open (waiting" in text, text
        assert f"orchestrator dispatch --run {run_id}" in text and "--at" in text, text
        assert result.stdout == "" and "Traceback" not in text
    assert counts(engine) == before and sent_files(tmp_path) == []
    # a deliberate new run names its time
    other = json.loads(cli("run", campaign, "--at", "2026-11-02T10:00:01+08:00", "--plan-only", "--json").stdout)
    assert other["run_id"] != run_id and other["resumed"] is False
    # once every open run is finished, a run "now" starts
    cli("dispatch", "--json")
    fresh = json.loads(cli("run", campaign, "--json").stdout)
    assert fresh["run_id"] not in (run_id, other["run_id"]) and fresh["resumed"] is False


def test_run_without_at_points_an_interrupted_run_to_resume(engine: Engine, db_url: str, tmp_path: Path):
    cli, campaign = world(tmp_path, engine, db_url, QUIET)
    first = json.loads(cli("run", campaign, "--at", AT, "--json").stdout)
    with engine.begin() as conn:
        conn.execute(update(CampaignRun).values(state="running"))
    before = counts(engine)
    result = cli("run", campaign)
    assert result.exit_code == 2
    text = one_line(result.output)
    assert f"run {first['run_id']} of quiet-check" in text and "is still open (running" in text, text
    assert f"orchestrator resume {first['run_id']}" in text, text
    assert counts(engine) == before


def test_run_at_an_existing_run_refuses_a_changed_campaign_file(engine: Engine, db_url: str, tmp_path: Path):
    cli, campaign = world(tmp_path, engine, db_url, QUIET)
    first = json.loads(cli("run", campaign, "--at", AT, "--json").stdout)
    assert first["state"] == "done" and first["outcomes"] == {"sent": 12}
    original = campaign.read_text(encoding="utf-8")
    campaign.write_text(original + "control_group: 50%\n", encoding="utf-8")
    before = counts(engine)
    for extra in ((), ("--json",)):
        result = cli("run", campaign, "--at", AT, *extra)
        assert result.exit_code == 2, result.output
        text = one_line(result.output)
        assert f"run {first['run_id']} of quiet-check" in text and "has changed since" in text, text
        assert str(campaign) in text and "different --at" in text and "two versions" in text, text
    assert counts(engine) == before and len(sent_files(tmp_path)) == 12
    # the file as it was continues the run; the changed one runs at a new time
    campaign.write_text(original, encoding="utf-8")
    again = json.loads(cli("run", campaign, "--at", AT, "--json").stdout)
    assert again["run_id"] == first["run_id"] and again["resumed"] is True
    campaign.write_text(original + "control_group: 50%\nrecontact: always\n", encoding="utf-8")
    new = json.loads(cli("run", campaign, "--at", "2026-11-09T22:00:00+08:00", "--json").stdout)
    assert new["run_id"] != first["run_id"] and new["control"] > 0
