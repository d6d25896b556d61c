"""The built-in ``email`` channel: HTML plus plain-text messages, over SMTP or to a file outbox of ``.eml`` files.

With no SMTP provider configured every message is written as a real MIME file into ``channels.email.outbox``
(default ``outbox/email``, relative to the config file's folder): a new user sees exactly what would be sent, and
any mail client opens it. With ``smtp:`` configured the same bytes go to that server, one connection reused across
batches (``orchestrator_plugins.email_smtp`` documents the keys and how replies map to results). Configuration
(``channels.email`` in the config file)::

    outbox: outbox/email
    from: "Shop <noreply@example.com>"
    smtp:                       # optional
      host: smtp.example.com
      security: starttls
      username: mailer
      password: ${SMTP_PASSWORD}
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email
from orchestrator_plugins.email_smtp import Envelope, SmtpSender, load_config
from pydantic import ConfigDict, Field, model_validator

from orchestrator.channels import Channel, CompiledMessage, MessageOptions, OutgoingMessage, RenderedMessage, SendResult
from orchestrator.errors import InputError
from orchestrator.hookspecs import hookimpl
from orchestrator.rendering import CompiledTemplate, TemplateLoader

DEFAULT_FROM = "Shop <noreply@example.com>"
DEFAULT_OUTBOX = "outbox/email"


class EmailOptions(MessageOptions):
    """``message: {email: {...}}``: a subject, an HTML body (file or inline), optionally a plain-text body."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    subject: str = Field(min_length=1)
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


class EmailChannel(Channel):
    name = "email"
    contact_field = "email"
    consent = "email"
    options_model = EmailOptions

    def __init__(self, config: Mapping[str, Any], settings: Any):
        super().__init__(config, settings)
        self._smtp: SmtpSender | None = None
        if smtp := config.get("smtp"):
            smtp_config = load_config(smtp, settings)
            ca_file = settings.resolve_path(smtp_config.ca_file) if smtp_config.ca_file else None
            self._smtp = SmtpSender(smtp_config, ca_file)

    def validate_contact(self, value: str) -> str | None:
        try:
            return validate_email(value.strip(), check_deliverability=False).normalized
        except EmailNotValidError:
            return None

    def compile(self, options: MessageOptions, templates: TemplateLoader) -> CompiledMessage:
        opts = options if isinstance(options, EmailOptions) else EmailOptions.model_validate(options)
        _checked_address(self._sender(opts), "from", templates)
        if opts.reply_to:
            _checked_address(opts.reply_to, "reply_to", templates)
        compiled: dict[str, Any] = {"subject": templates.from_string(opts.subject, label="email subject")}
        if opts.template:
            compiled["html"] = templates.load(opts.template, html=True)
        elif opts.html:
            compiled["html"] = templates.from_string(opts.html, label="inline email html", html=True)
        if opts.text_template:
            compiled["text"] = templates.load(opts.text_template, html=False)
        elif opts.text:
            compiled["text"] = templates.from_string(opts.text, label="inline email text")
        return CompiledMessage(channel=self.name, options=opts, templates=compiled)

    def render(self, compiled: CompiledMessage, context: Mapping[str, Any]) -> RenderedMessage:
        parts = _render_parts(compiled.templates, context)
        opts = compiled.options
        headers = {"From": self._sender(opts)}
        if reply_to := getattr(opts, "reply_to", None):
            headers["Reply-To"] = reply_to
        if url := context.get("unsubscribe_url"):
            headers["List-Unsubscribe"] = f"<{url}>"
            if str(url).startswith("https://"):
                headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        measures = {"subject_chars": len(parts["subject"]), "html_bytes": len(parts.get("html", "").encode())}
        return RenderedMessage(channel=self.name, parts=parts, headers=headers, measures=measures)

    def _sender(self, options: MessageOptions) -> str:
        return getattr(options, "from_", None) or self.config.get("from") or DEFAULT_FROM

    def send(self, messages: Sequence[OutgoingMessage]) -> Iterator[SendResult]:
        if self._smtp is not None:
            yield from self._smtp.send([self._envelope(message) for message in messages])
            return
        outbox = self.settings.resolve_path(self.config.get("outbox") or DEFAULT_OUTBOX)
        for message in messages:
            yield self._write(outbox, message)

    def close(self) -> None:
        if self._smtp is not None:
            self._smtp.close()

    def _mime(self, outgoing: OutgoingMessage) -> EmailMessage | SendResult:
        """The message as both paths send it, or the permanent result of a message that cannot be built."""
        try:
            return build_mime(outgoing, now=datetime.now(self.settings.tz))
        except (ValueError, TypeError) as exc:
            return SendResult.permanent(f"cannot build the message: {exc}")

    def _envelope(self, outgoing: OutgoingMessage) -> Envelope | SendResult:
        msg = self._mime(outgoing)
        if isinstance(msg, SendResult):
            return msg
        try:
            data = msg.as_bytes()
        except (ValueError, TypeError) as exc:
            return SendResult.permanent(f"cannot build the message: {exc}")
        return Envelope(sender=msg["From"].addresses[0].addr_spec, recipient=outgoing.contact, data=data)

    def _write(self, outbox: Path, outgoing: OutgoingMessage) -> SendResult:
        """One message to one file; a failure is this message's result, never the batch's exception."""
        msg = self._mime(outgoing)
        if isinstance(msg, SendResult):
            return msg
        try:
            data = msg.as_bytes()
        except (ValueError, TypeError) as exc:
            return SendResult.permanent(f"cannot build the message: {exc}")
        file_name = outbox_file_name(outgoing)
        try:
            write_atomically(outbox / file_name, data)
        except OSError as exc:
            return SendResult.transient(f"cannot write {outbox / file_name}: {exc.strerror or exc}")
        return SendResult.sent(provider_id=file_name)


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


def _render_parts(templates: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, str]:
    subject_template: CompiledTemplate = templates["subject"]
    parts = {"subject": " ".join(subject_template.render(context).split())}  # headers are one line
    if "html" in templates:
        parts["html"] = templates["html"].render(context)
    parts["text"] = templates["text"].render(context) if "text" in templates else html_to_text(parts["html"])
    return parts


def build_mime(outgoing: OutgoingMessage, *, now: datetime) -> EmailMessage:
    """multipart/alternative (text, then HTML) in UTF-8; the email package encodes a Chinese subject (RFC 2047)."""
    rendered = outgoing.message
    msg = EmailMessage()
    msg["Subject"] = rendered.parts["subject"]
    msg["From"] = rendered.headers.get("From", DEFAULT_FROM)
    msg["To"] = outgoing.contact
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = _message_id(outgoing.idempotency_key, msg["From"].addresses[0].domain or "localhost")
    for name, value in rendered.headers.items():
        if name not in msg:
            msg[name] = value
    msg.set_content(rendered.parts["text"], charset="utf-8")
    if "html" in rendered.parts:
        msg.add_alternative(rendered.parts["html"], subtype="html", charset="utf-8")
    return msg


def _message_id(key: str, domain: str) -> str:
    """Stable for a delivery, so that a re-send is recognisably the same message."""
    if not key:
        return make_msgid(domain=domain)
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain}>"


def outbox_file_name(outgoing: OutgoingMessage) -> str:
    """A safe file name from the idempotency key: the same delivery always maps to the same file.

    When sanitising changed the key (or it is long), a hash of the original keeps distinct keys distinct.
    """
    key = outgoing.idempotency_key
    if not key:
        return f"{os.urandom(16).hex()}.eml"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).lstrip(".")
    if safe != key or len(safe) > 120:
        safe = f"{safe[:100]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return f"{safe}.eml"


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same folder, then rename: a reader (or a killed process) never sees half a message.

    No fsync: the outbox is the embedded default for trying campaigns out, and the rename already makes each
    file all-or-nothing for a process crash; an fsync per message would make a large run disk-bound.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_BLOCK_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote", "hr"}  # blank line
_LINE_TAGS = {"div", "tr", "br", "section", "header", "footer", "center"}  # line break
_SKIP_TAGS = {"head", "style", "script", "title"}


class _TextExtractor(HTMLParser):
    """HTML → readable plain text: blocks become lines, list items bullets, links keep their URL."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.links: list[tuple[str | None, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self.skipping += 1
        elif tag in _BLOCK_TAGS:
            self.out.append("\n\n")
        elif tag in _LINE_TAGS:
            self.out.append("\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag == "a":
            self.links.append((dict(attrs).get("href"), len(self.out)))
        elif tag == "img" and (alt := dict(attrs).get("alt")):
            self.out.append(alt)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCK_TAGS or tag in _LINE_TAGS:
            self.out.append("\n\n" if tag in _BLOCK_TAGS else "\n")
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            label = "".join(self.out[start:]).strip()
            if href and not href.startswith("#") and href not in label:
                self.out.append(f" ({href})" if label else href)

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.out.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = [line.strip() for line in "".join(self.out).splitlines()]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def html_to_text(html: str) -> str:
    """The plain-text alternative of an HTML body (for clients and filters that read text only)."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.text()


@hookimpl
def register_channels() -> list[type[Channel]]:
    return [EmailChannel]
