"""The member-base report and ``orchestrator analyze`` equal a plain-Python computation over the data set."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from orchestrator.analysis import member_report
from orchestrator.config import Settings, load_settings
from tests import dataset
from tests.dataset import AT, AT_BEFORE_ORDERS, AT_PAST, SHANGHAI

DEFAULT = Settings()
CUSTOM = Settings(
    currency="RMB",
    analysis={"big_spender_threshold": "500.00", "high_value_min_orders": 3},
    lifecycle={"new_days": 14, "dormant_days": 60, "lost_days": 120},
    tiers=[{"name": "gold", "min_spend": "800", "min_orders": 2}, {"name": "member", "min_orders": 1}],
)
TIMES = {"at": AT, "past": AT_PAST, "before-orders": AT_BEFORE_ORDERS}
CONTRACT_KEYS = {
    "at",
    "members",
    "buying_members",
    "buying_rate",
    "orders",
    "revenue",
    "purchase_frequency",
    "aov",
    "dormant_90d",
    "dormant_180d",
    "big_spenders",
    "conversion_by_province",
    "rfm",
    "lifecycle",
}
RFM_NAMES = {name for row in dataset.RFM_GRID.values() for name in row}


# --- the reference: the report recomputed from the data set's Python objects ---------------------------------


def rounded(numerator: Any, denominator: Any, places: str) -> Decimal | None:
    if not denominator:
        return None
    exact = Fraction(numerator) / Fraction(denominator)
    return (Decimal(exact.numerator) / Decimal(exact.denominator)).quantize(Decimal(places), rounding=ROUND_HALF_UP)


def expected_report(at: datetime, settings: Settings) -> dict[str, Any]:
    members = dataset.members(at)
    paid = dataset.counted_orders(at)
    facts = dataset.expected_facts(at, settings)
    spend: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for o in paid:
        spend[o.customer_id] += o.amount
        count[o.customer_id] += 1
    buyers = set(count)
    revenue = sum(spend.values(), Decimal("0"))
    threshold = settings.analysis.big_spender_threshold
    big = [c for c in buyers if spend[c] > threshold]
    big_revenue = sum((spend[c] for c in big), Decimal("0"))
    recency = {c: facts[c].recency_days for c in buyers}
    return {
        "at": at,
        "currency": settings.currency,
        "members": len(members),
        "buying_members": len(buyers),
        "never_bought": len(members) - len(buyers),
        "buying_rate": rounded(len(buyers), len(members), "0.0001"),
        "orders": len(paid),
        "revenue": revenue.quantize(Decimal("0.01")),
        "purchase_frequency": rounded(len(paid), len(buyers), "0.01"),
        "aov": rounded(revenue, len(paid), "0.01"),
        "dormant_days": settings.lifecycle.dormant_days,
        "lost_days": settings.lifecycle.lost_days,
        "dormant_90d": sum(1 for c in buyers if recency[c] >= settings.lifecycle.dormant_days),
        "dormant_180d": sum(1 for c in buyers if recency[c] >= settings.lifecycle.lost_days),
        "high_value_min_orders": settings.analysis.high_value_min_orders,
        "high_value_members": sum(1 for c in buyers if count[c] >= settings.analysis.high_value_min_orders),
        "big_spenders": {
            "threshold": threshold.quantize(Decimal("0.01")),
            "count": len(big),
            "revenue": big_revenue.quantize(Decimal("0.01")),
            "sales_share": rounded(big_revenue, revenue, "0.0001"),
        },
        "avg_order_distribution": _aov_bands(spend, count),
        "conversion_by_province": {p["province"]: p["buying_rate"] for p in _provinces(members, buyers, spend)},
        "provinces": _provinces(members, buyers, spend),
        "rfm": _counts([f.rfm_segment for f in facts.values()], RFM_NAMES),
        "lifecycle": _counts([f.lifecycle_stage for f in facts.values()], dataset.LIFECYCLE_STAGES),
        "tiers": _counts([f.tier for f in facts.values()], [t.name for t in settings.tiers]),
        "rfm_grid": _rfm_grid(facts.values()),
        "dormancy": _dormancy([recency[c] for c in buyers]),
        "order_amounts": _order_amounts([o.amount for o in paid]),
    }


def _rfm_grid(facts) -> list[dict[str, Any]]:
    """Buyers per (R, FM) cell, FM = (F + M) / 2 rounded half up, named by the grid as the test data set writes it."""
    cells = Counter((f.r_score, (f.f_score + f.m_score + 1) // 2) for f in facts if f.r_score is not None)
    return [
        {"r_score": r, "fm_score": fm, "segment": dataset.RFM_GRID[r][fm - 1], "members": cells[r, fm]}
        for r in range(1, 6)
        for fm in range(1, 6)
    ]


def _dormancy(recencies: list[int]) -> list[dict[str, int]]:
    """Buyers per whole 30 days since their last paid order, only the months someone is in."""
    months = Counter(days // 30 for days in recencies)
    return [{"days_from": month * 30, "members": months[month]} for month in sorted(months)]


def _order_amounts(amounts: list[Decimal]) -> list[dict[str, Any]]:
    """Paid orders per 20.00 of amount ([from, to)), only the bands with orders."""
    bands = Counter(int(amount // 20) for amount in amounts)
    return [
        {
            "from": Decimal(band * 20).quantize(Decimal("0.01")),
            "to": Decimal((band + 1) * 20).quantize(Decimal("0.01")),
            "orders": bands[band],
        }
        for band in sorted(bands)
    ]


def _aov_bands(spend: Counter, count: Counter) -> dict[str, int]:
    bands = Counter()
    for c in count:
        average = Fraction(spend[c]) / count[c]
        bands["<100" if average < 100 else "100-200" if average < 200 else "200+"] += 1
    return {band: bands[band] for band in ("<100", "100-200", "200+")}


def _provinces(members: list, buyers: set, spend: Counter) -> list[dict[str, Any]]:
    groups: dict[str, list] = {}
    for c in members:
        groups.setdefault(c.province or "(unknown)", []).append(c)
    rows = []
    for province, people in groups.items():
        buying = [c for c in people if c.customer_id in buyers]
        rows.append(
            {
                "province": province,
                "members": len(people),
                "buying_members": len(buying),
                "buying_rate": rounded(len(buying), len(people), "0.0001"),
                "revenue": sum((spend[c.customer_id] for c in buying), Decimal("0")).quantize(Decimal("0.01")),
            }
        )
    return sorted(rows, key=lambda r: (-r["buying_rate"], -r["members"], r["province"]))


def _counts(values: list, names) -> dict[str, int]:
    counted = Counter(v for v in values if v is not None)
    return {name: counted[name] for name in names}


# --- the report ---------------------------------------------------------------------------------------------


@pytest.fixture
def loaded(engine: Engine) -> Engine:
    dataset.load(engine)
    return engine


def assert_same_report(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if key in ("rfm", "lifecycle", "tiers", "avg_order_distribution"):
            assert dict(actual[key]) == value, key
        elif key == "conversion_by_province":
            assert list(actual[key].items()) == list(value.items()), key  # best converting first
        else:
            assert actual[key] == value, key


@pytest.mark.parametrize("settings", [DEFAULT, CUSTOM], ids=["default", "custom"])
@pytest.mark.parametrize("when", list(TIMES))
def test_report_matches_the_reference(loaded: Engine, when: str, settings: Settings):
    at = TIMES[when]
    report = member_report(loaded, settings, at).to_dict()
    assert_same_report(report, expected_report(at, settings))


def test_report_has_the_contract_keys_and_types(loaded: Engine):
    report = member_report(loaded, DEFAULT, AT).to_dict()
    assert set(report) >= CONTRACT_KEYS
    assert set(report["big_spenders"]) >= {"threshold", "count", "sales_share"}
    assert set(report["lifecycle"]) == set(dataset.LIFECYCLE_STAGES)
    assert set(report["rfm"]) == RFM_NAMES
    for key in ("revenue", "aov"):
        assert report[key].as_tuple().exponent == -2, key
    assert report["buying_rate"].as_tuple().exponent == -4
    assert report["big_spenders"]["sales_share"].as_tuple().exponent == -4
    assert report["purchase_frequency"].as_tuple().exponent == -2
    assert sum(report["rfm"].values()) == report["buying_members"]
    assert sum(report["lifecycle"].values()) == report["members"]


def test_big_spenders_are_strictly_over_the_threshold(loaded: Engine):
    """C02 (1000.01) counts, C03 (exactly 1000.00) does not, C04 (900 + an order after AT) does not."""
    report = member_report(loaded, DEFAULT, AT)
    expected = {"C02", "C24", "C34"}  # the members whose paid spend by AT is over 1000.00
    assert {c for c, f in dataset.expected_facts(AT, DEFAULT).items() if f.monetary > 1000} == expected
    assert report.big_spenders.count == len(expected)


def test_backtesting_changes_the_figures(loaded: Engine):
    now = member_report(loaded, DEFAULT, AT).to_dict()
    then = member_report(loaded, DEFAULT, AT_PAST).to_dict()
    assert then["orders"] < now["orders"] and then["members"] < now["members"]
    assert then["revenue"] < now["revenue"] and then["lifecycle"] != now["lifecycle"]
    assert_same_report(then, expected_report(AT_PAST, DEFAULT))


def test_report_on_an_empty_database(engine: Engine):
    report = member_report(engine, DEFAULT, AT).to_dict()
    assert report["members"] == report["orders"] == 0
    assert report["revenue"] == Decimal("0.00")
    assert report["buying_rate"] is None and report["aov"] is None and report["purchase_frequency"] is None
    assert report["big_spenders"]["sales_share"] is None
    assert report["lifecycle"] == dict.fromkeys(dataset.LIFECYCLE_STAGES, 0)
    assert report["conversion_by_province"] == {}


# --- the command --------------------------------------------------------------------------------------------


CONFIG = """\
timezone: Asia/Shanghai
currency: CNY
analysis:
  big_spender_threshold: 500
  high_value_min_orders: 3
lifecycle: {new_days: 14, dormant_days: 60, lost_days: 120}
tiers:
  - {name: advanced, min_spend: 300}
  - {name: regular}
"""


@pytest.fixture
def cli(run_cli, loaded: Engine, tmp_path: Path):
    """``orchestrator`` on the loaded database with a config file of its own."""
    config = tmp_path / "orchestrator.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    run_cli.config = str(config)
    return run_cli


def parse_json(text: str) -> dict[str, Any]:
    return json.loads(text, parse_float=Decimal)


def cli_expected(cli, at: datetime) -> dict[str, Any]:
    expected = expected_report(at, load_settings(cli.config))
    return expected | {"at": at.isoformat()}


@pytest.mark.parametrize(
    ("option", "at"),
    [
        ("2025-07-01T10:00:00+08:00", AT),
        ("2025-07-01T02:00:00Z", AT),
        ("2025-03-01T00:00:00", AT_PAST),  # no offset: the configured time zone
        ("2025-03-01", AT_PAST),
    ],
)
def test_analyze_json_at(cli, option: str, at: datetime):
    result = cli("analyze", "--json", "--at", option)
    assert result.exit_code == 0, result.output
    report = parse_json(result.stdout)
    assert datetime.fromisoformat(report["at"]) == at
    assert_same_report(report | {"at": at.isoformat()}, cli_expected(cli, at))


def test_analyze_json_defaults_to_now(cli):
    result = cli("analyze", "--json")
    assert result.exit_code == 0, result.output
    report = parse_json(result.stdout)
    at = datetime.fromisoformat(report["at"])
    assert at.utcoffset() == datetime.now(SHANGHAI).utcoffset()
    assert_same_report(report, cli_expected(cli, at) | {"at": report["at"]})


@pytest.mark.parametrize("bad", ["yesterday", "2025-13-01", "2025-07-01T25:00", ""])
def test_analyze_rejects_a_bad_at_with_exit_2(cli, bad: str):
    result = cli("analyze", "--json", "--at", bad)
    assert result.exit_code == 2
    assert "--at" in result.stderr
    assert result.stdout == ""


def test_analyze_prints_readable_tables(cli):
    result = cli("analyze", "--at", "2025-07-01T10:00:00+08:00")
    assert result.exit_code == 0, result.output
    expected = cli_expected(cli, AT)
    for text in ("客单价", "AOV", "会员数", "RFM", "生命周期", "浙江", "champions"):
        assert text in result.stdout, text
    assert f"{expected['aov']:,.2f}" in result.stdout
    assert f"{expected['revenue']:,.2f}" in result.stdout
