"""Durations as marketers write them: ``90d``, ``2w``, ``12h``, ``30m`` (minutes)."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^\s*(\d+)\s*(d|w|h|m|s)\s*$")
_SECONDS = {"d": 86400, "w": 604800, "h": 3600, "m": 60, "s": 1}
MAX_DURATION = timedelta(days=36500)
_UNITS = {"d": "days", "w": "weeks", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    match = _DURATION.match(str(value)) if isinstance(value, str | int) and not isinstance(value, bool) else None
    if not match:
        raise ValueError(
            f"{value!r} is not a duration; write a whole number and a unit: 90d (days), 2w (weeks), "
            "12h (hours), 30m (minutes), 45s (seconds)"
        )
    amount, unit = int(match.group(1)), match.group(2)
    if amount * _SECONDS[unit] > MAX_DURATION.total_seconds():
        # a longer window reaches before the first representable date (and overflows timedelta itself)
        raise ValueError(f"{value!r} is too long: a duration is at most {MAX_DURATION.days}d (100 years)")
    return timedelta(**{_UNITS[unit]: amount})


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
