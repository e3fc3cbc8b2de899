"""The dispatcher: drains the durable outbox into Marketo, one drainer per Marketo instance.

A supervisor task looks for instances with due work (every `poll_interval`, and at once when the
Sync path calls `notify`) and starts one drainer per instance. A drainer holds the instance's
lease (renewed by a heartbeat; every retire/defer carries the lease generation as fencing token,
so a drainer that lost its lease can never commit) and loops:

1. claim up to `batch_size` due entries, and no more than `claim_max_bytes` of their stored
   payload (a claim cut short by its bytes is full); when fewer are due and the oldest is
   younger than `linger`, wait for the batch to fill (a `notify` wakes it) or for the linger
   time to pass;
2. group the entries by destination; for each, build the sync engine (rules, mapper, audience ->
   list ids), read the watermarks and run `engine.sync`;
   a full batch of a destination whose backlog has reached `bulk_threshold` widens the claim to
   `bulk_batch_size` entries, and a destination with at least `bulk_threshold` entries in the
   batch goes through bulk import (`BulkSyncEngine`, see docs/bulk-import.md), the others
   through REST;
3. retire every final outcome with its entry and the new watermarks in one transaction; defer
   the unfinished entries with exponential backoff and jitter, naming the error;
4. a replica holding more than its fair share of leases (PostgreSQL scale-out) lets this one go
   after the batch; a drainer with nothing due keeps its lease for `idle_hold` seconds (one
   Marketo rate window) before releasing it.

A 607 (daily quota) defers the whole batch to the reset, holds the instance until then and marks
its destinations QUOTA_PAUSED; an authentication failure marks the destination AUTH_FAILING. Both
raise their alert and are cleared by the destination's next successful batch.

A configuration error (Marketo refuses a request as a whole, e.g. it names a field deleted from
the lead schema) makes the dispatcher read the instance's schema again: when the mapping no
longer fits it, the destination is SCHEMA_PAUSED (stored, with the missing fields as its reason,
and alerted), its entries are held unchanged (attempts untouched) and no call is made for it
until a re-check, every `schema_recheck` (growing), finds the fields back or its mapping changes
(`configuration_changed`); other destinations of the instance go on. When the mapping still fits,
the refused work is tried once more, and a second refusal fails those records, unsplit.
Nothing is ever dropped: an unexpected exception defers the entries it concerned and the drainer
goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from service.delivery.engine import BatchResult, KeyedLocks, SyncEngine
from service.delivery.engine.bulk import BulkPolicy, BulkSyncEngine
from service.domain import DecodedBatch, DestinationSpec, FieldMapping, Outcome
from service.errors import FailedPrecondition
from service.mapping.mapper import FieldType, Mapper, MappingConfigError, missing_fields
from service.mapping.registry import PluginRegistry
from service.marketo.client import MarketoClient
from service.marketo.clock import Clock, SystemClock
from service.marketo.errors import (
    AuthenticationError,
    ConfigurationError,
    MarketoError,
    QuotaExhaustedError,
)
from service.store.base import (
    CLAIM_MAX_BYTES,
    DestinationNotFound,
    DestinationRecord,
    DestinationState,
    FencingError,
    Lease,
    OutboxEntry,
    Store,
    Watermark,
)
from service.telemetry import Telemetry, batch_attributes
from service.usecases.alerts import AlertMonitor
from service.usecases.connections import EndpointRefused, MarketoConnections

__all__ = ["Backoff", "DestinationNotReady", "Dispatcher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long a deferred entry waits: `base * multiplier ** attempts`, capped, with jitter."""

    base: timedelta = timedelta(seconds=5)
    """Wait after the first failure."""
    maximum: timedelta = timedelta(minutes=10)
    """Upper bound of any wait (jitter included)."""
    multiplier: float = 2.0
    jitter: float = 0.2
    """Fraction of the wait drawn at random and subtracted, so retries of many entries spread."""

    def delay(self, attempts: int, rng: random.Random) -> timedelta:
        """The wait before the next try of an entry that already failed `attempts` times."""
        seconds = self.base.total_seconds() * self.multiplier ** min(max(attempts, 0), 64)
        seconds = min(seconds, self.maximum.total_seconds())
        seconds -= seconds * self.jitter * rng.random()
        return timedelta(seconds=max(seconds, 0.0))


@dataclass(slots=True)
class _Prepared:
    """What a destination's batches need, cached per destination version and mapping."""

    version: int
    mappings: tuple[FieldMapping, ...]
    spec: DestinationSpec
    client: MarketoClient
    mapper: Mapper


@dataclass(slots=True)
class _FieldTypes:
    types: tuple[FieldType, ...]
    fetched_at: float


@dataclass(slots=True)
class _Drainer:
    instance_key: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    lost: bool = False
    lease: Lease | None = None
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _SchemaPause:
    """A destination held because the instance's lead schema lacks fields its mapping uses."""

    version: int
    mappings: tuple[FieldMapping, ...]
    """The destination as it was paused: a new version or mapping is checked at once."""
    checks: int
    """Re-checks that found the fields still missing (the next wait grows with it)."""
    next_check: datetime


class DestinationNotReady(FailedPrecondition):
    """The destination cannot be delivered: it has no mapping, or one the instance refuses."""


class SchemaMismatch(DestinationNotReady):
    """The instance's lead schema lacks fields the destination's mapping uses."""

    def __init__(self, missing: Sequence[str]) -> None:
        super().__init__(_schema_reason(missing))
        self.missing = tuple(missing)


class _Paused(Exception):
    """Internal: the instance's daily quota is spent; the rest of the batch waits too."""

    def __init__(self, until: datetime, error: QuotaExhaustedError) -> None:
        super().__init__(str(error))
        self.until = until
        self.error = error


class Dispatcher:
    """Delivers outbox entries to Marketo: one drainer per instance with due work."""

    def __init__(
        self,
        store: Store,
        connections: MarketoConnections,
        registry: PluginRegistry,
        *,
        alerts: AlertMonitor,
        holder: str,
        decode: Callable[[bytes], DecodedBatch],
        batch_size: int = 300,
        linger: float = 1.0,
        lease_ttl: timedelta = timedelta(seconds=30),
        poll_interval: float = 1.0,
        backoff: Backoff | None = None,
        field_types_ttl: float = 600.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        telemetry: Telemetry | None = None,
        bulk_threshold: int = 5_000,
        bulk_batch_size: int = 200_000,
        bulk_policy: BulkPolicy | None = None,
        idle_hold: float = 0.0,
        claim_max_bytes: int = CLAIM_MAX_BYTES,
        schema_recheck: Backoff | None = None,
    ) -> None:
        """`holder` names this replica in leases; `decode` turns an inbox batch (as Sync stored
        it) into updates; `linger` (s) is how long a partial batch waits
        for more updates; `poll_interval` (s) how often due work (e.g. retries coming due) is
        looked for; `field_types_ttl` (s) how long an instance's lead schema is cached; `clock`
        (epoch seconds and sleep) drives every wait, so tests need no real sleeping.

        `bulk_threshold` (0: never) is the due backlog of one destination from which its work
        goes through bulk import, claimed `bulk_batch_size` entries at a time; `bulk_policy`
        sizes and polls the imports. `idle_hold` (s) is how long a drainer keeps its lease once
        its instance has nothing due (one Marketo rate window in the service).
        `claim_max_bytes` bounds the stored payload one claim (a batch, a bulk one too) holds in
        memory; a batch cut short by it counts as full.
        `schema_recheck` spaces the schema reads of a destination paused by a schema mismatch."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if claim_max_bytes < 1:
            raise ValueError("claim_max_bytes must be at least 1")
        self._store = store
        self._connections = connections
        self._registry = registry
        self._alerts = alerts
        self._holder = holder
        self._decode = decode
        self._batch_size = batch_size
        self._claim_max_bytes = claim_max_bytes
        self._bulk_threshold = max(bulk_threshold, 0)
        self._bulk_batch_size = max(bulk_batch_size, batch_size)
        self._bulk_policy = bulk_policy or BulkPolicy()
        self._linger = timedelta(seconds=linger)
        self._lease_ttl = lease_ttl
        self._poll_interval = poll_interval
        self._backoff = backoff or Backoff()
        self._field_types_ttl = field_types_ttl
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._telemetry = telemetry
        self._idle_hold = idle_hold
        self._schema_recheck = schema_recheck or Backoff(
            base=timedelta(minutes=1), maximum=timedelta(minutes=10)
        )
        self._schema_pauses: dict[str, _SchemaPause] = {}
        self._drainers: dict[str, _Drainer] = {}
        self._leases: dict[str, Lease] = {}
        self._locks: dict[str, KeyedLocks] = {}
        self._prepared: dict[str, _Prepared] = {}
        self._field_types: dict[str, _FieldTypes] = {}
        self._paused: dict[str, datetime] = {}
        self._elsewhere: dict[str, datetime] = {}
        """Instances whose lease another replica held when last tried, until when to skip them."""
        self._wake = asyncio.Event()
        self._woken: set[str] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the supervisor (idempotent)."""
        if self._supervisor is None:
            self._stopping = False
            self._supervisor = asyncio.create_task(self._supervise(), name="dispatcher")

    async def stop(self) -> None:
        """Stop: let each drainer finish its batch in flight, then release every lease."""
        self._stopping = True
        self._wake.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        drainers = list(self._drainers.values())
        for drainer in drainers:
            drainer.stopping = True
            drainer.wake.set()
        tasks = [d.task for d in drainers if d.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for lease in list(self._leases.values()):
            await self._release(lease)

    def notify(self, instance_key: str, destination_id: str | None = None) -> None:
        """Tell the dispatcher that updates of the instance were just committed.

        Cheap and synchronous (call it after `store.append`): wakes the instance's drainer (so a
        filling batch goes out at once) or has the supervisor start one. With `destination_id`,
        the destination's delivery delay is watched by the alerts' periodic check from now on.
        """
        if destination_id is not None:
            self._alerts.watch(destination_id)
        drainer = self._drainers.get(instance_key)
        if drainer is not None:
            drainer.wake.set()
        else:
            self._woken.add(instance_key)
            self._wake.set()

    async def configuration_changed(self, record: DestinationRecord) -> None:
        """The destination's mapping or spec was just changed (`record` is how it was before):
        a schema pause is checked again at once instead of at its next re-check."""
        if record.state is not DestinationState.SCHEMA_PAUSED:
            return
        await self._store.release_deferred(record.id, now=self._now())
        self.notify(record.instance_key)

    @property
    def active_instances(self) -> frozenset[str]:
        """Instances with a running drainer."""
        return frozenset(self._drainers)

    def paused_until(self, instance_key: str) -> datetime | None:
        """When the instance's quota pause ends, if it is paused."""
        until = self._paused.get(instance_key)
        return until if until is not None and until > self._now() else None

    async def drain_once(self, instance_key: str) -> int:
        """Deliver one batch of the instance's due entries now (no linger); for tests and tools,
        not while the dispatcher is started.

        Takes the instance's lease if needed. Returns how many entries were claimed (0 when
        nothing is due, the instance is quota-paused or another holder has the lease).
        """
        if await self._paused_in_store(instance_key):
            return 0
        lease = await self._lease(instance_key)
        if lease is None:
            return 0
        entries = await self._claim(lease, self._batch_size)
        entries = await self._widen(lease, entries)
        if entries:
            await self._deliver(instance_key, lease, entries)
        return len(entries)

    # -- supervisor and drainers ----------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._stopping:
            try:
                # An idle replica still counts in the fair share of every other one.
                await self._store.heartbeat_replica(self._holder, self._lease_ttl, now=self._now())
            except Exception:
                log.exception("recording this replica's heartbeat failed")
            try:
                keys = set(await self._store.instance_keys_with_due_work(now=self._now()))
            except Exception:
                log.exception("looking for instances with due work failed")
                keys = set()
            keys |= self._woken
            self._woken.clear()
            now = self._now()
            for key in sorted(keys):
                if key in self._drainers or self.paused_until(key) is not None:
                    continue
                if self._elsewhere.get(key, now) > now:
                    continue
                self._start_drainer(key)
            await self._wait(self._wake, self._poll_interval)
            self._wake.clear()

    def _start_drainer(self, instance_key: str) -> None:
        drainer = _Drainer(instance_key)
        self._drainers[instance_key] = drainer
        drainer.task = asyncio.create_task(self._drain(drainer), name=f"drainer {instance_key}")

    async def _drain(self, drainer: _Drainer) -> None:
        key = drainer.instance_key
        heartbeat: asyncio.Task[None] | None = None
        try:
            if await self._paused_in_store(key):
                return
            lease = await self._lease(key)
            if lease is None:
                # Another replica drains this instance: look again after a third of the TTL.
                self._elsewhere[key] = self._now() + self._lease_ttl / 3
                return
            drainer.lease = lease
            heartbeat = asyncio.create_task(self._heartbeat(drainer), name=f"lease {key}")
            while not (drainer.stopping or drainer.lost) and self.paused_until(key) is None:
                entries = await self._next_batch(drainer)
                if not entries and not (drainer.stopping or drainer.lost) and self._idle_hold:
                    # Keep the lease for a rate window: a handover right after our last calls
                    # would let the next holder's limiter start with those calls unseen.
                    await self._wait(drainer.wake, self._idle_hold)
                    if drainer.wake.is_set():
                        continue
                if not entries or drainer.stopping or drainer.lost:
                    break
                try:
                    await self._deliver(key, drainer.lease, entries)
                except FencingError as error:
                    log.warning("drainer of %s lost its lease: %s", key, error)
                    drainer.lost = True
                except Exception:
                    # The store failed: the entries are still in the outbox; back off a little.
                    log.exception("a batch of %s could not be recorded; retrying later", key)
                    await self._wait(drainer.wake, self._poll_interval)
                if await self._above_fair_share(key):
                    # Another replica has room: let it take this instance after this batch.
                    self._elsewhere[key] = self._now() + self._lease_ttl / 3
                    break
        except Exception:
            log.exception("drainer of %s failed", key)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
            if drainer.lost:
                self._leases.pop(key, None)
            elif not self._stopping and drainer.lease is not None:
                await self._release(drainer.lease)
            if self._drainers.get(key) is drainer:
                del self._drainers[key]
            if drainer.wake.is_set() and not self._stopping:
                self.notify(key)  # woken while winding down: look again

    async def _heartbeat(self, drainer: _Drainer) -> None:
        interval = self._lease_ttl.total_seconds() / 3
        while True:
            await self._clock.sleep(interval)
            lease = drainer.lease
            assert lease is not None
            try:
                renewed = await self._store.renew_lease(lease, self._lease_ttl, now=self._now())
            except Exception:
                log.exception("renewing the lease of %s failed", drainer.instance_key)
                continue
            if renewed is None:
                log.warning("lease of %s lost", drainer.instance_key)
                drainer.lost = True
                drainer.wake.set()
                return
            drainer.lease = renewed
            self._leases[drainer.instance_key] = renewed

    async def _above_fair_share(self, instance_key: str) -> bool:
        """Whether this replica holds more leases than its share and this is one to let go."""
        if len(self._leases) <= 1:
            return False
        share = await self._store.fair_share(self._holder, now=self._now())
        return instance_key in sorted(self._leases)[share:]

    async def _next_batch(self, drainer: _Drainer) -> list[OutboxEntry]:
        """Claim a batch; a partial batch of young entries lingers for more."""
        while True:
            drainer.wake.clear()
            lease = drainer.lease
            if lease is None:
                return []
            try:
                entries = await self._claim(lease, self._batch_size)
                if self._full(entries, self._batch_size):
                    return await self._widen(lease, entries)
            except FencingError as error:
                log.warning("drainer of %s lost its lease: %s", drainer.instance_key, error)
                drainer.lost = True
                return []
            if not entries or drainer.stopping:
                return entries
            deadline = min(entry.enqueued_at for entry in entries) + self._linger
            remaining = (deadline - self._now()).total_seconds()
            if remaining <= 0:
                return entries
            await self._wait(drainer.wake, remaining)
            if drainer.lost:
                return []

    async def _claim(self, lease: Lease, limit: int) -> list[OutboxEntry]:
        """Up to `limit` due entries, unpacking inbox batches first while fewer are due (the
        store commits every few thousand, so appends never wait long behind a bulk claim)."""
        await self._store.unpack(
            lease.instance_key, self._decode, limit, fencing=lease.generation, now=self._now()
        )
        return await self._store.claim_due(
            lease.instance_key, limit, now=self._now(), max_bytes=self._claim_max_bytes
        )

    def _full(self, entries: Sequence[OutboxEntry], limit: int) -> bool:
        """Whether a claim of up to `limit` entries came back full, by count or by bytes."""
        return (
            len(entries) >= limit
            or sum(entry.payload_bytes for entry in entries) >= self._claim_max_bytes
        )

    async def _widen(self, lease: Lease, entries: list[OutboxEntry]) -> list[OutboxEntry]:
        """A full batch becomes a bulk-sized one when a destination in it has a bulk backlog."""
        if (
            not self._bulk_threshold
            or len(entries) < self._batch_size
            or self._bulk_batch_size <= len(entries)
        ):
            return entries  # a batch cut short by its bytes would be cut as short again
        for destination_id in sorted({entry.destination_id for entry in entries}):
            stats = await self._store.pending_stats(destination_id)
            if stats.count >= self._bulk_threshold:
                return await self._claim(lease, self._bulk_batch_size)
        return entries

    async def _lease(self, instance_key: str) -> Lease | None:
        lease = await self._store.acquire_lease(
            instance_key, self._holder, self._lease_ttl, now=self._now()
        )
        if lease is None:
            self._leases.pop(instance_key, None)
        else:
            self._leases[instance_key] = lease
        return lease

    async def _release(self, lease: Lease) -> None:
        if self._leases.get(lease.instance_key) == lease:
            del self._leases[lease.instance_key]
        try:
            await self._store.release_lease(lease)
        except Exception:
            log.exception("releasing the lease of %s failed", lease.instance_key)

    async def _wait(self, event: asyncio.Event, seconds: float) -> None:
        """Until `event` is set or `seconds` of the clock have passed."""
        if event.is_set():
            return
        waiter = asyncio.ensure_future(event.wait())
        sleeper = asyncio.ensure_future(self._clock.sleep(max(seconds, 0.0)))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, sleeper):
                task.cancel()
            await asyncio.gather(waiter, sleeper, return_exceptions=True)

    # -- one batch ------------------------------------------------------------------------------

    async def _deliver(
        self, instance_key: str, lease: Lease, entries: Sequence[OutboxEntry]
    ) -> None:
        """Deliver a claimed batch destination by destination; raises only FencingError and
        store failures (the entries then stay due)."""
        groups: dict[str, list[OutboxEntry]] = {}
        for entry in entries:
            groups.setdefault(entry.destination_id, []).append(entry)
        pending = list(groups.items())
        for index, (destination_id, group) in enumerate(pending):
            try:
                await self._deliver_destination(lease, destination_id, group)
            except _Paused as pause:
                rest = [entry for _, later in pending[index:] for entry in later]
                await self._pause(instance_key, lease, rest, pause)
                return
            except FencingError:
                raise
            except Exception as error:
                log.exception(
                    "delivering %d updates of %s failed unexpectedly", len(group), destination_id
                )
                await self._defer(lease, group, f"internal error: {type(error).__name__}: {error}")
            await self._evaluate(destination_id)

    async def _deliver_destination(
        self, lease: Lease, destination_id: str, entries: list[OutboxEntry]
    ) -> None:
        try:
            record = await self._store.get_destination(destination_id, tenant=None)
        except DestinationNotFound:
            # Deleted meanwhile: its outbox rows went with it (retire/defer of them are no-ops).
            self._prepared.pop(destination_id, None)
            return
        with self._batch_span(record, entries):
            await self._deliver_record(lease, record, entries)

    def _batch_span(
        self, record: DestinationRecord, entries: Sequence[OutboxEntry]
    ) -> AbstractContextManager[object]:
        """A span per destination batch, linked to the Sync call of every update it carries;
        the Marketo calls of the batch (schema reads included) are its children."""
        if self._telemetry is None:
            return contextlib.nullcontext()
        attributes = batch_attributes(
            destination_id=record.id,
            munchkin_id=record.spec.connection.munchkin_id,
            sync_type=record.spec.sync_type.value if record.spec.sync_type else None,
            records=len(entries),
        )
        return self._telemetry.batch_span((e.trace_context for e in entries), attributes)

    async def _deliver_record(
        self, lease: Lease, record: DestinationRecord, entries: list[OutboxEntry]
    ) -> None:
        bulk = 0 < self._bulk_threshold <= len(entries)
        if record.state is DestinationState.SCHEMA_PAUSED:
            resumed = await self._schema_resumes(lease, record, entries)
            if resumed is None:
                return
            record = resumed
        engine = await self._engine_or_hold(lease, record, entries, bulk=bulk)
        if engine is None:
            return
        result = await self._run_engine(record, engine, entries)
        if isinstance(result.error, ConfigurationError):
            entries = await self._retire_final(lease, record, entries, result)
            try:
                missing = await self._missing_fields(record, max_age=0.0)
            except QuotaExhaustedError as error:
                raise _Paused(_from_epoch(error.paused_until), error) from error
            except MarketoError:
                # The schema could not be read: the refused work waits and is tried again.
                await self._defer(lease, entries, _describe(result.error))
                return
            if missing:
                await self._schema_pause(lease, record, entries, missing)
                return
            # The mapping fits the schema: something else refused the request. Try the refused
            # work once more; a second refusal fails those records, never split record by record.
            engine = await self._engine_or_hold(
                lease, record, entries, bulk=bulk, configuration_stops=False
            )
            if engine is None:
                return
            result = await self._run_engine(record, engine, entries)
        await self._record(lease, record, entries, result)

    async def _engine_or_hold(
        self,
        lease: Lease,
        record: DestinationRecord,
        entries: list[OutboxEntry],
        *,
        bulk: bool,
        configuration_stops: bool = True,
    ) -> SyncEngine | None:
        """The destination's engine, or None once the entries are deferred or held."""
        try:
            return await self.engine_for(record, bulk=bulk, configuration_stops=configuration_stops)
        except SchemaMismatch as error:
            await self._schema_pause(lease, record, entries, error.missing)
        except DestinationNotReady as error:
            await self._defer(lease, entries, str(error))
        except QuotaExhaustedError as error:
            raise _Paused(_from_epoch(error.paused_until), error) from error
        except AuthenticationError as error:
            await self._auth_failing(lease, record, entries, error)
        except MarketoError as error:
            await self._defer(lease, entries, _describe(error))
        return None

    async def engine_for(
        self, record: DestinationRecord, *, bulk: bool = False, configuration_stops: bool = True
    ) -> SyncEngine:
        """The sync engine the dispatcher uses for the destination (also for dry runs); with
        `bulk`, the one that writes through bulk import; `configuration_stops=False`: a REST
        engine that fails the records of a request refused as a whole instead of stopping.

        Raises DestinationNotReady (no mapping, or one the instance's schema refuses: then
        SchemaMismatch when fields are missing) and, while reading the instance's lead schema,
        the Marketo client's errors.
        """
        if not record.mappings:
            raise DestinationNotReady(
                "the destination has no active mapping: Activate it with a mapping to deliver"
            )
        try:
            prepared = await self._prepare(record)
        except MappingConfigError as error:
            raise DestinationNotReady(f"the destination's mapping is unusable: {error}") from None
        except EndpointRefused as error:
            # Stored before the egress policy changed: nothing is sent, the updates wait (and
            # the delivery-delay alert fires) until the endpoint or the policy is fixed.
            log.warning("destination %s not delivered: %s", record.id, error.message)
            raise DestinationNotReady(error.message) from None
        activations = await self._store.activations(record.id)
        lists = {a.audience_id: a.marketo_list_id for a in activations if a.active}
        if bulk:
            return BulkSyncEngine(
                prepared.client,
                prepared.spec.rules(),
                prepared.mapper,
                clock=self._clock,
                policy=self._bulk_policy,
                audience_lists=lists,
                locks=self._locks.setdefault(record.instance_key, KeyedLocks()),
                batch_size=min(self._batch_size, 300),
                planning_scope=self._telemetry.mapping_span if self._telemetry else None,
            )
        return SyncEngine(
            prepared.client,
            prepared.spec.rules(),
            prepared.mapper,
            audience_lists=lists,
            locks=self._locks.setdefault(record.instance_key, KeyedLocks()),
            batch_size=min(self._batch_size, 300),
            planning_scope=self._telemetry.mapping_span if self._telemetry else None,
            configuration_stops=configuration_stops,
        )

    async def _run_engine(
        self, record: DestinationRecord, engine: SyncEngine, entries: Sequence[OutboxEntry]
    ) -> BatchResult:
        """Run one destination's batch and count what came of it."""
        updates = [entry.update for entry in entries]
        marks = await self._store.watermarks(record.id, sorted({u.profile_id for u in updates}))
        result = await engine.sync(updates, watermarks=marks)
        if self._telemetry is None:
            return result
        counts = Counter(outcome.kind.value for outcome in result.outcomes)
        self._telemetry.record_outcomes(
            counts, destination_id=record.id, sync_type=engine.rules.sync_type.value
        )
        self._telemetry.record_batch(len(entries), instance=record.instance_key)
        return result

    async def _record(
        self,
        lease: Lease,
        record: DestinationRecord,
        entries: Sequence[OutboxEntry],
        result: BatchResult,
    ) -> None:
        # Entries the engine neither finished nor deferred would be lost: wait with the rest.
        left = await self._retire_final(lease, record, entries, result)
        error = result.error
        if isinstance(error, QuotaExhaustedError):
            raise _Paused(_from_epoch(error.paused_until), error)
        if isinstance(error, AuthenticationError):
            await self._auth_failing(lease, record, left, error)
            return
        if left:
            reason = _describe(error) if error is not None else "the engine left it unfinished"
            await self._defer(lease, left, reason)
        if error is None and record.state is not DestinationState.ACTIVE:
            await self._store.set_destination_state(record.id, DestinationState.ACTIVE)
            await self._alerts.recovered(record.id)

    async def _retire_final(
        self,
        lease: Lease,
        record: DestinationRecord,
        entries: Sequence[OutboxEntry],
        result: BatchResult,
    ) -> list[OutboxEntry]:
        """Retire the final outcomes with the new watermarks; returns the entries left."""
        by_id = {entry.update.update_id: entry for entry in entries}
        done: list[OutboxEntry] = []
        outcomes: list[Outcome] = []
        for outcome in result.outcomes:
            entry = by_id.pop(outcome.update_id, None)
            if entry is None:
                log.error("outcome for unknown update %s ignored", outcome.update_id)
                continue
            done.append(entry)
            outcomes.append(outcome)
        marks = [
            Watermark(record.id, profile_id, event_time)
            for profile_id, event_time in result.watermarks.items()
        ]
        if done or marks:
            await self._store.retire(
                done, outcomes, marks, fencing=lease.generation, now=self._now()
            )
        return list(by_id.values())

    async def _paused_in_store(self, instance_key: str) -> bool:
        """Whether the instance is quota-paused, here or as the store recorded it (before a
        restart, or by another replica): no call to Marketo before the reset either way."""
        if self.paused_until(instance_key) is not None:
            return True
        until = await self._store.instance_paused_until(instance_key, now=self._now())
        if until is None:
            return False
        self._paused[instance_key] = until
        log.warning("Marketo instance %s: daily quota spent, paused until %s", instance_key, until)
        return True

    async def _pause(
        self, instance_key: str, lease: Lease, entries: Sequence[OutboxEntry], pause: _Paused
    ) -> None:
        """Hold the instance until the quota resets; its entries wait until then, unchanged.
        The pause is recorded in the store so that it outlives this process."""
        until = max(pause.until, self._now())
        self._paused[instance_key] = until
        log.warning("Marketo instance %s: daily quota spent, paused until %s", instance_key, until)
        try:
            await self._store.pause_instance(instance_key, until)
        except Exception:
            log.exception("recording the quota pause of %s failed", instance_key)
        reason = f"Marketo daily API quota exhausted; paused until {until.isoformat()}"
        await self._hold(lease, entries, until, reason)
        for destination_id in sorted({entry.destination_id for entry in entries}):
            self._alerts.watch(destination_id)
            try:
                await self._store.set_destination_state(
                    destination_id, DestinationState.QUOTA_PAUSED, paused_until=until
                )
                await self._alerts.quota_exhausted(destination_id, until)
            except DestinationNotFound:
                continue
            except Exception:
                log.exception("recording the quota pause of %s failed", destination_id)

    async def _hold(
        self, lease: Lease, entries: Iterable[OutboxEntry], until: datetime, reason: str
    ) -> None:
        """Postpone entries to `until` without counting an attempt (nothing was tried)."""
        by_attempts: dict[int, list[OutboxEntry]] = {}
        for entry in entries:
            by_attempts.setdefault(entry.attempts, []).append(entry)
        for attempts, group in by_attempts.items():
            await self._store.defer(
                group, until, reason, attempts=attempts, fencing=lease.generation
            )

    async def _schema_pause(
        self,
        lease: Lease,
        record: DestinationRecord,
        entries: Sequence[OutboxEntry],
        missing: Sequence[str],
    ) -> None:
        """Pause the destination: its entries wait, unchanged, for the next schema re-check."""
        reason = _schema_reason(missing)
        before = self._schema_pauses.get(record.id)
        same = before is not None and _same_destination(before, record)
        checks = before.checks + 1 if before is not None and same else 0
        next_check = self._now() + self._schema_recheck.delay(checks, self._rng)
        self._schema_pauses[record.id] = _SchemaPause(
            record.version, record.mappings, checks, next_check
        )
        await self._hold(lease, entries, next_check, f"paused: {reason}")
        if record.state is DestinationState.SCHEMA_PAUSED and record.state_reason == reason:
            return
        log.warning("destination %s paused: %s", record.id, reason)
        self._prepared.pop(record.id, None)
        self._alerts.watch(record.id)
        try:
            await self._store.set_destination_state(
                record.id, DestinationState.SCHEMA_PAUSED, reason=reason
            )
            await self._alerts.schema_mismatch(record.id, reason)
        except DestinationNotFound:
            pass

    async def _schema_resumes(
        self, lease: Lease, record: DestinationRecord, entries: Sequence[OutboxEntry]
    ) -> DestinationRecord | None:
        """For a SCHEMA_PAUSED destination: the record, ACTIVE again, when its mapping fits the
        instance's schema now; None (its entries held) while it does not or the next re-check
        is not due. A new version or mapping is checked at once."""
        pause = self._schema_pauses.get(record.id)
        changed = pause is not None and not _same_destination(pause, record)
        if pause is not None and not changed and self._now() < pause.next_check:
            await self._hold(lease, entries, pause.next_check, f"paused: {record.state_reason}")
            return None
        # One schema read serves every paused destination of the instance re-checked meanwhile;
        # a changed mapping is checked against a fresh one.
        max_age = 0.0 if changed else self._schema_recheck.base.total_seconds() / 2
        try:
            missing = await self._missing_fields(record, max_age=max_age)
        except QuotaExhaustedError as error:
            raise _Paused(_from_epoch(error.paused_until), error) from error
        except MarketoError as error:
            # Still paused: the schema could not be read; try again after the first wait.
            log.warning("re-checking the schema for %s failed: %s", record.id, error)
            until = self._now() + self._schema_recheck.delay(0, self._rng)
            await self._hold(lease, entries, until, f"paused: {record.state_reason}")
            return None
        if missing:
            await self._schema_pause(lease, record, entries, missing)
            return None
        self._schema_pauses.pop(record.id, None)
        log.info("destination %s resumed: its mapping fits the lead schema again", record.id)
        await self._store.set_destination_state(record.id, DestinationState.ACTIVE)
        await self._store.release_deferred(record.id, now=self._now())
        await self._alerts.recovered(record.id)
        return replace(record, state=DestinationState.ACTIVE, state_reason="")

    async def _missing_fields(self, record: DestinationRecord, *, max_age: float) -> list[str]:
        """The fields the destination's mapping uses that the instance's lead schema (read
        again when the cached one is older than `max_age` seconds) does not have."""
        spec = record.spec
        client = self._connections.client(spec.connection)
        types = await self._lead_fields(record.instance_key, client, max_age=max_age)
        return missing_fields(record.mappings, types, dedupe_field=spec.dedupe_field)

    async def _auth_failing(
        self,
        lease: Lease,
        record: DestinationRecord,
        entries: Sequence[OutboxEntry],
        error: AuthenticationError,
    ) -> None:
        await self._defer(lease, entries, _describe(error))
        self._prepared.pop(record.id, None)
        try:
            await self._store.set_destination_state(record.id, DestinationState.AUTH_FAILING)
            # Fixed words: Identity's own text never reaches alert watchers or webhooks.
            await self._alerts.authentication_failing(
                record.id, "Marketo rejected the client id or secret"
            )
        except DestinationNotFound:
            pass

    async def _defer(self, lease: Lease, entries: Iterable[OutboxEntry], reason: str) -> None:
        """Postpone entries with exponential backoff; entries of one attempt count wait alike."""
        by_attempts: dict[int, list[OutboxEntry]] = {}
        for entry in entries:
            by_attempts.setdefault(entry.attempts, []).append(entry)
        now = self._now()
        for attempts, group in sorted(by_attempts.items()):
            not_before = now + self._backoff.delay(attempts, self._rng)
            await self._store.defer(group, not_before, reason, fencing=lease.generation)

    async def _evaluate(self, destination_id: str) -> None:
        try:
            await self._alerts.evaluate(destination_id)
        except DestinationNotFound:
            pass
        except Exception:
            log.exception("evaluating the alerts of %s failed", destination_id)

    # -- per-destination preparation ------------------------------------------------------------

    async def _prepare(self, record: DestinationRecord) -> _Prepared:
        cached = self._prepared.get(record.id)
        if (
            cached is not None
            and cached.version == record.version
            and cached.mappings == record.mappings
        ):
            return cached
        spec = record.spec
        if spec.sync_type is None:
            raise MappingConfigError(["the destination has no sync type"])
        client = self._connections.client(spec.connection)
        types = await self._lead_fields(record.instance_key, client)
        try:
            mapper = Mapper(record.mappings, types, self._registry, dedupe_field=spec.dedupe_field)
        except MappingConfigError:
            # A field added to the instance after the schema was cached: look again once.
            types = await self._lead_fields(record.instance_key, client, max_age=0.0)
            missing = missing_fields(record.mappings, types, dedupe_field=spec.dedupe_field)
            if missing:
                raise SchemaMismatch(missing) from None
            mapper = Mapper(record.mappings, types, self._registry, dedupe_field=spec.dedupe_field)
        prepared = _Prepared(record.version, record.mappings, spec, client, mapper)
        self._prepared[record.id] = prepared
        return prepared

    async def _lead_fields(
        self, instance_key: str, client: MarketoClient, *, max_age: float | None = None
    ) -> tuple[FieldType, ...]:
        """The instance's lead fields (Describe Lead2), cached for `field_types_ttl` (or
        `max_age` seconds; 0 reads them again)."""
        now = self._clock.now()
        cached = self._field_types.get(instance_key)
        age = self._field_types_ttl if max_age is None else max_age
        if cached is not None and now - cached.fetched_at < age:
            return cached.types
        schema = await client.describe2()
        types = tuple(FieldType(f.name, f.data_type, f.length) for f in schema.fields)
        self._field_types[instance_key] = _FieldTypes(types, now)
        return types

    def _now(self) -> datetime:
        return _from_epoch(self._clock.now())


def _from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _same_destination(pause: _SchemaPause, record: DestinationRecord) -> bool:
    """Whether the destination is as it was paused (same version and mapping)."""
    return (pause.version, pause.mappings) == (record.version, record.mappings)


def _schema_reason(missing: Sequence[str]) -> str:
    """The reason of a schema pause: the fields named, as Marketo spells them."""
    names = ", ".join(repr(name) for name in missing)
    noun = "field" if len(missing) == 1 else "fields"
    return f"Marketo's lead schema has no {noun} {names}, which the mapping uses"


def _describe(error: MarketoError | None) -> str:
    """`last_error` of a deferred entry: the error class, Marketo's code and its message."""
    if error is None:
        return "unknown error"
    code = f" {error.code}" if error.code else ""
    return f"{type(error).__name__}{code}: {error.message}"
