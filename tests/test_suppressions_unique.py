"""One suppression entry per target and channel, on SQLite and PostgreSQL: concurrent ``suppress add`` / ``suppress
import`` processes store one row, the database refuses a duplicate, and migration 0005 merges the duplicates an
earlier version could leave."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from orchestrator.db.engine import alembic_config, create_db_engine, migrate
from orchestrator.db.models import Customer, Suppression
from orchestrator.timeutil import utcnow
from tests import dataset
from tests.conftest import _truncate_postgres

PROCESSES = 4


def _orchestrator(db_url: str, config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "orchestrator"), "--config", str(config), "--db", db_url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "orchestrator.yaml"
    path.write_text("timezone: Asia/Shanghai\ntemplates: []\n", encoding="utf-8")
    return path


@pytest.fixture
def postgres_url(request) -> str:
    url = request.getfixturevalue("_postgres_migrated")
    _truncate_postgres(url)
    return url


def test_concurrent_adds_on_postgresql_store_one_entry(postgres_url: str, config: Path):
    """Every process has looked for the entry and found none before any of them inserts: the test holds a lock
    that lets them read but not insert until all of them wait on it."""
    engine = create_db_engine(postgres_url)
    try:
        keys = dataset.load(engine)
        targets = [("--email", "Same.Person@Example.com"), ("--customer", "C01")]
        with engine.connect() as holder:
            holder.execute(text("LOCK TABLE suppressions IN SHARE MODE"))  # SELECT passes, INSERT waits
            procs = [
                _orchestrator(postgres_url, config, "suppress", "add", *targets[i % 2], "--channel", "sms", "--json")
                for i in range(PROCESSES)
            ]
            waiting_query = text(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'suppressions'::regclass"
            )
            deadline = time.monotonic() + 120
            with engine.connect() as watcher:
                while watcher.execute(waiting_query).scalar_one() < PROCESSES:
                    assert time.monotonic() < deadline, [p.poll() for p in procs]
                    assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                    watcher.rollback()
                    time.sleep(0.2)
            holder.commit()
        results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
        assert all(code == 0 for code, _, _ in results), results
        added = [json.loads(out)["added"] for _, out, _ in results]
        assert added.count(True) == 2  # one per target, whoever came first
        with engine.connect() as conn:
            rows = conn.execute(select(Suppression.customer_pk, Suppression.address, Suppression.channel)).all()
        assert sorted(rows, key=str) == sorted(
            [(None, "same.person@example.com", "sms"), (keys["C01"], None, "sms")], key=str
        )
    finally:
        engine.dispose()


def test_concurrent_imports_of_one_file_store_each_entry_once(db_url: str, engine, config: Path, tmp_path: Path):
    dataset.load(engine)
    rows = [f"person{n}@example.com,email,unsubscribed" for n in range(300)]
    source = tmp_path / "suppressions.csv"
    source.write_text("email,channel,reason\n" + "\n".join(rows) + "\n", encoding="utf-8")
    procs = [_orchestrator(db_url, config, "suppress", "import", str(source), "--json") for _ in range(PROCESSES)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert all(code == 0 for code, _, _ in results), results
    with engine.connect() as conn:
        count = conn.execute(select(Suppression.id)).all()
    assert len(count) == len(rows)


def test_the_database_refuses_a_duplicate_entry(engine):
    keys = dataset.load(engine)
    now = utcnow()
    for values in (
        {"customer_pk": keys["C01"], "address": None, "channel": None},
        {"customer_pk": None, "address": "a@example.com", "channel": "email"},
    ):
        with engine.begin() as conn:
            conn.execute(insert(Suppression).values(**values, reason="do_not_contact", created_at=now))
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert(Suppression).values(**values, reason="bounced", created_at=now))


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path: Path):
    """An empty database (not migrated), to migrate step by step."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    server = make_url(request.getfixturevalue("postgres_server_url"))
    name = f"orch_mig_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_migration_0005_merges_duplicates_keeping_the_oldest(fresh_url: str):
    engine = create_db_engine(fresh_url)
    try:
        command.upgrade(alembic_config(engine), "0004")
        keys = dataset.load(engine)
        t0 = utcnow() - timedelta(days=3)
        rows = [
            # (customer_pk, address, channel, reason, age in hours): the first of each group is the oldest
            (keys["C01"], None, None, "do_not_contact", 0),
            (keys["C01"], None, None, "complained", 5),
            (keys["C01"], None, "all", "unsubscribed", 6),  # "all" stored as text by unsubscribe links: all channels
            (keys["C01"], None, "email", "bounced", 1),
            (None, "x@example.com", "sms", "unsubscribed", 2),
            (None, "x@example.com", "sms", "do_not_contact", 3),
            (None, "x@example.com", "sms", "do_not_contact", 4),
            (keys["C02"], None, "all", "unsubscribed", 7),
        ]
        with engine.begin() as conn:
            for pk, address, channel, reason, hours in rows:
                conn.execute(
                    insert(Suppression).values(
                        customer_pk=pk,
                        address=address,
                        channel=channel,
                        reason=reason,
                        created_at=t0 + timedelta(hours=hours),
                    )
                )
        migrate(engine)
        with engine.connect() as conn:
            kept = conn.execute(
                select(Customer.customer_id, Suppression.address, Suppression.channel, Suppression.reason)
                .outerjoin(Customer, Customer.id == Suppression.customer_pk)
                .order_by(Suppression.id)
            ).all()
        assert kept == [
            ("C01", None, None, "do_not_contact"),
            ("C01", None, "email", "bounced"),
            (None, "x@example.com", "sms", "unsubscribed"),
            ("C02", None, None, "unsubscribed"),
        ]
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(
                insert(Suppression).values(
                    customer_pk=None, address="x@example.com", channel="sms", reason="bounced", created_at=t0
                )
            )
        command.downgrade(alembic_config(engine), "0004")
        migrate(engine)
    finally:
        engine.dispose()
