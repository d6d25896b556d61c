"""A report document as ``orchestrator report --json`` prints it (the shared contract), for the HTML page tests:
two steps (one with an A/B test), two channels, a fortnight of daily figures, Chinese names throughout."""

from __future__ import annotations

import copy
from typing import Any


def _metrics(targeted: int, control: int, sent: int, rate_t: float, rate_c: float, ci: list[float], roi: float):
    uplift = round(rate_t - rate_c, 4)
    return {
        "targeted": targeted,
        "control": control,
        "sent": sent,
        "conversions": {
            "treatment": round(rate_t * (targeted - control)),
            "control": round(rate_c * control),
            "rate_treatment": rate_t,
            "rate_control": rate_c,
            "uplift": uplift,
            "uplift_ci95": ci,
            "uplift_relative": round(uplift / rate_c, 4) if rate_c else None,
        },
        "revenue": {"attributed": f"{targeted * 40}.00", "incremental": f"{targeted * 17}.00"},
        "roi": roi,
    }


def _daily() -> list[dict[str, Any]]:
    days = []
    for day in range(1, 15):
        treatment = max(2, 24 - day * 2 + (day % 3) * 2)
        days.append(
            {
                "date": f"2026-11-{day:02d}",
                "conversions_treatment": treatment,
                "conversions_control": 1 if day % 2 else 0,
                "revenue_treatment": f"{treatment * 150}.00",
                "revenue_control": f"{(1 if day % 2 else 0) * 140}.00",
                "members_treatment": 1080,
                "members_control": 120,
            }
        )
    return days


REPORT: dict[str, Any] = {
    "campaign": "spring_sale 春季焕新",
    "at": "2026-11-20T10:00:00+08:00",
    "runs": [
        {"run_id": 3, "campaign": "spring_sale 春季焕新", "scheduled_at": "2026-11-01T10:00:00+08:00", "state": "done"}
    ],
    "targeted": 1200,
    "control": 120,
    "sent": 1050,
    "delivered": 1040,
    "failed": 10,
    "skipped": {"opted_out": 12, "frequency_cap": 3, "quiet_hours": 0, "no_contact": 15},
    "offers": {"issued": 1000, "redeemed": 130, "redemption_rate": 0.13, "cost": "2600.00"},
    "conversions": {
        "treatment": 160,
        "control": 9,
        "rate_treatment": 0.148,
        "rate_control": 0.075,
        "uplift": 0.073,
        "uplift_ci95": [0.02, 0.11],
        "uplift_relative": 0.97,
    },
    "revenue": {
        "attributed": "48000.00",
        "per_member_treatment": "40.00",
        "per_member_control": "21.00",
        "incremental": "20520.00",
        "incremental_ci95": ["9000.00", "31000.00"],
    },
    "send_cost": "120.00",
    "roi": 3.1,
    "roi_incremental": 1.2,
    "cannibalisation": 0.5,
    "funnel": [
        {"stage": "targeted", "value": 1200},
        {"stage": "contacted", "value": 1050},
        {"stage": "redeemed", "value": 130},
        {"stage": "revenue", "value": "48000.00"},
    ],
    "daily": _daily(),
    "by_step": [
        {"step": "vip 贵宾", **_metrics(500, 50, 440, 0.21, 0.10, [0.05, 0.17], 2.4)},
        {"step": "满$100减20", **_metrics(700, 70, 610, 0.10, 0.057, [-0.01, 0.097], 0.4)},
    ],
    "by_variant": [
        {"step": "vip 贵宾", "variant": "A 短信", **_metrics(250, 25, 220, 0.24, 0.10, [0.07, 0.21], 2.9)},
        {"step": "vip 贵宾", "variant": "B", **_metrics(250, 25, 220, 0.18, 0.10, [-0.02, 0.18], 1.6)},
    ],
    "by_channel": [
        {"channel": "sms", **_metrics(900, 90, 800, 0.15, 0.067, [0.03, 0.136], 1.1)},
        {"channel": "email", **_metrics(300, 30, 250, 0.144, 0.1, [-0.07, 0.158], 0.2)},
    ],
    "verdict": "Clear positive effect: +7.3 points conversion (95% CI +2.0 to +11.0).",
}


def report(**changes: Any) -> dict[str, Any]:
    """A deep copy of ``REPORT`` with top-level keys replaced."""
    document = copy.deepcopy(REPORT)
    document.update(changes)
    return document
