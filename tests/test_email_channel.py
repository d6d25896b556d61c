"""The built-in email channel: options, compile and render, the .eml outbox, and its registration."""

from __future__ import annotations

import email.policy
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from orchestrator_plugins.email import EmailChannel, EmailOptions, html_to_text
from pydantic import ValidationError

from orchestrator.api import CompiledMessage, OutgoingMessage, SendStatus
from orchestrator.config import Settings
from orchestrator.errors import InputError
from orchestrator.plugin_manager import build_manager, describe
from orchestrator.rendering import TemplateLoader, TemplateRenderError, synthetic_context

HTML = """<html><head><style>p { color: red }</style><title>ignored</title></head><body>
<h1>{{ customer.name }}，好久不见</h1>
<p>送您 {{ offer.value|money }} 优惠券，满{{ offer.min_spend|money(0) }}可用，券码 <b>{{ offer.code }}</b>。</p>
<p><a href="https://shop.example.com/new?utm=email&amp;c={{ campaign.name }}">看看新品</a></p>
<p><a href="{{ unsubscribe_url }}">退订</a></p>
</body></html>
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        base_dir=str(tmp_path), channels={"email": {"outbox": "mail/out", "from": "好店 <shop@example.com>"}}
    )


@pytest.fixture
def channel(settings: Settings) -> EmailChannel:
    return EmailChannel(settings.channels["email"], settings)


@pytest.fixture
def templates(tmp_path: Path) -> TemplateLoader:
    folder = tmp_path / "templates" / "email"
    folder.mkdir(parents=True)
    (folder / "winback.html.j2").write_text(HTML, encoding="utf-8")
    (folder / "winback.txt.j2").write_text("{{ customer.name }}：券码 {{ offer.code }}\n", encoding="utf-8")
    return TemplateLoader([tmp_path / "templates"]).for_campaign(tmp_path / "campaigns" / "winback.yaml")


def compiled(channel: EmailChannel, templates: TemplateLoader, **options) -> CompiledMessage:
    options = {"subject": "{{ customer.name }}，您的 {{ offer.value|money }} 专属优惠", **options}
    return channel.compile(EmailOptions.model_validate(options), templates)


def outgoing(channel: EmailChannel, message: CompiledMessage, key: str, contact="zhang.wei@example.com"):
    rendered = channel.render(message, synthetic_context(True, campaign_name="winback"))
    return OutgoingMessage(delivery_id=7, customer_id="C000042", contact=contact, message=rendered, idempotency_key=key)


def read_eml(path: Path):
    return BytesParser(policy=email.policy.default).parsebytes(path.read_bytes())


def test_render_produces_subject_html_text_and_unsubscribe_headers(channel, templates):
    message = compiled(channel, templates, template="email/winback.html.j2")
    rendered = channel.render(message, synthetic_context(True, campaign_name="winback"))
    assert rendered.parts["subject"] == "张伟，您的 ¥20.00 专属优惠"
    assert "<h1>张伟，好久不见</h1>" in rendered.parts["html"]
    text = rendered.parts["text"]
    assert "张伟，好久不见" in text and "券码 SYN7-Q2KX-8ZD4" in text
    assert "看看新品 (https://shop.example.com/new?utm=email&c=winback)" in text  # links keep their URL
    assert "color: red" not in text and "ignored" not in text
    assert rendered.headers["From"] == "好店 <shop@example.com>"
    assert rendered.headers["List-Unsubscribe"] == "<https://example.com/unsubscribe?token=synthetic>"
    assert rendered.measures["html_bytes"] > 0


def test_send_writes_a_real_mime_file(channel, templates, settings, tmp_path):
    message = compiled(channel, templates, template="email/winback.html.j2", reply_to="care@example.com")
    [result] = list(channel.send([outgoing(channel, message, "run-1:C000042:email")]))
    assert result.status is SendStatus.SENT
    path = tmp_path / "mail" / "out" / result.provider_id
    assert path.suffix == ".eml" and path.is_file()

    raw = path.read_bytes()
    assert "张伟".encode() not in raw.split(b"\n\n", 1)[0]  # headers are RFC 2047 encoded, not raw UTF-8
    parsed = read_eml(path)
    assert parsed["Subject"] == "张伟，您的 ¥20.00 专属优惠"
    assert parsed["From"].addresses[0].display_name == "好店"
    assert parsed["From"].addresses[0].addr_spec == "shop@example.com"
    assert parsed["To"] == "zhang.wei@example.com"
    assert parsed["Reply-To"] == "care@example.com"
    assert parsed["List-Unsubscribe"] == "<https://example.com/unsubscribe?token=synthetic>"
    assert parsedate_to_datetime(parsed["Date"]).tzinfo is not None
    assert parsed["Message-ID"].endswith("@example.com>")
    assert parsed.get_content_type() == "multipart/alternative"
    plain, html = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert [part.get_content_type() for part in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert plain.get_content_charset() == html.get_content_charset() == "utf-8"
    assert "券码 SYN7-Q2KX-8ZD4" in plain.get_content()
    assert "<h1>张伟，好久不见</h1>" in html.get_content()
    assert not list(path.parent.glob(".*.tmp"))  # the temp file was renamed, not left behind


def test_text_template_replaces_the_derived_text_part(channel, templates, tmp_path):
    message = compiled(channel, templates, template="email/winback.html.j2", text_template="email/winback.txt.j2")
    [result] = list(channel.send([outgoing(channel, message, "k1")]))
    parsed = read_eml(tmp_path / "mail" / "out" / result.provider_id)
    assert parsed.get_body(("plain",)).get_content() == "张伟：券码 SYN7-Q2KX-8ZD4\n"


def test_text_only_email_is_a_single_plain_part(channel, templates, tmp_path):
    message = compiled(channel, templates, text="{{ customer.name }}，您好")
    [result] = list(channel.send([outgoing(channel, message, "k-text")]))
    parsed = read_eml(tmp_path / "mail" / "out" / result.provider_id)
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content().strip() == "张伟，您好"


def test_resending_the_same_delivery_overwrites_its_file(channel, templates, tmp_path):
    message = compiled(channel, templates, html="<p>{{ customer.name }}</p>")
    key = "run-1/C000042/email"  # a key with characters that cannot be in a file name
    first = list(channel.send([outgoing(channel, message, key)]))
    again = list(channel.send([outgoing(channel, message, key), outgoing(channel, message, "run-1:C000043:email")]))
    assert first[0].provider_id == again[0].provider_id
    assert "/" not in first[0].provider_id
    assert len(list((tmp_path / "mail" / "out").iterdir())) == 2
    assert (
        read_eml(tmp_path / "mail" / "out" / first[0].provider_id)["Message-ID"]
        == read_eml(tmp_path / "mail" / "out" / again[0].provider_id)["Message-ID"]
    )


def test_a_write_failure_is_transient_for_that_message_only(channel, templates, tmp_path):
    message = compiled(channel, templates, html="<p>hi</p>")
    blocked = tmp_path / "mail" / "out" / "blocked.eml"
    blocked.mkdir(parents=True)  # a directory where the file should go: os.replace fails
    results = list(channel.send([outgoing(channel, message, "ok-1"), outgoing(channel, message, "blocked")]))
    assert [r.status for r in results] == [SendStatus.SENT, SendStatus.TRANSIENT]
    assert "blocked.eml" in results[1].error
    assert not list(blocked.parent.glob(".*.tmp"))


def test_default_outbox_and_sender(tmp_path, templates):
    settings = Settings(base_dir=str(tmp_path))
    channel = EmailChannel({}, settings)
    message = channel.compile(EmailOptions.model_validate({"subject": "Hi", "html": "<p>x</p>"}), templates)
    [result] = list(channel.send([outgoing(channel, message, "k")]))
    parsed = read_eml(tmp_path / "outbox" / "email" / result.provider_id)
    assert parsed["From"] == "Shop <noreply@example.com>"


def test_html_is_autoescaped_and_subject_is_one_line(channel, templates):
    message = compiled(channel, templates, subject="{{ customer.name }}\n新品", html="<p>{{ customer.name }}</p>")
    context = synthetic_context(False)
    context["customer"]["name"] = "<script>x</script>"
    rendered = channel.render(message, context)
    assert rendered.parts["html"] == "<p>&lt;script&gt;x&lt;/script&gt;</p>"
    assert rendered.parts["subject"] == "<script>x</script> 新品"


def test_template_mistakes_surface_with_file_and_line(channel, templates, tmp_path):
    with pytest.raises(InputError, match="not found"):
        compiled(channel, templates, template="email/missing.html.j2")
    message = compiled(channel, templates, subject="{{ customer.name }}", template="email/winback.html.j2")
    with pytest.raises(TemplateRenderError) as caught:
        channel.render(message, synthetic_context(False))  # the HTML template uses the offer
    assert caught.value.file == str(tmp_path / "templates" / "email" / "winback.html.j2")
    assert caught.value.line == 3


def test_options_validation(channel, templates):
    with pytest.raises(ValidationError, match="subject"):
        EmailOptions.model_validate({"template": "email/winback.html.j2"})
    with pytest.raises(ValidationError, match="not both"):
        EmailOptions.model_validate({"subject": "s", "template": "a.html", "html": "<p/>"})
    with pytest.raises(ValidationError, match="needs a body"):
        EmailOptions.model_validate({"subject": "s"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        EmailOptions.model_validate({"subject": "s", "text": "t", "bcc": "x@example.com"})
    assert EmailOptions.model_validate({"subject": "s", "text": "t", "from": "a@example.com"}).from_ == "a@example.com"
    with pytest.raises(InputError, match="not a valid address") as caught:
        compiled(channel, templates, text="t", **{"from": "Shop <not-an-address>"})
    assert caught.value.file.endswith("winback.yaml")


def test_validate_contact(channel):
    assert channel.validate_contact(" Zhang.Wei@Example.COM ") == "Zhang.Wei@example.com"
    assert channel.validate_contact("not-an-email") is None
    assert channel.validate_contact("a@b") is None
    assert channel.contact_of({"email": ""}) is None
    assert channel.contact_of({"email": "li@example.com"}) == "li@example.com"


def test_html_to_text():
    html = (
        "<div>Hello&nbsp;<b>李</b> &amp; co</div><ul><li>one</li><li>two</li></ul>"
        '<p><a href="https://x.example/a">https://x.example/a</a> <a href="#top">top</a></p>'
        "<script>alert(1)</script><table><tr><td>a</td><td>b</td></tr></table>"
        '<p><a href="https://x.example/b"><img src="i.png" alt="Shop now"></a></p>'
    )
    assert html_to_text(html) == (
        "Hello 李 & co\n\n- one\n- two\n\nhttps://x.example/a top\n\na b\n\nShop now (https://x.example/b)\n"
    )


def test_email_is_a_builtin_plugin():
    infos = describe(build_manager())
    [email_channel] = [info for info in infos if info.kind == "channel" and info.name == "email"]
    assert email_channel.source == "orchestrator_plugins.email (built-in)"
    [plugin] = [info for info in infos if info.name == "orchestrator_plugins.email"]
    assert plugin.kind == "plugin" and "register_channels" in plugin.hooks
