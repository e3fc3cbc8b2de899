"""The plugin contract of the Marketo destination.

One name, `NAME`, is the pluggy project name of both markers, of the plugin manager and of the
entry-point group through which third-party plugins are discovered. Every hook is a registration
hook called once, when the plugin registry is built at start-up; no hook is called per profile.

A transform turns one mapped profile value into another. It is declared by a `Transform` whose
`prepare` receives the mapping row's options once, at mapping construction, and returns the
callable applied to each value, so option parsing never runs per profile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import pluggy

from service.domain import DEDUPE_TARGET, FieldMapping

__all__ = [
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

NAME = "marketo_destination"
"""Project name of the markers and the plugin manager, and the entry-point group."""

hookspec = pluggy.HookspecMarker(NAME)
hookimpl = pluggy.HookimplMarker(NAME)

TransformFunc = Callable[[object], object]
"""Applied to one value: a JSON scalar, or a tuple of them for a multi-source transform."""


class TransformError(ValueError):
    """Raised by a transform for a value it cannot convert.

    The profile is excluded with the code `value_rejected` and a reason naming the field,
    transform and plugin. The message is not kept (it may quote the value, and reasons reach
    outcomes and counters). Any other exception is treated as a plugin bug and also excludes only
    that profile (code `transform_failed`).
    """


@dataclass(frozen=True, slots=True)
class Transform:
    """A named value transform offered by a plugin."""

    name: str
    """Unique name used in mapping rows (`FieldMapping.transform`)."""
    prepare: Callable[[Mapping[str, str]], TransformFunc]
    """Called once per mapping row with its options; returns the per-value function.

    Raise `ValueError` for invalid options: the mapping is then refused.
    """
    returns: tuple[type, ...]
    """Types the per-value function may return besides `None` (which means "no value")."""
    description: str = ""
    """One line shown in the docs and in errors."""
    options: Mapping[str, str] = field(default_factory=dict)
    """Accepted option names with a short description each; other option names are refused."""
    example_options: Mapping[str, str] = field(default_factory=dict)
    """Options used by the conformance suite (must include every required option)."""
    multi_source: bool = False
    """When true, `FieldMapping.source` is a comma-separated list of paths and the function
    receives a tuple with one value per path."""

    @classmethod
    def from_function(
        cls, name: str, func: TransformFunc, *, returns: tuple[type, ...], description: str = ""
    ) -> Transform:
        """A transform without options that applies `func` to each value."""

        def prepare(options: Mapping[str, str]) -> TransformFunc:
            return func

        return cls(name=name, prepare=prepare, returns=returns, description=description)


def offer_transforms(*transforms: Transform) -> Callable[[], Iterable[Transform]]:
    """A `register_transforms` implementation that offers `transforms`.

    Assign it to the module-level name the hook has:
    `register_transforms = offer_transforms(Transform(...), ...)`.
    """

    def register_transforms() -> Iterable[Transform]:
        return transforms

    return hookimpl(register_transforms)


@dataclass(frozen=True, slots=True)
class MappingPreset:
    """A named, reusable list of mapping rows (for example for a standard XDM schema)."""

    name: str
    description: str
    mappings: tuple[FieldMapping, ...]


@hookspec
def register_transforms() -> Iterable[Transform]:  # type: ignore[empty-body]
    """Return the transforms this plugin offers.

    Called once, with no arguments, when the plugin registry is built at start-up. Return an
    iterable of `Transform`. Transform names are global: two plugins offering the same name stop
    start-up with an error naming both plugins.
    """


@hookspec
def register_mapping_presets() -> Iterable[MappingPreset]:  # type: ignore[empty-body]
    """Return named mapping presets this plugin offers.

    Called once, with no arguments, when the plugin registry is built at start-up. Return an
    iterable of `MappingPreset`; preset names are global like transform names. Preset rows are
    validated like any mapping when a destination uses them.
    """
