"""SQLite only: the WAL is copied into the database by a checkpointer thread, never by a commit,
so an acknowledgement never waits for a checkpoint."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from service.store import sqlite as sqlite_store
from service.store.base import NewDestination
from service.store.secrets import SecretBox
from service.store.sqlite import SqliteStore

from .conftest import FakeClock, destination_spec

BATCH = os.urandom(40_000)  # incompressible, ten pages each
BATCHES = 300  # about 3,000 pages: three times SQLite's default autocheckpoint threshold


async def _fill(directory: Path, box: SecretBox, clock: FakeClock) -> tuple[Path, SqliteStore]:
    path = directory / "store.db"
    store = await SqliteStore.open(path, box, clock=clock)
    destination = await store.create_destination(
        NewDestination(tenant="t", name="d", spec=destination_spec(), instance_key="i")
    )
    for _ in range(100):  # the checkpointer took the first write (its checkpoint is tiny)
        if not store._written.is_set():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    for _ in range(BATCHES // 10):
        await asyncio.gather(*(store.append(destination.id, "i", BATCH, 1) for _ in range(10)))
    return path, store


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


async def test_commits_never_checkpoint(
    tmp_path: Path, box: SecretBox, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_INTERVAL", 3600.0)  # after the first, none

    path, store = await _fill(tmp_path, box, clock)
    try:
        stored_mb = BATCHES * len(BATCH) / 1e6
        # Everything is still in the WAL: no commit copied pages into the database file.
        assert _size_mb(Path(f"{path}-wal")) > stored_mb
        assert _size_mb(path) < stored_mb / 10
    finally:
        await store.close()


async def test_the_checkpointer_copies_the_wal_into_the_database(
    tmp_path: Path, box: SecretBox, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_INTERVAL", 0.01)

    path, store = await _fill(tmp_path, box, clock)
    try:
        stored_mb = BATCHES * len(BATCH) / 1e6
        # No commit checkpoints (above): the database file holds the data only if the
        # checkpointer copied it there.
        for _ in range(200):  # up to 10 s
            if _size_mb(path) >= stored_mb:
                break
            await asyncio.sleep(0.05)
        assert _size_mb(path) >= stored_mb
    finally:
        await store.close()


SMALL_BATCH = os.urandom(3_000)  # one page each
STREAMS = 8


APPENDED_MB = 24.0
"""What each run appends: twelve times WAL_RESTART_PAGES as `_small_wal` sets it."""


async def _append_continuously(
    directory: Path, box: SecretBox, clock: FakeClock
) -> tuple[float, float]:
    """Appends APPENDED_MB from STREAMS concurrent callers, so that the writer never waits for
    work (as under a steady Sync load); (MB appended, largest WAL seen in MB). A volume, not a
    time: on a slow or busy machine the run takes longer and proves the same."""
    path = directory / "store.db"
    store = await SqliteStore.open(path, box, clock=clock)
    wal = Path(f"{path}-wal")
    appended = largest = 0.0
    try:
        destination = await store.create_destination(
            NewDestination(tenant="t", name="d", spec=destination_spec(), instance_key="i")
        )

        async def stream() -> None:
            nonlocal appended, largest
            while appended < APPENDED_MB:
                await store.append(destination.id, "i", SMALL_BATCH, 1)
                appended += len(SMALL_BATCH) / 1e6
                largest = max(largest, _size_mb(wal))

        await asyncio.gather(*(stream() for _ in range(STREAMS)))
    finally:
        await store.close()
    return appended, largest


def _small_wal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_INTERVAL", 0.01)
    monkeypatch.setattr(sqlite_store, "WAL_RESTART_PAGES", 500)  # 2 MB


async def test_under_continuous_appends_the_wal_starts_over(
    tmp_path: Path, box: SecretBox, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _small_wal(monkeypatch)

    appended, largest = await _append_continuously(tmp_path, box, clock)

    assert appended >= APPENDED_MB
    assert largest < 10  # WAL_RESTART_PAGES, what came meanwhile, the catch-up's margin


async def test_without_the_writers_catch_up_the_wal_grows(
    tmp_path: Path, box: SecretBox, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control of the test above: a checkpoint in another thread alone never catches up
    with a busy writer, so the WAL never starts over."""
    _small_wal(monkeypatch)
    monkeypatch.setattr(sqlite_store, "CATCH_UP_PAGES", -1)  # never asks the writer

    appended, largest = await _append_continuously(tmp_path, box, clock)

    assert appended >= APPENDED_MB
    assert largest > appended / 2
