"""The long-running scheduler: a plain loop that sleeps until the next tick or the next poll, whichever is sooner.

Why a plain loop and not APScheduler's BackgroundScheduler: the state of record is our database, not a job store,
and every tick time must be exactly one of ``triggers.ticks`` (the run key). A loop that asks ``ticks`` which
times fell in (last time it looked, now] fires exactly those, in order, and misfires fall out of the same
question; APScheduler's own scheduler would add a second notion of "next run time" and of misfire to keep in step
with ours. APScheduler still computes every tick time (``triggers``).

One pass (``SchedulerLoop.step(now)``), while this process leads:

1. poll the campaigns folder (``reload``): changed, added, removed and invalid files are logged;
2. for each firing campaign, the ticks since the last pass (for a campaign first seen at start-up or after
   taking over: since its last run in the runs table) go through ``misfire.to_fire`` and fire, in time order,
   exactly as ``run --at <tick>`` (``replay.fire``); a tick whose run exists and is done is not run again;
3. dispatch what is due in every unfinished run (retries, quiet-hours deferrals).

Missed ticks at start-up, or after taking over from a dead leader, are counted from each campaign's last run
(``scheduled_at`` of its latest run): the ticks after it, but none more than ``scheduler.misfire_horizon`` (7d)
old, and none before the schedule's ``start``. A campaign with no run yet has missed nothing: its first tick is the
first one after the scheduler first sees it. A ``running`` run (its process died while planning it) is continued
at start-up when its campaign is loaded, as ``orchestrator resume`` would.

Leadership (``lease``): the loop fires only while ``Lease.held``; a heartbeat thread renews the lease every
ttl/3 and, the moment a renewal fails, the lease stops being held, so no further tick fires. A standby tries to
take the lease every ttl/3. SIGINT/SIGTERM set ``stop``: no new tick starts, the one in flight finishes, the lease
is released (a standby takes over at its next attempt, not after the ttl) and the process exits 0.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from orchestrator.campaign.loader import CampaignPlan
from orchestrator.db.models import Campaign, CampaignRun
from orchestrator.errors import InputError
from orchestrator.followups import plan_due
from orchestrator.masking import describe_unexpected
from orchestrator.open_runs import find_runs
from orchestrator.scheduler.lease import Lease
from orchestrator.scheduler.misfire import to_fire
from orchestrator.scheduler.reload import CampaignFolder, FolderChange
from orchestrator.scheduler.replay import Tick, dispatch_round, fire
from orchestrator.scheduler.triggers import ticks
from orchestrator.service import Orchestrator

log = logging.getLogger("orchestrator.scheduler")

_STEP = timedelta(microseconds=1)
FOLLOW_UP_EVERY = timedelta(minutes=1)  # how often the loop looks for follow-ups come due
TEST_CLOCK_ENV = "ORCHESTRATOR_SCHEDULER_TEST_CLOCK"


@dataclass(frozen=True)
class Clock:
    """The scheduler's time: ``origin`` at the system time ``real_origin`` (epoch seconds), running ``speed`` times
    as fast. The system clock is speed 1 from now. Tests run a faster one so an every-minute campaign ticks every
    second (``ORCHESTRATOR_SCHEDULER_TEST_CLOCK="2026-03-02T10:00:00+08:00@1767000000.0x60"``); processes given the
    same value share one clock."""

    origin: datetime | None = None
    real_origin: float = 0.0
    speed: float = 1.0

    def now(self) -> datetime:
        if self.origin is None:
            return datetime.now(UTC)
        return (self.origin + timedelta(seconds=(time.time() - self.real_origin) * self.speed)).astimezone(UTC)

    def real_seconds(self, span: timedelta) -> float:
        """How long to sleep, in real seconds, for ``span`` of scheduler time."""
        return max(0.0, span.total_seconds() / self.speed)

    @classmethod
    def from_env(cls) -> Clock:
        value = os.environ.get(TEST_CLOCK_ENV)
        if not value:
            return cls()
        at, _, rest = value.partition("@")
        real, _, speed = rest.partition("x")
        return cls(datetime.fromisoformat(at), float(real), float(speed or 1))


class Heartbeat(threading.Thread):
    """Renews the lease every ttl/3 until told to halt or a renewal fails; then leadership ends (``Lease.held``
    turns false at once on a failed renewal, and by itself at expiry if the database cannot be reached)."""

    def __init__(self, lease: Lease):
        super().__init__(name="scheduler-heartbeat", daemon=True)
        self.lease = lease
        self.halt = threading.Event()

    def run(self) -> None:
        interval = self.lease.ttl.total_seconds() / 3
        while not self.halt.wait(interval):
            try:
                if not self.lease.renew():
                    log.warning("lease lost", extra={"fields": {"leader": self.lease.holder}})
                    return
            except Exception as exc:  # the database is unreachable: keep trying while the lease is still ours
                log.warning("lease renewal failed", extra={"fields": {"leader": self.lease.holder, "error": str(exc)}})
                if not self.lease.held:
                    return


class SchedulerLoop:
    def __init__(
        self,
        service: Orchestrator,
        folder: CampaignFolder,
        lease: Lease,
        *,
        clock: Clock | None = None,
        poll: timedelta = timedelta(seconds=2),
        horizon: timedelta = timedelta(days=7),
        stop: threading.Event | None = None,
    ):
        self.service = service
        self.folder = folder
        self.lease = lease
        self.clock = clock or Clock()
        self.poll = poll
        self.horizon = horizon
        self.stop = stop or threading.Event()
        self.cursors: dict[str, datetime] = {}  # campaign -> ticks at or before this time have been dealt with
        self.fired: list[dict[str, Any]] = []  # every tick this process fired (tests and the final summary read it)
        self._follow_ups_at: datetime | None = None  # when follow-ups were last planned
        # true until the first pass of a leadership term: only then are missed ticks counted from the runs table
        self._new_term = True
        self._heartbeat: Heartbeat | None = None

    # -- leadership --------------------------------------------------------------------------------------------

    def take_over(self, now: datetime) -> None:
        """Start leading: forget in-memory progress (another leader may have fired since), continue runs left
        ``running``, and from the next ``step`` count missed ticks from the runs table."""
        self.cursors = {}
        self._new_term = True
        self._follow_ups_at = None
        self._reload()
        self._heartbeat = Heartbeat(self.lease)
        self._heartbeat.start()
        log.info("leading", extra={"fields": {"leader": self.lease.holder, "at": now}})
        self._continue_running_runs()

    def step_down(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.halt.set()
            self._heartbeat.join()
            self._heartbeat = None
        self.cursors = {}

    def run(self) -> None:
        """Lead or wait to lead until ``stop`` is set; then release the lease."""
        standby_wait = self.lease.ttl.total_seconds() / 3
        leading = False
        try:
            while not self.stop.is_set():
                if leading and not self.lease.held:
                    log.warning("stopped leading", extra={"fields": {"leader": self.lease.holder}})
                    self.step_down()
                    leading = False
                if not leading:
                    if not self.lease.try_acquire():
                        self.stop.wait(standby_wait)
                        continue
                    leading = True
                    self.take_over(self.clock.now())
                wake = self.step(self.clock.now())
                if wake is not None:
                    self.stop.wait(min(self.clock.real_seconds(wake - self.clock.now()), self.lease.seconds_left()))
        finally:
            self.step_down()
            self.lease.release()
            log.info("stopped", extra={"fields": {"leader": self.lease.holder, "ticks_fired": len(self.fired)}})

    # -- one pass ----------------------------------------------------------------------------------------------

    def step(self, now: datetime) -> datetime | None:
        """Reload, fire what is due at ``now``, dispatch; the time of the next tick or poll (None: stopped or no
        longer leading)."""
        self._reload()
        plans = self.folder.firing()
        for name in set(self.cursors) - set(plans):
            del self.cursors[name]
        due: list[Tick] = []
        for name, plan in plans.items():
            schedule = plan.campaign.schedule
            since = self.cursors.get(name)
            if since is None:
                # at start-up or takeover, the runs table says what was missed; a campaign that appears later (a
                # new file, or one enabled again) starts now rather than with a backlog of its past ticks
                since = self._last_fired(plan, now) if self._new_term else now - _STEP
            missed = list(ticks(schedule, since + _STEP, now + _STEP)) if since < now else []
            due.extend(Tick(at, plan) for at in to_fire(schedule, missed, now))
            self.cursors[name] = max(since, now)
        self._new_term = False
        for tick in sorted(due, key=lambda t: (t.at, t.plan.name)):
            if self.stop.is_set() or not self.lease.held:
                return None  # the rest are left to the next leader's misfire rule
            self._fire(tick)
        if self.stop.is_set() or not self.lease.held:
            return None
        self._follow_ups(plans, self.clock.now())
        self._dispatch(self.clock.now())
        return self._next_wake(plans, now)

    def _last_fired(self, plan: CampaignPlan, now: datetime) -> datetime:
        """The time up to which ``plan``'s ticks count as dealt with when this process first looks at it: its
        last run, but no further back than the horizon; now when it has never run."""
        with self.service.engine.connect() as conn:
            last = conn.execute(
                select(func.max(CampaignRun.scheduled_at))
                .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
                .where(Campaign.name == plan.name)
            ).scalar()
        if last is None:
            return now - _STEP  # a tick exactly now still fires
        return max(last.astimezone(UTC), now - self.horizon)

    def _next_wake(self, plans: dict[str, CampaignPlan], now: datetime) -> datetime:
        wake = now + self.poll
        for plan in plans.values():
            upcoming = next(ticks(plan.campaign.schedule, now + _STEP, wake), None)
            if upcoming is not None:
                wake = min(wake, upcoming)
        return wake

    def _fire(self, tick: Tick) -> None:
        started = self.clock.now()
        began = time.monotonic()
        try:
            row = fire(self.service, tick, dry_run=False)
        except Exception as exc:  # a tick that fails is logged; its run, if started, is continued at the next start
            log.error(
                "tick failed",
                extra={"fields": {"campaign": tick.plan.name, "scheduled_at": tick.at, "error": _describe(exc)}},
            )
            return
        fields = {
            "campaign": row["campaign"],
            "run_id": row["run_id"],
            "scheduled_at": tick.at,
            "state": row["state"],
            "fired": row.get("fired", False),
            "audience": row["audience"],
            "messages": row["messages"],
            "skipped": row["skipped"],
            "duration_s": round(time.monotonic() - began, 3),
            "lag_s": round((started - tick.at).total_seconds(), 3),
            "leader": self.lease.holder,
        }
        if row.get("error"):
            fields["error"] = row["error"]
        self.fired.append(fields)
        log.info("tick", extra={"fields": fields})

    def _follow_ups(self, plans: dict[str, CampaignPlan], at: datetime) -> None:
        """Plan the follow-ups due by ``at`` (the dispatch round that follows sends them); one log line each. At
        most once a minute: finding who is due reads every run of a campaign with follow-ups, and a follow-up's
        minute of delay matters less than the database's load (a poll is every few seconds)."""
        if self._follow_ups_at is not None and at - self._follow_ups_at < FOLLOW_UP_EVERY:
            return
        self._follow_ups_at = at
        for plan in plans.values():
            if not plan.follow_ups:
                continue
            try:
                results = plan_due(self.service, plan, at)
            except Exception as exc:  # the next pass tries again: nothing of a failed batch was written
                log.error("follow-ups failed", extra={"fields": {"campaign": plan.name, "error": _describe(exc)}})
                continue
            for result in results:
                log.info("follow-up", extra={"fields": {**result.to_dict(), "leader": self.lease.holder}})

    def _dispatch(self, at: datetime) -> None:
        began = time.monotonic()
        try:
            reports = dispatch_round(self.service, at)
        except Exception as exc:
            log.error("dispatch failed", extra={"fields": {"at": at, "error": _describe(exc)}})
            return
        if not reports:
            return
        outcomes: Counter = Counter()
        still_open: Counter = Counter()
        for report in reports:
            outcomes.update(report["outcomes"])
            still_open.update(report["open"])
        log.info(
            "dispatch",
            extra={
                "fields": {
                    "at": at,
                    "runs": [r["run_id"] for r in reports],
                    "finished": [r["run_id"] for r in reports if r["state"] == "done"],
                    "outcomes": dict(outcomes),
                    "open": dict(still_open),
                    "duration_s": round(time.monotonic() - began, 3),
                    "leader": self.lease.holder,
                }
            },
        )

    def _continue_running_runs(self) -> None:
        plans = self.folder.firing()
        for run in find_runs(self.service):
            if run.state != "running":
                continue  # waiting runs only need dispatching, which every pass does
            plan = plans.get(run.campaign)
            if plan is None:
                log.warning(
                    "run left running",
                    extra={
                        "fields": {
                            "run_id": run.id,
                            "campaign": run.campaign,
                            "reason": "its campaign is not loaded; `orchestrator resume` finishes it",
                        }
                    },
                )
                continue
            self._fire(Tick(run.scheduled_at.astimezone(UTC), plan))

    def _reload(self) -> None:
        """Poll the folder; a folder that cannot be read (unmounted, removed) or a file that breaks the loader in
        an unexpected way is logged and the campaigns loaded so far stay scheduled: the service never stops
        because of its campaign files."""
        try:
            changes = self.folder.poll()
        except Exception as exc:
            log.error(
                "campaigns folder not reloaded",
                extra={"fields": {"folder": str(self.folder.folder), "error": _describe(exc), "kept": "as loaded"}},
            )
            return
        self._report(changes)

    def _report(self, changes: list[FolderChange]) -> None:
        for change in changes:
            fields: dict[str, Any] = {"file": change.path, "campaign": change.campaign}
            if change.kind == "invalid":
                fields["problems"] = [{"file": p.file, "line": p.line, "message": p.message} for p in change.problems]
                fields["kept"] = "the last valid version stays scheduled" if change.campaign else "nothing scheduled"
                log.error("campaign file invalid", extra={"fields": fields})
                continue
            if change.note:
                fields["not_fired"] = change.note
            log.info(f"campaign file {change.kind}", extra={"fields": fields})


def _describe(exc: Exception) -> str:
    # an unexpected error is described as everywhere else: a database error without its parameters, contacts masked
    return exc.render() if isinstance(exc, InputError) else describe_unexpected(exc)
