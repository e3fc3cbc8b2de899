"""KeyedLocks: one holder per key, no deadlock on overlapping key sets, nothing left behind."""

from __future__ import annotations

import asyncio

from service.delivery.engine import KeyedLocks


async def test_overlapping_key_sets_in_any_order_do_not_deadlock() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def batch(name: str, keys: list[str]) -> None:
        async with locks.hold(keys):
            order.append(f"{name}+")
            await asyncio.sleep(0)
            order.append(f"{name}-")

    await asyncio.wait_for(
        asyncio.gather(batch("x", ["a", "b"]), batch("y", ["b", "a"]), batch("z", ["c"])),
        timeout=5,
    )
    # x and y share keys: one runs entirely before the other
    xy = [step for step in order if step[0] in "xy"]
    assert xy in (["x+", "x-", "y+", "y-"], ["y+", "y-", "x+", "x-"])
    assert len(locks) == 0


async def test_a_held_key_blocks_a_second_holder_until_released() -> None:
    locks = KeyedLocks()
    async with locks.hold(["k"]):
        assert locks.locked("k")
        waiter = asyncio.create_task(_enter(locks))
        await asyncio.sleep(0)
        assert not waiter.done()
    await asyncio.wait_for(waiter, timeout=5)
    assert len(locks) == 0


async def _enter(locks: KeyedLocks) -> None:
    async with locks.hold(["k"]):
        pass
