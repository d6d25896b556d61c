"""Coupon commands: ``coupons redeem``, ``coupons show`` and ``coupons list``."""

from __future__ import annotations

from decimal import Decimal

import click

from orchestrator.coupons.redemption import RedemptionRefused, campaign_coupons, find_coupon, redeem, summary_line
from orchestrator.db.models import COUPON_STATES
from orchestrator.errors import InputError
from orchestrator.money import parse_amount
from orchestrator.output import emit_json, to_json

CLI_SOURCE = "cli"


def register(cli: click.Group) -> None:
    cli.add_command(coupons_group)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


@click.group("coupons")
def coupons_group() -> None:
    """Redeem coupons on orders and look them up.

    CODE may be typed with or without dashes and spaces, in any case (7KQM-X2PD-9RT3 = 7kqmx2pd9rt3).
    """


@coupons_group.command("redeem")
@click.argument("code")
@click.option("--order", "order_id", required=True, metavar="ORDER_ID", help="The paid order the coupon is used on.")
@click.option(
    "--amount",
    "amount_text",
    metavar="AMOUNT",
    help="The spend the coupon applies to, checked against its minimum spend (default: the order's amount).",
)
@click.option(
    "--at",
    "at_text",
    metavar="TIME",
    help="When it was redeemed, ISO 8601 (default: the order's time). Validity is checked at the order's time.",
)
@json_option
@click.pass_obj
def redeem_command(app, code: str, order_id: str, amount_text: str | None, at_text: str | None, as_json: bool):
    """Redeem coupon CODE on an order.

    Exit status 0 when it is redeemed, or was already redeemed on this same order (nothing changes); 2 when it
    is refused, with the reason: mistyped or unknown code, unknown or unpaid order, another member's coupon,
    void, expired or not yet valid, wrong daypart or weekday, minimum spend not met, already redeemed on
    another order, or not combinable with a coupon already redeemed on the order.
    """
    amount = _amount(amount_text)
    at = app.parse_at(at_text) if at_text is not None else None
    settings = app.settings
    try:
        with app.engine.begin() as conn:
            redemption = redeem(conn, settings, code, order_id, amount=amount, at=at, source=CLI_SOURCE)
    except RedemptionRefused as refused:
        if as_json:
            emit_json(refused.to_dict())
        raise
    data = redemption.to_dict(settings)
    if as_json:
        emit_json(data)
        return
    if redemption.new:
        click.echo(
            f"redeemed {data['code']} on order {data['order_id']} ({data['customer_id']}), "
            f"amount {data['amount']}, at {data['redeemed_at']}"
        )
    else:
        click.echo(
            f"{data['code']} was already redeemed on order {data['order_id']} at {data['redeemed_at']}; nothing changed"
        )


def _amount(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = parse_amount(text)
    except ValueError as exc:
        raise InputError(f"--amount: {exc}") from None
    if value < 0:
        raise InputError(f"--amount: {text!r} is negative")
    return value


@coupons_group.command("show")
@click.argument("code")
@click.option("--at", "at_text", metavar="TIME", help="Show the state as of this time (default: now); ISO 8601.")
@json_option
@click.pass_obj
def show_command(app, code: str, at_text: str | None, as_json: bool) -> None:
    """Show coupon CODE: owner, campaign, terms, validity (shop time) and redemptions. An issued coupon whose
    validity has ended shows as expired."""
    settings = app.settings
    at = app.parse_at(at_text) if at_text else None
    with app.engine.connect() as conn:
        coupon = find_coupon(conn, settings, code, at)
    if as_json:
        emit_json(coupon)
        return
    value = coupon["value"] if coupon["value"] is not None else "-"
    lines = [
        f"coupon      {coupon['code']}",
        f"state       {coupon['state']}",
        f"member      {coupon['customer_id']}",
        f"campaign    {coupon['campaign'] or '-'}"
        f"  (run {coupon['run_scheduled_at'] or '-'}, step {coupon['step'] or '-'})",
        f"offer       {coupon['kind']} {value}, min spend {coupon['min_spend'] or 0}"
        + (f"  {coupon['description']}" if coupon["description"] else ""),
        f"stacking    {coupon['stacking']}"
        + (f" with {coupon['bundle_with']}" if coupon["bundle_with"] else "")
        + (f", group {coupon['group']}" if coupon["group"] else ""),
        f"valid       {coupon['valid_from']} to {coupon['valid_until']} (end exclusive, {coupon['timezone']})",
    ]
    if coupon["dayparts"]:
        lines.append(f"dayparts    {', '.join(coupon['dayparts'])}")
    if coupon["weekdays"]:
        lines.append(f"weekdays    {', '.join(coupon['weekdays'])}")
    lines.append(f"issued      {coupon['issued_at']}")
    if not coupon["redemptions"]:
        lines.append("redemptions none")
    for r in coupon["redemptions"]:
        lines.append(
            f"redeemed    order {r['order_id'] or '-'}, amount {r['amount']}, at {r['redeemed_at']} ({r['source']})"
        )
    click.echo("\n".join(lines))


@coupons_group.command("list")
@click.option("--campaign", required=True, metavar="NAME", help="The campaign whose coupons to list.")
@click.option("--state", type=click.Choice(COUPON_STATES), help="Only coupons in this state.")
@click.option("--at", "at_text", metavar="TIME", help="Show the state as of this time (default: now); ISO 8601.")
@json_option
@click.pass_obj
def list_command(app, campaign: str, state: str | None, at_text: str | None, as_json: bool) -> None:
    """List a campaign's coupons, one line each (with --json: one JSON list), streamed in issue order. An issued
    coupon whose validity has ended lists as expired."""
    settings = app.settings
    at = app.parse_at(at_text) if at_text else None
    with app.engine.connect() as conn:
        coupons = campaign_coupons(conn, settings, campaign, state, at)
        if not as_json:
            for coupon in coupons:
                click.echo(summary_line(coupon))
            return
        # one JSON document, written as it streams so memory stays flat however many coupons there are
        first = True
        click.echo("[", nl=False)
        for coupon in coupons:
            click.echo(("\n" if first else ",\n") + _indent(to_json(coupon)), nl=False)
            first = False
        click.echo("\n]" if not first else "]")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
