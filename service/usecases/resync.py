"""Resync: write a destination's desired state again, whatever Marketo is believed to hold.

Each profile gets one resync update: the profile of its latest delivered update whose attributes
were applied (`Store.resync_sources`), at that update's event time, with no membership of its
own (its desired memberships are the stored ones). The updates are queued behind the live ones
(`Store.queue_resync`); the dispatcher plans them with what is applied taken as unknown
(`DesiredState.for_resync`), so the attributes are written and every desired membership is
added again. Forgotten profiles have no source: they are never resynced.

The estimate comes from the planner the dispatcher runs (`SyncEngine.plan`, then
`SyncEngine.estimate_calls`), batch by batch as the dispatcher claims them. A dry run queues
nothing and writes nothing to Marketo.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from service.api.access import current_principal
from service.domain import FieldViolation, ProfileUpdate, ResyncEstimate
from service.errors import InvalidArgument
from service.marketo.errors import MarketoError
from service.store.base import ResyncSource
from service.store.sql import Store
from service.usecases.connections import MarketoConnections
from service.usecases.destinations import marketo_failure
from service.usecases.preview import EngineSource

MAX_RESYNC_PROFILES = 10_000
"""Profiles one Resync request may name (an empty list means every profile)."""

RESYNC_UPDATE_PREFIX = "resync:"
"""Update ids of resync updates start with this, then the request's time and the profile id."""


class Resync:
    """The Resync use case."""

    def __init__(
        self,
        store: Store,
        engines: EngineSource,
        connections: MarketoConnections,
        *,
        batch_size: int,
        notify: Callable[[str, str | None], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`batch_size`: entries the dispatcher claims at once (the estimate plans batches of
        that size); `notify(instance_key, destination_id)` wakes the dispatcher."""
        self._store = store
        self._engines = engines
        self._connections = connections
        self._batch_size = max(1, batch_size)
        self._notify = notify
        self._clock = clock

    async def resync(
        self, destination_id: str, profile_ids: Sequence[str], *, dry_run: bool
    ) -> ResyncEstimate:
        """Queue (unless `dry_run`) one resync update per profile and estimate its cost."""
        _check_profile_ids(profile_ids)
        record = await self._store.get_destination(
            destination_id, tenant=current_principal().tenant
        )
        sources = await self._store.resync_sources(destination_id, list(profile_ids) or None)
        now = self._clock()
        updates = [_resync_update(source, now) for source in sources]
        try:
            engine = await self._engines.engine_for(record)
        except MarketoError as error:
            raise marketo_failure(error, "reading the instance's lead schema") from None
        calls = 0
        for start in range(0, len(updates), self._batch_size):
            batch = updates[start : start + self._batch_size]
            ids = [u.profile_id for u in batch]
            state = await self._store.desired_state(destination_id, ids)
            # Planning maps every profile of the batch: a worker thread takes it, as delivery's
            # does, so a Resync of every profile holds neither the event loop nor other calls.
            plan = await asyncio.to_thread(engine.plan, batch, state=state.for_resync(ids))
            calls += engine.estimate_calls(plan)
        if updates and not dry_run:
            await self._store.queue_resync(destination_id, record.instance_key, updates)
            self._notify(record.instance_key, destination_id)
        connection = record.spec.connection
        remaining = self._connections.calls_today(connection).remaining
        return ResyncEstimate(
            profiles=len(updates),
            calls=calls,
            seconds=calls / self._connections.calls_per_second(connection),
            share_of_daily_quota=calls / remaining if remaining else float(calls > 0),
        )

    async def add_members(self, destination_id: str, audience_ids: Sequence[str]) -> int:
        """Queue a resync of the current desired members of audiences whose list Activate just
        created or linked (the destination kept no list for them before, or another one), so
        that delivery adds them; returns how many profiles were queued."""
        members = sorted(
            {
                member.profile_id
                for audience_id in audience_ids
                for member in await self._store.desired_members(destination_id, audience_id)
            }
        )
        queued = 0
        for start in range(0, len(members), MAX_RESYNC_PROFILES):
            chunk = members[start : start + MAX_RESYNC_PROFILES]
            queued += (await self.resync(destination_id, chunk, dry_run=False)).profiles
        return queued


def _check_profile_ids(profile_ids: Sequence[str]) -> None:
    if len(profile_ids) > MAX_RESYNC_PROFILES:
        raise InvalidArgument(
            [
                FieldViolation(
                    "profile_ids",
                    f"at most {MAX_RESYNC_PROFILES} profiles per request; "
                    "send none to resync every profile",
                )
            ]
        )
    violations = [
        FieldViolation(f"profile_ids[{index}]", "must not be empty")
        for index, profile_id in enumerate(profile_ids)
        if not profile_id.strip()
    ]
    if violations:
        raise InvalidArgument(violations)


def _resync_update(source: ResyncSource, now: datetime) -> ProfileUpdate:
    stamp = int(now.timestamp() * 1_000_000)
    return ProfileUpdate(
        update_id=f"{RESYNC_UPDATE_PREFIX}{stamp}:{source.profile_id}",
        profile_id=source.profile_id,
        event_time=source.event_time,
        profile=source.profile,
    )
