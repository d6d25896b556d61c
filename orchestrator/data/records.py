"""Validating one CSV row and turning it into the typed values we store.

Each column has a parser that takes the trimmed text and returns the stored value or raises ``ValueError``
with a message that says what is wrong with the value; the row validator collects every column's problem so
that one pass over the reject file shows all of them. Values are normalised here (E.164 phones, normalised
e-mail addresses, UTC times, lower-case statuses, short province names, ``male`` / ``female``) so that comparing
a row with the database is plain equality.

Only the columns a file has are read: a customers file needs ``customer_id`` and an orders file ``order_id,
customer_id, ordered_at, amount`` (``REQUIRED``); an absent column leaves the stored value alone, and an orders
file without ``status`` holds paid orders.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from orchestrator.config import Settings
from orchestrator.data.regions import province
from orchestrator.db.models import ORDER_STATUSES
from orchestrator.money import parse_amount
from orchestrator.timeutil import parse_date, parse_datetime, to_utc, zone

CUSTOMER_COLUMNS = (
    "customer_id",
    "name",
    "email",
    "phone",
    "province",
    "city",
    "gender",
    "birthday",
    "signup_at",
    "tags",
    "email_opt_in",
    "sms_opt_in",
    "wechat_openid",
    "timezone",
)
ORDER_COLUMNS = (
    "order_id",
    "customer_id",
    "ordered_at",
    "amount",
    "status",
    "channel",
    "payment_method",
    "coupon_code",
    "category",
)
REDEMPTION_COLUMNS = ("code", "order_id", "amount", "redeemed_at")
REDEMPTION_REQUIRED_COLUMNS = ("code", "order_id")  # amount and redeemed_at may be left out of the header
CUSTOMER_REQUIRED_COLUMNS = ("customer_id",)
ORDER_REQUIRED_COLUMNS = ("order_id", "customer_id", "ordered_at", "amount")
DEFAULT_ORDER_STATUS = "paid"  # of every row of a file without a status column
CONSENT_COLUMNS = {"email_opt_in": "email", "sms_opt_in": "sms"}
TAG_SEPARATOR = ";"
MAX_TAG_LENGTH = 64
MAX_MINOR_UNITS = 2**63 - 1  # the BIGINT money column
_TRUE = frozenset({"true", "1", "yes", "y", "是"})
_FALSE = frozenset({"false", "0", "no", "n", "否", ""})
# the stored genders are the demo generator's words; segment conditions compare with them (gender: female)
_GENDERS = {  # to the stored words, GENDERS
    **dict.fromkeys(("male", "m", "man", "男", "男性", "先生"), "male"),
    **dict.fromkeys(("female", "f", "woman", "女", "女性", "女士"), "female"),
    **dict.fromkeys(("other", "其他"), "other"),
    **dict.fromkeys(("unknown", "u", "未知", "保密", "不详"), None),
}
# control (Cc), format (Cf: zero-width, bidi overrides) and line / paragraph separators: never part of an id
_NOT_IN_IDS = frozenset({"Cc", "Cf", "Zl", "Zp"})
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_LOCAL = re.compile(rf"(?=.{{1,64}}$){_ATEXT}(?:\.{_ATEXT})*", re.ASCII)  # RFC 5322 dot-atom
MAX_EMAIL_LENGTH = 254


class RowError(ValueError):
    """A row that cannot be loaded; the message is the reject file's ``reason``."""


@dataclass(slots=True)
class CustomerRecord:
    values: dict[str, Any]  # the file's columns of ``customers`` (without keys and timestamps)
    tags: frozenset[str] | None = frozenset()  # None: the file has no tags column
    consents: dict[str, bool] = field(default_factory=dict)  # channel -> opted in, for the file's consent columns

    @property
    def key(self) -> str:
        return self.values["customer_id"]


@dataclass(slots=True)
class OrderRecord:
    values: dict[str, Any]  # columns of ``orders``; ``customer_pk`` is filled in against the database
    customer_id: str

    @property
    def key(self) -> str:
        return self.values["order_id"]


@dataclass(slots=True)
class RedemptionRecord:
    code: str  # as written; ``orchestrator.coupons.redeem`` normalises and checks it
    order_id: str
    amount: Decimal | None = None
    redeemed_at: datetime | None = None


Parser = Callable[[str], Any]


# --- column parsers: trimmed, non-empty text in, stored value out -------------------------------------------------


def text(limit: int) -> Parser:
    def parse(value: str) -> str:
        if len(value) > limit:
            raise ValueError(f"is {len(value)} characters long; at most {limit} are allowed")
        return value

    return parse


def identifier(limit: int) -> Parser:
    """An id (customer, order, coupon code, openid): as written, but never with an invisible character.

    A CR, LF, ESC or bidi override in an id breaks the files we export (a row split in two, a terminal escape, a
    name shown backwards) and makes two ids that look the same differ, so the row is rejected instead. TAB too.
    """
    check = text(limit)

    def parse(value: str) -> str:
        for position, char in enumerate(value if not value.isprintable() else "", 1):
            if unicodedata.category(char) in _NOT_IN_IDS:
                raise ValueError(
                    f"contains the control character U+{ord(char):04X} at position {position}; identifiers may hold "
                    "no control, format or line-break characters"
                )
        return check(value)

    return parse


_PROVINCE_TEXT = text(64)


def email(value: str) -> str:
    """The address as ``email-validator`` normalises it.

    Most of the library's time goes into checking the domain, and a shop's members share a few dozen domains;
    so a plain ASCII address (dot-atom local part, the only form whose local part the library returns as is)
    has its domain checked once, through the library, and cached. Anything else takes the library's full path.
    """
    local, _, domain = value.rpartition("@")
    if _PLAIN_LOCAL.fullmatch(local) and domain.isascii() and len(value) <= MAX_EMAIL_LENGTH:
        normalized_domain = _checked_domain(domain)
        if normalized_domain:
            return f"{local}@{normalized_domain}"
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"{value!r} is not a valid e-mail address ({_sentence(str(exc))})") from None


def address_key(value: str) -> str:
    """A contact address as the suppression list stores and compares it.

    An e-mail address (it has an ``@``) is lower-cased whole: the importer keeps the local part's case (a mail
    server may in theory honour it), but a person who opts out as ``alice@`` is the member stored as ``Alice@``.
    Phones are E.164 already, and a WeChat openid is case-sensitive: both are kept exactly.
    """
    return value.lower() if "@" in value else value


@lru_cache(maxsize=4096)
def _checked_domain(domain: str) -> str | None:
    """The library's normalised form of ``domain``, or ``None`` if it rejects it."""
    try:
        return validate_email(f"x@{domain}", check_deliverability=False).domain
    except EmailNotValidError:
        return None


def phone(region: str) -> Parser:
    def parse(value: str) -> str:
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            number = None
        if number is None or not phonenumbers.is_valid_number(number):
            raise ValueError(f"{value!r} is not a valid phone number (numbers without +country code are {region})")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    return parse


def birthday(value: str) -> date:
    return parse_date(value)


def timestamp(tz: ZoneInfo) -> Parser:
    def parse(value: str) -> datetime:
        try:
            return to_utc(parse_datetime(value, tz))
        except OverflowError:
            raise ValueError(f"{value!r} is out of range") from None

    return parse


def amount(value: str) -> Decimal:
    result = parse_amount(value)
    if result < 0:
        raise ValueError(f"{value!r} is negative; amounts must be 0 or more")
    if result * 100 > MAX_MINOR_UNITS:
        raise ValueError(f"{value!r} is too large")
    return result


def status(value: str) -> str:
    lowered = value.lower()
    if lowered not in ORDER_STATUSES:
        raise ValueError(f"{value!r} is not one of {', '.join(ORDER_STATUSES)}")
    return lowered


def boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a yes/no value (use 是/否, yes/no, y/n, true/false or 1/0)")


def province_name(value: str) -> str:
    """The short name of a Chinese province (浙江省 → 浙江, see ``regions``); anything else as written."""
    return _PROVINCE_TEXT(province(value))


def gender(value: str) -> str | None:
    """``male``, ``female`` or ``other`` from the usual words (男/女, M/F, …); ``None`` for "unknown"."""
    try:
        return _GENDERS[value.lower()]
    except KeyError:
        raise ValueError(
            f"{value!r} is not a gender we know (use male/female, 男/女 or M/F; leave it empty if unknown)"
        ) from None


def timezone(value: str) -> str:
    zone(value)
    return value


def tags(value: str) -> frozenset[str]:
    result = {tag.strip() for tag in value.split(TAG_SEPARATOR)} - {""}
    for tag in result:
        if len(tag) > MAX_TAG_LENGTH:
            raise ValueError(f"the tag {tag[:20]!r}… is longer than {MAX_TAG_LENGTH} characters")
    return frozenset(result)


def _sentence(message: str) -> str:
    message = message.rstrip(".")
    return message[:1].lower() + message[1:]


# --- rows ----------------------------------------------------------------------------------------------------------


class RowReader:
    """Turns one row's fields into a record: required and optional columns, parsers, extra columns.

    ``parsers`` name every known column; those absent from the header are not read (the caller's header check has
    made sure the required ones are there). Every other column of the header is an extra, kept in ``attributes``.
    """

    def __init__(self, header: list[str], parsers: dict[str, Parser], required: tuple[str, ...]):
        positions = {name.lower(): i for i, name in enumerate(header)}
        self.width = len(header)
        self.columns = [(name, positions[name], parse) for name, parse in parsers.items() if name in positions]
        self.present = frozenset(name for name, _, _ in self.columns)
        self.required = frozenset(required)
        self.extras = [(name or f"column_{i + 1}", i) for i, name in enumerate(header) if name.lower() not in parsers]

    def read(self, fields: list[str]) -> dict[str, Any]:
        """Every column parsed (empty optional ones as ``None``) plus ``attributes``; raises ``RowError``."""
        fields = self._fit(fields)
        values: dict[str, Any] = {}
        problems = []
        for name, index, parse in self.columns:
            raw = fields[index].strip()
            if not raw and name in self.required:
                problems.append(f"{name}: is required")
                continue
            try:
                values[name] = parse(raw) if raw or parse is boolean else None
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise RowError("; ".join(problems))
        values["attributes"] = {name: fields[i].strip() for name, i in self.extras if fields[i].strip()}
        return values

    def _fit(self, fields: list[str]) -> list[str]:
        if len(fields) > self.width and not any(f.strip() for f in fields[self.width :]):
            return fields[: self.width]  # trailing empty cells, as spreadsheets export them
        if len(fields) != self.width:
            raise RowError(
                f"the row has {len(fields)} fields but the header has {self.width} "
                "(a missing or extra comma, or an unquoted comma inside a value?)"
            )
        return fields


def customer_reader(header: list[str], settings: Settings) -> Callable[[list[str]], CustomerRecord]:
    parsers: dict[str, Parser] = {
        "customer_id": identifier(64),
        "name": text(200),
        "email": email,
        "phone": phone(settings.default_region),
        "province": province_name,
        "city": text(64),
        "gender": gender,
        "birthday": birthday,
        "signup_at": timestamp(settings.tz),
        "tags": tags,
        "email_opt_in": boolean,
        "sms_opt_in": boolean,
        "wechat_openid": identifier(128),
        "timezone": timezone,
    }
    rows = RowReader(header, parsers, required=CUSTOMER_REQUIRED_COLUMNS)
    has_tags = "tags" in rows.present
    consent_columns = {column: channel for column, channel in CONSENT_COLUMNS.items() if column in rows.present}

    def read(fields: list[str]) -> CustomerRecord:
        values = rows.read(fields)
        consents = {channel: values.pop(column) for column, channel in consent_columns.items()}
        tag_set = (values.pop("tags") or frozenset()) if has_tags else None
        return CustomerRecord(values, tag_set, consents)

    return read


def order_reader(header: list[str], settings: Settings) -> Callable[[list[str]], OrderRecord]:
    parsers: dict[str, Parser] = {
        "order_id": identifier(64),
        "customer_id": identifier(64),
        "ordered_at": timestamp(settings.tz),
        "amount": amount,
        "status": status,
        "channel": text(32),
        "payment_method": text(32),
        "coupon_code": identifier(32),
        "category": text(64),
    }
    # a status column that is there must be filled in: an empty cell is a mistake, not "paid"
    rows = RowReader(header, parsers, required=(*ORDER_REQUIRED_COLUMNS, "status"))
    default_status = {} if "status" in rows.present else {"status": DEFAULT_ORDER_STATUS}

    def read(fields: list[str]) -> OrderRecord:
        values = rows.read(fields)
        values.update(default_status)
        return OrderRecord(values, values.pop("customer_id"))

    return read


def redemption_reader(header: list[str], settings: Settings) -> Callable[[list[str]], RedemptionRecord]:
    """Rows of ``code, order_id[, amount][, redeemed_at]``; the optional columns may be absent from the header."""
    parsers: dict[str, Parser] = {
        "code": identifier(32),
        "order_id": identifier(64),
        "amount": amount,
        "redeemed_at": timestamp(settings.tz),
    }
    rows = RowReader(header, parsers, REDEMPTION_REQUIRED_COLUMNS)

    def read(fields: list[str]) -> RedemptionRecord:
        values = rows.read(fields)
        return RedemptionRecord(values["code"], values["order_id"], values.get("amount"), values.get("redeemed_at"))

    return read
