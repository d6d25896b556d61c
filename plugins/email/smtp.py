"""SMTP delivery for the ``email`` channel: one connection per run, reused across batches.

Configured as ``channels.email.smtp`` (secrets only through ``${ENV}`` references)::

    smtp:
      host: smtp.example.com
      port: 587                 # default: 465 for ssl, 587 for starttls, 25 for none
      security: starttls        # starttls (default) | ssl | none
      username: mailer          # optional: login only when given
      password: ${SMTP_PASSWORD}
      timeout: 30               # seconds, for connecting and for every reply
      local_hostname: mx1.shop.example   # optional: the name given in EHLO
      ca_file: certs/relay-ca.pem        # optional: trust this CA (a private relay) instead of the system's

How each message's result is decided (one recipient per transaction, so one refusal never touches another
message):

* accepted → ``sent`` with the server's reply to DATA as the provider id (e.g. ``250 2.0.0 Ok: queued as ABC``);
* a 4xx reply (to MAIL FROM, RCPT TO or DATA) → ``transient``; a 5xx reply → ``permanent``; both carry the stage
  and the server's code and text; a 5xx naming a mailbox that does not exist (enhanced status 5.1.1 "user
  unknown", 5.1.2 "no such domain", 5.1.10 "null MX") also asks the dispatcher to suppress the address as
  ``bounced`` (to RCPT TO, or to DATA from servers that check mailboxes late), while other refusals (5.7.x
  policy, spam) do not: the address may be fine;
* the connection lost or timing out while sending → ``transient`` for that message (the server may or may not
  have queued it: the retry carries the same Message-ID, so a duplicate is recognisable) and ``transient``
  "not attempted" for every later message of the batch; the next batch connects afresh;
* the configuration is wrong (``SmtpMisconfigured``, a ``RuntimeFailure``: the command stops at once with the
  reason and the config keys to check, and the messages stay pending for ``resume``): STARTTLS or AUTH not
  offered, a TLS handshake failure (TLS against a plain port, an untrusted certificate), a 5xx to the greeting
  or a refused login (e.g. ``535 5.7.8``), or no connection at all (refused, timeout, no greeting) before this
  process ever connected. Retrying would fail every message the same way for minutes;
* no connection after an earlier one worked, or a 4xx to the greeting → ``transient`` for the whole batch.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.api import RuntimeFailure, SendResult, load_channel_config

DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}
MAX_PROVIDER_ID = 256  # the ledger's provider_id column
CONFIG_HINT = "keys: host, port, security (starttls|ssl|none), username, password, timeout, local_hostname, ca_file"


class SmtpConfig(BaseModel):
    """``channels.email.smtp``."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: str | None = None
    timeout: float = Field(default=30, gt=0)
    local_hostname: str | None = None
    ca_file: str | None = None

    @model_validator(mode="after")
    def _password_with_username(self) -> SmtpConfig:
        if self.password and not self.username:
            raise ValueError("a password needs a username")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.security]


@dataclass(frozen=True)
class Envelope:
    """One message ready for SMTP: envelope sender, one recipient, the exact MIME bytes."""

    sender: str
    recipient: str
    data: bytes


class _RecordsDataReply:
    """``sendmail`` discards the reply to DATA; we keep it, as it names the queued message."""

    last_data_reply: tuple[int, bytes] | None = None

    def data(self, msg):  # type: ignore[no-untyped-def]
        reply = super().data(msg)  # type: ignore[misc]
        self.last_data_reply = reply
        return reply


class _SMTP(_RecordsDataReply, smtplib.SMTP):
    pass


class _SMTP_SSL(_RecordsDataReply, smtplib.SMTP_SSL):
    pass


class _NoConnection(Exception):
    pass


class SmtpMisconfigured(RuntimeFailure):
    """The server cannot be used as configured (no STARTTLS, TLS on a plain port, login refused, nothing
    listening at the first connection): every message would fail the same way, so the command stops with the
    reason instead of retrying for minutes; the messages stay pending for a resume once the config is fixed."""


def load_config(raw: Any, settings: Any) -> SmtpConfig:
    """``channels.email.smtp``; a mistake is an error at its line of the config file, with a "did you mean"."""
    return load_channel_config(SmtpConfig, raw, settings, ("channels", "email", "smtp"), CONFIG_HINT)


class SmtpSender:
    """Delivers batches over one reused connection; ``close()`` ends it with QUIT."""

    def __init__(self, config: SmtpConfig, ca_file: Path | None = None):
        self.config = config
        self.ca_file = ca_file
        self._conn: _SMTP | _SMTP_SSL | None = None
        self._connected_once = False  # until then any failure to connect is taken as a configuration mistake

    @property
    def where(self) -> str:
        return f"{self.config.host}:{self.config.effective_port}"

    def send(self, items: Sequence[Envelope | SendResult]) -> Iterator[SendResult]:
        """One result per item, in order, each yielded as soon as the server answered it; items that are already
        a result (could not be built) pass through."""
        if not any(isinstance(item, Envelope) for item in items):
            yield from (item for item in items if isinstance(item, SendResult))
            return
        try:
            conn = self._connection()
        except _NoConnection as exc:
            yield from (item if isinstance(item, SendResult) else SendResult.transient(str(exc)) for item in items)
            return
        lost: str | None = None
        for item in items:
            if isinstance(item, SendResult):
                yield item
            elif lost is not None:
                yield SendResult.transient(f"not attempted: {lost}")
            else:
                result, lost = self._deliver(conn, item)
                yield result

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()

    # --- the connection -------------------------------------------------------------------------------------

    def _connection(self) -> _SMTP | _SMTP_SSL:
        """The open connection if it still answers NOOP; else one new connection (one attempt)."""
        if self._conn is not None:
            try:
                if self._conn.noop()[0] == 250:
                    return self._conn
            except (smtplib.SMTPException, OSError):
                pass
            self._discard()
        self._conn = self._open()
        self._connected_once = True
        return self._conn

    def _open(self) -> _SMTP | _SMTP_SSL:
        cfg = self.config
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        where = (cfg.host, cfg.effective_port)
        common = {"local_hostname": cfg.local_hostname, "timeout": cfg.timeout}
        conn: _SMTP | _SMTP_SSL | None = None
        stage = "connect to"
        try:  # given the host, the constructor connects and reads the greeting (SMTPConnectError unless 220)
            conn = _SMTP_SSL(*where, context=context, **common) if cfg.security == "ssl" else _SMTP(*where, **common)
            stage = "greet"
            conn.ehlo_or_helo_if_needed()
            if cfg.security == "starttls":
                stage = "start TLS with"
                conn.starttls(context=context)
                conn.ehlo()
            if cfg.username:
                stage = "log in to"
                conn.login(cfg.username, cfg.password or "")
        except smtplib.SMTPResponseException as exc:
            if conn is not None:
                conn.close()
            reason = f"cannot {stage} {self.where}: {_reply_text(exc.smtp_code, exc.smtp_error)}"
            if exc.smtp_code >= 500 or (stage == "log in to" and exc.smtp_code != 454):
                raise self._misconfigured(reason, stage) from None
            raise _NoConnection(reason) from None
        except (smtplib.SMTPException, OSError) as exc:
            if conn is not None:
                conn.close()
            reason = f"cannot {stage} {self.where}: {_describe(exc)}"
            # no STARTTLS or AUTH on offer, a TLS handshake that fails: the settings are wrong, not the network
            if isinstance(exc, (smtplib.SMTPNotSupportedError, ssl.SSLError)) or not self._connected_once:
                raise self._misconfigured(reason, stage) from None
            raise _NoConnection(reason) from None
        return conn

    def _misconfigured(self, reason: str, stage: str) -> SmtpMisconfigured:
        keys = {
            "connect to": "host and port (and security: ssl for port 465)",
            "greet": "host and port",
            "start TLS with": "security (none, or ssl for port 465) and ca_file",
            "log in to": "username and password",
        }[stage]
        return SmtpMisconfigured(
            reason, hint=f"check channels.email.smtp: {keys}; the messages stay pending: `resume` sends them"
        )

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # --- one message ----------------------------------------------------------------------------------------

    def _deliver(self, conn: _SMTP | _SMTP_SSL, envelope: Envelope) -> tuple[SendResult, str | None]:
        """The message's result, and why the connection is gone (None while it is usable)."""
        options: list[str] = []
        if not envelope.data.isascii() and conn.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if not (envelope.sender + envelope.recipient).isascii():
            if not conn.has_extn("smtputf8"):
                return SendResult.permanent(
                    f"{envelope.recipient}: an internationalised address needs SMTPUTF8, which {self.where} "
                    "does not offer"
                ), None
            options.append("SMTPUTF8")
        conn.command_encoding = "ascii"
        conn.last_data_reply = None
        try:
            conn.sendmail(envelope.sender, [envelope.recipient], envelope.data, options)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients.get(envelope.recipient) or next(iter(exc.recipients.values()))
            result = _by_code("RCPT TO", code, text)
        except smtplib.SMTPSenderRefused as exc:
            result = _by_code("MAIL FROM", exc.smtp_code, exc.smtp_error)
        except smtplib.SMTPDataError as exc:
            result = _by_code("DATA", exc.smtp_code, exc.smtp_error)
        except smtplib.SMTPResponseException as exc:
            result = _by_code("SMTP", exc.smtp_code, exc.smtp_error)
        except (smtplib.SMTPException, OSError) as exc:  # disconnected, timeout (an OSError), TLS error
            reason = f"connection to {self.where} lost: {_describe(exc)}"
            self._discard()
            return SendResult.transient(reason), reason
        else:
            code, text = conn.last_data_reply or (250, b"")
            return SendResult.sent(provider_id=_reply_text(code, text)[:MAX_PROVIDER_ID]), None
        if conn.sock is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                conn.rset()  # sendmail does not always reset after a refusal (e.g. DATA answered without 354)
        if conn.sock is None:  # smtplib closes on a 421 reply
            self._discard()
            return result, f"{self.where} closed the connection ({result.error})"
        return result, None


def _reply_text(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return " ".join(f"{code} {text}".split())


_NO_MAILBOX = re.compile(r"^5\.1\.(1|2|10)\b")  # RFC 3463 / 7505: bad mailbox, bad domain, null MX


def _by_code(stage: str, code: int, text: bytes | str) -> SendResult:
    reply = _reply_text(code, text)
    error = f"{stage}: {reply}"
    if not 500 <= code < 600:
        return SendResult.transient(error)
    enhanced = reply.removeprefix(str(code)).strip()
    bounced = stage in ("RCPT TO", "DATA") and _NO_MAILBOX.match(enhanced) is not None
    return SendResult.permanent(error, suppress="bounced" if bounced else None)


def _describe(exc: BaseException) -> str:
    detail = str(exc) or getattr(exc, "strerror", None) or ""
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
