"""The contract between a run and whatever plans and sends it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from orchestrator.pipeline import CampaignRunner, RunResult
    from orchestrator.segments import Audience


class Executor(ABC):
    kind: ClassVar[str]

    @abstractmethod
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
        """Decide every member of ``audience`` into the ledger of the open ``run`` (``run_pk``, ``campaign_pk``,
        ``campaign``, ``at``; a dry run has no keys and writes nothing), counting into ``result``; then, when
        ``send``, dispatch what is due and set ``result.dispatch``. ``runner`` does the deciding; the run is
        opened before and finished after by ``CampaignRunner.execute``."""
