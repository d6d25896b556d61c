"""What every command needs, built on first use: settings, the database engine, the plugins."""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from orchestrator.config import Settings, database_url, load_settings
from orchestrator.db.engine import create_db_engine, schema_is_current
from orchestrator.errors import InputError, RuntimeFailure
from orchestrator.masking import mask_text, mask_url
from orchestrator.timeutil import parse_run_time


class AppContext:
    def __init__(self, config_path: str | None = None, db_url: str | None = None):
        self.config_path = config_path
        self.db_url_override = db_url
        self._engine: Engine | None = None

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self.config_path)

    @property
    def db_url(self) -> str:
        return database_url(self.settings, self.db_url_override)

    def parse_at(self, text: str | None) -> datetime:
        """``--at`` as an aware time (no offset: the configured zone); now, to the second, when absent."""
        if text is None:
            return datetime.now(self.settings.tz).replace(microsecond=0)
        try:
            return parse_run_time(text, self.settings.tz)
        except ValueError as exc:
            raise InputError(f"--at: {exc}", hint="e.g. --at 2026-03-01 or --at 2026-03-01T12:00:00+08:00") from None

    def raw_engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_db_engine(self.db_url)
        return self._engine

    @property
    def engine(self) -> Engine:
        """The engine of a database whose schema is current (commands other than ``init`` use this)."""
        self._refuse_missing_sqlite_file()
        engine = self.raw_engine()
        try:
            current = schema_is_current(engine)
        except Exception as exc:
            shown = mask_url(engine.url.render_as_string(hide_password=True))  # also a password in the query
            raise RuntimeFailure(f"cannot open the database {shown}: {mask_text(mask_url(str(exc)))}") from None
        if not current:
            raise RuntimeFailure(
                f"the database {engine.url.render_as_string(hide_password=True)} is not initialised or is out of date",
                hint="run 'orchestrator init' to create or upgrade it",
            )
        return engine

    def _refuse_missing_sqlite_file(self) -> None:
        """Opening a missing SQLite file would create an empty one (and its folder): only ``init`` may."""
        try:
            url = make_url(self.db_url)
        except ArgumentError:
            return  # create_db_engine reports it
        path = url.database
        if url.get_backend_name() != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
            return
        if not Path(path).exists():
            raise RuntimeFailure(
                f"the database file {Path(path).resolve()} does not exist",
                hint="run 'orchestrator init' (with the same --config / --db) to create it",
            )

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
