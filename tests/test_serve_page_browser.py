"""The unsubscribe page in a real headless Chromium (the set-up of the HTML report tests), served by a real
uvicorn server: it loads nothing but itself, draws its Chinese with a CJK font, and its button unsubscribes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from orchestrator.config import Settings
from orchestrator.db.models import Suppression
from orchestrator.unsubscribe import sign
from tests import dataset
from tests.browser import Visit, browser  # noqa: F401  (browser is a fixture)
from tests.webserver import running

KEY = ("test-signing-key-" + "0123456789" * 3).encode()
CJK_FONT_WORDS = ("CJK", "Source Han", "PingFang", "YaHei", "WenQuanYi")


def open_page(context, url: str) -> Visit:
    page = context.new_page()
    result = Visit(page, url)
    page.on("console", lambda message: result.console.append((message.type, message.text)))
    page.on("pageerror", lambda error: result.errors.append(str(error)))
    page.on("request", lambda request: result.requests.append(request.url))
    page.goto(url, wait_until="load")
    return result


def drawn_with_cjk_font(visit: Visit, text: str) -> None:
    fonts = visit.platform_fonts_of_text(text)
    assert any(any(w in f["familyName"] for w in CJK_FONT_WORDS) and f["glyphCount"] > 0 for f in fonts), fonts


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_unsubscribe_page_renders_chinese_and_its_button_works(browser, engine: Engine, tmp_path: Path):  # noqa: F811
    dataset.load(engine)
    settings = Settings(base_dir=str(tmp_path), templates=[])
    with running(settings, engine) as base:
        url = f"{base}/u/{sign(KEY, 'C01', 'email')}"
        visit = open_page(browser, url)
        assert visit.console_errors == []
        assert visit.requests == [url]  # nothing fetched but the page
        drawn_with_cjk_font(visit, "确认退订邮件？")
        visit.page.screenshot(path=str(tmp_path / "unsubscribe.png"), full_page=True)
        with engine.connect() as conn:
            assert conn.execute(select(Suppression.id)).all() == []
        with visit.page.expect_navigation():
            visit.page.click("#confirm")
        assert visit.page.text_content("#done").strip() == "您已退订邮件。"
        drawn_with_cjk_font(visit, "您已退订邮件。")
        assert visit.console_errors == []
        visit.page.close()
    with engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(select(Suppression.channel, Suppression.reason))] == [
            ("email", "unsubscribed")
        ]
