"""The dispatcher's world: a real SqliteStore, the sandbox in process, one manual clock.

`TestClock` is the only time there is. The sandbox, the store, the dispatcher and the alert
monitor read it; the Marketo client's waits (retry backoff, rate windows) move it forward at once,
while the dispatcher's waits (linger, polling, heartbeat) and webhook retries wait until a test
advances it. Nothing sleeps for real except a few event-loop turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import ManualClock, SandboxSettings, asgi_transport, create_app
from service.api import inbox_codec
from service.app import marketo_connections
from service.delivery.config import Backoff, DeliveryServices, DeliverySettings
from service.delivery.dispatcher import Dispatcher
from service.domain import (
    AlertSubscription,
    AudienceMembership,
    DestinationSpec,
    FieldMapping,
    MarketoConnection,
    MembershipStatus,
    PersonAction,
    ProfileUpdate,
    SyncType,
)
from service.mapping.registry import PluginRegistry
from service.marketo.clock import Clock
from service.settings import Settings, WebhookSettings
from service.store.base import ActivationRecord, DestinationRecord, NewDestination
from service.store.postgres import PostgresStore
from service.store.secrets import SecretBox
from service.store.sql import Store
from service.store.sqlite import SqliteStore
from service.usecases.alerts import AlertMonitor
from service.usecases.connections import MarketoConnections
from tests.pg import fresh_database, truncate_all

BASE_URL = "https://123-ABC-456.mktorest.com"
MARKETO = Settings(default_marketo_endpoint=BASE_URL, marketo_share=1.0)
"""The service settings of the Marketo connections: the sandbox, all of each instance's limits."""
START = 1_780_000_200.0  # 2026-05-28 20:30:00 UTC: the middle of an hour
TENANT = "tenant-a"
WEBHOOK_SECRET = "whsec-3b1f0c9a-test-secret"
MAPPINGS = (
    FieldMapping("person.email", "DedupeField"),
    FieldMapping("person.first", "firstName"),
    FieldMapping("person.last", "lastName"),
)


class TestClock:
    """Epoch seconds that move only when advanced; `sleep` waits for that."""

    __test__ = False

    def __init__(self, start: float = START) -> None:
        self.manual = ManualClock(start)
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.manual.now()

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now(), tz=UTC)

    def advance(self, seconds: float) -> None:
        self.manual.advance(seconds)
        now = self.now()
        waiting = []
        for until, future in self._sleepers:
            if until <= now:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((until, future))
        self._sleepers = waiting

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now() + seconds, future))
        await future


class SteppingClock:
    """The same time for the Marketo client, whose waits move it forward immediately."""

    def __init__(self, clock: TestClock) -> None:
        self.clock = clock

    def now(self) -> float:
        return self.clock.now()

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.clock.advance(seconds)
        await asyncio.sleep(0)


async def eventually(
    condition: Callable[[], Awaitable[bool]],
    *,
    turns: int = 2_000,
    what: str = "",
    clock: TestClock | None = None,
    tick: float = 0.0,
) -> None:
    """Let the loop run until `condition` holds; fails after many turns (not a timing check).

    With `clock`, time also passes: `tick` seconds per turn (for waits on the clock that may
    start after the test decided to move it)."""
    for _ in range(turns):
        if await condition():
            return
        if clock is not None:
            clock.advance(tick)
        await asyncio.sleep(0.001)
    raise AssertionError(f"condition never held: {what}")


async def settle(turns: int = 50) -> None:
    """Give background tasks many loop turns (for asserting that something did NOT happen)."""
    for _ in range(turns):
        await asyncio.sleep(0.001)


async def drain_all(env: Env, dispatcher: Dispatcher, limit: int = 100) -> int:
    """Drain batch after batch until nothing is due; returns how many entries were claimed."""
    total = 0
    for _ in range(limit):
        claimed = await dispatcher.drain_once(env.instance_key)
        if not claimed:
            return total
        total += claimed
    raise AssertionError("the outbox never emptied")


@dataclass
class Env:
    path: Path
    box: SecretBox
    clock: TestClock
    store: Store
    app: Any
    http: httpx.AsyncClient
    connections: MarketoConnections
    registry: PluginRegistry
    alerts: AlertMonitor
    webhook_http: httpx.AsyncClient
    webhook_requests: list[httpx.Request] = field(default_factory=list)
    dispatchers: list[Dispatcher] = field(default_factory=list)

    @property
    def instance_key(self) -> str:
        return self.connections.instance_key(connection())

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.http.request(method, f"/_sandbox/{path}", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    async def fault(self, **fault: Any) -> None:
        await self.control("POST", "faults", {"faults": [fault]})

    async def clear_faults(self) -> None:
        await self.control("DELETE", "faults")

    async def leads(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.control("GET", "leads"))["leads"]
        return result

    async def lists(self) -> dict[int, list[int]]:
        dump = await self.control("GET", "lists")
        return {item["id"]: list(item["members"]) for item in dump["lists"]}

    async def calls(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.control("GET", "calls")
        return result

    def dispatcher(
        self,
        store: Store | None = None,
        *,
        holder: str = "replica-1",
        clock: Clock | None = None,
        **options: Any,
    ) -> Dispatcher:
        """A dispatcher over this world; `options` change its `DeliverySettings`."""
        settings = DeliverySettings(
            batch_size=300,
            linger=1.0,
            lease_ttl=timedelta(seconds=30),
            bulk_threshold=5_000,
            schema_recheck=Backoff(base=timedelta(minutes=1), maximum=timedelta(minutes=10)),
            poll_interval=3_600.0,
            backoff=Backoff(base=timedelta(seconds=5), maximum=timedelta(minutes=5)),
        )
        services = DeliveryServices(
            store or self.store,
            self.connections,
            self.registry,
            self.alerts,
            decode=inbox_codec.decode_batch,
            clock=clock or self.clock,
            rng=random.Random(7),
        )
        dispatcher = Dispatcher(services, replace(settings, **options), holder=holder)
        self.dispatchers.append(dispatcher)
        return dispatcher

    async def reopen(self) -> None:
        """Close the store and open the same file again (a restart)."""
        await self.store.close()
        self.store = await SqliteStore.open(self.path, self.box, clock=self.clock.datetime)
        self.alerts = AlertMonitor(
            self.store, http=self.webhook_http, clock=SteppingClock(self.clock)
        )

    async def destination(
        self,
        *,
        name: str = "dest",
        sync_type: SyncType = SyncType.AUDIENCE_AND_PROFILE,
        person_action: PersonAction | None = PersonAction.UPDATE_EXISTING_AND_CREATE_NEW,
        audiences: Sequence[str] = ("aud-1",),
        mappings: Sequence[FieldMapping] = MAPPINGS,
        alerts: AlertSubscription | None = None,
        client_id: str = "sandbox-client-id",
        client_secret: str = "sandbox-client-secret",
    ) -> DestinationRecord:
        spec = DestinationSpec(
            name=name,
            connection=connection(client_id, client_secret),
            sync_type=sync_type,
            dedupe_field="email",
            person_action=person_action,
            alerts=alerts or AlertSubscription(),
        )
        record = await self.store.create_destination(
            NewDestination(
                tenant=TENANT,
                name=name,
                spec=spec,
                instance_key=self.instance_key,
                mappings=tuple(mappings),
            )
        )
        if audiences:
            client = self.connections.client(connection())
            folder = await client.folder_by_name("Group Lists")
            assert folder is not None
            activations = []
            for audience in audiences:
                made = await client.create_static_list(f"{name} {audience}", folder.id)
                activations.append(ActivationRecord(audience, audience, "AEP", made.id, made.name))
            await self.store.upsert_activations(record.id, activations)
        return await self.store.get_destination(record.id, tenant=None)

    async def append(self, destination_id: str, updates: Sequence[ProfileUpdate]) -> None:
        body = inbox_codec.encode_updates(updates)
        result = await self.store.append(destination_id, self.instance_key, body, len(updates))
        assert result.count == len(updates)

    async def pending(self, destination_id: str) -> int:
        return (await self.store.pending_stats(destination_id)).count

    async def due(self, limit: int = 10_000) -> list[Any]:
        """The instance's due entries now, appended batches unpacked first (as a drainer does)."""
        now = self.clock.datetime()
        await self.store.unpack(self.instance_key, inbox_codec.decode_batch, limit, now=now)
        return list(await self.store.claim_due(self.instance_key, limit, now=now))

    async def outbox(self) -> list[Any]:
        """Every entry of the instance, due or not."""
        far = self.clock.datetime() + timedelta(days=400)
        await self.store.unpack(self.instance_key, inbox_codec.decode_batch, 100_000, now=far)
        return list(await self.store.claim_due(self.instance_key, 100_000, now=far))


def connection(
    client_id: str = "sandbox-client-id", client_secret: str = "sandbox-client-secret"
) -> MarketoConnection:
    return MarketoConnection("123-ABC-456", client_id, client_secret)


def profile(
    n: int,
    *,
    audiences: Sequence[str] = ("aud-1",),
    event_offset: float = 0.0,
    email: str | None = None,
    prefix: str = "u",
) -> ProfileUpdate:
    person: dict[str, Any] = {"first": f"First{n}", "last": f"Last{n}"}
    address = email if email is not None else f"person{n}@example.com"
    if address:
        person["email"] = address
    return ProfileUpdate(
        update_id=f"{prefix}-{n}",
        profile_id=f"p-{n}",
        event_time=datetime(2026, 5, 1, tzinfo=UTC) + timedelta(seconds=event_offset + n),
        profile={"person": person},
        memberships=tuple(AudienceMembership(a, MembershipStatus.REALIZED) for a in audiences),
    )


def exited(n: int, audience: str, **options: Any) -> ProfileUpdate:
    """`profile(n, **options)` exiting `audience` (its only membership)."""
    update = profile(n, **options)
    return replace(update, memberships=(AudienceMembership(audience, MembershipStatus.EXITED),))


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    clock = TestClock()
    box = SecretBox(SecretBox.generate_key())
    path = tmp_path / "store.db"
    store = await SqliteStore.open(path, box, clock=clock.datetime)
    async with world(path, box, clock, store) as environment:
        yield environment


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def either_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    """The same world over either store."""
    clock = TestClock()
    box = SecretBox(SecretBox.generate_key())
    path = tmp_path / "store.db"
    store: Store
    if request.param == "sqlite":
        store = await SqliteStore.open(path, box, clock=clock.datetime)
    else:
        url: str = request.getfixturevalue("postgres_url")
        truncate_all(url)
        store = await PostgresStore.open(url, box, clock=clock.datetime)
    async with world(path, box, clock, store) as environment:
        yield environment


@contextlib.asynccontextmanager
async def world(path: Path, box: SecretBox, clock: TestClock, store: Store) -> AsyncIterator[Env]:
    """The dispatcher's world over `store` (opened with `clock`), closed at the end."""
    app = create_app(SandboxSettings(), clock=clock.manual)
    requests: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200)

    async with (
        httpx.AsyncClient(transport=asgi_transport(app), base_url=BASE_URL) as http,
        httpx.AsyncClient(transport=httpx.MockTransport(receive)) as webhook_http,
    ):
        connections = marketo_connections(MARKETO, http, clock=SteppingClock(clock))
        alerts = AlertMonitor(
            store,
            http=webhook_http,
            clock=SteppingClock(clock),
            webhooks=WebhookSettings(max_attempts=4),
        )
        environment = Env(
            path=path,
            box=box,
            clock=clock,
            store=store,
            app=app,
            http=http,
            connections=connections,
            registry=PluginRegistry.build(load_entry_points=False),
            alerts=alerts,
            webhook_http=webhook_http,
            webhook_requests=requests,
        )
        try:
            yield environment
        finally:
            for dispatcher in environment.dispatchers:
                await dispatcher.stop()
            await environment.alerts.stop()
            await environment.store.close()
