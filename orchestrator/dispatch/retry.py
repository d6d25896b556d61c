"""When a transiently failed message is tried again: exponential backoff with jitter, bounded by count and age."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from orchestrator.config import RetryConfig


@dataclass(frozen=True)
class RetryDecision:
    retry_at: datetime | None  # None: give up, the message has failed for good
    why_not: str | None = None


class RetryPolicy:
    def __init__(self, config: RetryConfig, rng: random.Random | None = None):
        self.config = config
        self._rng = rng or random.Random()

    def delay(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: the capped exponential delay, jittered into [d/2, d] so that
        messages failed together do not come back together."""
        cfg = self.config
        ceiling = min(cfg.max_delay_seconds, cfg.first_delay_seconds * 2 ** max(attempts - 1, 0))
        return self._rng.uniform(ceiling / 2, ceiling)

    def after_failure(self, attempts: int, created_at: datetime, now: datetime) -> RetryDecision:
        """``attempts`` counts the attempt that just failed."""
        cfg = self.config
        if attempts >= cfg.max_attempts:
            return RetryDecision(None, f"gave up after {attempts} attempts")
        retry_at = now + timedelta(seconds=self.delay(attempts))
        if retry_at - created_at > timedelta(hours=cfg.max_age_hours):
            return RetryDecision(None, f"gave up: older than {cfg.max_age_hours:g} h")
        return RetryDecision(retry_at)
