"""Outcome retention: outcomes past the retention go, in chunks, on start and periodically."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from service.delivery.retention import OutcomeRetention
from service.store.secrets import SecretBox
from service.store.sql import Store
from service.store.sqlite import SqliteStore
from tests.store.conftest import (
    START,
    FakeClock,
    deliver_daily,
    new_destination,
    outcome_update_ids,
)

INSTANCE = "123-ABC-456"


class Clock:
    """Epoch seconds set by the test; `sleep` records its wait and lets the loop turn, except
    for waits of `held` seconds, which last until `release`."""

    def __init__(self, now: datetime, held: float = 0.0) -> None:
        self.at = now.timestamp()
        self.slept: list[float] = []
        self._held = held
        self._release = asyncio.Event()

    def now(self) -> float:
        return self.at

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds == self._held:
            await self._release.wait()
            self._release.clear()
        await asyncio.sleep(0)

    def release(self) -> None:
        self._release.set()


@contextlib.asynccontextmanager
async def opened(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    """A SQLite store in `tmp_path` on `clock`, closed on exit."""
    store = await SqliteStore.open(
        tmp_path / "store.db", SecretBox(SecretBox.generate_key()), clock=clock
    )
    try:
        yield store
    finally:
        await store.close()


async def test_purge_deletes_every_outcome_past_the_retention_in_chunks(tmp_path: Path) -> None:
    store_clock = FakeClock()
    async with opened(tmp_path, store_clock) as store:
        destination = await store.create_destination(new_destination())
        await deliver_daily(store, destination.id, INSTANCE, store_clock, days=10)  # u0 .. u9
        # Ten days after START: with a retention of 3 days, u0 to u6 are too old.
        clock = Clock(START + timedelta(days=10))
        retention = OutcomeRetention(store, timedelta(days=3), clock=clock, chunk=2, pause=0.5)

        assert await retention.purge() == 7
        assert await outcome_update_ids(store, destination.id) == ["u7", "u8", "u9"]
        assert clock.slept == [0.5] * 4  # a pause after each of the four chunks that deleted
        assert await retention.purge() == 0


async def test_purge_deletes_the_resync_sources_past_the_retention(tmp_path: Path) -> None:
    store_clock = FakeClock()
    async with opened(tmp_path, store_clock) as store:
        destination = await store.create_destination(new_destination())
        # p0 .. p4, one a day, each update's attributes applied
        await deliver_daily(store, destination.id, INSTANCE, store_clock, days=5, applied=True)
        clock = Clock(START + timedelta(days=5))
        retention = OutcomeRetention(store, timedelta(days=2), clock=clock, chunk=2, pause=0.5)

        assert await retention.purge() == 3
        sources = await store.resync_sources(destination.id)
        assert [s.profile_id for s in sources] == ["p3", "p4"]
        assert clock.slept == [0.5] * 4  # two chunks of outcomes, two of resync sources


class PurgeCalls:
    """A store that only purges: each call answers the next of `answers` (an exception is
    raised) and remembers its cut; it has no resync source to purge."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.cuts: list[datetime] = []
        self.source_cuts: list[datetime] = []

    async def purge_outcomes(self, recorded_before: datetime, limit: int) -> int:
        self.cuts.append(recorded_before)
        answer = self.answers.pop(0) if self.answers else 0
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def purge_resync_sources(self, recorded_before: datetime, limit: int) -> int:
        self.source_cuts.append(recorded_before)
        return 0


async def until(condition: Any) -> None:
    for _ in range(1_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def test_it_purges_on_start_then_every_interval_and_outlives_a_failure() -> None:
    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    clock = Clock(now, held=300.0)
    store = PurgeCalls(RuntimeError("database is locked"), 5, 0)
    retention = OutcomeRetention(
        cast(Store, store), timedelta(days=30), clock=clock, interval=300.0
    )

    await retention.start()
    try:
        await until(lambda: clock.slept == [300.0])  # the first purge failed: logged
        assert store.cuts == [now - timedelta(days=30)]
        clock.at += 300
        clock.release()
        await until(lambda: len(clock.slept) == 3)  # 5 deleted, a pause, then none: wait
        assert clock.slept[-1] == 300.0
        assert store.cuts[1:] == [now + timedelta(seconds=300) - timedelta(days=30)] * 2
        assert store.source_cuts == [now + timedelta(seconds=300) - timedelta(days=30)]
    finally:
        await retention.stop()
    assert retention._task is None


def test_a_retention_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        OutcomeRetention(cast(Store, PurgeCalls()), timedelta(0))
