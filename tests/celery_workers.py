"""Celery workers for tests: ``orchestrator worker`` started as child processes, each in its own process group (so
a test can SIGKILL a worker with its pool processes, as a machine failing would), and an isolated corner of the
broker per test (a queue name and a Redis key prefix of its own, removed at the end)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

READY = " ready."  # Celery's line once the worker consumes


@dataclass(frozen=True)
class Broker:
    url: str
    queue: str
    key_prefix: str | None

    def executor_yaml(self, partition_size: int = 40) -> str:
        prefix = f"  key_prefix: '{self.key_prefix}'\n" if self.key_prefix else ""
        return (
            f"executor:\n  kind: celery\n  broker: {self.url}\n  queue: {self.queue}\n{prefix}"
            f"  partition_size: {partition_size}\n  task_time_limit_seconds: 60\n  visibility_timeout_seconds: 120\n"
        )


@contextmanager
def redis_broker(redis_url: str) -> Iterator[Broker]:
    import redis

    token = uuid.uuid4().hex[:10]
    broker = Broker(redis_url, f"orch-test-{token}", f"orch-test-{token}:")
    try:
        yield broker
    finally:
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{broker.key_prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


class Worker:
    def __init__(self, config: Path, db_url: str, log: Path, *, concurrency: int = 2, pool: str = "prefork"):
        self.log = log
        command = [sys.executable, "-c", "from orchestrator.cli import main; main()", "--config", str(config)]
        command += ["--db", db_url, "worker", "--concurrency", str(concurrency), "--pool", pool]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("ORCHESTRATOR_CONFIG", None)
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            command, cwd=config.parent, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 60) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY in self.output():
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited with {self.process.returncode}:\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"the worker was not ready within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once: nothing gets to clean up."""
        self._signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(10)
        self._log_file.close()

    def _signal(self, signum: int) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


@contextmanager
def workers(config: Path, db_url: str, folder: Path, count: int = 1, **options) -> Iterator[list[Worker]]:
    started = [Worker(config, db_url, folder / f"worker-{i}.log", **options) for i in range(count)]
    try:
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            worker.stop()
