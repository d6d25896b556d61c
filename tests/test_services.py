"""The services the scale-out tests need answer (skipped locally, required in CI)."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

from tests.conftest import REDIS_URL, service_unavailable


def test_postgres_database_is_created_per_run(postgres_server_url):
    assert "/orch_test_" in postgres_server_url


def test_redis_answers_ping():
    if not REDIS_URL:
        service_unavailable("ORCHESTRATOR_TEST_REDIS_URL is not set")
    url = urlparse(REDIS_URL)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379), timeout=3) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        service_unavailable(f"Redis at {REDIS_URL} is unavailable: {exc}")
    assert reply == b"+PONG\r\n"
