"""Replay (backtesting): every tick of every enabled campaign in [start, end), fired in time order.

Firing a tick is exactly ``orchestrator run FILE --at <tick>``: the same checks (``check_new_run``: a run at that
time from a changed file is refused) and the same runner, so a run is keyed by (campaign, tick) and a replay of
the same range fires nothing twice - a tick whose run is done is reported, not run again, and an unfinished one
is continued. After each tick, what is due at that time (quiet-hours deferrals, retries) is dispatched, as
``orchestrator dispatch --at <tick>`` would. A dry run writes and sends nothing.

``relative_to: birthday`` fires daily; the tick's audience is the segment and members whose birthday falls
``days_before`` days after the tick's local date (29 February is celebrated on 28 February in other years).
Not fired yet: ``on:`` event triggers and ``relative_to`` other than birthday (``unsupported`` says why).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select

from orchestrator.campaign.conditions import All, Compare
from orchestrator.campaign.loader import CampaignPlan
from orchestrator.campaign.schema import Schedule
from orchestrator.db.models import Campaign, CampaignRun
from orchestrator.dispatch.dispatcher import Dispatcher
from orchestrator.errors import InputError
from orchestrator.open_runs import check_new_run, dispatch_run, find_runs
from orchestrator.scheduler.campaign_files import CampaignFile
from orchestrator.scheduler.triggers import ticks
from orchestrator.service import Orchestrator
from orchestrator.timeutil import zone

RELATIVE_FIELDS = ("birthday",)


def unsupported(schedule: Schedule) -> str | None:
    """Why replay does not fire this schedule, or None."""
    if schedule.on is not None:
        return "on: event triggers are not fired by replay yet"
    if schedule.relative_to is not None and schedule.relative_to not in RELATIVE_FIELDS:
        return f"relative_to: {schedule.relative_to} is not fired yet (only {', '.join(RELATIVE_FIELDS)})"
    return None


@dataclass(frozen=True)
class Tick:
    at: datetime
    plan: CampaignPlan


def due_ticks(files: list[CampaignFile], start: datetime, end: datetime) -> list[Tick]:
    """The ticks of every firing campaign in [start, end), by time then campaign name."""
    found = [
        Tick(at, f.plan)
        for f in files
        if f.fires and unsupported(f.plan.campaign.schedule) is None
        for at in ticks(f.plan.campaign.schedule, start, end)
    ]
    return sorted(found, key=lambda t: (t.at, t.plan.name))


def tick_plan(plan: CampaignPlan, at: datetime, shop_tz) -> CampaignPlan:
    """The plan a tick runs: for ``relative_to: birthday``, the segment and the birthday ``days_before`` days
    after the tick's local date (in the schedule's zone; the fact counts from the shop's date, hence the shift)."""
    schedule = plan.campaign.schedule
    if schedule is None or schedule.relative_to is None:
        return plan
    local_day = at.astimezone(zone(schedule.timezone)).date()
    shift = (local_day - at.astimezone(shop_tz).date()).days
    days = schedule.days_before + shift
    condition = Compare("days_to_birthday", (("eq", days),))
    return replace(
        plan,
        segment=All((plan.segment, condition)),
        conditions=[*plan.conditions, (f"days_to_birthday = {days} (relative_to)", condition)],
    )


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
        try:
            check_new_run(service, tick.plan, tick.at, at_given=True)
        except InputError as exc:
            return row | {"audience": 0, "messages": 0, "skipped": {}, "state": "refused", "error": exc.message}
    # each tick gets its own channel instances: a runner closes its channels when the run is done
    runner_service = Orchestrator(service.settings, service.engine, service.registry)
    plan = tick_plan(tick.plan, tick.at, service.settings.tz)
    result = runner_service.runner(plan, dry_run=dry_run).execute(tick.at, dry_run=dry_run, sample=0)
    return row | {
        "run_id": result.run_id,
        "audience": result.audience,
        "messages": result.messages,
        "skipped": dict(result.skipped),
        "state": "dry-run" if dry_run else result.state,
        "fired": True,
    }


def dispatch_due(service: Orchestrator, at: datetime) -> dict[int, str]:
    """``orchestrator dispatch --at AT`` for every unfinished run: {run id: state afterwards}."""
    runs = find_runs(service)
    if not runs:
        return {}
    dispatch_service = Orchestrator(service.settings, service.engine, service.registry)
    dispatcher = Dispatcher(dispatch_service.engine, dispatch_service.settings, dispatch_service.channel)
    try:
        return {r.id: dispatch_run(dispatch_service, r, at=at, linger=0, dispatcher=dispatcher)["state"] for r in runs}
    finally:
        dispatcher.close()


def replay(
    service: Orchestrator, files: list[CampaignFile], start: datetime, end: datetime, *, dry_run: bool
) -> list[dict[str, Any]]:
    """Fire every tick in [start, end) in time order; one row per tick."""
    rows: list[dict[str, Any]] = []
    for tick in due_ticks(files, start, end):
        row = fire(service, tick, dry_run=dry_run)
        rows.append(row)
        service.progress.advance("ticks")
        if not dry_run:
            states = dispatch_due(service, tick.at)
            for earlier in rows:  # a deferred message sent now may finish an earlier tick's run
                earlier["state"] = states.get(earlier["run_id"], earlier["state"])
    return rows
