"""A circuit breaker per channel: a provider that keeps failing is paused, not hammered with the whole audience.

Closed: every attempt goes through and is remembered (the last ``window`` of them). When at least ``min_calls``
are remembered and the transient share reaches ``failure_rate``, the breaker opens for ``cooldown_seconds``. Then
it is half-open: one message is let through; success closes it, failure opens it again for twice as long (at most
16 cooldowns). Permanent failures are about a recipient, not the provider, so they count as the provider working.
The breaker is per process: each dispatch process learns on its own, which is what a local outage needs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from orchestrator.config import BreakerConfig


class CircuitBreaker:
    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self._recent: deque[bool] = deque(maxlen=config.window)  # True: the attempt failed transiently
        self._open_until: float | None = None
        self._trips = 0
        self.opened = 0  # how many times it opened, for reports

    @property
    def state(self) -> str:
        if self._open_until is None:
            return "closed"
        return "open" if self._clock() < self._open_until else "half_open"

    def allowed(self) -> int | None:
        """How many messages may go now: None for no limit, 0 while open, 1 when half-open."""
        state = self.state
        return None if state == "closed" else 0 if state == "open" else 1

    def reopens_in(self) -> float:
        return max(0.0, (self._open_until or 0.0) - self._clock())

    def record(self, transient_failure: bool) -> None:
        if self._open_until is not None:  # the half-open probe decides
            if transient_failure:
                self._open(longer=True)
            else:
                self._open_until, self._trips = None, 0
                self._recent.clear()
            return
        self._recent.append(transient_failure)
        cfg = self.config
        if len(self._recent) >= cfg.min_calls and sum(self._recent) >= cfg.failure_rate * len(self._recent):
            self._open(longer=False)

    def _open(self, *, longer: bool) -> None:
        self._trips = min(self._trips + 1, 5) if longer else 1
        self._open_until = self._clock() + self.config.cooldown_seconds * 2 ** (self._trips - 1)
        self._recent.clear()
        self.opened += 1
