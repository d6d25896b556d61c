"""Plugins: built-ins load like third-party ones; a third-party package adds a fact and a channel by entry point."""

from __future__ import annotations

import json
import sys
import textwrap
import types
from datetime import UTC, datetime

import pytest

from orchestrator.campaign.conditions import ConditionParser
from orchestrator.config import Settings
from orchestrator.errors import RuntimeFailure
from orchestrator.facts import FactContext, customers
from orchestrator.hookspecs import hookimpl
from orchestrator.plugin_manager import ENTRY_POINT_GROUP, build_manager, build_registry, describe
from orchestrator.segments import SegmentCompiler
from orchestrator.yamlfile import parse_yaml
from tests import dataset

PLUGIN_SOURCE = """
from sqlalchemy import case

from orchestrator.campaign.catalog import FactSpec
from orchestrator.api import Channel, CompiledMessage, RenderedMessage, SendResult
from orchestrator.hookspecs import hookimpl
from orchestrator.facts import customers


class PostcardChannel(Channel):
    name = "postcard"
    contact_field = "city"

    def compile(self, options, templates):
        return CompiledMessage("postcard", options, {"text": templates.from_string(options.text, label="postcard")})

    def render(self, compiled, context):
        return RenderedMessage("postcard", {"text": compiled.templates["text"].render(context)})

    def send(self, messages):
        return [SendResult.sent(f"card-{m.customer_id}") for m in messages]


@hookimpl
def register_channels():
    return [PostcardChannel]


@hookimpl
def register_facts():
    return [FactSpec("coastal", "int", "1 for members in a coastal province", build=_coastal)]


def _coastal(compiler, compare):
    return case((customers.c.province.in_(["浙江", "山东", "广东", "江苏"]), 1), else_=0)
"""


@pytest.fixture
def third_party_plugin(tmp_path, monkeypatch):
    """An installed distribution in miniature: a module plus a dist-info declaring the entry point."""
    (tmp_path / "postcard_plugin.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    dist = tmp_path / "postcard_plugin-1.2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: postcard-plugin\nVersion: 1.2.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\npostcard = postcard_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("postcard_plugin", None)


def test_plugins_json_lists_builtin_channels_with_their_source(run_cli):
    result = run_cli("plugins", "--json")
    assert result.exit_code == 0
    infos = json.loads(result.stdout)
    assert {"name": "email", "kind": "channel", "source": "orchestrator_plugins.email (built-in)"} in [
        {k: i[k] for k in ("name", "kind", "source")} for i in infos
    ]


def test_third_party_plugin_is_found_by_entry_point(third_party_plugin):
    pm = build_manager()
    infos = {(i.name, i.kind): i.source for i in describe(pm)}
    assert infos[("postcard", "channel")] == "postcard-plugin 1.2.0 (entry point)"
    assert infos[("coastal", "fact")] == "postcard-plugin 1.2.0 (entry point)"
    assert infos[("email", "channel")] == "orchestrator_plugins.email (built-in)"
    registry = build_registry(pm)
    assert {"email", "postcard"} <= set(registry.channels)


def test_a_plugin_fact_compiles_into_the_segment(third_party_plugin, engine):
    registry = build_registry(build_manager())
    dataset.load(engine)
    doc = parse_yaml("segment: {coastal: 1}\n", "plugin.yaml")
    node = ConditionParser(doc, registry.facts).parse(doc.data["segment"], ("segment",))
    compiler = SegmentCompiler(FactContext(at=datetime(2030, 1, 1, tzinfo=UTC), settings=Settings()), registry.facts)
    statement = compiler.facts.select(customers.c.customer_id, where=[compiler.compile(node)])
    with engine.connect() as conn:
        found = set(conn.scalars(statement))
    coastal = {"浙江", "山东", "广东", "江苏"}
    expected = {c.customer_id for c in dataset.CUSTOMERS if c.province in coastal}
    assert found == expected
    assert found and len(found) < len(dataset.CUSTOMERS)


def test_duplicate_names_between_plugins_are_refused(third_party_plugin):
    import postcard_plugin

    clash = types.ModuleType("clash")

    @hookimpl
    def register_channels():
        return [type("OtherEmail", (postcard_plugin.PostcardChannel,), {"name": "email"})]

    clash.register_channels = register_channels
    pm = build_manager()
    pm.register(clash, name="clash")
    with pytest.raises(RuntimeFailure, match="two plugins register the channel 'email'"):
        build_registry(pm)
