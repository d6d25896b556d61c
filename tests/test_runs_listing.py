"""``orchestrator runs`` after real runs, on SQLite and PostgreSQL: order, counts by delivery state, audience,
filters, the text table in the shop's zone; and a reader that stops early (``| head``) through a real pipe."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, insert, select

from orchestrator.db.models import Campaign, CampaignRun, Delivery
from tests import dataset
from tests.clitools import Cli, email_outbox_config
from tests.dataset import AT
from tests.test_cli_process import BROKEN_PIPE_STATUS, ORCHESTRATOR

NAME = "runs-check"
CAMPAIGN = f"""\
name: {NAME}
segment: {{frequency: {{gte: 1}}}}
control_group: 20%
recontact: always
message:
  email:
    subject: "Hi {{{{ customer.name }}}}"
    text: "Hello {{{{ customer.name }}}}"
"""
LATER = "2025-07-08T10:00:00+08:00"
MESSAGE_STATES = ["sent", "pending", "deferred", "failed", "skipped", "held_out"]


@pytest.fixture
def cli(engine: Engine, db_url: str, tmp_path: Path, monkeypatch) -> Cli:
    dataset.load(engine)
    config = email_outbox_config(tmp_path)
    (tmp_path / "campaign.yaml").write_text(CAMPAIGN, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    return Cli(db_url, config=str(config))


def as_json(cli: Cli, *args: str):
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def run(cli: Cli, at: str) -> dict:
    return as_json(cli, "run", "campaign.yaml", "--at", at)


def ledger_counts(engine: Engine, run_id: int) -> dict[str, int]:
    with engine.connect() as conn:
        states = conn.execute(select(Delivery.state).where(Delivery.run_pk == run_id)).scalars()
        counts = Counter(states)
    return {state: counts.get(state, 0) for state in MESSAGE_STATES}


def test_runs_newest_first_with_their_messages_by_state(cli: Cli, engine: Engine):
    first, second = run(cli, AT.isoformat()), run(cli, LATER)
    rows = as_json(cli, "runs")
    assert [r["id"] for r in rows] == [second["run_id"], first["run_id"]]  # newest scheduled time first
    for r, ran in zip(rows, (second, first), strict=True):
        assert set(r) == {"id", "campaign", "scheduled_at", "state", "audience", "messages"}
        assert (r["campaign"], r["state"], r["audience"]) == (NAME, ran["state"], ran["audience"])
        assert datetime.fromisoformat(r["scheduled_at"]) == datetime.fromisoformat(ran["at"])
        assert r["messages"] == ledger_counts(engine, r["id"])
        assert r["messages"]["sent"] == ran["outcomes"]["sent"] > 0
        assert r["messages"]["skipped"] == sum(ran["skipped"].values())
        assert r["messages"]["held_out"] > 0  # the control group's rows
    assert rows[0]["audience"] > 0


def test_filters_and_bad_options(cli: Cli, engine: Engine):
    first, second = run(cli, AT.isoformat()), run(cli, LATER)
    other = _insert_open_run(engine)
    assert [r["id"] for r in as_json(cli, "runs", "--limit", "1")] == [other]
    assert [r["id"] for r in as_json(cli, "runs", "--campaign", NAME)] == [second["run_id"], first["run_id"]]
    assert as_json(cli, "runs", "--campaign", "nope") == []
    assert [r["id"] for r in as_json(cli, "runs", "--state", "running")] == [other]
    assert {r["id"] for r in as_json(cli, "runs", "--state", "done")} == {first["run_id"], second["run_id"]}
    [opened] = as_json(cli, "runs", "--campaign", "opened-elsewhere")
    assert "audience" not in opened  # not recorded until planning finishes: left out rather than shown as 0
    assert opened["messages"] == {**dict.fromkeys(MESSAGE_STATES, 0), "pending": 2}
    for bad in (["--state", "lost"], ["--limit", "0"]):
        result = cli("runs", *bad)
        assert result.exit_code == 2 and "Invalid value" in result.output


def test_text_has_a_header_and_the_shop_zone(cli: Cli, engine: Engine):
    run(cli, AT.isoformat())
    _insert_open_run(engine)
    lines = cli("runs").stdout.splitlines()
    header = lines[0].split("\t")
    assert header == ["id", "campaign", "scheduled_at (Asia/Shanghai)", "state", "audience", *MESSAGE_STATES]
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    assert [r["campaign"] for r in rows] == ["opened-elsewhere", NAME]
    assert rows[1]["scheduled_at (Asia/Shanghai)"] == "2025-07-01T10:00:00+08:00"
    assert rows[0]["audience"] == "-" and rows[0]["pending"] == "2"
    assert int(rows[1]["sent"]) > 0 and int(rows[1]["audience"]) > 0
    assert cli("runs", "--campaign", "nope").stdout.splitlines() == [lines[0]]  # the header only


def _insert_open_run(engine: Engine) -> int:
    """A run another process has just opened: no summary yet, two messages pending."""
    now = datetime(2025, 8, 1, 2, 0, tzinfo=UTC)
    with engine.begin() as conn:
        campaign = conn.execute(
            insert(Campaign).values(name="opened-elsewhere", created_at=now, updated_at=now).returning(Campaign.id)
        ).scalar_one()
        run_id = conn.execute(
            insert(CampaignRun)
            .values(campaign_pk=campaign, scheduled_at=now, state="running", summary={})
            .returning(CampaignRun.id)
        ).scalar_one()
        conn.execute(
            insert(Delivery),
            [
                {"run_pk": run_id, "customer_pk": pk, "channel": "email", "state": "pending", "attempts": 0}
                | {"created_at": now, "updated_at": now}
                for pk in (1, 2)
            ],
        )
    return run_id


@pytest.mark.parametrize("json_flag", ["", " --json"], ids=["text", "json"])
def test_a_pipe_into_head(tmp_path: Path, json_flag: str):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    done = subprocess.run([ORCHESTRATOR, "--db", url, "init"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    start = datetime(2026, 1, 1, tzinfo=UTC)

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(insert(Campaign).values(id=1, name="pipe-check", created_at=start, updated_at=start))
        runs = [
            {"campaign_pk": 1, "scheduled_at": start + timedelta(hours=i), "state": "done", "summary": {"audience": i}}
            for i in range(5000)  # several hundred kB of listing: more than a pipe holds
        ]
        conn.execute(insert(CampaignRun), runs)
    engine.dispose()
    command = f'"{ORCHESTRATOR}" --db "{url}" runs{json_flag} | head -2; echo "status ${{PIPESTATUS[0]}}"'
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and lines[-1] == f"status {BROKEN_PIPE_STATUS}", done.stdout[-300:]
    assert done.stderr == ""
