"""``orchestrator resume`` and ``orchestrator dispatch``: finishing runs that did not finish in one go."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlalchemy import Engine, func, select, update

from orchestrator.db.models import CampaignRun, Customer, Delivery
from tests.clitools import Cli
from tests.test_dispatch import write_world

AT = "2026-11-02T22:00:00+08:00"  # inside the quiet hours below, in the members' (configured) zone
QUIET = (
    'name: quiet-check\nsegment: {consent_email: true}\nmessage:\n  webhook: {payload: {n: "{{ customer.name }}"}}\n'
)


def world(tmp_path: Path, engine: Engine, db_url: str, campaign_text: str, members: int = 12) -> tuple[Cli, Path]:
    # no URL: the webhook writes each body to its outbox, so the test needs no server
    config, campaign = write_world(tmp_path, engine, members, None, "  linger_seconds: 0\n")
    campaign.write_text(campaign_text, encoding="utf-8")
    return Cli(db_url, str(config)), campaign


def sent_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "out"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_messages_deferred_by_quiet_hours_go_out_when_dispatch_reaches_their_time(
    engine: Engine, db_url: str, tmp_path: Path
):
    cli, campaign = world(tmp_path, engine, db_url, QUIET + 'dispatch: {quiet_hours: "21:00-09:00"}\n')
    run = json.loads(cli("run", campaign, "--at", AT, "--json").stdout)
    assert run["deferred"] == 12 and run["state"] == "waiting" and sent_files(tmp_path) == []
    early = json.loads(cli("dispatch", "--at", "2026-11-03T08:59:00+08:00", "--json").stdout)
    assert early["runs"][0]["outcomes"] == {} and early["runs"][0]["open"] == {"deferred": 12}
    assert sent_files(tmp_path) == []  # still the members' night
    morning = json.loads(cli("dispatch", "--at", "2026-11-03T09:00:00+08:00", "--json").stdout)
    [report] = morning["runs"]
    assert report["outcomes"] == {"sent": 12} and report["state"] == "done" and report["open"] == {}
    assert len(sent_files(tmp_path)) == 12
    with engine.connect() as conn:
        assert set(conn.execute(select(Delivery.state)).scalars()) == {"sent"}
        assert conn.execute(select(CampaignRun.state)).scalar_one() == "done"
    assert json.loads(cli("dispatch", "--json").stdout) == {"runs": []}


def one_line(text: str) -> str:
    """Terminal output with its line wrapping undone, so that a test reads what a person reads."""
    return re.sub(r"\s+", " ", text)


def test_the_text_summary_shows_deferred_messages_per_step_and_channel_and_when_they_go_out(
    engine: Engine, db_url: str, tmp_path: Path
):
    """``messages 0`` alone read as "nothing will happen" while --json said 12 were deferred."""
    cli, campaign = world(tmp_path, engine, db_url, QUIET + 'dispatch: {quiet_hours: "21:00-09:00"}\n')
    with engine.begin() as conn:  # 23:00 in Tokyo: their night ends at 08:00 Shanghai time, an hour earlier
        conn.execute(update(Customer).where(Customer.customer_id == "M00001").values(timezone="Asia/Tokyo"))
    for command in ("dry-run", "run"):
        result = cli(command, campaign, "--at", AT)
        assert result.exit_code == 0, result.output
        text = one_line(result.output)
        assert "messages 0 deferred 12" in text, text
        assert "deferred by quiet hours: 12 messages step main: webhook 12" in text, text
        assert "earliest 2026-11-03 08:00, latest 2026-11-03 09:00 (Asia/Shanghai)" in text, text
    # the same in --json, for scripts: per step and channel, and the window in the shop's zone
    data = json.loads(cli("run", campaign, "--at", AT, "--json").stdout)
    assert data["steps"][0]["deferred"] == {"webhook": 12}
    assert data["deferred_until"] == {"earliest": "2026-11-03T08:00:00+08:00", "latest": "2026-11-03T09:00:00+08:00"}


def test_resume_plans_the_rest_of_an_interrupted_run_and_sends_it(engine: Engine, db_url: str, tmp_path: Path):
    cli, campaign = world(tmp_path, engine, db_url, QUIET + "dispatch: {batch_size: 5}\n")
    first = json.loads(cli("run", campaign, "--at", "2026-11-02T10:00:00+08:00", "--json").stdout)
    # as if the process had died after planning and sending the first batch of five
    with engine.begin() as conn:
        kept = conn.execute(select(Delivery.id).order_by(Delivery.id).limit(5)).scalars().all()
        conn.execute(Delivery.__table__.delete().where(Delivery.id.not_in(kept)))
        conn.execute(update(CampaignRun).values(state="running"))
    for name in sent_files(tmp_path):
        if int(name.removesuffix(".json").split("-d")[1]) not in kept:
            (tmp_path / "out" / name).unlink()
    resumed = json.loads(cli("resume", str(first["run_id"]), "--json").stdout)
    assert resumed["run_id"] == first["run_id"] and resumed["resumed"] is True and resumed["state"] == "done"
    assert resumed["outcomes"] == {"sent": 7, "already_sent": 5}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Delivery)).scalar_one() == 12
    assert len(sent_files(tmp_path)) == 12


def test_resume_refuses_a_campaign_file_changed_since_the_run_started(engine: Engine, db_url: str, tmp_path: Path):
    cli, campaign = world(tmp_path, engine, db_url, QUIET)
    first = json.loads(cli("run", campaign, "--at", "2026-11-02T10:00:00+08:00", "--json").stdout)
    with engine.begin() as conn:
        conn.execute(update(CampaignRun).values(state="running"))
    campaign.write_text(QUIET + "control_group: 50%\n", encoding="utf-8")
    result = cli("resume", str(first["run_id"]))
    assert result.exit_code == 2
    assert "has changed since the run started" in result.output and str(campaign) in result.output
    missing = cli("resume", "999")
    assert missing.exit_code == 2 and "no run with id 999" in missing.output


def test_a_webhook_configured_as_not_a_message_is_not_counted_by_frequency_caps(
    engine: Engine, db_url: str, tmp_path: Path
):
    capped = tmp_path / "capped.yaml"
    capped.write_text(
        "name: capped\nsegment: {consent_email: true}\nmessage:\n  email: {subject: Hi, text: Hello}\n"
        "dispatch: {frequency_cap: {max: 1, per: 7d}}\n",
        encoding="utf-8",
    )
    for is_message, contacted in (("true", 0), ("false", 12)):
        folder = tmp_path / is_message
        folder.mkdir()
        cli, campaign = world(folder, engine, db_url, QUIET)
        config = folder / "orchestrator.yaml"
        text = config.read_text().replace("    outbox: out\n", f"    outbox: out\n    is_message: {is_message}\n")
        config.write_text(text.replace("channels:\n", "channels:\n  email: {outbox: mail}\n"))
        at = "2026-11-02T10:00:00+08:00"
        json.loads(cli("run", campaign, "--at", at, "--json").stdout)
        later = json.loads(cli("run", capped, "--at", "2026-11-03T10:00:00+08:00", "--json").stdout)
        assert later["messages"] == contacted, (is_message, later["skipped"])
        assert later["skipped"] == ({"frequency_cap": 12} if contacted == 0 else {})
        with engine.begin() as conn:  # the next round starts from an empty ledger and member list
            for table in ("deliveries", "delivery_payloads", "campaign_runs", "campaigns", "customer_consents"):
                conn.exec_driver_sql(f"DELETE FROM {table}")
            conn.exec_driver_sql("DELETE FROM customers")
