"""The control comparison's intervals against references computed another way (docs/domain.md, "Results")."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats as scipy_stats

from orchestrator.results.stats import GroupSums, newcombe_interval, welch_interval, wilson_interval

Z95 = 1.959963984540054


def reference_wilson(x: int, n: int) -> tuple[float, float]:
    """Wilson's interval as the roots of the quadratic (p − p̂)² = z² p (1 − p) / n."""
    p_hat = x / n
    a = 1 + Z95**2 / n
    b = -(2 * p_hat + Z95**2 / n)
    c = p_hat**2
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


def reference_newcombe(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Newcombe (1998), method 10: δ − √((p₁−l₁)² + (u₂−p₂)²), δ + √((u₁−p₁)² + (p₂−l₂)²)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = reference_wilson(x1, n1)
    l2, u2 = reference_wilson(x2, n2)
    delta = p1 - p2
    return delta - math.hypot(p1 - l1, u2 - p2), delta + math.hypot(u1 - p1, p2 - l2)


def test_newcombe_matches_the_published_example():
    # Newcombe 1998, Statistics in Medicine 17:873-890, table II example (a): 56/70 against 48/80, method 10
    low, high = newcombe_interval(56, 70, 48, 80)
    assert round(low, 4) == 0.0524
    assert round(high, 4) == 0.3339


@pytest.mark.parametrize(
    "x1,n1,x2,n2",
    [
        (9, 10, 3, 10),
        (6, 7, 2, 7),
        (5, 56, 0, 29),
        (0, 10, 0, 20),
        (10, 10, 0, 20),
        (160, 1080, 9, 120),
        (3, 1000, 1, 100),
    ],
)
def test_newcombe_matches_the_direct_formula(x1, n1, x2, n2):
    assert newcombe_interval(x1, n1, x2, n2) == pytest.approx(reference_newcombe(x1, n1, x2, n2), abs=1e-12)
    assert wilson_interval(x1, n1) == pytest.approx(reference_wilson(x1, n1), abs=1e-12)


def test_newcombe_without_a_group_is_undefined():
    assert newcombe_interval(3, 10, 0, 0) is None


def test_welch_matches_scipy_on_the_raw_samples():
    rng = random.Random(7)
    # revenue per member: most members spend nothing, a few spend a lot (the usual shape)
    treated = [rng.choice([0, 0, 0, 0, 0, 11200, 23000, 8950]) for _ in range(400)]
    control = [rng.choice([0, 0, 0, 0, 0, 0, 11200, 9900]) for _ in range(45)]
    sums = [
        GroupSums(len(v), sum(1 for x in v if x), float(sum(v)), float(sum(x * x for x in v)))
        for v in (treated, control)
    ]
    expected = scipy_stats.ttest_ind(treated, control, equal_var=False).confidence_interval(0.95)
    assert welch_interval(*sums) == pytest.approx((expected.low, expected.high), rel=1e-9)


def test_welch_needs_two_members_per_group_and_is_a_point_without_spread():
    assert welch_interval(GroupSums(1, 1, 5.0, 25.0), GroupSums(10, 0, 0.0, 0.0)) is None
    assert welch_interval(GroupSums(3, 3, 30.0, 300.0), GroupSums(4, 4, 20.0, 100.0)) == (5.0, 5.0)
