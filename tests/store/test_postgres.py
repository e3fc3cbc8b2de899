"""What only the PostgreSQL store has to get right: many replicas on one database.

Migrations under an advisory lock, fencing (of retire and unpack) against a concurrent takeover,
fair lease spreading, appends from several stores at once, indexes on the hot queries, secrets
sealed at rest.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from service.domain import ActionType, ExclusionCode, Outcome, OutcomeKind, ProfileState
from service.store.base import FencingError, ProfileStateRow, Watermark
from service.store.migrations import load_migrations
from service.store.postgres import PostgresStore
from service.store.secrets import SecretBox
from service.store.sql import Store
from tests.pg import fresh_database
from tests.store.conftest import (
    CLIENT_SECRET,
    START,
    WEBHOOK_SECRET,
    Backend,
    FakeClock,
    PostgresBackend,
    activated,
    append,
    claimed,
    new_destination,
    unpack,
    update,
)

TTL = timedelta(seconds=30)

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def versions(url: str) -> list[int]:
    with psycopg.connect(url) as connection:
        return [row[0] for row in connection.execute("SELECT version FROM schema_migrations")]


async def test_replicas_starting_together_migrate_once(
    backend: Backend, box: SecretBox, clock: FakeClock
) -> None:
    with fresh_database("md_migrate") as url:
        stores = await asyncio.gather(
            *(PostgresStore.open(url, box, clock=clock) for _ in range(4))
        )
        try:
            created = await stores[0].create_destination(new_destination())
            for store in stores:
                assert (await store.get_destination(created.id, tenant="acme")).id == created.id
        finally:
            await asyncio.gather(*(store.close() for store in stores))
        assert versions(url) == [m.version for m in load_migrations("postgresql")]


async def test_failed_migration_leaves_the_previous_version(
    backend: Backend, box: SecretBox, clock: FakeClock, tmp_path: Path
) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_one.sql").write_text("CREATE TABLE one (x INTEGER);\n")
    (directory / "0002_broken.sql").write_text(
        "CREATE TABLE two (x INTEGER);\nINSERT INTO missing VALUES (1);\n"
    )
    with fresh_database("md_migrate") as url:
        with pytest.raises(psycopg.errors.UndefinedTable):
            await PostgresStore.open(
                url, box, clock=clock, migrations=load_migrations("postgresql", directory)
            )
        assert versions(url) == [1]
        with psycopg.connect(url) as connection:
            tables = {row[0] for row in connection.execute("SELECT tablename FROM pg_tables")}
        assert "one" in tables
        assert "two" not in tables


async def test_a_takeover_fences_out_the_old_holder_across_stores(
    backend: Backend, clock: FakeClock
) -> None:
    replica_a = await backend.open(clock)
    replica_b = await backend.open(clock)
    try:
        destination = await replica_a.create_destination(new_destination())
        await append(replica_b, destination.id, "i1", [update(1), update(2)])
        old = await replica_a.acquire_lease("i1", "a", TTL)
        assert old is not None
        assert await unpack(replica_a, "i1", fencing=old.generation) == 2
        entries = await replica_a.claim_due("i1", 10, START)
        assert await replica_b.acquire_lease("i1", "b", TTL) is None  # a holds it

        clock.advance(TTL + timedelta(seconds=1))  # a stalls past its TTL
        new = await replica_b.acquire_lease("i1", "b", TTL)
        assert new is not None and new.generation == old.generation + 1

        with pytest.raises(FencingError):
            await replica_a.retire(
                entries, [activated(e, ActionType.UPDATED) for e in entries], fencing=old.generation
            )
        with pytest.raises(FencingError):
            await replica_a.defer(entries, clock.now + TTL, "late", fencing=old.generation)
        await append(replica_a, destination.id, "i1", [update(3)])
        with pytest.raises(FencingError):
            await unpack(replica_a, "i1", fencing=old.generation)
        assert await replica_b.renew_lease(new, TTL) is not None
        assert await replica_a.renew_lease(old, TTL) is None
        mine = await replica_b.claim_due("i1", 10, clock.now)
        assert [e.sequence for e in mine] == [e.sequence for e in entries]  # nothing was lost
        assert await unpack(replica_b, "i1", fencing=new.generation) == 1
        mine = await replica_b.claim_due("i1", 10, clock.now)
        assert [e.update.update_id for e in mine] == ["u1", "u2", "u3"]
        await replica_b.retire(
            mine, [activated(e, ActionType.UPDATED) for e in mine], fencing=new.generation
        )
        assert (await replica_a.pending_stats(destination.id)).count == 0
        assert len((await replica_a.list_outcomes(destination.id)).items) == 3
    finally:
        await replica_a.close()
        await replica_b.close()


async def test_a_retire_waits_for_a_takeover_in_progress_and_is_fenced(
    backend: Backend, clock: FakeClock
) -> None:
    """The fencing check locks the lease row: a retire racing an uncommitted takeover waits for
    it, then sees the new generation (reading the old committed row would let it commit)."""
    assert isinstance(backend, PostgresBackend)
    store = await backend.open(clock)
    try:
        destination = await store.create_destination(new_destination())
        await append(store, destination.id, "i1", [update(1)])
        await unpack(store, "i1")
        lease = await store.acquire_lease("i1", "a", TTL)
        assert lease is not None
        entries = await store.claim_due("i1", 10, START)
        with psycopg.connect(backend.url) as takeover:
            takeover.execute(
                "UPDATE instance_leases SET holder = 'b', generation = generation + 1 "
                "WHERE instance_key = 'i1'"
            )
            retire = asyncio.ensure_future(
                store.retire(
                    entries,
                    [activated(e, ActionType.UPDATED) for e in entries],
                    fencing=lease.generation,
                )
            )
            await asyncio.sleep(0.3)
            assert not retire.done()  # blocked on the lease row
            takeover.commit()
            with pytest.raises(FencingError):
                await asyncio.wait_for(retire, 10)
        assert [e.sequence for e in await store.claim_due("i1", 10, START)] == [
            e.sequence for e in entries
        ]
    finally:
        await store.close()


async def finished_after_commit(task: asyncio.Future[None], other: psycopg.Connection) -> None:
    """Check that `task` waits for the other connection's open transaction (a row it locked),
    then commit that transaction and let `task` finish."""
    await asyncio.sleep(0.3)
    assert not task.done()
    other.commit()
    await asyncio.wait_for(task, 10)


def forgotten_outcome(profile_id: str) -> Outcome:
    return Outcome(
        update_id=f"forget:{profile_id}",
        profile_id=profile_id,
        dedupe_value=None,
        kind=OutcomeKind.EXCLUDED,
        reason="profile forgotten: nothing removed",
        exclusion_code=ExclusionCode.FORGOTTEN,
    )


async def test_a_retire_waits_for_a_forget_in_progress_and_writes_no_state_back(
    backend: Backend, clock: FakeClock
) -> None:
    """A ForgetProfile not yet committed when a batch of the profile is retired: the retire
    waits for it, then sees the tombstone and stores none of the profile's state."""
    assert isinstance(backend, PostgresBackend)
    store = await backend.open(clock)
    try:
        destination = await store.create_destination(new_destination())
        entries = await claimed(store, destination.id, "i1", [1])
        with psycopg.connect(backend.url) as forget:
            # what ForgetProfile's transaction does first: lock the destination, the tombstone
            forget.execute("SELECT 1 FROM destinations WHERE id = %s FOR UPDATE", (destination.id,))
            forget.execute(
                "INSERT INTO forgotten_profiles (destination_id, profile_id, forgotten_at) "
                "VALUES (%s, 'p1', 0)",
                (destination.id,),
            )
            retire = asyncio.ensure_future(
                store.retire(
                    entries,
                    [activated(e, ActionType.UPDATED) for e in entries],
                    [Watermark(destination.id, "p1", entries[0].update.event_time)],
                    profiles=[
                        ProfileStateRow(destination.id, "p1", ProfileState("p1@x.io", 7, "d"))
                    ],
                )
            )
            await finished_after_commit(retire, forget)
        state = await store.desired_state(destination.id, ["p1"])
        assert (state.forgotten, dict(state.profiles)) == ({"p1"}, {})
        assert await store.resync_sources(destination.id) == []
    finally:
        await store.close()


async def test_a_forget_waits_for_a_retire_in_progress_and_drops_what_it_wrote(
    backend: Backend, clock: FakeClock
) -> None:
    """A retire of the profile's batch not yet committed when ForgetProfile runs: the forget
    waits for it, then deletes the state the retire wrote."""
    assert isinstance(backend, PostgresBackend)
    store = await backend.open(clock)
    try:
        destination = await store.create_destination(new_destination())
        with psycopg.connect(backend.url) as retire:
            # what a retire's transaction holds: the destination row locked (key share), the
            # profile's state written
            retire.execute(
                "SELECT 1 FROM destinations WHERE id = %s FOR KEY SHARE", (destination.id,)
            )
            retire.execute(
                "INSERT INTO profile_state (destination_id, profile_id, lead_id) "
                "VALUES (%s, 'p1', 7)",
                (destination.id,),
            )
            forget = asyncio.ensure_future(
                store.forget_profile(destination.id, "p1", forgotten_outcome("p1"), START)
            )
            await finished_after_commit(forget, retire)
        state = await store.desired_state(destination.id, ["p1"])
        assert (state.forgotten, dict(state.profiles)) == ({"p1"}, {})
    finally:
        await store.close()


async def test_leases_spread_fairly_over_replicas(backend: Backend, clock: FakeClock) -> None:
    store = await backend.open(clock)
    try:
        destination = await store.create_destination(new_destination())
        instances = [f"i{n}" for n in range(6)]
        for n, instance in enumerate(instances):
            await append(store, destination.id, instance, [update(n)])
        for holder in ("a", "b", "c"):
            await store.heartbeat_replica(holder, TTL)
        assert await store.fair_share("a") == 2

        taken: dict[str, list[str]] = {"a": [], "b": [], "c": []}
        for holder in ("a", "b", "c"):
            for instance in instances:
                if await store.acquire_lease(instance, holder, TTL) is not None:
                    taken[holder].append(instance)
        assert {holder: len(keys) for holder, keys in taken.items()} == {"a": 2, "b": 2, "c": 2}
        assert sorted(key for keys in taken.values() for key in keys) == instances

        # "c" dies: its replica row and leases lapse; the other two split its instances.
        clock.advance(timedelta(seconds=20))
        for holder in ("a", "b"):
            for instance in taken[holder]:
                lease = await store.acquire_lease(instance, holder, TTL)  # renewal by re-acquire
                assert lease is not None
        clock.advance(timedelta(seconds=11))
        assert await store.fair_share("a") == 3
        for holder in ("a", "b"):
            for instance in taken["c"]:
                if await store.acquire_lease(instance, holder, TTL) is not None:
                    taken[holder].append(instance)
        assert len(taken["a"]) == 3 and len(taken["b"]) == 3
    finally:
        await store.close()


async def test_one_replica_alone_takes_every_instance(backend: Backend, clock: FakeClock) -> None:
    store = await backend.open(clock)
    try:
        for n in range(5):
            assert await store.acquire_lease(f"i{n}", "solo", TTL) is not None
    finally:
        await store.close()


async def test_appends_from_several_replicas_land_once(backend: Backend, clock: FakeClock) -> None:
    stores = [await backend.open(clock) for _ in range(3)]
    try:
        destination = await stores[0].create_destination(new_destination())

        async def stream(store: Store, n: int) -> int:
            # Every replica receives every update (a retried stream): each batch is stored...
            result = await append(
                store, destination.id, "i1", [update(n * 10 + k) for k in range(10)]
            )
            assert result.count == 10
            return result.sequence

        sequences = await asyncio.gather(*(stream(store, n) for n in range(20) for store in stores))
        assert len(set(sequences)) == 60
        assert sorted(backend.committed_batches(destination.id)) == sorted(sequences)
        assert (await stores[1].pending_stats(destination.id)).count == 600

        # ... and each update becomes one entry when the batches are unpacked.
        assert await unpack(stores[2], "i1") == 200
        assert (await stores[1].pending_stats(destination.id)).count == 200
        flow = await stores[0].dataflow(destination.id, now=START)
        assert (flow.received, flow.duplicates) == (600, 400)
        entries = await stores[2].claim_due("i1", 1000, START)
        assert len({e.update.update_id for e in entries}) == len(entries) == 200
    finally:
        for store in stores:
            await store.close()


async def test_an_unpack_waits_for_a_takeover_in_progress_and_is_fenced(
    backend: Backend, clock: FakeClock
) -> None:
    """Like retire, unpack locks the lease row for its fencing check."""
    assert isinstance(backend, PostgresBackend)
    store = await backend.open(clock)
    try:
        destination = await store.create_destination(new_destination())
        batch = await append(store, destination.id, "i1", [update(1)])
        lease = await store.acquire_lease("i1", "a", TTL)
        assert lease is not None
        with psycopg.connect(backend.url) as takeover:
            takeover.execute(
                "UPDATE instance_leases SET holder = 'b', generation = generation + 1 "
                "WHERE instance_key = 'i1'"
            )
            unpacking = asyncio.ensure_future(unpack(store, "i1", fencing=lease.generation))
            await asyncio.sleep(0.3)
            assert not unpacking.done()  # blocked on the lease row
            takeover.commit()
            with pytest.raises(FencingError):
                await asyncio.wait_for(unpacking, 10)
        assert backend.committed_batches(destination.id) == [batch.sequence]
        assert await store.claim_due("i1", 10, START) == []
    finally:
        await store.close()


async def test_hot_queries_use_indexes(store: Store, backend: Backend) -> None:
    assert isinstance(backend, PostgresBackend)
    with psycopg.connect(backend.url) as connection:
        connection.execute("SET enable_seqscan = off")

        def plan(query: str) -> str:
            rows = connection.execute(("EXPLAIN " + query).encode()).fetchall()
            return " | ".join(row[0] for row in rows)

        claim = plan(
            "SELECT * FROM outbox WHERE instance_key = 'i' AND sequence > 0 "
            "AND not_before <= 0 ORDER BY sequence LIMIT 300"
        )
        oldest = plan(
            "SELECT enqueued_at FROM outbox WHERE destination_id = 'd' ORDER BY sequence LIMIT 1"
        )
        held = plan("SELECT COUNT(*) FROM instance_leases WHERE holder = 'a' AND expires_at > 0")
        next_batch = plan("SELECT id FROM inbox WHERE instance_key = 'i' ORDER BY id LIMIT 1")
        oldest_batch = plan(
            "SELECT enqueued_at FROM inbox WHERE destination_id = 'd' ORDER BY id LIMIT 1"
        )
    assert "outbox_due" in claim and "Sort" not in claim
    assert "inbox_by_instance" in next_batch and "Sort" not in next_batch
    assert "inbox_by_destination" in oldest_batch and "Sort" not in oldest_batch
    assert "outbox_by_destination" in oldest and "Sort" not in oldest
    assert "instance_leases_by_holder" in held


async def test_secrets_are_sealed_at_rest(store: Store, backend: Backend) -> None:
    assert isinstance(backend, PostgresBackend)
    await store.create_destination(new_destination())
    with psycopg.connect(backend.url) as connection:
        row = connection.execute(
            "SELECT client_secret, webhook_secret FROM destinations"
        ).fetchone()
    assert row is not None
    stored = bytes(row[0]) + bytes(row[1])
    assert CLIENT_SECRET.encode() not in stored
    assert WEBHOOK_SECRET.encode() not in stored
