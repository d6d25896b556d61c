"""``POST /api/coupons/{code}/check`` and ``/redeem``: a point of sale asks whether a coupon is good for the order
being paid, and redeems it.

The till sends ``{"order_id", "customer_id", "amount", "ordered_at"}``. The order has usually not been imported
yet: it is recorded here (status paid, channel ``pos``) with the redemption, and the orders import later matches
it by ``order_id`` and updates it in place instead of adding a second one. The checks are those of
``coupons redeem`` (``orchestrator.coupons.redemption``), in one code path: ``check`` runs the redemption and
rolls it back, ``redeem`` commits it. A refusal carries the redemption's stable reason (``wrong_customer``,
``daypart``, ``min_spend``, …) and a message in English and Chinese; ``redeem`` is idempotent by order id
(the same code on the same order again answers ``already_redeemed`` with ``ok: true``).

Scopes: ``coupons:check`` for check, ``coupons:redeem`` for both.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Connection, select, update
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator.config import Settings
from orchestrator.coupons import codes
from orchestrator.coupons.redemption import RedemptionRefused, local_iso, redeem
from orchestrator.data.records import identifier
from orchestrator.db.models import Coupon, Customer, Order
from orchestrator.ledger import insert_ignoring_duplicates
from orchestrator.timeutil import TimeOutOfRange, parse_reported_time, utcnow
from orchestrator.web import metrics
from orchestrator.web.auth import require
from orchestrator.web.bodies import checked_identifier, json_object
from orchestrator.web.errors import ApiError, time_out_of_range

SOURCE = "pos"
MAX_AMOUNT = Decimal("10000000")

#: the Chinese for every refusal reason; the English is the redemption's own explanation
REASONS_ZH = {
    "mistyped": "券码输入有误",
    "unknown_code": "券码不存在",
    "unknown_order": "订单不存在",
    "unknown_customer": "会员不存在",
    "order_mismatch": "该订单号已属于另一位会员",
    "already_redeemed": "此券已在其他订单上使用",
    "not_paid": "订单未支付",
    "wrong_customer": "此券不属于该会员",
    "void": "此券已作废",
    "expired": "此券已过期",
    "not_yet_valid": "此券尚未生效",
    "daypart": "此券不在可用时段",
    "weekday": "此券今天不可用",
    "amount": "金额超过订单金额",
    "min_spend": "未达到最低消费",
    "stacking": "此券不能与本单已用的券叠加",
    "bundle": "此券需要与指定的券同时使用",
}


class TillOrder(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    order_id: str = Field(min_length=1, max_length=64)
    customer_id: str = Field(min_length=1, max_length=64)
    amount: Decimal
    ordered_at: str = Field(min_length=1, max_length=64)

    @field_validator("order_id", "customer_id")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return identifier(64)(value)  # the rule of ``import orders``: no control, format or bidi characters

    @field_validator("amount", mode="before")
    @classmethod
    def _money(cls, value: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
            raise ValueError('give the amount as a decimal number or string, e.g. "128.50"')
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"{value!r} is not an amount") from None
        if not amount.is_finite() or amount <= 0 or amount >= MAX_AMOUNT:
            raise ValueError("the amount must be more than 0 and less than 10,000,000")
        if amount.as_tuple().exponent < -2:
            raise ValueError("the amount has more than two decimals")
        return amount


def _order_of(raw: bytes, settings: Settings) -> tuple[TillOrder, datetime]:
    try:
        order = TillOrder.model_validate(json_object(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ApiError(422, "invalid_order", problems, f"订单数据无效：{problems}") from None
    try:
        ordered_at = parse_reported_time(order.ordered_at, settings.tz)
    except TimeOutOfRange as exc:
        raise time_out_of_range("ordered_at", exc) from None
    except ValueError as exc:
        raise ApiError(422, "invalid_order", f"ordered_at: {exc}", "ordered_at 不是有效的时间（ISO 8601）") from None
    return order, ordered_at


def _refused(reason: str, detail: str, code: str, order_id: str | None) -> dict[str, Any]:
    return {
        "ok": False,
        "code": codes.display(code) if codes.is_well_formed(code) else code,
        "order_id": order_id,
        "reason": reason,
        "message": {"en": detail, "zh": REASONS_ZH.get(reason, "此券不可用")},
    }


class _Refusal(Exception):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail


def _take_write_lock(conn: Connection) -> None:
    """SQLite: take the database's write lock before reading anything (a no-op write), so that two tills are
    decided one after the other instead of one failing to upgrade its read; PostgreSQL locks rows instead."""
    if conn.dialect.name == "sqlite":
        conn.execute(update(Order).where(Order.id == -1).values(status=Order.status))


def _record_order(conn: Connection, order: TillOrder, ordered_at: datetime, caller: str) -> None:
    """The till's order, recorded if it is not there yet; an order id of another member is refused."""
    found = conn.execute(
        select(Customer.customer_id)
        .join(Order, Order.customer_pk == Customer.id)
        .where(Order.order_id == order.order_id)
    ).first()
    if found is None:
        customer_pk = conn.execute(select(Customer.id).where(Customer.customer_id == order.customer_id)).scalar()
        if customer_pk is None:
            raise _Refusal("unknown_customer", f"there is no member {order.customer_id}")
        now = utcnow()
        values = {
            "order_id": order.order_id,
            "customer_pk": customer_pk,
            "ordered_at": ordered_at,
            "amount": order.amount,
            "status": "paid",
            "channel": SOURCE,
            "attributes": {"recorded_by": f"api:{caller}"},
            "created_at": now,
            "updated_at": now,
        }
        # two tills sending the same new order at once: the second insert is skipped, and both see one order
        insert_ignoring_duplicates(conn, Order.__table__, [values], ["order_id"])
        found = conn.execute(
            select(Customer.customer_id)
            .join(Order, Order.customer_pk == Customer.id)
            .where(Order.order_id == order.order_id)
        ).first()
    if found.customer_id != order.customer_id:
        raise _Refusal("order_mismatch", f"order {order.order_id} was placed by another member")


def _coupon_terms(conn: Connection, code: str) -> dict[str, Any]:
    row = conn.execute(
        select(Coupon.offer_kind, Coupon.value, Coupon.min_spend, Coupon.terms, Coupon.valid_until).where(
            Coupon.code == code
        )
    ).one()
    return {
        "kind": row.offer_kind,
        "value": str(row.value) if row.value is not None else None,
        "min_spend": str(row.min_spend) if row.min_spend is not None else None,
        "description": (row.terms or {}).get("description"),
    }


def decide(request: Request, code: str, raw: bytes, *, commit: bool) -> tuple[int, dict[str, Any]]:
    """Check (``commit`` False) or redeem ``code`` for the till's order: (status, JSON body)."""
    caller = require(request, "coupons:redeem" if commit else "coupons:check")
    settings: Settings = request.app.state.settings
    order, ordered_at = _order_of(raw, settings)
    with request.app.state.engine.connect() as conn:
        transaction = conn.begin()
        try:
            _take_write_lock(conn)
            _record_order(conn, order, ordered_at, caller.name)
            done = redeem(conn, settings, code, order.order_id, amount=order.amount, source=SOURCE)
            body = {
                "ok": True,
                "status": ("redeemed" if commit else "valid") if done.new else "already_redeemed",
                "code": codes.display(done.code),
                "order_id": done.order_id,
                "customer_id": done.customer_id,
                "amount": str(done.amount) if done.amount is not None else None,
                "redeemed_at": local_iso(done.redeemed_at, settings) if not done.new or commit else None,
                "coupon": _coupon_terms(conn, done.code),
            }
        except RedemptionRefused as refused:
            transaction.rollback()
            metrics.REDEMPTIONS.labels("check" if not commit else "redeem", refused.reason).inc()
            return (409 if commit else 200), _refused(refused.reason, refused.detail, refused.code, order.order_id)
        except _Refusal as refused:
            transaction.rollback()
            metrics.REDEMPTIONS.labels("check" if not commit else "redeem", refused.reason).inc()
            return (409 if commit else 200), _refused(refused.reason, refused.detail, code.strip(), order.order_id)
        except BaseException:
            transaction.rollback()
            raise
        if commit:
            transaction.commit()
        else:
            transaction.rollback()  # a check writes nothing, not even the till's order
    metrics.REDEMPTIONS.labels("check" if not commit else "redeem", body["status"]).inc()
    return 200, body


async def check(request: Request) -> JSONResponse:
    return await _answer(request, commit=False)


async def redeem_endpoint(request: Request) -> JSONResponse:
    return await _answer(request, commit=True)


async def _answer(request: Request, *, commit: bool) -> JSONResponse:
    raw = await request.body()
    code = request.path_params["code"]
    if len(code) > 64:
        raise ApiError(400, "malformed_code", "the coupon code is too long", "券码过长")
    checked_identifier(code, "the coupon code")
    status, body = await run_in_threadpool(decide, request, code, raw, commit=commit)
    return JSONResponse(body, status_code=status)


routes = [
    Route("/api/coupons/{code}/check", check, methods=["POST"]),
    Route("/api/coupons/{code}/redeem", redeem_endpoint, methods=["POST"]),
]
