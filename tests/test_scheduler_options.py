"""``orchestrator scheduler``'s numeric options: a value that is not a finite positive number of seconds (nan, inf,
1e309, 0, -1) is refused with exit status 2 and a message naming the option, before any lease is taken."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from orchestrator.cli import cli
from orchestrator.scheduler.lease import Lease


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("option", ["--poll", "--lease-ttl"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e309", "0", "-1", "1e12"])
def test_a_bad_number_of_seconds_exits_2_without_a_traceback_or_a_lease(
    tmp_path: Path, db_url: str, engine: Engine, option: str, value: str
):
    (tmp_path / "campaigns").mkdir()
    config = tmp_path / "orchestrator.yaml"
    config.write_text("timezone: UTC\ntemplates: []\ncampaigns: campaigns\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(config), "--db", db_url, "scheduler", option, value])
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert "Traceback" not in result.output and "Error" in result.output
    assert Lease(engine).holder_info() is None  # refused before the lease was taken
