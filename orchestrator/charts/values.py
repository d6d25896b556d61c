"""Reading the figures of a JSON document (money as Decimal strings, rates as floats or null) for charts and text."""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any


def number(value: Any) -> float | None:
    """A plotted value: money strings, Decimals, ints and floats as float; None for null, anything unreadable and
    anything not finite."""
    if value is None or isinstance(value, bool):
        return None
    try:
        result = float(value) if isinstance(value, int | float) else float(Decimal(str(value)))
    except (InvalidOperation, ValueError, OverflowError):
        return None
    return result if math.isfinite(result) else None  # NaN or infinity would break the axes' limits


def interval(value: Any) -> tuple[float, float] | None:
    """``[low, high]`` as two floats, or None when the interval is missing or not two numbers."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    low, high = number(value[0]), number(value[1])
    if low is None or high is None:
        return None
    return low, high


def count_text(value: Any) -> str:
    """``1,200``; ``—`` when missing."""
    n = number(value)
    return "—" if n is None else f"{n:,.0f}"


def money_text(value: Any) -> str:
    """``48,000.00`` from the Decimal string (exact: never through float); ``—`` when missing."""
    if value is None:
        return "—"
    try:
        return f"{Decimal(str(value)):,.2f}"
    except InvalidOperation:
        return "—"


def rate_text(value: Any, signed: bool = False) -> str:
    """A rate as a percentage (``14.8%``), ``+7.3 pts`` style with ``signed``; ``—`` when undefined."""
    n = number(value)
    if n is None:
        return "—"
    return f"{n * 100:+.1f} pts" if signed else f"{n * 100:.1f}%"


def ratio_text(value: Any) -> str:
    n = number(value)
    return "—" if n is None else f"{n:.2f}"


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def rows(value: Any) -> list[Mapping[str, Any]]:
    """A list of objects; anything else (null, missing) is no rows."""
    return [row for row in value if isinstance(row, Mapping)] if isinstance(value, list) else []
