"""The plugin manager factory and the registry facade."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pluggy
import pytest

from service import hookspecs
from service.hookspecs import NAME, Transform, hookimpl
from service.mapping.registry import (
    BUILTIN_PLUGINS,
    PluginConfigError,
    PluginRegistry,
    build_plugin_manager,
)

BUILTIN_TRANSFORMS = {
    "trim",
    "lowercase",
    "uppercase",
    "default",
    "concat",
    "split_name",
    "phone_e164",
    "date",
    "datetime",
    "boolean",
    "number",
    "integer",
    "country_code",
    "country_name",
    "sha256",
}


def _identity(value: object) -> object:
    return value


class Shadow:
    """A plugin that registers a transform named like a built-in."""

    @staticmethod
    @hookimpl
    def register_transforms() -> Iterable[Transform]:
        return [Transform.from_function("trim", _identity, returns=(str,))]


def test_plugin_facing_surface_is_pinned() -> None:
    assert hookspecs.__all__ == [
        "DEDUPE_TARGET",
        "NAME",
        "FieldMapping",
        "MappingPreset",
        "Transform",
        "TransformError",
        "TransformFunc",
        "hookimpl",
        "hookspec",
        "offer_transforms",
    ]
    assert NAME == "marketo_destination"


def test_builtins_load(registry: PluginRegistry) -> None:
    assert set(registry.transforms) == BUILTIN_TRANSFORMS
    assert registry.has_transform("phone_e164")
    assert not registry.has_transform("nope")
    assert registry.transform("trim").plugin == "plugins.text"
    assert "xdm_person" in registry.presets


def test_unknown_transform_error_lists_known(registry: PluginRegistry) -> None:
    with pytest.raises(KeyError, match="known: boolean"):
        registry.transform("nope")


def test_manager_is_built_fresh_each_time() -> None:
    assert build_plugin_manager(load_entry_points=False) is not build_plugin_manager(
        load_entry_points=False
    )


def test_duplicate_transform_names_stop_startup() -> None:
    with pytest.raises(PluginConfigError) as info:
        PluginRegistry.build(load_entry_points=False, extra_plugins=[Shadow])
    message = str(info.value)
    assert "'trim'" in message
    assert "'plugins.text'" in message
    assert "'Shadow'" in message


def test_misspelled_hook_is_caught() -> None:
    class Typo:
        @staticmethod
        @hookimpl
        def register_transform() -> Iterable[Transform]:
            return []

    with pytest.raises(pluggy.PluginValidationError, match="register_transform"):
        build_plugin_manager(load_entry_points=False, extra_plugins=[Typo])


def test_wrong_argument_in_hookimpl_is_caught() -> None:
    class Extra:
        @staticmethod
        @hookimpl
        def register_transforms(config: object) -> Iterable[Transform]:
            return []

    with pytest.raises(pluggy.PluginValidationError):
        build_plugin_manager(load_entry_points=False, extra_plugins=[Extra])


def test_wrong_registration_result_names_plugin() -> None:
    class Sloppy:
        @staticmethod
        @hookimpl
        def register_transforms() -> object:
            return ["trim"]

    with pytest.raises(PluginConfigError, match=r"'Sloppy'.*returned str, expected Transform"):
        PluginRegistry.build(load_entry_points=False, extra_plugins=[Sloppy])


def test_presets_are_plain_mapping_rows(registry: PluginRegistry) -> None:
    preset = registry.presets["xdm_person"]
    assert preset.plugin == "plugins.presets"
    assert all(registry.has_transform(row.transform or "trim") for row in preset.item.mappings)


def test_blocking_a_builtin_removes_its_transforms() -> None:
    registry = PluginRegistry.build(load_entry_points=False, blocked=["plugins.phone"])
    assert not registry.has_transform("phone_e164")
    assert registry.has_transform("trim")


def test_blocking_resolves_a_duplicate() -> None:
    registry = PluginRegistry.build(
        load_entry_points=False, blocked=["plugins.text"], extra_plugins=[Shadow]
    )
    assert registry.transform("trim").plugin == "Shadow"


def test_every_builtin_module_is_registered() -> None:
    pm = build_plugin_manager(load_entry_points=False)
    assert {pm.get_name(p) for p in pm.get_plugins()} == set(BUILTIN_PLUGINS)


def test_example_package_is_discovered_through_its_entry_point(example_installed: Path) -> None:
    pm = build_plugin_manager()
    assert "loyalty" in {pm.get_name(p) for p in pm.get_plugins()}
    assert [dist.project_name for _, dist in pm.list_plugin_distinfo()] == [
        "marketo-destination-example-plugin"
    ]
    registry = PluginRegistry(pm)
    entry = registry.transform("loyalty_tier")
    assert entry.plugin == "loyalty"
    func = entry.item.prepare({"tiers": "Silver:10,Gold:100"})
    assert [func(v) for v in (0, 10, "150", None)] == ["Bronze", "Silver", "Gold", None]


def test_entry_point_plugin_can_be_blocked(example_installed: Path) -> None:
    registry = PluginRegistry.build(blocked=["loyalty"])
    assert not registry.has_transform("loyalty_tier")
    assert set(registry.transforms) == BUILTIN_TRANSFORMS


def test_entry_points_can_be_skipped(example_installed: Path) -> None:
    assert not PluginRegistry.build(load_entry_points=False).has_transform("loyalty_tier")
