"""The outbox: idempotent group-committed appends, due claims, atomic retire, fencing, leases."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from datetime import timedelta

import pytest

from service.domain import ActionType, AudienceMembership, MembershipStatus
from service.store import (
    AppendResult,
    DestinationNotFound,
    DestinationRecord,
    FencingError,
    Store,
    StoreError,
    Watermark,
)
from tests.store.conftest import (
    START,
    Backend,
    FakeClock,
    activated,
    excluded,
    new_destination,
    superseded,
    update,
)

INSTANCE = "123-ABC-456"


@pytest.fixture
async def destination(store: Store) -> DestinationRecord:
    return await store.create_destination(new_destination())


async def test_append_is_idempotent(store: Store, destination: DestinationRecord) -> None:
    first = await store.append(destination.id, INSTANCE, [update(1), update(2)], "00-trace-01")
    again = await store.append(destination.id, INSTANCE, [update(2), update(3), update(3)])

    assert first.accepted == 2
    assert first.duplicates == 0
    assert again.accepted == 1
    assert again.duplicates == 2  # u2 from before, and the second u3 of the same call
    assert again.last_sequence > first.last_sequence
    entries = await store.claim_due(INSTANCE, 10, START)
    assert [e.update.update_id for e in entries] == ["u1", "u2", "u3"]
    assert entries[0].update == update(1)
    assert entries[0].trace_context == "00-trace-01"
    assert entries[2].trace_context is None
    assert entries[0].enqueued_at == START
    assert (await store.pending_stats(destination.id)).count == 3
    assert (await store.dataflow(destination.id, now=START)).received == 3


async def test_delivered_update_is_still_a_duplicate(
    store: Store, destination: DestinationRecord
) -> None:
    await store.append(destination.id, INSTANCE, [update(1)])
    entries = await store.claim_due(INSTANCE, 10, START)
    await store.retire(entries, [activated(entries[0], ActionType.UPDATED)])

    result = await store.append(destination.id, INSTANCE, [update(1)])

    assert result == AppendResult(accepted=0, duplicates=1, last_sequence=0)
    assert await store.claim_due(INSTANCE, 10, START) == []


async def test_same_update_id_in_two_destinations_is_two_updates(store: Store) -> None:
    first = await store.create_destination(new_destination())
    second = await store.create_destination(new_destination(name="other"))

    assert (await store.append(first.id, INSTANCE, [update(1)])).accepted == 1
    assert (await store.append(second.id, INSTANCE, [update(1)])).accepted == 1


async def test_append_to_unknown_destination_fails_alone(
    store: Store, destination: DestinationRecord
) -> None:
    good, bad = await asyncio.gather(
        store.append(destination.id, INSTANCE, [update(1)]),
        store.append("dst_missing", INSTANCE, [update(2)]),
        return_exceptions=True,
    )

    assert isinstance(good, AppendResult)
    assert good.accepted == 1
    assert isinstance(bad, DestinationNotFound)


async def test_group_commit_coalesces_and_acks_after_commit(
    store: Store, backend: Backend, destination: DestinationRecord
) -> None:
    commits: list[str] = []
    lock = threading.Lock()

    def on_commit(name: str) -> None:
        with lock:
            commits.append(name)

    store.add_commit_listener(on_commit)
    streams = 40

    async def stream(n: int) -> None:
        updates = [update(n * 100 + i) for i in range(5)]
        result = await store.append(destination.id, INSTANCE, updates)
        assert result.accepted == 5
        # Acknowledged means durable: a fresh connection sees every row right now.
        committed = backend.committed_update_ids(destination.id)
        assert {u.update_id for u in updates} <= committed

    await asyncio.gather(*(stream(n) for n in range(streams)))

    append_commits = commits.count("append")
    assert 1 <= append_commits < streams
    assert (await store.pending_stats(destination.id)).count == streams * 5


async def test_claim_returns_due_rows_in_sequence_order(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    other = await store.create_destination(new_destination(name="other", instance_key="999"))
    await store.append(destination.id, INSTANCE, [update(n) for n in range(1, 6)])
    await store.append(other.id, "999-XYZ-000", [update(100)])
    entries = await store.claim_due(INSTANCE, 10, START)
    later = START + timedelta(minutes=5)
    await store.defer(entries[1:3], later, "606 throttled")

    due_now = await store.claim_due(INSTANCE, 10, START)
    assert [e.update.update_id for e in due_now] == ["u1", "u4", "u5"]
    assert [e.update.update_id for e in await store.claim_due(INSTANCE, 2, START)] == ["u1", "u4"]
    after = await store.claim_due(INSTANCE, 10, START, after_sequence=due_now[0].sequence)
    assert [e.update.update_id for e in after] == ["u4", "u5"]
    due_later = await store.claim_due(INSTANCE, 10, later)
    assert [e.update.update_id for e in due_later] == ["u1", "u2", "u3", "u4", "u5"]
    assert due_later[1].attempts == 1
    assert due_later[1].last_error == "606 throttled"
    assert due_later[1].not_before == later
    assert await store.instance_keys_with_due_work(START) == ["123-ABC-456", "999-XYZ-000"]

    await store.defer(due_later[1:2], later, "again", attempts=7)
    assert (await store.claim_due(INSTANCE, 10, later))[1].attempts == 7


async def test_instance_with_only_deferred_rows_has_no_due_work(
    store: Store, destination: DestinationRecord
) -> None:
    await store.append(destination.id, INSTANCE, [update(1)])
    await store.defer(await store.claim_due(INSTANCE, 10, START), START + timedelta(hours=1), "607")

    assert await store.instance_keys_with_due_work(START) == []
    assert await store.instance_keys_with_due_work(START + timedelta(hours=1)) == [INSTANCE]


async def test_retire_records_outcomes_watermarks_and_pending(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    await store.append(destination.id, INSTANCE, [update(1), update(2), update(3)])
    clock.advance(timedelta(minutes=2))
    entries = await store.claim_due(INSTANCE, 10, clock.now)

    await store.retire(
        entries[:2],
        [activated(entries[0], ActionType.CREATED, ActionType.ADDED), superseded(entries[1])],
        [Watermark(destination.id, "p1", entries[0].update.event_time)],
    )
    # A retried retire is harmless: nothing is counted twice.
    await store.retire(
        entries[:2],
        [activated(entries[0], ActionType.CREATED, ActionType.ADDED), superseded(entries[1])],
    )

    assert [e.update.update_id for e in await store.claim_due(INSTANCE, 10, clock.now)] == ["u3"]
    stats = await store.pending_stats(destination.id)
    assert stats.count == 1
    assert stats.oldest_enqueued_at == START
    assert await store.watermarks(destination.id, ["p1", "p2"]) == {
        "p1": entries[0].update.event_time
    }
    page = await store.list_outcomes(destination.id)
    assert [r.outcome.update_id for r in page.items] == ["u2", "u1"]
    assert page.items[1].event_time == entries[0].update.event_time
    assert page.items[1].recorded_at == clock.now
    flow = await store.dataflow(destination.id, now=clock.now)
    assert (flow.activated, flow.created, flow.added, flow.superseded) == (1, 1, 1, 1)


async def test_watermarks_only_move_forward(store: Store, destination: DestinationRecord) -> None:
    await store.append(destination.id, INSTANCE, [update(1), update(2)])
    first, second = await store.claim_due(INSTANCE, 10, START)
    newer = START + timedelta(minutes=1)

    await store.retire(
        [first], [activated(first, ActionType.UPDATED)], [Watermark(destination.id, "p", newer)]
    )
    await store.retire(
        [second], [activated(second, ActionType.UPDATED)], [Watermark(destination.id, "p", START)]
    )

    assert await store.watermarks(destination.id, ["p"]) == {"p": newer}


async def test_retire_is_all_or_nothing(store: Store, destination: DestinationRecord) -> None:
    await store.append(destination.id, INSTANCE, [update(1), update(2), update(3)])
    entries = await store.claim_due(INSTANCE, 10, START)
    before = await store.dataflow(destination.id, now=START)
    # The third pair claims u1 again under u3's sequence: its outbox delete succeeds, then its
    # outcome breaks the unique (destination, update id) of outcomes, mid-transaction.
    forged = dataclasses.replace(entries[0], sequence=entries[2].sequence)

    with pytest.raises(Exception):  # noqa: B017 - the engine's own integrity error
        await store.retire(
            [entries[0], entries[1], forged],
            [
                activated(entries[0], ActionType.UPDATED),
                excluded(entries[1], "consent"),
                activated(entries[0], ActionType.UPDATED),
            ],
            [Watermark(destination.id, "p1", START)],
        )

    assert await store.claim_due(INSTANCE, 10, START) == entries
    assert (await store.list_outcomes(destination.id)).items == ()
    assert await store.watermarks(destination.id, ["p1"]) == {}
    assert (await store.pending_stats(destination.id)).count == 3
    assert await store.dataflow(destination.id, now=START) == before


async def test_retire_after_the_destination_was_deleted(
    store: Store, destination: DestinationRecord
) -> None:
    kept = await store.create_destination(new_destination(name="kept"))
    await store.append(destination.id, INSTANCE, [update(1)])
    await store.append(kept.id, INSTANCE, [update(2)])
    entries = await store.claim_due(INSTANCE, 10, START)
    await store.delete_destination(destination.id, tenant="acme")

    await store.retire(
        entries,
        [activated(e, ActionType.UPDATED) for e in entries],
        [Watermark(e.destination_id, e.update.profile_id, START) for e in entries],
    )

    assert [r.outcome.update_id for r in (await store.list_outcomes(kept.id)).items] == ["u2"]
    assert await store.watermarks(kept.id, ["p2"]) == {"p2": START}
    assert (await store.pending_stats(kept.id)).count == 0


async def test_retire_needs_one_outcome_per_entry(
    store: Store, destination: DestinationRecord
) -> None:
    await store.append(destination.id, INSTANCE, [update(1), update(2)])
    entries = await store.claim_due(INSTANCE, 10, START)

    with pytest.raises(ValueError):
        await store.retire(entries, [activated(entries[0], ActionType.UPDATED)])
    with pytest.raises(ValueError):
        await store.retire(
            entries,
            [activated(entries[1], ActionType.UPDATED), activated(entries[0], ActionType.UPDATED)],
        )
    assert len(await store.claim_due(INSTANCE, 10, START)) == 2


async def test_stale_fencing_token_commits_nothing(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    ttl = timedelta(seconds=30)
    await store.append(destination.id, INSTANCE, [update(1)])
    entries = await store.claim_due(INSTANCE, 10, START)
    old = await store.acquire_lease(INSTANCE, "replica-a", ttl)
    assert old is not None
    clock.advance(ttl + timedelta(seconds=1))
    new = await store.acquire_lease(INSTANCE, "replica-b", ttl)
    assert new is not None
    assert new.generation == old.generation + 1

    with pytest.raises(FencingError):
        await store.retire(
            entries, [activated(entries[0], ActionType.UPDATED)], fencing=old.generation
        )
    with pytest.raises(FencingError):
        await store.defer(entries, START + timedelta(hours=1), "x", fencing=old.generation)

    assert await store.claim_due(INSTANCE, 10, clock.now) == entries
    assert (await store.list_outcomes(destination.id)).items == ()
    await store.retire(entries, [activated(entries[0], ActionType.UPDATED)], fencing=new.generation)
    assert await store.claim_due(INSTANCE, 10, clock.now) == []


async def test_fencing_without_any_lease_is_refused(
    store: Store, destination: DestinationRecord
) -> None:
    await store.append(destination.id, INSTANCE, [update(1)])
    entries = await store.claim_due(INSTANCE, 10, START)

    with pytest.raises(FencingError):
        await store.retire(entries, [activated(entries[0], ActionType.UPDATED)], fencing=1)


async def test_leases(store: Store, clock: FakeClock) -> None:
    ttl = timedelta(seconds=30)
    lease = await store.acquire_lease(INSTANCE, "a", ttl)
    assert lease is not None
    assert lease.generation == 1
    assert lease.expires_at == START + ttl

    assert await store.acquire_lease(INSTANCE, "b", ttl) is None
    again = await store.acquire_lease(INSTANCE, "a", ttl)
    assert again is not None
    assert again.generation == 1  # still ours: same tenure
    clock.advance(timedelta(seconds=20))
    renewed = await store.renew_lease(lease, ttl)
    assert renewed is not None
    assert renewed.expires_at == clock.now + ttl
    clock.advance(timedelta(seconds=20))
    assert await store.acquire_lease(INSTANCE, "b", ttl) is None  # renewal kept it

    await store.release_lease(renewed)
    taken = await store.acquire_lease(INSTANCE, "b", ttl)
    assert taken is not None
    assert taken.generation == 2
    assert await store.renew_lease(renewed, ttl) is None  # "a" lost it


async def test_memberships_and_profile_round_trip(
    store: Store, destination: DestinationRecord
) -> None:
    original = update(1, audiences=())
    original = type(original)(
        update_id="u-unicode",
        profile_id="p-ü",
        event_time=START,
        profile={"person": {"name": {"firstName": "Zoë"}}, "n": 1.5, "flag": True, "x": None},
        memberships=(
            AudienceMembership("aud-1", MembershipStatus.EXITED),
            AudienceMembership("aud-2", MembershipStatus.EXISTING),
        ),
    )
    await store.append(destination.id, INSTANCE, [original])

    [entry] = await store.claim_due(INSTANCE, 10, START)

    assert entry.update == original


async def test_close_commits_what_is_queued(
    store: Store, backend: Backend, destination: DestinationRecord
) -> None:
    appends = [
        asyncio.ensure_future(store.append(destination.id, INSTANCE, [update(n)])) for n in range(5)
    ]
    await asyncio.sleep(0)  # the appends are queued

    await store.close()

    assert [a.result().accepted for a in appends] == [1] * 5
    assert backend.committed_update_ids(destination.id) == {f"u{n}" for n in range(5)}
    with pytest.raises(StoreError):
        await store.append(destination.id, INSTANCE, [update(9)])
