"""Follow-ups: later messages of a run to the members its steps reached, each ``after`` a delay, with exit
conditions (``follow_ups:`` in a campaign file).

A follow-up is planned per member from the ledger, when it comes due: the members it follows are those with a
delivery row of the run (its own messages, of the steps it names) that was sent, or held out as control. Its due
time is measured from when that earlier message was due - the run's scheduled time, or the end of its quiet-hours
deferral (``deferred_until``) - plus ``after``; never from the wall clock of sending, so a replay or a backtest
gives the answer live runs gave. Members whose earlier message shares a due time form one group, decided at one
time: the group's audience is one SQL statement with the follow-up's ``when`` / ``unless`` (and the follow-up
facts: ``ordered_since_contact``, ``redeemed_offer``, ``contacted_by``, ``outcome``) evaluated as of that time,
streamed in batches.

Each decision is written as delivery rows of the same run with ``follow_up`` = its name (and ``step`` = its name,
so that every listing and report shows it beside the steps): skipped ``when`` / ``unless``, held out (a member
the run held out as control is followed as control and never contacted), skipped by a policy (consent,
suppression, caps and quiet hours are checked again at the follow-up's time, as for any step), or pending /
deferred with the rendered message. The rows are unique per (run, member, channel, follow-up), written with the
offer in one transaction per batch; a member with a row for the follow-up is not decided again, so a crash, a
restart or a second process never sends one twice. A run that gets new messages is ``waiting`` again, and the
dispatcher (``orchestrator dispatch``, the scheduler's dispatch rounds) sends them.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, exists, false, func, literal, select, true, update
from sqlalchemy.orm import aliased

from orchestrator import ledger
from orchestrator.campaign.conditions import Compare
from orchestrator.campaign.loader import CampaignPlan, FollowUpPlan
from orchestrator.coupons.offer import give_back_unsent
from orchestrator.db.models import Campaign, CampaignRun, Coupon, Delivery
from orchestrator.durations import format_duration
from orchestrator.facts import FactContext, customers, orders
from orchestrator.recontact import CONTACTED_STATES
from orchestrator.segments import Audience, SegmentCompiler, apply_operator, customer_columns

WHEN = "when"  # skip reason: the follow-up's when: did not hold at its due time
UNLESS = "unless"  # skip reason: its unless: held
FOLLOWED_STATES = ("sent", "held_out")  # an earlier message a follow-up follows: sent, or held out as control
PENDING = "pending"  # dry-run: a follow-up whose time has not come


@dataclass
class FollowUpResult:
    """What one follow-up decided for one group of members (one run, one due time)."""

    campaign: str
    follow_up: str
    run_id: int
    due: datetime
    audience: int = 0
    control: int = 0
    messages: int = 0
    deferred: int = 0
    skipped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "follow_up": self.follow_up,
            "run_id": self.run_id,
            "due": self.due.isoformat(),
            "audience": self.audience,
            "control": self.control,
            "messages": self.messages,
            "deferred": self.deferred,
            "skipped": dict(self.skipped),
        }


class FollowUpCompiler(SegmentCompiler):
    """Conditions as of a follow-up's due time, with the facts about the member's part in the run followed."""

    def __init__(self, ctx: FactContext, catalog, run_pk: int | None, since: datetime, steps=None):
        super().__init__(ctx, catalog)
        self.run_pk = run_pk  # None: a dry run, which has no run (nothing issued, called or followed up yet)
        self.since = since  # when the member's first message of the run was due
        self.steps = steps  # a dry run: (the member's step index column, {step name: index})
        self._predicates.update(
            ordered_since_contact=self._ordered_since_contact,
            redeemed_offer=self._redeemed_offer,
            contacted_by=self._contacted_by,
            outcome=self._outcome,
        )

    @staticmethod
    def _as_bool(found: ColumnElement[bool], node: Compare) -> ColumnElement[bool]:
        flag = case((found, True), else_=False)
        return and_(true(), *(apply_operator(flag, op, value) for op, value in node.ops))

    def _ordered_since_contact(self, node: Compare) -> ColumnElement[bool]:
        found = exists().where(
            orders.c.customer_pk == customers.c.id,
            orders.c.status == "paid",
            orders.c.ordered_at >= self.since,
            orders.c.ordered_at <= self.ctx.at,
        )
        return self._as_bool(found, node)

    def _redeemed_offer(self, node: Compare) -> ColumnElement[bool]:
        if self.run_pk is None:
            return self._as_bool(false(), node)
        found = exists().where(
            Coupon.customer_pk == customers.c.id,
            Coupon.run_pk == self.run_pk,
            Coupon.redeemed_at.is_not(None),
            Coupon.redeemed_at <= self.ctx.at,
        )
        return self._as_bool(found, node)

    def _contacted_by(self, node: Compare) -> ColumnElement[bool]:
        step, follow_up = node.param("step"), node.param("follow_up")
        if self.run_pk is None:  # a dry run: the member's step says whether it would contact them
            column, indices = self.steps
            return self._as_bool(column == indices[step] if step else false(), node)
        which = Delivery.follow_up == follow_up if follow_up else and_(Delivery.follow_up == "", Delivery.step == step)
        found = exists().where(
            Delivery.run_pk == self.run_pk,
            Delivery.customer_pk == customers.c.id,
            Delivery.state.in_(CONTACTED_STATES),
            which,
        )
        return self._as_bool(found, node)

    def _outcome(self, node: Compare) -> ColumnElement[bool]:
        if self.run_pk is None:
            return false()
        return exists().where(
            Delivery.run_pk == self.run_pk,
            Delivery.customer_pk == customers.c.id,
            Delivery.outcome.is_not(None),
            *(apply_operator(Delivery.outcome, op, value) for op, value in node.ops),
        )


def _base_due() -> ColumnElement[datetime]:
    """When a member's earlier message of the run was due: the end of its deferral, else the run's time."""
    return func.min(func.coalesce(Delivery.deferred_until, CampaignRun.scheduled_at))


def followed(campaign_pk: int, follow_up: FollowUpPlan) -> Select:
    """Per (run, member) not yet decided for ``follow_up``: when their earlier message was due (``base_due``)
    and whether the run held them out (``control``)."""
    decided = aliased(Delivery)
    conditions = [
        CampaignRun.campaign_pk == campaign_pk,
        Delivery.follow_up == "",
        Delivery.state.in_(FOLLOWED_STATES),
        ~exists().where(
            decided.run_pk == Delivery.run_pk,
            decided.customer_pk == Delivery.customer_pk,
            decided.follow_up == follow_up.name,
        ),
    ]
    if follow_up.follows is not None:
        conditions.append(Delivery.step.in_(follow_up.follows))
    return (
        select(
            Delivery.run_pk.label("run_pk"),
            Delivery.customer_pk.label("customer_pk"),
            _base_due().label("base_due"),
            func.min(case((Delivery.state == "held_out", 1), else_=0)).label("control"),
        )
        .join(CampaignRun, CampaignRun.id == Delivery.run_pk)
        .where(*conditions)
        .group_by(Delivery.run_pk, Delivery.customer_pk)
    )


@dataclass(frozen=True)
class DueGroup:
    run_pk: int
    base_due: datetime
    members: int


def due_groups(conn, campaign_pk: int, follow_up: FollowUpPlan, now: datetime) -> list[DueGroup]:
    """The groups of members whose follow-up is due by ``now``, earliest first."""
    members = followed(campaign_pk, follow_up).subquery()
    rows = conn.execute(
        select(members.c.run_pk, members.c.base_due, func.count())
        .where(members.c.base_due <= now - follow_up.after)
        .group_by(members.c.run_pk, members.c.base_due)
        .order_by(members.c.base_due, members.c.run_pk)
    )
    return [DueGroup(run_pk, base_due, count) for run_pk, base_due, count in rows]


def next_due(engine, plans: list[CampaignPlan], after: datetime) -> datetime | None:
    """The earliest time after ``after`` at which a follow-up of these campaigns comes due, from the ledger: a
    replay stops there as a live scheduler would."""
    earliest: datetime | None = None
    with engine.connect() as conn:
        for plan in plans:
            campaign_pk = conn.execute(select(Campaign.id).where(Campaign.name == plan.name)).scalar()
            if campaign_pk is None:
                continue
            for follow_up in plan.follow_ups:
                members = followed(campaign_pk, follow_up).subquery()
                base = conn.execute(
                    select(func.min(members.c.base_due)).where(members.c.base_due > after - follow_up.after)
                ).scalar()
                if base is not None and (earliest is None or base + follow_up.after < earliest):
                    earliest = base + follow_up.after
    return earliest


class GroupAudience(Audience):
    """The members of one due group, with the follow-up's conditions as of its due time."""

    read_in_windows = False  # one group, read in one statement

    def __init__(self, engine, settings, plan, follow_up: FollowUpPlan, campaign_pk: int, group: DueGroup, catalog):
        super().__init__(engine, settings, plan, group.base_due + follow_up.after, catalog)
        self.follow_up = follow_up
        self.campaign_pk = campaign_pk
        self.group = group

    def _compiler(self) -> FollowUpCompiler:
        return FollowUpCompiler(self.ctx, self.catalog, self.group.run_pk, self.group.base_due)

    def statement(self) -> Select:
        compiler = self._compiler()
        members = followed(self.campaign_pk, self.follow_up).subquery()
        in_group = (
            select(members.c.customer_pk, members.c.control)
            .where(members.c.run_pk == self.group.run_pk, members.c.base_due == self.group.base_due)
            .subquery()
        )
        when, unless = self.follow_up.when, self.follow_up.unless
        columns = [
            *customer_columns(compiler.facts),
            in_group.c.control.label("control"),
            (case((compiler.compile(when), True), else_=False) if when else literal(True)).label("follow_up_when"),
            (case((compiler.compile(unless), True), else_=False) if unless else false()).label("follow_up_unless"),
        ]
        step = self.follow_up.step
        if step.guard is not None:
            columns.append(case((compiler.compile(step.guard), True), else_=False).label(f"guard_{step.index}"))
        # no membership filter: a member the run contacted is followed even if the data changed since
        return (
            select(*columns)
            .select_from(compiler.facts.from_clause().join(in_group, in_group.c.customer_pk == customers.c.id))
            .order_by(customers.c.id)
        )


def plan_due(service, plan: CampaignPlan, now: datetime) -> list[FollowUpResult]:
    """Decide every follow-up of ``plan`` due by ``now`` and write the decisions; nothing is sent here."""
    if not plan.follow_ups:
        return []
    with service.engine.connect() as conn:
        campaign_pk = conn.execute(select(Campaign.id).where(Campaign.name == plan.name)).scalar()
    if campaign_pk is None:
        return []
    results: list[FollowUpResult] = []
    runner = None
    try:
        for follow_up in plan.follow_ups:
            with service.engine.connect() as conn:
                groups = due_groups(conn, campaign_pk, follow_up, now)
            for group in groups:
                runner = runner or service.runner(plan)
                results.append(_decide_group(service, runner, plan, follow_up, campaign_pk, group))
    finally:
        if runner is not None:
            for channel in runner.channels.values():
                channel.close()
    return results


def _decide_group(service, runner, plan, follow_up: FollowUpPlan, campaign_pk: int, group: DueGroup):
    from orchestrator.pipeline import Candidate, RunResult, StepResult

    due = group.base_due + follow_up.after
    outcome = FollowUpResult(plan.name, follow_up.name, group.run_pk, due)
    tally = RunResult(campaign=plan.name, at=due, dry_run=False, timezone=service.settings.tz)
    tally.steps = [StepResult(s.name) for s in plan.steps] + [StepResult(f.name) for f in plan.follow_ups]
    run = {"campaign": plan.name, "at": due, "run_pk": group.run_pk, "campaign_pk": campaign_pk}
    audience = GroupAudience(
        service.engine, service.settings, plan, follow_up, campaign_pk, group, service.registry.facts
    )
    step = follow_up.step
    first_channel = next(iter(step.messages))
    reopened = False
    for batch in audience.batches(plan.campaign.dispatch.batch_size):
        intended: list[ledger.IntendedDelivery] = []
        candidates: list[Candidate] = []
        for customer in batch:
            outcome.audience += 1
            reason = None
            if not customer["follow_up_when"]:
                reason = WHEN
            elif customer["follow_up_unless"]:
                reason = UNLESS
            if reason is not None:
                outcome.skipped[reason] += 1
                intended.append(ledger.IntendedDelivery(customer["pk"], first_channel, step.name, "skipped", reason))
            else:
                candidates.append(Candidate(customer, step))
        with service.engine.begin() as conn:
            if candidates:
                lookups = runner.batch_lookups(conn, candidates, due)
                for (index, *_kind_variant), offer in runner.offers.items():
                    if index == step.index:
                        offer.prepare(conn, [c.customer for c in candidates], run, False)
                for candidate in candidates:
                    runner._decide(
                        conn,
                        candidate,
                        lookups,
                        tally,
                        run,
                        False,
                        intended,
                        0,
                        control=bool(candidate.customer["control"]),
                    )
            rows = [dataclasses.replace(d, follow_up=follow_up.name, due_at=due) for d in intended]
            ledger.record_intended(conn, group.run_pk, rows)
            # a coupon travels only with a message: one whose messages all failed to render is given back
            unsent = [c.grant.coupon_pk for c in candidates if c.render_failed and c.grant and c.grant.coupon_pk]
            give_back_unsent(conn, unsent)
            if not reopened and any(r.state in ("pending", "deferred") for r in rows):
                # the run has messages to send again: the dispatcher serves waiting runs
                conn.execute(
                    update(CampaignRun)
                    .where(CampaignRun.id == group.run_pk, CampaignRun.state == "done")
                    .values(state="waiting", finished_at=None)
                )
                reopened = True
    outcome.control = tally.control
    outcome.messages = tally.messages
    outcome.deferred = tally.deferred
    outcome.skipped.update(tally.skipped)
    return outcome


def recorded_plans(service, names: list[str] | None = None) -> tuple[list[CampaignPlan], list[str]]:
    """The campaigns with runs on record that have follow-ups, loaded from their files as they are now (what
    ``orchestrator dispatch`` plans), and a note for each file that could not be loaded."""
    from orchestrator.errors import InputError

    query = select(Campaign.name, Campaign.source_path, Campaign.definition).where(Campaign.source_path.is_not(None))
    if names is not None:
        query = query.where(Campaign.name.in_(names))
    with service.engine.connect() as conn:
        recorded = conn.execute(query.order_by(Campaign.name)).all()
    plans: list[CampaignPlan] = []
    notes: list[str] = []
    for name, path, definition in recorded:
        if not (definition or {}).get("follow_ups"):  # as last run: a campaign without follow-ups is not loaded
            continue
        try:
            plan = service.load(path)
        except InputError as exc:  # a campaign file gone or broken leaves its follow-ups waiting, not the rest
            notes.append(f"{name}: follow-ups not planned: {exc.render()}")
            continue
        if plan.follow_ups and plan.name == name:
            plans.append(plan)
    return plans, notes


def expected_audience(engine, settings, plan: CampaignPlan, follow_up: FollowUpPlan, at: datetime, catalog) -> int:
    """A dry run's estimate of a follow-up's audience for a run at ``at``: the run's audience in the steps it
    follows (control members too: they are followed as control) who satisfy ``when`` / ``unless`` at
    ``at + after``, before the contact policies. Nothing is on record for a dry run: no coupon was redeemed and
    no call answered, and ``contacted_by`` a step is being in that step."""
    base = Audience(engine, settings, plan, at, catalog).statement().subquery()
    indices = {s.name: s.index for s in plan.steps}
    follows = [indices[name] for name in follow_up.follows] if follow_up.follows else list(indices.values())
    compiler = FollowUpCompiler(
        FactContext(at=at + follow_up.after, settings=settings), catalog, None, at, (base.c.step_index, indices)
    )
    conditions = [base.c.step_index.in_(follows)]
    if follow_up.when is not None:
        conditions.append(compiler.compile(follow_up.when))
    if follow_up.unless is not None:
        conditions.append(~compiler.compile(follow_up.unless))
    statement = (
        select(func.count())
        .select_from(compiler.facts.from_clause().join(base, base.c.pk == customers.c.id))
        .where(*conditions)
    )
    with engine.connect() as conn:
        return int(conn.execute(statement).scalar_one())


def run_summary(engine, settings, plan: CampaignPlan, at: datetime, catalog, *, dry_run: bool, now: datetime):
    """What ``run`` / ``dry-run`` say about the campaign's follow-ups: each one's first due time, and whether it
    is due yet (``pending`` until then); a dry run whose follow-up is due by now (a backtest) also estimates its
    audience (``expected_audience``)."""
    summary = []
    for follow_up in plan.follow_ups:
        due = at + follow_up.after
        entry: dict[str, Any] = {"name": follow_up.name, "after": format_duration(follow_up.after), "due": due}
        if due > now:
            entry["audience"] = PENDING
        elif dry_run:
            entry["audience"] = expected_audience(engine, settings, plan, follow_up, at, catalog)
        else:
            entry["audience"] = "due"
        summary.append(entry)
    return summary
