"""Pipelining for streaming RPCs: start each item's work as it arrives, answer in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

T = TypeVar("T")


async def in_order(works: AsyncIterator[Awaitable[T]], depth: int) -> AsyncIterator[T]:
    """Run up to `depth` works at once; yield each result, in arrival order, as soon as it is
    ready (not when the next work arrives: a client may wait for an answer before sending more).

    A stream whose client sends its next request before the previous answer arrives gets its
    requests committed together (group commit) instead of one commit round-trip each. The first
    failure, of a work or of the source, is raised in order; the works still running are
    cancelled.
    """
    queue: asyncio.Queue[asyncio.Future[T] | None] = asyncio.Queue()
    slots = asyncio.Semaphore(depth)

    async def take() -> None:
        try:
            async for work in works:
                await slots.acquire()
                queue.put_nowait(asyncio.ensure_future(work))
        finally:
            queue.put_nowait(None)

    taker = asyncio.create_task(take())
    try:
        # `take` always ends the queue with None, whether the source ran out or failed.
        while (future := await queue.get()) is not None:
            result = await future
            slots.release()
            yield result
        await taker  # the source's own failure, if any
    finally:
        taker.cancel()
        while not queue.empty():
            pending = queue.get_nowait()
            if pending is not None:
                pending.cancel()
