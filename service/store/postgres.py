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

Transactions that hit a deadlock or serialization failure are retried a few times. Every other
behaviour is the `Store` contract, shared with `SqliteStore` (same migrations, same tests).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, errors
from psycopg_pool import AsyncConnectionPool

from service.domain import UNDECODABLE, DecodedBatch, FieldMapping, Outcome
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
from service.store.secrets import SecretBox

__all__ = ["MIGRATION_LOCK", "PostgresStore", "apply_migrations", "is_postgres_url"]

R = TypeVar("R")
Connection = AsyncConnection[tuple[Any, ...]]

MIGRATION_LOCK = 0x6D6B_746F_6D69_6772
"""Key of the session advisory lock held while migrating (any 64-bit constant will do)."""

_RETRIES = 5
_RETRYABLE = (errors.DeadlockDetected, errors.SerializationFailure)


def is_postgres_url(url: str) -> bool:
    """Whether `url` names a PostgreSQL database (`postgresql://` or `postgres://`)."""
    return url.startswith(("postgresql://", "postgres://"))


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def apply_migrations(connection: Connection, migrations: Sequence[Migration]) -> list[int]:
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
                    (migration.version, migration.name, to_micros(_utc_now())),
                )
            done.append(migration.version)
        return done
    finally:
        await connection.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


@dataclass(slots=True)
class _Append:
    destination_id: str
    instance_key: str
    body: bytes
    count: int
    trace_context: str | None
    future: asyncio.Future[AppendResult]


_INSERT_OUTBOX = (
    "INSERT INTO outbox (destination_id, instance_key, update_id, profile_id, event_time, "
    "payload, trace_context, enqueued_at, not_before, digest) "
    "SELECT %s, %s, u.update_id, u.profile_id, u.event_time, u.payload, %s, %s, %s, u.digest "
    "FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[]) WITH ORDINALITY "
    "AS u (update_id, profile_id, event_time, payload, digest, ord) ORDER BY u.ord "
    "ON CONFLICT (destination_id, update_id) DO NOTHING RETURNING sequence"
)

_INSERT_OUTCOMES = (
    "INSERT INTO outcomes (destination_id, update_id, profile_id, dedupe_value, event_time, "
    "recorded_at, kind, actions, lead_id, reason, marketo_code, exclusion_code, "
    "exclusion_field, digest) "
    "SELECT o.destination_id, o.update_id, o.profile_id, o.dedupe_value, o.event_time, %s, "
    "o.kind, o.actions, o.lead_id, o.reason, o.marketo_code, o.exclusion_code, "
    "o.exclusion_field, o.digest "
    "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[], "
    "%s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) "
    "WITH ORDINALITY AS o (destination_id, update_id, profile_id, dedupe_value, event_time, "
    "kind, actions, lead_id, reason, marketo_code, exclusion_code, exclusion_field, digest, ord) "
    "ORDER BY o.ord"
)

_UPSERT_WATERMARKS = (
    "INSERT INTO profile_watermarks (destination_id, profile_id, event_time) "
    "SELECT w.destination_id, w.profile_id, w.event_time "
    "FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS w (destination_id, profile_id, "
    "event_time) WHERE EXISTS (SELECT 1 FROM destinations d WHERE d.id = w.destination_id) "
    "ORDER BY w.destination_id, w.profile_id "
    "ON CONFLICT (destination_id, profile_id) DO UPDATE SET "
    "event_time = GREATEST(profile_watermarks.event_time, excluded.event_time)"
)

_PURGE_OUTCOMES = purge_outcomes("%s")
_FAIL_UPDATE = fail_update("%s")

# Instances with due work, plus those with a live lease; the fair-share numerator.
_BUSY_INSTANCES = (
    f"{instances_with_work('%(now)s')} "
    "UNION SELECT instance_key FROM instance_leases WHERE expires_at > %(now)s"
)


class PostgresStore:
    """The `Store` on PostgreSQL. Open with `await PostgresStore.open(url, box)`."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        box: SecretBox,
        *,
        clock: Callable[[], datetime] = _utc_now,
        max_group_rows: int = 10_000,
        fair_leases: bool = True,
    ) -> None:
        """Prefer `open`, which also creates the pool and migrates."""
        self._pool = pool
        self._box = box
        self._clock = clock
        self._max_group_rows = max_group_rows
        self._fair_leases = fair_leases
        self._listeners: list[CommitListener] = []
        self._queue: deque[_Append] = deque()
        self._wakeup = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        box: SecretBox,
        *,
        clock: Callable[[], datetime] = _utc_now,
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
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            min_size=min_connections,
            max_size=max_connections,
            kwargs={"autocommit": True},
            open=False,
            name="marketo-destination-store",
        )
        await pool.open(wait=True, timeout=30.0)
        store = cls(pool, box, clock=clock, max_group_rows=max_group_rows, fair_leases=fair_leases)
        store._committer = asyncio.create_task(store._commit_loop(), name="store-group-commit")
        return store

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Register a callback run on the event loop after each committed write transaction."""
        self._listeners.append(listener)

    async def close(self) -> None:
        """Commit what is queued, then close the pool."""
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        if self._committer is not None:
            await self._committer
        await self._pool.close()

    async def __aenter__(self) -> PostgresStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- transactions ---------------------------------------------------------------------------

    async def _write(self, name: str, work: Callable[[Connection], Awaitable[R]]) -> R:
        if self._closed:
            raise StoreError("the store is closed")
        result = await self._transaction(work)
        for listener in self._listeners:
            listener(name)
        return result

    async def _transaction(self, work: Callable[[Connection], Awaitable[R]]) -> R:
        for attempt in range(_RETRIES):
            try:
                async with self._pool.connection() as connection, connection.transaction():
                    return await work(connection)
            except _RETRYABLE:
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _read(self, work: Callable[[Connection], Awaitable[R]]) -> R:
        if self._closed:
            raise StoreError("the store is closed")
        async with self._pool.connection() as connection, connection.transaction():
            # One snapshot for every statement of `work`, like SQLite's read transaction.
            await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return await work(connection)

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

        async def work(connection: Connection) -> DestinationRecord:
            await connection.execute(
                f"INSERT INTO destinations ({NEW_DESTINATION_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s, %s, 1)",
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
            return await self._fetch_destination(
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

        async def work(connection: Connection) -> Page[DestinationRecord]:
            if after is None:
                cursor = await connection.execute(
                    f"SELECT {DESTINATION_COLUMNS} FROM destinations WHERE tenant = %s "
                    "ORDER BY created_at, id LIMIT %s",
                    (tenant, size + 1),
                )
            else:
                cursor = await connection.execute(
                    f"SELECT {DESTINATION_COLUMNS} FROM destinations "
                    "WHERE tenant = %s AND (created_at, id) > (%s, %s) "
                    "ORDER BY created_at, id LIMIT %s",
                    (tenant, after[0], after[1], size + 1),
                )
            rows = await cursor.fetchall()
            records = tuple(self._destination(row) for row in rows[:size])
            token = ""
            if len(rows) > size:
                last = rows[size - 1]
                token = encode_token("destinations", [tenant], [last[9], last[0]])
            return Page(records, token)

        return await self._read(work)

    async def update_destination(self, record: DestinationRecord) -> DestinationRecord:
        """Write name, spec, secrets and instance key if `record.version` is current."""
        now = self._now(None)
        client_secret = self._box.seal(record.client_secret)
        webhook_secret = (
            self._box.seal(record.webhook_secret) if record.webhook_secret is not None else None
        )

        async def work(connection: Connection) -> DestinationRecord:
            cursor = await connection.execute(
                "UPDATE destinations SET name = %s, spec = %s, client_secret = %s, "
                "webhook_secret = %s, instance_key = %s, updated_at = %s, version = version + 1 "
                "WHERE id = %s AND tenant = %s AND version = %s",
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
                await self._fetch_destination(connection, record.id, record.tenant)
                raise VersionConflict(record.id, record.version)
            return await self._fetch_destination(connection, record.id, record.tenant)

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

        async def work(connection: Connection) -> None:
            cursor = await connection.execute(
                "UPDATE destinations SET state = %s, paused_until = %s, state_reason = %s "
                "WHERE id = %s",
                (state.value, until, reason, destination_id),
            )
            if cursor.rowcount == 0:
                raise DestinationNotFound(destination_id)

        await self._write("set_destination_state", work)

    async def pause_instance(self, instance_key: str, until: datetime) -> None:
        """Record that the Marketo instance makes no call before `until`; a later pause stays."""
        micros = to_micros(until)

        async def work(connection: Connection) -> None:
            await connection.execute(
                "INSERT INTO instance_pauses (instance_key, paused_until) VALUES (%s, %s) "
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

        async def work(connection: Connection) -> int | None:
            cursor = await connection.execute(
                "SELECT paused_until FROM instance_pauses "
                "WHERE instance_key = %s AND paused_until > %s",
                (instance_key, current),
            )
            row = await cursor.fetchone()
            return None if row is None else int(row[0])

        until = await self._read(work)
        return None if until is None else from_micros(until)

    async def delete_destination(self, destination_id: str, *, tenant: str) -> None:
        """Delete the destination; foreign keys cascade to everything that belongs to it."""

        async def work(connection: Connection) -> None:
            cursor = await connection.execute(
                "DELETE FROM destinations WHERE id = %s AND tenant = %s", (destination_id, tenant)
            )
            if cursor.rowcount == 0:
                raise DestinationNotFound(destination_id)

        await self._write("delete_destination", work)

    async def _fetch_destination(
        self,
        connection: Connection,
        destination_id: str,
        tenant: str | None,
        *,
        columns: str = DESTINATION_COLUMNS,
    ) -> DestinationRecord:
        cursor = await connection.execute(
            f"SELECT {columns} FROM destinations WHERE id = %s", (destination_id,)
        )
        row = await cursor.fetchone()
        if row is None or (tenant is not None and row[1] != tenant):
            raise DestinationNotFound(destination_id)
        return self._destination(row)

    def _destination(self, row: Sequence[Any]) -> DestinationRecord:
        return DestinationRecord(
            id=row[0],
            tenant=row[1],
            name=row[2],
            spec=json.loads(row[3]),
            client_secret=self._box.open(bytes(row[4])),
            webhook_secret=self._box.open(bytes(row[5])) if row[5] is not None else None,
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

        async def work(connection: Connection) -> list[ActivationRecord]:
            cursor = await connection.execute(
                "SELECT audience_id, audience_name, origin, marketo_list_id, list_name, active "
                "FROM activations WHERE destination_id = %s ORDER BY audience_id",
                (destination_id,),
            )
            return [
                ActivationRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]))
                for row in await cursor.fetchall()
            ]

        return await self._read(work)

    async def upsert_activations(
        self,
        destination_id: str,
        activations: Sequence[ActivationRecord],
        mappings: Sequence[FieldMapping] | None = None,
    ) -> None:
        """Insert or replace activations; with `mappings`, also set them and bump the version."""
        now = self._now(None)

        async def work(connection: Connection) -> None:
            if mappings is not None:
                cursor = await connection.execute(
                    "UPDATE destinations SET mappings = %s, updated_at = %s, "
                    "version = version + 1 WHERE id = %s",
                    (dumps_mappings(mappings), now, destination_id),
                )
                found = cursor.rowcount > 0
            else:
                cursor = await connection.execute(
                    "SELECT 1 FROM destinations WHERE id = %s FOR KEY SHARE", (destination_id,)
                )
                found = await cursor.fetchone() is not None
            if not found:
                raise DestinationNotFound(destination_id)
            if not activations:
                return
            async with connection.cursor() as many:
                await many.executemany(
                    "INSERT INTO activations (destination_id, audience_id, audience_name, origin, "
                    "marketo_list_id, list_name, active) VALUES (%s, %s, %s, %s, %s, %s, %s) "
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

        async def work(connection: Connection) -> int:
            cursor = await connection.execute(
                "UPDATE activations SET active = 0 WHERE destination_id = %s AND active = 1 "
                "AND audience_id = ANY(%s)",
                (destination_id, list(audience_ids)),
            )
            return max(cursor.rowcount, 0)

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
                    for listener in self._listeners:
                        listener("append")
                settle_appends([item.future for item in group], results)
            if self._closed:
                return

    def _take_group(self) -> list[_Append]:
        group: list[_Append] = []
        rows = 0
        while self._queue and (not group or rows + self._queue[0].count <= self._max_group_rows):
            item = self._queue.popleft()
            group.append(item)
            rows += item.count
        return group

    async def _append_group(
        self, group: Sequence[_Append], connection: Connection
    ) -> list[AppendResult | Exception]:
        now = self._now(None)
        hour = now - now % HOUR_US
        cursor = await connection.execute(
            "SELECT id FROM destinations WHERE id = ANY(%s)",
            (sorted({item.destination_id for item in group}),),
        )
        known = {row[0] for row in await cursor.fetchall()}
        stored = [item for item in group if item.destination_id in known]
        ids = iter(await _insert_batches(connection, stored, now))
        results: list[AppendResult | Exception] = []
        received: Counter[str] = Counter()
        instances: set[str] = set()
        for item in group:
            if item.destination_id not in known:
                results.append(DestinationNotFound(item.destination_id))
                continue
            received[item.destination_id] += item.count
            instances.add(item.instance_key)
            results.append(AppendResult(item.count, next(ids)))
        # Rows are locked in a fixed order (destinations, then instances, sorted) so concurrent
        # groups of other replicas and retires cannot deadlock with this one.
        for destination_id in sorted(received):
            count = received[destination_id]
            await connection.execute(
                "UPDATE destinations SET pending = pending + %s WHERE id = %s",
                (count, destination_id),
            )
            counts = Counts(received=count)
            await _add_counts(connection, destination_id, hour, counts)
        for instance_key in sorted(instances):
            await connection.execute(
                "INSERT INTO outbox_instances (instance_key) VALUES (%s) "
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
        entries are due, in transactions of about `step` updates."""
        current = self._now(now)
        hour = current - current % HOUR_US
        step = max(step, 1)

        async def work(connection: Connection) -> tuple[int, bool]:
            """One transaction: (entries stored, whether more should follow)."""
            if fencing is not None:
                await _check_fencing(connection, {instance_key}, fencing)
            cursor = await connection.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM outbox "
                "WHERE instance_key = %s AND not_before <= %s LIMIT %s) AS due",
                (instance_key, current, limit),
            )
            row = await cursor.fetchone()
            due = row[0] if row is not None else 0
            stored = taken = 0
            empty = False
            duplicates: Counter[str] = Counter()
            failed: Counter[tuple[str, str]] = Counter()
            while due + stored < limit and taken < step:
                # SKIP LOCKED: a batch still being unpacked by a fenced-out holder is left alone.
                cursor = await connection.execute(
                    "DELETE FROM inbox WHERE id = (SELECT id FROM inbox WHERE instance_key = %s "
                    "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) "
                    "RETURNING id, destination_id, count, body, trace_context, enqueued_at",
                    (instance_key,),
                )
                batch = await cursor.fetchone()
                if batch is None:
                    empty = True
                    break
                batch_id, destination_id, count, body, trace_context, enqueued_at = batch
                decoded = decode(bytes(body))
                updates = decoded.updates
                failures = []
                if len(updates) < count:  # a damaged row: fail what does not decode
                    failures = undecodable_outcomes(
                        destination_id, batch_id, count, decoded, enqueued_at, current
                    )
                    failed[destination_id, UNDECODABLE] += count - len(updates)
                known = await _known_digests(connection, destination_id, storable_ids(updates))
                sorted_out = sort_batch(
                    destination_id, batch_id, updates, known, enqueued_at, current
                )
                failures.extend(sorted_out.failures)
                for code, failures_of_code in sorted_out.failed.items():
                    failed[destination_id, code] += failures_of_code
                if failures:
                    async with connection.cursor() as cursor:
                        await cursor.executemany(_FAIL_UPDATE, failures)
                fresh = sorted_out.fresh
                inserted = 0
                if fresh:
                    cursor = await connection.execute(
                        _INSERT_OUTBOX,
                        (
                            destination_id,
                            instance_key,
                            trace_context,
                            enqueued_at,
                            enqueued_at,
                            [queued.update.update_id for queued in fresh],
                            [queued.update.profile_id for queued in fresh],
                            [to_micros(queued.update.event_time) for queued in fresh],
                            [queued.payload for queued in fresh],
                            [queued.digest for queued in fresh],
                        ),
                        binary=True,
                    )
                    inserted = len(await cursor.fetchall())
                stored += inserted
                taken += max(count, len(updates))
                duplicates[destination_id] += sorted_out.duplicates + len(fresh) - inserted
            # Rows are locked in a fixed order, as append does, so the two cannot deadlock.
            for destination_id, counts in unpacked_counts(duplicates, failed):
                await connection.execute(
                    "UPDATE destinations SET pending = pending - %s WHERE id = %s",
                    (counts.duplicates + counts.failed, destination_id),
                )
                await _add_counts(connection, destination_id, hour, counts)
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
        less than `max_bytes` (read through `outbox_due`). The running total is summed in the
        database from the stored sizes (`octet_length` does not detoast), so only the entries
        taken travel."""
        due = self._now(now)

        async def work(connection: Connection) -> list[OutboxEntry]:
            cursor = await connection.execute(
                f"SELECT {OUTBOX_COLUMNS}, size FROM ("
                f"SELECT {OUTBOX_COLUMNS}, octet_length(payload) AS size, "
                "sum(octet_length(payload)) OVER (ORDER BY sequence) AS running FROM outbox "
                "WHERE instance_key = %s AND sequence > %s AND not_before <= %s "
                "ORDER BY sequence LIMIT %s) AS due "
                "WHERE running - size < %s ORDER BY sequence",
                (instance_key, after_sequence, due, limit, max_bytes),
            )
            return [outbox_entry(row) for row in await cursor.fetchall()]

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
        highest: dict[tuple[str, str], int] = {}
        for watermark in watermarks:
            key = (watermark.destination_id, watermark.profile_id)
            highest[key] = max(highest.get(key, 0), to_micros(watermark.event_time))

        async def work(connection: Connection) -> None:
            if fencing is not None:
                await _check_fencing(connection, {entry.instance_key for entry in entries}, fencing)
            cursor = await connection.execute(
                "DELETE FROM outbox WHERE sequence = ANY(%s) RETURNING sequence, digest",
                (sorted(entry.sequence for entry in entries),),
            )
            deleted: dict[int, str | None] = {row[0]: row[1] for row in await cursor.fetchall()}
            # Entries already retired (a retried call) or of a deleted destination are skipped.
            kept = [
                (entry, storable_outcome(outcome))
                for entry, outcome in pairs
                if entry.sequence in deleted
            ]
            counts: defaultdict[str, Counts] = defaultdict(Counts)
            for entry, outcome in kept:
                count_outcome(counts[entry.destination_id], outcome)
            if kept:
                await connection.execute(
                    _INSERT_OUTCOMES,
                    (
                        recorded_at,
                        [entry.destination_id for entry, _ in kept],
                        [outcome.update_id for _, outcome in kept],
                        [outcome.profile_id for _, outcome in kept],
                        [outcome.dedupe_value for _, outcome in kept],
                        [to_micros(entry.update.event_time) for entry, _ in kept],
                        [outcome.kind.value for _, outcome in kept],
                        [
                            dumps([[a.type.value, a.audience_id] for a in outcome.actions])
                            for _, outcome in kept
                        ],
                        [outcome.lead_id for _, outcome in kept],
                        [outcome.reason for _, outcome in kept],
                        [outcome.marketo_code for _, outcome in kept],
                        [
                            outcome.exclusion_code.value if outcome.exclusion_code else ""
                            for _, outcome in kept
                        ],
                        [outcome.field for _, outcome in kept],
                        [deleted[entry.sequence] for entry, _ in kept],
                    ),
                    binary=True,
                )
            for destination_id in sorted(counts):
                count = counts[destination_id]
                retired = count.activated + count.excluded + count.failed + count.superseded
                await connection.execute(
                    "UPDATE destinations SET pending = pending - %s WHERE id = %s",
                    (retired, destination_id),
                )
                await _add_counts(connection, destination_id, hour, count)
            if highest:
                keys = sorted(highest)
                await connection.execute(
                    _UPSERT_WATERMARKS,
                    (
                        [key[0] for key in keys],
                        [key[1] for key in keys],
                        [highest[key] for key in keys],
                    ),
                    binary=True,
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

        async def work(connection: Connection) -> None:
            if fencing is not None:
                await _check_fencing(connection, {entry.instance_key for entry in entries}, fencing)
            await connection.execute(
                "UPDATE outbox SET not_before = %s, last_error = %s, "
                "attempts = COALESCE(%s::integer, attempts + 1) WHERE sequence = ANY(%s)",
                (due, last_error, attempts, sorted(entry.sequence for entry in entries)),
            )

        await self._write("defer", work)

    async def release_deferred(self, destination_id: str, now: datetime | None = None) -> int:
        """Make the destination's deferred outbox entries due now (attempts unchanged)."""
        due = self._now(now)

        async def work(connection: Connection) -> int:
            cursor = await connection.execute(
                "UPDATE outbox SET not_before = %s WHERE destination_id = %s AND not_before > %s",
                (due, destination_id, due),
            )
            return max(cursor.rowcount, 0)

        return await self._write("release_deferred", work)

    async def watermarks(
        self, destination_id: str, profile_ids: Sequence[str]
    ) -> dict[str, datetime]:
        """Last applied event time per profile (profiles never applied are absent)."""

        async def work(connection: Connection) -> dict[str, datetime]:
            cursor = await connection.execute(
                "SELECT profile_id, event_time FROM profile_watermarks "
                "WHERE destination_id = %s AND profile_id = ANY(%s)",
                (destination_id, list(profile_ids)),
            )
            return {row[0]: from_micros(row[1]) for row in await cursor.fetchall()}

        return await self._read(work)

    async def pending_stats(self, destination_id: str) -> PendingStats:
        """Backlog count (a kept counter) and oldest enqueue time (first row of an index)."""
        return await self._read(lambda connection: _pending_stats(connection, destination_id))

    async def instance_keys_with_due_work(self, now: datetime | None = None) -> list[str]:
        """Instances that have at least one due entry."""
        due = self._now(now)

        async def work(connection: Connection) -> list[str]:
            cursor = await connection.execute(
                f"{instances_with_work('%s')} ORDER BY instance_key",
                (due,),
            )
            return [row[0] for row in await cursor.fetchall()]

        return await self._read(work)

    # -- outcomes and dataflow ------------------------------------------------------------------

    async def purge_outcomes(self, recorded_before: datetime, limit: int) -> int:
        before = to_micros(recorded_before)

        async def work(connection: Connection) -> int:
            cursor = await connection.execute(_PURGE_OUTCOMES, (limit, before))
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
        conditions = ["destination_id = %s"]
        params: list[Any] = [destination_id]
        if profile_id is not None:
            conditions.append("profile_id = %s")
            params.append(profile_id)
        if dedupe_value is not None:
            conditions.append("dedupe_value = %s")
            params.append(dedupe_value)
        if after is not None:
            conditions.append("id < %s")
            params.append(after[0])
        sql = (
            f"SELECT {OUTCOME_COLUMNS} FROM outcomes WHERE {' AND '.join(conditions)} "
            "ORDER BY id DESC LIMIT %s"
        )
        params.append(size + 1)

        async def work(connection: Connection) -> Page[OutcomeRecord]:
            cursor = await connection.execute(sql, params)
            rows = await cursor.fetchall()
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

        async def work(connection: Connection) -> Dataflow:
            cursor = await connection.execute(
                "SELECT paused_until FROM destinations WHERE id = %s", (destination_id,)
            )
            row = await cursor.fetchone()
            if row is None:
                raise DestinationNotFound(destination_id)
            paused_until = from_micros(row[0]) if row[0] is not None else None
            sums = ", ".join(f"COALESCE(SUM({column}), 0)::bigint" for column in COUNT_COLUMNS)
            cursor = await connection.execute(
                f"SELECT {sums} FROM dataflow_hours WHERE destination_id = %s", (destination_id,)
            )
            totals = await cursor.fetchone()
            assert totals is not None
            total = dict(zip(COUNT_COLUMNS, totals, strict=True))
            cursor = await connection.execute(
                reason_totals_sql("%s", "SUM(count)::bigint"), (destination_id,)
            )
            reason_rows = await cursor.fetchall()
            cursor = await connection.execute(
                "SELECT hour_start, received, activated, excluded, failed, superseded "
                "FROM dataflow_hours WHERE destination_id = %s AND hour_start >= %s",
                (destination_id, first_hour),
            )
            by_hour = {hour_row[0]: hour_row[1:] for hour_row in await cursor.fetchall()}
            pending = await _pending_stats(connection, destination_id)
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
        alert_id = "alr_" + secrets.token_hex(10)

        async def work(connection: Connection) -> tuple[AlertRecord, bool]:
            cursor = await connection.execute(
                "SELECT 1 FROM destinations WHERE id = %s FOR KEY SHARE", (destination_id,)
            )
            if await cursor.fetchone() is None:
                raise DestinationNotFound(destination_id)
            # The partial unique index `alerts_open` makes a concurrent raise a no-op insert.
            cursor = await connection.execute(
                f"INSERT INTO alerts ({ALERT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, NULL, %s) "
                "ON CONFLICT (destination_id, type) WHERE resolved_at IS NULL DO NOTHING "
                "RETURNING id",
                (alert_id, destination_id, type, message, raised_at, until),
            )
            if await cursor.fetchone() is not None:
                return await _fetch_alert(connection, alert_id), True
            cursor = await connection.execute(
                "UPDATE alerts SET message = %s, paused_until = %s WHERE destination_id = %s "
                "AND type = %s AND resolved_at IS NULL RETURNING id",
                (message, until, destination_id, type),
            )
            row = await cursor.fetchone()
            assert row is not None
            return await _fetch_alert(connection, row[0]), False

        return await self._write("raise_alert", work)

    async def resolve_alert(
        self, destination_id: str, type: str, now: datetime | None = None
    ) -> AlertRecord | None:
        """Resolve the open alert of that type; returns it, or None when none was open."""
        resolved_at = self._now(now)

        async def work(connection: Connection) -> AlertRecord | None:
            cursor = await connection.execute(
                "UPDATE alerts SET resolved_at = %s WHERE destination_id = %s AND type = %s "
                "AND resolved_at IS NULL RETURNING id",
                (resolved_at, destination_id, type),
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            return await _fetch_alert(connection, row[0])

        return await self._write("resolve_alert", work)

    async def open_alerts(self, destination_id: str) -> list[AlertRecord]:
        """Unresolved alerts, oldest first."""

        async def work(connection: Connection) -> list[AlertRecord]:
            cursor = await connection.execute(
                f"SELECT {ALERT_COLUMNS} FROM alerts WHERE destination_id = %s "
                "AND resolved_at IS NULL ORDER BY raised_at, id",
                (destination_id,),
            )
            return [alert_record(row) for row in await cursor.fetchall()]

        return await self._read(work)

    # -- leases ---------------------------------------------------------------------------------

    async def acquire_lease(
        self, instance_key: str, holder: str, ttl: timedelta, now: datetime | None = None
    ) -> Lease | None:
        """Take the instance's lease if free, expired or already ours; None if someone holds it
        (or, with fair leases, if taking it would put us above our fair share)."""
        current = self._now(now)
        expires = current + ttl // timedelta(microseconds=1)

        async def work(connection: Connection) -> Lease | None:
            await _beat(connection, holder, expires)
            # A placeholder row (generation 0, expired) so there is always a row to lock.
            await connection.execute(
                "INSERT INTO instance_leases (instance_key, holder, generation, expires_at) "
                "VALUES (%s, '', 0, 0) ON CONFLICT (instance_key) DO NOTHING",
                (instance_key,),
            )
            cursor = await connection.execute(
                "SELECT holder, generation, expires_at FROM instance_leases "
                "WHERE instance_key = %s FOR UPDATE",
                (instance_key,),
            )
            row = await cursor.fetchone()
            assert row is not None
            current_holder, generation, expires_at = row
            held = expires_at > current
            if held and current_holder != holder:
                return None
            if not held:
                if self._fair_leases:
                    # One replica's acquisitions one at a time, so its count stays exact.
                    await connection.execute(
                        "SELECT pg_advisory_xact_lock(hashtext(%s))", ("lease-holder:" + holder,)
                    )
                    if await _held(connection, holder, current) >= await _share(
                        connection, holder, current, instance_key
                    ):
                        return None
                generation += 1  # a new tenure: the previous holder's token is now stale
            await connection.execute(
                "UPDATE instance_leases SET holder = %s, generation = %s, expires_at = %s "
                "WHERE instance_key = %s",
                (holder, generation, expires, instance_key),
            )
            return Lease(instance_key, holder, generation, from_micros(expires))

        return await self._write("acquire_lease", work)

    async def renew_lease(
        self, lease: Lease, ttl: timedelta, now: datetime | None = None
    ) -> Lease | None:
        """Extend a lease we still hold (same holder and generation); None if it was lost."""
        expires = self._now(now) + ttl // timedelta(microseconds=1)

        async def work(connection: Connection) -> Lease | None:
            await _beat(connection, lease.holder, expires)
            cursor = await connection.execute(
                "UPDATE instance_leases SET expires_at = %s "
                "WHERE instance_key = %s AND holder = %s AND generation = %s",
                (expires, lease.instance_key, lease.holder, lease.generation),
            )
            if cursor.rowcount == 0:
                return None
            return Lease(lease.instance_key, lease.holder, lease.generation, from_micros(expires))

        return await self._write("renew_lease", work)

    async def release_lease(self, lease: Lease) -> None:
        """Give the lease up (expire it now) if we still hold it."""

        async def work(connection: Connection) -> None:
            await connection.execute(
                "UPDATE instance_leases SET expires_at = 0 "
                "WHERE instance_key = %s AND holder = %s AND generation = %s",
                (lease.instance_key, lease.holder, lease.generation),
            )

        await self._write("release_lease", work)

    async def heartbeat_replica(
        self, holder: str, ttl: timedelta, now: datetime | None = None
    ) -> None:
        """Record that replica `holder` is alive until `now + ttl`."""
        expires = self._now(now) + ttl // timedelta(microseconds=1)

        async def work(connection: Connection) -> None:
            await _beat(connection, holder, expires)

        await self._write("heartbeat_replica", work)

    async def fair_share(self, holder: str, now: datetime | None = None) -> int:
        """ceil(instances with due work or a live lease / live replicas), at least 1."""
        current = self._now(now)
        return await self._read(lambda connection: _share(connection, holder, current, None))


def _conforms(store: PostgresStore) -> Store:
    return store  # mypy checks PostgresStore against the Store protocol here


# -- helpers ----------------------------------------------------------------------------------


async def _insert_batches(
    connection: Connection, batches: Sequence[_Append], enqueued_at: int
) -> list[int]:
    """Insert the batches into the inbox with one statement; their ids, ascending in the order
    of `batches` (taken from the inbox's sequence first, so that no row order is relied on)."""
    if not batches:
        return []
    cursor = await connection.execute(
        "SELECT nextval(pg_get_serial_sequence('inbox', 'id')) FROM generate_series(1, %s)",
        (len(batches),),
    )
    ids = sorted(row[0] for row in await cursor.fetchall())
    await connection.execute(
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


async def _known_digests(
    connection: Connection, destination_id: str, update_ids: Sequence[str]
) -> dict[str, str | None]:
    """Update id -> content digest of the destination's updates among `update_ids` that are
    queued (outbox) or delivered (outcomes)."""
    cursor = await connection.execute(
        "SELECT update_id, digest FROM outbox WHERE destination_id = %s AND update_id = ANY(%s) "
        "UNION ALL SELECT update_id, digest FROM outcomes "
        "WHERE destination_id = %s AND update_id = ANY(%s)",
        (destination_id, list(update_ids), destination_id, list(update_ids)),
    )
    return {row[0]: row[1] for row in await cursor.fetchall()}


async def _add_counts(
    connection: Connection, destination_id: str, hour: int, counts: Counts
) -> None:
    values = [getattr(counts, column) for column in COUNT_COLUMNS]
    columns = ", ".join(COUNT_COLUMNS)
    marks = ", ".join(["%s"] * len(COUNT_COLUMNS))
    increments = ", ".join(
        f"{column} = dataflow_hours.{column} + excluded.{column}" for column in COUNT_COLUMNS
    )
    await connection.execute(
        f"INSERT INTO dataflow_hours (destination_id, hour_start, {columns}) "
        f"VALUES (%s, %s, {marks}) "
        f"ON CONFLICT (destination_id, hour_start) DO UPDATE SET {increments}",
        (destination_id, hour, *values),
    )
    for (kind, reason, field), count in sorted(counts.reasons.items()):
        await connection.execute(
            add_reasons_sql("%s"), (destination_id, hour, kind, reason, field, count)
        )


async def _check_fencing(connection: Connection, instance_keys: set[str], fencing: int) -> None:
    # FOR SHARE: a takeover's UPDATE of the row waits for this transaction, and this one waits
    # for a takeover already under way, so a stale token can never commit.
    cursor = await connection.execute(
        "SELECT instance_key, generation FROM instance_leases WHERE instance_key = ANY(%s) "
        "ORDER BY instance_key FOR SHARE",
        (sorted(instance_keys),),
    )
    generations = {row[0]: row[1] for row in await cursor.fetchall()}
    for instance_key in sorted(instance_keys):
        current = generations.get(instance_key)
        if current != fencing:
            raise FencingError(instance_key, fencing, current)


async def _pending_stats(connection: Connection, destination_id: str) -> PendingStats:
    cursor = await connection.execute(
        "SELECT pending FROM destinations WHERE id = %s", (destination_id,)
    )
    row = await cursor.fetchone()
    if row is None:
        raise DestinationNotFound(destination_id)
    # The outbox holds what was unpacked, the inbox what came after: the oldest is in the
    # outbox when it has any entry of the destination.
    cursor = await connection.execute(
        "SELECT enqueued_at FROM outbox WHERE destination_id = %s ORDER BY sequence LIMIT 1",
        (destination_id,),
    )
    oldest = await cursor.fetchone()
    if oldest is None:
        cursor = await connection.execute(
            "SELECT enqueued_at FROM inbox WHERE destination_id = %s ORDER BY id LIMIT 1",
            (destination_id,),
        )
        oldest = await cursor.fetchone()
    return PendingStats(row[0], from_micros(oldest[0]) if oldest is not None else None)


async def _fetch_alert(connection: Connection, alert_id: str) -> AlertRecord:
    cursor = await connection.execute(
        f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = %s", (alert_id,)
    )
    row = await cursor.fetchone()
    assert row is not None
    return alert_record(row)


async def _beat(connection: Connection, holder: str, expires: int) -> None:
    await connection.execute(
        "INSERT INTO replicas (holder, expires_at) VALUES (%s, %s) ON CONFLICT (holder) "
        "DO UPDATE SET expires_at = GREATEST(replicas.expires_at, excluded.expires_at)",
        (holder, expires),
    )


async def _held(connection: Connection, holder: str, now: int) -> int:
    cursor = await connection.execute(
        "SELECT COUNT(*) FROM instance_leases WHERE holder = %s AND expires_at > %s",
        (holder, now),
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def _share(connection: Connection, holder: str, now: int, wanted: str | None) -> int:
    """ceil(busy instances (and `wanted`) / live replicas (and `holder`)), at least 1."""
    extra = " UNION SELECT %(wanted)s" if wanted is not None else ""
    cursor = await connection.execute(
        f"SELECT (SELECT COUNT(*) FROM ({_BUSY_INSTANCES}{extra}) busy), "
        "(SELECT COUNT(*) FROM replicas WHERE expires_at > %(now)s AND holder <> %(holder)s)",
        {"now": now, "wanted": wanted, "holder": holder},
    )
    row = await cursor.fetchone()
    assert row is not None
    instances, others = int(row[0]), int(row[1])
    return max(1, -(-instances // (others + 1)))
