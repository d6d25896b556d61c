"""The charts of the campaign results page, each from one part of the report document; None when it has no data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import Any

from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from orchestrator.charts.figures import CONTROL, NEGATIVE, NEUTRAL, POSITIVE, TREATMENT, figure, to_svg
from orchestrator.charts.values import count_text, interval, mapping, money_text, number, rate_text, ratio_text, rows

COUNT_STAGES_COLOUR = "#5b8fc7"
WIDTH = 9.6  # inches at 100 dpi: about the width of the page, so text in a chart is the size of the page's


def funnel_chart(funnel: Sequence[Mapping[str, Any]]) -> str | None:
    """The funnel's member stages as bars, each with its share of the first; a money stage (revenue) closes it as
    a labelled line, since money on the same axis as members would mean nothing."""
    stages = [(str(row.get("stage", "")), row.get("value")) for row in funnel]
    counts = [(name, number(v)) for name, v in stages if isinstance(v, int) and not isinstance(v, bool)]
    money = [(name, v) for name, v in stages if isinstance(v, str)]
    counts = [(name, v) for name, v in counts if v is not None]
    if not counts or not any(v for _, v in counts):
        return None
    first = counts[0][1] or 1.0
    with figure(WIDTH, 0.55 * (len(counts) + len(money)) + 0.9) as fig:
        ax = fig.add_subplot()
        names = [name for name, _ in counts] + [name for name, _ in money]
        positions = list(range(len(names)))[::-1]
        widths = [v for _, v in counts]
        ax.barh(positions[: len(counts)], widths, color=COUNT_STAGES_COLOUR, height=0.6)
        for y, value in zip(positions, widths, strict=False):
            ax.text(value, y, f"  {value:,.0f}  ({value / first:.0%})", va="center", fontsize=9)
        for y, (_, value) in zip(positions[len(counts) :], money, strict=True):
            ax.annotate(
                money_text(value),
                (0, y),
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                fontsize=11,
                fontweight="bold",
                color=POSITIVE,
            )
        ax.set_yticks(positions, names)
        ax.set_xlim(0, max(widths) * 1.35)
        ax.set_ylim(-0.6, len(names) - 0.4)  # room below the last stage, so its label clears the axis
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.grid(axis="y", visible=False)
        return to_svg(fig, "Funnel: targeted, contacted, redeemed, revenue")


def daily_chart(daily: Sequence[Mapping[str, Any]]) -> str | None:
    """Conversions and revenue per day, treatment against control: per member of each group when the document
    gives the group sizes (the groups differ tenfold in size, so raw counts would only show that), else raw."""
    days = []
    for row in daily:
        try:
            days.append((date.fromisoformat(str(row.get("date"))), row))
        except ValueError:
            continue
    if not days:
        return None
    days.sort(key=lambda pair: pair[0])
    x = [d for d, _ in days]
    per_member = all(number(r.get("members_treatment")) and number(r.get("members_control")) for _, r in days)

    def series(key: str, group: str) -> list[float]:
        values = [number(r.get(f"{key}_{group}")) or 0.0 for _, r in days]
        if not per_member:
            return values
        sizes = [number(r.get(f"members_{group}")) or 1.0 for _, r in days]
        return [v / s for v, s in zip(values, sizes, strict=True)]

    with figure(WIDTH, 4.6) as fig:
        top, bottom = fig.subplots(2, 1, sharex=True)
        for ax, key, title in (
            (top, "conversions", "Conversions 转化" + (" per member" if per_member else "")),
            (bottom, "revenue", "Revenue 收入" + (" per member" if per_member else "")),
        ):
            ax.plot(x, series(key, "treatment"), marker="o", ms=3, color=TREATMENT, label="treatment 实验组")
            ax.plot(x, series(key, "control"), marker="o", ms=3, color=CONTROL, label="control 对照组")
            ax.set_title(title)
            ax.set_ylim(bottom=0)
        if per_member:
            top.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        # above the plot, where no line can run under it
        top.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False, fontsize=9)
        if len(x) == 1:  # one day: a range of one value has no date interval to pick; show the days around it
            bottom.set_xlim(x[0] - timedelta(days=1), x[0] + timedelta(days=1))
        locator = AutoDateLocator(maxticks=8)
        bottom.xaxis.set_major_locator(locator)
        bottom.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        fig.tight_layout()
        return to_svg(fig, "Daily conversions and revenue, treatment against control")


def uplift_chart(items: Sequence[tuple[str, Mapping[str, Any]]], title: str) -> str | None:
    """The conversion uplift of each item (a step, a variant, a channel) with its 95 % interval as an error bar;
    green when the interval excludes zero upwards, red downwards, grey when it spans zero. Items without an
    uplift are left out (the table below the chart lists every item)."""
    points = []
    for label, metrics in items:
        conversions = mapping(metrics.get("conversions"))
        uplift = number(conversions.get("uplift"))
        if uplift is not None:
            points.append((label, uplift, interval(conversions.get("uplift_ci95"))))
    if not points:
        return None
    with figure(WIDTH, 0.45 * len(points) + 1.0) as fig:
        ax = fig.add_subplot()
        ys = list(range(len(points)))[::-1]
        for y, (_, uplift, ci) in zip(ys, points, strict=True):
            colour = NEUTRAL if ci is None or ci[0] <= 0 <= ci[1] else (POSITIVE if ci[0] > 0 else NEGATIVE)
            error = None if ci is None else [[max(uplift - ci[0], 0)], [max(ci[1] - uplift, 0)]]
            ax.errorbar([uplift], [y], xerr=error, fmt="o", color=colour, ecolor=colour, capsize=4, ms=6)
        ax.axvline(0, color="#333333", lw=0.8)
        ax.set_yticks(ys, [label for label, _, _ in points])
        ax.set_ylim(-0.7, len(points) - 0.3)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 100:+.1f} pts"))
        ax.set_xlabel("conversion uplift, percentage points (95% CI) 转化提升")
        ax.grid(axis="y", visible=False)
        return to_svg(fig, f"{title}: conversion uplift with 95% confidence interval")


def skips_chart(skipped: Mapping[str, Any]) -> str | None:
    """Members skipped per reason, largest first."""
    reasons = sorted(
        ((str(reason), number(n) or 0.0) for reason, n in skipped.items()), key=lambda pair: (-pair[1], pair[0])
    )
    reasons = [(reason, n) for reason, n in reasons if n > 0]
    if not reasons:
        return None
    with figure(WIDTH, 0.4 * len(reasons) + 0.9) as fig:
        ax = fig.add_subplot()
        ys = list(range(len(reasons)))[::-1]
        ax.barh(ys, [n for _, n in reasons], color=NEUTRAL, height=0.6)
        for y, (_, n) in zip(ys, reasons, strict=True):
            ax.text(n, y, f"  {n:,.0f}", va="center", fontsize=9)
        ax.set_yticks(ys, [reason for reason, _ in reasons])
        ax.set_xlim(0, max(n for _, n in reasons) * 1.2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(axis="y", visible=False)
        return to_svg(fig, "Members skipped, by reason")


def breakdown_table(items: Sequence[tuple[str, Mapping[str, Any]]], label: str) -> list[list[str]]:
    """The figures behind an uplift chart, one row per item (also those without an uplift)."""
    header = [label, "targeted", "control", "sent", "rate treatment", "rate control", "uplift", "95% CI", "ROI"]
    table = [header]
    for name, metrics in items:
        conversions = mapping(metrics.get("conversions"))
        ci = interval(conversions.get("uplift_ci95"))
        table.append(
            [
                name,
                count_text(metrics.get("targeted")),
                count_text(metrics.get("control")),
                count_text(metrics.get("sent")),
                rate_text(conversions.get("rate_treatment")),
                rate_text(conversions.get("rate_control")),
                rate_text(conversions.get("uplift"), signed=True),
                "—" if ci is None else f"{ci[0] * 100:+.1f} to {ci[1] * 100:+.1f}",
                ratio_text(metrics.get("roi")),
            ]
        )
    return table


def labelled(items: Any, *keys: str) -> list[tuple[str, Mapping[str, Any]]]:
    """Rows of a breakdown with their label: the values of ``keys`` joined (``vip · A``)."""
    return [(" · ".join(str(row.get(k, "?")) for k in keys), row) for row in rows(items)]
