"""Data commands: ``import customers FILE`` and ``import orders FILE``."""

from __future__ import annotations

import click

from orchestrator.data.importing import ImportResult, import_customers, import_orders
from orchestrator.data.records import CUSTOMER_COLUMNS, ORDER_COLUMNS
from orchestrator.output import emit_json, is_terminal


def register(cli: click.Group) -> None:
    cli.add_command(import_group)


@click.group("import")
def import_group() -> None:
    """Load members and orders from CSV files (UTF-8, with a header row).

    Bad rows go to the reject file <name>.rejects.csv beside FILE, with their line and the reason, and good rows
    load; importing the same file again changes nothing. Extra columns are kept as attributes. Exit status 2
    means the file as a whole was unusable and nothing was loaded.
    """


def _help(summary: str, columns: tuple[str, ...]) -> str:
    """The summary plus the expected header, kept verbatim (\\b) so it can be copied into a spreadsheet."""
    return f"{summary}\n\n\b\nColumns (any order):\n  {','.join(columns)}"


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")


@import_group.command("customers", help=_help("Import customers (members) with tags and consents.", CUSTOMER_COLUMNS))
@click.argument("file", type=click.Path(path_type=str))
@json_option
@click.pass_obj
def customers_command(app, file: str, as_json: bool) -> None:
    _report(import_customers(app.engine, app.settings, file, progress=is_terminal()), as_json)


@import_group.command("orders", help=_help("Import orders; their customers must be imported first.", ORDER_COLUMNS))
@click.argument("file", type=click.Path(path_type=str))
@json_option
@click.pass_obj
def orders_command(app, file: str, as_json: bool) -> None:
    _report(import_orders(app.engine, app.settings, file, progress=is_terminal()), as_json)


def _report(result: ImportResult, as_json: bool) -> None:
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(
        f"{result.file}: {result.read:,} rows read: {result.loaded:,} loaded, "
        f"{result.updated:,} updated, {result.unchanged:,} unchanged, {result.rejected:,} rejected"
    )
    if result.reject_file:
        click.echo(f"rejected rows and reasons: {result.reject_file}")
