"""A schedule's tick times, computed by APScheduler's triggers.

* ``cron`` - a crontab expression in the schedule's ``timezone`` (CronTrigger). Across a daylight-saving change
  APScheduler 3 fires a local time the spring-forward gap skips one hour later in wall time (02:30 Berlin on the
  last Sunday of March fires at 03:30 CEST, i.e. 01:30 UTC, exactly one hour after 02:30 CET would have been),
  and a time the autumn fall-back repeats once, at its first occurrence (02:30 CEST, 00:30 UTC; APScheduler
  alone would also fire the second one, 02:30 CET, and contact the audience twice that day).
* ``every`` - a fixed interval of elapsed time on a grid anchored at ``start``, or at 2000-01-01 00:00 in the
  schedule's zone (IntervalTrigger): never "process start + interval", so every process computes the same ticks.
  It is elapsed time: ``every: 1d`` stays 24 hours apart across a DST change (use ``cron`` for a wall-clock time).
* ``at`` - one tick (DateTrigger).
* ``relative_to`` - a daily tick at ``time`` (default 10:00) local; whose date it is is the audience's business.
* ``on`` - a check every ``check_every`` (default 1m) on the same fixed grid as ``every``.

``start`` / ``end`` bound every kind: no tick before ``start`` nor at or after ``end``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from orchestrator.campaign.schema import Schedule
from orchestrator.timeutil import parse_clock, zone

DEFAULT_CHECK_EVERY = timedelta(minutes=1)
DEFAULT_WITHIN = timedelta(days=1)  # how old an event may be at a check, when on: has no within
DEFAULT_RELATIVE_TIME = "10:00"
_EPOCH = datetime(2000, 1, 1)  # the grid's anchor, in the schedule's zone, when the schedule has no start
_STEP = timedelta(microseconds=1)


def cron_trigger(expression: str, timezone: str, start: datetime | None = None) -> CronTrigger:
    """The crontab expression (checked by the schema: five fields, day names) as APScheduler's trigger."""
    minute, hour, day, month, day_of_week = expression.split()
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=day_of_week,
        timezone=zone(timezone),
        start_date=start,
    )


def grid_anchor(schedule: Schedule) -> datetime:
    return schedule.start or _EPOCH.replace(tzinfo=zone(schedule.timezone))


def trigger(schedule: Schedule) -> BaseTrigger:
    """The APScheduler trigger of ``schedule`` (``end`` is applied by ``ticks``, as an exclusive bound)."""
    tz = zone(schedule.timezone)
    if schedule.cron is not None:
        return cron_trigger(schedule.cron, schedule.timezone, start=schedule.start)
    if schedule.every is not None or schedule.on is not None:
        interval = schedule.every or schedule.check_every or DEFAULT_CHECK_EVERY
        return IntervalTrigger(seconds=interval.total_seconds(), start_date=grid_anchor(schedule), timezone=tz)
    if schedule.at is not None:
        return DateTrigger(run_date=schedule.at, timezone=tz)
    clock = parse_clock(schedule.at_time or DEFAULT_RELATIVE_TIME)
    return CronTrigger(hour=clock.hour, minute=clock.minute, timezone=tz, start_date=schedule.start)


def ticks(schedule: Schedule, start: datetime, end: datetime) -> Iterator[datetime]:
    """Every tick of ``schedule`` in [start, end), in order, as aware UTC times.

    Each tick is asked for from "now" alone (no previous fire time): APScheduler 3 then steps correctly through
    an autumn fall-back, where passing the previous time made it answer the repeated hour forever."""
    source = trigger(schedule)
    tz = zone(schedule.timezone)
    wall_clock = isinstance(source, CronTrigger)
    lower = max(start, schedule.start) if schedule.start else start
    upper = min(end, schedule.end) if schedule.end else end
    now = lower.astimezone(UTC)
    last_wall = None
    while True:
        fire = source.get_next_fire_time(None, now)
        if fire is None or fire >= upper:
            return
        fire = fire.astimezone(UTC)
        wall = fire.astimezone(tz).replace(tzinfo=None)
        # a local time the fall-back repeats is one tick, at its first occurrence (APScheduler gives both)
        if fire >= lower and not (wall_clock and wall == last_wall):
            yield fire
        if isinstance(source, DateTrigger):
            return
        now, last_wall = fire + _STEP, wall


def describe(schedule: Schedule) -> str:
    """The schedule in words, e.g. 'cron 0 10 * * MON (Asia/Shanghai)'."""
    if schedule.cron is not None:
        what = f"cron {schedule.cron}"
    elif schedule.every is not None:
        what = f"every {_duration(schedule.every)} from {grid_anchor(schedule).isoformat()}"
    elif schedule.at is not None:
        what = f"once at {schedule.at.isoformat()}"
    elif schedule.relative_to is not None:
        days = "on the day" if schedule.days_before == 0 else f"{schedule.days_before} days before"
        what = f"daily at {schedule.at_time or DEFAULT_RELATIVE_TIME}: members {days} their {schedule.relative_to}"
    else:
        within = f" within {_duration(schedule.within or DEFAULT_WITHIN)}"
        check = _duration(schedule.check_every or DEFAULT_CHECK_EVERY)
        what = f"on {schedule.on}{within}, checked every {check}"
    bounds = "".join(
        f", {word} {value.isoformat()}" for word, value in (("from", schedule.start), ("until", schedule.end)) if value
    )
    if schedule.every is not None:
        bounds = f", until {schedule.end.isoformat()}" if schedule.end else ""
    return f"{what} ({schedule.timezone}{bounds}; misfire {schedule.misfire})"


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
