"""The rules an active mapping must satisfy for its destination's spec.

Activate applies them to the mapping it is given; Configure applies them to the mapping already
active when it changes the spec (sync type, person action, dedupe field, marketing actions).
Mapping rules (PRODUCT.md "Required mappings"): exactly one `DedupeField` row; when the
destination may create leads, `firstName`, `lastName` and `email` must be mapped (the
`DedupeField` row supplies `email` when email is the deduplication field); every target is a
writable field of the instance; every transform is known to the plugin registry; the
`DedupeField` row converts to the dedupe field's type; data-usage policies hold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from service.domain import (
    DEDUPE_TARGET,
    REQUIRED_FOR_CREATE,
    DestinationSpec,
    FieldMapping,
    FieldViolation,
)
from service.mapping.mapper import FieldType, Mapper, MappingConfigError, reads_identities
from service.mapping.registry import PluginRegistry
from service.marketo.types import SchemaField
from service.usecases.governance import Policy
from service.usecases.governance import violations as policy_violations

# `\s*` on both sides of the `*` only when it is there: two adjacent `\s*` would backtrack over
# every split of a run of spaces (quadratic time).
ARRAY_SOURCE = re.compile(r"\[\s*(?:\*\s*)?\]")
"""A source path that selects a whole array (`items[]`, `items[*]`): arrays are not exported."""


class MappingRules:
    """The rules an active mapping must satisfy: the data-usage policies of its destination's
    marketing actions and the mapping rules, transforms checked against the plugin registry."""

    def __init__(self, registry: PluginRegistry, policies: Sequence[Policy] = ()) -> None:
        self._registry = registry
        self._policies = tuple(policies)

    def reads_identities(self, mappings: Sequence[FieldMapping]) -> bool:
        """Whether the mapping reads an identity namespace, which needs identity_graph.view."""
        return reads_identities(mappings, self._registry)

    def violations(
        self,
        spec: DestinationSpec,
        mappings: Sequence[FieldMapping],
        fields: Sequence[SchemaField],
    ) -> list[FieldViolation]:
        """Every rule the mapping breaks under `spec`: the data-usage policies of its marketing
        actions, then the mapping rules (`fields`: the instance's lead schema)."""
        violations = [
            FieldViolation(
                f"mappings[{v.index}].labels",
                f"label {v.label!r} of {v.source!r} may not be exported for marketing action "
                f"{v.marketing_action!r} (policy {v.policy!r})",
            )
            for v in policy_violations(mappings, spec.marketing_actions, self._policies)
        ]
        return violations + mapping_violations(spec, mappings, fields, self._registry)


def mapping_violations(
    spec: DestinationSpec,
    mappings: Sequence[FieldMapping],
    fields: Sequence[SchemaField],
    registry: PluginRegistry,
) -> list[FieldViolation]:
    """Every mapping rule broken, each naming the row."""
    violations: list[FieldViolation] = []
    dedupe_rows = [i for i, m in enumerate(mappings) if m.target == DEDUPE_TARGET]
    if not dedupe_rows:
        violations.append(
            FieldViolation("mappings", f"exactly one mapping to {DEDUPE_TARGET!r} is required")
        )
    for index in dedupe_rows[1:]:
        violations.append(
            FieldViolation(
                f"mappings[{index}].target", f"{DEDUPE_TARGET!r} is mapped more than once"
            )
        )
    rules = spec.rules()
    targets = {m.target for m in mappings}
    if rules.creates_leads:
        supplied = targets | {spec.dedupe_field} if dedupe_rows else targets
        missing = [name for name in REQUIRED_FOR_CREATE if name not in supplied]
        if missing:
            violations.append(
                FieldViolation(
                    "mappings",
                    f"to create leads Marketo needs {', '.join(missing)} mapped"
                    + (
                        " (the DedupeField mapping supplies email)"
                        if spec.dedupe_field == "email"
                        else ""
                    ),
                )
            )
    writable = {f.name: f for f in fields if f.updateable}
    known = {f.name for f in fields}
    for index, mapping in enumerate(mappings):
        where = f"mappings[{index}]"
        if not mapping.source:
            violations.append(FieldViolation(f"{where}.source", "is required"))
        elif ARRAY_SOURCE.search(mapping.source):
            violations.append(
                FieldViolation(
                    f"{where}.source", "selects an array; arrays and objects cannot be exported"
                )
            )
        if not mapping.target:
            violations.append(FieldViolation(f"{where}.target", "is required"))
        elif mapping.target != DEDUPE_TARGET and mapping.target not in writable:
            problem = "is read-only" if mapping.target in known else "is not a field"
            violations.append(
                FieldViolation(
                    f"{where}.target", f"{mapping.target!r} {problem} of the Marketo instance"
                )
            )
        if mapping.transform and not registry.has_transform(mapping.transform):
            violations.append(
                FieldViolation(f"{where}.transform", f"unknown transform {mapping.transform!r}")
            )
    if not violations:
        try:
            Mapper(
                mappings,
                [FieldType(f.name, f.data_type, f.length) for f in fields],
                registry,
                dedupe_field=spec.dedupe_field,
            )
        except MappingConfigError as error:
            violations.extend(error.violations)
    return violations
