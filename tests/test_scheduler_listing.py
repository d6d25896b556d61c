"""``orchestrator schedule``: every campaign file with its schedule in words, next fire times, last run, or its
error - on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine

from tests.test_scheduler_replay import BIRTHDAY, shop  # noqa: F401 - the fixture

EVENT = "name: on-join\nschedule: {on: member_joined, within: 10m}\nsegment: {signup_days: {lte: 1}}\n"
EVENT += "message: {email: {subject: Hi, text: Hi}}\n"


def test_schedule_lists_every_file_with_next_ticks_last_run_and_errors(shop, engine: Engine):  # noqa: F811
    cli, folder = shop
    (folder / "birthday.yaml").write_text(BIRTHDAY, encoding="utf-8")
    (folder / "event.yaml").write_text(EVENT, encoding="utf-8")
    fired = cli("scheduler", "--from", "2025-06-02", "--until", "2025-06-10", "--json")
    [tick] = json.loads(fired.stdout)["ticks"][-1:]
    result = cli("schedule", "--at", "2025-06-10T12:00:00+08:00", "--json")
    assert result.exit_code == 0, result.output
    entries = {Path(e["file"]).name: e for e in json.loads(result.stdout)["campaigns"]}
    assert set(entries) == {"birthday.yaml", "broken.yaml", "event.yaml", "paused.yaml", "weekly.yaml"}

    weekly = entries["weekly.yaml"]
    assert weekly["enabled"] is True and weekly["schedule"] == "cron 0 10 * * MON (Asia/Shanghai; misfire latest)"
    assert weekly["next"] == ["2025-06-16T10:00:00+08:00", "2025-06-23T10:00:00+08:00", "2025-06-30T10:00:00+08:00"]
    last = weekly["last_run"]
    assert last["at"] == "2025-06-09T02:00:00+00:00" and last["state"] == "done"
    assert last["run_id"] == tick["run_id"] and last["messages"] == tick["messages"]

    paused = entries["paused.yaml"]
    assert paused["enabled"] is False and paused["next"] == [] and paused["last_run"] is None
    assert entries["birthday.yaml"]["next"][0] == "2025-06-11T09:00:00+08:00"
    assert entries["event.yaml"]["note"] is None  # event triggers are fired
    assert entries["event.yaml"]["schedule"].startswith("on member_joined within 10m, checked every 1m")
    errors = entries["broken.yaml"]["errors"]
    assert any(e["line"] == 3 and "frequncy" in e["message"] for e in errors)
    assert all(e["file"].endswith("broken.yaml") for e in errors) and "campaign" not in entries["broken.yaml"]

    text = cli("schedule", "--at", "2025-06-10T12:00:00+08:00").stdout
    assert "weekly-buyers (" in text and "next: 2025-06-16T10:00+08:00" in text and "last run: " in text
    assert "paused-daily (" in text and "disabled" in text
    assert "broken.yaml:3:" in text
