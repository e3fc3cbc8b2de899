"""The client against the Marketo sandbox in process, with injected faults.

Every scenario ends with every operation completed or a clear error, attempts bounded and
counted, and no call over the instance's limits. Time is a ManualClock shared by the sandbox
and the client: nothing sleeps for real except the sandbox's own injected delays.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from sandbox import ManualClock, SandboxSettings, asgi_transport, create_app
from service.marketo.client import MarketoClient
from service.marketo.errors import OutcomeUnknownError, QuotaExhaustedError
from service.marketo.limits import InstanceLimits, next_reset
from service.marketo.types import SyncAction
from service.settings import RetryPolicy
from tests.marketo.conftest import START

BASE = "https://123-ABC-456.mktorest.com"


class SharedClock:
    """The client's Clock over the sandbox's ManualClock: sleeping advances both."""

    def __init__(self, manual: ManualClock) -> None:
        self.manual = manual
        self.slept = 0.0

    def now(self) -> float:
        return self.manual.now()

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self.manual.advance(seconds)

    async def sleep(self, seconds: float) -> None:
        target = self.now() + max(0.0, seconds)
        self.slept += max(0.0, seconds)
        await asyncio.sleep(0)
        self.advance(target - self.now())


class Env:
    def __init__(self, http: httpx.AsyncClient, clock: SharedClock) -> None:
        self.http = http
        self.clock = clock

    async def reset(self, **settings: Any) -> None:
        response = await self.http.post("/_sandbox/reset", json=settings)
        assert response.status_code == 200, response.text

    async def faults(self, *faults: dict[str, Any]) -> None:
        response = await self.http.post("/_sandbox/faults", json=list(faults))
        assert response.status_code == 200, response.text

    async def calls(self) -> dict[str, Any]:
        stats: dict[str, Any] = (await self.http.get("/_sandbox/calls")).json()
        return stats

    async def seed(self, leads: list[dict[str, Any]]) -> list[int]:
        response = await self.http.post("/_sandbox/leads", json={"leads": leads})
        assert response.status_code == 200, response.text
        ids: list[int] = response.json()["ids"]
        return ids

    def client(
        self,
        *,
        limits: InstanceLimits | None = None,
        retry: RetryPolicy | None = None,
        secret: str = "sandbox-client-secret",
    ) -> MarketoClient:
        return MarketoClient(
            self.http,
            base_url=f"{BASE}/rest",
            client_id="sandbox-client-id",
            client_secret=secret,
            clock=self.clock,
            limits=limits or InstanceLimits(clock=self.clock),
            retry=retry or RetryPolicy(rng=random.Random(3)),
        )


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    manual = ManualClock(START)
    app = create_app(SandboxSettings(), clock=manual)
    async with httpx.AsyncClient(transport=asgi_transport(app), base_url=BASE) as http:
        yield Env(http, SharedClock(manual))


def over_limit(stats: dict[str, Any]) -> int:
    codes = stats["by_code"]
    return int(codes.get("606", 0)) + int(codes.get("615", 0))


# ------------------------------------------------------------------ happy path


async def test_every_operation_against_the_sandbox(env: Env) -> None:
    client = env.client()
    schema = await client.describe2()
    assert ("email",) in schema.searchable_fields
    assert any(f.rest_name == "email" for f in await client.describe())
    assert "Default" in [p.name for p in await client.partitions()]
    assert "Default" in [w.name for w in await client.workspaces()]
    folder = await client.folder_by_name("Group Lists", workspace="Default")
    assert folder is not None
    sub = await client.create_folder("Audiences", folder.id)
    created = await client.create_static_list("Audience A", sub.id, description="from CDP")
    assert await client.static_list_by_name("Audience A") == created
    assert (await client.static_list(created.id)) is not None
    assert await client.static_list_by_name("No such list") is None

    records = [{"email": f"p{i}@example.com", "firstName": f"P{i}"} for i in range(320)]
    results = await client.sync_leads(records, action=SyncAction.CREATE_ONLY)
    assert [r.status for r in results] == ["created"] * 320
    again = await client.sync_leads(records[:2], action=SyncAction.CREATE_ONLY)
    assert [r.reasons[0].code for r in again] == ["1005", "1005"]
    updated = await client.sync_leads(
        [{"id": results[0].id, "lastName": "Z"}],
        action=SyncAction.UPDATE_ONLY,
        lookup_field="id",
    )
    assert updated[0].status == "updated"

    found = await client.find_leads("email", [r["email"] for r in records], ["email", "updatedAt"])
    assert len(found) == 320
    ids = [r.id for r in results if r.id is not None]
    assert {m.status for m in await client.add_to_list(created.id, ids)} == {"added"}
    assert len(await client.list_members(created.id, ["email"])) == 320
    member = await client.is_member(created.id, ids[:2])
    assert [m.status for m in member] == ["memberof", "memberof"]
    removed = await client.remove_from_list(created.id, ids[:1])
    assert removed[0].status == "removed"
    not_in = await client.remove_from_list(created.id, ids[:1])
    assert not_in[0].reasons[0].code == "1015"
    lead = await client.get_lead(ids[5], ["email", "leadPartitionId"])
    assert lead is not None and lead.fields["email"] == "p5@example.com"

    job = await client.create_import(
        b"email,firstName\nnew1@example.com,A\nnot-an-email,B\n", list_id=created.id
    )
    assert job.status == "Queued"
    env.clock.advance(10)
    status = await client.import_status(job.batch_id)
    assert status.status in ("Importing", "Complete")
    env.clock.advance(10)
    status = await client.import_status(job.batch_id)
    assert status.status == "Complete"
    assert isinstance(await client.import_failures(job.batch_id), str)
    assert isinstance(await client.import_warnings(job.batch_id), str)
    await client.delete_static_list(created.id)
    assert await client.static_list(created.id) is None
    assert over_limit(await env.calls()) == 0


# ------------------------------------------------------------------ limits


async def test_limits_hold_under_load_and_nothing_is_throttled(env: Env) -> None:
    await env.reset(calls_per_window=10, window_seconds=20, concurrency=3, latency_ms=5)
    limits = InstanceLimits(calls_per_window=10, window_seconds=20, concurrency=2, clock=env.clock)
    client = env.client(limits=limits)
    start = env.clock.now()
    await asyncio.gather(*(client.find_leads("email", [f"x{i}@example.com"]) for i in range(40)))
    stats = await env.calls()
    assert over_limit(stats) == 0
    assert stats["peak_concurrency"] <= 2
    assert stats["by_endpoint"]["GET /rest/v1/leads.json"]["calls"] == 40
    # 8 calls per 20 s: 40 calls need at least 4 more windows.
    assert env.clock.now() - start >= 4 * 20


async def test_two_clients_of_one_instance_share_the_limits(env: Env) -> None:
    await env.reset(calls_per_window=10, window_seconds=20, concurrency=10)
    shared = InstanceLimits(calls_per_window=10, window_seconds=20, share=1.0, clock=env.clock)
    a, b = env.client(limits=shared), env.client(limits=shared)
    await asyncio.gather(*(c.get_lead(1) for c in (a, b) for _ in range(15)))
    assert over_limit(await env.calls()) == 0


@pytest.mark.parametrize("code", ["606", "615"])
async def test_throttle_storm_completes_with_bounded_attempts(env: Env, code: str) -> None:
    await env.faults({"path_prefix": "/rest/v1/leads.json", "code": code, "count": 25})
    client = env.client(retry=RetryPolicy(max_attempts=10, rng=random.Random(5)))
    ops = 20
    found = await asyncio.gather(
        *(client.find_leads("email", [f"a{i}@example.com"]) for i in range(ops))
    )
    assert found == [[]] * ops
    stats = await env.calls()
    endpoint = stats["by_endpoint"]["GET /rest/v1/leads.json"]
    assert endpoint["codes"].get(code) == 25
    assert endpoint["calls"] == ops + 25  # every throttled call retried once, no storm
    assert client.attempts == ops + 25 + 1  # plus one Identity call


async def test_throttle_storm_longer_than_the_budget_gives_a_clear_error(env: Env) -> None:
    from service.marketo.errors import UnavailableError

    await env.faults({"path_prefix": "/rest/v1/lead/", "code": "606"})  # forever
    client = env.client(retry=RetryPolicy(max_attempts=4))
    with pytest.raises(UnavailableError) as caught:
        await client.get_lead(1)
    assert caught.value.attempts == 4
    assert "606" in str(caught.value)
    assert (await env.calls())["by_code"]["606"] == 4


@pytest.mark.parametrize("code", ["601", "602"])
async def test_token_rejections_mid_run(env: Env, code: str) -> None:
    client = env.client()
    ids = await env.seed([{"email": f"s{i}@example.com"} for i in range(10)])
    first = await asyncio.gather(*(client.get_lead(i) for i in ids[:5]))
    await env.faults({"path_prefix": "/rest/v1/lead/", "code": code, "count": 3})
    second = await asyncio.gather(*(client.get_lead(i) for i in ids[5:]))
    assert all(lead is not None for lead in first + second)
    stats = await env.calls()
    assert stats["by_code"][code] == 3
    assert stats["identity"] <= 4  # one at start, at most one per rejection
    assert stats["by_endpoint"]["GET /rest/v1/lead/{id}.json"]["calls"] == 10 + 3


async def test_expired_token_is_replaced_before_use(env: Env) -> None:
    await env.reset(token_ttl=120)
    client = env.client()
    await client.partitions()
    env.clock.advance(61)  # 59 s left: refreshed proactively, no 602
    await client.partitions()
    stats = await env.calls()
    assert stats["identity"] == 2
    assert "602" not in stats["by_code"]


async def test_quota_607_pauses_then_resumes_after_the_reset(env: Env) -> None:
    await env.reset(daily_quota=5)
    client = env.client()
    for _ in range(5):
        await client.partitions()
    with pytest.raises(QuotaExhaustedError) as caught:
        await client.partitions()
    midnight = next_reset(env.clock.now())
    assert caught.value.paused_until == midnight
    assert client.limits.paused_until == midnight
    before = (await env.calls())["requests"]
    with pytest.raises(QuotaExhaustedError):
        await client.get_lead(1)
    assert (await env.calls())["requests"] == before  # refused locally while paused
    env.clock.advance(midnight - env.clock.now() + 1)
    assert len(await client.partitions()) >= 1
    assert client.limits.paused_until is None


async def test_local_daily_budget_keeps_the_reserve(env: Env) -> None:
    limits = InstanceLimits(daily_quota=50, daily_reserve=45, clock=env.clock)
    client = env.client(limits=limits)
    for _ in range(5):
        await client.partitions()
    with pytest.raises(QuotaExhaustedError):
        await client.partitions()
    stats = await env.calls()
    assert stats["counted"] == 5
    assert "607" not in stats["by_code"]


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize("status", [502, 503])
async def test_http_5xx_on_reads_is_retried(env: Env, status: int) -> None:
    await env.faults(
        {"path_prefix": "/rest/v1/leads/partitions.json", "http_status": status, "count": 3}
    )
    client = env.client()
    assert len(await client.partitions()) >= 1
    stats = await env.calls()
    assert stats["by_endpoint"]["GET /rest/v1/leads/partitions.json"]["calls"] == 4
    assert env.clock.slept > 0  # backed off


@pytest.mark.parametrize("fault", [{"http_status": 502}, {"http_status": 503}, {"code": "drop"}])
async def test_failed_creates_are_outcome_unknown_and_lookup_decides(
    env: Env, fault: dict[str, Any]
) -> None:
    client = env.client()
    await env.faults({"path_prefix": "/rest/v1/leads.json", "count": 1, **fault})
    record = {"email": "new@example.com"}
    with pytest.raises(OutcomeUnknownError):
        await client.sync_leads([record], action=SyncAction.CREATE_ONLY)
    stats = await env.calls()
    assert stats["by_endpoint"]["POST /rest/v1/leads.json"]["calls"] == 1
    # The caller looks up before retrying; here nothing was written, so it creates.
    assert await client.find_leads("email", [record["email"]]) == []
    (result,) = await client.sync_leads([record], action=SyncAction.CREATE_ONLY)
    assert result.status == "created"


async def test_dropped_connections_on_idempotent_calls_are_retried(env: Env) -> None:
    ids = await env.seed([{"email": "m@example.com"}])
    client = env.client()
    folder = await client.folder_by_name("Group Lists", workspace="Default")
    assert folder is not None
    static = await client.create_static_list("L", folder.id)
    await env.faults(
        {"path_prefix": f"/rest/v1/lists/{static.id}/leads", "code": "drop", "count": 2}
    )
    added = await client.add_to_list(static.id, ids)
    assert added[0].status == "added"
    updated = await client.sync_leads(
        [{"id": ids[0], "firstName": "M"}], action=SyncAction.UPDATE_ONLY, lookup_field="id"
    )
    assert updated[0].status == "updated"
    stats = await env.calls()
    assert stats["by_code"]["dropped"] == 2


async def test_slow_answers_complete(env: Env) -> None:
    await env.faults({"path_prefix": "/rest/v1/leads/describe2.json", "delay_ms": 3000, "count": 2})
    client = env.client()
    schemas = await asyncio.gather(client.describe2(), client.describe2())
    assert all(s.fields for s in schemas)
    assert over_limit(await env.calls()) == 0


async def test_transient_codes_mid_run(env: Env) -> None:
    await env.faults(
        {"path_prefix": "/rest/v1/lead/", "code": "604", "count": 2},
        {"path_prefix": "/rest/v1/lead/", "code": "608", "count": 2},
        {"path_prefix": "/rest/v1/lead/", "code": "611", "count": 2},
    )
    client = env.client()
    results = await asyncio.gather(*(client.get_lead(i) for i in range(1, 7)))
    assert results == [None] * 6
    stats = await env.calls()
    assert stats["by_endpoint"]["GET /rest/v1/lead/{id}.json"]["calls"] == 12


async def test_bad_credentials_against_the_sandbox(env: Env) -> None:
    from service.marketo.errors import AuthenticationError

    with pytest.raises(AuthenticationError, match="Marketo rejected the client id or secret"):
        await env.client(secret="wrong").partitions()
