"""Benchmark: a year of scheduler replay for the demo campaigns plus a daily birthday campaign, on the seed shop.

The target (issue: a year of replay in under 60 s on SQLite for the seed shop): ``replay()`` of every campaign in
``campaigns/`` plus a daily ``relative_to: birthday`` campaign over [``--from``, ``--until``) (default the calendar
year 2026, the seed shop's orders span the ten months before 2026-11-01), writing runs, ledger rows, coupons and
outbox files as ``orchestrator scheduler --from --until`` does, takes at most ``--target`` seconds (60).

Reference, measured in the same run on a fresh copy of the same data: the same ticks fired one after the other as
``orchestrator run FILE --at <tick>`` does (what a script calling it for every tick would do, without process
start-ups), so the ratio is what replay adds: the dispatch round after every tick. A dry-run replay is timed too.
An event trigger's checks are those that can find an event (one query per campaign), as replay asks them.

Every side must fire the same ticks and produce the same message count, or the benchmark fails.

Run: ``.venv/bin/python benchmarks/bench_scheduler_replay.py [--scale 1] [--engines sqlite]``. Outboxes and SQLite
files go to a temporary folder, deleted at the end; PostgreSQL as for the other benchmarks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    REPO,
    BenchmarkError,
    Databases,
    heading,
    parse_engines,
    ratio,
    secs,
    settle,
    step,
    stop_on_sigterm,
    table,
    timed,
    write_seed_csv,
)

from orchestrator.config import load_settings
from orchestrator.data.importing import import_customers, import_orders
from orchestrator.scheduler import replay as replay_module
from orchestrator.scheduler.campaign_files import load_all
from orchestrator.scheduler.replay import EMPTY, due_ticks, fire, replay
from orchestrator.service import Orchestrator
from orchestrator.timeutil import parse_run_time

BIRTHDAY_CAMPAIGN = """\
# the benchmark's daily campaign: members whose birthday is today, at 10:00 Shanghai time
name: bench-birthday
schedule: {relative_to: birthday, days_before: 0, time: "10:00", timezone: Asia/Shanghai}
segment:
  all:
    - recency_days: {lt: 365}
message:
  email:
    subject: "生日快乐，{{ customer.name }}"
    template: email/new_arrivals.html.j2
"""


def workspace(folder: Path) -> Path:
    """The demo's config, templates and campaigns copied to ``folder`` (outboxes resolve there), plus the daily
    birthday campaign; returns the config file."""
    for name in ("config", "templates", "campaigns"):
        shutil.copytree(REPO / name, folder / name)
    (folder / "campaigns" / "bench_birthday.yaml").write_text(BIRTHDAY_CAMPAIGN, encoding="utf-8")
    return folder / "config" / "orchestrator.yaml"


def load_database(dbs: Databases, engine_name: str, label: str, csvs: tuple[Path, Path], settings) -> Any:
    engine = dbs.engine(dbs.create(engine_name, label))
    for load, path in ((import_customers, csvs[0]), (import_orders, csvs[1])):
        result = load(engine, settings, path)
        if result.rejected:
            raise BenchmarkError(f"the importer rejected generated rows: {result.to_dict()}")
    settle(engine)
    return engine


def fire_directly(service: Orchestrator, files, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The reference: each due tick fired as ``orchestrator run FILE --at <tick>`` does, one after the other,
    without replay's dispatch round after every tick."""
    rows = (fire(service, tick, dry_run=False) for tick in due_ticks(files, start, end, service))
    return [row for row in rows if row["state"] != EMPTY]


class FireTimes:
    """Seconds spent firing each campaign's ticks (event checks that found nobody apart), for the breakdown:
    replay calls ``replay.fire`` per tick, wrapped here for the measurement only."""

    def __init__(self) -> None:
        self.by_campaign: dict[tuple[str, bool], list[float]] = {}  # (campaign, opened a run) -> [ticks, s, msgs]

    def __enter__(self) -> FireTimes:
        self._fire = replay_module.fire

        def timed_fire(service, tick, *, dry_run):
            started = time.perf_counter()
            row = self._fire(service, tick, dry_run=dry_run)
            spent = self.by_campaign.setdefault((tick.plan.name, row["state"] != EMPTY), [0, 0.0, 0])
            spent[0] += 1
            spent[1] += time.perf_counter() - started
            spent[2] += row["messages"]
            return row

        replay_module.fire = timed_fire
        return self

    def __exit__(self, *exc) -> None:
        replay_module.fire = self._fire


def bench_engine(dbs: Databases, engine_name: str, csvs, config: Path, args) -> dict[str, Any]:
    settings = load_settings(config)
    start, end = parse_run_time(args.start, settings.tz), parse_run_time(args.end, settings.tz)
    out: dict[str, Any] = {"engine": engine_name}
    sides = {}
    for label in args.sides:
        with step(f"{engine_name}: loading the seed shop for {label}"):
            engine = load_database(dbs, engine_name, label, csvs, settings)
        service = Orchestrator(settings, engine)
        files = load_all(service, config.parent.parent / "campaigns")
        bad = [p.render() for f in files for p in f.problems]
        if bad:
            raise BenchmarkError("invalid campaign files: " + "; ".join(bad))
        out["expected_ticks"] = len(due_ticks(files, start, end))  # every check of an event trigger's grid
        with step(f"{engine_name}: {label} of {args.start} .. {args.end}"):
            if label == "reference":
                seconds, rows = timed(lambda s=service, f=files: fire_directly(s, f, start, end))
            else:
                with FireTimes() as fired:
                    seconds, rows = timed(
                        lambda s=service, f=files, d=(label == "dry_run"): replay(s, f, start, end, dry_run=d)
                    )
                if label == "replay":
                    out["by_campaign"] = fired.by_campaign
        sides[label] = {"seconds": seconds, "ticks": len(rows), "messages": sum(r["messages"] for r in rows)}
    # a dry run writes nothing, so caps and one-coupon-at-a-time never hold anyone back: only its ticks compare
    if "dry_run" in sides and "replay" in sides and sides["dry_run"]["ticks"] != sides["replay"]["ticks"]:
        raise BenchmarkError(f"the dry run fired {sides['dry_run']} but replay {sides['replay']}")
    if "reference" in sides and "replay" in sides:
        mine, theirs = sides["replay"], sides["reference"]
        if (theirs["ticks"], theirs["messages"]) != (mine["ticks"], mine["messages"]):
            raise BenchmarkError(f"the reference fired {theirs} but replay {mine}")
    out["sides"] = sides
    out["pass"] = "replay" not in sides or sides["replay"]["seconds"] <= args.target
    return out


def print_results(args, results: dict[str, dict[str, Any]]) -> None:
    heading(f"scheduler replay, {args.start} .. {args.end}, seed shop scale {args.scale}")
    rows = []
    for name, r in results.items():
        reference = r["sides"].get("reference", {}).get("seconds", 0)
        for label, side in r["sides"].items():
            rows.append(
                (
                    name,
                    label,
                    f"{side['ticks']:,} / {r['expected_ticks']:,}",
                    f"{side['messages']:,}",
                    secs(side["seconds"]),
                    f"{side['ticks'] / side['seconds']:,.1f}/s" if side["seconds"] else "n/a",
                    ratio(side["seconds"], reference),
                )
            )
    print(
        table(
            ("engine", "side", "ticks fired / due", "messages", "time", "ticks/s", "vs reference"),
            rows,
            right=(2, 3, 4, 5, 6),
        )
    )
    for name, r in results.items():
        if not r.get("by_campaign"):
            continue
        heading(f"{name}: replay by campaign (firing the tick; the dispatch rounds between ticks apart)")
        rows = [
            (
                campaign,
                "run" if opened else "nobody: no run",
                f"{ticks:,}",
                f"{messages:,}",
                secs(seconds),
                f"{seconds / ticks * 1000:,.1f} ms",
            )
            for (campaign, opened), (ticks, seconds, messages) in sorted(
                r["by_campaign"].items(), key=lambda item: -item[1][1]
            )
        ]
        print(table(("campaign", "tick", "ticks", "messages", "time", "per tick"), rows, right=(2, 3, 4, 5)))
    for name, r in results.items():
        verdict = "PASS" if r["pass"] else "FAIL"
        if "replay" in r["sides"]:
            print(f"{name}: {verdict}: replay {secs(r['sides']['replay']['seconds'])} (target ≤ {args.target:g} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1, help="seed-shop scale (1: 9,252 members)")
    parser.add_argument("--engines", type=parse_engines, default=["sqlite"], help="sqlite,postgresql")
    parser.add_argument("--from", dest="start", default="2026-01-01", help="replay from (inclusive)")
    parser.add_argument("--until", dest="end", default="2027-01-01", help="replay until (exclusive)")
    parser.add_argument("--target", type=float, default=60.0, help="seconds the replay may take")
    parser.add_argument(
        "--sides",
        type=lambda v: [x for x in v.split(",") if x],
        default=["replay", "dry_run", "reference"],
        help="what to time: replay,dry_run,reference",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when over the target")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    os.environ.setdefault("ORCHESTRATOR_SECRET_KEY", "benchmark-signing-key-" + "0123456789" * 3)
    with tempfile.TemporaryDirectory(prefix="orch-bench-replay-") as scratch, Databases(Path(scratch)) as dbs:
        dbs.check(args.engines)
        config = workspace(Path(scratch) / "shop")
        with step(f"generating the seed shop at scale {args.scale}"):
            customers_csv, orders_csv, _, _ = write_seed_csv(args.scale, Path(scratch) / "csv")
        results = {name: bench_engine(dbs, name, (customers_csv, orders_csv), config, args) for name in args.engines}
        print_results(args, results)
    failed = [name for name, r in results.items() if not r["pass"]]
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
