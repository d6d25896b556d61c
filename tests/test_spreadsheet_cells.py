"""CSV injection: every CSV the product writes (call lists, reject files, coupon refusals) is safe to open in a
spreadsheet, and a cell that is a number or an E.164 phone stays readable. Checked by reading the files back."""

from __future__ import annotations

import csv
import io
import os
import stat

import pytest

from orchestrator.api import spreadsheet_cell
from tests.test_import import customers_csv, import_json, orders_csv, rejects, write_csv

FORMULAS = ["=cmd|' /C calc'!A0", "@SUM(A1:A2)", "+1+1", "-1+2", "\tx", "\rx", '=HYPERLINK("http://x")', "-", "+"]
LITERALS = ["", "C1", "-5", "+1.5", "-0.25", "1e5", "+8613812345678", "138****5678", "2026-03-04", "张三", "a=b"]


@pytest.mark.parametrize("value", FORMULAS)
def test_a_cell_a_spreadsheet_would_evaluate_gets_a_quote(value):
    assert spreadsheet_cell(value) == "'" + value


@pytest.mark.parametrize("value", LITERALS)
def test_numbers_phones_and_plain_text_are_kept(value):
    assert spreadsheet_cell(value) == value


def test_non_text_values():
    assert spreadsheet_cell(None) == ""
    assert spreadsheet_cell(-3) == "-3"
    assert spreadsheet_cell(12.5) == "12.5"


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)


def test_reject_files_are_guarded_and_private(run_cli, tmp_path):
    path = customers_csv(
        tmp_path / "c.csv",
        {"customer_id": "=cmd|' /C calc'!A0", "email": "nope", "name": "@SUM(A1)", "phone": "+1+1"},
        {"customer_id": "C2", "email": "-1+2", "name": "-5"},
    )
    data = import_json(run_cli, "customers", path)
    assert data["rejected"] == 2
    rows = rejects(tmp_path / "c.rejects.csv")
    assert (rows[0]["customer_id"], rows[0]["name"], rows[0]["phone"]) == ("'=cmd|' /C calc'!A0", "'@SUM(A1)", "'+1+1")
    assert (rows[1]["email"], rows[1]["name"]) == ("'-1+2", "-5")
    assert rows[1]["reason"].startswith("email: '-1+2' is not a valid e-mail address")  # the reason is our text
    assert stat.S_IMODE(os.stat(tmp_path / "c.rejects.csv").st_mode) == 0o600  # rejected rows hold personal data


def test_coupon_refusals_file_is_guarded(run_cli, tmp_path):
    import_json(run_cli, "customers", customers_csv(tmp_path / "c.csv", {}))
    data = import_json(run_cli, "orders", orders_csv(tmp_path / "o.csv", {"order_id": "=1+1", "coupon_code": "@X"}))
    assert data["coupon_refusals"] == 1
    refusal_file = tmp_path / "o.coupon-refusals.csv"
    assert data["coupon_refusals_file"] == str(refusal_file)
    with refusal_file.open(encoding="utf-8", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["code"], row["order_id"]) == ("'@X", "'=1+1")
    assert stat.S_IMODE(os.stat(refusal_file).st_mode) == 0o600


def test_suppression_import_rejects_are_guarded(run_cli, tmp_path):
    path = write_csv(tmp_path / "s.csv", ["phone", "channel"], [{"phone": "=1+1", "channel": "sms"}])
    result = run_cli("suppress", "import", str(path), "--json")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "s.rejects.csv").read_text(encoding="utf-8")
    (row,) = csv.DictReader(io.StringIO(text))
    assert row["phone"] == "'=1+1"
