"""Fixtures of the store suite.

Every test uses `store` (and, where it must look under the store, `backend`), so the whole suite
runs against each backend in `BACKENDS`: SQLite in a temporary directory, and PostgreSQL in a
database created for the test run (emptied before each test; see tests/pg.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.api import inbox_codec
from service.domain import (
    Action,
    ActionType,
    AlertSubscription,
    AudienceMembership,
    DestinationSpec,
    ExclusionCode,
    FieldMapping,
    MarketoConnection,
    MembershipStatus,
    Outcome,
    OutcomeKind,
    ProfileUpdate,
    SyncType,
)
from service.store.base import (
    AppendResult,
    DestinationRecord,
    NewDestination,
    OutboxEntry,
    Watermark,
)
from service.store.postgres import PostgresStore
from service.store.secrets import SecretBox
from service.store.sql import Store
from service.store.sqlite import SqliteStore
from tests.pg import fresh_database, truncate_all

START = datetime(2026, 5, 28, 10, 30, tzinfo=UTC)
"""A fixed instant: no test reads the wall clock."""

CLIENT_SECRET = "cs-9f3a1c7e-client-secret-value"
WEBHOOK_SECRET = "wh-51d2e8b0-webhook-secret-value"


class FakeClock:
    """A settable clock."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class Backend:
    """Opens stores of one engine and looks at committed data from outside the store.

    Reads go over a fresh connection: they show what a crash would keep.
    """

    name = ""

    async def open(self, clock: FakeClock, **options: Any) -> Store:
        raise NotImplementedError

    def inbox(self, destination_id: str) -> list[tuple[int, int, bytes]]:
        """The destination's inbox batches as (id, count, body), oldest first."""
        raise NotImplementedError

    def outbox_update_ids(self, destination_id: str) -> set[str]:
        """Update ids of the destination's outbox entries."""
        raise NotImplementedError

    def in_transaction(self) -> bool:
        """Whether a connection of the store holds a transaction open (SQLite: a write one)."""
        raise NotImplementedError

    def committed_batches(self, destination_id: str) -> list[int]:
        """Ids (append sequences) of the destination's inbox batches, oldest first."""
        return [batch_id for batch_id, _, _ in self.inbox(destination_id)]

    def committed_update_ids(self, destination_id: str) -> set[str]:
        """Update ids of the destination queued anywhere: in inbox batches or outbox entries."""
        ids = self.outbox_update_ids(destination_id)
        for _, _, body in self.inbox(destination_id):
            ids.update(u.update_id for u in inbox_codec.decode_updates(body))
        return ids


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, directory: Path, box: SecretBox) -> None:
        self.path = directory / "store.db"
        self.box = box

    async def open(self, clock: FakeClock, **options: Any) -> Store:
        return await SqliteStore.open(self.path, self.box, clock=clock, **options)

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        connection = sqlite3.connect(self.path)
        try:
            return list(connection.execute(sql, params))
        finally:
            connection.close()

    def in_transaction(self) -> bool:
        connection = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # database is locked
            return True
        else:
            connection.execute("ROLLBACK")
            return False
        finally:
            connection.close()

    def inbox(self, destination_id: str) -> list[tuple[int, int, bytes]]:
        rows = self._query(
            "SELECT id, count, body FROM inbox WHERE destination_id = ? ORDER BY id",
            (destination_id,),
        )
        return [(row[0], row[1], bytes(row[2])) for row in rows]

    def outbox_update_ids(self, destination_id: str) -> set[str]:
        rows = self._query(
            "SELECT update_id FROM outbox WHERE destination_id = ?", (destination_id,)
        )
        return {row[0] for row in rows}


class PostgresBackend(Backend):
    name = "postgresql"

    def __init__(self, url: str, box: SecretBox) -> None:
        self.url = url
        self.box = box

    async def open(self, clock: FakeClock, **options: Any) -> Store:
        return await PostgresStore.open(self.url, self.box, clock=clock, **options)

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as connection:
            return list(connection.execute(sql.encode(), params))

    def in_transaction(self) -> bool:
        (count,) = self._query(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%%' AND pid <> pg_backend_pid()",
            (),
        )[0]
        return bool(count)

    def inbox(self, destination_id: str) -> list[tuple[int, int, bytes]]:
        rows = self._query(
            "SELECT id, count, body FROM inbox WHERE destination_id = %s ORDER BY id",
            (destination_id,),
        )
        return [(row[0], row[1], bytes(row[2])) for row in rows]

    def outbox_update_ids(self, destination_id: str) -> set[str]:
        rows = self._query(
            "SELECT update_id FROM outbox WHERE destination_id = %s", (destination_id,)
        )
        return {row[0] for row in rows}


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database created for this test run (migrated by the first store opened on it)."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(SecretBox.generate_key())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, box: SecretBox) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path, box)
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        truncate_all(url)
        return PostgresBackend(url, box)
    raise AssertionError(request.param)


@pytest.fixture
async def store(backend: Backend, clock: FakeClock) -> AsyncIterator[Store]:
    opened = await backend.open(clock)
    try:
        yield opened
    finally:
        await opened.close()


async def append(
    store: Store,
    destination_id: str,
    instance_key: str,
    updates: Sequence[ProfileUpdate],
    trace_context: str | None = None,
) -> AppendResult:
    """Append `updates` as one batch, encoded as Sync encodes a request."""
    return await store.append(
        destination_id,
        instance_key,
        inbox_codec.encode_updates(updates),
        len(updates),
        trace_context,
    )


async def unpack(
    store: Store,
    instance_key: str,
    *,
    limit: int = 100_000,
    now: datetime | None = None,
    fencing: int | None = None,
) -> int:
    """Unpack the instance's inbox into the outbox (everything, unless `limit` says otherwise)."""
    return await store.unpack(
        instance_key, inbox_codec.decode_batch, limit, fencing=fencing, now=now
    )


async def claimed(
    store: Store, destination_id: str, instance_key: str, numbers: Sequence[int]
) -> list[OutboxEntry]:
    """`update(n)` for each number appended as one batch, unpacked and claimed at START."""
    await append(store, destination_id, instance_key, [update(n) for n in numbers])
    await unpack(store, instance_key)
    return list(await store.claim_due(instance_key, 10, START))


async def deliver_daily(
    store: Store,
    destination_id: str,
    instance_key: str,
    clock: FakeClock,
    days: int,
    *,
    applied: bool = False,
) -> list[str]:
    """One update delivered a day for `days` days, from the clock's time (u0 first), each
    retired as activated (with `applied`, its attributes applied: its profile's watermark
    raised, so its resync source kept); their update ids, oldest first."""
    delivered = []
    for n in range(days):
        await append(store, destination_id, instance_key, [update(n)])
        await unpack(store, instance_key, now=clock.now)
        entries = await store.claim_due(instance_key, 10, clock.now)
        await store.retire(
            entries,
            [activated(e, ActionType.UPDATED) for e in entries],
            [
                Watermark(destination_id, e.update.profile_id, e.update.event_time)
                for e in entries
                if applied
            ],
        )
        delivered.extend(e.update.update_id for e in entries)
        clock.advance(timedelta(days=1))
    return delivered


async def outcome_update_ids(store: Store, destination_id: str) -> list[str]:
    """The update ids of the destination's outcomes, oldest first."""
    page = await store.list_outcomes(destination_id, page_size=1000)
    return [record.outcome.update_id for record in reversed(page.items)]


INSTANCE = "123-ABC-456"
"""The Marketo instance of the destinations these tests create."""


def destination_spec(name: str = "d", client_secret: str = CLIENT_SECRET) -> DestinationSpec:
    """A destination spec with both secrets (the webhook secret is `WEBHOOK_SECRET`)."""
    return DestinationSpec(
        name=name,
        connection=MarketoConnection(INSTANCE, "cid", client_secret),
        sync_type=SyncType.AUDIENCE_AND_PROFILE,
        dedupe_field="email",
        alerts=AlertSubscription(webhook_secret=WEBHOOK_SECRET),
    )


def new_destination(
    tenant: str = "acme", name: str = "Marketo prod", **changes: Any
) -> NewDestination:
    values: dict[str, Any] = {
        "tenant": tenant,
        "name": name,
        "spec": destination_spec(name),
        "instance_key": INSTANCE,
        "mappings": (FieldMapping("person.email", "DedupeField", labels=("C2",)),),
    }
    values.update(changes)
    return NewDestination(**values)


@pytest.fixture
async def destination(store: Store) -> DestinationRecord:
    """A destination of `new_destination()`'s, created in the test's store."""
    return await store.create_destination(new_destination())


def update(
    n: int,
    *,
    profile_id: str | None = None,
    event_time: datetime | None = None,
    audiences: Sequence[str] = ("aud-1",),
) -> ProfileUpdate:
    return ProfileUpdate(
        update_id=f"u{n}",
        profile_id=profile_id or f"p{n}",
        event_time=event_time or START - timedelta(minutes=5) + timedelta(seconds=n),
        profile={"person": {"email": f"p{n}@example.com", "name": {"firstName": "Ann"}}},
        memberships=tuple(AudienceMembership(a, MembershipStatus.REALIZED) for a in audiences),
    )


def activated(entry: OutboxEntry, *actions: ActionType, lead_id: int = 7) -> Outcome:
    return Outcome(
        update_id=entry.update.update_id,
        profile_id=entry.update.profile_id,
        dedupe_value=f"{entry.update.profile_id}@example.com",
        kind=OutcomeKind.ACTIVATED,
        actions=tuple(
            Action(a, "aud-1" if a in (ActionType.ADDED, ActionType.REMOVED) else None)
            for a in actions
        ),
        lead_id=lead_id,
    )


def excluded(
    entry: OutboxEntry,
    reason: str,
    code: ExclusionCode = ExclusionCode.CONSENT_REFUSED,
    field: str = "",
) -> Outcome:
    return Outcome(
        update_id=entry.update.update_id,
        profile_id=entry.update.profile_id,
        dedupe_value=None,
        kind=OutcomeKind.EXCLUDED,
        reason=reason,
        exclusion_code=code,
        field=field,
    )


def failed(entry: OutboxEntry, code: str) -> Outcome:
    return Outcome(
        update_id=entry.update.update_id,
        profile_id=entry.update.profile_id,
        dedupe_value=f"{entry.update.profile_id}@example.com",
        kind=OutcomeKind.FAILED,
        reason="Marketo refused it",
        marketo_code=code,
    )


def superseded(entry: OutboxEntry) -> Outcome:
    return Outcome(
        update_id=entry.update.update_id,
        profile_id=entry.update.profile_id,
        dedupe_value=None,
        kind=OutcomeKind.SUPERSEDED,
    )
