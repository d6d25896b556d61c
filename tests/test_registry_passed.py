"""The plugin registry is passed, never global: a run uses the facts and channels of the ``Orchestrator`` it runs
in (docs/architecture.md, "What must not import what"), so an application or a test can run with a registry of its
own without installing anything."""

from __future__ import annotations

import types

from sqlalchemy import case

from orchestrator.api import Channel, CompiledMessage, RenderedMessage, SendResult, hookimpl
from orchestrator.campaign.catalog import FactSpec
from orchestrator.config import Settings
from orchestrator.facts import customers
from orchestrator.plugin_manager import build_manager, build_registry, registry
from orchestrator.service import Orchestrator
from tests import dataset
from tests.dataset import AT

COASTAL = {"浙江", "山东", "广东", "江苏"}


class PostcardChannel(Channel):
    name = "postcard"
    contact_field = "city"

    def compile(self, options, templates):
        return CompiledMessage("postcard", options, {"text": templates.from_string(options.text, label="postcard")})

    def render(self, compiled, context):
        return RenderedMessage("postcard", {"text": compiled.templates["text"].render(context)})

    def send(self, messages):
        for message in messages:
            yield SendResult.sent(f"card-{message.customer_id}")


def _coastal(compiler, compare):
    return case((customers.c.province.in_(sorted(COASTAL)), 1), else_=0)


def own_registry():
    plugin = types.ModuleType("in_process_plugin")
    plugin.register_channels = hookimpl(lambda: [PostcardChannel])
    plugin.register_facts = hookimpl(lambda: [FactSpec("coastal", "int", "1 in a coastal province", build=_coastal)])
    manager = build_manager(entry_points=False)
    manager.register(plugin, name="in_process_plugin")
    return build_registry(manager)


def test_a_run_uses_the_facts_and_channels_of_its_own_registry(engine, tmp_path):
    dataset.load(engine)
    campaign = tmp_path / "coastal.yaml"
    campaign.write_text(
        "name: coastal\nsegment: {coastal: 1}\nmessage:\n  postcard: {text: 'Hello {{ customer.name }}'}\n",
        encoding="utf-8",
    )
    assert "coastal" not in registry().facts and "postcard" not in registry().channels  # not installed
    service = Orchestrator(Settings(base_dir=str(tmp_path), templates=[]), engine, plugins=own_registry())
    result = service.runner(service.load(campaign), dry_run=True).execute(AT, dry_run=True, sample=0)
    members = {c.customer_id for c in dataset.members(AT)}
    expected = {c.customer_id for c in dataset.CUSTOMERS if c.province in COASTAL and c.customer_id in members}
    assert expected and result.audience == len(expected)
