"""What a channel is: the contract between the pipeline and channel plugins.

A channel plugin registers a ``Channel`` subclass through the ``register_channels`` hook. The pipeline never
knows which channel it serves; it only calls the methods below:

1. at validate / dry-run time, ``options_model`` validates the campaign's ``message: {<channel>: {...}}`` block
   and ``compile`` turns it into a ``CompiledMessage`` (templates loaded and syntax-checked once);
2. per customer, ``contact_of`` picks and normalises the address (``None``: not reachable on this channel);
3. per customer, ``render`` produces the message parts from the compiled templates and the context;
4. per batch, ``send`` delivers ``OutgoingMessage`` objects and yields one ``SendResult`` per message, in order.

``send`` should be a generator that yields each message's result as soon as the provider answered: the dispatcher
records every result in the ledger the moment it is yielded, so a crash can repeat at most the one message whose
answer was not yet recorded. A ``send`` that returns a list is accepted too, at the price of a whole batch in doubt.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # the module needs the ledger, which needs this one
    from orchestrator.shared_values import SharedValues

#: keys of ``channels.<name>`` that belong to the dispatcher (and to dry-run's cost estimate), not to the channel:
#: a channel validating its own config drops them first (``own_config``)
DISPATCH_KEYS = ("retry", "breaker", "rate_limit", "cost_per_message", "cost_per_segment")


def own_config(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """A channel's config without the dispatcher's keys."""
    return {key: value for key, value in (raw or {}).items() if key not in DISPATCH_KEYS}


class MessageOptions(BaseModel):
    """The common shape of ``message: {<channel>: {...}}``: a template file or inline text."""

    model_config = ConfigDict(extra="forbid")

    template: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class CompiledMessage:
    """A channel's message block with its templates compiled; built once per campaign step."""

    channel: str
    options: MessageOptions
    templates: Mapping[str, Any]  # part name -> compiled template (e.g. "subject", "html", "text")
    #: advice found while compiling (``validate`` prints it; it does not make the campaign invalid)
    warnings: tuple[str, ...] = ()


@dataclass
class RenderedMessage:
    """One customer's message, ready to send: parts (subject, html, text, …), headers and measures."""

    channel: str
    parts: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)
    measures: dict[str, Any] = field(default_factory=dict)  # e.g. sms segments, byte size


@dataclass
class OutgoingMessage:
    """A rendered message bound to its ledger row and address."""

    delivery_id: int | None  # None in dry-run
    customer_id: str
    contact: str
    message: RenderedMessage
    idempotency_key: str = ""  # stable across retries and resumes; pass it to providers that deduplicate
    run_id: int | None = None
    campaign: str = ""


class SendStatus(enum.StrEnum):
    SENT = "sent"
    TRANSIENT = "transient"  # try again later (timeouts, 4xx SMTP replies, HTTP 429/5xx)
    PERMANENT = "permanent"  # never retry (bad address, refused, unsubscribed)


@dataclass(frozen=True)
class SendResult:
    status: SendStatus
    provider_id: str | None = None
    error: str | None = None
    #: with a permanent result: the provider says this address must not be contacted again on this channel
    #: ("unsubscribed", "bounced", "complained", "do_not_contact"); the dispatcher adds the suppression
    suppress: str | None = None

    @classmethod
    def sent(cls, provider_id: str | None = None) -> SendResult:
        return cls(SendStatus.SENT, provider_id=provider_id)

    @classmethod
    def transient(cls, error: str) -> SendResult:
        return cls(SendStatus.TRANSIENT, error=error)

    @classmethod
    def permanent(cls, error: str, suppress: str | None = None) -> SendResult:
        return cls(SendStatus.PERMANENT, error=error, suppress=suppress)


def http_result(status: int, reason: str, provider_id: str | None = None) -> SendResult:
    """The usual reading of an HTTP provider's status: 2xx sent; 408, 425, 429 and 5xx worth retrying (the
    dispatcher retries with backoff, so plugins never loop); any other 4xx is final."""
    if 200 <= status < 300:
        return SendResult.sent(provider_id)
    error = f"HTTP {status}: {reason}".strip()
    if status in (408, 425, 429) or status >= 500:
        return SendResult.transient(error)
    return SendResult.permanent(error)


class Channel(ABC):
    """Base class of every channel. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    #: the customer field that holds this channel's address ("email", "phone", "wechat_openid", …)
    contact_field: ClassVar[str]
    #: the consent channel checked before contacting; None for channels that need no marketing consent
    consent: ClassVar[str | None] = None
    #: the model of this channel's ``message:`` block in campaign files
    options_model: ClassVar[type[MessageOptions]] = MessageOptions
    #: whether a delivery reaches the member as a message: such deliveries count toward, and are limited by,
    #: frequency caps (a coupon put in the member's wallet is not one)
    is_message: ClassVar[bool] = True
    #: values shared through the database with every process sending through it (e.g. an access token that the
    #: provider revokes when another is fetched); set when the channel is built for a database, else None
    shared_values: SharedValues | None = None
    #: whether ``render`` reads the member's facts (``customer.rfm_segment``, ``customer.clv``, …) only through the
    #: templates in ``CompiledMessage.templates``: then the audience computes only the facts those templates read
    #: (see ``customer_names``). False (the default, always safe): every fact is computed for this channel.
    facts_through_templates: ClassVar[bool] = False
    #: whether delivering one message twice is harmless because the receiving end deduplicates by its idempotency
    #: key (a file outbox names the file after it; a provider honouring ``Idempotency-Key``). Then the dispatcher
    #: commits this channel's sent results once per claimed batch instead of once per message: a crash resends at
    #: most one batch, onto the same keys. False (the default): each result is committed as the provider answers.
    #: An instance may set it from its config (the e-mail channel: True for its outbox, False over SMTP).
    idempotent_by_key: bool = False

    def __init__(self, config: Mapping[str, Any], settings: Any):
        """``config`` is ``channels.<name>`` from the config file; ``settings`` the whole ``Settings``."""
        self.config = config
        self.settings = settings

    def contact_of(self, customer: Mapping[str, Any]) -> str | None:
        """The customer's normalised address on this channel, or None if missing or invalid."""
        value = customer.get(self.contact_field)
        return self.validate_contact(value) if value else None

    def validate_contact(self, value: str) -> str | None:
        return value.strip() or None

    @abstractmethod
    def compile(self, options: MessageOptions, templates: Any) -> CompiledMessage:
        """Load and compile the templates named by ``options`` (raise ``InputError`` with file and line)."""

    @abstractmethod
    def render(self, compiled: CompiledMessage, context: Mapping[str, Any]) -> RenderedMessage:
        """Render one customer's message from the compiled templates."""

    @abstractmethod
    def send(self, messages: Sequence[OutgoingMessage]) -> Iterable[SendResult]:
        """Deliver a batch; yield one result per message, in the same order, as each one is known. Never raise
        for one bad message: a bad message is its own permanent result."""

    def customer_names(self, compiled: CompiledMessage) -> frozenset[str] | None:
        """The ``customer.*`` names rendering ``compiled`` reads, or None when unknown (then every fact is
        computed). The default: those its compiled templates read, if ``facts_through_templates`` says render
        reads nothing else; override it when render also reads facts of its own."""
        if not self.facts_through_templates:
            return None
        from orchestrator.template_names import names_in  # jinja2 only where templates are analysed

        return names_in(compiled.templates)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called once when a run is done."""
