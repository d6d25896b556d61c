"""The shape of a campaign file, declared once; ``orchestrator schema`` prints it as JSON Schema.

Conditions (``segment``, ``when``) are validated structurally here as mappings and parsed against the fact
catalog by ``orchestrator.campaign.conditions``; channel ``message`` blocks are validated by each channel's own
options model; offers by their offer kind. Everything else is checked here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from orchestrator.durations import format_duration
from orchestrator.money import MAX_AMOUNT
from orchestrator.policy_types import Duration, FrequencyCap, QuietHours
from orchestrator.timeutil import check_run_time, parse_clock, zone

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,127}$"
# placeholders that ``json_schema`` replaces by a $ref to a definition built from the loaded plugins and facts
CONDITION_MARK = {"x-ref": "Condition"}
FOLLOW_UP_CONDITION_MARK = {"x-ref": "FollowUpCondition"}  # a condition with the follow-up facts too
MESSAGES_MARK = {"x-ref": "Messages"}
OFFER_MARK = {"x-ref": "Offer"}
CHANNEL_MARK = {"x-ref": "ChannelName"}

Condition = Annotated[dict[str, Any] | list[Any], WithJsonSchema(CONDITION_MARK)]
FollowUpCondition = Annotated[dict[str, Any] | list[Any], WithJsonSchema(FOLLOW_UP_CONDITION_MARK)]
ChannelName = Annotated[str, WithJsonSchema(CHANNEL_MARK)]
#: the kinds of schedule, exactly one of which a schedule names
SCHEDULE_KINDS = ("cron", "every", "at", "relative_to", "on")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Schedule(_Model):
    """When the scheduler fires the campaign: exactly one of cron, every, at, relative_to, on."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": [kind]} for kind in SCHEDULE_KINDS],
            "dependentRequired": {"relative_to": ["days_before"]},
        }
    )

    cron: str | None = Field(None, description="crontab expression, e.g. '0 10 * * MON'")
    every: Duration | None = Field(
        None,
        description="fixed interval, e.g. 1h (at least 1m)",
        json_schema_extra={"pattern": r"^\s*(0*[1-9]\d*\s*[dwhm]|0*([6-9]\d|[1-9]\d{2,})\s*s)\s*$"},
    )
    at: datetime | None = Field(None, description="a single date-time")
    relative_to: Literal["birthday", "signup_at"] | None = Field(
        None, description="the member's date the tick is relative to: birthday, or signup_at (membership anniversary)"
    )
    days_before: int | None = Field(None, ge=0, le=366)
    at_time: str | None = Field(
        None,
        alias="time",
        description="local time of day for relative schedules, HH:MM",
        json_schema_extra={"pattern": r"^\s*([01]?\d|2[0-3]):[0-5]\d\s*$"},
    )
    on: Literal["order_paid", "member_joined"] | None = Field(None, description="an event trigger")
    within: Duration | None = Field(
        None, description="on: only events at most this old at the check's time count (default 1d)"
    )
    timezone: str = "Asia/Shanghai"
    check_every: Duration | None = Field(
        None, description="how often an on: trigger looks for new events, on a fixed grid (default 1m)"
    )
    start: datetime | date | None = Field(
        None, description="no tick before this time (a date: its midnight in the schedule's zone); anchors every:"
    )
    end: datetime | date | None = Field(None, description="no tick at or after this time (a date: its midnight)")
    misfire: Literal["skip", "latest", "catch_up"] = Field(
        "latest",
        description="ticks missed while nothing ran: skip them, fire only the latest, or fire each (catch_up)",
    )
    misfire_grace: Duration | None = None
    catch_up: bool | None = Field(None, description="deprecated: write misfire: catch_up")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)
        return value

    @field_validator("at_time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_clock(value)
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        kinds = [k for k in SCHEDULE_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "a schedule needs exactly one of cron, every, at, relative_to, on"
                + (f" (found {', '.join(kinds)})" if kinds else "")
            )
        if self.cron is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                check_day_of_week(self.cron)
                CronTrigger.from_crontab(self.cron, timezone=zone(self.timezone))
            except ValueError as exc:
                raise ValueError(f"invalid cron expression {self.cron!r}: {exc}") from None
        if self.every is not None and self.every < timedelta(minutes=1):
            raise ValueError("every: the interval must be at least 1m")
        if self.at is not None and self.at.tzinfo is None:
            self.at = self.at.replace(tzinfo=zone(self.timezone))
        if self.at is not None:
            check_run_time(self.at)
        if self.relative_to is not None and self.days_before is None:
            raise ValueError("relative_to needs days_before (0 for the day itself)")
        if self.check_every is not None and self.check_every < timedelta(minutes=1):
            raise ValueError("check_every: the interval must be at least 1m")
        # an event between two checks would be older than within at the next one, and never fire
        check_every = self.check_every or timedelta(minutes=1)
        if self.on is not None and self.within is not None and self.within < check_every:
            raise ValueError(
                f"within ({format_duration(self.within)}) is shorter than check_every ({format_duration(check_every)}):"
                " an event between two checks would never fire; make within at least check_every"
            )
        self._bounds()
        if self.catch_up is not None:  # the former boolean: true is misfire: catch_up
            if "misfire" in self.model_fields_set and self.misfire != ("catch_up" if self.catch_up else self.misfire):
                raise ValueError("write misfire: only (catch_up: is its deprecated form)")
            if self.catch_up:
                self.misfire = "catch_up"
        return self

    def _bounds(self) -> None:
        """``start`` and ``end`` as aware times: a date is its midnight, a time without offset is local, in the
        schedule's zone."""
        tz = zone(self.timezone)
        for key in ("start", "end"):
            value = getattr(self, key)
            if value is None:
                continue
            if not isinstance(value, datetime):
                value = datetime.combine(value, datetime.min.time())
            if value.tzinfo is None:
                value = value.replace(tzinfo=tz)
            setattr(self, key, check_run_time(value))
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")


def check_day_of_week(expression: str) -> None:
    """Refuse a numeric day of week: crontab counts 0 as Sunday, APScheduler 3 (which computes the ticks) as
    Monday, so a number would fire on a day the writer did not mean."""
    fields = expression.split()
    if len(fields) == 5 and re.search(r"(?<![/\d])\d", fields[4]):
        raise ValueError(
            f"day of week {fields[4]!r}: write day names (MON-FRI, SUN), not numbers (0 is Sunday in crontab, "
            "Monday in other cron dialects)"
        )


class RecontactAfter(_Model):
    after: Duration = Field(description="a member contacted by this campaign may be contacted again after this")


RECONTACT_WORDS = ("never", "always")


def _recontact(value: Any) -> Any:
    """``never``, ``always`` or ``{after: DURATION}``; anything else is explained here rather than as pydantic's
    union of types."""
    if isinstance(value, str) and value.strip() in RECONTACT_WORDS:
        return value.strip()
    if isinstance(value, Mapping) and set(value) == {"after"}:
        return value
    raise ValueError(f"{value!r}: write recontact: never, always, or {{after: DURATION}} such as {{after: 30d}}")


class Budget(_Model):
    max_issued: int | None = Field(None, ge=1, le=1_000_000_000)
    max_face_value: Decimal | None = Field(None, gt=0, le=MAX_AMOUNT)


class DispatchSettings(_Model):
    quiet_hours: QuietHours | None = None
    frequency_cap: FrequencyCap | list[FrequencyCap] | None = None
    channels: list[ChannelName] | None = Field(None, description="preference order for fallback, e.g. [sms, email]")
    strategy: Literal["first_reachable", "all"] = "first_reachable"
    transactional: bool = False
    batch_size: int = Field(500, ge=1, le=100_000)


Offer = Annotated[dict[str, dict[str, Any]], WithJsonSchema(OFFER_MARK)]
Messages = Annotated[dict[str, dict[str, Any]], WithJsonSchema(MESSAGES_MARK)]


class Attribution(_Model):
    window: Duration = Field(description="orders a contacted member places this long after the message was due count")


class Variant(_Model):
    """An A/B variant of a step: its message replaces the step's for the channels it names, its offer replaces
    the step's offer (a variant without ``offer:`` makes the step's)."""

    name: str = Field(pattern=NAME_PATTERN)
    weight: Decimal = Field(Decimal(1), gt=0, le=1_000_000, description="relative share of the step's members")
    message: Messages = Field(default_factory=dict)
    offer: Offer | None = Field(
        None, description="this variant's own offer; without a budget of its own it draws on the step's budget"
    )

    @model_validator(mode="after")
    def _changes_something(self) -> Variant:
        if not self.message and not self.offer:
            raise ValueError(f"variant {self.name!r} changes nothing: give it a message:, an offer: or both")
        return self


class Winner(_Model):
    """Once a variant's conversion rate beats every other's with a 95 % interval that excludes a tie, at least
    ``after`` after the runs that tried them, later runs send the winner to the whole step."""

    metric: Literal["conversion"] = "conversion"
    after: Duration = Field(description="how long after a run its variants are judged, e.g. 3d")


class Step(_Model):
    name: str | None = Field(None, pattern=NAME_PATTERN)
    when: Condition | None = None
    offer: Offer | None = None
    message: Messages
    variants: list[Variant] | None = Field(
        None,
        description="A/B variants, each member assigned one by a stable hash of campaign, step and member",
        json_schema_extra={"minItems": 2},
    )
    winner: Winner | None = None

    @model_validator(mode="after")
    def _winner_needs_variants(self) -> Step:
        if self.winner is not None and not self.variants:
            raise ValueError("winner: needs variants: to choose from")
        return self

    @field_validator("variants")
    @classmethod
    def _two_named_variants(cls, variants: list[Variant] | None) -> list[Variant] | None:
        if variants is None:
            return None
        if len(variants) < 2:
            raise ValueError("list at least two variants (or none)")
        names = [v.name for v in variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate variant name {duplicates[0]!r}: variant names must be unique")
        return variants


class FollowUp(_Model):
    """A later message of the same run to the members an earlier message reached, ``after`` from when that
    message was due; ``when`` / ``unless`` are evaluated at the follow-up's own due time."""

    name: str = Field(pattern=NAME_PATTERN, description="unique in the campaign, among steps and follow-ups")
    after: Duration = Field(description="how long after the member's earlier message of the run was due, e.g. 3d")
    steps: list[str] | None = Field(
        None,
        description="the steps whose recipients it follows (default: every step)",
        json_schema_extra={"minItems": 1},
    )
    when: FollowUpCondition | None = None
    unless: FollowUpCondition | None = None
    offer: Offer | None = None
    message: Messages

    @field_validator("after")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("after: give a positive duration such as 3d or 36h")
        return value

    @field_validator("steps")
    @classmethod
    def _some_steps(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("is empty: name at least one step, or leave steps: out to follow every step")
        return value


def _percent(value: Any) -> Any:
    if isinstance(value, str) and value.strip().endswith("%"):
        return value.strip()[:-1]
    return value


#: control_group as JSON Schema: a number, or a numeral with an optional % sign, from 0 to below 100
CONTROL_GROUP_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0, "exclusiveMaximum": 100},
        {"type": "string", "pattern": r"^\s*\d{1,2}(\.\d+)?\s*%?\s*$"},
    ]
}


class Campaign(_Model):
    """A campaign file."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["steps"], "not": {"anyOf": [{"required": ["message"]}, {"required": ["offer"]}]}},
                {"required": ["message"], "not": {"required": ["steps"]}},
            ]
        }
    )

    name: str = Field(pattern=NAME_PATTERN, description="unique name: lower case, digits, - _ .")
    description: str | None = None
    enabled: bool = Field(True, description="false: listed by `orchestrator schedule` but never fired")
    schedule: Schedule | None = None
    segment: Condition
    control_group: Annotated[Decimal, BeforeValidator(_percent), WithJsonSchema(CONTROL_GROUP_SCHEMA)] = Field(
        Decimal(0), ge=0, lt=100, description="percentage held out, e.g. 10%"
    )
    steps: list[Step] | None = Field(None, json_schema_extra={"minItems": 1})
    offer: Offer | None = None
    message: Messages | None = None
    dispatch: DispatchSettings = DispatchSettings()
    attribution: Attribution | None = Field(None, description="results: the attribution window (config default 14d)")
    follow_ups: list[FollowUp] | None = Field(
        None,
        description="later messages of each run to the members it reached, each after a delay, with exit conditions",
    )
    recontact: Annotated[
        Literal["never", "always"] | RecontactAfter | None,
        BeforeValidator(lambda v: v if v is None else _recontact(v)),
    ] = Field(
        None,
        description="whether a member this campaign already contacted may be contacted by a later run: never, "
        "always, or {after: DURATION}; default never for cron/every/at, once per occurrence for relative_to, once "
        "per triggering order or sign-up for on:",
    )

    @model_validator(mode="after")
    def _steps_or_message(self) -> Campaign:
        if self.steps is not None and (self.message is not None or self.offer is not None):
            raise ValueError("write either steps: or a top-level message:/offer:, not both")
        if self.steps is None and self.message is None:
            raise ValueError("a campaign needs steps: or a top-level message:")
        return self

    @field_validator("steps")
    @classmethod
    def _unique_step_names(cls, steps: list[Step] | None) -> list[Step] | None:
        if steps is not None and not steps:
            raise ValueError("is empty: give at least one step")
        names = [step_name(s, i) for i, s in enumerate(steps or [])]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate step name {duplicates[0]!r}: step names must be unique")
        return steps

    @property
    def all_steps(self) -> list[Step]:
        if self.steps is not None:
            return self.steps
        return [Step(name="main", offer=self.offer, message=self.message or {})]


def step_name(step: Step, index: int) -> str:
    return step.name or f"step-{index + 1}"


def _link(node: Any) -> Any:
    """Replace each placeholder mark by a $ref to its definition."""
    if isinstance(node, dict):
        if "x-ref" in node:  # pydantic may add a title or description beside the mark
            return {"$ref": f"#/$defs/{node['x-ref']}", **{k: v for k, v in node.items() if k == "description"}}
        return {k: _link(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_link(v) for v in node]
    return node


def _options_schema(model: type[BaseModel], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """A plugin's options model as JSON Schema; its own definitions join ``defs`` under ``prefix``."""
    schema = model.model_json_schema(by_alias=True, ref_template=f"#/$defs/{prefix}{{model}}")
    defs.update({f"{prefix}{name}": value for name, value in schema.pop("$defs", {}).items()})
    return schema


def _one_of_each(options: dict[str, dict[str, Any]], description: str) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": options, "additionalProperties": False}


def json_schema(
    condition_schema: dict[str, Any],
    channels: Mapping[str, Any] | None = None,
    offers: Mapping[str, Any] | None = None,
    follow_up_condition_schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The campaign file's JSON Schema; with ``channels`` and ``offers`` (the loaded plugins), message and offer
    blocks are typed by each plugin's options model and channel names are an enum. ``follow_up_condition_schema``:
    a follow-up's ``when`` / ``unless`` (the facts plus the follow-up facts; default: as other conditions)."""
    schema = _link(Campaign.model_json_schema(by_alias=True))
    defs = schema.setdefault("$defs", {})
    defs["Condition"] = condition_schema
    defs["FollowUpCondition"] = follow_up_condition_schema or {"$ref": "#/$defs/Condition"}
    messages = {n: _options_schema(c.options_model, f"channel.{n}.", defs) for n, c in sorted((channels or {}).items())}
    terms = {n: _options_schema(o.options_model, f"offer.{n}.", defs) for n, o in sorted((offers or {}).items())}
    defs["Messages"] = _one_of_each(messages, "per channel, its message: {email: {subject: ..., template: ...}}")
    defs["Messages"]["minProperties"] = 1
    defs["Offer"] = _one_of_each(terms, "one offer kind and its terms, e.g. {coupon: {kind: amount_off, ...}}")
    defs["Offer"].update(minProperties=1, maxProperties=1)
    defs["ChannelName"] = {"type": "string", "description": "a channel a plugin provides"}
    if channels is not None:
        defs["ChannelName"]["enum"] = sorted(channels)
    else:  # without the registry, blocks stay open (any channel, any offer kind)
        for name in ("Messages", "Offer"):
            del defs[name]["additionalProperties"]
    defs["FrequencyCap"]["properties"]["channel"] = {"anyOf": [{"$ref": "#/$defs/ChannelName"}, {"type": "null"}]}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Campaign"
    return schema
