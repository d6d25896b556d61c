"""Shared helpers of the benchmarks: seed-shop CSV generation, throw-away databases, timing, peak memory, tables.

Nothing here is part of the product; the benchmarks import it as a sibling module (``benchmarks/`` is put on
``sys.path`` by running a script from it).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from orchestrator.config import Settings, load_settings
from orchestrator.db.engine import create_db_engine, migrate
from orchestrator.demo.generator import SeedShop

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "orchestrator.yaml"
ENGINES = ("sqlite", "postgresql")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


class BenchmarkError(RuntimeError):
    """A benchmark could not measure what it set out to (wrong results, a failed child, no server)."""


# --- configuration --------------------------------------------------------------------------------------------


def bench_settings() -> Settings:
    """The example configuration the demo runs with (``config/orchestrator.yaml``), or the defaults."""
    return load_settings(CONFIG) if CONFIG.is_file() else Settings()


def parse_engines(value: str) -> list[str]:
    engines = [e.strip() for e in value.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise SystemExit(f"--engines: expected a comma-separated subset of {','.join(ENGINES)}, got {value!r}")
    return engines


def postgres_server_url() -> str:
    """The PostgreSQL server the benchmarks create their own databases on (never tables in its database)."""
    return (
        os.environ.get("ORCHESTRATOR_BENCH_POSTGRES_URL")
        or os.environ.get("ORCHESTRATOR_TEST_POSTGRES_URL")
        or DEFAULT_POSTGRES_URL
    )


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that ``finally`` blocks drop the databases."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


# --- data -----------------------------------------------------------------------------------------------------


def write_seed_csv(scale: int, folder: Path) -> tuple[Path, Path, SeedShop, float]:
    """The seed shop at ``scale`` as ``customers.csv`` and ``orders.csv`` in ``folder``; returns the seconds."""
    shop = SeedShop(scale=scale)
    started = time.perf_counter()
    customers_csv, orders_csv = shop.write_csv(folder)
    return customers_csv, orders_csv, shop, time.perf_counter() - started


# --- databases ------------------------------------------------------------------------------------------------


class Databases:
    """Fresh, migrated databases for one benchmark run, all dropped (PostgreSQL) or deleted (SQLite) at the end.

    SQLite files live in ``folder``; PostgreSQL databases are created on ``postgres_server_url()`` as
    ``orch_bench_<run>_<label>``.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.run = uuid.uuid4().hex[:8]
        self._admin: Engine | None = None
        self._pg_names: list[str] = []
        self._engines: list[Engine] = []

    def __enter__(self) -> Databases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _server(self):
        return make_url(postgres_server_url()).set(drivername="postgresql+psycopg")

    def _admin_engine(self) -> Engine:
        if self._admin is None:
            admin = create_engine(self._server(), isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except Exception as exc:
                admin.dispose()
                shown = self._server().render_as_string(hide_password=True)
                raise BenchmarkError(
                    f"PostgreSQL at {shown} is unavailable ({type(exc).__name__}: {str(exc).splitlines()[0]}); set "
                    "ORCHESTRATOR_BENCH_POSTGRES_URL or run with --engines sqlite"
                ) from None
            self._admin = admin
        return self._admin

    def check(self, engines: Iterable[str]) -> None:
        """Fail now, before minutes of data generation, if a server the run needs is not there."""
        if "postgresql" in engines:
            self._admin_engine()

    def create(self, engine_name: str, label: str, *, migrated: bool = True) -> str:
        """A new empty database (schema migrated to head unless ``migrated=False``); returns its URL."""
        if engine_name == "sqlite":
            path = self.folder / f"{label}.db"
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            url = f"sqlite:///{path}"
        elif engine_name == "postgresql":
            name = f"orch_bench_{self.run}_{label}".lower()
            with self._admin_engine().connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            self._pg_names.append(name)
            url = self._server().set(database=name).render_as_string(hide_password=False)
        else:
            raise ValueError(engine_name)
        if migrated:
            engine = create_db_engine(url)
            try:
                migrate(engine)
            finally:
                engine.dispose()
        return url

    def engine(self, url: str) -> Engine:
        """The product's engine for ``url``, disposed when the databases are dropped."""
        engine = create_db_engine(url)
        self._engines.append(engine)
        return engine

    def drop(self, url: str) -> None:
        """Drop one database now (PostgreSQL) or delete its file (SQLite)."""
        parsed = make_url(url)
        for engine in [e for e in self._engines if e.url.database == parsed.database]:
            engine.dispose()
            self._engines.remove(engine)
        if parsed.get_backend_name() == "sqlite":
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{parsed.database}{suffix}").unlink(missing_ok=True)
        elif parsed.database in self._pg_names:
            with self._admin_engine().connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
            self._pg_names.remove(parsed.database)

    def close(self) -> None:
        for engine in self._engines:
            engine.dispose()
        self._engines.clear()
        if self._admin is not None:
            try:
                if self._pg_names:
                    with self._admin.connect() as conn:
                        for name in list(self._pg_names):
                            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                            self._pg_names.remove(name)
            finally:
                self._admin.dispose()
                self._admin = None


def settle(engine: Engine) -> None:
    """Bring a freshly loaded database to its steady state before timing queries.

    PostgreSQL: ``VACUUM ANALYZE`` (what autovacuum does within a minute of a bulk load; doing it explicitly keeps
    plans and index-only scans from changing half-way through a measurement). SQLite: a WAL checkpoint only; the
    product never runs ``ANALYZE`` there, so neither do we.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    elif engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


# --- timing ---------------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def median_times(
    candidates: dict[str, Callable[[], Any]], runs: int, warmup: int = 1
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median seconds of each candidate over ``runs`` runs after ``warmup`` unmeasured ones.

    Runs are interleaved (a, b, a, b, …) so that load from elsewhere on the machine hits every candidate alike.
    """
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(runs):
        for name, fn in candidates.items():
            samples[name].append(timed(fn)[0])
    return {name: statistics.median(values) for name, values in samples.items()}, samples


# --- peak memory ----------------------------------------------------------------------------------------------


def maxrss_bytes(ru_maxrss: int) -> int:
    """``ru_maxrss`` is kilobytes on Linux and bytes on macOS."""
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024


def self_peak_rss() -> int:
    return maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# Runs one command and records its rusage. Started fresh (and tiny) for every measurement, because on Linux a
# child's ru_maxrss starts from the peak RSS of the process that exec'd it (vfork shares the parent's memory until
# exec, and exec keeps that memory's high-water mark): launched straight from the benchmark, whose own peak grows
# with the data it generates, an import child would report the benchmark's peak, not its own.
_LAUNCHER = """
import json, resource, subprocess, sys
status = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as handle:
    json.dump({"status": status, "ru_maxrss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}, handle)
sys.exit(0)
"""


class Child:
    """``python argv…`` in a child process that writes a JSON result to ``result_file``, started at once.

    ``wait()`` returns the result and the child's peak RSS in bytes: ``getrusage(RUSAGE_CHILDREN).ru_maxrss``
    taken by a minimal launcher process whose only child it is (see ``_LAUNCHER``). Each child runs in a session
    of its own, so that an interrupted benchmark stops exactly the processes it started (``kill()``).
    """

    def __init__(self, argv: Sequence[str], result_file: Path):
        self.argv = list(argv)
        self.result_file = result_file
        self.usage_file = result_file.with_name(result_file.name + ".rusage")
        for path in (self.result_file, self.usage_file):
            path.unlink(missing_ok=True)
        command = [sys.executable, "-I", "-c", _LAUNCHER, str(self.usage_file), sys.executable, *self.argv]
        self.process = subprocess.Popen(command, cwd=REPO, start_new_session=True)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def wait(self) -> tuple[dict[str, Any], int]:
        try:
            self.process.wait()
        except BaseException:
            self.kill()
            raise
        usage = json.loads(self.usage_file.read_text()) if self.usage_file.is_file() else {}
        status = usage.get("status", self.process.returncode)
        if self.process.returncode != 0 or status != 0:
            raise BenchmarkError(f"child {' '.join(self.argv[:2])} … failed with exit status {status}")
        return json.loads(self.result_file.read_text()), maxrss_bytes(usage["ru_maxrss"])


def run_child(argv: Sequence[str], result_file: Path) -> tuple[dict[str, Any], int]:
    """``Child(argv, result_file).wait()``: one child, waited for."""
    return Child(argv, result_file).wait()


def run_children(children: dict[str, tuple[Sequence[str], Path]]) -> dict[str, tuple[dict[str, Any], int]]:
    """Start every child at once and wait for all of them (for measurements that are not timed)."""
    started: dict[str, Child] = {}
    try:
        for name, (argv, result_file) in children.items():
            started[name] = Child(argv, result_file)
        return {name: child.wait() for name, child in started.items()}
    finally:
        for child in started.values():
            child.kill()


# --- output ---------------------------------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def rate(rows: float, seconds: float) -> str:
    return f"{rows / seconds:,.0f}/s" if seconds > 0 else "n/a"


def secs(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:,.2f}×" if reference else "n/a"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Iterable[int] = ()) -> str:
    """A plain-text table (no colours or box characters, so it reads the same in a log)."""
    body = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in body)) if body else len(str(h)) for i, h in enumerate(headers)]
    aligned = set(right)

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in aligned else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip()

    out = [line([str(h) for h in headers]), line(["-" * w for w in widths])]
    out += [line(row) for row in body]
    return "\n".join(out)


def heading(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 100 - len(title)), flush=True)


@contextmanager
def step(message: str) -> Iterator[None]:
    """Progress on stderr (``…`` then the seconds), so stdout holds only the results."""
    print(f"  {message} …", end="", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        yield
    finally:
        print(f" {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
