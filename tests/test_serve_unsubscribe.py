"""The unsubscribe endpoints of ``orchestrator serve`` through a real uvicorn server and httpx, on SQLite and
PostgreSQL: the page (GET changes nothing), its confirm and channel-choice POSTs, the RFC 8058 one-click POST
from the link a real run put in the e-mail's List-Unsubscribe header, and tokens that are forged, truncated,
tampered with, expired or replayed (docs/guarantees.md: never to the opted-out)."""

from __future__ import annotations

import email
import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import Engine, select

from orchestrator.config import load_settings
from orchestrator.db.models import Customer, Delivery, Suppression
from orchestrator.timeutil import utcnow
from orchestrator.unsubscribe import sign
from tests import dataset
from tests.clitools import Cli
from tests.dataset import AT
from tests.webserver import running

KEY = ("test-signing-key-" + "0123456789" * 3).encode()  # conftest's ORCHESTRATOR_SECRET_KEY
CAMPAIGN = """\
name: unsubscribe-serve
segment: {frequency: {gte: 1}}
message:
  email:
    subject: "Hi {{ customer.name }}"
    text: "Hello {{ customer.name }}, bye: {{ unsubscribe_url }}"
"""


class Shop:
    def __init__(self, engine: Engine, cli: Cli, config: Path, campaign: Path, outbox: Path):
        self.engine, self.cli, self.config, self.campaign, self.outbox = engine, cli, config, campaign, outbox

    def suppressions(self) -> list[tuple[str, str | None, str, str]]:
        query = (
            select(Customer.customer_id, Suppression.channel, Suppression.reason, Suppression.source)
            .join(Customer, Customer.id == Suppression.customer_pk)
            .order_by(Suppression.id)
        )
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]

    def deliveries_of(self, customer_id: str) -> list[tuple[str, str | None]]:
        query = (
            select(Delivery.state, Delivery.reason)
            .join(Customer, Customer.id == Delivery.customer_pk)
            .where(Customer.customer_id == customer_id)
        )
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]

    def run(self, at=AT) -> None:
        result = self.cli("run", str(self.campaign), "--at", at.isoformat())
        assert result.exit_code == 0, result.output


@pytest.fixture
def shop(engine: Engine, db_url: str, tmp_path: Path, monkeypatch) -> Shop:
    dataset.load(engine)
    outbox = tmp_path / "outbox"
    config = tmp_path / "orchestrator.yaml"
    config.write_text(
        "timezone: Asia/Shanghai\ntemplates: []\nchannels:\n"
        f"  email:\n    from: Shop <shop@example.com>\n    outbox: {outbox}\n"
        "serve:\n  public_url: https://shop.example.com\n"
        "  limits: {per_ip: {per_second: 1000, burst: 1000}}\n",
        encoding="utf-8",
    )
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    return Shop(engine, Cli(db_url, config=str(config)), config, campaign, outbox)


@pytest.fixture
def base(shop: Shop):
    with running(load_settings(shop.config), shop.engine) as url:
        yield url


def test_the_page_asks_and_changes_nothing_then_confirm_applies_and_the_next_run_skips(shop: Shop, base: str):
    token = sign(KEY, "C01", "email")
    page = httpx.get(f"{base}/u/{token}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "确认退订邮件" in page.text and "Unsubscribe from e-mail" in page.text
    assert "<script" not in page.text
    assert shop.suppressions() == []  # a link scanner following the link unsubscribes nobody

    done = httpx.post(f"{base}/u/{token}", data={})
    assert done.status_code == 200 and "您已退订邮件" in done.text
    assert shop.suppressions() == [("C01", "email", "unsubscribed", "unsubscribe_link")]

    shop.run()
    assert shop.deliveries_of("C01") == [("skipped", "suppressed")]
    assert shop.deliveries_of("C03") == [("sent", None)]


def test_one_click_from_the_list_unsubscribe_header_of_a_real_run(shop: Shop, base: str):
    shop.run()
    files = sorted(shop.outbox.rglob("*.eml"))
    assert files, "the run wrote no e-mail"
    links = {}
    for path in files:
        message = email.message_from_bytes(path.read_bytes())
        header = " ".join(str(message["List-Unsubscribe"]).split())
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        [link] = re.findall(r"<(https://shop\.example\.com/u/[^>]+)>", header)
        links[str(message["To"])] = link
    link = next(v for k, v in links.items() if "c03@" in k.lower())
    answer = httpx.post(
        base + urlsplit(link).path,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert answer.status_code == 200, answer.text
    assert shop.suppressions() == [("C03", "email", "unsubscribed", "unsubscribe_link")]
    # the mailbox provider tries again: harmless
    again = httpx.post(base + urlsplit(link).path, data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200 and len(shop.suppressions()) == 1

    shop.run(AT + timedelta(days=1))
    assert ("skipped", "suppressed") in shop.deliveries_of("C03")


def test_one_click_as_multipart_form_data(shop: Shop, base: str):
    token = sign(KEY, "C06", "email")
    answer = httpx.post(f"{base}/u/{token}", files={"List-Unsubscribe": (None, "One-Click")})
    assert answer.status_code == 200, answer.text
    assert shop.suppressions() == [("C06", "email", "unsubscribed", "unsubscribe_link")]


def test_choosing_channels_and_all(shop: Shop, base: str):
    token = sign(KEY, "C01", "email")
    page = httpx.get(f"{base}/u/{token}").text
    assert 'value="sms"' in page and 'value="all"' in page
    assert httpx.post(f"{base}/u/{token}", data={"channel": ["email", "sms"]}).status_code == 200
    assert shop.suppressions() == [
        ("C01", "email", "unsubscribed", "unsubscribe_link"),
        ("C01", "sms", "unsubscribed", "unsubscribe_link"),
    ]
    done = httpx.post(f"{base}/u/{sign(KEY, 'C02', 'sms')}", data={"channel": "all"})
    assert done.status_code == 200 and "全部渠道" in done.text
    assert shop.suppressions()[-1] == ("C02", None, "unsubscribed", "unsubscribe_link")
    unknown = httpx.post(f"{base}/u/{token}", data={"channel": "pigeon"})
    assert unknown.status_code == 400 and len(shop.suppressions()) == 3


def test_every_error_on_the_page_is_plain_text(shop: Shop, base: str):
    token = sign(KEY, "C01", "email")
    for answer, status in (
        (httpx.post(f"{base}/u/{token}", data={"channel": "bogus"}), 400),
        (httpx.post(f"{base}/u/{token}", content=b"channel=%zz", headers={"Content-Type": "x"}), 400),
        (httpx.post(f"{base}/u/{token}", content=b"x" * (70 * 1024)), 413),
        (httpx.put(f"{base}/u/{token}"), 405),
    ):
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"].startswith("text/plain"), answer.text
        assert not answer.text.lstrip().startswith("{") and "Traceback" not in answer.text
    assert "unknown channel" in httpx.post(f"{base}/u/{token}", data={"channel": "bogus"}).text
    assert shop.suppressions() == []


def _tampered(token: str) -> str:
    _payload, mac = token.split(".")
    return f"{sign(KEY, 'C02', 'email').split('.')[0]}.{mac}"


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: t[:-3], id="truncated"),
        pytest.param(_tampered, id="payload-swapped"),
        pytest.param(lambda t: sign(b"another-key-" + b"x" * 30, "C01", "email"), id="forged"),
        pytest.param(lambda t: t + "%00", id="junk"),
        pytest.param(lambda t: "a" * 600, id="long"),
    ],
)
def test_bad_tokens_get_400_and_change_nothing(shop: Shop, base: str, mangle):
    bad = mangle(sign(KEY, "C01", "email"))
    for answer in (
        httpx.get(f"{base}/u/{bad}"),
        httpx.post(f"{base}/u/{bad}", data={}),
        httpx.post(f"{base}/u/{bad}", data={"List-Unsubscribe": "One-Click"}),
    ):
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"].startswith("text/plain")
        assert "Traceback" not in answer.text and "退订链接无效" in answer.text
    assert shop.suppressions() == []


def test_expired_and_unknown_member_tokens(shop: Shop, base: str):
    stale = sign(KEY, "C01", "email", issued=utcnow() - timedelta(days=400))
    answer = httpx.post(f"{base}/u/{stale}", data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 400 and "expired" in answer.text
    ghost = sign(KEY, "NOBODY", "email")
    assert httpx.post(f"{base}/u/{ghost}", data={}).status_code == 400
    assert shop.suppressions() == []


def test_a_shop_template_replaces_the_page(shop: Shop, tmp_path: Path):
    (tmp_path / "mine.html").write_text(
        "<p>{{ channel_zh }} / {{ '<b>' }}</p>{% if state == 'done' %}OK{% endif %}", encoding="utf-8"
    )
    shop.config.write_text(shop.config.read_text() + "  unsubscribe_template: mine.html\n", encoding="utf-8")
    with running(load_settings(shop.config), shop.engine) as url:
        page = httpx.get(f"{url}/u/{sign(KEY, 'C01', 'sms')}")
    assert page.status_code == 200 and page.text == "<p>短信 / &lt;b&gt;</p>"


def test_an_explicit_unsubscribe_url_still_wins_over_the_service(shop: Shop):
    shop.config.write_text(
        shop.config.read_text() + "unsubscribe_url: https://www.shop.example.com/leave\n", encoding="utf-8"
    )
    shop.run()
    [path, *_] = sorted(shop.outbox.rglob("*.eml"))
    header = " ".join(str(email.message_from_bytes(path.read_bytes())["List-Unsubscribe"]).split())
    assert "<https://www.shop.example.com/leave?token=" in header and "/u/" not in header
