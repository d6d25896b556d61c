"""``orchestrator import customers|orders``: values, rejects, idempotency and file-level errors, on both engines."""

from __future__ import annotations

import csv
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from orchestrator.config import Settings
from orchestrator.data import records
from orchestrator.data.importing import BATCH_SIZE, ImportResult, import_customers, import_orders
from orchestrator.data.records import CUSTOMER_COLUMNS, ORDER_COLUMNS
from orchestrator.db.models import Customer, CustomerConsent, CustomerTag, Order

CUSTOMER = {
    "customer_id": "C1",
    "name": "张三",
    "email": "Zhang.San@Example.COM",
    "phone": "138 0013 8000",
    "province": "浙江",
    "city": "杭州",
    "gender": "F",
    "birthday": "1990-05-01",
    "signup_at": "2025-01-02T10:00:00+08:00",
    "tags": "vip; new ;vip;;",
    "email_opt_in": "yes",
    "sms_opt_in": "0",
    "wechat_openid": "wx-1",
    "timezone": "Asia/Shanghai",
}
ORDER = {
    "order_id": "O1",
    "customer_id": "C1",
    "ordered_at": "2025-03-01T12:30:00+08:00",
    "amount": "112.50",
    "status": "Paid",
    "channel": "web",
    "payment_method": "alipay",
    "coupon_code": "SPRING-20",
    "category": "shoes",
}


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No orchestrator.yaml from the checkout: the built-in settings (Asia/Shanghai, region CN) apply."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)


def write_csv(path: Path, header: list[str], rows: list[dict[str, str]], *, encoding: str = "utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[row.get(name, "") for name in header] for row in rows])
    return path


def customers_csv(path: Path, *rows: dict[str, str], extra: tuple[str, ...] = ()) -> Path:
    return write_csv(path, [*CUSTOMER_COLUMNS, *extra], [{**CUSTOMER, **row} for row in rows])


def orders_csv(path: Path, *rows: dict[str, str], extra: tuple[str, ...] = ()) -> Path:
    return write_csv(path, [*ORDER_COLUMNS, *extra], [{**ORDER, **row} for row in rows])


def import_json(run_cli, kind: str, path: Path) -> dict[str, Any]:
    result = run_cli("import", kind, str(path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["read"] == data["loaded"] + data["updated"] + data["unchanged"] + data["rejected"]
    return data


def counts(data: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return data["read"], data["loaded"], data["updated"], data["unchanged"], data["rejected"]


def rejects(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def customers(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {row["customer_id"]: dict(row) for row in conn.execute(select(Customer.__table__)).mappings()}


def tags_of(engine: Engine, customer_id: str) -> set[str]:
    query = select(CustomerTag.tag).join(Customer, Customer.id == CustomerTag.customer_pk)
    with engine.connect() as conn:
        return set(conn.scalars(query.where(Customer.customer_id == customer_id)))


def consents_of(engine: Engine, customer_id: str) -> dict[str, tuple[bool, str | None]]:
    query = select(CustomerConsent.channel, CustomerConsent.opted_in, CustomerConsent.source).join(
        Customer, Customer.id == CustomerConsent.customer_pk
    )
    with engine.connect() as conn:
        rows = conn.execute(query.where(Customer.customer_id == customer_id))
        return {channel: (opted_in, source) for channel, opted_in, source in rows}


def orders(engine: Engine) -> dict[str, dict[str, Any]]:
    query = select(Order.__table__, Customer.customer_id).join(Customer, Customer.id == Order.customer_pk)
    with engine.connect() as conn:
        return {row["order_id"]: dict(row) for row in conn.execute(query).mappings()}


def row_count(engine: Engine, model) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(model))


# --- good files ------------------------------------------------------------------------------------------------------


def test_customers_load_with_normalised_values(run_cli, engine, tmp_path):
    path = customers_csv(
        tmp_path / "customers.csv",
        {"level": "gold", "store": "West Lake"},
        {
            "customer_id": "C2",
            "name": 'Li, "Si"\nsecond line',
            "email": "",
            "phone": "+86 139-0013-9000",
            "signup_at": "2025-01-02 10:00",  # no offset: the configured zone, Asia/Shanghai
            "tags": "",
            "email_opt_in": "",
            "sms_opt_in": "Y",
            "birthday": "",
            "timezone": "",
            "level": "",
            "store": "West Lake",
        },
        extra=("level", "store"),
    )
    data = import_json(run_cli, "customers", path)
    assert counts(data) == (2, 2, 0, 0, 0)
    assert data["kind"] == "customers" and data["file"] == str(path) and data["reject_file"] is None
    assert not (tmp_path / "customers.rejects.csv").exists()

    c1, c2 = customers(engine)["C1"], customers(engine)["C2"]
    assert c1["name"] == "张三"
    assert c1["email"] == "Zhang.San@example.com"
    assert c1["phone"] == "+8613800138000"
    assert (c1["province"], c1["city"], c1["gender"]) == ("浙江", "杭州", "female")  # F: the demo data's word
    assert c1["birthday"] == date(1990, 5, 1)
    assert c1["signup_at"] == datetime(2025, 1, 2, 2, 0, tzinfo=UTC)
    assert (c1["wechat_openid"], c1["timezone"]) == ("wx-1", "Asia/Shanghai")
    assert c1["attributes"] == {"level": "gold", "store": "West Lake"}
    assert c1["created_at"] == c1["updated_at"]
    assert tags_of(engine, "C1") == {"vip", "new"}
    assert consents_of(engine, "C1") == {"email": (True, "import"), "sms": (False, "import")}

    assert c2["name"] == 'Li, "Si"\nsecond line'
    assert c2["email"] is None and c2["birthday"] is None and c2["timezone"] is None
    assert c2["phone"] == "+8613900139000"
    assert c2["signup_at"] == datetime(2025, 1, 2, 2, 0, tzinfo=UTC)
    assert c2["attributes"] == {"store": "West Lake"}  # empty extra values are left out
    assert tags_of(engine, "C2") == set()
    assert consents_of(engine, "C2") == {"email": (False, "import"), "sms": (True, "import")}


def test_orders_load_with_decimal_amounts_and_utc_times(run_cli, engine, tmp_path):
    import_json(run_cli, "customers", customers_csv(tmp_path / "c.csv", {}, {"customer_id": "C2"}))
    path = orders_csv(
        tmp_path / "orders.csv",
        {"table": "12"},
        {
            "order_id": "O2",
            "customer_id": "C2",
            "ordered_at": "2025-03-01 18:05:00",
            "amount": "0",
            "status": "REFUNDED",
            "channel": "",
            "payment_method": "",
            "coupon_code": "",
            "category": "",
        },
        {"order_id": "O3", "ordered_at": "2025-03-02T04:00:00Z", "amount": "99.9", "status": "cancelled"},
        extra=("table",),
    )
    assert counts(import_json(run_cli, "orders", path)) == (3, 3, 0, 0, 0)

    stored = orders(engine)
    o1, o2, o3 = stored["O1"], stored["O2"], stored["O3"]
    assert o1["customer_id"] == "C1" and o2["customer_id"] == "C2"
    assert o1["amount"] == Decimal("112.50") and isinstance(o1["amount"], Decimal)
    assert o1["ordered_at"] == datetime(2025, 3, 1, 4, 30, tzinfo=UTC)
    assert (o1["status"], o1["channel"], o1["payment_method"]) == ("paid", "web", "alipay")
    assert (o1["coupon_code"], o1["category"]) == ("SPRING-20", "shoes")
    assert o1["attributes"] == {"table": "12"}
    assert o2["ordered_at"] == datetime(2025, 3, 1, 10, 5, tzinfo=UTC)  # naive input read in Asia/Shanghai
    assert (o2["amount"], o2["status"]) == (Decimal("0.00"), "refunded")
    assert o2["channel"] is None and o2["coupon_code"] is None and o2["attributes"] == {}
    assert (o3["amount"], o3["status"]) == (Decimal("99.90"), "cancelled")
    assert o3["ordered_at"] == datetime(2025, 3, 2, 4, 0, tzinfo=UTC)


def test_bom_header_and_column_order_are_accepted(run_cli, engine, tmp_path):
    header = list(reversed(CUSTOMER_COLUMNS))
    header[0] = header[0].upper()
    path = write_csv(
        tmp_path / "excel.csv", header, [{**CUSTOMER, header[0]: CUSTOMER["timezone"]}], encoding="utf-8-sig"
    )
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert counts(import_json(run_cli, "customers", path)) == (1, 1, 0, 0, 0)
    assert customers(engine)["C1"]["timezone"] == "Asia/Shanghai"
    assert customers(engine)["C1"]["attributes"] == {}


def test_text_summary_without_json(run_cli, tmp_path):
    path = customers_csv(tmp_path / "customers.csv", {}, {"customer_id": "C2", "email": "nope"})
    result = run_cli("import", "customers", str(path))
    assert result.exit_code == 0
    assert "2 rows read: 1 loaded, 0 updated, 0 unchanged, 1 rejected" in result.stdout
    assert "customers.rejects.csv" in result.stdout
    assert result.stderr == ""  # no progress bar when not on a terminal


# --- bad rows --------------------------------------------------------------------------------------------------------


def test_bad_customer_rows_go_to_the_reject_file(run_cli, engine, tmp_path):
    path = customers_csv(
        tmp_path / "members.csv",
        {"customer_id": "OK1", "name": "two\nlines"},  # lines 2-3
        {"customer_id": "B1", "email": "foo@"},  # line 4
        {"customer_id": "B2", "phone": "123"},
        {"customer_id": "B3", "birthday": "1990/05/01"},
        {"customer_id": "B4", "birthday": "1990-02-30"},
        {"customer_id": "B5", "signup_at": "yesterday"},
        {"customer_id": "B6", "email_opt_in": "maybe"},
        {"customer_id": "B7", "timezone": "Mars/Olympus"},
        {"customer_id": "", "name": "no id"},
        {"customer_id": "X" * 65},
        {"customer_id": "B8", "tags": "ok;" + "t" * 65},
        {"customer_id": "B9", "email": "a b@c.com", "sms_opt_in": "2"},  # line 14: two problems
        {"customer_id": "OK2"},  # line 15
    )
    with path.open("a", encoding="utf-8") as f:
        f.write("B10,too,few,fields\n")  # line 16
    data = import_json(run_cli, "customers", path)
    assert counts(data) == (14, 2, 0, 0, 12)
    assert data["reject_file"] == str(tmp_path / "members.rejects.csv")

    rows = rejects(tmp_path / "members.rejects.csv")
    assert list(rows[0])[:3] == ["line", "reason", "customer_id"] and list(rows[0])[-1] == "timezone"
    by_line = {int(row["line"]): row["reason"] for row in rows}
    assert by_line[4] == "email: 'foo@' is not a valid e-mail address (there must be something after the @-sign)"
    assert by_line[5].startswith("phone: '123' is not a valid phone number")
    assert by_line[6] == "birthday: '1990/05/01' is not a date in YYYY-MM-DD form"
    assert by_line[7] == "birthday: '1990-02-30' is not a valid date"
    assert by_line[8].startswith("signup_at: 'yesterday' is not an ISO 8601 date-time")
    assert by_line[9].startswith("email_opt_in: 'maybe' is not a yes/no value")
    assert by_line[10].startswith("timezone: unknown time zone 'Mars/Olympus'")
    assert by_line[11] == "customer_id: is required"
    assert by_line[12] == "customer_id: is 65 characters long; at most 64 are allowed"
    assert by_line[13].startswith("tags: the tag 'tttttttttttttttttttt'… is longer than 64 characters")
    assert by_line[14].startswith("email: 'a b@c.com' is not a valid e-mail address")
    assert "; sms_opt_in: '2' is not a yes/no value" in by_line[14]
    assert by_line[16].startswith("the row has 4 fields but the header has 14")
    assert len(by_line) == 12
    # the original values are kept, so the file can be fixed and imported again
    assert next(row for row in rows if row["line"] == "4")["email"] == "foo@"
    assert next(row for row in rows if row["line"] == "16")["customer_id"] == "B10"
    assert set(customers(engine)) == {"OK1", "OK2"}
    assert customers(engine)["OK1"]["name"] == "two\nlines"


def test_bad_order_rows_and_unknown_customers_are_rejected(run_cli, engine, tmp_path):
    import_json(run_cli, "customers", customers_csv(tmp_path / "c.csv", {}))
    path = orders_csv(
        tmp_path / "orders.csv",
        {"order_id": "O1"},
        {"order_id": "O2", "customer_id": "C123"},
        {"order_id": "O3", "amount": "1.234"},
        {"order_id": "O4", "amount": "-5"},
        {"order_id": "O5", "amount": "12 yuan"},
        {"order_id": "O6", "status": "shipped"},
        {"order_id": "O7", "ordered_at": ""},
        {"order_id": "O8", "ordered_at": "03/01/2025"},
        {"order_id": "", "amount": "1"},
        {"order_id": "O9", "coupon_code": "C" * 33},
        {"order_id": "O10", "amount": "1e40"},
    )
    data = import_json(run_cli, "orders", path)
    assert counts(data) == (11, 1, 0, 0, 10)
    by_line = {int(row["line"]): row["reason"] for row in rejects(tmp_path / "orders.rejects.csv")}
    assert sorted(by_line) == list(range(3, 13))
    assert by_line[3].startswith("customer_id: unknown customer C123")
    assert by_line[4] == "amount: '1.234' has more than two decimal places"
    assert by_line[5] == "amount: '-5' is negative; amounts must be 0 or more"
    assert by_line[6].startswith("amount: '12 yuan' is not a decimal amount")
    assert by_line[7] == "status: 'shipped' is not one of paid, refunded, cancelled"
    assert by_line[8] == "ordered_at: is required"
    assert by_line[9].startswith("ordered_at: '03/01/2025' is not an ISO 8601 date-time")
    assert by_line[10] == "order_id: is required"
    assert by_line[11] == "coupon_code: is 33 characters long; at most 32 are allowed"
    assert by_line[12] == "amount: '1e40' is not a decimal amount (e.g. 112.50)"
    assert set(orders(engine)) == {"O1"}


# --- re-import -------------------------------------------------------------------------------------------------------


def test_reimport_is_idempotent(run_cli, engine, tmp_path):
    people = customers_csv(
        tmp_path / "c.csv", {}, {"customer_id": "C2", "tags": ""}, {"customer_id": "B", "phone": "1"}
    )
    sales = orders_csv(
        tmp_path / "o.csv", {}, {"order_id": "O2", "customer_id": "C2"}, {"order_id": "O3", "customer_id": "C9"}
    )
    assert counts(import_json(run_cli, "customers", people)) == (3, 2, 0, 0, 1)
    assert counts(import_json(run_cli, "orders", sales)) == (3, 2, 0, 0, 1)
    before = customers(engine), orders(engine), tags_of(engine, "C1"), consents_of(engine, "C1")
    first_rejects = (tmp_path / "c.rejects.csv").read_text(), (tmp_path / "o.rejects.csv").read_text()

    assert counts(import_json(run_cli, "customers", people)) == (3, 0, 0, 2, 1)
    assert counts(import_json(run_cli, "orders", sales)) == (3, 0, 0, 2, 1)
    assert (customers(engine), orders(engine), tags_of(engine, "C1"), consents_of(engine, "C1")) == before
    assert ((tmp_path / "c.rejects.csv").read_text(), (tmp_path / "o.rejects.csv").read_text()) == first_rejects
    assert row_count(engine, CustomerTag) == 2 and row_count(engine, CustomerConsent) == 4


def test_changed_rows_update_values_tags_and_consents(run_cli, engine, tmp_path):
    import_json(run_cli, "customers", customers_csv(tmp_path / "c.csv", {}, {"customer_id": "C2"}))
    import_json(run_cli, "orders", orders_csv(tmp_path / "o.csv", {}, {"order_id": "O2"}))
    before = customers(engine)

    changed = customers_csv(
        tmp_path / "c.csv",
        {"email": "new@example.com", "tags": "vip;loyal", "email_opt_in": "no", "sms_opt_in": "true"},
        {"customer_id": "C2"},
    )
    assert counts(import_json(run_cli, "customers", changed)) == (2, 0, 1, 1, 0)
    after = customers(engine)
    assert after["C1"]["email"] == "new@example.com"
    assert after["C1"]["id"] == before["C1"]["id"]
    assert after["C1"]["created_at"] == before["C1"]["created_at"]
    assert after["C1"]["updated_at"] > before["C1"]["updated_at"]
    assert after["C2"] == before["C2"]
    assert tags_of(engine, "C1") == {"vip", "loyal"}
    assert consents_of(engine, "C1") == {"email": (False, "import"), "sms": (True, "import")}

    # a change in tags or consents alone is a change too
    import_json(run_cli, "customers", customers_csv(tmp_path / "c.csv", {"email": "new@example.com", "tags": "vip"}))
    assert tags_of(engine, "C1") == {"vip"}
    assert consents_of(engine, "C1")["email"] == (True, "import")

    moved = orders_csv(
        tmp_path / "o.csv", {"amount": "200", "customer_id": "C2", "status": "refunded"}, {"order_id": "O2"}
    )
    assert counts(import_json(run_cli, "orders", moved)) == (2, 0, 1, 1, 0)
    assert orders(engine)["O1"]["customer_id"] == "C2"
    assert (orders(engine)["O1"]["amount"], orders(engine)["O1"]["status"]) == (Decimal("200.00"), "refunded")


def test_duplicate_ids_in_one_file_are_rejected(run_cli, engine, tmp_path):
    path = customers_csv(
        tmp_path / "c.csv",
        {"name": "first", "tags": "a"},
        {"customer_id": "C2"},
        {"name": "second", "tags": "b"},  # C1 again: rejected, not a silent update
        {"name": "first", "tags": "a"},  # even when identical
    )
    assert counts(import_json(run_cli, "customers", path)) == (4, 2, 0, 0, 2)
    assert customers(engine)["C1"]["name"] == "first"
    assert tags_of(engine, "C1") == {"a"}


def test_duplicates_across_batches(engine, tmp_path):
    """The later row is rejected even when the earlier one was written by a previous batch."""
    rows = [{"customer_id": f"C{i}", "email": f"c{i}@example.com"} for i in range(BATCH_SIZE + 10)]
    rows.append({"customer_id": "C1", "name": "late"})
    result = import_customers(engine, Settings(), customers_csv(tmp_path / "c.csv", *rows))
    assert (result.read, result.loaded, result.rejected) == (BATCH_SIZE + 11, BATCH_SIZE + 10, 1)
    assert customers(engine)["C1"]["name"] == "张三"
    assert rejects(tmp_path / "c.rejects.csv")[0]["reason"] == "customer_id: C1 is also on line 3 of this file"


def test_stale_reject_file_is_removed(run_cli, tmp_path):
    import_json(run_cli, "customers", customers_csv(tmp_path / "c.csv", {}, {"customer_id": "C2", "email": "x"}))
    assert (tmp_path / "c.rejects.csv").exists()
    data = import_json(run_cli, "customers", customers_csv(tmp_path / "c.csv", {}, {"customer_id": "C2"}))
    assert data["reject_file"] is None and data["rejected"] == 0
    assert not (tmp_path / "c.rejects.csv").exists()


def test_python_api_returns_an_import_result(engine, tmp_path, capsys):
    settings = Settings(timezone="Europe/Berlin", default_region="DE")
    path = customers_csv(tmp_path / "c.csv", {"phone": "030 1234567", "signup_at": "2025-07-01 12:00"})
    result = import_customers(engine, settings, path, progress=True)
    assert result == ImportResult("customers", str(path), 1, 1, 0, 0, 0, None)
    c1 = customers(engine)["C1"]
    assert c1["phone"] == "+49301234567"
    assert c1["signup_at"] == datetime(2025, 7, 1, 10, 0, tzinfo=UTC)  # CEST
    assert "importing c.csv" in capsys.readouterr().err
    result = import_orders(engine, settings, orders_csv(tmp_path / "o.csv", {}))
    assert (result.kind, result.read, result.loaded) == ("orders", 1, 1)


# --- file-level errors -----------------------------------------------------------------------------------------------


def _header_only(columns: tuple[str, ...]) -> bytes:
    return (",".join(columns) + "\r\n").encode()


FILE_ERRORS = {
    "wrong header": (
        "customers",
        b"id,full_name,emial\r\nC1,x,y@example.com\r\n",
        ":1: missing required column: customer_id",
    ),
    "GBK": (
        "customers",
        _header_only(CUSTOMER_COLUMNS) + "C1,张三,,,浙江,杭州,,,,,,,,\r\n".encode("gbk"),
        ":2: the file is not UTF-8 (it looks like GBK",
    ),
    "empty": ("orders", b"", ": the file is empty: expected a header row"),
    "blank lines only": ("orders", b"\xef\xbb\xbf\n\n", ": the file is empty"),
    "binary": ("orders", bytes(range(256)) * 8, ": the file contains NUL bytes: it is binary, not CSV text"),
    "xlsx": ("customers", b"PK\x03\x04" + bytes(100), ": this is not a CSV text file: it looks like an Excel workbook"),
    "unclosed quote": (
        "orders",
        _header_only(ORDER_COLUMNS) + b'O1,C1,2025-03-01,1,paid,,,,\r\nO2,"C1,2025-03-01,1,paid,,,,\r\n',
        ":3: a quoted value that starts in this record is never closed",
    ),
    "bad quoting": (
        "orders",
        _header_only(ORDER_COLUMNS) + b'O1,"C1"x,2025-03-01,1,paid,,,,\r\n',
        ":2: cannot parse the CSV record that starts on this line",
    ),
    "duplicate column": (
        "orders",
        _header_only((*ORDER_COLUMNS, "Status")) + b"O1,C1,2025-03-01,1,paid,,,,,paid\r\n",
        ":1: the column 'status' appears more than once in the header",
    ),
}


@pytest.mark.parametrize("case", FILE_ERRORS)
def test_file_level_errors_exit_2_and_change_nothing(run_cli, engine, tmp_path, case):
    kind, content, message = FILE_ERRORS[case]
    path = tmp_path / "input.csv"
    path.write_bytes(content)
    result = run_cli("import", kind, str(path), "--json")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {path}")
    assert message in result.stderr
    assert row_count(engine, Customer) == 0 and row_count(engine, Order) == 0
    assert not (tmp_path / "input.rejects.csv").exists()


def test_wrong_header_lists_the_expected_columns(run_cli, tmp_path):
    path = write_csv(tmp_path / "c.csv", [c if c != "customer_id" else "customer-id" for c in CUSTOMER_COLUMNS], [])
    result = run_cli("import", "customers", str(path))
    assert result.exit_code == 2
    assert (
        f"error: {path}:1: missing required column: customer_id; did you mean 'customer_id' (found 'customer-id')?"
    ) in result.stderr
    assert "the header must include: customer_id; it may also have: name,email,phone," in result.stderr


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_file_separated_by_something_else_says_so(run_cli, tmp_path, separator):
    """A spreadsheet saved with semicolons read as one column named 'customer_id;name', and the error suggested
    'customer_id' for it."""
    path = tmp_path / "c.csv"
    path.write_text(f"customer_id{separator}name\nC1{separator}Ann\n", encoding="utf-8")
    result = run_cli("import", "customers", str(path))
    assert result.exit_code == 2
    assert "not commas" in result.stderr and "did you mean" not in result.stderr, result.stderr


def test_missing_file(run_cli, tmp_path):
    result = run_cli("import", "orders", str(tmp_path / "nope.csv"))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.csv'}: no such file"


def test_late_encoding_error_rolls_back_everything(run_cli, engine, tmp_path):
    """A bad byte after several committed-looking batches still leaves the database and folder untouched."""
    rows = [{"customer_id": f"C{i}", "email": f"c{i}@example.com"} for i in range(BATCH_SIZE * 2 + 5)]
    rows.append({"customer_id": "BAD", "email": "not-an-email"})  # a reject, to prove no reject file appears
    path = customers_csv(tmp_path / "big.csv", *rows)
    with path.open("ab") as f:
        f.write("C-last,王五\n".encode("gbk"))
    last_line = len(rows) + 2
    stale = tmp_path / "big.rejects.csv"
    stale.write_text("from an earlier import\n")

    result = run_cli("import", "customers", str(path))
    assert result.exit_code == 2
    assert f"error: {path}:{last_line}: the file is not UTF-8" in result.stderr
    assert "re-save the file as UTF-8" in result.stderr
    assert row_count(engine, Customer) == 0 and row_count(engine, CustomerConsent) == 0
    assert stale.read_text() == "from an earlier import\n"  # a failed import leaves the folder as it was
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".big")] == []


# --- pieces ----------------------------------------------------------------------------------------------------------


def test_trailing_empty_cells_are_accepted(run_cli, engine, tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(",".join(CUSTOMER_COLUMNS) + ",,\nC1" + "," * (len(CUSTOMER_COLUMNS) + 1) + "\n", encoding="utf-8")
    data = import_json(run_cli, "customers", path)
    assert counts(data) == (1, 1, 0, 0, 0)
    assert customers(engine)["C1"]["attributes"] == {}


LOCAL_PARTS = st.text(alphabet="aZ09.+-_!#'~\"() @é", min_size=0, max_size=70)
DOMAINS = st.sampled_from(
    [
        *("example.com", "Example.COM", "x.local", "localhost", "a-b.cn", "-a.com", "xn--fiqs8s.com", "例子.广告"),
        *("b..c", "1.2", "qq.com.", "[1.2.3.4]", "x" * 64 + ".com", ("y" * 60 + ".") * 4 + "com", "", "a_b.com"),
    ]
)


@given(local=LOCAL_PARTS, domain=DOMAINS)
def test_email_normalisation_matches_email_validator(local, domain):
    """The cached-domain fast path gives exactly the library's answer."""
    address = f"{local}@{domain}"
    try:
        expected = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        expected = None
    try:
        actual = records.email(address)
    except ValueError:
        actual = None
    assert actual == expected
