"""Outcome retention: outcomes older than the retention period are deleted in the background.

Every delivered update leaves one outcome (what `ListProfileOutcomes` answers); kept for ever,
they would grow the store for as long as the service runs. `OutcomeRetention` deletes those
recorded before now minus the retention, and the resync sources (each profile's latest applied
profile, personal data kept for Resync) recorded before that too, when the service starts and
then every `interval`, a chunk at a time: each chunk is a short write transaction of its own,
so appends never wait long behind it. Every replica may run it (deleting is idempotent). The
dataflow's hourly counts and each profile's watermark are kept: an update re-sent after its
outcome is gone is still recognised as superseded when a newer one was delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from service.marketo.clock import Clock, SystemClock
from service.store.sql import Store

log = logging.getLogger(__name__)


class OutcomeRetention:
    """Deletes outcomes and resync sources older than `retention`, on start and every
    `interval` seconds."""

    def __init__(
        self,
        store: Store,
        retention: timedelta,
        *,
        clock: Clock | None = None,
        interval: float = 300.0,
        chunk: int = 1_000,
        pause: float = 0.01,
    ) -> None:
        """`chunk`: outcomes deleted per transaction; `pause` (s): the wait between two chunks,
        which leaves the store's writer to other work."""
        if retention <= timedelta(0):
            raise ValueError("the retention must be positive")
        self._store = store
        self._retention = retention
        self._clock: Clock = clock or SystemClock()
        self._interval = interval
        self._chunk = chunk
        self._pause = pause
        self._task: asyncio.Task[None] | None = None

    async def purge(self) -> int:
        """Delete every outcome and resync source recorded before now minus the retention; how
        many outcomes went."""
        before = datetime.fromtimestamp(self._clock.now(), UTC) - self._retention
        deleted = await self._purge(self._store.purge_outcomes, before)
        if deleted:
            log.info("deleted %d outcomes recorded before %s", deleted, before.isoformat())
        sources = await self._purge(self._store.purge_resync_sources, before)
        if sources:
            log.info("deleted %d resync sources recorded before %s", sources, before.isoformat())
        return deleted

    async def _purge(
        self, purge: Callable[[datetime, int], Awaitable[int]], before: datetime
    ) -> int:
        """Call `purge` a chunk at a time, pausing after each chunk, until nothing is left."""
        deleted = 0
        while purged := await purge(before, self._chunk):
            deleted += purged
            await self._clock.sleep(self._pause)
        return deleted

    async def start(self) -> None:
        """Purge now and then every `interval` (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outcome retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.purge()
            except Exception:
                log.exception("deleting old outcomes failed; trying again later")
            await self._clock.sleep(self._interval)
