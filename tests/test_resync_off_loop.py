"""Resync plans its estimate (mapping every profile) off the event loop, as delivery does."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from service.api.access import LOCAL_PRINCIPAL, principal_scope
from service.domain import ProfileUpdate
from service.store.base import ResyncSource
from service.usecases.resync import Resync

GUARD_SECONDS = 30.0
"""Generous: the loop sets the event within a few turns unless planning holds it."""


class BlockingEngine:
    """Plans a batch only once the event loop has run a task: planning that held the loop
    would wait for nothing (the loop cannot run the task) until the guard gives up."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.released = threading.Event()
        self.held: list[bool] = []

    def plan(self, updates: Sequence[ProfileUpdate], *, state: object = None) -> object:
        self._loop.call_soon_threadsafe(self.released.set)
        self.held.append(not self.released.wait(GUARD_SECONDS))
        self.released.clear()
        return updates

    def estimate_calls(self, plan: Sequence[ProfileUpdate]) -> int:
        return len(plan)


@dataclass
class Engines:
    engine: BlockingEngine

    async def engine_for(self, record: object) -> BlockingEngine:
        return self.engine


class Store:
    def __init__(self, profiles: int) -> None:
        self.sources = [
            ResyncSource(f"p{i}", datetime(2026, 1, 1, tzinfo=UTC), {"email": f"p{i}@x.io"})
            for i in range(profiles)
        ]

    async def get_destination(self, destination_id: str, *, tenant: str) -> Any:
        return SimpleNamespace(instance_key="i", spec=SimpleNamespace(connection=None))

    async def resync_sources(self, destination_id: str, ids: object) -> list[ResyncSource]:
        return self.sources

    async def desired_state(self, destination_id: str, ids: object) -> Any:
        return SimpleNamespace(for_resync=lambda ids: None)


class Connections:
    def calls_today(self, connection: object) -> Any:
        return SimpleNamespace(remaining=50_000)

    def calls_per_second(self, connection: object) -> float:
        return 10.0


async def test_the_event_loop_goes_on_while_resync_plans_its_estimate() -> None:
    engine = BlockingEngine(asyncio.get_running_loop())
    resync = Resync(
        Store(profiles=5),  # type: ignore[arg-type]
        Engines(engine),  # type: ignore[arg-type]
        Connections(),  # type: ignore[arg-type]
        batch_size=2,
        notify=lambda instance_key, destination_id: None,
    )
    with principal_scope(LOCAL_PRINCIPAL):
        estimate = await asyncio.wait_for(resync.resync("d", [], dry_run=True), 4 * GUARD_SECONDS)
    assert engine.held == [False, False, False], "the event loop was held while Resync planned"
    assert (estimate.profiles, estimate.calls) == (5, 5)
