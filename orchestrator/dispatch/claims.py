"""The ledger side of dispatch: claim due deliveries, and record one message's result.

A claim is a lease (``claimed_by``, ``claim_expires``) on rows that stay ``pending``: if the process dies, the
lease runs out (or is released at once when the holder is a dead process on this host) and another process sends
them. The claim is one ``UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING id``; on PostgreSQL the inner select is
``FOR UPDATE SKIP LOCKED``, so concurrent claimers take different rows without waiting for each other. Every
result update is conditional on the row still being claimed by this process, so a process that lost its lease
can never overwrite what the next holder recorded.

Consent and suppression are checked again in the claiming transaction, with the planner's own rules
(``policies.BatchLookups``): a message may wait hours or days between planning and sending (quiet hours,
``run --plan-only``, a retry), and a member who opted out meanwhile is never contacted. Such a row ends
``skipped`` with the planner's reason (``no_consent`` / ``suppressed``), and the coupon it carried, if no other
message carries it, is voided and given back to its offer's budget.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, or_, select, true, update

from orchestrator import policies, suppressions
from orchestrator.channels.base import OutgoingMessage, RenderedMessage, SendResult
from orchestrator.coupons.offer import give_back_unsent
from orchestrator.db.models import Campaign, CampaignRun, Customer, Delivery, DeliveryPayload
from orchestrator.ledger import decode_payload, delivery_key
from orchestrator.timeutil import utcnow

HOST = socket.gethostname()[:40]


def worker_name() -> str:
    """``host:pid:nonce``; the host and pid let a restarted process release the claims of a dead one."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Claimed:
    id: int
    run_pk: int
    customer_pk: int
    customer_id: str
    channel: str
    contact: str | None
    attempts: int
    created_at: datetime
    campaign: str
    message: RenderedMessage | None  # None only if the payload row is missing

    def outgoing(self) -> OutgoingMessage:
        return OutgoingMessage(
            delivery_id=self.id,
            customer_id=self.customer_id,
            contact=self.contact or "",
            message=self.message,
            idempotency_key=delivery_key(self.run_pk, self.id),
            run_id=self.run_pk,
            campaign=self.campaign,
        )


@dataclass
class Batch:
    """What one claim took: the messages to send, and the rows skipped instead (by reason) because the member
    opted out after planning."""

    messages: list[Claimed] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.messages) + sum(self.skipped.values())


def due(now: datetime, deferred_due_at: datetime | None):
    """Pending rows whose retry time has come; with ``deferred_due_at``, also rows deferred until then."""
    pending = and_(
        Delivery.state == "pending", or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now)
    )
    if deferred_due_at is None:
        return pending
    return or_(pending, and_(Delivery.state == "deferred", Delivery.deferred_until <= deferred_due_at))


def unclaimed(now: datetime):
    return or_(Delivery.claim_expires.is_(None), Delivery.claim_expires < now)


def due_channels(conn: Connection, run_pk: int, now: datetime, deferred_due_at: datetime | None) -> list[str]:
    query = select(Delivery.channel).where(Delivery.run_pk == run_pk, due(now, deferred_due_at), unclaimed(now))
    return sorted(conn.execute(query.distinct()).scalars())


def next_wake(
    conn: Connection, run_pk: int, deferred_due_at: datetime | None, excluding: Sequence[str] = ()
) -> datetime | None:
    """The earliest time a row of this run may become due: an unclaimed row's retry time, a claimed row's lease
    end (its holder may die), a deferral; channels held back for their own reasons are left out (the caller knows
    their wait)."""
    now = utcnow()
    mine = and_(Delivery.run_pk == run_pk, Delivery.channel.not_in(list(excluding)) if excluding else true())
    pending = and_(mine, Delivery.state == "pending")
    times = [
        conn.execute(select(func.min(Delivery.next_attempt_at)).where(pending, unclaimed(now))).scalar(),
        conn.execute(select(func.min(Delivery.claim_expires)).where(pending, Delivery.claim_expires >= now)).scalar(),
    ]
    if deferred_due_at is not None:
        times.append(
            conn.execute(
                select(func.min(Delivery.deferred_until)).where(
                    mine, Delivery.state == "deferred", Delivery.deferred_until <= deferred_due_at
                )
            ).scalar()
        )
    times = [t for t in times if t is not None]
    return min(times) if times else None


def claim(
    conn: Connection,
    *,
    run_pk: int,
    channel: str,
    consent: str | None,
    limit: int,
    worker: str,
    now: datetime,
    lease: timedelta,
    deferred_due_at: datetime | None = None,
) -> Batch:
    """Claim up to ``limit`` due rows of one channel; ``consent`` is the consent the channel requires (None:
    none, suppression still applies). Rows whose member may no longer be contacted are skipped, not returned."""
    candidates = (
        select(Delivery.id)
        .where(Delivery.run_pk == run_pk, Delivery.channel == channel, due(now, deferred_due_at), unclaimed(now))
        .order_by(Delivery.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    ids = (
        conn.execute(
            update(Delivery)
            .where(Delivery.id.in_(candidates.scalar_subquery()))
            .values(state="pending", claimed_by=worker, claim_expires=now + lease)
            .returning(Delivery.id)
        )
        .scalars()
        .all()
    )
    batch = Batch()
    if not ids:
        return batch
    rows = conn.execute(
        select(
            Delivery.id,
            Delivery.run_pk,
            Delivery.customer_pk,
            Customer.customer_id,
            Delivery.channel,
            Delivery.contact,
            Delivery.attempts,
            Delivery.created_at,
            Campaign.name,
            DeliveryPayload.body,
            Delivery.coupon_pk,
        )
        .join(Customer, Customer.id == Delivery.customer_pk)
        .join(CampaignRun, CampaignRun.id == Delivery.run_pk)
        .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
        .outerjoin(DeliveryPayload, DeliveryPayload.delivery_pk == Delivery.id)
        .where(Delivery.id.in_(ids))
        .order_by(Delivery.id)
    ).all()
    refused = _refusals(conn, rows, consent)
    if refused:
        _skip(conn, refused, worker, now)
        give_back_unsent(conn, [row.coupon_pk for row in rows if row.id in refused and row.coupon_pk is not None])
        batch.skipped.update(refused.values())
    batch.messages = [
        Claimed(*row[:9], decode_payload(row.body) if row.body is not None else None)
        for row in rows
        if row.id not in refused
    ]
    return batch


def _refusals(conn: Connection, rows: Sequence[Any], consent: str | None) -> dict[int, str]:
    """{delivery id: skip reason} for the rows whose member may not be contacted now, by the planner's rules
    (consent first, then suppression by member or address, on this channel or all)."""
    lookups = policies.BatchLookups(conn, list({row.customer_pk for row in rows}), [row.contact for row in rows])
    refused: dict[int, str] = {}
    for row in rows:
        if not lookups.has_consent(row.customer_pk, consent):
            refused[row.id] = policies.NO_CONSENT
        elif lookups.is_suppressed(row.customer_pk, row.channel, row.contact or ""):
            refused[row.id] = policies.SUPPRESSED
    return refused


def _skip(conn: Connection, refused: dict[int, str], worker: str, now: datetime) -> None:
    for reason in set(refused.values()):
        conn.execute(
            update(Delivery)
            .where(Delivery.id.in_([pk for pk, why in refused.items() if why == reason]), Delivery.claimed_by == worker)
            .values(
                state="skipped",
                reason=reason,
                claimed_by=None,
                claim_expires=None,
                next_attempt_at=None,
                updated_at=now,
            )
        )
    conn.execute(delete(DeliveryPayload).where(DeliveryPayload.delivery_pk.in_(list(refused))))


def release_dead_claims(conn: Connection, run_pk: int) -> int:
    """Release claims held by processes of this host that no longer exist (a crash, a SIGKILL), so that a
    restarted dispatcher does not wait for their leases to run out."""
    holders = conn.execute(
        select(Delivery.claimed_by)
        .where(Delivery.run_pk == run_pk, Delivery.state == "pending", Delivery.claimed_by.like(f"{HOST}:%"))
        .distinct()
    ).scalars()
    dead = [holder for holder in holders if not _alive(holder)]
    if not dead:
        return 0
    released = conn.execute(
        update(Delivery)
        .where(Delivery.run_pk == run_pk, Delivery.state == "pending", Delivery.claimed_by.in_(dead))
        .values(claimed_by=None, claim_expires=None)
    )
    return released.rowcount


def _alive(holder: str) -> bool:
    try:
        pid = int(holder.split(":")[1])
    except (IndexError, ValueError):
        return True  # not ours to judge
    if pid == os.getpid():
        return False  # an earlier dispatcher in this very process, since gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finish_attempt(conn: Connection, claimed: Claimed, worker: str, now: datetime, **values: Any) -> bool:
    """Record one attempt on a row this process still holds, and let go of it. A final state drops the payload;
    a row whose lease was lost (another process holds it now) is left alone, payload included."""
    done = conn.execute(
        update(Delivery)
        .where(Delivery.id == claimed.id, Delivery.claimed_by == worker, Delivery.state == "pending")
        .values(updated_at=now, attempts=Delivery.attempts + 1, claimed_by=None, claim_expires=None, **values)
    ).rowcount
    if done and values.get("state") in ("sent", "failed"):
        conn.execute(delete(DeliveryPayload).where(DeliveryPayload.delivery_pk == claimed.id))
    return bool(done)


def record_sent(conn: Connection, claimed: Claimed, worker: str, result: SendResult, now: datetime) -> bool:
    """One message sent: the statements are built once (``_SENT_MANY``), not per message as ``_finish_attempt``
    does for the rarer outcomes."""
    params = {"b_id": claimed.id, "b_worker": worker, "b_provider_id": result.provider_id, "b_now": now}
    done = conn.execute(_SENT_MANY, params).rowcount
    if done:
        conn.execute(_DROP_PAYLOAD, {"b_id": claimed.id})
    return bool(done)


_deliveries = Delivery.__table__
_now = bindparam("b_now", type_=_deliveries.c.sent_at.type)
# one statement for a whole list of sent messages (executemany), built once: each row only if still held by the
# worker, as _finish_attempt does for one
_SENT_MANY = (
    update(_deliveries)
    .where(
        _deliveries.c.id == bindparam("b_id"),
        _deliveries.c.claimed_by == bindparam("b_worker"),
        _deliveries.c.state == "pending",
    )
    .values(
        state="sent",
        sent_at=_now,
        updated_at=_now,
        provider_id=bindparam("b_provider_id"),
        last_error=None,
        next_attempt_at=None,
        attempts=_deliveries.c.attempts + 1,
        claimed_by=None,
        claim_expires=None,
    )
)
_DROP_PAYLOAD = delete(DeliveryPayload.__table__).where(DeliveryPayload.__table__.c.delivery_pk == bindparam("b_id"))


def record_sent_many(conn: Connection, sent: Sequence[tuple[Claimed, SendResult]], worker: str, now: datetime) -> None:
    """``record_sent`` for many messages in one statement; payloads of rows now ``sent`` are dropped (a row whose
    lease was lost stays as its new holder left it)."""
    if not sent:
        return
    conn.execute(
        _SENT_MANY,
        [{"b_id": c.id, "b_worker": worker, "b_provider_id": r.provider_id, "b_now": now} for c, r in sent],
    )
    ids = [c.id for c, _ in sent]
    done = select(_deliveries.c.id).where(_deliveries.c.id.in_(ids), _deliveries.c.state == "sent")
    conn.execute(delete(DeliveryPayload).where(DeliveryPayload.delivery_pk.in_(done)))


def record_retry(
    conn: Connection, claimed: Claimed, worker: str, error: str, now: datetime, retry_at: datetime
) -> bool:
    return _finish_attempt(conn, claimed, worker, now, last_error=error, next_attempt_at=retry_at)


def record_failed(
    conn: Connection,
    claimed: Claimed,
    worker: str,
    error: str,
    now: datetime,
    *,
    suppress: str | None = None,
    suppress_address: bool = False,
) -> bool:
    """A final failure; with ``suppress`` (the provider's word that the address is gone) also a suppression,
    of the address on address channels, else of the member, on this channel."""
    done = _finish_attempt(conn, claimed, worker, now, state="failed", last_error=error, next_attempt_at=None)
    if done and suppress:
        target = (
            suppressions.Target(address=claimed.contact)
            if suppress_address and claimed.contact
            else suppressions.Target(customer_pk=claimed.customer_pk, customer_id=claimed.customer_id)
        )
        suppressions.add(
            conn,
            target,
            channel=claimed.channel,
            reason=suppress,
            source="provider",
            note=f"{claimed.campaign}: {error}"[:500],
            now=now,
        )
    return done


def release(conn: Connection, claimed: Sequence[Claimed], worker: str) -> None:
    """Give back claimed rows that were not attempted (the channel was paused mid-batch)."""
    ids = [c.id for c in claimed]
    if ids:
        conn.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids), Delivery.claimed_by == worker, Delivery.state == "pending")
            .values(claimed_by=None, claim_expires=None)
        )
