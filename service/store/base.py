"""The durable store's interface: the `Store` protocol and the records it returns.

Two implementations share it: `SqliteStore` (the embedded default, `service.store.sqlite`) and a
PostgreSQL store for scale-out. Both apply the same numbered migrations
(`service.store.migrations`).

Conventions every implementation follows:

- Times are timezone-aware UTC `datetime`s; naive ones are taken as UTC. They are stored as
  integer microseconds since the epoch, so ordering and comparison are exact in both engines.
- Secrets are passed and returned in plain text (in the destination's `DestinationSpec`, whose
  fields that hold them have `repr=False`) and sealed at rest by the store's `SecretBox`.
- Another tenant's destination is simply not found.
- Page tokens are opaque strings; an empty token is the first page, an empty `next_page_token`
  means the last page.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from service.domain import (
    DecodedBatch,
    DesiredMember,
    DesiredState,
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
    "Store",
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

    `update_destination` writes name, spec, secrets, instance key and mappings, guarded by
    `version`; state and `paused_until` belong to `set_destination_state` so a Configure never
    undoes a quota pause.
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
    audience (kept in `resync_sources`, not applied, until an activated outcome reaches them)."""

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


class Store(Protocol):
    """The durable store: destinations, activations, the outbox, outcomes, metrics, alerts, leases.

    Every method is a coroutine; blocking database work runs off the event loop.
    """

    # -- lifecycle ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Finish pending appends and close every connection."""
        ...

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Register a callback run after each committed write transaction."""
        ...

    # -- destinations ---------------------------------------------------------------------------

    async def create_destination(self, new: NewDestination) -> DestinationRecord:
        """Store a new destination (id `dst_…`, version 1, state ACTIVE)."""
        ...

    async def get_destination(
        self, destination_id: str, *, tenant: str | None
    ) -> DestinationRecord:
        """Return the destination; `tenant=None` only for internal callers (dispatcher).

        Raises DestinationNotFound when missing or in another tenant.
        """
        ...

    async def list_destinations(
        self, tenant: str, *, page_size: int = 100, page_token: str = ""
    ) -> Page[DestinationRecord]:
        """The tenant's destinations, oldest first."""
        ...

    async def update_destination(self, record: DestinationRecord) -> DestinationRecord:
        """Write name, spec, secrets, instance key and mappings if `record.version` is current.

        Returns the stored record (version + 1). Raises DestinationNotFound or VersionConflict.
        """
        ...

    async def set_destination_state(
        self,
        destination_id: str,
        state: DestinationState,
        paused_until: datetime | None = None,
        *,
        reason: str = "",
    ) -> None:
        """Set the lifecycle state and its reason (no version check, no version change)."""
        ...

    async def pause_instance(self, instance_key: str, until: datetime) -> None:
        """Record that the Marketo instance makes no call before `until` (its daily quota is
        spent); an existing later pause is kept."""
        ...

    async def instance_paused_until(
        self, instance_key: str, now: datetime | None = None
    ) -> datetime | None:
        """When the instance's recorded pause ends, if that is after `now` (default: the
        store's clock)."""
        ...

    async def delete_destination(self, destination_id: str, *, tenant: str) -> None:
        """Delete the destination and its activations, outbox rows, outcomes, counters, alerts.

        Raises DestinationNotFound.
        """
        ...

    # -- activations ----------------------------------------------------------------------------

    async def activations(self, destination_id: str) -> list[ActivationRecord]:
        """Every activation of the destination (active or not), by audience id."""
        ...

    async def activations_of(
        self, destination_ids: Sequence[str]
    ) -> dict[str, list[ActivationRecord]]:
        """Every activation of each destination (active or not), by audience id, in one read;
        a destination with none (or unknown) maps to an empty list."""
        ...

    async def upsert_activations(
        self,
        destination_id: str,
        activations: Sequence[ActivationRecord],
        mappings: Sequence[FieldMapping] | None = None,
    ) -> None:
        """Insert or replace activations by audience id; also set the mapping when given.

        One transaction. Raises DestinationNotFound.
        """
        ...

    async def deactivate(self, destination_id: str, audience_ids: Sequence[str]) -> int:
        """Mark those audiences inactive; returns how many were active. Their lists stay
        recorded, so a later Activate of the audience reuses them."""
        ...

    # -- outbox ---------------------------------------------------------------------------------

    def append(
        self,
        destination_id: str,
        instance_key: str,
        body: bytes,
        count: int,
        trace_context: str | None = None,
    ) -> asyncio.Future[AppendResult]:
        """Queue a batch of `count` encoded updates for the next group commit; the returned
        future resolves once it is durable (or with DestinationNotFound). Batches are committed
        in the order of the calls.

        The batch goes to the inbox as it is, one row (ingest never converts an update); the
        drainer of the instance unpacks it into outbox entries (`unpack`) when it needs them.
        Counts "received" and pending. Raises StoreError at once when the store is closed.
        """
        ...

    async def unpack(
        self,
        instance_key: str,
        decode: Callable[[bytes], DecodedBatch],
        limit: int,
        *,
        fencing: int | None = None,
        now: datetime | None = None,
        step: int = UNPACK_STEP,
    ) -> int:
        """Move the instance's oldest inbox batches into the outbox while fewer than `limit`
        entries of it are due; returns how many entries were stored.

        Commits after about `step` updates taken from the inbox, so no transaction grows with
        the backlog (re-sent duplicates count too). Batches are decoded with no transaction
        open, off the event loop; only their writing is fenced by the lease. Idempotent on
        (destination_id, update_id): an update already in the outbox or already delivered is
        dropped here and counted as a duplicate. Entries keep their batch's enqueue time and
        trace context, and come after every entry unpacked before. Updates `decode` could not
        decode fail here (code "undecodable"; an outcome each that could be told apart) rather
        than hold up the queue.
        """
        ...

    async def claim_due(
        self,
        instance_key: str,
        limit: int,
        now: datetime | None = None,
        *,
        after_sequence: int = 0,
        max_bytes: int = CLAIM_MAX_BYTES,
    ) -> list[OutboxEntry]:
        """Up to `limit` due entries (not_before <= now) of the instance, live entries before
        resync work (`OutboxEntry.resync`), each by sequence, taken
        while their payloads come to less than `max_bytes` (so the first is always taken, and a
        claim holds at most `max_bytes` plus one entry's payload); the rest stays due.

        Rows are not locked or hidden: exactly one drainer per instance (the lease holder) calls
        this; `after_sequence` skips entries it already holds in flight.
        """
        ...

    async def retire(
        self,
        entries: Sequence[OutboxEntry],
        outcomes: Sequence[Outcome],
        watermarks: Sequence[Watermark] = (),
        *,
        membership_marks: Sequence[MembershipWatermark] = (),
        holders: Sequence[MembershipHolder] = (),
        profiles: Sequence[ProfileStateRow] = (),
        unapplied: Sequence[UnappliedRow] = (),
        fencing: int | None = None,
        now: datetime | None = None,
    ) -> None:
        """In one transaction: delete the entries, store one outcome per entry, raise watermarks
        (max), replace the membership marks older than the given ones (the desired status), set
        the holders and profile states given (the applied state Marketo confirmed), keep the
        unapplied attributes given (when newer) and count the outcomes in the hourly dataflow
        counters. Rows of a destination deleted meanwhile are dropped; a profile forgotten
        meanwhile gets its outcomes without dedupe value and none of its state.

        `outcomes[i]` is the outcome of `entries[i]` (same update id, else ValueError): update
        ids are unique per destination only, and one batch may span destinations. With
        `fencing`, the entries' instance lease (with no entries, that of the state's
        destinations) must have that generation, else FencingError and nothing is committed.
        Entries already retired are ignored (with their outcomes), so a retried retire is
        harmless.
        """
        ...

    async def defer(
        self,
        entries: Sequence[OutboxEntry],
        not_before: datetime,
        last_error: str,
        attempts: int | None = None,
        *,
        fencing: int | None = None,
    ) -> None:
        """Postpone entries after a transient failure; `attempts=None` adds one to each."""
        ...

    async def release_deferred(self, destination_id: str, now: datetime | None = None) -> int:
        """Make the destination's deferred outbox entries due now (attempts unchanged), e.g.
        when a change of its mapping may end a pause; returns how many."""
        ...

    async def watermarks(
        self, destination_id: str, profile_ids: Sequence[str]
    ) -> dict[str, datetime]:
        """Last applied event time per profile (profiles never applied are absent)."""
        ...

    async def membership_marks(
        self, destination_id: str, profile_ids: Sequence[str]
    ) -> dict[tuple[str, str], MembershipMark]:
        """Last applied membership status and its event time per (profile id, audience id) of
        the given profiles (pairs never applied are absent)."""
        ...

    async def desired_state(self, destination_id: str, profile_ids: Sequence[str]) -> DesiredState:
        """The stored state of the given profiles, in one read: attribute watermarks, desired
        memberships and their holders, applied profile state."""
        ...

    async def resync_sources(
        self, destination_id: str, profile_ids: Sequence[str] | None = None
    ) -> list[ResyncSource]:
        """What Resync re-sends for the given profiles (None: every profile of the destination
        that has one), by profile id; forgotten profiles have none."""
        ...

    async def queue_resync(
        self,
        destination_id: str,
        instance_key: str,
        updates: Sequence[ProfileUpdate],
        now: datetime | None = None,
    ) -> int:
        """Queue resync updates in the outbox behind every live entry (priority 1), counted as
        received; returns how many were queued (an update id already queued is skipped)."""
        ...

    async def forgotten(self, destination_id: str, profile_ids: Sequence[str]) -> frozenset[str]:
        """Which of the given profiles are forgotten (ForgetProfile): reconciliation and Resync
        never write them."""
        ...

    async def forget_profile(
        self, destination_id: str, profile_id: str, outcome: Outcome, now: datetime | None = None
    ) -> None:
        """Record the tombstone of a profile in one transaction: mark it forgotten, drop its
        desired memberships, applied state and resync source, and store `outcome` (what was
        done) in its outcome history. Forgetting again records another outcome."""
        ...

    async def pending_stats(self, destination_id: str) -> PendingStats:
        """Backlog count and oldest enqueue time, without scanning the backlog."""
        ...

    # -- reconciliation -------------------------------------------------------------------------

    async def desired_members(self, destination_id: str, audience_id: str) -> list[DesiredMember]:
        """The current members of the audience that Marketo should hold: a member status
        applied and marketing consent not refused, by profile id."""
        ...

    async def record_repairs(
        self,
        destination_id: str,
        holders: Sequence[MembershipHolder],
        bindings: Mapping[str, int | None] | None = None,
    ) -> None:
        """Set the holders a reconciliation confirmed and re-bind the profiles whose lead was
        resolved again (profile id -> lead id), in one transaction."""
        ...

    async def record_reconciliation(self, destination_id: str, row: ListReconciliation) -> None:
        """Keep the last reconciliation of the row's audience (replacing the previous one)."""
        ...

    async def reconciliations(self, destination_id: str) -> list[ListReconciliation]:
        """The last reconciliation of each of the destination's lists, by audience id."""
        ...

    async def instance_keys_with_due_work(self, now: datetime | None = None) -> list[str]:
        """Instances that have at least one due entry."""
        ...

    async def backlogs(self) -> list[Backlog]:
        """The backlog of every destination of every tenant (the metrics' gauges), by
        destination id; like `pending_stats`, without scanning the backlogs."""
        ...

    # -- outcomes and dataflow ------------------------------------------------------------------

    async def list_outcomes(
        self,
        destination_id: str,
        *,
        profile_id: str | None = None,
        dedupe_value: str | None = None,
        page_size: int = 100,
        page_token: str = "",
    ) -> Page[OutcomeRecord]:
        """Outcomes of the destination (optionally of one profile or dedupe value), newest first."""
        ...

    async def purge_outcomes(self, recorded_before: datetime, limit: int) -> int:
        """Delete outcomes recorded before `recorded_before`, oldest first, at most `limit` of
        them in one short transaction; returns how many went. Only the `limit` oldest outcomes
        are looked at, so a call costs the same however many outcomes there are (those of a
        replica whose clock runs behind may wait for the next call)."""
        ...

    async def purge_resync_sources(self, recorded_before: datetime, limit: int) -> int:
        """Delete resync sources (personal data) recorded before `recorded_before`, oldest
        first, at most `limit` of them in one short transaction; returns how many went. A
        profile whose source went is not resynced until its next delivered update."""
        ...

    async def dataflow(
        self, destination_id: str, hours: int = 24, now: datetime | None = None
    ) -> Dataflow:
        """Dataflow totals and the last `hours` hourly runs. Raises DestinationNotFound."""
        ...

    # -- alerts ---------------------------------------------------------------------------------

    async def raise_alert(
        self,
        destination_id: str,
        type: str,
        message: str,
        *,
        paused_until: datetime | None = None,
        now: datetime | None = None,
    ) -> tuple[AlertRecord, bool]:
        """Open an alert of that type unless one is open; returns (the open alert, newly raised).

        An already open alert gets the new message and paused_until.
        """
        ...

    async def resolve_alert(
        self, destination_id: str, type: str, now: datetime | None = None
    ) -> AlertRecord | None:
        """Resolve the open alert of that type; returns it, or None when none was open."""
        ...

    async def open_alerts(self, destination_id: str) -> list[AlertRecord]:
        """Unresolved alerts, oldest first."""
        ...

    # -- leases ---------------------------------------------------------------------------------

    async def acquire_lease(
        self, instance_key: str, holder: str, ttl: timedelta, now: datetime | None = None
    ) -> Lease | None:
        """Take the instance's lease if free, expired or already ours; None if someone holds it.

        Taking it from another holder (or after it lapsed) increments the generation.
        """
        ...

    async def renew_lease(
        self, lease: Lease, ttl: timedelta, now: datetime | None = None
    ) -> Lease | None:
        """Extend a lease we still hold (same holder and generation); None if it was lost."""
        ...

    async def release_lease(self, lease: Lease) -> None:
        """Give the lease up (expire it now) if we still hold it."""
        ...

    async def heartbeat_replica(
        self, holder: str, ttl: timedelta, now: datetime | None = None
    ) -> None:
        """Record that replica `holder` is alive until `now + ttl`.

        Taking or renewing a lease does this too; an idle replica calls it so it counts in
        `fair_share`.
        """
        ...

    async def fair_share(self, holder: str, now: datetime | None = None) -> int:
        """How many instance leases `holder` should hold at most now (at least 1).

        `ceil(instances / replicas)`, where instances are those with due work or a live lease
        and replicas are the live ones (`holder` included). A replica above its share should
        let leases go after their batch in flight, and not take new ones.
        """
        ...
