"""`Dispatcher.exclusive`: other work (reconciliation) takes an instance's delivery turn
between two batches, under the instance's lease."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from service.delivery.dispatcher import InstanceBusy
from tests.dispatch.conftest import Env, settle


async def test_the_turn_waits_for_the_batch_in_flight_and_holds_the_next(env: Env) -> None:
    dispatcher = env.dispatcher()
    key = env.instance_key
    events: list[str] = []
    in_flight = asyncio.Event()
    finish = asyncio.Event()

    async def batch() -> None:
        async with dispatcher._turn(key):  # what a drainer holds around a batch
            events.append("batch starts")
            in_flight.set()
            await finish.wait()
            events.append("batch ends")

    async def exclusive_work() -> None:
        async with dispatcher.exclusive(key):
            events.append("exclusive")

    first = asyncio.create_task(batch())
    await in_flight.wait()
    work = asyncio.create_task(exclusive_work())
    await settle()
    assert events == ["batch starts"], "the exclusive work waits for the batch in flight"
    in_flight.clear()
    second = asyncio.create_task(batch())  # the drainer's next batch queues behind it
    finish.set()
    await asyncio.gather(first, work, second)
    assert events == ["batch starts", "batch ends", "exclusive", "batch starts", "batch ends"]


async def test_the_turn_takes_the_lease_and_gives_it_back(env: Env) -> None:
    dispatcher = env.dispatcher()
    async with dispatcher.exclusive(env.instance_key):
        other = await env.store.acquire_lease(
            env.instance_key, "replica-2", timedelta(seconds=30), now=env.clock.datetime()
        )
        assert other is None, "this replica holds the lease during the turn"
    taken = await env.store.acquire_lease(
        env.instance_key, "replica-2", timedelta(seconds=30), now=env.clock.datetime()
    )
    assert taken is not None, "released after the turn"

    with pytest.raises(InstanceBusy):
        async with dispatcher.exclusive(env.instance_key):
            pass
