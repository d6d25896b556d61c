"""Money is ``Decimal`` in Python and integer minor units (fen, cents) in the database.

Integer minor units keep sums exact on every engine, SQLite included, which has no decimal type.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
#: the largest amount a campaign or an import may state (a trillion); the database column would hold far more,
#: but a larger figure in a campaign file is a typo, and one beyond the column would crash a run half-way
MAX_AMOUNT = Decimal("1e12")


_AMOUNT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def parse_amount(text: str) -> Decimal:
    """A plain decimal amount with at most two decimal places (no exponents, no digit separators)."""
    if not isinstance(text, str) or not _AMOUNT.match(text.strip()):
        raise ValueError(f"{text!r} is not a decimal amount (e.g. 112.50)")
    value = Decimal(text.strip())
    if abs(value) > MAX_AMOUNT:
        raise ValueError(f"{text!r} is too large an amount")
    if value != value.quantize(CENT):
        raise ValueError(f"{text!r} has more than two decimal places")
    return value.quantize(CENT)


def to_minor(value: Decimal | int | str) -> int:
    return int((Decimal(value) * 100).to_integral_value(rounding=ROUND_HALF_UP))


def from_minor(value: int | float | Decimal | None) -> Decimal | None:
    if value is None:
        return None
    return (Decimal(value) / 100).quantize(CENT, rounding=ROUND_HALF_UP)


def quantize(value: Decimal, places: str = "0.01") -> Decimal:
    return value.quantize(Decimal(places), rounding=ROUND_HALF_UP)
