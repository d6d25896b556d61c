"""Benchmark: the Celery executor scaling out, against a provider that takes 20 ms per call.

One PostgreSQL database (created on the server of ``_common.postgres_server_url()``, dropped at the end) holds
``--members N`` members (default 3,000), each with an address and consent. A local HTTP sink in a process of its
own (a ``ThreadingHTTPServer``) sleeps 20 ms per request and answers 200; the webhook channel posts to it. Each
case runs one campaign of its own to every member with ``orchestrator run`` in a child process:

- ``in-process``: the default executor, one process planning and sending (one request at a time);
- ``celery ×1`` and ``celery ×2``: ``executor: {kind: celery}`` with Redis as the broker and one or two
  ``orchestrator worker --concurrency C`` processes (``--concurrency``, default 4: a claim batch spends its time
  waiting for the provider, so a slot per core and more keeps the provider busy without overloading two cores).

Figures: messages, seconds of the whole run (plan + dispatch, as ``orchestrator run`` reports them), messages/s
over the run and over the dispatch alone (first to last ``sent_at`` in the ledger), and the peak RSS of the
coordinator and of each worker process (``VmHWM`` of each process of the worker's group, read before it stops).
The target: 2 workers deliver ≥ 1.6 × the dispatch throughput of 1 (``--target``).

Run: ``.venv/bin/python benchmarks/bench_celery.py [--members 3000] [--concurrency 4] [--claim-size 50]
[--no-in-process] [--json]``. Redis: ``ORCHESTRATOR_BENCH_REDIS_URL`` else ``ORCHESTRATOR_TEST_REDIS_URL`` else
redis://127.0.0.1:6379/0 (a queue and key prefix of the benchmark's own, deleted at the end).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, BenchmarkError, Databases, heading, mib, stop_on_sigterm, table
from sqlalchemy import func, select

from orchestrator.config import Settings
from orchestrator.data.importing import import_customers
from orchestrator.data.records import CUSTOMER_COLUMNS
from orchestrator.db.models import Delivery

AT = "2026-11-02T10:00:00+08:00"
SIGNING_KEY = "bench-celery-signing-key-0123456789abcdef"
SINK = r"""
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(0.02)
        body = b'{"id": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""
CAMPAIGN = """\
name: bench-celery-{case}
segment: {{frequency: {{gte: 0}}}}
message:
  webhook:
    event: hello
    payload: {{name: "{{{{ customer.name }}}}"}}
"""


def redis_url() -> str:
    return (
        os.environ.get("ORCHESTRATOR_BENCH_REDIS_URL")
        or os.environ.get("ORCHESTRATOR_TEST_REDIS_URL")
        or "redis://127.0.0.1:6379/0"
    )


def write_members(folder: Path, members: int, engine) -> None:
    path = folder / "customers.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, CUSTOMER_COLUMNS, restval="")
        writer.writeheader()
        for i in range(1, members + 1):
            writer.writerow(
                {
                    "customer_id": f"B{i:07d}",
                    "name": f"Member {i}",
                    "email": f"b{i:07d}@example.com",
                    "signup_at": "2024-01-01T00:00:00+08:00",
                    "email_opt_in": "true",
                    "sms_opt_in": "false",
                }
            )
    import_customers(engine, Settings(base_dir=str(folder)), path)


def peak_rss(pid: int) -> int:
    """VmHWM of a live process, in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def group_members(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def orchestrator(config: Path, db_url: str) -> list[str]:
    return [sys.executable, "-c", "from orchestrator.cli import main; main()", "--config", str(config), "--db", db_url]


def start_worker(config: Path, db_url: str, concurrency: int, log: Path) -> subprocess.Popen:
    command = [*orchestrator(config, db_url), "worker", "--concurrency", str(concurrency), "--loglevel", "warning"]
    process = subprocess.Popen(
        command, cwd=config.parent, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # ready once every pool process is up (a warning-level log says nothing)
        if len(group_members(process.pid)) >= concurrency + 1:
            time.sleep(1.0)
            return process
        if process.poll() is not None:
            raise BenchmarkError(f"a worker exited with {process.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise BenchmarkError("a worker did not start within 60 s")


def stop_worker(process: subprocess.Popen) -> list[int]:
    """Peak RSS of each process of the worker, then a warm shutdown."""
    peaks = [peak_rss(pid) for pid in group_members(process.pid)]
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return peaks


def run_case(case: str, folder: Path, db_url: str, engine, executor: str, concurrency: int, workers: int) -> dict:
    campaign = folder / f"campaign-{case}.yaml"
    campaign.write_text(CAMPAIGN.format(case=case), encoding="utf-8")
    config = folder / ("celery.yaml" if workers else "in_process.yaml")
    started = [start_worker(config, db_url, concurrency, folder / f"{case}-{i}.log") for i in range(workers)]
    try:
        command = [*orchestrator(config, db_url), "run", str(campaign), "--at", AT, "--json"]
        begin = time.perf_counter()
        coordinator = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        coordinator_peak = 0
        while coordinator.poll() is None:
            coordinator_peak = max(coordinator_peak, peak_rss(coordinator.pid))
            time.sleep(0.05)
        seconds = time.perf_counter() - begin
        out, err = coordinator.communicate()
        if coordinator.returncode != 0:
            raise BenchmarkError(f"{case}: run exited {coordinator.returncode}: {err.decode()[-2000:]}")
    finally:
        worker_peaks = [stop_worker(process) for process in started]
    summary = json.loads(out)
    with engine.connect() as conn:
        first, last, sent = conn.execute(
            select(func.min(Delivery.sent_at), func.max(Delivery.sent_at), func.count()).where(
                Delivery.run_pk == summary["run_id"], Delivery.state == "sent"
            )
        ).one()
    if sent != summary["messages"] or summary["outcomes"] != {"sent": sent}:
        raise BenchmarkError(f"{case}: {sent} sent of {summary['messages']} ({summary['outcomes']})")
    dispatch = (last - first).total_seconds() if sent > 1 else 0.0
    return {
        "case": case,
        "executor": executor,
        "workers": workers,
        "concurrency": concurrency if workers else 1,
        "messages": sent,
        "seconds": round(seconds, 2),
        "messages_per_second": round(sent / seconds, 1),
        "dispatch_seconds": round(dispatch, 2),
        "dispatch_per_second": round(sent / dispatch, 1) if dispatch else None,
        "peak_rss": {"coordinator": coordinator_peak, "workers": worker_peaks},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--claim-size", type=int, default=50)
    parser.add_argument("--target", type=float, default=1.6)
    parser.add_argument("--no-in-process", action="store_true", help="skip the (slow) in-process case")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    os.environ["ORCHESTRATOR_SECRET_KEY"] = SIGNING_KEY
    os.environ.pop("ORCHESTRATOR_CONFIG", None)
    token = uuid.uuid4().hex[:8]
    queue, prefix = f"orch-bench-{token}", f"orch-bench-{token}:"
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE)
    rows: list[dict[str, Any]] = []
    try:
        port = int(sink.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp, Databases(Path(tmp)) as databases:
            folder = Path(tmp)
            db_url = databases.create("postgresql", "celery")
            engine = databases.engine(db_url)
            write_members(folder, args.members, engine)
            base = (
                "timezone: Asia/Shanghai\ntemplates: []\nchannels:\n  webhook:\n"
                f"    url: http://127.0.0.1:{port}/hook\n    timeout: 10\n"
                f"dispatch:\n  claim_size: {args.claim_size}\n  linger_seconds: 0\n"
            )
            (folder / "in_process.yaml").write_text(base, encoding="utf-8")
            executor = (
                f"executor:\n  kind: celery\n  broker: {redis_url()}\n  queue: {queue}\n  key_prefix: '{prefix}'\n"
                f"  partition_size: {max(500, args.members // 8)}\n"
            )
            (folder / "celery.yaml").write_text(base + executor, encoding="utf-8")
            cases = [] if args.no_in_process else [("in_process", "in-process", 0)]
            cases += [("celery_1", "celery", 1), ("celery_2", "celery", 2)]
            for case, kind, workers in cases:
                print(f"  {case} …", file=sys.stderr, flush=True)
                rows.append(run_case(case, folder, db_url, engine, kind, args.concurrency, workers))
    finally:
        sink.kill()
        sink.wait()
        _clean_redis(prefix)
    by_case = {row["case"]: row for row in rows}
    scale = by_case["celery_2"]["dispatch_per_second"] / by_case["celery_1"]["dispatch_per_second"]
    if args.json:
        print(json.dumps({"cases": rows, "ratio_2_to_1": round(scale, 2), "target": args.target}, indent=2))
    else:
        heading(f"Celery executor, webhook to a 20 ms sink, {args.members:,} members, claim_size {args.claim_size}")
        body = [
            [
                r["case"],
                r["workers"] or "-",
                r["concurrency"],
                r["messages"],
                f"{r['seconds']:.1f} s",
                f"{r['messages_per_second']:,.0f}/s",
                f"{r['dispatch_per_second']:,.0f}/s",
                mib(r["peak_rss"]["coordinator"]),
                ", ".join(mib(p) for p in _worker_peaks(r)) or "-",
            ]
            for r in rows
        ]
        headers = ["case", "workers", "concurrency", "messages", "run", "msg/s", "dispatch/s", "coordinator RSS"]
        print(table([*headers, "worker processes' peak RSS"], body, right=range(1, 8)))
        verdict = "PASS" if scale >= args.target else "FAIL"
        print(f"\n2 workers / 1 worker (dispatch/s): {scale:.2f}× (target ≥ {args.target}×) {verdict}")
    return 0


def _worker_peaks(row: dict[str, Any]) -> list[int]:
    return sorted((peak for peaks in row["peak_rss"]["workers"] for peak in peaks), reverse=True)


def _clean_redis(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url())
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
