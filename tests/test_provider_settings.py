"""A real provider never sends placeholders: SMTP needs channels.email.from and unsubscribe_url, an SMS gateway
needs channels.sms.signature. Without them the command stops with exit 2 naming the key and the config file;
file outboxes keep their demo defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from orchestrator_plugins.email import EmailChannel
from orchestrator_plugins.sms import SmsChannel

from orchestrator.config import load_settings
from orchestrator.errors import InputError
from tests.clitools import Cli

SMTP = "  email:\n    smtp: {host: 127.0.0.1, port: 2525, security: none}\n"
GATEWAY = "  sms:\n    gateway: {url: 'http://127.0.0.1:9/send'}\n"
CAMPAIGN = """\
name: placeholders
segment: {frequency: {gte: 1}}
steps:
  - name: one
    message:
      %s
"""


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "orchestrator.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("unsubscribe_url: https://shop.test/u\nchannels:\n" + SMTP, "channels.email.from"),
        ("channels:\n" + SMTP.replace("  email:\n", "  email:\n    from: Shop <news@shop.test>\n"), "unsubscribe_url"),
    ],
)
def test_smtp_needs_a_sender_and_an_unsubscribe_url(tmp_path, text, key):
    path = config(tmp_path, text)
    settings = load_settings(path)
    with pytest.raises(InputError) as caught:
        EmailChannel(settings.channels["email"], settings)
    assert caught.value.file == str(path) and key in caught.value.message


def test_smtp_with_both_configured_starts(tmp_path):
    text = "unsubscribe_url: https://shop.test/u\nchannels:\n" + SMTP.replace(
        "  email:\n", "  email:\n    from: Shop <news@shop.test>\n"
    )
    settings = load_settings(config(tmp_path, text))
    EmailChannel(settings.channels["email"], settings).close()


def test_an_sms_gateway_needs_a_signature(tmp_path):
    path = config(tmp_path, "channels:\n" + GATEWAY)
    settings = load_settings(path)
    with pytest.raises(InputError) as caught:
        SmsChannel(settings.channels["sms"], settings)
    assert caught.value.file == str(path) and "channels.sms.signature" in caught.value.message
    signed = load_settings(config(tmp_path, "channels:\n" + GATEWAY + "    signature: 【某网店】\n"))
    SmsChannel(signed.channels["sms"], signed).close()


def test_file_outboxes_keep_their_demo_defaults(tmp_path):
    settings = load_settings(config(tmp_path, "channels:\n  email: {}\n  sms: {}\n"))
    EmailChannel(settings.channels["email"], settings)
    SmsChannel(settings.channels["sms"], settings)


@pytest.mark.parametrize(
    ("channels", "message", "key"),
    [
        (SMTP, "email: {subject: Hi, text: Hello}", "channels.email.from"),
        (GATEWAY, "sms: {text: 您好}", "channels.sms.signature"),
    ],
)
def test_validate_exits_2_naming_the_key_and_file(tmp_path, monkeypatch, channels, message, key):
    monkeypatch.chdir(tmp_path)
    path = config(tmp_path, "unsubscribe_url: https://shop.test/u\ntemplates: []\nchannels:\n" + channels)
    (tmp_path / "campaign.yaml").write_text(CAMPAIGN % message, encoding="utf-8")
    result = Cli(None, config=str(path))("validate", str(tmp_path / "campaign.yaml"))
    assert result.exit_code == 2, result.output
    assert key in result.output and str(path) in result.output


def test_the_config_init_writes_sends_no_demo_unsubscribe_link(tmp_path, monkeypatch):
    """A new user adds SMTP to the config `init` wrote: that file must not carry a live placeholder
    unsubscribe_url, or real mail would point members at the demo shop."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    cli = Cli(f"sqlite:///{tmp_path / 'orchestrator.db'}", config=None)
    assert cli("init").exit_code == 0
    path = tmp_path / "orchestrator.yaml"
    written = path.read_text(encoding="utf-8")
    path.write_text(
        written + "channels:\n" + SMTP.replace("  email:\n", "  email:\n    from: Shop <news@shop.test>\n"),
        encoding="utf-8",
    )
    settings = load_settings(path)
    with pytest.raises(InputError) as caught:
        EmailChannel(settings.channels["email"], settings)
    assert "unsubscribe_url" in caught.value.message
