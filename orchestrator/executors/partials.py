"""A partition's counts as JSON (a Celery task's result) and their sum into the run's ``RunResult``.

Partitions are disjoint sets of members, so adding their counts up gives what planning them in one process
would have counted. Money (offers' face value) travels as a decimal string.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.pipeline import RunResult

_COUNTERS = ("skipped", "outcomes", "planned", "segments")
_TOTALS = ("audience", "control", "messages", "deferred")


def to_json(result: RunResult) -> dict[str, Any]:
    return {
        **{name: getattr(result, name) for name in _TOTALS},
        **{name: dict(getattr(result, name)) for name in _COUNTERS},
        "steps": [
            {
                "audience": step.audience,
                "channels": dict(step.channels),
                "deferred": dict(step.deferred),
                "issued": step.offers.issued,
                "withheld": dict(step.offers.withheld),
                # an untouched tally stays the integer 0, as in-process: only a sum of amounts is a Decimal
                "face_value": None if isinstance(step.offers.face_value, int) else str(step.offers.face_value),
            }
            for step in result.steps
        ],
    }


def add(result: RunResult, data: dict[str, Any]) -> None:
    """Add one partition's counts (``to_json``) to ``result``."""
    for name in _TOTALS:
        setattr(result, name, getattr(result, name) + int(data[name]))
    for name in _COUNTERS:
        getattr(result, name).update(Counter({key: int(n) for key, n in data[name].items()}))
    for step, counts in zip(result.steps, data["steps"], strict=True):
        step.audience += counts["audience"]
        step.channels.update(counts["channels"])
        step.deferred.update(counts["deferred"])
        step.offers.issued += counts["issued"]
        for reason, n in counts["withheld"].items():
            step.offers.withheld[reason] = step.offers.withheld.get(reason, 0) + n
        if counts["face_value"] is not None:
            step.offers.face_value += Decimal(counts["face_value"])
