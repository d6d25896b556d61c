"""The built-in ``webhook`` channel: one signed JSON POST per customer to a URL of your own systems.

Use it to hand members to a CRM, a loyalty app or a chat bot. Configuration (``channels.webhook`` in the config
file; secrets only through ``${ENV}`` references)::

    webhook:
      url: https://crm.example.com/hooks/orchestrator   # without it: bodies go to the file outbox
      outbox: outbox/webhook        # where, one .json per delivery (relative to the config file)
      secret: ${WEBHOOK_SECRET}     # optional; when given every request is signed (see below)
      headers:                      # optional extra request headers
        Authorization: Bearer ${CRM_TOKEN}
      timeout: 10                   # seconds, for connecting and for the answer
      signature_header: X-Orchestrator-Signature
      consent: null                 # the consent channel to check first (e.g. email); none by default
      is_message: true              # false when the receiver does not message the member (no frequency caps)

A campaign step writes the payload as a mapping; every string in it is a Jinja template rendered per customer,
so the body is always valid JSON whatever the customer data holds (numbers, booleans and null stay as written;
a rendered value is a string)::

    message:
      webhook:
        event: winback.offer        # optional, default "message"
        payload:
          name: "{{ customer.name }}"
          coupon: {code: "{{ offer.code }}", value: "{{ offer.value }}"}
          channel: app
          priority: 2

The request body, serialised compactly in UTF-8, is::

    {"event": "winback.offer", "campaign": "winback", "customer_id": "C000042",
     "idempotency_key": "...", "data": {"name": "张伟", "coupon": {...}, "channel": "app", "priority": 2}}

Headers: ``Content-Type: application/json``, ``Idempotency-Key`` (the same for every retry of one delivery: a
receiver drops a key it has already processed) and, with a secret, the signature header
``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the secret>``.

Verifying a request (what ``verify`` below does; any language can do the same): take the raw body bytes as
received (before any JSON parsing), split the header on ``,`` into ``t`` and ``v1`` values, compute
HMAC-SHA256 with the shared secret over ``t`` + ``.`` + body, compare it with each ``v1`` in constant time, and
refuse a ``t`` further than a few minutes from your clock (a replayed request). Then deduplicate on
``Idempotency-Key``: a retry after a timeout carries the same key and the same body, with a fresh signature.

Results: 2xx is sent (the provider id is the ``id`` field of a JSON answer, else the status); 408, 425, 429, 5xx,
timeouts and connection errors are transient (the dispatcher retries); 410 Gone is permanent and suppresses the
member on this channel (``do_not_contact``); any other 4xx is permanent with the first 200 characters of the
answer as the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from orchestrator.api import (
    Channel,
    CompiledMessage,
    CompiledTemplate,
    HttpUrl,
    KeptAliveClient,
    MessageOptions,
    OutgoingMessage,
    RenderedMessage,
    SendResult,
    TemplateLoader,
    hookimpl,
    http_result,
    load_channel_config,
    outbox,
)

DEFAULT_SIGNATURE_HEADER = "X-Orchestrator-Signature"
DEFAULT_EVENT = "message"
MAX_PROVIDER_ID = 256  # the ledger's provider_id column
MAX_REASON = 200
CONFIG_HINT = (
    "webhook: {url: https://crm.example.com/hook, secret: ${WEBHOOK_SECRET}, headers: {...}, timeout: 10, "
    "signature_header: X-Orchestrator-Signature, consent: null, is_message: true}"
)


class WebhookConfig(BaseModel):
    """``channels.webhook``."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl | None = None  # none: each request body is written to the file outbox instead
    outbox: str = "outbox/webhook"
    secret: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=10, gt=0)
    signature_header: str = Field(default=DEFAULT_SIGNATURE_HEADER, min_length=1)
    consent: str | None = None
    is_message: bool = True

    @field_validator("secret")
    @classmethod
    def _secret_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():  # an unset ${WEBHOOK_SECRET} must not mean "unsigned"
            raise ValueError("the secret is empty (is the environment variable set?)")
        return value


def load_config(raw: Any, settings: Any) -> WebhookConfig:
    return load_channel_config(WebhookConfig, raw, settings, ("channels", "webhook"), CONFIG_HINT)


class WebhookOptions(MessageOptions):
    """``message: {webhook: {...}}``: an optional event name and the payload (string values are templates)."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(default=DEFAULT_EVENT, min_length=1)
    payload: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _payload_not_text(self) -> WebhookOptions:
        # one text template could render invalid JSON for some customer; a mapping cannot
        if self.template or self.text:
            raise ValueError(
                "a webhook takes `payload:` (a mapping whose string values are templates), not template/text"
            )
        return self


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The signature header's value for ``body``: ``t=<unix seconds>,v1=<hex HMAC-SHA256>``."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode("utf-8"), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(secret: str, header: str, body: bytes | str, tolerance: float = 300, now: float | None = None) -> bool:
    """What a receiver does: True when ``header`` signs ``body`` (the raw bytes) with ``secret`` and its time is
    within ``tolerance`` seconds of ``now``. Several ``v1`` values are accepted (during a secret rotation)."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, raw, timestamp).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


class WebhookChannel(Channel):
    name = "webhook"
    contact_field = "customer_id"  # the payload is about the member; the address is the configured URL
    options_model = WebhookOptions
    facts_through_templates = True  # render reads facts only through its payload templates
    idempotent_by_key = True  # every request carries Idempotency-Key; the outbox file is named by it

    def __init__(self, config: Mapping[str, Any], settings: Any):
        super().__init__(config, settings)
        self.cfg = load_config(config, settings)
        self.consent = self.cfg.consent
        self.is_message = self.cfg.is_message
        self._http = KeptAliveClient(self.cfg.timeout)

    def compile(self, options: MessageOptions, templates: TemplateLoader) -> CompiledMessage:
        opts = options if isinstance(options, WebhookOptions) else WebhookOptions.model_validate(options)
        payload = _compile_value(opts.payload, "payload", templates)
        return CompiledMessage(channel=self.name, options=opts, templates={"payload": payload})

    def render(self, compiled: CompiledMessage, context: Mapping[str, Any]) -> RenderedMessage:
        data = _render_value(compiled.templates["payload"], context)
        event = getattr(compiled.options, "event", DEFAULT_EVENT)
        # parts hold the rendered payload as JSON text, so that a retry sends exactly the same bytes
        data_json = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return RenderedMessage(
            channel=self.name,
            parts={"event": event, "data": data_json},
            measures={"data_bytes": len(data_json.encode("utf-8"))},
        )

    def send(self, messages: Sequence[OutgoingMessage]) -> Iterator[SendResult]:
        folder = None if self.cfg.url else self.settings.resolve_path(self.cfg.outbox)
        for message in messages:
            yield self._post(message) if folder is None else self._write(folder, message)

    def _write(self, folder: Path, message: OutgoingMessage) -> SendResult:
        """Without a URL: the request body that would be POSTed, one JSON file per delivery."""
        try:
            body = build_body(message)
        except (KeyError, ValueError, TypeError) as exc:
            return SendResult.permanent(f"cannot build the request body: {exc}")
        return outbox.deliver(folder, message, ".json", body + b"\n")

    def close(self) -> None:
        self._http.close()

    @property
    def client(self) -> httpx.Client:
        return self._http.client

    def _post(self, message: OutgoingMessage) -> SendResult:
        try:
            body = build_body(message)
        except (KeyError, ValueError, TypeError) as exc:
            return SendResult.permanent(f"cannot build the request body: {exc}")
        headers = {**self.cfg.headers, "Content-Type": "application/json; charset=utf-8"}
        if message.idempotency_key:
            headers["Idempotency-Key"] = message.idempotency_key
        if self.cfg.secret:
            headers[self.cfg.signature_header] = sign(self.cfg.secret, body)
        try:
            response = self.client.post(self.cfg.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return SendResult.transient(f"timed out after {self.cfg.timeout:g}s ({type(exc).__name__})")
        except httpx.HTTPError as exc:  # connection refused or reset, protocol errors: the receiver may recover
            return SendResult.transient(_describe(exc))
        return read_response(response)


def build_body(message: OutgoingMessage) -> bytes:
    """The request body: the envelope around the stored payload, which is embedded as stored (byte-identical)."""
    parts = message.message.parts
    data = parts["data"]
    json.loads(data)  # a payload that is not JSON would make the whole body invalid: refuse it here
    head = {
        "event": parts.get("event") or DEFAULT_EVENT,
        "campaign": message.campaign,
        "customer_id": message.customer_id,
        "idempotency_key": message.idempotency_key,
    }
    envelope = json.dumps(head, ensure_ascii=False, separators=(",", ":"))
    return f'{envelope[:-1]},"data":{data}}}'.encode()


def read_response(response: httpx.Response) -> SendResult:
    status = response.status_code
    if 200 <= status < 300:
        return SendResult.sent(_provider_id(response))
    reason = " ".join(response.text[:MAX_REASON].split()) or response.reason_phrase
    if status == 410:  # Gone: the receiver says this member must not be sent to again
        return SendResult.permanent(f"HTTP 410: {reason}", suppress="do_not_contact")
    return http_result(status, reason)


def _provider_id(response: httpx.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("id"), str | int) and str(answer["id"]):
        return str(answer["id"])[:MAX_PROVIDER_ID]
    return str(response.status_code)


def _compile_value(value: JsonValue, where: str, templates: TemplateLoader) -> Any:
    """The payload with each string compiled as a template; other values kept as written."""
    if isinstance(value, str):
        return templates.from_string(value, label=f"webhook {where}")
    if isinstance(value, dict):
        return {key: _compile_value(item, f"{where}.{key}", templates) for key, item in value.items()}
    if isinstance(value, list):
        return [_compile_value(item, f"{where}[{index}]", templates) for index, item in enumerate(value)]
    return value


def _render_value(value: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(value, CompiledTemplate):
        return value.render(context)
    if isinstance(value, dict):
        return {key: _render_value(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [_render_value(item, context) for item in value]
    return value


def _describe(exc: BaseException) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


@hookimpl
def register_channels() -> list[type[Channel]]:
    return [WebhookChannel]
