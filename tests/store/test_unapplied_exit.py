"""The store's part of an exit's attributes, on every backend: an update that left its only
audience is activated (its removal went out) yet wrote no attributes; they are kept unapplied."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from service.domain import ActionType, UnappliedAttributes
from service.store.base import DestinationRecord, UnappliedRow, Watermark
from service.store.sql import Store
from tests.store.conftest import INSTANCE, activated, claimed


async def test_an_activated_exit_keeps_its_attributes_unapplied(
    store: Store, destination: DestinationRecord
) -> None:
    first, second = await claimed(store, destination.id, INSTANCE, [1, 2])
    await store.retire(
        [first],
        [activated(first, ActionType.CREATED, ActionType.ADDED)],
        [Watermark(destination.id, "p1", first.update.event_time)],
    )
    (source,) = await store.resync_sources(destination.id)
    assert source.event_time == first.update.event_time

    later = first.update.event_time + timedelta(hours=1)
    exit_ = replace(second, update=replace(second.update, profile_id="p1", event_time=later))
    newest = UnappliedAttributes(later, exit_.update.profile)
    await store.retire(
        [exit_],
        [activated(exit_, ActionType.REMOVED)],
        [Watermark(destination.id, "p1", later)],
        unapplied=[UnappliedRow(destination.id, "p1", newest)],
    )

    state = await store.desired_state(destination.id, ["p1"])
    assert state.unapplied == {"p1": newest}, "not applied by the activated exit"
    assert state.watermarks == {"p1": later}
    assert await store.resync_sources(destination.id) == [], "nothing of it applied to resync"
