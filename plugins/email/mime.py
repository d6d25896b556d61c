"""Lean MIME assembly: a rendered e-mail straight to the bytes sent over SMTP or written to the outbox.

``email.message.EmailMessage`` plus its generator costs milliseconds per message (policy objects, header parsing
and refolding); a campaign builds one message per recipient, all of the same simple shape, so this module writes
the bytes directly:

* ``multipart/alternative`` (text, then HTML) or a single ``text/plain`` part, UTF-8;
* bodies in 7bit when they are ASCII with lines of at most 998 characters, otherwise base64 (76-character lines;
  base64 rather than quoted-printable because ``binascii`` encodes it at memory speed, where ``b2a_qp`` takes
  ~100 µs for 10 KB, and it is smaller for Chinese text);
* non-ASCII header text (subject, display names) as RFC 2047 encoded words of at most 75 characters, folded;
  long ASCII headers folded at spaces; CRLF line endings throughout; CR or LF inside a header value is refused
  (``ValueError``), so a rendered value cannot inject headers;
* ``Date``, ``MIME-Version`` and a ``Message-ID`` derived from the idempotency key and the sender's domain, so a
  re-send of a delivery carries the same Message-ID.

The standard library's parser reads every header and part back exactly (``tests/test_email_production.py``).
"""

from __future__ import annotations

import binascii
import hashlib
import secrets
import struct
from collections.abc import Mapping
from datetime import datetime
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from functools import lru_cache

MAX_LINE = 998  # RFC 5322: characters per line, CRLF excluded
FOLD_AT = 78  # recommended line length
_WORD_BYTES = 45  # UTF-8 bytes per encoded word: base64 of 45 bytes is 60 characters, 72 with "=?utf-8?b?…?="
_OWN_HEADERS = {"from", "to", "subject", "date", "message-id", "mime-version", "content-type"}


def build_message(
    *,
    sender: str,
    recipient: str,
    subject: str,
    text: str,
    html: str | None,
    headers: Mapping[str, str],
    idempotency_key: str,
    now: datetime,
) -> tuple[str, bytes]:
    """``(envelope sender, message bytes)``; ``ValueError`` for a message that cannot be written."""
    address = _address(sender)[1]
    head = [
        f"From: {address_header(sender)}",
        f"To: {_checked(recipient)}",
        f"Subject: {encode_header('Subject', subject)}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: {message_id(idempotency_key, address.rpartition('@')[2] or 'localhost')}",
    ]
    for key, value in headers.items():
        if key.lower() in _OWN_HEADERS:
            continue
        if key.lower() == "reply-to":
            head.append(f"Reply-To: {address_header(value)}")
        else:
            head.append(f"{_checked(key)}: {encode_header(key, value)}")
    head.append("MIME-Version: 1.0")
    text_part = _part("plain", text)
    if html is None:
        body = text_part
    else:
        boundary = f"=_{secrets.token_hex(12)}"  # "=_" never occurs in base64 and is unlikely in 7bit text
        head.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        body = b"".join(
            (
                b"\r\n--" + boundary.encode() + b"\r\n",
                text_part,
                b"\r\n--" + boundary.encode() + b"\r\n",
                _part("html", html),
                b"\r\n--" + boundary.encode() + b"--\r\n",
            )
        )
    header_bytes = "\r\n".join(head).encode()  # non-ASCII only in an internationalised address (SMTPUTF8)
    separator = b"\r\n" if html is None else b"\r\n\r\nThis is a multipart message in MIME format.\r\n"
    return address, header_bytes + separator + body


def _part(subtype: str, content: str) -> bytes:
    """One part's own headers, a blank line and the encoded body (for the single-part case, the message's)."""
    if "\r" in content:
        content = content.replace("\r\n", "\n").replace("\r", "\n")
    if not content.endswith("\n"):
        content += "\n"  # as the standard library writes it: the last line ends before the boundary's CRLF
    if content.isascii() and max(map(len, content.split("\n"))) <= MAX_LINE:
        encoding, body = "7bit", content.replace("\n", "\r\n").encode()
    else:
        encoding, body = "base64", _base64(content.encode())
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n'.encode()
        + body
    )


def _base64(data: bytes) -> bytes:
    encoded = binascii.b2a_base64(data, newline=False)
    full = len(encoded) // 76
    lines = list(_lines(full).unpack_from(encoded))  # one C call cuts every 76-character line (5x a slicing loop)
    if len(encoded) % 76:
        lines.append(encoded[full * 76 :])
    return b"\r\n".join(lines)


@lru_cache(maxsize=512)
def _lines(count: int) -> struct.Struct:
    return struct.Struct("76s" * count)


def _checked(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"a line break in a header: {value[:60]!r}")
    return value


@lru_cache(maxsize=64)  # the sender and reply-to addresses repeat in every message of a campaign
def address_header(value: str) -> str:
    name, address = _address(value)
    if not name:
        return address
    if name.isascii():
        return formataddr((name, address))  # quotes the name when it has specials
    return f"{encode_words(name)} <{address}>"


@lru_cache(maxsize=64)
def _address(value: str) -> tuple[str, str]:
    name, address = parseaddr(_checked(value))
    if "@" not in address:
        raise ValueError(f"not an e-mail address: {value!r}")
    return name, address


def encode_header(name: str, value: str) -> str:
    """A header value as written after ``Name: ``: encoded words when not ASCII, folded when long."""
    _checked(value)
    if not value.isascii() or "=?" in value:
        return encode_words(value)
    if len(name) + 2 + len(value) <= FOLD_AT:
        return value
    return _fold(value, len(name) + 2)


def encode_words(text: str) -> str:
    """RFC 2047 base64 encoded words, split between characters, one per folded line."""
    data = text.encode()
    words, start = [], 0
    while start < len(data):
        end = min(start + _WORD_BYTES, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # never split a UTF-8 sequence
            end -= 1
        words.append(f"=?utf-8?b?{binascii.b2a_base64(data[start:end], newline=False).decode()}?=")
        start = end
    return "\r\n ".join(words) if words else ""


def _fold(value: str, used: int) -> str:
    """Fold at spaces (after commas where possible) to lines of about 78 characters; never split a word."""
    lines: list[str] = []
    current = ""
    for word in value.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and used + len(candidate) > FOLD_AT:
            lines.append(current)
            current, used = word, 1
        else:
            current = candidate
    lines.append(current)
    if any(len(line) > MAX_LINE - 1 for line in lines):
        raise ValueError("a header word longer than 998 characters")
    return "\r\n ".join(lines)


def message_id(key: str, domain: str) -> str:
    """Stable for a delivery, so that a re-send is recognisably the same message."""
    if not key:
        return make_msgid(domain=domain)
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain}>"
