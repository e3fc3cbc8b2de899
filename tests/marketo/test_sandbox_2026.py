"""The client against Marketo's 2026 rules, as the sandbox emulates them by default.

Authentication: https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/authentication
(the token only in `Authorization: Bearer`; Identity hands back the live token with its remaining
lifetime, `expires_in: 0` in its last second). One token cache per instance and client id serves
every destination and drainer of the process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from sandbox import ManualClock, SandboxSettings, asgi_transport, create_app
from service.domain import MarketoConnection
from service.marketo import AccessToken, InstanceLimits, MarketoClient, QuotaExhaustedError
from service.marketo.limits import DailyUsage
from service.usecases.connections import MarketoConnections
from tests.marketo.conftest import START
from tests.marketo.test_sandbox import BASE, Env, SharedClock


class Recorder:
    """Every request the client sends (URL and body), to check where the token travels."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> None:
        self.requests.append(request)


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[Env, Recorder]]:
    manual = ManualClock(START)
    app = create_app(SandboxSettings(), clock=manual)
    recorder = Recorder()
    async with httpx.AsyncClient(
        transport=asgi_transport(app), base_url=BASE, event_hooks={"request": [recorder]}
    ) as http:
        yield Env(http, SharedClock(manual)), recorder


def _connections(env: Env) -> MarketoConnections:
    return MarketoConnections(env.http, clock=env.clock)


def _destination(name: str) -> MarketoConnection:
    """A destination's connection: every destination of the test uses the same custom service."""
    assert name
    return MarketoConnection(
        munchkin_id="123-ABC-456",
        client_id="sandbox-client-id",
        client_secret="sandbox-client-secret",
        endpoint=BASE,
    )


async def test_the_token_travels_only_in_the_header(recorded: tuple[Env, Recorder]) -> None:
    env, recorder = recorded
    client = env.client()
    token = await client.token()
    # The sandbox refuses the query form by default, as Marketo does since 2026.
    refused = await env.http.get(
        "/rest/v1/leads/partitions.json", params={"access_token": token.value}
    )
    assert refused.json()["errors"][0]["code"] == "601"

    await env.seed([{"email": "a@example.com"}])
    assert "Default" in [p.name for p in await client.partitions()]
    found = await client.find_leads("email", ["a@example.com"], ["email"])
    assert [lead.fields["email"] for lead in found] == ["a@example.com"]

    calls = [r for r in recorder.requests if r.url.path.startswith("/rest/")]
    sent_by_client = calls[1:]  # the first is the test's own refused call
    assert len(sent_by_client) == 2
    for request in sent_by_client:
        assert request.headers["Authorization"] == f"Bearer {token.value}"
        assert "access_token" not in str(request.url)
        assert b"access_token" not in request.content
        assert token.value.encode() not in request.content


async def test_one_token_serves_every_destination_and_drainer(
    recorded: tuple[Env, Recorder],
) -> None:
    env, _ = recorded
    connections = _connections(env)
    clients = [
        connections.client(_destination("orders")),
        connections.client(_destination("orders"), interactive=True),
        connections.client(_destination("loyalty")),
        connections.client(_destination("web")),
    ]
    for client in clients:
        await client.partitions()
    env.clock.advance(3000)  # 600 s left: the token is still reused
    for client in clients:
        await client.describe2()
    stats = await env.calls()
    assert stats["identity"] == 1
    assert len({(await client.token()).value for client in clients}) == 1


async def test_a_token_handed_back_in_its_last_second_is_not_used(
    recorded: tuple[Env, Recorder],
) -> None:
    env, _ = recorded
    await env.reset(token_ttl=100)
    client = env.client()
    first = await client.token()
    env.clock.advance(99.5)  # Identity now answers the same token with expires_in 0
    answered = (
        await env.http.post(
            "/identity/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "sandbox-client-id",
                "client_secret": "sandbox-client-secret",
            },
        )
    ).json()
    assert answered["expires_in"] == 0

    assert "Default" in [p.name for p in await client.partitions()]
    used: AccessToken = await client.token()
    assert used.value != first.value
    stats: dict[str, Any] = await env.calls()
    assert "602" not in stats["by_code"] and "601" not in stats["by_code"]
    assert env.clock.now() > first.expires_at


async def test_the_budget_seeded_from_the_usage_api_leaves_the_reserve(
    recorded: tuple[Env, Recorder],
) -> None:
    """Usage API: https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/lead-database/usage
    (calls per API user and day). Another integration's 30 calls spend our budget too."""
    env, _ = recorded
    await env.reset(daily_quota=60)
    seeded = await env.http.post(
        "/_sandbox/usage", json={"userId": "crm-sync@example.com", "count": 30}
    )
    assert seeded.status_code == 200, seeded.text

    def process() -> MarketoClient:
        """A client of a newly started process: limits of its own, Usage API read at start."""
        limits = InstanceLimits(daily_quota=60, daily_reserve=10, clock=env.clock)
        return MarketoClient(
            env.http,
            base_url=BASE,
            client_id="sandbox-client-id",
            client_secret="sandbox-client-secret",
            clock=env.clock,
            limits=limits,
            seed_from_usage=True,
        )

    client = process()
    made = 0
    with pytest.raises(QuotaExhaustedError):
        for _ in range(60):
            await client.partitions()
            made += 1
    assert made == 60 - 10 - 30 - 1  # the Usage API reading is one of our calls
    assert client.limits.usage == DailyUsage(
        ours=20, others=30, remaining=0, usage_read_at=client.limits.usage.usage_read_at
    )
    assert (await env.calls())["quota_used"] == 50  # the reserve is left to the others

    restarted = process()  # after a restart, Marketo's count of ours is read at start
    with pytest.raises(QuotaExhaustedError):
        await restarted.partitions()
    assert (restarted.limits.usage.ours, restarted.limits.usage.others) == (21, 30)
    assert (await env.calls())["quota_used"] == 51  # only the reading itself
    usage = (await env.http.get("/_sandbox/usage")).json()
    (today,) = usage.values()
    assert today["calls"]["crm-sync@example.com"] == {"GET /rest/v1/leads.json": 30}
    assert sum(today["calls"]["sandbox-api-user@example.com"].values()) == 21
