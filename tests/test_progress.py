"""Progress bars: ``run``, ``dispatch`` and a replay show them on a terminal (a real pseudo-terminal here), with
counts and rate; piped or with ``--json`` they print nothing extra."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.test_dispatch import AT, write_world

MEMBERS = 1500


def _command(config: Path, db_url: str) -> list[str]:
    return [sys.executable, "-c", "from orchestrator.cli import main; main()", "--config", str(config), "--db", db_url]


def _on_terminal(command: list[str], cwd: Path) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; everything it drew."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("ORCHESTRATOR_CONFIG", None)
    child = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return child.wait(timeout=120), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_run_and_dispatch_show_bars_on_a_terminal_only(engine: Engine, db_url: str, tmp_path: Path):
    config, campaign = write_world(tmp_path, engine, MEMBERS, None, "  linger_seconds: 0\n")
    with campaign.open("a", encoding="utf-8") as handle:  # the later runs reach the same members again
        handle.write("recontact: always\n")
    base = _command(config, db_url)

    status, drawn = _on_terminal([*base, "run", str(campaign), "--at", AT, "--plan-only"], tmp_path)
    assert status == 0, drawn
    assert "planning members" in drawn and f"/{MEMBERS}" in drawn and "/s" in drawn  # counts of the total, rate
    status, drawn = _on_terminal([*base, "dispatch"], tmp_path)
    assert status == 0, drawn
    assert "sending messages" in drawn

    env = {k: v for k, v in os.environ.items() if k != "ORCHESTRATOR_CONFIG"}
    piped = subprocess.run(
        [*base, "run", str(campaign), "--at", "2026-11-09T10:00:00+08:00"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.returncode == 0, piped.stderr
    assert "planning" not in piped.stderr and "sending" not in piped.stderr and "\x1b[" not in piped.stderr

    status, drawn = _on_terminal([*base, "run", str(campaign), "--at", "2026-11-16T10:00:00+08:00", "--json"], tmp_path)
    assert status == 0, drawn
    assert "planning" not in drawn and "sending" not in drawn
    assert json.loads(drawn[drawn.index("{") :])["messages"] == MEMBERS
