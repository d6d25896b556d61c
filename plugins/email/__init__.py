"""The built-in ``email`` channel: HTML plus plain-text messages, over SMTP or to a file outbox of ``.eml`` files.

With no SMTP provider configured every message is written as a real MIME file into ``channels.email.outbox``
(default ``outbox/email``, relative to the config file's folder), one ``.eml`` per message named from its
idempotency key: a new user sees exactly what would be sent, and any mail client opens it. With ``smtp:``
configured the same bytes go to that server, one connection reused across batches (``orchestrator_plugins.
email_smtp`` documents the keys and how replies map to results). Configuration (``channels.email``)::

    outbox: outbox/email
    from: "Shop <noreply@example.com>"
    unsubscribe_mailto: unsubscribe@example.com   # optional: a mailto beside the https link in List-Unsubscribe
    smtp:                       # optional
      host: smtp.example.com
      security: starttls
      username: mailer
      password: ${SMTP_PASSWORD}

A campaign's message block (``message: {email: {...}}``)::

    subject: "{{ customer.name }}，送您一张回归礼券"
    preheader: "满150减30，{{ offer.expires_at|date }} 前有效"   # optional: the inbox preview line
    template: email/winback_lapsed.html.j2    # or html: "<p>…</p>" inline
    text_template: email/winback.txt.j2       # optional: else the text part is derived from the HTML
    from: "Shop <news@example.com>"           # optional: overrides channels.email.from
    reply_to: care@example.com                # optional

What compile does, once per campaign step (``email_inline`` has the details): the HTML template is flattened
(literal ``extends`` / ``include``), its ``<style>`` rules are inlined by premailer once per template version
(cached by source hash, Jinja syntax protected), and the plain-text template is derived from the same source; the
HTML is linted (``email_lint``: widths over 650 px, images without alt, external stylesheets) into
``CompiledMessage.warnings``. Per recipient, render only renders templates; the preheader goes at the top of the
body as hidden text; headers carry ``List-Unsubscribe`` (the signed https ``unsubscribe_url``, plus the mailto)
and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058). Send builds the MIME bytes from the
rendered parts (``email_mime``: Message-ID from the idempotency key, so a re-send has the same one), so a
``RenderedMessage`` persisted as JSON between render and send is all send needs.
"""

from __future__ import annotations

import html as html_module
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email
from jinja2 import TemplateNotFound
from orchestrator_plugins.email.inline import NotFlat, flatten, prepare
from orchestrator_plugins.email.lint import lint
from orchestrator_plugins.email.mime import build_message
from orchestrator_plugins.email.smtp import Envelope, SmtpSender, load_config
from orchestrator_plugins.email.text import html_to_text
from pydantic import ConfigDict, Field, model_validator

from orchestrator.api import (
    Channel,
    CompiledMessage,
    CompiledTemplate,
    InputError,
    MessageOptions,
    OutgoingMessage,
    RenderedMessage,
    SendResult,
    TemplateLoader,
    hookimpl,
    missing_setting,
    outbox,
)

__all__ = ["EmailChannel", "EmailOptions", "html_to_text"]

DEFAULT_FROM = "Shop <noreply@example.com>"
DEFAULT_OUTBOX = "outbox/email"
# hidden in every client, yet read by the inbox list as the preview line
PREHEADER = (
    '<div style="display:none;max-height:0;max-width:0;overflow:hidden;opacity:0;mso-hide:all;'
    'font-size:1px;line-height:1px;color:transparent">{}</div>'
)
_BODY = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_TOKEN = re.compile(r"[?&]token=([^&#]+)")


class EmailOptions(MessageOptions):
    """``message: {email: {...}}``: a subject, an HTML body (file or inline), optionally a plain-text body."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    subject: str = Field(min_length=1)
    preheader: str | None = None
    html: str | None = None
    text_template: str | None = None
    from_: str | None = Field(default=None, alias="from")
    reply_to: str | None = None

    @model_validator(mode="after")
    def _one_source_per_part(self) -> EmailOptions:
        if self.template and self.html:
            raise ValueError("give the HTML body as either `template` (a file) or `html` (inline), not both")
        if self.text and self.text_template:
            raise ValueError("give the plain-text body as either `text_template` (a file) or `text`, not both")
        if not (self.template or self.html or self.text or self.text_template):
            raise ValueError("an email needs a body: `template` (HTML file), `html`, `text` or `text_template`")
        return self


@dataclass(frozen=True, eq=False)
class PreparedTemplate:
    """A template compiled from a prepared source (CSS inlined, or text derived from HTML); its render errors
    are reported against the template as written, whose file and line the author knows."""

    template: CompiledTemplate
    original: CompiledTemplate
    text: bool = False  # a derived text part: trimmed to its lines, ending in a newline like html_to_text's

    @property
    def customer_names(self) -> frozenset[str] | None:
        """What either source reads: a render error renders the original too."""
        own, original = self.template.customer_names, self.original.customer_names
        return None if own is None or original is None else own | original

    def render(self, context: Mapping[str, Any]) -> str:
        try:
            out = self.template.render(context)
            return out.strip() + "\n" if self.text else out
        except InputError:
            self.original.render(context)  # the same mistake, raised with the original file and line
            raise


class EmailChannel(Channel):
    name = "email"
    contact_field = "email"
    consent = "email"
    facts_through_templates = True  # render reads facts only through its templates
    options_model = EmailOptions

    def __init__(self, config: Mapping[str, Any], settings: Any):
        super().__init__(config, settings)
        self._smtp: SmtpSender | None = None
        if smtp := config.get("smtp"):
            smtp_config = load_config(smtp, settings)
            _check_real_sender(config, settings)
            ca_file = settings.resolve_path(smtp_config.ca_file) if smtp_config.ca_file else None
            self._smtp = SmtpSender(smtp_config, ca_file)
        # the outbox names each file after the delivery's key (a resend overwrites it); SMTP has no such key
        self.idempotent_by_key = self._smtp is None
        self._mailto = config.get("unsubscribe_mailto")
        if self._mailto is not None and "@" not in parseaddr(str(self._mailto))[1]:
            raise InputError(
                f"channels.email.unsubscribe_mailto: {self._mailto!r} is not an e-mail address",
                file=getattr(settings, "source", None),
                hint="unsubscribe_mailto: unsubscribe@example.com",
            )

    def validate_contact(self, value: str) -> str | None:
        try:
            return validate_email(value.strip(), check_deliverability=False).normalized
        except EmailNotValidError:
            return None

    # --- compile --------------------------------------------------------------------------------------------

    def compile(self, options: MessageOptions, templates: TemplateLoader) -> CompiledMessage:
        opts = options if isinstance(options, EmailOptions) else EmailOptions.model_validate(options)
        _checked_address(self._sender(opts), "from", templates)
        if opts.reply_to:
            _checked_address(opts.reply_to, "reply_to", templates)
        compiled: dict[str, Any] = {"subject": templates.from_string(opts.subject, label="email subject")}
        if opts.preheader:
            compiled["preheader"] = templates.from_string(opts.preheader, label="email preheader")
        warnings: list[str] = []
        derived_text: Any = None
        if opts.template or opts.html:
            compiled["html"], derived_text, warnings = _compile_html(opts, templates)
        if opts.text_template:
            compiled["text"] = templates.load(opts.text_template, html=False)
        elif opts.text:
            compiled["text"] = templates.from_string(opts.text, label="inline email text")
        elif derived_text is not None:
            compiled["text"] = derived_text
        return CompiledMessage(channel=self.name, options=opts, templates=compiled, warnings=tuple(warnings))

    # --- render ---------------------------------------------------------------------------------------------

    def render(self, compiled: CompiledMessage, context: Mapping[str, Any]) -> RenderedMessage:
        templates = compiled.templates
        parts = {"subject": " ".join(templates["subject"].render(context).split())}  # headers are one line
        if "html" in templates:
            body = templates["html"].render(context)
            if "preheader" in templates:
                body = _with_preheader(body, " ".join(templates["preheader"].render(context).split()))
            parts["html"] = body
        parts["text"] = templates["text"].render(context) if "text" in templates else html_to_text(parts["html"])
        opts = compiled.options
        headers = {"From": self._sender(opts)}
        if reply_to := getattr(opts, "reply_to", None):
            headers["Reply-To"] = reply_to
        headers.update(self._unsubscribe_headers(context.get("unsubscribe_url")))
        measures = {"subject_chars": len(parts["subject"]), "html_bytes": len(parts.get("html", "").encode())}
        return RenderedMessage(channel=self.name, parts=parts, headers=headers, measures=measures)

    def _unsubscribe_headers(self, url: Any) -> dict[str, str]:
        """RFC 2369 List-Unsubscribe, and RFC 8058 one-click when the link is https (the link carries the signed
        token; a POST to it unsubscribes without a confirmation page)."""
        links = []
        if url:
            links.append(f"<{url}>")
        if self._mailto:
            token = _TOKEN.search(str(url or ""))
            subject = f"unsubscribe%20{token.group(1)}" if token else "unsubscribe"
            links.append(f"<mailto:{self._mailto}?subject={subject}>")
        headers = {"List-Unsubscribe": ", ".join(links)} if links else {}
        if url and str(url).startswith("https://"):
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        return headers

    def _sender(self, options: MessageOptions) -> str:
        return getattr(options, "from_", None) or self.config.get("from") or DEFAULT_FROM

    # --- send -----------------------------------------------------------------------------------------------

    def send(self, messages: Sequence[OutgoingMessage]) -> Iterator[SendResult]:
        if self._smtp is not None:
            yield from self._smtp.send([self._envelope(message) for message in messages])
            return
        folder = self.settings.resolve_path(self.config.get("outbox") or DEFAULT_OUTBOX)
        for message in messages:
            yield self._write(folder, message)

    def close(self) -> None:
        if self._smtp is not None:
            self._smtp.close()

    def _envelope(self, outgoing: OutgoingMessage) -> Envelope | SendResult:
        """The message as both paths send it, or the permanent result of a message that cannot be built."""
        rendered = outgoing.message
        try:
            sender, data = build_message(
                sender=rendered.headers.get("From", DEFAULT_FROM),
                recipient=outgoing.contact,
                subject=rendered.parts["subject"],
                text=rendered.parts["text"],
                html=rendered.parts.get("html"),
                headers=rendered.headers,
                idempotency_key=outgoing.idempotency_key,
                now=datetime.now(self.settings.tz),
            )
        except (ValueError, TypeError, KeyError) as exc:
            return SendResult.permanent(f"cannot build the message: {exc}")
        return Envelope(sender=sender, recipient=outgoing.contact, data=data)

    def _write(self, folder: Path, outgoing: OutgoingMessage) -> SendResult:
        """One message to one file; a failure is this message's result, never the batch's exception."""
        envelope = self._envelope(outgoing)
        if isinstance(envelope, SendResult):
            return envelope
        return outbox.deliver(folder, outgoing, ".eml", envelope.data)


def _compile_html(opts: EmailOptions, templates: TemplateLoader) -> tuple[Any, Any, list[str]]:
    """The HTML template (CSS inlined when it has styles), the derived text template (or None) and the lint."""
    env = templates.environment(html=True)
    read: list[tuple[str, str]] = []  # (file, source) of every template the body is made of, for the lint

    def get_source(name: str) -> str:
        source, filename, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
        read.append((filename or name, source))
        return source

    if opts.template:
        original = templates.load(opts.template, html=True)  # syntax errors named with file and line
        label = original.label
        source = templates.resolve(opts.template)[1].read_text(encoding="utf-8")
        where = label
    else:
        original = templates.from_string(opts.html or "", label="inline email html", html=True)
        label, source = "inline email html", opts.html or ""
        where = f"{templates.campaign_file} (inline email html)" if templates.campaign_file else label
    warnings: list[str] = []
    try:
        flat: str | None = flatten(source, get_source)
    except (NotFlat, TemplateNotFound, InputError) as exc:
        flat = None
        warnings.append(f"{where}: CSS not inlined and text part derived per message: {exc}")
    warnings[:0] = lint(source, where) + [finding for file, text in read for finding in lint(text, file)]
    if flat is None:
        return original, None, warnings
    prepared = prepare(flat)
    warnings += [f"{where}: {warning}" for warning in prepared.warnings]
    html_template = original
    if prepared.inlined or prepared.html != flat:  # CSS inlined, or stylesheets removed
        inlined = templates.from_string(prepared.html, label=f"{label} (CSS inlined)", html=True)
        html_template = PreparedTemplate(inlined, original)
    text_template = None
    if prepared.text is not None:
        text = templates.from_string(prepared.text, label=f"{label} (plain text)", html=False)
        text_template = PreparedTemplate(text, original, text=True)
    return html_template, text_template, list(dict.fromkeys(warnings))


def _check_real_sender(config: Mapping[str, Any], settings: Any) -> None:
    """SMTP reaches real inboxes: no noreply@example.com sender, no unsubscribe link to the demo shop."""
    if not config.get("from"):
        raise missing_setting(settings, ("channels", "email", "from"), 'from: "Shop <news@your-shop.com>"')
    if "unsubscribe_url" not in getattr(settings, "model_fields_set", {"unsubscribe_url"}):
        raise missing_setting(settings, ("unsubscribe_url",), "unsubscribe_url: https://your-shop.com/unsubscribe")


def _with_preheader(body: str, preheader: str) -> str:
    if not preheader:
        return body
    hidden = PREHEADER.format(html_module.escape(preheader))
    start = body.find("<body")  # str.find first: a regex scan of every "<" in 10 KB costs more than the rest
    if start < 0:
        match = _BODY.search(body)
        start = match.start() if match else -1
    end = body.find(">", start) + 1 if start >= 0 else 0
    return f"{body[:end]}{hidden}{body[end:]}"


def _checked_address(value: str, field: str, templates: TemplateLoader) -> str:
    """A sender address is configuration: a typo must fail validate, not every message."""
    address = parseaddr(value)[1]
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InputError(
            f"email {field} {value!r} is not a valid address: {exc}",
            file=str(templates.campaign_file) if templates.campaign_file else None,
            hint='write it as "Name <user@example.com>" or user@example.com',
        ) from None
    return value


@hookimpl
def register_channels() -> list[type[Channel]]:
    return [EmailChannel]
