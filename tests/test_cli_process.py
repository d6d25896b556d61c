"""The command line as a user's shell runs it: output piped into a reader that stops early, a database file that
does not exist yet. Real subprocesses and real pipes; the SQLite file is made by ``orchestrator init``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert

from orchestrator.db.models import Campaign, CampaignRun, Customer, Delivery
from tests.clitools import Cli

ORCHESTRATOR = shutil.which("orchestrator", path=str(Path(sys.executable).parent)) or "orchestrator"
ROWS = 3000  # about 300 kB of listing: far more than a pipe's buffer, so the writer meets the closed end
BROKEN_PIPE_STATUS = 141  # 128 + SIGPIPE, as a shell reports a writer stopped by a closed pipe


def orchestrator(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ORCHESTRATOR, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def ledger_db(tmp_path_factory) -> str:
    """An initialised SQLite database with a long delivery ledger."""
    folder = tmp_path_factory.mktemp("pipe")
    url = f"sqlite:///{folder / 'ledger.db'}"
    done = orchestrator("--db", url, "init", cwd=folder)
    assert done.returncode == 0, done.stderr
    now = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            insert(Customer),
            [{"id": i, "customer_id": f"C{i:07d}", "created_at": now, "updated_at": now} for i in range(1, ROWS + 1)],
        )
        conn.execute(insert(Campaign), [{"id": 1, "name": "pipe-check", "created_at": now, "updated_at": now}])
        conn.execute(insert(CampaignRun), [{"id": 1, "campaign_pk": 1, "scheduled_at": now, "state": "done"}])
        conn.execute(
            insert(Delivery),
            [
                {
                    "run_pk": 1,
                    "customer_pk": i,
                    "channel": "email",
                    "step": "main",
                    "state": "sent",
                    "contact": f"member{i}@example.com",
                    "attempts": 1,
                    "sent_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(1, ROWS + 1)
            ],
        )
    engine.dispose()
    return url


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["text", "json"])
def test_a_reader_that_stops_early_ends_the_command_quietly(ledger_db: str, tmp_path: Path, json_flag) -> None:
    process = subprocess.Popen(
        [ORCHESTRATOR, "--db", ledger_db, "deliveries", *json_flag],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()  # as `| head -1` does: read a line, then close the pipe
    process.stdout.close()
    status = process.wait(timeout=120)
    errors = process.stderr.read().decode()
    process.stderr.close()
    assert first.strip()
    assert errors == ""  # no traceback, no "error: BrokenPipeError", no "Exception ignored"
    assert status == BROKEN_PIPE_STATUS


def test_a_shell_pipe_into_head(ledger_db: str, tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", f'"{ORCHESTRATOR}" --db "{ledger_db}" deliveries | head -3; echo "status ${{PIPESTATUS[0]}}"'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 4 and lines[-1] == f"status {BROKEN_PIPE_STATUS}"
    assert done.stderr == ""


MISSING_DB_COMMANDS = [
    ["deliveries"],
    ["deliveries", "--json"],
    ["analyze"],
    ["coupons", "show", "QDFG-7J4Q-E629"],
    ["suppress", "list"],
    ["dispatch"],
    ["demo-data", "--preset", "seed-shop"],
]


@pytest.mark.parametrize("args", MISSING_DB_COMMANDS, ids=lambda a: " ".join(a))
def test_a_missing_database_file_is_not_created(tmp_path: Path, monkeypatch, args) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    missing = tmp_path / "data" / "shop.db"
    result = Cli(f"sqlite:///{missing}")(*args)
    assert result.exit_code == 1, result.output
    assert str(missing) in result.stderr
    assert "orchestrator init" in result.stderr
    assert not missing.exists() and not missing.parent.exists()


def test_init_then_the_same_command_works(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'shop.db'}"
    refused = orchestrator("--db", url, "deliveries", cwd=tmp_path)
    assert refused.returncode == 1 and "orchestrator init" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "new").exists()
    assert orchestrator("--db", url, "init", cwd=tmp_path).returncode == 0
    listed = orchestrator("--db", url, "deliveries", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert (tmp_path / "new" / "shop.db").stat().st_size > 0
