"""The delivery ledger: campaign runs and one row per intended message, written before anything is sent.

A run is unique per (campaign, scheduled time); a delivery per (run, customer, channel). Writing the row first
is what makes a run resumable without repeats: after a crash, rows still ``pending`` are sent, rows in a final
state are not touched.

States: pending -> sent | failed | skipped(reason) | deferred(until); held_out for the control group.
A run is running (being planned), waiting (planned; messages left to send later) or done.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from orchestrator.channels.base import RenderedMessage
from orchestrator.db.models import Campaign, CampaignRun, Delivery, DeliveryPayload
from orchestrator.timeutil import utcnow

_DELIVERY_KEY = re.compile(r"run(\d+)-d(\d+)")


def delivery_key(run_id: int, delivery_id: int) -> str:
    """A delivery's idempotency key, ``run{run_id}-d{delivery_id}``: what providers deduplicate on, what a call
    list's first column holds and what a call centre's outcome file names."""
    return f"run{run_id}-d{delivery_id}"


def parse_delivery_key(key: str) -> tuple[int, int] | None:
    """``run{run_id}-d{delivery_id}`` → ``(run_id, delivery_id)``, or None for anything else."""
    match = _DELIVERY_KEY.fullmatch(key.strip())
    return (int(match[1]), int(match[2])) if match else None


FINAL_STATES = ("sent", "failed", "skipped", "held_out")


@dataclass(frozen=True)
class RunRef:
    pk: int
    campaign_pk: int
    scheduled_at: datetime
    state: str
    created: bool  # False when an earlier invocation already opened this run


@dataclass(frozen=True)
class IntendedDelivery:
    customer_pk: int
    channel: str
    step: str | None
    state: str = "pending"
    reason: str | None = None
    contact: str | None = None
    coupon_pk: int | None = None
    deferred_until: datetime | None = None  # quiet hours: when the message may go
    message: RenderedMessage | None = None  # what will be sent; stored with the row until it is final
    error: str | None = None  # why a row written as failed failed (e.g. its template hit a limit)
    variant: str | None = None  # the step's A/B variant (held-out members too: the one they would have had)
    follow_up: str = ""  # the follow-up this row decides, '' for the run's own messages
    due_at: datetime | None = None  # a follow-up's due time


def encode_payload(message: RenderedMessage) -> bytes:
    # the fields by hand: dataclasses.asdict deep-copies every part first, a third of this function's time
    data = {
        "channel": message.channel,
        "parts": message.parts,
        "headers": message.headers,
        "measures": message.measures,
    }
    return zlib.compress(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode(), 6)


def decode_payload(body: bytes) -> RenderedMessage:
    return RenderedMessage(**json.loads(zlib.decompress(body)))


@dataclass(frozen=True)
class RecordedDelivery:
    id: int
    channel: str
    state: str
    reason: str | None
    contact: str | None
    coupon_pk: int | None


def recorded_for(
    conn: Connection, run_pk: int, customer_pks: Sequence[int], follow_up: str = ""
) -> dict[int, list[RecordedDelivery]]:
    """The delivery rows this run already holds for these customers, by customer: its own messages, or with
    ``follow_up`` that follow-up's."""
    found: dict[int, list[RecordedDelivery]] = {}
    if not customer_pks:
        return found
    rows = conn.execute(
        select(
            Delivery.customer_pk,
            Delivery.id,
            Delivery.channel,
            Delivery.state,
            Delivery.reason,
            Delivery.contact,
            Delivery.coupon_pk,
        )
        .where(Delivery.run_pk == run_pk, Delivery.customer_pk.in_(customer_pks), Delivery.follow_up == follow_up)
        .order_by(Delivery.id)
    )
    for row in rows:
        found.setdefault(row.customer_pk, []).append(RecordedDelivery(*row[1:]))
    return found


def insert_ignoring_duplicates(conn: Connection, table, rows: Sequence[Mapping[str, Any]], keys: Sequence[str]):
    """INSERT … ON CONFLICT DO NOTHING on the unique ``keys``, for SQLite and PostgreSQL."""
    if not rows:
        return
    dialect = {"sqlite": sqlite, "postgresql": postgresql}[conn.dialect.name]
    statement = dialect.insert(table).on_conflict_do_nothing(index_elements=list(keys))
    conn.execute(statement, list(rows))


def upsert_campaign(conn: Connection, name: str, source_path: str, definition: dict, content_hash: str) -> int:
    now = utcnow()
    existing = conn.execute(select(Campaign.id, Campaign.content_hash).where(Campaign.name == name)).first()
    if existing is None:
        insert_ignoring_duplicates(
            conn,
            Campaign.__table__,
            [
                {
                    "name": name,
                    "source_path": source_path,
                    "definition": definition,
                    "content_hash": content_hash,
                    "created_at": now,
                    "updated_at": now,
                }
            ],
            ["name"],
        )
        return conn.execute(select(Campaign.id).where(Campaign.name == name)).scalar_one()
    if existing.content_hash != content_hash:
        conn.execute(
            update(Campaign)
            .where(Campaign.id == existing.id)
            .values(source_path=source_path, definition=definition, content_hash=content_hash, updated_at=now)
        )
    return existing.id


def open_run(engine: Engine, campaign_pk: int, scheduled_at: datetime, content_hash: str) -> RunRef:
    """The run for (campaign, scheduled time): created now, or the one an earlier invocation created."""
    try:
        with engine.begin() as conn:
            pk = conn.execute(
                CampaignRun.__table__.insert()
                .values(
                    campaign_pk=campaign_pk,
                    scheduled_at=scheduled_at,
                    state="running",
                    content_hash=content_hash,
                    started_at=utcnow(),
                    summary={},
                )
                .returning(CampaignRun.id)
            ).scalar_one()
        return RunRef(pk, campaign_pk, scheduled_at, "running", created=True)
    except IntegrityError:
        with engine.connect() as conn:
            row = conn.execute(
                select(CampaignRun.id, CampaignRun.state).where(
                    CampaignRun.campaign_pk == campaign_pk, CampaignRun.scheduled_at == scheduled_at
                )
            ).one()
        return RunRef(row.id, campaign_pk, scheduled_at, row.state, created=False)


def record_intended(conn: Connection, run_pk: int, deliveries: Iterable[IntendedDelivery]) -> dict:
    """Write delivery rows (existing ones are kept as they are) and return {(customer, channel): (id, state)}.
    One call writes rows of one stage: the run's own messages, or one follow-up's."""
    now = utcnow()
    intended = list(deliveries)
    stages = {d.follow_up for d in intended}
    if len(stages) > 1:
        raise ValueError(f"record_intended writes one follow-up at a time, got {sorted(stages)}")
    follow_up = next(iter(stages), "")
    rows = [
        {
            "run_pk": run_pk,
            "customer_pk": d.customer_pk,
            "channel": d.channel,
            "step": d.step,
            "variant": d.variant,
            "follow_up": d.follow_up,
            "due_at": d.due_at,
            "state": d.state,
            "reason": d.reason,
            "contact": d.contact,
            "coupon_pk": d.coupon_pk,
            "deferred_until": d.deferred_until,
            "last_error": d.error,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for d in intended
    ]
    insert_ignoring_duplicates(conn, Delivery.__table__, rows, ["run_pk", "customer_pk", "channel", "follow_up"])
    pks = list({r["customer_pk"] for r in rows})
    if not pks:
        return {}
    found = conn.execute(
        select(Delivery.id, Delivery.customer_pk, Delivery.channel, Delivery.state).where(
            Delivery.run_pk == run_pk, Delivery.customer_pk.in_(pks), Delivery.follow_up == follow_up
        )
    )
    written = {(r.customer_pk, r.channel): (r.id, r.state) for r in found}
    payloads = [
        {"delivery_pk": written[(d.customer_pk, d.channel)][0], "body": encode_payload(d.message)}
        for d in intended
        if d.message is not None and written[(d.customer_pk, d.channel)][1] in ("pending", "deferred")
    ]
    insert_ignoring_duplicates(conn, DeliveryPayload.__table__, payloads, ["delivery_pk"])
    return written


def open_counts(conn: Connection, run_pk: int) -> dict[str, int]:
    """The run's deliveries not yet final: {"pending": n, "deferred": n}, states with none left out."""
    rows = conn.execute(
        select(Delivery.state, func.count())
        .where(Delivery.run_pk == run_pk, Delivery.state.in_(("pending", "deferred")))
        .group_by(Delivery.state)
    )
    return dict(rows.all())


def finish_run(engine: Engine, run_pk: int, summary: dict) -> str:
    """Close the run's planning: ``done`` when every delivery is final, else ``waiting`` (messages pending a
    retry or deferred by quiet hours, which ``orchestrator dispatch`` sends when due). Returns the state."""
    with engine.begin() as conn:
        waiting = bool(open_counts(conn, run_pk))
        state = "waiting" if waiting else "done"
        conn.execute(
            update(CampaignRun)
            .where(CampaignRun.id == run_pk)
            .values(state=state, finished_at=None if waiting else utcnow(), summary=summary)
        )
    return state


def close_if_complete(conn: Connection, run_pk: int) -> bool:
    """Mark a ``waiting`` run done once nothing of it is pending or deferred any more."""
    if open_counts(conn, run_pk):
        return False
    conn.execute(
        update(CampaignRun)
        .where(CampaignRun.id == run_pk, CampaignRun.state == "waiting")
        .values(state="done", finished_at=utcnow())
    )
    return True


def state_counts(conn: Connection, run_pk: int) -> dict[str, Any]:
    """Counts by state, by skip reason and by channel for one run."""
    states: dict[str, int] = {}
    reasons: dict[str, int] = {}
    channels: dict[str, int] = {}
    for state, reason, channel, count in conn.execute(
        select(Delivery.state, Delivery.reason, Delivery.channel, func.count())
        .where(Delivery.run_pk == run_pk)
        .group_by(Delivery.state, Delivery.reason, Delivery.channel)
    ):
        states[state] = states.get(state, 0) + count
        if state == "skipped" and reason:
            reasons[reason] = reasons.get(reason, 0) + count
        if state in ("sent", "pending", "failed", "deferred"):
            channels[channel] = channels.get(channel, 0) + count
    return {"states": states, "skipped": reasons, "channels": channels}
