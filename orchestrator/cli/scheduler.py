"""Scheduling commands: ``scheduler`` (the long-running service), ``scheduler --from --until`` (replay a time
range) and ``schedule`` (what fires when, and whether a scheduler is running)."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import timedelta
from typing import Any

import click

from orchestrator import progress
from orchestrator.cli.params import seconds
from orchestrator.errors import InputError
from orchestrator.logs import configure_json_logging, remove_handler
from orchestrator.output import emit_json, local_time
from orchestrator.scheduler.campaign_files import CampaignFile, campaigns_folder, load_all
from orchestrator.scheduler.lease import Lease, is_sqlite
from orchestrator.scheduler.listing import listing
from orchestrator.scheduler.reload import CampaignFolder
from orchestrator.scheduler.replay import replay
from orchestrator.scheduler.service import Clock, SchedulerLoop
from orchestrator.scheduler.sqlite_lock import SchedulerFileLock, lock_path
from orchestrator.service import Orchestrator

CAMPAIGNS_OPTION = click.option(
    "--campaigns", "campaigns_dir", metavar="DIR", help="Campaigns folder (default: the config's campaigns:)."
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def register(cli: click.Group) -> None:
    cli.add_command(scheduler_command)
    cli.add_command(schedule_command)


def _load(service: Orchestrator, campaigns_dir: str | None) -> list[CampaignFile]:
    """Every campaign file; each invalid one is reported on stderr (file, line) and left out of firing."""
    files = load_all(service, campaigns_folder(service, campaigns_dir))
    for f in files:
        for problem in f.problems:
            click.echo(problem.render(), err=True)
    return files


@click.command("scheduler")
@click.option("--from", "from_text", metavar="TIME", help="Replay from this time (inclusive), ISO 8601.")
@click.option("--until", "until_text", metavar="TIME", help="Replay up to this time (exclusive), ISO 8601.")
@click.option("--dry-run", is_flag=True, help="Replay: show what each tick would do, writing and sending nothing.")
# the same bounds as the config's scheduler.poll_seconds and scheduler.lease_ttl_seconds
@click.option(
    "--poll",
    "poll_seconds",
    type=seconds(0, 3600, min_open=True),
    metavar="SECONDS",
    help="Service: folder re-read and dispatch interval (0 < SECONDS <= 3600).",
)
@click.option(
    "--lease-ttl",
    "lease_ttl",
    type=seconds(1, 3600),
    metavar="SECONDS",
    help="Service: how soon a standby takes over (1 to 3600).",
)
@click.option("--log-file", metavar="PATH", help="Service: append the JSON log lines here (default: stderr).")
@CAMPAIGNS_OPTION
@JSON_OPTION
@click.pass_obj
def scheduler_command(
    app,
    from_text: str | None,
    until_text: str | None,
    dry_run: bool,
    poll_seconds: float | None,
    lease_ttl: float | None,
    log_file: str | None,
    campaigns_dir: str | None,
    as_json: bool,
) -> None:
    """Run the campaigns on their schedules until stopped (SIGINT / SIGTERM), or, with --from and --until,
    replay them over [--from, --until) and exit.

    \b
    Service: fires each tick of every enabled campaign as `orchestrator run FILE --at <tick>` does, dispatches
    what is due (retries, quiet-hours deferrals), re-reads changed campaign files, logs one JSON line per tick.
    On PostgreSQL several may run: one leads, the others stand by. On SQLite a second one exits with status 2.

    \b
    Replay: each tick fires in time order, then what is due at that time is dispatched. Ticks whose run is
    done are reported, not fired again. Invalid campaign files are reported and skipped."""
    if from_text is None and until_text is None:
        if dry_run or as_json:
            raise InputError("--dry-run and --json apply to a replay: give --from and --until too")
        _serve(app, campaigns_dir, poll_seconds, lease_ttl, log_file)
        return
    if from_text is None or until_text is None:
        raise InputError(
            "give both --from and --until to replay a time range (neither, to run the scheduler service)",
            hint="e.g. orchestrator scheduler --from 2026-03-01 --until 2026-03-29 --dry-run",
        )
    start, end = app.parse_at(from_text), app.parse_at(until_text)
    if end <= start:
        raise InputError("--until must be after --from")
    service = Orchestrator(app.settings, app.engine)
    files = _load(service, campaigns_dir)
    with progress.bars(progress.wanted(as_json)) as service.progress:
        rows = replay(service, files, start, end, dry_run=dry_run)
    if as_json:
        emit_json({"ticks": rows})
        return
    _print_ticks(rows, app.settings.tz)


def _serve(
    app, campaigns_dir: str | None, poll_seconds: float | None, lease_ttl: float | None, log_file: str | None
) -> None:
    """The long-running service (orchestrator.scheduler.service), until SIGINT or SIGTERM."""
    config = app.settings.scheduler
    service = Orchestrator(app.settings, app.engine)
    folder = CampaignFolder(service, campaigns_folder(service, campaigns_dir))
    ttl = timedelta(seconds=lease_ttl or config.lease_ttl_seconds)
    lease = Lease(service.engine, ttl=ttl)
    file_lock = SchedulerFileLock(lock_path(service.engine) if is_sqlite(service.engine) else None)
    if is_sqlite(service.engine) and not (file_lock.acquire() and lease.try_acquire(holder_is_dead=True)):
        file_lock.release()
        info = lease.holder_info()
        raise InputError(
            "another scheduler is running on this SQLite database: " + (info.describe(app.settings.tz) if info else ""),
            hint="only one scheduler runs on SQLite; stop the other one, or use PostgreSQL to run a standby",
        )
    # from here on the lease may be ours: whatever fails (the log file, a signal handler) must give it back,
    # or a restart would find it held by a process that no longer runs
    try:
        _lead_or_stand_by(app, service, folder, lease, poll_seconds, log_file)
    finally:
        if lease.held_until is not None:  # the loop releases it on a clean stop; this is for a failed start
            lease.release()
        file_lock.release()


def _lead_or_stand_by(
    app, service: Orchestrator, folder: CampaignFolder, lease: Lease, poll_seconds: float | None, log_file: str | None
) -> None:
    config = app.settings.scheduler
    target = log_file or (str(app.settings.resolve_path(config.log_file)) if config.log_file else None)
    handler = configure_json_logging(target)
    stop = threading.Event()
    loop = SchedulerLoop(
        service,
        folder,
        lease,
        clock=Clock.from_env(),
        poll=timedelta(seconds=poll_seconds or config.poll_seconds),
        horizon=config.misfire_horizon,
        stop=stop,
    )
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        logging.getLogger("orchestrator.scheduler").info(
            "scheduler started",
            extra={
                "fields": {
                    "leader": lease.holder,
                    "campaigns": str(folder.folder),
                    "database": service.engine.dialect.name,
                    "poll_s": loop.poll.total_seconds(),
                    "lease_ttl_s": lease.ttl.total_seconds(),
                }
            },
        )
        loop.run()
    finally:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)
        remove_handler(handler)


def _print_ticks(rows: list[dict], tz) -> None:
    if not rows:
        click.echo("no ticks in the range")
        return
    header = ("at", "campaign", "run", "audience", "messages", "skipped", "state")
    lines = [header] + [
        (
            local_time(r["at"], tz),
            r["campaign"] + (f" / {r['follow_up']}" if r.get("follow_up") else ""),
            "-" if r["run_id"] is None else str(r["run_id"]),
            str(r["audience"]),
            str(r["messages"]),
            str(sum(r["skipped"].values())),
            r["state"] + ("" if r.get("fired", True) else " (already)"),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )
    for r in rows:
        if r.get("error"):
            click.echo(f"{r['campaign']} at {local_time(r['at'], tz)}: {r['error']}", err=True)


@click.command("schedule")
@click.option("--at", "at_text", metavar="TIME", help="List fire times after this time (default: now).")
@CAMPAIGNS_OPTION
@JSON_OPTION
@click.pass_obj
def schedule_command(app, at_text: str | None, campaigns_dir: str | None, as_json: bool) -> None:
    """Every campaign file: its schedule in words, enabled or not, its next three fire times (in its zone), its
    last run, or why the file is invalid."""
    after = app.parse_at(at_text)
    service = Orchestrator(app.settings, app.engine)
    entries = listing(service, load_all(service, campaigns_folder(service, campaigns_dir)), after)
    state = scheduler_state(service)
    missing = state["expected"] and not state["live"]
    if as_json:
        emit_json({"at": after, "scheduler": state, "campaigns": entries})
        if missing:
            click.get_current_context().exit(1)
        return
    _print_scheduler_state(state, app.settings.tz)
    for e in entries:
        if "errors" in e:
            click.echo(f"{e['file']}: invalid")
            for p in e["errors"]:
                where = p["file"] if p["line"] is None else f"{p['file']}:{p['line']}"
                click.echo(f"    {where}: {p['message']}")
            continue
        state = "enabled" if e["enabled"] else "disabled"
        click.echo(f"{e['campaign']} ({e['file']}, {state}): {e['schedule'] or 'no schedule'}")
        if e["next"]:
            click.echo("    next: " + ", ".join(t.isoformat(timespec="minutes") for t in e["next"]))
        if e["note"]:
            click.echo(f"    note: {e['note']}")
        last = e["last_run"]
        if last:
            when = local_time(last["at"], app.settings.tz)
            click.echo(f"    last run: {last['run_id']} at {when}, {last['state']}, {last['messages']} messages")
        else:
            click.echo("    last run: none")
    if missing:
        click.echo("error: a scheduler is expected (scheduler.expected in the config) but none is running", err=True)
        click.get_current_context().exit(1)


def scheduler_state(service: Orchestrator) -> dict[str, Any]:
    """Who leads the scheduler and its last heartbeat, from the lease row; live is false when nobody leads."""
    info = Lease(service.engine).holder_info()
    return {
        "expected": service.settings.scheduler.expected,
        "live": bool(info and info.live),
        "leader": info.holder if info and info.live else None,
        "last_leader": info.holder if info else None,
        "last_heartbeat": info.renewed_at if info else None,
    }


def _print_scheduler_state(state: dict[str, Any], tz) -> None:
    if state["live"]:
        when = local_time(state["last_heartbeat"], tz)
        click.echo(f"scheduler: running, leader {state['leader']}, last heartbeat {when}")
    elif state["last_leader"]:
        when = local_time(state["last_heartbeat"], tz)
        click.echo(f"scheduler: not running (last leader {state['last_leader']}, last heartbeat {when})")
    else:
        click.echo("scheduler: not running (never started on this database)")
