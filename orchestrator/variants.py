"""A/B variants: which of a step's variants a member gets, the same in every run and every process.

The choice is a pure function of (campaign, step, member): SHA-256 of the three, read as a number in [0, 1), picks
the variant whose share of the cumulative weights covers it. Python's ``hash()`` is salted per process, so it
would give a member another variant in the next run; a digest does not. The control group is decided by another
hash (of campaign and member), so each variant's members are an unbiased share of those held out too: held-out
members are recorded with the variant they would have had, and each variant is compared with its own share of
the control group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Protocol, TypeVar

_SCALE = 2**64


class Weighted(Protocol):
    name: str
    weight: Decimal


V = TypeVar("V", bound=Weighted)


def bucket(campaign: str, step: str, customer_id: str) -> Decimal:
    """A number in [0, 1) fixed by the campaign, the step and the member."""
    digest = hashlib.sha256(f"{campaign}\x1f{step}\x1f{customer_id}".encode()).digest()
    return Decimal(int.from_bytes(digest[:8], "big")) / _SCALE


def assign(campaign: str, step: str, customer_id: str, variants: Sequence[V]) -> V:
    """The member's variant among ``variants`` (at least one), in proportion to their weights."""
    point = bucket(campaign, step, customer_id) * sum(Decimal(v.weight) for v in variants)
    reached = Decimal(0)
    for variant in variants:
        reached += Decimal(variant.weight)
        if point < reached:
            return variant
    return variants[-1]
