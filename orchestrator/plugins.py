"""The plugin manager: built-in plugins by module name, then third-party entry points.

Built-ins are listed in ``BUILTIN_PLUGINS`` and loaded by import, exactly as ``load_setuptools_entrypoints``
loads third-party ones: nothing about them is privileged.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache

import pluggy

from orchestrator import hookspecs

ENTRY_POINT_GROUP = "orchestrator.plugins"
BUILTIN_PLUGINS: tuple[str, ...] = ()


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
        if "register_channels" in hooks:
            for channel in plugin.register_channels() or ():
                infos.append(PluginInfo(name=channel.name, kind="channel", source=source))
    return infos
