"""Run commands: ``resume RUN`` and ``dispatch``."""

from __future__ import annotations

from datetime import datetime, tzinfo

import click

from orchestrator import progress
from orchestrator.cli.render import print_run
from orchestrator.dispatch.dispatcher import Dispatcher
from orchestrator.followups import FollowUpResult, plan_due, recorded_plans
from orchestrator.open_runs import dispatch_run, find_runs, resume
from orchestrator.output import emit_json, local_time, warn
from orchestrator.pipeline import RunResult
from orchestrator.service import Orchestrator
from orchestrator.timeutil import utcnow


def register(cli: click.Group) -> None:
    cli.add_command(resume_command)
    cli.add_command(dispatch_command)


LINGER_OPTION = click.option(
    "--linger",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Wait at most this long for a retry or a paused channel before leaving the rest (default: config).",
)


@click.command("resume")
@click.argument("run_id", type=int)
@LINGER_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def resume_command(app, run_id: int, linger: float | None, as_json: bool) -> None:
    """Continue run RUN_ID: plan the rest of its audience if it was interrupted, then send what is due."""
    service = Orchestrator(app.settings, app.engine)
    [run] = find_runs(service, [run_id])
    with progress.bars(progress.wanted(as_json)) as service.progress:
        outcome = resume(service, run, linger=linger)
    if isinstance(outcome, RunResult):
        emit_json(outcome.to_dict()) if as_json else print_run(outcome)
    else:
        emit_json(outcome) if as_json else _print_dispatch([outcome])


@click.command("dispatch")
@click.option(
    "--run", "run_ids", type=int, multiple=True, help="Only this run (repeatable). Default: every unfinished run."
)
@click.option("--at", "at_text", metavar="TIME", help="Send deferred messages due by this time (default: now).")
@LINGER_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def dispatch_command(app, run_ids: tuple[int, ...], at_text: str | None, linger: float | None, as_json: bool) -> None:
    """Send the due messages of unfinished runs: retries whose time has come, messages deferred by quiet hours,
    runs planned with --plan-only, and follow-ups whose time has come (planned first, from the campaign files
    on record). Any number of processes may dispatch the same runs at once."""
    at = app.parse_at(at_text)
    service = Orchestrator(app.settings, app.engine)
    following, follow_ups = _plan_follow_ups(service, find_runs(service, list(run_ids)) if run_ids else None, at)
    runs = find_runs(service, list(run_ids))
    with progress.bars(progress.wanted(as_json)) as bars:
        dispatcher = Dispatcher(service.engine, service.settings, service.channel, progress=bars)
        try:
            reports = [dispatch_run(service, run, at=at, linger=linger, dispatcher=dispatcher) for run in runs]
        finally:
            dispatcher.close()
    if as_json:
        # follow_ups: what was planned, present when some campaign on record has follow-ups
        extra = {"follow_ups": [r.to_dict() for r in follow_ups]} if following else {}
        emit_json({"runs": reports, **extra})
        return
    for r in follow_ups:
        skipped = ", ".join(f"{k} {v}" for k, v in r.skipped.items()) or "none"
        click.echo(
            f"follow-up {r.follow_up} of run {r.run_id} {r.campaign} (due {local_time(r.due, app.settings.tz)}):"
            f" {r.audience} members, {r.messages} messages, {r.deferred} deferred, {r.control} control;"
            f" skipped {skipped}"
        )
    _print_dispatch(reports, app.settings.tz)


def _plan_follow_ups(service: Orchestrator, runs, at: datetime | None) -> tuple[bool, list[FollowUpResult]]:
    """Decide the follow-ups due by ``at`` (now) of the campaigns on record (those of ``runs`` when given):
    whether any of them has follow-ups, and what was decided."""
    names = None if runs is None else sorted({r.campaign for r in runs})
    plans, notes = recorded_plans(service, names)
    for note in notes:
        warn(note)
    now = at or utcnow()
    return bool(plans), [result for plan in plans for result in plan_due(service, plan, now)]


def _print_dispatch(reports: list[dict], tz: tzinfo) -> None:
    if not reports:
        click.echo("no unfinished runs")
    for r in reports:
        outcomes = ", ".join(f"{k} {v}" for k, v in r["outcomes"].items()) or "nothing due"
        at = local_time(datetime.fromisoformat(r["at"]), tz)  # the JSON form is UTC; a person reads shop time
        line = f"run {r['run_id']} {r['campaign']} ({at}): {outcomes}; {r['state']}"
        if r["open"]:
            line += " - left: " + ", ".join(f"{k} {v}" for k, v in r["open"].items())
        for channel, why in r["paused"].items():
            line += f"; {channel} paused: {why}"
        click.echo(line)
