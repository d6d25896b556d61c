"""The suppression list: add, remove, list and import "do not contact" entries.

A suppression names either a customer (by ``customer_id``) or a bare address (an e-mail address or a phone
number), on one channel or (channel ``None``) on all of them; ``orchestrator.policies`` applies it. Addresses
are normalised as the customer importer normalises them (``orchestrator.data.records``) and e-mail addresses
are then lower-cased whole (``records.address_key``): the policies compare the member's address in the same
form, so ``alice@example.com`` suppresses the member imported as ``Alice@Example.com``.

Adding is idempotent: an entry with the same target (customer or address) and channel is never stored twice
(a unique index holds even against concurrent processes); the existing row is kept as it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import Connection, Engine, and_, delete, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator.config import Settings
from orchestrator.data import records
from orchestrator.data.csvfile import CsvSource, RejectWriter
from orchestrator.db.models import SUPPRESSION_REASONS, Customer, Suppression
from orchestrator.errors import InputError
from orchestrator.masking import mask_contact
from orchestrator.timeutil import utcnow
from orchestrator.unsubscribe import Token, load_keys, verify
from orchestrator.yamlfile import suggest

DEFAULT_REASON = "do_not_contact"
CLI_SOURCE = "cli"
IMPORT_SOURCE = "import"
UNSUBSCRIBE_SOURCE = "unsubscribe_link"
IMPORT_COLUMNS = ("customer_id", "email", "phone", "channel", "reason", "note")
IDENTIFIER_COLUMNS = ("customer_id", "email", "phone")
BATCH_SIZE = 500
LIST_BATCH = 500
_CHANNEL = re.compile(r"[a-z][a-z0-9_]{0,31}")

Key = tuple[int | None, str | None, str | None]  # (customer_pk, address, channel)


@dataclass(frozen=True)
class Target:
    """Who a suppression is about: a customer (``customer_pk``) or a bare, normalised ``address``."""

    customer_pk: int | None = None
    customer_id: str | None = None
    address: str | None = None

    def __post_init__(self):
        # every way in (the command line, an import, a provider's bounce) stores the address in the compared form
        if self.address:
            object.__setattr__(self, "address", records.address_key(self.address))

    def condition(self):
        if self.customer_pk is not None:
            return Suppression.customer_pk == self.customer_pk
        return and_(Suppression.customer_pk.is_(None), Suppression.address == self.address)

    def describe(self) -> str:
        """For a message: the customer id, or the address masked (output never shows a whole address)."""
        return f"customer {self.customer_id}" if self.customer_id is not None else mask_contact(self.address) or "?"


# --- values ----------------------------------------------------------------------------------------------------------


def parse_channel(value: str | None, known: Collection[str] | None = None) -> str | None:
    """A channel name, lower-cased; empty, ``None`` or ``all`` mean every channel (``None``). With ``known`` (the
    loaded channels), any other name is refused: a misspelt ``smss`` would otherwise block nothing."""
    if value is None:
        return None
    value = value.strip().lower()
    if value in ("", "all", "*"):
        return None
    if not _CHANNEL.fullmatch(value):
        raise ValueError(f"{value!r} is not a channel name (e.g. email, sms; or all)")
    if known is not None and value not in known:
        hint = suggest(value, known) or f"the channels are {', '.join(sorted(known))}, or all"
        raise ValueError(f"{value!r} is not a loaded channel: {hint}")
    return value


def parse_reason(value: str | None) -> str:
    if value is None or not value.strip():
        return DEFAULT_REASON
    lowered = value.strip().lower()
    if lowered not in SUPPRESSION_REASONS:
        raise ValueError(f"{value.strip()!r} is not one of {', '.join(SUPPRESSION_REASONS)}")
    return lowered


def normalise_email(value: str) -> str:
    return records.address_key(records.email(value.strip()))


def normalise_phone(settings: Settings, value: str) -> str:
    return records.phone(settings.default_region)(value.strip())


def resolve(
    conn: Connection,
    settings: Settings,
    *,
    customer: str | None = None,
    email: str | None = None,
    phone: str | None = None,
) -> Target:
    """Exactly one selector to a target; ``InputError`` for a bad address or an unknown customer."""
    given = [name for name, value in (("--customer", customer), ("--email", email), ("--phone", phone)) if value]
    if len(given) != 1:
        raise InputError(
            "give exactly one of --customer, --email or --phone" + (f" (got {', '.join(given)})" if given else ""),
        )
    try:
        if email:
            return Target(address=normalise_email(email))
        if phone:
            return Target(address=normalise_phone(settings, phone))
    except ValueError as exc:
        raise InputError(f"{given[0]}: {exc}") from None
    customer = (customer or "").strip()
    pk = conn.execute(select(Customer.id).where(Customer.customer_id == customer)).scalar_one_or_none()
    if pk is None:
        raise InputError(f"--customer: no customer with id {customer!r}")
    return Target(customer_pk=pk, customer_id=customer)


# --- add / remove / list ---------------------------------------------------------------------------------------------


@dataclass
class AddResult:
    added: bool  # False: an identical entry was already there (nothing changed)
    entry: dict[str, Any]


def add(
    conn: Connection,
    target: Target,
    *,
    channel: str | None,
    reason: str = DEFAULT_REASON,
    note: str | None = None,
    source: str = CLI_SOURCE,
    now: datetime | None = None,
) -> AddResult:
    existing = conn.execute(
        select(Suppression.id).where(target.condition(), _channel_is(channel)).order_by(Suppression.id).limit(1)
    ).scalar_one_or_none()
    if existing is not None:
        return AddResult(False, _entry(conn, existing))
    values = {
        "customer_pk": target.customer_pk,
        "address": target.address,
        "channel": channel,
        "reason": reason,
        "source": source,
        "note": note,
        "created_at": now or utcnow(),
    }
    # a concurrent add of the same entry may have got in since the look-up: the unique index decides, and the
    # loser reports the winner's entry
    statement = _insert(conn).values(values).on_conflict_do_nothing().returning(Suppression.id)
    pk = conn.execute(statement).scalar_one_or_none()
    if pk is None:
        existing = conn.execute(
            select(Suppression.id).where(target.condition(), _channel_is(channel)).order_by(Suppression.id).limit(1)
        ).scalar_one()
        return AddResult(False, _entry(conn, existing))
    return AddResult(True, _entry(conn, pk))


def _insert(conn: Connection):
    """An INSERT that can skip rows the unique index already holds (``on_conflict_do_nothing``)."""
    return postgresql_insert(Suppression) if conn.dialect.name == "postgresql" else sqlite_insert(Suppression)


def remove(conn: Connection, target: Target, *, channel: str | None = None, any_channel: bool = True) -> int:
    """Delete the target's entries: all of them (``any_channel``), or those of one channel (``None``: "all")."""
    condition = target.condition()
    if not any_channel:
        condition = and_(condition, _channel_is(channel))
    return conn.execute(delete(Suppression).where(condition)).rowcount


def entries(conn: Connection, *, channel: str | None = None, reason: str | None = None) -> Iterator[dict[str, Any]]:
    """Every entry, oldest first, streamed. ``channel`` keeps the entries that apply to it (its own and "all")."""
    query = _entry_query().order_by(Suppression.created_at, Suppression.id)
    if channel is not None:
        query = query.where(or_(Suppression.channel == channel, Suppression.channel.is_(None)))
    if reason is not None:
        query = query.where(Suppression.reason == reason)
    for row in conn.execute(query.execution_options(yield_per=LIST_BATCH)):
        yield _as_entry(row)


def _channel_is(channel: str | None):
    return Suppression.channel.is_(None) if channel is None else Suppression.channel == channel


def _entry_query():
    return select(
        Suppression.id,
        Customer.customer_id,
        Suppression.address,
        Suppression.channel,
        Suppression.reason,
        Suppression.source,
        Suppression.note,
        Suppression.created_at,
    ).outerjoin(Customer, Customer.id == Suppression.customer_pk)


def _entry(conn: Connection, pk: int) -> dict[str, Any]:
    return _as_entry(conn.execute(_entry_query().where(Suppression.id == pk)).one())


def _as_entry(row) -> dict[str, Any]:
    return {
        "id": row.id,
        "customer_id": row.customer_id,
        "address": row.address,
        "channel": row.channel or "all",
        "reason": row.reason,
        "source": row.source,
        "note": row.note,
        "created_at": row.created_at,
    }


# --- unsubscribe links -----------------------------------------------------------------------------------------------


def unsubscribe(conn: Connection, settings: Settings, link: str, *, now: datetime | None = None) -> AddResult:
    """Honour an unsubscribe token, or the whole link carrying it: an ``unsubscribed`` entry for its
    customer and channel (``all``: every channel)."""
    token = genuine_token(settings, token_of(link), now=now)
    channel = token_channel(token)
    return add(conn, token_target(conn, token), channel=channel, reason="unsubscribed", source=UNSUBSCRIBE_SOURCE)


def genuine_token(settings: Settings, text: str, *, now: datetime | None = None) -> Token:
    """The token's content when it is genuine and not expired; otherwise an ``InputError`` saying which.
    The command line and the web service (``orchestrator.web.unsubscribe``) both decide through here."""
    token = verify(load_keys(settings.base_dir), text)
    if token is None:
        raise InputError("the unsubscribe token is not genuine (forged, truncated or signed with another key)")
    if token.issued is not None:
        expires = token.issued + timedelta(days=settings.unsubscribe_token_days)
        if (now or utcnow()) > expires:
            raise InputError(
                f"the unsubscribe link expired on {expires.date().isoformat()} (links are honoured for "
                f"{settings.unsubscribe_token_days} days: unsubscribe_token_days in the config)",
                hint=f"to honour it anyway: orchestrator suppress add --customer {token.customer_id} "
                f"--channel {token.channel} --reason unsubscribed",
            )
    return token


def token_channel(token: Token) -> str | None:
    """The channel a token names (None: every channel)."""
    try:
        return parse_channel(token.channel)
    except ValueError as exc:
        raise InputError(f"the unsubscribe token names no channel: {exc}") from None


def token_target(conn: Connection, token: Token) -> Target:
    pk = conn.execute(select(Customer.id).where(Customer.customer_id == token.customer_id)).scalar_one_or_none()
    if pk is None:
        raise InputError(f"the unsubscribe token names customer {token.customer_id!r}, who is not in the database")
    return Target(customer_pk=pk, customer_id=token.customer_id)


def token_of(link: str) -> str:
    """The token of a link as sent (``…?token=T``, ``…/u/T``) or of a bare token."""
    text = link.strip()
    if "/" not in text and "?" not in text:
        return text
    parts = urlsplit(text)
    query = parse_qs(parts.query)
    if query.get("token"):
        return query["token"][-1].strip()
    segments = [s for s in parts.path.split("/") if s]
    return unquote(segments[-1]) if segments else ""


# --- import ----------------------------------------------------------------------------------------------------------


@dataclass
class SuppressionImport:
    """What an import did; ``read == loaded + unchanged + rejected`` (rows of the file).

    A row may name several identifiers (customer, e-mail, phone): it is ``loaded`` when at least one new entry
    was stored for it, ``unchanged`` when every entry it names was already there.
    """

    file: str
    read: int = 0
    loaded: int = 0
    unchanged: int = 0
    rejected: int = 0
    entries_added: int = 0
    reject_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "suppressions", **asdict(self)}


@dataclass(slots=True)
class _Row:
    line: int
    fields: list[str]
    customer_id: str | None
    addresses: list[str]
    channel: str | None
    reason: str
    note: str | None


def import_file(
    engine: Engine, settings: Settings, path: str | os.PathLike, channels: Collection[str] | None = None
) -> SuppressionImport:
    """``channels``: the loaded channel names; a row naming another channel is rejected."""
    path = Path(path)
    result = SuppressionImport(file=str(path))
    with CsvSource(path, ()) as source:
        positions = {name.lower(): i for i, name in enumerate(source.header)}
        if not any(c in positions for c in IDENTIFIER_COLUMNS):
            raise source.error(
                "the header has none of the columns customer_id, email, phone",
                1,
                hint=f"the header is: {','.join(IMPORT_COLUMNS)}",
            )
        rejects = RejectWriter(source)
        now = utcnow()
        try:
            with engine.begin() as conn:
                records_ = iter(source.records())
                while chunk := list(islice(records_, BATCH_SIZE)):
                    _import_batch(conn, settings, chunk, positions, len(source.header), result, rejects, now, channels)
        except BaseException:
            rejects.discard()
            raise
        result.reject_file = rejects.commit()
    return result


def _read_row(
    settings: Settings,
    line: int,
    fields: list[str],
    positions: dict[str, int],
    width: int,
    channels: Collection[str] | None = None,
) -> _Row:
    if len(fields) > width and not any(f.strip() for f in fields[width:]):
        fields = fields[:width]
    if len(fields) != width:
        raise ValueError(f"the row has {len(fields)} fields but the header has {width}")

    def value(name: str) -> str:
        index = positions.get(name)
        return fields[index].strip() if index is not None else ""

    problems: list[str] = []
    addresses: list[str] = []
    for name, parse in (("email", normalise_email), ("phone", lambda v: normalise_phone(settings, v))):
        if raw := value(name):
            try:
                addresses.append(parse(raw))
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
    customer_id = value("customer_id") or None
    channel = reason = None
    try:
        channel = parse_channel(value("channel"), channels)
    except ValueError as exc:
        problems.append(f"channel: {exc}")
    try:
        reason = parse_reason(value("reason"))
    except ValueError as exc:
        problems.append(f"reason: {exc}")
    if not customer_id and not addresses and not problems:
        problems.append("give at least one of customer_id, email, phone")
    if problems:
        raise ValueError("; ".join(problems))
    return _Row(line, fields, customer_id, addresses, channel, reason or DEFAULT_REASON, value("note") or None)


def _import_batch(
    conn: Connection,
    settings: Settings,
    chunk: list[tuple[int, list[str]]],
    positions: dict[str, int],
    width: int,
    result: SuppressionImport,
    rejects: RejectWriter,
    now: datetime,
    channels: Collection[str] | None = None,
) -> None:
    rows: list[_Row] = []
    bad: list[tuple[int, list[str], str]] = []
    for line, fields in chunk:
        try:
            rows.append(_read_row(settings, line, fields, positions, width, channels))
        except ValueError as exc:
            bad.append((line, fields, str(exc)))
    ids = {r.customer_id for r in rows if r.customer_id}
    query = select(Customer.customer_id, Customer.id).where(Customer.customer_id.in_(ids))
    pks: dict[str, int] = dict(conn.execute(query).all()) if ids else {}
    addresses = {a for r in rows for a in r.addresses}
    stored: set[Key] = set()
    conditions = []
    if pks:
        conditions.append(Suppression.customer_pk.in_(pks.values()))
    if addresses:
        conditions.append(and_(Suppression.customer_pk.is_(None), Suppression.address.in_(addresses)))
    if conditions:
        query = select(Suppression.customer_pk, Suppression.address, Suppression.channel).where(or_(*conditions))
        for pk, address, channel in conn.execute(query):
            stored.add((pk, None, channel) if pk is not None else (None, address, channel))
    new: list[dict[str, Any]] = []
    for row in rows:
        if row.customer_id and row.customer_id not in pks:
            bad.append((row.line, row.fields, f"customer_id: no customer with id {row.customer_id!r}"))
            continue
        keys: list[Key] = [(None, a, row.channel) for a in row.addresses]
        if row.customer_id:
            keys.insert(0, (pks[row.customer_id], None, row.channel))
        fresh = [k for k in dict.fromkeys(keys) if k not in stored]
        for pk, address, channel in fresh:
            stored.add((pk, address, channel))
            new.append(
                {
                    "customer_pk": pk,
                    "address": address,
                    "channel": channel,
                    "reason": row.reason,
                    "source": IMPORT_SOURCE,
                    "note": row.note,
                    "created_at": now,
                }
            )
        if fresh:
            result.loaded += 1
        else:
            result.unchanged += 1
    if new:  # another import running at the same time may have stored some of them: those are skipped
        inserted = conn.execute(_insert(conn).on_conflict_do_nothing().returning(Suppression.id), new).all()
        result.entries_added += len(inserted)
    for line, fields, reason in sorted(bad, key=lambda reject: reject[0]):
        rejects.reject(line, fields, reason)
    result.read += len(chunk)
    result.rejected += len(bad)
