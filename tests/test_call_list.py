"""The built-in call_list channel: options, config, render, and the CSV / XLSX call lists it writes."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from orchestrator_plugins.call_list import CallListChannel, CallListOptions
from pydantic import ValidationError

from orchestrator.api import CompiledMessage, OutgoingMessage, SendStatus
from orchestrator.config import Settings
from orchestrator.errors import InputError
from orchestrator.ledger import parse_delivery_key
from orchestrator.plugin_manager import build_manager, describe
from orchestrator.rendering import TemplateLoader, synthetic_context

SHANGHAI = ZoneInfo("Asia/Shanghai")
# 23:30 UTC on 1 March is already 2 March in Shanghai: the due date counts from the shop's date
RUN_AT = datetime(2026, 3, 1, 23, 30, tzinfo=ZoneInfo("UTC"))
COLUMNS = ["delivery_key", "customer_id", "name", "phone_masked", "phone", "priority", "agent", "due", "script"]


def make_settings(tmp_path: Path, **config) -> Settings:
    return Settings(base_dir=str(tmp_path), timezone="Asia/Shanghai", channels={"call_list": config})


def make_channel(tmp_path: Path, **config) -> CallListChannel:
    settings = make_settings(tmp_path, **config)
    return CallListChannel(settings.channels["call_list"], settings)


@pytest.fixture
def templates(tmp_path: Path) -> TemplateLoader:
    folder = tmp_path / "templates" / "calls"
    folder.mkdir(parents=True)
    (folder / "winback.txt.j2").write_text(
        "您好{{ customer.name }}，我们为您准备了{{ offer.value|money }}的优惠券。\n请问最近方便到店吗？\n",
        encoding="utf-8",
    )
    return TemplateLoader([tmp_path / "templates"]).for_campaign(tmp_path / "campaigns" / "winback.yaml")


def compile_(channel: CallListChannel, templates: TemplateLoader, **options) -> CompiledMessage:
    return channel.compile(CallListOptions.model_validate(options), templates)


def message(channel, compiled, delivery_id: int, *, name="张伟", province="浙江", phone="+8613812345678", run_id=7):
    context = synthetic_context(True, now=RUN_AT, campaign_name="winback")
    context["customer"].update(name=name, province=province, customer_id=f"C{delivery_id:03d}")
    rendered = channel.render(compiled, context)
    return OutgoingMessage(
        delivery_id=delivery_id,
        customer_id=f"C{delivery_id:03d}",
        contact=phone,
        message=rendered,
        idempotency_key=f"run{run_id}-d{delivery_id}",
        run_id=run_id,
        campaign="winback",
    )


def read_list(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # Excel needs the BOM to read UTF-8 Chinese
    assert raw.count(b"\xef\xbb\xbf") == 1
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))


def test_send_writes_one_row_per_call_with_every_column(tmp_path, templates):
    channel = make_channel(tmp_path, agents={"winback": ["王芳", "李娜", "赵强"]})
    compiled = compile_(channel, templates, template="calls/winback.txt.j2", queue="winback", priority=2)
    messages = [message(channel, compiled, i) for i in (10, 11, 12, 13)]
    results = list(channel.send(messages))
    channel.close()

    assert [r.status for r in results] == [SendStatus.SENT] * 4
    assert [r.provider_id for r in results] == ["winback.csv:2", "winback.csv:3", "winback.csv:4", "winback.csv:5"]
    path = tmp_path / "outbox" / "call_list" / "winback-run7" / "winback.csv"
    rows = read_list(path)
    assert list(rows[0]) == [*COLUMNS, "campaign"]
    first = rows[0]
    assert first["delivery_key"] == "run7-d10" and first["customer_id"] == "C010"
    assert (first["name"], first["phone_masked"], first["phone"]) == ("张伟", "138****5678", "+8613812345678")
    assert first["priority"] == "2"
    assert first["due"] == "2026-03-04"  # 2 March in Shanghai + 2 days
    assert first["script"] == "您好张伟，我们为您准备了¥20.00的优惠券。\n请问最近方便到店吗？"
    assert first["campaign"] == "winback"
    # round robin over the queue's agents by delivery id: the same on every resume and in every process
    assert [r["agent"] for r in rows] == ["李娜", "赵强", "王芳", "李娜"]  # 10 % 3 = 1, 11 % 3 = 2, …
    assert not (path.with_suffix(".xlsx")).exists()  # xlsx is off by default


def test_options_defaults_inline_script_and_due_days(tmp_path, templates):
    channel = make_channel(tmp_path, phone_columns=["masked"])
    compiled = compile_(channel, templates, script="{{ customer.name }}您好", due_in_days=0)
    assert compiled.warnings and "no agents" in compiled.warnings[0]
    rendered = channel.render(compiled, synthetic_context(False, now=RUN_AT))
    assert rendered.parts["script"] == "张伟您好"
    assert (rendered.parts["queue"], rendered.parts["priority"], rendered.parts["due"]) == (
        "default",
        "3",
        "2026-03-02",
    )
    foreign = message(channel, compiled, 5, phone="+14155552671")
    [result] = list(channel.send([foreign]))
    assert result.provider_id == "default.csv:2"
    [row] = read_list(tmp_path / "outbox" / "call_list" / "winback-run7" / "default.csv")
    assert "phone" not in row  # only the masked column was asked for
    # another country keeps its code; not a number, so a spreadsheet would evaluate "+1 415…": it is quoted
    assert row["phone_masked"] == "'+1 415***2671"
    assert row["agent"] == "" and row["due"] == "2026-03-02"
    assert CallListOptions.model_validate({"script": "x"}).due_in_days == 2


def test_by_region_assignment_falls_back_to_round_robin(tmp_path, templates):
    channel = make_channel(
        tmp_path,
        assign="by_region",
        regions={"浙江": "杭州组", "上海": "浦东组"},
        agents={"default": ["甲", "乙"]},
        outbox="lists",
    )
    compiled = compile_(channel, templates, script="hi")
    messages = [
        message(channel, compiled, 1, province="上海"),
        message(channel, compiled, 2, province="浙江"),
        message(channel, compiled, 3, province="广东"),  # no region agent: round robin, 3 % 2
        message(channel, compiled, 4, province=""),
    ]
    list(channel.send(messages))
    rows = read_list(tmp_path / "lists" / "winback-run7" / "default.csv")
    assert [r["agent"] for r in rows] == ["浦东组", "杭州组", "乙", "甲"]


def test_a_resent_row_is_not_written_twice(tmp_path, templates):
    compiled = compile_(make_channel(tmp_path), templates, script="{{ customer.name }}")
    first = make_channel(tmp_path)
    sent = list(first.send([message(first, compiled, 1), message(first, compiled, 2)]))
    first.close()
    # a crash before the ledger recorded d2, and a row cut short while d3 was being written
    path = tmp_path / "outbox" / "call_list" / "winback-run7" / "default.csv"
    with path.open("ab") as handle:
        handle.write(b'run7-d3,C003,"half a ro')

    resumed = make_channel(tmp_path)  # another process: knows the file only from the disk
    again = list(resumed.send([message(resumed, compiled, 2), message(resumed, compiled, 3, name="李四")]))
    # within one process too: the same key in a later batch is found in memory
    repeat = list(resumed.send([message(resumed, compiled, 3, name="李四")]))
    resumed.close()

    assert again[0].provider_id == sent[1].provider_id == "default.csv:3"
    assert again[1].provider_id == repeat[0].provider_id == "default.csv:4"
    rows = read_list(path)
    assert [r["delivery_key"] for r in rows] == ["run7-d1", "run7-d2", "run7-d3"]
    assert rows[2]["name"] == "李四"


def test_xlsx_written_beside_each_csv_on_close(tmp_path, templates):
    channel = make_channel(tmp_path, xlsx=True, agents={"vip": ["王芳"]})
    vip = compile_(channel, templates, template="calls/winback.txt.j2", queue="vip", priority=1)
    other = compile_(channel, templates, script="{{ customer.name }}")
    list(channel.send([message(channel, vip, 1, name="=HYPERLINK(1)"), message(channel, other, 2)]))
    folder = tmp_path / "outbox" / "call_list" / "winback-run7"
    assert not (folder / "vip.xlsx").exists()  # written when the run is done
    channel.close()

    csv_row = read_list(folder / "vip.csv")[0]
    assert csv_row["name"] == "'=HYPERLINK(1)"  # a CSV cell Excel would run as a formula is guarded
    sheet = load_workbook(folder / "vip.xlsx", read_only=True).active
    values = [list(r) for r in sheet.iter_rows(values_only=True)]
    assert values[0] == [*COLUMNS, "campaign"]
    row = dict(zip(values[0], values[1], strict=True))
    assert row["name"] == "=HYPERLINK(1)"  # a text cell in the workbook, never a formula
    assert row["phone"] == "+8613812345678" and row["phone_masked"] == "138****5678"
    assert row["priority"] == 1 and row["agent"] == "王芳" and row["due"] == "2026-03-04"
    assert row["script"].startswith("您好=HYPERLINK(1)，")
    assert (folder / "default.xlsx").is_file()
    assert not list(folder.glob(".*.tmp"))


def test_contact_validation_and_consent(tmp_path):
    channel = make_channel(tmp_path)
    assert channel.validate_contact("13812345678") == "+8613812345678"
    assert channel.validate_contact("+86 138 1234 5678") == "+8613812345678"
    assert channel.validate_contact("12345") is None
    assert channel.contact_of({"phone": None}) is None
    assert channel.consent == "sms" and channel.is_message
    assert make_channel(tmp_path, consent="phone").consent == "phone"
    # the dispatcher's keys are accepted and ignored
    make_channel(tmp_path, rate_limit={"per_second": 5}, cost_per_message="0.50", retry={"max_attempts": 3})


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"assign": "by_region"}, "regions"),
        ({"assign": "random"}, "assign"),
        ({"phone_columns": ["partial"]}, "phone_columns"),
        ({"agents": {"default": ["王芳", " "]}}, "empty agent"),
        ({"outbx": "x"}, "outbx"),
    ],
)
def test_bad_config_is_an_input_error(tmp_path, config, match):
    with pytest.raises(InputError, match=match) as caught:
        make_channel(tmp_path, **config)
    assert "outbox, consent" in (caught.value.hint or "")


def test_options_validation():
    with pytest.raises(ValidationError, match="needs a call script"):
        CallListOptions.model_validate({"queue": "vip"})
    with pytest.raises(ValidationError, match="not both"):
        CallListOptions.model_validate({"script": "x", "template": "a.txt"})
    with pytest.raises(ValidationError, match="priority"):
        CallListOptions.model_validate({"script": "x", "priority": 6})
    with pytest.raises(ValidationError, match="queue"):
        CallListOptions.model_validate({"script": "x", "queue": "../etc"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        CallListOptions.model_validate({"script": "x", "agent": "me"})


def test_delivery_key_and_registration():
    assert parse_delivery_key("run12-d345") == (12, 345)
    assert parse_delivery_key("run12-345") is None
    infos = describe(build_manager())
    [channel] = [i for i in infos if i.kind == "channel" and i.name == "call_list"]
    assert channel.source == "orchestrator_plugins.call_list (built-in)"
    [plugin] = [i for i in infos if i.name == "orchestrator_plugins.call_list"]
    assert plugin.hooks == ("register_channels",)  # call outcomes are a core import (a ledger matter)


def test_two_processes_appending_to_one_list_number_rows_and_dedupe_together(tmp_path, templates):
    compiled = compile_(make_channel(tmp_path), templates, script="{{ customer.name }}")
    a, b = make_channel(tmp_path), make_channel(tmp_path)
    [r1] = list(a.send([message(a, compiled, 1)]))
    [r2] = list(b.send([message(b, compiled, 2)]))
    [r3] = list(a.send([message(a, compiled, 3)]))  # a sees b's row before numbering its own
    [r1_again] = list(b.send([message(b, compiled, 1)]))  # and b sees a's rows before writing
    a.close()
    b.close()
    assert [r.provider_id for r in (r1, r2, r3, r1_again)] == [
        "default.csv:2",
        "default.csv:3",
        "default.csv:4",
        "default.csv:2",
    ]
    rows = read_list(tmp_path / "outbox" / "call_list" / "winback-run7" / "default.csv")
    assert [r["delivery_key"] for r in rows] == ["run7-d1", "run7-d2", "run7-d3"]


def test_a_list_that_cannot_be_written_is_a_transient_result(tmp_path, templates):
    channel = make_channel(tmp_path, outbox="blocked")
    (tmp_path / "blocked").write_text("a file where the folder should be", encoding="utf-8")
    compiled = compile_(channel, templates, script="hi")
    results = list(channel.send([message(channel, compiled, 1), message(channel, compiled, 2)]))
    assert [r.status for r in results] == [SendStatus.TRANSIENT] * 2
    assert "blocked" in results[0].error
    channel.close()


def test_every_text_cell_of_the_call_list_is_guarded_against_formulas(tmp_path, templates):
    """customer_id and campaign came straight from imported data and campaign files: they are guarded like the rest,
    while the phone (E.164), the priority and the due date stay as they are."""
    channel = make_channel(tmp_path, agents={"default": ["-agent"]})
    compiled = compile_(channel, templates, script="@SUM(1)")
    outgoing = message(channel, compiled, 1, name="+1+1")
    outgoing = replace(outgoing, customer_id="=cmd|' /C calc'!A0", campaign="-1+2")
    list(channel.send([outgoing]))
    channel.close()
    (row,) = read_list(next((tmp_path / "outbox" / "call_list").rglob("default.csv")))
    assert row["customer_id"] == "'=cmd|' /C calc'!A0"
    assert (row["name"], row["agent"], row["script"], row["campaign"]) == ("'+1+1", "'-agent", "'@SUM(1)", "'-1+2")
    assert (row["phone"], row["phone_masked"], row["priority"]) == ("+8613812345678", "138****5678", "3")


def test_xlsx_phone_and_id_columns_are_text_cells(tmp_path, templates):
    """Spreadsheets show a number-looking phone as 8.61381E+12 and drop an id's leading zeros unless the cell is
    text, and a text-formatted cell stays text when someone edits it."""
    channel = make_channel(tmp_path, xlsx=True)
    compiled = compile_(channel, templates, script="{{ customer.name }}")
    outgoing = message(channel, compiled, 1, name="=1+1")
    outgoing = replace(outgoing, customer_id="00123")
    list(channel.send([outgoing]))
    channel.close()
    path = next((tmp_path / "outbox" / "call_list").rglob("default.xlsx"))
    sheet = load_workbook(path).active
    header = [cell.value for cell in sheet[1]]
    cells = dict(zip(header, sheet[2], strict=True))
    for column in ("delivery_key", "customer_id", "phone", "phone_masked", "name", "script", "due"):
        assert cells[column].data_type == "s", column
        assert cells[column].number_format == "@", column
    assert (cells["customer_id"].value, cells["phone"].value) == ("00123", "+8613812345678")
    assert cells["name"].value == "=1+1"
    assert cells["priority"].value == 3 and cells["priority"].data_type == "n"
