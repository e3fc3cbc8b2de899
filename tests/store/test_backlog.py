"""A large backlog is served from indexes, never read whole into memory."""

from __future__ import annotations

import sqlite3
import tracemalloc
from datetime import timedelta

import pytest

from service.domain import ActionType, ProfileUpdate
from service.store.sql import Store
from tests.store.conftest import (
    INSTANCE,
    START,
    Backend,
    SqliteBackend,
    activated,
    append,
    new_destination,
    unpack,
)

BACKLOG = 200_000
CHUNK = 2_000
BATCH = 300


def small_update(n: int) -> ProfileUpdate:
    return ProfileUpdate(
        update_id=f"u{n}",
        profile_id=f"p{n}",
        event_time=START - timedelta(hours=1),
        profile={"person": {"email": f"p{n}@example.com", "name": {"firstName": "Ann"}}},
    )


async def test_claiming_from_a_large_backlog_reads_only_a_batch(
    store: Store, backend: Backend
) -> None:
    destination = await store.create_destination(new_destination())
    for start in range(0, BACKLOG, CHUNK):
        result = await append(
            store, destination.id, INSTANCE, [small_update(n) for n in range(start, start + CHUNK)]
        )
        assert result.count == CHUNK
    # Half the backlog is unpacked into the outbox, the other half still waits in the inbox.
    assert await unpack(store, INSTANCE, limit=BACKLOG // 2) == BACKLOG // 2
    assert len(backend.committed_batches(destination.id)) == BACKLOG // 2 // CHUNK

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        claimed = 0
        after = 0
        for _ in range(5):
            # What a drainer does before each claim: enough entries are due, nothing to unpack.
            assert await unpack(store, INSTANCE, limit=BATCH, now=START) == 0
            batch = await store.claim_due(INSTANCE, BATCH, START, after_sequence=after)
            assert len(batch) == BATCH
            claimed += len(batch)
            after = batch[-1].sequence
            stats = await store.pending_stats(destination.id)
            assert await store.instance_keys_with_due_work(START) == [INSTANCE]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Reading the whole backlog would need hundreds of MB; a batch needs well under one.
    assert peak - base < 8 * 1024 * 1024
    assert claimed == 5 * BATCH
    assert stats.count == BACKLOG
    assert stats.oldest_enqueued_at == START
    first = await store.claim_due(INSTANCE, BATCH, START)
    assert [e.update.update_id for e in first[:3]] == ["u0", "u1", "u2"]
    await store.retire(first, [activated(e, ActionType.UPDATED) for e in first])
    assert (await store.pending_stats(destination.id)).count == BACKLOG - BATCH


def query_plan(connection: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> str:
    return " | ".join(row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + sql, params))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_hot_queries_use_indexes(store: Store, backend: Backend) -> None:
    assert isinstance(backend, SqliteBackend)
    connection = sqlite3.connect(backend.path)
    try:
        claim = query_plan(
            connection,
            "SELECT * FROM outbox WHERE instance_key = ? AND sequence > ? AND not_before <= ? "
            "ORDER BY sequence LIMIT ?",
            ("i", 0, 0, 300),
        )
        oldest = query_plan(
            connection,
            "SELECT enqueued_at FROM outbox WHERE destination_id = ? ORDER BY sequence LIMIT 1",
            ("d",),
        )
        due_work = query_plan(
            connection,
            "SELECT instance_key FROM outbox_instances i WHERE EXISTS (SELECT 1 FROM outbox o "
            "WHERE o.instance_key = i.instance_key AND o.not_before <= ?)",
            (0,),
        )
        next_batch = query_plan(
            connection,
            "SELECT id, destination_id, body, trace_context, enqueued_at FROM inbox "
            "WHERE instance_key = ? ORDER BY id LIMIT 1",
            ("i",),
        )
        oldest_batch = query_plan(
            connection,
            "SELECT enqueued_at FROM inbox WHERE destination_id = ? ORDER BY id LIMIT 1",
            ("d",),
        )
    finally:
        connection.close()

    assert "outbox_due" in claim
    assert "TEMP B-TREE" not in claim  # no sort of the whole backlog
    assert "outbox_by_destination" in oldest
    assert "TEMP B-TREE" not in oldest
    assert "SCAN o " not in due_work + " "
    assert "outbox_due" in due_work
    assert "inbox_by_instance" in next_batch
    assert "TEMP B-TREE" not in next_batch
    assert "inbox_by_destination" in oldest_batch
    assert "TEMP B-TREE" not in oldest_batch
