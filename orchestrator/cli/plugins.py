"""``orchestrator plugins``: what is loaded, and where each piece comes from."""

from __future__ import annotations

from dataclasses import asdict

import click
from rich.table import Table

from orchestrator.output import console, emit_json
from orchestrator.plugin_manager import describe, manager


def register(cli: click.Group) -> None:
    cli.add_command(plugins)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, kind, source, hooks, error}.")
def plugins(as_json: bool) -> None:
    """List loaded plugins and the channels and offers they provide, and plugins that failed to load."""
    infos = describe(manager())
    if as_json:
        emit_json([asdict(i) for i in infos])
        return
    if not infos:
        click.echo("no plugins loaded")
        return
    failed = any(info.error for info in infos)
    table = Table(title="plugins")
    for column in ("name", "kind", "source", "hooks") + (("error",) if failed else ()):
        table.add_column(column, overflow="fold")  # full module names, wrapped, on narrow terminals
    for info in infos:
        row = [info.name, info.kind, info.source, ", ".join(info.hooks)]
        table.add_row(*row, *([info.error or ""] if failed else []))
    console().print(table)
