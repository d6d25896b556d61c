"""The PostgreSQL side of imports: valid rows streamed with ``COPY`` into a staging table, then one merge.

``importing`` validates each batch as on every engine, then hands the valid rows of customers and orders to a
:class:`Staging`: each batch becomes one ``COPY … FROM STDIN`` (psycopg's ``cursor.copy()``) into a temporary
table of the import's transaction, dropped at its commit. Once the file is read, :meth:`Staging.merge` writes it
with a handful of set-based statements and returns the counts:

1. rows whose id is stored take its primary key and their merged ``attributes`` (the stored ones the file does not
   name, then the file's);
2. a stored row is *changed* when a column the file has, its attributes, its tag set or a consent differs
   (``IS DISTINCT FROM``: NULL equals NULL, as in Python), otherwise *unchanged*;
3. ``UPDATE … FROM`` the changed rows, then ``INSERT … SELECT`` the new ones in file order (so the new ids come in
   the order the executemany path gives them);
4. customers: the tags and consents of new and changed rows, as the executemany path writes them (tags the file
   dropped deleted, new ones added; a consent inserted or, when its opt-in differs, updated with source
   ``import``; equal ones, and their source, left alone).

Only the columns of the file's header are staged and compared, so an absent column still says nothing. Duplicate
ids never reach the staging table (``importing`` rejects them first), so each id is merged once. Orders then hand
their paid orders' coupon codes back in file order (:meth:`Staging.paid_coupons`) to be redeemed as before.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import ColumnElement, Connection, Table, any_, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY

from orchestrator.data.records import CustomerRecord, OrderRecord
from orchestrator.db.models import Customer, CustomerConsent, CustomerTag, Order
from orchestrator.db.types import UTCDateTime

STAGING = "orchestrator_import_staging"
Kind = Literal["customers", "orders"]
CONSENT_SOURCE = "import"
REDEEM_PAGE = 1000  # paid orders read back from the staging table at a time

customers = cast(Table, Customer.__table__)
orders = cast(Table, Order.__table__)
TAGS = cast(Table, CustomerTag.__table__).name
CONSENTS = cast(Table, CustomerConsent.__table__).name


@dataclass
class CopyTotals:
    """``COPY`` statements and rows sent by this process, by table: how tests and benchmarks see the path taken."""

    statements: Counter[str] = field(default_factory=Counter)
    rows: Counter[str] = field(default_factory=Counter)


TOTALS = CopyTotals()


@dataclass(frozen=True)
class MergeCounts:
    """What the merged rows did, as ``ImportResult`` counts them."""

    loaded: int
    updated: int
    unchanged: int


def copy_rows(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """One ``COPY table (columns) FROM STDIN`` in the connection's transaction, each row sent as it comes."""
    count = 0
    statement = f"COPY {table} ({', '.join(map(_q, columns))}) FROM STDIN"
    with conn.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    TOTALS.statements[table] += 1
    TOTALS.rows[table] += count
    return count


def any_of(column: ColumnElement[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    """``column = ANY(:values)``: one array parameter however many values, so every batch's look-up is the
    same statement (prepared once) instead of an ``IN`` list of its own size."""
    return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))


class Staging:
    """The staging table of one import of customers or orders; ``copy`` each batch, then ``merge`` once."""

    def __init__(self, conn: Connection, kind: Kind, *, extras: frozenset[str], now: datetime):
        self.conn = conn
        self.kind = kind
        self.table = customers if kind == "customers" else orders
        self.key = "customer_id" if kind == "customers" else "order_id"
        self.extras = sorted(extras)
        self.now = now
        self.columns: list[str] = []  # the record's values, in the order staged; known from the first row
        self.tags = False  # customers: the file has a tags column
        self.channels: list[str] = []  # customers: the consent channels the file has (email, sms)
        self._convert: list[tuple[str, Callable[[Any], Any] | None]] = []  # each column and its conversion
        self._staged: list[str] = []  # the staging table's columns that COPY fills

    # --- staging --------------------------------------------------------------------------------------------------

    def copy(self, rows: Sequence[tuple[int, CustomerRecord | OrderRecord]]) -> None:
        """One ``COPY`` of a batch's valid rows (line and record), each row written to the stream as it is made."""
        if not rows:
            return
        if not self._staged:
            self._create(rows[0][1])
        copy_rows(self.conn, STAGING, self._staged, (self._row(line, record) for line, record in rows))

    def _create(self, record: CustomerRecord | OrderRecord) -> None:
        """The staging table for the columns this file has, typed as the real table's (``CREATE … AS … WITH NO
        DATA``); ``attributes`` as ``jsonb`` to compare as Python compares dicts."""
        present = record.values
        self.columns = [c.name for c in self.table.c if c.name in present and c.name != "attributes"]
        self.columns.append("attributes")
        if isinstance(record, CustomerRecord):
            self.tags = record.tags is not None
            self.channels = list(record.consents)
        dialect = self.conn.dialect
        self._convert = [(c, self.table.c[c].type.bind_processor(dialect)) for c in self.columns[:-1]]
        self._convert.append(("attributes", _json))
        extra = [
            *(["CAST(NULL AS text[]) AS tags"] if self.tags else []),
            *(f"false AS {_opt_in(c)}" for c in self.channels),
        ]
        select_list = ", ".join(
            [
                "0 AS line",
                *(_q(c) for c in self.columns[:-1]),
                "CAST(attributes AS jsonb) AS attributes",
                *extra,
                "id AS pk",
                "false AS changed",
            ]
        )
        self.conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE {STAGING} ON COMMIT DROP AS SELECT {select_list} FROM {self.table.name} "
            "WITH NO DATA"
        )
        self._staged = ["line", *self.columns, *(["tags"] if self.tags else []), *map(_opt_in, self.channels)]

    def _row(self, line: int, record: CustomerRecord | OrderRecord) -> tuple:
        values = record.values
        row = [line, *(values[c] if convert is None else convert(values[c]) for c, convert in self._convert)]
        if isinstance(record, CustomerRecord):
            if self.tags:
                row.append(sorted(record.tags or ()))  # sorted: compared with the stored tags in "C" order
            row.extend(record.consents[c] for c in self.channels)
        return tuple(row)

    # --- merging ----------------------------------------------------------------------------------------------------

    def merge(self) -> MergeCounts:
        """Write the staged rows into the real tables; what each row did."""
        if not self._staged:
            return MergeCounts(0, 0, 0)
        table, key = self.table.name, _q(self.key)
        self._run(f"ANALYZE {STAGING}")  # a temporary table is never analysed by autovacuum
        self._run(
            f"UPDATE {STAGING} AS s SET pk = t.id, attributes = COALESCE(("
            "  SELECT jsonb_object_agg(a.key, a.value) FROM jsonb_each(CAST(t.attributes AS jsonb)) AS a"
            "  WHERE a.key <> ALL(CAST(:extras AS text[]))"
            f"), '{{}}') || s.attributes FROM {table} AS t WHERE t.{key} = s.{key}",
            extras=self.extras,
        )
        self._run(f"UPDATE {STAGING} AS s SET changed = {self._differs()} FROM {table} AS t WHERE t.id = s.pk")
        loaded, updated, total = self.conn.execute(
            text(f"SELECT count(*) FILTER (WHERE pk IS NULL), count(*) FILTER (WHERE changed), count(*) FROM {STAGING}")
        ).one()
        columns = [c for c in self.columns if c != self.key]
        assignments = ", ".join(f"{_q(c)} = {_from_staging(c)}" for c in columns)
        self._run(
            f"UPDATE {table} AS t SET {assignments}, updated_at = :now FROM {STAGING} AS s "
            "WHERE t.id = s.pk AND s.changed"
        )
        names = ", ".join(map(_q, self.columns))
        self._run(
            f"INSERT INTO {table} ({names}, created_at, updated_at) "
            f"SELECT {', '.join(_from_staging(c) for c in self.columns)}, :now, :now FROM {STAGING} AS s "
            "WHERE s.pk IS NULL ORDER BY s.line"
        )
        if self.kind == "customers" and (self.tags or self.channels):
            self._run(
                f"UPDATE {STAGING} AS s SET pk = t.id, changed = true FROM {table} AS t "
                f"WHERE s.pk IS NULL AND t.{key} = s.{key}"
            )
            self._write_tags_and_consents()
        return MergeCounts(loaded, updated, total - loaded - updated)

    def _differs(self) -> str:
        """SQL true when staged row ``s`` would change stored row ``t`` (both have the same id)."""
        compared = [c for c in self.columns if c not in (self.key, "attributes")]
        tests = ["s.attributes <> CAST(t.attributes AS jsonb)"]
        if compared:
            staged = ", ".join(f"s.{_q(c)}" for c in compared)
            stored = ", ".join(f"t.{_q(c)}" for c in compared)
            tests.append(f"ROW({staged}) IS DISTINCT FROM ROW({stored})")
        if self.tags:
            tests.append(
                f"s.tags IS DISTINCT FROM ARRAY(SELECT CAST(g.tag AS text) FROM {TAGS} AS g "
                'WHERE g.customer_pk = t.id ORDER BY g.tag COLLATE "C")'
            )
        for channel in self.channels:
            tests.append(
                f"NOT EXISTS (SELECT 1 FROM {CONSENTS} AS k WHERE k.customer_pk = t.id "
                f"AND k.channel = '{channel}' AND k.opted_in = s.{_opt_in(channel)})"
            )
        return "(" + " OR ".join(tests) + ")"

    def _write_tags_and_consents(self) -> None:
        if self.tags:
            self._run(
                f"DELETE FROM {TAGS} AS g USING {STAGING} AS s "
                "WHERE s.changed AND g.customer_pk = s.pk AND g.tag <> ALL(s.tags)"
            )
            self._run(
                f"INSERT INTO {TAGS} (customer_pk, tag) SELECT s.pk, u.tag FROM {STAGING} AS s "
                "CROSS JOIN LATERAL unnest(s.tags) AS u(tag) WHERE s.changed ON CONFLICT DO NOTHING"
            )
        for channel in self.channels:
            self._run(
                f"INSERT INTO {CONSENTS} (customer_pk, channel, opted_in, source, updated_at) "
                f"SELECT s.pk, :channel, s.{_opt_in(channel)}, :source, :now FROM {STAGING} AS s WHERE s.changed "
                "ON CONFLICT (customer_pk, channel) DO UPDATE SET opted_in = excluded.opted_in, "
                "source = excluded.source, updated_at = excluded.updated_at "
                f"WHERE {CONSENTS}.opted_in IS DISTINCT FROM excluded.opted_in",
                channel=channel,
                source=CONSENT_SOURCE,
            )

    def paid_coupons(self) -> Iterator[tuple[int, str, str]]:
        """``(line, order_id, coupon code)`` of each staged paid order with a code, in file order, a page at a time
        (the caller redeems them on the same connection between pages)."""
        if "coupon_code" not in self.columns:
            return
        self._run(f"CREATE INDEX ON {STAGING} (line)")
        after = 0
        query = text(
            f"SELECT line, order_id, coupon_code FROM {STAGING} WHERE line > :after AND status = 'paid' "
            "AND coupon_code IS NOT NULL AND coupon_code <> '' ORDER BY line LIMIT :page"
        )
        while page := self.conn.execute(query, {"after": after, "page": REDEEM_PAGE}).all():
            yield from (tuple(row) for row in page)
            after = page[-1][0]

    def _run(self, sql: str, **params: Any) -> None:
        statement = text(sql)
        if ":now" in sql:
            statement = statement.bindparams(bindparam("now", type_=UTCDateTime()))
            params["now"] = self.now
        self.conn.execute(statement, params)


def _q(name: str) -> str:
    return f'"{name}"'


def _opt_in(channel: str) -> str:
    """The staging column of a consent channel's opt-in."""
    return f"opt_in_{channel}"


def _from_staging(column: str) -> str:
    return "CAST(s.attributes AS json)" if column == "attributes" else f"s.{_q(column)}"


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False)
