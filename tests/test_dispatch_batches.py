"""A channel whose receiving end deduplicates by key (``Channel.idempotent_by_key``: file outboxes, providers
honouring ``Idempotency-Key``) has its sent results committed once per claimed batch, not once per message;
docs/guarantees.md, "Each result as it happens". Killed with SIGKILL at random moments mid-dispatch and run again,
nothing is lost and every delivery ends as exactly one file named by its key."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, func, select

from orchestrator.config import load_settings
from orchestrator.db.models import CampaignRun, Delivery, DeliveryPayload
from orchestrator.dispatch.dispatcher import Dispatcher
from orchestrator.ledger import delivery_key
from orchestrator.service import Orchestrator
from tests.clitools import Cli
from tests.test_dispatch import AT, write_world

CLAIMS = "  claim_size: 50\n  linger_seconds: 0\n"


def _planned(engine: Engine, db_url: str, tmp_path: Path, members: int) -> tuple[Orchestrator, int]:
    config, campaign = write_world(tmp_path, engine, members, None, CLAIMS)
    result = Cli(db_url, config=str(config))("run", str(campaign), "--at", AT, "--plan-only")
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        run_pk = conn.execute(select(CampaignRun.id)).scalar_one()
    return Orchestrator(load_settings(config), engine), run_pk


def _dispatch_counting_commits(engine: Engine, orch: Orchestrator, run_pk: int) -> int:
    commits = 0

    def count(_conn) -> None:
        nonlocal commits
        commits += 1

    event.listen(engine, "commit", count)
    try:
        dispatcher = Dispatcher(engine, orch.settings, orch.channel)
        report = dispatcher.drain(run_pk, linger=0)
        dispatcher.close()
    finally:
        event.remove(engine, "commit", count)
    assert report.outcomes == {"sent": 300}
    return commits


def _states(engine: Engine) -> tuple[Counter, int]:
    with engine.connect() as conn:
        states = Counter(conn.execute(select(Delivery.state)).scalars())
        payloads = conn.execute(select(func.count()).select_from(DeliveryPayload)).scalar_one()
    return states, payloads


def test_an_outbox_channel_commits_once_per_claim_not_per_message(engine: Engine, db_url: str, tmp_path: Path):
    orch, run_pk = _planned(engine, db_url, tmp_path, 300)
    assert orch.channel("webhook").idempotent_by_key  # its outbox file is named by the key
    commits = _dispatch_counting_commits(engine, orch, run_pk)
    assert commits < 40, commits  # 6 claims of 50: a few transactions each, not 300
    assert _states(engine) == (Counter(sent=300), 0)  # every row sent, every payload dropped
    assert len(list((tmp_path / "out").rglob("*.json"))) == 300


def test_a_channel_that_does_not_deduplicate_commits_each_result(
    engine: Engine, db_url: str, tmp_path: Path, monkeypatch
):
    orch, run_pk = _planned(engine, db_url, tmp_path, 300)
    monkeypatch.setattr(orch.channel("webhook"), "idempotent_by_key", False)  # as SMTP is
    assert _dispatch_counting_commits(engine, orch, run_pk) >= 300
    assert _states(engine) == (Counter(sent=300), 0)


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_kill_9_mid_dispatch_to_an_outbox_loses_nothing_and_writes_each_key_once(
    engine: Engine, db_url: str, tmp_path: Path
):
    members = 4000
    config, campaign = write_world(tmp_path, engine, members, None, "  claim_size: 200\n  linger_seconds: 0\n")
    outbox = tmp_path / "out"
    command = [sys.executable, "-c", "from orchestrator.cli import main; main()", "--config", str(config)]
    command += ["--db", db_url, "run", str(campaign), "--at", AT]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ORCHESTRATOR_CONFIG", None)
    rng = random.Random(1512)
    kills: list[int] = []
    for _ in range(3):
        target = len(list(outbox.rglob("*.json"))) + rng.randint(100, 700)  # mid-dispatch, at a random file
        child = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline:
            if len(list(outbox.rglob("*.json"))) >= target:
                break
            time.sleep(0.02)
        if child.poll() is not None:
            pytest.fail(f"the run ended before kill {len(kills) + 1}: {child.stderr.read().decode()}")
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stderr.close()
        kills.append(len(list(outbox.rglob("*.json"))))
    final = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr

    with engine.connect() as conn:
        run_pk = conn.execute(select(CampaignRun.id)).scalar_one()
        rows = conn.execute(select(Delivery.id, Delivery.state)).all()
    files = sorted(path.name for path in outbox.rglob("*.json"))
    assert kills[0] > 0 and kills[-1] < members, kills  # every kill fell while sending
    assert len(rows) == members and Counter(state for _, state in rows) == {"sent": members}
    assert files == sorted(f"{delivery_key(run_pk, pk)}.json" for pk, _ in rows)  # one file per key, none lost
    assert _states(engine)[1] == 0
