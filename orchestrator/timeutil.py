"""Time handling: every datetime inside the orchestrator is time-zone aware.

Input without an offset is read in the configured default time zone; storage keeps UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SECONDS_PER_DAY = 86400


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as Asia/Shanghai)") from exc


def parse_datetime(text: str, default_tz: ZoneInfo) -> datetime:
    """Parse ISO 8601 (date or date-time); a value without offset is local to ``default_tz``."""
    text = text.strip()
    if not text:
        raise ValueError("empty date-time")
    candidate = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        value = datetime.fromisoformat(candidate)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date-time (e.g. 2026-03-01T12:30:00+08:00)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=default_tz)
    return value


#: run times the orchestrator accepts: calendar arithmetic (a 100-year window back, a schedule forward) stays
#: inside what Python and the databases represent
EARLIEST_RUN = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_RUN = datetime(3000, 1, 1, tzinfo=UTC)


def check_run_time(value: datetime) -> datetime:
    """``value`` if it lies in the supported years; ValueError otherwise."""
    if not EARLIEST_RUN <= value < LATEST_RUN:
        raise ValueError(f"{value.isoformat()} is not between 1970-01-01 and 2999-12-31")
    return value


def parse_run_time(text: str, default_tz: ZoneInfo) -> datetime:
    """``--at``: an ISO 8601 time (see ``parse_datetime``) in the supported years."""
    return check_run_time(parse_datetime(text, default_tz))


#: times another system reports to the service (a till's order, an SMS received, an e-mail event): outside these
#: years a value is a typo or an attack, and one such as year 1 at +14:00 cannot even be converted to UTC or stored
EARLIEST_REPORTED = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_REPORTED = datetime(2100, 1, 1, tzinfo=UTC)


class TimeOutOfRange(ValueError):
    """A well-formed time outside ``EARLIEST_REPORTED`` .. ``LATEST_REPORTED``."""


def check_reported_time(value: datetime) -> datetime:
    """``value`` if it lies in 2000..2099 (in UTC); TimeOutOfRange otherwise."""
    try:
        in_utc = to_utc(value)
    except OverflowError:
        in_utc = None
    if in_utc is None or not EARLIEST_REPORTED <= in_utc < LATEST_REPORTED:
        raise TimeOutOfRange(f"{value.isoformat()} is not between 2000-01-01 and 2099-12-31 (UTC)")
    return value


def parse_reported_time(text: str, default_tz: ZoneInfo) -> datetime:
    """A time another system reports, as ISO 8601 (see ``parse_datetime``), in the supported years."""
    return check_reported_time(parse_datetime(text, default_tz))


def reported_timestamp(seconds: float) -> datetime:
    """A time another system reports as seconds since the epoch, in the supported years."""
    try:
        value = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise TimeOutOfRange(f"{seconds!r} is not a time between 2000-01-01 and 2099-12-31") from None
    return check_reported_time(value)


def parse_date(text: str) -> date:
    """Strictly YYYY-MM-DD (``date.fromisoformat`` also takes 20260301 and week dates)."""
    text = text.strip()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise ValueError(f"{text!r} is not a date in YYYY-MM-DD form")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid date") from None


def to_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime: every time in the orchestrator must carry a time zone")
    return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def whole_days(start: datetime, end: datetime) -> int:
    """Whole elapsed days (24-hour periods) from ``start`` to ``end``, as the SQL facts compute them."""
    return (end - start) // timedelta(days=1)


def parse_clock(text: str) -> time:
    """A time of day written ``HH:MM`` (24-hour)."""
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a time of day in HH:MM form")
    return time(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class DailyWindow:
    """A time-of-day window such as ``11:00-14:00`` (dayparts) or ``21:00-09:00`` (quiet hours): the start is
    in it, the end is not, and it wraps past midnight when the end comes before the start."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> DailyWindow:
        parts = str(text).split("-")
        if len(parts) != 2:
            raise ValueError(f"{text!r} is not a window like 21:00-09:00")
        start, end = (parse_clock(part) for part in parts)
        if start == end:
            raise ValueError(f"{text!r}: start and end are the same, so the window is empty")
        return cls(start, end)

    @property
    def wraps(self) -> bool:
        return self.end < self.start

    @property
    def start_minute(self) -> int:
        return self.start.hour * 60 + self.start.minute

    @property
    def end_minute(self) -> int:
        return self.end.hour * 60 + self.end.minute

    def contains(self, clock: time) -> bool:
        clock = clock.replace(tzinfo=None)
        if self.wraps:
            return clock >= self.start or clock < self.end
        return self.start <= clock < self.end
