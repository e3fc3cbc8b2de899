"""Test kit for mapping plugins: the service's real plugin registry and mapper, in a few lines.

A plugin's test suite turns the kit on in its top-level ``conftest.py`` and names its plugin::

    import pytest
    import my_plugin

    pytest_plugins = ["marketo_destination_testing"]


    @pytest.fixture
    def plugin() -> object:
        return my_plugin

Tests then ask for the fixtures:

- ``plugin_registry``: a fresh :class:`~service.mapping.registry.PluginRegistry` holding the
  built-in plugins and ``plugin`` (what the service builds at start-up, without entry points);
- ``map_profile(mapping, profile)``: the profile mapped by the service's
  :class:`~service.mapping.mapper.Mapper` (``mapping``: rows, or the name of a preset);
- ``assert_rejected(mapping, profile, field=...)``: the rejection of a profile, checked to name
  the field and to quote none of the profile's values;
- ``check_transform(name)``: a transform's contract (declared return types, ``TransformError``
  as the only refusal, the same answer twice) over a set of awkward values.

The same helpers are plain functions too (:func:`build_registry`, :func:`mapper_for`,
:func:`rejection_of`, :func:`transform_problems`) for suites that do not use fixtures.
Needs pytest (the ``testing`` extra of the marketo-destination distribution).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import pytest

from service.domain import (
    DEDUPE_TARGET,
    ExclusionCode,
    FieldMapping,
    MappedProfile,
    MappingRejectedError,
)
from service.hookspecs import TransformError
from service.mapping.mapper import FieldType, Mapper
from service.mapping.registry import PluginRegistry

__all__ = [
    "AWKWARD_VALUES",
    "DEFAULT_DEDUPE_FIELD",
    "AssertRejected",
    "CheckTransform",
    "MapProfile",
    "MappingRejectedError",
    "MappingSpec",
    "assert_rejected",
    "build_registry",
    "check_transform",
    "map_profile",
    "mapper_for",
    "plugin",
    "plugin_registry",
    "rejection_of",
    "transform_problems",
]

DEFAULT_DEDUPE_FIELD = "email"
"""The Marketo field ``DedupeField`` rows write to, as on most instances."""

MappingSpec: TypeAlias = "str | Sequence[FieldMapping]"
"""Mapping rows, or the name of a registered mapping preset."""

AWKWARD_VALUES: tuple[object, ...] = (
    None,
    "",
    " ",
    "text",
    "  Mixed Case  ",
    "ünïcödé ß",
    "0",
    "1.5",
    "-7",
    "1e309",
    "NaN",
    "2026-02-30",
    0,
    1,
    -1,
    1.5,
    float("nan"),
    float("inf"),
    2**63,
    True,
    False,
    [],
    ["a", 1],
    {},
    {"k": "v"},
    "x" * 4_096,
)
"""Values :func:`transform_problems` feeds a transform: what profiles really hold, and worse."""


# -- plain helpers ----------------------------------------------------------------------------


def build_registry(*plugins: object, blocked: Iterable[str] = ()) -> PluginRegistry:
    """The registry the service would build with ``plugins`` installed: the built-ins and
    ``plugins`` (modules or objects with ``@hookimpl`` functions), no entry points.

    Raises :class:`~service.mapping.registry.PluginConfigError` as start-up would (a name
    registered twice, a misspelt hook).
    """
    extra = [p for p in plugins if p is not None]
    return PluginRegistry.build(load_entry_points=False, extra_plugins=extra, blocked=blocked)


def resolve(mapping: MappingSpec, registry: PluginRegistry) -> tuple[FieldMapping, ...]:
    """The rows of ``mapping``: given rows as they are, a preset's name as its rows."""
    if isinstance(mapping, str):
        presets = registry.presets
        if mapping not in presets:
            known = ", ".join(sorted(presets)) or "none"
            raise KeyError(f"unknown mapping preset {mapping!r} (known: {known})")
        return tuple(presets[mapping].item.mappings)
    return tuple(mapping)


def mapper_for(
    mapping: MappingSpec,
    registry: PluginRegistry,
    *,
    field_types: Mapping[str, str | FieldType] | None = None,
    dedupe_field: str = DEFAULT_DEDUPE_FIELD,
) -> Mapper:
    """The service's :class:`~service.mapping.mapper.Mapper` for ``mapping``.

    ``field_types`` gives a target's Marketo data type (``"integer"``, ``"date"`` ... or a
    :class:`~service.mapping.mapper.FieldType` with a length); other targets are ``string``
    fields of 255 characters, the dedupe field an ``email`` field. Raises
    :class:`~service.mapping.mapper.MappingConfigError` listing every problem, as Activate
    refuses the mapping.
    """
    rows = resolve(mapping, registry)
    given = dict(field_types or {})
    targets = [dedupe_field if r.target == DEDUPE_TARGET else r.target for r in rows]
    types: dict[str, FieldType] = {}
    for name in dict.fromkeys([dedupe_field, *targets, *given]):
        declared = given.get(name, "email" if name == dedupe_field else "string")
        types[name] = declared if isinstance(declared, FieldType) else FieldType(name, declared)
    return Mapper(rows, types.values(), registry, dedupe_field=dedupe_field)


def rejection_of(
    mapper: Mapper,
    profile: Mapping[str, Any],
    *,
    field: str,
    code: ExclusionCode | None = None,
) -> MappingRejectedError:
    """The error ``mapper`` rejects ``profile`` with, checked: it names ``field`` (its
    ``field`` attribute and its reason), has ``code`` when given, and its reason quotes no text
    value of the profile (reasons reach outcomes and counters). Fails the test otherwise."""
    try:
        mapped = mapper.map_profile(profile)
    except MappingRejectedError as error:
        rejected = error
    else:
        pytest.fail(f"the profile was mapped, not rejected: {mapped.fields}")
    assert rejected.field == field, f"the rejection names field {rejected.field!r}, not {field!r}"
    assert f"'{field}'" in rejected.reason, f"the reason does not name {field!r}: {rejected.reason}"
    if code is not None:
        assert rejected.code == code, f"code {rejected.code}, expected {code}"
    quoted = [v for v in _texts(profile) if len(v.strip()) >= 3 and v in rejected.reason]
    assert not quoted, f"the reason quotes the profile's value(s) {quoted}: {rejected.reason}"
    return rejected


def transform_problems(
    registry: PluginRegistry,
    name: str,
    *,
    options: Mapping[str, str] | None = None,
    values: Iterable[object] = AWKWARD_VALUES,
) -> list[str]:
    """What is wrong with transform ``name`` over ``values`` (empty when nothing): a result of
    a type it does not declare, an exception other than ``TransformError``, a different answer
    to the same value. ``options`` default to the transform's ``example_options``."""
    entry = registry.transform(name)
    transform = entry.item
    unknown = set(options or {}) - set(transform.options)
    if unknown:
        return [f"options {sorted(unknown)} are not declared by {name!r}"]
    func = transform.prepare(dict(transform.example_options if options is None else options))
    problems = []
    for value in values:
        if transform.multi_source:
            value = (value, value)
        shown = _short(value)
        answers = []
        for _ in range(2):
            try:
                answers.append(("value", func(value)))
            except TransformError:
                answers.append(("refused", None))
            except Exception as error:  # the contract allows TransformError only
                answers.append(("raised", type(error).__qualname__))
        kind, result = answers[0]
        if kind == "raised":
            problems.append(f"{name}({shown}) raised {result}, not TransformError")
        elif kind == "value" and result is not None and not isinstance(result, transform.returns):
            declared = ", ".join(t.__name__ for t in transform.returns)
            problems.append(
                f"{name}({shown}) returned a {type(result).__name__}, declared: {declared}"
            )
        if not _same(answers[0], answers[1]):
            problems.append(f"{name}({shown}) answered differently twice: {answers}")
    return problems


def _texts(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}... ({len(text)} characters)"


def _same(a: tuple[str, object], b: tuple[str, object]) -> bool:
    if a[0] != b[0]:
        return False
    x, y = a[1], b[1]
    return x == y or (isinstance(x, float) and isinstance(y, float) and x != x and y != y)


# -- pytest fixtures --------------------------------------------------------------------------

MapProfile: TypeAlias = Callable[..., MappedProfile]
"""The type of the ``map_profile`` fixture, for annotating tests."""
AssertRejected: TypeAlias = Callable[..., MappingRejectedError]
"""The type of the ``assert_rejected`` fixture."""
CheckTransform: TypeAlias = Callable[..., None]
"""The type of the ``check_transform`` fixture."""


@pytest.fixture
def plugin() -> object:
    """The plugin under test; override it in your ``conftest.py``. Default: none (built-ins)."""
    return None


@pytest.fixture
def plugin_registry(plugin: object) -> PluginRegistry:
    """A fresh registry: the built-in plugins and ``plugin``."""
    return build_registry(plugin)


@pytest.fixture
def map_profile(plugin_registry: PluginRegistry) -> MapProfile:
    """``map_profile(mapping, profile, *, field_types=None, dedupe_field="email")``: the
    profile mapped through ``mapping`` (rows or a preset's name) by the service's mapper;
    raises ``MappingRejectedError`` when the profile is excluded (see :func:`mapper_for`)."""

    def mapped(
        mapping: MappingSpec,
        profile: Mapping[str, Any],
        *,
        field_types: Mapping[str, str | FieldType] | None = None,
        dedupe_field: str = DEFAULT_DEDUPE_FIELD,
    ) -> MappedProfile:
        mapper = mapper_for(
            mapping, plugin_registry, field_types=field_types, dedupe_field=dedupe_field
        )
        return mapper.map_profile(profile)

    return mapped


@pytest.fixture
def assert_rejected(plugin_registry: PluginRegistry) -> AssertRejected:
    """``assert_rejected(mapping, profile, *, field, code=None, field_types=None,
    dedupe_field="email")``: the rejection of ``profile``, checked to name ``field`` and to
    quote no profile value (see :func:`rejection_of`)."""

    def rejected(
        mapping: MappingSpec,
        profile: Mapping[str, Any],
        *,
        field: str,
        code: ExclusionCode | None = None,
        field_types: Mapping[str, str | FieldType] | None = None,
        dedupe_field: str = DEFAULT_DEDUPE_FIELD,
    ) -> MappingRejectedError:
        mapper = mapper_for(
            mapping, plugin_registry, field_types=field_types, dedupe_field=dedupe_field
        )
        return rejection_of(mapper, profile, field=field, code=code)

    return rejected


@pytest.fixture
def check_transform(plugin_registry: PluginRegistry) -> CheckTransform:
    """``check_transform(name, *, options=None, values=AWKWARD_VALUES)``: fails the test with
    every breach of the transform contract :func:`transform_problems` finds."""

    def check(
        name: str,
        *,
        options: Mapping[str, str] | None = None,
        values: Iterable[object] = AWKWARD_VALUES,
    ) -> None:
        problems = transform_problems(plugin_registry, name, options=options, values=values)
        assert not problems, "\n".join(problems)

    return check
