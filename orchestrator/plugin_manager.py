"""The plugin manager: built-in plugins by module name, then third-party entry points.

Built-ins are listed in ``BUILTIN_PLUGINS`` and loaded by import, exactly as entry points are: nothing about them
is privileged. A plugin that fails (raises on import, on registration or in a ``register_*`` hook, implements an
unknown hook, or registers a name another plugin already has) is left out and recorded as a ``PluginFailure``:
every command still runs, ``orchestrator plugins`` lists the failure, and only a campaign that needs what the
plugin would have provided fails, at validate time, saying which plugin failed and why.

``ORCHESTRATOR_LOAD_PLUGINS`` (a comma list of entry-point names) chooses which entry-point plugins load; set but
empty, only the built-ins load.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pluggy

from orchestrator import hookspecs
from orchestrator.errors import RuntimeFailure

ENTRY_POINT_GROUP = "orchestrator.plugins"
LOAD_PLUGINS_ENV = "ORCHESTRATOR_LOAD_PLUGINS"
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
#: the hooks whose results are names in one namespace each, by the kind of thing they name
PROVIDER_HOOKS: tuple[tuple[str, str], ...] = (
    ("register_channels", "channel"),
    ("register_offers", "offer"),
    ("register_facts", "fact"),
)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str  # "plugin" for the module itself, or what it provides: "channel", "command", …
    source: str  # the module or distribution it comes from
    hooks: tuple[str, ...] = ()
    error: str | None = None  # why the plugin is not loaded, or None


@dataclass(frozen=True)
class PluginFailure:
    """A plugin left out: its name, where it comes from, and the error (``ImportError: no module named x``)."""

    name: str
    source: str
    error: str

    def warning(self) -> str:
        return f"warning: plugin {self.name!r} from {self.source} failed to load and is skipped: {self.error}"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, plus where each plugin comes from and which plugins failed."""

    def __init__(self) -> None:
        super().__init__("orchestrator")
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, str] = {}
        self.failures: list[PluginFailure] = []

    def try_register(self, name: str, source: str, load: Callable[[], object], claimed: dict) -> None:
        """Load and register one plugin; on any error, leave it out and record why."""
        self.sources[name] = source
        try:
            plugin = load()
            self.register(plugin, name=name)
        except Exception as exc:
            self.failures.append(PluginFailure(name, source, _error_text(exc)))
            return
        try:
            self.check_pending()  # a hook implementation without a specification: a misspelt hook name
            _claim_names(self, name, plugin, claimed)
        except Exception as exc:
            self.unregister(plugin)
            self.failures.append(PluginFailure(name, source, _error_text(exc)))


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the exception says
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _claim_names(pm: PluginManager, name: str, plugin: object, claimed: dict[tuple[str, str], str]) -> None:
    """Call the plugin's ``register_*`` hooks once: they must not raise, and every name must be new."""
    mine: dict[tuple[str, str], str] = {}
    for hook, kind in PROVIDER_HOOKS:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            if impl.plugin is not plugin:
                continue
            for item in impl.function() or ():
                key = (kind, item.name)
                owner = claimed.get(key) or mine.get(key)
                if owner is not None:
                    raise RuntimeFailure(f"the {kind} {item.name!r} is already registered by the plugin {owner!r}")
                mine[key] = name
    claimed.update(mine)


def requested_entry_points(environ: Any = None) -> set[str] | None:
    """The entry-point names ``ORCHESTRATOR_LOAD_PLUGINS`` asks for; None when it is not set (load them all)."""
    value = (os.environ if environ is None else environ).get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _entry_points() -> Iterator[tuple[importlib.metadata.EntryPoint, importlib.metadata.Distribution]]:
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP and ep.name not in seen:  # a distribution found twice on sys.path
                seen.add(ep.name)
                yield ep, dist


def build_manager(builtins: tuple[str, ...] = BUILTIN_PLUGINS, entry_points: bool = True) -> PluginManager:
    from orchestrator.campaign.catalog import BUILTIN_FACTS

    pm = PluginManager()
    claimed: dict[tuple[str, str], str] = {("fact", spec.name): "orchestrator (built-in)" for spec in BUILTIN_FACTS}
    for module_name in builtins:
        pm.try_register(
            module_name, f"{module_name} (built-in)", lambda m=module_name: importlib.import_module(m), claimed
        )
    if not entry_points:
        return pm
    wanted = requested_entry_points()
    found: set[str] = set()
    for ep, dist in _entry_points():
        found.add(ep.name)
        if wanted is not None and ep.name not in wanted:
            continue
        if pm.has_plugin(ep.name):
            continue
        source = f"{dist.metadata['Name']} {dist.version} (entry point)"
        pm.try_register(ep.name, source, ep.load, claimed)
    for missing in sorted((wanted or set()) - found):
        pm.failures.append(
            PluginFailure(missing, LOAD_PLUGINS_ENV, f"no installed package has the entry point {missing!r}")
        )
    return pm


@cache
def manager() -> PluginManager:
    return build_manager()


def plugin_source(pm: pluggy.PluginManager, plugin: object) -> str:
    name = pm.get_name(plugin)
    sources = getattr(pm, "sources", {})
    if name in sources:
        return sources[name]
    return f"{getattr(plugin, '__name__', type(plugin).__name__)} (registered)"


def describe(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Every loaded plugin, and every channel it registers, with where it comes from; then every failed one."""
    errors = {f.name: f.error for f in getattr(pm, "failures", ())}
    infos: list[PluginInfo] = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0] or ""):
        source = plugin_source(pm, plugin)
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        # loaded, yet failed later (its register_commands raised): listed once, with the error
        infos.append(PluginInfo(name=name, kind="plugin", source=source, hooks=hooks, error=errors.pop(name, None)))
        for hook, kind in PROVIDER_HOOKS:
            if hook in hooks:
                infos.extend(PluginInfo(name=item.name, kind=kind, source=source) for item in getattr(plugin, hook)())
    for failure in getattr(pm, "failures", ()):
        if failure.name in errors:
            infos.append(PluginInfo(name=failure.name, kind="plugin", source=failure.source, error=failure.error))
    return infos


def call_each(pm: pluggy.PluginManager, hook: str, **kwargs: Any) -> list[PluginFailure]:
    """Call ``hook`` on each plugin separately, so that one plugin raising does not stop the others."""
    failures = []
    for impl in getattr(pm.hook, hook).get_hookimpls():
        try:
            impl.function(**kwargs)
        except Exception as exc:
            source = plugin_source(pm, impl.plugin)
            failures.append(PluginFailure(impl.plugin_name, source, f"in {hook}: {_error_text(exc)}"))
    return failures


class ChannelTable(dict):
    """The channels by name, and the plugins that failed to load, so that a missing channel can say why."""

    def __init__(self, *args: Any, failures: tuple[PluginFailure, ...] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.failures = failures

    def why_missing(self, channel: str) -> str | None:
        """The failed plugin that most likely provides ``channel`` (by its name), else every failed plugin."""
        if not self.failures:
            return None
        likely = [f for f in self.failures if channel.lower() in f.name.lower() or channel.lower() in f.source.lower()]
        named = likely or self.failures
        return "; ".join(f"the plugin {f.name} ({f.source}) failed to load: {f.error}" for f in named)


@dataclass
class Registry:
    """What the plugins provide, by name: channels, offer kinds, and the facts of the condition language."""

    channels: dict[str, type] = field(default_factory=ChannelTable)
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

    registry = Registry(
        channels=ChannelTable(failures=tuple(getattr(pm, "failures", ()))),
        facts={spec.name: spec for spec in BUILTIN_FACTS},
    )
    _collect("channel", pm.hook.register_channels(), registry.channels)
    _collect("offer", pm.hook.register_offers(), registry.offers)
    _collect("fact", pm.hook.register_facts(), registry.facts)
    return registry


@cache
def registry() -> Registry:
    return build_registry(manager())
