"""The durable store, written once: every query and the transaction logic both engines run.

`Store` is what the use cases, the delivery and the tests type against: its methods are the
queries, run against `Connection`, a small interface over one transaction's database connection.
Its records and errors are in `service.store.base`. The engines (`service.store.sqlite`,
`service.store.postgres`) subclass it and supply only what really differs: how a transaction is
run (SQLite's writer thread and group commit, PostgreSQL's pool and retries), and a `Connection`
that knows its engine's placeholders, list parameters, bulk inserts, row locks and the two
queries that are faster written apart (the inbox insert and the claim).

The shared code is written as coroutines. On PostgreSQL each `await` is real I/O; SQLite's
connection answers at once, so its writer thread runs the same coroutine to completion without an
event loop (`service.store.sqlite.complete`). SQL is written with `?` placeholders.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from abc import ABC, abstractmethod
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Collection, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol, TypeVar

from service.domain import (
    HOLDER_RESOLVED,
    UNDECODABLE,
    DecodedBatch,
    DesiredMember,
    DesiredState,
    FieldMapping,
    ListReconciliation,
    MembershipMark,
    MembershipStatus,
    Outcome,
    OutcomeKind,
    ProfileState,
    ProfileUpdate,
    UnappliedAttributes,
    dedupe_key,
)
from service.store.base import (
    CLAIM_MAX_BYTES,
    UNPACK_STEP,
    ActivationRecord,
    AlertRecord,
    AppendResult,
    Backlog,
    CommitListener,
    Dataflow,
    DestinationNotFound,
    DestinationRecord,
    DestinationState,
    FencingError,
    Lease,
    MembershipHolder,
    MembershipWatermark,
    NewDestination,
    OutboxEntry,
    OutcomeRecord,
    Page,
    PendingStats,
    ProfileStateRow,
    ResyncSource,
    StoreError,
    UnappliedRow,
    VersionConflict,
    Watermark,
    in_steps,
)
from service.store.migrations import Migration
from service.store.rows import (
    ALERT_COLUMNS,
    COUNT_COLUMNS,
    DEFAULT_PAGE_SIZE,
    DESTINATION_COLUMNS,
    DESTINATIONS_POSITION,
    HOUR_US,
    NEW_DESTINATION_COLUMNS,
    OUTCOME_COLUMNS,
    OUTCOMES_POSITION,
    Counts,
    FailedUpdate,
    alert_record,
    build_dataflow,
    clamp_page_size,
    count_outcome,
    decode_token,
    destination_record,
    dumps,
    dumps_mappings,
    encode_token,
    from_micros,
    outbox_entry,
    outbox_payload,
    outcome_record,
    pair_outcomes,
    sort_batch,
    spec_json,
    storable_ids,
    storable_outcome,
    to_micros,
    undecodable_outcomes,
    unpacked_counts,
)
from service.store.secrets import SecretBox

__all__ = ["Column", "Connection", "PendingAppend", "Rows", "Store", "utc_now"]

R = TypeVar("R")
Row = tuple[Any, ...]
Column = tuple[str, str]
"""A column of a bulk insert: its name and its PostgreSQL type (for typed array parameters)."""


def utc_now() -> datetime:
    """The engines' default clock: the current time, in UTC."""
    return datetime.now(UTC)


class Rows(Protocol):
    """What a statement returned."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """One transaction's connection, adapted by an engine."""

    for_update: str
    """A row-locking suffix (" FOR UPDATE"), empty where the writer is alone (SQLite)."""
    for_share: str
    for_key_share: str
    holder_lock: str
    """A statement serializing one holder's lease acquisitions (parameter: a key), or empty."""
    not_printable_ascii: str
    """A condition on the column before it: the text holds a character outside printable
    ASCII."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        """Run one statement (`?` placeholders)."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per row of parameters."""
        ...

    async def insert_many(
        self, table: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]], tail: str = ""
    ) -> int:
        """Insert `rows` in their order (`tail`: an ON CONFLICT clause); how many went in."""
        ...

    def in_lists(self, values: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
        """`values` as (`IN`-like SQL condition, its parameters), in as many parts as the engine
        needs; nothing for no values."""
        ...

    async def insert_batches(self, batches: Sequence[PendingAppend], enqueued_at: int) -> list[int]:
        """Insert the batches into the inbox; their ids, ascending in the order of `batches`."""
        ...

    async def claim(
        self, instance_key: str, after_sequence: int, due: int, limit: int, max_bytes: int
    ) -> Rows:
        """The due entries `claim_due` reads: `OUTBOX_COLUMNS` and the payload's size, by
        priority (live first), then sequence (the engine may stop once the sizes reach
        `max_bytes`)."""
        ...


@dataclass(slots=True)
class PendingAppend:
    """An appended batch waiting for its group commit."""

    destination_id: str
    instance_key: str
    body: bytes
    count: int
    trace_context: str | None
    future: asyncio.Future[AppendResult]


@dataclass(frozen=True, slots=True)
class InboxBatch:
    """An inbox row that `unpack` takes."""

    id: int
    destination_id: str
    count: int
    body: bytes
    trace_context: str | None
    enqueued_at: int


# -- statements ---------------------------------------------------------------------------------

INSTANCES_WITH_WORK = (
    "SELECT instance_key FROM outbox_instances i WHERE EXISTS (SELECT 1 FROM outbox o "
    "WHERE o.instance_key = i.instance_key AND o.not_before <= ?) "
    "OR EXISTS (SELECT 1 FROM inbox b WHERE b.instance_key = i.instance_key)"
)
"""The instance keys that have work (parameter: now): a due outbox entry or an inbox batch."""

# Deletes, among the outcomes whose ids are within the first parameter of the oldest one, those
# recorded before the second. Ids grow with time, so this takes the oldest outcomes through the
# primary key, however many there are.
PURGE_OUTCOMES = (
    "DELETE FROM outcomes WHERE id IN (SELECT id FROM outcomes "
    "WHERE id < (SELECT MIN(id) FROM outcomes) + ? AND recorded_at < ?)"
)

FAILED_COLUMNS: tuple[Column, ...] = (
    ("destination_id", "text"),
    ("update_id", "text"),
    ("profile_id", "text"),
    ("event_time", "bigint"),
    ("recorded_at", "bigint"),
    ("reason", "text"),
    ("marketo_code", "text"),
    ("kind", "text"),
    ("actions", "text"),
)
"""An update that fails before delivery (`FailedUpdate`, then kind and actions) as an outcome;
an outcome already recorded for the update is kept."""
FAILED_TAIL = "ON CONFLICT (destination_id, update_id) DO NOTHING"

OUTBOX_INSERT: tuple[Column, ...] = (
    ("destination_id", "text"),
    ("instance_key", "text"),
    ("update_id", "text"),
    ("profile_id", "text"),
    ("event_time", "bigint"),
    ("payload", "text"),
    ("trace_context", "text"),
    ("enqueued_at", "bigint"),
    ("not_before", "bigint"),
    ("digest", "text"),
)

RESYNC_INSERT: tuple[Column, ...] = (*OUTBOX_INSERT, ("priority", "integer"))
RESYNC_PRIORITY = 1
"""The outbox priority of resync work: claimed after every due live entry (priority 0)."""

RESYNC_SOURCE_INSERT: tuple[Column, ...] = (
    ("destination_id", "text"),
    ("profile_id", "text"),
    ("event_time", "bigint"),
    ("payload", "text"),
    ("recorded_at", "bigint"),
    ("applied", "integer"),
)
RESYNC_SOURCE_TAIL = (
    "ON CONFLICT (destination_id, profile_id) DO UPDATE SET "
    "event_time = excluded.event_time, payload = excluded.payload, "
    "recorded_at = excluded.recorded_at, applied = excluded.applied "
    "WHERE excluded.event_time >= resync_sources.event_time"
)
MARK_SOURCE_APPLIED = (
    "UPDATE resync_sources SET applied = 1 "
    "WHERE destination_id = ? AND profile_id = ? AND applied = 0 AND event_time <= ?"
)
PURGE_RESYNC_SOURCES = (
    "DELETE FROM resync_sources WHERE (destination_id, profile_id) IN "
    "(SELECT destination_id, profile_id FROM resync_sources WHERE recorded_at < ? "
    "ORDER BY recorded_at LIMIT ?)"
)

OUTCOME_INSERT: tuple[Column, ...] = (
    ("destination_id", "text"),
    ("update_id", "text"),
    ("profile_id", "text"),
    ("dedupe_value", "text"),
    ("event_time", "bigint"),
    ("recorded_at", "bigint"),
    ("kind", "text"),
    ("actions", "text"),
    ("lead_id", "bigint"),
    ("reason", "text"),
    ("marketo_code", "text"),
    ("exclusion_code", "text"),
    ("exclusion_field", "text"),
    ("digest", "text"),
    ("kept_fields", "text"),
    ("dedupe_key", "text"),
)

WATERMARK_INSERT: tuple[Column, ...] = (
    ("destination_id", "text"),
    ("profile_id", "text"),
    ("event_time", "bigint"),
)
WATERMARK_TAIL = (
    "ON CONFLICT (destination_id, profile_id) DO UPDATE SET event_time = CASE "
    "WHEN excluded.event_time > profile_watermarks.event_time THEN excluded.event_time "
    "ELSE profile_watermarks.event_time END"
)

MEMBERSHIP_MARK_INSERT: tuple[Column, ...] = (
    ("destination_id", "text"),
    ("profile_id", "text"),
    ("audience_id", "text"),
    ("status", "text"),
    ("event_time", "bigint"),
)
MEMBERSHIP_MARK_TAIL = (
    "ON CONFLICT (destination_id, profile_id, audience_id) DO UPDATE SET "
    "status = excluded.status, event_time = excluded.event_time "
    "WHERE excluded.event_time >= membership_marks.event_time"
)

SET_HOLDER = (
    "UPDATE membership_marks SET lead_id = ?, holder_unconfirmed = ? "
    "WHERE destination_id = ? AND profile_id = ? AND audience_id = ?"
)

PROFILE_STATE_INSERT: tuple[Column, ...] = (
    ("destination_id", "text"),
    ("profile_id", "text"),
    ("dedupe_value", "text"),
    ("dedupe_key", "text"),
    ("lead_id", "bigint"),
    ("digest", "text"),
    ("consent_refused", "integer"),
)
PROFILE_STATE_TAIL = (
    "ON CONFLICT (destination_id, profile_id) DO UPDATE SET "
    "dedupe_value = excluded.dedupe_value, dedupe_key = excluded.dedupe_key, "
    "lead_id = excluded.lead_id, digest = excluded.digest, "
    "consent_refused = excluded.consent_refused"
)

UPSERT_ACTIVATION = (
    "INSERT INTO activations (destination_id, audience_id, audience_name, origin, "
    "marketo_list_id, list_name, active, created_by_service, holders_tracked) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (destination_id, audience_id) DO UPDATE SET "
    "audience_name = excluded.audience_name, origin = excluded.origin, "
    "marketo_list_id = excluded.marketo_list_id, list_name = excluded.list_name, "
    "active = excluded.active, created_by_service = excluded.created_by_service, "
    "holders_tracked = excluded.holders_tracked"
)

ADD_COUNTS = (
    f"INSERT INTO dataflow_hours (destination_id, hour_start, {', '.join(COUNT_COLUMNS)}) "
    f"VALUES (?, ?, {', '.join('?' * len(COUNT_COLUMNS))}) "
    "ON CONFLICT (destination_id, hour_start) DO UPDATE SET "
    + ", ".join(
        f"{column} = dataflow_hours.{column} + excluded.{column}" for column in COUNT_COLUMNS
    )
)

ADD_INSTANCE = (
    "INSERT INTO outbox_instances (instance_key) VALUES (?) ON CONFLICT (instance_key) DO NOTHING"
)
"""Record an instance that has work (parameter: its key); its row is never deleted."""

ADD_REASONS = (
    "INSERT INTO dataflow_reasons (destination_id, hour_start, kind, reason, field, count) "
    "VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (destination_id, hour_start, kind, reason, field) "
    "DO UPDATE SET count = dataflow_reasons.count + excluded.count"
)

TOTALS = "SELECT {} FROM dataflow_hours WHERE destination_id = ?".format(
    ", ".join(f"CAST(COALESCE(SUM({column}), 0) AS BIGINT)" for column in COUNT_COLUMNS)
)

REASON_TOTALS = (
    "SELECT kind, reason, field, CAST(SUM(count) AS BIGINT) FROM dataflow_reasons "
    "WHERE destination_id = ? GROUP BY kind, reason, field ORDER BY kind, reason, field"
)

# The oldest inbox batches of an instance up to a number of updates: the running count is
# summed over ids and counts only, so only the batches taken are read whole.
NEXT_BATCHES = (
    "SELECT b.id, b.destination_id, b.count, b.body, b.trace_context, b.enqueued_at "
    "FROM inbox b JOIN (SELECT id, SUM(count) OVER (ORDER BY id) - count AS before "
    "FROM inbox WHERE instance_key = ? ORDER BY id LIMIT ?) AS w ON w.id = b.id "
    "WHERE w.before < ? ORDER BY b.id"
)


REKEY_MIGRATION = "dedupe_key_rekey"
"""The migration whose data step is `Store.rekey_legacy_dedupe_keys`."""


class Store(ABC):
    """The durable store: destinations, activations, the outbox, outcomes, metrics, alerts, leases.

    Every query is written here once; an engine's subclass (`SqliteStore`, `PostgresStore`) runs
    transactions and group commits (`_write`, `_read`, `_commit_loop`) and closes its
    connections (`close`). Every public method but `append` and `add_commit_listener` is a
    coroutine; blocking database work runs off the event loop.

    Conventions of every method:

    - Times are timezone-aware UTC `datetime`s; naive ones are taken as UTC. They are stored as
      integer microseconds since the epoch, so ordering and comparison are exact in both engines.
    - Secrets are passed and returned in plain text (in the destination's `DestinationSpec`, whose
      fields that hold them have `repr=False`) and sealed at rest by the store's `SecretBox`.
    - Another tenant's destination is simply not found.
    - Page tokens are opaque strings; an empty token is the first page, an empty
      `next_page_token` means the last page.
    """

    def __init__(
        self,
        box: SecretBox,
        clock: Callable[[], datetime],
        *,
        max_group_rows: int,
        fair_leases: bool,
    ) -> None:
        self._box = box
        self._clock = clock
        self._max_group_rows = max_group_rows
        self._fair_leases = fair_leases
        self._listeners: list[CommitListener] = []
        self._queue: deque[PendingAppend] = deque()
        self._instances_known: set[str] = set()
        """Instance keys known to be in outbox_instances (whose rows are never deleted)."""
        self._wakeup = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._closed = False

    # -- what an engine supplies ----------------------------------------------------------------

    @abstractmethod
    async def _write(self, name: str, work: Callable[[Connection], Coroutine[Any, Any, R]]) -> R:
        """Run `work` in a write transaction, then tell the commit listeners `name`."""

    @abstractmethod
    async def _read(self, work: Callable[[Connection], Coroutine[Any, Any, R]]) -> R:
        """Run `work` in a read transaction: every statement sees the same commit."""

    @abstractmethod
    async def _commit_loop(self) -> None:
        """Commit queued appends (`_take_group`, `_append_group`) until the store closes."""

    # -- lifecycle ------------------------------------------------------------------------------

    @abstractmethod
    async def close(self) -> None:
        """Finish pending appends and close every connection."""

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Register a callback run after each committed write transaction."""
        self._listeners.append(listener)

    async def _after_migrations(self, migrations: Sequence[Migration]) -> None:
        """Data steps of the applied `migrations` that SQL alone cannot do."""
        if any(m.name == REKEY_MIGRATION for m in migrations):
            await self.rekey_legacy_dedupe_keys()

    async def rekey_legacy_dedupe_keys(self) -> int:
        """Once, after migration 0015: give the outcomes that migration 0010 keyed with SQL's
        lower(trim()) the planner's key (`dedupe_key`) where the two differ, i.e. values holding a
        character outside printable ASCII (few in practice); returns how many were re-keyed."""

        async def pending(c: Connection) -> bool:
            return bool(list(await c.execute("SELECT pending FROM dedupe_rekey_pending")))

        if not await self._read(pending):
            return 0  # every open after the first: a read, no write transaction

        async def work(c: Connection) -> int:
            if not await pending(c):
                return 0
            rows = await c.execute(
                "SELECT id, dedupe_value, dedupe_key FROM outcomes "
                f"WHERE dedupe_value IS NOT NULL AND dedupe_value {c.not_printable_ascii}"
            )
            changed = [
                (dedupe_key(value), key_id)
                for key_id, value, key in rows
                if dedupe_key(value) != key
            ]
            if changed:
                await c.executemany("UPDATE outcomes SET dedupe_key = ? WHERE id = ?", changed)
            await c.execute("DELETE FROM dedupe_rekey_pending")
            return len(changed)

        return await self._write("rekey_legacy_dedupe_keys", work)

    def _start_committing(self) -> None:
        self._committer = asyncio.create_task(self._commit_loop(), name="store-group-commit")

    async def _stop_committing(self) -> bool:
        """Refuse new work and commit what is queued; False when the store was closed before."""
        if self._closed:
            return False
        self._closed = True
        self._wakeup.set()
        if self._committer is not None:
            await self._committer
        return True

    def _notify(self, name: str) -> None:
        for listener in self._listeners:
            listener(name)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def _now(self, now: datetime | None) -> int:
        return to_micros(now if now is not None else self._clock())

    # -- destinations ---------------------------------------------------------------------------

    async def create_destination(self, new: NewDestination) -> DestinationRecord:
        """Store a new destination (id `dst_…`, version 1, state ACTIVE)."""
        destination_id = "dst_" + secrets.token_hex(10)
        now = self._now(None)
        sealed = self._seal(new.spec.connection.client_secret, new.spec.alerts.webhook_secret)

        async def work(c: Connection) -> DestinationRecord:
            await c.execute(
                f"INSERT INTO destinations ({NEW_DESTINATION_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, 1)",
                (
                    destination_id,
                    new.tenant,
                    new.name,
                    dumps(spec_json(new.spec)),
                    *sealed,
                    new.instance_key,
                    DestinationState.ACTIVE.value,
                    now,
                    now,
                    dumps_mappings(new.mappings),
                ),
            )
            # A new destination has no state reason to read.
            return await self._fetch_destination(
                c, destination_id, None, columns=NEW_DESTINATION_COLUMNS
            )

        return await self._write("create_destination", work)

    async def get_destination(
        self, destination_id: str, *, tenant: str | None
    ) -> DestinationRecord:
        """Return the destination; `tenant=None` only for internal callers (dispatcher).

        Raises DestinationNotFound when missing or in another tenant.
        """
        return await self._read(
            partial(self._fetch_destination, destination_id=destination_id, tenant=tenant)
        )

    async def list_destinations(
        self, tenant: str, *, page_size: int = DEFAULT_PAGE_SIZE, page_token: str = ""
    ) -> Page[DestinationRecord]:
        """The tenant's destinations, oldest first."""
        size = clamp_page_size(page_size)
        after = decode_token(page_token, "destinations", [tenant], DESTINATIONS_POSITION)
        condition, params = ("", ()) if after is None else (" AND (created_at, id) > (?, ?)", after)

        async def work(c: Connection) -> Page[DestinationRecord]:
            rows = (
                await c.execute(
                    f"SELECT {DESTINATION_COLUMNS} FROM destinations WHERE tenant = ?{condition} "
                    "ORDER BY created_at, id LIMIT ?",
                    (tenant, *params, size + 1),
                )
            ).fetchall()
            records = tuple(destination_record(row, self._box) for row in rows[:size])
            token = ""
            if len(rows) > size:
                last = rows[size - 1]
                token = encode_token("destinations", [tenant], [last[9], last[0]])
            return Page(records, token)

        return await self._read(work)

    async def update_destination(self, record: DestinationRecord) -> DestinationRecord:
        """Write name, spec, secrets and instance key if `record.version` is current.

        Returns the stored record (version + 1). Raises DestinationNotFound or VersionConflict.
        Mappings change through `upsert_activations`, state through `set_destination_state`.
        """
        now = self._now(None)
        sealed = self._seal(record.spec.connection.client_secret, record.spec.alerts.webhook_secret)

        async def work(c: Connection) -> DestinationRecord:
            cursor = await c.execute(
                "UPDATE destinations SET name = ?, spec = ?, client_secret = ?, "
                "webhook_secret = ?, instance_key = ?, updated_at = ?, version = version + 1 "
                "WHERE id = ? AND tenant = ? AND version = ?",
                (
                    record.name,
                    dumps(spec_json(record.spec)),
                    *sealed,
                    record.instance_key,
                    now,
                    record.id,
                    record.tenant,
                    record.version,
                ),
            )
            if cursor.rowcount == 0:
                # Raises DestinationNotFound when it is gone (or another tenant's).
                await self._fetch_destination(c, record.id, record.tenant)
                raise VersionConflict(record.id, record.version)
            return await self._fetch_destination(c, record.id, record.tenant)

        return await self._write("update_destination", work)

    def _seal(self, client_secret: str, webhook_secret: str) -> tuple[bytes, bytes | None]:
        """The secrets as stored (no webhook secret is NULL)."""
        return self._box.seal(client_secret), (
            self._box.seal(webhook_secret) if webhook_secret else None
        )

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

        async def work(c: Connection) -> None:
            cursor = await c.execute(
                "UPDATE destinations SET state = ?, paused_until = ?, state_reason = ? "
                "WHERE id = ?",
                (state.value, until, reason, destination_id),
            )
            if cursor.rowcount == 0:
                raise DestinationNotFound(destination_id)

        await self._write("set_destination_state", work)

    async def pause_instance(self, instance_key: str, until: datetime) -> None:
        """Record that the Marketo instance makes no call before `until` (its daily quota is
        spent); an existing later pause is kept."""
        micros = to_micros(until)

        async def work(c: Connection) -> None:
            await c.execute(
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
        """When the instance's recorded pause ends, if that is after `now` (default: the
        store's clock)."""
        current = self._now(now)

        async def work(c: Connection) -> Any:
            return (
                await c.execute(
                    "SELECT paused_until FROM instance_pauses "
                    "WHERE instance_key = ? AND paused_until > ?",
                    (instance_key, current),
                )
            ).fetchone()

        row = await self._read(work)
        return None if row is None else from_micros(row[0])

    async def delete_destination(self, destination_id: str, *, tenant: str) -> None:
        """Delete the destination and its activations, outbox rows, outcomes, counters, alerts
        (foreign keys cascade to everything that belongs to it).

        Raises DestinationNotFound.
        """

        async def work(c: Connection) -> None:
            cursor = await c.execute(
                "DELETE FROM destinations WHERE id = ? AND tenant = ?", (destination_id, tenant)
            )
            if cursor.rowcount == 0:
                raise DestinationNotFound(destination_id)

        await self._write("delete_destination", work)

    async def _fetch_destination(
        self,
        c: Connection,
        destination_id: str,
        tenant: str | None,
        *,
        columns: str = DESTINATION_COLUMNS,
    ) -> DestinationRecord:
        row = (
            await c.execute(f"SELECT {columns} FROM destinations WHERE id = ?", (destination_id,))
        ).fetchone()
        if row is None or (tenant is not None and row[1] != tenant):
            raise DestinationNotFound(destination_id)
        return destination_record(row, self._box)

    # -- activations ----------------------------------------------------------------------------

    async def activations(self, destination_id: str) -> list[ActivationRecord]:
        """Every activation of the destination (active or not), by audience id."""
        return (await self.activations_of([destination_id]))[destination_id]

    async def activations_of(
        self, destination_ids: Sequence[str]
    ) -> dict[str, list[ActivationRecord]]:
        """Every activation of each destination (active or not), by audience id, in one read;
        a destination with none (or unknown) maps to an empty list."""

        async def work(c: Connection) -> dict[str, list[ActivationRecord]]:
            found: dict[str, list[ActivationRecord]] = {d: [] for d in destination_ids}
            for condition, params in c.in_lists(sorted(found)):
                rows = await c.execute(
                    "SELECT destination_id, audience_id, audience_name, origin, marketo_list_id, "
                    "list_name, active, created_by_service, holders_tracked FROM activations "
                    f"WHERE destination_id {condition} ORDER BY destination_id, audience_id",
                    params,
                )
                for row in rows:
                    found[row[0]].append(
                        ActivationRecord(
                            row[1],
                            row[2],
                            row[3],
                            row[4],
                            row[5],
                            bool(row[6]),
                            bool(row[7]),
                            bool(row[8]),
                        )
                    )
            return found

        return await self._read(work)

    async def upsert_activations(
        self,
        destination_id: str,
        activations: Sequence[ActivationRecord],
        mappings: Sequence[FieldMapping] | None = None,
    ) -> None:
        """Insert or replace activations by audience id; with `mappings`, also set them and
        bump the version.

        One transaction. Raises DestinationNotFound. The version bump makes a concurrent
        Configure that read the old record fail with VersionConflict instead of working on a
        stale view.
        """
        now = self._now(None)

        async def work(c: Connection) -> None:
            if mappings is not None:
                cursor = await c.execute(
                    "UPDATE destinations SET mappings = ?, updated_at = ?, version = version + 1 "
                    "WHERE id = ?",
                    (dumps_mappings(mappings), now, destination_id),
                )
                found = cursor.rowcount > 0
            else:
                found = await _lock_destination(c, destination_id)
            if not found:
                raise DestinationNotFound(destination_id)
            if activations:
                await c.executemany(
                    UPSERT_ACTIVATION,
                    [
                        (
                            destination_id,
                            activation.audience_id,
                            activation.audience_name,
                            activation.origin,
                            activation.marketo_list_id,
                            activation.list_name,
                            int(activation.active),
                            int(activation.created_by_service),
                            int(activation.holders_tracked),
                        )
                        for activation in activations
                    ],
                )

        await self._write("upsert_activations", work)

    async def deactivate(self, destination_id: str, audience_ids: Sequence[str]) -> int:
        """Mark those audiences inactive; returns how many were active. Their lists stay
        recorded, so a later Activate of the audience reuses them."""

        async def work(c: Connection) -> int:
            changed = 0
            for condition, params in c.in_lists(audience_ids):
                cursor = await c.execute(
                    "UPDATE activations SET active = 0 WHERE destination_id = ? AND active = 1 "
                    f"AND audience_id {condition}",
                    (destination_id, *params),
                )
                changed += max(cursor.rowcount, 0)
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
        """Queue a batch of `count` encoded updates for the next group commit; the returned
        future resolves once it is durable (or with DestinationNotFound). Batches are committed
        in the order of the calls.

        The batch goes to the inbox as it is, one row (ingest never converts an update); the
        drainer of the instance unpacks it into outbox entries (`unpack`) when it needs them.
        Counts "received" and pending. Raises StoreError at once when the store is closed.
        """
        self._check_open()
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.append(
            PendingAppend(destination_id, instance_key, body, count, trace_context, future)
        )
        self._wakeup.set()
        return future

    def _take_group(self) -> list[PendingAppend]:
        """The oldest queued appends, up to `max_group_rows` updates (SQLite calls this from its
        writer thread while the event loop appends: deque's append and popleft are
        thread-safe)."""
        group: list[PendingAppend] = []
        rows = 0
        while self._queue and (not group or rows + self._queue[0].count <= self._max_group_rows):
            item = self._queue.popleft()
            group.append(item)
            rows += item.count
        return group

    async def _append_group(
        self, group: Sequence[PendingAppend], c: Connection
    ) -> list[AppendResult | Exception]:
        """Store the group's batches in the inbox and count them (one transaction)."""
        now = self._now(None)
        known: set[str] = set()
        for condition, params in c.in_lists(sorted({item.destination_id for item in group})):
            rows = await c.execute(f"SELECT id FROM destinations WHERE id {condition}", params)
            known.update(row[0] for row in rows)
        ids = iter(
            await c.insert_batches([item for item in group if item.destination_id in known], now)
        )
        results: list[AppendResult | Exception] = []
        received: Counter[str] = Counter()
        for item in group:
            if item.destination_id not in known:
                results.append(DestinationNotFound(item.destination_id))
                continue
            received[item.destination_id] += item.count
            results.append(AppendResult(item.count, next(ids)))
        # Rows are locked in a fixed order (destinations, then instances, sorted) so concurrent
        # groups of other replicas and retires cannot deadlock with this one.
        for destination_id in sorted(received):
            await _add_counts(c, destination_id, now, Counts(received=received[destination_id]))
        for instance_key in sorted({item.instance_key for item in group} - self._instances_known):
            await c.execute(ADD_INSTANCE, (instance_key,))
        return results

    def _appended(self, group: Sequence[PendingAppend]) -> None:
        """Remember the instances of a committed group (their outbox_instances rows exist)."""
        self._instances_known.update(item.instance_key for item in group)

    # -- outbox: unpacking ----------------------------------------------------------------------

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
        entries of it are due; returns how many entries were stored.

        Commits after about `step` updates taken from the inbox, so no transaction grows with
        the backlog (re-sent duplicates count too): each step reads its batches, decodes them
        off the event loop and outside any transaction, then stores them in one write
        transaction, fenced by the lease. Idempotent on (destination_id, update_id): an update
        already in the outbox or already delivered is dropped here and counted as a duplicate.
        Entries keep their batch's enqueue time and trace context, and come after every entry
        unpacked before. Updates `decode` could not decode fail here (code "undecodable"; an
        outcome each that could be told apart) rather than hold up the queue.
        """
        current = self._now(now)
        step = max(step, 1)
        widen = False

        async def one_step() -> tuple[int, bool]:
            """(entries stored, whether another step should follow)."""
            nonlocal widen
            due, wanted, batches = await self._read(
                partial(_next_batches, instance_key, current, limit, step, widen)
            )
            decoded = await asyncio.to_thread(_decode_all, decode, batches) if batches else []
            stored, taken, processed = await self._write(
                "unpack",
                partial(
                    _unpack_batches, instance_key, batches, decoded, fencing, current, limit - due
                ),
            )
            # Re-sent (or failed) updates stored nothing: later steps read as much as a step
            # may take, as a transaction with them would have.
            widen = widen or stored < taken
            empty = sum(b.count for b in batches) < wanted and processed == len(batches)
            return stored, not empty and due + stored < limit

        return await in_steps(one_step)

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
        """Up to `limit` due entries (not_before <= now) of the instance, live entries before
        resync work (`OutboxEntry.resync`), each by sequence, taken while their payloads come to
        less than `max_bytes` (so the first is always taken, and a claim holds at most
        `max_bytes` plus one entry's payload); the rest stays due.

        Rows are not locked or hidden: exactly one drainer per instance (the lease holder) calls
        this; `after_sequence` skips entries it already holds in flight.
        """
        due = self._now(now)

        async def work(c: Connection) -> list[OutboxEntry]:
            entries: list[OutboxEntry] = []
            taken = 0
            for row in await c.claim(instance_key, after_sequence, due, limit, max_bytes):
                entries.append(outbox_entry(row))
                taken += row[13]
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
        membership_marks: Sequence[MembershipWatermark] = (),
        holders: Sequence[MembershipHolder] = (),
        profiles: Sequence[ProfileStateRow] = (),
        unapplied: Sequence[UnappliedRow] = (),
        fencing: int | None = None,
        now: datetime | None = None,
    ) -> None:
        """In one transaction: delete the entries, store one outcome per entry, raise watermarks
        (max), replace the membership marks older than the given ones (the desired status), set
        the holders and profile states given (the applied state Marketo confirmed), keep the
        unapplied attributes given (when newer) and count the outcomes in the hourly dataflow
        counters. Rows of a destination deleted meanwhile are dropped; a profile forgotten
        meanwhile gets its outcomes without dedupe value and none of its state.

        `outcomes[i]` is the outcome of `entries[i]` (same update id, else ValueError): update
        ids are unique per destination only, and one batch may span destinations. With
        `fencing`, the entries' instance lease (with no entries, that of the state's
        destinations) must have that generation, else FencingError and nothing is committed.
        Entries already retired are ignored (with their outcomes), so a retried retire is
        harmless.
        """
        pairs = pair_outcomes(entries, outcomes)
        recorded_at = self._now(now)
        highest: dict[tuple[str, str], int] = {}
        for watermark in watermarks:
            key = (watermark.destination_id, watermark.profile_id)
            highest[key] = max(highest.get(key, 0), to_micros(watermark.event_time))
        latest: dict[tuple[str, str, str], tuple[int, str]] = {}
        for row in membership_marks:
            pair = (row.destination_id, row.profile_id, row.audience_id)
            mark = (to_micros(row.mark.event_time), row.mark.status.value)
            latest[pair] = max(latest.get(pair, mark), mark)
        # the destinations whose watermarks, marks, holders or profile states the batch writes
        stated = (
            {key[0] for key in highest}
            | {key[0] for key in latest}
            | {row.destination_id for row in holders}
            | {row.destination_id for row in profiles}
        )

        async def work(c: Connection) -> None:
            if fencing is not None:
                fenced = {entry.instance_key for entry in entries}
                if not fenced:
                    # State alone (list changes Marketo confirmed for entries that wait): fenced
                    # by the lease of its destinations' instance.
                    fenced = await _instances_of(
                        c, stated | {row.destination_id for row in unapplied}
                    )
                await _check_fencing(c, fenced, fencing)
            deleted: dict[int, str | None] = {}
            for condition, params in c.in_lists(sorted(entry.sequence for entry in entries)):
                rows = await c.execute(
                    f"DELETE FROM outbox WHERE sequence {condition} RETURNING sequence, digest",
                    params,
                )
                deleted.update((row[0], row[1]) for row in rows)
            # Entries already retired (a retried call) or of a deleted destination are skipped.
            kept = [
                (entry, storable_outcome(outcome))
                for entry, outcome in pairs
                if entry.sequence in deleted
            ]
            # A profile forgotten while its batch was in flight (ForgetProfile committed after
            # the claim): its outcomes keep no dedupe value, none of its state is written back.
            forgotten = await _forgotten_pairs(
                c,
                {(entry.destination_id, entry.update.profile_id) for entry, _ in kept}
                | {pair[:2] for pair in latest}
                | {(row.destination_id, row.profile_id) for row in holders}
                | {(row.destination_id, row.profile_id) for row in profiles}
                | {(row.destination_id, row.profile_id) for row in unapplied},
            )
            kept = [
                (
                    entry,
                    replace(outcome, dedupe_value=None)
                    if (entry.destination_id, entry.update.profile_id) in forgotten
                    else outcome,
                )
                for entry, outcome in kept
            ]
            counts: defaultdict[str, Counts] = defaultdict(Counts)
            for entry, outcome in kept:
                count_outcome(counts[entry.destination_id], outcome)
            await c.insert_many(
                "outcomes",
                OUTCOME_INSERT,
                [
                    _outcome_row(
                        entry.destination_id,
                        outcome,
                        to_micros(entry.update.event_time),
                        recorded_at,
                        deleted[entry.sequence],
                    )
                    for entry, outcome in kept
                ],
            )
            # What Resync re-sends: each profile's delivered update whose attributes were applied
            # (the one that reached the profile's new watermark). A profile whose attributes the
            # batch keeps unapplied wrote none, even when activated (its exits went out).
            kept_unapplied = {(row.destination_id, row.profile_id) for row in unapplied}
            unwritten = forgotten | kept_unapplied
            sources = {
                (entry.destination_id, entry.update.profile_id): entry
                for entry, outcome in kept
                if outcome.kind is OutcomeKind.ACTIVATED
                and (entry.destination_id, entry.update.profile_id) not in unwritten
                and highest.get((entry.destination_id, entry.update.profile_id))
                == to_micros(entry.update.event_time)
            }
            await c.insert_many(
                "resync_sources",
                RESYNC_SOURCE_INSERT,
                [
                    (
                        *key,
                        to_micros(entry.update.event_time),
                        dumps(entry.update.profile),
                        recorded_at,
                        1,
                    )
                    for key, entry in sorted(sources.items())
                ]
                + [
                    (
                        row.destination_id,
                        row.profile_id,
                        to_micros(row.attributes.event_time),
                        dumps(row.attributes.profile),
                        recorded_at,
                        0,
                    )
                    for row in unapplied
                    if (row.destination_id, row.profile_id) not in forgotten
                ],
                RESYNC_SOURCE_TAIL,
            )
            # An activated profile whose watermark went past its entries' event times wrote the
            # newest unapplied attributes in their stead: they are applied now.
            reached = {
                key
                for entry, outcome in kept
                if outcome.kind is OutcomeKind.ACTIVATED
                and (key := (entry.destination_id, entry.update.profile_id)) in highest
                and key not in sources
                and key not in kept_unapplied
            }
            if reached:
                await c.executemany(
                    MARK_SOURCE_APPLIED, [(*key, highest[key]) for key in sorted(reached)]
                )
            for destination_id in sorted(counts):
                await _add_counts(c, destination_id, recorded_at, counts[destination_id])
            # A destination deleted while its batch was in flight has no watermarks to keep.
            alive: set[str] = set()
            for condition, params in c.in_lists(sorted(stated)):
                rows = await c.execute(
                    f"SELECT id FROM destinations WHERE id {condition} ORDER BY id"
                    f"{c.for_key_share}",
                    params,
                )
                alive.update(row[0] for row in rows)
            await c.insert_many(
                "profile_watermarks",
                WATERMARK_INSERT,
                [(*key, highest[key]) for key in sorted(highest) if key[0] in alive],
                WATERMARK_TAIL,
            )
            await c.insert_many(
                "membership_marks",
                MEMBERSHIP_MARK_INSERT,
                [
                    (*pair, latest[pair][1], latest[pair][0])
                    for pair in sorted(latest)
                    if pair[0] in alive and pair[:2] not in forgotten
                ],
                MEMBERSHIP_MARK_TAIL,
            )
            held = [
                _holder_row(row)
                for row in holders
                if row.destination_id in alive
                and (row.destination_id, row.profile_id) not in forgotten
            ]
            if held:
                await c.executemany(SET_HOLDER, held)
            # A lead written for some profiles no longer holds what the other profiles bound to
            # it last applied (several profiles may share a dedupe value): their digests are
            # cleared, so the next update of each writes its attributes again (one write too
            # many at most, never one too few). A forgotten profile's last write counts too.
            # Profiles of the batch bound to one lead with different digests (a refused consent
            # keeps its digest while another profile writes the lead) keep none: which the lead
            # holds is not known.
            written: defaultdict[tuple[str, int], set[str]] = defaultdict(set)
            for row in profiles:
                if (
                    row.destination_id in alive
                    and row.state.lead_id is not None
                    and row.state.digest is not None
                ):
                    written[(row.destination_id, row.state.lead_id)].add(row.state.digest)
            await _clear_stale_digests(
                c, written, {(row.destination_id, row.profile_id) for row in profiles}
            )
            await c.insert_many(
                "profile_state",
                PROFILE_STATE_INSERT,
                [
                    (
                        row.destination_id,
                        row.profile_id,
                        row.state.dedupe_value,
                        dedupe_key(row.state.dedupe_value) if row.state.dedupe_value else None,
                        row.state.lead_id,
                        None
                        if row.state.lead_id is not None
                        and len(written.get((row.destination_id, row.state.lead_id), ())) > 1
                        else row.state.digest,
                        int(row.state.consent_refused),
                    )
                    for row in sorted(profiles, key=lambda r: (r.destination_id, r.profile_id))
                    if row.destination_id in alive
                    and (row.destination_id, row.profile_id) not in forgotten
                ],
                PROFILE_STATE_TAIL,
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

        async def work(c: Connection) -> None:
            if fencing is not None:
                await _check_fencing(c, {entry.instance_key for entry in entries}, fencing)
            for condition, params in c.in_lists(sorted(entry.sequence for entry in entries)):
                await c.execute(
                    "UPDATE outbox SET not_before = ?, last_error = ?, "
                    f"attempts = COALESCE(CAST(? AS INTEGER), attempts + 1) "
                    f"WHERE sequence {condition}",
                    (due, last_error, attempts, *params),
                )

        await self._write("defer", work)

    async def release_deferred(self, destination_id: str, now: datetime | None = None) -> int:
        """Make the destination's deferred outbox entries due now (attempts unchanged), e.g.
        when a change of its mapping may end a pause; returns how many."""
        due = self._now(now)

        async def work(c: Connection) -> int:
            cursor = await c.execute(
                "UPDATE outbox SET not_before = ? WHERE destination_id = ? AND not_before > ?",
                (due, destination_id, due),
            )
            return max(cursor.rowcount, 0)

        return await self._write("release_deferred", work)

    async def watermarks(
        self, destination_id: str, profile_ids: Sequence[str]
    ) -> dict[str, datetime]:
        """Last applied event time per profile (profiles never applied are absent)."""

        async def work(c: Connection) -> dict[str, datetime]:
            found: dict[str, datetime] = {}
            for condition, params in c.in_lists(profile_ids):
                rows = await c.execute(
                    "SELECT profile_id, event_time FROM profile_watermarks "
                    f"WHERE destination_id = ? AND profile_id {condition}",
                    (destination_id, *params),
                )
                found.update((row[0], from_micros(row[1])) for row in rows)
            return found

        return await self._read(work)

    async def membership_marks(
        self, destination_id: str, profile_ids: Sequence[str]
    ) -> dict[tuple[str, str], MembershipMark]:
        """Last applied membership status and its event time per (profile id, audience id) of
        the given profiles (pairs never applied are absent)."""

        async def work(c: Connection) -> dict[tuple[str, str], MembershipMark]:
            found: dict[tuple[str, str], MembershipMark] = {}
            for condition, params in c.in_lists(profile_ids):
                rows = await c.execute(
                    "SELECT profile_id, audience_id, status, event_time FROM membership_marks "
                    f"WHERE destination_id = ? AND profile_id {condition}",
                    (destination_id, *params),
                )
                found.update(
                    (
                        (row[0], row[1]),
                        MembershipMark(MembershipStatus(row[2]), from_micros(row[3])),
                    )
                    for row in rows
                )
            return found

        return await self._read(work)

    async def desired_state(self, destination_id: str, profile_ids: Sequence[str]) -> DesiredState:
        """The stored state of the given profiles, in one read transaction: attribute
        watermarks, desired memberships (membership marks) and their holders, applied profile
        states, unapplied attributes, which of them are forgotten, and the other profiles that
        want the leads they hold or are bound to in the same lists (`DesiredState.co_holders`)."""

        async def work(c: Connection) -> DesiredState:
            watermarks: dict[str, datetime] = {}
            marks: dict[tuple[str, str], MembershipMark] = {}
            holders: dict[tuple[str, str], int] = {}
            unconfirmed: set[tuple[str, str]] = set()
            profiles: dict[str, ProfileState] = {}
            forgotten: set[str] = set()
            unapplied: dict[str, UnappliedAttributes] = {}
            for condition, params in c.in_lists(profile_ids):
                where = f"WHERE destination_id = ? AND profile_id {condition}"
                args = (destination_id, *params)
                for row in await c.execute(
                    f"SELECT profile_id FROM forgotten_profiles {where}", args
                ):
                    forgotten.add(row[0])
                for row in await c.execute(
                    f"SELECT profile_id, event_time FROM profile_watermarks {where}", args
                ):
                    watermarks[row[0]] = from_micros(row[1])
                for row in await c.execute(
                    "SELECT profile_id, audience_id, status, event_time, lead_id, "
                    f"holder_unconfirmed FROM membership_marks {where}",
                    args,
                ):
                    pair = (row[0], row[1])
                    marks[pair] = MembershipMark(MembershipStatus(row[2]), from_micros(row[3]))
                    if row[4] is not None:
                        holders[pair] = int(row[4])
                        if row[5]:
                            unconfirmed.add(pair)
                for row in await c.execute(
                    "SELECT profile_id, dedupe_value, lead_id, digest, consent_refused "
                    f"FROM profile_state {where}",
                    args,
                ):
                    profiles[row[0]] = ProfileState(
                        dedupe_value=row[1],
                        lead_id=None if row[2] is None else int(row[2]),
                        digest=row[3],
                        consent_refused=bool(row[4]),
                    )
                for row in await c.execute(
                    f"SELECT profile_id, event_time, payload FROM resync_sources {where} "
                    "AND applied = 0",
                    args,
                ):
                    unapplied[row[0]] = UnappliedAttributes(from_micros(row[1]), json.loads(row[2]))
            leads = {lead for lead in holders.values() if lead != HOLDER_RESOLVED} | {
                state.lead_id for state in profiles.values() if state.lead_id is not None
            }
            co_holders = await _co_holders(c, destination_id, sorted(leads), set(profile_ids))
            return DesiredState(
                watermarks,
                marks,
                holders,
                profiles,
                frozenset(forgotten),
                unapplied=unapplied,
                co_holders=co_holders,
                unconfirmed=frozenset(unconfirmed),
            )

        return await self._read(work)

    async def co_holders(
        self, destination_id: str, lead_ids: Sequence[int], excluded: Collection[str]
    ) -> dict[tuple[str, int], frozenset[str]]:
        """Per (audience id, lead id) of `lead_ids`, the profiles (not in `excluded`) that want
        that lead in the audience's list, as `DesiredState.co_holders` counts them: for leads a
        look-up resolved a batch's person to."""

        async def work(c: Connection) -> dict[tuple[str, int], frozenset[str]]:
            return await _co_holders(c, destination_id, lead_ids, excluded)

        return await self._read(work)

    async def desired_members(self, destination_id: str, audience_id: str) -> list[DesiredMember]:
        """The current members of the audience that Marketo should hold: a member status
        applied (not exited) and marketing consent not refused, by profile id, with their
        holder and bound lead."""

        async def work(c: Connection) -> list[DesiredMember]:
            rows = await c.execute(
                "SELECT m.profile_id, m.lead_id, s.lead_id, s.dedupe_value "
                "FROM membership_marks m LEFT JOIN profile_state s "
                "ON s.destination_id = m.destination_id AND s.profile_id = m.profile_id "
                "WHERE m.destination_id = ? AND m.audience_id = ? AND m.status <> ? "
                "AND COALESCE(s.consent_refused, 0) = 0 ORDER BY m.profile_id",
                (destination_id, audience_id, MembershipStatus.EXITED.value),
            )
            return [
                DesiredMember(
                    row[0],
                    None if row[1] is None else int(row[1]),
                    None if row[2] is None else int(row[2]),
                    row[3],
                )
                for row in rows
            ]

        return await self._read(work)

    async def record_repairs(
        self,
        destination_id: str,
        holders: Sequence[MembershipHolder],
        bindings: Mapping[str, int | None] | None = None,
    ) -> None:
        """Set the holders a reconciliation confirmed and re-bind the profiles whose lead was
        resolved again (profile id -> lead id), in one transaction."""

        async def work(c: Connection) -> None:
            if holders:
                await c.executemany(SET_HOLDER, [_holder_row(h) for h in holders])
            if bindings:
                await c.executemany(
                    "UPDATE profile_state SET lead_id = ? "
                    "WHERE destination_id = ? AND profile_id = ?",
                    [(lead, destination_id, profile) for profile, lead in sorted(bindings.items())],
                )

        await self._write("record_repairs", work)

    async def record_reconciliation(self, destination_id: str, row: ListReconciliation) -> None:
        """Keep the last reconciliation of the row's audience (replacing the previous one)."""

        async def work(c: Connection) -> None:
            await c.execute(
                "INSERT INTO list_reconciliations (destination_id, audience_id, "
                "marketo_list_id, reconciled_at, drift_found, drift_repaired) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (destination_id, audience_id) DO UPDATE "
                "SET marketo_list_id = excluded.marketo_list_id, "
                "reconciled_at = excluded.reconciled_at, drift_found = excluded.drift_found, "
                "drift_repaired = excluded.drift_repaired",
                (
                    destination_id,
                    row.audience_id,
                    row.marketo_list_id,
                    to_micros(row.reconciled_at),
                    row.drift_found,
                    row.drift_repaired,
                ),
            )

        await self._write("record_reconciliation", work)

    async def reconciliations(self, destination_id: str) -> list[ListReconciliation]:
        """The last reconciliation of each of the destination's lists (its rows of
        `list_reconciliations`), by audience id."""

        async def work(c: Connection) -> list[ListReconciliation]:
            rows = await c.execute(
                "SELECT audience_id, marketo_list_id, reconciled_at, drift_found, drift_repaired "
                "FROM list_reconciliations WHERE destination_id = ? ORDER BY audience_id",
                (destination_id,),
            )
            return [
                ListReconciliation(row[0], int(row[1]), from_micros(row[2]), row[3], row[4])
                for row in rows
            ]

        return await self._read(work)

    async def resync_sources(
        self, destination_id: str, profile_ids: Sequence[str] | None = None
    ) -> list[ResyncSource]:
        """What Resync re-sends for the given profiles (None: every profile of the destination
        that has one), by profile id; forgotten profiles have none."""
        select = (
            "SELECT profile_id, event_time, payload FROM resync_sources "
            "WHERE applied = 1 AND destination_id = ?"
        )

        async def work(c: Connection) -> list[ResyncSource]:
            rows: list[Any] = []
            if profile_ids is None:
                rows.extend(await c.execute(select, (destination_id,)))
            else:
                for condition, params in c.in_lists(sorted(set(profile_ids))):
                    rows.extend(
                        await c.execute(
                            f"{select} AND profile_id {condition}", (destination_id, *params)
                        )
                    )
            return sorted(
                (ResyncSource(row[0], from_micros(row[1]), json.loads(row[2])) for row in rows),
                key=lambda source: source.profile_id,
            )

        return await self._read(work)

    async def queue_resync(
        self,
        destination_id: str,
        instance_key: str,
        updates: Sequence[ProfileUpdate],
        now: datetime | None = None,
    ) -> int:
        """Queue resync updates in the outbox behind every live entry (priority 1); returns how
        many were queued (an update id already queued is skipped). They are counted as received
        and pending, as live updates are, so the dataflow's figures still add up."""
        enqueued = self._now(now)

        async def work(c: Connection) -> int:
            inserted = await c.insert_many(
                "outbox",
                RESYNC_INSERT,
                [
                    (
                        destination_id,
                        instance_key,
                        update.update_id,
                        update.profile_id,
                        to_micros(update.event_time),
                        outbox_payload(update),
                        None,
                        enqueued,
                        enqueued,
                        None,
                        RESYNC_PRIORITY,
                    )
                    for update in updates
                ],
                "ON CONFLICT (destination_id, update_id) DO NOTHING",
            )
            await _add_counts(c, destination_id, enqueued, Counts(received=inserted))
            await c.execute(ADD_INSTANCE, (instance_key,))
            return inserted

        return await self._write("queue_resync", work)

    async def forgotten(self, destination_id: str, profile_ids: Sequence[str]) -> frozenset[str]:
        """Which of the given profiles are forgotten (ForgetProfile): reconciliation and Resync
        never write them."""

        async def work(c: Connection) -> frozenset[str]:
            return frozenset(await _forgotten(c, destination_id, profile_ids))

        return await self._read(work)

    async def forget_profile(
        self, destination_id: str, profile_id: str, outcome: Outcome, now: datetime | None = None
    ) -> None:
        """Record the tombstone of a profile in one transaction: mark it forgotten, drop its
        desired memberships, applied state and resync source, and store `outcome` (what was
        done) in its outcome history. Forgetting again records another outcome."""
        recorded_at = self._now(now)

        async def work(c: Connection) -> None:
            key = (destination_id, profile_id)
            # a retire of the destination reads the tombstones under a key share lock of this
            # row: it commits before this transaction starts, or sees the tombstone
            await c.execute(
                f"SELECT 1 FROM destinations WHERE id = ?{c.for_update}", (destination_id,)
            )
            await c.execute(
                "INSERT INTO forgotten_profiles (destination_id, profile_id, forgotten_at) "
                "VALUES (?, ?, ?) ON CONFLICT (destination_id, profile_id) DO NOTHING",
                (*key, recorded_at),
            )
            for table in ("membership_marks", "profile_state", "resync_sources"):
                await c.execute(
                    f"DELETE FROM {table} WHERE destination_id = ? AND profile_id = ?", key
                )
            await c.insert_many(
                "outcomes",
                OUTCOME_INSERT,
                [_outcome_row(destination_id, outcome, recorded_at, recorded_at, None)],
            )

        await self._write("forget_profile", work)

    async def pending_stats(self, destination_id: str) -> PendingStats:
        """Backlog count (a kept counter) and oldest enqueue time (first row of an index),
        without scanning the backlog."""
        return await self._read(partial(_pending_stats, destination_id=destination_id))

    async def backlogs(self) -> list[Backlog]:
        """The backlog of every destination of every tenant (the metrics' gauges), by
        destination id; like `pending_stats`, without scanning the backlogs: its kept counter,
        and the oldest entry of those that have one (first row of an index)."""

        async def work(c: Connection) -> list[Backlog]:
            rows = (
                await c.execute("SELECT id, instance_key, pending FROM destinations ORDER BY id")
            ).fetchall()
            found = []
            for destination_id, instance, pending in rows:
                oldest = await _oldest_pending(c, destination_id) if pending else None
                found.append(Backlog(destination_id, instance, PendingStats(pending, oldest)))
            return found

        return await self._read(work)

    async def instance_keys_with_due_work(self, now: datetime | None = None) -> list[str]:
        """Instances that have work: at least one due outbox entry, or an inbox batch."""
        due = self._now(now)

        async def work(c: Connection) -> list[str]:
            rows = await c.execute(f"{INSTANCES_WITH_WORK} ORDER BY instance_key", (due,))
            return [row[0] for row in rows]

        return await self._read(work)

    # -- outcomes and dataflow ------------------------------------------------------------------

    async def purge_outcomes(self, recorded_before: datetime, limit: int) -> int:
        """Delete outcomes recorded before `recorded_before`, oldest first, at most `limit` of
        them in one short transaction; returns how many went. Only the `limit` oldest outcomes
        are looked at, so a call costs the same however many outcomes there are (those of a
        replica whose clock runs behind may wait for the next call)."""
        before = to_micros(recorded_before)

        async def work(c: Connection) -> int:
            return max((await c.execute(PURGE_OUTCOMES, (limit, before))).rowcount, 0)

        return await self._write("purge_outcomes", work)

    async def purge_resync_sources(self, recorded_before: datetime, limit: int) -> int:
        """Delete resync sources (personal data) recorded before `recorded_before`, oldest
        first, at most `limit` of them in one short transaction; returns how many went. A
        profile whose source went is not resynced until its next delivered update."""
        before = to_micros(recorded_before)

        async def work(c: Connection) -> int:
            return max((await c.execute(PURGE_RESYNC_SOURCES, (before, limit))).rowcount, 0)

        return await self._write("purge_resync_sources", work)

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
        filters = {
            "destination_id = ?": destination_id,
            "profile_id = ?": profile_id,
            "dedupe_key = ?": dedupe_key(dedupe_value) if dedupe_value is not None else None,
            "id < ?": after[0] if after is not None else None,
        }
        given = {condition: value for condition, value in filters.items() if value is not None}
        sql = (
            f"SELECT {OUTCOME_COLUMNS} FROM outcomes WHERE {' AND '.join(given)} "
            "ORDER BY id DESC LIMIT ?"
        )

        async def work(c: Connection) -> Page[OutcomeRecord]:
            rows = (await c.execute(sql, (*given.values(), size + 1))).fetchall()
            records = tuple(outcome_record(row) for row in rows[:size])
            token = encode_token("outcomes", scope, [rows[size - 1][0]]) if len(rows) > size else ""
            return Page(records, token)

        return await self._read(work)

    async def dataflow(
        self, destination_id: str, hours: int = 24, now: datetime | None = None
    ) -> Dataflow:
        """Dataflow totals over the destination's life and the last `hours` hourly runs, newest
        first. Raises DestinationNotFound."""
        current = self._now(now)
        current_hour = current - current % HOUR_US
        first_hour = current_hour - (max(hours, 0) - 1) * HOUR_US

        async def work(c: Connection) -> Dataflow:
            row = (
                await c.execute(
                    "SELECT paused_until FROM destinations WHERE id = ?", (destination_id,)
                )
            ).fetchone()
            if row is None:
                raise DestinationNotFound(destination_id)
            totals = (await c.execute(TOTALS, (destination_id,))).fetchone()
            reason_rows = (await c.execute(REASON_TOTALS, (destination_id,))).fetchall()
            by_hour = {
                hour_row[0]: hour_row[1:]
                for hour_row in await c.execute(
                    "SELECT hour_start, received, activated, excluded, failed, superseded "
                    "FROM dataflow_hours WHERE destination_id = ? AND hour_start >= ?",
                    (destination_id, first_hour),
                )
            }
            return build_dataflow(
                destination_id,
                dict(zip(COUNT_COLUMNS, totals, strict=True)),
                reason_rows,
                by_hour,
                await _pending_stats(c, destination_id),
                current=current,
                hours=range(current_hour, first_hour - 1, -HOUR_US),
                paused_until=from_micros(row[0]) if row[0] is not None else None,
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
        """Open an alert of that type unless one is open; returns (the open alert, newly raised).

        An already open alert gets the new message and paused_until.
        """
        raised_at = self._now(now)
        until = to_micros(paused_until) if paused_until is not None else None
        alert_id = "alr_" + secrets.token_hex(10)

        async def work(c: Connection) -> tuple[AlertRecord, bool]:
            if not await _lock_destination(c, destination_id):
                raise DestinationNotFound(destination_id)
            # The partial unique index `alerts_open` makes a concurrent raise a no-op insert.
            inserted = await c.execute(
                f"INSERT INTO alerts ({ALERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, ?) "
                "ON CONFLICT (destination_id, type) WHERE resolved_at IS NULL DO NOTHING "
                "RETURNING id",
                (alert_id, destination_id, type, message, raised_at, until),
            )
            if inserted.fetchone() is not None:
                return await _fetch_alert(c, alert_id), True
            row = (
                await c.execute(
                    "UPDATE alerts SET message = ?, paused_until = ? WHERE destination_id = ? "
                    "AND type = ? AND resolved_at IS NULL RETURNING id",
                    (message, until, destination_id, type),
                )
            ).fetchone()
            return await _fetch_alert(c, row[0]), False

        return await self._write("raise_alert", work)

    async def resolve_alert(
        self, destination_id: str, type: str, now: datetime | None = None
    ) -> AlertRecord | None:
        """Resolve the open alert of that type; returns it, or None when none was open."""
        resolved_at = self._now(now)

        async def work(c: Connection) -> AlertRecord | None:
            row = (
                await c.execute(
                    "UPDATE alerts SET resolved_at = ? WHERE destination_id = ? AND type = ? "
                    "AND resolved_at IS NULL RETURNING id",
                    (resolved_at, destination_id, type),
                )
            ).fetchone()
            return None if row is None else await _fetch_alert(c, row[0])

        return await self._write("resolve_alert", work)

    async def open_alerts(self, destination_id: str) -> list[AlertRecord]:
        """Unresolved alerts, oldest first."""

        async def work(c: Connection) -> list[AlertRecord]:
            rows = await c.execute(
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
        """Take the instance's lease if free, expired or already ours; None if someone holds it
        (or, with fair leases, if taking it would put us above our fair share).

        Taking it from another holder (or after it lapsed) increments the generation.
        """
        current = self._now(now)
        expires = current + ttl // timedelta(microseconds=1)

        async def work(c: Connection) -> Lease | None:
            await _beat(c, holder, expires)
            # A placeholder row (generation 0, expired) so there is always a row to lock.
            await c.execute(
                "INSERT INTO instance_leases (instance_key, holder, generation, expires_at) "
                "VALUES (?, '', 0, 0) ON CONFLICT (instance_key) DO NOTHING",
                (instance_key,),
            )
            current_holder, generation, expires_at = (
                await c.execute(
                    "SELECT holder, generation, expires_at FROM instance_leases "
                    f"WHERE instance_key = ?{c.for_update}",
                    (instance_key,),
                )
            ).fetchone()
            held = expires_at > current
            if held and current_holder != holder:
                return None
            previous = None
            if not held:
                # Expired rather than released (0): the holder may have been cut off mid-call.
                previous = from_micros(expires_at) if expires_at > 0 else None
                if self._fair_leases:
                    if c.holder_lock:  # one replica's acquisitions one at a time: exact counts
                        await c.execute(c.holder_lock, ("lease-holder:" + holder,))
                    if await _held(c, holder, current) >= await _share(
                        c, holder, current, instance_key
                    ):
                        return None
                generation += 1  # a new tenure: the previous holder's token is now stale
            await c.execute(
                "UPDATE instance_leases SET holder = ?, generation = ?, expires_at = ? "
                "WHERE instance_key = ?",
                (holder, generation, expires, instance_key),
            )
            return Lease(instance_key, holder, generation, from_micros(expires), previous)

        return await self._write("acquire_lease", work)

    async def renew_lease(
        self, lease: Lease, ttl: timedelta, now: datetime | None = None
    ) -> Lease | None:
        """Extend a lease we still hold (same holder and generation); None if it was lost."""
        expires = self._now(now) + ttl // timedelta(microseconds=1)

        async def work(c: Connection) -> Lease | None:
            await _beat(c, lease.holder, expires)
            cursor = await c.execute(
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

        async def work(c: Connection) -> None:
            await c.execute(
                "UPDATE instance_leases SET expires_at = 0 "
                "WHERE instance_key = ? AND holder = ? AND generation = ?",
                (lease.instance_key, lease.holder, lease.generation),
            )

        await self._write("release_lease", work)

    async def heartbeat_replica(
        self, holder: str, ttl: timedelta, now: datetime | None = None
    ) -> None:
        """Record that replica `holder` is alive until `now + ttl`.

        Taking or renewing a lease does this too; an idle replica calls it so it counts in
        `fair_share`.
        """
        expires = self._now(now) + ttl // timedelta(microseconds=1)
        await self._write("heartbeat_replica", partial(_beat, holder=holder, expires=expires))

    async def fair_share(self, holder: str, now: datetime | None = None) -> int:
        """How many instance leases `holder` should hold at most now (at least 1).

        `ceil(instances / replicas)`, where instances are those with due work or a live lease
        and replicas are the live ones (`holder` included). A replica above its share should
        let leases go after their batch in flight, and not take new ones.
        """
        current = self._now(now)
        return await self._read(partial(_share, holder=holder, now=current, wanted=None))


# -- transaction helpers --------------------------------------------------------------------------


def _decode_all(
    decode: Callable[[bytes], DecodedBatch], batches: Sequence[InboxBatch]
) -> list[DecodedBatch]:
    return [decode(batch.body) for batch in batches]


def _outcome_row(
    destination_id: str, outcome: Outcome, event_time: int, recorded_at: int, digest: str | None
) -> tuple[Any, ...]:
    """An `OUTCOME_INSERT` row: `outcome` of the update of `event_time` and content `digest`."""
    return (
        destination_id,
        outcome.update_id,
        outcome.profile_id,
        outcome.dedupe_value,
        event_time,
        recorded_at,
        outcome.kind.value,
        dumps([[a.type.value, a.audience_id] for a in outcome.actions]),
        outcome.lead_id,
        outcome.reason,
        outcome.marketo_code,
        outcome.exclusion_code.value if outcome.exclusion_code else "",
        outcome.field,
        digest,
        dumps(list(outcome.kept_fields)),
        dedupe_key(outcome.dedupe_value) if outcome.dedupe_value else None,
    )


async def _next_batches(
    instance_key: str, now: int, limit: int, step: int, widen: bool, c: Connection
) -> tuple[int, int, list[InboxBatch]]:
    """How many of the instance's live outbox entries are due (up to `limit`; resync work
    never holds live updates back in the inbox), how many updates to take from the inbox
    (`step`, or with `widen` false only as many as `limit` wants), and the oldest batches of
    fewer updates than that before the last."""
    due = (
        await c.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM outbox "
            "WHERE instance_key = ? AND priority = 0 AND not_before <= ? LIMIT ?) AS due",
            (instance_key, now, limit),
        )
    ).fetchone()[0]
    wanted = step if widen else min(step, limit - due)
    if due >= limit:
        return due, 0, []
    rows = await c.execute(NEXT_BATCHES, (instance_key, wanted, wanted))
    batches = [InboxBatch(row[0], row[1], row[2], bytes(row[3]), row[4], row[5]) for row in rows]
    return due, wanted, batches


async def _unpack_batches(
    instance_key: str,
    batches: Sequence[InboxBatch],
    decoded: Sequence[DecodedBatch],
    fencing: int | None,
    now: int,
    needed: int,
    c: Connection,
) -> tuple[int, int, int]:
    """One write transaction of `unpack`: take the batches, in order, out of the inbox (those
    still there) until `needed` entries are stored; queue their fresh updates, fail those that
    cannot be, count the duplicates. (Entries stored, updates taken, batches gone through.)"""
    if fencing is not None:
        await _check_fencing(c, {instance_key}, fencing)
    stored = taken = processed = 0
    duplicates: Counter[str] = Counter()
    failed: Counter[tuple[str, str]] = Counter()
    for batch, batch_decoded in zip(batches, decoded, strict=True):
        if stored >= needed:
            break
        processed += 1
        gone = await c.execute("DELETE FROM inbox WHERE id = ? RETURNING id", (batch.id,))
        if gone.fetchone() is None:
            continue  # unpacked meanwhile by another drainer
        destination_id = batch.destination_id
        updates = batch_decoded.updates
        taken += max(batch.count, len(updates))
        failures: list[FailedUpdate] = []
        if len(updates) < batch.count:  # a damaged row: fail what does not decode
            failures = undecodable_outcomes(
                destination_id, batch.id, batch.count, batch_decoded, batch.enqueued_at, now
            )
            failed[destination_id, UNDECODABLE] += batch.count - len(updates)
        known = await _known_digests(c, destination_id, storable_ids(updates))
        sorted_out = sort_batch(destination_id, batch.id, updates, known, batch.enqueued_at, now)
        failures.extend(sorted_out.failures)
        for code, count in sorted_out.failed.items():
            failed[destination_id, code] += count
        await c.insert_many(
            "outcomes",
            FAILED_COLUMNS,
            [(*failure, OutcomeKind.FAILED.value, "[]") for failure in failures],
            FAILED_TAIL,
        )
        fresh = sorted_out.fresh
        inserted = await c.insert_many(
            "outbox",
            OUTBOX_INSERT,
            [
                (
                    destination_id,
                    instance_key,
                    queued.update.update_id,
                    queued.update.profile_id,
                    to_micros(queued.update.event_time),
                    queued.payload,
                    batch.trace_context,
                    batch.enqueued_at,
                    batch.enqueued_at,
                    queued.digest,
                )
                for queued in fresh
            ],
            "ON CONFLICT (destination_id, update_id) DO NOTHING",
        )
        stored += inserted
        duplicates[destination_id] += sorted_out.duplicates + len(fresh) - inserted
    # Rows are locked in a fixed order, as append does, so the two cannot deadlock.
    for destination_id, counts in unpacked_counts(duplicates, failed):
        await _add_counts(c, destination_id, now, counts)
    return stored, taken, processed


async def _known_digests(
    c: Connection, destination_id: str, update_ids: Sequence[str]
) -> dict[str, str | None]:
    """Update id -> content digest of the destination's updates among `update_ids` that are
    queued (outbox) or delivered (outcomes)."""
    found: dict[str, str | None] = {}
    for condition, params in c.in_lists(update_ids):
        rows = await c.execute(
            f"SELECT update_id, digest FROM outbox WHERE destination_id = ? "
            f"AND update_id {condition} UNION ALL SELECT update_id, digest FROM outcomes "
            f"WHERE destination_id = ? AND update_id {condition}",
            (destination_id, *params, destination_id, *params),
        )
        found.update((row[0], row[1]) for row in rows)
    return found


async def _forgotten(c: Connection, destination_id: str, profile_ids: Iterable[str]) -> set[str]:
    """Which of the given profiles of the destination are forgotten."""
    found: set[str] = set()
    for condition, params in c.in_lists(sorted(set(profile_ids))):
        rows = await c.execute(
            "SELECT profile_id FROM forgotten_profiles "
            f"WHERE destination_id = ? AND profile_id {condition}",
            (destination_id, *params),
        )
        found.update(row[0] for row in rows)
    return found


def _holder_row(row: MembershipHolder) -> tuple[int | None, int, str, str, str]:
    """`SET_HOLDER`'s parameters for `row`."""
    unconfirmed = int(row.lead_id is not None and not row.confirmed)
    return (row.lead_id, unconfirmed, row.destination_id, row.profile_id, row.audience_id)


async def _co_holders(
    c: Connection, destination_id: str, leads: Sequence[int], excluded: Collection[str]
) -> dict[tuple[str, int], frozenset[str]]:
    """Per (audience id, lead id) of `leads`, the profiles (not in `excluded`) that want that
    lead in the audience's list: a member status, consent not refused, holding the lead there
    or, holding none (or the bound lead), bound to it. Forgotten profiles have no marks left."""
    found: dict[tuple[str, int], set[str]] = {}
    wants = "m.status <> ? AND COALESCE(s.consent_refused, 0) = 0"
    exited = MembershipStatus.EXITED.value
    for condition, params in c.in_lists(leads):
        held = await c.execute(
            "SELECT m.audience_id, m.lead_id, m.profile_id FROM membership_marks m "
            "LEFT JOIN profile_state s "
            "ON s.destination_id = m.destination_id AND s.profile_id = m.profile_id "
            f"WHERE m.destination_id = ? AND m.lead_id {condition} AND {wants}",
            (destination_id, *params, exited),
        )
        bound = await c.execute(
            "SELECT m.audience_id, s.lead_id, m.profile_id FROM profile_state s "
            "JOIN membership_marks m "
            "ON m.destination_id = s.destination_id AND m.profile_id = s.profile_id "
            f"WHERE s.destination_id = ? AND s.lead_id {condition} "
            f"AND (m.lead_id IS NULL OR m.lead_id = ?) AND {wants}",
            (destination_id, *params, HOLDER_RESOLVED, exited),
        )
        for row in (*held, *bound):
            if row[2] not in excluded:
                found.setdefault((row[0], int(row[1])), set()).add(row[2])
    return {pair: frozenset(pids) for pair, pids in found.items()}


async def _forgotten_pairs(c: Connection, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (destination id, profile id) pairs are forgotten. Each destination row is locked
    (key share) first, as ForgetProfile locks it for update: a forget commits wholly before the
    read or after this transaction."""
    by_destination: defaultdict[str, set[str]] = defaultdict(set)
    for destination_id, profile_id in pairs:
        by_destination[destination_id].add(profile_id)
    found: set[tuple[str, str]] = set()
    for destination_id in sorted(by_destination):
        await _lock_destination(c, destination_id)
        profile_ids = by_destination[destination_id]
        found.update((destination_id, p) for p in await _forgotten(c, destination_id, profile_ids))
    return found


async def _clear_stale_digests(
    c: Connection, written: Mapping[tuple[str, int], set[str]], stored: set[tuple[str, str]]
) -> None:
    """Clear the digest of each profile bound to a lead that `written` ((destination, lead) ->
    the digests stored for it now) names with another digest than the profile's; `stored`, the
    profiles whose state is being stored, are left alone. One indexed read per destination, a
    write only when some profile's digest is stale."""
    leads: defaultdict[str, list[int]] = defaultdict(list)
    for destination_id, lead_id in sorted(written):
        leads[destination_id].append(lead_id)
    for destination_id, bound in leads.items():
        stale: list[str] = []
        for condition, params in c.in_lists(bound):
            rows = await c.execute(
                "SELECT profile_id, lead_id, digest FROM profile_state "
                f"WHERE destination_id = ? AND lead_id {condition} AND digest IS NOT NULL",
                (destination_id, *params),
            )
            stale.extend(
                row[0]
                for row in rows
                if (destination_id, row[0]) not in stored
                and written[(destination_id, int(row[1]))] - {row[2]}
            )
        for condition, params in c.in_lists(sorted(stale)):
            await c.execute(
                "UPDATE profile_state SET digest = NULL "
                f"WHERE destination_id = ? AND profile_id {condition}",
                (destination_id, *params),
            )


async def _lock_destination(c: Connection, destination_id: str) -> bool:
    """Whether the destination exists; it cannot be deleted before the transaction ends."""
    rows = await c.execute(
        f"SELECT 1 FROM destinations WHERE id = ?{c.for_key_share}", (destination_id,)
    )
    return rows.fetchone() is not None


async def _add_counts(c: Connection, destination_id: str, at: int, counts: Counts) -> None:
    """Add `counts` to the destination's dataflow counters of the hour of `at` and keep its
    backlog (`destinations.pending`) in step: received updates join it, settled ones (activated,
    excluded, failed, superseded, or dropped as duplicates) leave it."""
    settled = (
        counts.activated + counts.excluded + counts.failed + counts.superseded + counts.duplicates
    )
    await c.execute(
        "UPDATE destinations SET pending = pending + ? WHERE id = ?",
        (counts.received - settled, destination_id),
    )
    hour = at - at % HOUR_US
    await c.execute(
        ADD_COUNTS,
        (destination_id, hour, *(getattr(counts, column) for column in COUNT_COLUMNS)),
    )
    for (kind, reason, field), count in sorted(counts.reasons.items()):
        await c.execute(ADD_REASONS, (destination_id, hour, kind, reason, field, count))


async def _instances_of(c: Connection, destination_ids: set[str]) -> set[str]:
    """The Marketo instances of the given destinations (those that still exist)."""
    instances: set[str] = set()
    for condition, params in c.in_lists(sorted(destination_ids)):
        rows = await c.execute(
            f"SELECT instance_key FROM destinations WHERE id {condition}", params
        )
        instances.update(row[0] for row in rows)
    return instances


async def _check_fencing(c: Connection, instance_keys: set[str], fencing: int) -> None:
    # FOR SHARE: a takeover's UPDATE of the row waits for this transaction, and this one waits
    # for a takeover already under way, so a stale token can never commit.
    generations: dict[str, int] = {}
    for condition, params in c.in_lists(sorted(instance_keys)):
        rows = await c.execute(
            f"SELECT instance_key, generation FROM instance_leases WHERE instance_key {condition} "
            f"ORDER BY instance_key{c.for_share}",
            params,
        )
        generations.update((row[0], row[1]) for row in rows)
    for instance_key in sorted(instance_keys):
        current = generations.get(instance_key)
        if current != fencing:
            raise FencingError(instance_key, fencing, current)


async def _pending_stats(c: Connection, destination_id: str) -> PendingStats:
    row = (
        await c.execute("SELECT pending FROM destinations WHERE id = ?", (destination_id,))
    ).fetchone()
    if row is None:
        raise DestinationNotFound(destination_id)
    return PendingStats(row[0], await _oldest_pending(c, destination_id))


async def _oldest_pending(c: Connection, destination_id: str) -> datetime | None:
    # The outbox holds what was unpacked, the inbox what came after: the oldest is in the
    # outbox when it has any entry of the destination.
    oldest = (
        await c.execute(
            "SELECT enqueued_at FROM outbox WHERE destination_id = ? ORDER BY sequence LIMIT 1",
            (destination_id,),
        )
    ).fetchone() or (
        await c.execute(
            "SELECT enqueued_at FROM inbox WHERE destination_id = ? ORDER BY id LIMIT 1",
            (destination_id,),
        )
    ).fetchone()
    return from_micros(oldest[0]) if oldest is not None else None


async def _fetch_alert(c: Connection, alert_id: str) -> AlertRecord:
    rows = await c.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?", (alert_id,))
    return alert_record(rows.fetchone())


async def _beat(c: Connection, holder: str, expires: int) -> None:
    await c.execute(
        "INSERT INTO replicas (holder, expires_at) VALUES (?, ?) ON CONFLICT (holder) "
        "DO UPDATE SET expires_at = CASE WHEN excluded.expires_at > replicas.expires_at "
        "THEN excluded.expires_at ELSE replicas.expires_at END",
        (holder, expires),
    )


async def _held(c: Connection, holder: str, now: int) -> int:
    rows = await c.execute(
        "SELECT COUNT(*) FROM instance_leases WHERE holder = ? AND expires_at > ?", (holder, now)
    )
    return int(rows.fetchone()[0])


async def _share(c: Connection, holder: str, now: int, wanted: str | None) -> int:
    """ceil(busy instances (and `wanted`) / live replicas (and `holder`)), at least 1; busy
    instances have work or a live lease."""
    extra, extra_params = (" UNION SELECT ?", (wanted,)) if wanted is not None else ("", ())
    instances, others = (
        await c.execute(
            f"SELECT (SELECT COUNT(*) FROM ({INSTANCES_WITH_WORK} "
            f"UNION SELECT instance_key FROM instance_leases WHERE expires_at > ?{extra}) busy), "
            "(SELECT COUNT(*) FROM replicas WHERE expires_at > ? AND holder <> ?)",
            (now, now, *extra_params, now, holder),
        )
    ).fetchone()
    return max(1, -(-int(instances) // (int(others) + 1)))


def chunks(values: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """`values` in parts of at most `size`."""
    for start in range(0, len(values), size):
        yield values[start : start + size]
