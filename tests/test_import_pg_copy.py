"""Imports on PostgreSQL go through ``COPY`` into a staging table and one merge (``orchestrator.data.pg_copy``);
on SQLite through Core ``executemany``. The same files must leave the same database, counts and side files.

Every other import test runs on both engines too (the ``engine`` / ``run_cli`` fixtures), so on PostgreSQL they
exercise the ``COPY`` path; the tests here compare the two paths directly, on files made to be awkward.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, update

from orchestrator.config import Settings
from orchestrator.coupons import codes
from orchestrator.data import importing, pg_copy
from orchestrator.data.records import CUSTOMER_COLUMNS, ORDER_COLUMNS
from orchestrator.db.engine import create_db_engine
from orchestrator.db.models import Coupon, CouponRedemption, Customer, CustomerConsent, CustomerTag, Order
from orchestrator.errors import InputError
from tests.conftest import _truncate_postgres
from tests.test_coupons_redeem import LUNCH, Shop
from tests.test_import import CUSTOMER, ORDER, write_csv

SETTINGS = Settings()

# text that COPY's text format escapes or could misread: its delimiter, line ends, its escape character, its NULL
# marker, array and JSON punctuation, quotes, and characters outside the BMP
AWKWARD = [
    "tab\there",
    "two\nlines",
    "cr\r\nlf",
    "back\\slash",
    "\\N",
    "\\\\N",
    "NULL",
    "null",
    '"quoted", with comma',
    "{braces,inside}",
    "it's",
    "张三 🎉",
    "trailing backslash\\",
    "\\.",
    "ends with \\t literally",
]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)


@pytest.fixture
def pg_engine(request) -> Iterator[Engine]:
    url = request.getfixturevalue("_postgres_migrated")
    _truncate_postgres(url)
    engine = create_db_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(request, tmp_path: Path) -> Iterator[Engine]:
    path = tmp_path / "orchestrator.db"
    shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
    engine = create_db_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


@pytest.fixture
def engines(sqlite_engine: Engine, pg_engine: Engine) -> dict[str, Engine]:
    """A fresh migrated database on each engine, side by side."""
    return {"sqlite": sqlite_engine, "postgresql": pg_engine}


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything an import writes, timestamps reduced to whether the row was updated after it was created."""
    with engine.connect() as conn:
        people = [
            {**row, "touched": row["updated_at"] > row["created_at"]}
            for row in conn.execute(select(Customer.__table__).order_by(Customer.id)).mappings()
        ]
        sales = [
            {**row, "touched": row["updated_at"] > row["created_at"]}
            for row in conn.execute(select(Order.__table__).order_by(Order.id)).mappings()
        ]
        for row in people + sales:
            del row["created_at"], row["updated_at"]
        tags = sorted(conn.execute(select(CustomerTag.customer_pk, CustomerTag.tag)).all())
        consents = sorted(
            conn.execute(
                select(CustomerConsent.customer_pk, CustomerConsent.channel, CustomerConsent.opted_in).add_columns(
                    CustomerConsent.source
                )
            ).all()
        )
        redemptions = conn.execute(
            select(CouponRedemption.coupon_pk, CouponRedemption.order_pk, CouponRedemption.amount)
            .add_columns(CouponRedemption.source)
            .order_by(CouponRedemption.id)
        ).all()
        coupons = conn.execute(select(Coupon.code, Coupon.state).order_by(Coupon.id)).all()
    return {
        "customers": people,
        "orders": sales,
        "tags": tags,
        "consents": consents,
        "redemptions": redemptions,
        "coupons": coupons,
    }


def side_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.name.endswith(".csv")}


def import_everywhere(
    engines: dict[str, Engine], tmp_path: Path, kind: str, name: str, header: list[str], rows: list[dict[str, str]]
) -> dict[str, Any]:
    """Import the same file on both engines; what each reports and leaves must be the same. Returns the result."""
    seen = {}
    for engine_name, engine in engines.items():
        folder = tmp_path / engine_name
        folder.mkdir(exist_ok=True)
        path = write_csv(folder / name, header, rows)
        load = importing.import_customers if kind == "customers" else importing.import_orders
        result = load(engine, SETTINGS, path).to_dict()
        for key in ("file", "reject_file", "coupon_refusals_file"):
            if result.get(key):
                result[key] = Path(result[key]).name
        seen[engine_name] = (result, side_files(folder), snapshot(engine))
    sqlite, postgresql = seen["sqlite"], seen["postgresql"]
    assert postgresql[0] == sqlite[0]  # counts
    assert postgresql[1] == sqlite[1]  # reject and coupon-refusal files, byte for byte
    assert postgresql[2] == sqlite[2]  # database contents
    return sqlite[0]


def counts(result: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return result["read"], result["loaded"], result["updated"], result["unchanged"], result["rejected"]


def test_postgresql_imports_go_through_copy_and_one_merge(pg_engine: Engine, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(importing, "BATCH_SIZE", 2)  # several batches: several COPYs, still one merge
    executed: list[tuple[str, bool]] = []

    @event.listens_for(pg_engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany):
        executed.append((" ".join(statement.split()), executemany))

    before = pg_copy.TOTALS.rows[pg_copy.STAGING]
    people = [{"customer_id": f"C{i}"} for i in range(5)] + [{"customer_id": "B", "email": "nope"}]
    path = write_csv(tmp_path / "c.csv", list(CUSTOMER_COLUMNS), [{**CUSTOMER, **row} for row in people])
    result = importing.import_customers(pg_engine, SETTINGS, path)
    assert (result.loaded, result.rejected) == (5, 1)
    assert pg_copy.TOTALS.rows[pg_copy.STAGING] - before == 5  # the valid rows, and only those, went through COPY

    inserts = [s for s, _ in executed if s.startswith(("INSERT INTO customers ", "INSERT INTO customer_"))]
    assert inserts and all(pg_copy.STAGING in s for s in inserts), inserts  # set-based, from the staging table
    assert sum(s.startswith("INSERT INTO customers ") for s in inserts) == 1  # one merge for the whole file
    batched = [s for s, many in executed if many and not s.startswith(f"INSERT INTO {importing.SEEN_IDS} ")]
    assert batched == []  # no executemany writes rows any more

    executed.clear()
    sales = [{"order_id": f"O{i}", "customer_id": f"C{i}"} for i in range(3)] + [{"order_id": "X", "customer_id": "?"}]
    path = write_csv(tmp_path / "o.csv", list(ORDER_COLUMNS), [{**ORDER, **row} for row in sales])
    result = importing.import_orders(pg_engine, SETTINGS, path)
    assert (result.loaded, result.rejected, result.coupon_refusals) == (3, 1, 3)
    assert pg_copy.TOTALS.rows[pg_copy.STAGING] - before == 8
    inserts = [s for s, _ in executed if s.startswith("INSERT INTO orders ")]
    assert len(inserts) == 1 and pg_copy.STAGING in inserts[0]


def test_sqlite_does_not_use_copy(sqlite_engine: Engine, tmp_path: Path):
    before = sum(pg_copy.TOTALS.statements.values())
    path = write_csv(tmp_path / "c.csv", list(CUSTOMER_COLUMNS), [CUSTOMER])
    assert importing.import_customers(sqlite_engine, SETTINGS, path).loaded == 1
    assert sum(pg_copy.TOTALS.statements.values()) == before


def test_awkward_text_survives_copy_exactly(pg_engine: Engine, tmp_path: Path):
    rows = [
        {**CUSTOMER, "customer_id": f"C{i}", "name": value, "city": value, "tags": value.replace(";", ""), "x": value}
        for i, value in enumerate(AWKWARD)
    ]
    rows.append({**CUSTOMER, "customer_id": "EMPTY", "name": "", "city": " ", "tags": "", "x": ""})
    path = write_csv(tmp_path / "c.csv", [*CUSTOMER_COLUMNS, "x"], rows)
    assert importing.import_customers(pg_engine, SETTINGS, path).loaded == len(rows)
    stored = {row["customer_id"]: row for row in snapshot(pg_engine)["customers"]}
    tags = snapshot(pg_engine)["tags"]
    for i, value in enumerate(AWKWARD):
        row = stored[f"C{i}"]
        assert (row["name"], row["city"], row["attributes"]) == (value.strip(), value.strip(), {"x": value.strip()})
        assert [tag for pk, tag in tags if pk == row["id"]] == [value.replace(";", "").strip()]
    empty = stored["EMPTY"]
    assert (empty["name"], empty["city"], empty["attributes"]) == (None, None, {})  # empty is NULL, as on SQLite
    assert [tag for pk, tag in tags if pk == empty["id"]] == []
    # and a re-import finds every one of them unchanged
    again = importing.import_customers(pg_engine, SETTINGS, path)
    assert (again.unchanged, again.updated, again.loaded) == (len(rows), 0, 0)


def test_copy_and_executemany_leave_the_same_database(engines, tmp_path: Path, monkeypatch):
    """One sequence of awkward files on both engines: the same counts, reject files and stored rows at each step."""
    monkeypatch.setattr(importing, "BATCH_SIZE", 3)  # duplicates across batches, several COPYs per file
    header = [*CUSTOMER_COLUMNS, "level", "note"]
    people = [
        {**CUSTOMER, "customer_id": f"C{i}", "name": value, "tags": f"t{i % 3};{value.replace(';', '')}"}
        for i, value in enumerate(AWKWARD)
    ]
    people[0].update(level="gold", note="first")
    people[1].update(level="", note="n", email_opt_in="no", sms_opt_in="yes")
    people[2].update(email="broken@", phone="1")  # rejected: two reasons
    people += [
        {**CUSTOMER, "customer_id": "C3", "name": "duplicate"},  # rejected: also on line 5
        {**CUSTOMER, "customer_id": "C0", "name": "duplicate across batches"},
        {**CUSTOMER, "customer_id": "EMPTY", "name": "", "tags": "", "level": "", "note": ""},
    ]
    first = import_everywhere(engines, tmp_path, "customers", "c.csv", header, people)
    assert counts(first) == (len(people), len(AWKWARD), 0, 0, 3)

    # the same file again: all unchanged, the same reject file
    again = import_everywhere(engines, tmp_path, "customers", "c.csv", header, people)
    assert counts(again) == (len(people), 0, 0, len(AWKWARD), 3)

    # a consent given elsewhere keeps its source while an import leaves its opt-in as it is
    for engine in engines.values():
        with engine.begin() as conn:
            pk = conn.scalar(select(Customer.id).where(Customer.customer_id == "C0"))
            conn.execute(
                update(CustomerConsent)
                .where(CustomerConsent.customer_pk == pk, CustomerConsent.channel == "email")
                .values(source="preference_page")
            )

    # changed rows: values, tags, consents, attributes set and removed; new rows among them
    changed = [dict(row) for row in people[:6]]
    changed[0].update(name="renamed", level="")  # removes the attribute, keeps 'note'
    changed[1].update(tags="", email_opt_in="yes")
    changed[3].update(level="silver", city="上海")
    changed[4].update(sms_opt_in="1")
    changed[5].update(tags="t0;new")
    changed.append({**CUSTOMER, "customer_id": "NEW", "name": "new\tone"})
    result = import_everywhere(engines, tmp_path, "customers", "c.csv", header, changed)
    assert counts(result) == (7, 1, 5, 0, 1)
    assert ("email", True, "preference_page") in [c[1:] for c in snapshot(engines["postgresql"])["consents"]]

    # a file with two columns says nothing about the others; one without extras leaves attributes alone
    names = [{"customer_id": "C0", "name": "only the name"}, {"customer_id": "C1", "name": AWKWARD[1]}]
    result = import_everywhere(engines, tmp_path, "customers", "names.csv", ["customer_id", "name"], names)
    assert counts(result) == (2, 0, 1, 1, 0)
    note = [{"customer_id": "C0", "note": "second"}, {"customer_id": "C3", "note": "new note"}]
    assert counts(import_everywhere(engines, tmp_path, "customers", "n.csv", ["customer_id", "note"], note)) == (
        2,
        0,
        2,
        0,
        0,
    )

    # orders: unknown customers, duplicates, rejects, coupons redeemed and refused, awkward extras
    fixed = [codes.new_code(), codes.new_code()]  # the same codes in both databases
    for engine in engines.values():
        shop = Shop(engine)
        with engine.connect() as conn:
            shop.keys = dict(conn.execute(select(Customer.customer_id, Customer.id)).all())
        with monkeypatch.context() as patch:
            patch.setattr(codes, "new_code", iter(fixed).__next__)
            issued = {"C0": shop.coupon("C0"), "C1": shop.coupon("C1")}
    order_header = [*ORDER_COLUMNS, "table"]
    base = {**ORDER, "ordered_at": LUNCH, "amount": "120.00", "coupon_code": ""}
    sales = [
        {**base, "order_id": "O1", "customer_id": "C0", "coupon_code": issued["C0"], "table": AWKWARD[0]},
        {**base, "order_id": "O2", "customer_id": "C1", "coupon_code": issued["C0"]},  # another member's coupon
        {**base, "order_id": "O3", "customer_id": "NOBODY"},  # rejected: unknown customer
        {**base, "order_id": "O4", "customer_id": "C1", "amount": "1.234"},  # rejected
        {**base, "order_id": "O5", "customer_id": "C3", "status": "refunded", "coupon_code": issued["C1"]},
        {**base, "order_id": "O1", "customer_id": "C0"},  # rejected: duplicate
        {**base, "order_id": "O6", "customer_id": "C1", "coupon_code": issued["C1"], "table": AWKWARD[4]},
        {**base, "order_id": "O7", "customer_id": "EMPTY", "channel": AWKWARD[3], "table": ""},
    ]
    result = import_everywhere(engines, tmp_path, "orders", "o.csv", order_header, sales)
    assert counts(result) == (8, 5, 0, 0, 3)
    assert (result["coupons_redeemed"], result["coupon_refusals"]) == (2, 1)

    again = import_everywhere(engines, tmp_path, "orders", "o.csv", order_header, sales)
    assert counts(again) == (8, 0, 0, 5, 3)
    assert (again["coupons_redeemed"], again["coupon_refusals"]) == (0, 1)

    sales[0].update(amount="99.00", table="")  # the order and its attributes change
    sales[4].update(status="paid", customer_id="C1")  # moved to another member, now paid: its coupon is redeemed
    result = import_everywhere(engines, tmp_path, "orders", "o.csv", order_header, sales)
    assert counts(result) == (8, 0, 2, 3, 3)

    short = [{"order_id": "O6", "customer_id": "C0", "ordered_at": LUNCH, "amount": "5"}]
    header = ["order_id", "customer_id", "ordered_at", "amount"]
    assert counts(import_everywhere(engines, tmp_path, "orders", "short.csv", header, short)) == (1, 0, 1, 0, 0)


def test_a_failed_postgresql_import_writes_nothing(pg_engine: Engine, tmp_path: Path):
    """A file-level problem after rows were copied: the staging table and every write are rolled back."""
    rows = [{**CUSTOMER, "customer_id": f"C{i}"} for i in range(5)]
    path = write_csv(tmp_path / "c.csv", list(CUSTOMER_COLUMNS), rows)
    with path.open("ab") as f:
        f.write("C-last,王五\n".encode("gbk"))
    with pytest.raises(InputError, match="not UTF-8"):
        importing.import_customers(pg_engine, SETTINGS, path)
    assert snapshot(pg_engine)["customers"] == []
    # and the connection is usable again for the next import: no staging table is left behind
    good = write_csv(tmp_path / "g.csv", list(CUSTOMER_COLUMNS), rows)
    assert importing.import_customers(pg_engine, SETTINGS, good).loaded == 5


def test_an_import_on_postgresql_leaves_the_planner_statistics_of_what_it_wrote(pg_engine: Engine, tmp_path: Path):
    """A campaign run right after a bulk load must not be planned for empty tables (with autovacuum off, or
    before it comes round, a plan for 'one row' re-aggregated every order per member: minutes, not a second)."""
    from sqlalchemy import text

    customers = [{**CUSTOMER, "customer_id": f"C{i}", "email": f"c{i}@example.com"} for i in range(40)]
    importing.import_customers(pg_engine, SETTINGS, write_csv(tmp_path / "c.csv", CUSTOMER_COLUMNS, customers))
    orders = [{**ORDER, "order_id": f"O{i}", "customer_id": f"C{i % 40}"} for i in range(120)]
    importing.import_orders(pg_engine, SETTINGS, write_csv(tmp_path / "o.csv", ORDER_COLUMNS, orders))
    with pg_engine.connect() as conn:
        tuples = dict(
            conn.execute(text("SELECT relname, reltuples FROM pg_class WHERE relname IN ('customers', 'orders')")).all()
        )
    assert tuples == {"customers": 40, "orders": 120}


def test_a_growing_run_refreshes_the_ledger_statistics_on_postgresql(pg_engine: Engine, tmp_path: Path, monkeypatch):
    """The ledger's look-ups by member are planned from statistics; a run that grows the ledger from empty
    refreshes them as it goes (10,000 rows, then each doubling), or every later look-up scans the whole run."""
    from sqlalchemy import text

    from orchestrator.executors import in_process
    from tests import dataset
    from tests.dataset import AT
    from tests.test_audience_facts import PLAIN_CAMPAIGN, _orchestrator

    engine = pg_engine
    dataset.load(engine)
    monkeypatch.setattr(in_process.LedgerStatistics, "FIRST", 3)
    orch = _orchestrator(tmp_path, engine)
    (tmp_path / "plain.yaml").write_text(
        PLAIN_CAMPAIGN.replace("name: plain-mail", "name: plain-mail\ndispatch: {batch_size: 2}"), encoding="utf-8"
    )
    plan = orch.load(tmp_path / "plain.yaml")
    result = orch.runner(plan).execute(AT, dry_run=False, sample=0)
    assert result.messages > 3
    with engine.connect() as conn:
        tuples = conn.execute(text("SELECT reltuples FROM pg_class WHERE relname = 'deliveries'")).scalar()
    assert tuples > 0
