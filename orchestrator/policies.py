"""Contact policies: who may be contacted, on which channel, and if not, the one reason why.

Policies that depend only on the customer run before the offer stage, so that no coupon is spent on someone
who will not be contacted. Consent and suppression always apply, transactional or not. Every decision for a
customer ends in exactly one of: contacted on one or more channels, held out (control group), or skipped
with one reason.

Lookups are made per batch (one query for a batch's consents, one for its suppressions), never per customer.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, or_, select

from orchestrator.channels import Channel
from orchestrator.db.models import CustomerConsent, Suppression

# skip reasons (the ledger and reports use these names)
NO_CONTACT = "no_contact"
NO_CONSENT = "no_consent"
SUPPRESSED = "suppressed"
CONTROL = "control_group"
NO_STEP = "no_step"


def in_control_group(campaign: str, customer_id: str, percent: Decimal) -> bool:
    """Deterministic holdout: the same customer is in or out of a campaign's control group in every run and
    every process, because membership is a hash of (campaign, customer), not a random draw."""
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"{campaign}\x1f{customer_id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64 * 100
    return Decimal(repr(bucket)) < percent


@dataclass
class ContactPlan:
    """The policy outcome for one customer: channels with addresses, or one skip reason."""

    channels: list[tuple[str, str]] = field(default_factory=list)  # (channel name, normalised contact)
    reason: str | None = None
    detail: str | None = None  # e.g. the channel a consent was missing on


class BatchLookups:
    """Consents and suppressions for one batch of customers, fetched with one query each."""

    def __init__(self, conn: Connection, customer_pks: Sequence[int], addresses: Iterable[str]):
        self.consents: dict[int, dict[str, bool]] = defaultdict(dict)
        rows = conn.execute(
            select(CustomerConsent.customer_pk, CustomerConsent.channel, CustomerConsent.opted_in).where(
                CustomerConsent.customer_pk.in_(customer_pks)
            )
        )
        for pk, channel, opted_in in rows:
            self.consents[pk][channel] = bool(opted_in)
        self.by_customer: dict[int, set[str | None]] = defaultdict(set)
        self.by_address: dict[str, set[str | None]] = defaultdict(set)
        addresses = [a for a in set(addresses) if a]
        condition = Suppression.customer_pk.in_(customer_pks)
        if addresses:
            condition = or_(condition, Suppression.address.in_(addresses))
        for pk, address, channel in conn.execute(
            select(Suppression.customer_pk, Suppression.address, Suppression.channel).where(condition)
        ):
            if pk is not None:
                self.by_customer[pk].add(channel)
            if address:
                self.by_address[address].add(channel)

    def has_consent(self, customer_pk: int, consent: str | None) -> bool:
        return consent is None or self.consents.get(customer_pk, {}).get(consent, False)

    def is_suppressed(self, customer_pk: int, channel: str, contact: str) -> bool:
        scopes = self.by_customer.get(customer_pk, set()) | self.by_address.get(contact, set())
        return None in scopes or channel in scopes


def plan_contact(
    customer: Mapping[str, Any],
    channels: Sequence[Channel],
    lookups: BatchLookups,
    strategy: str = "first_reachable",
) -> ContactPlan:
    """Walk the channels in preference order; keep the first reachable one (or all, with strategy ``all``).

    When none is reachable, the reason is the one met on the most preferred channel: that is the channel the
    marketer meant, so it explains the skip best.
    """
    plan = ContactPlan()
    first_failure: tuple[str, str] | None = None
    for channel in channels:
        contact = channel.contact_of(customer)
        if contact is None:
            failure = (NO_CONTACT, channel.name)
        elif not lookups.has_consent(customer["pk"], channel.consent):
            failure = (NO_CONSENT, channel.name)
        elif lookups.is_suppressed(customer["pk"], channel.name, contact):
            failure = (SUPPRESSED, channel.name)
        else:
            plan.channels.append((channel.name, contact))
            if strategy == "first_reachable":
                break
            continue
        first_failure = first_failure or failure
    if not plan.channels and first_failure:
        plan.reason, plan.detail = first_failure
    return plan
