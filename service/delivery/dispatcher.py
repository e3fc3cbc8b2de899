"""The dispatcher: schedules the delivery of the durable outbox, one drainer per Marketo instance.

This module is about when and under which lease work runs; what a batch does (claims, engines,
outcomes, deferrals, quota and schema pauses, alerts) is `service.delivery.delivery`.

A supervisor task looks for instances with due work (every `poll_interval`, and at once when the
Sync path calls `notify`) and starts one drainer per instance. A drainer holds the instance's
lease (renewed by a heartbeat; every retire/defer carries the lease generation as fencing token,
so a drainer that lost its lease can never commit) and loops:

1. claim up to `batch_size` due entries (and no more than `claim_max_bytes` of their payload);
   when fewer are due and the oldest is younger than `linger`, wait for the batch to fill (a
   `notify` wakes it) or for the linger time to pass;
2. deliver the batch (`BatchDelivery.deliver`);
3. a replica holding more than its fair share of leases (PostgreSQL scale-out) lets this one go
   after the batch, once `idle_hold` (one rate window) has passed without a call, so the next
   holder's limiter does not start with our last calls unseen; a drainer with nothing due keeps
   its lease for `idle_hold` seconds too before releasing it.

External fencing. The generation fences the store, not Marketo: a drainer that lost its lease
(its process stalled, or cut off from the database) must also stop calling Marketo, or its late
Sync Leads could land after the new holder wrote a newer version and Marketo would keep the older
value. So every Marketo call of a drainer passes its `CallGate` (`service.delivery.fence`): the
drainer hands it to `BatchDelivery.deliver`, whose engines and schema reads call through a
gated view of the destination's client (`MarketoClient.gated`), which checks the gate when a
call starts and again right before each exchange. A call starts only while the lease is
confirmed for more than `call_margin` (the HTTP timeout, which bounds each whole exchange, plus
a clock-skew allowance), so a call that starts ends before the lease can expire. The heartbeat
renews every third of the TTL and feeds the gate: a renewal
that fails leaves the gate to close by itself when the margin is reached; a lost lease closes it
at once; a heartbeat that wakes up late by more than half its interval (the event loop stalled,
e.g. the process was stopped) closes it until the renewal it then makes succeeds. A lease taken
after the previous tenure expired (not released) opens its gate only `call_margin` after that
expiry, and not before the previous holder's calls have left Marketo's rate window (they all
started before `expiry - call_margin`, so at `expiry - call_margin + rate_window`): the per-instance
limiter of the new holder starts empty, and Marketo's must not see both holders' calls in one
window. A call refused by the gate raises `LeaseUnconfirmed`: the batch stops, its unfinished
entries wait, due at once, without counting an attempt, and the drainer ends (a lease still held
is released). The per-instance rate, concurrency and daily limits are counted by the holder's
process, so they hold as long as one holder calls at a time, which this gate ensures.

Each batch is delivered holding the instance's turn; `exclusive` lets other work
(reconciliation) take the turn between two batches. A quota-paused instance gets no drainer
until its pause ends. A batch whose store writes fail
stays due and the drainer backs off for a poll interval; `stop` lets every drainer finish its
batch in flight, then releases every lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from service.delivery.config import DeliveryServices, DeliverySettings
from service.delivery.delivery import BatchDelivery
from service.delivery.fence import CallGate
from service.errors import Unavailable
from service.marketo.clock import Clock
from service.store.base import (
    DestinationRecord,
    DestinationState,
    FencingError,
    Lease,
    OutboxEntry,
)
from service.store.sql import Store
from service.usecases.alerts import AlertMonitor

__all__ = ["Dispatcher", "InstanceBusy"]

log = logging.getLogger(__name__)


class InstanceBusy(Unavailable):
    """Another replica holds the instance's lease: work that needs its turn waits."""

    def __init__(self, instance_key: str) -> None:
        super().__init__(
            f"another replica delivers to Marketo instance {instance_key} now; try again",
            timedelta(seconds=10),
        )


@dataclass(slots=True)
class _Drainer:
    instance_key: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    lost: bool = False
    lease: Lease | None = None
    gate: CallGate | None = None
    task: asyncio.Task[None] | None = None


class Dispatcher:
    """Delivers outbox entries to Marketo: one drainer per instance with due work."""

    def __init__(
        self, services: DeliveryServices, settings: DeliverySettings, *, holder: str
    ) -> None:
        """`holder` names this replica in leases."""
        self.delivery = BatchDelivery(services, settings)
        """What a claimed batch goes through (also builds engines for dry runs)."""
        self._store: Store = services.store
        self._alerts: AlertMonitor = services.alerts
        self._clock: Clock = services.clock
        self._settings = settings
        self._holder = holder
        self._linger = timedelta(seconds=settings.linger)
        self._drainers: dict[str, _Drainer] = {}
        self._leases: dict[str, Lease] = {}
        self._elsewhere: dict[str, datetime] = {}
        """Instances whose lease another replica held when last tried, until when to skip them."""
        self._wake = asyncio.Event()
        self._woken: set[str] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._turns: dict[str, asyncio.Lock] = {}
        """Per instance: held while a batch is delivered, or by `exclusive`."""

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
        return self.delivery.paused_until(instance_key)

    async def drain_once(self, instance_key: str) -> int:
        """Deliver one batch of the instance's due entries now (no linger, no call gate); for
        tests and tools, not while the dispatcher is started.

        Takes the instance's lease if needed. Returns how many entries were claimed (0 when
        nothing is due, the instance is quota-paused or another holder has the lease).
        """
        if await self.delivery.paused_in_store(instance_key):
            return 0
        lease = await self._lease(instance_key)
        if lease is None:
            return 0
        entries = await self.delivery.claim(lease, self._settings.batch_size)
        entries = await self.delivery.widen(lease, entries)
        if entries:
            async with self._turn(instance_key):
                await self.delivery.deliver(instance_key, lease, entries)
        return len(entries)

    @contextlib.asynccontextmanager
    async def exclusive(self, instance_key: str) -> AsyncIterator[None]:
        """Hold the instance's delivery turn: no batch of it is in flight in this replica while
        the block runs, and it waits for the batch in flight to end (turns are taken in
        order, so a drainer waiting meanwhile goes next). Takes the instance's lease when no
        drainer of this replica holds it; raises `InstanceBusy` when another replica does.

        For work that must see every delivered write recorded (reconciliation): keep the block
        short, one batch's worth of calls, since live updates wait for it.
        """
        async with self._turn(instance_key):
            if instance_key in self._leases:
                yield
                return
            lease = await self._lease(instance_key)
            if lease is None:
                raise InstanceBusy(instance_key)
            try:
                yield
            finally:
                if instance_key not in self._drainers:
                    await self._release(lease)

    def _turn(self, instance_key: str) -> asyncio.Lock:
        return self._turns.setdefault(instance_key, asyncio.Lock())

    # -- supervisor and drainers ----------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._stopping:
            try:
                # An idle replica still counts in the fair share of every other one.
                await self._store.heartbeat_replica(
                    self._holder, self._settings.lease_ttl, now=self._now()
                )
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
            await self._wait(self._wake, self._settings.poll_interval)
            self._wake.clear()

    def _start_drainer(self, instance_key: str) -> None:
        drainer = _Drainer(instance_key)
        self._drainers[instance_key] = drainer
        drainer.task = asyncio.create_task(self._drain(drainer), name=f"drainer {instance_key}")

    async def _drain(self, drainer: _Drainer) -> None:
        key = drainer.instance_key
        heartbeat: asyncio.Task[None] | None = None
        try:
            if await self.delivery.paused_in_store(key):
                return
            lease = await self._lease(key)
            if lease is None:
                # Another replica drains this instance: look again after a third of the TTL.
                self._elsewhere[key] = self._now() + self._settings.lease_ttl / 3
                return
            drainer.lease = lease
            gate = drainer.gate = self._gate(lease)
            heartbeat = asyncio.create_task(self._heartbeat(drainer), name=f"lease {key}")
            while (wait := gate.opens_at - self._clock.now()) > 0 and not drainer.stopping:
                # Taken over from an expired tenure: its holder's last call may still be on.
                await self._wait(drainer.wake, wait)
                drainer.wake.clear()
            while not (drainer.stopping or drainer.lost) and self.paused_until(key) is None:
                refusal = gate.refusal()
                if refusal is not None:
                    log.warning("drainer of %s stops: %s", key, refusal)
                    break
                entries = await self._next_batch(drainer)
                if (
                    not entries
                    and not (drainer.stopping or drainer.lost)
                    and self._settings.idle_hold
                ):
                    # Keep the lease for a rate window: a handover right after our last calls
                    # would let the next holder's limiter start with those calls unseen.
                    await self._wait(drainer.wake, self._settings.idle_hold)
                    if drainer.wake.is_set():
                        continue
                if not entries or drainer.stopping or drainer.lost:
                    break
                try:
                    async with self._turn(key):
                        await self.delivery.deliver(key, drainer.lease, entries, gate=gate)
                except FencingError as error:
                    log.warning("drainer of %s lost its lease: %s", key, error)
                    drainer.lost = True
                except Exception:
                    # The store failed: the entries are still in the outbox; back off a little.
                    log.exception("a batch of %s could not be recorded; retrying later", key)
                    await self._wait(drainer.wake, self._settings.poll_interval)
                if await self._above_fair_share(key):
                    # Another replica has room: let it take this instance after this batch, and
                    # after our last calls have left the rate window.
                    self._elsewhere[key] = self._now() + self._settings.lease_ttl / 3
                    until = self._clock.now() + self._settings.idle_hold
                    while not drainer.stopping and (left := until - self._clock.now()) > 0:
                        await self._wait(drainer.wake, left)
                        drainer.wake.clear()
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

    def _gate(self, lease: Lease) -> CallGate:
        """The call gate of a lease just taken (see the module docstring)."""
        margin = self._settings.call_margin
        opens_at = None
        if lease.previous_expiry is not None:
            wait = max(margin, self._settings.rate_window - margin)
            opens_at = lease.previous_expiry + timedelta(seconds=wait)
        return CallGate(
            self._clock, margin=margin, confirmed_until=lease.expires_at, opens_at=opens_at
        )

    async def _heartbeat(self, drainer: _Drainer) -> None:
        interval = self._settings.lease_ttl.total_seconds() / 3
        gate = drainer.gate
        assert gate is not None
        while True:
            slept_from = self._clock.now()
            await self._clock.sleep(interval)
            late = self._clock.now() - slept_from - interval
            if late > interval / 2:
                # The event loop stalled: the lease may have expired meanwhile. No call until
                # the renewal below confirms it.
                gate.close(f"the event loop stalled for {late:.1f}s")
                log.warning("drainer of %s stalled for %.1fs", drainer.instance_key, late)
            lease = drainer.lease
            assert lease is not None
            try:
                renewed = await self._store.renew_lease(
                    lease, self._settings.lease_ttl, now=self._now()
                )
            except Exception:
                log.exception("renewing the lease of %s failed", drainer.instance_key)
                continue
            if renewed is None:
                log.warning("lease of %s lost", drainer.instance_key)
                gate.close("the lease was lost")
                drainer.lost = True
                drainer.wake.set()
                return
            gate.confirm(renewed.expires_at)
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
                entries = await self.delivery.claim(lease, self._settings.batch_size)
                if self.delivery.full(entries, self._settings.batch_size):
                    return await self.delivery.widen(lease, entries)
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

    async def _lease(self, instance_key: str) -> Lease | None:
        lease = await self._store.acquire_lease(
            instance_key, self._holder, self._settings.lease_ttl, now=self._now()
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

    def _now(self) -> datetime:
        return self.delivery.now()
