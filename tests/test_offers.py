"""The coupon offer end to end through the CLI (``dry-run`` / ``run`` / ``validate``), on SQLite and PostgreSQL.

Every expectation is recomputed in plain Python from the hand-made data set (``tests.dataset``): who is in the
segment (``dataset.FactModel``), who is skipped by the contact policies, who is held out
(``policies.in_control_group`` defines the control group), and then the offer rules as the product brief states
them, applied to the contacted members in customer order: the guard, the per-customer limit over the campaign's
earlier runs, exclusivity groups, and budgets that only coupons which actually went out use up. The JSON of the
dry run and of the run, the ``coupons`` rows, the delivery ledger and the e-mails are compared with that model.
"""

from __future__ import annotations

import email.policy
import json
import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, delete, func, insert, select

from orchestrator.config import Settings
from orchestrator.coupons import codes
from orchestrator.coupons.offer import CouponTerms
from orchestrator.db.models import (
    Campaign,
    CampaignRun,
    Coupon,
    Customer,
    Delivery,
    DeliveryPayload,
    OfferBudget,
    Suppression,
)
from orchestrator.policies import in_control_group
from tests import dataset
from tests.clitools import Cli
from tests.dataset import AT, AT_PAST, SHANGHAI

DAY = timedelta(days=1)
SETTINGS = Settings()
ORDER = [c.customer_id for c in dataset.CUSTOMERS]  # customer order: the order the data set inserts them in

# what an e-mail shows of its offer, one field per line so each can be read back exactly
OFFER_TEXT = (
    "code={{ offer.code }}\n"
    "value={{ offer.value if offer.value is not none else '-' }}\n"
    "expires={{ offer.expires_at|date('%Y-%m-%d %H:%M:%S') }}\n"
    "description={{ offer.description }}\n"
)
EMAIL = {"email": {"subject": "{{ customer.name }}: {{ offer.description }}", "text": OFFER_TEXT}}
WALLET = {"coupon": {}}
BUYERS = {"frequency": {"gte": 1}}


# --- the independent model ------------------------------------------------------------------------------------

Predicate = Callable[[dataset.FactModel, str], bool]


def frequency(facts: dataset.FactModel, cid: str) -> int:
    return facts.value(cid, "frequency", {})


def monetary(facts: dataset.FactModel, cid: str) -> Decimal:
    return facts.value(cid, "monetary", {})


@dataclass
class OfferRule:
    """One step's offer as the brief states its rules; its state carries over from run to run."""

    face: Decimal = Decimal(0)
    per_customer: int = 1
    guard: Predicate | None = None
    max_issued: int | None = None
    max_face_value: Decimal | None = None
    held: Counter = field(default_factory=Counter)  # customer -> coupons of this campaign, over all runs
    live_group: set[str] = field(default_factory=set)  # customers holding a live coupon of the group
    issued: int = 0  # the budget used so far, over all runs
    spent: Decimal = Decimal(0)

    def decide(self, facts: dataset.FactModel, cid: str) -> str | None:
        """The reason the member is withheld the offer, or None when it is issued (and counted)."""
        if self.guard is not None and not self.guard(facts, cid):
            return "guard"
        if self.held[cid] >= self.per_customer:
            return "per_customer"
        if cid in self.live_group:
            return "exclusivity"
        if self.max_issued is not None and self.issued >= self.max_issued:
            return "budget"
        if self.max_face_value is not None and self.spent + self.face > self.max_face_value:
            return "budget"
        self.issued += 1
        self.spent += self.face
        self.held[cid] += 1
        return None


@dataclass
class StepRule:
    name: str
    when: Predicate | None = None
    channel: str = "email"
    offer: OfferRule | None = None


@dataclass
class Tally:
    issued: int = 0
    withheld: Counter = field(default_factory=Counter)
    face_value: Decimal = Decimal(0)

    def as_dict(self) -> dict[str, Any]:
        return {"issued": self.issued, "withheld": dict(self.withheld), "face_value": self.face_value}


@dataclass
class Expected:
    at: datetime
    audience: list[str] = field(default_factory=list)
    step: dict[str, str] = field(default_factory=dict)  # customer -> the step they fall in
    skipped: dict[str, str] = field(default_factory=dict)  # customer -> reason (policies, no_step, offer_*)
    control: set[str] = field(default_factory=set)
    contacted: dict[str, tuple[str, str]] = field(default_factory=dict)  # customer -> (channel, contact)
    issued: dict[str, str] = field(default_factory=dict)  # customer -> step, a coupon issued in this run
    tallies: dict[str, Tally] = field(default_factory=dict)

    def withheld(self, reason: str) -> list[str]:
        return [cid for cid in ORDER if self.skipped.get(cid) == f"offer_{reason}"]

    def total(self) -> dict[str, Any]:
        total = Tally()
        for tally in self.tallies.values():
            total.issued += tally.issued
            total.withheld.update(tally.withheld)
            total.face_value += tally.face_value
        return total.as_dict()


def reach(cid: str, channel: str, suppressed: set[str]) -> tuple[str | None, str | None]:
    """(skip reason, contact) for one channel: e-mail needs an address and consent; the wallet neither."""
    customer = dataset.CUSTOMER_BY_ID[cid]
    if channel == "email":
        if customer.email is None:
            return "no_contact", None
        if customer.consents.get("email") is not True:
            return "no_consent", None
        contact = customer.email
    else:
        contact = cid
    if cid in suppressed:
        return "suppressed", None
    return None, contact


def simulate(
    at: datetime,
    name: str,
    steps: list[StepRule],
    *,
    segment: Predicate = lambda f, cid: frequency(f, cid) >= 1,
    control: int = 0,
    suppressed: set[str] | None = None,
) -> Expected:
    facts = dataset.FactModel(at, SETTINGS)
    exp = Expected(at, tallies={s.name: Tally() for s in steps})
    for cid in ORDER:
        if cid not in facts.member_ids or not segment(facts, cid):
            continue
        exp.audience.append(cid)
        step = next((s for s in steps if s.when is None or s.when(facts, cid)), None)
        if step is None:
            exp.skipped[cid] = "no_step"
            continue
        exp.step[cid] = step.name
        reason, contact = reach(cid, step.channel, suppressed or set())
        if reason:
            exp.skipped[cid] = reason
            continue
        if in_control_group(name, cid, Decimal(control)):
            exp.control.add(cid)
            continue
        if step.offer is not None:
            tally = exp.tallies[step.name]
            withheld = step.offer.decide(facts, cid)
            if withheld:
                tally.withheld[withheld] += 1
                exp.skipped[cid] = f"offer_{withheld}"
                continue
            tally.issued += 1
            tally.face_value += step.offer.face
            exp.issued[cid] = step.name
        exp.contacted[cid] = (step.channel, contact)
    return exp


# --- campaign files -----------------------------------------------------------------------------------------


def campaign(
    name: str,
    *,
    offer: dict | None = None,
    message: dict | None = None,
    steps: list[dict] | None = None,
    segment: dict | None = None,
    control: int = 0,
    batch_size: int | None = None,
) -> dict:
    # recontact: always - later runs reach the same members, so that offer limits across runs are what is tested
    data: dict[str, Any] = {"name": name, "segment": segment or BUYERS, "recontact": "always"}
    if control:
        data["control_group"] = f"{control}%"
    if steps is not None:
        data["steps"] = steps
    else:
        data["offer"] = {"coupon": offer}
        data["message"] = message or EMAIL
    if batch_size:
        data["dispatch"] = {"batch_size": batch_size}
    return data


# --- fixtures and helpers -------------------------------------------------------------------------------------


@dataclass
class Env:
    cli: Cli
    engine: Engine
    db_url: str
    folder: Path
    config: Path
    outbox: Path
    keys: dict[str, int]

    def write(self, data: dict | str, name: str | None = None) -> Path:
        text = data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
        path = self.folder / f"{name or data['name']}.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    def json(self, *args: str) -> dict:
        result = self.cli(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def dry_run(self, file: Path, at: datetime | str = AT) -> dict:
        return self.json("dry-run", str(file), "--at", _text(at), "--sample", "0")

    def run(self, file: Path, at: datetime | str = AT) -> dict:
        return self.json("run", str(file), "--at", _text(at))

    def coupons(self, run_pk: int | None = None) -> dict[str, Any]:
        """The coupon rows (of one run) by customer id; a customer with two in the same run fails the test."""
        query = select(*Coupon.__table__.c, Customer.customer_id.label("customer")).join(
            Customer, Customer.id == Coupon.customer_pk
        )
        if run_pk is not None:
            query = query.where(Coupon.run_pk == run_pk)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(Coupon.id)).all()
        by_customer = {row.customer: row for row in rows}
        assert len(by_customer) == len(rows), "a customer got two coupons in one run"
        return by_customer

    def deliveries(self, run_pk: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(*Delivery.__table__.c, Customer.customer_id.label("customer"))
                .join(Customer, Customer.id == Delivery.customer_pk)
                .where(Delivery.run_pk == run_pk)
            ).all()
        by_customer = {row.customer: row for row in rows}
        assert len(by_customer) == len(rows), "one delivery row per customer expected (one channel each)"
        return by_customer

    def count(self, model) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(model)).scalar_one()

    def suppress(self, *customer_ids: str) -> None:
        now = datetime(2025, 6, 1, tzinfo=UTC)
        with self.engine.begin() as conn:
            conn.execute(
                insert(Suppression.__table__),
                [
                    {
                        "customer_pk": self.keys[cid],
                        "address": None,
                        "channel": None,
                        "reason": "do_not_contact",
                        "created_at": now,
                    }
                    for cid in customer_ids
                ],
            )

    def add_coupon(self, cid: str, code: str, **values) -> None:
        row = {
            "code": code,
            "customer_pk": self.keys[cid],
            "offer_kind": "amount_off",
            "value": Decimal(10),
            "terms": {},
            "state": "issued",
            "valid_from": AT - 10 * DAY,
            "valid_until": AT + 10 * DAY,
            "issued_at": AT - 10 * DAY,
            **values,
        }
        with self.engine.begin() as conn:
            conn.execute(insert(Coupon.__table__), [row])

    def budget_row(self, step: str = "main") -> tuple[int, Decimal] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(OfferBudget.issued, OfferBudget.face_value).where(OfferBudget.step == step)
            ).one_or_none()
        return (row.issued, row.face_value) if row else None

    def mail(self, provider_id: str) -> dict[str, str]:
        """The offer fields an e-mail shows (``OFFER_TEXT``), read back from its plain-text part."""
        with (self.outbox / provider_id).open("rb") as handle:
            message = BytesParser(policy=email.policy.default).parse(handle)
        text = message.get_body(preferencelist=("plain",)).get_content()
        fields = dict(re.findall(r"^(code|value|expires|description)=(.*)$", text, re.MULTILINE))
        fields["subject"] = str(message["Subject"])
        return fields


def _text(at: datetime | str) -> str:
    return at if isinstance(at, str) else at.isoformat()


@pytest.fixture
def env(engine: Engine, db_url: str, tmp_path: Path, monkeypatch) -> Env:
    keys = dataset.load(engine)
    assert [keys[cid] for cid in ORDER] == sorted(keys.values())  # customer order is the data set's order
    config_dir = tmp_path / "config"
    folder = tmp_path / "campaigns"
    config_dir.mkdir()
    folder.mkdir()
    outbox = tmp_path / "outbox" / "email"
    config = config_dir / "orchestrator.yaml"
    config.write_text(
        f"timezone: Asia/Shanghai\ntemplates: []\nchannels:\n  email:\n    from: Shop <shop@example.com>\n"
        f"    outbox: {outbox}\n",
        encoding="utf-8",
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    return Env(Cli(db_url, config=str(config)), engine, db_url, folder, config, outbox, keys)


def offers_of(data: dict) -> dict[str, Any]:
    """A JSON ``offers`` block with the face value as a Decimal (JSON prints it as a number)."""
    return {
        "issued": data["issued"],
        "withheld": data["withheld"],
        "face_value": Decimal(str(data["face_value"])),
    }


def check_result(data: dict, exp: Expected) -> None:
    """A dry run's or run's JSON against the model: audience, skips by reason, offers per step and in total."""
    assert datetime.fromisoformat(data["at"]) == exp.at
    assert data["audience"] == len(exp.audience)
    assert data["control"] == len(exp.control)
    assert data["skipped"] == dict(Counter(exp.skipped.values()))
    assert data["messages"] == len(exp.contacted)
    steps = {s["name"]: s for s in data["steps"]}
    assert list(steps) == list(exp.tallies)
    for name, tally in exp.tallies.items():
        assert offers_of(steps[name]["offers"]) == tally.as_dict(), name
        contacted = Counter(channel for cid, (channel, _) in exp.contacted.items() if exp.step[cid] == name)
        assert steps[name]["channels"] == dict(contacted), name
        assert steps[name]["audience"] == sum(1 for s in exp.step.values() if s == name), name
    assert offers_of(data["offers"]) == exp.total()


def check_ledger(env: Env, data: dict, exp: Expected) -> dict[str, Any]:
    """The run's coupons and delivery rows against the model; returns the run's coupons by customer."""
    run_pk = data["run_id"]
    with env.engine.connect() as conn:
        campaign_pk = conn.execute(select(CampaignRun.campaign_pk).where(CampaignRun.id == run_pk)).scalar_one()
    coupons = env.coupons(run_pk)
    deliveries = env.deliveries(run_pk)
    # a coupon for exactly the members the model issues one to, each traced to its member, run, campaign, step
    assert {cid: row.step for cid, row in coupons.items()} == exp.issued
    for cid, row in coupons.items():
        assert (row.campaign_pk, row.run_pk, row.customer_pk) == (campaign_pk, run_pk, env.keys[cid])
        assert row.state == "issued" and row.redeemed_at is None
        assert codes.is_well_formed(row.code)
        assert row.issued_at == exp.at
    # the ledger: every audience member once, with the reason the model gives
    assert set(deliveries) == set(exp.audience)
    for cid in exp.audience:
        row = deliveries[cid]
        if cid in exp.control:
            assert (row.state, row.reason, row.coupon_pk) == ("held_out", "control_group", None), cid
        elif cid in exp.skipped:
            assert (row.state, row.reason, row.coupon_pk) == ("skipped", exp.skipped[cid], None), cid
        else:
            channel, contact = exp.contacted[cid]
            assert (row.state, row.channel, row.contact) == ("sent", channel, contact), cid
            assert row.coupon_pk == (coupons[cid].id if cid in coupons else None), cid
        assert row.step == exp.step.get(cid)
    # nobody held out or skipped holds a coupon of this campaign from this run
    assert not (set(coupons) & (exp.control | set(exp.skipped)))
    return coupons


def end_of_local_day(day: date) -> datetime:
    """Midnight after ``day`` in Shanghai, written out by hand rather than with the product's helper."""
    following = day + DAY
    return datetime(following.year, following.month, following.day, tzinfo=SHANGHAI)


# --- every kind, with its row and its template context ---------------------------------------------------------

KIND_STEPS = [
    {
        "name": "gift",
        "when": {"frequency": {"gte": 4}},
        "offer": {
            "coupon": {
                "kind": "gift",
                "item": "生日蛋糕",
                "face_value": 38,
                "min_spend": 50,
                "valid_days": 30,
                "weekdays": ["sat", "sun"],
            }
        },
        "message": EMAIL,
    },
    {
        "name": "percent",
        "when": {"frequency": {"gte": 3}},
        "offer": {"coupon": {"kind": "percent_off", "value": 15, "cap": 30, "valid_days": 14}},
        "message": EMAIL,
    },
    {
        "name": "amount",
        "when": {"frequency": {"gte": 2}},
        "offer": {"coupon": {"kind": "amount_off", "value": 20, "min_spend": 100, "valid_days": 7}},
        "message": EMAIL,
    },
    {
        "name": "free",
        "offer": {
            "coupon": {
                "kind": "free_item",
                "item": "招牌菜",
                "valid_until": "2025-07-31",
                "dayparts": ["lunch"],
                "weekdays": ["mon", "tue"],
            }
        },
        "message": EMAIL,
    },
]

# what each step's coupon row and message must show, written out by hand
KIND_EXPECTED = {
    "gift": {
        "kind": "gift",
        "value": None,
        "min_spend": Decimal(50),
        "cap": None,
        "item": "生日蛋糕",
        "face_value": Decimal(38),
        "dayparts": None,
        "weekdays": ["sat", "sun"],
        "description": "满50赠生日蛋糕，仅限周六、日",
        "until": datetime(2025, 7, 31, tzinfo=SHANGHAI),  # 30 local days: 07-01 … 07-30
    },
    "percent": {
        "kind": "percent_off",
        "value": Decimal(15),
        "min_spend": Decimal(0),
        "cap": Decimal(30),
        "item": None,
        "face_value": Decimal(30),  # the cap is the most one coupon can cost
        "dayparts": None,
        "weekdays": None,
        "description": "8.5折（最高减30元）",
        "until": datetime(2025, 7, 15, tzinfo=SHANGHAI),
    },
    "amount": {
        "kind": "amount_off",
        "value": Decimal(20),
        "min_spend": Decimal(100),
        "cap": None,
        "item": None,
        "face_value": Decimal(20),
        "dayparts": None,
        "weekdays": None,
        "description": "满100减20元",
        "until": datetime(2025, 7, 8, tzinfo=SHANGHAI),
    },
    "free": {
        "kind": "free_item",
        "value": None,
        "min_spend": Decimal(0),
        "cap": None,
        "item": "招牌菜",
        "face_value": Decimal(0),  # no face value declared: counts as nothing
        "dayparts": ["lunch"],
        "weekdays": ["mon", "tue"],
        "description": "免费招牌菜，仅限午市，周一、二",
        "until": datetime(2025, 8, 1, tzinfo=SHANGHAI),  # valid_until 2025-07-31: the end of that local day
    },
}


def kind_rules() -> list[StepRule]:
    def at_least(n):
        return lambda f, cid: frequency(f, cid) >= n

    return [
        StepRule("gift", at_least(4), offer=OfferRule(face=Decimal(38))),
        StepRule("percent", at_least(3), offer=OfferRule(face=Decimal(30))),
        StepRule("amount", at_least(2), offer=OfferRule(face=Decimal(20))),
        StepRule("free", None, offer=OfferRule(face=Decimal(0))),
    ]


def test_every_kind_issues_its_terms_and_renders_its_offer(env: Env):
    file = env.write(campaign("kinds", steps=KIND_STEPS))
    exp = simulate(AT, "kinds", kind_rules())
    assert all(exp.tallies[name].issued >= 1 for name in KIND_EXPECTED)  # the data exercises every kind
    predicted = env.dry_run(file)
    check_result(predicted, exp)
    data = env.run(file)
    check_result(data, exp)
    assert data["outcomes"] == {"sent": len(exp.contacted)}
    coupons = check_ledger(env, data, exp)
    deliveries = env.deliveries(data["run_id"])
    for cid, row in coupons.items():
        want = KIND_EXPECTED[row.step]
        assert row.offer_kind == want["kind"]
        assert row.value == want["value"] and row.min_spend == want["min_spend"]
        assert row.group is None
        terms = row.terms
        assert (Decimal(terms["cap"]) if terms["cap"] is not None else None) == want["cap"]
        assert terms["item"] == want["item"]
        assert Decimal(terms["face_value"]) == want["face_value"]
        assert terms["dayparts"] == want["dayparts"] and terms["weekdays"] == want["weekdays"]
        assert terms["description"] == want["description"]
        assert terms["stacking"] == "exclusive"
        assert row.valid_from == AT and row.valid_until == want["until"]
        # the message carries the coupon: its code as displayed, value, last valid moment and description
        mail = env.mail(deliveries[cid].provider_id)
        assert mail["code"] == codes.display(row.code) and codes.normalise(mail["code"]) == row.code
        assert mail["value"] == (str(want["value"]) if want["value"] is not None else "-")
        last_moment = (want["until"] - timedelta(seconds=1)).astimezone(SHANGHAI)
        assert mail["expires"] == last_moment.strftime("%Y-%m-%d %H:%M:%S")
        assert mail["description"] == want["description"]
        assert mail["subject"] == f"会员{cid}: {want['description']}"
    # every code is different
    assert len({row.code for row in coupons.values()}) == len(coupons)


@pytest.mark.parametrize(
    ("terms", "expected"),
    [
        ({"kind": "amount_off", "value": 20, "min_spend": 100}, "满100减20元"),
        ({"kind": "amount_off", "value": Decimal("12.50")}, "立减12.5元"),
        ({"kind": "percent_off", "value": 20}, "8折"),
        ({"kind": "percent_off", "value": 25, "cap": 50}, "7.5折（最高减50元）"),
        ({"kind": "free_item", "item": "招牌菜", "dayparts": ["lunch"]}, "免费招牌菜，仅限午市"),
        ({"kind": "free_item", "item": "咖啡", "dayparts": ["breakfast", "afternoon"]}, "免费咖啡，仅限早市、下午茶"),
        ({"kind": "gift", "item": "帆布袋", "min_spend": 200, "weekdays": ["fri"]}, "满200赠帆布袋，仅限周五"),
        ({"kind": "amount_off", "value": 5, "description": "咖啡立减5元"}, "咖啡立减5元"),
    ],
)
def test_description_wording(terms: dict, expected: str):
    assert CouponTerms.model_validate({**terms, "valid_days": 7}).describe() == expected


def test_percent_off_with_min_spend_is_readable():
    text = CouponTerms.model_validate(
        {"kind": "percent_off", "value": 20, "min_spend": 100, "valid_days": 7}
    ).describe()
    assert text.startswith("满100") and "8折" in text
    assert not re.search(r"满100\d", text), text


# --- validity -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("terms", "at", "valid_from", "valid_until"),
    [
        # 00:30 in Shanghai is still the day before in UTC: three local days are 07-01, 07-02, 07-03
        ({"valid_days": 3}, "2025-07-01T00:30:00+08:00", None, end_of_local_day(date(2025, 7, 3))),
        # the same instant written in UTC
        ({"valid_days": 3}, "2025-06-30T16:30:00+00:00", None, end_of_local_day(date(2025, 7, 3))),
        # written on 06-30 at -05:00, it is 07-01 09:00 in Shanghai: one day is 07-01
        ({"valid_days": 1}, "2025-06-30T20:00:00-05:00", None, end_of_local_day(date(2025, 7, 1))),
        # a minute before local midnight: one day ends a minute later
        ({"valid_days": 1}, "2025-07-01T23:59:00+08:00", None, end_of_local_day(date(2025, 7, 1))),
        # a date: the end of that local day
        ({"valid_until": "2025-07-31"}, AT.isoformat(), None, end_of_local_day(date(2025, 7, 31))),
        # valid from a later date: the days count from there
        (
            {"valid_from": "2025-07-05", "valid_days": 3},
            AT.isoformat(),
            datetime(2025, 7, 5, tzinfo=SHANGHAI),
            end_of_local_day(date(2025, 7, 7)),
        ),
        # both ends as times with offsets: taken as they are
        (
            {"valid_from": "2025-07-02T11:00:00+08:00", "valid_until": "2025-07-20T14:00:00+00:00"},
            AT.isoformat(),
            datetime(2025, 7, 2, 11, tzinfo=SHANGHAI),
            datetime(2025, 7, 20, 14, tzinfo=UTC),
        ),
    ],
    ids=["after-midnight", "same-in-utc", "utc-offset-date-differs", "minute-before-midnight", "until-date",
         "from-date", "from-until-times"],
)  # fmt: skip
def test_validity_window(env: Env, terms: dict, at: str, valid_from: datetime | None, valid_until: datetime):
    moment = datetime.fromisoformat(at)
    file = env.write(campaign("validity", offer={"kind": "amount_off", "value": 10, **terms}))
    data = env.run(file, at)
    exp = simulate(moment, "validity", [StepRule("main", offer=OfferRule(face=Decimal(10)))])
    check_result(data, exp)
    coupons = check_ledger(env, data, exp)
    assert coupons
    deliveries = env.deliveries(data["run_id"])
    for cid, row in coupons.items():
        assert row.valid_from == (valid_from or moment)
        assert row.valid_until == valid_until
        last = (valid_until - timedelta(seconds=1)).astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
        assert env.mail(deliveries[cid].provider_id)["expires"] == last


# --- per-customer limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_customer", [1, 2])
def test_per_customer_limit_over_the_campaigns_runs(env: Env, per_customer: int):
    offer = {"kind": "amount_off", "value": 10, "valid_days": 3, "per_customer": per_customer}
    file = env.write(campaign("per-customer", offer=offer, message=WALLET, control=10))
    rule = OfferRule(face=Decimal(10), per_customer=per_customer)
    results = []
    for at in (AT_PAST, AT, AT + 7 * DAY):  # the audience grows between the first two runs
        exp = simulate(at, "per-customer", [StepRule("main", channel="coupon", offer=rule)], control=10)
        predicted = env.dry_run(file, at)
        check_result(predicted, exp)
        data = env.run(file, at)
        check_result(data, exp)
        check_ledger(env, data, exp)
        results.append(exp)
    first, second, third = results
    assert first.issued and not first.withheld("per_customer")
    holders = set(first.issued)
    if per_customer == 1:
        # everyone who got one in the first run and is in the second's audience is withheld; the rest get theirs
        assert set(second.withheld("per_customer")) == holders & set(second.audience)
        assert second.withheld("per_customer") and second.issued
        assert not set(second.issued) & holders
    else:
        # a second coupon for each holder; the third run withholds those who hold two
        assert holders & set(second.issued)
        assert not second.withheld("per_customer")
        assert set(third.withheld("per_customer")) == set(first.issued) & set(second.issued)
    with env.engine.connect() as conn:
        held = Counter(conn.execute(select(Coupon.customer_pk).where(Coupon.campaign_pk.is_not(None))).scalars().all())
    assert max(held.values()) == per_customer


# --- budgets -------------------------------------------------------------------------------------------------

BUDGETS = {
    "max_issued": ({"kind": "amount_off", "value": 20, "budget": {"max_issued": 4}}, Decimal(20), 4, None),
    "max_face_value": (
        {"kind": "amount_off", "value": 20, "budget": {"max_face_value": 90}},
        Decimal(20),
        None,
        Decimal(90),
    ),
    "percent_cap": (
        {"kind": "percent_off", "value": 20, "cap": 30, "budget": {"max_face_value": 130}},
        Decimal(30),
        None,
        Decimal(130),
    ),
    "gift_both": (
        {"kind": "gift", "item": "小蛋糕", "face_value": 15, "budget": {"max_issued": 10, "max_face_value": 65}},
        Decimal(15),
        10,
        Decimal(65),
    ),
}


@pytest.mark.parametrize("budget", list(BUDGETS))
def test_budget_goes_to_the_first_contacted_members(env: Env, budget: str):
    terms, face, max_issued, max_face_value = BUDGETS[budget]
    env.suppress("C03")
    file = env.write(
        campaign("budget-check", offer={**terms, "valid_days": 7}, control=20, batch_size=3), name="budget"
    )
    rule = OfferRule(face=face, max_issued=max_issued, max_face_value=max_face_value)
    exp = simulate(AT, "budget-check", [StepRule("main", offer=rule)], control=20, suppressed={"C03"})
    # the set-up: members skipped by a policy or held out come before the last coupon, and the budget runs out
    last_issued = max(ORDER.index(cid) for cid in exp.issued)
    before = ORDER[:last_issued]
    assert {exp.skipped.get(cid) for cid in before} >= {"no_contact", "suppressed"}
    assert exp.control & set(before)
    assert exp.withheld("budget")
    predicted = env.dry_run(file)
    check_result(predicted, exp)
    assert env.budget_row() is None and env.count(Coupon) == len(dataset.COUPONS)  # a dry run takes nothing
    data = env.run(file)
    check_result(data, exp)
    assert data["skipped"]["offer_budget"] == len(exp.withheld("budget"))
    check_ledger(env, data, exp)
    # the issued coupons are the first in customer order among those contacted
    contactable = [cid for cid in ORDER if cid in exp.issued or exp.skipped.get(cid) == "offer_budget"]
    assert list(exp.issued) == contactable[: len(exp.issued)]
    assert env.budget_row() == (len(exp.issued), face * len(exp.issued))
    # nothing is left: a week later the holders are withheld per_customer, everyone else budget
    later = AT + 7 * DAY
    exp_later = simulate(later, "budget-check", [StepRule("main", offer=rule)], control=20, suppressed={"C03"})
    assert not exp_later.issued and exp_later.withheld("per_customer") and exp_later.withheld("budget")
    check_result(env.dry_run(file, later), exp_later)
    check_result(env.run(file, later), exp_later)
    assert env.budget_row() == (len(exp.issued), face * len(exp.issued))


def test_budgets_carry_over_between_runs_and_the_dry_run_predicts_them(env: Env):
    """Two steps, each with its own budget; the first run uses part of each, the second runs out mid-run."""
    name = "budget-runs"
    regulars = lambda f, cid: frequency(f, cid) >= 2  # noqa: E731

    def rules(max_issued=None, max_face_value=None, held=None):
        held = held if held is not None else Counter()  # per_customer counts the campaign's coupons, any step
        return [
            StepRule("regulars", regulars, "coupon", OfferRule(face=Decimal(20), max_issued=max_issued, held=held)),
            StepRule("others", None, "coupon", OfferRule(face=Decimal(25), max_face_value=max_face_value, held=held)),
        ]

    # how many each run would issue without a budget, to set budgets that end part-way through the second run
    free = rules()
    first_free = simulate(AT_PAST, name, free, control=10)
    second_free = simulate(AT, name, free, control=10)
    counts = {s: (first_free.tallies[s].issued, second_free.tallies[s].issued) for s in ("regulars", "others")}
    assert all(a >= 1 and b >= 2 for a, b in counts.values()), counts
    max_issued = counts["regulars"][0] + counts["regulars"][1] // 2
    max_face_value = Decimal(25) * (counts["others"][0] + counts["others"][1] // 2) + Decimal(10)
    steps = [
        {
            "name": "regulars",
            "when": {"frequency": {"gte": 2}},
            "offer": {
                "coupon": {"kind": "amount_off", "value": 20, "valid_days": 7, "budget": {"max_issued": max_issued}}
            },
            "message": WALLET,
        },
        {
            "name": "others",
            "offer": {
                "coupon": {
                    "kind": "percent_off",
                    "value": 10,
                    "cap": 25,
                    "valid_days": 7,
                    "budget": {"max_face_value": str(max_face_value)},
                }
            },
            "message": WALLET,
        },
    ]
    file = env.write(campaign(name, steps=steps, control=10, batch_size=4))
    model = rules(max_issued, max_face_value)
    first = simulate(AT_PAST, name, model, control=10)
    assert not first.withheld("budget")
    check_result(env.dry_run(file, AT_PAST), first)
    first_data = env.run(file, AT_PAST)
    check_result(first_data, first)
    check_ledger(env, first_data, first)
    second = simulate(AT, name, model, control=10)
    # the second run: some get theirs, then the budget is spent; the holders are withheld per_customer
    for step in ("regulars", "others"):
        assert second.tallies[step].issued >= 1 and second.tallies[step].withheld["budget"] >= 1, step
    assert second.withheld("per_customer")
    predicted = env.dry_run(file, AT)
    check_result(predicted, second)
    data = env.run(file, AT)
    check_result(data, second)
    for key in ("steps", "offers", "skipped", "control", "audience"):
        assert predicted[key] == data[key], key
    check_ledger(env, data, second)
    assert env.budget_row("regulars") == (max_issued, Decimal(20) * max_issued)
    issued_others = first.tallies["others"].issued + second.tallies["others"].issued
    assert env.budget_row("others") == (issued_others, Decimal(25) * issued_others)
    assert Decimal(25) * issued_others <= max_face_value < Decimal(25) * (issued_others + 1)


# --- exclusivity groups -----------------------------------------------------------------------------------------


def test_a_live_coupon_of_the_group_blocks_another(env: Env):
    group_offer = {"kind": "amount_off", "value": 10, "valid_days": 30, "group": "winback"}
    first_file = env.write(
        campaign("first-winback", offer=group_offer, message=WALLET, segment={"frequency": {"gte": 3}})
    )
    first_at = AT - DAY
    first = simulate(
        first_at,
        "first-winback",
        [StepRule("main", channel="coupon", offer=OfferRule(face=Decimal(10)))],
        segment=lambda f, cid: frequency(f, cid) >= 3,
    )
    first_data = env.run(first_file, first_at)
    check_result(first_data, first)
    check_ledger(env, first_data, first)
    assert first.issued
    # coupons of the group from elsewhere: only a live one blocks
    env.add_coupon("C06", "XEXPIRED0001", group="winback", valid_until=AT - timedelta(seconds=1))
    env.add_coupon("C08", "XENDSATAT001", group="winback", valid_until=AT)  # valid until AT, exclusive
    env.add_coupon("C13", "XREDEEMED001", group="winback", state="redeemed", redeemed_at=AT - DAY)
    env.add_coupon("C16", "XOTHERGROUP1", group="birthday")
    env.add_coupon("C18", "XNOGROUP0001")
    env.add_coupon("C22", "XLIVEGROUP01", group="winback")  # live, issued outside any campaign
    second_file = env.write(campaign("second-winback", offer=group_offer, message=WALLET))
    live = set(first.issued) | {"C22"}
    rule = OfferRule(face=Decimal(10), live_group=live)
    exp = simulate(AT, "second-winback", [StepRule("main", channel="coupon", offer=rule)])
    assert set(exp.withheld("exclusivity")) == live
    assert {"C06", "C08", "C13", "C16", "C18"} <= set(exp.issued)
    check_result(env.dry_run(second_file), exp)
    data = env.run(second_file)
    check_result(data, exp)
    check_ledger(env, data, exp)
    assert data["skipped"] == {"offer_exclusivity": len(live)}
    assert all(row.group == "winback" for row in env.coupons(data["run_id"]).values())


# --- guards -------------------------------------------------------------------------------------------------

GUARDS = {
    "not-frequent": (
        {"not": [{"frequency": {"gte": 3}}]},
        lambda f, cid: not frequency(f, cid) >= 3,
    ),
    "not-frequent-or-big": (
        {"not": [{"frequency": {"gte": 4}}, {"monetary": {"gte": 1000}}]},
        lambda f, cid: not (frequency(f, cid) >= 4 or monetary(f, cid) >= 1000),
    ),
}


@pytest.mark.parametrize("guard", list(GUARDS))
def test_guard_withholds_exactly_the_members_it_excludes(env: Env, guard: str):
    condition, allowed = GUARDS[guard]
    env.suppress("C01", "C04")
    offer = {"kind": "percent_off", "value": 30, "cap": 50, "valid_days": 7, "guard": condition}
    file = env.write(campaign("guard-check", offer=offer, message=WALLET, control=20))
    rule = OfferRule(face=Decimal(50), guard=allowed)
    exp = simulate(
        AT, "guard-check", [StepRule("main", channel="coupon", offer=rule)], control=20, suppressed={"C01", "C04"}
    )
    facts = dataset.FactModel(AT, SETTINGS)
    excluded = {cid for cid in exp.audience if not allowed(facts, cid)}
    # the guard excludes some of the contacted, and some of those it excludes are held out or suppressed
    assert set(exp.withheld("guard")) == excluded - exp.control - {"C01", "C04"}
    assert exp.withheld("guard") and excluded & (exp.control | {"C01", "C04"})
    check_result(env.dry_run(file), exp)
    data = env.run(file)
    check_result(data, exp)
    assert data["skipped"]["offer_guard"] == len(exp.withheld("guard"))
    check_ledger(env, data, exp)


# --- who receives coupons --------------------------------------------------------------------------------------


def test_only_contacted_members_receive_coupons(env: Env):
    env.suppress("C01", "C06")
    file = env.write(campaign("resume-check", offer={"kind": "amount_off", "value": 10, "valid_days": 7}, control=30))
    exp = simulate(
        AT, "resume-check", [StepRule("main", offer=OfferRule(face=Decimal(10)))], control=30, suppressed={"C01", "C06"}
    )
    reasons = set(exp.skipped.values())
    assert {"no_contact", "no_consent", "suppressed"} <= reasons and exp.control and exp.issued
    data = env.run(file)
    coupons = check_ledger(env, data, exp)
    sent = {cid for cid, row in env.deliveries(data["run_id"]).items() if row.state == "sent"}
    assert set(coupons) == sent == set(exp.contacted)
    assert env.count(Coupon) == len(dataset.COUPONS) + len(exp.issued)


def test_the_coupon_channel_delivers_the_coupon_without_email_consent(env: Env):
    env.suppress("C02")
    file = env.write(campaign("wallet", offer={"kind": "amount_off", "value": 8, "valid_days": 7}, message=WALLET))
    exp = simulate(
        AT, "wallet", [StepRule("main", channel="coupon", offer=OfferRule(face=Decimal(8)))], suppressed={"C02"}
    )
    no_email = {cid for cid in exp.issued if dataset.CUSTOMER_BY_ID[cid].consents.get("email") is not True}
    assert no_email and exp.skipped == {"C02": "suppressed"}  # suppression still applies to the wallet
    check_result(env.dry_run(file), exp)
    data = env.run(file)
    check_result(data, exp)
    assert data["outcomes"] == {"sent": len(exp.issued)}
    coupons = check_ledger(env, data, exp)
    for cid, row in env.deliveries(data["run_id"]).items():
        if cid == "C02":
            continue
        assert (row.channel, row.state, row.contact) == ("coupon", "sent", cid)
        assert row.provider_id is not None and codes.normalise(row.provider_id) == coupons[cid].code
        assert row.sent_at is not None
    assert not env.outbox.exists()


# --- resuming ------------------------------------------------------------------------------------------------


def resume_setup(env: Env) -> tuple[Path, Expected]:
    env.suppress("C03")
    offer = {"kind": "amount_off", "value": 20, "valid_days": 7, "budget": {"max_issued": 4}}
    file = env.write(campaign("resume-check", offer=offer, control=20))
    exp = simulate(
        AT,
        "resume-check",
        [StepRule("main", offer=OfferRule(face=Decimal(20), max_issued=4))],
        control=20,
        suppressed={"C03"},
    )
    assert exp.withheld("budget") and exp.control
    return file, exp


def test_a_resumed_run_issues_no_second_coupon(env: Env):
    file, exp = resume_setup(env)
    first = env.run(file)
    check_result(first, exp)
    coupons = check_ledger(env, first, exp)
    deliveries = env.deliveries(first["run_id"])
    again = env.run(file)
    assert again["run_id"] == first["run_id"] and again["resumed"] is True
    assert again["outcomes"] == {"already_sent": len(exp.contacted)}
    assert again["offers"]["issued"] == first["offers"]["issued"] == len(exp.issued)
    assert again["offers"]["face_value"] == first["offers"]["face_value"]
    assert again["skipped"] == first["skipped"]
    assert env.count(Coupon) == len(dataset.COUPONS) + len(exp.issued)
    assert {cid: r.code for cid, r in env.coupons(first["run_id"]).items()} == {
        cid: r.code for cid, r in coupons.items()
    }
    assert env.deliveries(first["run_id"]) == deliveries
    assert env.budget_row() == (4, Decimal(80))
    # each coupon is carried by exactly one delivery row, the one of its member in its run
    with env.engine.connect() as conn:
        carried = Counter(conn.execute(select(Delivery.coupon_pk).where(Delivery.coupon_pk.is_not(None))).scalars())
    assert carried == Counter({row.id: 1 for row in coupons.values()})


def test_an_interrupted_run_sends_the_coupon_it_already_issued(env: Env):
    file, exp = resume_setup(env)
    planned = env.json("run", str(file), "--at", _text(AT), "--plan-only")
    assert planned["outcomes"] == {} and planned["state"] == "waiting"
    coupons = env.coupons(planned["run_id"])
    deliveries = env.deliveries(planned["run_id"])
    lost = sorted(cid for cid in exp.issued)[:2]
    # as if an earlier process had sent everything but these two and then died
    with env.engine.begin() as conn:
        for cid in set(exp.contacted) - set(lost):
            conn.execute(
                Delivery.__table__.update()
                .where(Delivery.id == deliveries[cid].id)
                .values(state="sent", provider_id=f"earlier-{cid}")
            )
            conn.execute(delete(DeliveryPayload).where(DeliveryPayload.delivery_pk == deliveries[cid].id))
    again = env.run(file)
    assert again["resumed"] is True
    assert again["outcomes"] == {"sent": 2, "already_sent": len(exp.contacted) - 2}
    assert env.count(Coupon) == len(dataset.COUPONS) + len(exp.issued)
    after = env.deliveries(planned["run_id"])
    for cid in lost:
        assert after[cid].state == "sent" and after[cid].coupon_pk == coupons[cid].id
        mail = env.mail(after[cid].provider_id)
        assert mail["code"] == codes.display(coupons[cid].code)  # the coupon issued when planning, not a new one
        assert mail["description"] == "立减20元"


def test_a_resumed_run_reports_the_same_offers(env: Env):
    file, exp = resume_setup(env)
    first = env.run(file)
    again = env.run(file)
    check_result(again, exp)
    assert again["offers"] == first["offers"] and again["steps"] == first["steps"]
    with env.engine.connect() as conn:
        summary = conn.execute(select(CampaignRun.summary)).scalar_one()
    assert summary["offers"]["withheld"] == {"budget": len(exp.withheld("budget"))}


# --- validation -------------------------------------------------------------------------------------------------

INVALID_OFFERS = {
    # case: (offer lines, the lines the error may point at, words the message must contain)
    "unknown-daypart": (
        "  coupon:\n    kind: amount_off\n    value: 20\n    valid_days: 7\n    dayparts: [lunch, brunch]\n",
        {8},
        ["unknown daypart 'brunch'", "lunch"],
    ),
    "percent-150": (
        "  coupon:\n    kind: percent_off\n    value: 150\n    valid_days: 7\n",
        {4, 6},
        ["percent", "100"],
    ),
    "free-item-without-item": (
        "  coupon:\n    kind: free_item\n    valid_days: 7\n",
        {4, 5},
        ["free_item", "item"],
    ),
    "valid-days-and-until": (
        "  coupon:\n    kind: amount_off\n    value: 20\n    valid_days: 7\n    valid_until: 2025-12-31\n",
        {4, 7, 8},
        ["valid_days", "valid_until"],
    ),
    "max-face-value-on-gift": (
        "  coupon:\n    kind: gift\n    item: 小蛋糕\n    valid_days: 7\n    budget: {max_face_value: 100}\n",
        {4, 8},
        ["max_face_value", "face_value"],
    ),
    "unknown-coupon-kind": (
        "  coupon:\n    kind: bogo\n    value: 20\n    valid_days: 7\n",
        {5},
        ["kind", "amount_off", "percent_off", "free_item", "gift"],
    ),
    "unknown-offer-kind": (
        "  voucher:\n    kind: amount_off\n    value: 20\n    valid_days: 7\n",
        {4},
        ["unknown offer kind 'voucher'"],
    ),
}


def invalid_file(env: Env, case: str) -> Path:
    offer, _, _ = INVALID_OFFERS[case]
    text = f"name: broken-offer\nsegment: {{frequency: {{gte: 1}}}}\noffer:\n{offer}message:\n  coupon: {{}}\n"
    assert text.splitlines()[2] == "offer:"  # line 4 is the offer kind, line 5 onwards its terms
    return env.write(text, name=case)


@pytest.mark.parametrize("case", list(INVALID_OFFERS))
def test_an_invalid_offer_is_refused_with_file_and_line(env: Env, case: str):
    _, lines, words = INVALID_OFFERS[case]
    file = invalid_file(env, case)
    result = env.cli("validate", str(file))
    assert result.exit_code == 2, result.output
    first = result.stderr.splitlines()[0]
    assert any(f"{file}:{line}:" in first for line in lines), result.stderr
    for word in words:
        assert word in first, result.stderr
    listed = env.cli("validate", str(file), "--json")
    assert listed.exit_code == 2
    # one problem, the offer's: no knock-on template error for a step whose offer was refused
    [problem] = json.loads(listed.stdout)["files"][0]["problems"]
    assert problem["file"] == str(file) and problem["line"] in lines
    # nor will a dry run or a run go ahead, and nothing is written
    before = env.count(Coupon), env.count(CampaignRun)
    for command in ("dry-run", "run"):
        refused = env.cli(command, str(file), "--at", AT.isoformat(), "--json")
        assert refused.exit_code == 2 and refused.stdout == ""
    assert (env.count(Coupon), env.count(CampaignRun)) == before


# --- two processes sharing one budget (PostgreSQL) -----------------------------------------------------------


def _runner_process(db_url: str, config: str, jobs: list[tuple[str, str]], barrier, results) -> None:
    """A separate process with its own engine: for each (campaign file, --at), wait for the other process at the
    barrier, then run, so that both issue from the same budget at the same time."""
    os.environ["ORCHESTRATOR_SECRET_KEY"] = "test-signing-key-" + "0123456789" * 3  # as tests/conftest.py sets
    cli = Cli(db_url, config=config)
    for file, at in jobs:
        try:
            barrier.wait(timeout=60)
            result = cli("run", file, "--at", at, "--json")
            results.put((file, at, result.exit_code, result.stdout, result.stderr or ""))
        except BaseException as exc:  # report anything to the parent instead of dying silently
            results.put((file, at, -1, "", repr(exc)))


ATTEMPTS = 3


def test_two_processes_never_pass_the_budget(request, db_url: str):
    """One campaign run at two times by two processes at once; per_customer is high enough that only the budget
    limits them. Its budget is below either run's audience: together they issue exactly max_issued. (PostgreSQL
    runs the two truly concurrently; SQLite serialises their write transactions, which must hold just as well.)"""
    env: Env = request.getfixturevalue("env")
    max_issued = 20
    times = [AT, AT + timedelta(hours=1)]
    contacted = {
        at.isoformat(): len(simulate(at, "race", [StepRule("main", channel="coupon", offer=OfferRule())]).contacted)
        for at in times
    }
    assert all(n > max_issued for n in contacted.values()), contacted
    files = []
    for attempt in range(ATTEMPTS):  # a campaign each: budgets are per campaign, step and offer kind
        offer = {"kind": "amount_off", "value": 5, "valid_days": 7, "per_customer": 5}
        offer["budget"] = {"max_issued": max_issued}
        files.append(str(env.write(campaign(f"race-{attempt}", offer=offer, message=WALLET, batch_size=3))))
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(
            target=_runner_process,
            args=(env.db_url, str(env.config), [(f, at.isoformat()) for f in files], barrier, results),
        )
        for at in times
    ]
    for worker in workers:
        worker.start()
    try:
        outputs = [results.get(timeout=120) for _ in range(2 * ATTEMPTS)]
    finally:
        for worker in workers:
            worker.join(timeout=60)
    assert all(worker.exitcode == 0 for worker in workers)
    both_issued = 0
    for attempt, file in enumerate(files):
        name = f"race-{attempt}"
        issued = []
        for _, at, code, stdout, stderr in [o for o in outputs if o[0] == file]:
            assert code == 0, stderr
            offers = json.loads(stdout)["offers"]
            assert set(offers["withheld"]) <= {"budget"}
            assert offers["issued"] + offers["withheld"].get("budget", 0) == contacted[at]
            issued.append(offers["issued"])
        assert len(issued) == 2
        both_issued += all(issued)
        with env.engine.connect() as conn:
            rows = conn.execute(
                select(Coupon.customer_pk, Coupon.run_pk)
                .join(Campaign, Campaign.id == Coupon.campaign_pk)
                .where(Campaign.name == name)
            ).all()
            budget = conn.execute(
                select(OfferBudget.issued, OfferBudget.face_value)
                .join(Campaign, Campaign.id == OfferBudget.campaign_pk)
                .where(Campaign.name == name)
            ).one()
        assert len(set(rows)) == len(rows)  # one coupon per member per run
        assert sum(issued) == len(rows) == max_issued, (name, issued, len(rows))
        assert tuple(budget) == (max_issued, Decimal(5) * max_issued)
    assert both_issued >= 1  # the two runs really did interleave (each took part of the budget)
