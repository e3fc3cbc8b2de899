"""Pipelining for streaming RPCs: start each item's work as it arrives, answer in order."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

T = TypeVar("T")


async def in_order(works: AsyncIterator[Awaitable[T]], depth: int) -> AsyncIterator[T]:
    """Run up to `depth` works at once; yield their results in the order they came.

    A stream whose client sends its next request before the previous answer arrives gets its
    requests committed together (group commit) instead of one commit round-trip each. The first
    failure is raised in order; the works still running are cancelled.
    """
    running: deque[asyncio.Future[T]] = deque()
    try:
        async for work in works:
            running.append(asyncio.ensure_future(work))
            while len(running) >= depth or (running and running[0].done()):
                yield await running.popleft()
        while running:
            yield await running.popleft()
    finally:
        for future in running:
            future.cancel()
