"""``orchestrator demo-data``: generate the seed shop's members and orders and load them.

The data goes through the same CSV files and importer a shop's own export would, so the demo exercises the real
import path (validation, normalisation, idempotent re-import) rather than a private back door into the tables.
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from orchestrator.demo.generator import SEED_SHOP_AT, SeedShop
from orchestrator.errors import RuntimeFailure
from orchestrator.output import emit_json, is_terminal
from orchestrator.timeutil import parse_run_time

PRESETS = ("seed-shop",)


def register(cli: click.Group) -> None:
    cli.add_command(demo_data)


@click.command("demo-data")
@click.option("--preset", type=click.Choice(PRESETS), default="seed-shop", show_default=True, help="Which demo shop.")
@click.option(
    "--seed", type=int, default=42, show_default=True, help="Random seed; the same seed gives the same bytes."
)
@click.option("--scale", type=click.IntRange(min=1), default=1, show_default=True, help="Multiply every count by this.")
@click.option(
    "--at",
    "at_text",
    metavar="TIME",
    help=f"Reference time: orders span the ten months before it (default {SEED_SHOP_AT.isoformat()}).",
)
@click.option(
    "--csv-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write customers.csv and orders.csv here and keep them (default: a temporary folder).",
)
@click.option("--csv-only", is_flag=True, help="Only write the CSV files (needs --csv-dir); load nothing.")
@click.option(
    "--responses",
    is_flag=True,
    help="Instead of the shop: add the members' answers to the campaigns already run (orders, coupon "
    "redemptions, a few refunds), from a seeded response model with a lift over the control group.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.pass_obj
def demo_data(
    app,
    preset: str,
    seed: int,
    scale: int,
    at_text: str | None,
    csv_dir: Path | None,
    csv_only: bool,
    responses: bool,
    as_json: bool,
) -> None:
    """Generate the demo shop's members and orders and import them.

    \b
    The seed-shop preset reproduces the figures of the seed case (某网店): 9,252 members, 8,280 buying,
    purchase frequency 1.3, AOV 112 yuan, 6,500 dormant 3 months, 31 members over 1,000 yuan with 4 % of
    sales, 浙江 / 四川 / 山东 converting best; all counts times --scale, as of --at.
    """
    if csv_only and csv_dir is None:
        raise click.UsageError("--csv-only needs --csv-dir (where to keep the files)")
    if responses:
        _responses(app, seed, csv_dir, as_json)
        return
    at = _reference_time(app, at_text)
    engine = None if csv_only else app.engine  # fail on an uninitialised database before generating anything
    shop = SeedShop(seed=seed, scale=scale, at=at)
    chatty = is_terminal() and not as_json
    with tempfile.TemporaryDirectory(prefix="orchestrator-demo-") as scratch:
        folder = csv_dir if csv_dir is not None else Path(scratch)
        customers_csv, orders_csv = _generate(shop, folder, chatty)
        if engine is None:
            customers = {"file": str(customers_csv), "written": shop.member_count}
            orders = {"file": str(orders_csv), "written": shop.order_count}
        else:
            customers = _load(app, engine, "customers", customers_csv, chatty, kept=csv_dir is not None)
            orders = _load(app, engine, "orders", orders_csv, chatty, kept=csv_dir is not None)
    result = {
        "preset": preset,
        "seed": seed,
        "scale": scale,
        "at": shop.at.isoformat(),
        "customers": customers,
        "orders": orders,
        "csv_dir": str(csv_dir) if csv_dir is not None else None,
    }
    if as_json:
        emit_json(result)
    else:
        _print_summary(result)
    _fail_on_rejects(result, kept=csv_dir is not None)


def _responses(app, seed: int, csv_dir: Path | None, as_json: bool) -> None:
    """Orders and redemptions answering the runs in the database (``orchestrator.demo.responses``)."""
    from orchestrator.data.importing import import_orders
    from orchestrator.demo.responses import write_responses

    engine = app.engine
    with tempfile.TemporaryDirectory(prefix="orchestrator-responses-") as scratch:
        folder = csv_dir if csv_dir is not None else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        paid_csv, refunds_csv, written, refunded = write_responses(engine, app.settings, folder, seed)
        paid = import_orders(engine, app.settings, paid_csv).to_dict()
        refunds = import_orders(engine, app.settings, refunds_csv).to_dict()
    result = {"seed": seed, "orders": written, "refunded": refunded, "paid_import": paid, "refund_import": refunds}
    if as_json:
        emit_json(result)
    else:
        click.echo(
            f"responses (seed {seed}): {written:,} orders, {paid['coupons_redeemed']:,} coupons redeemed "
            f"({paid['coupon_refusals']:,} refused), {refunded:,} refunded since"
        )
    _fail_on_rejects({"customers": paid, "orders": refunds}, kept=csv_dir is not None)


def _reference_time(app, text: str | None) -> datetime:
    if text is None:
        return SEED_SHOP_AT
    try:
        return parse_run_time(text, app.settings.tz)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--at") from None


def _generate(shop: SeedShop, folder: Path, chatty: bool) -> tuple[Path, Path]:
    started = time.monotonic()
    if chatty:
        click.echo(f"generating {shop.member_count:,} members and {shop.order_count:,} orders…", err=True)
    paths = shop.write_csv(folder)
    if chatty:
        click.echo(f"  written in {time.monotonic() - started:.1f} s", err=True)
    return paths


def _load(app, engine, kind: str, path: Path, progress: bool, *, kept: bool) -> dict[str, Any]:
    """The importer's counts; ``file`` is null when the CSV lived in a temporary folder that is gone by now."""
    from orchestrator.data.importing import import_customers, import_orders

    load = import_customers if kind == "customers" else import_orders
    counts = load(engine, app.settings, path, progress=progress).to_dict()
    if not kept:
        counts["file"] = None
    return counts


def _print_summary(result: dict[str, Any]) -> None:
    click.echo(f"seed shop (seed {result['seed']}, scale {result['scale']}) as of {result['at']}")
    for kind in ("customers", "orders"):
        counts = result[kind]
        if "written" in counts:
            click.echo(f"  {kind}: {counts['written']:,} rows written to {counts['file']}")
            continue
        click.echo(
            f"  {kind}: {counts['read']:,} read, {counts['loaded']:,} loaded, {counts['updated']:,} updated, "
            f"{counts['unchanged']:,} unchanged, {counts['rejected']:,} rejected"
        )
    if result["csv_dir"]:
        click.echo(f"CSV files kept in {result['csv_dir']}")


def _fail_on_rejects(result: dict[str, Any], *, kept: bool) -> None:
    """Generated data is valid by construction, so a rejected row is a bug worth a non-zero exit."""
    rejected = sum(result[kind].get("rejected", 0) for kind in ("customers", "orders"))
    if rejected:
        raise RuntimeFailure(
            f"the importer rejected {rejected:,} generated rows",
            hint="see the reject files next to the CSVs" if kept else "rerun with --csv-dir DIR to keep the rejects",
        )
