"""Masking personal data for output: one place that decides what an e-mail address, a phone number, a free
text (a provider's reply, a database error) and a database URL look like on a terminal or in a log.

``mask_contact`` masks a whole address; ``mask_text`` finds addresses and phone-like digit runs inside a text
(dates and times are left alone, so a reply stays readable); ``mask_url`` hides a URL's password.
"""

from __future__ import annotations

import re

import phonenumbers
from sqlalchemy.exc import StatementError

_EMAIL = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+"
# ISO dates and times first, so that their digits are not read as a phone number
_DATE = r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?"
# seven or more digits, optionally with a leading + and single spaces / hyphens / dots between groups
_PHONE = r"(?<![\w.])\+?\d(?:[ \-.]?\d){6,}(?![\w])"
_PATTERN = re.compile(f"(?P<date>{_DATE})|(?P<email>{_EMAIL})|(?P<phone>{_PHONE})")
# user:password@ up to the LAST @ before the host (a password may hold an unencoded @), and password=… in a query
_URL_PASSWORD = re.compile(r"(?P<user>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:|^[^:/@\s]+:(?!//))[^/\s]*@")
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&](?:password|passwd|pwd|pass)=)[^&\s'\"]*", re.IGNORECASE)


def mask_phone(value: object) -> str:
    """``13812345678`` → ``138****5678``; ``+8613812345678`` → ``+86 138****5678``."""
    if not value:
        return ""
    text = str(value).strip()
    prefix, digits = "", re.sub(r"\D", "", text)
    if text.startswith("+"):
        try:
            number = phonenumbers.parse(text, None)
            prefix, digits = f"+{number.country_code} ", str(number.national_number)
        except phonenumbers.NumberParseException:
            prefix = "+"
    head, tail = (3, 4) if len(digits) >= 8 else (0, min(2, len(digits)))
    return prefix + digits[:head] + "*" * (len(digits) - head - tail) + digits[len(digits) - tail :]


def mask_contact(contact: str | None) -> str | None:
    """An address for a listing: ``a***@example.com``, ``+86 138****5678``; never the full address."""
    if not contact:
        return contact
    if "@" in contact:
        local, _, domain = contact.rpartition("@")
        return f"{local[:1]}***@{domain}"
    if contact.startswith("+") or contact.isdigit():
        return mask_phone(contact)
    return f"{contact[:1]}***" if len(contact) > 4 else "***"  # another kind of address (e.g. an openid)


def mask_text(text: str | None) -> str | None:
    """A free text with every e-mail address and phone-like number in it masked."""
    if not text:
        return text

    def replace(match: re.Match) -> str:
        if match.group("date"):
            return match.group(0)
        if match.group("email"):
            return mask_contact(match.group(0)) or ""
        return mask_phone(match.group(0))

    return _PATTERN.sub(replace, text)


def mask_url(text: str) -> str:
    """A database URL (or anything that looks like one) with its password replaced by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('user')}***@", text)
    return _QUERY_PASSWORD.sub(lambda m: f"{m.group('key')}***", text)


def describe_unexpected(exc: Exception) -> str:
    """One line for an unexpected error, with personal data masked. A database error is described by the
    driver's message and the statement, never the statement's parameters (customers' names, e-mails, phones)."""
    if isinstance(exc, StatementError):
        cause = exc.orig if exc.orig is not None else exc
        message = str(cause).strip()
        statement = " ".join((exc.statement or "").split())
        if len(statement) > 200:
            statement = statement[:200] + " …"
        text = f"{type(cause).__name__}: {message}" + (f" [SQL: {statement}]" if statement else "")
    else:
        text = f"{type(exc).__name__}: {exc}"
    return mask_url(mask_text(text))
