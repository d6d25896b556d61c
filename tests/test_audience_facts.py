"""The audience computes only the facts a campaign reads: its templates (as each channel reports them) and its
offer kinds. A template reading ``customer.rfm_segment`` still gets the right value; a campaign whose templates
read no RFM fact runs a statement without window functions; anything that cannot tell gets every fact."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from orchestrator.config import Settings, load_settings
from orchestrator.rendering import TemplateLoader
from orchestrator.segments import ROW_FACTS, Audience, facts_read
from orchestrator.service import Orchestrator
from orchestrator.template_names import names_in
from tests import dataset
from tests.dataset import AT

# --- which names a template reads ------------------------------------------------------------------------------


@pytest.fixture
def loader(tmp_path: Path) -> TemplateLoader:
    (tmp_path / "base.html.j2").write_text("<p>{{ customer.tier }}</p>{% block body %}{% endblock %}")
    (tmp_path / "part.txt.j2").write_text("{{ customer['clv'] }}")
    return TemplateLoader([tmp_path])


@pytest.mark.parametrize(
    ("source", "names"),
    [
        ("Hi {{ customer.name }}, {{ customer.rfm_segment }}", {"name", "rfm_segment"}),
        ("{{ customer['aov'] | money }} {{ offer.code if offer else '' }}", {"aov"}),
        ("{% if customer.lifecycle == 'lost' %}{{ customer.recency_days }}{% endif %}", {"lifecycle", "recency_days"}),
        ("{% for t in customer.tags %}{{ t }}{% endfor %}", {"tags"}),
        ("no customer at all: {{ campaign.name }}", set()),
        ('{% include "part.txt.j2" %} {{ customer.name }}', {"clv", "name"}),
        # unknown: the safe answer, every fact computed
        ("{{ customer }}", None),
        ("{{ customer | tojson }}", None),
        ("{{ customer.get('rfm_segment') }}", None),
        ("{% set c = customer %}{{ c.rfm_segment }}", None),
        ("{% for k in customer %}{{ k }}{% endfor %}", None),
        ("{{ customer[campaign.name] }}", None),
        ("{% include campaign.name %}", None),
        ('{% include "missing.txt.j2" ignore missing %}', None),
    ],
)
def test_a_template_says_which_customer_names_it_reads(loader: TemplateLoader, source: str, names):
    compiled = loader.from_string(source, label="test")
    assert compiled.customer_names == (None if names is None else frozenset(names))


def test_an_extended_layout_counts_with_the_template(loader: TemplateLoader, tmp_path: Path):
    (tmp_path / "child.html.j2").write_text(
        '{% extends "base.html.j2" %}{% block body %}{{ customer.rfm_r }}{% endblock %}'
    )
    assert loader.load("child.html.j2").customer_names == {"tier", "rfm_r"}


def test_names_of_nested_templates_and_constants(loader: TemplateLoader):
    a = loader.from_string("{{ customer.clv }}", label="a")
    b = loader.from_string("{{ customer.tier }}", label="b")
    assert names_in({"payload": {"x": a, "list": [b, 3, "plain", None]}}) == {"clv", "tier"}
    assert names_in({"x": a, "y": object()}) is None  # something we cannot see into


# --- the audience statement, on SQLite and PostgreSQL ----------------------------------------------------------

RFM_CAMPAIGN = """\
name: rfm-mail
segment: {frequency: {gte: 1}}
message:
  email:
    subject: "{{ customer.customer_id }} is {{ customer.rfm_segment }}"
    text: "Hello {{ customer.name }}"
"""
PLAIN_CAMPAIGN = """\
name: plain-mail
segment: {frequency: {gte: 1}}
message:
  email:
    subject: "Hi {{ customer.name }}"
    text: "You ordered {{ customer.frequency }} times"
"""
COUPON_CAMPAIGN = """\
name: plain-coupon
segment: {frequency: {gte: 1}}
offer: {coupon: {kind: amount_off, value: 10, valid_days: 7}}
message:
  email:
    subject: "Hi {{ customer.name }}, {{ offer.code }}"
    text: "Hello"
"""


def _orchestrator(tmp_path: Path, engine: Engine | None = None) -> Orchestrator:
    config = tmp_path / "orchestrator.yaml"
    config.write_text(
        f"timezone: Asia/Shanghai\ntemplates: []\nchannels:\n  email:\n    outbox: {tmp_path / 'outbox'}\n",
        encoding="utf-8",
    )
    return Orchestrator(load_settings(config), engine)


def _audience(orch: Orchestrator, tmp_path: Path, text: str, name: str) -> tuple[Audience, frozenset[str] | None]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    plan = orch.load(path)
    runner = orch.runner(plan, dry_run=True)
    facts = facts_read(plan, runner.channels, runner.offers.values())
    return Audience(orch.engine, orch.settings, plan, AT, orch.registry.facts, facts), facts


def _sql(audience: Audience) -> str:
    return str(audience.statement().compile(dialect=audience.engine.dialect)).upper()


def test_a_template_reading_rfm_segment_still_gets_it(engine: Engine, tmp_path: Path):
    dataset.load(engine)
    orch = _orchestrator(tmp_path, engine)
    audience, facts = _audience(orch, tmp_path, RFM_CAMPAIGN, "rfm")
    assert facts == {"rfm_segment"}
    assert " OVER " in _sql(audience)  # the RFM window functions are there
    expected = dataset.expected_facts(AT, Settings())
    rows = [row for batch in audience.batches(100) for row in batch]
    assert rows and all(row["rfm_segment"] == expected[row["customer_id"]].rfm_segment for row in rows)
    assert "clv" not in rows[0]  # never read, never computed
    # and through the whole pipeline: the rendered subject carries it
    result = orch.runner(audience.plan, dry_run=True).execute(AT, dry_run=True, sample=50)
    for sample in result.samples:
        cid = sample["customer_id"]
        assert sample["parts"]["subject"] == f"{cid} is {expected[cid].rfm_segment}"


def test_a_campaign_reading_no_rfm_fact_has_no_window_function(engine: Engine, tmp_path: Path):
    dataset.load(engine)
    orch = _orchestrator(tmp_path, engine)
    for text, name in ((PLAIN_CAMPAIGN, "plain"), (COUPON_CAMPAIGN, "coupon")):
        audience, facts = _audience(orch, tmp_path, text, name)
        assert facts == ({"frequency"} if name == "plain" else set())
        sql = _sql(audience)
        assert " OVER " not in sql and "PERCENT_RANK" not in sql
        result = orch.runner(audience.plan, dry_run=True).execute(AT, dry_run=True, sample=5)
        assert result.messages > 0 and result.samples


def test_a_channel_that_cannot_tell_gets_every_fact(engine: Engine, tmp_path: Path, monkeypatch):
    orch = _orchestrator(tmp_path, engine)
    email = orch.registry.channels["email"]
    monkeypatch.setattr(email, "facts_through_templates", False)  # a third-party channel's default
    audience, facts = _audience(orch, tmp_path, PLAIN_CAMPAIGN, "plain")
    assert facts is None
    sql = _sql(audience)
    assert " OVER " in sql
    assert all(f" AS {name.upper()}" in sql for name in ROW_FACTS)


VARIANT_CAMPAIGN = """\
name: rfm-variants
segment: {frequency: {gte: 1}}
steps:
  - name: hello
    message:
      email: {subject: "Hi {{ customer.name }}", text: "Hello"}
    variants:
      - {name: plain, weight: 1, message: {email: {subject: "Hi {{ customer.name }}", text: "Hi"}}}
      - name: rfm
        weight: 1
        message: {email: {subject: "{{ customer.customer_id }} is {{ customer.rfm_segment }}", text: "Hello"}}
"""


def test_what_an_ab_variant_reads_is_computed(engine: Engine, tmp_path: Path):
    """A variant replaces its step's message: the facts its own template reads are in the statement too."""
    dataset.load(engine)
    orch = _orchestrator(tmp_path, engine)
    audience, facts = _audience(orch, tmp_path, VARIANT_CAMPAIGN, "variants")
    assert facts is not None and "rfm_segment" in facts
    expected = dataset.expected_facts(AT, Settings())
    result = orch.runner(audience.plan, dry_run=True).execute(AT, dry_run=True, sample=50)
    rfm = [s for s in result.samples if " is " in s["parts"]["subject"]]
    assert rfm
    for sample in rfm:
        cid = sample["customer_id"]
        assert sample["parts"]["subject"] == f"{cid} is {expected[cid].rfm_segment}"


# --- facts for some members only (a scheduler tick's) -----------------------------------------------------------

EVERY_FACT_CAMPAIGN = """\
name: every-fact
segment: {frequency: {gte: 1}}
message:
  email: {subject: "{{ customer }}", text: "Hello"}
"""


def test_facts_of_some_members_equal_their_facts_among_everyone(engine: Engine, tmp_path: Path):
    """``CampaignPlan.members`` (a tick's members) restricts the per-customer sources to their orders; shop-wide
    figures (store AOV, RFM ranks among every buyer) must not change with it."""
    from dataclasses import replace

    dataset.load(engine)
    orch = _orchestrator(tmp_path, engine)
    everyone, facts = _audience(orch, tmp_path, EVERY_FACT_CAMPAIGN, "every")
    assert facts is None  # a template reading the whole customer: every fact, RFM included
    all_rows = {row["pk"]: row for batch in everyone.batches(100) for row in batch}
    chosen = tuple(sorted(all_rows)[::3])
    assert len(chosen) >= 3
    some = Audience(orch.engine, orch.settings, replace(everyone.plan, members=chosen), AT, orch.registry.facts)
    some_rows = {row["pk"]: row for batch in some.batches(100) for row in batch}
    assert set(some_rows) == set(chosen)
    for pk in chosen:
        assert some_rows[pk] == all_rows[pk]
    assert some.count() == len(chosen)
    # the funnel counts among them
    assert some.funnel()[-1]["cumulative"] == len(chosen)
    # a member outside the segment stays out, even when asked about
    outside = [pk for pk in _every_member(engine) if pk not in all_rows]
    assert outside
    asked = Audience(orch.engine, orch.settings, replace(everyone.plan, members=(outside[0],)), AT, orch.registry.facts)
    assert asked.count() == 0


def _every_member(engine: Engine) -> list[int]:
    from sqlalchemy import select

    from orchestrator.facts import customers

    with engine.connect() as conn:
        return list(conn.execute(select(customers.c.id)).scalars())


PLAIN_EVERY_FACT_BUT_RFM = """\
name: windowed
segment: {frequency: {gte: 0}}
message:
  email:
    subject: "{{ customer.name }} {{ customer.recency_days }} {{ customer.frequency }} {{ customer.monetary }}"
    text: "{{ customer.aov }} {{ customer.first_order_days }} {{ customer.orders_above_store_aov }} {{ customer.clv }}"
"""


def test_a_large_audience_read_window_by_window_is_the_same_audience(engine: Engine, tmp_path: Path, monkeypatch):
    """On PostgreSQL a large audience is read one window of customer keys at a time (so that no snapshot is held
    for a whole run); the rows, their facts and their order are those of the one statement."""
    from orchestrator import segments

    dataset.load(engine)
    orch = _orchestrator(tmp_path, engine)
    audience, facts = _audience(orch, tmp_path, PLAIN_EVERY_FACT_BUT_RFM, "windowed")
    assert facts is not None and "orders_above_store_aov" in facts and "rfm_segment" not in facts
    whole = [row for batch in audience.batches(7) for row in batch]
    monkeypatch.setattr(segments, "WINDOW_KEYS", 3)
    windows = list(audience.windows())
    if engine.dialect.name == "postgresql":
        assert len(windows) > 3
    else:
        assert windows == [audience]  # SQLite keeps no row versions: one statement
    windowed = [row for batch in audience.batches(7) for row in batch]
    assert len(windowed) == len(whole) > 10
    assert windowed == whole
    # shop-wide window functions are not recomputed per window: an RFM audience is read in one go
    rfm, _ = _audience(orch, tmp_path, RFM_CAMPAIGN, "rfm")
    assert list(rfm.windows()) == [rfm]
