"""Replica heartbeats and the fair share of instance leases (both stores)."""

from __future__ import annotations

from datetime import timedelta

from service.store.sql import Store
from tests.store.conftest import FakeClock, append, new_destination, unpack, update

TTL = timedelta(seconds=30)


async def test_fair_share_divides_busy_instances_by_live_replicas(
    store: Store, clock: FakeClock
) -> None:
    assert await store.fair_share("a") == 1  # nothing to do: still one

    destination = await store.create_destination(new_destination())
    for n in range(5):
        await append(store, destination.id, f"i{n}", [update(n)])
    assert await store.fair_share("a") == 5  # alone: everything (batches in the inbox count)
    for n in range(3):
        assert await unpack(store, f"i{n}") == 1
    assert await store.fair_share("a") == 5  # three busy with entries, two with batches

    await store.heartbeat_replica("a", TTL)
    await store.heartbeat_replica("b", TTL)
    assert await store.fair_share("a") == 3  # ceil(5 / 2)
    await store.heartbeat_replica("c", TTL)
    assert await store.fair_share("c") == 2  # ceil(5 / 3)

    clock.advance(timedelta(seconds=20))
    await store.heartbeat_replica("a", TTL)
    clock.advance(timedelta(seconds=11))  # b and c have not been heard of for 31 s
    assert await store.fair_share("a") == 5


async def test_a_live_lease_counts_as_a_busy_instance(store: Store, clock: FakeClock) -> None:
    for n in range(4):
        assert await store.acquire_lease(f"i{n}", "a", TTL) is not None
    await store.heartbeat_replica("b", TTL)

    assert await store.fair_share("b") == 2  # ceil(4 leased instances / 2 replicas)
    clock.advance(TTL)
    assert await store.fair_share("b") == 1  # the leases lapsed (and so did "b": just itself)
