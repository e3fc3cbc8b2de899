"""`in_order` overlaps the work of a stream's items and still answers in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import pytest

from service.api.streams import in_order


async def test_results_come_in_order_while_work_overlaps() -> None:
    started: list[int] = []
    release = asyncio.Event()

    async def work(index: int) -> int:
        started.append(index)
        await release.wait()
        return index

    async def works() -> AsyncIterator[Awaitable[int]]:
        for index in range(5):
            yield work(index)
        release.set()

    results = [r async for r in in_order(works(), depth=8)]
    assert results == [0, 1, 2, 3, 4]
    assert started == [0, 1, 2, 3, 4]


async def test_at_most_depth_works_run_at_once() -> None:
    running = 0
    peak = 0

    async def work(index: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1
        return index

    async def works() -> AsyncIterator[Awaitable[int]]:
        for index in range(20):
            yield work(index)

    assert [r async for r in in_order(works(), depth=3)] == list(range(20))
    assert peak <= 3


async def test_a_failure_is_raised_in_order_and_the_rest_is_cancelled() -> None:
    cancelled: list[int] = []

    async def work(index: int) -> int:
        if index == 1:
            raise ValueError("bad")
        try:
            await asyncio.sleep(10 if index > 1 else 0)
        except asyncio.CancelledError:
            cancelled.append(index)
            raise
        return index

    async def works() -> AsyncIterator[Awaitable[int]]:
        for index in range(4):
            yield work(index)

    seen: list[int] = []
    with pytest.raises(ValueError, match="bad"):
        async for result in in_order(works(), depth=8):
            seen.append(result)
    await asyncio.sleep(0)
    assert seen == [0]
    assert sorted(cancelled) == [2, 3]


async def test_a_client_waiting_for_each_answer_is_answered() -> None:
    answered = asyncio.Event()

    async def work(index: int) -> int:
        return index

    async def works() -> AsyncIterator[Awaitable[int]]:
        yield work(0)
        await asyncio.wait_for(answered.wait(), timeout=5)  # lockstep: the answer comes first
        yield work(1)

    results = []
    async for result in in_order(works(), depth=8):
        results.append(result)
        answered.set()
    assert results == [0, 1]


async def test_a_failing_source_is_raised_after_the_answers_before_it() -> None:
    async def work(index: int) -> int:
        return index

    async def works() -> AsyncIterator[Awaitable[int]]:
        yield work(0)
        raise ConnectionError("client went away")

    seen = []
    with pytest.raises(ConnectionError):
        async for result in in_order(works(), depth=8):
            seen.append(result)
    assert seen == [0]
