"""The service under load: coupon checks and redemptions per second and their latency percentiles, with
``orchestrator serve --workers 2`` on PostgreSQL (``--engines`` adds SQLite), driven by a bounded loop of
concurrent httpx clients on the same machine.

Reference in the same run: the service's cheapest request, ``GET /u/<bad token>`` (the same middleware, the same
per-address rate-limit write, a 400 with no lookup), so the ratio says what the key check and the redemption
cost on top of serving a request at all. Both sides are checked before anything is reported: every check must
answer ``ok``, every redemption ``redeemed``, and the database must then hold exactly one redemption per coupon.

    .venv/bin/python benchmarks/bench_serve.py                     # ~1 min on a 2-core machine
    .venv/bin/python benchmarks/bench_serve.py --engines postgresql,sqlite --requests 5000 --concurrency 32

The load generator shares the machine's cores with the two server processes and the database, so the figures
are a floor for a server with cores of its own. Every loop is bounded by count and by ``--max-seconds``; the
server is sent SIGTERM at the end (also on errors or Ctrl-C), and the databases are dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
from _common import BenchmarkError, Databases, parse_engines, stop_on_sigterm, table
from sqlalchemy import func, insert, select

from orchestrator import api_keys
from orchestrator.coupons import codes
from orchestrator.db.models import Coupon, CouponRedemption, Customer
from orchestrator.timeutil import utcnow

ORCHESTRATOR = shutil.which("orchestrator", path=str(Path(sys.executable).parent)) or "orchestrator"
ORDERED_AT = "2026-11-02T12:30:00+08:00"


def load_shop(engine, customers: int, coupons: int) -> tuple[list[tuple[str, str]], str]:
    """Customers, issued coupons (满100减20, valid around ORDERED_AT) and an API key: the (code, owner) pairs and
    the key."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(Customer),
            [
                {"customer_id": f"B{n:06d}", "attributes": {}, "created_at": now, "updated_at": now}
                for n in range(customers)
            ],
        )
        pks = dict(conn.execute(select(Customer.customer_id, Customer.id)).all())
        owners = [f"B{random.randrange(customers):06d}" for _ in range(coupons)]
        rows, pairs = [], []
        issued = now.replace(year=2026, month=11, day=1, hour=0, minute=0, second=0, microsecond=0)
        for owner in owners:
            code = codes.new_code()
            pairs.append((code, owner))
            rows.append(
                {
                    "code": code,
                    "customer_pk": pks[owner],
                    "step": "main",
                    "offer_kind": "amount_off",
                    "value": Decimal("20"),
                    "min_spend": Decimal("100"),
                    "terms": {"stacking": "exclusive", "description": "满100减20"},
                    "valid_from": issued,
                    "valid_until": issued + timedelta(days=30),
                    "state": "issued",
                    "issued_at": issued,
                }
            )
        conn.execute(insert(Coupon), rows)
        key = api_keys.create(conn, "bench-till", ["coupons:redeem"])
    return pairs, key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(db_url: str, folder: Path, workers: int) -> tuple[subprocess.Popen, str]:
    config = folder / "orchestrator.yaml"
    config.write_text(
        "serve:\n  limits:\n    per_ip: {per_second: 100000, burst: 100000}\n"
        "    per_key: {per_second: 100000, burst: 100000}\n"
        f"  log_file: {folder / 'serve.log'}\n",
        encoding="utf-8",
    )
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k != "ORCHESTRATOR_CONFIG"}
    process = subprocess.Popen(
        [
            ORCHESTRATOR,
            "--config",
            str(config),
            "--db",
            db_url,
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        cwd=folder,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"serve exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise BenchmarkError("serve did not become healthy within 60 s")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def load(requests: list[tuple[str, str, dict | None]], key: str, concurrency: int, max_seconds: float):
    """Send the requests with ``concurrency`` clients; (wall seconds, latencies, answers), bounded in time."""
    latencies: list[float] = []
    answers: list[tuple[int, dict | None]] = []
    queue = iter(requests)
    deadline = time.perf_counter() + max_seconds
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:

        async def worker() -> None:
            for method, url, body in queue:
                if time.perf_counter() > deadline:
                    return
                started = time.perf_counter()
                response = await client.request(method, url, json=body)
                latencies.append(time.perf_counter() - started)
                is_json = response.headers.get("content-type", "").startswith("application/json")
                answers.append((response.status_code, response.json() if is_json else None))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return wall, latencies, answers


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure(engine_name: str, databases: Databases, folder: Path, args) -> list[list[str]]:
    url = databases.create(engine_name, "serve")
    engine = databases.engine(url)
    pairs, key = load_shop(engine, args.customers, max(args.redeems, 100))
    process, base = start_server(url, folder, args.workers)
    try:
        print(f"[{engine_name}] server up with {args.workers} workers at {base}", file=sys.stderr)
        reference = [("GET", f"{base}/u/not-a-token", None)] * args.requests
        checks = []
        for n in range(args.requests):
            code, owner = random.choice(pairs)
            body = {"order_id": f"CHK-{n}", "customer_id": owner, "amount": "150.00", "ordered_at": ORDERED_AT}
            checks.append(("POST", f"{base}/api/coupons/{code}/check", body))
        redeems = []
        for n, (code, owner) in enumerate(pairs[: args.redeems]):
            body = {"order_id": f"RDM-{n}", "customer_id": owner, "amount": "150.00", "ordered_at": ORDERED_AT}
            redeems.append(("POST", f"{base}/api/coupons/{code}/redeem", body))
        asyncio.run(load(reference[: args.concurrency * 4], key, args.concurrency, args.max_seconds))  # warm-up
        results = {}
        for name, requests, good in (
            ("bad-token page (reference)", reference, lambda s, b: s == 400),
            ("coupon check", checks, lambda s, b: s == 200 and b["ok"] is True and b["status"] == "valid"),
            ("coupon redeem", redeems, lambda s, b: s == 200 and b["status"] == "redeemed"),
        ):
            wall, latencies, answers = asyncio.run(load(requests, key, args.concurrency, args.max_seconds))
            wrong = [a for a in answers if not good(*a)]
            if wrong:
                raise BenchmarkError(f"[{engine_name}] {name}: {len(wrong)} wrong answers, e.g. {wrong[0]}")
            results[name] = (len(answers), wall, latencies)
            print(f"[{engine_name}] {name}: {len(answers)} requests in {wall:.1f} s", file=sys.stderr)
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(CouponRedemption)).scalar()
        if stored != results["coupon redeem"][0]:
            raise BenchmarkError(f"[{engine_name}] {stored} redemptions stored for {results['coupon redeem'][0]}")
    finally:
        stop_server(process)
        databases.drop(url)
    reference_rate = results["bad-token page (reference)"][0] / results["bad-token page (reference)"][1]
    rows = []
    for name, (count, wall, latencies) in results.items():
        per_second = count / wall
        rows.append(
            [
                engine_name,
                name,
                f"{count:,}",
                f"{per_second:,.0f}/s",
                f"{statistics.median(latencies) * 1000:,.1f} ms",
                f"{percentile(latencies, 99) * 1000:,.1f} ms",
                f"{per_second / reference_rate:,.2f}×",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="postgresql", type=parse_engines)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=3000, help="checks (and reference requests) per engine")
    parser.add_argument("--redeems", type=int, default=1000, help="coupons redeemed, each once")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=60, help="bound on each phase")
    args = parser.parse_args()
    stop_on_sigterm()
    random.seed(20261101)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, Databases(Path(tmp)) as databases:
        databases.check(args.engines)
        for engine_name in args.engines:
            rows += measure(engine_name, databases, Path(tmp), args)
    print(
        f"orchestrator serve --workers {args.workers}, {args.concurrency} concurrent clients on the same machine "
        f"({os.cpu_count()} cores)"
    )
    print(
        table(
            ["engine", "request", "requests", "rate", "p50", "p99", "rate vs reference"],
            rows,
            right=(2, 3, 4, 5, 6),
        )
    )


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as exc:
        print(f"bench_serve: {exc}", file=sys.stderr)
        sys.exit(1)
