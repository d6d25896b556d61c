"""The charts of the member-base page, each from one part of the ``analyze`` document; None when it has no data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.ticker import FuncFormatter, PercentFormatter

from orchestrator.charts.figures import CONTROL, NEGATIVE, NEUTRAL, TREATMENT, figure, to_svg
from orchestrator.charts.values import number

WIDTH = 9.6  # inches at 100 dpi: about the width of the page, so text in a chart is the size of the page's
TOP_PROVINCES = 15


def rfm_grid_chart(cells: Sequence[Mapping[str, Any]]) -> str | None:
    """The R × FM grid as a heat map: members per cell, with the cell's segment name (R 5 on top, FM 5 right).
    Cells are vector shapes (a mesh), not a raster image: sharp at any zoom, and each one a mark in the SVG."""
    grid = [[0.0] * 5 for _ in range(5)]  # grid[r - 1][fm - 1]: row 0 at the bottom
    names: dict[tuple[int, int], str] = {}
    for cell in cells:
        r, fm = number(cell.get("r_score")), number(cell.get("fm_score"))
        if r is None or fm is None or not (1 <= r <= 5 and 1 <= fm <= 5):
            continue
        grid[int(r) - 1][int(fm) - 1] = number(cell.get("members")) or 0.0
        names[int(r), int(fm)] = str(cell.get("segment") or "")
    if not any(any(row) for row in grid):
        return None
    top = max(max(row) for row in grid)
    with figure(WIDTH, 4.6) as fig:
        ax = fig.add_subplot()
        ax.pcolormesh(grid, cmap="Blues", vmin=0, vmax=top * 1.15, edgecolors="white", linewidth=1.5)
        for (r, fm), name in names.items():
            value = grid[r - 1][fm - 1]
            colour = "white" if value > top * 0.6 else "#1d2733"
            ax.text(fm - 0.5, r - 0.38, f"{value:,.0f}", ha="center", va="center", fontsize=13, color=colour)
            ax.text(fm - 0.5, r - 0.72, name, ha="center", va="center", fontsize=8, color=colour)
        ax.set_xticks([i + 0.5 for i in range(5)], [f"FM {i}" for i in range(1, 6)])
        ax.set_yticks([i + 0.5 for i in range(5)], [f"R {i}" for i in range(1, 6)])
        ax.grid(False)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel("frequency & monetary score 频次·金额 →")
        ax.set_ylabel("recency score 近度 →")
        return to_svg(fig, "RFM grid: buying members per recency and frequency-monetary score")


def bars_chart(counts: Mapping[str, Any], title: str, colour: str = TREATMENT) -> str | None:
    """Members per label (lifecycle stage, RFM segment, tier), in the document's order."""
    items = [(str(label), number(value) or 0.0) for label, value in counts.items()]
    if not items or not any(value for _, value in items):
        return None
    total = sum(value for _, value in items)
    with figure(WIDTH, 0.38 * len(items) + 0.8) as fig:
        ax = fig.add_subplot()
        ys = list(range(len(items)))[::-1]
        ax.barh(ys, [v for _, v in items], color=colour, height=0.6)
        for y, (_, value) in zip(ys, items, strict=True):
            ax.text(value, y, f"  {value:,.0f} ({value / total:.1%})", va="center", fontsize=9)
        ax.set_yticks(ys, [label for label, _ in items])
        ax.set_xlim(0, max(v for _, v in items) * 1.25)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.grid(axis="y", visible=False)
        return to_svg(fig, title)


def dormancy_chart(steps: Sequence[Mapping[str, Any]], dormant_days: Any, lost_days: Any) -> str | None:
    """The dormancy curve: the share of buying members whose last paid order is at least d days old, against d,
    with the dormant and lost thresholds marked."""
    points = sorted(
        (int(number(row.get("days_from")) or 0), number(row.get("members")) or 0.0)
        for row in steps
        if number(row.get("days_from")) is not None
    )
    total = sum(members for _, members in points)
    if not total:
        return None
    xs, shares, remaining = [], [], total
    for days, members in points:
        xs.append(days)
        shares.append(remaining / total)
        remaining -= members
    # the curve reaches zero one step after the last bucket's start: nobody has been silent that long
    xs.append(xs[-1] + (xs[-1] - xs[-2] if len(xs) > 1 else 30))
    shares.append(0.0)
    with figure(WIDTH, 3.4) as fig:
        ax = fig.add_subplot()
        ax.step(xs, shares, where="post", color=TREATMENT, lw=2)
        ax.fill_between(xs, shares, step="post", color=TREATMENT, alpha=0.12)
        for threshold, label, colour in ((dormant_days, "dormant 休眠", CONTROL), (lost_days, "lost 流失", NEGATIVE)):
            days = number(threshold)
            if days is not None:
                ax.axvline(days, color=colour, ls="--", lw=1)
                ax.text(days, 1.02, f" {label} ≥ {days:.0f} d", color=colour, fontsize=9, va="bottom")
        ax.set_ylim(0, 1.08)
        ax.set_xlim(left=0)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xlabel("days since the last paid order 距上次购买天数")
        ax.set_ylabel("buying members silent at least that long")
        return to_svg(fig, "Dormancy curve: share of buying members silent for at least so many days")


def order_amounts_chart(bands: Sequence[Mapping[str, Any]], currency: str) -> str | None:
    """Paid orders per band of amount (spend per order), as a histogram."""
    rows = [(number(b.get("from")), number(b.get("to")), number(b.get("orders")) or 0.0) for b in bands]
    rows = [(low, high, n) for low, high, n in rows if low is not None and high is not None]
    if not rows or not any(n for _, _, n in rows):
        return None
    with figure(WIDTH, 3.2) as fig:
        ax = fig.add_subplot()
        ax.bar(
            [low for low, _, _ in rows],
            [n for _, _, n in rows],
            width=[h - lo for lo, h, _ in rows],
            align="edge",
            color=NEUTRAL,
            edgecolor="white",
            linewidth=0.6,
        )
        ax.set_xlabel(f"order amount 订单金额 ({currency})")
        ax.set_ylabel("paid orders 订单数")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.grid(axis="x", visible=False)
        return to_svg(fig, "Spend per order: paid orders per band of amount")


def provinces_chart(provinces: Sequence[Mapping[str, Any]]) -> str | None:
    """The buying rate of the best converting provinces (as the document orders them), with their members."""
    items = [
        (str(p.get("province", "")), number(p.get("buying_rate")), number(p.get("members")) or 0.0)
        for p in provinces[:TOP_PROVINCES]
    ]
    items = [(name, rate, members) for name, rate, members in items if rate is not None]
    if not items:
        return None
    with figure(WIDTH, 0.36 * len(items) + 0.9) as fig:
        ax = fig.add_subplot()
        ys = list(range(len(items)))[::-1]
        ax.barh(ys, [rate for _, rate, _ in items], color=TREATMENT, height=0.6)
        for y, (_, rate, members) in zip(ys, items, strict=True):
            ax.text(rate, y, f"  {rate:.1%} of {members:,.0f}", va="center", fontsize=9)
        ax.set_yticks(ys, [name for name, _, _ in items])
        ax.set_xlim(0, min(1.0, max(rate for _, rate, _ in items) * 1.25) or 1.0)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("buying members ÷ members 转化率")
        return to_svg(fig, "Conversion by province")
