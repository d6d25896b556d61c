"""The long-running scheduler's loop in-process, with a clock the test sets: ticks fire once each, every misfire
policy after a simulated downtime or pause, the misfire horizon, and reload of changed / invalid / deleted / new
files; on SQLite and PostgreSQL with the hand-made shop of tests/dataset.py."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from orchestrator.config import load_settings
from orchestrator.db.models import Campaign, CampaignRun, Delivery
from orchestrator.scheduler.lease import Lease
from orchestrator.scheduler.reload import CampaignFolder
from orchestrator.scheduler.service import SchedulerLoop
from orchestrator.service import Orchestrator
from tests import dataset

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai
HOUR = timedelta(hours=1)


def hourly(name: str = "hourly", misfire: str = "latest", subject: str = "Hi") -> str:
    return f"""\
name: {name}
schedule: {{every: 1h, start: "2026-03-01T00:00:00+08:00", timezone: Asia/Shanghai, misfire: {misfire}}}
recontact: always
segment: {{frequency: {{gte: 1}}}}
message:
  email: {{subject: "{subject} {{{{ customer.name }}}}", text: "Hello"}}
"""


class ManualClock:
    def __init__(self, at: datetime):
        self.at = at

    def now(self) -> datetime:
        return self.at

    def real_seconds(self, span: timedelta) -> float:
        return 0.0


@pytest.fixture
def shop(engine: Engine, tmp_path: Path, monkeypatch) -> tuple[Orchestrator, Path]:
    dataset.load(engine)
    config = tmp_path / "orchestrator.yaml"
    config.write_text(
        "timezone: Asia/Shanghai\ntemplates: []\ncampaigns: campaigns\nchannels:\n  email:\n"
        f"    from: Shop <shop@example.com>\n    outbox: {tmp_path / 'outbox'}\ndispatch:\n  linger_seconds: 0\n",
        encoding="utf-8",
    )
    folder = tmp_path / "campaigns"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    return Orchestrator(load_settings(str(config)), engine), folder


def start(service: Orchestrator, folder: Path, *, horizon: timedelta = timedelta(days=7)) -> SchedulerLoop:
    """A scheduler process (as after a restart: nothing in memory) that leads."""
    lease = Lease(service.engine, holder="test-scheduler", ttl=timedelta(minutes=10))
    assert lease.try_acquire()
    loop = SchedulerLoop(service, CampaignFolder(service, folder), lease, clock=ManualClock(T0), horizon=horizon)
    return loop


def step(loop: SchedulerLoop, at: datetime) -> list[datetime]:
    """One pass at ``at``; the scheduled times of the ticks it fired."""
    loop.clock.at = at
    before = len(loop.fired)
    loop.step(at)
    return [t["scheduled_at"] for t in loop.fired[before:] if t["fired"]]


def runs(engine: Engine) -> list[tuple[str, datetime, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Campaign.name, CampaignRun.scheduled_at, CampaignRun.state)
            .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
            .order_by(CampaignRun.scheduled_at, Campaign.name)
        ).all()
    return [(name, at.astimezone(UTC), state) for name, at, state in rows]


def sent_per_member_and_run(engine: Engine) -> Counter:
    with engine.connect() as conn:
        rows = conn.execute(select(Delivery.run_pk, Delivery.customer_pk).where(Delivery.state == "sent")).all()
    return Counter(rows)


def test_ticks_fire_on_time_once_each_and_each_member_gets_one_message_per_tick(shop, engine: Engine):
    service, folder = shop
    (folder / "hourly.yaml").write_text(hourly(), encoding="utf-8")
    loop = start(service, folder)
    assert step(loop, T0) == [T0]  # never ran: the tick due exactly now fires
    assert step(loop, T0 + timedelta(minutes=30)) == []
    assert step(loop, T0 + HOUR + timedelta(seconds=3)) == [T0 + HOUR]
    assert step(loop, T0 + HOUR + timedelta(seconds=5)) == []
    assert runs(engine) == [("hourly", T0, "done"), ("hourly", T0 + HOUR, "done")]
    first = loop.fired[0]
    assert first["audience"] > 0 and first["messages"] > 0 and first["lag_s"] == 0
    assert loop.fired[1]["lag_s"] == 3 and loop.fired[1]["leader"] == loop.lease.holder
    sent = sent_per_member_and_run(engine)
    assert sent and set(sent.values()) == {1}
    assert sum(sent.values()) == sum(t["messages"] for t in loop.fired)
    assert loop.fired[1]["messages"] == first["messages"]  # recontact: always - every member, every tick

    restarted = start(service, folder)  # a restart finds both ticks done: nothing fires again
    assert step(restarted, T0 + HOUR + timedelta(seconds=30)) == []
    assert len(runs(engine)) == 2


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("skip", []),
        ("latest", [T0 + 5 * HOUR]),
        ("catch_up", [T0 + n * HOUR for n in range(1, 6)]),
    ],
)
def test_each_misfire_policy_after_a_downtime(shop, engine: Engine, policy: str, expected: list[datetime]):
    service, folder = shop
    (folder / "hourly.yaml").write_text(hourly(misfire=policy), encoding="utf-8")
    assert step(start(service, folder), T0) == [T0]
    # down from just after T0 until 5h10m later: the ticks at 1h .. 5h were missed, all older than the 5m grace
    back = start(service, folder)
    assert step(back, T0 + 5 * HOUR + timedelta(minutes=10)) == expected
    assert [at for _, at, _ in runs(engine)] == [T0, *expected]
    assert step(back, T0 + 5 * HOUR + timedelta(minutes=20)) == []
    assert step(start(service, folder), T0 + 5 * HOUR + timedelta(minutes=30)) == []  # another restart: none twice
    assert step(back, T0 + 6 * HOUR) == [T0 + 6 * HOUR]  # on time again
    assert set(sent_per_member_and_run(engine).values()) == {1}


@pytest.mark.parametrize(("policy", "expected"), [("skip", []), ("latest", [T0 + 3 * HOUR])])
def test_a_pause_of_the_running_process_is_a_misfire_too(shop, policy: str, expected: list[datetime]):
    service, folder = shop
    (folder / "hourly.yaml").write_text(hourly(misfire=policy), encoding="utf-8")
    loop = start(service, folder)
    assert step(loop, T0) == [T0]
    assert step(loop, T0 + 3 * HOUR + timedelta(minutes=6)) == expected  # e.g. the machine was suspended


def test_a_tick_within_the_grace_fires_even_with_skip(shop):
    service, folder = shop
    (folder / "hourly.yaml").write_text(hourly(misfire="skip"), encoding="utf-8")
    assert step(start(service, folder), T0) == [T0]
    assert step(start(service, folder), T0 + HOUR + timedelta(minutes=4)) == [T0 + HOUR]


def test_catch_up_goes_no_further_back_than_the_horizon(shop):
    service, folder = shop
    (folder / "hourly.yaml").write_text(hourly(misfire="catch_up"), encoding="utf-8")
    assert step(start(service, folder), T0) == [T0]
    back = start(service, folder, horizon=timedelta(hours=2))
    assert step(back, T0 + 10 * HOUR + timedelta(minutes=1)) == [T0 + 9 * HOUR, T0 + 10 * HOUR]


def problems_logged(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.getMessage() == "campaign file invalid"]


def test_reload_of_a_changed_invalid_deleted_and_new_file(shop, engine: Engine, caplog):
    caplog.set_level(logging.INFO, logger="orchestrator.scheduler")
    service, folder = shop
    path = folder / "hourly.yaml"
    path.write_text(hourly(), encoding="utf-8")
    loop = start(service, folder)
    assert step(loop, T0) == [T0]

    path.write_text(hourly(subject="Changed"), encoding="utf-8")  # changed: the next tick runs the new version
    assert step(loop, T0 + HOUR) == [T0 + HOUR]
    with engine.connect() as conn:
        hashes = conn.execute(select(CampaignRun.content_hash).order_by(CampaignRun.scheduled_at)).scalars().all()
    assert hashes[0] != hashes[1] == loop.folder.firing()["hourly"].content_hash
    assert any(r.getMessage() == "campaign file changed" for r in caplog.records)

    path.write_text(hourly(subject="Broken").replace("frequency:", "frequncy:"), encoding="utf-8")
    assert step(loop, T0 + 2 * HOUR) == [T0 + 2 * HOUR]  # invalid: the last valid version still fires
    [logged] = problems_logged(caplog)
    assert logged["file"] == str(path) and logged["campaign"] == "hourly"
    assert logged["problems"][0]["line"] == 4 and "frequncy" in logged["problems"][0]["message"]
    with engine.connect() as conn:
        last_hash = conn.execute(select(CampaignRun.content_hash).order_by(CampaignRun.scheduled_at.desc())).scalar()
    assert last_hash == hashes[1]

    (folder / "daily.yaml").write_text(hourly(name="other").replace("every: 1h", "every: 2h"), encoding="utf-8")
    path.unlink()  # deleted: no longer fires; the new file's campaign does
    assert step(loop, T0 + 4 * HOUR) == [T0 + 4 * HOUR]
    assert [(name, at) for name, at, _ in runs(engine)][-1] == ("other", T0 + 4 * HOUR)
    assert "hourly" not in loop.folder.firing()
    assert step(loop, T0 + 5 * HOUR) == []


def test_a_file_invalid_from_the_start_is_logged_and_the_others_fire(shop, caplog):
    caplog.set_level(logging.INFO, logger="orchestrator.scheduler")
    service, folder = shop
    (folder / "broken.yaml").write_text("name: broken\nschedule: {every: 1x}\n", encoding="utf-8")
    (folder / "hourly.yaml").write_text(hourly(), encoding="utf-8")
    loop = start(service, folder)
    assert step(loop, T0) == [T0]
    [logged] = problems_logged(caplog)
    assert logged["campaign"] is None and logged["kept"] == "nothing scheduled"
    assert logged["problems"][0]["file"].endswith("broken.yaml") and logged["problems"][0]["line"] == 2


def test_a_disabled_campaign_does_not_fire(shop, engine: Engine):
    service, folder = shop
    (folder / "hourly.yaml").write_text(hourly().replace("name: hourly", "name: hourly\nenabled: false"), "utf-8")
    loop = start(service, folder)
    assert step(loop, T0) == []
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CampaignRun)).scalar_one() == 0


def test_no_tick_fires_once_the_lease_is_lost(shop, engine: Engine):
    service, folder = shop
    (folder / "hourly.yaml").write_text(hourly(), encoding="utf-8")
    loop = start(service, folder)
    assert step(loop, T0) == [T0]
    loop.lease.release()  # as when a renewal fails: held turns false at once
    assert step(loop, T0 + HOUR) == []
    assert len(runs(engine)) == 1


def test_a_campaigns_folder_that_disappears_keeps_what_was_loaded(shop, caplog, tmp_path: Path):
    caplog.set_level(logging.INFO, logger="orchestrator.scheduler")
    service, folder = shop
    (folder / "hourly.yaml").write_text(hourly(), encoding="utf-8")
    loop = start(service, folder)
    assert step(loop, T0) == [T0]
    folder.rename(tmp_path / "moved")  # e.g. a network mount gone
    assert step(loop, T0 + HOUR) == [T0 + HOUR]
    assert any(r.getMessage() == "campaigns folder not reloaded" for r in caplog.records)


def test_a_campaign_enabled_again_while_running_starts_without_a_backlog(shop, engine: Engine):
    service, folder = shop
    path = folder / "hourly.yaml"
    path.write_text(hourly(misfire="catch_up"), encoding="utf-8")
    loop = start(service, folder)
    assert step(loop, T0) == [T0]
    path.write_text(hourly(misfire="catch_up").replace("name: hourly", "name: hourly\nenabled: false"), "utf-8")
    assert step(loop, T0 + HOUR) == []
    path.write_text(hourly(misfire="catch_up"), encoding="utf-8")
    assert step(loop, T0 + 3 * HOUR + timedelta(minutes=30)) == []  # not the ticks at 2h and 3h it was disabled for
    assert step(loop, T0 + 4 * HOUR) == [T0 + 4 * HOUR]


ONCE_WITH_FOLLOW_UP = """\
name: once
schedule: {at: "2026-03-02T10:00:00+08:00", timezone: Asia/Shanghai}
segment: {frequency: {gte: 1}}
message:
  email: {subject: "Hi {{ customer.name }}", text: "Hello"}
dispatch: {frequency_cap: {max: 5, per: 7d}}
follow_ups:
  - name: later
    after: 2h
    message:
      email: {subject: "Again {{ customer.name }}", text: "Hello again"}
"""


def test_the_loop_plans_follow_ups_when_due_and_sends_them_once(shop, engine: Engine, caplog):
    service, folder = shop
    (folder / "once.yaml").write_text(ONCE_WITH_FOLLOW_UP, encoding="utf-8")
    loop = start(service, folder)
    assert step(loop, T0) == [T0]
    step(loop, T0 + HOUR)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).where(Delivery.follow_up == "later")).scalar_one() == 0
    with caplog.at_level(logging.INFO, logger="orchestrator"):
        step(loop, T0 + 2 * HOUR + timedelta(seconds=1))
    with engine.connect() as conn:
        first = conn.execute(
            select(Delivery.customer_pk).where(Delivery.state == "sent", Delivery.follow_up == "")
        ).all()
        later = conn.execute(
            select(Delivery.customer_pk).where(Delivery.state == "sent", Delivery.follow_up == "later")
        ).all()
    assert first and sorted(later) == sorted(first)  # everyone the run reached, once
    assert any(r.getMessage() == "follow-up" for r in caplog.records)
    restarted = start(service, folder)
    step(restarted, T0 + 3 * HOUR)
    with engine.connect() as conn:
        again = conn.execute(select(func.count()).where(Delivery.follow_up == "later")).scalar_one()
    assert again == len(later)
    assert runs(engine) == [("once", T0, "done")]
