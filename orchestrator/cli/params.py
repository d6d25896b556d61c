"""Option types shared by the command families."""

from __future__ import annotations

import math

import click


class FiniteFloatRange(click.FloatRange):
    """A ``click.FloatRange`` that also refuses nan and the infinities (``1e309`` parses as inf): click's range
    check lets nan through, since every comparison with nan is false, and either would fail later, far from the
    option, as an OverflowError or ValueError."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def seconds(minimum: float, maximum: float, *, min_open: bool = False) -> FiniteFloatRange:
    """A number of seconds between ``minimum`` and ``maximum``."""
    return FiniteFloatRange(min=minimum, max=maximum, min_open=min_open)
