"""Configure, read, list, delete and describe destinations.

Configure validates a spec in two steps, and stores nothing unless both pass:
1. static rules (PRODUCT.md): every violated field is reported at once;
2. live checks against the Marketo instance: credentials give a token, the workspace and the
   partition exist, the dedupe field is searchable (and writable when the destination creates
   leads), the API user may write leads; and, for a destination with an active mapping, the
   rules Activate applies (`mapping_rules`) hold for that mapping under the new spec (sync type,
   person action, dedupe field, marketing actions).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx

from service.api.access import current_principal
from service.delivery.egress import OriginList, parse_url
from service.domain import (
    FORBIDDEN_DEDUPE_FIELDS,
    AlertType,
    DestinationSpec,
    FieldMapping,
    FieldViolation,
    MarketoConnection,
    SyncType,
)
from service.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from service.marketo.client import MarketoClient
from service.marketo.errors import (
    AuthenticationError,
    MarketoError,
    QuotaExhaustedError,
    UnavailableError,
)
from service.marketo.types import InstanceDescription, SyncAction
from service.store.base import (
    ActivationRecord,
    Destination,
    DestinationRecord,
    DestinationState,
    NewDestination,
    Page,
)
from service.store.sql import Store
from service.usecases.connections import MarketoConnections
from service.usecases.mapping_rules import MappingRules

MUNCHKIN_ID = re.compile(r"^\d{3}-[A-Z]{3}-\d{3}$")
MAX_NAME = 200
MAX_DESCRIPTION = 2_000
DOTTED_PATH = re.compile(r"^[A-Za-z_$@][\w$@-]*(\.[A-Za-z_$@][\w$@-]*)*$")
ALERT_TYPES = frozenset(alert_type.value for alert_type in AlertType)
"""The alert types a subscription may name: every `AlertType`."""
PERMISSION_CODES = frozenset({"603", "1008"})
"""Marketo answers that mean the API user lacks a permission (role or partition)."""
_CODE = re.compile(r"^[A-Za-z0-9_]{1,40}$")


def checked_page_size(page_size: int, field: str = "page_size") -> int:
    """A request's page size: 0 means 100; 1 to 1,000 allowed."""
    if page_size == 0:
        return 100
    if not 1 <= page_size <= 1_000:
        raise InvalidArgument([FieldViolation(field, "must be between 1 and 1000")])
    return page_size


def connection_violations(
    connection: MarketoConnection, *, prefix: str, secret_required: bool
) -> list[FieldViolation]:
    """What is wrong with a Marketo connection, before asking Marketo."""
    violations: list[FieldViolation] = []

    def bad(field: str, description: str) -> None:
        violations.append(FieldViolation(f"{prefix}.{field}", description))

    if not connection.munchkin_id:
        bad("munchkin_id", "is required")
    elif not MUNCHKIN_ID.match(connection.munchkin_id):
        bad("munchkin_id", "must look like 123-ABC-456 (digits-letters-digits)")
    if not connection.client_id:
        bad("client_id", "is required")
    if secret_required and not connection.client_secret:
        bad("client_secret", "is required")
    if connection.endpoint:
        try:
            parse_url(connection.endpoint, what="the URL")
        except ValueError as error:
            bad("endpoint", str(error))
    return violations


def webhook_violation(url: str, allowed: OriginList, field: str) -> FieldViolation | None:
    """What is wrong with an alert webhook URL: it must be https unless its origin is listed
    in `allowed` (MARKETO_DEST_ALLOWED_WEBHOOK_ORIGINS). The address is checked at send time."""
    try:
        origin = parse_url(url, what="the URL", query=True)
    except ValueError as error:
        return FieldViolation(field, str(error))
    if origin.scheme != "https" and not allowed.allows(origin):
        return FieldViolation(
            field, "must be an https URL (http only for MARKETO_DEST_ALLOWED_WEBHOOK_ORIGINS)"
        )
    return None


def static_violations(
    spec: DestinationSpec, *, creating: bool, webhook_origins: OriginList | None = None
) -> list[FieldViolation]:
    """Every rule of PRODUCT.md a spec breaks, without asking Marketo; `webhook_origins` are
    the origins a webhook may use plain http for."""
    violations: list[FieldViolation] = []

    def bad(field: str, description: str) -> None:
        violations.append(FieldViolation(f"spec.{field}", description))

    if not spec.name.strip():
        bad("name", "is required")
    elif len(spec.name) > MAX_NAME:
        bad("name", f"is longer than {MAX_NAME} characters")
    if len(spec.description) > MAX_DESCRIPTION:
        bad("description", f"is longer than {MAX_DESCRIPTION} characters")

    violations += connection_violations(
        spec.connection, prefix="spec.connection", secret_required=creating
    )

    if spec.sync_type is None:
        bad("sync_type", "is required")
    elif spec.sync_type is SyncType.AUDIENCE_ONLY:
        if spec.partition:
            bad("partition", "is only allowed for PROFILE_ONLY and AUDIENCE_AND_PROFILE")
        if spec.person_action is not None:
            bad("person_action", "must be unset for AUDIENCE_ONLY")
    elif spec.person_action is None:
        bad("person_action", "is required for PROFILE_ONLY and AUDIENCE_AND_PROFILE")

    if not spec.dedupe_field:
        bad("dedupe_field", "is required")
    elif spec.dedupe_field in FORBIDDEN_DEDUPE_FIELDS:
        bad(
            "dedupe_field",
            f"{spec.dedupe_field!r} cannot be the deduplication field "
            "(the Marketo lead id and ECID are not allowed)",
        )

    alerts = spec.alerts
    for index, alert_type in enumerate(alerts.types):
        if alert_type not in ALERT_TYPES:
            bad(f"alerts.types[{index}]", f"unknown alert type {alert_type!r}")
    if alerts.webhook_url:
        problem = webhook_violation(
            alerts.webhook_url, webhook_origins or OriginList(), "spec.alerts.webhook_url"
        )
        if problem is not None:
            violations.append(problem)
    if not 0 <= alerts.failure_rate_threshold <= 1:
        bad("alerts.failure_rate_threshold", "must be between 0 and 1")
    if alerts.delivery_delay_threshold < timedelta(0):
        bad("alerts.delivery_delay_threshold", "must not be negative")
    if spec.consent_path and not DOTTED_PATH.match(spec.consent_path):
        bad("consent_path", "must be a dotted path such as consents.marketing.any.val")
    return violations


def marketo_failure(error: MarketoError | httpx.HTTPError, what: str) -> Exception:
    """The caller-facing error for a Marketo failure during a synchronous RPC.

    Fixed words and Marketo's code only: text from the remote answer never reaches the caller
    (an endpoint could be made to answer anything).
    """
    if isinstance(error, httpx.HTTPError | UnavailableError):
        return Unavailable(f"Marketo could not be reached while {what}; try again later")
    if isinstance(error, AuthenticationError):
        return FailedPrecondition(
            f"Marketo rejected the client id or secret while {what}{_code(error.code)}"
        )
    if isinstance(error, QuotaExhaustedError):
        return Unavailable(f"Marketo's daily API quota is spent ({what})")
    if error.code in PERMISSION_CODES:
        return PermissionDenied(
            f"the Marketo API user may not do this while {what}{_code(error.code)}"
        )
    return FailedPrecondition(f"Marketo refused the request while {what}{_code(error.code)}")


def _code(code: str | None) -> str:
    """`` (code N)`` when `code` looks like Marketo's code or an HTTP status, else nothing."""
    return f" (code {code})" if code and _CODE.match(code) else ""


async def describe_instance(client: MarketoClient) -> InstanceDescription:
    """Read the pickers from Marketo (workspaces, partitions, lead schema)."""
    try:
        workspaces = await client.workspaces()
        partitions = await client.partitions()
        schema = await client.describe2()
    except (MarketoError, httpx.HTTPError) as error:
        raise marketo_failure(error, "describing the instance") from None
    searchable = frozenset(name for key in schema.searchable_fields for name in key)
    dedupe = tuple(sorted(name for name in searchable if name not in FORBIDDEN_DEDUPE_FIELDS))
    return InstanceDescription(
        workspaces=tuple(workspaces),
        partitions=tuple(partitions),
        dedupe_fields=dedupe,
        fields=tuple(schema.fields),
        searchable=searchable,
    )


async def live_violations(client: MarketoClient, spec: DestinationSpec) -> list[FieldViolation]:
    """Check the spec against the instance; raise for credential and permission problems."""
    try:
        await client.token()
    except (MarketoError, httpx.HTTPError) as error:
        raise marketo_failure(error, "requesting an access token") from None
    description = await describe_instance(client)
    violations: list[FieldViolation] = []
    names = {workspace.name for workspace in description.workspaces}
    if spec.workspace_name not in names:
        violations.append(
            FieldViolation(
                "spec.workspace",
                f"workspace {spec.workspace_name!r} does not exist; known: {sorted(names)}",
            )
        )
    partitions = {partition.name for partition in description.partitions}
    if spec.partition and spec.partition not in partitions:
        violations.append(
            FieldViolation(
                "spec.partition",
                f"partition {spec.partition!r} does not exist; known: {sorted(partitions)}",
            )
        )
    if spec.dedupe_field not in description.searchable:
        violations.append(
            FieldViolation(
                "spec.dedupe_field",
                f"{spec.dedupe_field!r} is not a searchable field of the instance; "
                f"usable: {list(description.dedupe_fields)}",
            )
        )
    elif spec.sync_type is not None and spec.rules().creates_leads:
        read_only = {f.name for f in description.fields if not f.updateable}
        if spec.dedupe_field in read_only:
            violations.append(
                FieldViolation(
                    "spec.dedupe_field",
                    f"{spec.dedupe_field!r} is not updateable through the API: a lead "
                    "created by the destination could not carry it; choose a writable field "
                    "or PERSON_ACTION_UPDATE_EXISTING_ONLY",
                )
            )
    if not violations:
        await _check_write_access(client)
    return violations


async def _check_write_access(client: MarketoClient) -> None:
    """Probe lead write access with an update of a lead id that cannot exist (changes nothing)."""
    try:
        results = await client.sync_leads(
            [{"id": 0}], action=SyncAction.UPDATE_ONLY, lookup_field="id"
        )
    except (MarketoError, httpx.HTTPError) as error:
        raise marketo_failure(error, "checking that the API user may write leads") from None
    for result in results:
        for reason in result.reasons:
            if reason.code in PERMISSION_CODES:
                raise PermissionDenied(
                    f"the Marketo API user may not write leads{_code(reason.code)}"
                )


class Destinations:
    """The destination use cases (Configure, Get, List, Delete, DescribeMarketo)."""

    def __init__(
        self,
        store: Store,
        connections: MarketoConnections,
        rules: MappingRules,
        *,
        webhook_origins: OriginList | None = None,
        on_changed: Callable[[DestinationRecord], Awaitable[None]] | None = None,
        on_lists_kept_again: Callable[[str], None] | None = None,
    ) -> None:
        """`on_changed(before)` runs after a stored destination was changed by Configure (the
        dispatcher re-checks a paused destination at once); `on_lists_kept_again(destination_id)`
        after Configure turned a sync type that keeps no lists into one that does (its lists
        missed the membership changes made meanwhile); `rules` are Activate's, to re-check an
        active mapping when the spec changes."""
        self._store = store
        self._connections = connections
        self._rules = rules
        self._webhook_origins = webhook_origins or OriginList()
        self._on_changed = on_changed
        self._on_lists_kept_again = on_lists_kept_again

    def _connection_checked(
        self, violations: list[FieldViolation], connection: MarketoConnection, prefix: str
    ) -> list[FieldViolation]:
        """`violations` plus the egress policy's verdict on the connection's endpoint, when the
        fields it is built from are well-formed (nothing is sent)."""
        named = {violation.field for violation in violations}
        if named & {f"{prefix}.endpoint", f"{prefix}.munchkin_id"}:
            return violations
        problem = self._connections.endpoint_problem(connection)
        if problem is None:
            return violations
        return [*violations, FieldViolation(f"{prefix}.endpoint", problem)]

    async def configure(
        self, destination_id: str, spec: DestinationSpec, *, validate_only: bool
    ) -> Destination:
        tenant = current_principal().tenant
        existing = (
            await self._store.get_destination(destination_id, tenant=tenant)
            if destination_id
            else None
        )
        violations = static_violations(
            spec, creating=existing is None, webhook_origins=self._webhook_origins
        )
        violations = self._connection_checked(violations, spec.connection, "spec.connection")
        if violations:
            raise InvalidArgument(violations)
        if existing is not None:
            spec = _keep_secrets(spec, existing)
        violations = await live_violations(
            self._connections.client(spec.connection, interactive=True), spec
        )
        if existing is not None and existing.mappings:
            violations += await self._active_mapping_violations(spec, existing.mappings)
        if violations:
            raise InvalidArgument(violations)
        if validate_only:
            record = existing or _unsaved(tenant, spec)
            return Destination(record=record, spec=spec)
        instance = self._connections.instance_key(spec.connection)
        if existing is None:
            record = await self._store.create_destination(
                NewDestination(
                    tenant=tenant,
                    name=spec.name,
                    spec=spec,
                    instance_key=instance,
                )
            )
        else:
            record = await self._store.update_destination(
                replace(
                    existing,
                    name=spec.name,
                    spec=spec,
                    instance_key=instance,
                )
            )
            if self._on_changed is not None:
                await self._on_changed(existing)
            kept_again = spec.rules().manages_lists and not existing.spec.rules().manages_lists
            if kept_again and self._on_lists_kept_again is not None:
                self._on_lists_kept_again(record.id)
        return Destination(record=record, spec=spec)

    async def _active_mapping_violations(
        self, spec: DestinationSpec, mappings: Sequence[FieldMapping]
    ) -> list[FieldViolation]:
        """What the destination's active mapping would break under the new `spec`: the
        violations name its rows (`mappings[i]`, as GetDestination shows them)."""
        client = self._connections.client(spec.connection, interactive=True)
        fields = (await describe_instance(client)).fields
        return [
            FieldViolation(v.field, f"the active mapping would break: {v.description}")
            for v in self._rules.violations(spec, mappings, fields)
        ]

    async def get(self, destination_id: str) -> Destination:
        record = await self._store.get_destination(
            destination_id, tenant=current_principal().tenant
        )
        return Destination(record=record, spec=record.spec)

    async def get_with_activations(
        self, destination_id: str
    ) -> tuple[Destination, list[ActivationRecord]]:
        destination = await self.get(destination_id)
        return destination, await self._store.activations(destination_id)

    async def list_with_activations(
        self, page_size: int, page_token: str
    ) -> Page[tuple[Destination, list[ActivationRecord]]]:
        """One page of the caller's destinations, each with its activations (as
        :meth:`get_with_activations`), so a listed destination shows its audiences."""
        page = await self._store.list_destinations(
            current_principal().tenant,
            page_size=checked_page_size(page_size),
            page_token=page_token,
        )
        activations = await self._store.activations_of([r.id for r in page.items])
        items = [(Destination(r, r.spec), activations[r.id]) for r in page.items]
        return Page(items=tuple(items), next_page_token=page.next_page_token)

    async def delete(self, destination_id: str) -> None:
        await self._store.delete_destination(destination_id, tenant=current_principal().tenant)

    async def describe(
        self, destination_id: str | None, connection: MarketoConnection | None
    ) -> InstanceDescription:
        if destination_id:
            connection = (await self.get(destination_id)).spec.connection
        if connection is None:
            raise InvalidArgument([FieldViolation("target", "give destination_id or connection")])
        violations = connection_violations(connection, prefix="connection", secret_required=True)
        if not destination_id:
            # A stored endpoint the policy no longer allows: `client` refuses it (precondition).
            violations = self._connection_checked(violations, connection, "connection")
        if violations:
            raise InvalidArgument(violations)
        return await describe_instance(self._connections.client(connection, interactive=True))


def _keep_secrets(spec: DestinationSpec, existing: DestinationRecord) -> DestinationSpec:
    """On update, an empty secret keeps the stored one (secrets are write-only)."""
    if not spec.connection.client_secret:
        spec = replace(
            spec,
            connection=replace(
                spec.connection, client_secret=existing.spec.connection.client_secret
            ),
        )
    stored = existing.spec.alerts.webhook_secret
    if not spec.alerts.webhook_secret and stored:
        spec = replace(spec, alerts=replace(spec.alerts, webhook_secret=stored))
    return spec


def _unsaved(tenant: str, spec: DestinationSpec) -> DestinationRecord:
    """What a validate-only create would store (no id, no times, no secret)."""
    epoch = datetime.fromtimestamp(0, UTC)
    return DestinationRecord(
        id="",
        tenant=tenant,
        name=spec.name,
        spec=replace(
            spec,
            connection=replace(spec.connection, client_secret=""),
            alerts=replace(spec.alerts, webhook_secret=""),
        ),
        instance_key="",
        state=DestinationState.ACTIVE,
        paused_until=None,
        created_at=epoch,
        updated_at=epoch,
        mappings=(),
        version=0,
    )
