"""A database URL the orchestrator cannot use gets a message that says what to do, for how it was installed.

The installed-wheel half (no psycopg in a fresh virtualenv: the hint names the ``[postgres]`` extra of the
distribution) is in ``tests/test_wheel_install.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clitools import Cli

REPO = Path(__file__).resolve().parent.parent
WITHOUT_PSYCOPG = (
    "import sys; sys.modules['psycopg'] = None  # as if the [postgres] extra were not installed\n"
    "from orchestrator.cli import main; main()"
)


def test_a_checkout_without_psycopg_is_told_to_install_the_extra_from_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PSYCOPG, "--db", "postgresql://postgres@127.0.0.1:5432/test", "init"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "the driver for postgresql+psycopg is not installed (no module named 'psycopg')" in done.stderr
    assert f"hint: from this checkout: pip install -e '{REPO}[postgres]'" in done.stderr


@pytest.mark.parametrize(
    ("url", "backend"),
    [("mysql://shop@127.0.0.1/shop", "mysql"), ("mssql+pyodbc://shop@dsn", "mssql"), ("oracle://u@h/db", "oracle")],
)
def test_an_unsupported_database_is_an_input_error_without_the_postgres_hint(url, backend, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = Cli(url)("deliveries")
    assert result.exit_code == 2
    assert f"error: {backend!r} databases are not supported" in result.stderr
    assert "SQLite (sqlite:///orchestrator.db) and PostgreSQL" in result.stderr
    assert "[postgres]" not in result.stderr and "psycopg" not in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_an_unknown_postgres_driver_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = Cli("postgresql+nosuchdriver://u@127.0.0.1/db")("init")
    assert result.exit_code == 2
    assert "unknown database driver 'postgresql+nosuchdriver'" in result.stderr
