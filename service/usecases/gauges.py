"""The figures behind the telemetry's gauges: each destination's backlog and each Marketo
instance's daily quota, read on the event loop and kept for the metric exporters.

Gauges are observed on the exporters' threads (the OTLP reader's, the Prometheus endpoint's),
where neither the store nor the Marketo limits may be touched; :class:`GaugeFigures` reads them
on the event loop every ``interval`` seconds and hands over the last reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from service.marketo.clock import Clock, SystemClock
from service.store.sql import Store
from service.telemetry.core import QueueSample, QuotaSample, Telemetry
from service.usecases.connections import MarketoConnections

__all__ = ["DEFAULT_INTERVAL", "GaugeFigures"]

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0
"""Seconds between two readings of the gauges' figures."""


class GaugeFigures:
    """Reads the backlog of every destination and the quota of every Marketo instance, and
    feeds them to ``telemetry``'s ``marketo_destination.outbox.*`` and
    ``marketo.daily_quota.*`` gauges."""

    def __init__(
        self,
        store: Store,
        connections: MarketoConnections,
        telemetry: Telemetry,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._connections = connections
        self._interval = interval
        self._clock: Clock = clock or SystemClock()
        self._queues: tuple[QueueSample, ...] = ()
        self._quotas: tuple[QuotaSample, ...] = ()
        self._task: asyncio.Task[None] | None = None
        telemetry.observe_queue(lambda: self._queues)
        telemetry.observe_quota(lambda: self._quotas)

    async def refresh(self) -> None:
        """Reads the figures now."""
        now = self._clock.now()
        backlogs = await self._store.backlogs()
        self._queues = tuple(
            QueueSample(
                instance=b.instance_key,
                depth=b.pending.count,
                oldest_age_seconds=(
                    max(0.0, now - b.pending.oldest_enqueued_at.timestamp())
                    if b.pending.oldest_enqueued_at is not None
                    else 0.0
                ),
                destination_id=b.destination_id,
            )
            for b in backlogs
        )
        self._quotas = tuple(self._connections.quota_samples())

    async def start(self) -> None:
        """Reads the figures now, then every ``interval`` seconds until :meth:`stop`."""
        if self._task is None:
            await self._refresh_logged()
            self._task = asyncio.create_task(self._run(), name="gauge figures")

    async def stop(self) -> None:
        """Stops the readings (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._refresh_logged()

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except Exception:  # the next reading may go through; the gauges keep the last one
            log.exception("reading the gauges' figures failed")
