"""The outbox: group-committed appends to the inbox, idempotent unpacking into the outbox, due
claims, atomic retire, fencing, leases."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest

from service.api import inbox_codec
from service.domain import (
    UNDECODABLE,
    ActionType,
    AudienceMembership,
    DecodedBatch,
    DesiredState,
    MembershipMark,
    MembershipStatus,
    OutcomeKind,
    ProfileState,
    ProfileUpdate,
)
from service.store.base import (
    AppendResult,
    DestinationNotFound,
    DestinationRecord,
    FencingError,
    Lease,
    MembershipHolder,
    MembershipWatermark,
    OutboxEntry,
    ProfileStateRow,
    StoreError,
    Watermark,
)
from service.store.sql import Store
from tests.harness import damaged
from tests.store.conftest import (
    INSTANCE,
    START,
    Backend,
    FakeClock,
    activated,
    append,
    claimed,
    excluded,
    new_destination,
    superseded,
    unpack,
    update,
)

REALIZED = MembershipStatus.REALIZED
EXITED = MembershipStatus.EXITED


def ids(entries: Sequence[OutboxEntry]) -> list[str]:
    return [e.update.update_id for e in entries]


# -- append: one inbox batch per call ----------------------------------------------------------


async def test_append_stores_the_batch_as_given(
    store: Store, backend: Backend, destination: DestinationRecord
) -> None:
    body = inbox_codec.encode_updates([update(1), update(2), update(2)])

    first = await store.append(destination.id, INSTANCE, body, 3, "00-trace-01")
    second = await append(store, destination.id, INSTANCE, [update(3)])

    assert first.count == 3
    assert second == AppendResult(count=1, sequence=second.sequence)
    assert second.sequence > first.sequence
    # One row per call with the body byte for byte: ingest neither converts nor deduplicates.
    assert backend.inbox(destination.id) == [
        (first.sequence, 3, body),
        (second.sequence, 1, inbox_codec.encode_updates([update(3)])),
    ]
    assert backend.outbox_update_ids(destination.id) == set()
    assert await store.claim_due(INSTANCE, 10, START) == []  # not unpacked yet
    stats = await store.pending_stats(destination.id)
    assert (stats.count, stats.oldest_enqueued_at) == (4, START)
    flow = await store.dataflow(destination.id, now=START)
    assert (flow.received, flow.pending, flow.duplicates) == (4, 4, 0)


async def test_backlogs_cover_every_tenant_inbox_and_outbox(store: Store) -> None:
    first = await store.create_destination(new_destination())
    other = await store.create_destination(new_destination(tenant="other", instance_key="999-X"))
    idle = await store.create_destination(new_destination(name="idle"))
    await append(store, first.id, INSTANCE, [update(1), update(2)])
    await unpack(store, INSTANCE)
    await append(store, first.id, INSTANCE, [update(3)])  # still in the inbox
    await append(store, other.id, "999-X", [update(4)])

    found = {b.destination_id: b for b in await store.backlogs()}

    assert set(found) == {first.id, other.id, idle.id}
    assert (found[first.id].instance_key, found[first.id].pending.count) == (INSTANCE, 3)
    assert found[first.id].pending == await store.pending_stats(first.id)
    assert (found[other.id].instance_key, found[other.id].pending.count) == ("999-X", 1)
    assert found[other.id].pending.oldest_enqueued_at is not None
    assert (found[idle.id].pending.count, found[idle.id].pending.oldest_enqueued_at) == (0, None)


async def test_append_to_unknown_destination_fails_alone(
    store: Store, backend: Backend, destination: DestinationRecord
) -> None:
    # Queued together, so one group commit holds all three.
    first, bad, last = await asyncio.gather(
        append(store, destination.id, INSTANCE, [update(1)]),
        append(store, "dst_missing", INSTANCE, [update(2)]),
        append(store, destination.id, INSTANCE, [update(3)]),
        return_exceptions=True,
    )

    assert isinstance(first, AppendResult)
    assert isinstance(last, AppendResult)
    assert (first.count, last.count) == (1, 1)
    assert isinstance(bad, DestinationNotFound)
    # Each good caller got the id of its own batch.
    assert backend.committed_batches(destination.id) == [first.sequence, last.sequence]
    assert backend.committed_batches("dst_missing") == []
    assert await unpack(store, INSTANCE) == 2
    assert ids(await store.claim_due(INSTANCE, 10, START)) == ["u1", "u3"]


async def test_a_large_group_with_an_unknown_destination_stores_the_rest(
    store: Store, backend: Backend, destination: DestinationRecord
) -> None:
    """More batches than one INSERT takes, queued at once (one group), one of them refused."""
    body = inbox_codec.encode_updates([update(1)])
    futures = [store.append(destination.id, INSTANCE, body, 1) for _ in range(700)]
    futures.insert(350, store.append("dst_missing", INSTANCE, body, 1))

    results = await asyncio.gather(*futures, return_exceptions=True)

    assert isinstance(results.pop(350), DestinationNotFound)
    assert all(isinstance(r, AppendResult) for r in results)
    sequences = [r.sequence for r in results if isinstance(r, AppendResult)]
    assert backend.committed_batches(destination.id) == sorted(sequences) == sequences
    assert backend.committed_batches("dst_missing") == []


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

    async def stream(n: int) -> tuple[int, list[str]]:
        updates = [update(n * 100 + i) for i in range(5)]
        result = await append(store, destination.id, INSTANCE, updates)
        assert result.count == 5
        # Acknowledged means durable: a fresh connection sees the batch right now.
        assert result.sequence in backend.committed_batches(destination.id)
        assert {u.update_id for u in updates} <= backend.committed_update_ids(destination.id)
        return result.sequence, [u.update_id for u in updates]

    acks = await asyncio.gather(*(stream(n) for n in range(streams)))

    append_commits = commits.count("append")
    assert 1 <= append_commits < streams
    assert len({sequence for sequence, _ in acks}) == streams
    assert (await store.pending_stats(destination.id)).count == streams * 5
    # Unpacked, the batches keep their commit order, and each its own order inside.
    assert await unpack(store, INSTANCE) == streams * 5
    in_order = [update_id for _, batch in sorted(acks) for update_id in batch]
    assert ids(await store.claim_due(INSTANCE, 1000, START)) == in_order


async def test_close_commits_what_is_queued(
    store: Store, backend: Backend, destination: DestinationRecord
) -> None:
    appends = [
        asyncio.ensure_future(append(store, destination.id, INSTANCE, [update(n)]))
        for n in range(5)
    ]
    await asyncio.sleep(0)  # the appends are queued

    await store.close()

    assert [a.result().count for a in appends] == [1] * 5
    assert backend.committed_batches(destination.id) == sorted(a.result().sequence for a in appends)
    assert backend.committed_update_ids(destination.id) == {f"u{n}" for n in range(5)}
    with pytest.raises(StoreError):
        await append(store, destination.id, INSTANCE, [update(9)])


# -- unpack: inbox batches into outbox entries ---------------------------------------------------


async def test_unpack_drops_updates_already_queued(
    store: Store, backend: Backend, destination: DestinationRecord
) -> None:
    await append(store, destination.id, INSTANCE, [update(1), update(2)], "00-trace-01")
    assert await unpack(store, INSTANCE) == 2
    # A retried request: u2 is already an entry, and u3 comes twice in the same batch.
    again = await append(store, destination.id, INSTANCE, [update(2), update(3), update(3)])
    assert again.count == 3
    assert (await store.pending_stats(destination.id)).count == 5  # counted as received

    assert await unpack(store, INSTANCE) == 1

    entries = await store.claim_due(INSTANCE, 10, START)
    assert ids(entries) == ["u1", "u2", "u3"]
    assert entries[0].update == update(1)
    assert entries[1].trace_context == "00-trace-01"  # the first u2 was kept
    assert entries[2].trace_context is None
    assert backend.committed_batches(destination.id) == []
    assert (await store.pending_stats(destination.id)).count == 3
    flow = await store.dataflow(destination.id, now=START)
    assert (flow.received, flow.duplicates, flow.pending) == (5, 2, 3)


async def test_duplicates_across_batches_of_one_unpack(
    store: Store, destination: DestinationRecord
) -> None:
    await append(store, destination.id, INSTANCE, [update(1)], "00-first")
    await append(store, destination.id, INSTANCE, [update(1), update(2)], "00-retry")

    assert await unpack(store, INSTANCE) == 2

    entries = await store.claim_due(INSTANCE, 10, START)
    assert ids(entries) == ["u1", "u2"]
    assert [e.trace_context for e in entries] == ["00-first", "00-retry"]
    flow = await store.dataflow(destination.id, now=START)
    assert (flow.received, flow.duplicates, flow.pending) == (3, 1, 2)


async def test_delivered_update_is_still_a_duplicate(
    store: Store, destination: DestinationRecord
) -> None:
    await append(store, destination.id, INSTANCE, [update(1)])
    await unpack(store, INSTANCE)
    entries = await store.claim_due(INSTANCE, 10, START)
    await store.retire(entries, [activated(entries[0], ActionType.UPDATED)])
    assert (await store.pending_stats(destination.id)).count == 0

    result = await append(store, destination.id, INSTANCE, [update(1), update(2)])

    assert result.count == 2
    assert (await store.pending_stats(destination.id)).count == 2
    assert await unpack(store, INSTANCE) == 1
    assert ids(await store.claim_due(INSTANCE, 10, START)) == ["u2"]
    assert (await store.pending_stats(destination.id)).count == 1
    flow = await store.dataflow(destination.id, now=START)
    assert (flow.received, flow.activated, flow.duplicates) == (3, 1, 1)


async def test_same_update_id_in_two_destinations_is_two_updates(store: Store) -> None:
    first = await store.create_destination(new_destination())
    second = await store.create_destination(new_destination(name="other"))
    await append(store, first.id, INSTANCE, [update(1)])
    await append(store, second.id, INSTANCE, [update(1)])

    assert await unpack(store, INSTANCE) == 2

    entries = await store.claim_due(INSTANCE, 10, START)
    assert [(e.destination_id, e.update.update_id) for e in entries] == [
        (first.id, "u1"),
        (second.id, "u1"),
    ]
    assert (await store.dataflow(first.id, now=START)).duplicates == 0
    assert (await store.dataflow(second.id, now=START)).duplicates == 0


async def test_entries_keep_the_trace_context_and_time_of_their_batch(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    await append(store, destination.id, INSTANCE, [update(1), update(2)], "00-trace-a")
    clock.advance(timedelta(minutes=1))
    await append(store, destination.id, INSTANCE, [update(3)])
    clock.advance(timedelta(hours=1))

    assert await unpack(store, INSTANCE) == 3  # an hour later

    entries = await store.claim_due(INSTANCE, 10, clock.now)
    assert ids(entries) == ["u1", "u2", "u3"]
    later = START + timedelta(minutes=1)
    assert [e.enqueued_at for e in entries] == [START, START, later]
    assert [e.not_before for e in entries] == [START, START, later]
    assert [e.trace_context for e in entries] == ["00-trace-a", "00-trace-a", None]
    assert [(e.attempts, e.last_error) for e in entries] == [(0, "")] * 3
    assert [e.destination_id for e in entries] == [destination.id] * 3
    assert [e.instance_key for e in entries] == [INSTANCE] * 3
    # Due from their batch's time on, not from the unpacking.
    assert ids(await store.claim_due(INSTANCE, 10, START)) == ["u1", "u2"]
    assert (await store.pending_stats(destination.id)).oldest_enqueued_at == START


async def test_an_update_that_does_not_decode_fails_and_the_queue_goes_on(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    body = damaged(inbox_codec.encode_updates([update(1), update(2), update(3)]), broken=1)
    await store.append(destination.id, INSTANCE, body, 3)
    await append(store, destination.id, INSTANCE, [update(4)])

    assert await unpack(store, INSTANCE) == 3

    assert ids(await store.claim_due(INSTANCE, 10, START)) == ["u1", "u3", "u4"]
    outcomes = (await store.list_outcomes(destination.id, profile_id="p2")).items
    assert [(o.outcome.update_id, o.outcome.kind) for o in outcomes] == [("u2", OutcomeKind.FAILED)]
    assert outcomes[0].outcome.marketo_code == UNDECODABLE
    assert "could not be decoded" in outcomes[0].outcome.reason
    assert outcomes[0].event_time == update(2).event_time
    flow = await store.dataflow(destination.id, now=clock.now)
    assert (flow.received, flow.failed, flow.pending) == (4, {UNDECODABLE: 1}, 3)


async def test_a_batch_that_does_not_decode_at_all_fails_whole_and_the_queue_goes_on(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    await store.append(destination.id, INSTANCE, b"\xff\xff not a batch", 5)
    await append(store, destination.id, INSTANCE, [update(1)])

    assert await unpack(store, INSTANCE) == 1

    assert ids(await store.claim_due(INSTANCE, 10, START)) == ["u1"]
    assert (await store.list_outcomes(destination.id)).items == ()  # none could be told apart
    flow = await store.dataflow(destination.id, now=clock.now)
    assert (flow.received, flow.failed, flow.pending) == (6, {UNDECODABLE: 5}, 1)


async def test_unpack_stops_after_the_batch_that_reaches_the_limit(
    store: Store, backend: Backend, destination: DestinationRecord
) -> None:
    batches = [
        await append(store, destination.id, INSTANCE, [update(n), update(n + 1)]) for n in (1, 3, 5)
    ]

    # 2 entries are fewer than 3, so the second batch is unpacked too; then 4 are enough.
    assert await unpack(store, INSTANCE, limit=3) == 4
    assert backend.committed_batches(destination.id) == [batches[2].sequence]
    assert ids(await store.claim_due(INSTANCE, 10, START)) == ["u1", "u2", "u3", "u4"]
    assert await unpack(store, INSTANCE, limit=3) == 0  # 4 due entries already
    assert await unpack(store, INSTANCE, limit=4) == 0
    assert backend.committed_batches(destination.id) == [batches[2].sequence]

    assert await unpack(store, INSTANCE, limit=5) == 2

    entries = await store.claim_due(INSTANCE, 10, START)
    assert ids(entries) == ["u1", "u2", "u3", "u4", "u5", "u6"]
    assert [e.sequence for e in entries] == sorted(e.sequence for e in entries)
    assert backend.committed_batches(destination.id) == []
    assert await unpack(store, INSTANCE, limit=100) == 0  # nothing left
    assert (await store.pending_stats(destination.id)).count == 6


async def test_unpack_counts_only_due_entries_toward_the_limit(
    store: Store, destination: DestinationRecord
) -> None:
    await append(store, destination.id, INSTANCE, [update(1), update(2)])
    await append(store, destination.id, INSTANCE, [update(3)])
    assert await unpack(store, INSTANCE, limit=2) == 2
    later = START + timedelta(minutes=5)
    await store.defer(await store.claim_due(INSTANCE, 10, START), later, "606 throttled")

    assert await unpack(store, INSTANCE, limit=2, now=START) == 1  # the deferred two wait

    assert ids(await store.claim_due(INSTANCE, 10, START)) == ["u3"]
    assert ids(await store.claim_due(INSTANCE, 10, later)) == ["u1", "u2", "u3"]


async def test_a_batch_of_duplicates_does_not_fill_the_limit(
    store: Store, backend: Backend, destination: DestinationRecord
) -> None:
    await append(store, destination.id, INSTANCE, [update(1)])
    await append(store, destination.id, INSTANCE, [update(1)])
    await append(store, destination.id, INSTANCE, [update(2)])
    last = await append(store, destination.id, INSTANCE, [update(3)])

    assert await unpack(store, INSTANCE, limit=2) == 2

    assert ids(await store.claim_due(INSTANCE, 10, START)) == ["u1", "u2"]
    assert backend.committed_batches(destination.id) == [last.sequence]
    flow = await store.dataflow(destination.id, now=START)
    assert (flow.received, flow.duplicates, flow.pending) == (4, 1, 3)


async def test_unpack_decodes_outside_any_transaction(
    store: Store, backend: Backend, destination: DestinationRecord
) -> None:
    """Batches are read, decoded with no transaction open, then written: decoding never holds
    the write lock (SQLite) or an open transaction (PostgreSQL)."""
    await append(store, destination.id, INSTANCE, [update(1), update(2)])
    await append(store, destination.id, INSTANCE, [update(3)])
    during: list[bool] = []

    def decode(body: bytes) -> DecodedBatch:
        during.append(backend.in_transaction())
        return inbox_codec.decode_batch(body)

    assert await store.unpack(INSTANCE, decode, 10, now=START) == 3
    assert during == [False, False]
    assert not backend.in_transaction()
    assert ids(await store.claim_due(INSTANCE, 10, START)) == ["u1", "u2", "u3"]


async def test_unpack_commits_every_step_even_through_a_flood_of_duplicates(
    store: Store, backend: Backend, destination: DestinationRecord
) -> None:
    """Re-sent updates count toward a transaction's size: a long run of them is taken from the
    inbox in several commits, and the fresh update behind them is still reached."""
    commits: list[str] = []
    store.add_commit_listener(commits.append)
    await append(store, destination.id, INSTANCE, [update(1), update(2)])
    for _ in range(5):
        await append(store, destination.id, INSTANCE, [update(1), update(2)])
    await append(store, destination.id, INSTANCE, [update(3)])

    stored = await store.unpack(INSTANCE, inbox_codec.decode_batch, 3, step=4, now=START)

    assert stored == 3
    assert ids(await store.claim_due(INSTANCE, 10, START)) == ["u1", "u2", "u3"]
    assert backend.committed_batches(destination.id) == []
    # 13 updates taken, about 4 per transaction: batches are whole, so 2 + 2 per commit.
    assert commits.count("unpack") == 4
    flow = await store.dataflow(destination.id, now=START)
    assert (flow.received, flow.duplicates, flow.pending) == (13, 10, 3)


async def test_unpack_takes_only_its_own_instance(
    store: Store, backend: Backend, destination: DestinationRecord
) -> None:
    other = await store.create_destination(new_destination(name="other", instance_key="999"))
    kept = await append(store, other.id, "999-XYZ-000", [update(9)])

    assert await unpack(store, "no-such-instance") == 0
    assert await unpack(store, INSTANCE) == 0

    assert backend.committed_batches(other.id) == [kept.sequence]
    assert await store.claim_due(INSTANCE, 10, START) == []
    assert await unpack(store, "999-XYZ-000") == 1
    assert ids(await store.claim_due("999-XYZ-000", 10, START)) == ["u9"]


async def taken_over(store: Store, clock: FakeClock) -> tuple[Lease, Lease]:
    """Replica a's lease of INSTANCE, then replica b's after a's expired: (a's, b's)."""
    ttl = timedelta(seconds=30)
    old = await store.acquire_lease(INSTANCE, "replica-a", ttl)
    assert old is not None
    clock.advance(ttl + timedelta(seconds=1))
    new = await store.acquire_lease(INSTANCE, "replica-b", ttl)
    assert new is not None
    assert new.generation == old.generation + 1
    return old, new


async def test_unpack_with_a_stale_fencing_token_unpacks_nothing(
    store: Store, backend: Backend, destination: DestinationRecord, clock: FakeClock
) -> None:
    batch = await append(store, destination.id, INSTANCE, [update(1), update(2)])
    old, new = await taken_over(store, clock)

    with pytest.raises(FencingError):
        await unpack(store, INSTANCE, fencing=old.generation)

    assert backend.committed_batches(destination.id) == [batch.sequence]
    assert await store.claim_due(INSTANCE, 10, clock.now) == []
    assert (await store.pending_stats(destination.id)).count == 2
    assert await unpack(store, INSTANCE, fencing=new.generation) == 2
    assert ids(await store.claim_due(INSTANCE, 10, clock.now)) == ["u1", "u2"]


async def test_instance_with_only_inbox_batches_has_due_work(
    store: Store, destination: DestinationRecord
) -> None:
    other = await store.create_destination(new_destination(name="other", instance_key="999"))
    await append(store, other.id, "999-XYZ-000", [update(9)])
    await unpack(store, "999-XYZ-000")
    await store.defer(
        await store.claim_due("999-XYZ-000", 10, START), START + timedelta(hours=1), "607"
    )
    assert await store.instance_keys_with_due_work(START) == []

    await append(store, destination.id, INSTANCE, [update(1)])

    assert await store.instance_keys_with_due_work(START) == [INSTANCE]
    await unpack(store, INSTANCE)
    assert await store.instance_keys_with_due_work(START) == [INSTANCE]  # now as an entry


async def test_oldest_pending_comes_from_the_inbox_when_the_outbox_is_empty(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    assert (await store.pending_stats(destination.id)).oldest_enqueued_at is None
    await append(store, destination.id, INSTANCE, [update(1)])
    clock.advance(timedelta(minutes=5))
    await append(store, destination.id, INSTANCE, [update(2)])
    clock.advance(timedelta(minutes=5))

    stats = await store.pending_stats(destination.id)
    assert (stats.count, stats.oldest_enqueued_at) == (2, START)
    assert await unpack(store, INSTANCE, limit=1) == 1
    assert (await store.pending_stats(destination.id)).oldest_enqueued_at == START
    entries = await store.claim_due(INSTANCE, 10, clock.now)
    await store.retire(entries, [activated(e, ActionType.UPDATED) for e in entries])

    stats = await store.pending_stats(destination.id)
    assert (stats.count, stats.oldest_enqueued_at) == (1, START + timedelta(minutes=5))
    flow = await store.dataflow(destination.id, now=clock.now)
    assert flow.oldest_pending_age == timedelta(minutes=5)


# -- draining the outbox ------------------------------------------------------------------------


async def test_claim_returns_due_rows_in_sequence_order(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    other = await store.create_destination(new_destination(name="other", instance_key="999"))
    await append(store, destination.id, INSTANCE, [update(n) for n in range(1, 6)])
    await append(store, other.id, "999-XYZ-000", [update(100)])
    await unpack(store, INSTANCE)
    await unpack(store, "999-XYZ-000")
    entries = await store.claim_due(INSTANCE, 10, START)
    later = START + timedelta(minutes=5)
    await store.defer(entries[1:3], later, "606 throttled")

    due_now = await store.claim_due(INSTANCE, 10, START)
    assert ids(due_now) == ["u1", "u4", "u5"]
    assert ids(await store.claim_due(INSTANCE, 2, START)) == ["u1", "u4"]
    after = await store.claim_due(INSTANCE, 10, START, after_sequence=due_now[0].sequence)
    assert ids(after) == ["u4", "u5"]
    due_later = await store.claim_due(INSTANCE, 10, later)
    assert ids(due_later) == ["u1", "u2", "u3", "u4", "u5"]
    assert due_later[1].attempts == 1
    assert due_later[1].last_error == "606 throttled"
    assert due_later[1].not_before == later
    assert await store.instance_keys_with_due_work(START) == ["123-ABC-456", "999-XYZ-000"]

    await store.defer(due_later[1:2], later, "again", attempts=7)
    assert (await store.claim_due(INSTANCE, 10, later))[1].attempts == 7


def large(n: int, characters: int = 10_000) -> ProfileUpdate:
    """An update whose profile holds a string of `characters` (each one UTF-8 byte)."""
    return dataclasses.replace(update(n), profile={"person": {"notes": "n" * characters}})


async def test_a_claim_stops_once_its_payloads_reach_max_bytes(
    store: Store, destination: DestinationRecord
) -> None:
    await append(store, destination.id, INSTANCE, [large(n) for n in range(1, 9)])
    await unpack(store, INSTANCE)

    # Each payload is a little over 10,000 bytes: the fourth starts below 35,000 bytes taken.
    first = await store.claim_due(INSTANCE, 100, START, max_bytes=35_000)
    assert ids(first) == ["u1", "u2", "u3", "u4"]
    assert all(10_000 < entry.payload_bytes < 11_000 for entry in first)
    assert first[0].update.profile == {"person": {"notes": "n" * 10_000}}
    # The rest stays due, for the next claim; the count still bounds a claim too.
    after = first[-1].sequence
    rest = await store.claim_due(INSTANCE, 3, START, after_sequence=after, max_bytes=35_000)
    assert ids(rest) == ["u5", "u6", "u7"]
    assert ids(await store.claim_due(INSTANCE, 100, START, max_bytes=10**9)) == [
        f"u{n}" for n in range(1, 9)
    ]


async def test_a_claim_holds_its_first_entry_whatever_its_size(
    store: Store, destination: DestinationRecord
) -> None:
    await append(store, destination.id, INSTANCE, [large(1, 50_000), large(2, 10)])
    await unpack(store, INSTANCE)

    assert ids(await store.claim_due(INSTANCE, 10, START, max_bytes=1_000)) == ["u1"]


async def test_a_claim_counts_bytes_not_characters(
    store: Store, destination: DestinationRecord
) -> None:
    wide = [  # 3,000 characters of 3 bytes each in UTF-8 (9,000 bytes)
        dataclasses.replace(update(n), profile={"person": {"notes": "\u20ac" * 3_000}})
        for n in range(1, 4)
    ]
    await append(store, destination.id, INSTANCE, wide)
    await unpack(store, INSTANCE)

    # Counted in characters the third would start below 9,500; in bytes the second ends above.
    claimed = await store.claim_due(INSTANCE, 10, START, max_bytes=9_500)
    assert ids(claimed) == ["u1", "u2"]
    assert claimed[0].payload_bytes > 9_000


async def test_instance_with_only_deferred_rows_has_no_due_work(
    store: Store, destination: DestinationRecord
) -> None:
    await append(store, destination.id, INSTANCE, [update(1)])
    await unpack(store, INSTANCE)
    await store.defer(await store.claim_due(INSTANCE, 10, START), START + timedelta(hours=1), "607")

    assert await store.instance_keys_with_due_work(START) == []
    assert await store.instance_keys_with_due_work(START + timedelta(hours=1)) == [INSTANCE]


async def test_retire_records_outcomes_watermarks_and_pending(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    await append(store, destination.id, INSTANCE, [update(1), update(2), update(3)])
    clock.advance(timedelta(minutes=2))
    await unpack(store, INSTANCE)
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

    assert ids(await store.claim_due(INSTANCE, 10, clock.now)) == ["u3"]
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
    first, second = await claimed(store, destination.id, INSTANCE, [1, 2])
    newer = START + timedelta(minutes=1)

    await store.retire(
        [first], [activated(first, ActionType.UPDATED)], [Watermark(destination.id, "p", newer)]
    )
    await store.retire(
        [second], [activated(second, ActionType.UPDATED)], [Watermark(destination.id, "p", START)]
    )

    assert await store.watermarks(destination.id, ["p"]) == {"p": newer}


async def test_membership_marks_move_forward_per_audience_apart_from_watermarks(
    store: Store, destination: DestinationRecord
) -> None:
    first, second = await claimed(store, destination.id, INSTANCE, [1, 2])
    newer = START + timedelta(minutes=1)
    older = START - timedelta(minutes=1)
    joined = MembershipMark(MembershipStatus.REALIZED, newer)

    await store.retire(
        [first],
        [activated(first, ActionType.ADDED)],
        [Watermark(destination.id, "p", START)],
        membership_marks=[
            MembershipWatermark(destination.id, "p", "a1", joined),
            MembershipWatermark(destination.id, "p", "a2", MembershipMark(EXITED, START)),
        ],
    )
    await store.retire(
        [second],
        [activated(second, ActionType.REMOVED)],
        membership_marks=[
            MembershipWatermark(destination.id, "p", "a1", MembershipMark(EXITED, older)),
            MembershipWatermark(destination.id, "p", "a2", MembershipMark(REALIZED, START)),
        ],
    )

    assert await store.membership_marks(destination.id, ["p", "other"]) == {
        ("p", "a1"): joined,
        ("p", "a2"): MembershipMark(REALIZED, START),
    }
    assert await store.watermarks(destination.id, ["p"]) == {"p": START}


async def test_retire_is_all_or_nothing(store: Store, destination: DestinationRecord) -> None:
    await append(store, destination.id, INSTANCE, [update(1), update(2), update(3)])
    await unpack(store, INSTANCE)
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
    await append(store, destination.id, INSTANCE, [update(1)])
    await append(store, kept.id, INSTANCE, [update(2)])
    await unpack(store, INSTANCE)
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
    await append(store, destination.id, INSTANCE, [update(1), update(2)])
    await unpack(store, INSTANCE)
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
    await append(store, destination.id, INSTANCE, [update(1)])
    await unpack(store, INSTANCE)
    entries = await store.claim_due(INSTANCE, 10, START)
    old, new = await taken_over(store, clock)

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


async def test_state_retired_without_entries_is_fenced_by_its_destinations_instance(
    store: Store, destination: DestinationRecord, clock: FakeClock
) -> None:
    """A batch stopped part-way records the list changes Marketo confirmed while every entry
    waits: a retire with state and no entries is fenced like one with entries."""
    old, new = await taken_over(store, clock)
    mark = MembershipWatermark(destination.id, "p1", "aud-1", MembershipMark(REALIZED, START))
    held = MembershipHolder(destination.id, "p1", "aud-1", 7)

    with pytest.raises(FencingError):
        await store.retire([], [], membership_marks=[mark], holders=[held], fencing=old.generation)
    assert (await store.desired_state(destination.id, ["p1"])).marks == {}

    await store.retire([], [], membership_marks=[mark], holders=[held], fencing=new.generation)
    state = await store.desired_state(destination.id, ["p1"])
    assert state.marks == {("p1", "aud-1"): MembershipMark(REALIZED, START)}
    assert state.holders == {("p1", "aud-1"): 7}


async def test_fencing_without_any_lease_is_refused(
    store: Store, backend: Backend, destination: DestinationRecord
) -> None:
    await append(store, destination.id, INSTANCE, [update(1)])
    await unpack(store, INSTANCE)
    entries = await store.claim_due(INSTANCE, 10, START)
    batch = await append(store, destination.id, INSTANCE, [update(2)])

    with pytest.raises(FencingError):
        await store.retire(entries, [activated(entries[0], ActionType.UPDATED)], fencing=1)
    with pytest.raises(FencingError):
        await unpack(store, INSTANCE, fencing=1)
    assert backend.committed_batches(destination.id) == [batch.sequence]


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
    original = dataclasses.replace(
        update(1, audiences=()),
        update_id="u-unicode",
        profile_id="p-ü",
        event_time=START.replace(microsecond=123_456),
        profile={
            "person": {"name": {"firstName": "Zoë"}},
            "n": 1.5,
            "count": 3,
            "tags": ["a", 2, {"deep": [True]}],
            "flag": True,
            "x": None,
        },
        memberships=(
            AudienceMembership("aud-1", MembershipStatus.EXITED),
            AudienceMembership("aud-2", MembershipStatus.EXISTING),
        ),
    )
    await append(store, destination.id, INSTANCE, [original])
    await unpack(store, INSTANCE)

    [entry] = await store.claim_due(INSTANCE, 10, START)

    assert entry.update == original
    assert isinstance(entry.update.profile["count"], int)  # integral numbers come back as int
    assert isinstance(entry.update.profile["n"], float)


async def test_release_deferred_makes_one_destinations_entries_due_keeping_attempts(
    store: Store, destination: DestinationRecord
) -> None:
    other = await store.create_destination(new_destination(name="other"))
    await append(store, destination.id, INSTANCE, [update(n) for n in range(1, 4)])
    await append(store, other.id, INSTANCE, [update(100)])
    await unpack(store, INSTANCE)
    later = START + timedelta(hours=1)
    await store.defer(await store.claim_due(INSTANCE, 10, START), later, "held", attempts=2)

    assert await store.release_deferred(destination.id, now=START) == 3
    due = await store.claim_due(INSTANCE, 10, START)
    assert ids(due) == ["u1", "u2", "u3"]
    assert {entry.attempts for entry in due} == {2}
    assert await store.release_deferred(destination.id, now=START) == 0


async def test_desired_state_folds_in_desired_statuses_holders_and_profile_states(
    store: Store, destination: DestinationRecord
) -> None:
    first, second = await claimed(store, destination.id, INSTANCE, [1, 2])
    bound = ProfileState("Ann@x.io", 7, "d1", consent_refused=False)

    await store.retire(
        [first],
        [activated(first, ActionType.ADDED)],
        [Watermark(destination.id, "p", START)],
        membership_marks=[
            MembershipWatermark(destination.id, "p", "a1", MembershipMark(REALIZED, START)),
            MembershipWatermark(destination.id, "p", "a2", MembershipMark(REALIZED, START)),
        ],
        holders=[
            MembershipHolder(destination.id, "p", "a1", 7),
            MembershipHolder(destination.id, "p", "a2", 7),
        ],
        profiles=[ProfileStateRow(destination.id, "p", bound)],
    )
    assert await store.desired_state(destination.id, ["p", "other"]) == DesiredState(
        watermarks={"p": START},
        marks={
            ("p", "a1"): MembershipMark(REALIZED, START),
            ("p", "a2"): MembershipMark(REALIZED, START),
        },
        holders={("p", "a1"): 7, ("p", "a2"): 7},
        profiles={"p": bound},
    )

    # consent refused: a2 left (holder cleared), the desired statuses stay; an older exit of a1
    # does not replace its newer desired status, while its holder moves to the new lead
    refused = ProfileState("Ann@x.io", 7, "d1", consent_refused=True)
    await store.retire(
        [second],
        [activated(second, ActionType.REMOVED)],
        membership_marks=[
            MembershipWatermark(destination.id, "p", "a1", MembershipMark(EXITED, older(START))),
        ],
        holders=[
            MembershipHolder(destination.id, "p", "a1", 8),
            MembershipHolder(destination.id, "p", "a2", None),
        ],
        profiles=[ProfileStateRow(destination.id, "p", refused)],
    )
    state = await store.desired_state(destination.id, ["p"])
    assert state.marks == {
        ("p", "a1"): MembershipMark(REALIZED, START),
        ("p", "a2"): MembershipMark(REALIZED, START),
    }
    assert state.holders == {("p", "a1"): 8}
    assert state.profiles == {"p": refused}


def older(moment: datetime) -> datetime:
    return moment - timedelta(minutes=1)


async def test_desired_state_of_a_destination_deleted_in_flight_is_dropped(
    store: Store, destination: DestinationRecord
) -> None:
    (entry,) = await claimed(store, destination.id, INSTANCE, [1])
    await store.delete_destination(destination.id, tenant="acme")
    await store.retire(
        [entry],
        [activated(entry, ActionType.ADDED)],
        membership_marks=[
            MembershipWatermark(destination.id, "p", "a1", MembershipMark(REALIZED, START))
        ],
        holders=[MembershipHolder(destination.id, "p", "a1", 7)],
        profiles=[ProfileStateRow(destination.id, "p", ProfileState("a@x.io", 7, "d"))],
    )
    assert await store.desired_state(destination.id, ["p"]) == DesiredState()
