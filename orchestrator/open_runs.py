"""Continuing runs that did not finish: ``orchestrator resume RUN`` and ``orchestrator dispatch``.

A run is ``running`` while its audience is being planned, ``waiting`` once planned with messages still to send
(retries, deferred by quiet hours, a paused channel, or planned with ``--plan-only``), and ``done``. Resuming a
``running`` run plans the rest of its audience from the campaign file - which must be unchanged since the run
started, or the rest would be decided by different rules - and then dispatches. Dispatching needs no campaign
file: every pending message's rendered payload is in the ledger. This is also what a scheduler does at start.

``orchestrator run`` asks ``check_new_run`` first, which refuses (exit 2, nothing written) two things that would
contact members by rules nobody chose: continuing a run at its ``--at`` from a campaign file changed since the run
started (the run would mix two versions), and, without ``--at``, starting a second run of a campaign while an
earlier one is still open (its members would be decided again while its messages are still to be sent).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from orchestrator import ledger
from orchestrator.campaign.loader import CampaignPlan
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


def check_new_run(service: Orchestrator, plan: CampaignPlan, at: datetime, *, at_given: bool) -> None:
    """Refuse, with ``InputError``, a ``run`` of ``plan`` at ``at`` that would continue its run at ``at`` from a
    changed file or, when ``at`` is just "now" (``at_given`` False), start beside an open run of the campaign."""
    with service.engine.connect() as conn:
        campaign_pk = conn.execute(select(Campaign.id).where(Campaign.name == plan.name)).scalar()
        if campaign_pk is None:
            return
        runs = conn.execute(
            select(CampaignRun.id, CampaignRun.scheduled_at, CampaignRun.state, CampaignRun.content_hash)
            .where(
                CampaignRun.campaign_pk == campaign_pk,
                (CampaignRun.scheduled_at == at) | CampaignRun.state.in_(UNFINISHED),
            )
            .order_by(CampaignRun.id)
        ).all()
        same = next((r for r in runs if r.scheduled_at == at), None)
        if same is not None and same.content_hash and same.content_hash != plan.content_hash:
            raise InputError(
                f"the campaign file has changed since run {same.id} of {plan.name} at {_local(service, at)} "
                "started; continuing that run would mix two versions of the campaign",
                file=plan.file,
                hint=f"to run the changed campaign, start a new run at a different --at (e.g. --at "
                f"{_local(service, at.replace(microsecond=0) + _SECOND)}); to continue run {same.id}, restore "
                "the file as it was",
            )
        open_run = next((r for r in runs if r.state in UNFINISHED), None)
        if at_given or open_run is None:
            return
        left = ledger.open_counts(conn, open_run.id)
    state = open_run.state + "".join(f", {n} {state}" for state, n in sorted(left.items()))
    when = _local(service, open_run.scheduled_at)
    if open_run.state == "running":
        finish = f"`orchestrator resume {open_run.id}` finishes it"
    else:
        finish = f"`orchestrator dispatch --run {open_run.id}` sends what is left when it is due"
    raise InputError(
        f"run {open_run.id} of {plan.name} (at {when}) is still open ({state}); a run without --at would start "
        "a second run and decide its members again",
        file=plan.file,
        hint=f"{finish}; `--at {when}` continues that run; for a deliberate new run, give its time with --at",
    )


_SECOND = timedelta(seconds=1)


def _local(service: Orchestrator, value: datetime) -> str:
    """A run time as the command line shows and accepts it: ISO 8601 in the shop's zone."""
    return value.astimezone(service.settings.tz).isoformat()


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
        dispatcher = Dispatcher(service.engine, service.settings, service.channel, progress=service.progress)
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
