"""The Celery executor's coordinator: the process that runs the campaign (``orchestrator run``, the scheduler's
``fire``, ``resume``) enqueues the work, waits for it, and reports as an in-process run does.

1. Planning: the audience's customer keys are cut into partitions of ``executor.partition_size`` members; one
   ``plan_partition`` task each. The coordinator adds up the counts each returns (``partials``), advancing the
   same "planning" bar. A partition lost with its worker is handed out again by the broker (acks late); one
   started by a worker that no longer answers a ping is enqueued again at once rather than after the broker's
   visibility timeout.
2. Dispatch: ``dispatch_claims`` tasks, one per claim batch due, until nothing is due; retries due within
   ``dispatch.linger_seconds`` are waited for, as in-process. The coordinator watches the ledger, not only the
   tasks: claims of a dead worker are released (at once on this host, else when their lease ends) and, when rows
   are due while no task makes progress, more tasks are enqueued, so a task lost with its worker costs time,
   never messages.
3. The outcomes (sent, failed, retrying, skipped at send time) are counted from the ledger: the rows each state
   gained during dispatch, so a task whose result never came back is still counted.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, func, select

from orchestrator import ledger
from orchestrator.config import ExecutorConfig
from orchestrator.db.models import Delivery
from orchestrator.dispatch import claims
from orchestrator.dispatch.dispatcher import DrainReport
from orchestrator.errors import RuntimeFailure
from orchestrator.executors import partials
from orchestrator.executors.base import Executor
from orchestrator.executors.celery_app import DISPATCH_CLAIMS, PLAN_PARTITION, build_app
from orchestrator.timeutil import utcnow

if TYPE_CHECKING:
    from celery.result import AsyncResult

    from orchestrator.pipeline import CampaignRunner, RunResult
    from orchestrator.segments import Audience

POLL_SECONDS = 0.2
STALL_SECONDS = 5.0  # rows due, no task progressing for this long: the tasks were lost, enqueue more
MAX_WAVE = 500  # dispatch tasks enqueued at once; more follow as these finish


class CeleryExecutor(Executor):
    kind = "celery"

    def __init__(self, config: ExecutorConfig):
        self.config = config
        self.app = build_app(config)

    def plan_and_send(
        self,
        runner: CampaignRunner,
        audience: Audience,
        result: RunResult,
        run: dict[str, Any],
        *,
        sample: int,
        send: bool,
    ) -> None:
        try:
            self._plan(runner, audience, result, run)
            if send:
                self._dispatch(runner, result)
        finally:
            self.app.close()

    # -- planning ---------------------------------------------------------------------------------------------
    def _plan(self, runner: CampaignRunner, audience: Audience, result: RunResult, run: dict[str, Any]) -> None:
        task_run = {
            "run_pk": run["run_pk"],
            "campaign_pk": run["campaign_pk"],
            "file": str(runner.plan.file),
            "content_hash": runner.plan.content_hash,
            "at": result.at.isoformat(),
            "tick": runner.tick,
        }
        bounds = partition_bounds(runner.engine, audience, self.config.partition_size)
        pending = {self._send(PLAN_PARTITION, task_run, low, high): (low, high) for low, high in bounds}
        total = result.conditions[-1]["cumulative"] if result.conditions else None
        patience = self.config.task_time_limit_seconds + self.config.visibility_timeout_seconds
        last_done = checked = time.monotonic()
        while pending:
            for task in [t for t in pending if t.ready()]:
                low, high = pending.pop(task)
                data = _outcome(task, f"planning run {run['run_pk']} (customer keys {low}..{high})")
                partials.add(result, data)
                runner.progress.advance("planning", data["audience"], total=total)
                last_done = time.monotonic()
            if time.monotonic() - checked > STALL_SECONDS:  # a partition started by a worker that has since died
                checked = time.monotonic()
                for task in [t for t in pending if t.state == "STARTED" and not self._alive(t.info)]:
                    bounds = pending.pop(task)
                    task.forget()
                    pending[self._send(PLAN_PARTITION, task_run, *bounds)] = bounds
            if pending and time.monotonic() - last_done > patience:
                raise RuntimeFailure(
                    f"run {run['run_pk']}: {len(pending)} audience partitions were not planned within {patience:g} s",
                    hint=f"are `orchestrator worker` processes running on queue {self.config.queue}? "
                    f"`orchestrator resume {run['run_pk']}` continues the run",
                )
            time.sleep(POLL_SECONDS)

    # -- dispatch ---------------------------------------------------------------------------------------------
    def _dispatch(self, runner: CampaignRunner, result: RunResult) -> None:
        engine, run_pk = runner.engine, result.run_id
        linger, claim_size = runner.settings.dispatch.linger_seconds, runner.settings.dispatch.claim_size
        with engine.connect() as conn:
            before = _state_counts(conn, run_pk)
        report = DrainReport()
        outstanding: list[AsyncResult] = []
        paused_for: float | None = None  # the last tasks sent nothing: their channels may send in this many s
        marker, moved_at = None, time.monotonic()
        while True:
            for task in [t for t in outstanding if t.ready()]:
                outstanding.remove(task)
                data = _outcome(task, f"dispatching run {run_pk}")
                attempted = sum(data["outcomes"].values())
                if attempted:
                    paused_for, report.paused = None, {}
                    runner.progress.advance("sending", attempted - data["outcomes"].get("skipped", 0))
                elif data["wait"] is not None:
                    paused_for = data["wait"] if paused_for is None else min(paused_for, data["wait"])
                    report.paused.update(data["paused"])
            with engine.begin() as conn:
                claims.release_dead_claims(conn, run_pk)  # a worker on this host killed mid-batch: at once
                due, claimed, final = _progress(conn, run_pk)
            now = time.monotonic()
            if (due, claimed, final) != marker:
                marker, moved_at = (due, claimed, final), now
            if outstanding and (due or claimed) and now - moved_at <= STALL_SECONDS:
                time.sleep(POLL_SECONDS)  # tasks at work
                continue
            # no task in flight, or those in flight make no progress (lost with their worker)
            if due:
                if paused_for is not None and not outstanding:
                    if paused_for > linger:
                        break  # paused longer than a run lingers: the rest waits for `orchestrator dispatch`
                    time.sleep(paused_for)
                    paused_for = None
                waves = min(MAX_WAVE, math.ceil(due / claim_size))
                outstanding += [self._send(DISPATCH_CLAIMS, run_pk) for _ in range(waves)]
                moved_at = time.monotonic()
            elif claimed:
                time.sleep(POLL_SECONDS)  # a claim held by a worker elsewhere: sent by it, or free at its lease end
            else:
                with engine.connect() as conn:
                    wake = claims.next_wake(conn, run_pk, None)
                left = None if wake is None else (wake - utcnow()).total_seconds()
                if left is None or left > linger:
                    break  # tasks still outstanding were lost, or will find nothing to do
                time.sleep(min(max(left, 0.0), 1.0))
            time.sleep(POLL_SECONDS)
        # a task whose messages are all recorded may still be closing its channels (a call list's workbook is
        # written then): the run ends when they are done, or after STALL_SECONDS for tasks lost with a worker
        settle_by = time.monotonic() + STALL_SECONDS
        while any(not task.ready() for task in outstanding) and time.monotonic() < settle_by:
            time.sleep(POLL_SECONDS)
        for task in outstanding:
            task.forget()
        with engine.connect() as conn:
            after = _state_counts(conn, run_pk)
            report.open = ledger.open_counts(conn, run_pk)
        gained = Counter({state: after[state] - before[state] for state in ("sent", "failed", "skipped")})
        gained["retrying"] = after["retrying"]
        report.outcomes = +gained  # states with none left out, as in-process
        result.dispatch = report

    def _alive(self, started: Any) -> bool:
        """Whether the worker that started a task still answers (its pool process may have died: then the
        broker hands the task out again by itself, ``task_reject_on_worker_lost``). A worker that is gone leaves
        its task unacknowledged until the visibility timeout; planning it again at once is safe (idempotent)."""
        hostname = started.get("hostname") if isinstance(started, dict) else None
        if not hostname:
            return True
        return bool(self.app.control.ping(destination=[hostname], timeout=1.0))

    def _send(self, name: str, *args: Any) -> AsyncResult:
        return self.app.send_task(name, args=args, queue=self.config.queue)


def _outcome(task: AsyncResult, doing: str) -> dict[str, Any]:
    try:
        data = task.get(timeout=60, propagate=True)
    except Exception as exc:
        raise RuntimeFailure(f"{doing}: a worker failed: {exc}") from None
    finally:
        task.forget()
    return data


def partition_bounds(engine, audience: Audience, size: int) -> list[tuple[int | None, int | None]]:
    """Customer-key ranges of ``size`` audience members each, covering every key (the first and last open-ended,
    so a member the audience gains meanwhile still falls in one); none for an empty audience."""
    from orchestrator.facts import customers

    starts: list[int] = []
    with engine.connect() as conn:
        keys = conn.execution_options(stream_results=True, yield_per=10_000).execute(
            audience.ids_statement().order_by(customers.c.id)
        )
        for index, key in enumerate(keys.scalars()):
            if index % size == 0:
                starts.append(key)
    return [
        (None if i == 0 else low, starts[i + 1] - 1 if i + 1 < len(starts) else None) for i, low in enumerate(starts)
    ]


def _progress(conn: Connection, run_pk: int) -> tuple[int, int, int]:
    """Rows of the run due now and unclaimed, rows under a live claim, rows pending no more."""
    now = utcnow()
    mine = and_(Delivery.run_pk == run_pk, Delivery.state == "pending")
    due = conn.execute(select(func.count()).where(mine, claims.due(now, None), claims.unclaimed(now))).scalar_one()
    claimed = conn.execute(select(func.count()).where(mine, Delivery.claim_expires >= now)).scalar_one()
    final = conn.execute(
        select(func.count()).where(Delivery.run_pk == run_pk, Delivery.state.in_(("sent", "failed", "skipped")))
    ).scalar_one()
    return due, claimed, final


def _state_counts(conn: Connection, run_pk: int) -> Counter:
    counts = Counter(
        dict(
            conn.execute(
                select(Delivery.state, func.count()).where(Delivery.run_pk == run_pk).group_by(Delivery.state)
            ).all()
        )
    )
    counts["retrying"] = conn.execute(
        select(func.count()).where(Delivery.run_pk == run_pk, Delivery.state == "pending", Delivery.attempts > 0)
    ).scalar_one()
    return counts
