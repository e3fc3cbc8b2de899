"""The scale-out store: PostgreSQL through psycopg 3 (async) and a connection pool.

Many service replicas share one database. What makes that safe:

- Migrations run under a session advisory lock (`pg_advisory_lock`), so replicas starting
  together apply each migration once; the others wait, then find nothing left to do.
- Ingestion needs no lock on the outbox: every replica inserts with
  `ON CONFLICT (destination_id, update_id) DO NOTHING`, so the unique index makes appends
  idempotent across replicas (a concurrent insert of the same update waits for the other
  transaction, then does nothing). Appends are group-committed per replica, like SQLite's.
- Exactly one drainer per Marketo instance: the instance's lease row. `retire` and `defer` with a
  fencing token lock that row `FOR SHARE` in their own transaction and compare its generation, so
  a takeover (an `UPDATE` of the row) and a stale drainer's commit are serialized: whichever comes
  second sees the other.
- Fair spreading: taking a *new* lease is refused while the replica already holds its fair share,
  `ceil(instances with work or a live lease / live replicas)`; live replicas are the unexpired rows
  of `replicas`, refreshed by every lease taken or renewed.

Transactions that hit a deadlock or serialization failure are retried a few times. The queries
and transaction logic are `service.store.sql`'s, shared with `SqliteStore` (same migrations, same
tests); this module runs them (`PostgresConnection`: `?` placeholders as psycopg's, list
parameters as arrays, bulk inserts from `unnest` arrays, row locks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache, partial
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, errors
from psycopg_pool import AsyncConnectionPool

from service.store.base import AppendResult, settle_appends
from service.store.migrations import SCHEMA_MIGRATIONS_DDL, Migration, load_migrations
from service.store.rows import OUTBOX_COLUMNS, to_micros
from service.store.secrets import SecretBox
from service.store.sql import Column, Connection, PendingAppend, Rows, Store, utc_now

__all__ = ["MIGRATION_LOCK", "PostgresStore", "apply_migrations", "is_postgres_url"]

R = TypeVar("R")
PgConnection = AsyncConnection[tuple[Any, ...]]

MIGRATION_LOCK = 0x6D6B_746F_6D69_6772
"""Key of the session advisory lock held while migrating (any 64-bit constant will do)."""

_RETRIES = 5
_RETRYABLE = (errors.DeadlockDetected, errors.SerializationFailure)


def is_postgres_url(url: str) -> bool:
    """Whether `url` names a PostgreSQL database (`postgresql://` or `postgres://`)."""
    return url.startswith(("postgresql://", "postgres://"))


async def apply_migrations(connection: PgConnection, migrations: Sequence[Migration]) -> list[int]:
    """Apply the migrations not yet recorded, in order, each in one transaction, holding the
    migration advisory lock. `connection` must be in autocommit mode. Returns applied versions."""
    await connection.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        await connection.execute(SCHEMA_MIGRATIONS_DDL)
        cursor = await connection.execute("SELECT version FROM schema_migrations")
        applied = {row[0] for row in await cursor.fetchall()}
        done: list[int] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            async with connection.transaction():
                for statement in migration.statements:
                    await connection.execute(statement)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, to_micros(utc_now())),
                )
            done.append(migration.version)
        return done
    finally:
        await connection.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


class PostgresStore(Store):
    """The `Store` on PostgreSQL. Open with `await PostgresStore.open(url, box)`."""

    def __init__(
        self,
        pool: AsyncConnectionPool[PgConnection],
        box: SecretBox,
        *,
        clock: Callable[[], datetime] = utc_now,
        max_group_rows: int = 10_000,
        fair_leases: bool = True,
    ) -> None:
        """Prefer `open`, which also creates the pool and migrates."""
        super().__init__(box, clock, max_group_rows=max_group_rows, fair_leases=fair_leases)
        self._pool = pool

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        box: SecretBox,
        *,
        clock: Callable[[], datetime] = utc_now,
        min_connections: int = 2,
        max_connections: int = 10,
        max_group_rows: int = 10_000,
        fair_leases: bool = True,
        migrations: Sequence[Migration] | None = None,
    ) -> PostgresStore:
        """Connect to the database at `url` (a libpq URL or DSN) and apply pending migrations.

        `fair_leases` makes `acquire_lease` refuse a new lease above the replica's fair share.
        `migrations` defaults to the package's migrations.
        """
        if migrations is None:
            migrations = load_migrations("postgresql")
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
            await apply_migrations(connection, migrations)
        pool: AsyncConnectionPool[PgConnection] = AsyncConnectionPool(
            url,
            min_size=min_connections,
            max_size=max_connections,
            kwargs={"autocommit": True},
            open=False,
            name="marketo-destination-store",
        )
        await pool.open(wait=True, timeout=30.0)
        store = cls(pool, box, clock=clock, max_group_rows=max_group_rows, fair_leases=fair_leases)
        store._start_committing()
        await store._after_migrations(migrations)
        return store

    async def close(self) -> None:
        """Commit what is queued, then close the pool."""
        if await self._stop_committing():
            await self._pool.close()

    async def __aenter__(self) -> PostgresStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- transactions ---------------------------------------------------------------------------

    async def _write(self, name: str, work: Callable[[Connection], Coroutine[Any, Any, R]]) -> R:
        self._check_open()
        result = await self._transaction(work)
        self._notify(name)
        return result

    async def _transaction(self, work: Callable[[Connection], Coroutine[Any, Any, R]]) -> R:
        for attempt in range(_RETRIES):
            try:
                async with self._pool.connection() as connection, connection.transaction():
                    return await work(PostgresConnection(connection))
            except _RETRYABLE:
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _read(self, work: Callable[[Connection], Coroutine[Any, Any, R]]) -> R:
        self._check_open()
        async with self._pool.connection() as connection, connection.transaction():
            # One snapshot for every statement of `work`, like SQLite's read transaction.
            await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return await work(PostgresConnection(connection))

    async def _commit_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                group = self._take_group()
                results: list[AppendResult | Exception]
                try:
                    results = await self._transaction(partial(self._append_group, group))
                except Exception as error:
                    results = [error] * len(group)
                else:
                    self._appended(group)
                    self._notify("append")
                settle_appends([item.future for item in group], results)
            if self._closed:
                return


@dataclass(frozen=True, slots=True)
class Result:
    """A statement's rows, fetched."""

    rows: list[tuple[Any, ...]]
    rowcount: int

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)


@cache
def _pg(sql: str) -> str:
    """`?` placeholders as psycopg's."""
    return sql.replace("?", "%s")


@cache
def _insert_sql(table: str, columns: tuple[Column, ...], tail: str) -> str:
    """One INSERT of every row, from a typed array per column, in the rows' order."""
    names = ", ".join(name for name, _ in columns)
    arrays = ", ".join(f"%s::{kind}[]" for _, kind in columns)
    return (
        f"INSERT INTO {table} ({names}) SELECT {names} FROM unnest({arrays}) WITH ORDINALITY "
        f"AS r ({names}, ord) ORDER BY r.ord {tail}"
    )


class PostgresConnection:
    """The shared store code's `Connection` on a psycopg connection (a transaction is open)."""

    for_update = " FOR UPDATE"
    for_share = " FOR SHARE"
    for_key_share = " FOR KEY SHARE"
    holder_lock = "SELECT pg_advisory_xact_lock(hashtext(?))"
    not_printable_ascii = "~ '[^ -~]'"

    def __init__(self, connection: PgConnection) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        cursor = await self._connection.execute(_pg(sql), params)
        rows = await cursor.fetchall() if cursor.description is not None else []
        return Result(rows, cursor.rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self._connection.cursor() as cursor:
            await cursor.executemany(_pg(sql), rows)

    async def insert_many(
        self, table: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]], tail: str = ""
    ) -> int:
        if not rows:
            return 0
        cursor = await self._connection.execute(
            _insert_sql(table, tuple(columns), tail),
            [list(column) for column in zip(*rows, strict=True)],
            binary=True,
        )
        return max(cursor.rowcount, 0)

    def in_lists(self, values: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
        if values:
            yield "= ANY(?)", [list(values)]

    async def insert_batches(self, batches: Sequence[PendingAppend], enqueued_at: int) -> list[int]:
        """Insert the batches into the inbox with one statement; their ids, ascending in the order
        of `batches` (taken from the inbox's sequence first, so that no row order is relied on)."""
        if not batches:
            return []
        cursor = await self._connection.execute(
            "SELECT nextval(pg_get_serial_sequence('inbox', 'id')) FROM generate_series(1, %s)",
            (len(batches),),
        )
        ids = sorted(row[0] for row in await cursor.fetchall())
        await self._connection.execute(
            "INSERT INTO inbox (id, destination_id, instance_key, count, body, trace_context, "
            "enqueued_at) SELECT b.id, b.destination_id, b.instance_key, b.count, b.body, "
            "b.trace_context, %s FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[], "
            "%s::bytea[], %s::text[]) AS b (id, destination_id, instance_key, count, body, "
            "trace_context)",
            (
                enqueued_at,
                ids,
                [item.destination_id for item in batches],
                [item.instance_key for item in batches],
                [item.count for item in batches],
                [item.body for item in batches],
                [item.trace_context for item in batches],
            ),
            binary=True,
        )
        return ids

    async def claim(
        self, instance_key: str, after_sequence: int, due: int, limit: int, max_bytes: int
    ) -> Rows:
        """The running total is summed in the database from the stored sizes (`octet_length`
        does not detoast), so only the entries taken travel."""
        return await self.execute(
            f"SELECT {OUTBOX_COLUMNS}, size FROM ("
            f"SELECT {OUTBOX_COLUMNS}, octet_length(payload) AS size, "
            "sum(octet_length(payload)) OVER (ORDER BY priority, sequence) AS running "
            "FROM outbox WHERE instance_key = ? AND sequence > ? AND not_before <= ? "
            "ORDER BY priority, sequence LIMIT ?) AS due "
            "WHERE running - size < ? ORDER BY priority, sequence",
            (instance_key, after_sequence, due, limit, max_bytes),
        )


def _conforms_connection(connection: PostgresConnection) -> Connection:
    return connection  # mypy checks PostgresConnection against the Connection protocol here
