"""Contact policies: who may be contacted, on which channel, and if not, the one reason why.

Policies that depend only on the customer run before the offer stage, so that no coupon is spent on someone
who will not be contacted. Consent and suppression always apply, transactional or not. Every decision for a
customer ends in exactly one of: contacted on one or more channels, held out (control group), or skipped
with one reason.

Lookups are made per batch (one query for a batch's consents, one for its suppressions, one for its recent
messages), never per customer.

Frequency caps (``dispatch.frequency_cap``, else ``policies.frequency_cap`` in the config) count the messages a
customer has had or will have from any campaign: delivery rows ``sent``, and rows still ``pending`` or
``deferred`` (claimed rows are pending), since those will be sent - counting only sent ones let two runs a second
apart each defer, and later both send, the message a cap allows once. Each row counts at the time it is due:
``sent_at`` for a sent one, ``deferred_until`` for one deferred by quiet hours (kept when a dispatcher claims it),
else ``created_at``, the time it was decided. A row counts when that time is later than ``at - per``: one due
exactly ``per`` before ``at`` has left the window. There is no upper bound: a row due after ``at`` (deferred to
the morning, a late or resumed run, a run for a past ``at``) counts too, since the cap exists to protect the
customer. Failed, skipped and held-out rows are not messages and never count. A cap with ``channel`` counts and
limits that channel only, so the customer falls back to the next channel in preference order; a cap without one
counts every channel and limits the customer on all of them. A customer at or over a cap is skipped with reason
``frequency_cap``; consent, suppression and a missing contact are reported first, as the more lasting reasons.
Transactional campaigns bypass caps, never consent or suppression.

Quiet hours (``dispatch.quiet_hours``, else ``policies.quiet_hours``) are read in the customer's own time zone
(``customers.timezone``, else the configured one): start inclusive, end exclusive, and a window may wrap past
midnight. A customer inside the window is not dropped but *deferred*: see ``QuietHours``.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, case, func, or_, select

from orchestrator.channels.base import Channel
from orchestrator.data import records
from orchestrator.db.models import CustomerConsent, Delivery, Suppression
from orchestrator.policy_types import FrequencyCap
from orchestrator.timeutil import DailyWindow, zone

# skip reasons (the ledger and reports use these names)
NO_CONTACT = "no_contact"
NO_CONSENT = "no_consent"
SUPPRESSED = "suppressed"
CONTROL = "control_group"
NO_STEP = "no_step"
FREQUENCY_CAP = "frequency_cap"
# the member may not be reached at all: reported before any other reason (a campaign's recontact rule, caps)
UNREACHABLE = frozenset({NO_CONTACT, NO_CONSENT, SUPPRESSED})


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
    """Consents, suppressions and (when caps apply) recent messages for one batch of customers, one query each."""

    def __init__(
        self,
        conn: Connection,
        customer_pks: Sequence[int],
        addresses: Iterable[str],
        caps: Sequence[FrequencyCap] = (),
        at: datetime | None = None,
        uncounted: Sequence[str] = (),
    ):
        """``uncounted``: channels whose deliveries frequency caps do not count (``not_messages``)."""
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
        # e-mail addresses in the suppression list are lower-cased (records.address_key): so is the member's
        addresses = list({records.address_key(a) for a in addresses if a})
        condition = Suppression.customer_pk.in_(customer_pks)
        if addresses:
            condition = or_(condition, Suppression.address.in_(addresses))
        for pk, address, channel in conn.execute(
            select(Suppression.customer_pk, Suppression.address, Suppression.channel).where(condition)
        ):
            if pk is not None:
                self.by_customer[pk].add(channel)
            if address:
                self.by_address[records.address_key(address)].add(channel)
        self.caps = list(caps)
        self.counted: dict[int, list[int]] = {}  # customer -> messages counted by each cap, in ``caps`` order
        if self.caps and customer_pks:
            if at is None:
                raise ValueError("frequency caps need the run time")
            self.counted = recent_messages(conn, customer_pks, self.caps, at, uncounted)

    def capped(self, customer_pk: int, channel: str | None) -> bool:
        """At or over a cap: the all-channel caps with ``channel=None``, that channel's caps otherwise."""
        counts = self.counted.get(customer_pk)
        if not counts:
            return False
        return any(cap.channel == channel and n >= cap.max for cap, n in zip(self.caps, counts, strict=True))

    def has_consent(self, customer_pk: int, consent: str | None) -> bool:
        return consent is None or self.consents.get(customer_pk, {}).get(consent, False)

    def is_suppressed(self, customer_pk: int, channel: str, contact: str) -> bool:
        address = records.address_key(contact) if contact else contact
        scopes = self.by_customer.get(customer_pk, set()) | self.by_address.get(address, set())
        return None in scopes or channel in scopes


COUNTED_STATES = ("sent", "pending", "deferred")  # sent, or decided and still to be sent


def due_time():
    """When a delivery row is (or was) due to reach the customer: the time frequency caps measure."""
    return case(
        (Delivery.state == "sent", Delivery.sent_at),
        else_=func.coalesce(Delivery.deferred_until, Delivery.created_at),
    )


def recent_messages(
    conn: Connection,
    customer_pks: Sequence[int],
    caps: Sequence[FrequencyCap],
    at: datetime,
    uncounted: Sequence[str] = (),
) -> dict[int, list[int]]:
    """Per customer, the messages (sent or still to be sent) each cap counts: one grouped query for the batch,
    whatever the number of caps."""
    at = at.astimezone(UTC)
    starts = [at - cap.per for cap in caps]
    due = due_time()
    columns = []
    for cap, start in zip(caps, starts, strict=True):
        condition = due > start
        if cap.channel is not None:
            condition = condition & (Delivery.channel == cap.channel)
        columns.append(func.sum(case((condition, 1), else_=0)))
    rows = conn.execute(
        select(Delivery.customer_pk, *columns)
        .where(
            Delivery.customer_pk.in_(customer_pks),
            Delivery.state.in_(COUNTED_STATES),
            due > min(starts),
            Delivery.channel.not_in(list(uncounted) or [""]),
        )
        .group_by(Delivery.customer_pk)
    )
    return {row[0]: [int(n or 0) for n in row[1:]] for row in rows}


def not_messages(
    channel_classes: Mapping[str, type[Channel]], channel_settings: Mapping[str, Mapping[str, Any]] | None = None
) -> list[str]:
    """Channels whose deliveries are not messages to the member: ``Channel.is_message`` from the plugins of the
    registry in use, unless the config says otherwise (``channels.<name>.is_message``, e.g. a webhook that only
    syncs a CRM)."""
    settings = channel_settings or {}
    return [
        name
        for name, channel in channel_classes.items()
        if not (settings.get(name) or {}).get("is_message", channel.is_message)
    ]


def caps_of(setting: FrequencyCap | Sequence[FrequencyCap] | None) -> list[FrequencyCap]:
    if setting is None:
        return []
    return [setting] if isinstance(setting, FrequencyCap) else list(setting)


@dataclass(frozen=True)
class QuietHours:
    """A local quiet window such as ``21:00-09:00``: start inclusive, end exclusive, possibly across midnight.

    A customer whose local time at the run time is inside the window is deferred: their delivery rows are written
    in state ``deferred`` with ``deferred_until`` the window's end in their zone (as UTC), and nothing is sent now.
    Their offer is still issued in this run (they will be contacted, and budgets and exclusivity are decided once,
    here); the row keeps the coupon. Sending deferred rows when their time comes is the scheduler's job.
    """

    window: DailyWindow

    @classmethod
    def parse(cls, window: str | None) -> QuietHours | None:
        return cls(DailyWindow.parse(window)) if window else None

    def deferred_until(self, at: datetime, tz: ZoneInfo) -> datetime | None:
        """None when ``at`` is outside the window in ``tz``; else the window's next end, as an aware UTC time."""
        local = at.astimezone(tz)
        if not self.window.contains(local.time()):
            return None
        end = datetime.combine(local.date(), self.window.end)
        if end <= local.replace(tzinfo=None):
            end += timedelta(days=1)
        # wall-clock time in the zone (a DST gap resolves forward through UTC round-tripping)
        return end.replace(tzinfo=tz).astimezone(UTC)


def customer_zone(customer: Mapping[str, Any], default: ZoneInfo) -> ZoneInfo:
    name = customer.get("timezone")
    if not name:
        return default
    try:
        return zone(name)
    except ValueError:  # an unknown zone in the data: the configured one rather than failing the run
        return default


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
        elif channel.is_message and lookups.capped(customer["pk"], channel.name):
            failure = (FREQUENCY_CAP, channel.name)
        else:
            plan.channels.append((channel.name, contact))
            if strategy == "first_reachable":
                break
            continue
        first_failure = first_failure or failure
    if not plan.channels and first_failure:
        plan.reason, plan.detail = first_failure
    elif plan.channels and lookups.capped(customer["pk"], None):
        # over the all-channel cap: messages are dropped, a wallet coupon (not a message) still goes
        by_name = {channel.name: channel for channel in channels}
        plan.channels = [(name, contact) for name, contact in plan.channels if not by_name[name].is_message]
        if not plan.channels:
            plan.reason, plan.detail = FREQUENCY_CAP, None
    return plan
