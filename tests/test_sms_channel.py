"""The built-in sms channel: segment counting, signature and opt-out wording, numbers, the JSON outbox, config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from orchestrator_plugins.sms import SmsChannel, SmsOptions
from orchestrator_plugins.sms.text import count_segments, normalise_reply, with_opt_out, with_signature
from pydantic import ValidationError

from orchestrator.api import CompiledMessage, OutgoingMessage, SendStatus
from orchestrator.config import Settings
from orchestrator.errors import InputError
from orchestrator.plugin_manager import build_manager, build_registry, describe
from orchestrator.rendering import TemplateLoader, TemplateRenderError, synthetic_context

# --- segment counting ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "segments", "encoding", "chars"),
    [
        ("a" * 160, 1, "GSM-7", 160),
        ("a" * 161, 2, "GSM-7", 161),
        ("a" * 153 * 2, 2, "GSM-7", 306),
        ("a" * (153 * 2 + 1), 3, "GSM-7", 307),
        ("@£$¥èéÄÖÑÜ§¿äöñüàΔΦΓΛΩΠΨΣΘΞ" + "x" * 133, 1, "GSM-7", 160),  # the basic set's accents count one
        ("{" * 80, 1, "GSM-7", 80),  # extension characters count two septets: 160
        ("{" * 81, 2, "GSM-7", 81),  # 162 septets
        ("€" + "a" * 158, 1, "GSM-7", 159),  # 160 septets
        ("€" + "a" * 159, 2, "GSM-7", 160),  # 161 septets: 160 characters are already two segments
        ("^}\\[~]|\f" + "a" * 145, 2, "GSM-7", 153),  # 8 extension characters = 16 septets + 145 = 161
        ("中" * 70, 1, "UCS-2", 70),
        ("中" * 71, 2, "UCS-2", 71),
        ("中" * 67 * 2, 2, "UCS-2", 134),
        ("中" * 135, 3, "UCS-2", 135),
        ("a" * 69 + "中", 1, "UCS-2", 70),  # one Chinese character makes the whole text UCS-2
        ("a" * 159 + "ç", 3, "UCS-2", 160),  # ç is not in GSM-7 (only Ç is): 160 units of UCS-2
        ("😀" * 35, 1, "UCS-2", 35),  # an emoji is two UTF-16 units: 70
        ("😀" * 35 + "a", 2, "UCS-2", 36),  # 71 units
        ("😀" * 67, 2, "UCS-2", 67),  # 134 units
        ("😀" * 67 + "a", 3, "UCS-2", 68),  # 135 units
    ],
)
def test_segment_boundaries(text, segments, encoding, chars):
    counted = count_segments(text)
    assert (counted.segments, counted.encoding, counted.chars) == (segments, encoding, chars)


def test_segment_units_are_septets_or_utf16_units():
    assert count_segments("a{b").units == 4
    assert count_segments("好😀").units == 3
    assert count_segments("a{b").measures() == {"sms_segments": 1, "encoding": "GSM-7", "chars": 3}


# --- signature and opt-out wording ---------------------------------------------------------------------------------


def test_signature_is_prefixed_once():
    assert with_signature("您好", "【某网店】") == "【某网店】您好"
    assert with_signature("【某网店】您好", "【某网店】") == "【某网店】您好"
    assert with_signature("您好", None) == "您好"


def test_opt_out_follows_a_closed_sentence_directly_and_anything_else_after_a_space():
    assert with_opt_out("您好，新品上架。", "回T退订") == "您好，新品上架。回T退订"
    assert with_opt_out("新品上架！", "回T退订") == "新品上架！回T退订"
    assert with_opt_out("您好", "回T退订") == "您好 回T退订"  # never glued onto the sentence
    assert with_opt_out("满100减20，7月1日前有效", "回T退订") == "满100减20，7月1日前有效 回T退订"
    assert with_opt_out("您好，", "回T退订") == "您好，回T退订"
    assert with_opt_out("券码 ABC123", "回T退订") == "券码 ABC123 回T退订"
    assert with_opt_out("New arrivals!", "Reply STOP to opt out") == "New arrivals! Reply STOP to opt out"
    assert with_opt_out("回T退订 您好", "回T退订") == "回T退订 您好"  # already there: unchanged
    assert with_opt_out("您好", "") == "您好"


def test_reply_normalisation():
    assert normalise_reply(" ｔｄ ") == "TD"
    assert normalise_reply("退订。") == "退订"
    assert normalise_reply("Stop!") == "STOP"
    assert normalise_reply("不要退订") == "不要退订"


# --- the channel ---------------------------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(base_dir=str(tmp_path), channels={"sms": {"outbox": "sms/out", "signature": "【某网店】"}})


@pytest.fixture
def channel(settings: Settings) -> SmsChannel:
    return SmsChannel(settings.channels["sms"], settings)


@pytest.fixture
def templates(tmp_path: Path) -> TemplateLoader:
    folder = tmp_path / "templates" / "sms"
    folder.mkdir(parents=True)
    (folder / "winback.txt.j2").write_text(
        "{{ customer.name }}您好，送您{{ offer.value|money(0) }}元券，券码{{ offer.code }}。\n", encoding="utf-8"
    )
    return TemplateLoader([tmp_path / "templates"]).for_campaign(tmp_path / "campaigns" / "winback.yaml")


def compiled(channel: SmsChannel, templates: TemplateLoader, **options) -> CompiledMessage:
    return channel.compile(SmsOptions.model_validate(options), templates)


def outgoing(channel, message, key, contact="+8613800138000") -> OutgoingMessage:
    rendered = channel.render(message, synthetic_context(True, campaign_name="winback"))
    return OutgoingMessage(
        delivery_id=1, customer_id="C000042", contact=contact, message=rendered, idempotency_key=key, campaign="winback"
    )


def test_render_adds_signature_and_opt_out_and_measures(channel, templates):
    message = compiled(channel, templates, template="sms/winback.txt.j2")
    rendered = channel.render(message, synthetic_context(True))
    text = "【某网店】张伟您好，送您¥20元券，券码SYN7-Q2KX-8ZD4。回T退订"
    assert rendered.parts == {"text": text}
    assert rendered.measures == {"sms_segments": 1, "encoding": "UCS-2", "chars": len(text)}


def test_render_keeps_text_that_already_has_signature_and_opt_out(channel, templates):
    message = compiled(channel, templates, text="【某网店】{{ customer.name }}，退订请回T退订，谢谢")
    assert channel.render(message, synthetic_context(False)).parts["text"] == "【某网店】张伟，退订请回T退订，谢谢"


def test_render_counts_signature_and_opt_out_in_segments(channel, templates):
    # 5 (signature) + n + 1 (the space) + 4 (opt-out): 60 characters of text fill one UCS-2 segment, 61 need two
    full = channel.render(compiled(channel, templates, text="{{ '好' * 60 }}"), synthetic_context(False))
    assert full.measures == {"sms_segments": 1, "encoding": "UCS-2", "chars": 70}
    over = channel.render(compiled(channel, templates, text="{{ '好' * 61 }}"), synthetic_context(False))
    assert over.measures == {"sms_segments": 2, "encoding": "UCS-2", "chars": 71}


def test_latin_text_without_signature_stays_gsm7(tmp_path, templates):
    settings = Settings(base_dir=str(tmp_path), channels={"sms": {"opt_out_text": "Reply STOP to opt out"}})
    channel = SmsChannel(settings.channels["sms"], settings)
    rendered = channel.render(compiled(channel, templates, text="Hi {{ 'Li' }}, 20% off"), synthetic_context(False))
    assert rendered.parts["text"] == "Hi Li, 20% off Reply STOP to opt out"
    assert rendered.measures == {"sms_segments": 1, "encoding": "GSM-7", "chars": 36}


def test_template_mistakes_surface_with_file_and_line(channel, templates, tmp_path):
    with pytest.raises(InputError, match="not found"):
        compiled(channel, templates, template="sms/missing.txt.j2")
    with pytest.raises(InputError, match="syntax"):
        compiled(channel, templates, text="{{ customer.name ")
    message = compiled(channel, templates, template="sms/winback.txt.j2")
    with pytest.raises(TemplateRenderError) as caught:
        channel.render(message, synthetic_context(False))  # the template uses the offer
    assert caught.value.file == str(tmp_path / "templates" / "sms" / "winback.txt.j2")
    assert caught.value.line == 1


def test_options_validation():
    with pytest.raises(ValidationError, match="not both"):
        SmsOptions.model_validate({"text": "a", "template": "b.txt"})
    with pytest.raises(ValidationError, match="needs its text"):
        SmsOptions.model_validate({})
    with pytest.raises(ValidationError, match="Extra inputs"):
        SmsOptions.model_validate({"text": "a", "subject": "b"})


def test_validate_contact_normalises_mobiles_to_e164(channel):
    assert channel.validate_contact("138 0013 8000") == "+8613800138000"
    assert channel.validate_contact("+86 138-0013-8000") == "+8613800138000"
    assert channel.validate_contact("+1 650 253 0000") == "+16502530000"  # US: fixed line or mobile
    assert channel.validate_contact("010 6552 9988") is None  # a Beijing landline cannot take a text
    assert channel.validate_contact("12345") is None
    assert channel.validate_contact("not a number") is None
    assert channel.contact_of({"phone": ""}) is None
    assert channel.contact_of({"phone": "13800138000"}) == "+8613800138000"


def test_send_writes_one_json_file_per_message(channel, templates, tmp_path):
    message = compiled(channel, templates, template="sms/winback.txt.j2")
    results = list(channel.send([outgoing(channel, message, "run-1:C000042:sms")]))
    assert [r.status for r in results] == [SendStatus.SENT]
    path = tmp_path / "sms" / "out" / results[0].provider_id
    assert path.suffix == ".json"
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "to": "+8613800138000",
        "text": "【某网店】张伟您好，送您¥20元券，券码SYN7-Q2KX-8ZD4。回T退订",
        "segments": 1,
        "customer_id": "C000042",
        "campaign": "winback",
        "idempotency_key": "run-1:C000042:sms",
    }
    assert not list(path.parent.glob(".*.tmp"))


def test_resending_overwrites_and_distinct_keys_get_distinct_files(channel, templates, tmp_path):
    message = compiled(channel, templates, text="hi")
    first = list(channel.send([outgoing(channel, message, "run-1/C1/sms")]))
    again = list(channel.send([outgoing(channel, message, "run-1/C1/sms"), outgoing(channel, message, "run-1/C2/sms")]))
    assert first[0].provider_id == again[0].provider_id != again[1].provider_id
    assert "/" not in first[0].provider_id
    assert len(list((tmp_path / "sms" / "out").iterdir())) == 2


def test_a_write_failure_is_transient_for_that_message_only(channel, templates, tmp_path):
    message = compiled(channel, templates, text="hi")
    (tmp_path / "sms" / "out" / "blocked.json").mkdir(parents=True)
    results = list(channel.send([outgoing(channel, message, "ok"), outgoing(channel, message, "blocked")]))
    assert [r.status for r in results] == [SendStatus.SENT, SendStatus.TRANSIENT]
    assert "blocked.json" in results[1].error


def test_default_outbox(tmp_path, templates):
    settings = Settings(base_dir=str(tmp_path))
    channel = SmsChannel({}, settings)
    [result] = channel.send([outgoing(channel, compiled(channel, templates, text="您好"), "k")])
    data = json.loads((tmp_path / "outbox" / "sms" / result.provider_id).read_text(encoding="utf-8"))
    assert data["text"] == "您好 回T退订"


def test_config_accepts_dispatcher_keys_and_rejects_unknown_ones(tmp_path):
    settings = Settings(base_dir=str(tmp_path), source=str(tmp_path / "orchestrator.yaml"))
    dispatcher = {"rate_limit": {"per_second": 5}, "cost_per_message": "0.05", "cost_per_segment": "0.04", "retry": {}}
    SmsChannel(dispatcher, settings)
    with pytest.raises(InputError, match="signatur") as caught:
        SmsChannel({"signatur": "【x】"}, settings)
    assert caught.value.file == str(tmp_path / "orchestrator.yaml")
    assert "signature" in caught.value.hint


def test_sms_is_a_builtin_plugin_with_its_command():
    pm = build_manager()
    assert build_registry(pm).channels["sms"] is SmsChannel
    infos = describe(pm)
    [sms] = [info for info in infos if info.kind == "channel" and info.name == "sms"]
    assert sms.source == "orchestrator_plugins.sms (built-in)"
    [plugin] = [info for info in infos if info.name == "orchestrator_plugins.sms"]
    assert {"register_channels", "register_commands"} <= set(plugin.hooks)
