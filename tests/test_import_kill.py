"""``kill -9`` during an import: the half-written reject file is private (0600) and the next import removes it.

The import is a real child process reading a large generated file; it is killed with SIGKILL as soon as its
temporary reject file holds rows. A second import of the same path then runs to the end.
"""

from __future__ import annotations

import csv
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.data.records import CUSTOMER_COLUMNS
from tests.test_import import CUSTOMER, customers_csv, import_json, rejects

ROWS = 60_000  # far more than the import gets through before it is killed
TIMEOUT = 120


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)


def _big_file(path: Path) -> Path:
    """Every tenth row is a reject (a bad e-mail), so the reject file fills from the first batch on."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CUSTOMER_COLUMNS)
        for i in range(ROWS):
            email = "not-an-address" if i % 10 == 0 else f"c{i}@example.com"
            writer.writerow([{**CUSTOMER, "customer_id": f"K{i}", "email": email}[c] for c in CUSTOMER_COLUMNS])
    return path


def _temp_rejects(folder: Path, stem: str) -> list[Path]:
    return sorted(folder.glob(f".{stem}.rejects.csv.*"))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_killed_import_leaves_a_private_temp_file_that_the_next_import_removes(run_cli, db_url, tmp_path):
    path = _big_file(tmp_path / "members.csv")
    command = [sys.executable, "-c", "from orchestrator.cli import main; main()", "--db", db_url]
    child = subprocess.Popen([*command, "import", "customers", str(path)], cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not any(p.stat().st_size > 4096 for p in _temp_rejects(tmp_path, "members")):
            assert child.poll() is None, "the import ended before it could be killed"
            assert time.monotonic() < deadline, "no temporary reject file appeared"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    (temp,) = _temp_rejects(tmp_path, "members")
    assert stat.S_IMODE(temp.stat().st_mode) == 0o600  # rejected rows (names, e-mails, phones) are not world-readable
    assert "not-an-address" in temp.read_text(encoding="utf-8")
    assert not (tmp_path / "members.rejects.csv").exists()

    # the next import of that file cleans up after the killed one
    customers_csv(path, {"customer_id": "C1"}, {"customer_id": "C2", "email": "bad"})
    data = import_json(run_cli, "customers", path)
    assert (data["loaded"], data["rejected"]) == (1, 1)
    assert _temp_rejects(tmp_path, "members") == []
    assert [row["customer_id"] for row in rejects(tmp_path / "members.rejects.csv")] == ["C2"]
    assert stat.S_IMODE(os.stat(tmp_path / "members.rejects.csv").st_mode) == 0o600


def test_a_running_import_keeps_its_temp_file(tmp_path):
    """Only the files of dead imports are stale: one still open by a live import (here, this process) stays."""
    from orchestrator.data.csvfile import SideFile

    live = SideFile(tmp_path / "x.rejects.csv", ["a"], bom=False, what="reject file")
    live.write(["1"])
    (temp,) = _temp_rejects(tmp_path, "x")
    SideFile(tmp_path / "x.rejects.csv", ["a"], bom=False, what="reject file")  # a second import starting
    assert temp.exists()
    live.write(["2"])
    assert live.commit() == str(tmp_path / "x.rejects.csv")
    assert (tmp_path / "x.rejects.csv").read_text().splitlines() == ["a", "1", "2"]
