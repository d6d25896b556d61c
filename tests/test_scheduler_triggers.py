"""Tick times of each schedule kind, computed with fixed times (never the clock), in zones other than the
server's, across daylight-saving changes, within start/end, and on the same ``every`` grid from any "now"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from orchestrator.campaign.schema import Campaign, Schedule
from orchestrator.scheduler.misfire import to_fire
from orchestrator.scheduler.triggers import describe, ticks

BERLIN = ZoneInfo("Europe/Berlin")
SHANGHAI = ZoneInfo("Asia/Shanghai")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def between(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    return list(ticks(schedule, start, end))


def test_weekly_cron_fires_at_the_local_time_of_the_schedules_zone():
    schedule = Schedule(cron="0 10 * * MON", timezone="Asia/Shanghai")
    found = between(schedule, utc(2026, 3, 1), utc(2026, 3, 29))
    assert found == [utc(2026, 3, 2, 2), utc(2026, 3, 9, 2), utc(2026, 3, 16, 2), utc(2026, 3, 23, 2)]
    assert all(t.tzinfo is UTC for t in found)
    assert {t.astimezone(SHANGHAI).strftime("%a %H:%M") for t in found} == {"Mon 10:00"}


def test_the_range_is_half_open():
    schedule = Schedule(cron="0 10 * * MON", timezone="Asia/Shanghai")
    assert between(schedule, utc(2026, 3, 2, 2), utc(2026, 3, 9, 2)) == [utc(2026, 3, 2, 2)]


def test_berlin_0230_daily_across_the_march_change_fires_an_hour_later_in_wall_time():
    schedule = Schedule(cron="30 2 * * *", timezone="Europe/Berlin")
    found = between(schedule, utc(2026, 3, 27), utc(2026, 3, 31))
    # 29 March 2026: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist and fires at 03:30 CEST (01:30 UTC)
    assert found == [utc(2026, 3, 27, 1, 30), utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)]
    assert [t.astimezone(BERLIN).strftime("%H:%M") for t in found] == ["02:30", "02:30", "03:30", "02:30"]


def test_berlin_0230_daily_across_the_october_change_fires_once_at_the_first_occurrence():
    schedule = Schedule(cron="30 2 * * *", timezone="Europe/Berlin")
    found = between(schedule, utc(2026, 10, 23), utc(2026, 10, 27))
    # 25 October 2026: 03:00 CEST falls back to 02:00 CET, 02:30 happens twice; it fires at the first (CEST)
    assert found == [
        utc(2026, 10, 23, 0, 30),
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
    ]
    assert [t.astimezone(BERLIN).strftime("%H:%M %Z") for t in found] == [
        "02:30 CEST",
        "02:30 CEST",
        "02:30 CEST",
        "02:30 CET",
    ]


def test_every_lies_on_a_fixed_grid_whatever_the_now():
    schedule = Schedule(every="7h", timezone="Asia/Shanghai")
    first = between(schedule, utc(2026, 1, 1), utc(2026, 1, 8))
    later = between(schedule, utc(2026, 1, 3, 13, 17, 42), utc(2026, 1, 8))
    assert later == [t for t in first if t >= utc(2026, 1, 3, 13, 17, 42)]
    anchor = datetime(2000, 1, 1, tzinfo=SHANGHAI)
    assert all((t - anchor) % timedelta(hours=7) == timedelta(0) for t in first)
    assert all(b - a == timedelta(hours=7) for a, b in pairwise(first))


def test_every_is_anchored_at_start_and_stops_before_end():
    schedule = Schedule(every="90m", start="2026-05-01T09:10:00+08:00", end="2026-05-01T14:00:00+08:00")
    found = between(schedule, utc(2026, 1, 1), utc(2027, 1, 1))
    assert [t.astimezone(SHANGHAI).strftime("%H:%M") for t in found] == ["09:10", "10:40", "12:10", "13:40"]


def test_every_is_elapsed_time_across_a_dst_change():
    schedule = Schedule(every="1d", start="2026-03-28T12:00:00", timezone="Europe/Berlin")
    found = between(schedule, utc(2026, 3, 28), utc(2026, 3, 31))
    assert [t.astimezone(BERLIN).strftime("%d %H:%M") for t in found] == ["28 12:00", "29 13:00", "30 13:00"]


def test_start_and_end_as_dates_bound_a_cron_in_the_schedules_zone():
    schedule = Schedule(cron="0 9 * * *", timezone="Europe/Berlin", start="2026-06-03", end="2026-06-05")
    found = between(schedule, utc(2026, 6, 1), utc(2026, 6, 30))
    assert found == [utc(2026, 6, 3, 7), utc(2026, 6, 4, 7)]


def test_at_is_one_tick_inside_the_range_only():
    schedule = Schedule(at="2026-07-01T10:00:00", timezone="America/New_York")
    assert between(schedule, utc(2026, 1, 1), utc(2027, 1, 1)) == [utc(2026, 7, 1, 14)]
    assert between(schedule, utc(2026, 7, 1, 14, 0, 1), utc(2027, 1, 1)) == []
    assert between(schedule, utc(2026, 1, 1), utc(2026, 7, 1, 14)) == []


def test_relative_to_is_a_daily_tick_at_its_local_time():
    schedule = Schedule(relative_to="birthday", days_before=3, time="08:15", timezone="Europe/Berlin")
    found = between(schedule, utc(2026, 1, 1), utc(2026, 1, 4))
    assert found == [utc(2026, 1, 1, 7, 15), utc(2026, 1, 2, 7, 15), utc(2026, 1, 3, 7, 15)]


def test_on_is_checked_every_check_every_on_the_grid():
    schedule = Schedule(on="order_paid", within="1h", check_every="15m")
    found = between(schedule, utc(2026, 1, 1, 0, 5), utc(2026, 1, 1, 1))
    assert found == [utc(2026, 1, 1, 0, 15), utc(2026, 1, 1, 0, 30), utc(2026, 1, 1, 0, 45)]
    assert len(between(Schedule(on="member_joined"), utc(2026, 1, 1), utc(2026, 1, 1, 1))) == 60


def test_misfire_replaces_catch_up_which_is_still_read():
    assert Schedule(cron="0 10 * * MON").misfire == "latest"
    assert Schedule(cron="0 10 * * MON", catch_up=True).misfire == "catch_up"
    assert Schedule(cron="0 10 * * MON", catch_up=False).misfire == "latest"
    with pytest.raises(ValidationError, match="write misfire: only"):
        Schedule(cron="0 10 * * MON", catch_up=True, misfire="skip")


def test_misfire_policies_choose_which_missed_ticks_fire():
    now = utc(2026, 1, 1, 12)
    missed = [utc(2026, 1, 1, 9), utc(2026, 1, 1, 10), utc(2026, 1, 1, 11, 58)]
    late_only = missed[:2]

    def fire(policy: str, ticks: list[datetime]) -> list[datetime]:
        return to_fire(Schedule(every="1h", misfire=policy, misfire_grace="5m"), ticks, now)

    assert fire("catch_up", missed) == missed
    assert fire("skip", missed) == [missed[2]] and fire("skip", late_only) == []
    assert fire("latest", missed) == [missed[2]] and fire("latest", late_only) == [missed[1]]


def test_numeric_day_of_week_is_refused_and_names_are_accepted():
    with pytest.raises(ValidationError, match="write day names"):
        Schedule(cron="0 10 * * 1")
    assert Schedule(cron="0 10 * * MON-FRI").cron == "0 10 * * MON-FRI"
    assert Schedule(cron="0 10 * * */2").cron == "0 10 * * */2"


def test_enabled_defaults_to_true_and_bounds_must_be_ordered():
    campaign = Campaign(name="x", segment={}, message={"email": {}})
    assert campaign.enabled is True
    with pytest.raises(ValidationError, match="end must be after start"):
        Schedule(every="1h", start="2026-02-01", end="2026-01-01")


def test_describe_says_what_the_schedule_does():
    assert describe(Schedule(cron="0 10 * * MON")) == "cron 0 10 * * MON (Asia/Shanghai; misfire latest)"
    assert describe(Schedule(relative_to="birthday", days_before=3, time="09:00")) == (
        "daily at 09:00: members 3 days before their birthday (Asia/Shanghai; misfire latest)"
    )
    assert describe(Schedule(on="order_paid", within="15m")) == (
        "on order_paid within 15m, checked every 1m (Asia/Shanghai; misfire latest)"
    )


def test_validate_warns_that_catch_up_is_deprecated(tmp_path, monkeypatch):
    from tests.clitools import Cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    (tmp_path / "orchestrator.yaml").write_text("templates: []\n", encoding="utf-8")
    campaign = tmp_path / "c.yaml"
    campaign.write_text(
        "name: c\nschedule: {cron: '0 10 * * MON', catch_up: true}\nsegment: {recency_days: {gte: 1}}\n"
        "message: {webhook: {payload: {a: 1}}}\n",
        encoding="utf-8",
    )
    result = Cli(None, config=str(tmp_path / "orchestrator.yaml"))("validate", str(campaign))
    assert result.exit_code == 0, result.output
    assert "catch_up: is deprecated; write misfire: catch_up" in result.stderr
