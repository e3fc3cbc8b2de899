"""Delivery policy: one claimed batch of an instance's outbox entries taken to Marketo.

`BatchDelivery` claims due entries (unpacking inbox batches first; a full batch of a destination
whose backlog has reached `bulk_threshold` widens to `bulk_batch_size` entries), groups them by
destination and, for each, builds the sync engine (rules, mapper, audience -> list ids; bulk
import for a destination with at least `bulk_threshold` entries in the batch, see
docs/bulk-import.md), reads the destination's stored state of the batch's profiles
(`Store.desired_state`: watermarks, desired memberships and their holders, applied profile
state; for the profiles of resync entries, with what is applied taken as unknown, see
`DesiredState.for_resync`) and runs it. Final outcomes are retired with their entries and the
state they fold in (watermarks, desired statuses, holders and profile states Marketo confirmed)
in one transaction; unfinished entries are deferred with exponential backoff and jitter, naming the
error. The alerts of each destination are evaluated after its batch. When and under which
lease this runs is the scheduler's business (`service.delivery.dispatcher`); the call gate of
that lease, given to `deliver`, gates every Marketo call of the batch (engines and schema reads
call through `MarketoClient.gated(gate)`; the cached clients themselves stay ungated, for dry
runs and other callers).

A 607 (daily quota) defers the whole batch to the reset, holds the instance until then and marks
its destinations QUOTA_PAUSED; an authentication failure marks the destination AUTH_FAILING. Both
raise their alert and are cleared by the destination's next successful batch. A list Marketo
answers does not exist (1013, deleted by hand) defers the batch's unfinished updates and has the
reconciliation create the list again and fill it (`DeliveryServices.list_gone`); the updates go
to the new list when they are retried.

A configuration error (Marketo refuses a request as a whole, e.g. it names a field deleted from
the lead schema) makes the dispatcher read the instance's schema again: when the mapping no
longer fits it, the destination is SCHEMA_PAUSED (stored, with the missing fields as its reason,
and alerted), its entries are held unchanged (attempts untouched) and no call is made for it
until a re-check, every `schema_recheck` (growing), finds the fields back or its mapping changes
(`Dispatcher.configuration_changed`); other destinations of the instance go on. When the mapping
still fits, the refused work is tried once more, and a second refusal fails those records,
unsplit. Nothing is ever dropped: an unexpected exception defers the entries it concerned.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial

from service.delivery.config import DeliveryServices, DeliverySettings
from service.delivery.engine import BatchResult, KeyedLocks, SyncEngine
from service.delivery.engine.bulk import BulkSyncEngine
from service.delivery.engine.executor import CODE_LIST_NOT_FOUND
from service.delivery.fence import LeaseUnconfirmed
from service.domain import DEDUPE_TARGET, DestinationSpec, FieldMapping, Outcome, WritePolicy
from service.errors import FailedPrecondition
from service.mapping.mapper import FieldType, Mapper, MappingConfigError, missing_fields
from service.marketo.client import MarketoClient
from service.marketo.errors import (
    AuthenticationError,
    ConfigurationError,
    MarketoError,
    QuotaExhaustedError,
    RejectedError,
)
from service.marketo.gate import Gate
from service.store.base import (
    DestinationNotFound,
    DestinationRecord,
    DestinationState,
    FencingError,
    Lease,
    MembershipHolder,
    MembershipWatermark,
    OutboxEntry,
    ProfileStateRow,
    UnappliedRow,
    Watermark,
)
from service.telemetry.core import batch_attributes
from service.usecases.connections import EndpointRefused

__all__ = ["BatchDelivery", "DestinationNotReady", "SchemaMismatch"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Prepared:
    """What a destination's batches need, cached per destination version and mapping."""

    version: int
    mappings: tuple[FieldMapping, ...]
    spec: DestinationSpec
    client: MarketoClient
    mapper: Mapper

    @property
    def write_policies(self) -> dict[str, WritePolicy]:
        """Each mapped Marketo field's write policy (the dedupe row is never written by id)."""
        return {m.target: m.write for m in self.mappings if m.target != DEDUPE_TARGET}


@dataclass(slots=True)
class _FieldTypes:
    types: tuple[FieldType, ...]
    fetched_at: float


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


class BatchDelivery:
    """Claims and delivers batches of outbox entries under a lease the caller holds; keeps the
    per-destination caches (engines' inputs, lead schemas) and the quota and schema pauses."""

    def __init__(self, services: DeliveryServices, settings: DeliverySettings) -> None:
        self._store = services.store
        self._connections = services.connections
        self._registry = services.registry
        self._alerts = services.alerts
        self._decode = services.decode
        self._telemetry = services.telemetry
        self._clock = services.clock
        self._rng = services.rng
        self._list_gone = services.list_gone
        self._settings = settings
        self._schema_pauses: dict[str, _SchemaPause] = {}
        self._locks: dict[str, KeyedLocks] = {}
        self._prepared: dict[str, _Prepared] = {}
        self._field_types: dict[str, _FieldTypes] = {}
        self._paused: dict[str, datetime] = {}

    # -- claims ---------------------------------------------------------------------------------

    async def claim(self, lease: Lease, limit: int) -> list[OutboxEntry]:
        """Up to `limit` due entries, unpacking inbox batches first while fewer are due (the
        store commits every few thousand, so appends never wait long behind a bulk claim)."""
        await self._store.unpack(
            lease.instance_key, self._decode, limit, fencing=lease.generation, now=self.now()
        )
        return await self._store.claim_due(
            lease.instance_key, limit, now=self.now(), max_bytes=self._settings.claim_max_bytes
        )

    def full(self, entries: Sequence[OutboxEntry], limit: int) -> bool:
        """Whether a claim of up to `limit` entries came back full, by count or by bytes."""
        return (
            len(entries) >= limit
            or sum(entry.payload_bytes for entry in entries) >= self._settings.claim_max_bytes
        )

    async def widen(self, lease: Lease, entries: list[OutboxEntry]) -> list[OutboxEntry]:
        """A full batch becomes a bulk-sized one when a destination in it has a bulk backlog."""
        settings = self._settings
        if (
            not settings.bulk_threshold
            or len(entries) < settings.batch_size
            or settings.bulk_batch_size <= len(entries)
        ):
            return entries  # a batch cut short by its bytes would be cut as short again
        for destination_id in sorted({entry.destination_id for entry in entries}):
            stats = await self._store.pending_stats(destination_id)
            if stats.count >= settings.bulk_threshold:
                return await self.claim(lease, settings.bulk_batch_size)
        return entries

    # -- quota pauses ---------------------------------------------------------------------------

    def paused_until(self, instance_key: str) -> datetime | None:
        """When the instance's quota pause ends, if it is paused."""
        until = self._paused.get(instance_key)
        return until if until is not None and until > self.now() else None

    async def paused_in_store(self, instance_key: str) -> bool:
        """Whether the instance is quota-paused, here or as the store recorded it (before a
        restart, or by another replica): no call to Marketo before the reset either way."""
        if self.paused_until(instance_key) is not None:
            return True
        until = await self._store.instance_paused_until(instance_key, now=self.now())
        if until is None:
            return False
        self._note_pause(instance_key, until)
        return True

    def _note_pause(self, instance_key: str, until: datetime) -> None:
        self._paused[instance_key] = until
        log.warning("Marketo instance %s: daily quota spent, paused until %s", instance_key, until)

    async def _pause(
        self, instance_key: str, lease: Lease, entries: Sequence[OutboxEntry], pause: _Paused
    ) -> None:
        """Hold the instance until the quota resets; its entries wait until then, unchanged.
        The pause is recorded in the store so that it outlives this process."""
        until = max(pause.until, self.now())
        self._note_pause(instance_key, until)
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
        for attempts, group in _by_attempts(entries):
            await self._store.defer(
                group, until, reason, attempts=attempts, fencing=lease.generation
            )

    # -- one batch ------------------------------------------------------------------------------

    async def deliver(
        self,
        instance_key: str,
        lease: Lease,
        entries: Sequence[OutboxEntry],
        *,
        gate: Gate | None = None,
    ) -> None:
        """Deliver a claimed batch destination by destination, every Marketo call of it through
        `gate` (the lease's call gate; none: not gated); raises only FencingError and store
        failures (the entries then stay due)."""
        groups: dict[str, list[OutboxEntry]] = {}
        for entry in entries:
            groups.setdefault(entry.destination_id, []).append(entry)
        pending = list(groups.items())
        for index, (destination_id, group) in enumerate(pending):
            try:
                await self._deliver_destination(lease, destination_id, group, gate)
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
        self, lease: Lease, destination_id: str, entries: list[OutboxEntry], gate: Gate | None
    ) -> None:
        try:
            record = await self._store.get_destination(destination_id, tenant=None)
        except DestinationNotFound:
            # Deleted meanwhile: its outbox rows went with it (retire/defer of them are no-ops).
            self._prepared.pop(destination_id, None)
            return
        with self._batch_span(record, entries):
            await self._deliver_record(lease, record, entries, gate)

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
        self,
        lease: Lease,
        record: DestinationRecord,
        entries: list[OutboxEntry],
        gate: Gate | None,
    ) -> None:
        bulk = 0 < self._settings.bulk_threshold <= len(entries)
        if record.state is DestinationState.SCHEMA_PAUSED:
            resumed = await self._schema_resumes(lease, record, entries, gate)
            if resumed is None:
                return
            record = resumed
        engine = await self._engine_or_hold(lease, record, entries, gate, bulk=bulk)
        if engine is None:
            return
        result = await self._run_engine(record, engine, entries)
        if isinstance(result.error, ConfigurationError):
            entries = await self._retire_final(lease, record, entries, result)
            try:
                missing = await self._missing_fields(record, gate, max_age=0.0)
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
                lease, record, entries, gate, bulk=bulk, configuration_stops=False
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
        gate: Gate | None,
        *,
        bulk: bool,
        configuration_stops: bool = True,
    ) -> SyncEngine | None:
        """The destination's engine, or None once the entries are deferred or held."""
        try:
            return await self.engine_for(
                record, bulk=bulk, configuration_stops=configuration_stops, gate=gate
            )
        except SchemaMismatch as error:
            await self._schema_pause(lease, record, entries, error.missing)
        except DestinationNotReady as error:
            await self._defer(lease, entries, str(error))
        except QuotaExhaustedError as error:
            raise _Paused(_from_epoch(error.paused_until), error) from error
        except AuthenticationError as error:
            await self._auth_failing(lease, record, entries, error)
        except LeaseUnconfirmed as error:
            log.warning("batch of %s stopped: %s", record.id, error.message)
            await self._hold(lease, entries, self.now(), _describe(error))
        except MarketoError as error:
            await self._defer(lease, entries, _describe(error))
        return None

    async def engine_for(
        self,
        record: DestinationRecord,
        *,
        bulk: bool = False,
        configuration_stops: bool = True,
        gate: Gate | None = None,
    ) -> SyncEngine:
        """The sync engine the dispatcher uses for the destination (also for dry runs); with
        `bulk`, the one that writes through bulk import; `configuration_stops=False`: a REST
        engine that fails the records of a request refused as a whole instead of stopping;
        `gate`: every Marketo call of the engine, and the schema read it may need, passes it.

        Raises DestinationNotReady (no mapping, or one the instance's schema refuses: then
        SchemaMismatch when fields are missing) and, while reading the instance's lead schema,
        the Marketo client's errors.
        """
        if not record.mappings:
            raise DestinationNotReady(
                "the destination has no active mapping: Activate it with a mapping to deliver"
            )
        try:
            prepared = await self._prepare(record, gate)
        except MappingConfigError as error:
            raise DestinationNotReady(f"the destination's mapping is unusable: {error}") from None
        except EndpointRefused as error:
            # Stored before the egress policy changed: nothing is sent, the updates wait (and
            # the delivery-delay alert fires) until the endpoint or the policy is fixed.
            log.warning("destination %s not delivered: %s", record.id, error.message)
            raise DestinationNotReady(error.message) from None
        activations = await self._store.activations(record.id)
        lists = {a.audience_id: a.marketo_list_id for a in activations if a.active}
        tracked = [a.audience_id for a in activations if a.active and a.holders_tracked]
        client = prepared.client.gated(gate)
        co_holders = partial(self._store.co_holders, record.id)
        if bulk:
            return BulkSyncEngine(
                client,
                prepared.spec.rules(),
                prepared.mapper,
                clock=self._clock,
                policy=self._settings.bulk_policy,
                audience_lists=lists,
                locks=self._locks.setdefault(record.instance_key, KeyedLocks()),
                batch_size=min(self._settings.batch_size, 300),
                planning_scope=self._telemetry.mapping_span if self._telemetry else None,
                write_policies=prepared.write_policies,
                tracked_lists=tracked,
                co_holders=co_holders,
            )
        return SyncEngine(
            client,
            prepared.spec.rules(),
            prepared.mapper,
            audience_lists=lists,
            locks=self._locks.setdefault(record.instance_key, KeyedLocks()),
            batch_size=min(self._settings.batch_size, 300),
            planning_scope=self._telemetry.mapping_span if self._telemetry else None,
            configuration_stops=configuration_stops,
            write_policies=prepared.write_policies,
            tracked_lists=tracked,
            co_holders=co_holders,
        )

    async def _run_engine(
        self, record: DestinationRecord, engine: SyncEngine, entries: Sequence[OutboxEntry]
    ) -> BatchResult:
        """Run one destination's batch and count what came of it."""
        updates = [entry.update for entry in entries]
        profile_ids = sorted({u.profile_id for u in updates})
        state = await self._store.desired_state(record.id, profile_ids)
        resync = {entry.update.profile_id for entry in entries if entry.resync}
        result = await engine.sync(updates, state=state.for_resync(resync))
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
        if isinstance(error, LeaseUnconfirmed):
            # The gate refused a call (a list change an earlier attempt may have made is held
            # unconfirmed): the entries are due at once, for whoever holds the lease next.
            log.warning("batch of %s stopped: %s", record.id, error.message)
            await self._hold(lease, left, self.now(), _describe(error))
            return
        if isinstance(error, QuotaExhaustedError):
            raise _Paused(_from_epoch(error.paused_until), error)
        if isinstance(error, AuthenticationError):
            await self._auth_failing(lease, record, left, error)
            return
        if isinstance(error, RejectedError) and error.code == CODE_LIST_NOT_FOUND:
            # A list was deleted in Marketo: the updates wait while it is created again.
            log.warning("a list of %s is gone from Marketo: %s", record.id, error)
            if self._list_gone is not None:
                self._list_gone(record.id)
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
        """Retire the final outcomes with the new watermarks and membership marks; returns the
        entries left."""
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
        memberships = [
            MembershipWatermark(record.id, profile_id, audience_id, mark)
            for (profile_id, audience_id), mark in result.membership_marks.items()
        ]
        holders = [
            MembershipHolder(
                record.id,
                profile_id,
                audience_id,
                lead_id,
                confirmed=(profile_id, audience_id) not in result.unconfirmed,
            )
            for (profile_id, audience_id), lead_id in result.holders.items()
        ]
        profiles = [
            ProfileStateRow(record.id, profile_id, state)
            for profile_id, state in result.profiles.items()
        ]
        unapplied = [
            UnappliedRow(record.id, profile_id, attributes)
            for profile_id, attributes in result.unapplied.items()
        ]
        if done or marks or memberships or holders or profiles or unapplied:
            await self._store.retire(
                done,
                outcomes,
                marks,
                membership_marks=memberships,
                holders=holders,
                profiles=profiles,
                unapplied=unapplied,
                fencing=lease.generation,
                now=self.now(),
            )
        return list(by_id.values())

    async def _defer(self, lease: Lease, entries: Iterable[OutboxEntry], reason: str) -> None:
        """Postpone entries with exponential backoff; entries of one attempt count wait alike."""
        now = self.now()
        for attempts, group in _by_attempts(entries):
            not_before = now + self._settings.backoff.delay(attempts, self._rng)
            await self._store.defer(group, not_before, reason, fencing=lease.generation)

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

    async def _evaluate(self, destination_id: str) -> None:
        try:
            await self._alerts.evaluate(destination_id)
        except DestinationNotFound:
            pass
        except Exception:
            log.exception("evaluating the alerts of %s failed", destination_id)

    # -- schema pauses --------------------------------------------------------------------------

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
        next_check = self.now() + self._settings.schema_recheck.delay(checks, self._rng)
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
        self,
        lease: Lease,
        record: DestinationRecord,
        entries: Sequence[OutboxEntry],
        gate: Gate | None,
    ) -> DestinationRecord | None:
        """For a SCHEMA_PAUSED destination: the record, ACTIVE again, when its mapping fits the
        instance's schema now; None (its entries held) while it does not or the next re-check
        is not due. A new version or mapping is checked at once."""
        pause = self._schema_pauses.get(record.id)
        changed = pause is not None and not _same_destination(pause, record)
        if pause is not None and not changed and self.now() < pause.next_check:
            await self._hold(lease, entries, pause.next_check, f"paused: {record.state_reason}")
            return None
        # One schema read serves every paused destination of the instance re-checked meanwhile;
        # a changed mapping is checked against a fresh one.
        max_age = 0.0 if changed else self._settings.schema_recheck.base.total_seconds() / 2
        try:
            missing = await self._missing_fields(record, gate, max_age=max_age)
        except QuotaExhaustedError as error:
            raise _Paused(_from_epoch(error.paused_until), error) from error
        except MarketoError as error:
            # Still paused: the schema could not be read; try again after the first wait.
            log.warning("re-checking the schema for %s failed: %s", record.id, error)
            until = self.now() + self._settings.schema_recheck.delay(0, self._rng)
            await self._hold(lease, entries, until, f"paused: {record.state_reason}")
            return None
        if missing:
            await self._schema_pause(lease, record, entries, missing)
            return None
        self._schema_pauses.pop(record.id, None)
        log.info("destination %s resumed: its mapping fits the lead schema again", record.id)
        await self._store.set_destination_state(record.id, DestinationState.ACTIVE)
        await self._store.release_deferred(record.id, now=self.now())
        await self._alerts.recovered(record.id)
        return replace(record, state=DestinationState.ACTIVE, state_reason="")

    async def _missing_fields(
        self, record: DestinationRecord, gate: Gate | None, *, max_age: float
    ) -> list[str]:
        """The fields the destination's mapping uses that the instance's lead schema (read
        again, through `gate`, when the cached one is older than `max_age` seconds) does not
        have."""
        spec = record.spec
        client = self._connections.client(spec.connection).gated(gate)
        types = await self._lead_fields(record.instance_key, client, max_age=max_age)
        return missing_fields(record.mappings, types, dedupe_field=spec.dedupe_field)

    # -- per-destination preparation ------------------------------------------------------------

    async def _prepare(self, record: DestinationRecord, gate: Gate | None) -> _Prepared:
        """The destination's cached inputs (its ungated client among them), built anew for a
        new version or mapping; the lead schema they need is read through `gate`."""
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
        reader = client.gated(gate)
        types = await self._lead_fields(record.instance_key, reader)
        try:
            mapper = Mapper(record.mappings, types, self._registry, dedupe_field=spec.dedupe_field)
        except MappingConfigError:
            # A field added to the instance after the schema was cached: look again once.
            types = await self._lead_fields(record.instance_key, reader, max_age=0.0)
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
        age = self._settings.field_types_ttl if max_age is None else max_age
        if cached is not None and now - cached.fetched_at < age:
            return cached.types
        schema = await client.describe2()
        types = tuple(FieldType(f.name, f.data_type, f.length) for f in schema.fields)
        self._field_types[instance_key] = _FieldTypes(types, now)
        return types

    def now(self) -> datetime:
        """The clock's time as a datetime."""
        return _from_epoch(self._clock.now())


def _by_attempts(entries: Iterable[OutboxEntry]) -> list[tuple[int, list[OutboxEntry]]]:
    """The entries grouped by how many attempts they have had, fewest first."""
    groups: dict[int, list[OutboxEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.attempts, []).append(entry)
    return sorted(groups.items())


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
