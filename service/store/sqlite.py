"""The embedded store: SQLite in WAL mode through the standard library.

Threads: one writer thread owns the only writing connection, so write transactions never wait on
SQLite's lock; a small pool of reader threads, each with its own connection, serves reads
concurrently (WAL lets readers see the last commit while a write is in progress); a checkpointer
thread with a connection of its own copies the WAL into the database, so no commit waits for a
checkpoint; under continuous appends the writer copies the last few pages itself now and then, so
that the WAL starts over instead of growing. The event loop never blocks on the database.

Appends are group-committed: callers queue their updates, a committer task takes everything queued
while the previous transaction was running and writes it in one transaction, then resolves each
caller's future. Under load, one fsync acknowledges many streams.

The queries and transaction logic are `service.store.sql`'s, shared with the PostgreSQL store;
this module runs them on its threads (`SqliteConnection`, `complete`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import cache, partial
from pathlib import Path
from typing import Any, Literal, TypeVar

from service.store.base import AppendResult, settle_appends
from service.store.migrations import SCHEMA_MIGRATIONS_DDL, Migration, load_migrations
from service.store.rows import OUTBOX_COLUMNS, to_micros
from service.store.secrets import SecretBox, owner_only_directory
from service.store.sql import Column, Connection, PendingAppend, Store, chunks, utc_now

__all__ = [
    "DATABASE_FILE_NAME",
    "SqliteStore",
    "apply_migrations",
    "open_in_data_dir",
]

R = TypeVar("R")

DATABASE_FILE_NAME = "store.db"
# SQLite's default limit of host parameters per statement is 32766; stay far below.
IN_CHUNK = 500
BATCHES_PER_INSERT = 500
"""Rows of one multi-row INSERT into the inbox (6 parameters each)."""

Synchronous = Literal["FULL", "NORMAL"]


def apply_migrations(connection: sqlite3.Connection, migrations: Sequence[Migration]) -> list[int]:
    """Apply the migrations not yet recorded, in order, each in one transaction.

    `connection` must be in autocommit mode (`isolation_level=None`). Returns applied versions.
    """
    connection.execute(SCHEMA_MIGRATIONS_DDL)
    applied = {row[0] for row in connection.execute("SELECT version FROM schema_migrations")}
    done: list[int] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in migration.statements:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, to_micros(utc_now())),
            )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        done.append(migration.version)
    return done


_log = logging.getLogger(__name__)

GROUPS_PER_TURN = 16
"""Append groups the writer thread commits back to back before other writes get their turn."""
CHECKPOINT_INTERVAL = 0.1
"""Seconds between two checkpoints of the WAL into the database file, while there are writes."""
WAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes the WAL file is truncated back to after a checkpoint that let it grow past this."""
WAL_RESTART_PAGES = 4_096
"""Pages in the WAL (16 MB) from which the writer finishes a checkpoint itself, so that the WAL
starts over (see `_checkpoint_loop`)."""
CATCH_UP_PAGES = 256
"""Pages a checkpoint may leave behind for the writer to copy (1 MB: a short pause)."""


class SqliteStore(Store):
    """The `Store` on SQLite (WAL). Open with `await SqliteStore.open(path, box)`."""

    def __init__(
        self,
        path: Path,
        box: SecretBox,
        *,
        clock: Callable[[], datetime] = utc_now,
        synchronous: Synchronous = "FULL",
        readers: int = 2,
        max_group_rows: int = 10_000,
    ) -> None:
        """Prefer `open`, which also connects and migrates."""
        super().__init__(box, clock, max_group_rows=max_group_rows, fair_leases=False)
        self._path = path
        self._synchronous = synchronous
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._readers = ThreadPoolExecutor(
            max_workers=readers, thread_name_prefix="store-reader", initializer=self._init_reader
        )
        self._local = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._write_connection: sqlite3.Connection | None = None
        self._written = threading.Event()
        self._catch_up = threading.Event()
        """Set by the checkpointer: the writer should finish its checkpoint (`_catch_up_wal`)."""
        self._closing = threading.Event()
        self._checkpointer: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: Path | str,
        box: SecretBox,
        *,
        clock: Callable[[], datetime] = utc_now,
        synchronous: Synchronous = "FULL",
        readers: int = 2,
        max_group_rows: int = 10_000,
        migrations: Sequence[Migration] | None = None,
    ) -> SqliteStore:
        """Open (creating if needed) the database at `path` and apply pending migrations.

        `synchronous="FULL"` makes every acknowledged append survive power loss; "NORMAL"
        survives a process crash only. `migrations` defaults to the package's migrations.
        """
        store = cls(
            Path(path),
            box,
            clock=clock,
            synchronous=synchronous,
            readers=readers,
            max_group_rows=max_group_rows,
        )
        if migrations is None:
            migrations = load_migrations("sqlite")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(store._writer, store._open_writer, migrations)
        except BaseException:
            store._writer.shutdown(wait=True)
            store._readers.shutdown(wait=True)
            raise
        store._start_committing()
        await store._after_migrations(migrations)
        store._checkpointer = threading.Thread(
            target=store._checkpoint_loop, name="store-checkpointer", daemon=True
        )
        store._checkpointer.start()
        return store

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    async def close(self) -> None:
        """Commit what is queued, then close every connection."""
        if not await self._stop_committing():
            return
        self._closing.set()
        self._written.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._shutdown)

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE / COMMIT).
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA busy_timeout = 10000")
        connection.execute("PRAGMA foreign_keys = ON")
        return connection

    def _open_writer(self, migrations: Sequence[Migration]) -> None:
        owner_only_directory(self._path.parent)
        _owner_only_files(self._path)
        connection = self._connect()
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute(f"PRAGMA synchronous = {self._synchronous}")
            # The checkpointer thread copies the WAL into the database (`_checkpoint_loop`), so
            # that a commit never waits for a checkpoint.
            connection.execute("PRAGMA wal_autocheckpoint = 0")
            connection.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            apply_migrations(connection, migrations)
        except BaseException:
            connection.close()
            raise
        self._write_connection = connection

    def _init_reader(self) -> None:
        connection = self._connect()
        connection.execute("PRAGMA query_only = ON")
        self._local.connection = connection
        with self._reader_lock:
            self._reader_connections.append(connection)

    def _checkpoint_loop(self) -> None:
        """In its own thread and connection: while there are writes, checkpoint the WAL every
        `CHECKPOINT_INTERVAL` seconds (PASSIVE: never waits for the writer or a reader).

        The writer starts the WAL over only once a checkpoint has caught up with it, which one
        in another thread never does while appends go on: the WAL would grow without end (and
        every commit would extend the file, which costs its sync more). So when the WAL is past
        `WAL_RESTART_PAGES` and a checkpoint left at most `CATCH_UP_PAGES` behind, the writer
        copies those itself between two groups (`_catch_up_wal`) and the WAL starts over."""
        connection = self._connect()
        try:
            while True:
                self._written.wait()
                if self._closing.is_set():
                    return
                self._written.clear()
                try:
                    _, pages, copied = connection.execute(
                        "PRAGMA wal_checkpoint(PASSIVE)"
                    ).fetchone()
                    if pages >= WAL_RESTART_PAGES and pages - copied <= CATCH_UP_PAGES:
                        self._catch_up.set()
                except sqlite3.Error:
                    _log.exception("checkpointing %s failed; trying again", self._path)
                if self._closing.wait(CHECKPOINT_INTERVAL):
                    return
        finally:
            connection.close()

    def _shutdown(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.join()
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        if self._write_connection is not None:
            self._write_connection.close()
        with self._reader_lock:
            for connection in self._reader_connections:
                connection.close()
            self._reader_connections.clear()

    # -- running work off the loop --------------------------------------------------------------

    async def _write(self, name: str, work: Callable[[Connection], Coroutine[Any, Any, R]]) -> R:
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._transaction, name, work)

    def _transaction(self, name: str, work: Callable[[Connection], Coroutine[Any, Any, R]]) -> R:
        connection = self._write_connection
        assert connection is not None
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = complete(work(SqliteConnection(connection)))
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        self._written.set()
        self._notify(name)
        return result

    async def _read(self, work: Callable[[Connection], Coroutine[Any, Any, R]]) -> R:
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_snapshot, work)

    def _read_snapshot(self, work: Callable[[Connection], Coroutine[Any, Any, R]]) -> R:
        connection: sqlite3.Connection = self._local.connection
        # One read transaction: every statement of `work` sees the same commit.
        connection.execute("BEGIN")
        try:
            return complete(work(SqliteConnection(connection)))
        finally:
            connection.execute("COMMIT")

    # -- group commit ---------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await loop.run_in_executor(self._writer, self._commit_groups, loop)
            if self._closed:
                return

    def _commit_groups(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the writer thread: commit queued appends group after group, each group's callers
        answered as soon as it is durable. The next group starts right after a commit, without a
        round trip through the event loop; after `GROUPS_PER_TURN` groups other writes get their
        turn."""
        for _ in range(GROUPS_PER_TURN):
            group = self._take_group()
            if not group:
                return
            results: list[AppendResult | Exception]
            try:
                results = self._transaction("append", partial(self._append_group, group))
            except Exception as error:
                results = [error] * len(group)
            else:
                self._appended(group)
            loop.call_soon_threadsafe(settle_appends, [item.future for item in group], results)
            if self._catch_up.is_set():
                self._catch_up_wal()

    def _catch_up_wal(self) -> None:
        """In the writer thread, between transactions: finish the checkpointer's work (no page
        can be added meanwhile), so that the next transaction starts the WAL over."""
        self._catch_up.clear()
        connection = self._write_connection
        assert connection is not None
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            _log.exception("checkpointing %s from the writer failed", self._path)


async def open_in_data_dir(data_dir: Path, box: SecretBox, **options: Any) -> SqliteStore:
    """Open `<data_dir>/store.db` (the directory is created if missing); `options` go to `open`."""
    return await SqliteStore.open(data_dir / DATABASE_FILE_NAME, box, **options)


def _owner_only_files(database: Path) -> None:
    """Create the database file owner-only (0600) if missing, and make it and its WAL files
    owner-only if they are not: SQLite creates the -wal and -shm files with the database's
    mode, and the umask may leave a new file readable by everyone."""
    os.close(os.open(database, os.O_RDWR | os.O_CREAT, 0o600))
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                path.chmod(0o600)


def complete(coroutine: Coroutine[Any, Any, R]) -> R:
    """Run a coroutine of the shared store code on SQLite's connection to its end, in the
    calling thread: `SqliteConnection` answers every await at once, so it never suspends."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: R = done.value
        return result
    coroutine.close()
    raise RuntimeError("a SQLite transaction waited for something")


@cache
def _insert_sql(table: str, columns: tuple[Column, ...], tail: str) -> str:
    names = ", ".join(name for name, _ in columns)
    marks = ", ".join("?" * len(columns))
    return f"INSERT INTO {table} ({names}) VALUES ({marks}) {tail}"


class SqliteConnection:
    """The shared store code's `Connection` on a sqlite3 connection (a transaction is open)."""

    for_update = ""
    for_share = ""
    for_key_share = ""
    holder_lock = ""
    not_printable_ascii = "GLOB '*[^ -~]*'"
    """One writer at a time: statements are serialized already."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._connection.execute(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._connection.executemany(sql, rows)

    async def insert_many(
        self, table: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]], tail: str = ""
    ) -> int:
        if not rows:
            return 0
        cursor = self._connection.executemany(_insert_sql(table, tuple(columns), tail), rows)
        return max(cursor.rowcount, 0)

    def in_lists(self, values: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
        for chunk in chunks(values, IN_CHUNK):
            yield f"IN ({', '.join('?' * len(chunk))})", list(chunk)

    async def insert_batches(self, batches: Sequence[PendingAppend], enqueued_at: int) -> list[int]:
        """A few hundred rows per statement. The rows of one statement get consecutive ids: each
        new row's id is one more than the largest the table has had (AUTOINCREMENT), so the last
        id gives all of them."""
        ids: list[int] = []
        for chunk in chunks(batches, BATCHES_PER_INSERT):
            cursor = self._connection.execute(
                "INSERT INTO inbox (destination_id, instance_key, count, body, trace_context, "
                "enqueued_at) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)),
                [
                    value
                    for item in chunk
                    for value in (
                        item.destination_id,
                        item.instance_key,
                        item.count,
                        item.body,
                        item.trace_context,
                        enqueued_at,
                    )
                ],
            )
            last = cursor.lastrowid or 0
            ids.extend(range(last - len(chunk) + 1, last + 1))
        return ids

    async def claim(
        self, instance_key: str, after_sequence: int, due: int, limit: int, max_bytes: int
    ) -> sqlite3.Cursor:
        """Read row by row, so the scan stops where the caller stops reading."""
        return self._connection.execute(
            f"SELECT {OUTBOX_COLUMNS}, length(CAST(payload AS BLOB)) FROM outbox "
            "WHERE instance_key = ? AND sequence > ? AND not_before <= ? "
            "ORDER BY priority, sequence LIMIT ?",
            (instance_key, after_sequence, due, limit),
        )


def _conforms_connection(connection: SqliteConnection) -> Connection:
    return connection  # mypy checks SqliteConnection against the Connection protocol here
