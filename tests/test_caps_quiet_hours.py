"""Frequency caps and quiet hours through the CLI (``dry-run`` / ``run``), on SQLite and PostgreSQL.

The expectation is recomputed in plain Python: the audience is every buying member (``frequency >= 1``) of the
data set as of ``AT``; a member without an e-mail is skipped ``no_contact``, without e-mail consent
``no_consent``; a reachable member whose sent deliveries in the window reach a cap is skipped ``frequency_cap``;
the rest are contacted, or deferred when their local time at ``AT`` is in the quiet window.

Decisions under test: a send exactly ``per`` before ``at`` has left the window; failed deliveries do not count;
messages decided but not yet sent (pending, deferred, claimed) count at the time they are due;
a cap with a channel counts only that channel's sends; a campaign's cap replaces the config's default;
``transactional`` bypasses caps and quiet hours; a deferred member still gets the offer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, insert, select, update

from orchestrator.config import Settings
from orchestrator.db.models import Campaign, CampaignRun, Coupon, Customer, Delivery
from tests import dataset
from tests.clitools import Cli
from tests.dataset import AT

DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)
WEEK = 7 * DAY

# (customer, channel, sent_at, state): sends by an earlier campaign, inserted straight into the ledger
SENDS = [
    ("C01", "email", AT - DAY, "sent"),
    ("C01", "email", AT - 2 * DAY, "sent"),
    ("C06", "email", AT - DAY, "sent"),
    # window edge: exactly a week before AT (out of a 7d window), a second later (in)
    ("C14", "email", AT - WEEK, "sent"),
    ("C14", "email", AT - WEEK + SECOND, "sent"),
    # two SMS: they count for an all-channel cap, never for an e-mail cap
    ("C20", "sms", AT - 3600 * SECOND, "sent"),
    ("C20", "sms", AT - 2 * 3600 * SECOND, "sent"),
    # failed sends are not messages the customer received
    ("C17", "email", AT - DAY, "failed"),
    ("C17", "email", AT - 2 * DAY, "failed"),
    # long ago: out of a week, inside 30 days
    ("C30", "email", AT - 10 * DAY, "sent"),
    ("C30", "email", AT - 20 * DAY, "sent"),
]


def cap(max_: int, per: timedelta, channel: str | None = None) -> dict:
    data = {"max": max_, "per": f"{per // DAY}d"}
    if channel:
        data["channel"] = channel
    return data


def sends_counted(customer_id: str, spec: dict, at: datetime) -> int:
    """The sends ``spec`` counts: state sent, strictly after ``at - per``, on its channel (or any)."""
    per = timedelta(days=int(spec["per"][:-1]))
    return sum(
        1
        for cid, channel, sent_at, state in SENDS
        if cid == customer_id
        and state == "sent"
        and sent_at > at - per
        and (spec.get("channel") is None or spec["channel"] == channel)
    )


def buyers(at: datetime) -> list[dataset.CustomerRow]:
    facts = dataset.expected_facts(at, Settings())
    return [dataset.CUSTOMER_BY_ID[cid] for cid, f in facts.items() if f.frequency >= 1]


@dataclass
class Expected:
    skipped: dict[str, set[str]]
    contacted: set[str]
    deferred: dict[str, datetime]

    def counts(self) -> dict[str, int]:
        return {reason: len(ids) for reason, ids in self.skipped.items() if ids}


def expected(
    at: datetime, caps: list[dict], quiet: tuple[int, int] | None = None, zones: dict[str, str] | None = None
) -> Expected:
    """The e-mail campaign as of ``at`` under ``caps`` (applied to e-mail) and a quiet window (start, end hour)."""
    exp = Expected({}, set(), {})
    for customer in buyers(at):
        cid = customer.customer_id
        if customer.email is None:
            reason = "no_contact"
        elif customer.consents.get("email") is not True:
            reason = "no_consent"
        elif any(
            sends_counted(cid, spec, at) >= spec["max"] for spec in caps if spec.get("channel") in (None, "email")
        ):
            reason = "frequency_cap"
        else:
            reason = None
        if reason:
            exp.skipped.setdefault(reason, set()).add(cid)
            continue
        if quiet:
            local = at.astimezone(ZoneInfo((zones or {}).get(cid, "Asia/Shanghai")))
            start, end = quiet
            hour = local.hour + local.minute / 60
            inside = start <= hour < end if start < end else hour >= start or hour < end
            if inside:
                until = local.replace(hour=end, minute=0, second=0, microsecond=0)
                if until <= local:
                    until = (local + DAY).replace(hour=end, minute=0, second=0, microsecond=0)
                exp.deferred[cid] = until.astimezone(UTC)
                continue
        exp.contacted.add(cid)
    return exp


# --- fixtures --------------------------------------------------------------------------------------------------


@dataclass
class Env:
    cli: Cli
    engine: Engine
    tmp: Path
    config: Path
    outbox: Path
    keys: dict[str, int]

    def write_config(self, policies: dict | None = None) -> None:
        lines = [
            "timezone: Asia/Shanghai",
            "templates: []",
            "channels:",
            "  email:",
            "    from: Shop <shop@example.com>",
            f"    outbox: {self.outbox}",
        ]
        if policies:
            lines.append("policies: " + json.dumps(policies))
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def campaign(self, name: str, dispatch: dict | None = None, offer: dict | None = None) -> Path:
        data: dict = {
            "name": name,
            "segment": {"frequency": {"gte": 1}},
            "message": {"email": {"subject": "Hi {{ customer.name }}", "text": "Hello {{ customer.name }}"}},
        }
        if dispatch:
            data["dispatch"] = dispatch
        if offer:
            data["offer"] = {"coupon": offer}
        path = self.tmp / f"{name}.yaml"
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return path

    def json(self, *args: str) -> dict:
        result = self.cli(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def both(self, file: Path, at: datetime = AT) -> tuple[dict, dict]:
        predicted = self.json("dry-run", str(file), "--at", at.isoformat())
        return predicted, self.json("run", str(file), "--at", at.isoformat())

    def rows(self, campaign: str) -> dict[str, list]:
        with self.engine.connect() as conn:
            found = conn.execute(
                select(*Delivery.__table__.c, Customer.customer_id.label("cid"))
                .join(Customer, Customer.id == Delivery.customer_pk)
                .join(CampaignRun, CampaignRun.id == Delivery.run_pk)
                .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
                .where(Campaign.name == campaign)
            ).all()
        out: dict[str, list] = {}
        for row in found:
            out.setdefault(row.cid, []).append(row)
        return out

    def coupon_holders(self, campaign: str) -> set[str]:
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    select(Customer.customer_id)
                    .join(Coupon, Coupon.customer_pk == Customer.id)
                    .join(Campaign, Campaign.id == Coupon.campaign_pk)
                    .where(Campaign.name == campaign)
                ).scalars()
            )


def insert_sends(engine: Engine, keys: dict[str, int]) -> None:
    """``SENDS`` as an earlier campaign's ledger; one run per send keeps (run, customer, channel) unique."""
    now = datetime(2025, 6, 1, tzinfo=UTC)
    with engine.begin() as conn:
        campaign_pk = conn.execute(
            insert(Campaign)
            .values(name="earlier", definition={}, created_at=now, updated_at=now)
            .returning(Campaign.id)
        ).scalar_one()
        for i, (cid, channel, sent_at, state) in enumerate(SENDS):
            run_pk = conn.execute(
                insert(CampaignRun)
                .values(campaign_pk=campaign_pk, scheduled_at=now + i * SECOND, state="done", summary={})
                .returning(CampaignRun.id)
            ).scalar_one()
            conn.execute(
                insert(Delivery).values(
                    run_pk=run_pk,
                    customer_pk=keys[cid],
                    channel=channel,
                    state=state,
                    attempts=1,
                    created_at=sent_at,
                    updated_at=sent_at,
                    sent_at=sent_at if state == "sent" else None,
                )
            )


@pytest.fixture
def env(engine: Engine, db_url: str, tmp_path: Path, monkeypatch) -> Env:
    keys = dataset.load(engine)
    insert_sends(engine, keys)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    config = tmp_path / "orchestrator.yaml"
    e = Env(Cli(db_url, config=str(config)), engine, tmp_path, config, tmp_path / "outbox", keys)
    e.write_config()
    return e


def check(data: dict, exp: Expected) -> None:
    assert data["skipped"] == exp.counts()
    assert data["messages"] == len(exp.contacted)
    assert data["deferred"] == len(exp.deferred)
    assert data["audience"] == sum(exp.counts().values()) + len(exp.contacted) + len(exp.deferred)


def test_the_sends_exercise_every_case():
    """Guards the set-up: the customers with sends are buyers reachable by e-mail as of AT."""
    reachable = set(expected(AT, []).contacted)
    assert {cid for cid, *_ in SENDS} <= reachable


# --- frequency caps --------------------------------------------------------------------------------------------

CAP_CASES = {
    "all-channels-2-a-week": [cap(2, WEEK)],
    "email-1-a-week": [cap(1, WEEK, "email")],
    "sms-1-a-week": [cap(1, WEEK, "sms")],
    "edge-1-a-week": [cap(1, WEEK)],
    "several": [cap(3, 30 * DAY), cap(1, DAY, "email")],
    "month": [cap(2, 30 * DAY)],
}


@pytest.mark.parametrize("case", CAP_CASES)
def test_frequency_caps(env: Env, case: str):
    caps = CAP_CASES[case]
    exp = expected(AT, caps)
    file = env.campaign("capped", {"frequency_cap": caps})
    predicted, data = env.both(file)
    check(predicted, exp)
    check(data, exp)
    rows = env.rows("capped")
    capped = {cid for cid, rs in rows.items() if rs[0].state == "skipped" and rs[0].reason == "frequency_cap"}
    assert capped == exp.skipped.get("frequency_cap", set())
    assert {cid for cid, rs in rows.items() if rs[0].state == "sent"} == exp.contacted
    assert all(len(rs) == 1 for rs in rows.values())  # one row, one reason per customer


def test_cap_cases_differ():
    """Each case decides differently where the brief's rules differ."""
    capped = {case: expected(AT, caps).skipped.get("frequency_cap", set()) for case, caps in CAP_CASES.items()}
    assert capped["all-channels-2-a-week"] == {"C01", "C20"}
    assert capped["email-1-a-week"] == {"C01", "C06", "C14"}  # C14: the send exactly a week ago is out
    assert capped["sms-1-a-week"] == set()  # the campaign sends e-mail; an SMS cap does not limit it
    assert capped["edge-1-a-week"] == {"C01", "C06", "C14", "C20"}
    assert capped["month"] == {"C01", "C14", "C20", "C30"}
    assert "C17" not in set().union(*capped.values())  # failed sends never count


def test_transactional_bypasses_caps_and_quiet_hours(env: Env):
    dispatch = {"frequency_cap": [cap(1, WEEK)], "quiet_hours": "09:00-12:00", "transactional": True}
    exp = expected(AT, [])
    predicted, data = env.both(env.campaign("receipt", dispatch))
    check(predicted, exp)
    check(data, exp)
    assert "frequency_cap" not in data["skipped"] and data["deferred"] == 0


@pytest.mark.parametrize(
    ("campaign_cap", "effective"),
    [(None, [cap(1, WEEK)]), ([cap(5, WEEK)], [cap(5, WEEK)]), ([], [])],
    ids=["default", "override", "opt-out"],
)
def test_config_default_and_campaign_override(env: Env, campaign_cap, effective):
    env.write_config({"frequency_cap": cap(1, WEEK)})
    dispatch = None if campaign_cap is None else {"frequency_cap": campaign_cap}
    exp = expected(AT, effective)
    predicted, data = env.both(env.campaign("defaults", dispatch))
    check(predicted, exp)
    check(data, exp)


def test_caps_count_sends_of_an_earlier_run(env: Env):
    """A first campaign's real sends cap the second campaign (their sent_at is the time they were sent)."""
    first = env.campaign("first")
    data = env.json("run", str(first), "--at", (AT - DAY).isoformat())
    sent_first = {cid for cid, rs in env.rows("first").items() if rs[0].state == "sent"}
    assert data["outcomes"] == {"sent": len(sent_first)} and sent_first
    second = env.campaign("second", {"frequency_cap": cap(3, WEEK)})
    predicted, data = env.both(second)
    # 3 a week, all channels: the first run's send plus the SENDS
    with_run = {cid: sends_counted(cid, cap(3, WEEK), AT) + (cid in sent_first) for cid in sent_first}
    want = {cid for cid, n in with_run.items() if n >= 3}
    assert want == {"C01", "C20"}  # C20: two SMS and the first run's e-mail
    assert predicted["skipped"].get("frequency_cap") == data["skipped"].get("frequency_cap") == len(want)
    capped = {cid for cid, rs in env.rows("second").items() if rs[0].reason == "frequency_cap"}
    assert capped == want


# (customer, channel, state, created_at, deferred_until, claimed): messages another campaign has decided but not
# yet sent, to members whose SENDS a week's cap does not count
DECIDED = [
    ("C03", "email", "deferred", AT - 8 * DAY, AT - 6 * DAY, False),  # due inside the week, created before it
    ("C17", "email", "deferred", AT - 3600 * SECOND, AT + 10 * 3600 * SECOND, False),  # due after AT: counts too
    ("C30", "email", "pending", AT - 2 * DAY, None, False),  # waiting for dispatch, decided inside the week
    ("C32", "email", "pending", AT - DAY, AT - 3 * 3600 * SECOND, True),  # was deferred, now claimed for sending
    ("C34", "email", "deferred", AT - 9 * DAY, AT - WEEK, False),  # due exactly a week before AT: out, like a send
    ("C34", "sms", "held_out", AT - DAY, None, False),  # control group: never a message
    ("C47", "email", "pending", AT - 8 * DAY, None, False),  # decided before the week: out
    ("C47", "sms", "skipped", AT - DAY, None, False),
]


def insert_decided(engine: Engine, keys: dict[str, int]) -> None:
    now = datetime(2025, 6, 1, tzinfo=UTC)
    with engine.begin() as conn:
        campaign_pk = conn.execute(
            insert(Campaign)
            .values(name="decided", definition={}, created_at=now, updated_at=now)
            .returning(Campaign.id)
        ).scalar_one()
        run_pk = conn.execute(
            insert(CampaignRun)
            .values(campaign_pk=campaign_pk, scheduled_at=now, state="waiting", summary={})
            .returning(CampaignRun.id)
        ).scalar_one()
        for cid, channel, state, created_at, deferred_until, claimed in DECIDED:
            conn.execute(
                insert(Delivery).values(
                    run_pk=run_pk,
                    customer_pk=keys[cid],
                    channel=channel,
                    state=state,
                    attempts=0,
                    created_at=created_at,
                    updated_at=created_at,
                    deferred_until=deferred_until,
                    claimed_by="host:1:abc" if claimed else None,
                    claim_expires=AT + DAY if claimed else None,
                )
            )


def test_caps_count_messages_decided_but_not_yet_sent(env: Env):
    """A deferred or pending message will be sent: it counts at the time it is due (deferred_until, else the
    time it was decided), so that two runs cannot both send to a member one cap allows once."""
    reachable = expected(AT, []).contacted
    assert {cid for cid, *_ in DECIDED} <= reachable
    insert_decided(env.engine, env.keys)
    caps = [cap(1, WEEK)]
    by_sends = expected(AT, caps).skipped["frequency_cap"]
    predicted, data = env.both(env.campaign("after-decided", {"frequency_cap": caps}))
    want = by_sends | {"C03", "C17", "C30", "C32"}
    assert predicted["skipped"]["frequency_cap"] == data["skipped"]["frequency_cap"] == len(want)
    capped = {cid for cid, rs in env.rows("after-decided").items() if rs[0].reason == "frequency_cap"}
    assert capped == want


def test_no_coupon_for_capped_members(env: Env):
    caps = [cap(1, WEEK)]
    exp = expected(AT, caps)
    offer = {"kind": "amount_off", "value": 10, "valid_days": 7}
    predicted, data = env.both(env.campaign("capped-offer", {"frequency_cap": caps}, offer))
    check(predicted, exp)
    check(data, exp)
    assert predicted["offers"]["issued"] == data["offers"]["issued"] == len(exp.contacted)
    assert env.coupon_holders("capped-offer") == exp.contacted
    assert not env.coupon_holders("capped-offer") & exp.skipped["frequency_cap"]


# --- quiet hours -----------------------------------------------------------------------------------------------

# AT is 10:00 in Shanghai = 02:00 UTC
ZONES = {
    "C01": "America/New_York",  # 22:00 the evening before (EDT)
    "C06": "Europe/London",  # 03:00 (BST)
    "C14": "Asia/Tokyo",  # 11:00
    "C20": "Pacific/Auckland",  # 14:00 (NZST)
    "C30": "America/Los_Angeles",  # 19:00 the evening before (PDT)
}


def set_zones(engine: Engine, keys: dict[str, int]) -> None:
    with engine.begin() as conn:
        for cid, name in ZONES.items():
            conn.execute(update(Customer).where(Customer.id == keys[cid]).values(timezone=name))


@pytest.mark.parametrize(
    ("window", "hours", "known"),
    [
        # wraps midnight: New York is deferred to 09:00 the next local day, London to 09:00 the same day
        (
            "21:00-09:00",
            (21, 9),
            {"C01": datetime(2025, 7, 1, 13, tzinfo=UTC), "C06": datetime(2025, 7, 1, 8, tzinfo=UTC)},
        ),
        # does not wrap: Shanghai customers (10:00, the start is inclusive) and Tokyo (11:00); Auckland's 14:00 no
        (
            "10:00-12:00",
            (10, 12),
            {"C14": datetime(2025, 7, 1, 3, tzinfo=UTC), "C03": datetime(2025, 7, 1, 4, tzinfo=UTC)},
        ),
        # ends exactly at Shanghai's 10:00 (end exclusive): only Los Angeles (19:00) and New York (22:00)
        ("18:00-10:00", (18, 10), {"C30": datetime(2025, 7, 1, 17, tzinfo=UTC)}),
    ],
    ids=["wrapping", "same-day", "end-exclusive"],
)
def test_quiet_hours_defer_in_the_customer_zone(env: Env, window, hours, known):
    set_zones(env.engine, env.keys)
    exp = expected(AT, [], hours, ZONES)
    for cid, until in known.items():
        assert exp.deferred[cid] == until, cid  # the plain-Python model agrees with hand-computed times
    assert exp.deferred and exp.contacted
    offer = {"kind": "amount_off", "value": 10, "valid_days": 7}
    predicted, data = env.both(env.campaign("quiet", {"quiet_hours": window}, offer))
    check(predicted, exp)
    check(data, exp)
    assert predicted["deferred"] == data["deferred"]
    rows = env.rows("quiet")
    deferred = {cid: rs[0] for cid, rs in rows.items() if rs[0].state == "deferred"}
    assert {cid: d.deferred_until for cid, d in deferred.items()} == exp.deferred
    assert all(d.sent_at is None and d.coupon_pk is not None for d in deferred.values())
    # the deferred still hold their coupon: they will be contacted
    assert env.coupon_holders("quiet") == exp.contacted | set(exp.deferred)
    assert data["outcomes"] == {"sent": len(exp.contacted)}
    assert len(list((env.outbox).iterdir())) == len(exp.contacted)
    # running the same run again counts the same without deciding again
    again = env.json("run", str(env.campaign("quiet", {"quiet_hours": window}, offer)), "--at", AT.isoformat())
    assert again["resumed"] and again["deferred"] == len(exp.deferred) and again["skipped"] == exp.counts()


def test_quiet_hours_default_from_config(env: Env):
    set_zones(env.engine, env.keys)
    env.write_config({"quiet_hours": "21:00-09:00"})
    exp = expected(AT, [], (21, 9), ZONES)
    predicted, data = env.both(env.campaign("quiet-default"))
    check(predicted, exp)
    check(data, exp)
    assert set(exp.deferred) == {"C01", "C06"}


def test_a_wallet_coupon_is_not_a_message_for_the_caps(env: Env):
    """A coupon put in the member's wallet reaches no inbox: it neither counts toward a cap nor is held back by
    one, while the e-mail announcing it does both."""
    recent = timedelta(minutes=30)  # only this test's own sends fall in the window, not SENDS

    def wallet_campaign(name: str, caps: list[dict] | None) -> Path:
        data: dict = {
            "name": name,
            "segment": {"frequency": {"gte": 1}},
            "offer": {"coupon": {"kind": "amount_off", "value": 10, "valid_days": 7}},
            "message": {"coupon": {}, "email": {"subject": "Hi", "text": "{{ offer.code }}"}},
            "dispatch": {"strategy": "all", **({"frequency_cap": caps} if caps else {})},
        }
        path = env.tmp / f"{name}.yaml"
        path.write_text(json.dumps(data), encoding="utf-8")
        return path

    env.json("run", str(wallet_campaign("wallet", None)), "--at", AT.isoformat())
    both = {
        cid
        for cid, rs in env.rows("wallet").items()
        if {r.channel for r in rs if r.state == "sent"} == {"coupon", "email"}
    }
    assert both
    # coupon + e-mail are one message: a cap of 2 holds back none of them
    env.json("run", str(env.campaign("after", {"frequency_cap": cap(2, recent)})), "--at", AT.isoformat())
    capped = {cid for cid, rs in env.rows("after").items() if rs[0].reason == "frequency_cap"}
    assert not capped & both
    # now two messages each: over a cap of 1 the e-mail stops, the wallet coupon still goes
    env.json("run", str(wallet_campaign("wallet-again", [cap(1, recent)])), "--at", AT.isoformat())
    again = env.rows("wallet-again")
    for cid in both:
        assert {(r.channel, r.state) for r in again[cid]} == {("coupon", "sent")}, cid
