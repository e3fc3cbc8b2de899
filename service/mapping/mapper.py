"""Maps profiles to Marketo lead fields through a destination's mapping rows.

Everything is compiled when the `Mapper` is built (paths, transforms with their options, data-type
coercers), so `map_profile` only reads, calls and checks.

Source paths are dotted paths into the profile (`person.name.firstName`); a numeric segment indexes
an array (`emails.0.address`). `identityMap.<namespace>` reads the `id` of the identity marked
`"primary": true` in that namespace's array, else of the first one. A missing path is "no value":
the field is left out of the mapped profile (Marketo keeps what it has). A transform still sees the
missing value as `None`, so `default` can supply one.

Every source value is measured before any transform or coercion sees it: text longer than the row's
limit (`MAX_SOURCE_CHARS`, or the target field's length when that is longer, at most
`MAX_TEXT_CHARS`), and arrays or objects of more than `MAX_SOURCE_ITEMS` items or with more text in
all than that limit, reject the profile, naming the field, the source path and the limit, never
the value. So no transform, however its cost grows with the length of its input, ever sees an
unbounded value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.domain import (
    DEDUPE_TARGET,
    ExclusionCode,
    FieldMapping,
    FieldViolation,
    MappedProfile,
    MappingRejectedError,
    MissingDedupeValueError,
)
from service.hookspecs import TransformError, TransformFunc
from service.mapping.coercion import (
    DEFAULT_LENGTHS,
    SUPPORTED_DATA_TYPES,
    Coercer,
    CoercionError,
    coercer_for,
)
from service.mapping.registry import PluginRegistry

__all__ = [
    "MAX_SOURCE_CHARS",
    "MAX_SOURCE_ITEMS",
    "MAX_TEXT_CHARS",
    "FieldType",
    "Mapper",
    "MappingConfigError",
    "reads_identities",
    "source_limit",
    "validate_mapping_types",
]

Reader = Callable[[Mapping[str, Any]], object]

IDENTITY_MAP = "identityMap"
"""The profile key holding the identities by namespace: a source path under it reads identities."""
MAX_SOURCE_CHARS = 4_096
"""Longest text, in characters, a source value may hold when its target field takes less."""
MAX_TEXT_CHARS = DEFAULT_LENGTHS["text"]
"""Longest text any source value may hold: that of a Marketo text area (65,535 characters)."""
MAX_SOURCE_ITEMS = 1_000
"""Most items an array or object source value may hold, the items of nested ones counted (its
text, keys included, counts against the same limit as a text value)."""


@dataclass(frozen=True, slots=True)
class FieldType:
    """A Marketo lead field as `describe` reports it."""

    name: str
    """REST name, e.g. `firstName`."""
    data_type: str
    """Marketo data type: string, text, email, phone, url, integer, float, currency, percent,
    boolean, date, datetime (others, e.g. reference, cannot be mapped)."""
    length: int | None = None
    """Maximum length of text types; `None` means Marketo's default for the type."""

    @classmethod
    def from_describe(cls, entry: Mapping[str, Any]) -> FieldType:
        """From a `describe.json` (`rest.name`) or `describe2.json` (`name`) field entry."""
        rest = entry.get("rest")
        name = rest["name"] if isinstance(rest, Mapping) else entry["name"]
        length = entry.get("length")
        return cls(str(name), str(entry["dataType"]), int(length) if length else None)


class MappingConfigError(ValueError):
    """Mapping rows that cannot be compiled: `violations` names the field of each problem as a
    request names it (`mappings[3].target`; `mappings` when given as bare text), `problems`
    words each one."""

    def __init__(self, problems: Sequence[str | FieldViolation]) -> None:
        self.violations = tuple(
            p if isinstance(p, FieldViolation) else FieldViolation("mappings", p) for p in problems
        )
        self.problems = [v.description for v in self.violations]
        super().__init__("; ".join(self.problems))


def validate_mapping_types(
    mappings: Iterable[FieldMapping],
    field_types: Iterable[FieldType],
    registry: PluginRegistry,
    *,
    dedupe_field: str,
) -> list[str]:
    """Return every problem that would stop a `Mapper` from being built (empty when none)."""
    try:
        Mapper(mappings, field_types, registry, dedupe_field=dedupe_field)
    except MappingConfigError as exc:
        return exc.problems
    return []


def missing_fields(
    mappings: Iterable[FieldMapping], field_types: Iterable[FieldType], *, dedupe_field: str
) -> list[str]:
    """The Marketo fields the mapping writes or looks up by (the dedupe field) that are not in
    the instance's lead schema, in mapping order."""
    names = {ft.name for ft in field_types}
    wanted = [dedupe_field] + [
        dedupe_field if row.target == DEDUPE_TARGET else row.target for row in mappings
    ]
    return [name for name in dict.fromkeys(wanted) if name not in names]


Step = Callable[[Mapping[str, Any]], object]
"""One compiled mapping row: reads, transforms and coerces one value (`None`: no value)."""


class Mapper:
    """Implements `ProfileMapper` for one destination's mapping."""

    __slots__ = ("_dedupe_step", "_steps", "dedupe_field")

    def __init__(
        self,
        mappings: Iterable[FieldMapping],
        field_types: Iterable[FieldType],
        registry: PluginRegistry,
        *,
        dedupe_field: str,
    ) -> None:
        """Compile `mappings`; raise `MappingConfigError` listing every problem.

        `field_types` are the instance's lead fields (at least every target and the dedupe
        field); `dedupe_field` is the Marketo field the `DedupeField` target is written to.
        """
        types = {ft.name: ft for ft in field_types}
        problems: list[FieldViolation] = []
        steps: list[tuple[str, Step]] = []
        seen: set[str] = set()
        dedupe_step: tuple[str, Step] | None = None
        for index, row in enumerate(mappings):
            output = dedupe_field if row.target == DEDUPE_TARGET else row.target
            label = row.target if output == row.target else f"{row.target} ({output})"
            if output in seen:
                problems.append(
                    FieldViolation(
                        f"mappings[{index}].target", f"target {label!r} is mapped more than once"
                    )
                )
                continue
            seen.add(output)
            step = _compile(row, index, output, label, types.get(output), registry, problems)
            if step is None:
                continue
            if row.target == DEDUPE_TARGET:
                dedupe_step = (output, step)
            else:
                steps.append((output, step))
        if problems:
            raise MappingConfigError(problems)
        self.dedupe_field = dedupe_field
        self._steps = tuple(steps)
        self._dedupe_step = dedupe_step

    def map_profile(self, profile: Mapping[str, Any]) -> MappedProfile:
        """Return the mapped profile, or raise `MappingRejectedError` naming the field and why."""
        fields: dict[str, object] = {}
        dedupe_value: str | None = None
        if self._dedupe_step is not None:
            output, step = self._dedupe_step
            value = step(profile)
            if value is None:
                raise MissingDedupeValueError(
                    f"field {DEDUPE_TARGET!r}: the profile has no value for the deduplication "
                    "field",
                    field=output,
                )
            fields[output] = value
            dedupe_value = str(value)
        for output, step in self._steps:
            value = step(profile)
            if value is not None:
                fields[output] = value
        return MappedProfile(dedupe_value=dedupe_value, fields=fields)


_CONTAINERS = (list, tuple, dict)
_NESTED = (list, dict)
"""What a JSON path can lead to besides a scalar (a multi-source reader's tuple is checked by the
reader, part by part)."""


def source_limit(field_type: FieldType) -> int:
    """The longest text a source value mapped to `field_type` may hold."""
    length = field_type.length or DEFAULT_LENGTHS.get(field_type.data_type, 0)
    return max(MAX_SOURCE_CHARS, min(length, MAX_TEXT_CHARS))


def _oversize(value: object, limit: int) -> str | None:
    """Why `value` is too large to map (its size, never its content), or None."""
    if isinstance(value, str):
        if len(value) > limit:
            return f"has {len(value):,} characters, more than the limit of {limit:,}"
        return None
    # An array or object: its items and the text of its keys and strings, all nesting levels
    # counted together (a transform may well render the whole of it, e.g. in an error message).
    items = chars = 0
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, str):
            chars += len(node)
            if chars > limit:
                return f"holds more than {limit:,} characters of text (nested ones counted)"
        elif isinstance(node, _CONTAINERS):
            items += len(node)
            if items > MAX_SOURCE_ITEMS:
                return f"holds more than {MAX_SOURCE_ITEMS:,} items (nested ones counted)"
            if isinstance(node, dict):
                pending.extend(node.keys())
                pending.extend(node.values())
            else:
                pending.extend(node)
    return None


def _check_size(
    value: object, field: str, output: str, sources: tuple[str, ...], limit: int
) -> None:
    """Raise `MappingRejectedError` when a source value is too large to map.

    `value` is what the row's reader returned: one value, or one per source for a multi-source
    transform (a tuple).
    """
    values = value if isinstance(value, tuple) else (value,)
    for source, part in zip(sources, values, strict=False):
        why = _oversize(part, limit)
        if why is not None:
            raise MappingRejectedError(f"{field}: source {source!r} {why}", field=output)


def _step(
    target: str,
    output: str,
    sources: tuple[str, ...],
    limit: int,
    read: Reader,
    func: TransformFunc | None,
    transform: str,
    plugin: str,
    returns: tuple[type, ...],
    data_type: str,
    length: int | None,
    coerce: Coercer,
) -> Step:
    # Specialised closures: this is the per-value hot path, so no attribute look-ups in it.
    # Rejections name the field and the check, never the value: a plugin's own message may
    # quote it and is left out; a data type's says what the value is, never what it holds. The
    # reason reaches outcomes and counters.
    at_most = f", at most {length} characters" if length is not None else ""
    type_named = f"field {target!r} ({data_type}{at_most})"
    not_fitting = f"{type_named}: the value does not fit the data type"
    # Sizes are checked before any transform or coercer runs; a short text or a number costs
    # one type check and one comparison.
    field = f"field {target!r} ({data_type})"
    if func is None:

        def plain(profile: Mapping[str, Any]) -> object:
            value = read(profile)
            if value is None:
                return None
            if len(value) > limit if type(value) is str else isinstance(value, _NESTED):
                _check_size(value, field, output, sources, limit)
            try:
                return coerce(value)
            except CoercionError as exc:
                raise MappingRejectedError(f"{type_named}: {exc}", field=output) from None
            except Exception as exc:  # e.g. int() of a 5,000-digit string
                raise MappingRejectedError(
                    f"{not_fitting} ({type(exc).__name__})", field=output
                ) from None

        return plain

    where = f"field {target!r}: transform {transform!r} of plugin {plugin!r}"
    expected = " or ".join(t.__name__ for t in returns)
    exact = frozenset(returns)
    refused = f"{where} refused the value"

    def transformed(profile: Mapping[str, Any]) -> object:
        value = read(profile)
        if len(value) > limit if type(value) is str else isinstance(value, _NESTED):
            _check_size(value, field, output, sources, limit)
        try:
            value = func(value)
        except TransformError:
            raise MappingRejectedError(refused, field=output) from None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            # A plugin bug excludes this profile only; the batch and the service go on. Even
            # SystemExit: raised in the planning thread, it would stop the event loop.
            raise MappingRejectedError(
                f"{where} failed ({type(exc).__name__})",
                code=ExclusionCode.TRANSFORM_FAILED,
                field=output,
            ) from None
        if value is None:
            return None
        if type(value) not in exact and not isinstance(value, returns):
            raise MappingRejectedError(
                f"{where} returned {type(value).__name__}, expected {expected}",
                code=ExclusionCode.TRANSFORM_FAILED,
                field=output,
            )
        try:
            return coerce(value)
        except CoercionError as exc:
            raise MappingRejectedError(f"{type_named}: {exc}", field=output) from None
        except Exception as exc:
            raise MappingRejectedError(
                f"{not_fitting} ({type(exc).__name__})", field=output
            ) from None

    return transformed


def _compile(
    row: FieldMapping,
    index: int,
    output: str,
    label: str,
    field_type: FieldType | None,
    registry: PluginRegistry,
    problems: list[FieldViolation],
) -> Step | None:
    """The step of mapping row `index`, or None with its problems added to `problems`."""
    before = len(problems)

    def bad(attribute: str, description: str) -> None:
        problems.append(FieldViolation(f"mappings[{index}].{attribute}", description))

    if field_type is None:
        bad("target", f"target {label!r} is not a field of the Marketo instance")
    elif field_type.data_type not in SUPPORTED_DATA_TYPES:
        bad(
            "target",
            f"target {label!r} has data type {field_type.data_type!r}, which cannot be mapped",
        )
    func: TransformFunc | None = None
    plugin = ""
    returns: tuple[type, ...] = ()
    multi = False
    if row.transform:
        if not registry.has_transform(row.transform):
            bad("transform", f"target {label!r}: unknown transform {row.transform!r}")
        else:
            entry = registry.transform(row.transform)
            plugin, declared = entry.plugin, entry.item
            returns, multi = declared.returns, declared.multi_source
            unknown = sorted(set(row.options) - set(declared.options))
            if unknown:
                bad(
                    "options",
                    f"target {label!r}: transform {row.transform!r} has no option(s) "
                    f"{', '.join(unknown)}",
                )
            else:
                try:
                    func = declared.prepare(row.options)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # a plugin's, SystemExit included
                    bad(
                        "options",
                        f"target {label!r}: transform {row.transform!r} of plugin {plugin!r} "
                        f"refused its options: {exc}",
                    )
    elif row.options:
        bad("options", f"target {label!r}: options given without a transform")
    paths = source_paths(row, registry)
    if any(not p or "" in p.split(".") for p in paths):
        bad("source", f"target {label!r}: invalid source path {row.source!r}")
    if len(problems) > before or field_type is None:
        return None
    readers = [_reader(p) for p in paths]
    if multi:
        field = f"field {row.target!r} ({field_type.data_type})"
        read: Reader = _tuple_reader(
            tuple(readers), field, output, tuple(paths), source_limit(field_type)
        )
    else:
        read = readers[0]
    return _step(
        row.target,
        output,
        tuple(paths),
        source_limit(field_type),
        read,
        func,
        row.transform or "",
        plugin,
        returns,
        field_type.data_type,
        field_type.length,
        coercer_for(field_type.data_type, field_type.length),
    )


def source_paths(row: FieldMapping, registry: PluginRegistry) -> list[str]:
    """The profile paths a mapping row reads: its source, or each of its comma-separated paths
    when its transform takes several sources."""
    transform = row.transform
    multi = (
        transform is not None
        and registry.has_transform(transform)
        and registry.transform(transform).item.multi_source
    )
    return [p.strip() for p in row.source.split(",")] if multi else [row.source.strip()]


def reads_identities(mappings: Iterable[FieldMapping], registry: PluginRegistry) -> bool:
    """Whether a row of the mapping reads the profile's identities (a path under `identityMap`,
    as one of its sources or its only one)."""
    return any(
        path.split(".")[0] == IDENTITY_MAP
        for row in mappings
        for path in source_paths(row, registry)
    )


def _reader(path: str) -> Reader:
    parts = path.split(".")
    if len(parts) == 2 and parts[0] == IDENTITY_MAP:
        return _identity_reader(parts[1])
    if any(p.isdigit() for p in parts):
        keys: tuple[str | int, ...] = tuple(int(p) if p.isdigit() else p for p in parts)
        return _indexed_reader(keys)
    if len(parts) == 1:
        key = parts[0]

        def read_one(profile: Mapping[str, Any]) -> object:
            return profile.get(key)

        return read_one
    names = tuple(parts)

    def read(profile: Mapping[str, Any]) -> object:
        # Missing keys and walking into a scalar or an array both mean "no value".
        try:
            current: Any = profile
            for name in names:
                current = current[name]
            return current
        except (KeyError, TypeError, IndexError):
            return None

    return read


def _indexed_reader(keys: tuple[str | int, ...]) -> Reader:
    def read(profile: Mapping[str, Any]) -> object:
        current: Any = profile
        for key in keys:
            if isinstance(key, int):
                if not isinstance(current, list | tuple) or key >= len(current):
                    return None
                current = current[key]
            elif isinstance(current, Mapping):
                current = current.get(key)
            else:
                return None
        return current

    return read


def _identity_reader(namespace: str) -> Reader:
    def read(profile: Mapping[str, Any]) -> object:
        identity_map = profile.get("identityMap")
        if not isinstance(identity_map, Mapping):
            return None
        identities = identity_map.get(namespace)
        if not isinstance(identities, list | tuple) or not identities:
            return None
        chosen = identities[0]
        for identity in identities:
            if isinstance(identity, Mapping) and identity.get("primary") is True:
                chosen = identity
                break
        return chosen.get("id") if isinstance(chosen, Mapping) else None

    return read


def _tuple_reader(
    readers: tuple[Reader, ...], field: str, output: str, sources: tuple[str, ...], limit: int
) -> Reader:
    def read(profile: Mapping[str, Any]) -> object:
        values = tuple([r(profile) for r in readers])
        for value in values:
            if len(value) > limit if type(value) is str else isinstance(value, _NESTED):
                _check_size(values, field, output, sources, limit)
        return values

    return read
