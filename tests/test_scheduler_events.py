"""Event triggers, membership anniversaries, birthdays across the year's end and re-contact, fired through replay
(``orchestrator scheduler --from --until``) with controlled time, on SQLite and PostgreSQL.

Each test builds a handful of members and orders of its own, so that every expected message is visible where the
data is written."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, insert, select

from orchestrator.db.models import Campaign, CampaignRun, Customer, CustomerConsent, Delivery, Order
from tests.clitools import Cli

SHANGHAI = ZoneInfo("Asia/Shanghai")
LOADED = datetime(2024, 1, 1, tzinfo=UTC)


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


class Shop:
    """A tiny shop: members with an e-mail address and consent, their paid orders, and a campaigns folder."""

    def __init__(self, engine: Engine, db_url: str, tmp_path: Path):
        self.engine = engine
        self.folder = tmp_path / "campaigns"
        self.folder.mkdir()
        config = tmp_path / "orchestrator.yaml"
        config.write_text(
            "timezone: Asia/Shanghai\ntemplates: []\ncampaigns: campaigns\nchannels:\n  email:\n"
            f"    from: Shop <shop@example.com>\n    outbox: {tmp_path / 'outbox'}\ndispatch:\n  linger_seconds: 0\n",
            encoding="utf-8",
        )
        self.cli = Cli(db_url, config=str(config))
        self.keys: dict[str, int] = {}

    def member(self, customer_id: str, *, signup_at: datetime | None = None, birthday: date | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(Customer.__table__),
                {
                    "customer_id": customer_id,
                    "name": customer_id,
                    "email": f"{customer_id.lower()}@example.com",
                    "birthday": birthday,
                    "signup_at": signup_at,
                    "attributes": {},
                    "created_at": LOADED,
                    "updated_at": LOADED,
                },
            )
            pk = conn.execute(select(Customer.id).where(Customer.customer_id == customer_id)).scalar_one()
            conn.execute(
                insert(CustomerConsent.__table__),
                {"customer_pk": pk, "channel": "email", "opted_in": True, "updated_at": LOADED},
            )
        self.keys[customer_id] = pk

    def order(self, order_id: str, customer_id: str, ordered_at: datetime, status: str = "paid") -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(Order.__table__),
                {
                    "order_id": order_id,
                    "customer_pk": self.keys[customer_id],
                    "ordered_at": ordered_at,
                    "amount": 100,
                    "status": status,
                    "attributes": {},
                    "created_at": LOADED,
                    "updated_at": LOADED,
                },
            )

    def campaign(self, name: str, schedule: str, extra: str = "", segment: str = "{frequency: {gte: 0}}") -> None:
        (self.folder / f"{name}.yaml").write_text(
            f"name: {name}\nschedule: {schedule}\nsegment: {segment}\n{extra}"
            'message:\n  email: {subject: "Hi {{ customer.name }}", text: "Hello"}\n',
            encoding="utf-8",
        )

    def replay(self, start: str, until: str, *args: str) -> list[dict]:
        result = self.cli("scheduler", "--from", start, "--until", until, "--json", *args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["ticks"]

    def messages(self, campaign: str | None = None) -> list[tuple[datetime, str]]:
        """(run's scheduled time, customer id) of every message (sent or to be sent), in time order."""
        statement = (
            select(CampaignRun.scheduled_at, Customer.customer_id)
            .select_from(Delivery)
            .join(CampaignRun, CampaignRun.id == Delivery.run_pk)
            .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
            .join(Customer, Customer.id == Delivery.customer_pk)
            .where(Delivery.state.in_(("sent", "pending", "deferred")))
            .order_by(CampaignRun.scheduled_at, Customer.customer_id)
        )
        if campaign:
            statement = statement.where(Campaign.name == campaign)
        with self.engine.connect() as conn:
            return [(at.astimezone(SHANGHAI).replace(tzinfo=None), cid) for at, cid in conn.execute(statement)]

    def decisions(self, campaign: str) -> list[tuple[datetime, str, str, str | None]]:
        """(scheduled time, customer, state, reason) of every delivery row of a campaign."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(CampaignRun.scheduled_at, Customer.customer_id, Delivery.state, Delivery.reason)
                .select_from(Delivery)
                .join(CampaignRun, CampaignRun.id == Delivery.run_pk)
                .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
                .join(Customer, Customer.id == Delivery.customer_pk)
                .where(Campaign.name == campaign)
                .order_by(CampaignRun.scheduled_at, Customer.customer_id)
            )
            return [(at.astimezone(SHANGHAI).replace(tzinfo=None), c, s, r) for at, c, s, r in rows]

    def run_times(self, campaign: str) -> list[datetime]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(CampaignRun.scheduled_at)
                .join(Campaign, Campaign.id == CampaignRun.campaign_pk)
                .where(Campaign.name == campaign)
                .order_by(CampaignRun.scheduled_at)
            )
            return [at.astimezone(SHANGHAI).replace(tzinfo=None) for at in rows.scalars()]


@pytest.fixture
def shop(engine: Engine, db_url: str, tmp_path: Path, monkeypatch) -> Shop:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    return Shop(engine, db_url, tmp_path)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- event triggers ---------------------------------------------------------------------------------------------

AFTER_PURCHASE = '{"on": order_paid, within: 30m, check_every: 5m, timezone: Asia/Shanghai}'


def test_each_paid_order_triggers_one_message_at_the_first_check_after_it(shop: Shop):
    for member in ("A", "B", "C"):
        shop.member(member, signup_at=local("2025-01-01T00:00"))
    shop.campaign("after-purchase", AFTER_PURCHASE)
    shop.order("o1", "A", local("2025-06-02T10:03"))
    shop.order("o2", "B", local("2025-06-02T10:05"))  # exactly at a check: that check takes it
    shop.order("o3", "C", local("2025-06-02T10:06"), status="refunded")  # never counts
    shop.order("o4", "A", local("2025-06-02T10:41"))  # A again, in a later check: a message per order
    shop.order("o5", "B", local("2025-06-02T10:42"))  # B twice before one check: one message
    shop.order("o6", "B", local("2025-06-02T10:44"))
    ticks = shop.replay("2025-06-02T10:00", "2025-06-02T11:00")
    assert [(t["at"], t["audience"], t["messages"]) for t in ticks] == [
        ("2025-06-02T02:05:00+00:00", 2, 2),
        ("2025-06-02T02:45:00+00:00", 2, 2),
    ]
    assert shop.messages() == [
        (at("2025-06-02T10:05"), "A"),
        (at("2025-06-02T10:05"), "B"),
        (at("2025-06-02T10:45"), "A"),
        (at("2025-06-02T10:45"), "B"),
    ]
    # a check that finds nothing creates no run: only the two checks with an order have one
    assert shop.run_times("after-purchase") == [at("2025-06-02T10:05"), at("2025-06-02T10:45")]


def test_a_late_imported_order_is_found_by_the_next_check_within_its_window_and_never_twice(shop: Shop):
    for member in ("A", "B", "C", "D"):
        shop.member(member, signup_at=local("2025-01-01T00:00"))
    shop.campaign("after-purchase", AFTER_PURCHASE)
    shop.order("o1", "A", local("2025-06-02T10:03"))
    shop.replay("2025-06-02T10:00", "2025-06-02T10:08")  # the check of 10:05 ran: A
    # imported after that check: B's order from before it, C's from before the window, D's after it
    shop.order("o2", "B", local("2025-06-02T10:04"))
    shop.order("o3", "C", local("2025-06-02T09:20"))  # 50 minutes old at 10:10: older than within (30m)
    shop.order("o4", "D", local("2025-06-02T10:12"))
    shop.replay("2025-06-02T10:08", "2025-06-02T10:30")
    assert shop.messages() == [
        (at("2025-06-02T10:05"), "A"),
        (at("2025-06-02T10:10"), "B"),  # late, still within 30m: not missed
        (at("2025-06-02T10:15"), "D"),
    ]
    # restart safety: the whole range again fires nothing twice
    again = shop.replay("2025-06-02T10:00", "2025-06-02T10:30")
    assert all(t["fired"] is False for t in again), again
    assert len(shop.messages()) == 3


def test_splitting_a_range_in_two_gives_the_same_messages_as_one_range(shop: Shop, tmp_path: Path):
    for member in ("A", "B", "C"):
        shop.member(member, signup_at=local("2025-01-01T00:00"))
    orders = [("A", "10:02"), ("B", "10:29"), ("C", "10:30"), ("A", "10:31"), ("B", "11:10"), ("C", "11:54")]
    for i, (member, time) in enumerate(orders):
        shop.order(f"o{i}", member, local(f"2025-06-02T{time}"))
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    for folder, name in ((whole, "whole"), (halves, "halves")):
        folder.mkdir()
        shop.campaign(name, AFTER_PURCHASE)
        (shop.folder / f"{name}.yaml").rename(folder / f"{name}.yaml")
    shop.replay("2025-06-02T10:00", "2025-06-02T12:00", "--campaigns", str(whole))
    shop.replay("2025-06-02T10:00", "2025-06-02T10:31", "--campaigns", str(halves))
    shop.replay("2025-06-02T10:31", "2025-06-02T12:00", "--campaigns", str(halves))
    one, two = shop.messages("whole"), shop.messages("halves")
    assert one == two and len(one) == 6
    assert shop.run_times("whole") == shop.run_times("halves")


def test_a_member_who_joins_gets_one_welcome_within_the_window(shop: Shop):
    shop.member("A", signup_at=local("2025-06-02T10:01"))
    shop.member("B", signup_at=local("2025-06-02T10:07"))
    shop.member("OLD", signup_at=local("2025-06-01T10:00"))
    shop.campaign("welcome", '{"on": member_joined, within: 1h, check_every: 5m, timezone: Asia/Shanghai}')
    ticks = shop.replay("2025-06-02T10:00", "2025-06-02T12:00")
    assert [t["audience"] for t in ticks] == [1, 1]
    assert shop.messages() == [(at("2025-06-02T10:05"), "A"), (at("2025-06-02T10:10"), "B")]
    # a range starting later looks back `within` and finds nobody new: no run, no message
    assert shop.replay("2025-06-02T10:30", "2025-06-02T11:00") == []
    assert len(shop.messages()) == 2


def test_a_dry_run_replay_of_events_counts_each_order_once(shop: Shop):
    for member in ("A", "B"):
        shop.member(member, signup_at=local("2025-01-01T00:00"))
    shop.campaign("after-purchase", AFTER_PURCHASE)
    shop.order("o1", "A", local("2025-06-02T10:03"))
    shop.order("o2", "B", local("2025-06-02T10:13"))
    ticks = shop.replay("2025-06-02T10:00", "2025-06-02T11:00", "--dry-run")
    assert [(t["at"][11:16], t["audience"], t["state"]) for t in ticks] == [
        ("02:05", 1, "dry-run"),
        ("02:15", 1, "dry-run"),
    ]
    assert shop.run_times("after-purchase") == []


def test_recontact_never_on_an_event_campaign_sends_once_per_member(shop: Shop):
    shop.member("A", signup_at=local("2025-01-01T00:00"))
    shop.campaign("first-order-only", AFTER_PURCHASE, extra="recontact: never\n")
    shop.order("o1", "A", local("2025-06-02T10:03"))
    shop.order("o2", "A", local("2025-06-02T10:33"))
    shop.replay("2025-06-02T10:00", "2025-06-02T11:00")
    assert shop.decisions("first-order-only") == [
        (at("2025-06-02T10:05"), "A", "sent", None),
        (at("2025-06-02T10:35"), "A", "skipped", "recontact"),
    ]


# -- relative dates ---------------------------------------------------------------------------------------------

ANNIVERSARY = '{relative_to: signup_at, days_before: 0, time: "10:00", timezone: Asia/Shanghai}'


def test_membership_anniversaries_once_a_year_not_on_the_day_of_sign_up_and_29_february(shop: Shop):
    shop.member("ONE-YEAR", signup_at=local("2024-03-10T21:00"))
    shop.member("FIVE-YEARS", signup_at=local("2020-03-10T00:00"))
    shop.member("TODAY", signup_at=local("2025-03-10T08:00"))  # 0 years: no anniversary
    shop.member("NEXT-DAY", signup_at=local("2024-03-11T00:00"))
    shop.member("LEAP", signup_at=local("2020-02-29T12:00"))  # celebrated on 28 February in 2025
    shop.member("FEB-28", signup_at=local("2023-02-28T12:00"))
    shop.member("NO-SIGNUP")
    shop.campaign("anniversary", ANNIVERSARY)
    shop.replay("2025-02-27", "2025-03-12")
    assert shop.messages() == [
        (at("2025-02-28T10:00"), "FEB-28"),
        (at("2025-02-28T10:00"), "LEAP"),
        (at("2025-03-10T10:00"), "FIVE-YEARS"),
        (at("2025-03-10T10:00"), "ONE-YEAR"),
        (at("2025-03-11T10:00"), "NEXT-DAY"),
    ]
    # in a leap year the 29 February sign-up has its own day again
    shop.replay("2028-02-28", "2028-03-01")
    assert shop.messages()[5:] == [(at("2028-02-28T10:00"), "FEB-28"), (at("2028-02-29T10:00"), "LEAP")]
    # restart safety: replaying again sends nothing more
    shop.replay("2025-02-27", "2025-03-12")
    assert len(shop.messages()) == 7


def test_a_birthday_days_before_across_the_year_boundary_once_per_occurrence(shop: Shop):
    shop.member("JAN-2", signup_at=local("2024-01-01T00:00"), birthday=date(1990, 1, 2))
    shop.member("DEC-31", signup_at=local("2024-01-01T00:00"), birthday=date(1985, 12, 31))
    shop.member("JAN-3", signup_at=local("2024-01-01T00:00"), birthday=date(1992, 1, 3))
    shop.campaign("birthday", '{relative_to: birthday, days_before: 3, time: "09:00", timezone: Asia/Shanghai}')
    shop.replay("2025-12-27", "2026-01-02")
    assert shop.messages() == [
        (at("2025-12-28T09:00"), "DEC-31"),
        (at("2025-12-30T09:00"), "JAN-2"),
        (at("2025-12-31T09:00"), "JAN-3"),
    ]
    # the campaign moves to 2 days before at 18:00: the same occurrence is not celebrated twice (recontact
    # defaults to once per occurrence), and next year's is
    shop.campaign("birthday", '{relative_to: birthday, days_before: 2, time: "18:00", timezone: Asia/Shanghai}')
    shop.replay("2025-12-29", "2026-01-02")
    decisions = [d for d in shop.decisions("birthday") if d[0].hour == 18]
    assert sorted((c, s, r) for _, c, s, r in decisions) == [
        ("DEC-31", "skipped", "recontact"),
        ("JAN-2", "skipped", "recontact"),
        ("JAN-3", "skipped", "recontact"),
    ]
    shop.replay("2026-12-28", "2026-12-30")
    assert shop.messages()[-1] == (at("2026-12-29T18:00"), "DEC-31")


# -- re-contact --------------------------------------------------------------------------------------------------

WEEKLY = '{cron: "0 10 * * MON", timezone: Asia/Shanghai}'
MONDAYS = ("2025-06-02", "2025-06-09", "2025-06-16", "2025-06-23")


def weekly_shop(shop: Shop, recontact: str | None) -> None:
    for i in range(40):
        shop.member(f"M{i:02}", signup_at=local("2025-01-01T00:00"))
    extra = "control_group: 25%\n" + (f"recontact: {recontact}\n" if recontact else "")
    shop.campaign("weekly", WEEKLY, extra=extra)


def per_week(shop: Shop) -> list[Counter]:
    weeks: dict[datetime, Counter] = {}
    for when, _, state, reason in shop.decisions("weekly"):
        weeks.setdefault(when, Counter())[reason if state == "skipped" else state] += 1
    return [weeks[k] for k in sorted(weeks)]


def test_recontact_never_is_the_default_and_control_members_count_as_contacted(shop: Shop):
    weekly_shop(shop, None)
    shop.replay(MONDAYS[0], "2025-06-24")
    weeks = per_week(shop)
    first = weeks[0]
    assert first["held_out"] > 0 and first["sent"] > 0 and first["sent"] + first["held_out"] == 40
    assert weeks[1:] == [Counter(recontact=40)] * 3
    # a member who joins the segment later is contacted once
    shop.member("LATE", signup_at=local("2025-06-20T00:00"))
    shop.replay("2025-06-30", "2025-07-08")
    late = [d for d in shop.decisions("weekly") if d[1] == "LATE"]
    assert [(d[2], d[3]) for d in late][1:] == [("skipped", "recontact")] and late[0][2] in ("sent", "held_out")


def test_recontact_always_contacts_every_run(shop: Shop):
    weekly_shop(shop, "always")
    shop.replay(MONDAYS[0], "2025-06-24")
    weeks = per_week(shop)
    assert len(weeks) == 4 and weeks[1:] == [weeks[0]] * 3 and weeks[0]["sent"] > 0


def test_recontact_after_a_duration(shop: Shop):
    weekly_shop(shop, "{after: 14d}")
    shop.replay(MONDAYS[0], "2025-06-24")
    weeks = per_week(shop)
    # contacted on the 2nd, held back on the 9th (7 days later), contacted again on the 16th (14 days: the window
    # is over, as a frequency cap's), control members held out again by the same hash; held back on the 23rd
    assert weeks[1] == Counter(recontact=40) and weeks[3] == Counter(recontact=40)
    assert weeks[2] == weeks[0] and weeks[0]["held_out"] > 0


def test_recontact_is_checked_in_a_dry_run_too(shop: Shop):
    weekly_shop(shop, None)
    shop.replay(MONDAYS[0], "2025-06-03")
    [tick] = shop.replay(MONDAYS[1], "2025-06-10", "--dry-run")
    assert tick["skipped"] == {"recontact": 40} and tick["messages"] == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sometimes", "write recontact: never, always, or {after: DURATION}"),
        ("{after: 3x}", "is not a duration"),
        ("{every: 3d}", "write recontact: never, always, or {after: DURATION}"),
    ],
)
def test_a_bad_recontact_is_an_input_error_with_its_line(shop: Shop, value: str, message: str):
    shop.campaign("weekly", WEEKLY, extra=f"recontact: {value}\n")
    result = shop.cli("validate", str(shop.folder / "weekly.yaml"))
    assert result.exit_code == 2
    output = result.output + result.stderr
    assert "weekly.yaml:4" in output and message in output, output


def test_an_event_window_shorter_than_its_checks_is_an_input_error(shop: Shop):
    shop.campaign("after-purchase", '{"on": order_paid, within: 5m, check_every: 10m}')
    result = shop.cli("validate", str(shop.folder / "after-purchase.yaml"))
    output = result.output + result.stderr
    assert result.exit_code == 2 and "after-purchase.yaml:2" in output, output
    assert "within (5m) is shorter than check_every (10m)" in output


def test_firing_every_check_of_the_grid_gives_what_replay_gives(shop: Shop, engine: Engine, tmp_path: Path):
    """A live loop asks every check (``fire`` on each grid tick, as replay's building blocks); replay asks only
    those that can find an event. Both give the same messages, and the empty checks open no run."""
    from orchestrator.config import load_settings
    from orchestrator.scheduler.campaign_files import load_all
    from orchestrator.scheduler.replay import EMPTY, due_ticks, fire
    from orchestrator.service import Orchestrator

    for member in ("A", "B", "C"):
        shop.member(member, signup_at=local("2025-01-01T00:00"))
    for i, (member, time) in enumerate([("A", "10:02"), ("B", "10:29"), ("C", "10:30"), ("A", "10:31")]):
        shop.order(f"o{i}", member, local(f"2025-06-02T{time}"))
    every, replayed = tmp_path / "every", tmp_path / "replayed"
    for folder, name in ((every, "every"), (replayed, "replayed")):
        folder.mkdir()
        shop.campaign(name, AFTER_PURCHASE)
        (shop.folder / f"{name}.yaml").rename(folder / f"{name}.yaml")
    shop.replay("2025-06-02T10:00", "2025-06-02T11:00", "--campaigns", str(replayed))

    service = Orchestrator(load_settings(shop.cli.config), engine)
    start, end = local("2025-06-02T10:00"), local("2025-06-02T11:00")
    checks = due_ticks(load_all(service, every), start, end)
    assert len(checks) == 12  # every 5 minutes, without asking the database
    states = [fire(service, check, dry_run=False)["state"] for check in checks]
    assert states.count(EMPTY) == 9
    assert (
        shop.run_times("every")
        == shop.run_times("replayed")
        == [
            at("2025-06-02T10:05"),
            at("2025-06-02T10:30"),
            at("2025-06-02T10:35"),
        ]
    )
    assert shop.messages("every") == shop.messages("replayed")


def test_an_event_trigger_without_within_takes_a_day(shop: Shop):
    from orchestrator.campaign.schema import Schedule
    from orchestrator.scheduler.triggers import describe

    assert describe(Schedule(on="member_joined")).startswith("on member_joined within 1d, checked every 1m")
    shop.member("A", signup_at=local("2025-06-01T10:05"))  # 23h55m before the check of 10:00 the next day
    shop.member("B", signup_at=local("2025-06-01T09:55"))  # a day and 5 minutes: too old
    shop.campaign("welcome", '{"on": member_joined}')
    [tick] = shop.replay("2025-06-02T10:00", "2025-06-02T10:01")
    assert tick["audience"] == 1 and shop.messages() == [(at("2025-06-02T10:00"), "A")]


def test_a_tick_for_more_members_than_it_looks_up_gives_the_same_messages(shop: Shop, monkeypatch):
    """A tick's members are looked up first so that facts are computed for them alone; past
    ``MAX_TICK_MEMBERS`` the tick computes them for every member instead, with the same result."""
    from orchestrator.scheduler import audiences

    for i in range(4):
        shop.member(f"M{i}", signup_at=local("2024-01-01T00:00"), birthday=date(1990, 3, 5))
        shop.order(f"o{i}", f"M{i}", local(f"2025-0{i + 1}-10T12:00"))
    shop.member("OTHER", signup_at=local("2024-01-01T00:00"), birthday=date(1990, 3, 6))  # not their birthday
    shop.order("o-other", "OTHER", local("2025-01-10T12:00"))
    shop.member("NO-ORDER", signup_at=local("2024-01-01T00:00"), birthday=date(1990, 3, 5))  # not in the segment
    shop.campaign(
        "birthday",
        '{relative_to: birthday, days_before: 0, time: "09:00", timezone: Asia/Shanghai}',
        segment="{frequency: {gte: 1}}",
        extra="recontact: always\n",
    )
    looked_up = shop.replay("2026-03-05", "2026-03-06")
    assert [t["audience"] for t in looked_up] == [4]
    monkeypatch.setattr(audiences, "MAX_TICK_MEMBERS", 2)
    shop.replay("2027-03-05", "2027-03-06")
    assert [cid for _, cid in shop.messages()] == ["M0", "M1", "M2", "M3"] * 2
    with shop.engine.connect() as conn:
        summaries = [s for s in conn.execute(select(CampaignRun.summary).order_by(CampaignRun.id)).scalars()]
    # the funnel of a tick whose members were looked up counts among them; the other among every member
    assert [(c["alone"], c["cumulative"]) for c in summaries[0]["conditions"]] == [(4, 4), (5, 4)]
    assert [(c["alone"], c["cumulative"]) for c in summaries[1]["conditions"]] == [(5, 5), (5, 4)]
