"""Sync ingestion: check each update, append the good ones, still encoded, to the durable inbox.

A request is acknowledged only after its accepted updates are committed, as one inbox batch (the
store group-commits concurrent streams); the dispatcher decodes them when it delivers them. Bad
updates are rejected one by one; the rest go on.
Back-pressure: while a destination's backlog is above the bound, the next request waits
(HTTP/2 flow control slows the caller); past `max_wait` it is refused with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from operator import itemgetter
from typing import Protocol

from service.api.access import current_principal
from service.caches import BytesBoundedCache, deep_size
from service.domain import FieldViolation, ProfileUpdate, Rejected, SyncAck
from service.errors import FailedPrecondition, ResourceExhausted
from service.store.base import AppendResult
from service.store.sql import Store


@dataclass(frozen=True, slots=True)
class IndexedUpdate:
    """An update that passed conversion, with its index in the request."""

    index: int
    update: ProfileUpdate


IndexedAudiences = tuple[int, tuple[str, ...]]
"""The index of an update in its request and the audiences it names."""


class WireUpdates(Protocol):
    """The updates of one Sync request that passed their own checks, still encoded as the
    caller sent them: the inbox keeps them that way (converting them costs more than all the
    rest of ingest) and the dispatcher decodes them when it delivers them."""

    @property
    def count(self) -> int:
        """How many updates passed their checks."""
        ...

    @property
    def memberships(self) -> Sequence[IndexedAudiences]:
        """The index and audiences of each of them that names audiences, in request order."""
        ...

    def encode(self, dropped: Collection[int] = ()) -> bytes:
        """The updates, less those whose index is in `dropped`, as one inbox batch."""
        ...


@dataclass(frozen=True, slots=True)
class Submission:
    """The updates of one request, queued for the next commit."""

    committed: asyncio.Future[AppendResult]
    """Resolves once the accepted updates are durable (at once when none were accepted). The
    caller awaits it, not a task: the answer goes out as soon as the commit is settled."""
    rejected: tuple[Rejected, ...]
    """Updates naming an audience that is not active."""

    def ack(self) -> SyncAck:
        """The answer, once `committed` is done."""
        result = self.committed.result()
        return SyncAck(result.count, result.sequence, self.rejected)


@dataclass(slots=True)
class _Destination:
    instance_key: str
    audiences: frozenset[str]
    fetched_at: float


@dataclass(slots=True)
class _Backlog:
    count: int
    """Pending updates as last read from the store, plus those appended here since."""
    read_at: float


CACHE_BYTES = 8 * 1024 * 1024
"""The most each of Ingest's caches (destinations, backlogs) holds, keys and values counted: a
destination pushed out is read from the store again."""


def _destination_size(key: tuple[str, str], value: _Destination) -> int:
    return deep_size(key, value, value.instance_key, value.audiences, value.fetched_at)


def _backlog_size(key: str, value: _Backlog) -> int:
    return deep_size(key, value, value.count, value.read_at)


def check_audiences(
    updates: Sequence[IndexedAudiences], active: frozenset[str]
) -> tuple[set[int], tuple[Rejected, ...]]:
    """The indexes of updates naming an audience that is not active, and their rejections."""
    if all(map(active.issuperset, map(itemgetter(1), updates))):  # the usual case, at C speed
        return set(), ()
    dropped: set[int] = set()
    rejected: list[Rejected] = []
    for index, audience_ids in updates:
        if active.issuperset(audience_ids):
            continue
        dropped.add(index)
        rejected.append(
            Rejected(
                index,
                tuple(
                    FieldViolation(
                        f"updates[{index}].audiences[{position}].audience_id",
                        f"audience {audience_id!r} is not active on this destination",
                    )
                    for position, audience_id in enumerate(audience_ids)
                    if audience_id not in active
                ),
            )
        )
    return dropped, tuple(rejected)


class Ingest:
    """The Sync use case."""

    def __init__(
        self,
        store: Store,
        *,
        notify: Callable[[str, str], None] = lambda instance_key, destination_id: None,
        max_backlog: int,
        max_wait: timedelta,
        trace_context: Callable[[], str | None] = lambda: None,
        cache_seconds: float = 2.0,
        max_clock_skew: timedelta,
    ) -> None:
        """`max_backlog`, `max_wait` and `max_clock_skew` are the settings `max_backlog`,
        `backpressure_wait_seconds` and `max_clock_skew_seconds`."""
        self.max_clock_skew = max_clock_skew
        """How far in the future an update's event time may be."""
        self._store = store
        self._notify = notify
        self._max_backlog = max_backlog
        self._max_wait = max_wait
        self._trace_context = trace_context
        self._cache_seconds = cache_seconds
        self._destinations: BytesBoundedCache[tuple[str, str], _Destination] = BytesBoundedCache(
            CACHE_BYTES, _destination_size
        )
        self._backlogs: BytesBoundedCache[str, _Backlog] = BytesBoundedCache(
            CACHE_BYTES, _backlog_size
        )

    async def submit(self, destination_id: str, updates: WireUpdates) -> Submission:
        """Check the updates and queue them for the next commit; `committed` of the result
        resolves once they are durable.

        Calls made one after another are committed in that order (a stream's order), while
        their commits may overlap: the caller awaits the results whenever it likes.
        """
        destination = await self._destination(destination_id)
        await self._wait_for_room(destination_id)
        dropped, rejected = check_audiences(updates.memberships, destination.audiences)
        count = updates.count - len(dropped)
        if not count:
            nothing: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
            nothing.set_result(AppendResult(0, 0))
            return Submission(nothing, rejected)
        appended = self._store.append(
            destination_id,
            destination.instance_key,
            updates.encode(dropped),
            count,
            self._trace_context(),
        )
        appended.add_done_callback(
            partial(self._committed, destination_id, destination.instance_key)
        )
        return Submission(appended, rejected)

    def _committed(
        self, destination_id: str, instance_key: str, appended: asyncio.Future[AppendResult]
    ) -> None:
        """Once an append is settled: count and announce the stored batch."""
        if appended.cancelled() or appended.exception() is not None:
            return
        count = appended.result().count
        _, backlog = self._backlogs.lookup(destination_id)
        if backlog is not None:
            backlog.count += count
        self._notify(instance_key, destination_id)

    async def _destination(self, destination_id: str) -> _Destination:
        tenant = current_principal().tenant
        key = (tenant, destination_id)
        _, cached = self._destinations.lookup(key)
        if cached is not None and time.monotonic() - cached.fetched_at < self._cache_seconds:
            return cached
        record = await self._store.get_destination(destination_id, tenant=tenant)
        if not record.mappings:
            raise FailedPrecondition(
                f"destination {destination_id!r} has no field mapping; call Activate first"
            )
        activations = await self._store.activations(destination_id)
        fresh = _Destination(
            instance_key=record.instance_key,
            audiences=frozenset(a.audience_id for a in activations if a.active),
            fetched_at=time.monotonic(),
        )
        self._destinations.put(key, fresh)
        return fresh

    async def _wait_for_room(self, destination_id: str) -> None:
        """Wait while the destination's backlog is at the bound. The backlog is read from the
        store at most every `cache_seconds` / 4 (other replicas append too) and counted here in
        between, so a request costs no read."""
        deadline = time.monotonic() + self._max_wait.total_seconds()
        delay = 0.05
        while await self._backlog(destination_id) >= self._max_backlog:
            if time.monotonic() >= deadline:
                raise ResourceExhausted(
                    f"destination {destination_id!r} has {self._max_backlog} or more updates "
                    "waiting for Marketo; retry later",
                    retry_after=timedelta(seconds=5),
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            self._backlogs.discard(destination_id)  # read it again

    async def _backlog(self, destination_id: str) -> int:
        _, known = self._backlogs.lookup(destination_id)
        if known is None or time.monotonic() - known.read_at >= self._cache_seconds / 4:
            stats = await self._store.pending_stats(destination_id)
            known = _Backlog(stats.count, time.monotonic())
            self._backlogs.put(destination_id, known)
        return known.count
