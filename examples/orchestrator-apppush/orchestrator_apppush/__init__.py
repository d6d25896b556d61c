"""``apppush``: mobile app push notifications through a push service's HTTP API (the plugin guide's example).

The shop's push service knows which devices belong to which member, so the channel addresses members by
``customer_id`` and never sees a device token. Configuration (``channels.apppush`` in the config file; the key
only through an ``${ENV}`` reference)::

    apppush:
      url: https://push.example.com/v1/notifications   # required
      api_key: ${APPPUSH_KEY}                          # required; sent as "Authorization: Bearer <key>"
      timeout: 10                                      # seconds, for connecting and for the answer
      consent: null                                    # the consent to check first (e.g. app_push); none by default
      retry: {max_attempts: 5}                         # the dispatcher's keys (retry, breaker, rate_limit) are
      rate_limit: {per_second: 50}                     # accepted here and read by the dispatcher

A campaign step writes the title and body as templates, and optionally a deep link (a template too)::

    message:
      apppush:
        title: "{{ customer.name }}，您的专属券到了"
        body: "满 100 减 20，{{ offer.expires_at|date('%m月%d日') }} 前有效"
        deep_link: "shop://coupons/{{ offer.code }}"

Each message is one ``POST <url>`` with the JSON body
``{"to": customer_id, "title": ..., "body": ..., "deep_link": ... or null, "idempotency_key": ...}`` and an
``Idempotency-Key`` header carrying the same key (the service drops a key it has already accepted).

Results: 2xx is sent (the provider id is the ``id`` of a JSON answer, else the status); 404 with
``{"error": "unknown_member"}`` is permanent and suppresses the member on this channel (``do_not_contact``: the
member has no device that can receive pushes); every other status as ``orchestrator.api.http_result`` reads
it (408, 425, 429 and 5xx transient, other 4xx permanent); timeouts and connection errors transient. The channel
never retries or waits: the dispatcher does, by ``channels.apppush.retry``, ``breaker`` and ``rate_limit``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.api import (
    Channel,
    CompiledMessage,
    HttpUrl,
    InputError,
    KeptAliveClient,
    MessageOptions,
    OutgoingMessage,
    RenderedMessage,
    SendResult,
    TemplateLoader,
    hookimpl,
    http_result,
    load_channel_config,
    synthetic_context,
)

__version__ = "0.1.0"

#: about what a lock screen shows of a notification's body; longer bodies are sent in full, but cut on screen
LOCK_SCREEN_CHARS = 178
UNKNOWN_MEMBER = "unknown_member"  # the push service's error code for a member without a registered device
MAX_REASON = 200
MAX_PROVIDER_ID = 256  # the ledger's provider_id column
CONFIG_HINT = (
    "apppush: {url: https://push.example.com/v1/notifications, api_key: ${APPPUSH_KEY}, timeout: 10, consent: null}"
)


class AppPushConfig(BaseModel):
    """``channels.apppush``."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl
    api_key: str = Field(min_length=1)
    timeout: float = Field(default=10, gt=0)
    consent: str | None = None

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, value: str) -> str:
        if not value.strip():  # ${APPPUSH_KEY:-} with the variable unset
            raise ValueError("the API key is empty (is APPPUSH_KEY set?)")
        return value


def load_config(raw: Any, settings: Any) -> AppPushConfig:
    """``channels.apppush`` validated (the dispatcher's keys left out); a problem is an ``InputError`` at its line
    of the config file, with a hint."""
    return load_channel_config(AppPushConfig, raw, settings, ("channels", "apppush"), CONFIG_HINT)


class AppPushOptions(MessageOptions):
    """``message: {apppush: {...}}``: ``title`` and ``body`` templates, an optional ``deep_link`` template."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1)
    body: str = Field(min_length=1)
    deep_link: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _no_template_or_text(self) -> AppPushOptions:
        if self.template or self.text:
            raise ValueError("a push takes `title:` and `body:` (inline templates), not template/text")
        return self


class AppPushChannel(Channel):
    name = "apppush"
    contact_field = "customer_id"  # the push service maps member ids to devices
    options_model = AppPushOptions

    def __init__(self, config: Mapping[str, Any], settings: Any):
        super().__init__(config, settings)
        self.cfg = load_config(config, settings)
        self.consent = self.cfg.consent  # None: no consent checked (the import records email and sms only)
        self._http = KeptAliveClient(self.cfg.timeout)

    # -- validate time ----------------------------------------------------------------------------------------
    def compile(self, options: MessageOptions, templates: TemplateLoader) -> CompiledMessage:
        opts = options if isinstance(options, AppPushOptions) else AppPushOptions.model_validate(options.model_dump())
        compiled = {
            "title": templates.from_string(opts.title, label="apppush title"),
            "body": templates.from_string(opts.body, label="apppush body"),
        }
        if opts.deep_link:
            compiled["deep_link"] = templates.from_string(opts.deep_link, label="apppush deep_link")
        return CompiledMessage(
            channel=self.name, options=opts, templates=compiled, warnings=self._lint(compiled["body"])
        )

    def _lint(self, body: Any) -> tuple[str, ...]:
        """Advice, not an error: a body longer than a lock screen shows (measured on the synthetic member)."""
        try:
            text = body.render(synthetic_context(True, tz=self.settings.tz)).strip()
        except InputError:
            return ()  # the loader renders every template itself and reports the error with its position
        if len(text) <= LOCK_SCREEN_CHARS:
            return ()
        return (
            f"apppush body: {len(text)} characters for the synthetic member; lock screens show about "
            f"{LOCK_SCREEN_CHARS}, the rest only when the notification is opened (it is sent in full)",
        )

    # -- per member -------------------------------------------------------------------------------------------
    def render(self, compiled: CompiledMessage, context: Mapping[str, Any]) -> RenderedMessage:
        parts = {part: compiled.templates[part].render(context).strip() for part in ("title", "body")}
        link = compiled.templates.get("deep_link")
        parts["deep_link"] = link.render(context).strip() if link is not None else ""
        return RenderedMessage(channel=self.name, parts=parts, measures={"chars": len(parts["body"])})

    # -- per batch --------------------------------------------------------------------------------------------
    def send(self, messages: Sequence[OutgoingMessage]) -> Iterator[SendResult]:
        for message in messages:  # one result as soon as each answer is known: the dispatcher records it at once
            yield self._post(message)

    def close(self) -> None:
        self._http.close()

    @property
    def client(self) -> httpx.Client:  # one client for the run: connections are kept alive across messages
        return self._http.client

    def _post(self, message: OutgoingMessage) -> SendResult:
        parts = message.message.parts
        payload = {
            "to": message.contact,
            "title": parts.get("title", ""),
            "body": parts.get("body", ""),
            "deep_link": parts.get("deep_link") or None,
            "idempotency_key": message.idempotency_key,
        }
        headers = {"Authorization": f"Bearer {self.cfg.api_key}"}
        if message.idempotency_key:
            headers["Idempotency-Key"] = message.idempotency_key
        try:
            response = self.client.post(self.cfg.url, json=payload, headers=headers)
        except httpx.TimeoutException as exc:
            return SendResult.transient(f"timed out after {self.cfg.timeout:g}s ({type(exc).__name__})")
        except httpx.HTTPError as exc:  # refused, reset, protocol errors: the service may recover
            return SendResult.transient(f"{type(exc).__name__}: {exc}".rstrip(": "))
        return read_response(response)


def read_response(response: httpx.Response) -> SendResult:
    """The push service's answer as a result (see the module docstring)."""
    answer = _json(response)
    status = response.status_code
    if 200 <= status < 300:
        found = answer.get("id")
        return SendResult.sent(str(found)[:MAX_PROVIDER_ID] if found else str(status))
    reason = " ".join(response.text[:MAX_REASON].split()) or response.reason_phrase
    if status == 404 and answer.get("error") == UNKNOWN_MEMBER:
        # only this answer suppresses: a 404 from a wrong URL must not put every member on the list
        return SendResult.permanent(f"HTTP 404: {reason}", suppress="do_not_contact")
    return http_result(status, reason)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


@hookimpl
def register_channels() -> list[type[Channel]]:
    return [AppPushChannel]
