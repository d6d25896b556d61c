"""Inbound SMS replies: opt-out keywords suppress the number on sms; `import sms-replies` end to end."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from orchestrator_plugins.sms.replies import handle_reply
from sqlalchemy import func, select

from orchestrator import suppressions
from orchestrator.config import Settings
from orchestrator.db.models import Suppression
from orchestrator.errors import InputError

SHANGHAI = timezone(timedelta(hours=8))
RECEIVED = datetime(2026, 3, 1, 10, 15, tzinfo=SHANGHAI)


def entries(conn) -> list[dict]:
    return list(suppressions.entries(conn))


@pytest.mark.parametrize("reply", ["T", " td ", "ｔｄ", "Stop!", "unsubscribe", "退订。", "Ｎ", "退订"])
def test_an_opt_out_keyword_suppresses_the_number_on_sms(engine, reply):
    settings = Settings()
    with engine.begin() as conn:
        assert handle_reply(conn, settings, "138 0013 8000", reply, RECEIVED) is True
        [entry] = entries(conn)
    assert entry["address"] == "+8613800138000" and entry["customer_id"] is None
    assert (entry["channel"], entry["reason"], entry["source"]) == ("sms", "unsubscribed", "sms_reply")
    assert entry["created_at"].replace(tzinfo=entry["created_at"].tzinfo or UTC) == RECEIVED
    assert reply.strip() in entry["note"]


def test_other_replies_change_nothing_and_a_repeat_adds_nothing(engine):
    settings = Settings()
    with engine.begin() as conn:
        for text in ("好的", "不要退订", "TT", "stop it", ""):
            assert handle_reply(conn, settings, "+8613800138000", text, RECEIVED) is False
        assert entries(conn) == []
        assert handle_reply(conn, settings, "+8613800138000", "T", RECEIVED) is True
        assert handle_reply(conn, settings, "13800138000", "退订", RECEIVED + timedelta(days=1)) is True
        assert conn.execute(select(func.count()).select_from(Suppression)).scalar_one() == 1


def test_keywords_come_from_config_and_bad_numbers_are_input_errors(engine):
    settings = Settings(channels={"sms": {"opt_out_keywords": ["取消", "Ｑ"]}})
    with engine.begin() as conn:
        assert handle_reply(conn, settings, "+8613800138000", "T", RECEIVED) is False
        assert handle_reply(conn, settings, "+8613800138000", "q", RECEIVED) is True
        assert handle_reply(conn, settings, "+8613900139000", " 取消 ", RECEIVED) is True
        with pytest.raises(InputError, match="not a valid phone number"):
            handle_reply(conn, settings, "12345", "取消", RECEIVED)
        assert len(entries(conn)) == 2


# --- the command ---------------------------------------------------------------------------------------------------

REPLIES = (
    "phone,text,received_at\n"
    "13800138000,T,2026-03-01T10:15:00+08:00\n"
    "+86 139 0013 9000,好的谢谢,2026-03-01 11:00\n"
    '13700137000," 退订。",2026-03-02T09:00:00Z\n'
    "\n"
    "13800138000,td,2026-03-02T12:00:00+08:00\n"
)


def test_import_sms_replies_end_to_end(run_cli, tmp_path):
    path = tmp_path / "replies.csv"
    path.write_text(REPLIES, encoding="utf-8")
    result = run_cli("import", "sms-replies", str(path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "kind": "sms_replies",
        "file": str(path),
        "read": 4,
        "suppressed": 2,
        "unchanged": 1,
        "ignored": 1,
    }
    listed = json.loads(run_cli("suppress", "list", "--channel", "sms", "--json").stdout)
    assert sorted((e["address"], e["channel"], e["reason"], e["source"]) for e in listed) == [
        ("+86 137****7000", "sms", "unsubscribed", "sms_reply"),  # masked, as in every listing
        ("+86 138****8000", "sms", "unsubscribed", "sms_reply"),
    ]
    assert json.loads(run_cli("suppress", "list", "--channel", "email", "--json").stdout) == []

    again = run_cli("import", "sms-replies", str(path))
    assert again.exit_code == 0
    assert again.stdout.strip() == f"{path}: 4 replies read: 0 suppressed, 3 already suppressed, 1 ignored"


@pytest.mark.parametrize(
    ("content", "where", "message"),
    [
        ("phone,txt,received_at\n13800138000,T,2026-03-01\n", ":1:", "missing required column"),
        ("phone,text,received_at\n13800138000,T,2026-03-01\n12345,T,2026-03-01\n", ":3:", "phone:"),
        ("phone,text,received_at\n13800138000,T,2026-03-01\n13800138001,T,yesterday\n", ":3:", "received_at:"),
        ("phone,text,received_at\n13800138000,T,2026-03-01,extra\n", ":2:", "fields but the header has 3"),
    ],
)
def test_a_bad_file_exits_2_with_file_line_and_hint_and_writes_nothing(run_cli, tmp_path, content, where, message):
    path = tmp_path / "replies.csv"
    path.write_text(content, encoding="utf-8")
    result = run_cli("import", "sms-replies", str(path))
    assert result.exit_code == 2
    assert f"{path}{where}" in result.stderr and message in result.stderr
    assert "hint:" in result.stderr
    assert json.loads(run_cli("suppress", "list", "--json").stdout) == []


def test_a_missing_file_exits_2(run_cli, tmp_path):
    result = run_cli("import", "sms-replies", str(tmp_path / "nope.csv"))
    assert result.exit_code == 2 and "no such file" in result.stderr
