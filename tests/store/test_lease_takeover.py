"""A lease says whether it was taken after the previous tenure expired (and when that was), so
the new holder can wait until the previous holder's last Marketo call has ended."""

from __future__ import annotations

from datetime import timedelta

from service.store.sql import Store
from tests.store.conftest import INSTANCE, START, FakeClock

TTL = timedelta(seconds=30)


async def test_a_lease_taken_after_an_expiry_names_that_expiry(
    store: Store, clock: FakeClock
) -> None:
    first = await store.acquire_lease(INSTANCE, "replica-a", TTL)
    assert first is not None and first.previous_expiry is None  # never held before
    clock.advance(TTL + timedelta(seconds=4))
    taken = await store.acquire_lease(INSTANCE, "replica-b", TTL)
    assert taken is not None and taken.holder == "replica-b"
    assert taken.previous_expiry == START + TTL


async def test_a_lease_taken_after_a_release_has_no_previous_expiry(
    store: Store, clock: FakeClock
) -> None:
    first = await store.acquire_lease(INSTANCE, "replica-a", TTL)
    assert first is not None
    await store.release_lease(first)
    taken = await store.acquire_lease(INSTANCE, "replica-b", TTL)
    assert taken is not None and taken.holder == "replica-b"
    assert taken.previous_expiry is None
