"""``orchestrator api-keys`` and ``orchestrator serve`` as a real process with two uvicorn workers, on SQLite and
PostgreSQL: the key is printed once and only its hash is stored; the service answers through either worker, logs
one masked JSON line per request (never the unsubscribe token), stops cleanly on SIGTERM, and refuses to start
on a database that is not migrated."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select

from orchestrator.db.models import ApiKey
from orchestrator.unsubscribe import sign
from tests.clitools import Cli
from tests.test_coupons_redeem import Shop

ORCHESTRATOR = shutil.which("orchestrator", path=str(Path(sys.executable).parent)) or "orchestrator"
KEY = ("test-signing-key-" + "0123456789" * 3).encode()


def test_api_keys_are_shown_once_and_stored_as_hashes(engine: Engine, run_cli: Cli):
    created = run_cli("api-keys", "create", "till-7", "--scope", "coupons:redeem")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("ok_") and len(key) > 40 and "shown only this once" in created.stderr
    with engine.connect() as conn:
        stored = conn.execute(select(ApiKey.key_hash, ApiKey.prefix, ApiKey.scopes)).one()
    assert key not in (stored.key_hash, stored.prefix) and stored.scopes == ["coupons:redeem"]
    listing = run_cli("api-keys", "list")
    assert "till-7" in listing.stdout and key not in listing.stdout and "active" in listing.stdout
    for args, message in (
        (("create", "till-7", "--scope", "coupons:redeem"), "exists"),
        (("create", "till-8", "--scope", "coupons:everything"), "not a scope"),
        (("create", "till-8"), "at least one --scope"),
        (("create", "till 8", "--scope", "coupons:check"), "not a key name"),
        (("revoke", "nobody"), "no API key"),
    ):
        refused = run_cli("api-keys", *args)
        assert refused.exit_code == 2 and message in refused.output, refused.output
    assert run_cli("api-keys", "revoke", "till-7").exit_code == 0
    data = json.loads(run_cli("api-keys", "list", "--json").stdout)
    assert data["api_keys"][0]["revoked_at"] is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}: {process.stderr.read()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("serve did not become healthy")


def test_serve_with_two_workers_answers_logs_and_stops_on_sigterm(
    engine: Engine, db_url: str, tmp_path: Path, monkeypatch
):
    shop = Shop(engine)
    shop.customers("C1")
    code = shop.coupon("C1")
    cli = Cli(db_url)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    key = cli("api-keys", "create", "till", "--scope", "coupons:redeem").stdout.strip()
    log = tmp_path / "serve.log"
    config = tmp_path / "orchestrator.yaml"
    config.write_text(
        f"serve:\n  log_file: {log}\n  limits: {{per_ip: {{per_second: 1000, burst: 1000}}}}\n", encoding="utf-8"
    )
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k not in ("ORCHESTRATOR_CONFIG",)}
    process = subprocess.Popen(
        [ORCHESTRATOR, "--config", str(config), "--db", db_url, "serve", "--port", str(port), "--workers", "2"],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        order = {"order_id": "P-1", "customer_id": "C1", "amount": "150", "ordered_at": "2025-07-02T12:30:00+08:00"}
        answer = httpx.post(f"{url}/api/coupons/{code}/redeem", json=order, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200 and answer.json()["status"] == "redeemed", answer.text
        token = sign(KEY, "C1", "email")
        assert httpx.get(f"{url}/u/{token}").status_code == 200
        with httpx.Client() as client:  # both workers answer
            assert all(client.get(f"{url}/healthz").status_code == 200 for _ in range(20))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, process.stderr.read()
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    requests = [line for line in lines if line["event"] == "request"]
    assert {(r["endpoint"], r["status"]) for r in requests} >= {("coupons_redeem", 200), ("unsubscribe", 200)}
    assert token not in log.read_text(encoding="utf-8") and key not in log.read_text(encoding="utf-8")
    assert "Traceback" not in process.stderr.read()


def test_serve_refuses_a_database_that_is_not_migrated(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = Cli(f"sqlite:///{tmp_path / 'missing.db'}")
    result = cli("serve", "--port", str(free_port()))
    assert result.exit_code == 1 and "does not exist" in result.output
    refused = cli("serve", "--port", "0")  # options are checked before the database
    assert refused.exit_code == 2 and "--port must be between" in refused.output


@pytest.mark.parametrize("args", [("--port", "70000"), ("--workers", "0")])
def test_serve_options_are_checked(run_cli: Cli, args):
    result = run_cli("serve", *args)
    assert result.exit_code == 2 and "must be between" in result.output
