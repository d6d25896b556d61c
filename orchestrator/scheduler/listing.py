"""``orchestrator schedule``: each campaign file with its schedule in words, whether it fires, its next three
fire times after a moment (in the schedule's zone), its last run from the database, or why the file is invalid."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from orchestrator.db.models import Campaign, CampaignRun
from orchestrator.scheduler.campaign_files import CampaignFile
from orchestrator.scheduler.replay import unsupported
from orchestrator.scheduler.triggers import describe, ticks
from orchestrator.service import Orchestrator
from orchestrator.timeutil import zone

NEXT_TICKS = 3
HORIZON = timedelta(days=366 * 10)  # looked ahead for the next ticks; a schedule beyond it shows none


def next_ticks(schedule, after: datetime, count: int = NEXT_TICKS) -> list[datetime]:
    found: list[datetime] = []
    for tick in ticks(schedule, after, after + HORIZON):
        if tick > after:  # strictly after
            found.append(tick.astimezone(zone(schedule.timezone)))
        if len(found) == count:
            break
    return found


def last_runs(service: Orchestrator) -> dict[str, dict[str, Any]]:
    """Each campaign's latest run by scheduled time: id, scheduled time, state, messages."""
    with service.engine.connect() as conn:
        rows = conn.execute(
            select(Campaign.name, CampaignRun.id, CampaignRun.scheduled_at, CampaignRun.state, CampaignRun.summary)
            .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
            .order_by(CampaignRun.scheduled_at, CampaignRun.id)
        ).all()
    return {
        row.name: {
            "run_id": row.id,
            "at": row.scheduled_at,
            "state": row.state,
            "messages": (row.summary or {}).get("messages"),
        }
        for row in rows  # later rows replace earlier ones
    }


def listing(service: Orchestrator, files: list[CampaignFile], after: datetime) -> list[dict[str, Any]]:
    runs = last_runs(service)
    entries = []
    for f in files:
        entry: dict[str, Any] = {"file": f.path}
        if f.plan is None:
            entry["errors"] = [{"file": p.file, "line": p.line, "message": p.message} for p in f.problems]
            entries.append(entry)
            continue
        campaign = f.plan.campaign
        schedule = campaign.schedule
        entry.update(
            campaign=f.plan.name,
            enabled=campaign.enabled,
            schedule=describe(schedule) if schedule else None,
            timezone=schedule.timezone if schedule else None,
            next=next_ticks(schedule, after) if schedule and campaign.enabled else [],
            note=(unsupported(schedule) if schedule else "no schedule: fired only by `orchestrator run`"),
            last_run=runs.get(f.plan.name),
        )
        entries.append(entry)
    return entries
