"""Campaign file -> validated plan, or every problem with its file, line and column.

Checks, in order, collecting every problem rather than stopping at the first: YAML syntax; the schema (unknown
keys with the closest valid name, wrong types, bad cron or durations); conditions against the fact catalog and
the named segments; channels and their message blocks; offers; templates (compiled and rendered against a
synthetic customer, so that template mistakes surface here and never half-way through a send).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from orchestrator.campaign import schema
from orchestrator.campaign.catalog import FactSpec
from orchestrator.campaign.conditions import ConditionParser, Node
from orchestrator.errors import InputError, InputErrors
from orchestrator.yamlfile import YamlDocument, format_path, load_yaml, suggest, validation_problems


class CampaignInvalid(InputErrors):
    """A campaign file with one or more problems; ``problems`` lists each with its position."""


@dataclass
class StepPlan:
    index: int
    name: str
    when: Node | None
    offer: dict[str, Any] | None  # {offer kind: validated terms}
    messages: dict[str, Any]  # channel name -> CompiledMessage
    guard: Node | None = None  # the offer's guard: who may receive it (evaluated in the audience query)
    variants: list[VariantPlan] = field(default_factory=list)  # A/B variants, empty when the step has none
    winner: Any = None  # schema.Winner: when later runs send the best variant to everyone

    @property
    def budget_name(self) -> str:
        """The budget the step's offer draws on (the offer budget's ``step`` key)."""
        return self.name

    @property
    def guard_column(self) -> str:
        """The audience column that says whether a member passes the step offer's guard."""
        return f"guard_{self.index}"


@dataclass(frozen=True)
class VariantOfferSite:
    """Where a variant's own offer is made, as its offer kind sees it: the step (``name``, ``index``: coupons
    are the step's, one per member and run), the budget it draws on and the column holding its guard."""

    index: int
    name: str
    variant: str
    budget_name: str  # the step's name (the step's shared budget) or "step/variant" (a budget of its own)
    guard_column: str


@dataclass
class VariantPlan:
    """A step's A/B variant: its messages are the step's with the variant's channels replaced; ``offer``, when
    the variant declares one, replaces the step's for its members."""

    name: str
    weight: Any  # Decimal
    messages: dict[str, Any]  # channel name -> CompiledMessage
    offer: dict[str, Any] | None = None  # {offer kind: validated terms}: the variant's own; None makes the step's
    guard: Node | None = None  # the own offer's guard
    site: VariantOfferSite | None = None  # set with ``offer``


@dataclass
class FollowUpPlan:
    """A follow-up: a step (its messages, offer and guard; ``step.index`` after the campaign's steps, so the
    runner's per-step tallies and offers cover it) decided per member ``after`` the run's earlier message."""

    step: StepPlan
    after: Any  # timedelta
    follows: tuple[str, ...] | None  # the steps whose recipients it follows; None: every step
    when: Node | None
    unless: Node | None

    @property
    def name(self) -> str:
        return self.step.name


@dataclass
class CampaignPlan:
    file: str
    campaign: schema.Campaign
    segment: Node
    steps: list[StepPlan]
    content_hash: str
    conditions: list[tuple[str, Node]] = field(default_factory=list)  # top-level conditions for the funnel
    follow_ups: list[FollowUpPlan] = field(default_factory=list)
    # the customers a run can reach at most (a scheduler tick's members, ``scheduler.audiences``), so that facts
    # are computed for them alone; None: every member
    members: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        return self.campaign.name

    @property
    def warnings(self) -> list[str]:
        """Advice from compiling the messages (e.g. an e-mail's lint), once each."""
        found = [w for step in self.steps for message in step.messages.values() for w in message.warnings]
        schedule = self.campaign.schedule
        if schedule is not None and schedule.catch_up is not None:
            found.append(f"schedule: catch_up: is deprecated; write misfire: {schedule.misfire} (same meaning)")
        return list(dict.fromkeys(found))


# a condition of the wrong shape (or none at all) is explained as such, not as pydantic's union of types
CONDITION_SHAPES = dict.fromkeys(("segment", "when", "guard"), "expects a condition, e.g. {recency_days: {gte: 90}}")


def _fields(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


_VOCABULARY = sorted(
    {
        (f.alias or name)
        for model in (
            schema.Campaign,
            schema.Step,
            schema.Schedule,
            schema.DispatchSettings,
            schema.FrequencyCap,
            schema.Budget,
            schema.FollowUp,
        )
        for name, f in model.model_fields.items()
    }
)


def _pydantic_problems(
    doc: YamlDocument, exc: ValidationError, prefix: tuple = (), vocabulary: list[str] | None = None
) -> list[InputError]:
    return validation_problems(doc, exc, prefix, vocabulary or _VOCABULARY, CONDITION_SHAPES)


class CampaignLoader:
    """Loads campaign files against one registry of facts and channels and one template setup."""

    def __init__(
        self,
        facts: Mapping[str, FactSpec],
        channels: Mapping[str, Any],
        named_segments: Mapping[str, Any] | None = None,
        named_segments_doc: YamlDocument | None = None,
        compile_message: Callable[[str, Any, str, bool], Any] | None = None,
        offers: Mapping[str, Any] | None = None,
        settings: Any = None,
    ):
        self.facts = facts
        self.channels = channels
        self.named_segments = named_segments or {}
        self.named_segments_doc = named_segments_doc
        # (channel name, validated options, campaign file, step has an offer) -> CompiledMessage; raises InputError
        self.compile_message = compile_message
        self.offers = offers or {}
        self.settings = settings

    def load(self, path: str | Path) -> CampaignPlan:
        doc = load_yaml(path)
        if not isinstance(doc.data, dict):
            raise CampaignInvalid(doc.file, [doc.error((), "a campaign file must be a mapping (name:, segment:, …)")])
        parser = ConditionParser(doc, self.facts, self.named_segments, self.named_segments_doc)
        try:
            campaign = schema.Campaign.model_validate(doc.data)
        except ValidationError as exc:
            problems = _pydantic_problems(doc, exc)
            problems += self._conditions_anyway(parser, doc.data, {p.line for p in problems})
            raise CampaignInvalid(doc.file, problems) from None
        problems: list[InputError] = []
        segment = self._condition(parser, doc.data["segment"], ("segment",), problems)
        steps = []
        raw_steps = doc.data.get("steps")
        for index, step in enumerate(campaign.all_steps):
            base: tuple = ("steps", index) if raw_steps is not None else ()
            when = None
            if step.when is not None:
                when = self._condition(parser, raw_steps[index]["when"], (*base, "when"), problems)
            offer = self._offer(doc, step.offer, (*base, "offer"), problems)
            guard = None
            if offer and getattr(next(iter(offer.values())), "guard", None) is not None:
                kind, terms = next(iter(offer.items()))
                guard = self._condition(parser, terms.guard, (*base, "offer", kind, "guard"), problems)
            # a step that declares an offer renders with one, even when the offer itself is invalid: that
            # problem is reported once, not again as "offer is None" in every template
            messages = self._messages(doc, step, base, bool(step.offer), problems)
            name = schema.step_name(step, index)
            plan = StepPlan(index, name, when, offer, messages, guard, [], step.winner)
            plan.variants = self._variants(doc, parser, step, plan, base, problems)
            steps.append(plan)
        follow_ups = self._follow_ups(doc, campaign, steps, problems)
        problems += self._dispatch_channels(doc, campaign.dispatch)
        if problems:
            raise CampaignInvalid(doc.file, problems)
        raw = Path(doc.file).read_bytes()
        top = doc.data["segment"]
        conditions = _top_level(parser, top)
        return CampaignPlan(
            file=doc.file,
            campaign=campaign,
            segment=segment,
            steps=steps,
            content_hash=hashlib.sha256(raw).hexdigest(),
            conditions=conditions,
            follow_ups=follow_ups,
        )

    def _follow_ups(
        self, doc: YamlDocument, campaign: schema.Campaign, steps: list[StepPlan], problems: list
    ) -> list[FollowUpPlan]:
        """Each follow-up checked like a step (name, conditions, offer, messages), its conditions with the
        follow-up facts too, every problem at its line."""
        from orchestrator.campaign.catalog import FOLLOW_UP_FACTS

        parser = ConditionParser(
            doc, {**self.facts, **{f.name: f for f in FOLLOW_UP_FACTS}}, self.named_segments, self.named_segments_doc
        )
        step_names = [s.name for s in steps]
        taken = set(step_names)
        plans: list[FollowUpPlan] = []
        for j, follow_up in enumerate(campaign.follow_ups or []):
            base = ("follow_ups", j)
            if follow_up.name in taken:
                problems.append(
                    doc.error(
                        (*base, "name"),
                        f"name {follow_up.name!r} is already a step's or a follow-up's",
                        hint="follow-ups are reported beside the steps, by name: give it a name of its own",
                    )
                )
            taken.add(follow_up.name)
            for i, name in enumerate(follow_up.steps or []):
                if name not in step_names:
                    problems.append(
                        doc.error(
                            (*base, "steps", i),
                            f"unknown step {name!r}",
                            hint=suggest(name, step_names) or f"the campaign's steps: {', '.join(step_names)}",
                        )
                    )
            raw = doc.data["follow_ups"][j]
            conditions = {}
            for key in ("when", "unless"):
                if getattr(follow_up, key) is not None:
                    node = self._condition(parser, raw[key], (*base, key), problems)
                    if node is not None:
                        problems.extend(_contacted_by_problems(doc, raw[key], (*base, key), step_names, campaign))
                    conditions[key] = node
            offer = self._offer(doc, follow_up.offer, (*base, "offer"), problems)
            guard = None
            if offer and getattr(next(iter(offer.values())), "guard", None) is not None:
                kind, terms = next(iter(offer.items()))
                guard = self._condition(parser, terms.guard, (*base, "offer", kind, "guard"), problems)
            messages = self._messages(doc, follow_up, base, bool(follow_up.offer), problems)
            step = StepPlan(len(steps) + j, follow_up.name, None, offer, messages, guard)
            follows = tuple(follow_up.steps) if follow_up.steps else None
            plans.append(FollowUpPlan(step, follow_up.after, follows, conditions.get("when"), conditions.get("unless")))
        return plans

    def _conditions_anyway(self, parser: ConditionParser, data: dict, reported: set) -> list[InputError]:
        """When the schema fails, still check the conditions that can be read, so one pass lists them all."""
        found: list[InputError] = []
        places = [(data.get("segment"), ("segment",))]
        if isinstance(data.get("steps"), list):
            places += [
                (step.get("when"), ("steps", i, "when"))
                for i, step in enumerate(data["steps"])
                if isinstance(step, dict)
            ]
        for condition, path in places:
            if isinstance(condition, dict | list) and condition:
                self._condition(parser, condition, path, found)
        return [p for p in found if p.line not in reported]

    def _dispatch_channels(self, doc: YamlDocument, dispatch: schema.DispatchSettings) -> list[InputError]:
        """Channels named in ``dispatch``: the fallback order and per-channel frequency caps."""
        named: list[tuple[tuple, str]] = [
            (("dispatch", "channels", i), c) for i, c in enumerate(dispatch.channels or [])
        ]
        caps = dispatch.frequency_cap
        if isinstance(caps, list):
            named += [(("dispatch", "frequency_cap", i, "channel"), c.channel) for i, c in enumerate(caps) if c.channel]
        elif caps is not None and caps.channel:
            named.append((("dispatch", "frequency_cap", "channel"), caps.channel))
        return [self._unknown_channel(doc, path, name) for path, name in named if name not in self.channels]

    def _unknown_channel(self, doc: YamlDocument, path: tuple, name: str) -> InputError:
        hint = suggest(name, self.channels) or f"loaded channels: {', '.join(sorted(self.channels))}"
        # a plugin that failed to load is the likely cause: say which, and why (ChannelTable.why_missing)
        why = getattr(self.channels, "why_missing", lambda _name: None)(name)
        return doc.error(path, f"unknown channel {name!r}" + (f": {why}" if why else ""), hint=hint)

    def _condition(self, parser: ConditionParser, data: Any, path: tuple, problems: list) -> Node | None:
        try:
            return parser.parse(data, path)
        except InputErrors as exc:
            problems.extend(exc.problems)
            return None
        except InputError as exc:
            problems.append(exc)
            return None

    def _offer(self, doc: YamlDocument, block: dict | None, path: tuple, problems: list) -> dict[str, Any] | None:
        """``{kind: terms}`` with the terms validated by the offer kind's own model."""
        if not block:
            return None
        if len(block) != 1:
            problems.append(doc.error(path, "an offer names exactly one offer kind, e.g. {coupon: {...}}"))
            return None
        kind, terms = next(iter(block.items()))
        offer_class = self.offers.get(kind)
        if offer_class is None:
            loaded = ", ".join(sorted(self.offers)) or "none"
            problems.append(
                doc.error(
                    (*path, kind),
                    f"unknown offer kind {kind!r}",
                    hint=suggest(kind, self.offers) or f"loaded: {loaded}",
                )
            )
            return None
        try:
            validated = offer_class.options_model.model_validate(terms or {})
        except ValidationError as exc:
            problems.extend(_pydantic_problems(doc, exc, (*path, kind), _fields(offer_class.options_model)))
            return None
        found = offer_class.check(validated, self.settings) if self.settings is not None else []
        problems.extend(doc.error((*path, kind, *where), message) for where, message in found)
        return None if found else {kind: validated}

    def _variants(
        self, doc: YamlDocument, parser: ConditionParser, step, plan: StepPlan, base: tuple, problems: list
    ) -> list[VariantPlan]:
        """Each variant's messages: the step's, with the channels the variant names compiled from its own block.
        A variant may only reword a channel the step uses: which channels reach a member is the step's choice.
        A variant's own offer is checked like a step's (kind, terms, guard)."""
        plans: list[VariantPlan] = []
        for j, variant in enumerate(step.variants or []):
            path = (*base, "variants", j)
            extra = [c for c in variant.message if c not in step.message]
            for channel in extra:
                problems.append(
                    doc.error(
                        (*path, "message", channel),
                        f"variant {variant.name!r} names channel {channel!r}, which the step's message does not",
                        hint=f"a variant rewords the step's channels: {', '.join(step.message)}",
                    )
                )
            own = self._messages(doc, variant, path, bool(variant.offer or step.offer), problems)
            variant_plan = VariantPlan(variant.name, variant.weight, {**plan.messages, **own})
            if variant.offer:
                self._variant_offer(doc, parser, variant, j, plan, path, variant_plan, problems)
            plans.append(variant_plan)
        return plans

    def _variant_offer(
        self, doc: YamlDocument, parser: ConditionParser, variant, j: int, plan: StepPlan, path: tuple, into, problems
    ) -> None:
        """The variant's own offer. Budgets: a variant offer with a ``budget:`` of its own draws on that budget
        alone; one without draws on the step's budget (the same limits and the same running total as the step's
        offer), so that splitting a step into variants never spends more than the step was allowed."""
        offer = self._offer(doc, variant.offer, (*path, "offer"), problems)
        if not offer:
            return
        kind, terms = next(iter(offer.items()))
        budget_name = plan.name
        if getattr(terms, "budget", None) is not None:
            budget_name = f"{plan.name}/{variant.name}"
            if len(budget_name) > 128:
                problems.append(
                    doc.error(
                        (*path, "offer", kind, "budget"),
                        f"the budget name {budget_name!r} (step/variant) is longer than 128 characters",
                        hint="shorten the step's or the variant's name",
                    )
                )
                return
        elif plan.offer and getattr(next(iter(plan.offer.values())), "budget", None) is not None:
            shared = next(iter(plan.offer.values())).budget
            try:  # validated again: a limit on face value needs a face value in this variant's terms too
                terms = type(terms).model_validate({**terms.model_dump(exclude_unset=True), "budget": shared})
            except ValidationError as exc:
                problems.extend(
                    doc.error((*path, "offer", kind), f"the step's budget does not fit this offer: {e['msg']}")
                    for e in exc.errors()
                )
                return
        guard = None
        if getattr(terms, "guard", None) is not None:
            guard = self._condition(parser, terms.guard, (*path, "offer", kind, "guard"), problems)
        into.offer, into.guard = {kind: terms}, guard
        into.site = VariantOfferSite(plan.index, plan.name, variant.name, budget_name, f"guard_{plan.index}_{j}")

    def _messages(self, doc: YamlDocument, step, base: tuple, has_offer: bool, problems: list) -> dict[str, Any]:
        compiled: dict[str, Any] = {}
        for channel_name, raw_options in step.message.items():
            path = (*base, "message", channel_name)
            channel = self.channels.get(channel_name)
            if channel is None:
                problems.append(self._unknown_channel(doc, path, channel_name))
                continue
            try:
                options: BaseModel = channel.options_model.model_validate(raw_options or {})
            except ValidationError as exc:
                problems.extend(_pydantic_problems(doc, exc, path, _fields(channel.options_model)))
                continue
            if self.compile_message is None:
                compiled[channel_name] = options
                continue
            try:
                compiled[channel_name] = self.compile_message(channel_name, options, doc.file, has_offer)
            except InputError as exc:
                line, column = doc.position(path)
                if exc.file == doc.file and exc.line is None:  # an inline template: point at its block
                    exc.line, exc.column = line, column
                elif exc.file != doc.file:  # a template file: say which campaign uses it, and where
                    exc.message += f" (in {format_path(path)} of {doc.file}:{line})"
                if not has_offer and "'None' has no attribute" in exc.message:
                    exc.message += " — offer is empty because this step issues no offer"
                    exc.hint = "add an offer: to the step, or leave offer.* out of its templates"
                problems.append(exc)
        return compiled


def _contacted_by_problems(
    doc: YamlDocument, data: Any, path: tuple, step_names: list[str], campaign: schema.Campaign
) -> list[InputError]:
    """``contacted_by`` names exactly one step or follow-up of this campaign."""
    found: list[InputError] = []
    if isinstance(data, list):
        for i, item in enumerate(data):
            found += _contacted_by_problems(doc, item, (*path, i), step_names, campaign)
        return found
    if not isinstance(data, dict):
        return found
    follow_ups = [f.name for f in campaign.follow_ups or []]
    for key, value in data.items():
        if key in ("all", "any", "not"):
            found += _contacted_by_problems(doc, value, (*path, key), step_names, campaign)
        elif key == "contacted_by":
            given = {k: v for k, v in value.items() if k in ("step", "follow_up")} if isinstance(value, dict) else {}
            if len(given) != 1:
                found.append(
                    doc.error(
                        (*path, key),
                        "contacted_by names one step or one follow-up",
                        hint="write contacted_by: {step: NAME} or contacted_by: {follow_up: NAME}",
                    )
                )
                continue
            kind, name = next(iter(given.items()))
            known = step_names if kind == "step" else follow_ups
            if str(name) not in known:
                found.append(
                    doc.error(
                        (*path, key, kind),
                        f"contacted_by: unknown {kind.replace('_', '-')} {name!r}",
                        hint=suggest(str(name), known) or f"the campaign's: {', '.join(known) or 'none'}",
                    )
                )
    return found


def _top_level(parser: ConditionParser, data: Any) -> list[tuple[str, Node]]:
    """The segment's top-level conditions, labelled, for the dry-run's per-condition funnel: the items of a
    top-level ``all:`` one by one, and every other key of the mapping as one condition."""
    entries: list[tuple[Any, tuple]] = []
    if isinstance(data, list):
        entries = [(item, ("segment", i)) for i, item in enumerate(data)]
    elif isinstance(data, dict):
        for key, value in data.items():
            if key == "all" and isinstance(value, list):
                entries += [(item, ("segment", "all", i)) for i, item in enumerate(value)]
            else:
                entries.append(({key: value}, ("segment", key)))
    return [(_label(item), parser.parse(item, path)) for item, path in entries]


def _label(data: Any) -> str:
    """A short readable label for a condition: ``recency_days {gte: 90, lt: 180}``, ``not (tag: complained)``."""
    if isinstance(data, list):
        return " and ".join(_label(item) for item in data)
    if isinstance(data, dict) and len(data) > 1:
        return " and ".join(_label({k: v}) for k, v in data.items())
    if isinstance(data, dict) and data:
        key, value = next(iter(data.items()))
        if key in ("all", "any", "not"):
            items = value if isinstance(value, list) else [value]
            joiner = " or " if key in ("any", "not") else " and "
            inner = joiner.join(_label(item) for item in items)
            return f"not ({inner})" if key == "not" else f"({inner})"
        if isinstance(value, dict):
            inner = ", ".join(f"{k}: {v}" for k, v in value.items())
            return f"{key} {{{inner}}}"
        return f"{key}: {value}"
    return str(data)
