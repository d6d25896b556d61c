"""Templates run bounded: huge repetition and powers are refused, loops and output are limited, and a render over
its time budget stops. A limit hit at validate time is an error with the template's file and line; hit by one
customer's data at run time it fails that one delivery and the run goes on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from orchestrator.db.models import Campaign, Coupon, Customer, Delivery, OfferBudget
from orchestrator.rendering import TemplateLoader, TemplateRenderError
from tests import dataset
from tests.clitools import Cli
from tests.dataset import AT


@pytest.fixture
def loader(tmp_path: Path) -> TemplateLoader:
    return TemplateLoader([tmp_path])


def failing(loader: TemplateLoader, tmp_path: Path, source: str, **context) -> TemplateRenderError:
    (tmp_path / "t.txt.j2").write_text(source, encoding="utf-8")
    started = time.monotonic()
    with pytest.raises(TemplateRenderError) as caught:
        loader.load("t.txt.j2").render(context)
    assert time.monotonic() - started < 10, "a limit must stop the render quickly"
    assert caught.value.file == str(tmp_path / "t.txt.j2")
    return caught.value


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("line one\n{{ 'a' * 10**9 }}", "repeat"),
        ("line one\n{{ [1, 2] * 10**9 }}", "repeat"),
        ("line one\n{{ 9 ** (9 ** 9) }}", "power"),
        ("line one\n{{ 2 ** 10000000 }}", "power"),
        ("line one\n{{ '%0999999999d' % 1 }}", "width"),
        ("line one\n{{ 'x'.ljust(999999999) }}", "too long"),
        ("line one\n{{ 'x'|center(999999999) }}", "too long"),
    ],
)
def test_huge_repetition_powers_and_widths_are_refused(loader, tmp_path, source, words):
    error = failing(loader, tmp_path, source)
    assert error.line == 2
    assert words in error.message


def test_nested_loops_stop_at_the_time_budget(loader, tmp_path):
    source = "a\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    error = failing(loader, tmp_path, source)
    assert error.line == 2
    assert "took longer than" in error.message


def test_nested_loops_printing_stop_at_the_output_cap(loader, tmp_path):
    source = "a\n{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}"
    error = failing(loader, tmp_path, source)
    assert "output" in error.message and "characters" in error.message


def test_loops_over_long_strings_are_bounded_too(loader, tmp_path):
    source = "a\n{% set s = 'x' * 900000 %}{% for i in s %}{% for j in s %}{% endfor %}{% endfor %}"
    assert "took longer than" in failing(loader, tmp_path, source).message


def test_ordinary_arithmetic_and_loops_still_work(loader, tmp_path):
    (tmp_path / "ok.txt.j2").write_text(
        "{{ 2 ** 10 }} {{ 'ab' * 3 }} {{ [0] * 2 }} {{ '%05d' % 42 }} {{ 7 % 3 }} {{ 'a' + 'b' }} {{ 1.5 * 2 }}"
        "{% for i in range(3) %}{{ i }}{% endfor %}",
        encoding="utf-8",
    )
    assert loader.load("ok.txt.j2").render({}) == "1024 ababab [0, 0] 00042 1 ab 3.0012"


CAMPAIGN = """\
name: bounded
segment: {frequency: {gte: 1}}
steps:
  - name: one
    message:
      sms:
        template: greeting.txt.j2
"""


def run_campaign(tmp_path: Path, db_url: str, template: str, *args: str):
    (tmp_path / "greeting.txt.j2").write_text(template, encoding="utf-8")
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    config = tmp_path / "orchestrator.yaml"
    config.write_text("timezone: Asia/Shanghai\ntemplates: []\n", encoding="utf-8")
    return Cli(db_url, config=str(config))(*args, str(campaign), "--at", AT.isoformat(), "--json"), campaign


def test_validate_reports_a_limit_with_the_template_file_and_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "greeting.txt.j2").write_text("您好\n{{ 'a' * 10**9 }}", encoding="utf-8")
    (tmp_path / "campaign.yaml").write_text(CAMPAIGN, encoding="utf-8")
    (tmp_path / "orchestrator.yaml").write_text("templates: []\n", encoding="utf-8")
    result = Cli(None, config=str(tmp_path / "orchestrator.yaml"))("validate", str(tmp_path / "campaign.yaml"))
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'greeting.txt.j2'}:2" in result.output


def test_a_limit_triggered_by_one_customers_data_fails_that_delivery_only(
    engine: Engine, db_url, tmp_path, monkeypatch
):
    dataset.load(engine)
    monkeypatch.chdir(tmp_path)
    template = "您好{{ customer.name }}\n{% if customer.customer_id == 'C02' %}{{ 'x' * 10**8 }}{% endif %}"
    result, _ = run_campaign(tmp_path, db_url, template, "run")
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        rows = conn.execute(
            select(Customer.customer_id, Delivery.state, Delivery.reason, Delivery.last_error).join(
                Customer, Customer.id == Delivery.customer_pk
            )
        ).all()
    by_customer = {row.customer_id: row for row in rows}
    failed = by_customer["C02"]
    assert (failed.state, failed.reason) == ("failed", "render_failed")
    assert "greeting.txt.j2:2" in failed.last_error and "repeat" in failed.last_error
    others = [row for row in rows if row.customer_id != "C02"]
    assert others and all(row.state in ("sent", "skipped") for row in others)
    assert any(row.state == "sent" for row in others)
    assert json.loads(result.stdout)["outcomes"].get("sent")


OFFER_CAMPAIGN = """\
name: bounded-offer
segment: {frequency: {gte: 1}}
steps:
  - name: one
    offer: {coupon: {kind: amount_off, value: 20, valid_days: 14, budget: {max_issued: 100, max_face_value: 2000}}}
    message:
      sms:
        template: greeting.txt.j2
"""


def test_a_delivery_that_failed_to_render_leaves_no_coupon_behind(engine: Engine, db_url, tmp_path, monkeypatch):
    """The coupon is granted before the message renders (the template shows its code); when rendering then fails on
    this member's data, nothing carries the coupon: it is voided and its budget given back (docs/guarantees.md)."""
    dataset.load(engine)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "greeting.txt.j2").write_text(
        "{{ offer.code }}{% if customer.customer_id == 'C02' %}{{ 'x' * 10**8 }}{% endif %}", encoding="utf-8"
    )
    (tmp_path / "campaign.yaml").write_text(OFFER_CAMPAIGN, encoding="utf-8")
    (tmp_path / "orchestrator.yaml").write_text("timezone: Asia/Shanghai\ntemplates: []\n", encoding="utf-8")
    cli = Cli(db_url, config=str(tmp_path / "orchestrator.yaml"))
    result = cli("run", str(tmp_path / "campaign.yaml"), "--at", AT.isoformat(), "--json")
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        coupons = conn.execute(
            select(Customer.customer_id, Coupon.state)
            .join(Customer, Customer.id == Coupon.customer_pk)
            .join(Campaign, Campaign.id == Coupon.campaign_pk)
            .where(Campaign.name == "bounded-offer")  # not the data set's own coupons
        ).all()
        carried = set(conn.scalars(select(Delivery.coupon_pk).where(Delivery.coupon_pk.is_not(None))))
        issued, face = conn.execute(select(OfferBudget.issued, OfferBudget.face_value)).one()
    states = dict(coupons)
    assert states["C02"] == "void"
    live = [cid for cid, state in coupons if state == "issued"]
    assert live and len(carried) == len(live)  # every live coupon travels with a message
    assert issued == len(live) and face == 20 * len(live)


# --- text built out of sight of the output check: {% set %} blocks, macros, caller(), {% filter %}, ~ -----------

MEGA = "{% set s = 'x' * 1000000 %}\n"  # exactly the limit: allowed on its own
HIDDEN_GROWTH = {
    "set block": MEGA + "{% set big %}{% for i in range(1000) %}{{ s }}{% endfor %}{% endset %}{{ big[:10] }}",
    "macro": MEGA + "{% macro m() %}{% for i in range(1000) %}{{ s }}{% endfor %}{% endmacro %}{{ m()[:10] }}",
    "caller": MEGA + "{% macro m() %}{{ caller()[:10] }}{% endmacro %}"
    "{% call m() %}{% for i in range(1000) %}{{ s }}{% endfor %}{% endcall %}",
    "filter block": MEGA + "{% filter truncate(10) %}{% for i in range(1000) %}{{ s }}{% endfor %}{% endfilter %}",
    "distinct chunks": MEGA
    + "{% set big %}{% for i in range(1000) %}{{ s[i:] }}{% endfor %}{% endset %}{{ big|length }}",
    "one ~ chain": MEGA + "{{ (" + " ~ ".join(["s"] * 400) + ")|length }}",  # 400 MB joined before any check
}
PEAK_MB = 300

# validate in a child process; the grandchild's peak memory is what getrusage(RUSAGE_CHILDREN) sees in the child
MEASURE = """
import resource, subprocess, sys, time
started = time.monotonic()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)
peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(done.returncode, round(peak_mb), round(time.monotonic() - started, 2))
sys.stdout.write(done.stdout + done.stderr)
"""


@pytest.mark.parametrize("source", HIDDEN_GROWTH.values(), ids=HIDDEN_GROWTH.keys())
def test_text_built_in_blocks_macros_and_filters_is_bounded_at_validate(tmp_path, source):
    (tmp_path / "greeting.txt.j2").write_text(source, encoding="utf-8")
    (tmp_path / "campaign.yaml").write_text(CAMPAIGN, encoding="utf-8")
    (tmp_path / "orchestrator.yaml").write_text("templates: []\n", encoding="utf-8")
    orchestrator = shutil.which("orchestrator", path=str(Path(sys.executable).parent)) or "orchestrator"
    command = [orchestrator, "--config", "orchestrator.yaml", "validate", "campaign.yaml"]
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE, *command], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    status, peak_mb, seconds = measured.stdout.split("\n", 1)[0].split()
    output = measured.stdout.split("\n", 1)[1]
    assert int(status) == 2, output
    assert "greeting.txt.j2:2" in output and "characters" in output, output
    assert "Traceback" not in output
    assert int(peak_mb) < PEAK_MB, f"validate peaked at {peak_mb} MB"
    assert float(seconds) < 30
