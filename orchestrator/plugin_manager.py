"""The plugin manager: built-in plugins by module name, then third-party entry points.

Built-ins are listed in ``BUILTIN_PLUGINS`` and loaded by import, exactly as ``load_setuptools_entrypoints``
loads third-party ones: nothing about them is privileged.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pluggy

from orchestrator import hookspecs
from orchestrator.errors import RuntimeFailure

ENTRY_POINT_GROUP = "orchestrator.plugins"
#: the core's own hook implementations (the coupon offer), registered like any plugin
CORE_PLUGINS: tuple[str, ...] = ("orchestrator.coupons.offer",)
BUILTIN_PLUGINS: tuple[str, ...] = (
    *CORE_PLUGINS,
    "orchestrator_plugins.email",
    "orchestrator_plugins.wallet",
    "orchestrator_plugins.webhook",
    "orchestrator_plugins.wechat",
    "orchestrator_plugins.sms",
    "orchestrator_plugins.call_list",
)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str  # "plugin" for the module itself, or what it provides: "channel", "command", …
    source: str  # the module or distribution it comes from
    hooks: tuple[str, ...] = ()


def build_manager(builtins: tuple[str, ...] = BUILTIN_PLUGINS, entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("orchestrator")
    pm.add_hookspecs(hookspecs)
    for module_name in builtins:
        pm.register(importlib.import_module(module_name), name=module_name)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


@cache
def manager() -> pluggy.PluginManager:
    return build_manager()


def plugin_source(pm: pluggy.PluginManager, plugin: object) -> str:
    for candidate, dist in pm.list_plugin_distinfo():
        if candidate is plugin:
            return f"{dist.project_name} {dist.version} (entry point)"
    return f"{getattr(plugin, '__name__', type(plugin).__name__)} (built-in)"


def describe(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Every loaded plugin, and every channel it registers, with where it comes from."""
    infos: list[PluginInfo] = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0] or ""):
        source = plugin_source(pm, plugin)
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        infos.append(PluginInfo(name=name, kind="plugin", source=source, hooks=hooks))
        for hook, kind in (("register_channels", "channel"), ("register_offers", "offer"), ("register_facts", "fact")):
            if hook in hooks:
                infos.extend(PluginInfo(name=item.name, kind=kind, source=source) for item in getattr(plugin, hook)())
    return infos


@dataclass
class Registry:
    """What the plugins provide, by name: channels, offer kinds, and the facts of the condition language."""

    channels: dict[str, type] = field(default_factory=dict)
    offers: dict[str, type] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def _collect(kind: str, results: list[list[Any]], into: dict[str, Any]) -> None:
    for items in results:
        for item in items or ():
            if item.name in into and into[item.name] is not item:
                raise RuntimeFailure(f"two plugins register the {kind} {item.name!r}")
            into[item.name] = item


def build_registry(pm: pluggy.PluginManager) -> Registry:
    from orchestrator.campaign.catalog import BUILTIN_FACTS

    registry = Registry(facts={spec.name: spec for spec in BUILTIN_FACTS})
    _collect("channel", pm.hook.register_channels(), registry.channels)
    _collect("offer", pm.hook.register_offers(), registry.offers)
    _collect("fact", pm.hook.register_facts(), registry.facts)
    return registry


@cache
def registry() -> Registry:
    return build_registry(manager())
