"""Redeeming coupons against orders, and looking them up: the closing loop of a campaign.

:func:`redeem` records that a coupon was used on a paid order. It checks, in this order, and refuses with a
:class:`RedemptionRefused` that names the reason (``reason``, a stable key) and explains it (``detail``):

==================  ==========================================================================================
``mistyped``        not a well-formed code: wrong length or alphabet, or the check character does not match
                    (a typo), found before any lookup
``unknown_code``    no coupon has this code
``unknown_order``   no order has this id
``already_redeemed`` the coupon was redeemed on another order (on the *same* order it is not an error: the
                    existing redemption is returned, ``new=False``, and nothing is written)
``not_paid``        the order is refunded or cancelled
``wrong_customer``  the coupon belongs to another member than the one who placed the order
``void``            the coupon was voided
``expired``         the order is at or after the end of the validity (``valid_until`` is exclusive), or the
                    coupon was marked expired
``not_yet_valid``   the order is before ``valid_from``
``daypart``         the coupon is limited to dayparts (config ``dayparts``) and the order's shop-local time is
                    in none of them
``weekday``         the coupon is limited to weekdays and the order's shop-local weekday is not one of them
``amount``          the amount given is more than the order's amount
``min_spend``       the spend (the order's amount, or the amount given) is below the coupon's minimum
``stacking``        the order already redeemed a coupon and the two may not be combined: both must be
                    ``combinable``, or one ``bundled`` with the other's group
``bundle``          a ``bundled`` coupon needs a coupon of its ``bundle_with`` group redeemed first on the order
==================  ==========================================================================================

Times are checked at the order's time (``ordered_at``), in the shop's time zone (config ``timezone``) for
dayparts and weekdays; ``at`` only sets the recorded redemption time. A success writes one
``coupon_redemptions`` row and marks the coupon ``redeemed`` at that time, inside a savepoint of the caller's
transaction. Two redemptions of one coupon at once cannot both succeed: the coupon and the order rows are
locked (``SELECT … FOR UPDATE`` on PostgreSQL; on SQLite, which has one writer at a time, a no-op write takes
the write lock before anything is read) and, as a backstop, the unique ``coupon_pk`` of ``coupon_redemptions``
makes the loser's insert fail, which turns into the same answer as if it had come second: the existing
redemption when it was for the same order, ``already_redeemed`` otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from orchestrator.config import Settings
from orchestrator.coupons import codes
from orchestrator.db.models import COUPON_STATES, Campaign, CampaignRun, Coupon, CouponRedemption, Customer, Order
from orchestrator.errors import InputError
from orchestrator.timeutil import DailyWindow, utcnow

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
STACKING_DEFAULT = "exclusive"
LIST_BATCH = 1000


class RedemptionRefused(InputError):
    """A coupon that may not be redeemed on an order; ``reason`` is a stable key, ``detail`` the explanation."""

    def __init__(self, reason: str, detail: str, *, code: str, order_id: str | None, hint: str | None = None):
        shown = codes.display(code) if codes.is_well_formed(code) else code
        on = f" on order {order_id}" if order_id is not None else ""
        super().__init__(f"coupon {shown} cannot be redeemed{on}: {detail}", hint=hint)
        self.reason = reason
        self.detail = detail
        self.code = code
        self.order_id = order_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "refused",
            "code": codes.display(self.code) if codes.is_well_formed(self.code) else self.code,
            "order_id": self.order_id,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Redemption:
    """A coupon redeemed on an order; ``new`` is False when it had already been redeemed on that order."""

    code: str
    order_id: str | None
    customer_id: str
    amount: Decimal | None
    redeemed_at: datetime
    source: str
    new: bool

    def to_dict(self, settings: Settings) -> dict[str, Any]:
        return {
            "status": "redeemed" if self.new else "already_redeemed",
            "code": codes.display(self.code),
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "amount": self.amount,
            "redeemed_at": local_iso(self.redeemed_at, settings),
            "source": self.source,
        }


# --- redeeming -------------------------------------------------------------------------------------------------


def redeem(
    conn: Connection,
    settings: Settings,
    code: str,
    order_id: str,
    *,
    amount: Decimal | None = None,
    at: datetime | None = None,
    source: str,
) -> Redemption:
    """Redeem the coupon ``code`` (as typed: dashes, spaces and case are ignored) on the order ``order_id``.

    ``amount`` is the spend the coupon applies to (default: the order's amount); it is what ``min_spend`` is
    checked against and what the redemption records. ``at`` is the redemption time to record (default: the
    order's time). Raises :class:`RedemptionRefused`; runs in the caller's transaction and leaves it usable.
    """
    typed, code = code, codes.normalise(code)
    problem = code_problem(code)
    if problem:
        raise RedemptionRefused("mistyped", problem, code=typed.strip(), order_id=order_id)

    def refuse(reason: str, detail: str, hint: str | None = None) -> RedemptionRefused:
        return RedemptionRefused(reason, detail, code=code, order_id=order_id, hint=hint)

    _take_write_lock(conn, code)
    coupon = _coupon_for_update(conn, code)
    if coupon is None:
        raise refuse("unknown_code", "no coupon has this code", "check the code with 'orchestrator coupons show CODE'")
    order = _order_for_update(conn, order_id)
    if order is None:
        raise refuse("unknown_order", "there is no such order", "import the order with 'orchestrator import orders'")
    existing = _redemption(conn, coupon.id)
    if existing is not None:
        return _existing(existing, coupon, order, settings, refuse)
    if order.status != "paid":
        raise refuse("not_paid", f"the order is {order.status}, not paid")
    if coupon.customer_pk != order.customer_pk:
        raise refuse("wrong_customer", f"the coupon belongs to another member, not to {order.customer_id}")
    _check_state(coupon, settings, refuse)
    _check_time(coupon, order.ordered_at, settings, refuse)
    spend = order.amount if amount is None else amount
    if amount is not None and amount > order.amount:
        raise refuse("amount", f"the amount {_money(amount)} is more than the order's amount {_money(order.amount)}")
    if spend < (coupon.min_spend or 0):
        whose = "the order's amount" if amount is None else "the amount given"
        raise refuse("min_spend", f"the minimum spend is {_money(coupon.min_spend)}; {whose} is {_money(spend)}")
    _check_stacking(conn, coupon, order, refuse)

    when = at if at is not None else order.ordered_at
    try:
        with conn.begin_nested():
            conn.execute(
                insert(CouponRedemption).values(
                    coupon_pk=coupon.id, order_pk=order.id, amount=spend, redeemed_at=when, source=source
                )
            )
            marked = conn.execute(
                update(Coupon)
                .where(Coupon.id == coupon.id, Coupon.state == "issued")
                .values(state="redeemed", redeemed_at=when)
            )
            if marked.rowcount != 1:
                raise _Conflict
    except (IntegrityError, _Conflict):
        # another transaction redeemed (or voided) the coupon between our checks and our insert
        latest = _redemption(conn, coupon.id)
        if latest is not None:
            return _existing(latest, coupon, order, settings, refuse)
        coupon = _coupon_for_update(conn, code)
        if coupon is None:
            raise refuse("unknown_code", "no coupon has this code (any more)") from None
        _check_state(coupon, settings, refuse)
        raise
    return Redemption(code, order.order_id, order.customer_id, spend, when, source, new=True)


class _Conflict(Exception):
    """The coupon changed state under us; rolls the savepoint back."""


def code_problem(code: str) -> str | None:
    """Why a normalised code cannot be one of ours, or None when it is well-formed."""
    if codes.is_well_formed(code):
        return None
    length = codes.CODE_LENGTH + 1
    if not code:
        return "the code is empty"
    if len(code) != length:
        return f"the code is mistyped: a coupon code has {length} characters, this one has {len(code)}"
    wrong = sorted({ch for ch in code if ch not in codes.ALPHABET})
    if wrong:
        return (
            f"the code is mistyped: {', '.join(wrong)} cannot occur in a coupon code "
            "(it has the digits 2-9 and the letters except I, L, O and U)"
        )
    return "the code is mistyped: its check character does not match (a character is wrong or two are swapped)"


_COUPON_COLUMNS = (
    Coupon.id,
    Coupon.code,
    Coupon.customer_pk,
    Coupon.group,
    Coupon.min_spend,
    Coupon.terms,
    Coupon.valid_from,
    Coupon.valid_until,
    Coupon.state,
    Coupon.redeemed_at,
)


def _take_write_lock(conn: Connection, code: str) -> None:
    """SQLite: start writing before reading, so that what we read is still true when we write.

    SQLite has one writer at a time and ignores ``FOR UPDATE``; a no-op write takes the database's write lock
    (waiting for another writer, up to the busy timeout), after which no other redemption can slip in between
    our checks and our insert. PostgreSQL locks the coupon and order rows instead (``FOR UPDATE``).
    """
    if conn.dialect.name == "sqlite":
        conn.execute(update(Coupon).where(Coupon.code == code).values(state=Coupon.state))


def _coupon_for_update(conn: Connection, code: str) -> Row | None:
    return conn.execute(select(*_COUPON_COLUMNS).where(Coupon.code == code).with_for_update()).first()


def _order_for_update(conn: Connection, order_id: str) -> Row | None:
    """The order, locked: redemptions on one order are decided one at a time (stacking rules)."""
    query = (
        select(
            Order.id,
            Order.order_id,
            Order.customer_pk,
            Order.ordered_at,
            Order.amount,
            Order.status,
            Customer.customer_id,
        )
        .join(Customer, Customer.id == Order.customer_pk)
        .where(Order.order_id == order_id)
        .with_for_update(of=Order)
    )
    return conn.execute(query).first()


def _redemption(conn: Connection, coupon_pk: int) -> Row | None:
    query = (
        select(
            CouponRedemption.order_pk,
            CouponRedemption.amount,
            CouponRedemption.redeemed_at,
            CouponRedemption.source,
            Order.order_id,
        )
        .outerjoin(Order, Order.id == CouponRedemption.order_pk)
        .where(CouponRedemption.coupon_pk == coupon_pk)
    )
    return conn.execute(query).first()


def _existing(existing: Row, coupon: Row, order: Row, settings: Settings, refuse) -> Redemption:
    """The earlier redemption if it was on this order (idempotent), otherwise the refusal."""
    if existing.order_pk == order.id:
        return Redemption(
            coupon.code,
            order.order_id,
            order.customer_id,
            existing.amount,
            existing.redeemed_at,
            existing.source,
            new=False,
        )
    where = f"on order {existing.order_id} " if existing.order_id else ""
    raise refuse("already_redeemed", f"already redeemed {where}at {local_text(existing.redeemed_at, settings)}")


def _check_state(coupon: Row, settings: Settings, refuse) -> None:
    if coupon.state == "void":
        raise refuse("void", "the coupon was voided")
    if coupon.state == "expired":
        raise refuse("expired", f"expired on {local_text(coupon.valid_until, settings)}")
    if coupon.state == "redeemed":  # redeemed without a redemption row (recorded by other means)
        when = f" at {local_text(coupon.redeemed_at, settings)}" if coupon.redeemed_at else ""
        raise refuse("already_redeemed", f"already redeemed{when}")


def _check_time(coupon: Row, ordered_at: datetime, settings: Settings, refuse) -> None:
    placed = f"the order was placed at {local_text(ordered_at, settings)}"
    if ordered_at < coupon.valid_from:
        raise refuse("not_yet_valid", f"not valid before {local_text(coupon.valid_from, settings)}; {placed}")
    if ordered_at >= coupon.valid_until:
        raise refuse("expired", f"expired on {local_text(coupon.valid_until, settings)}; {placed}")
    local = ordered_at.astimezone(settings.tz)
    terms = coupon.terms or {}
    dayparts = terms.get("dayparts") or []
    if dayparts and not any(in_daypart(local.time(), settings.dayparts.get(name)) for name in dayparts):
        hours = ", ".join(f"{name} ({settings.dayparts.get(name, 'not in the config')})" for name in dayparts)
        raise refuse("daypart", f"only valid at {hours}; {placed}")
    weekdays = terms.get("weekdays") or []
    if weekdays and WEEKDAYS[local.weekday()] not in weekdays:
        raise refuse(
            "weekday",
            f"only valid on {', '.join(weekdays)}; {placed}, a {WEEKDAY_NAMES[local.weekday()]}",
        )


def in_daypart(clock: time, window: str | None) -> bool:
    """Whether a local time of day is in a daypart's ``HH:MM-HH:MM`` window (None: a daypart not configured)."""
    return bool(window) and DailyWindow.parse(window).contains(clock)


@dataclass(frozen=True, slots=True)
class _Stack:
    code: str
    group: str | None
    stacking: str
    bundle_with: str | None

    @classmethod
    def of(cls, row: Any) -> _Stack:
        terms = row.terms or {}
        return cls(row.code, row.group, terms.get("stacking") or STACKING_DEFAULT, terms.get("bundle_with"))

    def goes_with(self, other: _Stack) -> bool:
        if self.stacking == "bundled" and other.group is not None and other.group == self.bundle_with:
            return True
        if other.stacking == "bundled" and self.group is not None and self.group == other.bundle_with:
            return True
        return self.stacking == "combinable" and other.stacking == "combinable"

    def rule(self) -> str:
        if self.stacking == "bundled":
            return f"it combines only with a coupon of group {self.bundle_with}"
        if self.stacking == "exclusive":
            return "it cannot be combined with another coupon"
        return "it is combinable"


def _check_stacking(conn: Connection, coupon: Row, order: Row, refuse) -> None:
    query = (
        select(Coupon.code, Coupon.group, Coupon.terms)
        .join(CouponRedemption, CouponRedemption.coupon_pk == Coupon.id)
        .where(CouponRedemption.order_pk == order.id, Coupon.id != coupon.id)
        .order_by(CouponRedemption.id)
    )
    others = [_Stack.of(row) for row in conn.execute(query)]
    mine = _Stack.of(coupon)
    for other in others:
        if not mine.goes_with(other):
            if mine.stacking != "combinable":
                blocker = f"this coupon is {mine.stacking}: {mine.rule()}"
            else:
                blocker = f"that coupon is {other.stacking}: {other.rule()}"
            raise refuse("stacking", f"the order already redeemed coupon {codes.display(other.code)} and {blocker}")
    if mine.stacking == "bundled" and not any(other.group == mine.bundle_with for other in others):
        raise refuse(
            "bundle",
            f"this coupon is bundled: it needs a coupon of group {mine.bundle_with} redeemed on the same order",
            "redeem the coupon of that group on this order first",
        )


# --- looking up ------------------------------------------------------------------------------------------------


def find_coupon(conn: Connection, settings: Settings, code: str, at: datetime | None = None) -> dict[str, Any]:
    """Everything about one coupon, for ``coupons show``, its state as of ``at`` (default now); an ``InputError``
    for a mistyped or unknown code."""
    code = codes.normalise(code)
    problem = code_problem(code)
    if problem:
        raise InputError(f"{code or 'the code'}: {problem}")
    query = (
        select(
            *Coupon.__table__.c,
            Customer.customer_id,
            Campaign.name.label("campaign"),
            CampaignRun.scheduled_at.label("run_scheduled_at"),
        )
        .join(Customer, Customer.id == Coupon.customer_pk)
        .outerjoin(Campaign, Campaign.id == Coupon.campaign_pk)
        .outerjoin(CampaignRun, CampaignRun.id == Coupon.run_pk)
        .where(Coupon.code == code)
    )
    row = conn.execute(query).first()
    if row is None:
        raise InputError(f"{codes.display(code)}: no coupon has this code")
    coupon = row
    terms = coupon.terms or {}
    history = conn.execute(
        select(
            Order.order_id,
            CouponRedemption.amount,
            CouponRedemption.redeemed_at,
            CouponRedemption.source,
        )
        .outerjoin(Order, Order.id == CouponRedemption.order_pk)
        .where(CouponRedemption.coupon_pk == coupon.id)
        .order_by(CouponRedemption.id)
    ).all()
    return {
        "code": codes.display(coupon.code),
        "state": state_now(coupon.state, coupon.valid_until, at),
        "customer_id": row.customer_id,
        "campaign": row.campaign,
        "run_scheduled_at": local_iso(row.run_scheduled_at, settings),
        "step": coupon.step,
        "kind": coupon.offer_kind,
        "value": coupon.value,
        "min_spend": coupon.min_spend,
        "description": terms.get("description"),
        "group": coupon.group,
        "stacking": terms.get("stacking") or STACKING_DEFAULT,
        "bundle_with": terms.get("bundle_with"),
        "dayparts": terms.get("dayparts"),
        "weekdays": terms.get("weekdays"),
        "issued_at": local_iso(coupon.issued_at, settings),
        "valid_from": local_iso(coupon.valid_from, settings),
        "valid_until": local_iso(coupon.valid_until, settings),
        "timezone": settings.timezone,
        "redeemed_at": local_iso(coupon.redeemed_at, settings),
        "redemptions": [
            {
                "order_id": h.order_id,
                "amount": h.amount,
                "redeemed_at": local_iso(h.redeemed_at, settings),
                "source": h.source,
            }
            for h in history
        ],
    }


def campaign_coupons(
    conn: Connection, settings: Settings, campaign: str, state: str | None = None, at: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """The coupons of a campaign (optionally in one state), streamed in issue order; for ``coupons list``.

    Raises ``InputError`` before yielding anything if there is no such campaign or state.
    """
    if state is not None and state not in COUPON_STATES:
        raise InputError(f"--state: {state!r} is not one of {', '.join(COUPON_STATES)}")
    campaign_pk = conn.scalar(select(Campaign.id).where(Campaign.name == campaign))
    if campaign_pk is None:
        raise InputError(f"--campaign: no campaign named {campaign!r}", hint="campaigns appear once they have run")
    return _stream_coupons(conn, settings, campaign_pk, state, at)


def state_now(state: str, valid_until: datetime, now: datetime | None = None) -> str:
    """An issued coupon whose validity has ended reads as ``expired``: time makes that change, no write does
    (``valid_until`` is the first moment it is no longer valid)."""
    return "expired" if state == "issued" and valid_until <= (now or utcnow()) else state


def _in_state(state: str, now: datetime) -> ColumnElement[bool]:
    """The coupons ``state_now`` puts in ``state``."""
    ended = Coupon.valid_until <= now
    if state == "expired":
        return or_(Coupon.state == "expired", and_(Coupon.state == "issued", ended))
    if state == "issued":
        return and_(Coupon.state == "issued", Coupon.valid_until > now)
    return Coupon.state == state


def _stream_coupons(
    conn: Connection, settings: Settings, campaign_pk: int, state: str | None, at: datetime | None = None
) -> Iterator[dict[str, Any]]:
    query = (
        select(
            Coupon.code,
            Coupon.state,
            Customer.customer_id,
            Coupon.step,
            Coupon.offer_kind,
            Coupon.value,
            Coupon.min_spend,
            Coupon.issued_at,
            Coupon.valid_from,
            Coupon.valid_until,
            Coupon.redeemed_at,
            Order.order_id,
        )
        .join(Customer, Customer.id == Coupon.customer_pk)
        .outerjoin(CouponRedemption, CouponRedemption.coupon_pk == Coupon.id)
        .outerjoin(Order, Order.id == CouponRedemption.order_pk)
        .where(Coupon.campaign_pk == campaign_pk)
        .order_by(Coupon.id)
    )
    now = at or utcnow()
    if state is not None:
        query = query.where(_in_state(state, now))
    result = conn.execute(query.execution_options(yield_per=LIST_BATCH))
    for row in result:
        yield {
            "code": codes.display(row.code),
            "state": state_now(row.state, row.valid_until, now),
            "customer_id": row.customer_id,
            "step": row.step,
            "kind": row.offer_kind,
            "value": row.value,
            "min_spend": row.min_spend,
            "issued_at": local_iso(row.issued_at, settings),
            "valid_from": local_iso(row.valid_from, settings),
            "valid_until": local_iso(row.valid_until, settings),
            "redeemed_at": local_iso(row.redeemed_at, settings),
            "order_id": row.order_id,
        }


# --- formatting ------------------------------------------------------------------------------------------------


def local_iso(value: datetime | None, settings: Settings) -> str | None:
    """A stored (UTC) time in the shop's zone, ISO 8601 with offset."""
    return value.astimezone(settings.tz).isoformat(timespec="seconds") if value is not None else None


def local_text(value: datetime, settings: Settings) -> str:
    """A time as a cashier reads it: ``2025-07-15 00:00 (Asia/Shanghai)``."""
    local = value.astimezone(settings.tz)
    clock = "%Y-%m-%d %H:%M" if local.second == 0 else "%Y-%m-%d %H:%M:%S"
    return f"{local.strftime(clock)} ({settings.timezone})"


def _money(value: Decimal | None) -> str:
    return f"{value if value is not None else Decimal(0):.2f}"


def summary_line(coupon: Mapping[str, Any]) -> str:
    """One coupon of ``coupons list`` as a line of text."""
    used = f"  order {coupon['order_id']} at {coupon['redeemed_at']}" if coupon.get("redeemed_at") else ""
    return (
        f"{coupon['code']}  {coupon['state']:<8}  {coupon['customer_id']}  {coupon['step'] or '-'}  "
        f"valid {coupon['valid_from']} – {coupon['valid_until']}{used}"
    )
