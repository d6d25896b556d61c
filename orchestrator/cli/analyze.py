"""``orchestrator analyze``: the member-base report."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from orchestrator.analysis import MemberReport, member_report
from orchestrator.cli.pages import HTML_OPTION, check_page_path, write_page
from orchestrator.output import console, emit_json

TOP_PROVINCES = 10


def register(cli: click.Group) -> None:
    cli.add_command(analyze)


@click.command()
@click.option(
    "--at",
    "at_text",
    metavar="TIME",
    help="Evaluate as of this ISO 8601 time (no offset: the configured time zone). Default: now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@HTML_OPTION
@click.pass_obj
def analyze(app, at_text: str | None, as_json: bool, html_path: Path | None) -> None:
    """The member-base report: members, buyers, frequency, AOV, dormancy, big spenders, provinces, RFM.

    Only paid orders at or before --at count, so a past --at shows the shop as it was then.
    """
    settings = app.settings
    at = app.parse_at(at_text)
    if html_path is not None:
        check_page_path(html_path)
    report = member_report(app.engine, settings, at)
    if html_path is not None:
        write_html(report, html_path)
    if as_json:
        emit_json(report.to_dict())
    else:
        render(report, console())


def write_html(report: MemberReport, path: Path) -> None:
    # the charting library loads only when a page is asked for: it takes longer to import than the report takes
    from orchestrator.charts import write_analysis_page

    write_page(write_analysis_page, report.to_dict(), path, "member-base")


# --- tables ---------------------------------------------------------------------------------------------------


def render(report: MemberReport, console: Console) -> None:
    console.print(f"[bold]Member base as of {report.at.isoformat(timespec='seconds')}[/bold]")
    console.print(headline_table(report))
    console.print(distribution_table("Lifecycle 生命周期", "stage", report.lifecycle, report.members))
    console.print(distribution_table("RFM segments RFM 分群", "segment", report.rfm, report.buying_members))
    bands = report.avg_order_distribution
    console.print(distribution_table("Average order value 平均订单金额", "band", bands, report.buying_members))
    console.print(distribution_table("Tiers 会员等级", "tier", report.tiers, report.members))
    console.print(province_table(report))


def headline_table(report: MemberReport) -> Table:
    currency = report.currency
    big = report.big_spenders
    table = Table(title="Headline 概览", show_header=True)
    table.add_column("figure")
    table.add_column("指标")
    table.add_column("value", justify="right")
    rows = [
        ("members", "会员数", fmt_int(report.members)),
        ("buying members", "成功交易会员", f"{fmt_int(report.buying_members)} ({fmt_pct(report.buying_rate)})"),
        ("never bought", "未交易会员", fmt_int(report.never_bought)),
        ("paid orders", "有效订单", fmt_int(report.orders)),
        ("revenue", "销售额", fmt_money(report.revenue, currency)),
        ("purchase frequency", "有效购买频次", fmt_decimal(report.purchase_frequency)),
        ("AOV", "客单价", fmt_money(report.aov, currency)),
        (f"dormant ≥ {report.dormant_days} d", "休眠会员（3个月）", fmt_int(report.dormant_90d)),
        (f"dormant ≥ {report.lost_days} d", "休眠会员（6个月）", fmt_int(report.dormant_180d)),
        (f"high value (≥ {report.high_value_min_orders} orders)", "高价值会员", fmt_int(report.high_value_members)),
        (f"big spenders (> {fmt_money(big.threshold, currency)})", "大额消费会员", fmt_int(big.count)),
        ("big spenders' sales share", "大额会员销售占比", fmt_pct(big.sales_share)),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def distribution_table(title: str, label: str, counts: dict[str, int], total: int) -> Table:
    table = Table(title=title)
    table.add_column(label)
    table.add_column("members", justify="right")
    table.add_column("share", justify="right")
    for name, count in counts.items():
        share = Decimal(count) / Decimal(total) if total else None
        table.add_row(name, fmt_int(count), fmt_pct(share))
    return table


def province_table(report: MemberReport) -> Table:
    table = Table(title=f"Provinces 省份 (best converting {TOP_PROVINCES})")
    table.add_column("province 省份")
    for name in ("members", "buying", "buying rate 转化率", "revenue"):
        table.add_column(name, justify="right")
    for p in report.provinces[:TOP_PROVINCES]:
        table.add_row(
            p.province,
            fmt_int(p.members),
            fmt_int(p.buying_members),
            fmt_pct(p.buying_rate),
            fmt_money(p.revenue, report.currency),
        )
    return table


def fmt_int(value: int) -> str:
    return f"{value:,}"


def fmt_decimal(value: Decimal | None) -> str:
    return "—" if value is None else f"{value:,}"


def fmt_money(value: Decimal | None, currency: str) -> str:
    return "—" if value is None else f"{value:,.2f} {currency}"


def fmt_pct(value: Decimal | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"
