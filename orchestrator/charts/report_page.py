"""The campaign results page from the document of ``orchestrator report --json``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.charts.page import Figure, Section, render_page, write_page
from orchestrator.charts.report_charts import (
    breakdown_table,
    daily_chart,
    funnel_chart,
    labelled,
    skips_chart,
    uplift_chart,
)
from orchestrator.charts.values import count_text, interval, mapping, money_text, rate_text, ratio_text, rows


def render_report_page(document: Mapping[str, Any]) -> str:
    """The whole page: headline figures and verdict, then the funnel, the daily series, the results by step,
    variant and channel, and the skips. A section without data says so instead of drawing an empty chart."""
    campaign = document.get("campaign")
    title = f"Campaign results 活动效果: {campaign}" if campaign else "Campaign results 活动效果: all campaigns"
    return render_page(
        title,
        _sections(document),
        subtitle=_subtitle(document),
        verdict=str(document.get("verdict") or ""),
        figures=headline_figures(document),
        footer="Uplift = conversion rate of the contacted group − that of the control group, over the same window.",
    )


def write_report_page(document: Mapping[str, Any], path: str | Path) -> Path:
    """Write the page to ``path`` (UTF-8, all or nothing; the folder must exist) and return the path."""
    return write_page(render_report_page(document), path)


def headline_figures(document: Mapping[str, Any]) -> list[Figure]:
    offers = mapping(document.get("offers"))
    conversions = mapping(document.get("conversions"))
    revenue = mapping(document.get("revenue"))
    uplift_ci = interval(conversions.get("uplift_ci95"))
    incremental_ci = revenue.get("incremental_ci95")
    return [
        Figure(
            "targeted 目标会员",
            count_text(document.get("targeted")),
            f"control 对照组 {count_text(document.get('control'))}",
        ),
        Figure(
            "sent 已发送",
            count_text(document.get("sent")),
            f"delivered {count_text(document.get('delivered'))} · failed {count_text(document.get('failed'))}",
        ),
        Figure(
            "conversion 转化率",
            rate_text(conversions.get("rate_treatment")),
            f"control 对照组 {rate_text(conversions.get('rate_control'))}",
        ),
        Figure(
            "uplift 提升",
            rate_text(conversions.get("uplift"), signed=True),
            "95% CI —" if uplift_ci is None else f"95% CI {uplift_ci[0] * 100:+.1f} to {uplift_ci[1] * 100:+.1f}",
        ),
        Figure(
            "coupons redeemed 核销",
            f"{count_text(offers.get('redeemed'))} / {count_text(offers.get('issued'))}",
            f"rate {rate_text(offers.get('redemption_rate'))} · cost {money_text(offers.get('cost'))}",
        ),
        Figure(
            "attributed revenue 归因收入",
            money_text(revenue.get("attributed")),
            f"send cost {money_text(document.get('send_cost'))}",
        ),
        Figure(
            "incremental revenue 增量收入",
            money_text(revenue.get("incremental")),
            "95% CI —"
            if not isinstance(incremental_ci, list | tuple) or len(incremental_ci) != 2
            else f"95% CI {money_text(incremental_ci[0])} to {money_text(incremental_ci[1])}",
        ),
        Figure(
            "ROI, incremental 增量盈利率",
            ratio_text(document.get("roi_incremental")),
            "on the revenue the control group says the campaign caused",
        ),
        Figure(
            "ROI, attributed 归因盈利率",
            ratio_text(document.get("roi")),
            "on all revenue of contacted members' attributed orders",
        ),
        Figure(
            "cannibalisation 误伤率",
            rate_text(document.get("cannibalisation")),
            "redeemers who would have bought anyway",
        ),
    ]


def _subtitle(document: Mapping[str, Any]) -> str:
    runs = rows(document.get("runs"))
    at = document.get("at")
    parts = [f"as of {at}"] if at else []
    if runs:
        parts.append(f"{len(runs)} run{'s' if len(runs) != 1 else ''}: " + ", ".join(_run_text(r) for r in runs[:8]))
        if len(runs) > 8:
            parts[-1] += f", … ({len(runs) - 8} more)"
    return " · ".join(parts)


def _run_text(run: Mapping[str, Any]) -> str:
    return f"#{run.get('run_id')} {run.get('campaign', '')} {run.get('scheduled_at', '')}".strip()


def _sections(document: Mapping[str, Any]) -> list[Section]:
    steps = labelled(document.get("by_step"), "step")
    variants = labelled(document.get("by_variant"), "step", "variant")
    channels = labelled(document.get("by_channel"), "channel")
    return [
        Section("Funnel 漏斗", funnel_chart(rows(document.get("funnel"))), "No members were targeted."),
        Section(
            "Daily: treatment against control 每日效果",
            daily_chart(rows(document.get("daily"))),
            "No days with results yet.",
        ),
        _breakdown("By step 按步骤", "By step", steps, "step", "No steps with results."),
        _breakdown("By variant 按版本 (A/B)", "By variant", variants, "variant", "No A/B variants in these runs."),
        _breakdown("By channel 按渠道", "By channel", channels, "channel", "No channels with results."),
        Section("Skipped 跳过", skips_chart(mapping(document.get("skipped"))), "Nobody was skipped."),
    ]


def _breakdown(title: str, name: str, items: list[tuple[str, Mapping[str, Any]]], label: str, empty: str) -> Section:
    """A chart of the uplifts with the table of every item's figures below it; ``name`` labels the chart."""
    if not items:
        return Section(title, None, empty)
    return Section(
        title,
        uplift_chart(items, name),
        "No uplift could be computed (no control group members).",
        table=breakdown_table(items, label),
    )
