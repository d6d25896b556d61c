"""Scheduling commands: ``scheduler --from --until`` (replay a time range) and ``schedule`` (what fires when)."""

from __future__ import annotations

import click

from orchestrator.errors import InputError
from orchestrator.output import emit_json, local_time
from orchestrator.scheduler.campaign_files import CampaignFile, campaigns_folder, load_all
from orchestrator.scheduler.listing import listing
from orchestrator.scheduler.replay import replay
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
@click.option("--dry-run", is_flag=True, help="Show what each tick would do, writing and sending nothing.")
@CAMPAIGNS_OPTION
@JSON_OPTION
@click.pass_obj
def scheduler_command(
    app, from_text: str | None, until_text: str | None, dry_run: bool, campaigns_dir: str | None, as_json: bool
) -> None:
    """Replay the schedules of every enabled campaign over [--from, --until): each tick fires in time order as
    `orchestrator run FILE --at <tick>` does, then what is due at that time is dispatched. Ticks whose run is
    done are reported, not fired again. Invalid campaign files are reported and skipped."""
    if from_text is None or until_text is None:
        raise InputError(
            "give --from and --until: the scheduler replays a time range (the long-running service is not "
            "available yet)",
            hint="e.g. orchestrator scheduler --from 2026-03-01 --until 2026-03-29 --dry-run",
        )
    start, end = app.parse_at(from_text), app.parse_at(until_text)
    if end <= start:
        raise InputError("--until must be after --from")
    service = Orchestrator(app.settings, app.engine)
    files = _load(service, campaigns_dir)
    rows = replay(service, files, start, end, dry_run=dry_run)
    if as_json:
        emit_json({"ticks": rows})
        return
    _print_ticks(rows, app.settings.tz)


def _print_ticks(rows: list[dict], tz) -> None:
    if not rows:
        click.echo("no ticks in the range")
        return
    header = ("at", "campaign", "run", "audience", "messages", "skipped", "state")
    lines = [header] + [
        (
            local_time(r["at"], tz),
            r["campaign"],
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
    if as_json:
        emit_json({"at": after, "campaigns": entries})
        return
    for e in entries:
        if "errors" in e:
            click.echo(f"{e['file']}: invalid")
            for p in e["errors"]:
                click.echo(f"    {p['file']}:{p['line']}: {p['message']}")
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
