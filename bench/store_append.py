"""Benchmark: durable appends to the SQLite inbox, with and without group commit.

Many concurrent streams append small encoded batches (as Sync calls do; the batches are encoded
before the clock starts). "grouped" is the store's group
commit; "one_per_call" caps a group at one call (max_group_rows=0), i.e. one transaction (and
one fsync) per append. With ``--postgres URL`` (a server where a scratch database may be
created), "postgres_grouped" measures the PostgreSQL store's group commit the same way. Last
line: {"grouped_per_s": …, "one_per_call_per_s": …, "speedup": …[, "postgres_grouped_per_s": …]}.

    .venv/bin/python bench/store_append.py [--streams 32] [--batch 20] [--updates 40000]
        [--postgres postgresql://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from service.api import inbox_codec
from service.domain import DestinationSpec, MarketoConnection, ProfileUpdate
from service.store.base import NewDestination
from service.store.secrets import SecretBox
from service.store.sql import Store
from service.store.sqlite import SqliteStore, Synchronous


async def run(
    directory: Path, *, streams: int, batch: int, updates: int, grouped: bool, sync: Synchronous
) -> tuple[float, int]:
    store = await SqliteStore.open(
        directory / "bench.db",
        SecretBox(SecretBox.generate_key()),
        synchronous=sync,
        max_group_rows=10_000 if grouped else 0,
    )
    return await appends(store, streams=streams, batch=batch, updates=updates)


async def run_postgres(url: str, *, streams: int, batch: int, updates: int) -> tuple[float, int]:
    """The PostgreSQL store, in a scratch database created on `url`'s server and dropped after."""
    import psycopg
    from psycopg import sql

    from service.store.postgres import PostgresStore

    name = f"md_bench_{secrets.token_hex(6)}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        scratch = psycopg.conninfo.make_conninfo(url, dbname=name)
        store = await PostgresStore.open(scratch, SecretBox(SecretBox.generate_key()))
        return await appends(store, streams=streams, batch=batch, updates=updates)
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def appends(store: Store, *, streams: int, batch: int, updates: int) -> tuple[float, int]:
    """Appends `updates` from `streams` concurrent callers in batches of `batch`, then closes
    the store; (updates per second, append transactions)."""
    commits = 0

    def count(name: str) -> None:
        nonlocal commits
        commits += name == "append"

    store.add_commit_listener(count)
    destination = await store.create_destination(
        NewDestination(
            tenant="t",
            name="bench",
            spec=DestinationSpec("bench", MarketoConnection("123-ABC-456", "c", "s"), None, ""),
            instance_key="i",
        )
    )
    event_time = datetime.now(UTC)
    per_stream = updates // streams
    bodies = {
        s: [
            inbox_codec.encode_updates(
                [
                    ProfileUpdate(
                        update_id=f"{s}-{n}",
                        profile_id=f"p{s}-{n}",
                        event_time=event_time,
                        profile={"person": {"email": f"p{s}-{n}@example.com"}},
                    )
                    for n in range(start, min(start + batch, per_stream))
                ]
            )
            for start in range(0, per_stream, batch)
        ]
        for s in range(streams)
    }

    async def stream(s: int) -> None:
        for index, body in enumerate(bodies[s]):
            count = min(batch, per_stream - index * batch)
            await store.append(destination.id, "i", body, count)

    began = time.perf_counter()
    await asyncio.gather(*(stream(s) for s in range(streams)))
    elapsed = time.perf_counter() - began
    await store.close()
    return streams * per_stream / elapsed, commits


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--updates", type=int, default=40_000)
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--postgres", metavar="URL", help="also measure the PostgreSQL store")
    args = parser.parse_args()
    results: dict[str, float] = {}
    for grouped in (True, False):
        with tempfile.TemporaryDirectory() as directory:
            rate, commits = await run(
                Path(directory),
                streams=args.streams,
                batch=args.batch,
                updates=args.updates,
                grouped=grouped,
                sync=args.synchronous,
            )
        label = "grouped" if grouped else "one_per_call"
        print(f"{label:>13}: {rate:10.0f} updates/s in {commits} transactions")
        results[f"{label}_per_s"] = round(rate)
    results["speedup"] = round(results["grouped_per_s"] / results["one_per_call_per_s"], 2)
    if args.postgres:
        rate, commits = await run_postgres(
            args.postgres, streams=args.streams, batch=args.batch, updates=args.updates
        )
        print(f"postgres_grouped: {rate:10.0f} updates/s in {commits} transactions")
        results["postgres_grouped_per_s"] = round(rate)
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
