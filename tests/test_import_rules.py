"""Import rules: identifiers, optional columns, duplicate ids, yes/no words, province and gender forms, wide headers.

Every test runs on SQLite and PostgreSQL (the ``run_cli`` / ``engine`` fixtures).
"""

from __future__ import annotations

import string
from decimal import Decimal

import pytest

from orchestrator.config import Settings
from orchestrator.data import importing
from orchestrator.data.records import CUSTOMER_COLUMNS
from orchestrator.db.models import Customer, Order
from tests.test_import import (
    CUSTOMER,
    ORDER,
    consents_of,
    counts,
    customers,
    customers_csv,
    import_json,
    orders,
    orders_csv,
    rejects,
    row_count,
    tags_of,
    write_csv,
)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)


# --- control characters in identifiers -------------------------------------------------------------------------------

BAD_IDS = {
    "CR": "C\r1",
    "LF": "C\n1",
    "ESC": "C\x1b[31m",
    "BEL": "C\x07",
    "TAB": "C\t1",
    "DEL": "C\x7f",
    "C1 control": "C\x851",
    "bidi override": "C\u202e1",
    "line separator": "C\u20281",
    "zero width space": "C\u200b1",
}


def test_control_characters_in_customer_ids_are_rejected(run_cli, engine, tmp_path):
    rows = [{"customer_id": value} for value in BAD_IDS.values()]
    rows += [{"customer_id": "OK"}, {"customer_id": "W1", "wechat_openid": "wx\x1b1"}]
    data = import_json(run_cli, "customers", customers_csv(tmp_path / "c.csv", *rows))
    assert counts(data) == (len(BAD_IDS) + 2, 1, 0, 0, len(BAD_IDS) + 1)
    reasons = {row["customer_id"]: row["reason"] for row in rejects(tmp_path / "c.rejects.csv")}
    assert reasons["C\x1b[31m"] == (
        "customer_id: contains the control character U+001B at position 2; identifiers may hold no control, "
        "format or line-break characters"
    )
    for name, value in BAD_IDS.items():
        assert reasons[value].startswith("customer_id: contains the control character U+"), name
    assert reasons["W1"].startswith("wechat_openid: contains the control character U+001B")
    assert set(customers(engine)) == {"OK"}


def test_control_characters_in_order_ids_and_coupon_codes_are_rejected(run_cli, engine, tmp_path):
    import_json(run_cli, "customers", customers_csv(tmp_path / "c.csv", {}))
    path = orders_csv(
        tmp_path / "o.csv",
        {"order_id": "O\r1"},
        {"order_id": "O2", "customer_id": "C1\x1b"},
        {"order_id": "O3", "coupon_code": "SPRING\n20"},
        {"order_id": "O4"},
    )
    data = import_json(run_cli, "orders", path)
    assert counts(data) == (4, 1, 0, 0, 3)
    by_id = {row["order_id"]: row["reason"] for row in rejects(tmp_path / "o.rejects.csv")}
    assert by_id["O\r1"].startswith("order_id: contains the control character U+000D at position 2")
    assert by_id["O2"].startswith("customer_id: contains the control character U+001B at position 3")
    assert by_id["O3"].startswith("coupon_code: contains the control character U+000A at position 7")
    assert set(orders(engine)) == {"O4"}


def test_control_characters_in_redemption_codes_are_rejected(run_cli, tmp_path):
    path = write_csv(tmp_path / "r.csv", ["code", "order_id"], [{"code": "AB\x1bC", "order_id": "O\t1"}])
    data = import_json(run_cli, "redemptions", path)
    assert counts(data) == (1, 0, 0, 0, 1)
    reason = rejects(tmp_path / "r.rejects.csv")[0]["reason"]
    assert reason.startswith("code: contains the control character U+001B at position 3")
    assert "; order_id: contains the control character U+0009 at position 2" in reason


# --- optional columns ------------------------------------------------------------------------------------------------


def test_customers_need_only_customer_id(run_cli, engine, tmp_path):
    path = write_csv(tmp_path / "c.csv", ["customer_id", "name"], [{"customer_id": "C1", "name": "张三"}])
    assert counts(import_json(run_cli, "customers", path)) == (1, 1, 0, 0, 0)
    c1 = customers(engine)["C1"]
    assert (c1["name"], c1["email"], c1["phone"], c1["attributes"]) == ("张三", None, None, {})
    assert consents_of(engine, "C1") == {} and tags_of(engine, "C1") == set()


def test_absent_columns_leave_stored_values_alone(run_cli, engine, tmp_path):
    """A file without a column says nothing about it: a re-import of names only keeps e-mail, tags and consents."""
    import_json(run_cli, "customers", customers_csv(tmp_path / "full.csv", {}))
    before = customers(engine)["C1"]
    names = write_csv(tmp_path / "names.csv", ["customer_id", "name"], [{"customer_id": "C1", "name": "张三丰"}])
    assert counts(import_json(run_cli, "customers", names)) == (1, 0, 1, 0, 0)
    after = customers(engine)["C1"]
    assert after["name"] == "张三丰"
    assert {k: v for k, v in after.items() if k not in ("name", "updated_at")} == {
        k: v for k, v in before.items() if k not in ("name", "updated_at")
    }
    assert tags_of(engine, "C1") == {"vip", "new"}
    assert consents_of(engine, "C1") == {"email": (True, "import"), "sms": (False, "import")}
    assert counts(import_json(run_cli, "customers", names)) == (1, 0, 0, 1, 0)  # and again: unchanged


def test_orders_need_id_customer_time_and_amount_and_default_to_paid(run_cli, engine, tmp_path):
    import_json(run_cli, "customers", customers_csv(tmp_path / "c.csv", {}))
    header = ["order_id", "customer_id", "ordered_at", "amount"]
    path = write_csv(tmp_path / "o.csv", header, [ORDER, {**ORDER, "order_id": "O2", "amount": ""}])
    assert counts(import_json(run_cli, "orders", path)) == (2, 1, 0, 0, 1)
    o1 = orders(engine)["O1"]
    assert (o1["status"], o1["amount"], o1["coupon_code"], o1["channel"]) == ("paid", Decimal("112.50"), None, None)
    assert rejects(tmp_path / "o.rejects.csv")[0]["reason"] == "amount: is required"

    # a status column that is present must be filled in: an empty cell is not silently "paid"
    with_status = write_csv(tmp_path / "s.csv", [*header, "status"], [{**ORDER, "order_id": "O3", "status": ""}])
    assert counts(import_json(run_cli, "orders", with_status)) == (1, 0, 0, 0, 1)
    assert rejects(tmp_path / "s.rejects.csv")[0]["reason"] == "status: is required"

    for required in header:
        short = write_csv(tmp_path / "short.csv", [c for c in header if c != required], [ORDER])
        result = run_cli("import", "orders", str(short))
        assert result.exit_code == 2, required
        assert f"{short}:1: missing required column: {required}" in result.stderr


def test_a_misspelt_optional_column_stops_the_import(run_cli, engine, tmp_path):
    """Unknown columns are kept as attributes, so 'E-Mail' would silently lose every address: refuse it."""
    path = write_csv(tmp_path / "c.csv", ["customer_id", "E-Mail", "Sms Opt In"], [{"customer_id": "C1"}])
    result = run_cli("import", "customers", str(path))
    assert result.exit_code == 2
    assert f"error: {path}:1: the column 'E-Mail' is not a column name we know; did you mean 'email'?" in (
        result.stderr
    )
    assert row_count(engine, Customer) == 0


# --- duplicate ids ---------------------------------------------------------------------------------------------------


def test_a_duplicate_id_in_one_file_is_rejected(run_cli, engine, tmp_path):
    path = customers_csv(
        tmp_path / "c.csv",
        {"name": "first"},  # line 2
        {"customer_id": "C2"},
        {"name": "second"},  # line 4: C1 again
        {"customer_id": "c2"},  # ids are case-sensitive: a different member
    )
    data = import_json(run_cli, "customers", path)
    assert counts(data) == (4, 3, 0, 0, 1)
    (reject,) = rejects(tmp_path / "c.rejects.csv")
    assert (reject["line"], reject["reason"]) == ("4", "customer_id: C1 is also on line 2 of this file")
    assert customers(engine)["C1"]["name"] == "first"
    assert counts(import_json(run_cli, "customers", path)) == (4, 0, 0, 3, 1)  # re-import: the same


def test_duplicate_ids_are_found_across_batches(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "BATCH_SIZE", 3)
    rows = [{"order_id": f"O{i}"} for i in range(7)] + [{"order_id": "O1", "amount": "5"}, {"order_id": "O6"}]
    importing.import_customers(engine, Settings(), customers_csv(tmp_path / "c.csv", {}))
    result = importing.import_orders(engine, Settings(), orders_csv(tmp_path / "o.csv", *rows))
    assert (result.read, result.loaded, result.rejected) == (9, 7, 2)
    reasons = [(row["line"], row["reason"]) for row in rejects(tmp_path / "o.rejects.csv")]
    assert reasons == [
        ("9", "order_id: O1 is also on line 3 of this file"),
        ("10", "order_id: O6 is also on line 8 of this file"),
    ]
    assert orders(engine)["O1"]["amount"] == Decimal("112.50")


# --- yes / no, province and gender -----------------------------------------------------------------------------------


def test_yes_no_words(run_cli, engine, tmp_path):
    words = {"是": True, "否": False, "Y": True, "N": False, "TRUE": True, "false": False, "1": True, "0": False}
    rows = [{"customer_id": f"C{i}", "email_opt_in": word} for i, word in enumerate(words)]
    assert counts(import_json(run_cli, "customers", customers_csv(tmp_path / "c.csv", *rows))) == (8, 8, 0, 0, 0)
    for i, expected in enumerate(words.values()):
        assert consents_of(engine, f"C{i}")["email"] == (expected, "import")
    bad = customers_csv(tmp_path / "b.csv", {"sms_opt_in": "对"})
    assert counts(import_json(run_cli, "customers", bad)) == (1, 0, 0, 0, 1)
    assert rejects(tmp_path / "b.rejects.csv")[0]["reason"] == (
        "sms_opt_in: '对' is not a yes/no value (use 是/否, yes/no, y/n, true/false or 1/0)"
    )


PROVINCES = {
    "浙江省": "浙江",
    "上海市": "上海",
    "北京": "北京",
    "广西壮族自治区": "广西",
    "内蒙古自治区": "内蒙古",
    "宁夏回族自治区": "宁夏",
    "新疆维吾尔自治区": "新疆",
    "西藏自治区": "西藏",
    "香港特别行政区": "香港",
    "黑龙江省": "黑龙江",
    " 四川省 ": "四川",
    "Zhejiang": "浙江",
    "shaanxi": "陕西",
    "California": "California",  # not a Chinese province: kept as written
}
GENDERS = {
    "男": "male",
    "女": "female",
    "M": "male",
    "f": "female",
    "Male": "male",
    "FEMALE": "female",
    "男性": "male",
    "女士": "female",
    "": None,
    "未知": None,
    "其他": "other",
}


def test_province_and_gender_are_normalised(run_cli, engine, tmp_path):
    rows = [{"customer_id": f"P{i}", "province": value} for i, value in enumerate(PROVINCES)]
    rows += [{"customer_id": f"G{i}", "gender": value} for i, value in enumerate(GENDERS)]
    rows += [{"customer_id": "X", "gender": "robot"}]
    data = import_json(run_cli, "customers", customers_csv(tmp_path / "c.csv", *rows))
    assert counts(data) == (len(rows), len(rows) - 1, 0, 0, 1)
    stored = customers(engine)
    assert [stored[f"P{i}"]["province"] for i in range(len(PROVINCES))] == list(PROVINCES.values())
    assert [stored[f"G{i}"]["gender"] for i in range(len(GENDERS))] == list(GENDERS.values())
    assert rejects(tmp_path / "c.rejects.csv")[0]["reason"] == (
        "gender: 'robot' is not a gender we know (use male/female, 男/女 or M/F; leave it empty if unknown)"
    )
    # the stored form is what a re-import compares with: nothing changes the second time
    assert counts(import_json(run_cli, "customers", tmp_path / "c.csv")) == (len(rows), 0, 0, len(rows) - 1, 1)


# --- a very wide header ----------------------------------------------------------------------------------------------


def _names(count: int) -> list[str]:
    """``count`` distinct short column names (base 36), so a 200,000-column header stays under 1 MiB."""
    digits = string.digits + string.ascii_lowercase
    names = []
    for number in range(count):
        name = ""
        while True:
            number, rest = divmod(number, 36)
            name = digits[rest] + name
            if not number:
                break
        names.append(name)
    return names


def test_a_200k_column_header_is_checked_in_linear_time(run_cli, engine, tmp_path):
    """The duplicate check used list.count per column (quadratic: minutes for 120,000 columns)."""
    extra = _names(200_000)
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(["customer_id", *extra]) + "\nC1" + "," * len(extra) + "\n", encoding="utf-8")
    assert counts(import_json(run_cli, "customers", wide)) == (1, 1, 0, 0, 0)

    duplicate = tmp_path / "dup.csv"
    duplicate.write_text(",".join(["customer_id", *extra, extra[-2].upper()]) + "\n", encoding="utf-8")
    result = run_cli("import", "customers", str(duplicate))
    assert result.exit_code == 2
    assert (
        f"error: {duplicate}:1: the column {extra[-2]!r} appears more than once in the header "
        f"(columns {len(extra)} and {len(extra) + 2})"
    ) in result.stderr
    assert row_count(engine, Order) == 0


def test_every_documented_customer_column_is_still_read(run_cli, engine, tmp_path):
    assert counts(import_json(run_cli, "customers", customers_csv(tmp_path / "c.csv", {}))) == (1, 1, 0, 0, 0)
    assert set(CUSTOMER) == set(CUSTOMER_COLUMNS)
    assert customers(engine)["C1"]["gender"] == "female"
