"""The facts a condition may compare, declared once.

The declaration is what validation, the JSON Schema and the documentation need: the fact's value type, its
parameters and (for categorical facts) its choices. How a fact becomes SQL is the segment compiler's business
(``orchestrator.segments``); plugins add facts through the ``register_facts`` hook with both parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.db.models import GENDERS
from orchestrator.facts import LIFECYCLE_STAGES, RFM_SEGMENTS

ValueKind = Literal["int", "number", "money", "string", "bool", "ratio"]


@dataclass(frozen=True)
class FactParam:
    name: str
    kind: Literal["duration", "string"]
    required: bool = False
    doc: str = ""
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class FactSpec:
    name: str
    kind: ValueKind
    doc: str
    params: tuple[FactParam, ...] = ()
    choices: tuple[str, ...] | None = None
    #: nullable facts are NULL for some members (e.g. recency without orders); NULL never matches a comparison
    nullable: bool = False
    #: builds the SQL expression: (FactContext, params) -> ColumnElement; None for declaration-only specs
    build: Callable[..., Any] | None = field(default=None, compare=False, repr=False)

    def param(self, name: str) -> FactParam | None:
        return next((p for p in self.params if p.name == name), None)


WITHIN = FactParam("within", "duration", doc="only orders in this window before the run time, e.g. 90d")
DAYPARTS = ("breakfast", "lunch", "afternoon", "dinner", "late")

BUILTIN_FACTS: tuple[FactSpec, ...] = (
    FactSpec("recency_days", "int", "whole days since the last paid order", nullable=True),
    FactSpec("frequency", "int", "paid orders (optionally within a window)", params=(WITHIN,)),
    FactSpec("monetary", "money", "paid revenue (optionally within a window)", params=(WITHIN,)),
    FactSpec("aov", "money", "the member's average paid order value", nullable=True),
    FactSpec("first_order_days", "int", "whole days since the first paid order", nullable=True),
    FactSpec("orders_above_store_aov", "int", "paid orders above the shop-wide average order value"),
    FactSpec("rfm_r", "int", "recency score 1-5 (5 = most recent)", nullable=True),
    FactSpec("rfm_f", "int", "frequency score 1-5", nullable=True),
    FactSpec("rfm_m", "int", "monetary score 1-5", nullable=True),
    FactSpec("rfm_segment", "string", "named RFM segment", choices=RFM_SEGMENTS, nullable=True),
    FactSpec("lifecycle", "string", "lifecycle stage", choices=LIFECYCLE_STAGES),
    FactSpec("tier", "string", "membership tier from the config's tier rules"),
    FactSpec("clv", "money", "customer lifetime value estimate (see config clv)", nullable=True),
    FactSpec("province", "string", "province", nullable=True),
    FactSpec("city", "string", "city", nullable=True),
    FactSpec("gender", "string", "gender as stored by import: female, male or other", choices=GENDERS, nullable=True),
    FactSpec("age", "int", "age in whole years", nullable=True),
    FactSpec("days_to_birthday", "int", "days until the next birthday (0 on the day)", nullable=True),
    FactSpec("signup_days", "int", "whole days since sign-up", nullable=True),
    FactSpec("consent_email", "bool", "has opted in to marketing e-mail"),
    FactSpec("consent_sms", "bool", "has opted in to marketing SMS"),
    FactSpec("coupon_redemption_rate", "ratio", "redeemed ÷ issued coupons", nullable=True),
    FactSpec(
        "payment_share",
        "ratio",
        "share of paid orders paid with a method",
        params=(FactParam("method", "string", required=True), WITHIN),
        nullable=True,
    ),
    FactSpec(
        "daypart_orders",
        "int",
        "paid orders in a daypart (shop local time; hours in config dayparts)",
        params=(FactParam("daypart", "string", required=True, choices=DAYPARTS), WITHIN),
    ),
    FactSpec(
        "bought_category",
        "bool",
        "bought a category (optionally within a window)",
        params=(FactParam("category", "string", required=True), WITHIN),
    ),
)

#: the outcomes a call centre reports for a call list's rows (``orchestrator.data.call_outcomes``)
CALL_OUTCOMES = ("reached", "no_answer", "declined", "converted", "do_not_call")

#: facts only a follow-up's ``when`` / ``unless`` may use: they are about the member's part in the run followed
FOLLOW_UP_FACTS: tuple[FactSpec, ...] = (
    FactSpec(
        "ordered_since_contact",
        "bool",
        "a paid order between the member's first message of this run (when it was due) and the follow-up's due time",
    ),
    FactSpec("redeemed_offer", "bool", "a coupon this run issued to the member was redeemed by the follow-up's time"),
    FactSpec(
        "contacted_by",
        "bool",
        "this run contacted the member (or held them out as control) with a step or an earlier follow-up",
        params=(
            FactParam("step", "string", doc="a step of the campaign"),
            FactParam("follow_up", "string", doc="an earlier follow-up of the campaign"),
        ),
    ),
    FactSpec("outcome", "string", "a call centre's outcome of this run's call to the member", choices=CALL_OUTCOMES),
)
