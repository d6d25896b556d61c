"""Benchmark: CSV import (rows/s, peak memory) and the member-base report (seconds), on SQLite and PostgreSQL.

For each engine, into a fresh migrated database:

* ``import_customers`` / ``import_orders`` of the seed shop at ``--scale`` (default 20: 185,040 members, 219,580
  orders), timed in a child process whose peak RSS is measured (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` in a
  minimal launcher whose only child it is); the same import at ``--small-scale`` (default 5) shows whether memory
  is flat in audience size (the ratio of the peaks);
* the Python heap peak (``tracemalloc``) of the same imports at both scales, in further child processes run at
  the end, all at once and untimed (tracemalloc slows Python ~4×, so these are never the timed runs);
* references measured in the same run: reading + parsing the same files with the ``csv`` module alone, and a plain
  SQLAlchemy Core ``executemany`` of the same rows, without validation, into the same table of a fresh database;
* ``orchestrator.analysis.member_report`` against a hand-written SQL query computing the headline figures
  (members, buying members, paid orders, revenue) on the same database, after checking that both agree.

Run: ``.venv/bin/python benchmarks/bench_import_analyze.py [--scale 20] [--engines sqlite,postgresql]``.
PostgreSQL: ``ORCHESTRATOR_BENCH_POSTGRES_URL`` or ``ORCHESTRATOR_TEST_POSTGRES_URL`` (a server URL; default
postgresql://postgres@127.0.0.1:5432/test); the benchmark creates ``orch_bench_*`` databases there and drops them.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import tracemalloc
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, insert, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BenchmarkError,
    Databases,
    bench_settings,
    heading,
    median_times,
    mib,
    parse_engines,
    postgres_server_url,
    rate,
    ratio,
    run_child,
    run_children,
    secs,
    self_peak_rss,
    settle,
    step,
    stop_on_sigterm,
    table,
    timed,
    write_seed_csv,
)

from orchestrator.analysis import member_report
from orchestrator.data.importing import BATCH_SIZE, import_customers, import_orders
from orchestrator.db.engine import create_db_engine
from orchestrator.db.models import Customer, Order
from orchestrator.db.types import UTCDateTime
from orchestrator.demo.generator import SEED_SHOP_AT
from orchestrator.money import from_minor

CUSTOMERS = Customer.__table__
ORDERS = Order.__table__


# --- the child process: one import, timed or traced -----------------------------------------------------------


def child_import(url: str, customers_csv: str, orders_csv: str, result_file: str, trace: bool) -> None:
    """Import both files into ``url`` (already migrated); write seconds, counts and heap peaks as JSON."""
    engine = create_db_engine(url)
    settings = bench_settings()
    result: dict[str, Any] = {"rss_before_import": self_peak_rss()}
    if trace:
        tracemalloc.start()
    for kind, load, path in (("customers", import_customers, customers_csv), ("orders", import_orders, orders_csv)):
        if trace:
            tracemalloc.reset_peak()
        seconds, counts = timed(lambda load=load, path=path: load(engine, settings, path))
        if counts.rejected or counts.read != counts.loaded:
            raise BenchmarkError(f"{kind}: {counts.to_dict()}: generated data should load without rejects")
        result[kind] = {
            "rows": counts.read,
            "seconds": seconds,
            "heap_peak": tracemalloc.get_traced_memory()[1] if trace else None,
        }
    engine.dispose()
    Path(result_file).write_text(json.dumps(result))


def import_argv(url: str, csvs: tuple[Path, Path], result_file: Path, trace: bool) -> list[str]:
    argv = [__file__, "--child", url, str(csvs[0]), str(csvs[1]), str(result_file)]
    return [*argv, "--trace"] if trace else argv


def timed_import(dbs: Databases, engine_name: str, label: str, csvs: tuple[Path, Path], *, keep: bool = False):
    """A fresh database and the import in a child process; the child's figures with its peak RSS, and the
    database's URL (dropped already unless ``keep``)."""
    url = dbs.create(engine_name, label)
    result_file = dbs.folder / f"{label}.json"
    try:
        result, peak_rss = run_child(import_argv(url, csvs, result_file, False), result_file)
    finally:
        if not keep:
            dbs.drop(url)
    return {**result, "peak_rss": peak_rss}, url


def traced_imports(dbs: Databases, runs: dict[tuple[str, int], tuple[Path, Path]]) -> dict[tuple[str, int], dict]:
    """The imports under tracemalloc, each in a child process with a fresh database, all at once: these runs are
    not timed, and their heap peaks do not depend on how the CPUs are shared."""
    urls = {key: dbs.create(key[0], f"{key[0][:2]}_traced_s{key[1]}") for key in runs}
    try:
        children = {}
        for key, csvs in runs.items():
            result_file = dbs.folder / f"traced_{key[0]}_{key[1]}.json"
            children[key] = (import_argv(urls[key], csvs, result_file, True), result_file)
        return {key: result for key, (result, _) in run_children(children).items()}
    finally:
        for url in urls.values():
            dbs.drop(url)


# --- references for the import ----------------------------------------------------------------------------------


def csv_only(path: Path) -> int:
    """Read and parse the file with the csv module alone; returns the data rows."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        return sum(1 for _ in reader)


def _none(value: str) -> str | None:
    return value or None


def core_executemany(engine: Engine, customers_csv: Path, orders_csv: Path) -> dict[str, tuple[int, float]]:
    """The same rows into the same tables with plain Core ``executemany`` in batches of the importer's size, one
    transaction per file: only the type conversions the columns need, no validation, no tags or consents, no
    look-up of existing rows (orders find their customer in one dict built by one query)."""
    now = datetime.now(UTC)

    def customer_rows(row: list[str]) -> dict[str, Any]:
        (cid, name, email, phone, province, city, gender, birthday, signup_at, _tags, _e, _s, openid, tz) = row
        return {
            "customer_id": cid,
            "name": _none(name),
            "email": _none(email),
            "phone": _none(phone),
            "province": _none(province),
            "city": _none(city),
            "gender": _none(gender),
            "birthday": date.fromisoformat(birthday) if birthday else None,
            "signup_at": datetime.fromisoformat(signup_at) if signup_at else None,
            "wechat_openid": _none(openid),
            "timezone": _none(tz),
            "attributes": {},
            "created_at": now,
            "updated_at": now,
        }

    def load(path: Path, statement, convert) -> tuple[int, float]:
        def run() -> int:
            rows = 0
            with path.open(encoding="utf-8", newline="") as handle, engine.begin() as conn:
                reader = csv.reader(handle)
                next(reader)
                batch: list[dict[str, Any]] = []
                convert_row = convert(conn)
                for row in reader:
                    batch.append(convert_row(row))
                    if len(batch) == BATCH_SIZE:
                        conn.execute(statement, batch)
                        rows += len(batch)
                        batch = []
                if batch:
                    conn.execute(statement, batch)
                    rows += len(batch)
            return rows

        seconds, rows = timed(run)
        return rows, seconds

    def order_converter(conn):
        pks = dict(conn.execute(select(CUSTOMERS.c.customer_id, CUSTOMERS.c.id)).all())

        def convert(row: list[str]) -> dict[str, Any]:
            order_id, cid, ordered_at, amount, status, channel, payment, coupon, category = row
            return {
                "order_id": order_id,
                "customer_pk": pks[cid],
                "ordered_at": datetime.fromisoformat(ordered_at),
                "amount": Decimal(amount),
                "status": status,
                "channel": _none(channel),
                "payment_method": _none(payment),
                "coupon_code": _none(coupon),
                "category": _none(category),
                "attributes": {},
                "created_at": now,
                "updated_at": now,
            }

        return convert

    return {
        "customers": load(customers_csv, insert(CUSTOMERS), lambda conn: customer_rows),
        "orders": load(orders_csv, insert(ORDERS), order_converter),
    }


# --- the analysis and its reference -----------------------------------------------------------------------------

# Members as of :at are customers signed up by then (or without a signup time); their paid orders up to :at count.
HEADLINE_SQL = text(
    """
    SELECT
        (SELECT count(*) FROM customers WHERE signup_at IS NULL OR signup_at <= :at) AS members,
        count(DISTINCT o.customer_pk) AS buying_members,
        count(*) AS paid_orders,
        coalesce(sum(o.amount), 0) AS revenue_minor
    FROM orders AS o
    JOIN customers AS c ON c.id = o.customer_pk
    WHERE o.status = 'paid'
      AND o.ordered_at <= :at
      AND (c.signup_at IS NULL OR c.signup_at <= :at)
    """
).bindparams(bindparam("at", type_=UTCDateTime()))


def hand_headline(engine: Engine, at: datetime) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(HEADLINE_SQL, {"at": at}).one()._mapping)


def report_headline_only(engine: Engine, settings, at: datetime):
    """The report's first query alone (``analysis._headline``, internal), for a like-for-like ratio; None if the
    module no longer has it."""
    from orchestrator import analysis
    from orchestrator.facts import FactContext

    headline = getattr(analysis, "_headline", None)
    if headline is None:
        return None

    def run():
        with engine.connect() as conn:
            return headline(conn, FactContext(at, settings))

    return run


def measure_analysis(engine: Engine, runs: int) -> dict[str, Any]:
    settings = bench_settings()
    at = SEED_SHOP_AT
    report = member_report(engine, settings, at)
    hand = hand_headline(engine, at)
    expected = {
        "members": report.members,
        "buying_members": report.buying_members,
        "paid_orders": report.orders,
        "revenue": report.revenue,
    }
    got = {
        "members": hand["members"],
        "buying_members": hand["buying_members"],
        "paid_orders": hand["paid_orders"],
        "revenue": from_minor(int(hand["revenue_minor"])),
    }
    if got != expected:
        raise BenchmarkError(f"member_report {expected} and the hand-written query {got} disagree")
    candidates = {
        "report": lambda: member_report(engine, settings, at),
        "hand": lambda: hand_headline(engine, at),
    }
    headline_only = report_headline_only(engine, settings, at)
    if headline_only is not None:
        candidates["headline_only"] = headline_only
    medians, _ = median_times(candidates, runs=runs, warmup=1)
    return {"figures": expected, **medians}


# --- main ---------------------------------------------------------------------------------------------------------


def bench_engine(dbs: Databases, engine_name: str, csvs: dict[int, tuple[Path, Path]], args) -> dict[str, Any]:
    """The timed measurements of one engine (run one after the other, nothing else running)."""
    out: dict[str, Any] = {"imports": {}}
    scale = args.scale
    with step(f"{engine_name}: import at scale {scale} (child process, timed)"):
        out["imports"][scale], url = timed_import(
            dbs, engine_name, f"{engine_name[:2]}_import_s{scale}", csvs[scale], keep=True
        )
    try:
        with step(f"{engine_name}: member_report vs hand-written SQL, median of {args.runs}"):
            engine = dbs.engine(url)
            settle(engine)
            out["analysis"] = measure_analysis(engine, args.runs)
    finally:
        dbs.drop(url)
    with step(f"{engine_name}: reference, Core executemany without validation"):
        ref_url = dbs.create(engine_name, f"{engine_name[:2]}_reference")
        out["executemany"] = core_executemany(dbs.engine(ref_url), *csvs[scale])
        dbs.drop(ref_url)
    if args.small_scale:
        small = args.small_scale
        with step(f"{engine_name}: import at scale {small} (child process, timed)"):
            out["imports"][small], _ = timed_import(dbs, engine_name, f"{engine_name[:2]}_s{small}", csvs[small])
    return out


def print_results(args, shops: dict, csv_ref: dict, results: dict[str, dict]) -> None:
    scale, small = args.scale, args.small_scale
    heading(f"Import, scale {scale}: rows/s (ratio = importer ÷ reference throughput)")
    rows = []
    for engine_name, res in results.items():
        for kind in ("customers", "orders"):
            imp = res["imports"][scale][kind]
            ref_rows, ref_seconds = res["executemany"][kind]
            csv_rows, csv_seconds = csv_ref[kind]
            mine = imp["rows"] / imp["seconds"]
            rows.append(
                [
                    engine_name,
                    kind,
                    f"{imp['rows']:,}",
                    secs(imp["seconds"]),
                    rate(imp["rows"], imp["seconds"]),
                    rate(csv_rows, csv_seconds),
                    ratio(mine, csv_rows / csv_seconds),
                    rate(ref_rows, ref_seconds),
                    ratio(mine, ref_rows / ref_seconds),
                ]
            )
    print(
        table(
            ["engine", "file", "rows", "import", "import rows/s", "csv only", "ratio", "Core executemany", "ratio"],
            rows,
            right=range(2, 9),
        )
    )
    print(
        "csv only: csv.reader over the same file, best of 3. Core executemany: the same rows, converted to the"
        " column types\nonly, inserted in batches of the importer's size into the same table of a fresh database"
        " (customers table only:\nno tags, consents, validation or look-up of existing rows)."
    )

    heading("Peak memory of the import (each run in its own child process)")
    rows = []
    for engine_name, res in results.items():
        for sc in sorted(res["imports"]):
            imp, traced = res["imports"][sc], res["traced"][sc]
            rows.append(
                [
                    engine_name,
                    sc,
                    f"{shops[sc].member_count:,}",
                    f"{shops[sc].order_count:,}",
                    mib(imp["rss_before_import"]),
                    mib(imp["peak_rss"]),
                    mib(traced["customers"]["heap_peak"]),
                    mib(traced["orders"]["heap_peak"]),
                ]
            )
        if small:
            big_run, small_run = res["imports"][scale], res["imports"][small]
            big_heap = max(res["traced"][scale][k]["heap_peak"] for k in ("customers", "orders"))
            small_heap = max(res["traced"][small][k]["heap_peak"] for k in ("customers", "orders"))
            rows.append(
                [
                    engine_name,
                    f"{scale} ÷ {small}",
                    ratio(shops[scale].member_count, shops[small].member_count),
                    ratio(shops[scale].order_count, shops[small].order_count),
                    ratio(big_run["rss_before_import"], small_run["rss_before_import"]),
                    ratio(big_run["peak_rss"], small_run["peak_rss"]),
                    ratio(big_heap, small_heap),
                    "(max of both)",
                ]
            )
    print(
        table(
            [
                "engine",
                "scale",
                "members",
                "orders",
                "RSS before import",
                "peak RSS",
                "heap peak customers",
                "heap peak orders",
            ],
            rows,
            right=range(1, 8),
        )
    )
    print(
        "peak RSS: getrusage(RUSAGE_CHILDREN).ru_maxrss of the timed child, taken by a minimal launcher whose only"
        " child it is.\nRSS before import: the child's own ru_maxrss after loading the modules, before the first row."
        "\nheap peak: tracemalloc peak while importing each file, in further children run at the end, all at once"
        " (tracemalloc\nslows Python ~4×, so they are not the timed runs). Memory is flat when the scale ratios stay"
        " near 1.00× while\nthe data grows with the scale."
    )

    heading(f"Analysis, scale {scale}: orchestrator.analysis.member_report vs hand-written SQL (median of {args.runs})")
    rows = []
    for engine_name, res in results.items():
        an = res["analysis"]
        headline = an.get("headline_only")
        rows.append(
            [
                engine_name,
                secs(an["report"]),
                secs(an["hand"]),
                ratio(an["report"], an["hand"]),
                secs(headline) if headline else "n/a",
                ratio(headline, an["hand"]) if headline else "n/a",
            ]
        )
    print(
        table(
            ["engine", "member_report", "hand-written headline", "ratio", "report headline query only", "ratio"],
            rows,
            right=range(1, 6),
        )
    )
    figures = next(iter(results.values()))["analysis"]["figures"]
    print(
        "Both agree on every engine: "
        + ", ".join(f"{k} {v:,}" for k, v in figures.items())
        + ".\nmember_report runs three queries (headline with dormancy, big spenders and AOV bands; provinces; RFM"
        " × lifecycle × tier\nwith window functions); the hand-written query computes only members, buying members,"
        " paid orders and revenue.\n'report headline query only' is the report's first query alone"
        " (orchestrator.analysis._headline)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=20, help="seed-shop scale of the timed run (default 20)")
    parser.add_argument(
        "--small-scale", type=int, default=5, help="second scale for the memory comparison; 0 skips it (default 5)"
    )
    parser.add_argument("--engines", default="sqlite,postgresql", help="comma-separated (default sqlite,postgresql)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs of the analysis after a warm-up")
    parser.add_argument("--child", nargs=4, metavar=("URL", "CUSTOMERS", "ORDERS", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_import(*args.child, trace=args.trace)
        return 0
    engines = parse_engines(args.engines)
    if args.scale < 1 or args.small_scale < 0 or args.runs < 1:
        parser.error("--scale and --runs must be at least 1, --small-scale at least 0")
    if args.small_scale == args.scale:
        args.small_scale = 0
    stop_on_sigterm()

    print(f"bench_import_analyze: scale {args.scale}, engines {', '.join(engines)}, at {SEED_SHOP_AT.isoformat()}")
    if "postgresql" in engines:
        print(f"PostgreSQL server: {postgres_server_url()}")
    with tempfile.TemporaryDirectory(prefix="orch-bench-import-") as scratch, Databases(Path(scratch)) as dbs:
        dbs.check(engines)
        folder = Path(scratch)
        csvs: dict[int, tuple[Path, Path]] = {}
        shops = {}
        for sc in sorted({args.scale, args.small_scale} - {0}):
            with step(f"generating the seed shop at scale {sc}"):
                customers_csv, orders_csv, shops[sc], _ = write_seed_csv(sc, folder / f"scale{sc}")
                csvs[sc] = (customers_csv, orders_csv)
        with step("reference: csv module alone, best of 3"):
            csv_ref = {}
            for kind, path in zip(("customers", "orders"), csvs[args.scale], strict=True):
                best = min((timed(lambda path=path: csv_only(path)) for _ in range(3)), key=lambda t: t[0])
                csv_ref[kind] = (best[1], best[0])
        results = {engine_name: bench_engine(dbs, engine_name, csvs, args) for engine_name in engines}
        runs = {(engine_name, sc): csvs[sc] for engine_name in engines for sc in csvs}
        with step(f"heap peaks: {len(runs)} imports under tracemalloc (child processes, all at once, untimed)"):
            for (engine_name, sc), result in traced_imports(dbs, runs).items():
                results[engine_name].setdefault("traced", {})[sc] = result
    print_results(args, shops, csv_ref, results)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as exc:
        print(f"\nbench_import_analyze: error: {exc}", file=sys.stderr)
        sys.exit(1)
