"""Crash safety of a real run: ``kill -9`` at random moments, resume with the same ``--at``, count what arrived.

docs/guarantees.md, "Each result as it happens": a crash or ``kill -9`` at any moment followed by a restart
neither loses nor repeats a message. The run (20,000 e-mails over SMTP, batches of 200) is a child process killed
with SIGKILL at seeded random moments and restarted each time; a last run completes. The SMTP server is aiosmtpd
in a separate process (so the kills do not touch it) that appends every accepted message's Message-ID and
recipient to a file.

At the end every audience member has exactly one delivery row, all ``sent``; every Message-ID (derived from the
delivery's idempotency key) was received; none is lost. A message accepted by the server whose result was not yet
recorded when the process died is sent again on resume with the same Message-ID: that is the documented window.
Each result is committed as soon as the server answered, so the window is at most one message per kill; the test
counts the duplicates and holds them to that bound.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from orchestrator.config import Settings
from orchestrator.data.importing import import_customers
from orchestrator.data.records import CUSTOMER_COLUMNS
from orchestrator.db.models import CampaignRun, Customer, Delivery

MESSAGES = 20_000
BATCH_SIZE = 200
KILLS = 10
SEED = 20240917
FIXED_AT = "2025-06-01T10:00:00+08:00"
DOMAIN = "example.com"

SERVER = r"""
import sys, time
from email.parser import BytesParser
from aiosmtpd.controller import Controller

port, log_path = int(sys.argv[1]), sys.argv[2]
log = open(log_path, "a", encoding="utf-8")


class Handler:
    async def handle_DATA(self, server, session, envelope):
        message_id = BytesParser().parsebytes(envelope.content, headersonly=True)["Message-ID"]
        log.write(str(message_id).strip() + "\t" + ",".join(envelope.rcpt_tos) + "\n")
        log.flush()
        return "250 2.0.0 Ok: queued"


controller = Controller(Handler(), hostname="127.0.0.1", port=port)
controller.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"""

CAMPAIGN = """\
name: crash-test
segment: {consent_email: true}
message:
  email:
    subject: "Hello {{ customer.name }}"
    text: "Hello {{ customer.name }}, this is message for {{ customer.customer_id }}."
dispatch: {batch_size: %d}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(tmp_path: Path, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    script = tmp_path / "smtp_server.py"
    script.write_text(SERVER, encoding="utf-8")
    server = subprocess.Popen(
        [sys.executable, str(script), str(port), str(log)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert server.stdout.readline().strip() == b"ready"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise AssertionError("the SMTP server did not come up")


def write_customers(path: Path, count: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, CUSTOMER_COLUMNS, restval="")
        writer.writeheader()
        for i in range(1, count + 1):
            email = f"m{i:05d}@{DOMAIN}"
            signup = "2024-01-01T00:00:00+08:00"
            row = {"customer_id": f"M{i:05d}", "name": f"Member {i}", "email": email, "signup_at": signup}
            writer.writerow({**row, "email_opt_in": "true", "sms_opt_in": "false"})


def received(log: Path) -> list[tuple[str, str]]:
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return [tuple(line.split("\t", 1)) for line in lines]


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_kill_9_at_random_moments_neither_loses_nor_repeats(engine: Engine, db_url: str, tmp_path: Path):
    started = time.monotonic()
    base = tmp_path / "work"
    base.mkdir()
    customers_csv = base / "customers.csv"
    write_customers(customers_csv, MESSAGES)
    import_customers(engine, Settings(base_dir=str(base)), customers_csv)
    campaign = base / "campaign.yaml"
    campaign.write_text(CAMPAIGN % BATCH_SIZE, encoding="utf-8")
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
        command = [sys.executable, "-c", "from orchestrator.cli import main; main()", "--config", str(config)]
        command += ["--db", db_url, "run", str(campaign), "--at", FIXED_AT]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("ORCHESTRATOR_CONFIG", None)
        rng = random.Random(SEED)
        kills: list[tuple[float, int]] = []  # (delay after start, messages the server had received by then)
        for _ in range(KILLS):
            delay = rng.uniform(0.3, 3.0)
            child = subprocess.Popen(command, cwd=base, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(delay)
            if child.poll() is not None:  # finished (or failed) before the kill: nothing left to crash
                error = child.stderr.read().decode(errors="replace")
                pytest.fail(f"the run ended before kill {len(kills) + 1} (exit {child.returncode}): {error}")
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            child.stderr.close()
            kills.append((round(delay, 3), len(received(log))))
            print(f"kill {len(kills)} after {delay:.3f} s, server has {kills[-1][1]} messages")
        final_started = time.monotonic()
        final = subprocess.run(command, cwd=base, env=env, capture_output=True, text=True, timeout=600)
        assert final.returncode == 0, final.stderr + final.stdout
        final_seconds = time.monotonic() - final_started
    finally:
        server.kill()
        server.wait()
        server.stdout.close()

    with engine.connect() as conn:
        rows = conn.execute(
            select(Delivery.id, Delivery.state, Customer.email).join(Customer, Customer.id == Delivery.customer_pk)
        ).all()
        runs = conn.execute(select(func.count()).select_from(CampaignRun)).scalar_one()
    got = received(log)
    counts = Counter(message_id for message_id, _ in got)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    with engine.connect() as conn:
        run_pk = conn.execute(select(CampaignRun.id)).scalar_one()
    expected = {
        f"<{hashlib.sha256(f'run{run_pk}-d{row.id}'.encode()).hexdigest()[:32]}@{DOMAIN}>": row.email for row in rows
    }
    lost = len(set(expected) - set(counts))
    wall = time.monotonic() - started
    print(
        f"\n[{db_url.split(':')[0]}] messages={MESSAGES} kills={len(kills)} kill_times={[k[0] for k in kills]}"
        f" received={len(got)} distinct={len(counts)} duplicates={duplicates} lost={lost}"
        f" final_run={final_seconds:.1f}s wall={wall:.1f}s"
    )

    assert runs == 1
    assert len(rows) == MESSAGES and len({row.email for row in rows}) == MESSAGES  # one row per member
    assert Counter(row.state for row in rows) == {"sent": MESSAGES}
    assert set(counts) == set(expected) and lost == 0  # every message arrived, and nothing else did
    for message_id, recipient in got:
        assert recipient == expected[message_id]
    assert kills[-1][1] > 0, kills  # some kills fell while sending, not all during start-up
    assert duplicates <= len(kills), (duplicates, kills)  # at most the one message in flight per kill
