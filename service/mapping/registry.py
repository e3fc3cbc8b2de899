"""Builds the plugin manager and wraps it in the typed registry the rest of the service uses.

`PluginRegistry` is the only caller of `pm.hook`: it calls every registration hook once, when it is
built, and answers look-ups from plain dictionaries afterwards.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Generic, TypeVar

import pluggy

from service import hookspecs
from service.hookspecs import NAME, MappingPreset, Transform

BUILTIN_PLUGINS: tuple[str, ...] = (
    "plugins.text",
    "plugins.names",
    "plugins.phone",
    "plugins.dates",
    "plugins.scalars",
    "plugins.countries",
    "plugins.hashing",
    "plugins.presets",
)
"""Modules registered as built-in plugins, under their module name (which can be blocked)."""


T = TypeVar("T")


class PluginConfigError(RuntimeError):
    """A plugin set that cannot start: duplicate names or a bad registration result."""


def build_plugin_manager(
    *,
    blocked: Iterable[str] = (),
    load_entry_points: bool = True,
    extra_plugins: Iterable[object] = (),
) -> pluggy.PluginManager:
    """Return a plugin manager with the specs, the built-ins and the installed plugins.

    `blocked` names plugins never to register: a built-in module name (e.g. `plugins.phone`) or an
    entry-point name. `extra_plugins` are registered after the built-ins (tests, embedding).
    Raises `pluggy.PluginValidationError` when an implementation matches no spec, e.g. a
    misspelled hook name.
    """
    pm = pluggy.PluginManager(NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    for module_name in BUILTIN_PLUGINS:
        if not pm.is_blocked(module_name):
            module: ModuleType = importlib.import_module(module_name)
            pm.register(module, name=module_name)
    if load_entry_points:
        pm.load_setuptools_entrypoints(NAME)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


@dataclass(frozen=True, slots=True)
class Registered(Generic[T]):
    """A transform or preset with the name of the plugin that registered it."""

    plugin: str
    item: T


class PluginRegistry:
    """Typed, read-only view of what the plugins registered."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        """Call every registration hook once; raise `PluginConfigError` on duplicates."""
        self._transforms: dict[str, Registered[Transform]] = {}
        self._presets: dict[str, Registered[MappingPreset]] = {}
        for plugin, item in _call_each(pm, pm.hook.register_transforms, Transform):
            _add_unique(self._transforms, item.name, Registered(plugin, item), "transform")
        for plugin, preset in _call_each(pm, pm.hook.register_mapping_presets, MappingPreset):
            _add_unique(self._presets, preset.name, Registered(plugin, preset), "mapping preset")
        # Preset rows are checked like any mapping when used: a blocked plugin must not stop
        # start-up because some preset names one of its transforms.

    @classmethod
    def build(
        cls,
        *,
        blocked: Iterable[str] = (),
        load_entry_points: bool = True,
        extra_plugins: Iterable[object] = (),
    ) -> PluginRegistry:
        """Build the plugin manager (see `build_plugin_manager`) and the registry over it."""
        return cls(
            build_plugin_manager(
                blocked=blocked, load_entry_points=load_entry_points, extra_plugins=extra_plugins
            )
        )

    def has_transform(self, name: str) -> bool:
        return name in self._transforms

    def transform(self, name: str) -> Registered[Transform]:
        """Return the transform called `name`; raise `KeyError` naming the known ones."""
        try:
            return self._transforms[name]
        except KeyError:
            known = ", ".join(sorted(self._transforms))
            raise KeyError(f"unknown transform {name!r} (known: {known})") from None

    @property
    def transforms(self) -> Mapping[str, Registered[Transform]]:
        return dict(self._transforms)

    @property
    def presets(self) -> Mapping[str, Registered[MappingPreset]]:
        return dict(self._presets)


def _call_each(
    pm: pluggy.PluginManager, hook: pluggy.HookCaller, kind: type[T]
) -> Iterable[tuple[str, T]]:
    # Each implementation is called on its own so every result can be attributed to its plugin.
    for impl in reversed(hook.get_hookimpls()):
        plugin = impl.plugin_name
        try:
            result = impl.function()
        except Exception as exc:
            raise PluginConfigError(f"plugin {plugin!r} failed in {hook.name}: {exc!r}") from exc
        if result is None:
            continue
        if not isinstance(result, Iterable) or isinstance(result, str):
            raise PluginConfigError(
                f"plugin {plugin!r}: {hook.name} must return an iterable of {kind.__name__}, "
                f"got {type(result).__name__}"
            )
        for item in list(result):
            if not isinstance(item, kind):
                raise PluginConfigError(
                    f"plugin {plugin!r}: {hook.name} returned {type(item).__name__}, "
                    f"expected {kind.__name__}"
                )
            yield plugin, item


def _add_unique(into: dict[str, Registered[T]], name: str, entry: Registered[T], kind: str) -> None:
    if name in into:
        raise PluginConfigError(
            f"{kind} {name!r} is registered by both plugin {into[name].plugin!r} and plugin "
            f"{entry.plugin!r}; block one of them or rename the {kind}"
        )
    into[name] = entry
