"""The worker's side: the two tasks ``orchestrator worker`` runs, each against the worker's own config and database.

- ``plan_partition(run, low, high)``: decide the members of an open run whose customer keys lie in [low, high]
  (None: unbounded), from the campaign file on record - refused if it changed since the run started. Idempotent:
  members already in the ledger are counted from it (``CampaignRunner.plan_range``), so a partition run twice,
  after a crash or a redelivery, writes nothing twice.
- ``dispatch_claims(run_pk)``: one claim batch of each channel of the run with something due, sent and recorded
  (``Dispatcher.serve_round``). Idempotent: it sends only what it claimed, and claims only what is due.

Neither receives personal data or credentials through the broker: the task carries keys, a file path and times.
Errors are raised with personal data masked, since the broker stores them and the worker logs them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from orchestrator.errors import OrchestratorError
from orchestrator.executors import partials
from orchestrator.executors.celery_app import DISPATCH_CLAIMS, PLAN_PARTITION
from orchestrator.masking import describe_unexpected


class TaskFailed(Exception):
    """A task's error, as text with personal data masked (a plain exception JSON can carry)."""


@dataclass(frozen=True)
class WorkerContext:
    config_path: str | None
    db_url: str | None


class _Process:
    """What one worker process builds once and keeps: settings, engine, plugins."""

    def __init__(self, context: WorkerContext):
        from orchestrator.config import database_url, load_settings
        from orchestrator.db.engine import create_db_engine
        from orchestrator.service import Orchestrator

        settings = load_settings(context.config_path)
        # the same database the worker command checked (present, migrated) before its pool started
        self.engine = create_db_engine(database_url(settings, context.db_url))
        self.service = Orchestrator(settings, self.engine)

    def close(self) -> None:
        self.engine.dispose()


_context: WorkerContext | None = None
# one per pool process (prefork) or per thread (--pool threads): database connections are not shared between
# tasks running at the same time
_local = threading.local()


def configure(context: WorkerContext) -> None:
    """Called by ``orchestrator worker`` before the pool starts: each pool process builds its own state."""
    global _context
    _context = context


def _current() -> _Process:
    process = getattr(_local, "process", None)
    if process is None:
        if _context is None:
            raise TaskFailed("this process was not started by `orchestrator worker`")
        process = _local.process = _Process(_context)
    return process


@worker_process_init.connect
def _forget_parent_state(**_: Any) -> None:
    """A forked pool process must not share the parent's database connections."""
    _local.process = None


@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    process = getattr(_local, "process", None)
    if process is not None:
        process.close()


def _masked(task):
    @wraps(task)
    def run(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except TaskFailed:
            raise
        except OrchestratorError as exc:
            raise TaskFailed(exc.render()) from None
        except Exception as exc:
            raise TaskFailed(describe_unexpected(exc)) from None

    return run


@_masked
def plan_partition(run: dict[str, Any], low: int | None, high: int | None) -> dict[str, Any]:
    from orchestrator.scheduler.replay import tick_plan
    from orchestrator.service import Orchestrator

    process = _current()
    # a fresh Orchestrator per partition: a runner closes its channels when it is done
    service = Orchestrator(process.service.settings, process.service.engine, process.service.registry)
    plan = service.load(run["file"])
    if plan.content_hash != run["content_hash"]:
        raise TaskFailed(
            f"run {run['run_pk']}: {run['file']} on this worker differs from the file the run started with; "
            "workers need the same campaign files as the process that runs the campaign"
        )
    at = datetime.fromisoformat(run["at"])
    if run["tick"]:
        plan = tick_plan(service, plan, at)
    ledger_run = {"campaign": plan.name, "at": at, "run_pk": run["run_pk"], "campaign_pk": run["campaign_pk"]}
    result = service.runner(plan).plan_range(at, ledger_run, (low, high))
    return partials.to_json(result)


@_masked
def dispatch_claims(run_pk: int) -> dict[str, Any]:
    from orchestrator.dispatch.dispatcher import Dispatcher
    from orchestrator.service import Orchestrator

    process = _current()
    # channels of their own, closed when the task ends: a channel finishes its files on close (a call list's
    # workbook), and a worker lives far longer than the run it sent for
    service = Orchestrator(process.service.settings, process.service.engine, process.service.registry)
    dispatcher = Dispatcher(service.engine, service.settings, service.channel)
    try:
        report, wait = dispatcher.serve_round(run_pk)
    finally:
        dispatcher.close()
    outcomes = {key: n for key, n in report.outcomes.items() if key != "retrying"}
    return {"outcomes": outcomes, "retrying": len(report.retrying), "paused": report.paused, "wait": wait}


def register(app: Celery) -> None:
    app.task(name=PLAN_PARTITION)(plan_partition)
    app.task(name=DISPATCH_CLAIMS)(dispatch_claims)
