"""The default executor: plan batch by batch in this process and send what each batch made due at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

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
        for batch, last in _marking_last(audience.batches(runner.plan.campaign.dispatch.batch_size)):
            runner.plan_batch(batch, result, run, sample=sample)
            runner.progress.advance("planning", len(batch), total=total)
            if dispatcher is not None and not last:  # send what this batch made due; retries wait for the end
                result.dispatch.merge(dispatcher.drain(result.run_id, linger=0, count_open=False))
        if dispatcher is not None:
            result.dispatch.merge(dispatcher.drain(result.run_id))


def _marking_last(batches: Iterator[list[dict[str, Any]]]) -> Iterator[tuple[list[dict[str, Any]], bool]]:
    """Each batch with whether it is the last: the last one's messages go out in the final drain, so that a run
    of one batch (most scheduler ticks) drains once, not twice."""
    ahead = next(batches, None)
    while ahead is not None:
        batch, ahead = ahead, next(batches, None)
        yield batch, ahead is None
