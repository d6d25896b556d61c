"""Whose tick it is: the members one tick of a relative-date or event schedule is for.

Each is a condition added to the campaign's segment, compiled to SQL like the rest of it, so the audience still
streams from the database however many members there are.

* ``relative_to: birthday`` - members whose birthday falls ``days_before`` days after the tick's local date (in
  the schedule's zone); 29 February is celebrated on 28 February in other years.
* ``relative_to: signup_at`` - membership anniversaries: members who signed up (local date, in the schedule's zone)
  on that month and day of an *earlier* year, so the day of sign-up itself (0 years) is no anniversary. A sign-up on
  29 February is celebrated on 28 February in other years. Sign-ups before 1970 are not looked for.
* ``on: order_paid`` / ``on: member_joined`` - members with a paid order (``ordered_at``) or a sign-up
  (``signup_at``) at most ``within`` (default 1d) before the check and not after it, that no run of this campaign
  has answered yet. A run *answered* an event when it holds a delivery row of any state for the member and its
  scheduled time is at or after the event's time: that check saw the event (or a later one of the same member) and
  decided about the member. The watermark is therefore the ledger itself, not a time kept in a process: an order
  imported late (its ``ordered_at`` before a check that already ran) is found by the next check as long as it is
  still within ``within``; an order answered once never triggers again; two orders of one member before one check
  make one message. A dry run writes no ledger, so there each check takes only the events since the previous grid
  tick (``check_every`` earlier), which in a backtest - where every order "arrives" at its ``ordered_at`` - is the
  same set.
"""

from __future__ import annotations

from calendar import isleap
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, tzinfo

from sqlalchemy import ColumnElement, Connection, Engine, and_, exists, false, func, or_, select

from orchestrator.campaign.conditions import All, Compare, Node, Predicate
from orchestrator.campaign.loader import CampaignPlan
from orchestrator.campaign.schema import Schedule
from orchestrator.config import Settings
from orchestrator.db.models import Campaign, CampaignRun, Delivery
from orchestrator.durations import format_duration
from orchestrator.facts import FactContext, customers, orders
from orchestrator.scheduler.triggers import DEFAULT_CHECK_EVERY, DEFAULT_WITHIN, ticks
from orchestrator.timeutil import zone

FIRST_SIGNUP_YEAR = 1970  # the first year whose sign-ups have anniversaries (the product's earliest date)
# a longer list of keys in one statement costs more than computing facts for every member (and SQLite caps a
# statement's parameters at 32,766)
MAX_TICK_MEMBERS = 5000


def tick_condition(plan: CampaignPlan, at: datetime, shop_tz: tzinfo, *, dry_run: bool = False) -> tuple[str, Node]:
    """The condition that narrows ``plan``'s segment to the members of the tick at ``at``, with its funnel label;
    the schedule is relative (``relative_to``) or an event trigger (``on``)."""
    schedule = plan.campaign.schedule
    local_day = at.astimezone(zone(schedule.timezone)).date()
    if schedule.relative_to == "birthday":
        # the fact counts from the shop's date, the tick's day is the schedule's: shift by their difference
        days = schedule.days_before + (local_day - at.astimezone(shop_tz).date()).days
        return f"days_to_birthday = {days} (relative_to)", Compare("days_to_birthday", (("eq", days),))
    if schedule.relative_to == "signup_at":
        day = local_day + timedelta(days=schedule.days_before)
        tz = zone(schedule.timezone)
        return f"signup anniversary on {day.isoformat()} (relative_to)", Predicate(
            "signup anniversary", lambda: signup_anniversary(day, tz)
        )
    if schedule.on is not None:
        within = within_of(schedule)
        since = at - check_every_of(schedule) if dry_run else None
        what = "paid order" if schedule.on == "order_paid" else "sign-up"
        return f"{what} within {_words(within)} not yet answered (on: {schedule.on})", Predicate(
            schedule.on, lambda: new_events(schedule.on, plan.name, at, within, since)
        )
    raise ValueError(f"the schedule of {plan.name} is neither relative nor an event trigger")


def narrowed(plan: CampaignPlan, label: str, condition: Node, members: tuple[int, ...] | None = None) -> CampaignPlan:
    """``plan`` with ``condition`` added to its segment and its funnel; ``members``: the customers the condition
    alone selects (``tick_members``), when known."""
    return replace(
        plan,
        segment=All((plan.segment, condition)),
        conditions=[*plan.conditions, (label, condition)],
        members=members,
    )


def tick_members(
    engine: Engine, settings: Settings, catalog, plan: CampaignPlan, condition: Node, at: datetime
) -> tuple[int, ...] | None:
    """The members the tick at ``at`` can be for (``condition``, the tick's own, or a cheap superset of it); None
    when there are more than ``MAX_TICK_MEMBERS``. A tick's condition is selective (one day's birthdays, a few
    minutes' orders), and facts computed for these members alone cost a fraction of facts for every member: the
    campaign's own conditions are then evaluated for them only, and its funnel counts among them."""
    schedule = plan.campaign.schedule
    if schedule.on == "order_paid":
        # the buyers in the window, read off the (status, ordered_at) index; whether a run already answered an
        # order is left to the audience statement, which holds the whole condition
        statement = (
            select(orders.c.customer_pk)
            .where(
                orders.c.status == "paid", orders.c.ordered_at <= at, orders.c.ordered_at >= at - within_of(schedule)
            )
            .distinct()
            .order_by(orders.c.customer_pk)
        )
    else:
        from orchestrator.segments import SegmentCompiler  # the SQL layer loads only when a campaign runs

        compiler = SegmentCompiler(FactContext(at=at, settings=settings), catalog)
        statement = compiler.facts.select(customers.c.id, where=[compiler.compile(condition)]).order_by(customers.c.id)
    with engine.connect() as conn:
        found = conn.execute(statement.limit(MAX_TICK_MEMBERS + 1)).scalars().all()
    return tuple(found) if len(found) <= MAX_TICK_MEMBERS else None


def within_of(schedule: Schedule) -> timedelta:
    return schedule.within or DEFAULT_WITHIN


def check_every_of(schedule: Schedule) -> timedelta:
    return schedule.check_every or DEFAULT_CHECK_EVERY


# -- membership anniversaries ---------------------------------------------------------------------------------


def anniversary_in(signed_up: date, year: int) -> date:
    """The anniversary of a sign-up date in ``year``: 29 February falls on 28 February in other years."""
    try:
        return signed_up.replace(year=year)
    except ValueError:
        return date(year, 2, 28)


def signup_days_celebrated(day: date) -> Iterator[date]:
    """Every sign-up date (of an earlier year) whose anniversary is ``day``."""
    for year in range(FIRST_SIGNUP_YEAR, day.year):
        if (day.month, day.day) == (2, 29):  # a leap day: only leap-day sign-ups
            if isleap(year):
                yield date(year, 2, 29)
            continue
        yield date(year, day.month, day.day)
        if (day.month, day.day) == (2, 28) and not isleap(day.year) and isleap(year):
            yield date(year, 2, 29)


def signup_anniversary(day: date, tz: tzinfo) -> ColumnElement[bool]:
    """Members whose sign-up's local date (in ``tz``) has its anniversary on ``day``: one range of ``signup_at``
    per candidate date, exact across daylight saving time and readable by an index, with no date arithmetic in
    SQL (the engines differ)."""
    ranges = []
    for signed_up in signup_days_celebrated(day):
        start = datetime.combine(signed_up, datetime.min.time(), tz).astimezone(UTC)
        end = datetime.combine(signed_up + timedelta(days=1), datetime.min.time(), tz).astimezone(UTC)
        ranges.append(and_(customers.c.signup_at >= start, customers.c.signup_at < end))
    return or_(false(), *ranges)


# -- events ---------------------------------------------------------------------------------------------------


def event_time(event: str) -> ColumnElement[datetime]:
    return orders.c.ordered_at if event == "order_paid" else customers.c.signup_at


def answered(campaign: str, at: datetime, moment: ColumnElement[datetime]) -> ColumnElement[bool]:
    """A run of ``campaign`` other than the one at ``at``, scheduled at or after ``moment``, decided about the
    member: that check already answered the event at ``moment``."""
    return (
        exists()
        .where(
            Delivery.customer_pk == customers.c.id,
            CampaignRun.id == Delivery.run_pk,
            Campaign.id == CampaignRun.campaign_pk,
            Campaign.name == campaign,
            CampaignRun.scheduled_at >= moment,
            CampaignRun.scheduled_at != at,
        )
        .correlate_except(Delivery, CampaignRun, Campaign)
    )  # customers (and orders) come from the enclosing queries


def new_events(
    event: str, campaign: str, at: datetime, within: timedelta, since: datetime | None = None
) -> ColumnElement[bool]:
    """Members with an event in [at - within, at] (and after ``since`` when given) that no other run of the
    campaign answered."""
    lower = at - within
    moment = event_time(event)
    window = [moment <= at, moment >= lower]
    if since is not None:
        window.append(moment > since)
    if event == "order_paid":
        return exists().where(
            orders.c.customer_pk == customers.c.id,
            orders.c.status == "paid",
            *window,
            ~answered(campaign, at, moment),
        )
    return and_(moment.is_not(None), *window, ~answered(campaign, at, moment))


def next_event(conn: Connection, event: str, after: datetime, before: datetime) -> datetime | None:
    """The first event time in (after, before): where a backtest's next check has something to find."""
    moment = event_time(event)
    statement = select(func.min(moment)).where(moment > after, moment < before)
    if event == "order_paid":
        statement = statement.where(orders.c.status == "paid")
    found = conn.execute(statement).scalar()
    return found.astimezone(UTC) if found is not None else None


def event_ticks(conn: Connection, schedule: Schedule, start: datetime, end: datetime) -> Iterator[datetime]:
    """The checks in [start, end) that can find an event in a backtest: the first one (it looks back ``within``)
    and each first check at or after an event. The others would find nothing, so replay skips them instead of
    asking the database every minute of a year."""
    first = next(ticks(schedule, start, end), None)
    if first is None:
        return
    yield first
    cursor = first
    while True:
        found = next_event(conn, schedule.on, cursor, end)
        if found is None:
            return
        tick = next(ticks(schedule, found, end), None)
        if tick is None:
            return
        yield tick
        cursor = tick


def _words(value: timedelta) -> str:
    return format_duration(value)
