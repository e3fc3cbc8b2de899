"""Activate and Deactivate: validate the mapping, give each audience one Marketo static list.

The mapping rules are in `mapping_rules` (Configure applies them too). Both RPCs are safe to
retry: each list is recorded as soon as Marketo created it, so an Activate that fails midway
resumes where it stopped (the lists made so far are reused, not created again); an audience
deactivated with its list kept gets that list back when activated again; Deactivate deletes only
lists the service created, forgetting each as soon as it is deleted. Marketo unavailable is
UNAVAILABLE with a RetryInfo.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import timedelta

import httpx

from service.api.access import IDENTITY_GRAPH_VIEW, current_principal, require
from service.domain import (
    ActivatedAudience,
    Audience,
    AudienceType,
    DestinationSpec,
    FieldMapping,
    FieldViolation,
    ListAction,
)
from service.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from service.marketo.client import MarketoClient
from service.marketo.errors import MarketoError, OutcomeUnknownError, QuotaExhaustedError
from service.marketo.types import Folder, StaticList
from service.store.base import ActivationRecord, DestinationRecord
from service.store.sql import Store
from service.usecases.connections import MarketoConnections
from service.usecases.destinations import describe_instance, marketo_failure
from service.usecases.mapping_rules import MappingRules

MAX_LIST_NAME = 255
RETRY_AFTER = timedelta(seconds=10)
"""The RetryInfo delay of an Activate or Deactivate that Marketo could not serve right now."""
GONE_LIST_CODES = frozenset({"702", "1013"})
"""Marketo's answers to deleting a list that no longer exists (a retried Deactivate)."""


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
        rules: MappingRules,
        *,
        list_folder: str,
        on_changed: Callable[[DestinationRecord], Awaitable[None]] | None = None,
        on_lists_created: Callable[[str, Sequence[str]], Awaitable[object]] | None = None,
    ) -> None:
        """`list_folder` (the setting of that name) is the Marketo folder lists are created in.
        `on_changed(before)` runs after Activate stored a mapping (the dispatcher re-checks a
        paused destination at once); `on_lists_created(destination_id, audience_ids)` after it
        created or linked lists for audiences that were already activated (e.g. after a switch
        from Profile only, or an audience linked to another list), whose current members
        delivery must then add."""
        self._store = store
        self._connections = connections
        self._rules = rules
        self._list_folder = list_folder
        self._on_changed = on_changed
        self._on_lists_created = on_lists_created

    async def activate(
        self,
        destination_id: str,
        audiences: Sequence[Audience],
        mappings: Sequence[FieldMapping],
        *,
        dry_run: bool,
    ) -> list[ActivatedAudience]:
        """Activate `audiences` with `mappings`. When the destination keeps lists, active
        audiences without one (the destination was Profile only) get theirs too: they follow
        the requested ones in the answer."""
        principal = current_principal()
        record = await self._store.get_destination(destination_id, tenant=principal.tenant)
        if self._rules.reads_identities(mappings):
            require(principal, IDENTITY_GRAPH_VIEW)
        spec = record.spec
        current = {a.audience_id: a for a in await self._store.activations(destination_id)}
        requested = {audience.id for audience in audiences}
        listless = [
            Audience(a.audience_id, a.audience_name, a.origin)
            for a in current.values()
            if spec.rules().manages_lists
            and a.active
            and not a.marketo_list_id
            and a.audience_id not in requested
        ]
        violations = audience_violations(spec, audiences)
        violations += [
            FieldViolation(
                "audiences",
                f"active audience {a.id!r} needs a list now that the destination keeps lists, "
                "and has no name to give it: activate it again with a name",
            )
            for a in listless
            if not a.name.strip()
        ]
        client = self._connections.client(spec.connection, interactive=True)
        try:
            description = await describe_instance(client)
        except Unavailable as error:
            error.retry_after = error.retry_after or RETRY_AFTER
            raise
        violations += self._rules.violations(spec, mappings, description.fields)
        if violations:
            raise InvalidArgument(violations)

        results: list[ActivatedAudience] = []
        records: list[ActivationRecord] = []
        refilled: list[str] = []
        folder: Folder | None = None
        for audience in [*audiences, *listless]:
            before = current.get(audience.id)
            if not spec.rules().manages_lists:
                result = ActivatedAudience(audience.id, 0, "", ListAction.NONE)
                created_by_service = tracked = False
            elif (
                before is not None
                and before.marketo_list_id
                and audience.marketo_list_id in (0, before.marketo_list_id)
                and (before.active or await self._still_there(client, before))
            ):
                result = ActivatedAudience(
                    audience.id, before.marketo_list_id, before.list_name, ListAction.UNCHANGED
                )
                created_by_service = before.created_by_service
                tracked = before.holders_tracked
            else:
                if folder is None and not audience.marketo_list_id and not dry_run:
                    folder = await self._folder(client, spec.workspace_name)
                record_created = functools.partial(
                    self._record_created,
                    destination_id,
                    audience,
                    before is not None and before.active,
                )
                result = await self._list_for(
                    client,
                    audience,
                    folder,
                    dry_run=dry_run,
                    pending=_pending_create(before, audience),
                    record_created=record_created,
                )
                created_by_service = tracked = result.list_action is ListAction.CREATED
                if created_by_service and not dry_run:
                    await record_created(result)
                if before is not None and not dry_run and result.marketo_list_id:
                    refilled.append(audience.id)  # a new list, created or linked: fill it
            results.append(result)
            records.append(
                _record(
                    audience,
                    result,
                    active=True,
                    created_by_service=created_by_service,
                    holders_tracked=tracked,
                )
            )
        if not dry_run:
            await self._store.upsert_activations(destination_id, records, mappings)
            if self._on_changed is not None:
                await self._on_changed(record)
            if refilled and self._on_lists_created is not None:
                await self._on_lists_created(destination_id, refilled)
        return results

    async def deactivate(
        self, destination_id: str, audience_ids: Sequence[str], *, delete_lists: bool
    ) -> list[str]:
        """Stop exporting the audiences; with `delete_lists`, delete the lists the service
        created (a linked list is kept). Each deleted list is forgotten at once, so a retry after
        a failure deletes only the rest. An audience already inactive is answered as
        deactivated (a retry after a lost answer gets the same answer); one never activated on
        the destination is NOT_FOUND."""
        record = await self._store.get_destination(
            destination_id, tenant=current_principal().tenant
        )
        if not audience_ids:
            raise InvalidArgument([FieldViolation("audience_ids", "is required")])
        known = {a.audience_id: a for a in await self._store.activations(destination_id)}
        unknown = [a for a in audience_ids if a not in known]
        if unknown:
            raise NotFound(f"audiences never activated on this destination: {', '.join(unknown)}")
        if delete_lists:
            client = self._connections.client(record.spec.connection, interactive=True)
            for audience_id in audience_ids:
                activation = known[audience_id]
                if not (activation.marketo_list_id and activation.created_by_service):
                    continue
                await self._delete_list(client, activation.marketo_list_id)
                await self._store.upsert_activations(
                    destination_id,
                    [
                        replace(
                            activation,
                            marketo_list_id=0,
                            list_name="",
                            created_by_service=False,
                            holders_tracked=False,
                        )
                    ],
                )
        await self._store.deactivate(destination_id, audience_ids)
        return list(audience_ids)

    async def _record_created(
        self, destination_id: str, audience: Audience, active: bool, created: ActivatedAudience
    ) -> None:
        """Record a list the service creates for `audience`: before the create call (list id 0,
        for a create whose answer may be lost) and at once after it (a retry after a later
        failure reuses the list)."""
        await self._store.upsert_activations(
            destination_id,
            [
                _record(
                    audience, created, active=active, created_by_service=True, holders_tracked=True
                )
            ],
        )

    async def _delete_list(self, client: MarketoClient, list_id: int) -> None:
        try:
            await client.delete_static_list(list_id)
        except (MarketoError, httpx.HTTPError) as error:
            if isinstance(error, MarketoError) and error.code in GONE_LIST_CODES:
                return
            raise _failure(error, f"deleting list {list_id}") from None

    async def _still_there(self, client: MarketoClient, activation: ActivationRecord) -> bool:
        """Whether the list an inactive audience kept still exists in Marketo."""
        try:
            return await client.static_list(activation.marketo_list_id) is not None
        except (MarketoError, httpx.HTTPError) as error:
            raise _failure(error, f"reading list {activation.marketo_list_id}") from None

    async def _folder(self, client: MarketoClient, workspace: str) -> Folder:
        """The lists folder of the workspace, created under its Lead Database root if missing."""
        return await list_folder(client, self._list_folder, workspace)

    async def _list_for(
        self,
        client: MarketoClient,
        audience: Audience,
        folder: Folder | None,
        *,
        dry_run: bool,
        pending: bool = False,
        record_created: Callable[[ActivatedAudience], Awaitable[None]] | None = None,
    ) -> ActivatedAudience:
        """The list of `audience`: the linked one, or one created in `folder`. `pending`: an
        earlier create of this list got no answer, so a list of that name in `folder` is the
        one it made (adopted as created by the service, not refused as someone else's);
        `record_created` is awaited before the create call with the list id still 0."""
        try:
            if audience.marketo_list_id:
                linked = await client.static_list(audience.marketo_list_id)
                if linked is None:
                    raise NotFound(f"Marketo static list {audience.marketo_list_id} does not exist")
                return _linked(audience, linked)
            existing = await client.static_list_by_name(audience.name)
            if existing is not None:
                if pending and folder is not None and existing.folder_id == folder.id:
                    return ActivatedAudience(
                        audience.id, existing.id, existing.name, ListAction.CREATED
                    )
                if not audience.link_existing_list:
                    raise AlreadyExists(
                        f"a Marketo static list named {audience.name!r} already exists "
                        f"(id {existing.id}); set link_existing_list to use it"
                    )
                return _linked(audience, existing)
            if dry_run:
                return ActivatedAudience(audience.id, 0, audience.name, ListAction.CREATED)
            assert folder is not None
            if record_created is not None:
                await record_created(
                    ActivatedAudience(audience.id, 0, audience.name, ListAction.CREATED)
                )
            created = await client.create_static_list(audience.name, folder.id)
        except (MarketoError, httpx.HTTPError) as error:
            if isinstance(error, MarketoError) and error.code == "709":
                raise AlreadyExists(
                    f"a Marketo static list named {audience.name!r} already exists; "
                    "set link_existing_list to use it"
                ) from None
            raise _failure(error, f"preparing the list of audience {audience.id!r}") from None
        return ActivatedAudience(audience.id, created.id, created.name, ListAction.CREATED)


async def list_folder(client: MarketoClient, name: str, workspace: str) -> Folder:
    """The folder `name` of the workspace, where the service creates its lists; created under
    the workspace's Lead Database root if missing."""
    try:
        folder = await client.folder_by_name(name, workspace=workspace)
        if folder is not None:
            return folder
        root = await client.folder_by_name("Lead Database", workspace=workspace)
        if root is None:
            raise NotFound(f"workspace {workspace!r} has no Lead Database folder")
        return await client.create_folder(name, root.id)
    except (MarketoError, httpx.HTTPError) as error:
        raise _failure(error, f"preparing the list folder {name!r}") from None


def _failure(error: MarketoError | httpx.HTTPError, what: str) -> Exception:
    """`marketo_failure`, where Marketo unavailable (or a write without an answer) is
    UNAVAILABLE with a RetryInfo: retrying the RPC resumes where it stopped."""
    if isinstance(error, OutcomeUnknownError):
        return Unavailable(f"Marketo did not answer while {what}; try again later", RETRY_AFTER)
    failure = marketo_failure(error, what)
    if isinstance(failure, Unavailable):
        failure.retry_after = RETRY_AFTER
        if isinstance(error, QuotaExhaustedError):
            failure.retry_after = max(
                timedelta(seconds=error.paused_until - time.time()), RETRY_AFTER
            )
    return failure


def _record(
    audience: Audience,
    result: ActivatedAudience,
    *,
    active: bool,
    created_by_service: bool,
    holders_tracked: bool,
) -> ActivationRecord:
    return ActivationRecord(
        audience_id=audience.id,
        audience_name=audience.name,
        origin=audience.origin,
        marketo_list_id=result.marketo_list_id,
        list_name=result.list_name,
        active=active,
        created_by_service=created_by_service,
        holders_tracked=holders_tracked,
    )


def _pending_create(before: ActivationRecord | None, audience: Audience) -> bool:
    """Whether an earlier Activate started creating `audience`'s list and never learnt its id."""
    return (
        before is not None
        and before.created_by_service
        and not before.marketo_list_id
        and before.list_name == audience.name
    )


def _linked(audience: Audience, static_list: StaticList) -> ActivatedAudience:
    return ActivatedAudience(audience.id, static_list.id, static_list.name, ListAction.LINKED)
