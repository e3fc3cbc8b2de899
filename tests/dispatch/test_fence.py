"""External fencing: the call gate's margin logic, the Marketo client's checks that apply it,
and a drainer that takes over an expired lease waiting out the margin before its first call."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from service.delivery.engine.executor import may_have_applied
from service.delivery.fence import CallGate, LeaseUnconfirmed
from service.marketo.client import MarketoClient
from service.marketo.errors import OutcomeUnknownError, UnavailableError
from service.marketo.limits import InstanceLimits
from service.marketo.types import SyncAction
from service.settings import InvalidSetting, Settings
from tests.dispatch.conftest import Env, eventually, profile

T0 = datetime(2026, 5, 28, 20, 30, tzinfo=UTC)


class Clock:
    """Epoch seconds moved by hand."""

    def __init__(self) -> None:
        self.t = T0.timestamp()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


def gate(clock: Clock, *, confirmed_for: float = 30.0, margin: float = 10.0) -> CallGate:
    return CallGate(clock, margin=margin, confirmed_until=T0 + timedelta(seconds=confirmed_for))


def test_a_call_may_start_only_while_the_lease_is_confirmed_beyond_the_margin() -> None:
    clock = Clock()
    shut = gate(clock, confirmed_for=30.0, margin=10.0)
    assert shut.open
    clock.t += 19.5  # 10.5 s confirmed: more than the margin
    assert shut.open
    clock.t += 0.5  # exactly the margin left
    assert not shut.open
    with pytest.raises(LeaseUnconfirmed, match=r"within the 10\.0s margin") as raised:
        shut.check()
    assert isinstance(raised.value, UnavailableError)  # the engine defers, nothing was sent


def test_a_renewal_moves_the_limit_and_reopens_a_closed_gate() -> None:
    clock = Clock()
    shut = gate(clock)
    shut.close("the event loop stalled for 12.0s")
    assert shut.refusal() == "the event loop stalled for 12.0s"
    clock.t += 25.0
    shut.confirm(T0 + timedelta(seconds=25 + 30))
    assert shut.open
    clock.t += 20.0
    assert not shut.open


def test_a_lease_taken_over_opens_only_at_its_opening_time() -> None:
    clock = Clock()
    taken = CallGate(
        clock,
        margin=10.0,
        confirmed_until=T0 + timedelta(seconds=30),
        opens_at=T0 + timedelta(seconds=4),
    )
    refusal = taken.refusal()
    assert refusal is not None and "taken over" in refusal
    clock.t += 4.0
    assert taken.open


LEADS = "/rest/v1/leads.json"


class Marketo:
    """A Marketo that records the paths it is sent: Identity, then leads updated, after one
    answer 503 when `busy_first`."""

    def __init__(self, *, busy_first: bool = False) -> None:
        self.sent: list[str] = []
        self._busy = busy_first

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request.url.path)
        if request.url.path == "/identity/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        if self._busy:
            self._busy = False
            return httpx.Response(503)
        return httpx.Response(
            200, json={"success": True, "result": [{"id": 1, "status": "updated"}]}
        )


def client(http: httpx.AsyncClient, clock: Clock) -> MarketoClient:
    return MarketoClient(
        http,
        base_url="https://123-ABC-456.mktorest.com",
        client_id="id",
        client_secret="secret",
        limits=InstanceLimits(clock=clock),
        clock=clock,
    )


async def update(marketo: MarketoClient) -> None:
    await marketo.sync_leads([{"id": 1}], action=SyncAction.UPDATE_ONLY, lookup_field="id")


async def test_a_call_of_a_task_whose_gate_is_shut_takes_nothing_and_sends_nothing() -> None:
    clock = Clock()
    marketo = Marketo()
    async with httpx.AsyncClient(transport=httpx.MockTransport(marketo)) as http:
        shared = client(http, clock)

        async def drainer(seconds_later: float) -> None:
            gated = shared.gated(gate(clock))
            clock.t += seconds_later
            await asyncio.create_task(update(gated))  # a task it starts calls through its view

        await asyncio.create_task(drainer(1.0))
        assert marketo.sent == ["/identity/oauth/token", LEADS]
        counted = shared.limits.used_today
        marketo.sent.clear()
        with pytest.raises(LeaseUnconfirmed):
            await asyncio.create_task(drainer(25.0))
        assert marketo.sent == []
        assert shared.limits.used_today == counted  # no turn at the instance's limits taken
        await update(shared)  # the client itself has no gate: not a drainer's
    assert marketo.sent == [LEADS]


async def test_a_call_held_up_is_checked_again_before_its_next_exchange() -> None:
    clock = Clock()
    marketo = Marketo(busy_first=True)
    async with httpx.AsyncClient(transport=httpx.MockTransport(marketo)) as http:
        shared = client(http, clock)

        async def drainer() -> None:
            gated = shared.gated(gate(clock, confirmed_for=10.2, margin=10.0))  # 0.2 s more
            await update(gated)  # answered 503, retried after a backoff of 0.5 s or more

        with pytest.raises(LeaseUnconfirmed):
            await asyncio.create_task(drainer())
    assert marketo.sent == ["/identity/oauth/token", LEADS]


async def test_a_retry_refused_after_an_attempt_that_may_have_landed_may_have_applied() -> None:
    """An add whose first exchange timed out (it may have reached Marketo) and whose retry the
    gate refuses: the batch stops on the gate's error, which must not say that nothing
    changed, so that the engine holds the lead unconfirmed (a later exit removes it)."""
    clock = Clock()
    sent: list[str] = []

    def marketo(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        if request.url.path == "/identity/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        raise httpx.ReadTimeout("no answer", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(marketo)) as http:
        gated = client(http, clock).gated(gate(clock, confirmed_for=10.2, margin=10.0))
        with pytest.raises(LeaseUnconfirmed) as raised:
            await gated.add_to_list(7, [1])  # retried after a backoff of 0.5 s or more
    assert sent == ["/identity/oauth/token", "/rest/v1/lists/7/leads.json"]
    assert may_have_applied(raised.value)


async def test_a_gate_refuses_only_the_calls_of_its_own_view_of_a_shared_client() -> None:
    clock = Clock()
    marketo = Marketo()
    async with httpx.AsyncClient(transport=httpx.MockTransport(marketo)) as http:
        shared = client(http, clock)  # as the connections hand it to every caller
        lost = gate(clock)
        lost.close("the lease was lost")
        stopped = shared.gated(lost)  # a drainer whose lease is gone
        running = shared.gated(gate(clock))  # another drainer, its lease confirmed
        # One task calls through all three: nothing of the stopped drainer's gate is the task's.
        with pytest.raises(LeaseUnconfirmed, match="the lease was lost"):
            await update(stopped)
        assert marketo.sent == []
        await update(shared)  # an RPC's call (DescribeMarketo, Configure, Reconcile ...)
        await update(running)
        with pytest.raises(LeaseUnconfirmed):
            await update(stopped)
    assert marketo.sent == ["/identity/oauth/token", LEADS, LEADS]


class OneCheck:
    """A gate that lets one check pass, then refuses (the lease lost meanwhile)."""

    def __init__(self) -> None:
        self.checks = 0

    def check(self) -> None:
        self.checks += 1
        if self.checks > 1:
            raise LeaseUnconfirmed("Marketo call not sent: the lease was lost")


async def test_the_identity_exchange_of_a_gated_call_is_checked_too() -> None:
    clock = Clock()
    marketo = Marketo()
    async with httpx.AsyncClient(transport=httpx.MockTransport(marketo)) as http:
        shut_after_start = OneCheck()
        with pytest.raises(LeaseUnconfirmed):
            await update(client(http, clock).gated(shut_after_start))
    assert shut_after_start.checks == 2  # when the call started, then before its token request
    assert marketo.sent == []


class OneConnection(httpx.AsyncBaseTransport):
    """A connection pool of one connection: a REST request waits until `connection` is free,
    as httpx waits for a pooled connection (bounded by its pool timeout alone, none here).
    Identity answers at once."""

    def __init__(self) -> None:
        self.connection = asyncio.Lock()
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/identity/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        async with self.connection:
            self.sent.append(request.url.path)
            return httpx.Response(200, json={"success": True, "result": [{"status": "created"}]})


async def test_an_exchange_waiting_for_a_pooled_connection_is_cut_at_the_timeout() -> None:
    clock = Clock()
    pool = OneConnection()
    timeout = httpx.Timeout(0.05, pool=None)  # each phase bounded but the pool wait
    async with httpx.AsyncClient(transport=pool, timeout=timeout) as http:
        gated = client(http, clock).gated(gate(clock))
        async with pool.connection:  # another call holds the only connection, for ever
            creating = gated.sync_leads(
                [{"email": "a@example.com"}],
                action=SyncAction.CREATE_OR_UPDATE,
                lookup_field="email",
            )
            with pytest.raises(OutcomeUnknownError, match="Timed out waiting for Marketo"):
                # The outer bound only keeps a failing test from waiting for ever.
                await asyncio.wait_for(creating, 30.0)
    assert pool.sent == []


def test_the_lease_must_outlast_the_call_margin_between_renewals() -> None:
    url = "postgresql://md@127.0.0.1:5432/md"
    with pytest.raises(InvalidSetting, match="lease_ttl_seconds"):
        Settings(
            database_url=url,
            lease_ttl_seconds=60.0,
            marketo_timeout_seconds=40.0,
            lease_clock_skew_seconds=1,
        )
    fine = Settings(database_url=url, lease_ttl_seconds=60.0, marketo_timeout_seconds=30.0)
    assert fine.call_margin_seconds == 35.0
    assert fine.lease_ttl == 60.0
    # Automatic: 1.8 margins with PostgreSQL (180 s by default), 30 s for the embedded store.
    assert Settings(database_url=url).lease_ttl == 180.0
    assert Settings(database_url=url, marketo_timeout_seconds=10.0).lease_ttl == 30.0
    assert Settings().lease_ttl == 30.0
    assert Settings(lease_ttl_seconds=10.0).lease_ttl == 10.0  # one process: no margin to keep


async def test_a_drainer_taking_an_expired_lease_waits_out_the_margin(env: Env) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(0)])
    ttl = timedelta(seconds=30)
    dead = await env.store.acquire_lease(env.instance_key, "dead", ttl, now=env.clock.datetime())
    assert dead is not None
    env.clock.advance(31.0)  # expired 1 s ago, never released
    before = (await env.calls())["counted"]
    dispatcher = env.dispatcher(linger=0.0, call_margin=5.0, lease_ttl=ttl)
    await dispatcher.start()
    dispatcher.notify(env.instance_key)
    await eventually(lambda: _running(dispatcher, env), what="drainer started")
    env.clock.advance(3.0)  # 4 s after the expiry: still within the margin
    for _ in range(50):
        await asyncio.sleep(0.001)
    assert (await env.calls())["counted"] == before
    assert await env.pending(destination.id) == 1

    env.clock.advance(1.5)
    await eventually(lambda: _delivered(env, destination.id), what="delivered")
    await dispatcher.stop()
    assert [lead["fields"]["email"] for lead in await env.leads()] == ["person0@example.com"]


async def test_a_released_lease_is_taken_without_waiting(env: Env) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(0)])
    ttl = timedelta(seconds=30)
    left = await env.store.acquire_lease(env.instance_key, "left", ttl, now=env.clock.datetime())
    assert left is not None
    await env.store.release_lease(left)
    dispatcher = env.dispatcher(linger=0.0, call_margin=5.0, lease_ttl=ttl)
    await dispatcher.start()
    dispatcher.notify(env.instance_key)
    await eventually(lambda: _delivered(env, destination.id), what="delivered")
    await dispatcher.stop()


async def test_a_batch_calls_through_its_gate_and_leaves_the_cached_client_ungated(
    env: Env,
) -> None:
    destination = await env.destination()
    await env.append(destination.id, [profile(0)])
    delivery = env.dispatcher().delivery
    ttl = timedelta(seconds=30)
    lease = await env.store.acquire_lease(
        env.instance_key, "replica-1", ttl, now=env.clock.datetime()
    )
    assert lease is not None
    record = await env.store.get_destination(destination.id, tenant=None)
    await delivery.engine_for(record)  # a dry run: the destination's client is cached
    before = (await env.calls())["counted"]
    lost = CallGate(env.clock, margin=5.0, confirmed_until=lease.expires_at)
    lost.close("the lease was lost")

    await delivery.deliver(env.instance_key, lease, await delivery.claim(lease, 10), gate=lost)
    assert (await env.calls())["counted"] == before  # nothing sent
    [held] = await delivery.claim(lease, 10)  # due at once, no attempt counted
    assert held.attempts == 0
    assert "the lease was lost" in held.last_error

    await delivery.deliver(env.instance_key, lease, [held])  # no gate: the cached client's own
    assert await env.pending(destination.id) == 0
    assert [lead["fields"]["email"] for lead in await env.leads()] == ["person0@example.com"]


async def _running(dispatcher: object, env: Env) -> bool:
    return env.instance_key in getattr(dispatcher, "active_instances", frozenset())


async def _delivered(env: Env, destination_id: str) -> bool:
    return await env.pending(destination_id) == 0
