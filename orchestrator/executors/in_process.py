"""The default executor: plan batch by batch in this process and send what each batch made due at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text

from orchestrator.dispatch.dispatcher import Dispatcher, DrainReport
from orchestrator.executors.base import Executor

if TYPE_CHECKING:
    from orchestrator.pipeline import CampaignRunner, RunResult
    from orchestrator.segments import Audience


class InProcessExecutor(Executor):
    kind = "in_process"

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
        dispatcher = None
        if send:
            channel = runner.channels.__getitem__
            dispatcher = Dispatcher(runner.engine, runner.settings, channel, progress=runner.progress)
            result.dispatch = DrainReport()
        total = result.conditions[-1]["cumulative"] if result.conditions else None  # the audience, for the bar
        statistics = None if result.dry_run else LedgerStatistics(runner.engine)
        for batch, last in _marking_last(audience.batches(runner.plan.campaign.dispatch.batch_size)):
            runner.plan_batch(batch, result, run, sample=sample)
            runner.progress.advance("planning", len(batch), total=total)
            if statistics is not None:
                statistics.grew_to(result.audience)
            if dispatcher is not None and not last:  # send what this batch made due; retries wait for the end
                result.dispatch.merge(dispatcher.drain(result.run_id, linger=0, count_open=False))
        if dispatcher is not None:
            result.dispatch.merge(dispatcher.drain(result.run_id))


class LedgerStatistics:
    """On PostgreSQL, the planner's statistics of the ledger refreshed as a large run grows it, at 10,000 rows
    and each doubling after: planned for the table as it was (empty, say), the run's look-ups by member scan
    every row of the run so far, and a run of a million slows down quadratically. Autovacuum does the same,
    but only once a minute, and not at all where it is off."""

    FIRST = 10_000

    def __init__(self, engine: Engine):
        self.engine = engine
        self.next = self.FIRST if engine.dialect.name == "postgresql" else None

    def grew_to(self, members: int) -> None:
        if self.next is None or members < self.next:
            return
        with self.engine.connect() as conn:
            conn.execute(text("ANALYZE deliveries, delivery_payloads"))
            conn.commit()
        self.next = members * 2


def _marking_last(batches: Iterator[list[dict[str, Any]]]) -> Iterator[tuple[list[dict[str, Any]], bool]]:
    """Each batch with whether it is the last: the last one's messages go out in the final drain, so that a run
    of one batch (most scheduler ticks) drains once, not twice."""
    ahead = next(batches, None)
    while ahead is not None:
        batch, ahead = ahead, next(batches, None)
        yield batch, ahead is None
