"""Benchmark: the wake-dormant segment through the compiler against hand-written SQL, on SQLite and PostgreSQL.

The target (benchmarks/README.md: segment queries close to hand-written SQL on the same engine): on the seed shop at
``--scale`` (default 20: 185,040 members, 219,580 orders), executing
``Audience(engine, settings, plan, at).ids_statement()`` for ``campaigns/wake_dormant.yaml`` and fetching every id
takes at most ``--target`` (1.5) times as long as a hand-written query for the same audience on the same database
in the same run (median of ``--runs`` after a warm-up, the two interleaved). Both must return exactly the same ids.

Extra figures, against a hand-written query returning the audience with each member's step:

* the segment plus the step assignment (``orders_above_store_aov`` grading), compiled like ``Audience.statement``
  but with only the id and the step index;
* ``Audience.statement()`` (every template fact), streamed in the campaign's batch size;
* ``Audience.batches()``, the pipeline's read (the statement plus tags, age and birthday per batch);
* the Python heap peak of the streamed statement against fetching the same statement all at once.

When a ratio misses the target, the query plans of both (``EXPLAIN QUERY PLAN`` / ``EXPLAIN (ANALYZE, BUFFERS)``)
are printed after the table.

Run: ``.venv/bin/python benchmarks/bench_segments.py [--scale 20] [--engines sqlite,postgresql]``. Exit status 0
when everything was measured (PASS or FAIL), 1 on errors (including differing audiences); with ``--strict`` a FAIL
exits 1 too. PostgreSQL as for ``bench_import_analyze.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, case, text, true
from sqlalchemy.sql import ClauseElement

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    REPO,
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
    secs,
    settle,
    step,
    stop_on_sigterm,
    table,
    timed,
    write_seed_csv,
)

from orchestrator.data.importing import import_customers, import_orders
from orchestrator.db.types import UTCDateTime
from orchestrator.demo.generator import SEED_SHOP_AT
from orchestrator.facts import FactContext, customers
from orchestrator.plugin_manager import registry
from orchestrator.segments import Audience, SegmentCompiler
from orchestrator.service import Orchestrator

CAMPAIGN = REPO / "campaigns" / "wake_dormant.yaml"

# --- the hand-written reference -------------------------------------------------------------------------------
#
# Members as of :at (signed up by then, or without a signup time) whose last paid order up to :at lies 90 (inclusive)
# to 180 (exclusive) whole days before :at, i.e. :at − 180 days < last order <= :at − 90 days (the bounds computed in
# Python, in UTC like the stored times), and who are not tagged "complained". One text for both engines: it is what
# one would write for either.
AUDIENCE_SQL = """
    SELECT c.id
    FROM customers AS c
    JOIN (
        SELECT customer_pk
        FROM orders
        WHERE status = 'paid' AND ordered_at <= :at
        GROUP BY customer_pk
        HAVING max(ordered_at) > :dormant_before_lost AND max(ordered_at) <= :dormant_since
    ) AS dormant ON dormant.customer_pk = c.id
    WHERE (c.signup_at IS NULL OR c.signup_at <= :at)
      AND NOT EXISTS (SELECT 1 FROM customer_tags AS t WHERE t.customer_pk = c.id AND t.tag = 'complained')
"""

# The same audience with each member's step: new-arrivals-preview (0) for 1–2 paid orders above the shop's AOV,
# vip-call-out (1) for 3 or more, none otherwise. The shop's AOV counts members' paid orders up to :at; "above" is
# compared without dividing (amount × orders > revenue), all in fen.
AUDIENCE_STEPS_SQL = f"""
    WITH shop AS (
        SELECT count(*) AS paid_orders, sum(o.amount) AS revenue
        FROM orders AS o
        JOIN customers AS c ON c.id = o.customer_pk
        WHERE o.status = 'paid' AND o.ordered_at <= :at AND (c.signup_at IS NULL OR c.signup_at <= :at)
    ),
    audience AS ({AUDIENCE_SQL})
    SELECT a.id,
           CASE WHEN count(o.id) BETWEEN 1 AND 2 THEN 0 WHEN count(o.id) >= 3 THEN 1 END AS step_index
    FROM audience AS a
    CROSS JOIN shop
    LEFT JOIN orders AS o
           ON o.customer_pk = a.id AND o.status = 'paid' AND o.ordered_at <= :at
          AND o.amount * shop.paid_orders > shop.revenue
    GROUP BY a.id
"""

PARAMETERS = ("at", "dormant_before_lost", "dormant_since")


def hand_parameters(at: datetime) -> dict[str, datetime]:
    at_utc = at.astimezone(UTC)
    return {
        "at": at_utc,
        "dormant_before_lost": at_utc - timedelta(days=180),
        "dormant_since": at_utc - timedelta(days=90),
    }


def hand_statement(sql: str, at: datetime):
    """The SQL text with its times bound as the timestamp columns store them (naive UTC) on every engine."""
    values = hand_parameters(at)
    return text(sql).bindparams(*(bindparam(name, values[name], type_=UTCDateTime()) for name in PARAMETERS))


# --- the compiled statements ----------------------------------------------------------------------------------


def steps_statement(settings, plan, at: datetime):
    """The segment plus the step index, compiled exactly as ``Audience.statement`` does, without the other facts."""
    compiler = SegmentCompiler(FactContext(at=at, settings=settings), registry().facts)
    segment = compiler.compile(plan.segment)
    whens = [(compiler.compile(s.when) if s.when is not None else true(), s.index) for s in plan.steps]
    return compiler.facts.select(customers.c.id, case(*whens, else_=None).label("step_index"), where=[segment])


def fetch_ids(engine: Engine, statement) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(statement).scalars().all())


def fetch_steps(engine: Engine, statement) -> dict[int, int | None]:
    with engine.connect() as conn:
        return {pk: step_index for pk, step_index in conn.execute(statement).all()}


def stream_statement(engine: Engine, statement, batch_size: int, collect: bool = False) -> dict[int, Any] | int:
    """Stream the full audience statement in batches; the id → step map when ``collect``, else the row count."""
    steps: dict[int, Any] = {}
    rows = 0
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(statement)
        for partition in result.mappings().partitions(batch_size):
            rows += len(partition)
            if collect:
                steps.update((row["pk"], row["step_index"]) for row in partition)
    return steps if collect else rows


def all_at_once(engine: Engine, statement) -> int:
    with engine.connect() as conn:
        return len(conn.execute(statement).mappings().all())


def pipeline_batches(audience: Audience, batch_size: int) -> int:
    return sum(len(batch) for batch in audience.batches(batch_size))


def heap_peak(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- query plans ----------------------------------------------------------------------------------------------


def literal_sql(engine: Engine, statement: ClauseElement) -> str:
    return str(statement.compile(engine, compile_kwargs={"literal_binds": True}))


def query_plan(engine: Engine, statement: ClauseElement) -> list[str]:
    sql = literal_sql(engine, statement)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
            depth: dict[int, int] = {0: 0}
            lines = []
            for node, parent, _, detail in rows:
                depth[node] = depth.get(parent, 0) + 1
                lines.append("  " * depth[node] + detail)
            return lines
        return [row[0] for row in conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql.replace('%', '%%')}")]


# --- main -----------------------------------------------------------------------------------------------------


def bench_engine(dbs: Databases, engine_name: str, csvs: tuple[Path, Path], args) -> dict[str, Any]:
    settings = bench_settings()
    at = SEED_SHOP_AT
    url = dbs.create(engine_name, f"{engine_name[:2]}_segments_s{args.scale}")
    engine = dbs.engine(url)
    out: dict[str, Any] = {"engine": engine}
    with step(f"{engine_name}: loading the seed shop through the importer"):
        out["load_customers"], customers_result = timed(lambda: import_customers(engine, settings, csvs[0]))
        out["load_orders"], orders_result = timed(lambda: import_orders(engine, settings, csvs[1]))
        for result in (customers_result, orders_result):
            if result.rejected:
                raise BenchmarkError(f"the importer rejected generated rows: {result.to_dict()}")
        out["customers"], out["orders"] = customers_result.loaded, orders_result.loaded
        settle(engine)

    plan = Orchestrator(settings).load(CAMPAIGN)
    audience = Audience(engine, settings, plan, at, registry().facts)
    batch_size = plan.campaign.dispatch.batch_size
    compiled_ids = audience.ids_statement()
    hand_ids = hand_statement(AUDIENCE_SQL, at)
    compiled_steps = steps_statement(settings, plan, at)
    hand_steps = hand_statement(AUDIENCE_STEPS_SQL, at)
    full = audience.statement()
    out.update(compiled_ids=compiled_ids, hand_ids=hand_ids, batch_size=batch_size)

    with step(f"{engine_name}: checking that compiled and hand-written queries agree"):
        ids, reference = fetch_ids(engine, compiled_ids), fetch_ids(engine, hand_ids)
        if len(ids) != len(set(ids)) or len(reference) != len(set(reference)):
            raise BenchmarkError(f"{engine_name}: duplicate ids (compiled {len(ids)}, hand-written {len(reference)})")
        if set(ids) != set(reference):
            raise BenchmarkError(
                f"{engine_name}: the audiences differ: {len(set(ids) - set(reference))} only compiled, "
                f"{len(set(reference) - set(ids))} only hand-written"
            )
        steps, reference_steps = fetch_steps(engine, compiled_steps), fetch_steps(engine, hand_steps)
        streamed = stream_statement(engine, full, batch_size, collect=True)
        for name, got in (("segment + steps", steps), ("Audience.statement()", streamed)):
            if got != reference_steps:
                differing = sum(1 for pk in set(got) | set(reference_steps) if got.get(pk) != reference_steps.get(pk))
                raise BenchmarkError(f"{engine_name}: {name} and the hand-written steps differ for {differing} ids")
        out["audience"] = len(ids)
        out["per_step"] = {
            index: sum(1 for s in reference_steps.values() if s == index)
            for index in sorted(set(reference_steps.values()), key=str)
        }

    with step(f"{engine_name}: ids, compiled vs hand-written, median of {args.runs}"):
        out["ids"], out["ids_samples"] = median_times(
            {"compiled": lambda: fetch_ids(engine, compiled_ids), "hand": lambda: fetch_ids(engine, hand_ids)},
            runs=args.runs,
            warmup=args.warmup,
        )
    with step(f"{engine_name}: audience with steps, full statement and batches, median of {args.extra_runs}"):
        out["extra"], _ = median_times(
            {
                "hand_steps": lambda: fetch_steps(engine, hand_steps),
                "compiled_steps": lambda: fetch_steps(engine, compiled_steps),
                "statement": lambda: stream_statement(engine, full, batch_size),
                "batches": lambda: pipeline_batches(audience, batch_size),
            },
            runs=args.extra_runs,
            warmup=1,
        )
    with step(f"{engine_name}: heap peak of the full statement, streamed and all at once"):
        out["heap_streamed"] = heap_peak(lambda: stream_statement(engine, full, batch_size))
        out["heap_all"] = heap_peak(lambda: all_at_once(engine, full))

    out["pass"] = out["ids"]["compiled"] <= args.target * out["ids"]["hand"]
    if not out["pass"] or args.explain:
        with step(f"{engine_name}: query plans"):
            out["plans"] = {
                "compiled": query_plan(engine, compiled_ids),
                "hand": query_plan(engine, hand_ids),
            }
    return out


def print_results(args, results: dict[str, dict]) -> None:
    heading(f"Data (seed shop, scale {args.scale}, loaded through the importer)")
    print(
        table(
            ["engine", "customers", "load", "orders", "load", "audience", "per step (index: members)"],
            [
                [
                    name,
                    f"{r['customers']:,}",
                    rate(r["customers"], r["load_customers"]),
                    f"{r['orders']:,}",
                    rate(r["orders"], r["load_orders"]),
                    f"{r['audience']:,}",
                    ", ".join(f"{k}: {v:,}" for k, v in r["per_step"].items()),
                ]
                for name, r in results.items()
            ],
            right=range(1, 6),
        )
    )

    heading(f"Target: wake-dormant ids, compiled ÷ hand-written ≤ {args.target} (median of {args.runs}, after warm-up)")
    rows = []
    for name, r in results.items():
        samples = r["ids_samples"]
        rows.append(
            [
                name,
                f"{r['audience']:,}",
                secs(r["ids"]["compiled"]),
                f"{secs(min(samples['compiled']))}–{secs(max(samples['compiled']))}",
                secs(r["ids"]["hand"]),
                f"{secs(min(samples['hand']))}–{secs(max(samples['hand']))}",
                ratio(r["ids"]["compiled"], r["ids"]["hand"]),
                "PASS" if r["pass"] else "FAIL",
            ]
        )
    print(
        table(
            ["engine", "ids", "compiled", "range", "hand-written", "range", "ratio", f"≤ {args.target}"],
            rows,
            right=range(1, 7),
        )
    )

    heading(f"Extra figures (median of {args.extra_runs}; reference: hand-written audience with steps)")
    rows = []
    for name, r in results.items():
        extra = r["extra"]
        reference = extra["hand_steps"]
        rows.append([name, "hand-written audience + step (reference)", secs(reference), "1.00×"])
        rows.append(
            [
                name,
                "compiled segment + step assignment",
                secs(extra["compiled_steps"]),
                ratio(extra["compiled_steps"], reference),
            ]
        )
        rows.append(
            [
                name,
                f"Audience.statement(), all template facts, streamed by {r['batch_size']}",
                secs(extra["statement"]),
                ratio(extra["statement"], reference),
            ]
        )
        rows.append(
            [
                name,
                "Audience.batches() (+ tags, age, birthday)",
                secs(extra["batches"]),
                ratio(extra["batches"], reference),
            ]
        )
    print(table(["engine", "query", "median", "ratio"], rows, right=(2, 3)))

    heading("Python heap peak of Audience.statement() (tracemalloc; reference: the same rows fetched all at once)")
    print(
        table(
            ["engine", "rows", "streamed", "all at once", "ratio"],
            [
                [
                    name,
                    f"{r['audience']:,}",
                    mib(r["heap_streamed"]),
                    mib(r["heap_all"]),
                    ratio(r["heap_streamed"], r["heap_all"]),
                ]
                for name, r in results.items()
            ],
            right=range(1, 5),
        )
    )

    for name, r in results.items():
        if "plans" not in r:
            continue
        verdict = "PASS" if r["pass"] else "FAIL"
        heading(f"{name}: query plans ({verdict}, ratio {ratio(r['ids']['compiled'], r['ids']['hand'])})")
        engine = r["engine"]
        print("-- compiled (Audience.ids_statement()), literal values:")
        print(literal_sql(engine, r["compiled_ids"]).strip())
        print("-- its plan:")
        print("\n".join(r["plans"]["compiled"]))
        print("-- hand-written:")
        print(AUDIENCE_SQL.strip("\n"))
        print("-- its plan:")
        print("\n".join(r["plans"]["hand"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=20, help="seed-shop scale (default 20)")
    parser.add_argument("--engines", default="sqlite,postgresql", help="comma-separated (default sqlite,postgresql)")
    parser.add_argument("--runs", type=int, default=7, help="measured runs of the target queries (default 7)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default 1)")
    parser.add_argument("--extra-runs", type=int, default=3, help="measured runs of the extra figures (default 3)")
    parser.add_argument("--target", type=float, default=1.5, help="highest passing ratio (default 1.5)")
    parser.add_argument("--explain", action="store_true", help="print the query plans even when the target is met")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a ratio misses the target")
    args = parser.parse_args(argv)
    engines = parse_engines(args.engines)
    if args.scale < 1 or args.runs < 1 or args.warmup < 0 or args.extra_runs < 1:
        parser.error("--scale, --runs and --extra-runs must be at least 1, --warmup at least 0")
    stop_on_sigterm()

    print(f"bench_segments: {CAMPAIGN.relative_to(REPO)}, scale {args.scale}, at {SEED_SHOP_AT.isoformat()}")
    if "postgresql" in engines:
        print(f"PostgreSQL server: {postgres_server_url()}")
    with tempfile.TemporaryDirectory(prefix="orch-bench-segments-") as scratch, Databases(Path(scratch)) as dbs:
        dbs.check(engines)
        with step(f"generating the seed shop at scale {args.scale}"):
            customers_csv, orders_csv, _, _ = write_seed_csv(args.scale, Path(scratch) / "csv")
        results = {name: bench_engine(dbs, name, (customers_csv, orders_csv), args) for name in engines}
        print_results(args, results)
    failed = [name for name, r in results.items() if not r["pass"]]
    if failed:
        print(f"\nFAIL: {', '.join(failed)} over the target ratio {args.target}")
        return 1 if args.strict else 0
    print(f"\nPASS: every engine within the target ratio {args.target}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as exc:
        print(f"\nbench_segments: error: {exc}", file=sys.stderr)
        sys.exit(1)
