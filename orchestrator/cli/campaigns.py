"""Campaign commands: ``validate``, ``schema``, ``dry-run`` and ``run``."""

from __future__ import annotations

import json

import click

from orchestrator import progress
from orchestrator.campaign.catalog import FOLLOW_UP_FACTS
from orchestrator.campaign.conditions import condition_json_schema
from orchestrator.campaign.loader import CampaignInvalid
from orchestrator.campaign.schema import json_schema
from orchestrator.cli.render import print_run
from orchestrator.errors import InputError
from orchestrator.open_runs import check_new_run
from orchestrator.output import emit_json
from orchestrator.plugin_manager import registry
from orchestrator.service import Orchestrator


def register(cli: click.Group) -> None:
    for command in (validate, schema, dry_run, run):
        cli.add_command(command)


AT_OPTION = click.option("--at", "at_text", metavar="TIME", help="Run time, ISO 8601 (default: now).")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@JSON_OPTION
@click.pass_obj
def validate(app, files: tuple[str, ...], as_json: bool) -> None:
    """Check campaign files: schema, segment facts, channels, offers and templates.

    Exit status 0 when every file is valid, 2 when any is not; every problem is listed. Warnings (advice such
    as an e-mail wider than 650 px) are printed but do not make a file invalid.
    """
    service = Orchestrator(app.settings)
    results = []
    for file in files:
        try:
            plan = service.load(file)
            results.append(
                {"file": file, "valid": True, "campaign": plan.name, "problems": [], "warnings": plan.warnings}
            )
        except InputError as exc:
            problems = exc.problems if isinstance(exc, CampaignInvalid) else [exc]
            results.append({"file": file, "valid": False, "problems": [_problem(p) for p in problems], "warnings": []})
            if not as_json:
                click.echo(exc.render(), err=True)
    if as_json:
        emit_json({"valid": all(r["valid"] for r in results), "files": results})
    else:
        for r in results:
            if r["valid"]:
                click.echo(f"ok  {r['file']} ({r['campaign']})")
            for warning in r["warnings"]:
                click.echo(f"    warning: {warning}", err=True)
    if not all(r["valid"] for r in results):
        raise click.exceptions.Exit(2)


def _problem(error: InputError) -> dict:
    return {
        "file": error.file,
        "line": error.line,
        "column": error.column,
        "message": error.message,
        "hint": error.hint,
    }


@click.command()
def schema() -> None:
    """Print the JSON Schema of campaign files (for editors)."""
    plugins = registry()
    follow_up_facts = {**plugins.facts, **{f.name: f for f in FOLLOW_UP_FACTS}}
    document = json_schema(
        condition_json_schema(plugins.facts),
        plugins.channels,
        plugins.offers,
        condition_json_schema(follow_up_facts, "FollowUpCondition"),
    )
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


@click.command("dry-run")
@click.argument("file", type=click.Path(dir_okay=False))
@AT_OPTION
@click.option("--sample", default=3, show_default=True, type=click.IntRange(0, 1000), help="Rendered samples.")
@JSON_OPTION
@click.pass_obj
def dry_run(app, file: str, at_text: str | None, sample: int, as_json: bool) -> None:
    """Show everything a run would do, writing nothing: audience, skips, channels, offers, samples."""
    at = app.parse_at(at_text)
    service = Orchestrator(app.settings, app.engine)
    plan = service.load(file)
    result = service.runner(plan, dry_run=True).execute(at, dry_run=True, sample=sample)
    emit_json(result.to_dict()) if as_json else print_run(result)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@AT_OPTION
@click.option(
    "--plan-only",
    is_flag=True,
    help="Write every decision and rendered message to the ledger but send nothing: `orchestrator dispatch` "
    "(any number of processes) sends them.",
)
@JSON_OPTION
@click.pass_obj
def run(app, file: str, at_text: str | None, plan_only: bool, as_json: bool) -> None:
    """Run a campaign once. ``--at`` is the run's scheduled time: the same time continues the same run, if the
    campaign file is unchanged. Without ``--at`` (now), a campaign with an open run is refused: finish that run
    (`orchestrator dispatch` / `resume`), or give a deliberate new run its time with ``--at``."""
    at = app.parse_at(at_text)  # every input is checked before anything is written
    service = Orchestrator(app.settings, app.engine)
    plan = service.load(file)
    check_new_run(service, plan, at, at_given=at_text is not None)
    with progress.bars(progress.wanted(as_json)) as service.progress:
        result = service.runner(plan).execute(at, dry_run=False, sample=0, send=not plan_only)
    emit_json(result.to_dict()) if as_json else print_run(result)
