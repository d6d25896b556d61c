"""Engine creation, sessions and migrations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.errors import InputError, RuntimeFailure
from orchestrator.masking import mask_url

MIGRATIONS = Path(__file__).parent / "migrations"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")
#: the source tree this package runs from (an editable install or a bare checkout), or None once installed
CHECKOUT_ROOT = next((p for p in Path(__file__).resolve().parents[2:3] if (p / "setup.cfg").is_file()), None)


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def driver_hint(drivername: str) -> str:
    """How to install the PostgreSQL driver, said the way that works for how the orchestrator was installed."""
    if drivername != "postgresql+psycopg":
        return f"install the DBAPI module for {drivername}, or use postgresql://host/db (psycopg 3)"
    if CHECKOUT_ROOT is not None:
        return f"from this checkout: pip install -e '{CHECKOUT_ROOT}[postgres]'"
    return "pip install 'campaign-orchestrator[postgres]' (from a checkout: pip install -e '.[postgres]')"


def create_db_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
        parsed.get_dialect()  # an unknown kind of database is an input error too
    except NoSuchModuleError:
        if parsed.get_backend_name() in SUPPORTED_BACKENDS:  # a known database, an unknown driver for it
            raise InputError(
                f"unknown database driver {parsed.drivername!r}",
                hint="use sqlite:///path.db, or postgresql://host/db (the psycopg driver)",
            ) from None
        raise InputError(
            f"{parsed.get_backend_name()!r} databases are not supported (the database URL {mask_url(url)!r})",
            hint="the orchestrator runs on SQLite (sqlite:///orchestrator.db) and PostgreSQL (postgresql://host/db)",
        ) from None
    except (ArgumentError, ValueError) as exc:
        raise InputError(
            f"{mask_url(url)!r} is not a database URL ({mask_url(str(exc))})",
            hint="use e.g. sqlite:///orchestrator.db or postgresql://user@host:5432/db",
        ) from None
    if parsed.host and "@" in parsed.host:  # user:p@ss@host: the rest of the password would be taken as the host
        raise InputError(
            f"{mask_url(url)!r} is not a database URL: the password holds an '@'",
            hint="URL-encode it: write %40 for each @ in the password",
        )
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise InputError(
            f"{backend!r} databases are not supported (the URL {parsed.render_as_string(hide_password=True)!r})",
            hint="the orchestrator runs on SQLite (sqlite:///orchestrator.db) and PostgreSQL (postgresql://host/db)",
        )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    try:
        # statement parameters (names, addresses, phones) stay out of error messages and logs unless debugging
        engine = create_engine(parsed, hide_parameters=not os.environ.get("ORCHESTRATOR_DEBUG"))
    except ModuleNotFoundError as exc:
        raise RuntimeFailure(
            f"the driver for {parsed.drivername} is not installed (no module named {exc.name!r})",
            hint=driver_hint(parsed.drivername),
        ) from None
    except NoSuchModuleError:
        raise InputError(
            f"unknown database driver {parsed.drivername!r}",
            hint="use sqlite:///path.db, or postgresql://host/db (the psycopg driver)",
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> str:
    """Create or upgrade the schema to the newest migration; returns the revision."""
    cfg = alembic_config(engine)
    command.upgrade(cfg, "head")
    return ScriptDirectory.from_config(cfg).get_current_head()


def schema_is_current(engine: Engine) -> bool:
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() == head


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session
