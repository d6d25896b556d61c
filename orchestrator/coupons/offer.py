"""The built-in ``coupon`` offer kind: terms, validity, budgets, exclusivity and issuing.

Registered as a core plugin (``orchestrator.plugin_manager.CORE_PLUGINS``); the ``coupon`` channel that puts the
coupon in the member's wallet is the plugin ``orchestrator_plugins.wallet``.

Terms, as a campaign writes them::

    offer:
      coupon:
        kind: amount_off        # amount_off | percent_off (value = percent, optional cap) | free_item | gift
        value: 20
        min_spend: 100
        valid_days: 14          # or valid_until: 2026-12-31 (end of that day, shop time); valid_from optional
        dayparts: [lunch]       # redeemable only in these dayparts (config dayparts), and
        weekdays: [mon, tue]    # only on these weekdays
        per_customer: 1         # coupons of this campaign a member may hold, over all its runs
        budget: {max_issued: 5000, max_face_value: 100000}
        group: winback          # exclusivity: a member holding a live coupon of the group gets no new one
        stacking: exclusive     # exclusive | combinable | bundled (with bundle_with: GROUP)
        guard: {not: [{frequency: {gte: 6}}, {monetary: {gte: 2000}}]}

A member who fails the guard, exceeds the per-customer limit, already holds a live coupon of the group, or comes
after the budget is spent is withheld with that reason (``guard``, ``per_customer``, ``exclusivity``,
``budget``). Every issued coupon belongs to one member and one run, and is written in the same transaction as
the delivery row that carries it.

Several processes may run the same campaign at the same time (the same run): a member's coupon is unique per
(run, member, step), and the budget is taken and the coupon written in one savepoint. The process that finds the
member's coupon already issued by another rolls its budget back and uses that coupon: it issues nothing, spends
nothing, and its delivery row for the member (the same key as the other's) is not written either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import and_, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from orchestrator.campaign.schema import Budget, Condition
from orchestrator.coupons import codes
from orchestrator.db.models import Campaign, Coupon, Delivery, OfferBudget
from orchestrator.db.types import Money
from orchestrator.hookspecs import hookimpl
from orchestrator.money import MAX_AMOUNT
from orchestrator.offers import Grant, OfferKind, Withheld

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAYPART_NAMES = {"breakfast": "早市", "lunch": "午市", "afternoon": "下午茶", "dinner": "晚市", "late": "夜宵"}
WEEKDAY_NAMES = dict(zip(WEEKDAYS, "一二三四五六日", strict=True))


class CouponTerms(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["amount_off", "percent_off", "free_item", "gift"]
    value: Decimal | None = Field(None, gt=0, le=MAX_AMOUNT, description="amount off, or percent off for percent_off")
    cap: Decimal | None = Field(None, gt=0, le=MAX_AMOUNT, description="percent_off: the most it takes off")
    item: str | None = Field(None, description="free_item / gift: what the member gets")
    face_value: Decimal | None = Field(None, ge=0, le=MAX_AMOUNT, description="what one coupon costs the shop")
    min_spend: Decimal = Field(Decimal(0), ge=0, le=MAX_AMOUNT)
    valid_days: int | None = Field(None, ge=1, le=3660)
    valid_from: date | datetime | None = None
    valid_until: date | datetime | None = None
    dayparts: list[str] | None = None
    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None
    per_customer: int = Field(1, ge=1, le=1000)
    budget: Budget | None = None
    group: str | None = None
    stacking: Literal["exclusive", "combinable", "bundled"] = "exclusive"
    bundle_with: str | None = None
    guard: Condition | None = None
    description: str | None = Field(None, description="override the generated description, e.g. 满100减20")

    @model_validator(mode="after")
    def _consistent(self) -> CouponTerms:
        if self.kind in ("amount_off", "percent_off") and self.value is None:
            raise ValueError(f"a {self.kind} coupon needs a value")
        if self.kind == "percent_off" and self.value is not None and self.value > 100:
            raise ValueError("percent_off: value is a percentage, at most 100")
        if self.kind in ("free_item", "gift") and not self.item:
            raise ValueError(f"a {self.kind} coupon needs an item (what the member gets)")
        if self.cap is not None and self.kind != "percent_off":
            raise ValueError("cap applies to percent_off coupons only")
        if (self.valid_days is None) == (self.valid_until is None):
            raise ValueError("give exactly one of valid_days or valid_until")
        if self.stacking == "bundled" and not self.bundle_with:
            raise ValueError("stacking: bundled needs bundle_with: the group it must be redeemed with")
        if self.budget and self.budget.max_face_value is not None and self.unit_face_value is None:
            raise ValueError("max_face_value needs a face value: set face_value (or cap for percent_off)")
        return self

    @property
    def unit_face_value(self) -> Decimal | None:
        """What one coupon is worth at most: the amount off, the percent-off cap, or the declared face value."""
        if self.face_value is not None:
            return self.face_value
        if self.kind == "amount_off":
            return self.value
        if self.kind == "percent_off":
            return self.cap
        return None

    def describe(self) -> str:
        """The coupon in the words a Chinese shop prints on it: 满100减20, 8折, 免费招牌菜, 仅限午市."""
        if self.description:
            return self.description
        spend = f"满{_plain(self.min_spend)}" if self.min_spend else ""
        if self.kind == "amount_off":
            text = f"{spend}减{_plain(self.value)}元" if spend else f"立减{_plain(self.value)}元"
        elif self.kind == "percent_off":
            share = f"{_plain((100 - self.value) / 10)}折"  # 20% off is 8折
            text = (f"{spend}享{share}" if spend else share) + (f"（最高减{_plain(self.cap)}元）" if self.cap else "")
        elif self.kind == "free_item":
            text = f"{spend}免费{self.item}"
        else:
            text = f"{spend}赠{self.item}"
        limits = []
        if self.dayparts:
            limits.append("、".join(DAYPART_NAMES.get(d, d) for d in self.dayparts))
        if self.weekdays:
            limits.append("周" + "、".join(WEEKDAY_NAMES[d] for d in self.weekdays))
        return text + (f"，仅限{'，'.join(limits)}" if limits else "")


def _plain(value: Decimal | None) -> str:
    return format(value.normalize(), "f") if value is not None else ""


def _end_of_day(day: date, tz) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)


def validity(terms: CouponTerms, issued_at: datetime, tz) -> tuple[datetime, datetime]:
    """(valid_from, valid_until): a number of days counts whole local days, ending at midnight after the last."""
    start = terms.valid_from or issued_at
    if isinstance(start, date) and not isinstance(start, datetime):
        start = datetime.combine(start, time(0), tzinfo=tz)
    if start.tzinfo is None:
        start = start.replace(tzinfo=tz)
    if terms.valid_days is not None:
        until = _end_of_day(start.astimezone(tz).date() + timedelta(days=terms.valid_days - 1), tz)
    elif isinstance(terms.valid_until, datetime):
        until = terms.valid_until if terms.valid_until.tzinfo else terms.valid_until.replace(tzinfo=tz)
    else:
        until = _end_of_day(terms.valid_until, tz)
    return start, until


class CouponOffer(OfferKind):
    name = "coupon"
    options_model = CouponTerms
    facts_read = frozenset()  # the member key and the guard flag only: no fact

    @classmethod
    def check(cls, terms: CouponTerms, settings: Any) -> list[tuple[tuple, str]]:
        return [
            (("dayparts", i), f"unknown daypart {d!r}; the config defines {', '.join(settings.dayparts)}")
            for i, d in enumerate(terms.dayparts or ())
            if d not in settings.dayparts
        ]

    def __init__(self, options: CouponTerms, settings: Any, step: Any):
        super().__init__(options, settings, step)
        self._held: dict[int, int] = {}  # customer -> coupons of this campaign already held
        self._live_in_group: set[int] = set()
        self._in_run: dict[int, int] = {}  # customer -> their coupon of this step in this run, issued earlier
        # dry run: the budget as it would be, [issued, face value]; one list per budget in a run, shared by the
        # step's offer and the variant offers drawing on the step's budget, so that together they predict its limit
        self._predicted: list | None = None
        self._budget_row: int | None = None  # the campaign whose budget row exists: looked up once, not per coupon

    # -- per batch ------------------------------------------------------------------------------------------
    def prepare(self, conn, customers: Sequence[Mapping[str, Any]], run: Mapping[str, Any], dry_run: bool) -> None:
        pks = [c["pk"] for c in customers]
        campaign_pk = run.get("campaign_pk") or self._campaign_pk(conn, run["campaign"])
        self._held = {}
        if campaign_pk is not None:
            rows = conn.execute(
                select(Coupon.customer_pk, func.count())
                .where(Coupon.campaign_pk == campaign_pk, Coupon.customer_pk.in_(pks), Coupon.state != "void")
                .group_by(Coupon.customer_pk)
            )
            self._held = dict(rows.all())
        self._live_in_group = set()
        if self.options.group:
            live = and_(Coupon.state == "issued", Coupon.valid_until > run["at"], Coupon.valid_from <= run["at"])
            self._live_in_group = set(
                conn.scalars(
                    select(Coupon.customer_pk).where(
                        Coupon.group == self.options.group, Coupon.customer_pk.in_(pks), live
                    )
                )
            )
        self._in_run = {}
        if run.get("run_pk") is not None:
            self._in_run = dict(
                conn.execute(
                    select(Coupon.customer_pk, Coupon.id).where(
                        Coupon.run_pk == run["run_pk"], Coupon.step == self.step.name, Coupon.customer_pk.in_(pks)
                    )
                ).all()
            )
        if dry_run and self._predicted is None:
            shared = run.setdefault("predicted_budgets", {}) if isinstance(run, dict) else {}
            if self.step.budget_name not in shared:
                shared[self.step.budget_name] = list(self._budget_now(conn, campaign_pk))
            self._predicted = shared[self.step.budget_name]

    # -- per member -----------------------------------------------------------------------------------------
    def grant(self, conn, customer: Mapping[str, Any], run: Mapping[str, Any], dry_run: bool) -> Grant | Withheld:
        terms = self.options
        if not dry_run and customer["pk"] in self._in_run:  # another process sharing the run issued it
            return self.recall(conn, self._in_run[customer["pk"]])
        if terms.guard is not None and not customer.get(self.step.guard_column):
            return Withheld("guard")
        if self._held.get(customer["pk"], 0) >= terms.per_customer:
            return Withheld("per_customer")
        if customer["pk"] in self._live_in_group:
            return Withheld("exclusivity")
        face = terms.unit_face_value or Decimal(0)
        if dry_run:
            if not self._fits(*self._predicted, face):
                return Withheld("budget")
            self._predicted[0] += 1
            self._predicted[1] += face
            return Grant(self._context("DRYRUN000000", run["at"]), face_value=face)
        issued = self._issue_once(conn, customer, run, face)
        if not isinstance(issued, tuple):
            return issued
        coupon_pk, code = issued
        self._held[customer["pk"]] = self._held.get(customer["pk"], 0) + 1
        if terms.group:
            self._live_in_group.add(customer["pk"])
        return Grant(self._context(code, run["at"]), coupon_pk=coupon_pk, face_value=face)

    def recall(self, conn, coupon_pk: int) -> Grant:
        row = conn.execute(select(Coupon.code, Coupon.issued_at).where(Coupon.id == coupon_pk)).one()
        return Grant(
            self._context(row.code, row.issued_at), coupon_pk=coupon_pk, face_value=self.options.unit_face_value
        )

    # -- budget ---------------------------------------------------------------------------------------------
    def _fits(self, issued: int, spent: Decimal, face: Decimal) -> bool:
        budget = self.options.budget
        if budget is None:
            return True
        if budget.max_issued is not None and issued + 1 > budget.max_issued:
            return False
        return budget.max_face_value is None or spent + face <= budget.max_face_value

    def _campaign_pk(self, conn, name: str) -> int | None:
        return conn.scalar(select(Campaign.id).where(Campaign.name == name))

    def _budget_now(self, conn, campaign_pk: int | None) -> tuple[int, Decimal]:
        if campaign_pk is None:
            return 0, Decimal(0)
        row = conn.execute(
            select(OfferBudget.issued, OfferBudget.face_value).where(*self._budget_key(campaign_pk))
        ).first()
        return (row.issued, row.face_value) if row else (0, Decimal(0))

    def _budget_key(self, campaign_pk: int):
        return (
            OfferBudget.campaign_pk == campaign_pk,
            OfferBudget.step == self.step.budget_name,
            OfferBudget.offer_kind == self.name,
        )

    def _take_budget(self, conn, campaign_pk: int, face: Decimal) -> bool:
        """One conditional UPDATE: it counts the coupon only if the budget still has room, atomically."""
        key = self._budget_key(campaign_pk)
        if self._budget_row != campaign_pk and conn.scalar(select(OfferBudget.id).where(*key)) is None:
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(OfferBudget).values(
                            campaign_pk=campaign_pk,
                            step=self.step.budget_name,
                            offer_kind=self.name,
                            issued=0,
                            face_value=0,
                        )
                    )
            except IntegrityError:
                pass  # another process created it first
        cached, self._budget_row = self._budget_row == campaign_pk, campaign_pk  # budget rows are never deleted
        budget = self.options.budget
        condition = list(key)
        if budget and budget.max_issued is not None:
            condition.append(OfferBudget.issued + 1 <= budget.max_issued)
        if budget and budget.max_face_value is not None:
            # both sides as Money, i.e. in fen: a bare Decimal limit would be compared in yuan
            limit = literal(budget.max_face_value, Money())
            condition.append(OfferBudget.face_value + literal(face, Money()) <= limit)
        taken = conn.execute(
            update(OfferBudget)
            .where(*condition)
            .values(issued=OfferBudget.issued + 1, face_value=OfferBudget.face_value + face)
        )
        if taken.rowcount != 1 and cached and conn.scalar(select(OfferBudget.id).where(*key)) is None:
            self._budget_row = None  # the row went with a rolled-back transaction: create it again
            return self._take_budget(conn, campaign_pk, face)
        return taken.rowcount == 1

    # -- the coupon -----------------------------------------------------------------------------------------
    def _issue_once(self, conn, customer, run, face: Decimal) -> tuple[int, str] | Grant | Withheld:
        """Take the budget and write the coupon: (coupon id, code); ``Withheld("budget")``; or, when another
        process sharing the run has just issued the member's coupon, that coupon's grant, with the budget taken
        here given back. (A compensating update rather than a savepoint: on SQLite a savepoint opened before the
        budget's read would turn the write into a lock upgrade that fails instead of waiting.)"""
        if not self._take_budget(conn, run["campaign_pk"], face):
            return Withheld("budget")
        issued = self._issue(conn, customer, run, face)
        if issued is not None:
            return issued
        give_back_budget(conn, run["campaign_pk"], self.step.budget_name, face)
        theirs = conn.scalar(
            select(Coupon.id).where(
                Coupon.run_pk == run["run_pk"], Coupon.customer_pk == customer["pk"], Coupon.step == self.step.name
            )
        )
        return self.recall(conn, theirs)

    def _issue(self, conn, customer: Mapping[str, Any], run: Mapping[str, Any], face: Decimal):
        """Write the member's coupon for this run and step: (id, code), or None if it is already there (the
        unique key (run, customer, step))."""
        terms = self.options
        valid_from, valid_until = validity(terms, run["at"], self.settings.tz)
        values = {
            "campaign_pk": run["campaign_pk"],
            "run_pk": run["run_pk"],
            "customer_pk": customer["pk"],
            "step": self.step.name,
            "offer_kind": terms.kind,
            "group": terms.group,
            "value": terms.value,
            "min_spend": terms.min_spend,
            "terms": {
                "cap": str(terms.cap) if terms.cap is not None else None,
                "item": terms.item,
                "face_value": str(face),
                "dayparts": terms.dayparts,
                "weekdays": terms.weekdays,
                "stacking": terms.stacking,
                "bundle_with": terms.bundle_with,
                "description": terms.describe(),
                "budget": self.step.budget_name,  # a variant's own offer has a budget of its own
            },
            "valid_from": valid_from,
            "valid_until": valid_until,
            "state": "issued",
            "issued_at": run["at"],
        }
        dialect = {"sqlite": sqlite, "postgresql": postgresql}[conn.dialect.name]
        for _ in range(5):  # a collision in a 54-bit space is next to impossible; retry all the same
            code = codes.new_code()
            # any conflict writes nothing (no savepoint, no exception: one statement per coupon); which key it
            # was is looked up only then
            statement = dialect.insert(Coupon).values(code=code, **values).on_conflict_do_nothing().returning(Coupon.id)
            coupon_pk = conn.execute(statement).scalar_one_or_none()
            if coupon_pk is not None:
                return coupon_pk, code
            mine = and_(
                Coupon.run_pk == run["run_pk"], Coupon.customer_pk == customer["pk"], Coupon.step == self.step.name
            )
            if conn.scalar(select(Coupon.id).where(mine)) is not None:
                return None  # the member's coupon for this run and step is there already
        raise RuntimeError("could not draw an unused coupon code")

    def _context(self, code: str, issued_at: datetime) -> dict[str, Any]:
        terms = self.options
        valid_from, valid_until = validity(terms, issued_at, self.settings.tz)
        return {
            "code": codes.display(code),
            "kind": terms.kind,
            "value": terms.value,
            "cap": terms.cap,
            "item": terms.item,
            "min_spend": terms.min_spend,
            "valid_from": valid_from,
            "expires_at": valid_until - timedelta(seconds=1),  # the last moment it is valid, for printing
            "description": terms.describe(),
        }


def give_back_unsent(conn, coupon_pks: Sequence[int]) -> int:
    """Void the coupons of messages skipped before sending (the member opted out after planning) and return them
    to their offer's budget; a coupon another message of the member still carries (sent, or still to send) is
    kept. Returns how many were voided.

    The coupons are locked first, so that two processes skipping the two messages of one coupon at once do not
    each see the other's message still to send and keep it."""
    pks = sorted(set(coupon_pks))
    if not pks:
        return 0
    locked = select(Coupon.id).where(Coupon.id.in_(pks), Coupon.state == "issued").order_by(Coupon.id)
    if conn.dialect.name == "postgresql":
        locked = locked.with_for_update()
    pks = list(conn.scalars(locked))
    carried = select(Delivery.coupon_pk).where(
        Delivery.coupon_pk.in_(pks), Delivery.state.not_in(("skipped", "held_out"))
    )
    voided = conn.execute(
        update(Coupon)
        .where(Coupon.id.in_(pks), Coupon.state == "issued", Coupon.id.not_in(carried))
        .values(state="void")
        .returning(Coupon.campaign_pk, Coupon.step, Coupon.terms)
    ).all()
    for coupon in voided:
        if coupon.campaign_pk is not None and coupon.step is not None:
            face = Decimal(str((coupon.terms or {}).get("face_value") or 0))
            give_back_budget(conn, coupon.campaign_pk, (coupon.terms or {}).get("budget") or coupon.step, face)
    return len(voided)


def give_back_budget(conn, campaign_pk: int, step: str, face: Decimal) -> None:
    """Uncount one coupon of face value ``face`` from its offer's budget."""
    conn.execute(
        update(OfferBudget)
        .where(
            OfferBudget.campaign_pk == campaign_pk,
            OfferBudget.step == step,
            OfferBudget.offer_kind == CouponOffer.name,
            OfferBudget.issued > 0,
        )
        .values(issued=OfferBudget.issued - 1, face_value=OfferBudget.face_value - face)
    )


@hookimpl
def register_offers():
    return [CouponOffer]
