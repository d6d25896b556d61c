"""Benchmark: one campaign to every member, end to end, in-process: segment, plan, dispatch.

``--members N`` seed-shop members (the seed shop at the smallest scale that has N, cut to the first N members and
their orders) are loaded into a fresh database per engine (or, with ``--reuse-db``, into one kept between
invocations). Then, in a child process per case so that each one's peak RSS is its own, one campaign whose audience
is every member (``frequency >= 0``, no caps, no quiet hours) runs to

- ``null``: the e-mail channel's compile and render (subject and the CSS-inlined HTML template of the demo), with a
  ``send`` that accepts every message at once, addressed by member id (no consent needed, so every member gets one);
- ``outbox``: the e-mail channel as the demo config has it, writing one ``.eml`` file per message (members with
  an e-mail address and consent).

Stages, each timed on its own: ``segment`` (the audience statement streamed to the end, with the facts the
campaign reads), ``plan`` (``run --plan-only``: segment again, policies, render, ledger rows with payloads) and
``dispatch`` (``orchestrator dispatch`` of that run: claim, re-check consent, send, record). ``msg/s`` is messages
over plan + dispatch. Every case row names its executor (``in-process`` here) and its processes, so other
executors add rows, not columns.

Run: ``.venv/bin/python benchmarks/bench_end_to_end.py [--members 100000] [--engines sqlite,postgresql]
[--channels null,outbox] [--reuse-db] [--json]``. Without ``--reuse-db`` everything is deleted at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import json
import math
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    REPO,
    BenchmarkError,
    Databases,
    heading,
    mib,
    parse_engines,
    postgres_server_url,
    run_child,
    settle,
    step,
    stop_on_sigterm,
    table,
)
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

CHANNELS = ("null", "outbox")
MODES = ("split", "run")
HEADERS = ["engine", "channel", "executor", "mode", "messages", "segment", "plan", "dispatch", "total"]
HEADERS += ["msg/s", "dispatch/s", "peak RSS"]
EXECUTOR = "in-process"
SEED_MEMBERS = 9_252  # members of the seed shop at scale 1
SIGNING_KEY = "bench-end-to-end-signing-key-0123456789"
KEPT = REPO / "benchmarks" / "output"  # --reuse-db keeps SQLite files here (git-ignored)

CAMPAIGN = """\
name: bench-e2e-{channel}
description: every member, one e-mail each
segment: {{frequency: {{gte: 0}}}}
recontact: always  # each invocation on a kept database (--reuse-db) contacts every member again
message:
  {channel}:
    subject: "{{{{ customer.name }}}}，新品两周后上市，会员抢先看"
    template: email/new_arrivals.html.j2
"""

CONFIG = """\
timezone: Asia/Shanghai
currency: CNY
templates: [{templates}]
channels:
  email:
    from: "某网店 <members@shop.example.com>"
    outbox: {outbox}/email
  null:
    from: "某网店 <members@shop.example.com>"
dispatch:
  linger_seconds: 0
"""


# --- data ------------------------------------------------------------------------------------------------------


def write_members_csv(members: int, folder: Path) -> tuple[Path, Path]:
    """The seed shop at the smallest scale with ``members`` members, cut to the first ``members`` and their
    orders."""
    from orchestrator.demo.generator import SeedShop

    shop = SeedShop(scale=max(1, math.ceil(members / SEED_MEMBERS)))
    full = folder / "full"
    full.mkdir(parents=True, exist_ok=True)
    customers_csv, orders_csv = shop.write_csv(full)
    kept: set[str] = set()
    out_customers, out_orders = folder / "customers.csv", folder / "orders.csv"
    with customers_csv.open(newline="", encoding="utf-8") as src, out_customers.open("w", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, reader.fieldnames or [])
        writer.writeheader()
        for row in reader:
            if len(kept) == members:
                break
            kept.add(row["customer_id"])
            writer.writerow(row)
    with orders_csv.open(newline="", encoding="utf-8") as src, out_orders.open("w", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, reader.fieldnames or [])
        writer.writeheader()
        writer.writerows(row for row in reader if row["customer_id"] in kept)
    shutil.rmtree(full)
    return out_customers, out_orders


def member_count(url: str) -> int | None:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM customers")).scalar_one()
    except Exception:
        return None
    finally:
        engine.dispose()


def kept_url(engine_name: str, members: int) -> str:
    """Where ``--reuse-db`` keeps the database for ``members`` (created on first use)."""
    if engine_name == "sqlite":
        KEPT.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{KEPT / f'e2e-{members}.db'}"
    server = make_url(postgres_server_url()).set(drivername="postgresql+psycopg")
    name = f"orch_e2e_{members}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return server.set(database=name).render_as_string(hide_password=False)


def migrate_to_head(url: str) -> None:
    from orchestrator.db.engine import create_db_engine, migrate

    engine = create_db_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()


def load(url: str, csvs: tuple[Path, Path], settings: Any) -> None:
    from orchestrator.data.importing import import_customers, import_orders
    from orchestrator.db.engine import create_db_engine, migrate

    engine = create_db_engine(url)
    try:
        migrate(engine)
        import_customers(engine, settings, csvs[0])
        import_orders(engine, settings, csvs[1])
        settle(engine)
    finally:
        engine.dispose()


# --- one case, in a child process --------------------------------------------------------------------------------


def null_registry():
    """The built-in plugins plus ``null``: the e-mail channel whose send accepts everything, by member id."""
    from orchestrator_plugins.email import EmailChannel

    from orchestrator.channels.base import SendResult
    from orchestrator.plugin_manager import build_registry, manager

    class NullChannel(EmailChannel):
        name = "null"
        contact_field = "customer_id"
        consent = None

        def validate_contact(self, value: str) -> str | None:
            return value.strip() or None

        def send(self, messages: Sequence[Any]) -> Iterator[SendResult]:
            for message in messages:
                yield SendResult.sent(message.idempotency_key)

    registry = build_registry(manager())
    registry.channels["null"] = NullChannel
    return registry


@contextmanager
def profiled(spec: dict[str, Any], stage: str) -> Iterator[None]:
    """With ``--profile``: cProfile the stage and print its top entries (cumulative time) to stderr."""
    if not spec.get("profile"):
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        print(f"\n--- profile: {spec['label']}, {stage} ---", file=sys.stderr)
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(int(spec["profile"]))


def child(spec: dict[str, Any], result_file: Path) -> None:
    """Segment, plan and dispatch one campaign; writes the figures as JSON."""
    from orchestrator.config import load_settings
    from orchestrator.db.engine import create_db_engine
    from orchestrator.demo.generator import SEED_SHOP_AT
    from orchestrator.dispatch.dispatcher import Dispatcher
    from orchestrator.segments import Audience, facts_read
    from orchestrator.service import Orchestrator

    settings = load_settings(spec["config"])
    engine = create_db_engine(spec["url"])
    orch = Orchestrator(settings, engine, null_registry())
    plan = orch.load(spec["campaign"])
    runner = orch.runner(plan)
    with engine.connect() as conn:  # a new run each time: a reused database already holds earlier ones
        from orchestrator.db.models import CampaignRun

        runs = conn.execute(select(func.count()).select_from(CampaignRun)).scalar_one()
    at = SEED_SHOP_AT + timedelta(hours=10, minutes=runs)
    figures: dict[str, Any] = {}

    started = time.perf_counter()
    facts = facts_read(plan, runner.channels, runner.offers.values())
    audience = Audience(engine, settings, plan, at, orch.registry.facts, facts)
    figures["audience"] = sum(len(batch) for batch in audience.batches(plan.campaign.dispatch.batch_size))
    figures["segment"] = time.perf_counter() - started

    if spec.get("mode") == "run":  # as `orchestrator run` does: plan a batch, send it, plan the next
        with profiled(spec, "run"):
            started = time.perf_counter()
            result = runner.execute(at, dry_run=False)
            figures["run"] = time.perf_counter() - started
        figures["messages"], figures["sent"] = result.messages, result.outcomes.get("sent", 0)
        if figures["sent"] != figures["messages"]:
            raise BenchmarkError(f"{figures['sent']} sent of {figures['messages']}: {dict(result.outcomes)}")
        engine.dispose()
        result_file.write_text(json.dumps(figures), encoding="utf-8")
        return

    with profiled(spec, "plan"):
        started = time.perf_counter()
        result = runner.execute(at, dry_run=False, send=False)
        figures["plan"] = time.perf_counter() - started
    figures["messages"] = result.messages

    with profiled(spec, "dispatch"):
        started = time.perf_counter()
        dispatcher = Dispatcher(engine, settings, orch.channel)
        try:
            report = dispatcher.drain(result.run_id, linger=0)
        finally:
            dispatcher.close()
        figures["dispatch"] = time.perf_counter() - started
    figures["sent"] = report.outcomes.get("sent", 0)
    if figures["sent"] != figures["messages"]:
        raise BenchmarkError(f"{figures['sent']} sent of {figures['messages']} planned: {dict(report.outcomes)}")
    engine.dispose()
    result_file.write_text(json.dumps(figures), encoding="utf-8")


# --- the parent --------------------------------------------------------------------------------------------------


def run_case(
    engine_name: str, url: str, channel: str, scratch: Path, members: int, profile: int = 0, mode: str = "split"
) -> dict[str, Any]:
    config = scratch / "orchestrator.yaml"
    config.write_text(CONFIG.format(templates=REPO / "templates", outbox=scratch / "outbox"), encoding="utf-8")
    campaign = scratch / f"bench-{channel}.yaml"
    name = "email" if channel == "outbox" else "null"
    campaign.write_text(CAMPAIGN.format(channel=name), encoding="utf-8")
    spec = {"url": url, "config": str(config), "campaign": str(campaign), "profile": profile, "mode": mode}
    spec["label"] = f"{engine_name}, {channel}"
    result_file = scratch / f"{engine_name}-{channel}.json"
    figures, peak = run_child([__file__, "--child", json.dumps(spec), "--result", str(result_file)], result_file)
    shutil.rmtree(scratch / "outbox", ignore_errors=True)  # the .eml files: counted by the ledger, not kept
    stages = ("segment", "run") if mode == "run" else ("segment", "plan", "dispatch")
    total = figures["run"] if mode == "run" else figures["plan"] + figures["dispatch"]
    return {
        "engine": engine_name,
        "channel": channel,
        "executor": EXECUTOR,
        "mode": mode,
        "workers": 1,
        "members": members,
        "audience": figures["audience"],
        "messages": figures["messages"],
        "seconds": {stage: figures[stage] for stage in stages},
        "total_seconds": total,
        "messages_per_second": figures["messages"] / total if total else None,
        "dispatch_per_second": figures["messages"] / figures["dispatch"] if figures.get("dispatch") else None,
        "peak_rss": {"in-process": peak},
    }


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--engines", default="sqlite,postgresql", type=parse_engines)
    parser.add_argument("--channels", default=",".join(CHANNELS))
    parser.add_argument(
        "--modes",
        default="split",
        help="split: plan-only, then dispatch, each timed; run: both interleaved, as `orchestrator run` (split,run)",
    )
    parser.add_argument("--reuse-db", action="store_true", help="keep the loaded databases for the next run")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print each stage's top N functions")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("ORCHESTRATOR_SECRET_KEY", SIGNING_KEY)
    if args.child:
        child(json.loads(args.child), Path(args.result))
        return 0
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes: a comma-separated subset of {','.join(MODES)}")
    if not channels or set(channels) - set(CHANNELS):
        parser.error(f"--channels: a comma-separated subset of {','.join(CHANNELS)}")
    stop_on_sigterm()
    from orchestrator.config import Settings

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="orch-bench-e2e-") as tmp, Databases(Path(tmp)) as dbs:
        scratch = Path(tmp)
        dbs.check(args.engines)
        csvs: tuple[Path, Path] | None = None
        for engine_name in args.engines:
            url = kept_url(engine_name, args.members) if args.reuse_db else dbs.create(engine_name, "e2e")
            if not args.reuse_db or member_count(url) != args.members:
                if csvs is None:
                    with step(f"generating {args.members:,} members"):
                        csvs = write_members_csv(args.members, scratch / "csv")
                with step(f"loading {engine_name}"):
                    load(url, csvs, Settings())
            migrate_to_head(url)  # a kept database may predate the code's last migration
            for mode in modes:
                for channel in channels:
                    with step(f"{engine_name}, {channel}, {mode}"):
                        rows.append(run_case(engine_name, url, channel, scratch, args.members, args.profile, mode))
    if args.json:
        print(json.dumps({"members": args.members, "cases": rows}, indent=2))
        return 0
    heading(f"one campaign to every member: {args.members:,} members")
    print(
        table(
            HEADERS,
            [
                [
                    r["engine"],
                    r["channel"],
                    r["executor"],
                    r["mode"],
                    f"{r['messages']:,}",
                    *(_secs(r["seconds"].get(stage)) for stage in ("segment", "plan", "dispatch")),
                    _secs(r["total_seconds"]),
                    f"{r['messages_per_second']:,.0f}",
                    f"{r['dispatch_per_second']:,.0f}" if r["dispatch_per_second"] else "-",
                    ", ".join(mib(v) for v in r["peak_rss"].values()),
                ]
                for r in rows
            ],
            right=range(4, 12),
        )
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
