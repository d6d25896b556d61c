"""The statistics of a control comparison: intervals for a difference of proportions and of means.

Both take only counts and sums, so the database can aggregate any number of members into a few numbers:

* conversion: Newcombe's hybrid score interval (Newcombe 1998, method 10) for p₁ − p₂, built from each group's
  Wilson score interval; it keeps its coverage near 95 % for small groups and rare events, where the textbook
  Wald interval does not;
* revenue per member: Welch's t interval for μ₁ − μ₂ (unequal variances, Welch-Satterthwaite degrees of freedom),
  from each group's n, Σx and Σx².

Rates and intervals are floats: they are estimates, not money.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class GroupSums:
    """A group's members, converters, and the sum and sum of squares of a per-member value (revenue)."""

    members: int = 0
    converted: int = 0
    total: float = 0.0
    total_squares: float = 0.0

    def __add__(self, other: GroupSums) -> GroupSums:
        return GroupSums(
            self.members + other.members,
            self.converted + other.converted,
            self.total + other.total,
            self.total_squares + other.total_squares,
        )

    @property
    def rate(self) -> float | None:
        return self.converted / self.members if self.members else None

    @property
    def mean(self) -> float | None:
        return self.total / self.members if self.members else None

    @property
    def variance(self) -> float | None:
        """The sample variance (n − 1 in the denominator); never negative from rounding."""
        if self.members < 2:
            return None
        return max(0.0, (self.total_squares - self.total * self.total / self.members) / (self.members - 1))


def _z(confidence: float) -> float:
    from scipy.stats import norm  # scipy.stats takes a second to import: only when a figure is computed

    return float(norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval for a proportion."""
    if n <= 0:
        raise ValueError("a proportion needs at least one trial")
    z = _z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Newcombe's hybrid score interval for p₁ − p₂ (x1 of n1 against x2 of n2); None when a group is empty."""
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, confidence)
    l2, u2 = wilson_interval(x2, n2, confidence)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def welch_interval(a: GroupSums, b: GroupSums, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Welch's interval for mean(a) − mean(b); None when a group has fewer than two members.

    When both groups have no spread at all the difference is known exactly and the interval is that point."""
    va, vb = a.variance, b.variance
    if va is None or vb is None:
        return None
    d = a.mean - b.mean
    sa, sb = va / a.members, vb / b.members
    se2 = sa + sb
    if se2 == 0:
        return d, d
    df = se2 * se2 / (sa * sa / (a.members - 1) + sb * sb / (b.members - 1))
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.5 + confidence / 2, df)) * math.sqrt(se2)
    return d - half, d + half
