"""Shared fixtures: every storage test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``ORCHESTRATOR_TEST_POSTGRES_URL`` (a server URL; the suite creates its own database and
drops it at the end). Without it the PostgreSQL half is skipped, unless ``ORCHESTRATOR_REQUIRE_SERVICES=1``,
under which a missing service fails the run. Redis (``ORCHESTRATOR_TEST_REDIS_URL``) is required the same way,
but only by a test that asks for the ``redis_url`` fixture (the Celery executor's tests, where it is the broker).
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from orchestrator.db.engine import create_db_engine, migrate
from orchestrator.db.models import Base
from tests.clitools import Cli

POSTGRES_URL = os.environ.get("ORCHESTRATOR_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("ORCHESTRATOR_TEST_REDIS_URL")
REQUIRE_SERVICES = os.environ.get("ORCHESTRATOR_REQUIRE_SERVICES") == "1"


def service_unavailable(message: str):
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (ORCHESTRATOR_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _signing_key(monkeypatch) -> None:
    """Runs sign unsubscribe links and refuse to start without a key (``orchestrator init`` creates it); tests
    get one from the environment. Tests of the key itself remove it."""
    monkeypatch.setenv("ORCHESTRATOR_SECRET_KEY", "test-signing-key-" + "0123456789" * 3)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    if not POSTGRES_URL:
        service_unavailable("ORCHESTRATOR_TEST_POSTGRES_URL is not set")
    server = make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
    name = f"orch_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        service_unavailable(f"PostgreSQL at {server.render_as_string(hide_password=True)} is unavailable: {exc}")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis server that answers PING; a test using it makes Redis a required service under
    ``ORCHESTRATOR_REQUIRE_SERVICES=1``."""
    if not REDIS_URL:
        service_unavailable("ORCHESTRATOR_TEST_REDIS_URL is not set")
    url = urlparse(REDIS_URL)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379), timeout=3) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        service_unavailable(f"Redis at {REDIS_URL} is unavailable: {exc}")
    if reply != b"+PONG\r\n":
        service_unavailable(f"Redis at {REDIS_URL} answered PING with {reply!r}")
    return REDIS_URL


@pytest.fixture(scope="session")
def _postgres_migrated(postgres_server_url: str) -> str:
    engine = create_db_engine(postgres_server_url)
    migrate(engine)
    engine.dispose()
    return postgres_server_url


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = create_db_engine(f"sqlite:///{path}")
    migrate(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


def _truncate_postgres(url: str) -> None:
    engine = create_db_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> str:
    """A migrated, empty database on each engine."""
    if request.param == "sqlite":
        path = tmp_path / "orchestrator.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("_postgres_migrated")
    _truncate_postgres(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def run_cli(db_url: str, tmp_path: Path, monkeypatch) -> Cli:
    """The CLI against ``db_url``, run from an empty working directory so no stray config is picked up."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    return Cli(db_url)
