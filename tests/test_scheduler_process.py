"""``orchestrator scheduler`` as real processes: SIGTERM in the middle of a run and a restart (nothing lost, nothing
twice), a second scheduler on SQLite refused with exit status 2, and on PostgreSQL a standby taking over from a
leader killed with SIGKILL. The processes run on a scheduler clock 60 times as fast as the real one
(``ORCHESTRATOR_SCHEDULER_TEST_CLOCK``), so an every-minute campaign ticks every second."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from orchestrator.db.models import Campaign, CampaignRun, Delivery
from orchestrator.scheduler.lease import Lease
from orchestrator.scheduler.service import TEST_CLOCK_ENV
from tests import dataset

ORCHESTRATOR = shutil.which("orchestrator", path=str(Path(sys.executable).parent)) or "orchestrator"
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
SPEED = 60.0
MINUTELY = """\
name: minutely
schedule: {every: 1m, timezone: Asia/Shanghai, misfire: catch_up}
recontact: always  # every tick is for every member: one message each per tick
segment: {frequency: {gte: 1}}
message:
  email: {subject: "Hi {{ customer.name }}", text: "Hello"}
"""


@pytest.fixture
def shop(engine: Engine, tmp_path: Path) -> Path:
    dataset.load(engine)
    (tmp_path / "orchestrator.yaml").write_text(
        "timezone: Asia/Shanghai\ntemplates: []\ncampaigns: campaigns\nchannels:\n  email:\n"
        f"    from: Shop <shop@example.com>\n    outbox: {tmp_path / 'outbox'}\ndispatch:\n  linger_seconds: 0\n",
        encoding="utf-8",
    )
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "minutely.yaml").write_text(MINUTELY, encoding="utf-8")
    return tmp_path


def clock_env() -> dict[str, str]:
    """Scheduler time T0 - 1.5 s (real) from now, 60 times as fast: the first tick comes in about a second."""
    return {TEST_CLOCK_ENV: f"{T0.isoformat()}@{time.time() + 1.5:.6f}x{SPEED:g}"}


def start(folder: Path, db_url: str, log: Path | None, env: dict[str, str], *args: str) -> subprocess.Popen:
    """A scheduler process logging to ``log`` (None: where the config's scheduler.log_file says)."""
    environment = {k: v for k, v in os.environ.items() if k != "ORCHESTRATOR_CONFIG"} | env
    options = ["--poll", "0.3", "--lease-ttl", "3", *(["--log-file", str(log)] if log else []), *args]
    return subprocess.Popen(
        [ORCHESTRATOR, "--config", str(folder / "orchestrator.yaml"), "--db", db_url, "scheduler", *options],
        cwd=folder,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def log_lines(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def wait_for(predicate, timeout: float = 30.0, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {predicate.__name__}")


def runs(engine: Engine) -> list[tuple[datetime, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(CampaignRun.scheduled_at, CampaignRun.state)
            .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
            .where(Campaign.name == "minutely")
            .order_by(CampaignRun.scheduled_at)
        ).all()
    return [(at.astimezone(UTC), state) for at, state in rows]


def assert_every_tick_once_and_one_message_per_member(engine: Engine) -> list[datetime]:
    """The runs are one per minute with no gap, all done; each member has at most one ledger row per run, and no
    message is left unsent (each row is sent, or skipped with a reason, e.g. no consent)."""
    found = runs(engine)
    ticks = [at for at, _ in found]
    assert ticks and ticks == [ticks[0] + timedelta(minutes=n) for n in range(len(ticks))], ticks
    assert {state for _, state in found} == {"done"}, found
    with engine.connect() as conn:
        rows = conn.execute(select(Delivery.run_pk, Delivery.customer_pk, Delivery.state)).all()
    per_member = Counter((run, member) for run, member, _ in rows)
    assert per_member and max(per_member.values()) == 1
    assert {state for _, _, state in rows} == {"sent", "skipped"}
    assert Counter(run for run, _, state in rows if state == "sent").keys() == {run for run, _, _ in rows}
    return ticks


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, str]:
    process.send_signal(sig)
    _, errors = process.communicate(timeout=60)
    return process.returncode, errors


def test_sigterm_mid_run_finishes_the_run_and_a_restart_continues_without_gaps_or_repeats(
    shop: Path, db_url: str, engine: Engine
):
    log = shop / "scheduler.log"
    env = clock_env()
    first = start(shop, db_url, log, env)
    try:
        wait_for(lambda: any(state == "running" for _, state in runs(engine)))  # a run is being planned / sent
    finally:
        code, errors = stop(first)
    assert code == 0, errors
    assert "Traceback" not in errors
    assert runs(engine) and runs(engine)[-1][1] == "done"  # the run in flight was finished, not abandoned
    events = [line["event"] for line in log_lines(log)]
    assert events[-1] == "stopped" and "tick" in events
    info = Lease(engine).holder_info()
    assert info is not None and not info.live  # released: a standby (or a restart) may take it at once

    time.sleep(1.5)  # down for about a minute and a half of scheduler time: a tick or two are missed
    second = start(shop, db_url, log, env)
    try:
        wait_for(lambda: len(runs(engine)) >= 5 and runs(engine)[-1][1] == "done", timeout=60)
    finally:
        code, errors = stop(second)
    assert code == 0, errors
    assert_every_tick_once_and_one_message_per_member(engine)
    ticks = [line for line in log_lines(log) if line["event"] == "tick"]
    assert len({line["scheduled_at"] for line in ticks if line["fired"]}) == len(runs(engine))
    assert {"campaign", "run_id", "audience", "messages", "skipped", "duration_s", "lag_s", "leader"} <= set(ticks[0])
    assert "@" not in log.read_text(encoding="utf-8")  # no contact in the log


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_second_scheduler_on_sqlite_says_who_runs_and_exits_2(shop: Path, db_url: str, engine: Engine):
    log = shop / "scheduler.log"
    first = start(shop, db_url, log, clock_env())
    try:
        wait_for(lambda: any(line["event"] == "leading" for line in log_lines(log)))
        second = subprocess.run(
            [ORCHESTRATOR, "--config", str(shop / "orchestrator.yaml"), "--db", db_url, "scheduler"],
            cwd=shop,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        code, errors = stop(first, signal.SIGINT)
    assert second.returncode == 2, second.stderr
    assert "another scheduler is running" in second.stderr and "held by" in second.stderr
    assert "Traceback" not in second.stderr
    assert code == 0, errors


def test_schedule_reports_the_running_scheduler_and_exits_1_when_one_is_expected_but_none_runs(
    shop: Path, db_url: str, engine: Engine
):
    config = shop / "orchestrator.yaml"
    config.write_text(
        config.read_text(encoding="utf-8") + "scheduler:\n  expected: true\n  log_file: logs/scheduler.log\n",
        encoding="utf-8",
    )
    (shop / "logs").mkdir()

    def schedule() -> subprocess.CompletedProcess:
        return subprocess.run(
            [ORCHESTRATOR, "--config", str(config), "--db", db_url, "schedule", "--json"],
            cwd=shop,
            capture_output=True,
            text=True,
            timeout=60,
        )

    never = schedule()
    assert never.returncode == 1 and json.loads(never.stdout)["scheduler"]["live"] is False
    log = shop / "logs" / "scheduler.log"  # the config's log_file, relative to the config file
    process = start(shop, db_url, None, clock_env())
    try:
        wait_for(lambda: any(line["event"] == "leading" for line in log_lines(log)))
        running = schedule()
    finally:
        code, errors = stop(process)
    assert code == 0, errors
    assert running.returncode == 0, running.stderr
    state = json.loads(running.stdout)["scheduler"]
    assert state["live"] is True and state["leader"] == log_lines(log)[0]["leader"] and state["last_heartbeat"]
    after = schedule()
    assert after.returncode == 1 and json.loads(after.stdout)["scheduler"]["last_leader"] == state["leader"]


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_standby_takes_over_from_a_killed_leader_and_every_tick_fires_once(shop: Path, db_url: str, engine: Engine):
    env = clock_env()
    logs = [shop / "a.log", shop / "b.log"]
    processes = [start(shop, db_url, log, env) for log in logs]
    try:

        def leaders() -> list[int]:
            return [i for i, log in enumerate(logs) if any(x["event"] == "leading" for x in log_lines(log))]

        [leader_index] = wait_for(leaders)
        wait_for(lambda: len(runs(engine)) >= 3)
        wait_for(lambda: runs(engine)[-1][1] == "running")  # killed while planning / sending a run
        leader, standby = processes[leader_index], processes[1 - leader_index]
        standby_log = logs[1 - leader_index]
        leader.send_signal(signal.SIGKILL)
        killed_at = time.time()
        leader.communicate(timeout=60)
        cut_short = [at for at, state in runs(engine) if state == "running"]  # left running by the dead leader
        took_over = wait_for(
            lambda: next((x for x in log_lines(standby_log) if x["event"] == "leading"), None), timeout=60
        )
        takeover_s = datetime.fromisoformat(took_over["time"]).timestamp() - killed_at
        ticks_before = len(runs(engine))
        wait_for(lambda: len(runs(engine)) >= ticks_before + 3 and runs(engine)[-1][1] == "done", timeout=60)
        code, errors = stop(standby)
        assert code == 0, errors
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    ticks = assert_every_tick_once_and_one_message_per_member(engine)  # the killed leader's run was finished too
    continued = {x["scheduled_at"] for x in log_lines(standby_log) if x["event"] == "tick"}
    assert {at.isoformat() for at in cut_short} <= continued
    ttl = 3.0
    print(
        f"takeover {takeover_s:.2f} s after SIGKILL (ttl {ttl:g} s); {len(ticks)} ticks, each fired once; "
        f"{len(cut_short)} run cut short by the kill and continued by the standby"
    )
    assert takeover_s <= ttl + 1.5


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_scheduler_killed_on_sqlite_restarts_at_once_without_waiting_for_its_lease(
    shop: Path, db_url: str, engine: Engine
):
    """A crash (SIGKILL, the OOM killer) leaves the lease row live for a ttl; the file lock the dead process held
    is gone with it, so a restart takes over at once instead of exiting 2 (which systemd would not restart)."""
    log = shop / "scheduler.log"
    first = start(shop, db_url, log, clock_env(), "--lease-ttl", "600")
    try:
        wait_for(lambda: any(line["event"] == "leading" for line in log_lines(log)))
    finally:
        first.kill()
        first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    info = Lease(engine).holder_info()
    assert info is not None and info.live  # the dead process's lease has not expired
    second = start(shop, db_url, log, clock_env(), "--lease-ttl", "600")
    try:
        wait_for(lambda: sum(line["event"] == "leading" for line in log_lines(log)) == 2, timeout=30)
    finally:
        code, errors = stop(second)
    assert code == 0, errors
    assert "another scheduler" not in errors


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_scheduler_that_fails_to_start_releases_the_lease(shop: Path, db_url: str, engine: Engine):
    unwritable = shop / "no-such-folder" / "scheduler.log"  # the log is opened after the lease is taken
    options = ["--lease-ttl", "600", "--log-file", str(unwritable)]
    failed = subprocess.run(
        [ORCHESTRATOR, "--config", str(shop / "orchestrator.yaml"), "--db", db_url, "scheduler", *options],
        cwd=shop,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode != 0
    info = Lease(engine).holder_info()
    assert info is None or not info.live, info
