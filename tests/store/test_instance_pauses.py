"""A Marketo instance's quota pause is kept in the store: it outlives the process."""

from __future__ import annotations

from datetime import timedelta

from service.store.sql import Store
from tests.store.conftest import START, Backend, FakeClock

INSTANCE = "123-abc-456.mktorest.com"


async def test_a_pause_survives_reopening_the_store(
    store: Store, backend: Backend, clock: FakeClock
) -> None:
    until = START + timedelta(hours=5)
    assert await store.instance_paused_until(INSTANCE) is None
    await store.pause_instance(INSTANCE, until)
    await store.close()

    reopened = await backend.open(clock)
    try:
        assert await reopened.instance_paused_until(INSTANCE) == until
        assert await reopened.instance_paused_until("other.mktorest.com") is None
        assert await reopened.instance_paused_until(INSTANCE, now=until) is None
        clock.advance(timedelta(hours=5, seconds=1))
        assert await reopened.instance_paused_until(INSTANCE) is None
    finally:
        await reopened.close()


async def test_the_later_pause_is_kept(store: Store) -> None:
    later = START + timedelta(hours=5)
    await store.pause_instance(INSTANCE, later)
    await store.pause_instance(INSTANCE, START + timedelta(hours=1))
    assert await store.instance_paused_until(INSTANCE) == later
    latest = START + timedelta(days=1)
    await store.pause_instance(INSTANCE, latest)
    assert await store.instance_paused_until(INSTANCE) == latest
