"""Continuing runs that did not finish: ``orchestrator resume RUN`` and ``orchestrator dispatch``.

A run is ``running`` while its audience is being planned, ``waiting`` once planned with messages still to send
(retries, deferred by quiet hours, a paused channel, or planned with ``--plan-only``), and ``done``. Resuming a
``running`` run plans the rest of its audience from the campaign file - which must be unchanged since the run
started, or the rest would be decided by different rules - and then dispatches. Dispatching needs no campaign
file: every pending message's rendered payload is in the ledger. This is also what a scheduler does at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from orchestrator import ledger
from orchestrator.db.models import Campaign, CampaignRun
from orchestrator.dispatch.dispatcher import Dispatcher, DrainReport
from orchestrator.errors import InputError
from orchestrator.pipeline import RunResult
from orchestrator.service import Orchestrator

UNFINISHED = ("running", "waiting")


@dataclass(frozen=True)
class RunRow:
    id: int
    campaign: str
    source_path: str | None
    scheduled_at: datetime
    state: str
    content_hash: str | None


def find_runs(service: Orchestrator, run_ids: list[int] | None = None) -> list[RunRow]:
    """The given runs, or every unfinished one; ``InputError`` for an id that does not exist."""
    query = select(
        CampaignRun.id,
        Campaign.name,
        Campaign.source_path,
        CampaignRun.scheduled_at,
        CampaignRun.state,
        CampaignRun.content_hash,
    ).join(Campaign, Campaign.id == CampaignRun.campaign_pk)
    query = query.where(CampaignRun.id.in_(run_ids)) if run_ids else query.where(CampaignRun.state.in_(UNFINISHED))
    with service.engine.connect() as conn:
        rows = [RunRow(*row) for row in conn.execute(query.order_by(CampaignRun.id))]
    missing = sorted(set(run_ids or ()) - {r.id for r in rows})
    if missing:
        raise InputError(
            f"no run with id {', '.join(map(str, missing))}",
            hint="`orchestrator deliveries --json` and run outputs show run ids",
        )
    return rows


def dispatch_run(
    service: Orchestrator, run: RunRow, *, at: datetime | None, linger: float | None, dispatcher: Dispatcher
) -> dict[str, Any]:
    """Send what is due for one run (deferred messages whose time is at or before ``at``, default now)."""
    report = DrainReport()
    if run.state != "done":
        report = dispatcher.drain(run.id, linger=linger, deferred_due_at=at)
    state = run.state
    if state == "waiting":
        with service.engine.begin() as conn:
            state = "done" if ledger.close_if_complete(conn, run.id) else state
    return {
        "run_id": run.id,
        "campaign": run.campaign,
        "at": run.scheduled_at.isoformat(),
        "state": state,
        "outcomes": dict(report.outcomes),
        "open": dict(report.open),
        "paused": dict(report.paused),
    }


def resume(service: Orchestrator, run: RunRow, *, linger: float | None) -> RunResult | dict[str, Any]:
    """Finish planning a ``running`` run from its campaign file, or dispatch a ``waiting`` one."""
    if run.state != "running":
        dispatcher = Dispatcher(service.engine, service.settings, service.channel)
        try:
            return dispatch_run(service, run, at=None, linger=linger, dispatcher=dispatcher)
        finally:
            dispatcher.close()
    if not run.source_path:
        raise InputError(f"run {run.id} of {run.campaign} has no campaign file on record")
    plan = service.load(run.source_path)
    if plan.content_hash != run.content_hash:
        raise InputError(
            f"run {run.id}: {run.source_path} has changed since the run started",
            file=run.source_path,
            hint="restore the file as it was to finish this run, or run the changed campaign at a new --at",
        )
    return service.runner(plan).execute(run.scheduled_at, dry_run=False, sample=0)
