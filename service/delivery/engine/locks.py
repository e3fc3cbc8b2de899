"""A lock per key, so that at most one write per dedupe value is in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable, Iterable
from contextlib import asynccontextmanager


class KeyedLocks:
    """Asyncio locks created on demand per key and dropped when nobody holds or waits for them.

    Share one instance between every batch of a destination (or of a Marketo instance): batches
    that touch the same dedupe value then run their resolve-then-write one after the other.
    """

    def __init__(self) -> None:
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._users: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def locked(self, key: Hashable) -> bool:
        lock = self._locks.get(key)
        return lock is not None and lock.locked()

    async def _acquire(self, key: Hashable) -> None:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        self._users[key] = self._users.get(key, 0) + 1
        try:
            await lock.acquire()
        except BaseException:
            self._release_user(key)
            raise

    def _release_user(self, key: Hashable) -> None:
        users = self._users[key] - 1
        if users:
            self._users[key] = users
        else:
            del self._users[key]
            del self._locks[key]

    def _release(self, key: Hashable) -> None:
        self._locks[key].release()
        self._release_user(key)

    @asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Hold the locks of every key; keys are taken in sorted order so batches never deadlock."""
        held: list[str] = []
        try:
            for key in sorted(set(keys)):
                await self._acquire(key)
                held.append(key)
            yield
        finally:
            for key in reversed(held):
                self._release(key)
