"""Importing customers and orders from CSV: streamed, validated, idempotent, all or nothing.

The file is read in batches of ``BATCH_SIZE`` rows, so memory stays flat however large it is. Each batch is
validated (bad rows go to the reject file with a reason); an id that occurs twice in one file is a mistake in the
file: the later row is rejected ("also on line N"), whichever batch the first is in; the ids seen so far are kept
in a temporary table, not in memory. Then the valid rows are written, one of two ways with the same outcome
(the same rows, counts and reject files; ``tests/test_import_pg_copy.py`` compares them):

- SQLite: per batch, look the batch's ids up in one query, then insert the new rows, update the changed ones and
  leave identical ones alone, with Core ``executemany`` statements.
- PostgreSQL, customers and orders: each batch's valid rows stream by ``COPY`` into a temporary staging table,
  and once the file is read one set-based merge writes them (``pg_copy``); orders' coupons are then redeemed in
  file order. It is the faster way there (figures in ``benchmarks/README.md``).

The whole file is one transaction: a problem with the file found on its last line leaves the database and the
folder as they were.

A column absent from the header says nothing: the stored value is left alone (a file of ``customer_id, name``
renames members and keeps their e-mails, tags and consents). Likewise extra columns are merged into the stored
``attributes`` by name: a non-empty value sets it, an empty one removes it, attributes the file does not name stay.

Redemptions (``code, order_id[, amount][, redeemed_at]``) go through ``orchestrator.coupons.redeem`` row by row,
in file order: a refused row is rejected with the refusal as its reason, a coupon already redeemed on the same
order is unchanged. Orders pick up their coupons: once orders are written (each batch on SQLite, the whole file
on PostgreSQL), the coupon code of every paid order is redeemed the same way, in file order (source
``orders_import``). A refusal there does not reject the order, which is real whatever happened to the coupon; it
is counted (``coupon_refusals``) and written with its line, code, order and reason to
``<stem>.coupon-refusals.csv`` beside the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    bindparam,
    delete,
    insert,
    select,
    text,
    update,
)

from orchestrator.config import Settings
from orchestrator.coupons.redemption import RedemptionRefused, redeem
from orchestrator.data import pg_copy
from orchestrator.data.csvfile import CsvSource, RejectWriter, SideFile
from orchestrator.data.records import (
    CONSENT_COLUMNS,
    CUSTOMER_COLUMNS,
    CUSTOMER_REQUIRED_COLUMNS,
    ORDER_COLUMNS,
    ORDER_REQUIRED_COLUMNS,
    REDEMPTION_COLUMNS,
    REDEMPTION_REQUIRED_COLUMNS,
    CustomerRecord,
    OrderRecord,
    RedemptionRecord,
    RowError,
    customer_reader,
    order_reader,
    redemption_reader,
)
from orchestrator.db.models import Customer, CustomerConsent, CustomerTag, Order
from orchestrator.timeutil import utcnow

BATCH_SIZE = 2000
SEEN_IDS = "orchestrator_import_seen_ids"  # the temporary table of the ids read so far
CONSENT_SOURCE = "import"
REDEMPTION_SOURCE = "import"  # coupon_redemptions.source of ``import redemptions``
ORDER_COUPON_SOURCE = "orders_import"  # … and of the coupon codes on imported orders

customers = cast(Table, Customer.__table__)
customer_tags = cast(Table, CustomerTag.__table__)
customer_consents = cast(Table, CustomerConsent.__table__)
orders = cast(Table, Order.__table__)

# the columns a row sets, in the form the records carry them; compared with the database to find changes
CUSTOMER_VALUES = (
    *(c for c in CUSTOMER_COLUMNS if c != "tags" and c not in CONSENT_COLUMNS),
    "attributes",
)
ORDER_VALUES = (*(c for c in ORDER_COLUMNS if c != "customer_id"), "customer_pk", "attributes")
CONSENT_CHANNELS = tuple(CONSENT_COLUMNS.values())


@dataclass
class ImportResult:
    """What an import did; ``read == loaded + updated + unchanged + rejected``.

    Redemptions: ``loaded`` coupons were redeemed, ``unchanged`` ones had already been redeemed on the same
    order, ``updated`` is always 0. Orders also report the coupon codes of their paid orders: newly redeemed
    (``coupons_redeemed``) and refused (``coupon_refusals``, listed in ``coupon_refusals_file``).
    """

    kind: str  # "customers" | "orders" | "redemptions"
    file: str
    read: int = 0  # data rows read
    loaded: int = 0  # new rows inserted
    updated: int = 0  # existing rows whose values changed
    unchanged: int = 0  # existing rows identical to the file (re-import)
    rejected: int = 0
    reject_file: str | None = None
    coupons_redeemed: int | None = None  # orders only
    coupon_refusals: int | None = None  # orders only
    coupon_refusals_file: str | None = None  # orders only

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.kind != "orders":
            for key in _ORDER_ONLY:
                del data[key]
        return data


_ORDER_ONLY = ("coupons_redeemed", "coupon_refusals", "coupon_refusals_file")


@dataclass(slots=True)
class _Row:
    line: int
    fields: list[str]
    record: Any


@dataclass(slots=True)
class _Context:
    """What applying a batch needs besides the rows."""

    settings: Settings
    now: datetime
    extras: frozenset[str] = frozenset()  # the file's extra columns: the attributes it sets or removes
    refusals: CouponRefusalWriter | None = None  # orders: where refused coupon codes go


_Reject = tuple[int, list[str], str]
_Apply = Callable[[Connection, list[_Row], ImportResult, _Context], list[_Reject]]


def import_customers(
    engine: Engine, settings: Settings, path: str | os.PathLike, *, progress: bool = False
) -> ImportResult:
    """Load a customers CSV (see ``records.CUSTOMER_COLUMNS``) with tags and e-mail / SMS consents."""
    return _import(engine, settings, Path(path), "customers", progress)


def import_orders(
    engine: Engine, settings: Settings, path: str | os.PathLike, *, progress: bool = False
) -> ImportResult:
    """Load an orders CSV (see ``records.ORDER_COLUMNS``); each order's customer must already exist.

    The coupon code of every paid order is redeemed on it (see the module docstring).
    """
    return _import(engine, settings, Path(path), "orders", progress)


def import_redemptions(
    engine: Engine, settings: Settings, path: str | os.PathLike, *, progress: bool = False
) -> ImportResult:
    """Load a redemptions CSV (``code, order_id[, amount][, redeemed_at]``); refused rows are rejected."""
    return _import(engine, settings, Path(path), "redemptions", progress)


def _import(engine: Engine, settings: Settings, path: Path, kind: str, progress: bool) -> ImportResult:
    kind_ = _KINDS[kind]
    result = ImportResult(kind=kind, file=str(path))
    with CsvSource(path, kind_.required, kind_.columns) as source:
        read_row = kind_.reader(source.header, settings)
        rejects = RejectWriter(source)
        extras = frozenset(name or f"column_{i + 1}" for i, name in enumerate(source.header))
        context = _Context(settings, utcnow(), extras - set(kind_.columns))
        if kind == "orders":
            context.refusals = CouponRefusalWriter(source)
            result.coupons_redeemed = result.coupon_refusals = 0
        try:
            with engine.begin() as conn, _progress_bar(source, progress) as advance:
                seen = _SeenIds(conn, kind_.key) if kind_.key else None
                staging = _staging(conn, kind, context)
                apply = kind_.apply if staging is None else _STAGED[kind](staging)
                for chunk in _chunks(source.records(), BATCH_SIZE):
                    _import_batch(conn, chunk, read_row, apply, result, rejects, context, seen)
                    advance()
                if staging is not None:
                    _merge(conn, staging, result, context)
                if seen is not None:
                    seen.drop()
        except BaseException:
            rejects.discard()
            if context.refusals is not None:
                context.refusals.discard()
            raise
        result.reject_file = rejects.commit()
        if context.refusals is not None:
            result.coupon_refusals_file = context.refusals.commit()
    if result.loaded or result.updated:
        _analyze(engine, kind)
    return result


# what each kind of import writes, for the planner's statistics
_WRITES = {
    "customers": ("customers", "customer_tags", "customer_consents"),
    "orders": ("orders", "coupons"),
    "redemptions": ("coupons",),
}


def _analyze(engine: Engine, kind: str) -> None:
    """On PostgreSQL, refresh the planner's statistics of the tables the import wrote. Without them a campaign
    run right after a bulk load (before autovacuum comes round, or with it off) is planned for empty tables:
    nested loops that re-aggregate every order per member, minutes instead of a second."""
    if engine.dialect.name != "postgresql" or kind not in _WRITES:
        return
    with engine.connect() as conn:
        conn.execute(text(f"ANALYZE {', '.join(_WRITES[kind])}"))
        conn.commit()


def _import_batch(
    conn: Connection,
    chunk: list[tuple[int, list[str]]],
    read_row: Callable[[list[str]], Any],
    apply: _Apply,
    result: ImportResult,
    rejects: RejectWriter,
    context: _Context,
    seen: _SeenIds | None,
) -> None:
    """Validate, then apply the valid rows; rejects are written in line order, whichever check caught them."""
    rows: list[_Row] = []
    bad: list[_Reject] = []
    for line, fields in chunk:
        try:
            rows.append(_Row(line, fields, read_row(fields)))
        except RowError as exc:
            bad.append((line, fields, str(exc)))
    if seen is not None:
        rows = seen.first_occurrences(rows, bad)
    bad += apply(conn, rows, result, context)
    for line, fields, reason in sorted(bad, key=lambda reject: reject[0]):
        rejects.reject(line, fields, reason)
    result.read += len(chunk)
    result.rejected += len(bad)


class _SeenIds:
    """The ids of the file's rows so far, with the line each first occurs on, in a temporary table of the
    import's connection: a duplicate is found however far apart the two rows are, and memory stays flat."""

    def __init__(self, conn: Connection, column: str):
        self.conn = conn
        self.column = column
        self.table = Table(
            SEEN_IDS,
            MetaData(),
            Column("key", Text, primary_key=True),
            Column("line", Integer, nullable=False),
            prefixes=["TEMPORARY"],
        )
        self.table.drop(conn, checkfirst=True)  # SQLite runs DDL outside the transaction: a failed import's
        self.table.create(conn)

    def first_occurrences(self, rows: list[_Row], bad: list[_Reject]) -> list[_Row]:
        """The rows whose id is new to the file; each other row is added to ``bad`` naming the earlier line."""
        keys = {row.record.key for row in rows}
        table = self.table
        query = select(table.c.key, table.c.line).where(_among(self.conn, table.c.key, keys))
        earlier: dict[str, int] = {key: line for key, line in self.conn.execute(query)} if keys else {}
        kept: list[_Row] = []
        new: dict[str, int] = {}
        for row in rows:
            key = row.record.key
            first = earlier.get(key) or new.get(key)
            if first is not None:
                bad.append((row.line, row.fields, f"{self.column}: {key} is also on line {first} of this file"))
                continue
            new[key] = row.line
            kept.append(row)
        if new and self.conn.dialect.name == "postgresql":
            pg_copy.copy_rows(self.conn, SEEN_IDS, ("key", "line"), new.items())
        elif new:
            self.conn.execute(insert(table), [{"key": key, "line": line} for key, line in new.items()])
        return kept

    def drop(self) -> None:
        self.table.drop(self.conn)


def _chunks(items: Iterable[tuple[int, list[str]]], size: int) -> Iterator[list[tuple[int, list[str]]]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


@contextmanager
def _progress_bar(source: CsvSource, enabled: bool) -> Iterator[Callable[[], None]]:
    """A bar on stderr driven by bytes read, so it is right for any row length; nothing when not enabled."""
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(f"importing {source.path.name}", total=source.size or None)
        yield lambda: bar.update(task, completed=source.bytes_read)
        bar.update(task, completed=source.bytes_read)


# --- PostgreSQL: COPY into a staging table, one merge (see ``pg_copy``) -----------------------------------------------


def _staging(conn: Connection, kind: str, context: _Context) -> pg_copy.Staging | None:
    """A staging table for this import on PostgreSQL; ``None`` where rows are written batch by batch."""
    if conn.dialect.name != "postgresql" or kind not in _STAGED:
        return None
    return pg_copy.Staging(conn, cast(pg_copy.Kind, kind), extras=context.extras, now=context.now)


def _stage_customers(staging: pg_copy.Staging) -> _Apply:
    def apply(conn: Connection, rows: list[_Row], result: ImportResult, context: _Context) -> list[_Reject]:
        staging.copy([(row.line, row.record) for row in rows])
        return []

    return apply


def _stage_orders(staging: pg_copy.Staging) -> _Apply:
    def apply(conn: Connection, rows: list[_Row], result: ImportResult, context: _Context) -> list[_Reject]:
        known, rejects = _with_customers(conn, rows)
        staging.copy([(row.line, row.record) for row in known])
        return rejects

    return apply


_STAGED = {"customers": _stage_customers, "orders": _stage_orders}


def _merge(conn: Connection, staging: pg_copy.Staging, result: ImportResult, context: _Context) -> None:
    counts = staging.merge()
    result.loaded += counts.loaded
    result.updated += counts.updated
    result.unchanged += counts.unchanged
    if result.kind == "orders":
        _redeem_coupons(conn, staging.paid_coupons(), result, context)


# --- deciding what each row does ------------------------------------------------------------------------------------


def _plan(
    rows: list[_Row], stored: dict[str, Any], state: Callable[[Any], Any], result: ImportResult
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a batch into records to insert and records to update (by key), counting each row's outcome.

    ``stored`` maps the keys found in the database to their state, as comparable with ``state(record)``.
    """
    current = dict(stored)
    inserts: dict[str, Any] = {}
    updates: dict[str, Any] = {}
    for row in rows:
        record, key = row.record, row.record.key
        new_state = state(record)
        if key not in current:
            inserts[key] = record
            result.loaded += 1
        elif current[key] == new_state:
            result.unchanged += 1
            continue
        else:
            (inserts if key in inserts else updates)[key] = record
            result.updated += 1
        current[key] = new_state
    return inserts, updates


def _merge_attributes(values: dict[str, Any], stored: dict[str, Any] | None, extras: frozenset[str]) -> None:
    """The row's ``attributes`` as they will be stored: the stored ones the file does not name, then the file's."""
    if stored:
        values["attributes"] = {k: v for k, v in stored.items() if k not in extras} | values["attributes"]


def _same_columns(values: dict[str, Any], record_values: dict[str, Any]) -> dict[str, Any]:
    """The stored ``values`` of the columns the file has: a column it has not is not compared (nor written)."""
    return {column: values[column] for column in record_values}


def _stored_rows(
    conn: Connection, table: Table, key: str, columns: tuple[str, ...], keys: set[str]
) -> dict[str, tuple[int, dict[str, Any]]]:
    """``key -> (pk, {column: value})`` for the keys already in ``table``, in one query."""
    if not keys:
        return {}
    query = select(table.c.id, *(table.c[c] for c in columns)).where(table.c[key].in_(padded(keys)))
    found: dict[str, tuple[int, dict[str, Any]]] = {}
    for pk, *values in conn.execute(query):
        row = dict(zip(columns, values, strict=True))
        found[row[key]] = (pk, row)
    return found


def _update_rows(conn: Connection, table: Table, changes: list[tuple[int, dict[str, Any]]], now: datetime) -> None:
    """Set every column of the changed rows (``created_at`` is kept)."""
    if changes:
        statement = update(table).where(table.c.id == bindparam("row_pk"))
        conn.execute(statement, [{"row_pk": pk, **values, "updated_at": now} for pk, values in changes])


# --- customers -------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _StoredCustomer:
    pk: int
    values: dict[str, Any]
    tags: frozenset[str]
    consents: dict[str, bool]

    def state_like(self, record: CustomerRecord) -> tuple:
        """What is stored of the columns ``record``'s file has, comparable with ``_customer_state(record)``."""
        tags = self.tags if record.tags is not None else None
        return (_same_columns(self.values, record.values), tags, {c: self.consents.get(c) for c in record.consents})


def _customer_state(record: CustomerRecord) -> tuple:
    return (record.values, record.tags, record.consents)


def _apply_customers(conn: Connection, rows: list[_Row], result: ImportResult, context: _Context) -> list[_Reject]:
    now = context.now
    stored = _stored_customers(conn, {row.record.key for row in rows})
    states = {}
    for row in rows:
        if (found := stored.get(row.record.key)) is not None:
            _merge_attributes(row.record.values, found.values["attributes"], context.extras)
            states[row.record.key] = found.state_like(row.record)
    inserts, updates = _plan(rows, states, _customer_state, result)
    new_pks = _insert_customers(conn, list(inserts.values()), now)
    _update_rows(conn, customers, [(stored[k].pk, r.values) for k, r in updates.items()], now)
    changes = [(new_pks[k], frozenset(), {}, r) for k, r in inserts.items()]
    changes += [(stored[k].pk, stored[k].tags, stored[k].consents, r) for k, r in updates.items()]
    _write_tags(conn, [(pk, old, record.tags) for pk, old, _, record in changes if record.tags is not None])
    _write_consents(conn, [(pk, old, record.consents) for pk, _, old, record in changes], now)
    return []


def _stored_customers(conn: Connection, keys: set[str]) -> dict[str, _StoredCustomer]:
    found = _stored_rows(conn, customers, "customer_id", CUSTOMER_VALUES, keys)
    stored = {key: _StoredCustomer(pk, values, frozenset(), {}) for key, (pk, values) in found.items()}
    if not stored:
        return stored
    by_pk = {customer.pk: customer for customer in stored.values()}
    tags: dict[int, set[str]] = {}
    for pk, tag in conn.execute(
        select(customer_tags.c.customer_pk, customer_tags.c.tag).where(_in(customer_tags, by_pk))
    ):
        tags.setdefault(pk, set()).add(tag)
    for pk, tag_set in tags.items():
        by_pk[pk].tags = frozenset(tag_set)
    consents = select(customer_consents.c.customer_pk, customer_consents.c.channel, customer_consents.c.opted_in)
    for pk, channel, opted_in in conn.execute(
        consents.where(_in(customer_consents, by_pk), customer_consents.c.channel.in_(CONSENT_CHANNELS))
    ):
        by_pk[pk].consents[channel] = opted_in
    return stored


def _in(table: Table, pks: Iterable[int]) -> ColumnElement[bool]:
    return table.c.customer_pk.in_(padded(pks))


def _among(conn: Connection, column: ColumnElement, values: Iterable) -> ColumnElement[bool]:
    """``column IN values``, as one array parameter on PostgreSQL (``pg_copy.any_of``)."""
    if conn.dialect.name == "postgresql":
        return pg_copy.any_of(column, values)
    return column.in_(padded(values))


def padded(values: Iterable) -> list:
    """The values, repeated up to the next power of two: look-ups of a batch then come in a handful of sizes,
    so the database driver's statement cache holds a few statements instead of one per batch (SQLite's keeps
    128, about 170 KB each, which grew the import's memory with the file)."""
    items = list(values)
    size = 1
    while size < len(items):
        size *= 2
    return items + items[-1:] * (size - len(items))


def _insert_customers(conn: Connection, records: list[CustomerRecord], now: datetime) -> dict[str, int]:
    """Insert and return ``customer_id -> id``.

    A plain ``executemany`` plus one lookup, rather than ``INSERT … RETURNING``: SQLAlchemy renders the latter
    as multi-row VALUES statements, which measured twice as slow on PostgreSQL (psycopg) and no faster on SQLite.
    """
    if not records:
        return {}
    conn.execute(insert(customers), [{**r.values, "created_at": now, "updated_at": now} for r in records])
    return _customer_pks(conn, {r.key for r in records})


def _write_tags(conn: Connection, changes: list[tuple[int, frozenset[str], frozenset[str]]]) -> None:
    """Make each customer's tag set the file's: delete the tags that went, insert the ones that came."""
    gone = [{"pk": pk, "t": tag} for pk, old, new in changes for tag in old - new]
    came = [{"customer_pk": pk, "tag": tag} for pk, old, new in changes for tag in new - old]
    if gone:
        match = (customer_tags.c.customer_pk == bindparam("pk"), customer_tags.c.tag == bindparam("t"))
        conn.execute(delete(customer_tags).where(*match), gone)
    if came:
        conn.execute(insert(customer_tags), came)


def _write_consents(
    conn: Connection, changes: list[tuple[int, dict[str, bool], dict[str, bool]]], now: datetime
) -> None:
    """Insert missing consent rows and update those whose opt-in changed; leave equal ones (and their source)."""
    added, changed = [], []
    for pk, old, new in changes:
        for channel, opted_in in new.items():
            values = {"opted_in": opted_in, "source": CONSENT_SOURCE, "updated_at": now}
            if channel not in old:
                added.append({"customer_pk": pk, "channel": channel, **values})
            elif old[channel] != opted_in:
                changed.append({"pk": pk, "ch": channel, **values})
    if added:
        conn.execute(insert(customer_consents), added)
    if changed:
        match = (customer_consents.c.customer_pk == bindparam("pk"), customer_consents.c.channel == bindparam("ch"))
        conn.execute(update(customer_consents).where(*match), changed)


# --- orders ----------------------------------------------------------------------------------------------------------


def _apply_orders(conn: Connection, rows: list[_Row], result: ImportResult, context: _Context) -> list[_Reject]:
    """Resolve each order's customer (rejecting unknown ones), insert / update the orders, redeem their coupons."""
    now = context.now
    known, rejects = _with_customers(conn, rows)
    found = _stored_rows(conn, orders, "order_id", ORDER_VALUES, {row.record.key for row in known})
    states = {}
    for row in known:
        if (stored := found.get(row.record.key)) is not None:
            _merge_attributes(row.record.values, stored[1]["attributes"], context.extras)
            states[row.record.key] = _same_columns(stored[1], row.record.values)
    inserts, updates = _plan(known, states, lambda r: r.values, result)
    if inserts:
        conn.execute(insert(orders), [{**r.values, "created_at": now, "updated_at": now} for r in inserts.values()])
    _update_rows(conn, orders, [(found[k][0], r.values) for k, r in updates.items()], now)
    _redeem_coupons(conn, _paid_coupons(known), result, context)
    return rejects


def _with_customers(conn: Connection, rows: list[_Row]) -> tuple[list[_Row], list[_Reject]]:
    """The orders whose customer is stored, with its key set as ``customer_pk``; the others as rejects."""
    customer_pks = _customer_pks(conn, {row.record.customer_id for row in rows})
    known: list[_Row] = []
    rejects: list[_Reject] = []
    for row in rows:
        record: OrderRecord = row.record
        pk = customer_pks.get(record.customer_id)
        if pk is None:
            reason = f"customer_id: unknown customer {record.customer_id} (import it with 'import customers' first)"
            rejects.append((row.line, row.fields, reason))
            continue
        record.values["customer_pk"] = pk
        known.append(row)
    return known, rejects


def _paid_coupons(rows: list[_Row]) -> Iterator[tuple[int, str, str]]:
    """``(line, order_id, code)`` of each paid order with a coupon code, in file order (ids are unique by now)."""
    for row in rows:
        values = row.record.values
        if values["status"] == "paid" and values.get("coupon_code"):
            yield row.line, values["order_id"], values["coupon_code"]


def _redeem_coupons(
    conn: Connection, paid: Iterable[tuple[int, str, str]], result: ImportResult, context: _Context
) -> None:
    """Redeem the coupon code of each paid order, as the order now stands, in file order."""
    for line, order_id, code in paid:
        try:
            redemption = redeem(conn, context.settings, code, order_id, source=ORDER_COUPON_SOURCE)
        except RedemptionRefused as refused:
            assert context.refusals is not None
            context.refusals.refuse(line, code, order_id, refused.detail)
            result.coupon_refusals = (result.coupon_refusals or 0) + 1
            continue
        if redemption.new:
            result.coupons_redeemed = (result.coupons_redeemed or 0) + 1


# --- redemptions -----------------------------------------------------------------------------------------------------


def _apply_redemptions(conn: Connection, rows: list[_Row], result: ImportResult, context: _Context) -> list[_Reject]:
    """Redeem row by row, in file order (a bundled coupon may need its partner's row before it)."""
    rejects: list[_Reject] = []
    for row in rows:
        record: RedemptionRecord = row.record
        try:
            redemption = redeem(
                conn,
                context.settings,
                record.code,
                record.order_id,
                amount=record.amount,
                at=record.redeemed_at,
                source=REDEMPTION_SOURCE,
            )
        except RedemptionRefused as refused:
            rejects.append((row.line, row.fields, refused.detail))
            continue
        if redemption.new:
            result.loaded += 1
        else:
            result.unchanged += 1
    return rejects


class CouponRefusalWriter(SideFile):
    """``<stem>.coupon-refusals.csv``: ``line, code, order_id, reason`` of each refused coupon of an orders file."""

    def __init__(self, source: CsvSource):
        path = source.path.with_name(f"{source.path.stem}.coupon-refusals.csv")
        super().__init__(path, ["line", "code", "order_id", "reason"], bom=source.has_bom, what="coupon refusals file")

    def refuse(self, line: int, code: str, order_id: str, reason: str) -> None:
        self.write([line, code, order_id, reason])


def _customer_pks(conn: Connection, keys: set[str]) -> dict[str, int]:
    if not keys:
        return {}
    query = select(customers.c.customer_id, customers.c.id).where(_among(conn, customers.c.customer_id, keys))
    return {key: pk for key, pk in conn.execute(query)}


@dataclass(frozen=True)
class _Kind:
    required: tuple[str, ...]  # columns the header must have
    columns: tuple[str, ...]  # every column read; others are extras (attributes)
    reader: Callable[..., Callable[[list[str]], Any]]
    apply: _Apply
    key: str | None  # the id column: a second row with the same id is rejected


_KINDS = {
    "customers": _Kind(CUSTOMER_REQUIRED_COLUMNS, CUSTOMER_COLUMNS, customer_reader, _apply_customers, "customer_id"),
    "orders": _Kind(ORDER_REQUIRED_COLUMNS, ORDER_COLUMNS, order_reader, _apply_orders, "order_id"),
    "redemptions": _Kind(REDEMPTION_REQUIRED_COLUMNS, REDEMPTION_COLUMNS, redemption_reader, _apply_redemptions, None),
}
