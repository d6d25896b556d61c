"""The Celery executor (docs/deployment.md) against real services: Redis as the broker (RabbitMQ in one smoke test),
a PostgreSQL database per test, and ``orchestrator worker`` processes started by the test.

- a run under Celery gives the same JSON summary, the same delivery rows and the same messages as in-process;
- a scheduler replay (cron and birthday ticks, the latter narrowed to each day's members) does too;
- workers SIGKILLed mid-dispatch at seeded random moments, a new one each time: nothing lost, duplicates within
  the bound of docs/guarantees.md (one claimed batch per killed pool process, on a channel deduplicating by key);
- a worker SIGKILLed while planning: its partitions are planned again, every member decided once;
- Celery is refused on SQLite, without a broker, and ``worker`` without ``executor: {kind: celery}`` (exit 2).
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from orchestrator.db.engine import create_db_engine
from orchestrator.db.models import Customer, Delivery
from tests import dataset
from tests.celery_workers import Broker, Worker, redis_broker, workers
from tests.clitools import Cli
from tests.conftest import _truncate_postgres, service_unavailable
from tests.httpserver import Request, Response, serve
from tests.members import import_members

AT = "2026-11-02T10:00:00+08:00"
CAMPAIGN = """\
name: celery-check
segment: {frequency: {gte: 0}}
control_group: 10
message:
  webhook:
    event: hello
    payload: {name: "{{ customer.name }}", id: "{{ customer.customer_id }}"}
dispatch: {batch_size: 25}
"""
DISPATCH = "dispatch:\n  claim_size: 10\n  linger_seconds: 0\n"


@pytest.fixture
def pg_url(request) -> str:
    """An empty migrated PostgreSQL database (Celery workers share it; SQLite is refused)."""
    url = request.getfixturevalue("_postgres_migrated")
    _truncate_postgres(url)
    return url


@pytest.fixture
def pg_engine(pg_url: str):
    engine = create_db_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def broker(redis_url: str):
    with redis_broker(redis_url) as broker:
        yield broker


@pytest.fixture(autouse=True)
def _no_stray_config(monkeypatch) -> None:
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)


def write_members(folder: Path, engine: Engine, members: int) -> None:
    import_members(folder, engine, members, email_opt_in=lambda i: i % 7 != 0)  # every 7th skipped: no consent


def write_config(folder: Path, webhook: str, extra: str = "") -> Path:
    config = folder / "orchestrator.yaml"
    config.write_text(
        "timezone: Asia/Shanghai\ntemplates: []\nchannels:\n  webhook:\n    consent: email\n"
        + webhook
        + DISPATCH
        + extra,
        encoding="utf-8",
    )
    (folder / "campaign.yaml").write_text(CAMPAIGN, encoding="utf-8")
    return config


def ledger_rows(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Customer.customer_id, Delivery.channel, Delivery.step, Delivery.state, Delivery.reason, Delivery.run_pk
            )
            .join(Customer, Customer.id == Delivery.customer_pk)
            .order_by(Customer.customer_id, Delivery.channel, Delivery.run_pk)
        ).all()
    return [tuple(row) for row in rows]


def outbox_bodies(folder: Path) -> dict[str, dict]:
    """The webhook outbox by member, without the idempotency key (it names delivery ids, numbered per database)."""
    bodies = {}
    for path in folder.glob("*.json"):
        body = json.loads(path.read_text(encoding="utf-8"))
        body.pop("idempotency_key")
        bodies[body["customer_id"]] = body
    return bodies


def test_a_run_under_celery_matches_the_same_run_in_process(pg_url, pg_engine, broker: Broker, tmp_path: Path):
    inline, celery = tmp_path / "in_process", tmp_path / "celery"
    inline.mkdir()
    celery.mkdir()
    write_members(inline, pg_engine, 130)
    config = write_config(inline, "    outbox: out\n")
    expected = Cli(pg_url, config=str(config))("run", str(inline / "campaign.yaml"), "--at", AT, "--json")
    assert expected.exit_code == 0, expected.output
    expected_rows, expected_out = ledger_rows(pg_engine), outbox_bodies(inline / "out")

    _truncate_postgres(pg_url)
    write_members(celery, pg_engine, 130)
    config = write_config(celery, "    outbox: out\n", broker.executor_yaml(partition_size=40))  # 4 partitions
    with workers(config, pg_url, celery, count=2) as started:
        got = Cli(pg_url, config=str(config))("run", str(celery / "campaign.yaml"), "--at", AT, "--json")
    assert got.exit_code == 0, got.output

    summary = json.loads(got.stdout)
    assert summary == json.loads(expected.stdout)
    assert summary["outcomes"] == {"sent": summary["messages"]} and summary["state"] == "done"
    assert summary["skipped"]["no_consent"] == 18 and summary["control"] > 0  # the summary has something to compare
    assert ledger_rows(pg_engine) == expected_rows
    assert outbox_bodies(celery / "out") == expected_out and len(expected_out) == summary["messages"]
    logs = "".join(w.output() for w in started)
    assert logs.count("orchestrator.plan_partition[") >= 2 * 4  # received and succeeded, four partitions
    assert "@example.com" not in logs  # no address crosses the broker or reaches the worker log


WEEKLY = """\
name: weekly-buyers
schedule: {cron: "0 10 * * MON", timezone: Asia/Shanghai}
segment: {frequency: {gte: 1}}
message:
  email: {subject: "Hi {{ customer.name }}", text: "Hello"}
"""
BIRTHDAY = """\
name: birthday-today
schedule: {relative_to: birthday, days_before: 0, time: "09:00", timezone: Asia/Shanghai}
segment: {frequency: {gte: 0}}
message:
  email: {subject: "Happy birthday", text: "Happy birthday {{ customer.name }}"}
"""


def _shop(folder: Path, extra: str = "") -> Path:
    (folder / "campaigns").mkdir()
    (folder / "campaigns" / "weekly.yaml").write_text(WEEKLY, encoding="utf-8")
    (folder / "campaigns" / "birthday.yaml").write_text(BIRTHDAY, encoding="utf-8")
    config = folder / "orchestrator.yaml"
    config.write_text(
        "timezone: Asia/Shanghai\ntemplates: []\ncampaigns: campaigns\nchannels:\n  email:\n"
        "    from: Shop <shop@example.com>\n    outbox: outbox\ndispatch:\n  linger_seconds: 0\n" + extra,
        encoding="utf-8",
    )
    return config


def _replay(pg_url: str, config: Path) -> list[dict]:
    result = Cli(pg_url, config=str(config))("scheduler", "--from", "2025-06-25", "--until", "2025-07-08", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["ticks"]


def test_a_scheduler_replay_under_celery_fires_the_same_ticks(pg_url, pg_engine, broker: Broker, tmp_path: Path):
    inline, celery = tmp_path / "in_process", tmp_path / "celery"
    inline.mkdir()
    celery.mkdir()
    dataset.load(pg_engine)
    expected = _replay(pg_url, _shop(inline))
    expected_rows = ledger_rows(pg_engine)

    _truncate_postgres(pg_url)
    dataset.load(pg_engine)
    config = _shop(celery, broker.executor_yaml(partition_size=3))
    with workers(config, pg_url, celery, count=1):
        got = _replay(pg_url, config)

    assert got == expected
    assert {row["campaign"] for row in got} == {"weekly-buyers", "birthday-today"}  # both kinds of tick fired
    assert all(row["state"] == "done" for row in got)
    assert ledger_rows(pg_engine) == expected_rows
    sent = [row for row in expected_rows if row[3] == "sent"]
    assert len(list((celery / "outbox").iterdir())) == len(list((inline / "outbox").iterdir())) == len(sent)


class SlowSink:
    """A provider taking 20 ms per call that records each request's Idempotency-Key."""

    def __init__(self):
        self.keys: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Response:
        time.sleep(0.02)
        with self._lock:
            self.keys.append(request.headers["idempotency-key"])
        return Response.json({"id": request.headers["idempotency-key"]})


KILLS = 3
SEED = 20261207


def test_workers_killed_mid_dispatch_lose_nothing(pg_url, pg_engine, broker: Broker, tmp_path: Path):
    """test_crash.py with Celery workers: a worker is SIGKILLed (with its pool processes) at seeded random moments
    while sending, a new one started each time; then every message has arrived, and the duplicates stay within
    the bound: one claimed batch per killed pool process on a channel deduplicating by key."""
    members, claim_size, concurrency = 700, 10, 2
    write_members(tmp_path, pg_engine, members)
    sink = SlowSink()
    rng = random.Random(SEED)
    with serve(sink) as server:
        config = write_config(tmp_path, f"    url: {server.url}/hook\n    timeout: 5\n", broker.executor_yaml())
        started = [Worker(config, pg_url, tmp_path / "worker-0.log", concurrency=concurrency).wait_ready()]
        command = [sys.executable, "-c", "from orchestrator.cli import main; main()", "--config", str(config)]
        command += ["--db", pg_url, "run", str(tmp_path / "campaign.yaml"), "--at", AT, "--json"]
        coordinator = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        kills: list[int] = []  # requests the sink had received at each kill
        try:
            for kill in range(KILLS):
                threshold = len(sink.keys) + rng.randint(20, 120)
                deadline = time.monotonic() + 60
                while len(sink.keys) < threshold and time.monotonic() < deadline:
                    time.sleep(0.005)
                assert len(sink.keys) >= threshold, started[-1].output()
                started[-1].kill()  # mid-dispatch: the worker and its pool processes, at once
                kills.append(len(sink.keys))
                log = tmp_path / f"worker-{kill + 1}.log"
                started.append(Worker(config, pg_url, log, concurrency=concurrency).wait_ready())
            out, err = coordinator.communicate(timeout=180)
        finally:
            if coordinator.poll() is None:
                coordinator.kill()
                coordinator.wait()
            for worker in started:
                worker.stop()
    assert coordinator.returncode == 0, err.decode()
    summary = json.loads(out)

    rows = ledger_rows(pg_engine)
    to_send = [row for row in rows if row[3] not in ("skipped", "held_out")]
    assert Counter(row[3] for row in to_send) == {"sent": len(to_send)}
    with pg_engine.connect() as conn:
        ids = conn.execute(select(Delivery.run_pk, Delivery.id).where(Delivery.state == "sent")).all()
    expected = {f"run{run}-d{delivery}" for run, delivery in ids}
    counts = Counter(sink.keys)
    lost = expected - set(counts)
    duplicates = sum(n - 1 for n in counts.values())
    print(
        f"\nmembers={members} messages={len(expected)} kills={len(kills)} received_at_kills={kills}"
        f" requests={len(sink.keys)} duplicates={duplicates} lost={len(lost)}"
    )
    assert kills[-1] < len(expected)  # every kill fell while sending
    assert not lost and set(counts) == expected
    assert duplicates <= KILLS * concurrency * claim_size  # at most one claimed batch per killed pool process
    assert summary["outcomes"]["sent"] == len(expected) and summary["state"] == "done"


def test_a_worker_killed_while_planning_is_replaced_and_nothing_is_decided_twice(
    pg_url, pg_engine, broker: Broker, tmp_path: Path
):
    """The partition a vanished worker had started is planned again at once (the broker alone would wait for its
    visibility timeout); the second planning counts what the first wrote, so every member has one decision."""
    members = 3000
    write_members(tmp_path, pg_engine, members)
    config = write_config(tmp_path, "    outbox: out\n", broker.executor_yaml(partition_size=members // 2))
    first = Worker(config, pg_url, tmp_path / "worker-killed.log").wait_ready()
    command = [sys.executable, "-c", "from orchestrator.cli import main; main()", "--config", str(config)]
    command += ["--db", pg_url, "run", str(tmp_path / "campaign.yaml"), "--at", AT, "--json"]
    coordinator = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second = None
    try:
        deadline = time.monotonic() + 60
        while "plan_partition" not in first.output() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        first.kill()
        assert "succeeded" not in first.output()  # killed while both partitions were being planned
        second = Worker(config, pg_url, tmp_path / "worker-new.log").wait_ready()
        out, err = coordinator.communicate(timeout=120)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
            coordinator.wait()
        first.stop()
        if second is not None:
            second.stop()
    assert coordinator.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["audience"] == members and summary["state"] == "done"
    assert summary["control"] + sum(summary["skipped"].values()) + summary["messages"] == members
    rows = ledger_rows(pg_engine)
    assert len(rows) == len({row[0] for row in rows}) == members  # one decision per member, none twice
    assert summary["outcomes"] == {"sent": summary["messages"]}
    assert len(list((tmp_path / "out").glob("*.json"))) == summary["messages"]


def _rabbitmq_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=3).close()
        return True
    except OSError:
        return False


def test_rabbitmq_as_the_broker(pg_url, pg_engine, tmp_path: Path):
    if not _rabbitmq_up():
        service_unavailable("RabbitMQ on 127.0.0.1:5672 is unavailable")
    from kombu import Connection

    broker = Broker("amqp://guest:guest@127.0.0.1:5672//", f"orch-test-{uuid.uuid4().hex[:10]}", None)
    write_members(tmp_path, pg_engine, 30)
    config = write_config(tmp_path, "    outbox: out\n", broker.executor_yaml(partition_size=10))
    try:
        with workers(config, pg_url, tmp_path, count=1, concurrency=1):
            got = Cli(pg_url, config=str(config))("run", str(tmp_path / "campaign.yaml"), "--at", AT, "--json")
    finally:
        with Connection(broker.url) as conn:
            conn.default_channel.queue_delete(broker.queue)
    assert got.exit_code == 0, got.output
    summary = json.loads(got.stdout)
    assert summary["audience"] == 30 and summary["state"] == "done"
    assert summary["outcomes"] == {"sent": summary["messages"]} and len(list((tmp_path / "out").glob("*.json"))) > 0


def test_celery_is_refused_where_it_cannot_work(tmp_path: Path):
    members = tmp_path / "db.sqlite"
    engine = create_db_engine(f"sqlite:///{members}")
    from orchestrator.db.engine import migrate

    migrate(engine)
    write_members(tmp_path, engine, 5)
    executor = "executor:\n  kind: celery\n  broker: redis://127.0.0.1:6379/0\n"
    config = write_config(tmp_path, "    outbox: out\n", executor)
    cli = Cli(f"sqlite:///{members}", config=str(config))
    refused = cli("run", str(tmp_path / "campaign.yaml"), "--at", AT)
    assert refused.exit_code == 2 and "needs a PostgreSQL database" in refused.stderr
    with engine.connect() as conn:
        assert conn.execute(select(Delivery.id)).first() is None  # nothing written
    worker = cli("worker")
    assert worker.exit_code == 2 and "needs a PostgreSQL database" in worker.stderr
    for queues in (",,", "a b", "a,,b", " a"):
        worker = cli("worker", "--queues", queues)
        assert worker.exit_code == 2 and "queue names" in worker.stderr, (queues, worker.output)

    no_broker = write_config(tmp_path, "    outbox: out\n", "executor: {kind: celery}\n")
    refused = Cli(f"sqlite:///{members}", config=str(no_broker))("run", str(tmp_path / "campaign.yaml"))
    assert refused.exit_code == 2 and "needs a broker" in refused.stderr
    bad_timeout = "executor:\n  kind: celery\n  broker: redis://x\n  visibility_timeout_seconds: 10\n"
    refused = Cli(f"sqlite:///{members}", config=str(write_config(tmp_path, "    outbox: out\n", bad_timeout)))("runs")
    assert refused.exit_code == 2 and "visibility_timeout_seconds" in refused.stderr
    in_process = write_config(tmp_path, "    outbox: out\n")
    worker = Cli(f"sqlite:///{members}", config=str(in_process))("worker")
    assert worker.exit_code == 2 and "kind: celery" in worker.stderr, worker.output
    engine.dispose()
    assert not (tmp_path / "out").exists()


CALLS = """\
name: vip-calls
segment: {frequency: {gte: 0}}
message:
  call_list: {queue: vip, script: "{{ customer.name }}"}
dispatch: {batch_size: 25}
"""


def test_a_call_list_workbook_is_complete_when_the_run_ends_under_celery(
    pg_url, pg_engine, broker: Broker, tmp_path: Path
):
    """A channel finishes its files when it is closed (a call list's workbook); a worker lives far longer than
    a run, so each dispatch task closes its channels: the workbook is there, whole, when ``run`` returns."""
    from openpyxl import load_workbook

    from orchestrator.config import Settings
    from orchestrator.data.importing import import_customers

    path = tmp_path / "customers.csv"
    path.write_text(
        "customer_id,name,phone,signup_at,sms_opt_in\n"
        + "".join(f"V{i:03d},Member {i},+86138{i:08d},2024-01-01T00:00:00+08:00,true\n" for i in range(1, 61)),
        encoding="utf-8",
    )
    import_customers(pg_engine, Settings(base_dir=str(tmp_path)), path)
    (tmp_path / "campaign.yaml").write_text(CALLS, encoding="utf-8")
    config = tmp_path / "orchestrator.yaml"
    config.write_text(
        "timezone: Asia/Shanghai\ntemplates: []\nchannels:\n  call_list: {outbox: out, xlsx: true}\n"
        + DISPATCH
        + broker.executor_yaml(partition_size=20),
        encoding="utf-8",
    )
    with workers(config, pg_url, tmp_path, count=2):
        got = Cli(pg_url, config=str(config))("run", str(tmp_path / "campaign.yaml"), "--at", AT, "--json")
        assert got.exit_code == 0, got.output
        assert json.loads(got.stdout)["outcomes"] == {"sent": 60}
        (folder,) = (tmp_path / "out").iterdir()
        sheet = load_workbook(folder / "vip.xlsx", read_only=True).active
        assert sum(1 for _ in sheet.iter_rows(values_only=True)) == 1 + 60  # header and every call, workers alive
