"""The email channel's production features: CSS inlined once per template version with the Jinja syntax intact,
the derived plain-text part, preheader, List-Unsubscribe headers, compile-time lint, the lean MIME builder read
back by the standard library's parser and received intact by aiosmtpd, and bounces that suppress the address.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import hashlib
import json
import re
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from orchestrator_plugins.email import EmailChannel, EmailOptions
from orchestrator_plugins.email import inline as email_inline
from orchestrator_plugins.email.mime import build_message

from orchestrator.api import OutgoingMessage, RenderedMessage, SendStatus
from orchestrator.config import Settings
from orchestrator.errors import InputError
from orchestrator.rendering import TemplateLoader, TemplateRenderError, synthetic_context
from orchestrator.timeutil import zone
from tests.test_email_smtp import Recorder, make_channel, smtp_server

LAYOUT = """<!DOCTYPE html>
<html><head><meta charset="utf-8">
<style>
  .box { color: #b71c1c; padding: 8px; }
  a.btn { background: #000000; }
  td { font-size: 14px; }
</style></head>
<body>
{% block content %}{% endblock %}
<p class="box"><a href="{{ unsubscribe_url }}">退订</a></p>
</body></html>
"""

CHILD = """{# a comment, kept through inlining #}
{% extends "email/layout.html.j2" %}
{% block content %}
<p class="box">{{ customer.name }}，您好</p>
<p><a class="btn" href="https://shop.example.com/c/{{ customer.customer_id }}?c={{ campaign.name|urlencode }}"
  >店铺</a></p>
{% if offer %}<p class="box">券码 {{ offer.code }}</p>{% else %}<p>无券</p>{% endif %}
<table>
{% for tag in customer.tags %}
<tr><td class="box" data-tag="{{ tag }}">#{{ loop.index }} {{ tag }}</td></tr>
{% endfor %}
</table>
{% endblock %}
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        base_dir=str(tmp_path),
        channels={
            "email": {
                "outbox": "out",
                "from": "好店 <shop@example.com>",
                "unsubscribe_mailto": "unsubscribe@example.com",
            }
        },
    )


@pytest.fixture
def channel(settings: Settings) -> EmailChannel:
    return EmailChannel(settings.channels["email"], settings)


@pytest.fixture
def templates(tmp_path: Path) -> TemplateLoader:
    folder = tmp_path / "templates" / "email"
    folder.mkdir(parents=True)
    (folder / "layout.html.j2").write_text(LAYOUT, encoding="utf-8")
    (folder / "child.html.j2").write_text(CHILD, encoding="utf-8")
    return TemplateLoader([tmp_path / "templates"]).for_campaign(tmp_path / "campaigns" / "c.yaml")


def compile_email(channel, templates, **options):
    return channel.compile(EmailOptions.model_validate({"subject": "{{ customer.name }}，新品", **options}), templates)


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


# --- inlining ---------------------------------------------------------------------------------------------------


def test_styles_are_inlined_and_every_kind_of_placeholder_survives(channel, templates):
    message = compile_email(channel, templates, template="email/child.html.j2")
    context = synthetic_context(True, campaign_name="春季 上新")
    html = channel.render(message, context).parts["html"]

    assert "<style" not in html and "{{" not in html and "{%" not in html and "%20" not in html.split("?c=")[0]
    # a placeholder in an attribute (premailer would URL-encode it), rendered per customer
    assert 'href="https://shop.example.com/c/C000042?c=%E6%98%A5%E5%AD%A3%20%E4%B8%8A%E6%96%B0"' in html
    assert re.search(r'<p class="box" style="color:#b71c1c; padding:8px">张伟，您好</p>', html)  # text + style
    assert re.search(r'<a class="btn" href="[^"]+" style="background:#000">店铺</a>', html)
    assert 'style="color:#b71c1c; padding:8px">券码 SYN7-Q2KX-8ZD4</p>' in html  # inside {% if %}
    assert "无券" not in html
    rows = re.findall(r'<td class="box" data-tag="(\w+)" style="[^"]*font-size:14px[^"]*">#(\d) (\w+)</td>', html)
    assert rows == [("newsletter", "1", "newsletter"), ("vip", "2", "vip")]  # inside {% for %}
    assert '<a href="https://example.com/unsubscribe?token=synthetic">退订</a>' in html  # the layout's own

    without_offer = channel.render(message, {**synthetic_context(False), "offer": None}).parts["html"]
    assert "无券" in without_offer and "券码" not in without_offer  # the {% else %} branch is still there


def test_premailer_runs_once_per_template_version(channel, templates, tmp_path):
    layout = tmp_path / "templates" / "email" / "layout.html.j2"
    layout.write_text(LAYOUT.replace("<body>", f"<body><!-- {uuid.uuid4()} -->"), encoding="utf-8")  # a new version
    before = email_inline.cache_info()
    first = compile_email(channel, templates, template="email/child.html.j2")
    second = compile_email(channel, templates, template="email/child.html.j2")  # another step, same template
    context = synthetic_context(True)
    for i in range(50):
        context["customer"] = {**context["customer"], "name": f"客户{i}"}
        assert f"客户{i}，您好" in channel.render(first if i % 2 else second, context).parts["html"]
    after = email_inline.cache_info()
    assert after["misses"] - before["misses"] == 1  # premailer ran once for 2 compiles and 50 renders
    assert after["hits"] - before["hits"] == 1

    # a changed layout is a new version of the child: inlined again, with the new rule
    layout.write_text(layout.read_text(encoding="utf-8").replace("#000000", "#123456"), encoding="utf-8")
    third = compile_email(channel, templates, template="email/child.html.j2")
    assert email_inline.cache_info()["misses"] - after["misses"] == 1
    assert "background:#123456" in channel.render(third, context).parts["html"]


def test_render_errors_still_name_the_template_file_and_line(channel, templates, tmp_path):
    message = compile_email(channel, templates, template="email/child.html.j2")
    with pytest.raises(TemplateRenderError) as caught:
        channel.render(message, {**synthetic_context(True), "customer": {"name": "x"}})  # no customer_id
    assert caught.value.file == str(tmp_path / "templates" / "email" / "child.html.j2")
    assert caught.value.line == 5
    assert "customer_id" in str(caught.value)

    broken = tmp_path / "templates" / "email" / "broken.html.j2"
    broken.write_text("<style>p{color:red}</style>\n<p>{{ customer.name }</p>\n", encoding="utf-8")
    with pytest.raises(InputError) as syntax:
        compile_email(channel, templates, template="email/broken.html.j2")
    assert syntax.value.file == str(broken) and syntax.value.line == 2


def test_a_template_whose_tags_premailer_would_lose_is_sent_uninlined_with_a_warning(channel, templates, tmp_path):
    # Jinja inside <style>: premailer parses the CSS and drops the tokens, so inlining would break the template
    source = "<html><head><style>p { color: red }\n{% if offer %}.x { color: blue }{% endif %}</style></head>"
    source += '<body><p class="x">{{ customer.name }}</p></body></html>'
    path = tmp_path / "templates" / "email" / "odd.html.j2"
    path.write_text(source, encoding="utf-8")
    message = compile_email(channel, templates, template="email/odd.html.j2")
    assert len(message.warnings) == 1 and message.warnings[0].startswith(f"{path}: CSS not inlined")
    html = channel.render(message, synthetic_context(True)).parts["html"]
    assert html == source.replace("{% if offer %}", "").replace("{% endif %}", "").replace(
        "{{ customer.name }}", "张伟"
    )


# --- text, preheader, headers -----------------------------------------------------------------------------------


def test_text_part_preheader_and_unsubscribe_headers(channel, templates):
    message = compile_email(
        channel, templates, template="email/child.html.j2", preheader="{{ offer.description }}，{{ customer.name }}专享"
    )
    rendered = channel.render(message, synthetic_context(True, campaign_name="spring"))
    html, text = rendered.parts["html"], rendered.parts["text"]
    body_start = html.index("<body")
    hidden = re.search(r'<body[^>]*>(<div style="display:none[^"]*">([^<]*)</div>)', html)
    assert hidden and hidden.start(1) == html.index(">", body_start) + 1  # first thing in the body
    assert hidden.group(2) == "满100减20，张伟专享"
    assert "专享" not in text  # hidden preview text is not part of the plain-text alternative
    assert "张伟，您好" in text and "券码 SYN7-Q2KX-8ZD4" in text and "#2 vip" in text
    assert "店铺 (https://shop.example.com/c/C000042?c=spring)" in text  # links keep their URL
    assert "退订 (https://example.com/unsubscribe?token=synthetic)" in text
    assert "<" not in text and "color" not in text
    assert rendered.headers["List-Unsubscribe"] == (
        "<https://example.com/unsubscribe?token=synthetic>, "
        "<mailto:unsubscribe@example.com?subject=unsubscribe%20synthetic>"
    )
    assert rendered.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    plain_http = channel.render(message, {**synthetic_context(True), "unsubscribe_url": "http://x.example/u"})
    assert "List-Unsubscribe-Post" not in plain_http.headers  # RFC 8058 one-click needs https
    with pytest.raises(InputError, match="unsubscribe_mailto"):
        EmailChannel({"unsubscribe_mailto": "nobody"}, Settings())


def test_lint_warns_with_file_and_line_without_failing(channel, templates, tmp_path):
    source = (
        '<html><head><link rel="stylesheet" href="https://cdn.example.com/m.css">\n'
        "<style>\n.wide { width: 720px; }\n</style></head><body>\n"
        '<table width="800"><tr><td style="min-width: 660px">\n'
        '<img src="{{ customer.name }}.png"><img src="logo.png" alt="Logo"></td></tr></table>\n'
        '<table width="600"></table></body></html>\n'
    )
    path = tmp_path / "templates" / "email" / "lint.html.j2"
    path.write_text(source, encoding="utf-8")
    message = compile_email(channel, templates, template="email/lint.html.j2")
    warnings = [w for w in message.warnings if "CSS not inlined" not in w]
    assert warnings == [
        f"{path}:1: stylesheet link 'https://cdn.example.com/m.css' removed: the server never fetches "
        "stylesheets and mail clients ignore them; put the CSS in <style>",
        f"{path}:3: width: 720px in <style> is wider than 650px: keep e-mail layouts 600-650px wide",
        f'{path}:5: <table width="800"> is wider than 650px: keep e-mail layouts 600-650px wide',
        f"{path}:5: <td style=…min-width: 660px…> is wider than 650px: keep e-mail layouts 600-650px wide",
        f"{path}:6: <img src='{{{{ customer.name }}}}.png'> has no alt text (shown when images are off)",
    ]
    assert "张伟.png" in channel.render(message, synthetic_context(True)).parts["html"]  # still compiles and renders
    assert compile_email(channel, templates, template="email/child.html.j2").warnings == ()


# --- MIME -------------------------------------------------------------------------------------------------------


def build(rendered: RenderedMessage, key="run-7:C000042:email", contact="zhang.wei@example.com") -> bytes:
    return build_message(
        sender=rendered.headers["From"],
        recipient=contact,
        subject=rendered.parts["subject"],
        text=rendered.parts["text"],
        html=rendered.parts.get("html"),
        headers=rendered.headers,
        idempotency_key=key,
        now=datetime(2026, 11, 1, 10, 30, tzinfo=zone("Asia/Shanghai")),
    )[1]


def test_the_standard_parser_reads_every_header_and_part_back_exactly(channel, templates):
    long_subject = "{{ customer.name }}，" + "春季新品上市，全场满减，" * 6 + "Spring sale " * 8
    message = compile_email(
        channel,
        templates,
        template="email/child.html.j2",
        subject=long_subject,
        reply_to="客服 小王 <care@example.com>",
    )
    rendered = channel.render(message, synthetic_context(True))
    data = build(rendered)

    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert data.split(b"\r\n\r\n")[0].isascii()  # headers RFC 2047-encoded
    parsed = parse(data)
    assert parsed["Subject"] == rendered.parts["subject"] and len(rendered.parts["subject"]) > 150
    assert parsed["From"].addresses[0].display_name == "好店"
    assert parsed["From"].addresses[0].addr_spec == "shop@example.com"
    assert parsed["Reply-To"].addresses[0].display_name == "客服 小王"
    assert parsed["To"] == "zhang.wei@example.com"
    assert parsed["List-Unsubscribe"] == rendered.headers["List-Unsubscribe"]
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Date"].datetime == datetime(2026, 11, 1, 10, 30, tzinfo=zone("Asia/Shanghai"))
    assert parsed["MIME-Version"] == "1.0"
    assert re.fullmatch(r"<[0-9a-f]{32}@example\.com>", parsed["Message-ID"])
    assert parse(build(rendered))["Message-ID"] == parsed["Message-ID"]  # a re-send: the same Message-ID
    assert parse(build(rendered, key="other"))["Message-ID"] != parsed["Message-ID"]
    assert parsed.get_content_type() == "multipart/alternative"
    plain, html = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert plain.get_content() == rendered.parts["text"]
    assert html.get_content() == rendered.parts["html"].rstrip("\n") + "\n"
    assert not parsed.defects and not plain.defects and not html.defects

    ascii_text = build(RenderedMessage("email", {"subject": "Hi", "text": "Hello\r\nthere"}, {"From": "a@example.com"}))
    single = parse(ascii_text)
    assert single.get_content_type() == "text/plain" and single["Content-Transfer-Encoding"] == "7bit"
    assert single.get_content() == "Hello\r\nthere\r\n"  # 7bit: the parser keeps the wire's CRLF


def test_a_header_injection_or_broken_address_is_that_messages_permanent_result(channel, templates, tmp_path):
    message = compile_email(channel, templates, html="<p>{{ customer.name }}</p>")
    good = channel.render(message, synthetic_context(True))
    bad = dataclasses.replace(good, headers={**good.headers, "Reply-To": "x@example.com\r\nBcc: all@example.com"})
    batch = [
        OutgoingMessage(delivery_id=i, customer_id="C", contact="c@example.com", message=m, idempotency_key=f"k{i}")
        for i, m in enumerate([bad, good])
    ]
    results = list(channel.send(batch))
    assert [r.status for r in results] == [SendStatus.PERMANENT, SendStatus.SENT]
    assert "line break" in results[0].error
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["k1.eml"]


def test_a_rendered_message_persisted_as_json_sends_the_same_message(channel, templates, tmp_path):
    message = compile_email(channel, templates, template="email/child.html.j2", preheader="预览")
    rendered = channel.render(message, synthetic_context(True))
    restored = RenderedMessage(**json.loads(json.dumps(dataclasses.asdict(rendered))))
    keys = ["direct", "restored"]
    sent = channel.send(
        [
            OutgoingMessage(delivery_id=1, customer_id="C", contact="c@example.com", message=m, idempotency_key=k)
            for m, k in zip([rendered, restored], keys, strict=True)
        ]
    )
    assert [r.provider_id for r in sent] == ["direct.eml", "restored.eml"]
    a, b = (parse((tmp_path / "out" / f"{k}.eml").read_bytes()) for k in keys)
    for name in ("Subject", "From", "List-Unsubscribe", "List-Unsubscribe-Post"):
        assert a[name] == b[name]
    assert a.get_body(("html",)).get_content() == b.get_body(("html",)).get_content()


# --- SMTP -------------------------------------------------------------------------------------------------------


def test_aiosmtpd_receives_the_message_intact_and_user_unknown_is_a_bounce(tmp_path, templates):
    refuse = {"c2@example.com": "550 5.1.1 <c2@example.com>: user unknown", "c3@example.com": "550 5.7.1 Spam"}
    handler = Recorder(refuse=refuse)
    with smtp_server(handler) as server:
        channel = make_channel(tmp_path, server.port)
        message = compile_email(channel, templates, template="email/child.html.j2", preheader="预览文字")
        rendered = channel.render(message, synthetic_context(True))
        batch = [
            OutgoingMessage(i, f"C{i}", f"c{i}@example.com", rendered, idempotency_key=f"k{i}") for i in range(1, 5)
        ]
        results = list(channel.send(batch))
        channel.close()

    assert [r.status for r in results] == ["sent", "permanent", "permanent", "sent"]
    assert results[1].suppress == "bounced" and results[1].error == "RCPT TO: 550 5.1.1 <c2@example.com>: user unknown"
    assert results[2].suppress is None  # a policy refusal says nothing about the mailbox
    assert [m.rcpt_tos for m in handler.messages] == [["c1@example.com"], ["c4@example.com"]]  # none re-sent
    for received, key in zip(handler.messages, ["k1", "k4"], strict=True):
        parsed = received.parsed
        assert parsed["Subject"] == "张伟，新品" and parsed["From"].addresses[0].display_name == "好店"
        assert parsed.get_body(("html",)).get_content() == rendered.parts["html"].rstrip("\n") + "\n"
        assert parsed.get_body(("plain",)).get_content() == rendered.parts["text"]
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        assert parsed["Message-ID"] == f"<{digest}@example.com>"
        assert b"\n" not in received.content.replace(b"\r\n", b"")  # CRLF line endings arrived unchanged


def test_includes_and_super_are_flattened_so_the_layout_styles_reach_them(channel, templates, tmp_path):
    folder = tmp_path / "templates" / "email"
    (folder / "base.html.j2").write_text(
        "<html><head><style>.note { color: #00aa00; } h1 { font-size: 30px; }</style></head><body>"
        "<h1>{% block title %}默认标题{% endblock %}</h1>{% block body %}{% endblock %}</body></html>",
        encoding="utf-8",
    )
    (folder / "note.html.j2").write_text('<p class="note">{{ customer.city }}</p>', encoding="utf-8")
    (folder / "page.html.j2").write_text(
        '{% extends "email/base.html.j2" %}{% block title %}{{ super() }} · {{ customer.name }}{% endblock %}'
        '{% block body %}{% include "email/note.html.j2" %}{% endblock %}',
        encoding="utf-8",
    )
    message = compile_email(channel, templates, template="email/page.html.j2")
    html = channel.render(message, synthetic_context(True)).parts["html"]
    assert '<h1 style="font-size:30px">默认标题 · 张伟</h1>' in html
    assert '<p class="note" style="color:#0a0">杭州</p>' in html  # the included partial got the layout's rule
    assert message.warnings == ()

    (folder / "dynamic.html.j2").write_text(
        '{% extends customer.layout|default("email/base.html.j2") %}{% block body %}x{% endblock %}', encoding="utf-8"
    )
    dynamic = compile_email(channel, templates, template="email/dynamic.html.j2")  # not flattened: as written
    assert [w.split(": ", 1)[1][:15] for w in dynamic.warnings] == ["CSS not inlined"]
    assert "<h1>默认标题</h1>x" in channel.render(dynamic, synthetic_context(True)).parts["html"]
