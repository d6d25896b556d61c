"""The schema, as one design.

Members and their orders are the input; campaigns, runs, deliveries and coupons are what the orchestrator writes:

    customers ─┬─ customer_tags, customer_consents
               ├─ orders ── (coupon_code) ── coupons ── coupon_redemptions
               └─ deliveries ── campaign_runs ── campaigns
    suppressions: per customer or per address, per channel or all channels
    provider_quotas, shared_values: state shared by every dispatch process (rate limits, access tokens)
    scheduler_leases: which scheduler process leads (see ``orchestrator.scheduler.lease``)

Customers and orders have an internal integer key (``id``) and the shop's own identifier (``customer_id``,
``order_id``) that imports match on. Money columns are integer minor units (see ``orchestrator.money``);
timestamps are UTC (see ``orchestrator.db.types``).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from orchestrator.db.types import Money, UTCDateTime

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ORDER_STATUSES = ("paid", "refunded", "cancelled")
RUN_STATES = ("planned", "running", "waiting", "done")  # waiting: messages left for `dispatch`
DELIVERY_STATES = ("pending", "sent", "failed", "skipped", "deferred", "held_out")
COUPON_STATES = ("issued", "redeemed", "expired", "void")
SUPPRESSION_REASONS = ("unsubscribed", "bounced", "complained", "do_not_contact")
GENDERS = ("female", "male", "other")  # the stored words; import normalises 女 / F / woman … to them


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: UTCDateTime, Decimal: Money}


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    phone: Mapped[str | None] = mapped_column(String(32), index=True)  # E.164
    province: Mapped[str | None] = mapped_column(String(64), index=True)
    city: Mapped[str | None] = mapped_column(String(64))
    gender: Mapped[str | None] = mapped_column(String(16))
    birthday: Mapped[date | None] = mapped_column(Date)
    signup_at: Mapped[datetime | None]
    wechat_openid: Mapped[str | None] = mapped_column(String(128))
    timezone: Mapped[str | None] = mapped_column(String(64))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class CustomerTag(Base):
    __tablename__ = "customer_tags"

    customer_pk: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)

    __table_args__ = (Index("ix_customer_tags_tag", "tag", "customer_pk"),)


class CustomerConsent(Base):
    """Marketing consent per channel (email, sms, wechat, …); absence means no consent."""

    __tablename__ = "customer_consents"

    customer_pk: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    channel: Mapped[str] = mapped_column(String(32), primary_key=True)
    opted_in: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime]


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[str] = mapped_column(String(64), unique=True)
    customer_pk: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    ordered_at: Mapped[datetime]
    amount: Mapped[Decimal]
    status: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str | None] = mapped_column(String(32))
    payment_method: Mapped[str | None] = mapped_column(String(32))
    coupon_code: Mapped[str | None] = mapped_column(String(32), index=True)
    category: Mapped[str | None] = mapped_column(String(64))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        # per-customer facts (recency, frequency, monetary) scan a customer's orders in time order
        Index("ix_orders_customer_status_time", "customer_pk", "status", "ordered_at"),
        # shop-wide figures (AOV, revenue) scan paid orders up to a time
        Index("ix_orders_status_time", "status", "ordered_at"),
    )


class Suppression(Base):
    """Do not contact: a customer or a bare address, on one channel or (channel NULL) on all of them."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_pk: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    address: Mapped[str | None] = mapped_column(String(320), index=True)
    channel: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(32))
    source: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


# One entry per target and channel. NULLs are distinct in a plain unique index, so the index is on COALESCE-d
# values: NULL channel ("all channels") and NULL customer / address compare equal to each other.
Index(
    "uq_suppressions_target",
    func.coalesce(Suppression.customer_pk, 0),
    func.coalesce(Suppression.address, ""),
    func.coalesce(Suppression.channel, ""),
    unique=True,
)


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    source_path: Mapped[str | None] = mapped_column(String(1024))
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class CampaignRun(Base):
    """One execution of a campaign, unique per (campaign, scheduled time)."""

    __tablename__ = "campaign_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_pk: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    scheduled_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(16), default="planned")
    content_hash: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (UniqueConstraint("campaign_pk", "scheduled_at"),)


class Delivery(Base):
    """One intended message, written before anything is sent; unique per (run, customer, channel, follow-up):
    a run's own messages have ``follow_up`` '' (not NULL, which a unique key would never compare equal), a
    follow-up's its name (and ``step`` its name too, so that every listing and report shows it like a step)."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("campaign_runs.id", ondelete="CASCADE"))
    customer_pk: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(32))
    step: Mapped[str | None] = mapped_column(String(128))
    follow_up: Mapped[str] = mapped_column(String(128), server_default="")  # a row naming none is the run's own
    # a follow-up's due time (the member's earlier message's, plus after): where its results window starts
    due_at: Mapped[datetime | None]
    variant: Mapped[str | None] = mapped_column(String(64))  # the step's A/B variant the member was assigned
    state: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(String(64))
    contact: Mapped[str | None] = mapped_column(String(320))
    deferred_until: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    provider_id: Mapped[str | None] = mapped_column(String(256))
    last_error: Mapped[str | None] = mapped_column(Text)
    coupon_pk: Mapped[int | None] = mapped_column(ForeignKey("coupons.id", ondelete="SET NULL"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    # dispatch: a transient failure waits until next_attempt_at; a claim is a lease that expires with its process
    next_attempt_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claim_expires: Mapped[datetime | None]
    # what happened after sending, where a channel reports it (e.g. a call centre's call outcomes)
    outcome: Mapped[str | None] = mapped_column(String(32))
    outcome_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("run_pk", "customer_pk", "channel", "follow_up"),
        Index("ix_deliveries_run_state", "run_pk", "state"),
        # a claim walks one channel's pending rows of a run in id order and stops after n (migration 0013)
        Index("ix_deliveries_claim", "run_pk", "channel", "state", "id"),
        # frequency caps count a customer's recent sends across campaigns
        Index("ix_deliveries_customer_sent", "customer_pk", "sent_at"),
    )


class DeliveryPayload(Base):
    """The rendered message of a delivery not yet final, so that any dispatch process can send it as decided.

    Kept apart from ``deliveries`` (which is scanned by caps and reports) and deleted once the delivery is final.
    ``body`` is zlib-compressed JSON of the ``RenderedMessage``.
    """

    __tablename__ = "delivery_payloads"

    delivery_pk: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)


class ProviderQuota(Base):
    """A provider's rate limit, shared by every dispatch process: a GCRA theoretical arrival time for the
    per-second rate, and the count sent on the current day for the daily cap."""

    __tablename__ = "provider_quotas"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    tat: Mapped[datetime | None]
    day: Mapped[date | None]
    day_count: Mapped[int] = mapped_column(Integer, default=0)


class SharedValue(Base):
    """A small value every process using this database shares, with its expiry: e.g. a provider's access token,
    which the provider invalidates when another one is fetched (see ``orchestrator.shared_values``)."""

    __tablename__ = "shared_values"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]


class SchedulerLease(Base):
    """A named lease held by one process until ``expires_at`` unless renewed: the scheduler's leader election."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[datetime]
    renewed_at: Mapped[datetime]  # the holder's last heartbeat
    expires_at: Mapped[datetime]


class ApiKey(Base):
    """A key a point of sale sends as ``Authorization: Bearer``: only its SHA-256 is stored (the key is random,
    256 bits, so a plain hash cannot be reversed by guessing); ``prefix`` finds the row without scanning."""

    __tablename__ = "api_keys"
    # a name is unique among live keys only: a revoked key keeps its row (who used the service, until when) and
    # its name may be given to the key that replaces it
    __table_args__ = (
        Index(
            "uq_api_keys_live_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(default=list)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Coupon(Base):
    """An issued offer: owned by exactly one customer and one campaign run; at most one per (run, customer,
    step), so that processes sharing a run can never issue a member's coupon twice."""

    __tablename__ = "coupons"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    campaign_pk: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="SET NULL"))
    run_pk: Mapped[int | None] = mapped_column(ForeignKey("campaign_runs.id", ondelete="SET NULL"), index=True)
    customer_pk: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    step: Mapped[str | None] = mapped_column(String(128))
    offer_kind: Mapped[str] = mapped_column(String(32))
    group: Mapped[str | None] = mapped_column(String(64))
    value: Mapped[Decimal | None]
    min_spend: Mapped[Decimal | None]
    terms: Mapped[dict[str, Any]] = mapped_column(default=dict)
    valid_from: Mapped[datetime]
    valid_until: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(16), default="issued")
    issued_at: Mapped[datetime]
    redeemed_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_coupons_customer_group_state", "customer_pk", "group", "state"),
        # per-customer limits count a customer's coupons of one campaign
        Index("ix_coupons_campaign_customer", "campaign_pk", "customer_pk"),
        UniqueConstraint("run_pk", "customer_pk", "step"),
    )


class OfferBudget(Base):
    """Issued count and face value of one offer (campaign, step, offer kind), across all its runs.

    Issuing increments it with one conditional UPDATE inside the delivery's transaction, so two processes
    issuing at once can never pass the budget: the second waits on the row lock and sees the first's count.
    """

    __tablename__ = "offer_budgets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_pk: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    step: Mapped[str] = mapped_column(String(128))
    offer_kind: Mapped[str] = mapped_column(String(32))
    issued: Mapped[int] = mapped_column(Integer, default=0)
    face_value: Mapped[Decimal]

    __table_args__ = (UniqueConstraint("campaign_pk", "step", "offer_kind"),)


class CouponRedemption(Base):
    __tablename__ = "coupon_redemptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    coupon_pk: Mapped[int] = mapped_column(ForeignKey("coupons.id", ondelete="CASCADE"), unique=True)
    order_pk: Mapped[int | None] = mapped_column(ForeignKey("orders.id", ondelete="SET NULL"))
    amount: Mapped[Decimal | None]
    redeemed_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(32))
