"""``orchestrator scheduler --from --until``: replaying the schedules of the campaigns folder over a range, on
SQLite and PostgreSQL with the hand-made shop of tests/dataset.py."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from orchestrator.db.models import Campaign, CampaignRun, Delivery
from tests import dataset
from tests.clitools import Cli

SHANGHAI_OFFSET = timedelta(hours=8)
WEEKLY = """\
name: weekly-buyers
schedule: {cron: "0 10 * * MON", timezone: Asia/Shanghai}
segment: {frequency: {gte: 1}}
message:
  email: {subject: "Hi {{ customer.name }}", text: "Hello"}
"""
DISABLED = WEEKLY.replace("name: weekly-buyers", "name: paused-daily\nenabled: false").replace(
    "0 10 * * MON", "0 9 * * *"
)
INVALID = "name: broken\nschedule: {cron: '0 10 * * MON'}\nsegment: {frequncy: {gte: 1}}\nmessage: {email: {}}\n"
BIRTHDAY = """\
name: birthday-today
schedule: {relative_to: birthday, days_before: 0, time: "09:00", timezone: Asia/Shanghai}
segment: {frequency: {gte: 0}}
message:
  email: {subject: "生日快乐", text: "Happy birthday {{ customer.name }}"}
"""


@pytest.fixture
def shop(engine: Engine, db_url: str, tmp_path: Path, monkeypatch) -> tuple[Cli, Path]:
    dataset.load(engine)
    config = tmp_path / "orchestrator.yaml"
    config.write_text(
        "timezone: Asia/Shanghai\ntemplates: []\ncampaigns: campaigns\nchannels:\n  email:\n"
        f"    from: Shop <shop@example.com>\n    outbox: {tmp_path / 'outbox'}\ndispatch:\n  linger_seconds: 0\n",
        encoding="utf-8",
    )
    folder = tmp_path / "campaigns"
    folder.mkdir()
    (folder / "weekly.yaml").write_text(WEEKLY, encoding="utf-8")
    (folder / "paused.yaml").write_text(DISABLED, encoding="utf-8")
    (folder / "broken.yaml").write_text(INVALID, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    return Cli(db_url, config=str(config)), folder


def replay(cli: Cli, *args: str) -> dict:
    result = cli("scheduler", "--from", "2025-06-02", "--until", "2025-06-30", "--json", *args)
    assert result.exit_code == 0, result.output
    assert "broken.yaml:3" in result.stderr and "frequncy" in result.stderr  # reported, then skipped
    return json.loads(result.stdout)


def runs(engine: Engine) -> list[tuple[str, datetime, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Campaign.name, CampaignRun.scheduled_at, CampaignRun.state)
            .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
            .order_by(CampaignRun.scheduled_at)
        ).all()
    return [(name, at.astimezone(UTC), state) for name, at, state in rows]


MONDAYS = [datetime(2025, 6, d, 2, tzinfo=UTC) for d in (2, 9, 16, 23)]  # 10:00 Shanghai


def test_a_weekly_campaign_replayed_over_four_weeks_fires_four_runs_once(shop, engine: Engine):
    cli, _ = shop
    first = replay(cli)
    assert [(t["campaign"], datetime.fromisoformat(t["at"])) for t in first["ticks"]] == [
        ("weekly-buyers", at) for at in MONDAYS
    ]
    assert set(first["ticks"][0]) >= {"campaign", "at", "run_id", "audience", "messages", "skipped", "state"}
    assert all(t["run_id"] is not None and t["state"] == "done" for t in first["ticks"])
    assert first["ticks"][0]["audience"] > 0 and first["ticks"][0]["messages"] > 0
    assert runs(engine) == [("weekly-buyers", at, "done") for at in MONDAYS]
    with engine.connect() as conn:
        deliveries = conn.execute(select(func.count()).select_from(Delivery)).scalar_one()

    again = replay(cli)
    assert [t["run_id"] for t in again["ticks"]] == [t["run_id"] for t in first["ticks"]]
    assert all(t["fired"] is False for t in again["ticks"])
    assert runs(engine) == [("weekly-buyers", at, "done") for at in MONDAYS]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Delivery)).scalar_one() == deliveries


def test_a_dry_run_replay_writes_nothing(shop, engine: Engine, tmp_path: Path):
    cli, _ = shop
    ticks = replay(cli, "--dry-run")["ticks"]
    assert len(ticks) == 4 and all(t["run_id"] is None and t["state"] == "dry-run" for t in ticks)
    assert ticks[0]["audience"] > 0
    assert runs(engine) == []
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Campaign)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(Delivery)).scalar_one() == 0
    assert not (tmp_path / "outbox").exists()


def test_the_text_replay_is_a_table_in_shop_time(shop):
    cli, _ = shop
    result = cli("scheduler", "--from", "2025-06-02", "--until", "2025-06-10", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["at", "campaign", "run", "audience", "messages", "skipped", "state"]
    assert lines[1].startswith("2025-06-02T10:00:00+08:00  weekly-buyers") and lines[1].endswith("dry-run")
    assert len(lines) == 3


def test_a_birthday_schedule_fires_daily_for_the_members_born_that_day(shop, engine: Engine):
    cli, folder = shop
    (folder / "birthday.yaml").write_text(BIRTHDAY, encoding="utf-8")
    (folder / "weekly.yaml").unlink()
    result = cli("scheduler", "--from", "2025-06-30", "--until", "2025-07-03", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    ticks = json.loads(result.stdout)["ticks"]
    assert [t["at"] for t in ticks] == [f"2025-0{d}T01:00:00+00:00" for d in ("6-30", "7-01", "7-02")]
    for tick in ticks:
        at = datetime.fromisoformat(tick["at"])
        today = (at + SHANGHAI_OFFSET).date()
        born = [c for c in dataset.members(at) if dataset.days_until_birthday(c.birthday, today) == 0]
        assert born and tick["audience"] == len(born), (today, [c.customer_id for c in born])


def test_29_february_birthdays_are_celebrated_on_28_february_in_common_years(shop):
    cli, folder = shop
    (folder / "birthday.yaml").write_text(BIRTHDAY, encoding="utf-8")
    (folder / "weekly.yaml").unlink()
    result = cli("scheduler", "--from", "2026-02-28", "--until", "2026-03-01", "--dry-run", "--json")
    [tick] = json.loads(result.stdout)["ticks"]
    at = datetime.fromisoformat(tick["at"])
    born = [c for c in dataset.members(at) if c.birthday and (c.birthday.month, c.birthday.day) in ((2, 28), (2, 29))]
    assert {c.birthday for c in born} >= {date(1996, 2, 28), date(1984, 2, 29)}
    assert tick["audience"] == len(born)


def test_without_a_range_or_with_a_missing_folder_it_is_an_input_error(shop, tmp_path: Path):
    cli, _ = shop
    result = cli("scheduler", "--dry-run")
    assert result.exit_code == 2 and "give --from and --until" in result.stderr
    result = cli("scheduler", "--from", "2025-06-02", "--until", "2025-06-30", "--campaigns", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_messages_deferred_by_quiet_hours_go_out_at_the_first_tick_after_their_time(shop, engine: Engine):
    cli, folder = shop
    nightly = WEEKLY.replace("0 10 * * MON", "0 22 * * *") + 'dispatch: {quiet_hours: "21:00-09:00"}\n'
    nightly += "recontact: always\n"  # the same members every night
    (folder / "weekly.yaml").write_text(nightly, encoding="utf-8")
    result = cli("scheduler", "--from", "2025-06-02", "--until", "2025-06-04", "--json")
    ticks = json.loads(result.stdout)["ticks"]
    assert [t["state"] for t in ticks] == ["done", "waiting"]  # the first night's messages left at the second tick
    with engine.connect() as conn:
        states = conn.execute(
            select(CampaignRun.scheduled_at, Delivery.state, func.count())
            .join(CampaignRun, CampaignRun.id == Delivery.run_pk)
            .where(Delivery.state.in_(("sent", "deferred")))
            .group_by(CampaignRun.scheduled_at, Delivery.state)
            .order_by(CampaignRun.scheduled_at)
        ).all()
    assert [(at.astimezone(UTC).day, state) for at, state, _ in states] == [(2, "sent"), (3, "deferred")]
