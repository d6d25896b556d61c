"""The configuration: one YAML file plus the environment, read into one typed object.

Resolution order: ``--config PATH`` / ``ORCHESTRATOR_CONFIG``; else ``orchestrator.yaml`` in the working
directory if it exists; else the built-in defaults. The database URL comes from ``--db`` /
``ORCHESTRATOR_DATABASE_URL``, then the file's ``database.url``, then an SQLite file in the working directory.
Secrets are never written in the file: any string may reference ``${ENV_VAR}`` (or ``${ENV_VAR:-default}``).
A webhook secret's variable is needed by ``serve`` only (``Settings.require_serve_secrets``).
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from orchestrator.errors import InputError, InputErrors
from orchestrator.policy_types import Duration, FrequencyCap, LocalWindow, QuietHours
from orchestrator.timeutil import zone
from orchestrator.yamlfile import YamlDocument, load_yaml, validation_problems

CONFIG_ENV = "ORCHESTRATOR_CONFIG"
DATABASE_ENV = "ORCHESTRATOR_DATABASE_URL"
DEFAULT_CONFIG_NAME = "orchestrator.yaml"
DEFAULT_DATABASE_URL = "sqlite:///orchestrator.db"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseConfig(_Section):
    url: str | None = None


class AnalysisConfig(_Section):
    big_spender_threshold: Decimal = Decimal("1000")
    high_value_min_orders: int = Field(2, ge=1)


class LifecycleConfig(_Section):
    new_days: int = Field(30, ge=0)
    dormant_days: int = Field(90, ge=1)
    lost_days: int = Field(180, ge=1)


class CLVConfig(_Section):
    """CLV = AOV × yearly purchase rate × expected lifetime (years) × margin.

    The yearly purchase rate is paid orders ÷ tenure in years, tenure measured from the first paid order and
    never shorter than ``min_tenure_days`` (so a first-week buyer is not extrapolated to 52 orders a year).
    """

    margin: Decimal = Decimal("0.30")
    expected_lifetime_years: Decimal = Decimal("3")
    min_tenure_days: int = Field(90, ge=1)


class PoliciesConfig(_Section):
    """Contact-policy defaults for every campaign; a campaign's own ``dispatch`` setting replaces the default
    (a campaign's ``frequency_cap`` replaces the default caps as a whole, it does not add to them)."""

    frequency_cap: FrequencyCap | list[FrequencyCap] | None = None
    quiet_hours: QuietHours | None = None  # the same type as a campaign's dispatch.quiet_hours


class RetryConfig(_Section):
    """Transient failures retry after first_delay, doubling up to max_delay, each delay with full jitter (a random
    point in [delay/2, delay]); a message fails for good after max_attempts or max_age_hours from its creation."""

    max_attempts: int = Field(8, ge=1)
    max_age_hours: float = Field(24, gt=0)
    first_delay_seconds: float = Field(30, ge=0)
    max_delay_seconds: float = Field(3600, ge=0)


class BreakerConfig(_Section):
    """A channel whose provider fails transiently on failure_rate of its last `window` attempts (once at least
    min_calls were made) is paused for cooldown_seconds, then tried with one message before it resumes."""

    window: int = Field(50, ge=1)
    min_calls: int = Field(20, ge=1)
    failure_rate: float = Field(0.5, gt=0, le=1)
    cooldown_seconds: float = Field(30, ge=0)


class RateLimitConfig(_Section):
    """A provider's limits, shared by every dispatch process on the same database."""

    per_second: float | None = Field(None, gt=0)
    burst: int | None = Field(None, ge=1)  # messages that may go at once; default a tenth of a second's worth
    per_day: int | None = Field(None, ge=1)


class DispatchConfig(_Section):
    """How deliveries are sent. ``retry``, ``breaker`` and ``rate_limit`` may also be given per channel, as
    ``channels.<name>.retry`` and so on, replacing these for that channel."""

    claim_size: int = Field(50, ge=1, le=10_000)  # messages a process claims and sends at a time
    lease_seconds: float = Field(300, gt=0)  # a claim held longer is presumed abandoned
    linger_seconds: float = Field(60, ge=0)  # how long a run waits for retries before leaving them to `resume`
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()


BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp")


class ExecutorConfig(_Section):
    """Where a run's planning and dispatch happen (see docs/deployment.md). ``in_process``: in the process that
    runs it. ``celery``: split into Celery tasks (audience partitions, then claim batches) that
    ``orchestrator worker`` processes on any number of machines run against the same PostgreSQL database."""

    kind: Literal["in_process", "celery"] = "in_process"
    broker: str | None = None  # redis://host:6379/0 or amqp://user:password@host:5672/vhost (secrets: ${VAR})
    result_backend: str | None = None  # where task results go; default: the broker (Redis) or rpc:// (AMQP)
    queue: str = Field("orchestrator", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    key_prefix: str | None = Field(None, max_length=100)  # Redis only: prefixes every key Celery writes
    partition_size: int = Field(5000, ge=1, le=1_000_000)  # audience members one planning task decides
    task_time_limit_seconds: float = Field(1800, gt=0)  # a task running longer is killed (and fails)
    # Redis: a task not acknowledged within this is handed to another worker; longer than any task may run
    visibility_timeout_seconds: float = Field(3600, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> ExecutorConfig:
        if self.kind != "celery":
            return self
        if not self.broker:
            raise ValueError("executor: kind celery needs a broker (e.g. broker: redis://127.0.0.1:6379/0)")
        scheme = self.broker.partition("://")[0].lower()
        if scheme not in BROKER_SCHEMES:
            raise ValueError(f"executor.broker: {scheme!r} is not a broker this product runs on (redis:// or amqp://)")
        if self.visibility_timeout_seconds <= self.task_time_limit_seconds:
            raise ValueError(
                "executor.visibility_timeout_seconds must be longer than task_time_limit_seconds: a task still "
                "running when it expires would be handed to a second worker"
            )
        return self


class SchedulerConfig(_Section):
    """The long-running ``orchestrator scheduler`` (see docs/scheduler.md)."""

    expected: bool = False  # `orchestrator schedule` exits 1 when no scheduler has a live heartbeat
    poll_seconds: float = Field(2, gt=0, le=3600)  # how often it re-reads the campaigns folder and dispatches
    lease_ttl_seconds: float = Field(30, ge=1, le=3600)  # a dead leader is replaced within this (renewed every third)
    misfire_horizon: Duration = timedelta(days=7)  # ticks missed longer ago than this are never fired
    log_file: str | None = None  # one JSON line per tick and dispatch round; default stderr


class AttributionConfig(_Section):
    """Which orders a campaign run earned: those that redeemed its coupon, and those its contacted members placed
    within ``window`` after the message was due (a campaign's ``attribution: {window: …}`` replaces the window).
    Where the windows of several runs cover an order, ``last_touch`` gives it to the latest, ``first_touch`` to
    the earliest."""

    window: Duration = timedelta(days=14)
    model: Literal["last_touch", "first_touch"] = "last_touch"


class ResultsConfig(_Section):
    """How ``orchestrator report`` values a campaign (see docs/domain.md, "Results")."""

    attribution: AttributionConfig = AttributionConfig()
    # the share of revenue that is profit; without it ROI is computed on revenue (margin 1), and says so
    margin: Decimal | None = Field(None, gt=0, le=1)
    # what one redeemed coupon of a kind costs the shop, where its face value does not say (e.g. a gift's cost)
    offer_cost: dict[Literal["amount_off", "percent_off", "free_item", "gift"], Decimal] = Field(default_factory=dict)
    # fewer members than this in the contacted or the control group: too small a sample to judge
    min_group_size: int = Field(10, ge=2)


class SmsHookConfig(_Section):
    """One SMS provider's inbound replies (``POST /hooks/sms/<provider>``): how the request is verified and which
    of its fields hold the number, the text and the time (form or JSON body alike)."""

    secret: str = Field(min_length=16)  # from the environment: ${SMS_HOOK_SECRET}
    verify: Literal["hmac", "shared_secret"] = "hmac"
    signature_header: str = "X-Signature"  # hmac: hex HMAC-SHA256 of "<timestamp>.<body>"
    timestamp_header: str = "X-Timestamp"  # hmac: Unix seconds; also sent with a shared secret
    secret_header: str = "X-Hook-Secret"  # shared_secret: the secret itself
    phone_field: str = "phone"
    text_field: str = "text"
    received_at_field: str | None = "received_at"  # absent or empty: the time the request arrived


class EmailHookConfig(_Section):
    """One e-mail provider's delivery events (``POST /hooks/email/<provider>``): ``generic`` (our JSON, signed like
    the SMS hooks) or ``mailgun`` (Mailgun's webhook signature with its signing key)."""

    format: Literal["generic", "mailgun"] = "generic"
    secret: str = Field(min_length=16)


class ServeLimitsConfig(_Section):
    """Requests per second (GCRA, shared through the database as provider quotas are) per client address and
    per API key, and the largest request body."""

    per_ip: RateLimitConfig = RateLimitConfig(per_second=20, burst=40)
    per_key: RateLimitConfig = RateLimitConfig(per_second=50, burst=100)
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=10 * 1024 * 1024)


class ServeConfig(_Section):
    """The web service, ``orchestrator serve`` (see docs/serve.md)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    # where the service is reached from outside (behind the proxy); unsubscribe links point at <public_url>/u/…
    # unless unsubscribe_url is set explicitly
    public_url: str | None = None
    # the proxies whose X-Forwarded-For is believed (uvicorn's forwarded_allow_ips)
    forwarded_allow_ips: str = "127.0.0.1"
    unsubscribe_template: str | None = None  # a Jinja2 file replacing the built-in unsubscribe page
    timestamp_tolerance_seconds: int = Field(300, ge=1, le=86_400)  # signed webhooks older than this are refused
    limits: ServeLimitsConfig = ServeLimitsConfig()
    sms_hooks: dict[str, SmsHookConfig] = Field(default_factory=dict)
    email_hooks: dict[str, EmailHookConfig] = Field(default_factory=dict)
    log_file: str | None = None  # one JSON line per request; default stderr


class TierRule(_Section):
    name: str
    min_spend: Decimal = Decimal("0")
    min_orders: int = 0


class Settings(_Section):
    """Everything configurable, with the demo's defaults."""

    timezone: str = "Asia/Shanghai"
    currency: str = "CNY"
    default_region: str = "CN"
    database: DatabaseConfig = DatabaseConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()
    clv: CLVConfig = CLVConfig()
    # highest first; a member gets the first tier whose thresholds they meet
    tiers: list[TierRule] = Field(
        default_factory=lambda: [
            TierRule(name="advanced", min_spend=Decimal("1000")),
            TierRule(name="regular", min_spend=Decimal("0")),
        ]
    )
    # shop-local hours of each daypart (start inclusive, end exclusive; a window may wrap past midnight)
    dayparts: dict[str, LocalWindow] = Field(
        default_factory=lambda: {
            "breakfast": "06:00-10:00",
            "lunch": "11:00-14:00",
            "afternoon": "14:00-17:00",
            "dinner": "17:00-21:00",
            "late": "21:00-06:00",
        }
    )
    # where unsubscribe links point; the link carries a signed token (see orchestrator.unsubscribe)
    unsubscribe_url: str = "https://shop.example.com/unsubscribe"
    # how long an unsubscribe link is honoured after it was sent (mail is read late)
    unsubscribe_token_days: int = Field(365, ge=1, le=36_500)  # up to a hundred years; beyond, dates overflow
    segments: dict[str, Any] = Field(default_factory=dict)
    templates: list[str] = Field(default_factory=lambda: ["templates"])
    # the endings a template file may have; nothing else (the signing key, .env, this file) is read as a template
    template_suffixes: list[str] = Field(
        default_factory=lambda: [".j2", ".jinja", ".jinja2", ".html", ".htm", ".txt"], min_length=1
    )
    campaigns: str = "campaigns"
    channels: dict[str, dict[str, Any]] = Field(default_factory=dict)
    policies: PoliciesConfig = PoliciesConfig()
    dispatch: DispatchConfig = DispatchConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    executor: ExecutorConfig = ExecutorConfig()
    results: ResultsConfig = ResultsConfig()
    serve: ServeConfig = ServeConfig()

    # where the file was read from; relative paths in it resolve against its folder (the working
    # directory when there is no file)
    source: str | None = Field(default=None, exclude=True)
    base_dir: str = Field(default=".", exclude=True)

    # the parsed file, so that errors in named segments point at their line in the config
    _document: YamlDocument | None = PrivateAttr(default=None)

    # webhook secrets whose environment variable is not set: only ``serve`` needs them (``require_serve_secrets``)
    _unset_serve_secrets: list[InputError] = PrivateAttr(default_factory=list)

    @property
    def document(self) -> YamlDocument | None:
        return self._document

    def require_serve_secrets(self) -> None:
        """InputError (each reference, at its line) if a webhook secret's environment variable was not set."""
        problems = self._unset_serve_secrets
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise InputErrors(problems[0].file or "", problems)

    @field_validator("channels")
    @classmethod
    def _prices(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """``cost_per_message`` / ``cost_per_segment`` of a channel: non-negative amounts (kept as Decimal)."""
        for name, channel in value.items():
            if not isinstance(channel, dict):
                raise ValueError(f"channels.{name} must be a mapping of settings")
            for key in ("cost_per_message", "cost_per_segment"):
                if channel.get(key) is None:
                    continue
                try:
                    amount = Decimal(str(channel[key]))
                except ArithmeticError:
                    amount = Decimal(-1)
                if not amount.is_finite() or amount < 0:
                    raise ValueError(f"channels.{name}.{key}: {channel[key]!r} is not an amount (e.g. 0.045)")
                channel[key] = amount
        return value

    @field_validator("template_suffixes")
    @classmethod
    def _suffixes(cls, value: list[str]) -> list[str]:
        for suffix in value:
            if not suffix.startswith(".") or len(suffix) < 2 or "/" in suffix:
                raise ValueError(f"{suffix!r} is not a file ending: write it as .j2, .html, .txt")
        return [suffix.lower() for suffix in value]

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone(value)
        return value

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)

    def resolve_path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else Path(self.base_dir) / path


def _serve_only(path: tuple) -> bool:
    """A webhook secret (``serve.sms_hooks.<name>.secret``, ``serve.email_hooks.<name>.secret``): read by
    ``serve`` alone, so its variable may be unset for every other command."""
    return len(path) == 4 and path[0] == "serve" and path[1] in ("sms_hooks", "email_hooks") and path[3] == "secret"


def _expand_env(value: Any, doc: YamlDocument, path: tuple = (), unset: list[InputError] | None = None) -> Any:
    """``value`` with every ``${VAR}`` replaced. A missing variable is an InputError, except in a webhook secret
    when ``unset`` is given: that problem is appended there (for ``serve`` to raise) and the secret becomes a
    random value, so nothing could ever verify against it."""
    if isinstance(value, dict):
        return {k: _expand_env(v, doc, (*path, k), unset) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, doc, (*path, i), unset) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        problem = doc.error(path, f"environment variable {name} is not set", hint=f"export {name}=… before running")
        if unset is None or not _serve_only(path):
            raise problem
        unset.append(problem)
        return secrets.token_urlsafe(32)

    return _ENV_REF.sub(substitute, value)


_VOCABULARY = sorted(
    {
        name
        for model in (
            Settings,
            DatabaseConfig,
            AnalysisConfig,
            LifecycleConfig,
            CLVConfig,
            TierRule,
            PoliciesConfig,
            DispatchConfig,
            RetryConfig,
            BreakerConfig,
            RateLimitConfig,
            SchedulerConfig,
            ExecutorConfig,
            AttributionConfig,
            ResultsConfig,
            ServeConfig,
            ServeLimitsConfig,
            SmsHookConfig,
            EmailHookConfig,
        )
        for name in model.model_fields
    }
)


def validation_error(doc: YamlDocument, exc: ValidationError) -> InputError:
    """Every problem, each at its line."""
    problems = validation_problems(doc, exc, vocabulary=_VOCABULARY)
    return problems[0] if len(problems) == 1 else InputErrors(doc.file, problems)


def load_settings(path: str | os.PathLike | None = None) -> Settings:
    """Read the config file (see module docstring for where it is looked for)."""
    explicit = path or os.environ.get(CONFIG_ENV)
    if explicit:
        config_path = Path(explicit)
    elif Path(DEFAULT_CONFIG_NAME).is_file():
        config_path = Path(DEFAULT_CONFIG_NAME)
    else:
        return Settings()
    doc = load_yaml(config_path)
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise doc.error((), "the config file must be a mapping of settings")
    unset_serve_secrets: list[InputError] = []
    data = _expand_env(data, doc, unset=unset_serve_secrets)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise validation_error(doc, exc) from None
    settings._unset_serve_secrets = unset_serve_secrets
    settings.source = str(config_path)
    settings._document = doc
    settings.base_dir = str(config_path.resolve().parent)
    return settings


def database_url(settings: Settings, override: str | None = None) -> str:
    return override or os.environ.get(DATABASE_ENV) or settings.database.url or DEFAULT_DATABASE_URL
