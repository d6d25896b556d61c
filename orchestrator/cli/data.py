"""Data commands: ``import customers|orders|redemptions|call-outcomes FILE``."""

from __future__ import annotations

import click

from orchestrator.data import call_outcomes
from orchestrator.data.importing import ImportResult, import_customers, import_orders, import_redemptions
from orchestrator.data.records import (
    CUSTOMER_COLUMNS,
    CUSTOMER_REQUIRED_COLUMNS,
    ORDER_COLUMNS,
    ORDER_REQUIRED_COLUMNS,
    REDEMPTION_COLUMNS,
    REDEMPTION_REQUIRED_COLUMNS,
)
from orchestrator.output import emit_json, is_terminal


def register(cli: click.Group) -> None:
    cli.add_command(import_group)


@click.group("import")
def import_group() -> None:
    """Load members, orders and coupon redemptions from CSV files (UTF-8, with a header row).

    Bad rows go to the reject file <name>.rejects.csv beside FILE (customers.csv: customers.rejects.csv), with
    their line and the reason, and good rows load; importing the same file again changes nothing. An id that
    occurs twice in one file is rejected on its later line. A column left out of the header leaves the stored
    values alone; extra columns are kept as attributes. Exit status 2 means the file as a whole was unusable
    and nothing was loaded.
    """


def _help(summary: str, columns: tuple[str, ...], required: tuple[str, ...]) -> str:
    """The summary plus the expected header, kept verbatim (\\b) so it can be copied into a spreadsheet."""
    return (
        f"{summary}\n\n\b\nColumns (any order):\n  {','.join(columns)}\n"
        f"  required: {','.join(required)} (any other may be left out)"
    )


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")


CUSTOMERS_HELP = (
    "Import customers (members) with tags and consents.\n\n"
    "Yes/no columns take 是/否, yes/no, y/n, true/false or 1/0. Provinces are stored by their short name (浙江省 and "
    "Zhejiang are 浙江, 广西壮族自治区 is 广西), gender as male, female or other (男/女, M/F, ...)."
)


@import_group.command("customers", help=_help(CUSTOMERS_HELP, CUSTOMER_COLUMNS, CUSTOMER_REQUIRED_COLUMNS))
@click.argument("file", type=click.Path(path_type=str))
@json_option
@click.pass_obj
def customers_command(app, file: str, as_json: bool) -> None:
    _report(import_customers(app.engine, app.settings, file, progress=is_terminal()), as_json)


ORDERS_HELP = (
    "Import orders; their customers must be imported first. Without a status column every order is paid.\n\n"
    "The coupon_code of each paid order is redeemed on it. A coupon that cannot be redeemed does not reject the "
    "order: it is counted and listed, with the reason, in <name>.coupon-refusals.csv beside FILE."
)
REDEMPTIONS_HELP = (
    "Import coupon redemptions: each coupon code is redeemed on its (paid) order, checked as by "
    "'coupons redeem'.\n\n"
    "amount (the spend the coupon applies to; default the order's amount) and redeemed_at (default the order's "
    "time) are optional. A refused row goes to the reject file with the reason; a coupon already redeemed on the "
    "same order counts as unchanged."
)


@import_group.command("orders", help=_help(ORDERS_HELP, ORDER_COLUMNS, ORDER_REQUIRED_COLUMNS))
@click.argument("file", type=click.Path(path_type=str))
@json_option
@click.pass_obj
def orders_command(app, file: str, as_json: bool) -> None:
    _report(import_orders(app.engine, app.settings, file, progress=is_terminal()), as_json)


@import_group.command("redemptions", help=_help(REDEMPTIONS_HELP, REDEMPTION_COLUMNS, REDEMPTION_REQUIRED_COLUMNS))
@click.argument("file", type=click.Path(path_type=str))
@json_option
@click.pass_obj
def redemptions_command(app, file: str, as_json: bool) -> None:
    _report(import_redemptions(app.engine, app.settings, file, progress=is_terminal()), as_json)


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
    if result.coupons_redeemed or result.coupon_refusals:
        click.echo(
            f"coupons on paid orders: {result.coupons_redeemed or 0:,} redeemed, {result.coupon_refusals:,} refused"
        )
    if result.coupon_refusals_file:
        click.echo(f"refused coupons and reasons: {result.coupon_refusals_file}")


CALL_OUTCOMES_HELP = """Import call outcomes from a call centre (a CSV with a header row).

\b
Columns (any order):
  delivery_key,outcome,called_at,agent,note
  (customer_id,campaign may replace delivery_key)

delivery_key is the first column of the call list (run<run id>-d<delivery id>). outcome is one of reached,
no_answer, declined, converted, do_not_call; do_not_call also suppresses the member on call_list and sms.
called_at is ISO 8601 (no offset: the configured time zone). The file is checked whole first: any bad row
stops the import (exit 2) and nothing is recorded; importing the same file again changes nothing.
"""


@import_group.command("call-outcomes", help=CALL_OUTCOMES_HELP)
@click.argument("file", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.pass_obj
def call_outcomes_command(app, file: str, as_json: bool) -> None:
    result = call_outcomes.import_file(app.engine, app.settings, file)
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(
        f"{result.file}: {result.read:,} rows read: {result.recorded:,} recorded, {result.unchanged:,} unchanged, "
        f"{result.suppressed:,} suppression entries added"
    )
