"""The durable store's records and errors: what `service.store.sql.Store` takes and returns.

The store itself, its queries written once for both engines, is `service.store.sql.Store`;
`service.store.sqlite` and `service.store.postgres` run it. The records live here, apart from the
SQL, so that the helpers that build them (`service.store.rows`) and the store can both import them.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from service.domain import (
    DestinationSpec,
    FieldMapping,
    FieldViolation,
    ListReconciliation,
    MarketoCalls,
    MembershipMark,
    Outcome,
    ProfileState,
    ProfileUpdate,
    UnappliedAttributes,
)
from service.errors import FailedPrecondition, InvalidArgument, NotFound

__all__ = [
    "UNPACK_STEP",
    "ActivationRecord",
    "AlertRecord",
    "AppendResult",
    "Backlog",
    "CommitListener",
    "Dataflow",
    "DataflowRun",
    "Destination",
    "DestinationNotFound",
    "DestinationRecord",
    "DestinationState",
    "FencingError",
    "InvalidPageToken",
    "Lease",
    "MembershipHolder",
    "MembershipWatermark",
    "NewDestination",
    "OutboxEntry",
    "OutcomeRecord",
    "Page",
    "PendingStats",
    "ProfileStateRow",
    "StoreError",
    "UnappliedRow",
    "VersionConflict",
    "Watermark",
    "in_steps",
    "settle_appends",
]

T = TypeVar("T")


class StoreError(Exception):
    """Base of the store's own failures that are not caller errors."""


class DestinationNotFound(NotFound):
    """No destination with that id in the caller's tenant."""

    def __init__(self, destination_id: str) -> None:
        super().__init__(f"destination {destination_id!r} not found")
        self.destination_id = destination_id


class VersionConflict(FailedPrecondition):
    """The destination changed since it was read (optimistic update lost the race)."""

    def __init__(self, destination_id: str, expected_version: int) -> None:
        super().__init__(
            f"destination {destination_id!r} was changed concurrently "
            f"(expected version {expected_version}); read it again and retry"
        )
        self.destination_id = destination_id
        self.expected_version = expected_version


class InvalidPageToken(InvalidArgument):
    """A page token that this store did not issue (or for another listing)."""

    def __init__(self) -> None:
        super().__init__([FieldViolation("page_token", "not a page token of this listing")])


class FencingError(StoreError):
    """A retire/defer carried a lease generation older than the instance's current lease.

    The caller lost its lease: another replica drains the instance now. Nothing was committed.
    """

    def __init__(self, instance_key: str, fencing: int, current: int | None) -> None:
        super().__init__(
            f"stale fencing token {fencing} for instance {instance_key!r} (current: {current})"
        )
        self.instance_key = instance_key
        self.fencing = fencing
        self.current = current


class DestinationState(enum.StrEnum):
    """Lifecycle state of a destination."""

    ACTIVE = "active"
    QUOTA_PAUSED = "quota_paused"
    AUTH_FAILING = "auth_failing"
    SCHEMA_PAUSED = "schema_paused"
    """The instance's lead schema lacks a field the mapping writes; `state_reason` names it."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing."""

    items: tuple[T, ...]
    next_page_token: str = ""
    """Token of the next page; empty on the last page."""


@dataclass(frozen=True, slots=True)
class NewDestination:
    """What `Store.create_destination` needs; the id and times are assigned by the store."""

    tenant: str
    name: str
    spec: DestinationSpec
    """The destination spec, its secrets (client secret, webhook secret) included."""
    instance_key: str = ""
    """Key of the Marketo instance the destination writes to (the dispatcher's unit)."""
    mappings: tuple[FieldMapping, ...] = ()


@dataclass(frozen=True, slots=True)
class DestinationRecord:
    """A stored destination.

    `update_destination` writes name, spec, secrets and instance key, guarded by `version`;
    mappings change through `upsert_activations` (which also bumps `version`); state and
    `paused_until` belong to `set_destination_state` so a Configure never undoes a quota pause.
    """

    id: str
    tenant: str
    name: str
    spec: DestinationSpec
    """The spec, secrets included (an empty webhook secret: none)."""
    instance_key: str
    state: DestinationState
    paused_until: datetime | None
    created_at: datetime
    updated_at: datetime
    mappings: tuple[FieldMapping, ...]
    version: int
    """Incremented by every `update_destination`; the optimistic-concurrency check."""
    state_reason: str = ""
    """Why the destination is not ACTIVE, when a state carries a reason (SCHEMA_PAUSED)."""


@dataclass(frozen=True, slots=True)
class ActivationRecord:
    """One audience of a destination and its Marketo static list."""

    audience_id: str
    audience_name: str
    origin: str
    marketo_list_id: int
    list_name: str
    active: bool = True
    created_by_service: bool = False
    """The service created the list (Deactivate may delete it); False for a linked list."""
    holders_tracked: bool = False
    """The service created the list since it records membership holders: every lead it put
    there is known (False for a linked list or one created before)."""


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What `Store.append` committed."""

    count: int
    """Updates in the batch."""
    sequence: int
    """The batch's number in the inbox: higher for every later commit."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One queued update, as `Store.claim_due` returns it."""

    sequence: int
    destination_id: str
    instance_key: str
    update: ProfileUpdate
    enqueued_at: datetime
    not_before: datetime
    attempts: int
    last_error: str
    trace_context: str | None
    """The W3C trace context of the Sync call that appended it (for span links)."""
    resync: bool = False
    """Queued by Resync: delivered after live entries, with the applied state taken as unknown."""
    payload_bytes: int = 0
    """The size of the stored profile and memberships (JSON, UTF-8), which `claim_due` counts."""


@dataclass(frozen=True, slots=True)
class ResyncSource:
    """What Resync re-sends for a profile: its latest delivered update whose attributes were
    applied (the profile as the caller sent it) and that update's event time."""

    profile_id: str
    event_time: datetime
    profile: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class UnappliedRow:
    """A profile's newest attributes, not applied because it was a member of no activated
    audience (kept in `resync_sources`, not applied, until an activated outcome of a later batch
    reaches them)."""

    destination_id: str
    profile_id: str
    attributes: UnappliedAttributes


@dataclass(frozen=True, slots=True)
class Watermark:
    """The event time of the newest update applied for a profile."""

    destination_id: str
    profile_id: str
    event_time: datetime


@dataclass(frozen=True, slots=True)
class MembershipWatermark:
    """A membership status applied for a (profile, audience), with its event's time: a row of
    the destination's desired state (table `membership_marks`)."""

    destination_id: str
    profile_id: str
    audience_id: str
    mark: MembershipMark


@dataclass(frozen=True, slots=True)
class MembershipHolder:
    """The lead Marketo confirmed holds a (profile, audience) membership (None: no lead)."""

    destination_id: str
    profile_id: str
    audience_id: str
    lead_id: int | None
    confirmed: bool = True
    """False: a list call of unknown outcome concerned the lead (it may be in the list or not;
    an exit removes it, a desired member's next delivery adds it again)."""


@dataclass(frozen=True, slots=True)
class ProfileStateRow:
    """A profile's applied state at a destination (table `profile_state`)."""

    destination_id: str
    profile_id: str
    state: ProfileState


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    """A stored outcome with where and when it happened."""

    destination_id: str
    outcome: Outcome
    event_time: datetime
    """Event time of the update the outcome is about."""
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class PendingStats:
    """Outbox backlog of one destination."""

    count: int
    oldest_enqueued_at: datetime | None


@dataclass(frozen=True, slots=True)
class Backlog:
    """Outbox backlog of one destination, with the Marketo instance it goes to."""

    destination_id: str
    instance_key: str
    pending: PendingStats


@dataclass(frozen=True, slots=True)
class DataflowRun:
    """One hour of a dataflow, like AEP's dataflow runs."""

    start: datetime
    received: int
    activated: int
    excluded: int
    failed: int
    superseded: int

    @property
    def skipped_rate(self) -> float:
        """Excluded / (activated + excluded); 0 when nothing was processed."""
        processed = self.activated + self.excluded
        return self.excluded / processed if processed else 0.0


@dataclass(frozen=True, slots=True)
class Dataflow:
    """Dataflow metrics of a destination. Totals cover the destination's whole life."""

    destination_id: str
    received: int
    activated: int
    """Updates with an ACTIVATED outcome."""
    created: int
    updated: int
    added: int
    removed: int
    excluded: Mapping[str, int]
    """Excluded updates by exclusion code (an `ExclusionCode` value; never a profile's value)."""
    excluded_by_field: Mapping[tuple[str, str], int]
    """Excluded updates by (exclusion code, Marketo field), for exclusions that concern a field."""
    failed: Mapping[str, int]
    """Failed updates by Marketo code (the outcome's `marketo_code`, else "unknown")."""
    superseded: int
    duplicates: int
    """Updates re-sent after they were accepted (same update id), recognised and dropped."""
    pending: int
    oldest_pending_age: timedelta | None
    runs: tuple[DataflowRun, ...]
    """One run per hour of the requested window, newest first, empty hours included."""
    paused_until: datetime | None
    state: DestinationState = DestinationState.ACTIVE
    """The destination's lifecycle state (filled in by the monitoring use case)."""
    state_reason: str = ""
    marketo_calls: MarketoCalls | None = None
    """Today's calls of the destination's instance (filled in by the monitoring use case)."""
    lists: tuple[ListReconciliation, ...] = ()
    """The last reconciliation of each list (filled in by the monitoring use case)."""


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """A raised (and maybe resolved) dataflow alert."""

    id: str
    destination_id: str
    type: str
    """Alert type, e.g. "skipped_rate", "failure_rate", "delivery_delayed"."""
    message: str
    raised_at: datetime
    resolved_at: datetime | None
    paused_until: datetime | None


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease on a Marketo instance's queue; `generation` is the fencing token."""

    instance_key: str
    holder: str
    generation: int
    expires_at: datetime
    previous_expiry: datetime | None = field(default=None, compare=False)
    """When the previous tenure expired, if this lease was taken after it expired rather than
    after a release: its holder may still have had a Marketo call in flight until then."""


@dataclass(frozen=True, slots=True)
class Destination:
    """A stored destination as callers see it (secrets are in `record` only)."""

    record: DestinationRecord
    spec: DestinationSpec


CommitListener = Callable[[str], None]
"""Called with the operation name ("append", "retire", ...) after each committed transaction.

It runs on the store's writer thread: keep it quick and thread-safe. For tests and metrics.
"""

UNPACK_STEP = 5_000
"""About how many updates one unpack transaction takes from the inbox."""

CLAIM_MAX_BYTES = 64 * 1024 * 1024
"""How many bytes of stored payload (`OutboxEntry.payload_bytes`) one claim takes at most, plus
the one entry that reaches the bound: a bulk claim of 200,000 entries of 3.5 KiB profiles would
otherwise hold about 2 GiB."""


async def in_steps(transaction: Callable[[], Awaitable[tuple[int, bool]]]) -> int:
    """Run `transaction` (returning: entries stored, whether another should follow) until it
    says no more should follow; the entries stored in all (a store helper for `unpack`)."""
    total = 0
    more = True
    while more:
        stored, more = await transaction()
        total += stored
    return total


def settle_appends(
    futures: Sequence[asyncio.Future[AppendResult]],
    results: Sequence[AppendResult | Exception],
) -> None:
    """Answer each caller of a committed append group with its result (a store helper). A
    caller that gave up meanwhile is skipped: its batch is stored anyway."""
    for future, result in zip(futures, results, strict=True):
        if future.done():
            continue
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)
