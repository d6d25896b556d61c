"""``POST /hooks/email/{provider}``: delivery events from an e-mail provider (``serve.email_hooks.<provider>``).

Two formats:

- ``generic``: ``{"events": [{"type": "bounce" | "complaint" | "delivered", "bounce_type": "hard" | "soft",
  "recipient": "…", "delivery_key": "run12-d345", "message_id": "<…>", "occurred_at": "ISO 8601"}]}``, signed
  like the SMS hooks (``X-Timestamp``, ``X-Signature``: hex HMAC-SHA256 of ``<timestamp>.<body>``). Only
  ``type`` and ``recipient`` are required; ``delivery_key`` or ``message_id`` names the delivery.
- ``mailgun``: Mailgun's webhook JSON (``signature`` {timestamp, token, signature}: HMAC-SHA256 of timestamp and
  token with the webhook signing key, each token accepted once (``replays``); ``event-data`` with ``event``
  delivered / failed / complained, ``severity`` permanent / temporary, ``recipient``, ``timestamp``,
  ``message.headers.message-id``).

Each event sets the delivery's ``outcome`` (``delivered``, ``bounced``, ``soft_bounced``, ``complained``) and
``outcome_at``, unless a later event is already recorded (providers retry and reorder). A hard bounce or a
complaint also suppresses the address on e-mail (reason ``bounced`` / ``complained``), whether or not the delivery
is found: an address the provider will not deliver to must not be tried again. The delivery is found by its key,
else by the Message-ID the e-mail channel derived from that key, among the deliveries to that address only (a key
of a delivery to another address matches nothing).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, or_, select, update
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator import suppressions
from orchestrator.config import EmailHookConfig, Settings
from orchestrator.data.records import address_key
from orchestrator.db.models import Delivery
from orchestrator.ledger import delivery_key, parse_delivery_key
from orchestrator.timeutil import TimeOutOfRange, parse_reported_time, reported_timestamp, utcnow
from orchestrator.web import metrics, replays
from orchestrator.web.bodies import checked_identifier, json_object
from orchestrator.web.errors import ApiError, bad_request, time_out_of_range
from orchestrator.web.signatures import fresh, unauthorised, verify_hmac

CHANNEL = "email"
MAX_EVENTS = 100
SUPPRESSING = {"bounced": "bounced", "complained": "complained"}
CANDIDATES = 200  # deliveries to one address searched for a Message-ID


@dataclass(frozen=True)
class EmailEvent:
    outcome: str  # delivered | bounced | soft_bounced | complained
    recipient: str
    occurred_at: datetime
    delivery_key: str | None = None
    message_id: str | None = None


def _invalid(index: int, what: str) -> ApiError:
    return bad_request(f"event {index}: {what}", f"第 {index} 个事件无效：{what}", "invalid_event")


def _text(value: Any, index: int, name: str, *, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise _invalid(index, f"{name} is missing")
        return None
    if not isinstance(value, str) or len(value) > 998:
        raise _invalid(index, f"{name} must be text")
    return value


def _identifier(value: str | None, name: str) -> str | None:
    return checked_identifier(value, name, 998) if value is not None else None


def _generic(body: dict[str, Any], settings: Settings) -> list[EmailEvent]:
    events = body.get("events")
    if not isinstance(events, list) or not events or len(events) > MAX_EVENTS:
        raise bad_request(
            f"'events' must be a list of 1 to {MAX_EVENTS} events",
            f"events 必须是 1 到 {MAX_EVENTS} 个事件",
            "invalid_event",
        )
    parsed = []
    for index, event in enumerate(events, 1):
        if not isinstance(event, dict):
            raise _invalid(index, "an event is a JSON object")
        kind = _text(event.get("type"), index, "type", required=True)
        if kind == "bounce":
            bounce = event.get("bounce_type", "hard")
            if bounce not in ("hard", "soft"):
                raise _invalid(index, "bounce_type is hard or soft")
            outcome = "bounced" if bounce == "hard" else "soft_bounced"
        elif kind == "complaint":
            outcome = "complained"
        elif kind == "delivered":
            outcome = "delivered"
        else:
            raise _invalid(index, "type is bounce, complaint or delivered")
        when = _text(event.get("occurred_at"), index, "occurred_at")
        try:
            occurred = parse_reported_time(when, settings.tz) if when else utcnow()
        except TimeOutOfRange as exc:
            raise time_out_of_range(f"event {index}: occurred_at", exc) from None
        except ValueError as exc:
            raise _invalid(index, f"occurred_at: {exc}") from None
        parsed.append(
            EmailEvent(
                outcome,
                _text(event.get("recipient"), index, "recipient", required=True),
                occurred,
                _identifier(_text(event.get("delivery_key"), index, "delivery_key"), f"event {index}: delivery_key"),
                _identifier(_text(event.get("message_id"), index, "message_id"), f"event {index}: message_id"),
            )
        )
    return parsed


@dataclass(frozen=True)
class OneTimeToken:
    """A provider's token that may be used once (Mailgun's), remembered until its request could not pass anyway."""

    provider: str
    token: str
    remember_until: datetime

    def claim(self, conn: Connection) -> None:
        if not replays.claim_once(conn, self.provider, self.token, self.remember_until):
            raise unauthorised()  # a replay: the same 401 as every other failure


def _mailgun(
    body: dict[str, Any], hook: EmailHookConfig, provider: str, tolerance: int
) -> tuple[list[EmailEvent], OneTimeToken]:
    signature = body.get("signature")
    if not isinstance(signature, dict):
        raise unauthorised()
    timestamp, token, presented = (str(signature.get(k) or "") for k in ("timestamp", "token", "signature"))
    expected = hmac.new(hook.secret.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    if not fresh(timestamp, tolerance) or not token or not hmac.compare_digest(expected.encode(), presented.encode()):
        raise unauthorised()
    once = OneTimeToken(provider, token, datetime.fromtimestamp(int(timestamp), UTC) + timedelta(seconds=tolerance + 1))
    data = body.get("event-data")
    if not isinstance(data, dict):
        raise _invalid(1, "event-data is missing")
    kind = data.get("event")
    if kind == "failed":
        outcome = "bounced" if data.get("severity") == "permanent" else "soft_bounced"
    elif kind in ("complained", "delivered"):
        outcome = kind
    else:
        return [], once  # opened, clicked, unsubscribed…: not delivery outcomes; acknowledged so Mailgun stops retrying
    stamp = data.get("timestamp")
    try:
        occurred = (
            reported_timestamp(float(stamp))
            if isinstance(stamp, int | float | Decimal) and not isinstance(stamp, bool)
            else utcnow()
        )
    except TimeOutOfRange as exc:
        raise time_out_of_range("event-data.timestamp", exc) from None
    headers = (data.get("message") or {}).get("headers") or {}
    return [
        EmailEvent(
            outcome,
            _text(data.get("recipient"), 1, "recipient", required=True),
            occurred,
            None,
            _identifier(
                _text(headers.get("message-id") if isinstance(headers, dict) else None, 1, "message-id"), "message-id"
            ),
        )
    ], once


def _id_hash(message_id: str) -> str:
    """The part of our Message-ID that comes from the delivery key (see the e-mail plugin's ``message_id``)."""
    return message_id.strip().strip("<>").partition("@")[0].lower()


def _recipient_key(recipient: str) -> str | None:
    """The recipient as deliveries' contacts compare (normalised, lower-cased), or None if it is no address."""
    try:
        return suppressions.normalise_email(recipient)
    except ValueError:
        return None


def _find_delivery(conn: Connection, event: EmailEvent) -> int | None:
    """The delivery the event names, only ever among the deliveries to its recipient: a key or Message-ID of a
    delivery to another address (a provider's mix-up, or a forged event) must not mark that delivery."""
    recipient = _recipient_key(event.recipient)
    if recipient is None:
        return None
    if event.delivery_key and (key := parse_delivery_key(event.delivery_key)):
        run_id, delivery_id = key
        found = conn.execute(
            select(Delivery.id, Delivery.contact).where(
                Delivery.id == delivery_id, Delivery.run_pk == run_id, Delivery.channel == CHANNEL
            )
        ).first()
        if found is None or found.contact is None:
            return None
        # contacts are stored as the importer normalised them (local part's case kept); compare as suppressions do
        return found.id if address_key(found.contact) == recipient else None
    if not event.message_id:
        return None
    wanted = _id_hash(event.message_id)
    rows = conn.execute(
        select(Delivery.id, Delivery.run_pk)
        .where(Delivery.channel == CHANNEL, func.lower(Delivery.contact) == recipient)
        .order_by(Delivery.id.desc())
        .limit(CANDIDATES)
    )
    for delivery_id, run_pk in rows:
        if hashlib.sha256(delivery_key(run_pk, delivery_id).encode()).hexdigest()[:32] == wanted:
            return delivery_id
    return None


def _record(conn: Connection, event: EmailEvent) -> dict[str, int]:
    done = {"matched": 0, "suppressed": 0}
    found = _find_delivery(conn, event)
    if found is not None:
        done["matched"] = 1
        conn.execute(
            update(Delivery)
            .where(
                Delivery.id == found,
                or_(Delivery.outcome_at.is_(None), Delivery.outcome_at <= event.occurred_at),
            )
            .values(outcome=event.outcome, outcome_at=event.occurred_at)
        )
    reason = SUPPRESSING.get(event.outcome)
    if reason:
        try:
            target = suppressions.Target(address=suppressions.normalise_email(event.recipient))
        except ValueError:
            return done  # not an address we could have sent to; the outcome above is all there is
        added = suppressions.add(
            conn, target, channel=CHANNEL, reason=reason, source="email_event", now=event.occurred_at
        )
        done["suppressed"] = int(added.added)
    return done


def _apply(request: Request, events: list[EmailEvent], once: OneTimeToken | None) -> dict[str, int]:
    totals = {"events": len(events), "matched": 0, "suppressed": 0}
    with request.app.state.engine.begin() as conn:
        if once is not None:
            once.claim(conn)  # in this transaction: a request that fails is not remembered, its retry is accepted
        for event in events:
            for key, value in _record(conn, event).items():
                totals[key] += value
            metrics.HOOK_EVENTS.labels("email", event.outcome).inc()
    return totals


async def receive(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    provider = request.path_params["provider"]
    hook = settings.serve.email_hooks.get(provider)
    if hook is None:
        raise ApiError(404, "unknown_provider", f"no e-mail hook named {provider!r}", "未配置此邮件回调")
    raw = await request.body()
    tolerance = settings.serve.timestamp_tolerance_seconds
    if hook.format == "generic":
        verify_hmac(hook.secret, request.headers.get("x-timestamp"), request.headers.get("x-signature"), raw, tolerance)
        events, once = _generic(json_object(raw), settings), None
    else:
        events, once = _mailgun(json_object(raw), hook, provider, tolerance)
    totals = await run_in_threadpool(_apply, request, events, once)
    return JSONResponse(totals)


routes = [Route("/hooks/email/{provider}", receive, methods=["POST"])]
