"""The store's part of Resync and ForgetProfile, on every backend: resync sources kept at retire,
resync work queued behind live entries, and the tombstone of a forgotten profile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from service.domain import (
    Action,
    ActionType,
    ExclusionCode,
    MembershipMark,
    MembershipStatus,
    Outcome,
    OutcomeKind,
    ProfileState,
    ProfileUpdate,
    UnappliedAttributes,
)
from service.store.base import (
    DestinationRecord,
    MembershipHolder,
    MembershipWatermark,
    OutboxEntry,
    ProfileStateRow,
    UnappliedRow,
    Watermark,
)
from service.store.sql import Store
from tests.store.conftest import (
    INSTANCE,
    START,
    activated,
    append,
    claimed,
    excluded,
    unpack,
    update,
)


def resync_update(n: int) -> ProfileUpdate:
    source = update(n)
    return ProfileUpdate(
        update_id=f"resync:1:p{n}",
        profile_id=source.profile_id,
        event_time=source.event_time,
        profile=source.profile,
    )


async def retire_with_state(
    store: Store, destination_id: str, entries: Sequence[OutboxEntry], now: datetime | None = None
) -> None:
    """Retire the entries as activated (lead 7 created and added to aud-1) with the state that
    folds in: each profile's watermark, its desired membership of aud-1 held by lead 7 and its
    applied state (dedupe value `<profile id>@example.com`, bound to lead 7)."""
    mark = MembershipMark(MembershipStatus.REALIZED, START)
    profile_ids = [e.update.profile_id for e in entries]
    await store.retire(
        entries,
        [activated(e, ActionType.CREATED, ActionType.ADDED) for e in entries],
        [Watermark(destination_id, e.update.profile_id, e.update.event_time) for e in entries],
        membership_marks=[
            MembershipWatermark(destination_id, pid, "aud-1", mark) for pid in profile_ids
        ],
        holders=[MembershipHolder(destination_id, pid, "aud-1", 7) for pid in profile_ids],
        profiles=[
            ProfileStateRow(destination_id, pid, ProfileState(f"{pid}@example.com", 7, "d"))
            for pid in profile_ids
        ],
        now=now,
    )


async def test_retire_keeps_the_latest_applied_update_of_each_profile(
    store: Store, destination: DestinationRecord
) -> None:
    entries = await claimed(store, destination.id, INSTANCE, [1, 2, 3])
    one, two, three = entries
    await store.retire(
        entries,
        [activated(one), excluded(two, "no dedupe value"), activated(three)],
        # p3's watermark is newer than the update: its attributes were not the ones applied
        [
            Watermark(destination.id, "p1", one.update.event_time),
            Watermark(destination.id, "p2", two.update.event_time),
            Watermark(destination.id, "p3", three.update.event_time + timedelta(hours=1)),
        ],
    )

    sources = await store.resync_sources(destination.id)

    assert [(s.profile_id, s.event_time, s.profile) for s in sources] == [
        ("p1", one.update.event_time, one.update.profile)
    ]
    assert await store.resync_sources(destination.id, ["p2", "p1"]) == sources
    assert await store.resync_sources(destination.id, ["p2"]) == []


async def test_resync_work_is_claimed_after_live_entries(
    store: Store, destination: DestinationRecord
) -> None:
    queued = await store.queue_resync(
        destination.id, INSTANCE, [resync_update(1), resync_update(2)], START
    )
    again = await store.queue_resync(destination.id, INSTANCE, [resync_update(1)], START)
    await append(store, destination.id, INSTANCE, [update(3), update(4)])
    # the resync work due does not keep live updates in the inbox
    await unpack(store, INSTANCE, limit=2)

    entries = await store.claim_due(INSTANCE, 10, START)

    assert (queued, again) == (2, 0)
    assert [(e.update.update_id, e.resync) for e in entries] == [
        ("u3", False),
        ("u4", False),
        ("resync:1:p1", True),
        ("resync:1:p2", True),
    ]
    assert entries[2].update.memberships == ()
    assert entries[2].update.profile == update(1).profile
    assert (await store.pending_stats(destination.id)).count == 4
    flow = await store.dataflow(destination.id, now=START)
    assert (flow.received, flow.pending) == (4, 4)


async def test_forget_profile_records_the_tombstone_and_drops_the_state(
    store: Store, destination: DestinationRecord
) -> None:
    entries = await claimed(store, destination.id, INSTANCE, [1, 2])
    await retire_with_state(store, destination.id, entries)
    outcome = Outcome(
        update_id="forget:1",
        profile_id="p1",
        dedupe_value=None,
        kind=OutcomeKind.EXCLUDED,
        actions=(Action(ActionType.REMOVED, "aud-1"),),
        lead_id=7,
        reason="profile forgotten: removed from 1 list",
        exclusion_code=ExclusionCode.FORGOTTEN,
    )

    await store.forget_profile(destination.id, "p1", outcome, START + timedelta(hours=1))

    assert await store.forgotten(destination.id, ["p1", "p2", "p9"]) == {"p1"}
    state = await store.desired_state(destination.id, ["p1", "p2"])
    assert state.forgotten == {"p1"}
    assert set(state.marks) == set(state.holders) == {("p2", "aud-1")}
    assert set(state.profiles) == {"p2"}
    assert [s.profile_id for s in await store.resync_sources(destination.id)] == ["p2"]
    page = await store.list_outcomes(destination.id, profile_id="p1")
    newest = page.items[0]
    assert newest.outcome == outcome
    assert newest.recorded_at == START + timedelta(hours=1)
    assert len(page.items) == 2


async def test_resync_sources_past_the_retention_are_purged_oldest_first(
    store: Store, destination: DestinationRecord
) -> None:
    """A resync source holds a profile's personal data: it goes once it was recorded longer
    ago than the retention, like the outcomes; a newer delivery of the profile renews it."""
    entries = await claimed(store, destination.id, INSTANCE, [1, 2, 3])

    async def deliver(entry: OutboxEntry, event_time: datetime, now: datetime) -> None:
        moved = replace(entry, update=replace(entry.update, event_time=event_time))
        await store.retire(
            [moved],
            [activated(moved)],
            [Watermark(destination.id, moved.update.profile_id, event_time)],
            now=now,
        )

    one, two, three = entries
    await deliver(one, START, START)
    await deliver(two, START, START + timedelta(days=1))
    await deliver(three, START, START + timedelta(days=2))
    # p1 is delivered again later: its source is recorded anew
    (again,) = await claimed(store, destination.id, INSTANCE, [4])
    again = replace(again, update=replace(again.update, profile_id="p1"))
    await deliver(again, START + timedelta(hours=1), START + timedelta(days=3))

    cut = START + timedelta(days=2, hours=12)
    assert await store.purge_resync_sources(cut, 1) == 1
    assert [s.profile_id for s in await store.resync_sources(destination.id)] == ["p1", "p3"]
    assert await store.purge_resync_sources(cut, 10) == 1
    assert await store.purge_resync_sources(cut, 10) == 0
    assert [s.profile_id for s in await store.resync_sources(destination.id)] == ["p1"]


async def test_a_batch_claimed_before_a_forget_and_retired_after_it_writes_no_state_back(
    store: Store, destination: DestinationRecord
) -> None:
    """ForgetProfile runs while a batch of the profile is in flight: the retire that follows
    stores the batch's outcomes without personal data and none of the profile's state (desired
    memberships, holders, applied state, resync source); the other profiles' state is kept."""
    entries = await claimed(store, destination.id, INSTANCE, [1, 2])
    forget = Outcome(
        update_id="forget:1",
        profile_id="p1",
        dedupe_value=None,
        kind=OutcomeKind.EXCLUDED,
        reason="profile forgotten: nothing removed",
        exclusion_code=ExclusionCode.FORGOTTEN,
    )
    await store.forget_profile(destination.id, "p1", forget, START)

    await retire_with_state(store, destination.id, entries, START + timedelta(minutes=1))

    state = await store.desired_state(destination.id, ["p1", "p2"])
    assert state.forgotten == {"p1"}
    assert set(state.marks) == set(state.holders) == {("p2", "aud-1")}
    assert set(state.profiles) == {"p2"}
    assert [s.profile_id for s in await store.resync_sources(destination.id)] == ["p2"]
    (retired, tombstone) = (await store.list_outcomes(destination.id, profile_id="p1")).items
    assert tombstone.outcome == forget
    # what Marketo confirmed is still told, without the profile's dedupe value
    assert retired.outcome == replace(
        activated(entries[0], ActionType.CREATED, ActionType.ADDED), dedupe_value=None
    )
    assert await store.list_outcomes(destination.id, dedupe_value="p1@example.com") == (
        await store.list_outcomes(destination.id, dedupe_value="nobody@example.com")
    )
    (kept,) = (await store.list_outcomes(destination.id, profile_id="p2")).items
    assert kept.outcome.dedupe_value == "p2@example.com"
    assert (await store.pending_stats(destination.id)).count == 0
    assert await store.claim_due(INSTANCE, 10, START + timedelta(hours=1)) == []


async def test_unapplied_attributes_are_kept_until_an_activated_outcome_reaches_them(
    store: Store, destination: DestinationRecord
) -> None:
    """The newest attributes of a profile in no audience: read with the desired state, never
    resynced; an activated outcome whose watermark reaches them (an older update wrote them)
    makes them applied."""
    first, second = await claimed(store, destination.id, INSTANCE, [1, 2])
    newest = UnappliedAttributes(START + timedelta(hours=1), {"person": {"name": "newest"}})
    await store.retire(
        [first],
        [excluded(first, "no membership of an activated audience")],
        [Watermark(destination.id, "p1", newest.event_time)],
        unapplied=[UnappliedRow(destination.id, "p1", newest)],
    )
    older = UnappliedAttributes(START, {"person": {"name": "older"}})
    await store.retire([], [], unapplied=[UnappliedRow(destination.id, "p1", older)])

    state = await store.desired_state(destination.id, ["p1"])
    assert state.unapplied == {"p1": newest}, "an older one does not replace it"
    assert state.watermarks == {"p1": newest.event_time}
    assert await store.resync_sources(destination.id) == []

    # an older update of p1 exported the profile with the newest attributes
    lagging = replace(second, update=replace(second.update, profile_id="p1"))
    await store.retire(
        [lagging],
        [activated(lagging, ActionType.CREATED)],
        [Watermark(destination.id, "p1", newest.event_time)],
    )

    assert (await store.desired_state(destination.id, ["p1"])).unapplied == {}
    (source,) = await store.resync_sources(destination.id)
    assert (source.event_time, source.profile) == (newest.event_time, newest.profile)
