"""A real headless Chromium (Debian's ``chromium``) driven by Playwright, for the HTML pages.

Chromium is a required service under ``ORCHESTRATOR_REQUIRE_SERVICES=1`` (``.ci/run`` installs it); elsewhere a
machine without it skips these tests. A visit records what a page did: console messages, script errors and every
request it made, so a test can say "no errors, nothing fetched".
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright

from tests.conftest import service_unavailable

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1100, "height": 900}


def chromium_executable() -> str:
    """The Chromium to drive: ``ORCHESTRATOR_TEST_CHROMIUM`` or ``chromium`` on the PATH."""
    configured = os.environ.get("ORCHESTRATOR_TEST_CHROMIUM")
    found = configured or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not Path(found).exists():
        service_unavailable("Chromium is not installed (apt-get install chromium)")
    return str(found)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[BrowserContext]:
    """One headless Chromium per test module, with a profile of its own in a temporary folder."""
    executable = chromium_executable()
    with sync_playwright() as playwright:
        try:
            context = playwright.chromium.launch_persistent_context(
                user_data_dir=tmp_path_factory.mktemp("chromium-profile"),
                executable_path=executable,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport=VIEWPORT,
            )
        except Exception as exc:  # a browser that does not start is a missing service, not a failed assertion
            service_unavailable(f"Chromium at {executable} does not start: {exc}")
        try:
            yield context
        finally:
            context.close()


@dataclass
class Visit:
    """What one page load did, and the page to look at."""

    page: Page
    url: str
    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    @property
    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind in ("error", "warning")] + self.errors

    def platform_fonts_of_text(self, text: str) -> list[dict[str, Any]]:
        """The fonts Chromium drew the first element whose whole text is ``text`` with (innermost first)."""
        found = self.page.evaluate(
            """(text) => {
                const all = [...document.querySelectorAll('body *')].reverse();
                const node = all.find(n => n.textContent.trim() === text);
                if (node) node.setAttribute('data-font-probe', '');
                return !!node;
            }""",
            text,
        )
        assert found, f"no element holds exactly {text!r}"
        return self.platform_fonts("[data-font-probe]")

    def platform_fonts(self, selector: str) -> list[dict[str, Any]]:
        """The fonts Chromium actually drew the text of the first element matching ``selector`` with (DevTools'
        CSS.getPlatformFontsForNode: the font family and how many glyphs came from it)."""
        session = self.page.context.new_cdp_session(self.page)
        try:
            session.send("DOM.enable")
            session.send("CSS.enable")
            root = session.send("DOM.getDocument", {"depth": -1, "pierce": True})["root"]["nodeId"]
            node = session.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
            assert node, f"nothing matches {selector}"
            return session.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
        finally:
            session.detach()


def visit(context: BrowserContext, path: Path) -> Visit:
    """Open the file in a new tab and wait until it has loaded; everything it does is recorded on the visit."""
    page = context.new_page()
    url = path.resolve().as_uri()
    result = Visit(page, url)
    page.on("console", lambda message: result.console.append((message.type, message.text)))
    page.on("pageerror", lambda error: result.errors.append(str(error)))
    page.on("request", lambda request: result.requests.append(request.url))
    page.goto(url, wait_until="load")
    page.wait_for_load_state("networkidle")
    return result
