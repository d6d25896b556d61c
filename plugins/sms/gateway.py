"""The HTTP gateway provider of the ``sms`` channel: any JSON / form HTTP API, described in configuration.

Configured as ``channels.sms.gateway`` (secrets only through ``${ENV}`` references)::

    gateway:
      url: https://sms.example.com/v1/messages
      method: POST                          # default POST (GET sends the fields as query parameters)
      headers: {Authorization: "Bearer ${SMS_TOKEN}"}
      body: json                            # json (default) | form
      fields:                               # string values are Jinja templates over
        to: "{{ to }}"                      #   to (E.164), text, idempotency_key, customer_id, campaign, segments
        content: "{{ text }}"
        reference: "{{ idempotency_key }}"
      timeout: 10                           # seconds, for connecting and for the answer
      success:
        status: [200, 201]                  # default: any 2xx
        json_field: result.code             # optional: the answer's field that says it worked ...
        equals: OK                          # ... when it has this value (without equals: when it is truthy)
      provider_id_field: result.message_id  # dotted path; a number selects a list item (SendStatusSet.0.SerialNo)
      error_field: result.code              # the provider's error code (or message)
      error_message_field: result.message   # optional: a readable reason shown next to the code
      permanent_codes: [INVALID_NUMBER]     # codes that must never be retried
      transient_codes: [RATE_LIMITED]       # codes worth retrying
      suppress_codes: {BLACKLISTED: unsubscribed}   # optional: permanent, and the dispatcher suppresses the number

How each message's result is decided (one request per message; the dispatcher retries, never this module):

* the status is a success status and the success rule (if any) holds → ``sent``, with the provider id;
* a success status whose rule fails (a provider answering 200 with ``{"Code": "isv.…"}``: give ``success``
  a ``json_field``), or any other status → a failure, its code read from ``error_field``: a code listed in
  ``transient_codes`` is ``transient``, one in ``permanent_codes`` (or ``suppress_codes``) ``permanent``; an
  unlisted code (or none) is ``transient`` for 408 / 425 / 429 / 5xx and ``permanent`` otherwise (a 4xx or a 2xx
  saying "error": retrying the same request would get the same answer);
* no answer (connection refused or reset, timeout) → ``transient``: the provider may or may not have the
  message, so every request carries the delivery's idempotency key in an ``Idempotency-Key`` header (and in
  ``fields`` where the provider wants it) for the provider to drop the duplicate.

A gateway that wants no ``+`` in numbers: ``to: "{{ to | replace('+', '') }}"``. One ``httpx.Client`` (its
keep-alive pool) serves every batch of a run; ``close()`` ends it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.api import SUPPRESSION_REASONS, InputError, KeptAliveClient, SendResult, load_channel_config

MAX_PROVIDER_ID = 256  # the ledger's provider_id column
MAX_REASON = 300  # of a provider's answer quoted in an error
TRANSIENT_STATUSES = (408, 425, 429)
FIELD_NAMES = ("to", "text", "idempotency_key", "customer_id", "campaign", "segments")
SAMPLE = {
    "to": "+8613800138000",
    "text": "【某网店】您好 回T退订",
    "idempotency_key": "run-1:C000001:sms",
    "customer_id": "C000001",
    "campaign": "sample",
    "segments": 1,
}
CONFIG_HINT = (
    "keys: url, method, headers, body (json|form), fields, timeout, success {status, json_field, equals}, "
    "provider_id_field, error_field, error_message_field, permanent_codes, transient_codes, suppress_codes"
)


class SuccessRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: list[int] | None = None  # None: any 2xx
    json_field: str | None = None
    equals: Any = None

    @model_validator(mode="after")
    def _equals_needs_field(self) -> SuccessRule:
        if self.equals is not None and not self.json_field:
            raise ValueError("`equals` needs `json_field` (the answer's field to compare)")
        return self


class GatewayConfig(BaseModel):
    """``channels.sms.gateway``."""

    model_config = ConfigDict(extra="forbid")

    url: str
    method: Literal["POST", "PUT", "PATCH", "GET"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    body: Literal["json", "form"] = "json"
    fields: dict[str, Any] = Field(default_factory=lambda: {"to": "{{ to }}", "text": "{{ text }}"})
    timeout: float = Field(default=10, gt=0, le=300)
    success: SuccessRule = SuccessRule()
    provider_id_field: str | None = None
    error_field: str | None = None
    error_message_field: str | None = None
    permanent_codes: list[str] = Field(default_factory=list)
    transient_codes: list[str] = Field(default_factory=list)
    suppress_codes: dict[str, str] = Field(default_factory=dict)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("permanent_codes", "transient_codes", mode="before")
    @classmethod
    def _codes_as_text(cls, value: Any) -> Any:  # YAML makes 21610 an int; the answer may hold "21610"
        return [str(code) for code in value] if isinstance(value, list) else value

    @field_validator("suppress_codes", mode="before")
    @classmethod
    def _suppress_reasons(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        for reason in value.values():
            if reason not in SUPPRESSION_REASONS:
                raise ValueError(f"{reason!r} is not one of {', '.join(SUPPRESSION_REASONS)}")
        return {str(code): reason for code, reason in value.items()}

    @model_validator(mode="after")
    def _form_is_flat(self) -> GatewayConfig:
        if self.body == "form" or self.method == "GET":
            nested = [name for name, value in self.fields.items() if isinstance(value, Mapping | list)]
            if nested:
                raise ValueError(f"fields {', '.join(nested)}: form and query fields must be plain values")
        overlap = set(self.permanent_codes) & set(self.transient_codes)
        if overlap:
            raise ValueError(f"codes both permanent and transient: {', '.join(sorted(overlap))}")
        return self


def load_config(raw: Any, settings: Any) -> GatewayConfig:
    return load_channel_config(GatewayConfig, raw, settings, ("channels", "sms", "gateway"), CONFIG_HINT)


# --- request fields ------------------------------------------------------------------------------------------------


class FieldTemplates:
    """``fields:`` compiled once; string values are sandboxed, strict Jinja templates (a typo fails at load)."""

    def __init__(self, fields: Mapping[str, Any], source: str | None):
        self._env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        self._source = source
        self._fields = {name: self._compile(value, f"fields.{name}") for name, value in fields.items()}
        self.render(SAMPLE)  # an unknown variable or a failing filter is a configuration error, found now

    def _compile(self, value: Any, where: str) -> Any:
        if isinstance(value, str):
            try:
                return self._env.from_string(value)
            except TemplateError as exc:
                raise self._error(where, exc) from None
        if isinstance(value, Mapping):
            return {k: self._compile(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self._compile(v, f"{where}.{i}") for i, v in enumerate(value)]
        return value

    def _error(self, where: str, exc: Exception) -> InputError:
        return InputError(
            f"channels.sms.gateway.{where}: {exc}",
            file=self._source,
            hint=f"field templates see {', '.join(FIELD_NAMES)}",
        )

    def render(self, context: Mapping[str, Any]) -> dict[str, Any]:
        def value(item: Any, where: str) -> Any:
            if isinstance(item, dict):
                return {k: value(v, f"{where}.{k}") for k, v in item.items()}
            if isinstance(item, list):
                return [value(v, f"{where}.{i}") for i, v in enumerate(item)]
            if hasattr(item, "render"):
                try:
                    return item.render(context)
                except TemplateError as exc:
                    raise self._error(where, exc) from None
            return item

        return {name: value(item, f"fields.{name}") for name, item in self._fields.items()}


# --- answers -------------------------------------------------------------------------------------------------------


_MISSING = object()


def lookup(data: Any, path: str | None) -> Any:
    """The value at a dotted path (``a.b.0.c``) of a JSON answer; ``_MISSING`` when absent."""
    if not path:
        return _MISSING
    for key in path.split("."):
        if isinstance(data, Mapping) and key in data:
            data = data[key]
        elif isinstance(data, list) and key.lstrip("-").isdigit() and -len(data) <= int(key) < len(data):
            data = data[int(key)]
        else:
            return _MISSING
    return data


def _same(value: Any, expected: Any) -> bool:
    return value == expected or str(value) == str(expected)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Answer:
    status: int
    reason_phrase: str
    body_text: str
    data: Any  # the parsed JSON body, or None


def classify(config: GatewayConfig, answer: Answer) -> SendResult:
    """One HTTP answer as a send result (see the module docstring)."""
    code = lookup(answer.data, config.error_field)
    code = None if code is _MISSING or code in (None, "") else _text(code)
    status_ok = answer.status in config.success.status if config.success.status else 200 <= answer.status < 300
    if status_ok:
        ok = True
        if config.success.json_field:
            value = lookup(answer.data, config.success.json_field)
            if config.success.equals is None:
                ok = value is not _MISSING and bool(value)
            else:
                ok = value is not _MISSING and _same(value, config.success.equals)
        if ok:
            provider_id = lookup(answer.data, config.provider_id_field)
            provider_id = None if provider_id is _MISSING or provider_id is None else _text(provider_id)
            return SendResult.sent(provider_id[:MAX_PROVIDER_ID] if provider_id else None)
    return _failure(config, answer, code)


def _failure(config: GatewayConfig, answer: Answer, code: str | None) -> SendResult:
    message = lookup(answer.data, config.error_message_field)
    detail = code or ""
    if message is not _MISSING and message not in (None, "") and _text(message) != code:
        detail = f"{detail} ({_text(message)})" if detail else _text(message)
    if not detail:
        detail = " ".join(answer.body_text.split())[:MAX_REASON] or answer.reason_phrase
    error = f"HTTP {answer.status}: {detail}"
    if code is not None:
        if code in config.suppress_codes:
            return SendResult.permanent(error, suppress=config.suppress_codes[code])
        if code in config.transient_codes:
            return SendResult.transient(error)
        if code in config.permanent_codes:
            return SendResult.permanent(error)
    if answer.status in TRANSIENT_STATUSES or answer.status >= 500:
        return SendResult.transient(error)
    return SendResult.permanent(error)


def _answer(response: httpx.Response) -> Answer:
    text = response.text
    try:
        data = response.json() if text.strip() else None
    except ValueError:
        data = None
    return Answer(response.status_code, response.reason_phrase, text, data)


# --- the provider --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmsRequest:
    """One message as the gateway's fields see it."""

    to: str
    text: str
    idempotency_key: str
    customer_id: str
    campaign: str
    segments: int

    def context(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELD_NAMES}


class GatewaySender:
    """Sends each message as one request over a client reused across batches; ``close()`` ends it."""

    def __init__(self, config: GatewayConfig, source: str | None = None):
        self.config = config
        self.fields = FieldTemplates(config.fields, source)
        self._http = KeptAliveClient(config.timeout, config.headers)

    @property
    def client(self) -> httpx.Client:
        return self._http.client

    def send(self, requests: Sequence[SmsRequest]) -> Iterator[SendResult]:
        for request in requests:
            yield self._send_one(request)

    def _send_one(self, request: SmsRequest) -> SendResult:
        cfg = self.config
        try:
            fields = self.fields.render(request.context())
        except InputError as exc:  # e.g. a filter refusing this message's value: this message cannot be built
            return SendResult.permanent(f"cannot build the request: {exc.message}")
        headers = {"Idempotency-Key": request.idempotency_key} if request.idempotency_key else {}
        if cfg.method == "GET":
            kwargs: dict[str, Any] = {"params": fields}
        elif cfg.body == "form":
            kwargs = {"data": {k: "" if v is None else _form_value(v) for k, v in fields.items()}}
        else:
            kwargs = {"json": fields}
        try:
            response = self.client.request(cfg.method, cfg.url, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            return SendResult.transient(f"{self._where}: no answer within {cfg.timeout:g} s ({type(exc).__name__})")
        except httpx.HTTPError as exc:  # refused, reset, DNS, TLS: nothing (or not all) reached the provider
            return SendResult.transient(f"{self._where}: {type(exc).__name__}: {exc}")
        return classify(cfg, _answer(response))

    @property
    def _where(self) -> str:
        parts = urlsplit(self.config.url)
        return f"{parts.scheme}://{parts.netloc}"

    def close(self) -> None:
        self._http.close()


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
