"""Dry-run's estimate of what a run sends: SMS segments and the send cost per channel, priced from the config."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path

import pytest

from orchestrator.data.records import CUSTOMER_COLUMNS
from tests.clitools import Cli

AT = "2026-11-02T10:00:00+08:00"
# 68 characters for 张伟; with 【某网店】 in front and 回T退订 after, 77 UCS-2 characters: two segments (over 70)
LONG_TEXT = "您好{{ customer.name }}，" + "会员专享活动进行中" * 7
SHORT_TEXT = "Hi {{ customer.name }}"  # 14 UCS-2 characters with the signature and opt-out wording: one segment


def members(path: Path, count: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, CUSTOMER_COLUMNS, restval="")
        writer.writeheader()
        for i in range(1, count + 1):
            row = {"customer_id": f"M{i:03d}", "name": "张伟", "phone": f"+86138001{i:05d}", "email": f"m{i}@ex.com"}
            writer.writerow(
                {**row, "signup_at": "2024-01-01T00:00:00+08:00", "email_opt_in": "true", "sms_opt_in": "true"}
            )


def campaign(folder: Path, text: str) -> Path:
    path = folder / "campaign.yaml"
    body = json.dumps(text, ensure_ascii=False)
    path.write_text(
        "name: cost-check\nsegment: {consent_sms: true}\n"
        f"message:\n  sms: {{text: {body}}}\n  email: {{subject: Hi, text: Hello}}\ndispatch: {{strategy: all}}\n",
        encoding="utf-8",
    )
    return path


def world(tmp_path: Path, db_url: str, prices: str) -> Cli:
    config = tmp_path / "orchestrator.yaml"
    config.write_text(
        "timezone: Asia/Shanghai\ntemplates: []\nchannels:\n"
        f"  sms: {{outbox: out/sms, signature: 【某网店】{prices and ', ' + prices}}}\n"
        "  email: {outbox: out/email, cost_per_message: 0.002}\n",
        encoding="utf-8",
    )
    cli = Cli(db_url, str(config))
    members(tmp_path / "members.csv", 30)
    assert cli("import", "customers", tmp_path / "members.csv").exit_code == 0
    return cli


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_dry_run_counts_segments_and_prices_them(run_cli, db_url: str, tmp_path: Path):
    cli = world(tmp_path, db_url, "cost_per_segment: 0.045")
    data = json.loads(cli("dry-run", campaign(tmp_path, LONG_TEXT), "--at", AT, "--json").stdout, parse_float=Decimal)
    assert data["channels"] == {"sms": 30, "email": 30}
    assert data["sms_segments"] == 30 * 2
    assert data["cost"] == {"sms": Decimal("2.70"), "email": Decimal("0.06")}
    assert data["currency"] == "CNY"
    short = json.loads(cli("dry-run", campaign(tmp_path, SHORT_TEXT), "--at", AT, "--json").stdout, parse_float=Decimal)
    assert short["sms_segments"] == 30 and short["cost"]["sms"] == Decimal("1.35")
    assert not (tmp_path / "out").exists()  # a dry run sends nothing


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_bad_price_is_an_input_error(run_cli, db_url: str, tmp_path: Path):
    config = tmp_path / "orchestrator.yaml"
    config.write_text("channels:\n  sms:\n    cost_per_segment: cheap\n", encoding="utf-8")
    result = Cli(db_url, str(config))("dry-run", campaign(tmp_path, SHORT_TEXT), "--at", AT)
    assert result.exit_code == 2
    assert "cost_per_segment" in result.output and "orchestrator.yaml" in result.output
    assert "Traceback" not in result.output
