"""Crash safety of follow-ups: ``orchestrator dispatch`` killed with SIGKILL while it plans and sends a follow-up,
restarted each time; a last one completes. Every other kill falls at a seeded random moment (mostly while the
follow-up is planned), the others once a seeded random number of further messages has arrived (while sending).

Every member the run reached gets exactly one follow-up delivery row, ``sent``; every follow-up message (its
Message-ID derived from the delivery's idempotency key) arrived, and a message sent again on restart is one whose
result was not yet recorded when its process died: at most one per kill, as for a run's own messages
(tests/test_crash.py, docs/guarantees.md).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from orchestrator.config import Settings
from orchestrator.data.importing import import_customers
from orchestrator.db.models import CampaignRun, Customer, Delivery
from tests.test_crash import DOMAIN, received, start_server, write_customers

MEMBERS = 3_000
KILLS = 6
SEED = 20261207
RUN_AT = "2025-06-02T10:00:00+08:00"
DUE = "2025-06-05T10:00:00+08:00"
CAMPAIGN = """\
name: crash-follow-up
segment: {consent_email: true}
message:
  email: {subject: "Hello {{ customer.name }}", text: "Hello {{ customer.name }}"}
dispatch: {batch_size: 200}
follow_ups:
  - name: nudge
    after: 3d
    message:
      email: {subject: "Still there, {{ customer.name }}?", text: "A nudge for {{ customer.customer_id }}"}
"""


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_dispatch_killed_during_a_follow_up_sends_it_once(engine: Engine, db_url: str, tmp_path: Path):
    rng = random.Random(SEED)
    base = tmp_path / "work"
    base.mkdir()
    customers_csv = base / "customers.csv"
    write_customers(customers_csv, MEMBERS)
    import_customers(engine, Settings(base_dir=str(base)), customers_csv)
    campaign = base / "campaign.yaml"
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    log = tmp_path / "received.tsv"
    server, port = start_server(tmp_path, log)
    try:
        config = base / "orchestrator.yaml"
        config.write_text(
            "timezone: Asia/Shanghai\ntemplates: []\nunsubscribe_url: https://shop.example.com/unsubscribe\n"
            "channels:\n  email:\n    from: Shop <shop@example.com>\n"
            f"    smtp:\n      host: 127.0.0.1\n      port: {port}\n      security: none\n      timeout: 10\n",
            encoding="utf-8",
        )
        cli = [sys.executable, "-c", "from orchestrator.cli import main; main()", "--config", str(config)]
        cli += ["--db", db_url]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("ORCHESTRATOR_CONFIG", None)
        first = subprocess.run([*cli, "run", str(campaign), "--at", RUN_AT], cwd=base, env=env, capture_output=True)
        assert first.returncode == 0, first.stderr
        assert len(received(log)) == MEMBERS
        dispatch = [*cli, "dispatch", "--at", DUE]
        kills: list[tuple[float, int]] = []
        for k in range(KILLS):
            child = subprocess.Popen(dispatch, cwd=base, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            began = time.monotonic()
            if k % 2 == 0:  # at a random moment, mostly while the follow-up is being planned
                time.sleep(rng.uniform(0.3, 2.0))
            else:  # once a random number more follow-up messages arrived: while sending, on any engine's speed
                target = len(received(log)) + rng.randint(1, 400)
                while len(received(log)) < target and child.poll() is None and time.monotonic() - began < 60:
                    time.sleep(0.01)
            delay = time.monotonic() - began
            if child.poll() is not None:
                error = child.stderr.read().decode(errors="replace")
                pytest.fail(f"dispatch ended before kill {len(kills) + 1} (exit {child.returncode}): {error}")
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            child.stderr.close()
            kills.append((round(delay, 3), len(received(log)) - MEMBERS))
        final = subprocess.run(dispatch, cwd=base, env=env, capture_output=True, text=True, timeout=600)
        assert final.returncode == 0, final.stderr + final.stdout
    finally:
        server.kill()
        server.wait()
        server.stdout.close()

    with engine.connect() as conn:
        rows = conn.execute(
            select(Delivery.id, Delivery.state, Customer.email)
            .join(Customer, Customer.id == Delivery.customer_pk)
            .where(Delivery.follow_up == "nudge")
        ).all()
        run_pk = conn.execute(select(CampaignRun.id)).scalar_one()
        state = conn.execute(select(CampaignRun.state)).scalar_one()
    expected = {
        f"<{hashlib.sha256(f'run{run_pk}-d{row.id}'.encode()).hexdigest()[:32]}@{DOMAIN}>": row.email for row in rows
    }
    got = [(message_id, to) for message_id, to in received(log) if message_id in expected]
    counts = Counter(message_id for message_id, _ in got)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    print(f"\n[{db_url.split(':')[0]}] kills={kills} received={len(got)} duplicates={duplicates}")

    assert len(rows) == MEMBERS and len({row.email for row in rows}) == MEMBERS  # one follow-up row per member
    assert Counter(row.state for row in rows) == {"sent": MEMBERS} and state == "done"
    assert set(counts) == set(expected)  # every follow-up arrived
    assert all(to == expected[message_id] for message_id, to in got)
    assert any(k[1] > 0 for k in kills), kills  # some kills fell while sending
    assert duplicates <= len(kills), (duplicates, kills)
