"""The built-in ``sms`` channel: text messages to E.164 mobile numbers, through an HTTP gateway or a file outbox.

With no ``gateway:`` configured every message is written as one JSON file (``to``, ``text``, ``segments``,
``customer_id``, ``campaign``, ``idempotency_key``) into ``channels.sms.outbox`` (default ``outbox/sms``,
relative to the config file's folder), named from the delivery's idempotency key so that a resend overwrites its
file. With ``gateway:`` the messages go to that HTTP API (``orchestrator_plugins.sms.gateway`` documents the keys
and how answers map to results). Configuration (``channels.sms`` in the config file)::

    outbox: outbox/sms
    signature: "【某网店】"        # optional: put in front of every text that does not start with it
    opt_out_text: "回T退订"        # appended unless the text already contains it ("" turns it off)
    opt_out_keywords: [T, TD, STOP, UNSUBSCRIBE, 退订, N]   # replies that unsubscribe (import sms-replies)
    gateway:                       # optional
      url: https://sms.example.com/v1/messages
      headers: {Authorization: "Bearer ${SMS_TOKEN}"}
      fields: {to: "{{ to }}", content: "{{ text }}"}

The dispatcher's keys (``retry``, ``breaker``, ``rate_limit``, ``cost_per_message``, ``cost_per_segment``)
belong to it and are accepted
here untouched. In a campaign, ``message: {sms: {text: "…"}}`` (an inline template) or
``message: {sms: {template: sms/new_arrivals.txt.j2}}`` (a template file). Rendering measures each text:
``measures = {"sms_segments": n, "encoding": "GSM-7" | "UCS-2", "chars": len}`` (see ``sms_text``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import phonenumbers
from orchestrator_plugins.sms.config import load_config
from orchestrator_plugins.sms.gateway import GatewaySender, SmsRequest
from orchestrator_plugins.sms.gateway import load_config as load_gateway_config
from orchestrator_plugins.sms.replies import apply_reply
from orchestrator_plugins.sms.replies import register as register_reply_commands
from orchestrator_plugins.sms.text import (
    count_segments,
    with_opt_out,
    with_signature,
)
from pydantic import model_validator

from orchestrator.api import (
    Channel,
    CompiledMessage,
    MessageOptions,
    OutgoingMessage,
    RenderedMessage,
    SendResult,
    TemplateLoader,
    hookimpl,
    missing_setting,
    outbox,
)

MOBILE_TYPES = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)


class SmsOptions(MessageOptions):
    """``message: {sms: {...}}``: the text as an inline template (``text``) or a template file (``template``)."""

    @model_validator(mode="after")
    def _one_source(self) -> SmsOptions:
        if self.text and self.template:
            raise ValueError("give the SMS text as either `template` (a file) or `text` (inline), not both")
        if not (self.text or self.template):
            raise ValueError("an SMS needs its text: `template` (a .txt template file) or `text` (inline)")
        return self


class SmsChannel(Channel):
    name = "sms"
    contact_field = "phone"
    consent = "sms"
    facts_through_templates = True  # render reads facts only through its templates
    idempotent_by_key = True  # the gateway request carries Idempotency-Key; the outbox file is named by it
    options_model = SmsOptions

    def __init__(self, config: Mapping[str, Any], settings: Any):
        super().__init__(config, settings)
        self.sms_config = load_config(config, settings)
        self._gateway: GatewaySender | None = None
        if self.sms_config.gateway is not None:
            source = getattr(settings, "source", None)
            gateway = load_gateway_config(self.sms_config.gateway, settings)
            if not self.sms_config.signature:  # carriers require it, and a real customer must know who wrote
                raise missing_setting(settings, ("channels", "sms", "signature"), "signature: 【某网店】")
            self._gateway = GatewaySender(gateway, source)

    def validate_contact(self, value: str) -> str | None:
        try:
            number = phonenumbers.parse(str(value).strip(), self.settings.default_region)
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_valid_number(number) or phonenumbers.number_type(number) not in MOBILE_TYPES:
            return None  # a landline or a malformed number cannot receive a text
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    def compile(self, options: MessageOptions, templates: TemplateLoader) -> CompiledMessage:
        opts = options if isinstance(options, SmsOptions) else SmsOptions.model_validate(options.model_dump())
        if opts.template:
            text = templates.load(opts.template, html=False)
        else:
            text = templates.from_string(opts.text or "", label="inline sms text")
        return CompiledMessage(channel=self.name, options=opts, templates={"text": text})

    def render(self, compiled: CompiledMessage, context: Mapping[str, Any]) -> RenderedMessage:
        # surrounding whitespace (a template file's final newline) would be billed as characters
        text = compiled.templates["text"].render(context).strip()
        text = with_opt_out(with_signature(text, self.sms_config.signature), self.sms_config.opt_out_text)
        return RenderedMessage(channel=self.name, parts={"text": text}, measures=count_segments(text).measures())

    def send(self, messages: Sequence[OutgoingMessage]) -> Iterator[SendResult]:
        if self._gateway is not None:
            yield from self._gateway.send([_request(message) for message in messages])
            return
        folder = self.settings.resolve_path(self.sms_config.outbox)
        for message in messages:
            yield _write(folder, message)

    def close(self) -> None:
        if self._gateway is not None:
            self._gateway.close()


def _request(message: OutgoingMessage) -> SmsRequest:
    text = message.message.parts.get("text", "")
    segments = message.message.measures.get("sms_segments") or count_segments(text).segments
    return SmsRequest(
        to=message.contact,
        text=text,
        idempotency_key=message.idempotency_key,
        customer_id=message.customer_id,
        campaign=message.campaign,
        segments=segments,
    )


def _write(folder: Path, message: OutgoingMessage) -> SendResult:
    """One message to one JSON file; a failure is this message's result, never the batch's exception."""
    request = _request(message)
    data = json.dumps(
        {
            "to": request.to,
            "text": request.text,
            "segments": request.segments,
            "customer_id": request.customer_id,
            "campaign": request.campaign,
            "idempotency_key": request.idempotency_key,
        },
        ensure_ascii=False,
        indent=2,
    ).encode()
    return outbox.deliver(folder, message, ".json", data + b"\n")


@hookimpl
def register_channels() -> list[type[Channel]]:
    return [SmsChannel]


@hookimpl
def handle_inbound_sms(conn: Any, settings: Any, phone: str, text: str, received_at: datetime) -> str:
    """The service's inbound replies take the same path as ``import sms-replies``."""
    return apply_reply(conn, settings, phone, text, received_at)


@hookimpl
def register_commands(cli: click.Group) -> None:
    register_reply_commands(cli)
