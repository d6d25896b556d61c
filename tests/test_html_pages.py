"""The HTML report pages, opened in a real headless Chromium: they load without errors, fetch nothing, draw every
chart with marks in it, render Chinese text with a CJK font, escape what users typed, and say so when a section
has nothing to show. Set ``ORCHESTRATOR_TEST_SCREENSHOTS=DIR`` to keep the screenshots (the README's comes from
there)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

from orchestrator.charts import figures, render_report_page, write_analysis_page, write_report_page
from tests.browser import Visit, browser, visit  # noqa: F401  (browser is a fixture)
from tests.clitools import Cli
from tests.report_document import REPORT, report

# What every section of a page holds, seen from inside the browser: its title, whether it drew a chart or said
# it has no data, the chart's size on screen and how many marks (bars, points, lines, cells) are in it.
SECTIONS_SCRIPT = """
() => [...document.querySelectorAll('section')].map(section => {
  const svg = section.querySelector('.chart svg');
  const box = svg ? svg.getBoundingClientRect() : null;
  const marks = svg ? svg.querySelectorAll(
    'g[id^="patch_"] path, g[id^="line2d_"] use, g[id^="line2d_"] path, g[id^="PolyCollection_"] path,'
    + ' g[id^="QuadMesh_"] path, g[id^="LineCollection_"] path').length : 0;
  const empty = section.querySelector('.empty');
  return {
    title: section.querySelector('h2').textContent,
    chart: !!svg, width: box ? box.width : 0, height: box ? box.height : 0, marks,
    empty: empty ? empty.textContent : null,
  };
})
"""

# The on-screen width of the first SVG text element holding this exact string (0 when there is none).
TEXT_WIDTH_SCRIPT = """
(text) => {
  const node = [...document.querySelectorAll('svg text')].find(t => t.textContent.trim() === text);
  return node ? node.getBBox().width : 0;
}
"""

CJK_FONT_WORDS = ("CJK", "Source Han", "PingFang", "YaHei", "WenQuanYi")


def sections(page_visit: Visit) -> list[dict[str, Any]]:
    return page_visit.page.evaluate(SECTIONS_SCRIPT)


def assert_clean_load(page_visit: Visit) -> None:
    """No console errors or warnings, no script errors, and no request but the page itself."""
    assert page_visit.console_errors == []
    assert [url for url in page_visit.requests if url != page_visit.url and not url.startswith("data:")] == []


def assert_charts_drawn(found: list[dict[str, Any]], titles: list[str]) -> None:
    """Each named section holds a chart of real size with marks in it."""
    by_title = {s["title"]: s for s in found}
    for title in titles:
        section = by_title[title]
        assert section["chart"], section
        assert section["width"] > 300 and section["height"] > 80, section
        assert section["marks"] >= 3, section


def assert_drawn_with_cjk_font(page_visit: Visit, text: str) -> None:
    """Chromium drew ``text`` (an element's whole text) with a CJK font, not boxes from a Latin one."""
    fonts = page_visit.platform_fonts_of_text(text)
    cjk = [f for f in fonts if any(word in f["familyName"] for word in CJK_FONT_WORDS) and f["glyphCount"] > 0]
    assert cjk, f"{text!r} is not drawn with a CJK font: {fonts}"


def screenshot(page_visit: Visit, folder: Path, name: str) -> Path:
    path = folder / name
    page_visit.page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    keep = os.environ.get("ORCHESTRATOR_TEST_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


REPORT_CHARTS = [
    "Funnel 漏斗",
    "Daily: treatment against control 每日效果",
    "By step 按步骤",
    "By variant 按版本 (A/B)",
    "By channel 按渠道",
    "Skipped 跳过",
]


# --- the results page ------------------------------------------------------------------------------------------


def test_report_page_in_chromium(browser, tmp_path: Path):  # noqa: F811
    page_file = write_report_page(REPORT, tmp_path / "report.html")
    page_visit = visit(browser, page_file)

    assert_clean_load(page_visit)
    found = sections(page_visit)
    assert [s["title"] for s in found] == REPORT_CHARTS
    assert_charts_drawn(found, REPORT_CHARTS)
    page = page_visit.page
    assert "spring_sale 春季焕新" in page.locator("h1").inner_text()
    assert page.locator(".verdict").inner_text() == REPORT["verdict"]
    # the funnel's three member stages are bars; the money stage is a label, not a bar on the members' axis
    funnel = page.locator("section", has_text="Funnel").locator("svg")
    assert funnel.locator('g[id^="patch_"] path[style*="#5b8fc7"]').count() == 3
    assert funnel.locator("text", has_text="48,000.00").count() == 1
    # one error bar per step, per variant, per channel
    for title, items in (("By step", 2), ("By variant", 2), ("By channel", 2)):
        chart = page.locator("section", has_text=title).locator("svg")
        assert chart.locator('g[id^="line2d_"] use').count() >= items, title
    # the skip reason with none is left out
    skips = page.locator("section", has_text="Skipped").locator("svg")
    assert skips.locator("text", has_text="quiet_hours").count() == 0
    assert skips.locator("text", has_text="no_contact").count() == 1

    # Chinese renders: the text has width and Chromium drew it with a CJK font, in the page and in a chart
    assert page.evaluate(TEXT_WIDTH_SCRIPT, "vip 贵宾") > 20
    assert_drawn_with_cjk_font(page_visit, "By step 按步骤")  # a section title
    assert_drawn_with_cjk_font(page_visit, "vip 贵宾")  # a label in a chart
    screenshot(page_visit, tmp_path, "report.png")


def test_report_page_escapes_what_users_typed(browser, tmp_path: Path):  # noqa: F811
    hostile = "<script>window.hacked = 1</script><img src=https://example.com/x.png> & 满$100减$20"
    document = report(campaign=hostile, verdict=hostile)
    document["by_step"][0]["step"] = hostile
    page_visit = visit(browser, write_report_page(document, tmp_path / "hostile.html"))

    assert_clean_load(page_visit)
    page = page_visit.page
    assert page.locator("script, img").count() == 0
    assert page.evaluate("() => window.hacked") is None
    assert hostile in page.locator("h1").inner_text()
    assert page.locator(".verdict").inner_text() == hostile
    # in a chart too, and "$…$" stays text rather than becoming mathematics
    assert page.evaluate(TEXT_WIDTH_SCRIPT, hostile) > 0


def test_sections_without_data_say_so(browser, tmp_path: Path):  # noqa: F811
    document = report(by_variant=[], daily=[], skipped={"opted_out": 0}, by_channel=None)
    document["by_step"] = [{"step": "vip", "targeted": 10, "control": 0, "conversions": {"uplift": None}}]
    page_visit = visit(browser, write_report_page(document, tmp_path / "empty.html"))

    assert_clean_load(page_visit)
    found = {s["title"]: s for s in sections(page_visit)}
    assert found["By variant 按版本 (A/B)"]["empty"] == "No A/B variants in these runs."
    assert found["Daily: treatment against control 每日效果"]["empty"] == "No days with results yet."
    assert found["Skipped 跳过"]["empty"] == "Nobody was skipped."
    assert found["By channel 按渠道"]["empty"] == "No channels with results."
    assert found["By step 按步骤"]["empty"].startswith("No uplift could be computed")
    assert not any(s["chart"] for title, s in found.items() if title != "Funnel 漏斗")
    assert_charts_drawn(list(found.values()), ["Funnel 漏斗"])


def test_a_document_of_nothing_gives_a_page_of_sentences():
    """Every key missing or null (a campaign that never ran): a page, no chart, no exception."""
    html = render_report_page({"campaign": None})
    assert "<svg" not in html
    assert "all campaigns" in html and "No members were targeted." in html


def test_figures_that_are_not_numbers_are_left_out():
    """NaN, infinity, text where a number belongs: the chart leaves the value out instead of failing."""
    document = report(funnel=[{"stage": "targeted", "value": 10}, {"stage": "contacted", "value": 5}])
    document["by_channel"][0]["conversions"] = {"uplift": "NaN", "uplift_ci95": ["-Infinity", 0.1]}
    document["by_channel"][1]["conversions"] = {"uplift": 0.05, "uplift_ci95": ["x", 0.1]}
    document["skipped"] = {"opted_out": "Infinity", "frequency_cap": 2}
    html = render_report_page(document)
    assert html.count("<svg") == 6  # funnel, daily, step, variant, channel (email only), skips


def test_no_warnings_on_a_machine_without_a_cjk_font(monkeypatch):
    """The server writing the page may have no CJK font: the page is the same text for the browser to draw, and
    the command prints no warning per missing glyph."""
    monkeypatch.setitem(figures.STYLE, "font.sans-serif", ["DejaVu Sans"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        html = render_report_page(REPORT)
    assert ">vip 贵宾</text>" in html


def test_a_report_of_a_single_day_draws_without_warnings():
    """One run, one day of results: the date axis has a single value, and the command prints no warning."""
    document = report(daily=REPORT["daily"][:1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        html = render_report_page(document)
    assert "Daily conversions and revenue" in html


def test_the_page_is_self_contained():
    html = render_report_page(REPORT)
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/", "")
    assert "https://" not in html
    assert "default-src 'none'" in html  # and the browser is told to fetch nothing, whatever the page holds


# --- the member-base page --------------------------------------------------------------------------------------

ANALYSIS_CHARTS = [
    "RFM grid RFM 分群",
    "RFM segments RFM 分群",
    "Lifecycle 生命周期",
    "Dormancy curve 休眠曲线",
    "Spend per order 订单金额分布",
    "Conversion by province 省份转化率 (best 15)",
]


@pytest.fixture(scope="module")
def seed_shop(tmp_path_factory) -> Cli:
    """The seed-shop demo data in an SQLite file."""
    folder = tmp_path_factory.mktemp("seed-shop")
    config = folder / "orchestrator.yaml"
    config.write_text("timezone: Asia/Shanghai\ntemplates: []\n", encoding="utf-8")
    cli = Cli(f"sqlite:///{folder / 'shop.db'}", str(config))
    assert cli("init").exit_code == 0, "init"
    result = cli("demo-data", "--preset", "seed-shop")
    assert result.exit_code == 0, result.output
    return cli


def test_analyze_html_in_chromium(browser, seed_shop: Cli, tmp_path: Path):  # noqa: F811
    page_file = tmp_path / "members.html"
    result = seed_shop("analyze", "--at", "2026-11-01T10:00:00+08:00", "--json", "--html", page_file)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert page_file.stat().st_mode & 0o077 == 0  # owner only, as every file the command line writes
    page_visit = visit(browser, page_file)

    assert_clean_load(page_visit)
    found = sections(page_visit)
    assert [s["title"] for s in found] == ANALYSIS_CHARTS
    assert_charts_drawn(found, ANALYSIS_CHARTS)
    page = page_visit.page
    assert "9,252" in page.locator(".figures").inner_text()
    # the grid has its 25 cells, each with its count
    grid = page.locator("section", has_text="RFM grid").locator("svg")
    counts = {f"{cell['members']:,}" for cell in document["rfm_grid"]}
    assert counts <= {text.strip() for text in grid.locator("text").all_text_contents()}
    # the best converting provinces, by name, drawn with a CJK font
    best = document["provinces"][0]["province"]
    assert best == "浙江"
    assert page.evaluate(TEXT_WIDTH_SCRIPT, best) > 10
    assert_drawn_with_cjk_font(page_visit, best)
    screenshot(page_visit, tmp_path, "analysis.png")


def test_analysis_page_without_the_newer_parts_draws_what_there_is(browser, tmp_path: Path):  # noqa: F811
    """A document from before the grid, the curve and the order bands: segments, lifecycle, order value bands."""
    document = {
        "at": "2026-11-01T10:00:00+08:00",
        "currency": "CNY",
        "members": 3,
        "rfm": {"champions": 1, "lost": 1},
        "lifecycle": {"prospect": 1, "active": 1, "lost": 1},
        "avg_order_distribution": {"<100": 1, "100-200": 1, "200+": 0},
        "provinces": [],
    }
    page_visit = visit(browser, write_analysis_page(document, tmp_path / "old.html"))
    assert_clean_load(page_visit)
    found = {s["title"]: s for s in sections(page_visit)}
    assert list(found) == [
        "RFM segments RFM 分群",
        "Lifecycle 生命周期",
        "Average order value 平均订单金额",
        "Conversion by province 省份转化率 (best 15)",
    ]
    assert found["Conversion by province 省份转化率 (best 15)"]["empty"] == "No members with a province."


def test_analyze_html_into_a_missing_folder_is_refused(seed_shop: Cli, tmp_path: Path):
    page_file = tmp_path / "missing" / "members.html"
    result = seed_shop("analyze", "--html", page_file)
    assert result.exit_code == 2
    assert "the folder" in result.output and "does not exist" in result.output
    assert not page_file.parent.exists()


# --- the page of a real report -----------------------------------------------------------------------------------


def test_report_html_from_the_results_of_runs(browser, run_cli, engine, tmp_path: Path):  # noqa: F811
    """``report --html`` writes the page of the very document ``--json`` prints, built from a ledger."""
    from tests.test_results_report import AT, build_case, load

    load(engine, *build_case())
    page_file = tmp_path / "spring.html"
    result = run_cli("report", "spring", "--at", AT.isoformat(), "--json", "--html", page_file)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert page_file.stat().st_mode & 0o077 == 0
    page_visit = visit(browser, page_file)

    assert_clean_load(page_visit)
    found = {s["title"]: s for s in sections(page_visit)}
    assert_charts_drawn(list(found.values()), ["Funnel 漏斗", "By step 按步骤"])
    assert page_visit.page.locator(".verdict").inner_text() == document["verdict"]
    assert f"{document['targeted']:,}" in page_visit.page.locator(".figures").inner_text()


def test_report_html_into_a_missing_folder_is_refused(run_cli, tmp_path: Path):
    page_file = tmp_path / "missing" / "report.html"
    result = run_cli("report", "--html", page_file)
    assert result.exit_code == 2
    assert "does not exist" in result.output and not page_file.parent.exists()
