"""Three replica processes on one PostgreSQL database share six Marketo instances (sandbox
processes): each instance is drained by one replica at a time, and a replica killed mid-run hands
its instances over within the lease TTL, with an exact final Marketo state.

Each sandbox admits ONE call in flight, and each replica is configured to make at most one per
instance: two replicas draining the same instance at once would show as a peak concurrency of 2
and 615 answers. Rate windows are time-scaled (100 calls / 2 s), far above what one call at a
time with 40 ms latency can use, so a 606 would also mean a second drainer.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from tests.scale.cluster import Cluster, Replica, cluster, profile_update

INSTANCES = 6
PROFILES = 300
NEW_PROFILES = 60
BATCH = 30
TTL = 3.0
SANDBOX_LIMITS = {"concurrency": 1, "latency_ms": 40, "calls_per_window": 100, "window_seconds": 2}
REPLICA_SETTINGS = {
    "MARKETO_DEST_MARKETO_CONCURRENCY": "1",
    "MARKETO_DEST_MARKETO_WINDOW_SECONDS": "2",
    "MARKETO_DEST_LEASE_TTL_SECONDS": str(TTL),
    "MARKETO_DEST_MARKETO_TIMEOUT_SECONDS": "1",
    "MARKETO_DEST_LEASE_CLOCK_SKEW_SECONDS": "0.2",
    "MARKETO_DEST_BATCH_SIZE": "40",
    "MARKETO_DEST_LINGER_SECONDS": "0.05",
}

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(240)]


async def leases(url: str) -> dict[str, tuple[str, int, int]]:
    """Instance key -> (holder, generation, expires_at µs) of every lease row."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        cursor = await connection.execute(
            "SELECT instance_key, holder, generation, expires_at FROM instance_leases"
        )
        return {row[0]: (row[1], row[2], row[3]) for row in await cursor.fetchall()}


async def instance_keys(url: str) -> dict[str, str]:
    """Destination id -> instance key."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        cursor = await connection.execute("SELECT id, instance_key FROM destinations")
        return {row[0]: row[1] for row in await cursor.fetchall()}


async def db_now(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        cursor = await connection.execute(
            "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint"
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


async def stream(
    running: Cluster,
    through: list[Replica],
    phase: str,
    profiles: range,
    first: str,
    event_time: float,
) -> int:
    """Every instance's profiles in batches, the batches spread over `through`."""
    tasks = []
    for sandbox in running.sandboxes:
        destination_id = running.destinations[sandbox.munchkin_id]
        numbers = list(profiles)
        batches = [
            [
                profile_update(
                    sandbox.munchkin_id, n, first=first, time=event_time, update_id=f"{phase}-{n}"
                )
                for n in numbers[start : start + BATCH]
            ]
            for start in range(0, len(numbers), BATCH)
        ]
        for index, replica in enumerate(through):
            mine = batches[index :: len(through)]
            if mine:
                tasks.append(running.sync(replica, destination_id, mine))
    return sum(await asyncio.gather(*tasks))


async def test_three_replicas_share_six_instances_and_survive_a_kill(
    postgres_url: str, tmp_path: Path
) -> None:
    async with cluster(postgres_url, tmp_path) as running:
        await asyncio.gather(
            *(
                running.start_sandbox(f"{100 + i}-ABC-{i:03d}", SANDBOX_LIMITS)
                for i in range(INSTANCES)
            )
        )
        # The first replica migrates; the others then start together.
        first = await running.start_replica("replica-0", REPLICA_SETTINGS)
        others = await asyncio.gather(
            *(running.start_replica(f"replica-{n}", REPLICA_SETTINGS) for n in (1, 2))
        )
        replicas = [first, *others]
        for index, sandbox in enumerate(running.sandboxes):
            await running.add_destination(sandbox, via=replicas[index % len(replicas)])
        keys = await instance_keys(postgres_url)
        pending_of = {keys[d]: d for d in running.destinations.values()}

        accepted = await stream(
            running, replicas, "one", range(PROFILES), first="Ada", event_time=1_780_000_000
        )
        assert accepted == INSTANCES * PROFILES

        # Kill a replica while it drains: one holding a live lease on an instance with backlog.
        victim: Replica | None = None
        held: dict[str, int] = {}
        async with asyncio.timeout(60):
            while victim is None:
                now = await db_now(postgres_url)
                rows = await leases(postgres_url)
                for replica in replicas:
                    mine = {
                        key: generation
                        for key, (holder, generation, expires) in rows.items()
                        if holder == replica.name and expires > now
                    }
                    busy = [key for key in mine if (await running.pending(pending_of[key])).pending]
                    if busy:
                        victim, held = replica, {key: mine[key] for key in busy}
                        break
                else:
                    await asyncio.sleep(0.05)
        assert victim is not None
        await running.kill(victim)
        killed_at = time.monotonic()
        survivors = running.live()
        assert len(survivors) == 2

        # More updates through the survivors: new first names and new profiles.
        second = asyncio.ensure_future(
            stream(
                running,
                survivors,
                "two",
                range(PROFILES + NEW_PROFILES),
                first="Grace",
                event_time=1_780_000_100,
            )
        )

        # Its instances are taken over by the survivors, with a new generation, after the TTL.
        async with asyncio.timeout(TTL + 20):
            while True:
                rows = await leases(postgres_url)
                moved = {
                    key
                    for key, generation in held.items()
                    if rows[key][0] != victim.name and rows[key][1] > generation
                }
                if moved == set(held):
                    break
                await asyncio.sleep(0.1)
        handover = time.monotonic() - killed_at
        print(f"instances of {victim.name} {sorted(held)} taken over after {handover:.1f} s")
        assert {rows[key][0] for key in held} <= {r.name for r in survivors}

        assert await second == INSTANCES * (PROFILES + NEW_PROFILES)
        await running.wait_delivered(within=120)

        for sandbox in running.sandboxes:
            leads = await sandbox.leads()
            emails = Counter(lead["fields"].get("email") for lead in leads)
            expected = {
                f"{sandbox.munchkin_id.lower()}-p{n}@example.com"
                for n in range(PROFILES + NEW_PROFILES)
            }
            assert set(emails) == expected, sandbox.munchkin_id
            assert max(emails.values()) == 1, f"duplicate leads in {sandbox.munchkin_id}"
            assert {lead["fields"].get("firstName") for lead in leads} == {"Grace"}
            lists = (await sandbox.control("GET", "lists"))["lists"]
            [audience] = [
                item for item in lists if item["id"] == running.lists[sandbox.munchkin_id]
            ]
            assert sorted(audience["members"]) == sorted(lead["id"] for lead in leads)

            calls = await sandbox.calls()
            codes = calls["by_code"]
            assert codes.get("606", 0) == 0 and codes.get("615", 0) == 0, (
                sandbox.munchkin_id,
                codes,
            )
            assert calls["peak_concurrency"] <= SANDBOX_LIMITS["concurrency"], (
                sandbox.munchkin_id,
                calls["peak_concurrency"],
            )

        for destination_id in running.destinations.values():
            flow: pb.Dataflow = await running.pending(destination_id)
            assert flow.pending == 0
            assert dict(flow.failed) == {}
            assert flow.received == PROFILES + PROFILES + NEW_PROFILES
