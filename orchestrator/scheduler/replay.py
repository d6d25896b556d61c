"""Replay (backtesting): every tick of every enabled campaign in [start, end), fired in time order.

Firing a tick is exactly ``orchestrator run FILE --at <tick>``: the same checks (``check_new_run``: a run at that
time from a changed file is refused) and the same runner, so a run is keyed by (campaign, tick) and a replay of
the same range fires nothing twice - a tick whose run is done is reported, not run again, and an unfinished one
is continued. After each tick, what is due at that time (quiet-hours deferrals, retries) is dispatched, as
``orchestrator dispatch --at <tick>`` would; a real replay also stops at the end of each quiet-hours deferral
(so a deferred message goes out when a live dispatcher would send it) and at each time a follow-up comes due
(``orchestrator.followups``: planned there, then dispatched). A dry run writes and sends nothing.

Relative dates (``relative_to: birthday | signup_at``) fire daily and event triggers (``on: order_paid |
member_joined``) every ``check_every``; ``tick_plan`` narrows each tick's audience to the members whose date or
event it is (``orchestrator.scheduler.audiences``). An event check that finds nobody creates no run (``fire``
reports it as ``empty``; replay leaves it out of its rows), and replay only asks the checks that can find
something: the first of the range and the first one at or after each event (by ``ordered_at`` / ``signup_at``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from orchestrator.campaign.loader import CampaignPlan
from orchestrator.campaign.schema import Schedule
from orchestrator.db.models import Campaign, CampaignRun, Delivery
from orchestrator.dispatch.dispatcher import Dispatcher
from orchestrator.errors import InputError
from orchestrator.followups import next_due, plan_due
from orchestrator.open_runs import UNFINISHED, check_new_run, dispatch_run, find_runs
from orchestrator.pipeline import EMPTY
from orchestrator.scheduler.audiences import event_ticks, narrowed, tick_condition, tick_members
from orchestrator.scheduler.campaign_files import CampaignFile
from orchestrator.scheduler.triggers import ticks
from orchestrator.service import Orchestrator

RELATIVE_FIELDS = ("birthday", "signup_at")


def unsupported(schedule: Schedule) -> str | None:
    """Why replay does not fire this schedule, or None (every kind the schema accepts is fired)."""
    if schedule.relative_to is not None and schedule.relative_to not in RELATIVE_FIELDS:
        return f"relative_to: {schedule.relative_to} is not fired (only {', '.join(RELATIVE_FIELDS)})"
    return None


@dataclass(frozen=True)
class Tick:
    at: datetime
    plan: CampaignPlan


def due_ticks(
    files: list[CampaignFile], start: datetime, end: datetime, service: Orchestrator | None = None
) -> list[Tick]:
    """The ticks of every firing campaign in [start, end), by time then campaign name. With ``service``, an event
    trigger's checks are only those that can find an event in the database (``audiences.event_ticks``); without,
    every check of its grid."""
    found: list[Tick] = []
    for f in files:
        if not f.fires or unsupported(f.plan.campaign.schedule) is not None:
            continue
        schedule = f.plan.campaign.schedule
        if schedule.on is not None and service is not None:
            with service.engine.connect() as conn:
                found += [Tick(at, f.plan) for at in event_ticks(conn, schedule, start, end)]
        else:
            found += [Tick(at, f.plan) for at in ticks(schedule, start, end)]
    return sorted(found, key=lambda t: (t.at, t.plan.name))


def tick_plan(service: Orchestrator, plan: CampaignPlan, at: datetime, *, dry_run: bool = False) -> CampaignPlan:
    """The plan a tick runs: for a relative date or an event trigger, the segment narrowed to the members whose
    date or event the tick at ``at`` is for (``audiences.tick_condition``, looked up first: ``tick_members``);
    other plans as they are."""
    schedule = plan.campaign.schedule
    if schedule is None or (schedule.relative_to is None and schedule.on is None):
        return plan
    label, condition = tick_condition(plan, at, service.settings.tz, dry_run=dry_run)
    members = tick_members(service.engine, service.settings, service.registry.facts, plan, condition, at)
    return narrowed(plan, label, condition, members)


def _recorded_run(service: Orchestrator, name: str, at: datetime) -> tuple[int, str, dict] | None:
    with service.engine.connect() as conn:
        row = conn.execute(
            select(CampaignRun.id, CampaignRun.state, CampaignRun.summary)
            .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
            .where(Campaign.name == name, CampaignRun.scheduled_at == at)
        ).first()
    return (row.id, row.state, row.summary or {}) if row else None


def fire(service: Orchestrator, tick: Tick, *, dry_run: bool) -> dict[str, Any]:
    """One tick, as ``run --at`` (or ``dry-run --at``) does it; a done run is reported, not run again."""
    row: dict[str, Any] = {"campaign": tick.plan.name, "at": tick.at, "run_id": None}
    recorded = None
    if not dry_run:
        recorded = _recorded_run(service, tick.plan.name, tick.at)
        if recorded is not None and recorded[1] == "done":
            run_id, _, summary = recorded
            skipped = summary.get("skipped") or {}
            return row | {
                "run_id": run_id,
                "audience": summary.get("audience", 0),
                "messages": summary.get("messages", 0),
                "skipped": skipped,
                "state": "done",
                "fired": False,
            }
    plan = tick_plan(service, tick.plan, tick.at, dry_run=dry_run)
    schedule = tick.plan.campaign.schedule
    # an event check that finds nobody opens no run (one that already has a run continues it)
    skip_if_empty = schedule is not None and schedule.on is not None and (dry_run or recorded is None)
    if skip_if_empty and plan.members == ():
        return _nobody(row)
    if not dry_run:
        try:
            check_new_run(service, tick.plan, tick.at, at_given=True)
        except InputError as exc:
            return row | {"audience": 0, "messages": 0, "skipped": {}, "state": "refused", "error": exc.message}
    # each tick gets its own channel instances: a runner closes its channels when the run is done
    runner_service = Orchestrator(service.settings, service.engine, service.registry)
    runner = runner_service.runner(plan, dry_run=dry_run)
    runner.tick = plan is not tick.plan  # narrowed to this tick's members: a Celery worker narrows it the same way
    result = runner.execute(tick.at, dry_run=dry_run, sample=0, open_if_empty=not skip_if_empty)
    if result.state == EMPTY:
        return _nobody(row)
    return row | {
        "run_id": result.run_id,
        "audience": result.audience,
        "messages": result.messages,
        "skipped": dict(result.skipped),
        "state": "dry-run" if dry_run else result.state,
        "fired": True,
    }


def dispatch_round(service: Orchestrator, at: datetime) -> list[dict[str, Any]]:
    """``orchestrator dispatch --at AT`` for every unfinished run: one report per run (``open_runs.dispatch_run``).
    Replay runs it after every stop, the long-running scheduler at every poll."""
    runs = find_runs(service)
    if not runs:
        return []
    dispatch_service = Orchestrator(service.settings, service.engine, service.registry)
    dispatcher = Dispatcher(dispatch_service.engine, dispatch_service.settings, dispatch_service.channel)
    try:
        return [dispatch_run(dispatch_service, r, at=at, linger=0, dispatcher=dispatcher) for r in runs]
    finally:
        dispatcher.close()


def replay(
    service: Orchestrator, files: list[CampaignFile], start: datetime, end: datetime, *, dry_run: bool
) -> list[dict[str, Any]]:
    """Fire every tick in [start, end) in time order; one row per tick. A real replay also stops at each time a
    follow-up comes due (found in the ledger, so also those of runs the replay itself made) and plans it there,
    one row per follow-up and run; a dry run writes no run, so it has no follow-ups to plan."""
    rows: list[dict[str, Any]] = []
    ticks_left = due_ticks(files, start, end, service)
    following = [] if dry_run else [f.plan for f in files if f.fires and f.plan.follow_ups]
    index = 0
    planned_until: datetime | None = None
    follow_up_at: datetime | None = None
    look_again = bool(following)  # whether the next follow-up's time may have changed since it was looked up
    while True:
        tick_at = ticks_left[index].at if index < len(ticks_left) else None
        # each stop decides every follow-up due by then: the next one to stop at is due after the last stop
        lower = planned_until if planned_until is not None else start - timedelta(microseconds=1)
        if look_again or (follow_up_at is not None and follow_up_at <= lower):
            follow_up_at = next_due(service.engine, following, lower)
            look_again = False
        # a message deferred by quiet hours goes out at the end of its deferral, as a live dispatcher sends it
        deferred_at = None if dry_run else _next_deferral(service, lower)
        stops = (tick_at, follow_up_at, deferred_at)
        at = min((t for t in stops if t is not None and t < end), default=None)
        if at is None:
            break
        while index < len(ticks_left) and ticks_left[index].at == at:
            row = fire(service, ticks_left[index], dry_run=dry_run)
            index += 1
            service.progress.advance("ticks")
            if row["state"] != EMPTY:
                rows.append(row)
                # a new run of a campaign with follow-ups has follow-ups of its own to come
                look_again |= any(plan.name == row["campaign"] for plan in following)
        if not dry_run:
            # the first stop also decides those overdue before the range; later ones only when one is due
            if planned_until is None or (follow_up_at is not None and follow_up_at <= at):
                for plan in following:
                    rows += [_follow_up_row(result) for result in plan_due(service, plan, at)]
                look_again = True
            planned_until = at
            states = {r["run_id"]: r["state"] for r in dispatch_round(service, at)}
            for earlier in rows:  # a deferred message sent now may finish an earlier tick's run
                if not earlier.get("follow_up"):
                    earlier["state"] = states.get(earlier["run_id"], earlier["state"])
    return rows


def _next_deferral(service: Orchestrator, after: datetime) -> datetime | None:
    """The end of the earliest quiet-hours deferral after ``after``. A deferred message belongs to an unfinished
    run (the run is ``waiting`` until it is sent), so only their rows are read, not a year of ledger."""
    open_runs = select(CampaignRun.id).where(CampaignRun.state.in_(UNFINISHED))
    with service.engine.connect() as conn:
        return conn.execute(
            select(func.min(Delivery.deferred_until)).where(
                Delivery.run_pk.in_(open_runs.scalar_subquery()),
                Delivery.state == "deferred",
                Delivery.deferred_until > after,
            )
        ).scalar()


def _nobody(row: dict[str, Any]) -> dict[str, Any]:
    """The row of an event check that found nobody: no run was opened."""
    return row | {"audience": 0, "messages": 0, "skipped": {}, "state": EMPTY, "fired": False}


def _follow_up_row(result) -> dict[str, Any]:
    return {
        "campaign": result.campaign,
        "follow_up": result.follow_up,
        "at": result.due,
        "run_id": result.run_id,
        "audience": result.audience,
        "messages": result.messages,
        "control": result.control,
        "skipped": dict(result.skipped),
        "state": "follow-up",
    }
