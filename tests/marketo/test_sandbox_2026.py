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
from service.marketo.auth import AccessToken
from service.marketo.client import MarketoClient
from service.marketo.errors import QuotaExhaustedError, RejectedError
from service.marketo.limits import DailyUsage, InstanceLimits
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


# ------------------------------------------------------------ typed operations
# Leads: https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/lead-database/leads
# List membership: .../rest/lead-database/list-membership
# Bulk Lead Extract: .../rest/bulk-extract/bulk-lead-extract


async def _list_with(env: Env, client: MarketoClient, emails: list[str]) -> tuple[int, list[int]]:
    ids = await env.seed([{"email": email, "firstName": email[:2]} for email in emails])
    folder = await client.folder_by_name("Group Lists", workspace="Default")
    assert folder is not None
    created = await client.create_static_list("Members", folder.id)
    await client.add_to_list(created.id, ids)
    return created.id, ids


async def test_list_members_page_by_page(recorded: tuple[Env, Recorder]) -> None:
    env, _ = recorded
    client = env.client()
    list_id, ids = await _list_with(env, client, [f"m{i}@example.com" for i in range(5)])
    pages = [await client.list_members_page(list_id, ["email"], batch_size=2)]
    while pages[-1].next_page_token is not None:
        token = pages[-1].next_page_token
        pages.append(await client.list_members_page(list_id, ["email"], page_token=token))
        assert len(pages) < 10
    assert [len(page.leads) for page in pages[:2]] == [2, 3]  # batch size 300 after the first
    assert sorted(lead.id for page in pages for lead in page.leads) == sorted(ids)
    assert pages[0].leads[0].fields["email"].endswith("@example.com")


async def test_delete_and_merge_leads(recorded: tuple[Env, Recorder]) -> None:
    env, _ = recorded
    client = env.client()
    list_id, (winner, loser, doomed) = await _list_with(
        env, client, ["w@example.com", "l@example.com", "d@example.com"]
    )
    results = await client.delete_leads([doomed, doomed, 999_999])
    assert [(r.id, r.status) for r in results] == [(doomed, "deleted"), (999_999, "skipped")]
    assert results[1].reasons[0].code == "1004"
    assert await client.get_lead(doomed) is None

    await client.merge_leads(winner, [loser])
    assert await client.get_lead(loser) is None  # a merged-away id resolves to nothing
    assert await client.find_leads("email", ["l@example.com"]) == []
    assert [lead.id for lead in await client.list_members(list_id)] == [winner]
    with pytest.raises(RejectedError) as caught:
        await client.merge_leads(winner, [loser])
    assert caught.value.code == "1004"


async def test_bulk_extract_of_a_list(recorded: tuple[Env, Recorder]) -> None:
    env, _ = recorded
    client = env.client()
    list_id, _ = await _list_with(env, client, ["x1@example.com", "x2@example.com"])
    job = await client.create_export(["email", "firstName"], static_list_id=list_id)
    assert job.status == "Created"
    queued = await client.enqueue_export(job.export_id)
    assert queued.status == "Queued"
    again = await client.enqueue_export(job.export_id)  # 1029 "Job already queued": its status
    assert again.export_id == job.export_id and again.status in ("Queued", "Processing")
    for _ in range(20):
        status = await client.export_status(job.export_id)
        if status.status == "Completed":
            break
        await env.clock.sleep(30)
    assert status.status == "Completed" and status.records == 2
    text = await client.export_file(job.export_id)
    assert text.splitlines()[0] == "email,firstName"
    assert sorted(text.splitlines()[1:]) == ["x1@example.com,x1", "x2@example.com,x2"]
    assert status.file_size == len(text.encode())

    other = await client.create_export(["email"], static_list_id=list_id)
    assert (await client.cancel_export(other.export_id)).status == "Cancelled"

    limited = await env.http.post("/_sandbox/bulk-export", json={"daily_limit_bytes": 1})
    assert limited.status_code == 200, limited.text
    with pytest.raises(QuotaExhaustedError) as spent:
        await client.create_export(["email"], static_list_id=list_id)
    assert spent.value.code == "1029"
    assert client.limits.paused_until is None  # other calls go on
    assert await client.static_list(list_id) is not None
