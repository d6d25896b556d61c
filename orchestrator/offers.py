"""The offer stage: turns a step's ``offer:`` block into something each contacted customer receives.

Offer kinds are plugins (``register_offers`` hook). The stage runs after the contact policies, so an offer is
only ever issued to a customer who will actually be contacted; a kind may still withhold it (budget spent,
guard not met, an exclusive offer already held) and says why.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel


@dataclass(frozen=True)
class Grant:
    """What a customer receives: the template's ``offer`` and, when written, the coupon row it lives in."""

    context: Mapping[str, Any]
    coupon_pk: int | None = None
    face_value: Any = None


@dataclass(frozen=True)
class Withheld:
    reason: str


@dataclass
class OfferTally:
    """Per step: offers issued, withheld by reason, and their face value."""

    issued: int = 0
    withheld: dict[str, int] = field(default_factory=dict)
    face_value: Any = 0

    def add(self, outcome: Grant | Withheld) -> None:
        if isinstance(outcome, Grant):
            self.issued += 1
            if outcome.face_value is not None:
                self.face_value += outcome.face_value
        else:
            self.withheld[outcome.reason] = self.withheld.get(outcome.reason, 0) + 1


class OfferKind(ABC):
    """Base class of offer plugins; ``name`` is the key under ``offer:`` in campaign files."""

    name: ClassVar[str]
    options_model: ClassVar[type[BaseModel]]
    #: the member's facts ``grant`` reads (``customer["tier"]``, …); None (the default): unknown, so every fact is
    #: computed for the audience. The identity and address fields, ``pk`` and ``guard_<n>`` are always there.
    facts_read: ClassVar[frozenset[str] | None] = None

    def __init__(self, options: BaseModel, settings: Any, step: Any):
        """``options`` are the validated terms; ``step`` the campaign step (``name``, ``index``) offering it."""
        self.options = options
        self.settings = settings
        self.step = step

    @classmethod
    def check(cls, terms: BaseModel, settings: Any) -> list[tuple[tuple, str]]:
        """Problems with ``terms`` that depend on the configuration: ``[(path within the terms, message)]``."""
        return []

    def prepare(self, conn, customers: Sequence[Mapping[str, Any]], run: Mapping[str, Any], dry_run: bool) -> None:  # noqa: B027
        """Called once per batch before ``grant``: the place for one query per batch instead of one per member."""

    @abstractmethod
    def grant(self, conn, customer: Mapping[str, Any], run: Mapping[str, Any], dry_run: bool) -> Grant | Withheld:
        """Issue (or, in a dry run, predict) the offer for one contacted customer.

        ``run`` holds ``campaign``, ``at`` and, in a real run, ``run_pk`` and ``campaign_pk``. In a real run the
        issue happens in ``conn``'s transaction, the one that also writes the delivery row carrying it."""

    @abstractmethod
    def recall(self, conn, coupon_pk: int) -> Grant:
        """The grant issued earlier in this run (a resumed run renders it again instead of issuing anew)."""
