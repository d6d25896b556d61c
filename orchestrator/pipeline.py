"""One campaign run: segment -> contact policies -> control group -> offer -> render -> dispatch.

``run`` and ``dry_run`` are the same code path. A dry run writes nothing and sends nothing; a real run writes
the run and, per batch of the audience, every decision as a delivery row - with the rendered message of each one
to be sent - before anything is sent, so that running it again with the same ``--at`` continues the same run
instead of starting a second one. Where the batches are planned and sent is the executor's business
(``orchestrator.executors``): in-process, after each batch is written, the dispatcher (``orchestrator.dispatch``)
sends what is due and at the end waits for retries up to ``dispatch.linger_seconds``; under Celery, workers plan
partitions of the audience (``plan_range``) and then send. The audience streams through in
batches; nothing here holds the whole audience in memory.

A member in their quiet hours is decided like any other (policies, control group, offer) but their delivery rows
are written ``deferred`` with ``deferred_until`` instead of ``pending``, and nothing is sent to them by the run;
``RunResult.deferred`` counts those rows (messages, like ``messages``), ``StepResult.deferred`` per channel, and
``RunResult.deferred_window`` holds the earliest and latest ``deferred_until``. ``orchestrator dispatch`` sends
them once their time has come.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, func, select

from orchestrator import ledger, policies, recontact, variants
from orchestrator.campaign.loader import CampaignPlan, StepPlan, VariantPlan
from orchestrator.channels.base import Channel, RenderedMessage
from orchestrator.config import Settings
from orchestrator.coupons.offer import give_back_unsent
from orchestrator.db.models import Delivery
from orchestrator.dispatch.dispatcher import DrainReport
from orchestrator.masking import mask_contact, mask_text
from orchestrator.offers import Grant, OfferKind, OfferTally, Withheld
from orchestrator.plugin_manager import Registry
from orchestrator.progress import SILENT, Progress
from orchestrator.rendering import TemplateRenderError
from orchestrator.timeutil import utcnow

if TYPE_CHECKING:
    from orchestrator.executors.base import Executor

RENDER_FAILED = "render_failed"  # a delivery whose template failed on this customer's data (reason; outcome count)
EMPTY = "empty"  # the state of a run not opened because its audience is nobody (``execute(open_if_empty=False)``)
OFFER_SKIP = "offer_"  # a member withheld by the offer is skipped with reason offer_<why>, e.g. offer_budget


@dataclass
class StepResult:
    name: str
    audience: int = 0
    channels: Counter = field(default_factory=Counter)
    deferred: Counter = field(default_factory=Counter)  # messages deferred by quiet hours, per channel
    offers: OfferTally = field(default_factory=OfferTally)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "audience": self.audience,
            "channels": dict(self.channels),
            "deferred": dict(self.deferred),
            "offers": {
                "issued": self.offers.issued,
                "withheld": dict(self.offers.withheld),
                "face_value": self.offers.face_value,
            },
        }


@dataclass
class RunResult:
    campaign: str
    at: datetime
    dry_run: bool
    audience: int = 0
    control: int = 0
    steps: list[StepResult] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    messages: int = 0
    deferred: int = 0  # messages deferred by quiet hours: written, not sent now
    deferred_window: tuple[datetime, datetime] | None = None  # earliest and latest deferred_until
    outcomes: Counter = field(default_factory=Counter)  # sent / failed / retrying / already_<state>, real runs
    samples: list[dict[str, Any]] = field(default_factory=list)
    # what the run's new messages will cost: messages and SMS segments per channel, priced from the config
    planned: Counter = field(default_factory=Counter)
    segments: Counter = field(default_factory=Counter)
    prices: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # channel -> channels.<name> config
    currency: str = ""
    timezone: tzinfo | None = None  # the shop's, for times shown to people
    run_id: int | None = None
    resumed: bool = False
    winners: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> the A/B winner rule's decision
    state: str | None = None  # the run's state afterwards: done, or waiting (messages left for `dispatch`)
    follow_ups: list[dict[str, Any]] = field(default_factory=list)  # each follow-up: when due, and whether yet
    dispatch: DrainReport | None = None

    def cost(self) -> dict[str, Decimal]:
        """Estimated send cost per channel: ``cost_per_message`` × messages + ``cost_per_segment`` × segments
        (from ``channels.<name>`` in the config); channels without a price are left out."""
        costs: dict[str, Decimal] = {}
        for channel, count in self.planned.items():
            price = self.prices.get(channel) or {}
            per_message, per_segment = price.get("cost_per_message"), price.get("cost_per_segment")
            if per_message is None and per_segment is None:
                continue
            total = Decimal(str(per_message or 0)) * count + Decimal(str(per_segment or 0)) * self.segments[channel]
            costs[channel] = total.quantize(Decimal("0.01"))
        return costs

    def deferred_until(self) -> dict[str, datetime] | None:
        """When the deferred messages go out: the earliest and latest ``deferred_until``, in the shop's zone."""
        if self.deferred_window is None:
            return None
        earliest, latest = (t.astimezone(self.timezone) for t in self.deferred_window)
        return {"earliest": earliest, "latest": latest}

    def note_deferred(self, until: datetime) -> None:
        earliest, latest = self.deferred_window or (until, until)
        self.deferred_window = (min(earliest, until), max(latest, until))

    def to_dict(self) -> dict[str, Any]:
        offers = OfferTally()
        for step in self.steps:
            offers.issued += step.offers.issued
            offers.face_value += step.offers.face_value
            for reason, n in step.offers.withheld.items():
                offers.withheld[reason] = offers.withheld.get(reason, 0) + n
        channels: Counter = Counter()
        for step in self.steps:
            channels.update(step.channels)
        data = {
            "campaign": self.campaign,
            "at": self.at,
            "dry_run": self.dry_run,
            "audience": self.audience,
            "control": self.control,
            "steps": [s.to_dict() for s in self.steps],
            "conditions": self.conditions,
            "skipped": dict(self.skipped),
            "messages": self.messages,
            "deferred": self.deferred,
            "deferred_until": self.deferred_until(),
            "channels": dict(channels),
            "offers": {"issued": offers.issued, "withheld": offers.withheld, "face_value": offers.face_value},
            "sms_segments": sum(self.segments.values()),
            "cost": self.cost(),
            "currency": self.currency,
            "samples": self.samples,
        }
        if self.winners:
            data["winners"] = self.winners
        if self.follow_ups:
            data["follow_ups"] = self.follow_ups
        if not self.dry_run:
            data.update(run_id=self.run_id, resumed=self.resumed, outcomes=dict(self.outcomes), state=self.state)
            if self.dispatch is not None and (self.dispatch.open or self.dispatch.paused):
                data.update(open=dict(self.dispatch.open), paused=dict(self.dispatch.paused))
        return data


@dataclass
class Candidate:
    """One audience member on their way through the stages."""

    customer: dict[str, Any]
    step: StepPlan
    plan: policies.ContactPlan | None = None
    grant: Grant | None = None
    deferred_until: datetime | None = None  # set when quiet hours defer this member
    render_failed: bool = False  # a message of this member failed to render (that row carries no offer)
    variant: VariantPlan | None = None  # the step's A/B variant of this member, when the step has variants

    @property
    def messages(self) -> Mapping[str, Any]:
        return self.variant.messages if self.variant is not None else self.step.messages

    @property
    def variant_name(self) -> str | None:
        return self.variant.name if self.variant is not None else None


class CampaignRunner:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        plan: CampaignPlan,
        channels: Mapping[str, Channel],
        offers: Mapping[tuple, OfferKind],
        build_context,
        registry: Registry,
    ):
        self.engine = engine
        self.registry = registry  # the plugins of the Orchestrator this run belongs to, never a global
        self.settings = settings
        self.plan = plan
        self.channels = channels
        self.offers = offers  # (step index, offer kind[, variant with its own offer]) -> offer instance
        self.build_context = build_context  # (customer, step, channel, grant, at) -> template context
        self.progress: Progress = SILENT  # members planned and messages sent, for a bar on the terminal
        # the campaign's own dispatch settings, else the config's defaults; transactional bypasses both
        dispatch, defaults = plan.campaign.dispatch, settings.policies
        transactional = dispatch.transactional
        cap_setting = dispatch.frequency_cap if dispatch.frequency_cap is not None else defaults.frequency_cap
        self.caps = [] if transactional else policies.caps_of(cap_setting)
        self.quiet = None if transactional else policies.QuietHours.parse(dispatch.quiet_hours or defaults.quiet_hours)
        self.winning: dict[str, VariantPlan] = {}  # step -> the variant its winner rule chose, for this run
        self.recontact = recontact.rule_of(plan.campaign)  # transactional or not: it is the campaign's own rule
        self.executor: Executor | None = None  # None: the one the config names (``executors.for_settings``)
        # the plan was narrowed to one scheduler tick's members (``scheduler.replay.tick_plan``): a worker
        # planning a partition narrows the campaign file's plan the same way
        self.tick = False

    # -- the stages -------------------------------------------------------------------------------------------
    def _contact(self, candidate: Candidate, lookups: policies.BatchLookups) -> policies.ContactPlan:
        preferred = self.plan.campaign.dispatch.channels
        names = list(candidate.step.messages)
        if preferred:
            names = [n for n in preferred if n in names] + [n for n in names if n not in preferred]
        return policies.plan_contact(
            candidate.customer,
            [self.channels[n] for n in names],
            lookups,
            self.plan.campaign.dispatch.strategy,
        )

    def _offer_kind(self, candidate: Candidate) -> OfferKind | None:
        """The offer made to this member: their variant's own, else the step's."""
        own = candidate.variant.offer if candidate.variant is not None else None
        block = own or candidate.step.offer
        if not block:
            return None
        key = (candidate.step.index, next(iter(block)))
        return self.offers[(*key, candidate.variant.name) if own else key]

    def _assign_variant(self, candidate: Candidate) -> None:
        if candidate.step.variants:
            candidate.variant = self.winning.get(candidate.step.name) or variants.assign(
                self.plan.name, candidate.step.name, candidate.customer["customer_id"], candidate.step.variants
            )

    def _offer(self, conn: Connection, candidate: Candidate, run: Mapping[str, Any], dry: bool):
        offer = self._offer_kind(candidate)
        return offer.grant(conn, candidate.customer, run, dry) if offer is not None else None

    def _winning_variants(self, at: datetime, result: RunResult) -> dict[str, VariantPlan]:
        """Steps whose ``winner:`` rule has chosen a variant from earlier runs: that variant for all their members."""
        if not any(step.winner is not None for step in self.plan.steps):
            return {}
        from orchestrator.results.winner import decide  # the results layer loads only for a winner rule

        decisions = decide(self.engine, self.settings, self.plan.name, self.plan.steps, at)
        winning: dict[str, VariantPlan] = {}
        for step in self.plan.steps:
            decision = decisions.get(step.name)
            if decision is not None:
                winning[step.name] = next(v for v in step.variants if v.name == decision.variant)
                result.winners[step.name] = decision.to_dict()
        return winning

    def _render(self, candidate: Candidate, channel_name: str, at: datetime) -> RenderedMessage:
        context = self.build_context(candidate.customer, candidate.step, channel_name, candidate.grant, at)
        return self.channels[channel_name].render(candidate.messages[channel_name], context)

    # -- a run ------------------------------------------------------------------------------------------------
    def audience(self, at: datetime, pk_range: tuple[int | None, int | None] | None = None):
        """The campaign's audience as of ``at`` (only customer keys in ``pk_range``, bounds inclusive, if given)."""
        from orchestrator.segments import Audience, facts_read  # the SQL layer loads only when a campaign runs

        facts = facts_read(self.plan, self.channels, self.offers.values())  # compute only the facts read
        return Audience(self.engine, self.settings, self.plan, at, self.registry.facts, facts, pk_range=pk_range)

    def new_result(self, at: datetime, *, dry_run: bool) -> RunResult:
        result = RunResult(
            campaign=self.plan.name,
            at=at,
            dry_run=dry_run,
            prices=self.settings.channels,
            currency=self.settings.currency,
            timezone=self.settings.tz,
        )
        result.steps = [StepResult(step.name) for step in self.plan.steps]
        return result

    def execute(
        self, at: datetime, *, dry_run: bool, sample: int = 3, send: bool = True, open_if_empty: bool = True
    ) -> RunResult:
        """Plan the run (and, unless ``send`` is False, dispatch it); ``dry_run`` writes and sends nothing. With
        ``open_if_empty`` False, an audience of nobody (the funnel says so) opens no run: the result's ``state``
        is ``EMPTY`` and its ``run_id`` None (an event check that found nobody). The configured executor
        (``executor:``) plans and sends a real run; a dry run is always planned here."""
        from orchestrator.executors import IN_PROCESS, for_settings

        executor = IN_PROCESS if dry_run else (self.executor or for_settings(self.settings, self.engine))
        audience = self.audience(at)
        result = self.new_result(at, dry_run=dry_run)
        self.winning = self._winning_variants(at, result)
        result.conditions = audience.funnel()
        if not open_if_empty and result.conditions and result.conditions[-1]["cumulative"] == 0:
            result.state = EMPTY
            return result
        run: dict[str, Any] = {"campaign": self.plan.name, "at": at}
        if not dry_run:
            with self.engine.begin() as conn:
                campaign_pk = ledger.upsert_campaign(
                    conn,
                    self.plan.name,
                    self.plan.file,
                    self.plan.campaign.model_dump(mode="json"),
                    self.plan.content_hash,
                )
            ref = ledger.open_run(self.engine, campaign_pk, at, self.plan.content_hash)
            result.run_id, result.resumed = ref.pk, not ref.created
            run.update(run_pk=ref.pk, campaign_pk=campaign_pk)
        try:
            executor.plan_and_send(self, audience, result, run, sample=sample, send=send and not dry_run)
        finally:
            for channel in self.channels.values():
                channel.close()
        if not dry_run:
            if result.dispatch is not None:
                result.outcomes.update(result.dispatch.outcomes)
            with self.engine.connect() as conn:  # the run's deferred rows, also those an earlier invocation wrote
                result.deferred_window = _deferred_window(conn, result.run_id)
            result.state = ledger.finish_run(self.engine, result.run_id, _json_summary(result))
        if self.plan.follow_ups:
            from orchestrator.followups import run_summary  # loads only for a campaign with follow-ups

            result.follow_ups = run_summary(
                self.engine, self.settings, self.plan, at, self.registry.facts, dry_run=dry_run, now=utcnow()
            )
        return result

    def plan_range(self, at: datetime, run: Mapping[str, Any], pk_range: tuple[int | None, int | None]) -> RunResult:
        """Plan the members of an open run whose customer keys are in ``pk_range``, sending nothing: one partition
        of a run planned by a Celery worker. What it decided is counted in the result returned (the coordinator
        adds the partitions up). Planning a partition again continues it: members already in the ledger are
        counted from it, never decided twice."""
        result = self.new_result(at, dry_run=False)
        result.run_id = run["run_pk"]
        self.winning = self._winning_variants(at, result)
        try:
            for batch in self.audience(at, pk_range).batches(self.plan.campaign.dispatch.batch_size):
                self.plan_batch(batch, result, dict(run), sample=0)
        finally:
            for channel in self.channels.values():
                channel.close()
        return result

    def plan_batch(self, batch: list[dict[str, Any]], result: RunResult, run, *, sample: int) -> None:
        """Decide one batch of the audience (written to the ledger unless the run is a dry run)."""
        self._batch(batch, result, run, result.at, result.dry_run, sample)

    def _batch(self, batch: list[dict[str, Any]], result: RunResult, run, at, dry_run: bool, sample: int) -> None:
        candidates: list[Candidate] = []
        unassigned: list[ledger.IntendedDelivery] = []
        for customer in batch:
            result.audience += 1
            step_index = customer.get("step_index")
            if step_index is None:
                result.skipped[policies.NO_STEP] += 1
                # recorded on the campaign's first channel: every skip is in the ledger with its reason
                first = next(iter(self.plan.steps[0].messages))
                unassigned.append(ledger.IntendedDelivery(customer["pk"], first, None, "skipped", policies.NO_STEP))
                continue
            step = self.plan.steps[step_index]
            result.steps[step_index].audience += 1
            candidates.append(Candidate(customer, step))
        if not dry_run and unassigned:
            with self.engine.begin() as conn:
                ledger.record_intended(conn, run["run_pk"], unassigned)
        if not candidates:
            return
        with self.engine.begin() as conn:
            recorded = (
                {} if dry_run else ledger.recorded_for(conn, run["run_pk"], [c.customer["pk"] for c in candidates])
            )
            fresh = [c for c in candidates if c.customer["pk"] not in recorded]
            lookups = self.batch_lookups(conn, fresh, at)
            held = recontact.held_back(conn, self.plan.name, at, [c.customer["pk"] for c in fresh], self.recontact)
            for (index, *_kind_variant), offer in self.offers.items():
                members = [c.customer for c in fresh if c.step.index == index and c.customer["pk"] not in held]
                if members:
                    offer.prepare(conn, members, run, dry_run)
            intended: list[ledger.IntendedDelivery] = []
            for candidate in candidates:
                rows = recorded.get(candidate.customer["pk"])
                if rows is not None:
                    self._replay(conn, candidate, rows, result)
                else:
                    self._decide(conn, candidate, lookups, result, run, dry_run, intended, sample, held)
            if not dry_run:
                ledger.record_intended(conn, run["run_pk"], intended)
                # a coupon exists only with its delivery: one whose messages all failed to render travels with
                # nothing, and give_back_unsent voids it (a coupon another message carries is kept)
                unsent = [c.grant.coupon_pk for c in candidates if c.render_failed and c.grant and c.grant.coupon_pk]
                give_back_unsent(conn, unsent)

    def _replay(self, conn, candidate: Candidate, rows: list[ledger.RecordedDelivery], result: RunResult) -> None:
        """A customer this run already decided about (an earlier, interrupted invocation): count what the ledger
        says and never decide again, so that a resumed run issues no second offer and sends nothing twice."""
        first = rows[0]
        if first.state == "skipped":
            result.skipped[first.reason or "unknown"] += 1
            if first.reason and first.reason.startswith(OFFER_SKIP):  # withheld by the offer: count it there too
                result.steps[candidate.step.index].offers.add(Withheld(first.reason.removeprefix(OFFER_SKIP)))
            return
        if first.state == "held_out":
            result.control += 1
            return
        self._assign_variant(candidate)  # the same variant as the earlier invocation: it is a pure function
        if first.coupon_pk is not None and (offer := self._offer_kind(candidate)) is not None:
            candidate.grant = offer.recall(conn, first.coupon_pk)
            result.steps[candidate.step.index].offers.add(candidate.grant)
        if first.state == "deferred":
            result.deferred += len(rows)
            for row in rows:
                result.steps[candidate.step.index].deferred[row.channel] += 1
            return
        for row in rows:
            self._count_message(candidate, row.channel, result)
            if row.state != "pending":  # pending ones are the dispatcher's to send and count
                result.outcomes["already_" + row.state] += 1

    def batch_lookups(self, conn, candidates: list[Candidate], at: datetime) -> policies.BatchLookups:
        """Consents, suppressions and cap counts of ``candidates`` as of ``at``, read once for the batch."""
        return policies.BatchLookups(
            conn,
            [c.customer["pk"] for c in candidates],
            [c.customer.get(f) for c in candidates for f in ("email", "phone", "wechat_openid")],
            self.caps,
            at,
            policies.not_messages(self.registry.channels, self.settings.channels),
        )

    def _decide(
        self,
        conn,
        candidate: Candidate,
        lookups,
        result: RunResult,
        run,
        dry_run,
        intended,
        sample,
        held=frozenset(),
        control: bool | None = None,
    ) -> None:
        """Policies, control group, offer and rendering for one customer, written to ``intended``. ``held``: the
        batch's members the campaign's recontact rule holds back. Whether the member may be reached at all (a
        contact, consent, not suppressed) is decided before it, so an unsubscribed member is reported as
        ``suppressed`` whatever else holds; then the recontact rule; then frequency caps. ``control``: whether the
        member is in the control group when that is already decided (a follow-up follows the run's decision);
        None draws it."""
        customer, step = candidate.customer, candidate.step
        first_channel = next(iter(step.messages))
        candidate.plan = plan = self._contact(candidate, lookups)
        reason = plan.reason if plan.reason in policies.UNREACHABLE else None
        if reason is None and customer["pk"] in held:
            reason = recontact.RECONTACT
        reason = reason or plan.reason
        if reason:
            result.skipped[reason] += 1
            intended.append(ledger.IntendedDelivery(customer["pk"], first_channel, step.name, "skipped", reason))
            return
        self._assign_variant(candidate)  # before the control group: held-out members are recorded with theirs too
        if control is None:
            percent = self.plan.campaign.control_group
            control = policies.in_control_group(self.plan.name, customer["customer_id"], percent)
        if control:
            result.control += 1
            for name, contact in plan.channels:
                intended.append(
                    ledger.IntendedDelivery(
                        customer["pk"],
                        name,
                        step.name,
                        "held_out",
                        policies.CONTROL,
                        contact,
                        variant=candidate.variant_name,
                    )
                )
            return
        outcome = self._offer(conn, candidate, run, dry_run)
        if outcome is not None:
            result.steps[step.index].offers.add(outcome)
            if isinstance(outcome, Withheld):
                reason = OFFER_SKIP + outcome.reason
                result.skipped[reason] += 1
                intended.append(ledger.IntendedDelivery(customer["pk"], first_channel, step.name, "skipped", reason))
                return
            candidate.grant = outcome
        if self.quiet:
            zone = policies.customer_zone(customer, self.settings.tz)
            candidate.deferred_until = self.quiet.deferred_until(run["at"], zone)
        state = "deferred" if candidate.deferred_until else "pending"
        for name, contact in plan.channels:
            try:
                rendered = self._render(candidate, name, run["at"])
            except TemplateRenderError as exc:  # this customer's data broke the template: fail this one message
                result.outcomes[RENDER_FAILED] += 1
                candidate.render_failed = True
                intended.append(
                    ledger.IntendedDelivery(
                        customer["pk"],
                        name,
                        step.name,
                        "failed",
                        RENDER_FAILED,
                        contact,
                        error=_located(exc),
                        variant=candidate.variant_name,
                    )
                )
                continue
            result.planned[name] += 1
            result.segments[name] += int(rendered.measures.get("sms_segments") or 0)
            if candidate.deferred_until:
                result.deferred += 1
                result.steps[step.index].deferred[name] += 1
                result.note_deferred(candidate.deferred_until)
            else:
                self._count_message(candidate, name, result)
                if len(result.samples) < sample:
                    result.samples.append(_sample(candidate, name, contact, rendered))
            intended.append(
                ledger.IntendedDelivery(
                    customer["pk"],
                    name,
                    step.name,
                    state,
                    contact=contact,
                    coupon_pk=candidate.grant.coupon_pk if candidate.grant else None,
                    deferred_until=candidate.deferred_until,
                    message=rendered,
                    variant=candidate.variant_name,
                )
            )

    @staticmethod
    def _count_message(candidate: Candidate, channel: str, result: RunResult) -> None:
        result.steps[candidate.step.index].channels[channel] += 1
        result.messages += 1


def _located(error: TemplateRenderError) -> str:
    return f"{error.location}: {error.message}" if error.location else error.message


def _sample(candidate: Candidate, channel: str, contact: str, rendered: RenderedMessage) -> dict[str, Any]:
    return {
        "customer_id": candidate.customer["customer_id"],
        "step": candidate.step.name,
        "channel": channel,
        "to": mask_contact(contact),  # samples are printed: masked like every other output,
        "parts": {name: mask_text(part) if isinstance(part, str) else part for name, part in rendered.parts.items()},
        "measures": rendered.measures,
    }


def _deferred_window(conn: Connection, run_pk: int) -> tuple[datetime, datetime] | None:
    earliest, latest = conn.execute(
        select(func.min(Delivery.deferred_until), func.max(Delivery.deferred_until)).where(
            Delivery.run_pk == run_pk, Delivery.state == "deferred"
        )
    ).one()
    return None if earliest is None else (earliest, latest)


def _json_summary(result: RunResult) -> dict[str, Any]:
    data = result.to_dict()
    data.pop("samples", None)
    data["at"] = result.at.isoformat()

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, Decimal):
            return str(value)
        if isinstance(value, datetime):
            return value.isoformat()
        return value

    return plain(data)
