"""Which missed ticks still fire, when a scheduler finds ticks it did not fire in time (it was down or busy).

A tick no older than ``misfire_grace`` (default 5m) is on time and fires. Older ones follow ``misfire``:

* ``skip`` - none of them fires;
* ``latest`` (the default) - only the most recent missed tick fires, and only when no on-time tick does;
* ``catch_up`` - each fires, oldest first (each is its own run, keyed by its time).

Replay fires every tick of its range: it is a backtest, nothing there is late.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from orchestrator.campaign.schema import Schedule

DEFAULT_GRACE = timedelta(minutes=5)


def to_fire(schedule: Schedule, missed: Sequence[datetime], now: datetime) -> list[datetime]:
    """The ticks of ``missed`` (in order, none after ``now``) to fire at ``now``."""
    grace = schedule.misfire_grace if schedule.misfire_grace is not None else DEFAULT_GRACE
    on_time = [t for t in missed if now - t <= grace]
    late = [t for t in missed if now - t > grace]
    if schedule.misfire == "catch_up":
        return list(missed)
    if schedule.misfire == "latest" and late and not on_time:
        return [late[-1]]
    return on_time
