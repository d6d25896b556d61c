"""The member-base page from the document of ``orchestrator analyze --json``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.charts.analysis_charts import (
    TOP_PROVINCES,
    bars_chart,
    dormancy_chart,
    order_amounts_chart,
    provinces_chart,
    rfm_grid_chart,
)
from orchestrator.charts.figures import CONTROL, NEUTRAL
from orchestrator.charts.page import Figure, Section, render_page, write_page
from orchestrator.charts.values import count_text, mapping, money_text, rate_text, rows


def render_analysis_page(document: Mapping[str, Any]) -> str:
    """Headline figures, then the RFM grid, lifecycle, dormancy curve, spend per order and conversion by
    province: whichever of these the document has (an older document without the grid draws the segments)."""
    currency = str(document.get("currency") or "")
    return render_page(
        "Member base 会员分析",
        _sections(document, currency),
        subtitle=f"as of {document.get('at')}" if document.get("at") else "",
        figures=_figures(document, currency),
        footer="Only paid orders at or before that time count.",
    )


def write_analysis_page(document: Mapping[str, Any], path: str | Path) -> Path:
    """Write the page to ``path`` (UTF-8, all or nothing; the folder must exist) and return the path."""
    return write_page(render_analysis_page(document), path)


def _figures(document: Mapping[str, Any], currency: str) -> list[Figure]:
    big = mapping(document.get("big_spenders"))
    return [
        Figure("members 会员数", count_text(document.get("members"))),
        Figure(
            "buying members 成功交易会员",
            count_text(document.get("buying_members")),
            f"{rate_text(document.get('buying_rate'))} of members",
        ),
        Figure("paid orders 有效订单", count_text(document.get("orders"))),
        Figure("revenue 销售额", f"{money_text(document.get('revenue'))} {currency}".strip()),
        Figure("purchase frequency 购买频次", _plain(document.get("purchase_frequency"))),
        Figure("AOV 客单价", f"{money_text(document.get('aov'))} {currency}".strip()),
        Figure(
            "dormant 休眠会员",
            count_text(document.get("dormant_90d")),
            f"≥ {document.get('dormant_days', 90)} days · {count_text(document.get('dormant_180d'))} "
            f"≥ {document.get('lost_days', 180)} days",
        ),
        Figure(
            "big spenders 大额消费会员",
            count_text(big.get("count")),
            f"> {money_text(big.get('threshold'))} · {rate_text(big.get('sales_share'))} of sales",
        ),
    ]


def _plain(value: Any) -> str:
    return "—" if value is None else str(value)


def _sections(document: Mapping[str, Any], currency: str) -> list[Section]:
    sections = []
    grid = rows(document.get("rfm_grid"))
    if grid:
        sections.append(Section("RFM grid RFM 分群", rfm_grid_chart(grid), "No buying members."))
    if document.get("rfm") is not None:
        segments = bars_chart(mapping(document.get("rfm")), "Buying members per RFM segment", NEUTRAL)
        sections.append(Section("RFM segments RFM 分群", segments, "No buying members."))
    if document.get("lifecycle") is not None:
        stages = bars_chart(mapping(document.get("lifecycle")), "Members per lifecycle stage", CONTROL)
        sections.append(Section("Lifecycle 生命周期", stages, "No members."))
    if document.get("dormancy") is not None:
        curve = dormancy_chart(rows(document.get("dormancy")), document.get("dormant_days"), document.get("lost_days"))
        sections.append(Section("Dormancy curve 休眠曲线", curve, "No buying members."))
    if document.get("order_amounts") is not None:
        spend = order_amounts_chart(rows(document.get("order_amounts")), currency)
        sections.append(Section("Spend per order 订单金额分布", spend, "No paid orders."))
    elif document.get("avg_order_distribution") is not None:
        bands = bars_chart(mapping(document.get("avg_order_distribution")), "Buying members per average order value")
        sections.append(Section("Average order value 平均订单金额", bands, "No buying members."))
    if document.get("provinces") is not None:
        provinces = provinces_chart(rows(document.get("provinces")))
        sections.append(
            Section(
                f"Conversion by province 省份转化率 (best {TOP_PROVINCES})",
                provinces,
                "No members with a province.",
            )
        )
    return sections
