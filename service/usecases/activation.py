"""Activate and Deactivate: validate the mapping, give each audience one Marketo static list.

Mapping rules (PRODUCT.md "Required mappings"): exactly one `DedupeField` row; when the
destination may create leads, `firstName`, `lastName` and `email` must be mapped (the
`DedupeField` row supplies `email` when email is the deduplication field); every target is a
writable field of the instance; every transform is known to the plugin registry; reading an
identity namespace (`identityMap.*`) needs `identity_graph.view`; data-usage policies hold.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence

import httpx

from service.api.access import IDENTITY_GRAPH_VIEW, current_principal, require
from service.domain import (
    DEDUPE_TARGET,
    REQUIRED_FOR_CREATE,
    ActivatedAudience,
    Audience,
    AudienceType,
    DestinationSpec,
    FieldMapping,
    FieldViolation,
    ListAction,
)
from service.errors import AlreadyExists, InvalidArgument, NotFound
from service.mapping.mapper import FieldType, Mapper, MappingConfigError
from service.mapping.registry import PluginRegistry
from service.marketo.client import MarketoClient
from service.marketo.errors import MarketoError
from service.marketo.types import Folder, SchemaField, StaticList
from service.store.base import ActivationRecord, DestinationRecord, Store
from service.usecases.connections import MarketoConnections
from service.usecases.destinations import describe_instance, marketo_failure
from service.usecases.governance import Policy
from service.usecases.governance import violations as policy_violations

MAX_LIST_NAME = 255
# `\s*` on both sides of the `*` only when it is there: two adjacent `\s*` would backtrack over
# every split of a run of spaces (quadratic time).
ARRAY_SOURCE = re.compile(r"\[\s*(?:\*\s*)?\]")
"""A source path that selects a whole array (`items[]`, `items[*]`): arrays are not exported."""


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
            violations.extend(FieldViolation("mappings", problem) for problem in error.problems)
    return violations


def audience_violations(
    spec: DestinationSpec, audiences: Sequence[Audience]
) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    seen: set[str] = set()
    for index, audience in enumerate(audiences):
        where = f"audiences[{index}]"
        if not audience.id:
            violations.append(FieldViolation(f"{where}.id", "is required"))
        elif audience.id in seen:
            violations.append(FieldViolation(f"{where}.id", "appears twice"))
        seen.add(audience.id)
        if audience.type is not AudienceType.PEOPLE:
            violations.append(
                FieldViolation(
                    f"{where}.type",
                    f"{audience.type.value} audiences are not supported by Marketo Engage; "
                    "only people audiences can be activated",
                )
            )
        needs_list = spec.rules().manages_lists and not audience.marketo_list_id
        if needs_list and not audience.name.strip():
            violations.append(FieldViolation(f"{where}.name", "is required to name its list"))
        elif len(audience.name) > MAX_LIST_NAME:
            violations.append(
                FieldViolation(f"{where}.name", f"is longer than {MAX_LIST_NAME} characters")
            )
        if audience.marketo_list_id < 0:
            violations.append(FieldViolation(f"{where}.marketo_list_id", "must be positive"))
    return violations


class Activations:
    """The activation use cases."""

    def __init__(
        self,
        store: Store,
        connections: MarketoConnections,
        registry: PluginRegistry,
        *,
        policies: Sequence[Policy] = (),
        list_folder: str = "Marketo Destination",
        on_changed: Callable[[DestinationRecord], Awaitable[None]] | None = None,
    ) -> None:
        """`on_changed(before)` runs after Activate stored a mapping (the dispatcher re-checks a
        paused destination at once)."""
        self._store = store
        self._connections = connections
        self._registry = registry
        self._policies = tuple(policies)
        self._list_folder = list_folder
        self._on_changed = on_changed

    async def activate(
        self,
        destination_id: str,
        audiences: Sequence[Audience],
        mappings: Sequence[FieldMapping],
        *,
        dry_run: bool,
    ) -> list[ActivatedAudience]:
        principal = current_principal()
        record = await self._store.get_destination(destination_id, tenant=principal.tenant)
        if any(m.source.startswith("identityMap.") for m in mappings):
            require(principal, IDENTITY_GRAPH_VIEW)
        spec = record.spec
        violations = audience_violations(spec, audiences)
        violations += [
            FieldViolation(
                f"mappings[{v.index}].labels",
                f"label {v.label!r} of {v.source!r} may not be exported for marketing action "
                f"{v.marketing_action!r} (policy {v.policy!r})",
            )
            for v in policy_violations(mappings, spec.marketing_actions, self._policies)
        ]
        client = self._connections.client(spec.connection, interactive=True)
        description = await describe_instance(client)
        violations += mapping_violations(spec, mappings, description.fields, self._registry)
        if violations:
            raise InvalidArgument(violations)

        current = {a.audience_id: a for a in await self._store.activations(destination_id)}
        manages_lists = spec.rules().manages_lists
        results: list[ActivatedAudience] = []
        records: list[ActivationRecord] = []
        folder: Folder | None = None
        for audience in audiences:
            if not manages_lists:
                result = ActivatedAudience(audience.id, 0, "", ListAction.NONE)
            else:
                before = current.get(audience.id)
                if (
                    before is not None
                    and before.active
                    and (
                        not audience.marketo_list_id
                        or audience.marketo_list_id == before.marketo_list_id
                    )
                ):
                    result = ActivatedAudience(
                        audience.id, before.marketo_list_id, before.list_name, ListAction.UNCHANGED
                    )
                else:
                    if folder is None and not audience.marketo_list_id and not dry_run:
                        folder = await self._folder(client, spec.workspace_name)
                    result = await self._list_for(client, audience, folder, dry_run=dry_run)
            results.append(result)
            records.append(
                ActivationRecord(
                    audience_id=audience.id,
                    audience_name=audience.name,
                    origin=audience.origin,
                    marketo_list_id=result.marketo_list_id,
                    list_name=result.list_name,
                )
            )
        if not dry_run:
            await self._store.upsert_activations(destination_id, records, mappings)
            if self._on_changed is not None:
                await self._on_changed(record)
        return results

    async def deactivate(
        self, destination_id: str, audience_ids: Sequence[str], *, delete_lists: bool
    ) -> list[str]:
        record = await self._store.get_destination(
            destination_id, tenant=current_principal().tenant
        )
        if not audience_ids:
            raise InvalidArgument([FieldViolation("audience_ids", "is required")])
        active = {
            a.audience_id: a for a in await self._store.activations(destination_id) if a.active
        }
        unknown = [a for a in audience_ids if a not in active]
        if unknown:
            raise NotFound(f"audiences not active on this destination: {', '.join(unknown)}")
        if delete_lists:
            client = self._connections.client(record.spec.connection, interactive=True)
            for audience_id in audience_ids:
                list_id = active[audience_id].marketo_list_id
                if list_id:
                    try:
                        await client.delete_static_list(list_id)
                    except (MarketoError, httpx.HTTPError) as error:
                        raise marketo_failure(error, f"deleting list {list_id}") from None
        await self._store.deactivate(destination_id, audience_ids)
        return list(audience_ids)

    async def _folder(self, client: MarketoClient, workspace: str) -> Folder:
        """The lists folder of the workspace, created under its Lead Database root if missing."""
        try:
            folder = await client.folder_by_name(self._list_folder, workspace=workspace)
            if folder is not None:
                return folder
            root = await client.folder_by_name("Lead Database", workspace=workspace)
            if root is None:
                raise NotFound(f"workspace {workspace!r} has no Lead Database folder")
            return await client.create_folder(self._list_folder, root.id)
        except (MarketoError, httpx.HTTPError) as error:
            raise marketo_failure(
                error, f"preparing the list folder {self._list_folder!r}"
            ) from None

    async def _list_for(
        self,
        client: MarketoClient,
        audience: Audience,
        folder: Folder | None,
        *,
        dry_run: bool,
    ) -> ActivatedAudience:
        try:
            if audience.marketo_list_id:
                linked = await client.static_list(audience.marketo_list_id)
                if linked is None:
                    raise NotFound(f"Marketo static list {audience.marketo_list_id} does not exist")
                return _linked(audience, linked)
            existing = await client.static_list_by_name(audience.name)
            if existing is not None:
                if not audience.link_existing_list:
                    raise AlreadyExists(
                        f"a Marketo static list named {audience.name!r} already exists "
                        f"(id {existing.id}); set link_existing_list to use it"
                    )
                return _linked(audience, existing)
            if dry_run:
                return ActivatedAudience(audience.id, 0, audience.name, ListAction.CREATED)
            assert folder is not None
            created = await client.create_static_list(audience.name, folder.id)
        except (MarketoError, httpx.HTTPError) as error:
            if isinstance(error, MarketoError) and error.code == "709":
                raise AlreadyExists(
                    f"a Marketo static list named {audience.name!r} already exists; "
                    "set link_existing_list to use it"
                ) from None
            raise marketo_failure(
                error, f"preparing the list of audience {audience.id!r}"
            ) from None
        return ActivatedAudience(audience.id, created.id, created.name, ListAction.CREATED)


def _linked(audience: Audience, static_list: StaticList) -> ActivatedAudience:
    return ActivatedAudience(audience.id, static_list.id, static_list.name, ListAction.LINKED)
