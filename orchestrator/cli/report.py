"""``orchestrator report``: what campaigns earned, against their control groups."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from orchestrator.cli.pages import HTML_OPTION, check_page_path, write_page
from orchestrator.data.spreadsheet import spreadsheet_cell
from orchestrator.output import console, emit_json

#: the table's columns; the rest (incremental revenue, incremental ROI, costs) is in the money table and --json
METRIC_COLUMNS = ("contacted/ctl", "conv.", "ctl conv.", "uplift pts", "95% CI", "attributed", "ROI")


REPORT_WIDTH = 120


def register(cli: click.Group) -> None:
    cli.add_command(report)


@click.command()
@click.argument("campaign", required=False)
@click.option("--run", "run_id", type=int, help="Only this run (its id, as `orchestrator runs` lists it).")
@click.option(
    "--at",
    "at_text",
    metavar="TIME",
    help="Evaluate as of this ISO 8601 time (no offset: the configured time zone). Default: now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write flat rows, one per run × step × variant × channel, to this CSV file.",
)
@HTML_OPTION
@click.pass_obj
def report(
    app,
    campaign: str | None,
    run_id: int | None,
    at_text: str | None,
    as_json: bool,
    csv_path: Path | None,
    html_path: Path | None,
):
    """What CAMPAIGN's runs (or every campaign's) earned, measured against the held-out control group.

    \b
    Conversion (any paid order within the attribution window after the message was due) and revenue per member
    of the contacted against the held-out members, with 95 % intervals; attributed revenue (coupon redeemed, else
    last touch within the window); offer and send cost; ROI on attributed and on incremental revenue.
    Recomputed from the ledger, coupons, redemptions and orders every time; only orders at or before --at count.
    """
    from orchestrator.results.report import Scope, build_report  # the results layer (and SciPy) load when asked

    at = app.parse_at(at_text)
    if html_path is not None:
        check_page_path(html_path)
    document = build_report(app.engine, app.settings, Scope(campaign, run_id, at))
    if csv_path is not None:
        write_csv(csv_path, document)
    if html_path is not None:
        from orchestrator.charts import write_report_page  # matplotlib loads only when a page is asked for

        write_page(write_report_page, document, html_path, "campaign results")
    if as_json:
        emit_json(document)
    else:
        out = console()
        if not out.is_terminal:  # into a file or a pipe: wide enough for every column, as a log would want it
            out.width = max(out.width, REPORT_WIDTH)
        render(document, out)


def write_csv(path: Path, document: dict[str, Any]) -> None:
    from orchestrator.results.report import csv_rows

    rows = list(csv_rows(document))
    header = list(rows[0]) if rows else ["run_id", "campaign", "step", "variant", "channel"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: spreadsheet_cell(v) for k, v in row.items()} for row in rows)


# --- the terminal table ---------------------------------------------------------------------------------------


def render(document: dict[str, Any], out: Console) -> None:
    who = document["campaign"] or "all campaigns"
    runs = document["runs"]
    out.print(f"[bold]Results of {who}[/bold] as of {document['at']}: {len(runs)} run(s)")
    if not runs:
        out.print("No run was scheduled at or before this time.")
        return
    currency = document["currency"]
    table = Table(title=f"Against the control group (money in {currency})", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("", overflow="fold", min_width=14)
    for name in METRIC_COLUMNS:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_row("all", *_cells(document), end_section=True)
    several = len(document["by_campaign"]) > 1
    if several:
        for row in document["by_campaign"]:
            table.add_row(row["campaign"], *_cells(row))
        table.rows[-1].end_section = True
    for row in document["by_step"]:
        step = row["step"] if row["step"] is not None else "(no step)"
        table.add_row(f"{row['campaign']}: {step}" if several else f"step {step}", *_cells(row))
    table.rows[-1].end_section = True
    for row in document["by_channel"]:
        table.add_row(f"channel {row['channel']}", *_cells(row))
    out.print(table)
    money = Table(title="Money 投入产出")
    money.add_column("figure")
    money.add_column("value", justify="right")
    offers = document["offers"]
    revenue = document["revenue"]
    margin = document["margin"]
    for label, value in (
        (
            "offers issued / redeemed",
            f"{offers['issued']:,} / {offers['redeemed']:,} ({_pct(offers['redemption_rate'])})",
        ),
        ("offer cost", offers["cost"]),
        ("send cost", document["send_cost"]),
        ("attributed revenue", revenue["attributed"]),
        ("incremental revenue (95% CI)", f"{revenue['incremental'] or '—'} ({_interval(revenue['incremental_ci95'])})"),
        ("margin", margin if margin is not None else "not set: ROI on revenue"),
        ("ROI on attributed revenue", _ratio(document["roi"])),
        ("ROI on incremental revenue 盈利率", _ratio(document["roi_incremental"])),
        ("cannibalisation 误伤率", _pct(document["cannibalisation"])),
        ("skipped", ", ".join(f"{k} {v:,}" for k, v in document["skipped"].items()) or "none"),
    ):
        money.add_row(label, str(value))
    out.print(money)
    out.print(f"[bold]Verdict:[/bold] {document['verdict']}")
    if len(document["by_campaign"]) > 1:
        for row in document["by_campaign"]:
            out.print(f"  {row['campaign']}: {row['verdict']}")


def _cells(row: dict[str, Any]) -> list[str]:
    conv = row["conversions"]
    uplift = conv["uplift"]
    return [
        f"{row['contacted']:,}/{row['control']:,}",
        _pct(conv["rate_treatment"]),
        _pct(conv["rate_control"]),
        "—" if uplift is None else f"{uplift * 100:+.1f}",
        _points(conv["uplift_ci95"]),
        row["revenue"]["attributed"],
        _ratio(row["roi"]),
    ]


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _points(ci: list[float] | None) -> str:
    return "—" if ci is None else f"{ci[0] * 100:+.1f}…{ci[1] * 100:+.1f}"


def _interval(ci: list[str] | None) -> str:
    return "—" if ci is None else f"{ci[0]} to {ci[1]}"
