"""Benchmark: the store's hot path (append, unpack, claim, retire) on SQLite, through the shared
SQL layer's own connection adapter and, when SQLAlchemy is importable, through SQLAlchemy Core.

The SQLAlchemy variant runs the very same statements and transaction logic, each statement
executed by a SQLAlchemy `Connection` (`text()` constructs, cached, with named parameters): the
least SQLAlchemy Core can cost, since expression constructs only add compilation to it. Each
variant runs `--rounds` times, interleaved; the best round counts (the machine is shared).
synchronous=NORMAL keeps fsync out of the figures. Last line: one JSON object; the target is
that the adapter is no slower than SQLAlchemy (ratio sqlalchemy_s / adapter_s >= 1).

    .venv/bin/python bench/store_sql.py [--updates 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.api import inbox_codec
from service.domain import (
    DestinationSpec,
    MarketoConnection,
    Outcome,
    OutcomeKind,
    ProfileUpdate,
)
from service.store.secrets import SecretBox
from service.store.sql import Column, Connection, PendingAppend
from service.store.sqlite import SqliteConnection, SqliteStore

R = TypeVar("R")
INSTANCE = "i"


async def hot_path(store: SqliteStore, updates: int, batch: int, streams: int) -> float:
    """Seconds to append `updates` from `streams` callers, then unpack, claim (300) and retire
    every one of them."""
    spec = DestinationSpec("bench", MarketoConnection("123-ABC-456", "c", "s"), None, "")
    from service.store.base import NewDestination

    destination = await store.create_destination(
        NewDestination(tenant="t", name="bench", spec=spec, instance_key=INSTANCE)
    )
    now = datetime.now(UTC)
    bodies = [
        inbox_codec.encode_updates(
            [
                ProfileUpdate(f"u{start + n}", f"p{start + n}", now, {"person": {"n": start + n}})
                for n in range(batch)
            ]
        )
        for start in range(0, updates, batch)
    ]
    began = time.perf_counter()

    async def stream(first: int) -> None:
        for body in bodies[first::streams]:
            await store.append(destination.id, INSTANCE, body, batch)

    await asyncio.gather(*(stream(s) for s in range(streams)))
    done = 0
    while done < updates:
        await store.unpack(INSTANCE, inbox_codec.decode_batch, 300)
        entries = await store.claim_due(INSTANCE, 300)
        outcomes = [
            Outcome(e.update.update_id, e.update.profile_id, None, OutcomeKind.ACTIVATED)
            for e in entries
        ]
        await store.retire(entries, outcomes)
        done += len(entries)
    return time.perf_counter() - began


class AlchemyConnection:
    """The shared layer's `Connection`, every statement run by SQLAlchemy Core."""

    for_update = for_share = for_key_share = holder_lock = ""

    def __init__(self, connection: Any, raw: sqlite3.Connection) -> None:
        self._connection = connection
        self._adapter = SqliteConnection(raw)  # for the two engine-specific queries

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._connection.execute(_text(sql), _named(params))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._connection.execute(_text(sql), [_named(row) for row in rows])

    async def insert_many(
        self, table: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]], tail: str = ""
    ) -> int:
        if not rows:
            return 0
        names = ", ".join(name for name, _ in columns)
        sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))}) {tail}"
        result = self._connection.execute(_text(sql), [_named(row) for row in rows])
        return max(result.rowcount, 0)

    def in_lists(self, values: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
        return self._adapter.in_lists(values)

    async def insert_batches(self, batches: Sequence[PendingAppend], enqueued_at: int) -> list[int]:
        return await self._adapter.insert_batches(batches, enqueued_at)

    async def claim(
        self, instance_key: str, after_sequence: int, due: int, limit: int, max_bytes: int
    ) -> Any:
        return await self._adapter.claim(instance_key, after_sequence, due, limit, max_bytes)


@cache
def _text(sql: str) -> Any:
    from sqlalchemy import text

    count = iter(range(10_000))
    return text(re.sub(r"\?", lambda _: f":p{next(count)}", sql))


def _named(params: Sequence[Any]) -> dict[str, Any]:
    return {f"p{index}": value for index, value in enumerate(params)}


class AlchemyStore(SqliteStore):
    """`SqliteStore` whose transactions run their statements through SQLAlchemy Core."""

    _engines: dict[int, Any]

    def _alchemy(self, raw: sqlite3.Connection) -> AlchemyConnection:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import StaticPool

        engines = self.__dict__.setdefault("_engines", {})
        if id(raw) not in engines:
            engine = create_engine(
                "sqlite://",
                creator=lambda: raw,
                poolclass=StaticPool,
                isolation_level="AUTOCOMMIT",
                pool_reset_on_return=None,
            )
            engines[id(raw)] = engine.connect()
        return AlchemyConnection(engines[id(raw)], raw)

    def _transaction(self, name: str, work: Callable[[Connection], Coroutine[Any, Any, R]]) -> R:
        assert self._write_connection is not None
        alchemy = self._alchemy(self._write_connection)  # before BEGIN, which connecting ends
        return super()._transaction(name, lambda _: work(alchemy))

    def _read_snapshot(self, work: Callable[[Connection], Coroutine[Any, Any, R]]) -> R:
        alchemy = self._alchemy(self._local.connection)
        return super()._read_snapshot(lambda _: work(alchemy))


async def measure(kind: type[SqliteStore], updates: int) -> float:
    with tempfile.TemporaryDirectory() as directory:
        store = await kind.open(
            Path(directory) / "bench.db", SecretBox(SecretBox.generate_key()), synchronous="NORMAL"
        )
        try:
            return await hot_path(store, updates, batch=20, streams=32)
        finally:
            await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        kinds: dict[str, type[SqliteStore]] = {"adapter": SqliteStore}
    else:
        kinds = {"adapter": SqliteStore, "sqlalchemy": AlchemyStore}
    best = {name: float("inf") for name in kinds}
    for _ in range(args.rounds):
        for name, kind in kinds.items():
            seconds = await measure(kind, args.updates)
            print(f"{name:>10}: {seconds:.3f} s for {args.updates} updates")
            best[name] = min(best[name], seconds)
    results: dict[str, Any] = {f"{name}_s": round(s, 3) for name, s in best.items()}
    results["adapter_per_s"] = round(args.updates / best["adapter"])
    results["target"] = "ratio >= 1 (needs SQLAlchemy importable)"
    results["ok"] = None
    if "sqlalchemy" in best:
        results["ratio"] = round(best["sqlalchemy"] / best["adapter"], 2)
        results["ok"] = results["ratio"] >= 1
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
