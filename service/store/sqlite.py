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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import sqlite3
import stat
import threading
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

from service.domain import (
    UNDECODABLE,
    DecodedBatch,
    FieldMapping,
    Outcome,
)
from service.store.base import (
    CLAIM_MAX_BYTES,
    UNPACK_STEP,
    ActivationRecord,
    AlertRecord,
    AppendResult,
    CommitListener,
    Dataflow,
    DestinationNotFound,
    DestinationRecord,
    DestinationState,
    FencingError,
    Lease,
    NewDestination,
    OutboxEntry,
    OutcomeRecord,
    Page,
    PendingStats,
    Store,
    StoreError,
    VersionConflict,
    Watermark,
    in_steps,
    settle_appends,
)
from service.store.migrations import SCHEMA_MIGRATIONS_DDL, Migration, load_migrations
from service.store.rows import (
    ALERT_COLUMNS,
    COUNT_COLUMNS,
    DEFAULT_PAGE_SIZE,
    DESTINATION_COLUMNS,
    DESTINATIONS_POSITION,
    HOUR_US,
    NEW_DESTINATION_COLUMNS,
    OUTBOX_COLUMNS,
    OUTCOME_COLUMNS,
    OUTCOMES_POSITION,
    Counts,
    add_reasons_sql,
    alert_record,
    build_dataflow,
    clamp_page_size,
    count_outcome,
    decode_token,
    dumps,
    dumps_mappings,
    encode_token,
    fail_update,
    from_micros,
    instances_with_work,
    loads_mappings,
    outbox_entry,
    outcome_record,
    pair_outcomes,
    purge_outcomes,
    reason_totals_sql,
    sort_batch,
    storable_ids,
    storable_outcome,
    to_micros,
    undecodable_outcomes,
    unpacked_counts,
)
from service.store.secrets import SecretBox, owner_only_directory

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

Synchronous = Literal["FULL", "NORMAL"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
                (migration.version, migration.name, to_micros(_utc_now())),
            )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        done.append(migration.version)
    return done


@dataclass(slots=True)
class _Append:
    destination_id: str
    instance_key: str
    body: bytes
    count: int
    trace_context: str | None
    future: asyncio.Future[AppendResult]


# Idempotent on (destination_id, update_id); `unpack` first drops updates already delivered
# (found in outcomes), which is cheaper as one IN query than as a NOT EXISTS per row.
_INSTANCES_WITH_WORK = instances_with_work("?")
_PURGE_OUTCOMES = purge_outcomes("?")
_FAIL_UPDATE = fail_update("?")

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


_INSERT_OUTBOX = (
    "INSERT INTO outbox (destination_id, instance_key, update_id, profile_id, event_time, "
    "payload, trace_context, enqueued_at, not_before, digest) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (destination_id, update_id) DO NOTHING"
)


class SqliteStore:
    """The `Store` on SQLite (WAL). Open with `await SqliteStore.open(path, box)`."""

    def __init__(
        self,
        path: Path,
        box: SecretBox,
        *,
        clock: Callable[[], datetime] = _utc_now,
        synchronous: Synchronous = "FULL",
        readers: int = 2,
        max_group_rows: int = 10_000,
    ) -> None:
        """Prefer `open`, which also connects and migrates."""
        self._path = path
        self._box = box
        self._clock = clock
        self._synchronous = synchronous
        self._max_group_rows = max_group_rows
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._readers = ThreadPoolExecutor(
            max_workers=readers, thread_name_prefix="store-reader", initializer=self._init_reader
        )
        self._local = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._write_connection: sqlite3.Connection | None = None
        self._listeners: list[CommitListener] = []
        self._queue: deque[_Append] = deque()
        self._instances_known: set[str] = set()
        """Instance keys known to be in outbox_instances (the writer thread's own)."""
        self._wakeup = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._written = threading.Event()
        self._catch_up = threading.Event()
        """Set by the checkpointer: the writer should finish its checkpoint (`_catch_up_wal`)."""
        self._closing = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: Path | str,
        box: SecretBox,
        *,
        clock: Callable[[], datetime] = _utc_now,
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
        store._committer = asyncio.create_task(store._commit_loop(), name="store-group-commit")
        store._checkpointer = threading.Thread(
            target=store._checkpoint_loop, name="store-checkpointer", daemon=True
        )
        store._checkpointer.start()
        return store

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Register a callback run on the writer thread after each committed transaction."""
        self._listeners.append(listener)

    async def close(self) -> None:
        """Commit what is queued, then close every connection."""
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        if self._committer is not None:
            await self._committer
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

    async def _write(self, name: str, work: Callable[[sqlite3.Connection], R]) -> R:
        if self._closed:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._transaction, name, work)

    def _transaction(self, name: str, work: Callable[[sqlite3.Connection], R]) -> R:
        connection = self._write_connection
        assert connection is not None
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = work(connection)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        self._written.set()
        for listener in self._listeners:
            listener(name)
        return result

    async def _read(self, work: Callable[[sqlite3.Connection], R]) -> R:
        if self._closed:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_snapshot, work)

    def _read_snapshot(self, work: Callable[[sqlite3.Connection], R]) -> R:
        connection: sqlite3.Connection = self._local.connection
        # One read transaction: every statement of `work` sees the same commit.
        connection.execute("BEGIN")
        try:
            return work(connection)
        finally:
            connection.execute("COMMIT")

    def _now(self, now: datetime | None) -> int:
        return to_micros(now if now is not None else self._clock())

    # -- destinations ---------------------------------------------------------------------------

    async def create_destination(self, new: NewDestination) -> DestinationRecord:
        """Store a new destination (id `dst_…`, version 1, state ACTIVE)."""
        destination_id = "dst_" + secrets.token_hex(10)
        now = self._now(None)
        client_secret = self._box.seal(new.client_secret)
        webhook_secret = (
            self._box.seal(new.webhook_secret) if new.webhook_secret is not None else None
        )

        def work(connection: sqlite3.Connection) -> DestinationRecord:
            connection.execute(
                f"INSERT INTO destinations ({NEW_DESTINATION_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, 1)",
                (
                    destination_id,
                    new.tenant,
                    new.name,
                    dumps(new.spec),
                    client_secret,
                    webhook_secret,
                    new.instance_key,
                    DestinationState.ACTIVE.value,
                    now,
                    now,
                    dumps_mappings(new.mappings),
                ),
            )
            # A new destination has no state reason to read.
            return self._fetch_destination(
                connection, destination_id, None, columns=NEW_DESTINATION_COLUMNS
            )

        return await self._write("create_destination", work)

    async def get_destination(
        self, destination_id: str, *, tenant: str | None
    ) -> DestinationRecord:
        """The destination, or DestinationNotFound (also for another tenant's)."""
        return await self._read(
            lambda connection: self._fetch_destination(connection, destination_id, tenant)
        )

    async def list_destinations(
        self, tenant: str, *, page_size: int = DEFAULT_PAGE_SIZE, page_token: str = ""
    ) -> Page[DestinationRecord]:
        """The tenant's destinations, oldest first."""
        size = clamp_page_size(page_size)
        after = decode_token(page_token, "destinations", [tenant], DESTINATIONS_POSITION)

        def work(connection: sqlite3.Connection) -> Page[DestinationRecord]:
            if after is None:
                rows = connection.execute(
                    f"SELECT {DESTINATION_COLUMNS} FROM destinations WHERE tenant = ? "
                    "ORDER BY created_at, id LIMIT ?",
                    (tenant, size + 1),
                ).fetchall()
            else:
                rows = connection.execute(
                    f"SELECT {DESTINATION_COLUMNS} FROM destinations "
                    "WHERE tenant = ? AND (created_at, id) > (?, ?) "
                    "ORDER BY created_at, id LIMIT ?",
                    (tenant, after[0], after[1], size + 1),
                ).fetchall()
            records = tuple(self._destination(row) for row in rows[:size])
            token = ""
            if len(rows) > size:
                last = rows[size - 1]
                token = encode_token("destinations", [tenant], [last[9], last[0]])
            return Page(records, token)

        return await self._read(work)

    async def update_destination(self, record: DestinationRecord) -> DestinationRecord:
        """Write name, spec, secrets and instance key if `record.version` is current.

        Mappings change through `upsert_activations`, state through `set_destination_state`.
        """
        now = self._now(None)
        client_secret = self._box.seal(record.client_secret)
        webhook_secret = (
            self._box.seal(record.webhook_secret) if record.webhook_secret is not None else None
        )

        def work(connection: sqlite3.Connection) -> DestinationRecord:
            cursor = connection.execute(
                "UPDATE destinations SET name = ?, spec = ?, client_secret = ?, "
                "webhook_secret = ?, instance_key = ?, updated_at = ?, version = version + 1 "
                "WHERE id = ? AND tenant = ? AND version = ?",
                (
                    record.name,
                    dumps(record.spec),
                    client_secret,
                    webhook_secret,
                    record.instance_key,
                    now,
                    record.id,
                    record.tenant,
                    record.version,
                ),
            )
            if cursor.rowcount == 0:
                # Raises DestinationNotFound when it is gone (or another tenant's).
                self._fetch_destination(connection, record.id, record.tenant)
                raise VersionConflict(record.id, record.version)
            return self._fetch_destination(connection, record.id, record.tenant)

        return await self._write("update_destination", work)

    async def set_destination_state(
        self,
        destination_id: str,
        state: DestinationState,
        paused_until: datetime | None = None,
        *,
        reason: str = "",
    ) -> None:
        """Set the lifecycle state and its reason (no version check, no version change)."""
        until = to_micros(paused_until) if paused_until is not None else None

        def work(connection: sqlite3.Connection) -> None:
            cursor = connection.execute(
                "UPDATE destinations SET state = ?, paused_until = ?, state_reason = ? "
                "WHERE id = ?",
                (state.value, until, reason, destination_id),
            )
            if cursor.rowcount == 0:
                raise DestinationNotFound(destination_id)

        await self._write("set_destination_state", work)

    async def pause_instance(self, instance_key: str, until: datetime) -> None:
        """Record that the Marketo instance makes no call before `until`; a later pause stays."""
        micros = to_micros(until)

        def work(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO instance_pauses (instance_key, paused_until) VALUES (?, ?) "
                "ON CONFLICT (instance_key) DO UPDATE SET paused_until = "
                "CASE WHEN excluded.paused_until > instance_pauses.paused_until "
                "THEN excluded.paused_until ELSE instance_pauses.paused_until END",
                (instance_key, micros),
            )

        await self._write("pause_instance", work)

    async def instance_paused_until(
        self, instance_key: str, now: datetime | None = None
    ) -> datetime | None:
        """When the instance's recorded pause ends, if that is after `now`."""
        current = self._now(now)

        def work(connection: sqlite3.Connection) -> int | None:
            cursor = connection.execute(
                "SELECT paused_until FROM instance_pauses "
                "WHERE instance_key = ? AND paused_until > ?",
                (instance_key, current),
            )
            row = cursor.fetchone()
            return None if row is None else int(row[0])

        until = await self._read(work)
        return None if until is None else from_micros(until)

    async def delete_destination(self, destination_id: str, *, tenant: str) -> None:
        """Delete the destination; foreign keys cascade to everything that belongs to it."""

        def work(connection: sqlite3.Connection) -> None:
            cursor = connection.execute(
                "DELETE FROM destinations WHERE id = ? AND tenant = ?", (destination_id, tenant)
            )
            if cursor.rowcount == 0:
                raise DestinationNotFound(destination_id)

        await self._write("delete_destination", work)

    def _fetch_destination(
        self,
        connection: sqlite3.Connection,
        destination_id: str,
        tenant: str | None,
        *,
        columns: str = DESTINATION_COLUMNS,
    ) -> DestinationRecord:
        row = connection.execute(
            f"SELECT {columns} FROM destinations WHERE id = ?", (destination_id,)
        ).fetchone()
        if row is None or (tenant is not None and row[1] != tenant):
            raise DestinationNotFound(destination_id)
        return self._destination(row)

    def _destination(self, row: Sequence[Any]) -> DestinationRecord:
        return DestinationRecord(
            id=row[0],
            tenant=row[1],
            name=row[2],
            spec=json.loads(row[3]),
            client_secret=self._box.open(row[4]),
            webhook_secret=self._box.open(row[5]) if row[5] is not None else None,
            instance_key=row[6],
            state=DestinationState(row[7]),
            paused_until=from_micros(row[8]) if row[8] is not None else None,
            created_at=from_micros(row[9]),
            updated_at=from_micros(row[10]),
            mappings=loads_mappings(row[11]),
            version=row[12],
            state_reason=row[13] if len(row) > 13 else "",
        )

    # -- activations ----------------------------------------------------------------------------

    async def activations(self, destination_id: str) -> list[ActivationRecord]:
        """Every activation of the destination (active or not), by audience id."""

        def work(connection: sqlite3.Connection) -> list[ActivationRecord]:
            rows = connection.execute(
                "SELECT audience_id, audience_name, origin, marketo_list_id, list_name, active "
                "FROM activations WHERE destination_id = ? ORDER BY audience_id",
                (destination_id,),
            )
            return [
                ActivationRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]))
                for row in rows
            ]

        return await self._read(work)

    async def upsert_activations(
        self,
        destination_id: str,
        activations: Sequence[ActivationRecord],
        mappings: Sequence[FieldMapping] | None = None,
    ) -> None:
        """Insert or replace activations; with `mappings`, also set them and bump the version.

        The version bump makes a concurrent Configure that read the old record fail with
        VersionConflict instead of working on a stale view.
        """
        now = self._now(None)

        def work(connection: sqlite3.Connection) -> None:
            if mappings is not None:
                cursor = connection.execute(
                    "UPDATE destinations SET mappings = ?, updated_at = ?, version = version + 1 "
                    "WHERE id = ?",
                    (dumps_mappings(mappings), now, destination_id),
                )
            else:
                cursor = connection.execute(
                    "SELECT 1 FROM destinations WHERE id = ?", (destination_id,)
                )
            if cursor.rowcount == 0 or (mappings is None and cursor.fetchone() is None):
                raise DestinationNotFound(destination_id)
            connection.executemany(
                "INSERT INTO activations (destination_id, audience_id, audience_name, origin, "
                "marketo_list_id, list_name, active) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (destination_id, audience_id) DO UPDATE SET "
                "audience_name = excluded.audience_name, origin = excluded.origin, "
                "marketo_list_id = excluded.marketo_list_id, list_name = excluded.list_name, "
                "active = excluded.active",
                [
                    (
                        destination_id,
                        activation.audience_id,
                        activation.audience_name,
                        activation.origin,
                        activation.marketo_list_id,
                        activation.list_name,
                        int(activation.active),
                    )
                    for activation in activations
                ],
            )

        await self._write("upsert_activations", work)

    async def deactivate(self, destination_id: str, audience_ids: Sequence[str]) -> int:
        """Mark those audiences inactive; returns how many were active."""

        def work(connection: sqlite3.Connection) -> int:
            changed = 0
            for chunk in _chunks(audience_ids):
                marks = ", ".join("?" * len(chunk))
                cursor = connection.execute(
                    "UPDATE activations SET active = 0 WHERE destination_id = ? AND active = 1 "
                    f"AND audience_id IN ({marks})",
                    (destination_id, *chunk),
                )
                changed += cursor.rowcount
            return changed

        return await self._write("deactivate", work)

    # -- outbox: append with group commit -------------------------------------------------------

    def append(
        self,
        destination_id: str,
        instance_key: str,
        body: bytes,
        count: int,
        trace_context: str | None = None,
    ) -> asyncio.Future[AppendResult]:
        """Queue a batch for the next group commit; the future resolves once it is durable."""
        if self._closed:
            raise StoreError("the store is closed")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.append(
            _Append(destination_id, instance_key, body, count, trace_context, future)
        )
        self._wakeup.set()
        return future

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
            else:  # rows of outbox_instances are never deleted
                self._instances_known.update(item.instance_key for item in group)
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

    def _take_group(self) -> list[_Append]:
        """The oldest queued appends, up to `max_group_rows` updates (called by the writer thread
        while the event loop appends: deque's append and popleft are thread-safe)."""
        group: list[_Append] = []
        rows = 0
        while self._queue and (not group or rows + self._queue[0].count <= self._max_group_rows):
            item = self._queue.popleft()
            group.append(item)
            rows += item.count
        return group

    def _append_group(
        self, group: Sequence[_Append], connection: sqlite3.Connection
    ) -> list[AppendResult | Exception]:
        """Store the group's batches and count them. Up to `_BATCHES_PER_INSERT` batches go in
        with one statement (each statement hands the GIL back and forth: a commit should take
        few), which the inbox's foreign key refuses whole when a destination was deleted; only
        then, or for a larger group, is each destination looked up first."""
        now = self._now(None)
        ids: list[int | None] | None = None
        if len(group) <= _BATCHES_PER_INSERT:  # one statement: all rows or none
            with contextlib.suppress(sqlite3.IntegrityError):  # the transaction goes on
                ids = list(_insert_batches(connection, group, now))
        if ids is None:
            known = {
                destination_id
                for destination_id in {item.destination_id for item in group}
                if connection.execute(
                    "SELECT 1 FROM destinations WHERE id = ?", (destination_id,)
                ).fetchone()
            }
            stored = iter(
                _insert_batches(
                    connection, [item for item in group if item.destination_id in known], now
                )
            )
            ids = [next(stored) if item.destination_id in known else None for item in group]
        received: Counter[str] = Counter()
        results: list[AppendResult | Exception] = []
        for item, batch_id in zip(group, ids, strict=True):
            if batch_id is None:
                results.append(DestinationNotFound(item.destination_id))
                continue
            received[item.destination_id] += item.count
            results.append(AppendResult(item.count, batch_id))
        hour = now - now % HOUR_US
        for destination_id, count in received.items():
            connection.execute(
                "UPDATE destinations SET pending = pending + ? WHERE id = ?",
                (count, destination_id),
            )
            _add_counts(connection, destination_id, hour, Counts(received=count))
        for instance_key in {item.instance_key for item in group} - self._instances_known:
            connection.execute(
                "INSERT INTO outbox_instances (instance_key) VALUES (?) "
                "ON CONFLICT (instance_key) DO NOTHING",
                (instance_key,),
            )
        return results

    async def unpack(
        self,
        instance_key: str,
        decode: Callable[[bytes], DecodedBatch],
        limit: int,
        *,
        fencing: int | None = None,
        now: datetime | None = None,
        step: int = UNPACK_STEP,
    ) -> int:
        """Move the instance's oldest inbox batches into the outbox while fewer than `limit`
        entries are due, in transactions of about `step` updates (decoding runs in the writer
        thread, inside the transaction)."""
        current = self._now(now)
        hour = current - current % HOUR_US
        step = max(step, 1)

        def work(connection: sqlite3.Connection) -> tuple[int, bool]:
            """One transaction: (entries stored, whether more should follow)."""
            if fencing is not None:
                _check_fencing(connection, {instance_key}, fencing)
            due = connection.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM outbox "
                "WHERE instance_key = ? AND not_before <= ? LIMIT ?)",
                (instance_key, current, limit),
            ).fetchone()[0]
            stored = taken = 0
            empty = False
            duplicates: Counter[str] = Counter()
            failed: Counter[tuple[str, str]] = Counter()
            while due + stored < limit and taken < step:
                batch = connection.execute(
                    "SELECT id, destination_id, count, body, trace_context, enqueued_at "
                    "FROM inbox WHERE instance_key = ? ORDER BY id LIMIT 1",
                    (instance_key,),
                ).fetchone()
                if batch is None:
                    empty = True
                    break
                batch_id, destination_id, count, body, trace_context, enqueued_at = batch
                connection.execute("DELETE FROM inbox WHERE id = ?", (batch_id,))
                decoded = decode(body)
                updates = decoded.updates
                if len(updates) < count:  # a damaged row: fail what does not decode
                    connection.executemany(
                        _FAIL_UPDATE,
                        undecodable_outcomes(
                            destination_id, batch_id, count, decoded, enqueued_at, current
                        ),
                    )
                    failed[destination_id, UNDECODABLE] += count - len(updates)
                known = _known_digests(connection, destination_id, storable_ids(updates))
                sorted_out = sort_batch(
                    destination_id, batch_id, updates, known, enqueued_at, current
                )
                connection.executemany(_FAIL_UPDATE, sorted_out.failures)
                for code, failures in sorted_out.failed.items():
                    failed[destination_id, code] += failures
                fresh = [
                    (
                        destination_id,
                        instance_key,
                        queued.update.update_id,
                        queued.update.profile_id,
                        to_micros(queued.update.event_time),
                        queued.payload,
                        trace_context,
                        enqueued_at,
                        enqueued_at,
                        queued.digest,
                    )
                    for queued in sorted_out.fresh
                ]
                inserted = max(connection.executemany(_INSERT_OUTBOX, fresh).rowcount, 0)
                stored += inserted
                taken += max(count, len(updates))
                duplicates[destination_id] += sorted_out.duplicates + len(fresh) - inserted
            for destination_id, counts in unpacked_counts(duplicates, failed):
                connection.execute(
                    "UPDATE destinations SET pending = pending - ? WHERE id = ?",
                    (counts.duplicates + counts.failed, destination_id),
                )
                _add_counts(connection, destination_id, hour, counts)
            # Stopped at `step` with too few due entries: another transaction follows.
            return stored, not empty and due + stored < limit

        return await in_steps(lambda: self._write("unpack", work))

    # -- outbox: draining -----------------------------------------------------------------------

    async def claim_due(
        self,
        instance_key: str,
        limit: int,
        now: datetime | None = None,
        *,
        after_sequence: int = 0,
        max_bytes: int = CLAIM_MAX_BYTES,
    ) -> list[OutboxEntry]:
        """Up to `limit` due entries of the instance, by sequence, while their payloads come to
        less than `max_bytes` (read through `outbox_due`, row by row, so the scan stops there)."""
        due = self._now(now)

        def work(connection: sqlite3.Connection) -> list[OutboxEntry]:
            rows = connection.execute(
                f"SELECT {OUTBOX_COLUMNS}, length(CAST(payload AS BLOB)) FROM outbox "
                "WHERE instance_key = ? AND sequence > ? AND not_before <= ? "
                "ORDER BY sequence LIMIT ?",
                (instance_key, after_sequence, due, limit),
            )
            entries: list[OutboxEntry] = []
            taken = 0
            for row in rows:
                entries.append(outbox_entry(row))
                taken += row[12]
                if taken >= max_bytes:
                    break
            return entries

        return await self._read(work)

    async def retire(
        self,
        entries: Sequence[OutboxEntry],
        outcomes: Sequence[Outcome],
        watermarks: Sequence[Watermark] = (),
        *,
        fencing: int | None = None,
        now: datetime | None = None,
    ) -> None:
        """Delete entries, store outcomes, raise watermarks, count: all in one transaction."""
        pairs = pair_outcomes(entries, outcomes)
        recorded_at = self._now(now)
        hour = recorded_at - recorded_at % HOUR_US

        def work(connection: sqlite3.Connection) -> None:
            if fencing is not None:
                _check_fencing(connection, {entry.instance_key for entry in entries}, fencing)
            counts: defaultdict[str, Counts] = defaultdict(Counts)
            for entry, given in pairs:
                deleted = connection.execute(
                    "DELETE FROM outbox WHERE sequence = ? RETURNING digest", (entry.sequence,)
                ).fetchone()
                if deleted is None:
                    continue  # retired before (a retried call) or its destination was deleted
                outcome = storable_outcome(given)
                connection.execute(
                    f"INSERT INTO outcomes ({OUTCOME_COLUMNS}, digest) "
                    "VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        entry.destination_id,
                        outcome.update_id,
                        outcome.profile_id,
                        outcome.dedupe_value,
                        to_micros(entry.update.event_time),
                        recorded_at,
                        outcome.kind.value,
                        dumps([[a.type.value, a.audience_id] for a in outcome.actions]),
                        outcome.lead_id,
                        outcome.reason,
                        outcome.marketo_code,
                        outcome.exclusion_code.value if outcome.exclusion_code else "",
                        outcome.field,
                        deleted[0],
                    ),
                )
                count_outcome(counts[entry.destination_id], outcome)
            for destination_id, count in counts.items():
                retired = count.activated + count.excluded + count.failed + count.superseded
                connection.execute(
                    "UPDATE destinations SET pending = pending - ? WHERE id = ?",
                    (retired, destination_id),
                )
                _add_counts(connection, destination_id, hour, count)
            # A destination deleted while its batch was in flight has no watermarks to keep.
            connection.executemany(
                "INSERT INTO profile_watermarks (destination_id, profile_id, event_time) "
                "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM destinations WHERE id = ?) "
                "ON CONFLICT (destination_id, profile_id) DO UPDATE SET "
                "event_time = CASE WHEN excluded.event_time > profile_watermarks.event_time "
                "THEN excluded.event_time ELSE profile_watermarks.event_time END",
                [
                    (
                        watermark.destination_id,
                        watermark.profile_id,
                        to_micros(watermark.event_time),
                        watermark.destination_id,
                    )
                    for watermark in watermarks
                ],
            )

        await self._write("retire", work)

    async def defer(
        self,
        entries: Sequence[OutboxEntry],
        not_before: datetime,
        last_error: str,
        attempts: int | None = None,
        *,
        fencing: int | None = None,
    ) -> None:
        """Postpone entries after a transient failure; `attempts=None` adds one to each."""
        due = to_micros(not_before)

        def work(connection: sqlite3.Connection) -> None:
            if fencing is not None:
                _check_fencing(connection, {entry.instance_key for entry in entries}, fencing)
            connection.executemany(
                "UPDATE outbox SET not_before = ?, last_error = ?, "
                "attempts = COALESCE(?, attempts + 1) WHERE sequence = ?",
                [(due, last_error, attempts, entry.sequence) for entry in entries],
            )

        await self._write("defer", work)

    async def release_deferred(self, destination_id: str, now: datetime | None = None) -> int:
        """Make the destination's deferred outbox entries due now (attempts unchanged)."""
        due = self._now(now)

        def work(connection: sqlite3.Connection) -> int:
            cursor = connection.execute(
                "UPDATE outbox SET not_before = ? WHERE destination_id = ? AND not_before > ?",
                (due, destination_id, due),
            )
            return max(cursor.rowcount, 0)

        return await self._write("release_deferred", work)

    async def watermarks(
        self, destination_id: str, profile_ids: Sequence[str]
    ) -> dict[str, datetime]:
        """Last applied event time per profile (profiles never applied are absent)."""

        def work(connection: sqlite3.Connection) -> dict[str, datetime]:
            found: dict[str, datetime] = {}
            for chunk in _chunks(profile_ids):
                marks = ", ".join("?" * len(chunk))
                rows = connection.execute(
                    "SELECT profile_id, event_time FROM profile_watermarks "
                    f"WHERE destination_id = ? AND profile_id IN ({marks})",
                    (destination_id, *chunk),
                )
                found.update((row[0], from_micros(row[1])) for row in rows)
            return found

        return await self._read(work)

    async def pending_stats(self, destination_id: str) -> PendingStats:
        """Backlog count (a kept counter) and oldest enqueue time (first row of an index)."""
        return await self._read(lambda connection: _pending_stats(connection, destination_id))

    async def instance_keys_with_due_work(self, now: datetime | None = None) -> list[str]:
        """Instances that have at least one due entry."""
        due = self._now(now)

        def work(connection: sqlite3.Connection) -> list[str]:
            rows = connection.execute(
                f"{_INSTANCES_WITH_WORK} ORDER BY instance_key",
                (due,),
            )
            return [row[0] for row in rows]

        return await self._read(work)

    # -- outcomes and dataflow ------------------------------------------------------------------

    async def purge_outcomes(self, recorded_before: datetime, limit: int) -> int:
        before = to_micros(recorded_before)

        def work(connection: sqlite3.Connection) -> int:
            cursor = connection.execute(_PURGE_OUTCOMES, (limit, before))
            return max(cursor.rowcount, 0)

        return await self._write("purge_outcomes", work)

    async def list_outcomes(
        self,
        destination_id: str,
        *,
        profile_id: str | None = None,
        dedupe_value: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
    ) -> Page[OutcomeRecord]:
        """Outcomes of the destination (optionally of one profile or dedupe value), newest first."""
        size = clamp_page_size(page_size)
        scope = [destination_id, profile_id, dedupe_value]
        after = decode_token(page_token, "outcomes", scope, OUTCOMES_POSITION)
        conditions = ["destination_id = ?"]
        params: list[Any] = [destination_id]
        if profile_id is not None:
            conditions.append("profile_id = ?")
            params.append(profile_id)
        if dedupe_value is not None:
            conditions.append("dedupe_value = ?")
            params.append(dedupe_value)
        if after is not None:
            conditions.append("id < ?")
            params.append(after[0])
        sql = (
            f"SELECT {OUTCOME_COLUMNS} FROM outcomes WHERE {' AND '.join(conditions)} "
            "ORDER BY id DESC LIMIT ?"
        )
        params.append(size + 1)

        def work(connection: sqlite3.Connection) -> Page[OutcomeRecord]:
            rows = connection.execute(sql, params).fetchall()
            records = tuple(outcome_record(row) for row in rows[:size])
            token = encode_token("outcomes", scope, [rows[size - 1][0]]) if len(rows) > size else ""
            return Page(records, token)

        return await self._read(work)

    async def dataflow(
        self, destination_id: str, hours: int = 24, now: datetime | None = None
    ) -> Dataflow:
        """Totals over the destination's life and the last `hours` hourly runs, newest first."""
        current = self._now(now)
        current_hour = current - current % HOUR_US
        first_hour = current_hour - (max(hours, 0) - 1) * HOUR_US

        def work(connection: sqlite3.Connection) -> Dataflow:
            row = connection.execute(
                "SELECT paused_until FROM destinations WHERE id = ?", (destination_id,)
            ).fetchone()
            if row is None:
                raise DestinationNotFound(destination_id)
            paused_until = from_micros(row[0]) if row[0] is not None else None
            sums = ", ".join(f"COALESCE(SUM({column}), 0)" for column in COUNT_COLUMNS)
            totals = connection.execute(
                f"SELECT {sums} FROM dataflow_hours WHERE destination_id = ?", (destination_id,)
            ).fetchone()
            total = dict(zip(COUNT_COLUMNS, totals, strict=True))
            reason_rows = connection.execute(reason_totals_sql("?"), (destination_id,)).fetchall()
            by_hour = {
                hour_row[0]: hour_row[1:]
                for hour_row in connection.execute(
                    "SELECT hour_start, received, activated, excluded, failed, superseded "
                    "FROM dataflow_hours WHERE destination_id = ? AND hour_start >= ?",
                    (destination_id, first_hour),
                )
            }
            pending = _pending_stats(connection, destination_id)
            return build_dataflow(
                destination_id,
                total,
                reason_rows,
                by_hour,
                pending,
                current=current,
                hours=range(current_hour, first_hour - 1, -HOUR_US),
                paused_until=paused_until,
            )

        return await self._read(work)

    # -- alerts ---------------------------------------------------------------------------------

    async def raise_alert(
        self,
        destination_id: str,
        type: str,
        message: str,
        *,
        paused_until: datetime | None = None,
        now: datetime | None = None,
    ) -> tuple[AlertRecord, bool]:
        """Open an alert of that type unless one is open; returns (the open alert, newly raised)."""
        raised_at = self._now(now)
        until = to_micros(paused_until) if paused_until is not None else None

        def work(connection: sqlite3.Connection) -> tuple[AlertRecord, bool]:
            if (
                connection.execute(
                    "SELECT 1 FROM destinations WHERE id = ?", (destination_id,)
                ).fetchone()
                is None
            ):
                raise DestinationNotFound(destination_id)
            row = connection.execute(
                "SELECT id FROM alerts WHERE destination_id = ? AND type = ? "
                "AND resolved_at IS NULL",
                (destination_id, type),
            ).fetchone()
            if row is not None:
                connection.execute(
                    "UPDATE alerts SET message = ?, paused_until = ? WHERE id = ?",
                    (message, until, row[0]),
                )
                return _fetch_alert(connection, row[0]), False
            alert_id = "alr_" + secrets.token_hex(10)
            connection.execute(
                f"INSERT INTO alerts ({ALERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, ?)",
                (alert_id, destination_id, type, message, raised_at, until),
            )
            return _fetch_alert(connection, alert_id), True

        return await self._write("raise_alert", work)

    async def resolve_alert(
        self, destination_id: str, type: str, now: datetime | None = None
    ) -> AlertRecord | None:
        """Resolve the open alert of that type; returns it, or None when none was open."""
        resolved_at = self._now(now)

        def work(connection: sqlite3.Connection) -> AlertRecord | None:
            row = connection.execute(
                "SELECT id FROM alerts WHERE destination_id = ? AND type = ? "
                "AND resolved_at IS NULL",
                (destination_id, type),
            ).fetchone()
            if row is None:
                return None
            connection.execute(
                "UPDATE alerts SET resolved_at = ? WHERE id = ?", (resolved_at, row[0])
            )
            return _fetch_alert(connection, row[0])

        return await self._write("resolve_alert", work)

    async def open_alerts(self, destination_id: str) -> list[AlertRecord]:
        """Unresolved alerts, oldest first."""

        def work(connection: sqlite3.Connection) -> list[AlertRecord]:
            rows = connection.execute(
                f"SELECT {ALERT_COLUMNS} FROM alerts WHERE destination_id = ? "
                "AND resolved_at IS NULL ORDER BY raised_at, id",
                (destination_id,),
            )
            return [alert_record(row) for row in rows]

        return await self._read(work)

    # -- leases ---------------------------------------------------------------------------------

    async def acquire_lease(
        self, instance_key: str, holder: str, ttl: timedelta, now: datetime | None = None
    ) -> Lease | None:
        """Take the instance's lease if free, expired or already ours; None if someone holds it."""
        current = self._now(now)
        expires = current + ttl // timedelta(microseconds=1)

        def work(connection: sqlite3.Connection) -> Lease | None:
            _beat(connection, holder, expires)
            row = connection.execute(
                "SELECT holder, generation, expires_at FROM instance_leases WHERE instance_key = ?",
                (instance_key,),
            ).fetchone()
            if row is None:
                generation = 1
                connection.execute(
                    "INSERT INTO instance_leases (instance_key, holder, generation, expires_at) "
                    "VALUES (?, ?, ?, ?)",
                    (instance_key, holder, generation, expires),
                )
            else:
                current_holder, generation, expires_at = row
                held = expires_at > current
                if held and current_holder != holder:
                    return None
                if not held:
                    generation += 1  # a new tenure: the previous holder's token is now stale
                connection.execute(
                    "UPDATE instance_leases SET holder = ?, generation = ?, expires_at = ? "
                    "WHERE instance_key = ?",
                    (holder, generation, expires, instance_key),
                )
            return Lease(instance_key, holder, generation, from_micros(expires))

        return await self._write("acquire_lease", work)

    async def renew_lease(
        self, lease: Lease, ttl: timedelta, now: datetime | None = None
    ) -> Lease | None:
        """Extend a lease we still hold (same holder and generation); None if it was lost."""
        expires = self._now(now) + ttl // timedelta(microseconds=1)

        def work(connection: sqlite3.Connection) -> Lease | None:
            _beat(connection, lease.holder, expires)
            cursor = connection.execute(
                "UPDATE instance_leases SET expires_at = ? "
                "WHERE instance_key = ? AND holder = ? AND generation = ?",
                (expires, lease.instance_key, lease.holder, lease.generation),
            )
            if cursor.rowcount == 0:
                return None
            return Lease(lease.instance_key, lease.holder, lease.generation, from_micros(expires))

        return await self._write("renew_lease", work)

    async def release_lease(self, lease: Lease) -> None:
        """Give the lease up (expire it now) if we still hold it."""

        def work(connection: sqlite3.Connection) -> None:
            connection.execute(
                "UPDATE instance_leases SET expires_at = 0 "
                "WHERE instance_key = ? AND holder = ? AND generation = ?",
                (lease.instance_key, lease.holder, lease.generation),
            )

        await self._write("release_lease", work)

    async def heartbeat_replica(
        self, holder: str, ttl: timedelta, now: datetime | None = None
    ) -> None:
        """Record that replica `holder` is alive until `now + ttl`."""
        expires = self._now(now) + ttl // timedelta(microseconds=1)

        await self._write("heartbeat_replica", lambda c: _beat(c, holder, expires))

    async def fair_share(self, holder: str, now: datetime | None = None) -> int:
        """ceil(instances with due work or a live lease / live replicas), at least 1."""
        current = self._now(now)

        def work(connection: sqlite3.Connection) -> int:
            instances, replicas = connection.execute(
                f"SELECT (SELECT COUNT(*) FROM ({_INSTANCES_WITH_WORK} "
                "UNION SELECT instance_key FROM instance_leases WHERE expires_at > ?)), "
                "(SELECT COUNT(*) FROM replicas WHERE expires_at > ? AND holder <> ?)",
                (current, current, current, holder),
            ).fetchone()
            return max(1, -(-int(instances) // (int(replicas) + 1)))

        return await self._read(work)


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


def _conforms(store: SqliteStore) -> Store:
    return store  # mypy checks SqliteStore against the Store protocol here


# -- row conversion and helpers ---------------------------------------------------------------


_BATCHES_PER_INSERT = 500
"""Rows of one multi-row INSERT into the inbox (6 parameters each; SQLite allows 32,766)."""


def _insert_batches(
    connection: sqlite3.Connection, batches: Sequence[_Append], enqueued_at: int
) -> list[int]:
    """Insert the batches into the inbox, a few hundred rows per statement; their ids in order.

    The rows of one statement get consecutive ids: each new row's id is one more than the
    largest the table has had (AUTOINCREMENT), so the last id gives all of them."""
    ids: list[int] = []
    for start in range(0, len(batches), _BATCHES_PER_INSERT):
        chunk = batches[start : start + _BATCHES_PER_INSERT]
        cursor = connection.execute(
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


def _known_digests(
    connection: sqlite3.Connection, destination_id: str, update_ids: Sequence[str]
) -> dict[str, str | None]:
    """Update id -> content digest of the destination's updates among `update_ids` that are
    queued (outbox) or delivered (outcomes)."""
    found: dict[str, str | None] = {}
    for chunk in _chunks(update_ids):
        marks = ", ".join("?" * len(chunk))
        rows = connection.execute(
            f"SELECT update_id, digest FROM outbox WHERE destination_id = ? "
            f"AND update_id IN ({marks}) UNION ALL SELECT update_id, digest FROM outcomes "
            f"WHERE destination_id = ? AND update_id IN ({marks})",
            (destination_id, *chunk, destination_id, *chunk),
        )
        found.update((row[0], row[1]) for row in rows)
    return found


def _fetch_alert(connection: sqlite3.Connection, alert_id: str) -> AlertRecord:
    row = connection.execute(
        f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?", (alert_id,)
    ).fetchone()
    return alert_record(row)


def _add_counts(
    connection: sqlite3.Connection, destination_id: str, hour: int, counts: Counts
) -> None:
    values = [getattr(counts, column) for column in COUNT_COLUMNS]
    columns = ", ".join(COUNT_COLUMNS)
    marks = ", ".join("?" * len(COUNT_COLUMNS))
    increments = ", ".join(
        f"{column} = dataflow_hours.{column} + excluded.{column}" for column in COUNT_COLUMNS
    )
    connection.execute(
        f"INSERT INTO dataflow_hours (destination_id, hour_start, {columns}) "
        f"VALUES (?, ?, {marks}) "
        f"ON CONFLICT (destination_id, hour_start) DO UPDATE SET {increments}",
        (destination_id, hour, *values),
    )
    for (kind, reason, field), count in counts.reasons.items():
        connection.execute(add_reasons_sql("?"), (destination_id, hour, kind, reason, field, count))


def _check_fencing(connection: sqlite3.Connection, instance_keys: set[str], fencing: int) -> None:
    for instance_key in sorted(instance_keys):
        row = connection.execute(
            "SELECT generation FROM instance_leases WHERE instance_key = ?", (instance_key,)
        ).fetchone()
        current = row[0] if row is not None else None
        if current != fencing:
            raise FencingError(instance_key, fencing, current)


def _beat(connection: sqlite3.Connection, holder: str, expires: int) -> None:
    connection.execute(
        "INSERT INTO replicas (holder, expires_at) VALUES (?, ?) ON CONFLICT (holder) "
        "DO UPDATE SET expires_at = MAX(replicas.expires_at, excluded.expires_at)",
        (holder, expires),
    )


def _pending_stats(connection: sqlite3.Connection, destination_id: str) -> PendingStats:
    row = connection.execute(
        "SELECT pending FROM destinations WHERE id = ?", (destination_id,)
    ).fetchone()
    if row is None:
        raise DestinationNotFound(destination_id)
    # The outbox holds what was unpacked, the inbox what came after: the oldest is in the
    # outbox when it has any entry of the destination.
    oldest = (
        connection.execute(
            "SELECT enqueued_at FROM outbox WHERE destination_id = ? ORDER BY sequence LIMIT 1",
            (destination_id,),
        ).fetchone()
        or connection.execute(
            "SELECT enqueued_at FROM inbox WHERE destination_id = ? ORDER BY id LIMIT 1",
            (destination_id,),
        ).fetchone()
    )
    return PendingStats(row[0], from_micros(oldest[0]) if oldest is not None else None)


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]
