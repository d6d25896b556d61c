"""Executors: where a run's planning and dispatch happen (``executor:`` in the config, docs/deployment.md).

``in_process`` (the default) plans the audience batch by batch and sends in the process that runs the campaign.
``celery`` splits the same work into Celery tasks - audience partitions, then claim batches - run by
``orchestrator worker`` processes on any number of machines sharing one PostgreSQL database; the process that
runs the campaign coordinates them and reports the same summary.
"""

from __future__ import annotations

from sqlalchemy import Engine

from orchestrator.config import Settings
from orchestrator.errors import InputError
from orchestrator.executors.base import Executor
from orchestrator.executors.in_process import InProcessExecutor

IN_PROCESS = InProcessExecutor()


def require_shared_database(settings: Settings, backend: str) -> None:
    """Celery workers on other machines must reach the database the run is in: SQLite, a local file, is refused."""
    if settings.executor.kind == "celery" and backend != "postgresql":
        raise InputError(
            f"executor: kind celery needs a PostgreSQL database; this one is {backend}",
            file=settings.source,
            hint="workers on other machines cannot share a local SQLite file: use --db postgresql://host/db, or "
            "executor: {kind: in_process}",
        )


def for_settings(settings: Settings, engine: Engine) -> Executor:
    """The executor the config names; ``InputError`` for Celery on a database workers cannot share."""
    if settings.executor.kind == "in_process":
        return IN_PROCESS
    require_shared_database(settings, engine.url.get_backend_name())
    from orchestrator.executors.coordinator import CeleryExecutor  # Celery loads only when configured

    return CeleryExecutor(settings.executor)
