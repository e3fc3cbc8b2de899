"""SQLite only: the WAL is copied into the database by a checkpointer thread, never by a commit,
so an acknowledgement never waits for a checkpoint."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from service.secrets import SecretBox
from service.store import NewDestination, SqliteStore
from service.store import sqlite as sqlite_store

from .conftest import FakeClock

BATCH = os.urandom(40_000)  # incompressible, ten pages each
BATCHES = 300  # about 3,000 pages: three times SQLite's default autocheckpoint threshold


async def _fill(directory: Path, box: SecretBox, clock: FakeClock) -> tuple[Path, SqliteStore]:
    path = directory / "store.db"
    store = await SqliteStore.open(path, box, clock=clock)
    destination = await store.create_destination(
        NewDestination(tenant="t", name="d", spec={}, client_secret="s", instance_key="i")
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
